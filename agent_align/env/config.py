"""Schemas of the ``env`` and ``agent`` config groups (registered in ``agent_align.config``) and their
cross-field checks. Kept beside the environment, like ``agent_align/steps/config.py``, so the shared
config module only gains the registration lines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from agent_align.env.masking import MASKED_LOSSES, STEP_LOSSES
from agent_align.errors import config_error


@dataclass
class EnvConfig:
    name: str = "org"
    world_seed: int = 0  # the synthetic organisation and its tasks; separate from `seed` so training seeds share tasks
    subdomain_mode: str = "slot_filling"  # slot_filling (a tool per endpoint) | rest (one HTTP tool) | selection
    scenario: str = "both"  # rag_before_api | api_before_rag | both (tasks of both orders, balanced)
    horizon: int = 6  # steps before an episode is truncated; longer = longer contexts for the agent
    top_k: int = 2  # documents per retrieve_documents call; higher = longer observations
    n_tasks: int = 200  # generated tasks, split train/test (the world has 120 per scenario)
    test_fraction: float = 0.25
    tool_availability: Optional[str] = None  # null -> per task from availability_mix; a value forces it on all tasks
    availability_mix: Dict[str, float] = field(default_factory=lambda: {
        "both_api_rag": 0.7, "only_rag": 0.1, "only_api": 0.1, "neither_api_rag": 0.1})
    policy_fraction: float = 0.2  # share of tasks with a tool_usage policy (half of them forbid a needed tool)
    tasks_path: Optional[str] = None  # JSONL of tasks (the generator's format) instead of generating
    observation_max_chars: int = 600  # longer tool results are cut; keeps small models' contexts short
    retrieval_backend: str = "sqlite"  # sqlite (embedded FTS5, BM25) | elasticsearch (also OpenSearch)
    retrieval_url: Optional[str] = None  # elasticsearch: https://host:9200 (user/password: ES_USERNAME/ES_PASSWORD)
    retrieval_index_prefix: str = "agent_align-"  # index name = prefix + collection
    retrieval_populate: bool = True  # upload the world's documents to the remote index at start (idempotent)
    rest_base_url: Optional[str] = None  # rest mode: a remote API; null -> a server on 127.0.0.1 the env starts
    http_timeout_s: float = 10.0


@dataclass
class OpenAIConfig:
    base_url: str = "http://127.0.0.1:8000/v1"  # any OpenAI-compatible server (vLLM, TGI, llama.cpp, hosted)
    model: str = "gpt-4o-mini"
    api_key_env: str = "OPENAI_API_KEY"  # NAME of the variable holding the key; the key is never in configs or logs
    max_retries: int = 4  # on 429/5xx/connection errors, exponential backoff from 1 s
    timeout_s: float = 60.0
    concurrency: int = 4  # requests in flight per batch
    cache: bool = True  # responses cached on disk by request; re-runs cost nothing
    cache_dir: Optional[str] = None  # null -> $AGENT_ALIGN_CACHE/llm (~/.cache/agent_align/llm)


@dataclass
class AgentConfig:
    name: str = "hf"
    backend: str = "hf"  # hf (local model) | openai (HTTP) | random (baseline) | expert (replays ground truth)
    model_path: Optional[str] = None  # hf: a checkpoint dir (null -> model.*)
    split: str = "test"  # train | test | all: which tasks to run
    limit: int = 0  # 0 -> every task of the split
    num_samples: int = 1  # episodes per task (use temperature > 0): success/failure pairs of the same task
    max_new_tokens: int = 96
    temperature: float = 0.0  # 0 -> greedy
    top_p: float = 1.0
    batch_size: int = 64  # episodes decoded together
    # hf agent: each episode goes on as soon as its answer ends, in one decoding call for the whole run (its next
    # prompt joins the batch, a finished episode's place goes to the next one); false: waves that step together
    continuous: bool = True
    expert_mode: Optional[str] = None  # null | ground_truth | random | informed (seed 003)
    expert: str = "ground_truth"  # ground_truth (replay) | openai | hf (an LLM given the gold trajectory)
    expert_model_path: Optional[str] = None  # expert=hf: its checkpoint (null -> model.*)
    expert_assist_random_epsilon: float = 0.5  # random: chance the expert takes each step
    expert_assist_init_limit: int = 2  # informed: steps the agent always takes alone first
    expert_assist_recent_limit: int = -2  # informed: negative; the expert steps in when the last N steps all failed
    save_alternate_trace: bool = False  # step-level pairs at branching points -> preferences/step_pairs.jsonl
    trajectory_pairs: bool = False  # success vs failure of the same task -> preferences/trajectory_pairs.jsonl
    pair_runs: List[str] = field(default_factory=list)  # other runs' dirs whose trajectories join the pairing
    mask_suboptimal_traces: bool = False  # trajectory pairs: don't train on bad steps of chosen / good of rejected
    # agent_pipeline's DPO data (seed 003): step (branching points of the informed-expert run) | trajectory
    # (success vs failure of the same task from num_samples samples of the SFT policy; costs num_samples rollouts)
    preference_granularity: str = "step"
    # agent_pipeline's SFT rows: steps (one trained turn per row, the history as prompt) | trajectories (one
    # row per expert episode, every assistant turn trained, observations masked: the same turns, ~2.3x fewer tokens)
    sft_rows: str = "steps"
    # step pairs: for each premature FINAL the policy gave (rejected wrong_final, the expert called a tool),
    # add a pair from a success of the same task: its correct FINAL over repeating its last call
    final_anchors: bool = False
    # step pairs: after each pair "A, not B" (chosen calls tool A, rejected tool B) a mirror "B, not A" from a
    # success of the same task (this run's or agent.pair_runs'; agent_pipeline adds its expert run) where B
    # was right, rejected = repeating the earlier A call; includes the final anchors (B = FINAL)
    mirror_pairs: bool = False
    # step pairs: after each pair (with its mirror), this many right turns of successful episodes (the run's own and
    # agent.pair_runs': agent_pipeline's expert), spread over the train tasks, as pairs whose two sides are that one
    # turn. Their DPO term is exactly zero, so only loss=rpo's NLL trains them: SFT rows mixed into DPO, holding the
    # task families the pairs say nothing about (agent_align/env/preferences.py, with_step_anchors). 0 = none
    step_anchors: float = 0.0
    max_pairs_per_task: int = 4
    # agent_pipeline: the test tasks of another world (this env.world_seed) pick the policy kept, SFT or one of the
    # dpo.rounds, by success on them (ties keep the earlier); null keeps the last round's. Never the test world.
    val_world_seed: Optional[int] = None
    judge: str = "match"  # match (normalised answer) | openai | hf (an LLM judge through that backend)
    judge_model_path: Optional[str] = None  # judge=hf: its checkpoint (null -> model.*)
    # text added to the task's user message in every prompt a model agent sees (NAT-trained policies are
    # prompted with nat.positive_tag; agent_pipeline sets it for them); placement: nat.placement
    prompt_tag: Optional[str] = None
    resume_from: Optional[str] = None  # a run dir: its finished trajectories are kept, the rest are run
    openai: OpenAIConfig = field(default_factory=OpenAIConfig)


EXPERT_MODES = (None, "ground_truth", "random", "informed")
GRANULARITIES = ("step", "trajectory")
SFT_ROWS = ("steps", "trajectories")


def expert_mode(agent_cfg) -> Optional[str]:
    """``agent.expert_mode``, with seed 003's spelling ``None`` accepted for null."""
    m = agent_cfg.expert_mode
    return None if m in (None, "None", "none", "null") else m


def check_agent_config(cfg) -> None:
    """Cross-field checks of env.* and agent.*; messages quote the values."""
    from agent_align.agents import BACKENDS, EXPERTS, JUDGES
    from agent_align.env.tasks import SCENARIOS
    from agent_align.env.toolset import AVAILABILITY, MODES

    e, a = cfg.env, cfg.agent
    for key, value, valid in (("env.subdomain_mode", e.subdomain_mode, MODES),
                              ("env.scenario", e.scenario, SCENARIOS + ("both",)),
                              ("env.retrieval_backend", e.retrieval_backend, ("sqlite", "elasticsearch")),
                              ("env.tool_availability", e.tool_availability, (None,) + AVAILABILITY),
                              ("agent.split", a.split, ("train", "test", "all")),
                              ("agent.expert_mode", expert_mode(a), EXPERT_MODES),
                              ("agent.backend", a.backend, tuple(BACKENDS.names())),
                              ("agent.expert", a.expert, tuple(EXPERTS)),
                              ("agent.judge", a.judge, tuple(JUDGES)),
                              ("agent.preference_granularity", a.preference_granularity, GRANULARITIES),
                              ("agent.sft_rows", a.sft_rows, SFT_ROWS)):
        if value not in valid:
            raise config_error(key, value, f"valid values: {', '.join(str(v) for v in valid)}")
    for key, value, low in (("env.horizon", e.horizon, 1), ("env.top_k", e.top_k, 1), ("env.n_tasks", e.n_tasks, 1),
                            ("agent.num_samples", a.num_samples, 1), ("agent.batch_size", a.batch_size, 1),
                            ("agent.max_new_tokens", a.max_new_tokens, 1),
                            ("agent.expert_assist_init_limit", a.expert_assist_init_limit, 0)):
        if value < low:
            raise config_error(key, value, f"must be >= {low}")
    if a.expert_assist_recent_limit >= 0:
        raise config_error("agent.expert_assist_recent_limit", a.expert_assist_recent_limit,
                           "must be negative (seed 003: -2 watches the last two steps)")
    for key, value in (("env.test_fraction", e.test_fraction), ("env.policy_fraction", e.policy_fraction),
                       ("agent.expert_assist_random_epsilon", a.expert_assist_random_epsilon)):
        if not 0.0 <= value <= 1.0:
            raise config_error(key, value, "must be within [0, 1]")
    bad = [k for k in e.availability_mix if k not in AVAILABILITY]
    if bad or not any(w > 0 for w in e.availability_mix.values()) or any(w < 0 for w in e.availability_mix.values()):
        raise config_error("env.availability_mix", dict(e.availability_mix),
                           f"keys from {', '.join(AVAILABILITY)}, weights >= 0, at least one > 0")
    if a.save_alternate_trace and expert_mode(a) in (None, "ground_truth"):
        raise config_error("agent.save_alternate_trace", True, "branching points need an agent and an expert: "
                           "use agent.expert_mode=informed or random")
    if a.num_samples > 1 and a.temperature == 0 and a.backend in ("hf", "openai"):
        raise config_error("agent.num_samples", a.num_samples, "greedy decoding repeats the same episode; "
                           "set agent.temperature > 0 (e.g. 0.8)")
    if cfg.get("stage") == "agent_pipeline" and cfg.data.negatives == "nat" and cfg.dpo.rounds > 1:
        raise config_error("dpo.rounds", cfg.dpo.rounds, "data.negatives=nat replaces DPO with one tagged SFT; "
                           "set dpo.rounds=1 (or data.negatives=standard for DPO rounds)")
    if a.step_anchors < 0:
        raise config_error("agent.step_anchors", a.step_anchors, "must be >= 0 (anchor rows per step pair; 0 = none)")
    if a.step_anchors > 0 and "sft" not in list(cfg.loss.loss_type or []):
        raise config_error("agent.step_anchors", a.step_anchors, "anchor rows train only through an NLL term, and "
                           f"loss={cfg.loss.name} has none: use loss=rpo, or set agent.step_anchors=0")
    if a.mirror_pairs and a.final_anchors:
        raise config_error("agent.final_anchors", True, "agent.mirror_pairs already adds the final anchors "
                           "(mirrors of premature FINALs): set one of them")
    trajectory = a.trajectory_pairs or a.preference_granularity == "trajectory"
    if trajectory and a.num_samples < 2 and not a.pair_runs:
        raise config_error("agent.num_samples", a.num_samples, "trajectory pairs need a success and a failure of the "
                           "same task: set agent.num_samples >= 2 with agent.temperature > 0 (e.g. 4 and 0.8), or "
                           "agent.pair_runs=[RUN_DIR,...] to pair with other runs")
    if a.mask_suboptimal_traces and not trajectory:
        raise config_error("agent.mask_suboptimal_traces", True, "it masks steps of trajectory pairs only: set "
                           "agent.preference_granularity=trajectory (agent_pipeline) or agent.trajectory_pairs=true")
    if a.val_world_seed is not None and a.val_world_seed == e.world_seed:
        raise config_error("agent.val_world_seed", a.val_world_seed, "that is env.world_seed, whose test tasks report "
                           "the result: pick another world (e.g. env.world_seed + 1) to choose the policy on")
    if a.val_world_seed is not None and e.tasks_path:
        raise config_error("agent.val_world_seed", a.val_world_seed, f"env.tasks_path={e.tasks_path} replaces the "
                           "generated tasks, so another world has no tasks: set agent.val_world_seed=null")
    if cfg.get("stage") == "agent_pipeline":
        check_pipeline_loss(cfg)


def check_pipeline_loss(cfg) -> None:
    """agent_pipeline's pairs are message lists: the masked losses take either granularity; the step-level
    ones need trajectory pairs, since an informed step pair has one turn per side (plain DPO)."""
    name, a = cfg.loss.name, cfg.agent
    if name not in MASKED_LOSSES + STEP_LOSSES:
        raise config_error("loss.name", name, "agent_pipeline's pairs are multi-message completions, which train "
                           f"with loss={'|'.join(MASKED_LOSSES + STEP_LOSSES)} (observations masked)")
    if name in STEP_LOSSES and a.preference_granularity != "trajectory":
        raise config_error("loss.name", name, f"informed step pairs have one turn per side, where loss={name} is plain "
                           "DPO: set agent.preference_granularity=trajectory (with agent.num_samples=4 "
                           "agent.temperature=0.8), or use loss=dpo|ipo|rpo")
    if name == "step_dpo" and cfg.steps.step_dpo_chosen != "step":
        raise config_error("steps.step_dpo_chosen", cfg.steps.step_dpo_chosen, "on agent trajectories the chosen is "
                           "one turn at the rejected one's state: use steps.step_dpo_chosen=step")
