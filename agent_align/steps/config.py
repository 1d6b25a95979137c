"""Config schemas of the step-level features (issue 5), registered by ``agent_align.config``.

Kept here so the shared config module only gains a few registration lines. Every field has its
unit or cost in a comment; cross-field checks are in ``check_steps_config`` (called by check_config).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from agent_align.errors import config_error


@dataclass
class ScorerConfig:
    name: str = "verifier"  # verifier (deterministic checks) | lm (LLM judge)
    unverifiable_score: float = 1.0  # score of a step nothing can check (it cannot be shown wrong)
    # lm judge only
    backend: str = "hf"  # hf: local model (scorer.model_path, else model.*) | openai: OpenAI-compatible HTTP
    model_path: Optional[str] = None  # hf: checkpoint dir; null -> the model.* preset
    base_url: Optional[str] = None  # openai: e.g. http://localhost:8000/v1
    api_model: Optional[str] = None  # openai: served model name
    api_key_env: str = "OPENAI_API_KEY"  # name of the environment variable holding the key (never the key)
    batch_size: int = 16  # judge prompts per generate call / concurrent HTTP requests; higher uses more memory
    max_new_tokens: int = 8
    timeout_s: float = 60.0
    retries: int = 3
    cache_path: Optional[str] = None  # SQLite reply cache; null -> $AGENT_ALIGN_CACHE/judge_cache.sqlite


@dataclass
class StepsConfig:
    format: str = "auto"  # auto (per completion) | react | json | text | trajectory
    threshold: float = 0.5  # a step scoring below this is wrong (Step-DPO's first wrong step, NAT failures)
    input: Optional[str] = None  # stage=score_steps: rows to score (null -> run_dir/data/train.jsonl)
    output: Optional[str] = None  # null -> run_dir/rewarded.jsonl
    step_dpo_chosen: str = "step"  # step: chosen is the one correct step | rest: the rest of the correct answer


@dataclass
class SampleConfig:
    prompts: Optional[str] = None  # rows with prompt/tools/schema/chosen (null -> run_dir/data/train.jsonl)
    n_prompts: int = 200  # distinct prompts sampled; time grows linearly
    k: int = 4  # samples per prompt; time and memory grow linearly
    temperature: float = 1.0
    top_p: float = 0.95
    max_new_tokens: int = 96
    model_path: Optional[str] = None  # null -> run_dir/checkpoints/sft, else model.*
    min_margin: float = 0.0  # keep a best/worst pair only when their mean step scores differ by more
    use_gold_when_all_fail: bool = True  # no sample correct: the row's gold chosen becomes the chosen
    # Step-DPO on-policy chosen steps: N continuations sampled after the correct prefix of each pair's
    # rejected sample (cut at its first wrong step); the verified ones are kept. 0 = off; costs about
    # N/k of the main sampling time again.
    step_dpo_continuations: int = 0


@dataclass
class RewardEvalConfig:
    base_model: Optional[str] = None  # null -> run_dir/checkpoints/sft
    tuned_model: Optional[str] = None  # null -> run_dir/checkpoints/dpo
    data: Optional[str] = None  # held-out prompts (null -> run_dir/data/eval.jsonl)
    limit: int = 100  # prompts scored; 0 -> all
    max_new_tokens: int = 96


@dataclass
class AnalyzeConfig:
    verdicts: Optional[str] = None  # evaluation verdicts.jsonl (null -> newest under run_dir)
    data: Optional[str] = None  # the rows the verdicts are about (null -> run_dir/data/eval.jsonl)
    trajectories: Optional[str] = None  # agent trajectories dir/file with per-step categories (optional)
    top_k: int = 3  # most frequent failure modes (and tools) turned into targeted negatives
    boost: float = 4.0  # weight multiplier the generator gives targeted negative types and tools


@dataclass
class NatConfig:
    positive_tag: str = "[Correct]"  # inference always uses this one
    negative_tag: str = "[Incorrect]"
    placement: str = "prefix"  # prefix: "[Correct] request" | suffix: "request [Correct]"
    negatives_per_positive: float = 1.0  # failed samples kept per successful one (NAT's ratio)


@dataclass
class MixtureConfig:
    # Shares of the SFT data. All null: no mixture (plain SFT, or NAT's 1:1). positive null: the
    # remainder 1 - negative - synthetic; positive set: the three are weights normalised to sum 1.
    positive: Optional[float] = None  # verified (request, correct call) rows on the real (non-procedural) tools
    negative: Optional[float] = None  # failed outputs with the NAT negative tag (needs data.negatives=nat)
    synthetic: Optional[float] = None  # verified rows on procedural tools (needs data.procedural_tools > 0)
    total: int = 0  # SFT rows in the mixture, whatever the shares; 0 -> as many as there are distinct requests


@dataclass
class TrajectoriesConfig:
    inputs: List[str] = field(default_factory=list)  # files to import (.json/.jsonl): OpenAI or ShareGPT
    source_format: str = "auto"  # auto (per row) | openai | sharegpt
    spec: Optional[str] = None  # YAML task spec (tools + example requests) to synthesise from
    n_synthetic: int = 100  # synthetic tasks built from the spec
    teacher: str = "generator"  # generator (verified calls from the schemas) | model (model.* / teacher_path)
    teacher_path: Optional[str] = None
    max_messages: int = 24  # longer trajectories are dropped
    max_chars: int = 12000
    near_duplicate: float = 0.9  # Jaccard similarity of word 3-grams at or above which a trajectory is a near-duplicate
    augment: List[str] = field(default_factory=lambda: ["paraphrase", "shuffle_tools", "distractors"])
    distractors: int = 2  # extra tools added by the distractors augmentation
    output: Optional[str] = None  # null -> run_dir/trajectories/clean.jsonl


STEP_CHOICES = {
    "scorer.name": ("verifier", "lm"),
    "scorer.backend": ("hf", "openai"),
    "steps.format": ("auto", "react", "json", "text", "trajectory"),
    "steps.step_dpo_chosen": ("step", "rest"),
    "nat.placement": ("prefix", "suffix"),
    "trajectories.source_format": ("auto", "openai", "sharegpt"),
    "trajectories.teacher": ("generator", "model"),
}


def check_steps_config(cfg) -> None:
    """Cross-field checks for the step-level groups; messages quote the values."""
    for key, valid in STEP_CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in valid:
            raise config_error(key, value, f"valid values: {', '.join(valid)}")
    if not 0.0 <= cfg.scorer.unverifiable_score <= 1.0:
        raise config_error("scorer.unverifiable_score", cfg.scorer.unverifiable_score, "must be within [0, 1]")
    if not 0.0 < cfg.steps.threshold <= 1.0:
        raise config_error("steps.threshold", cfg.steps.threshold, "must be within (0, 1]")
    if cfg.nat.positive_tag.strip() == cfg.nat.negative_tag.strip():
        raise config_error("nat.negative_tag", cfg.nat.negative_tag, "must differ from nat.positive_tag")
    mix = cfg.mixture
    given = {k: getattr(mix, k) for k in ("positive", "negative", "synthetic")}
    if any(v is not None for v in given.values()):
        for k, v in given.items():
            if v is not None and v < 0:
                raise config_error(f"mixture.{k}", v, "shares must be >= 0")
        if mix.positive is not None and sum(v or 0 for v in given.values()) <= 0:
            raise config_error("mixture.positive", mix.positive, "at least one of mixture.positive/negative/synthetic must be > 0")
        from agent_align.steps.mixture import shares

        shares(mix)  # negative + synthetic > 1 with a null positive fails here, naming the values
        if (mix.negative or 0) > 0 and cfg.data.negatives != "nat":
            raise config_error("mixture.negative", mix.negative, "failed outputs join SFT only with their NAT tag; "
                               "add data.negatives=nat (or set mixture.negative=0)")
        if (mix.synthetic or 0) > 0 and not cfg.data.procedural_tools:
            raise config_error("mixture.synthetic", mix.synthetic, "synthetic rows are procedural-tool rows; "
                               "set data.procedural_tools=N (e.g. 400) or mixture.synthetic=0")
    if cfg.sample.step_dpo_continuations < 0:
        raise config_error("sample.step_dpo_continuations", cfg.sample.step_dpo_continuations,
                           "must be >= 0 (continuations per first wrong step; 0 = off)")
    if cfg.sample.k < 2:
        raise config_error("sample.k", cfg.sample.k, "needs >= 2 samples per prompt to form best/worst pairs")
    bad = [a for a in cfg.trajectories.augment if a not in ("paraphrase", "shuffle_tools", "distractors")]
    if bad:
        raise config_error("trajectories.augment", list(cfg.trajectories.augment),
                           f"unknown {bad}; valid: paraphrase, shuffle_tools, distractors")
    if cfg.loss.name in ("stepwise", "step_dpo") and list(cfg.loss.loss_type) != ["sigmoid"]:
        raise config_error("loss.loss_type", list(cfg.loss.loss_type), f"loss={cfg.loss.name} trains with [sigmoid] only")
