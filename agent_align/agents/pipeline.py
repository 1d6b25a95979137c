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
  dpo.rounds=N   repeats 4-6 from the last policy: round k's rollouts in agentic/informed_r<k>/ (or
                 sampled_r<k>), its checkpoint in agentic/round<k>/checkpoints/dpo, its evaluation in
                 agentic/eval_dpo_r<k>/; summary["rounds"] has held-out success after each round
  agent.val_world_seed=S   iterate where it pays: the SFT policy and each round's are also run on the test
                 tasks of world S (agentic/val_sft/, val_dpo[_r<k>]/), and the one with the highest success
                 there is kept (ties keep the earlier, so SFT unless a round beats it): summary["after_dpo"]
                 is its evaluation on the real test tasks, summary["selection"] says which and why
  data.negatives=nat   replaces 5: NAT, an SFT from the base model on the expert's trajectories (task
                 tagged nat.positive_tag) and the informed run's mistakes (tagged nat.negative_tag),
                 agentic/nat/checkpoints/sft, evaluated with the positive tag
  evaluate.base  also evaluates the untrained model on the test tasks first  agentic/eval_base/

Each agent run is a stage=agent run in its own sub-directory (so it resumes episode by episode); the
sft/dpo stages are the project's own, fed through data.train_path. Evaluations are greedy, one
episode per task. Writes agentic_summary.json.
"""

from __future__ import annotations

import copy
import logging
import time

from omegaconf import OmegaConf

from agent_align.jsonl import read_jsonl, write_json, write_jsonl
from agent_align.stages import STAGES
from agent_align.stages.context import RunContext, finished, mark_finished

log = logging.getLogger(__name__)


def variant(cfg, **updates):
    """A copy of ``cfg`` with dotted keys (``agent__split`` -> ``agent.split``) replaced."""
    c = copy.deepcopy(cfg)
    for key, value in updates.items():
        OmegaConf.update(c, key.replace("__", "."), value, merge=False)
    return c


SUMMARY_KEYS = ("n", "success_rate", "avg_steps", "valid_call_rate", "policy_violations", "by_scenario",
                "by_tool_availability")
NO_EXPERT = dict(agent__backend="hf", agent__expert_mode=None, agent__save_alternate_trace=False,
                 agent__split="test", agent__resume_from=None, agent__num_samples=1, agent__temperature=0.0,
                 agent__trajectory_pairs=False, agent__mask_suboptimal_traces=False)


class _Loop:
    """The runs of one agent_pipeline: each step is timed and its result kept under its name."""

    def __init__(self, cfg, ctx: RunContext):
        self.cfg, self.ctx, self.timings, self.results = cfg, ctx, {}, {}

    def sub(self, name: str) -> RunContext:
        c = self.ctx
        return RunContext(run_dir=c.path("agentic", name), rank=c.rank, world_size=c.world_size, cache=c.cache)

    def timed(self, name: str, fn):
        start = time.perf_counter()
        self.results[name] = fn()
        self.timings[name] = round(time.perf_counter() - start, 2)
        log.info("agent_pipeline: %s done in %.1fs", name, self.timings[name])
        return self.results[name]

    def agent(self, name: str, run_name: str, **updates) -> dict:
        from agent_align.stages.agent import run as agent_run

        return self.timed(name, lambda: agent_run(variant(self.cfg, **updates), self.sub(run_name)))

    def evaluate(self, name: str, run_name: str, policy: str | None, tag: str | None = None) -> dict:
        """The policy on the test tasks, greedy, one episode per task, no expert."""
        return self.agent(name, run_name, agent__model_path=policy, agent__prompt_tag=tag, **NO_EXPERT)

    def pairs(self, name: str, policy: str) -> tuple[dict, str]:
        """Rollouts of ``policy`` on the train tasks and the preference file they give."""
        cfg = self.cfg
        common = dict(agent__backend="hf", agent__model_path=policy, agent__expert_mode=None, agent__split="train",
                      agent__resume_from=None, agent__prompt_tag=None, agent__save_alternate_trace=False)
        if cfg.agent.preference_granularity == "trajectory":  # the policy's own successes vs its own failures
            result = self.agent(name, name, **{**common, "agent__trajectory_pairs": True})
        else:
            # its successes: mirrors and step anchors come from them
            mirrors_from = [str(self.sub("expert").run_dir)] if cfg.agent.mirror_pairs or cfg.agent.step_anchors else []
            result = self.agent(name, name, **{**common, "agent__expert_mode": "informed", "agent__expert": "ground_truth",
                                               "agent__save_alternate_trace": True, "agent__trajectory_pairs": False,
                                               "agent__mask_suboptimal_traces": False,
                                               "agent__pair_runs": [*cfg.agent.pair_runs, *mirrors_from]})
        key = _granularity_runs(cfg)[1]
        return result, str(self.sub(name).path("preferences", f"{key}.jsonl")) if result.get(key) else ""

    def validate(self, name: str, run_name: str, policy: str, tag: str | None = None) -> dict:
        """The policy on the test tasks of world ``agent.val_world_seed``: picks the policy kept, never reported."""
        return self.agent(name, run_name, agent__model_path=policy, agent__prompt_tag=tag, **NO_EXPERT,
                          env__world_seed=self.cfg.agent.val_world_seed)

    def dpo(self, name: str, pairs_path: str, policy: str, ctx: RunContext) -> str:
        result = self.timed(name, lambda: STAGES.get("dpo")(variant(
            self.cfg, data__train_path=pairs_path, data__negatives_source="synthetic", dpo__policy_from=policy,
            dpo__rounds=1), ctx))
        return result["checkpoint"]

    def nat(self, pairs_path: str) -> str:
        """NAT: the expert's trajectories and the policy's mistakes, tagged, in one SFT from the base model."""
        from agent_align.env.nat import nat_conversations

        cfg, sub = self.cfg, self.sub("nat")
        rows = nat_conversations(read_jsonl(self.sub("expert").path("sft", "trajectories.jsonl")),
                                 read_jsonl(pairs_path), cfg.nat)
        path = sub.path("data", "nat_sft.jsonl")
        if self.ctx.is_main:
            write_jsonl(path, rows)
        result = self.timed("nat_sft", lambda: STAGES.get("sft")(variant(
            cfg, data__train_path=str(path), sft__init_from=None, data__negatives="standard"), sub))
        return result["checkpoint"]


def _granularity_runs(cfg) -> tuple[str, str, str]:
    """(rollout run name, pairs key of its summary, why there can be no pairs)."""
    if cfg.agent.preference_granularity == "trajectory":
        return "sampled", "trajectory_pairs", "no train task had both a success and a failure"
    return "informed", "step_pairs", "the policy made no mistake the expert could correct"


def _brief(result: dict) -> dict:
    return {k: result[k] for k in ("success_rate", "valid_call_rate", "avg_steps", "policy_violations")}


def run(cfg, ctx: RunContext) -> dict:
    done = finished(cfg, ctx, "agent_pipeline")
    if done:
        return done
    loop = _Loop(cfg, ctx)
    sft_ckpt = str(ctx.path("checkpoints", "sft"))
    nat = cfg.data.negatives == "nat"
    if cfg.evaluate.base:
        loop.evaluate("base", "eval_base", None)
    loop.agent("expert", "expert", agent__backend="expert", agent__expert_mode="ground_truth",
               agent__save_alternate_trace=False, agent__split="train", agent__resume_from=None, agent__num_samples=1,
               agent__trajectory_pairs=False, agent__mask_suboptimal_traces=False)
    loop.timed("sft", lambda: STAGES.get("sft")(variant(
        cfg, data__train_path=str(loop.sub("expert").path("sft", f"{cfg.agent.sft_rows}.jsonl")), sft__init_from=None,
        data__negatives="standard"), ctx))
    before = loop.evaluate("before", "eval_sft", sft_ckpt)
    select = cfg.agent.val_world_seed is not None
    candidates = [("sft", sft_ckpt, before, loop.validate("val_sft", "val_sft", sft_ckpt))] if select else []
    runs, pairs_key, why = _granularity_runs(cfg)
    policy, rounds, paired = sft_ckpt, [], {}
    for k in range(1, (1 if nat else cfg.dpo.rounds) + 1):
        tag = "" if k == 1 else f"_r{k}"
        paired, pairs_path = loop.pairs(runs + tag, policy)
        if not pairs_path:
            log.warning("round %d: %s; stopping", k, why)
            loop.results.setdefault("dpo", {"skipped": why})
            break
        if nat:
            policy = loop.nat(pairs_path)
            after = loop.evaluate("after", "eval_dpo", policy, tag=cfg.nat.positive_tag)
        else:
            policy = loop.dpo("dpo" + tag, pairs_path, policy, ctx if k == 1 else loop.sub(f"round{k}"))
            after = loop.evaluate("after" + tag, "eval_dpo" + tag, policy)
        rounds.append({"round": k, "pairs": paired.get(pairs_key), **_brief(after)})
        if select:
            val = loop.validate("val" + tag, "val_dpo" + tag, policy, cfg.nat.positive_tag if nat else None)
            rounds[-1]["val_success_rate"] = val["success_rate"]
            candidates.append(("nat" if nat else f"round {k}", policy, after, val))
        log.info("round %d: test success %.3f (after SFT %.3f)%s", k, after["success_rate"], before["success_rate"],
                 f", success %.3f on world {cfg.agent.val_world_seed}'s tasks" % val["success_rate"] if select else "")
    if not rounds:  # no pairs at all: the final policy is the SFT policy
        loop.evaluate("after", "eval_dpo", policy)
    results, last = loop.results, loop.results["after" + ("" if len(rounds) < 2 else f"_r{len(rounds)}")]
    selection = None
    if candidates:
        kept = max(candidates, key=lambda c: c[3]["success_rate"])  # max keeps the first of equals: the earlier
        last = kept[2]
        selection = {"val_world_seed": cfg.agent.val_world_seed, "kept": kept[0], "checkpoint": kept[1],
                     "val_success_rate": {c[0]: c[3]["success_rate"] for c in candidates},
                     "val_n": candidates[0][3]["n"]}
        log.info("kept %s: success %s on world %d's test tasks", kept[0],
                 ", ".join(f"{name} {v:.3f}" for name, v in selection["val_success_rate"].items()),
                 cfg.agent.val_world_seed)
    summary = {"before_dpo": {k: before[k] for k in SUMMARY_KEYS}, "after_dpo": {k: last[k] for k in SUMMARY_KEYS},
               "expert": {"n": results["expert"]["n"], "success_rate": results["expert"]["success_rate"],
                          "sft_step_rows": results["expert"]["sft_step_rows"]},
               "method": "nat" if nat else cfg.loss.name, "preference_granularity": cfg.agent.preference_granularity,
               runs: {k: paired.get(k) for k in ("n", "success_rate", "expert_step_fraction", pairs_key)},
               "rounds": rounds, "sft": results["sft"], "dpo": results.get("nat_sft" if nat else "dpo"),
               "timings": loop.timings, "objective": last["success_rate"]}
    if selection:
        summary["selection"] = selection
    if "base" in results:
        summary["base"] = {k: results["base"][k] for k in SUMMARY_KEYS}
    if ctx.is_main:
        write_json(ctx.path("agentic_summary.json"), summary)
    mark_finished(ctx, "agent_pipeline", summary)
    log.info("test success without expert: %s%.3f after SFT, %.3f after %s",
             f"{results['base']['success_rate']:.3f} base, " if "base" in results else "", before["success_rate"],
             last["success_rate"], summary["method"] + (f" ({selection['kept']} kept)" if selection else ""))
    return summary
