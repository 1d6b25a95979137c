"""The measured sides of benchmarks/run.py. Each function runs in a fresh process (common.Sides), takes a
spec dict and returns what it measured. ``*_ours`` go through agent_align's own stage code; ``*_baseline``
are what a user writes from TRL's and transformers' docs, with the same model, rows, batch size,
sequence lengths and steps.

The timed region of every training side starts from a loaded model and the raw rows and ends when
``train()`` returns: tokenisation (ours: the Encoder; TRL: its dataset map), trainer construction (ours
includes the reference log-prob pass) and the training steps.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from common import PeakRSS, set_threads


def read_rows(path: str) -> list[dict]:
    from agent_align.jsonl import read_jsonl

    return read_jsonl(path)


def _plain_model(path: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def _cpu_defaults(spec: dict) -> dict:
    """TRL's configs default to bf16=True, which refuses to start without a GPU: "Your setup doesn't support
    bf16/gpu. You need to assign use_cpu if you want to train the model on CPU." A user does what it says,
    which keeps bf16 autocast on; ``--baseline-fp32`` also turns bf16 off, to separate the dtype's share."""
    return {"use_cpu": True, **({"bf16": False} if spec.get("baseline_fp32") else {})}


def _plain_args(config_cls, spec: dict):
    """A plain trainer's config (``SFTConfig`` / ``DPOConfig``): the spec's batch, steps, lr and length, TRL's
    defaults for everything else."""
    return config_cls(output_dir=str(Path(spec["run_dir"]) / "trainer"), per_device_train_batch_size=spec["batch_size"],
                      gradient_accumulation_steps=spec["grad_accum"], max_steps=spec["steps"], learning_rate=spec["lr"],
                      max_length=spec["max_length"], **_cpu_defaults(spec))


def _same_template(spec: dict, tok) -> None:
    """Give the plain tokenizer the chat template our side renders with (``model.chat_template``), so both
    sides train on the very same tokens. SmolLM2's own template writes the tools as short signatures, ours as
    JSON schemas: without this the SFT sides differed by ~20% in tokens (12,548 vs 10,454 on 48 rows) and
    ``same_tokens_fraction``, which compares TRL's rows with our Encoder *on the baseline's tokenizer*, still read 1."""
    from agent_align.models.loading import load_tokenizer

    tok.chat_template = load_tokenizer(spec["cfg"], spec["model_dir"]).chat_template


def _chat_messages(row: dict, system: str) -> list[dict]:
    return [{"role": "system", "content": system}, {"role": "user", "content": row["prompt"]}]


def _trained(trainer, meter: PeakRSS) -> dict:
    logs = [h for h in trainer.state.log_history if "train_runtime" in h]
    args = trainer.args
    return {**meter.as_dict(), "steps": trainer.state.global_step, "train_seconds": logs[-1]["train_runtime"],
            "settings": {"bf16": bool(args.bf16), "gradient_checkpointing": bool(args.gradient_checkpointing),
                         "pad_to_multiple_of": getattr(args, "pad_to_multiple_of", None),
                         "train_sampling_strategy": str(getattr(args, "train_sampling_strategy", "")),
                         "precompute_ref_log_probs": bool(getattr(args, "precompute_ref_log_probs", False)),
                         "reference_model_held": getattr(trainer, "ref_model", None) is not None}}


def _check_one_epoch(trainer, n_rows: int, spec: dict) -> None:
    """Every side trains exactly ``steps`` optimizer steps over its rows once, so rows count as work done."""
    per_step = spec["batch_size"] * spec["grad_accum"]
    if trainer.state.global_step != spec["steps"] or n_rows != spec["steps"] * per_step:
        raise RuntimeError(f"{n_rows} rows in {trainer.state.global_step} steps; expected {spec['steps']} steps "
                           f"of {per_step} rows (did the trainer drop rows?)")


def ours_setup(spec: dict):
    from agent_align.hardware import resolve_precision
    from agent_align.stages.context import RunContext
    from agent_align.stages.sft import policy

    cfg = spec["cfg"]
    set_threads(cfg.hardware.torch_threads)
    resolve_precision(cfg.hardware)  # measured once per process (~0.3 s); the pipeline pays it once, not per stage
    ctx = RunContext(run_dir=Path(spec["run_dir"]))
    model, tok, enc = policy(cfg, ctx, spec["model_dir"], for_training=spec.get("for_training", True))
    return cfg, ctx, model, tok, enc


# --- preparation ------------------------------------------------------------------------------------------------
def prepare(spec: dict) -> dict:
    """Generate the data, build (or reuse) the models, and keep the rows that fit each model's cutoff
    untruncated, so both sides see the very same token sequences."""
    from agent_align.jsonl import read_jsonl, write_jsonl
    from agent_align.models import resolve_model_path
    from agent_align.models.loading import load_tokenizer
    from agent_align.stages import STAGES
    from agent_align.stages.context import RunContext
    from agent_align.train.encode import Encoder, chat_of, system_prompt, unique_prompts

    cfg, work = spec["cfg"], Path(spec["work"])
    gen = STAGES.get("generate")(cfg, RunContext(run_dir=work / "data"))
    train = read_jsonl(gen["train_path"])
    out = {"system": system_prompt(cfg), "n_generated": len(train)}
    for name, mcfg, need in spec["models"]:
        model_dir = resolve_model_path(mcfg)
        tok = load_tokenizer(mcfg, model_dir)
        enc = Encoder(tok, mcfg.model.max_length, mcfg.model.max_prompt_length)
        system = system_prompt(mcfg)

        def fits(row, *completions):
            chat = chat_of(row, system)
            p = len(tok(enc.prompt_text(chat), add_special_tokens=False)["input_ids"])
            return p <= enc.max_prompt_length and all(p + len(enc.completion_ids(chat, c)) < enc.max_length
                                                      for c in completions)

        sft_fit = [r for r in unique_prompts(train) if fits(r, r["chosen"])]
        # mfu and sampling use SFT rows too (distinct prompts); ref (the reference pass) uses DPO pairs
        picked = {kind: sft_fit[:n] for kind, n in need.items() if kind in ("sft", "mfu", "sampling")}
        dpo_fit = [r for r in train if fits(r, r["chosen"], r["rejected"])] if {"dpo", "ref"} & set(need) else []
        picked.update({kind: dpo_fit[:n] for kind, n in need.items() if kind in ("dpo", "ref")})
        for kind, rows in picked.items():
            if len(rows) < need[kind]:
                raise SystemExit(f"error: only {len(rows)} of {need[kind]} {kind} rows fit {name}'s "
                                 f"model.max_length={enc.max_length}; generate more with --override data.n_train=N")
            write_jsonl(work / f"{name}_{kind}_rows.jsonl", rows)
        out[name] = {"model_dir": model_dir, **{f"{k}_rows": str(work / f"{name}_{k}_rows.jsonl") for k in picked}}
    write_jsonl(work / "eval_rows.jsonl", read_jsonl(gen["eval_path"])[: spec["n_eval"]])
    out["eval_rows"] = str(work / "eval_rows.jsonl")
    return out


def _expected_sft(spec: dict, tok, rows: list[dict]) -> list[dict]:
    from agent_align.train.encode import Encoder, chat_of

    enc = Encoder(tok, spec["max_length"], spec["max_prompt_length"])
    return [enc.sft_example(chat_of(r, spec["system"]), r["chosen"]) for r in rows]


# --- SFT ----------------------------------------------------------------------------------------------------------
def sft_ours(spec: dict) -> dict:
    from agent_align.stages.sft import build_trainer, sft_examples
    from agent_align.train.common import resume_point, wrap_peft

    cfg, ctx, model, tok, enc = ours_setup(spec)
    model = wrap_peft(cfg, model)
    rows = read_rows(spec["rows"])
    with PeakRSS() as meter:
        examples = sft_examples(cfg, rows, enc)
        trainer, out = build_trainer(cfg, ctx, model, tok, examples)
        trainer.train(resume_from_checkpoint=resume_point(cfg, out))
    _check_one_epoch(trainer, len(examples), spec)
    return {**_trained(trainer, meter), "tokens": sum(len(e["input_ids"]) for e in examples),
            "examples": len(examples)}


def sft_baseline(spec: dict) -> dict:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    set_threads(spec["threads"])
    model, tok = _plain_model(spec["model_dir"])
    _same_template(spec, tok)
    rows = read_rows(spec["rows"])
    records = [{"prompt": _chat_messages(r, spec["system"]), "completion": [{"role": "assistant", "content": r["chosen"]}],
                "tools": json.dumps(r.get("tools") or [])} for r in rows]
    with PeakRSS() as meter:
        args = _plain_args(SFTConfig, spec)
        trainer = SFTTrainer(model, args=args, train_dataset=Dataset.from_list(records), processing_class=tok)
        trainer.train()
    expected = _expected_sft(spec, tok, rows)
    got = trainer.train_dataset
    _check_one_epoch(trainer, len(got), spec)
    same = sum(e["input_ids"] == i and e["labels"] == lab for e, i, lab in zip(expected, got["input_ids"], got["labels"]))
    return {**_trained(trainer, meter), "tokens": sum(len(i) for i in got["input_ids"]), "examples": len(got),
            "same_tokens_fraction": same / len(expected)}


# --- DPO ----------------------------------------------------------------------------------------------------------
def dpo_ours(spec: dict) -> dict:
    from agent_align.stages.dpo import to_dataset, train_round
    from agent_align.train.common import wrap_peft

    cfg, ctx, model, tok, enc = ours_setup(spec)
    model = wrap_peft(cfg, model, new_adapter=cfg.peft.new_adapter_for_dpo)
    pairs = [dict(r, source="synthetic") for r in read_rows(spec["rows"])]
    with PeakRSS() as meter:
        trainer = train_round(cfg, ctx, model, tok, to_dataset(cfg, ctx, enc, pairs, 0), 0)
    _check_one_epoch(trainer, len(trainer.train_dataset), spec)
    return {**_trained(trainer, meter), "pairs": len(trainer.train_dataset)}


def _plain_dpo_inputs(spec: dict) -> tuple:
    """(model, tokenizer, rows, records) for a plain-TRL DPO side: pairs as TRL takes them, with a
    conversational prompt and completions and the tools as JSON."""
    set_threads(spec["threads"])
    model, tok = _plain_model(spec["model_dir"])
    rows = read_rows(spec["rows"])
    records = [{"prompt": _chat_messages(r, spec["system"]), "chosen": [{"role": "assistant", "content": r["chosen"]}],
                "rejected": [{"role": "assistant", "content": r["rejected"]}], "tools": json.dumps(r.get("tools") or [])}
               for r in rows]
    return model, tok, rows, records


def dpo_baseline(spec: dict) -> dict:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from agent_align.train.encode import Encoder, chat_of

    model, tok, rows, records = _plain_dpo_inputs(spec)
    with PeakRSS() as meter:
        args = _plain_args(DPOConfig, spec)
        trainer = DPOTrainer(model, args=args, train_dataset=Dataset.from_list(records), processing_class=tok)
        trainer.train()
    enc = Encoder(tok, spec["max_length"], spec["max_prompt_length"])
    expected = [enc.dpo_example(chat_of(r, spec["system"]), r["chosen"], r["rejected"]) for r in rows]
    got = trainer.train_dataset
    _check_one_epoch(trainer, len(got), spec)
    same = sum(e == {"prompt_ids": p, "chosen_ids": c, "rejected_ids": j}
               for e, p, c, j in zip(expected, got["prompt_ids"], got["chosen_ids"], got["rejected_ids"]))
    return {**_trained(trainer, meter), "pairs": len(got), "same_tokens_fraction": same / len(expected)}


# --- reference log-probs ------------------------------------------------------------------------------------------
def _no_training() -> None:
    """Only the reference pass is timed: TRL runs it in the trainer's constructor (precompute_ref_log_probs), so
    ``train`` does nothing in this (fresh, throw-away) process."""
    from trl import DPOTrainer

    DPOTrainer.train = lambda self, *a, **k: None


def _ref_values(ds) -> dict:
    return {"ref_chosen": [float(x) for x in ds["ref_chosen_logps"]],
            "ref_rejected": [float(x) for x in ds["ref_rejected_logps"]]}


def ref_ours(spec: dict) -> dict:
    """stages.dpo.to_dataset + train_round up to training: tokenised pairs, then the reference pass."""
    from agent_align.stages.dpo import to_dataset, train_round

    _no_training()
    cfg, ctx, model, tok, enc = ours_setup(spec)
    pairs = [dict(r, source="synthetic") for r in read_rows(spec["rows"])]
    with PeakRSS() as meter:
        trainer = train_round(cfg, ctx, model, tok, to_dataset(cfg, ctx, enc, pairs, 0), 0)
    return {**meter.as_dict(), "pairs": len(trainer.train_dataset), **_ref_values(trainer.train_dataset),
            "settings": {"batch_size": trainer.args.precompute_ref_batch_size, "bf16": bool(trainer.args.bf16)}}


def ref_baseline(spec: dict) -> dict:
    """TRL's DPOTrainer with ``precompute_ref_log_probs=True`` (its way of not holding a reference model), at the
    same reference batch size as ours; timed from the raw rows to the constructor returning."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    _no_training()
    model, tok, rows, records = _plain_dpo_inputs(spec)
    with PeakRSS() as meter:
        args = DPOConfig(output_dir=str(Path(spec["run_dir"]) / "trainer"), per_device_train_batch_size=spec["batch_size"],
                         max_length=spec["max_length"], precompute_ref_log_probs=True,
                         precompute_ref_batch_size=spec["ref_batch_size"], **_cpu_defaults(spec))
        trainer = DPOTrainer(model, args=args, train_dataset=Dataset.from_list(records), processing_class=tok)
    return {**meter.as_dict(), "pairs": len(trainer.train_dataset), **_ref_values(trainer.train_dataset),
            "settings": {"batch_size": spec["ref_batch_size"], "bf16": bool(args.bf16)}}


# --- on-policy sampling -------------------------------------------------------------------------------------------
def sampling_ours(spec: dict) -> dict:
    """train.on_policy.sample_negatives: the DPO stage's sampling, validation and pairing of every prompt."""
    from agent_align.train.on_policy import sample_negatives

    cfg, _, model, tok, enc = ours_setup({**spec, "for_training": False})
    rows = read_rows(spec["rows"])
    with PeakRSS() as meter:
        _, stats = sample_negatives(cfg, model, tok, enc, rows, 0)
    return {**meter.as_dict(), "samples": stats["samples"], "pass_rate": stats["sample_pass_rate"]}


def sampling_baseline(spec: dict) -> dict:
    """``model.generate(do_sample=True, ...)`` on left-padded batches of the same prompts, with the same
    temperature, top-p (top_k=0: ours has no top-k), samples per prompt, new-token limit and prompts per batch;
    the same validator scores the samples inside the timing, as the stage does on our side."""
    import torch

    from agent_align.validation.validator import SchemaChecker, validate_output

    cfg = spec["cfg"]
    set_threads(spec["threads"])
    model, tok = _plain_model(spec["model_dir"])
    model.eval()
    tok.padding_side = "left"
    rows, k = read_rows(spec["rows"]), cfg.dpo.samples_per_prompt
    batch = max(1, (cfg.evaluate.batch_size or cfg.hardware.eval_batch_size) // k)
    checker, n_samples, n_pass = SchemaChecker(), 0, 0
    torch.manual_seed(cfg.seed)
    with PeakRSS() as meter:
        for start in range(0, len(rows), batch):
            chunk = rows[start:start + batch]
            texts = [tok.apply_chat_template(_chat_messages(r, spec["system"]), tools=r.get("tools") or None,
                                             add_generation_prompt=True, tokenize=False) for r in chunk]
            inputs = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad():
                out = model.generate(**inputs, do_sample=True, temperature=cfg.dpo.temperature, top_p=cfg.dpo.top_p,
                                     top_k=0, num_return_sequences=k, max_new_tokens=cfg.evaluate.max_new_tokens,
                                     pad_token_id=tok.pad_token_id)
            new = out[:, inputs["input_ids"].shape[1]:]
            for j, seq in enumerate(new):
                text = tok.decode(seq, skip_special_tokens=True)
                n_samples += 1
                n_pass += validate_output(text, chunk[j // k]["schema"], cfg.data.format, checker).passed
    return {**meter.as_dict(), "samples": n_samples, "pass_rate": n_pass / max(1, n_samples)}


# --- evaluation ---------------------------------------------------------------------------------------------------
def eval_ours(spec: dict) -> dict:
    from agent_align.stages.evaluate import predict

    cfg, _, model, tok, enc = ours_setup({**spec, "for_training": False})
    rows = read_rows(spec["rows"])
    with PeakRSS() as meter:
        outputs = predict(cfg, model, tok, enc, rows, "benchmark eval")
    return {**meter.as_dict(), "calls": len(outputs), "outputs": outputs, "verdicts": _verdicts(rows, outputs, cfg)}


def _verdicts(rows: list[dict], outputs: list[str], cfg) -> list[list]:
    """The strict verdict of each output, [passed, category], scored as stage=evaluate scores it: what both sides'
    outputs must agree on where ours stops a row early (at its complete call, or on the first character of prose)."""
    from agent_align.stages.evaluate import score

    return [[v.passed, v.category] for v in score(cfg, rows, outputs)[1]]


def eval_baseline(spec: dict) -> dict:
    set_threads(spec["threads"])
    model, tok = _plain_model(spec["model_dir"])
    model.eval()
    rows, outputs, new_tokens = read_rows(spec["rows"]), [], 0
    with PeakRSS() as meter:
        for row in rows:
            inputs = tok.apply_chat_template(_chat_messages(row, spec["system"]), tools=row.get("tools") or None,
                                             add_generation_prompt=True, return_dict=True, return_tensors="pt")
            out = model.generate(**inputs, max_new_tokens=spec["max_new_tokens"], do_sample=False)
            new = out[0, inputs["input_ids"].shape[1]:]
            new_tokens += len(new)
            outputs.append(tok.decode(new, skip_special_tokens=True))
    return {**meter.as_dict(), "calls": len(outputs), "outputs": outputs, "new_tokens": new_tokens,
            "verdicts": _verdicts(rows, outputs, spec["cfg"])}


# --- agent rollouts -----------------------------------------------------------------------------------------------
def _episodes(cfg):
    from agent_align.env.environment import OrgEnv
    from agent_align.env.tasks import select_split
    from agent_align.stages.agent import sample_ids

    org = OrgEnv(cfg.env)
    return org, sample_ids(select_split(org.tasks, cfg.agent.split, cfg.agent.limit), cfg.agent.num_samples)


def _rollout_stats(records: list[dict], meter: PeakRSS) -> dict:
    return {**meter.as_dict(), "episodes": len(records), "steps": sum(r["total_time_steps"] for r in records),
            "steps_by_episode": {r["sample_id"]: r["total_time_steps"] for r in records}}


def rollouts_ours(spec: dict) -> dict:
    from agent_align.agents import build_agent
    from agent_align.agents.llm import build_judge
    from agent_align.agents.runner import Runner
    from agent_align.hardware import resolve_precision
    from agent_align.stages.context import RunContext

    cfg = spec["cfg"]
    set_threads(cfg.hardware.torch_threads)
    resolve_precision(cfg.hardware)
    ctx = RunContext(run_dir=Path(spec["run_dir"]))
    org, samples = _episodes(cfg)
    with org:
        runner = Runner(org, build_agent(cfg, ctx), None, build_judge(cfg, ctx), cfg.agent, fmt=cfg.data.format,
                        seed=cfg.seed)
        with PeakRSS() as meter:
            records = list(runner.run(samples))
    return _rollout_stats(records, meter)


def rollouts_baseline(spec: dict) -> dict:
    cfg = spec["cfg"]
    set_threads(spec["threads"])
    model, tok = _plain_model(cfg.agent.model_path)
    model.eval()
    budget = cfg.model.max_length - cfg.agent.max_new_tokens  # the same context rule as the batched backend
    org, samples = _episodes(cfg)
    records = []
    with org, PeakRSS() as meter:
        for task, k, sample_id in samples:
            env = org.episode(cfg.data.format)
            chat = env.reset(task, k)
            while not env.done:
                inputs = tok.apply_chat_template(chat["messages"], tools=chat["tools"] or None, add_generation_prompt=True,
                                                 return_dict=True, return_tensors="pt")
                n = inputs["input_ids"].shape[1]
                if n > budget:
                    env.truncate("context")
                    break
                out = model.generate(**inputs, max_new_tokens=cfg.agent.max_new_tokens, do_sample=False)
                env.step(tok.decode(out[0, n:], skip_special_tokens=True))
                chat = env.chat()
            records.append({"sample_id": sample_id, "total_time_steps": len(env.steps)})
    return _rollout_stats(records, meter)


# --- profiles -----------------------------------------------------------------------------------------------------
def profiled(spec: dict) -> dict:
    """One more run of a side with its timed block under torch.profiler and cProfile, written as text tables
    to ``spec["profile_path"]``. Profiling slows it down, so this run is never one of the timed ones."""
    import common

    common.PROFILE_TO = spec["profile_path"]
    fn = spec["side_fn"]  # a side here, or "module.function" (utilisation.mfu)
    module, _, name = fn.rpartition(".")
    (importlib.import_module(module).__dict__ if module else globals())[name](spec)
    return {"profile": spec["profile_path"]}
