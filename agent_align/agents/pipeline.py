"""stage=agent_pipeline: seed 003's training loop on the agentic environment.

    python -m agent_align +experiment=agentic_sft_dpo

  1. expert      ground-truth trajectories on the train tasks            agentic/expert/
  2. sft         the policy learns every expert turn (observations only as context)   checkpoints/sft
  3. before      test tasks, no expert                                   agentic/eval_sft/
  4. pairs, by agent.preference_granularity:
       step        the SFT policy on train tasks, informed expert, branching points -> step pairs   agentic/informed/
       trajectory  the SFT policy alone on train tasks, agent.num_samples samples at agent.temperature;
                   a success vs a failure of the same task -> trajectory pairs                      agentic/sampled/
  5. dpo         DPO on those pairs from the SFT checkpoint, observations masked   checkpoints/dpo
  6. after       test tasks, no expert                                   agentic/eval_dpo/

Each agent run is a stage=agent run in its own sub-directory (so it resumes episode by episode); the
sft/dpo stages are the project's own, fed through data.train_path. Evaluations are greedy, one
episode per task. Writes agentic_summary.json.
"""

from __future__ import annotations

import copy
import logging
import time

from omegaconf import OmegaConf

from agent_align.jsonl import write_json
from agent_align.stages import STAGES
from agent_align.stages.context import RunContext, finished, mark_finished

log = logging.getLogger(__name__)


def variant(cfg, **updates):
    """A copy of ``cfg`` with dotted keys (``agent__split`` -> ``agent.split``) replaced."""
    c = copy.deepcopy(cfg)
    for key, value in updates.items():
        OmegaConf.update(c, key.replace("__", "."), value, merge=False)
    return c


def run(cfg, ctx: RunContext) -> dict:
    from agent_align.stages.agent import run as agent_run

    done = finished(cfg, ctx, "agent_pipeline")
    if done:
        return done
    sub = lambda name: RunContext(run_dir=ctx.path("agentic", name), rank=ctx.rank,  # noqa: E731
                                  world_size=ctx.world_size, cache=ctx.cache)
    sft_ckpt, dpo_ckpt = str(ctx.path("checkpoints", "sft")), str(ctx.path("checkpoints", "dpo"))
    timings, results = {}, {}

    def timed(name, fn):
        start = time.perf_counter()
        results[name] = fn()
        timings[name] = round(time.perf_counter() - start, 2)
        log.info("agent_pipeline: %s done in %.1fs", name, timings[name])
        return results[name]

    no_expert = dict(agent__backend="hf", agent__expert_mode=None, agent__save_alternate_trace=False,
                     agent__split="test", agent__resume_from=None, agent__num_samples=1, agent__temperature=0.0,
                     agent__trajectory_pairs=False, agent__mask_suboptimal_traces=False)
    timed("expert", lambda: agent_run(variant(cfg, agent__backend="expert", agent__expert_mode="ground_truth",
                                              agent__save_alternate_trace=False, agent__split="train",
                                              agent__resume_from=None, agent__num_samples=1,
                                              agent__trajectory_pairs=False, agent__mask_suboptimal_traces=False),
                                      sub("expert")))
    timed("sft", lambda: STAGES.get("sft")(variant(cfg, data__train_path=str(sub("expert").path("sft", "steps.jsonl")),
                                                   sft__init_from=None), ctx))
    timed("before", lambda: agent_run(variant(cfg, agent__model_path=sft_ckpt, **no_expert), sub("eval_sft")))
    if cfg.agent.preference_granularity == "trajectory":  # the policy's own successes vs its own failures
        runs, pairs_key, why = "sampled", "trajectory_pairs", "no train task had both a success and a failure"
        timed(runs, lambda: agent_run(variant(
            cfg, agent__backend="hf", agent__model_path=sft_ckpt, agent__expert_mode=None,
            agent__save_alternate_trace=False, agent__trajectory_pairs=True, agent__split="train",
            agent__resume_from=None), sub(runs)))
    else:
        runs, pairs_key, why = "informed", "step_pairs", "the SFT policy made no mistake the expert could correct"
        timed(runs, lambda: agent_run(variant(
            cfg, agent__backend="hf", agent__model_path=sft_ckpt, agent__expert_mode="informed",
            agent__expert="ground_truth", agent__save_alternate_trace=True, agent__trajectory_pairs=False,
            agent__mask_suboptimal_traces=False, agent__split="train", agent__resume_from=None), sub(runs)))
    paired = results[runs]
    if not paired.get(pairs_key):
        log.warning("%s: no %s, skipping DPO", why, pairs_key)
        results["dpo"], dpo_ckpt = {"skipped": f"no {pairs_key.replace('_', ' ')}"}, sft_ckpt
    else:
        timed("dpo", lambda: STAGES.get("dpo")(variant(
            cfg, data__train_path=str(sub(runs).path("preferences", f"{pairs_key}.jsonl")),
            data__negatives_source="synthetic", dpo__policy_from=sft_ckpt), ctx))
    timed("after", lambda: agent_run(variant(cfg, agent__model_path=dpo_ckpt, **no_expert), sub("eval_dpo")))
    keys = ("n", "success_rate", "avg_steps", "valid_call_rate", "policy_violations", "by_scenario",
            "by_tool_availability")
    summary = {"before_dpo": {k: results["before"][k] for k in keys}, "after_dpo": {k: results["after"][k] for k in keys},
               "expert": {"n": results["expert"]["n"], "success_rate": results["expert"]["success_rate"],
                          "sft_step_rows": results["expert"]["sft_step_rows"]},
               "preference_granularity": cfg.agent.preference_granularity,
               runs: {k: paired.get(k) for k in ("n", "success_rate", "expert_step_fraction", pairs_key)},
               "sft": results["sft"], "dpo": results["dpo"], "timings": timings,
               "objective": results["after"]["success_rate"]}
    if ctx.is_main:
        write_json(ctx.path("agentic_summary.json"), summary)
    mark_finished(ctx, "agent_pipeline", summary)
    log.info("test success without expert: %.3f after SFT, %.3f after DPO", results["before"]["success_rate"],
             results["after"]["success_rate"])
    return summary
