"""DPO speed-ups that keep TRL's numbers: the reference pass in length order (agent_align.train.ref_pass) and the DPO
fast path (``hardware.dpo_fast_path``: RoPE in bf16 in the steps and the reference pass, bf16 GEMMs in the fused LM
head's backward; agent_align.train.fast), and the progress lines both write to the log."""

from __future__ import annotations

import copy
import logging

import torch

from tests.conftest import MICRO, compose
from tests.test_dpo_shared_prompt import LOSSES, loss_and_grads, make, pairs, refs, rel, tiny  # noqa: F401


def _progress_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "agent_align.progress"]


def test_reference_pass_runs_in_length_order_and_returns_the_dataset_order(tiny, tmp_path, monkeypatch, caplog):  # noqa: F811
    from agent_align.train.dpo import PretokenizedDPOTrainer
    from agent_align.train.ref_pass import pair_lengths, with_ref_pass
    from agent_align.train.shared_prompt import with_shared_prompt

    caplog.set_level(logging.INFO, logger="agent_align.progress")
    rows = pairs(tiny[0].config.vocab_size, n=12, seed=3)
    base = with_shared_prompt(PretokenizedDPOTrainer)
    seen = []
    real = base.compute_ref_log_probs

    def spy(self, model, inputs):
        n = inputs["input_ids"].shape[0] // 2
        seen.append((inputs["attention_mask"][:n].sum(1) + inputs["attention_mask"][n:].sum(1)).tolist())
        return real(self, model, inputs)

    monkeypatch.setattr(base, "compute_ref_log_probs", spy)
    plain = refs(make(tiny, rows, base, tmp_path=tmp_path / "plain"))
    in_dataset_order = list(seen)
    seen.clear()
    trainer = make(tiny, rows, with_ref_pass(base), tmp_path=tmp_path / "sorted")
    sorted_refs = refs(trainer)
    torch.testing.assert_close(sorted_refs, plain, rtol=1e-5, atol=1e-5)  # the same values, in the rows' order
    assert trainer.train_dataset["prompt_ids"] == [r["prompt_ids"] for r in rows]
    lengths = pair_lengths(trainer.train_dataset)
    assert sorted(lengths) != lengths  # the rows were not already in order
    # the pass saw the pairs shortest first (the collator's rows are cut at max_length=64: compare what it kept)
    kept = [min(len(r["prompt_ids"]) + len(r["chosen_ids"]), 64) + min(len(r["prompt_ids"]) + len(r["rejected_ids"]), 64)
            for r in rows]
    by_length = sorted(range(len(rows)), key=lengths.__getitem__)
    assert [x for batch in seen for x in batch] == [kept[i] for i in by_length]
    assert [x for batch in in_dataset_order for x in batch] == kept
    assert _progress_lines(caplog)[-1].startswith("reference log-probs (train): 12/12 pairs in ")


def test_dpo_fast_path_is_as_close_to_trl_as_trls_own_bf16(tiny, tmp_path):  # noqa: F811
    """rpo under bf16 autocast with the shared prompt: adding the fast path keeps the reference log-probs, loss and
    gradients within twice TRL's own bf16-vs-fp32 error, and RoPE really ran in bf16."""
    from agent_align.train.dpo import PretokenizedDPOTrainer
    from agent_align.train.fast import dpo_fast_hooks, set_bf16_lm_head_grads
    from agent_align.train.shared_prompt import with_shared_prompt

    loss_type, weights = LOSSES["rpo"]
    rows = pairs(tiny[0].config.vocab_size)
    shared = with_shared_prompt(PretokenizedDPOTrainer)
    model, tok = tiny
    run = {}
    for name, cls, bf16, fast in (("fp32", PretokenizedDPOTrainer, False, False), ("trl", PretokenizedDPOTrainer, True, False),
                                  ("shared", shared, True, False), ("fast", shared, True, True)):
        m = copy.deepcopy(model)
        hooks = dpo_fast_hooks(m) if fast else []
        dtypes = set()
        spies = [layer.self_attn.register_forward_pre_hook(
            lambda mod, args, kw: dtypes.add(kw["position_embeddings"][0].dtype), with_kwargs=True)
            for layer in m.model.layers]
        set_bf16_lm_head_grads(fast)
        try:
            t = make((m, tok), rows, cls, loss_type=loss_type, loss_weights=weights, bf16=bf16, tmp_path=tmp_path / name)
            run[name] = (refs(t), *loss_and_grads(t)[:2], dtypes)
        finally:
            set_bf16_lm_head_grads(False)
            for h in hooks + spies:
                h.remove()
    (ref32, loss32, g32, d32), (ref_t, loss_t, g_t, d_t), (ref_s, loss_s, g_s, _), (ref_f, loss_f, g_f, d_f) = (
        run[k] for k in ("fp32", "trl", "shared", "fast"))
    assert d32 == d_t == {torch.float32} and d_f == {torch.bfloat16}  # cos/sin in bf16 in the reference pass and steps
    assert rel(ref_t, ref32) > 0 and rel(ref_f, ref_s) > 0  # autocast was on, and the fast path changed something
    assert rel(ref_f, ref_t) <= 2 * rel(ref_t, ref32) + 1e-6
    assert abs(loss_f - loss_t) <= 2 * abs(loss_t - loss32) + 1e-6
    assert rel(g_f, g_t) <= 2 * rel(g_t, g32) + 1e-4 and rel(g_f, g_t) < 0.05


def test_dpo_round_switches_the_fast_path_and_logs_its_steps(tiny, tmp_path, caplog):  # noqa: F811
    import trl.kernels.chunked_logprob as kc
    from datasets import Dataset

    from agent_align.stages.context import RunContext
    from agent_align.stages.dpo import train_round
    from agent_align.train import fast
    from agent_align.train.ref_pass import RefPassMixin

    caplog.set_level(logging.INFO, logger="agent_align.progress")
    model, tok = tiny
    ds = Dataset.from_list(pairs(model.config.vocab_size, n=8))
    rotary = [m for m in model.modules() if type(m).__name__.endswith("RotaryEmbedding")]
    for flag in (True, False):
        caplog.clear()
        cfg = compose([*MICRO, "loss=rpo", "dpo.max_steps=2", "hardware.dpo_batch_size=4", "dpo.logging_steps=1",
                       f"hardware.dpo_fast_path={str(flag).lower()}", f"run_dir={tmp_path / str(flag)}"])
        m = copy.deepcopy(model)
        trainer = train_round(cfg, RunContext(run_dir=tmp_path / str(flag)), m, tok, ds, 0)
        assert isinstance(trainer, RefPassMixin)
        assert (kc._addmm_fp32 is fast._addmm_bf16_on_cpu) == flag
        assert not any(r._forward_hooks for r in m.modules() if type(r).__name__.endswith("RotaryEmbedding"))
        lines = _progress_lines(caplog)
        assert any(x.startswith("reference log-probs (train): 8/8 pairs in ") for x in lines)
        assert lines[-1].startswith("dpo: 2/2 steps in ")
    assert not any(r._forward_hooks for r in rotary)  # the shared model was never hooked
    fast.set_bf16_lm_head_grads(False)


def test_length_buckets_cut_padding_and_keep_the_order_random():
    import random

    from agent_align.train.batching import LengthBucketSampler

    rng = random.Random(0)
    lengths = [rng.randint(100, 600) for _ in range(320)]
    sampler = LengthBucketSampler(lengths, batch_size=8, seed=0)

    def batches(order):
        return [order[i:i + 8] for i in range(0, len(order), 8)]

    def padded(order):  # tokens the collator runs: every pair padded to its batch's longest
        return sum(len(b) * max(lengths[i] for i in b) for b in batches(order))

    first = list(sampler)
    assert sorted(first) == list(range(320))  # every pair once an epoch
    shuffled = list(range(320))
    rng.shuffle(shuffled)
    assert padded(first) < 0.8 * padded(shuffled) and padded(first) < 1.05 * sum(lengths)
    longest = [max(lengths[i] for i in b) for b in batches(first)]
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)  # not a length curriculum
    assert list(sampler) == first  # the same epoch replays the same order (a resumed run skips what it did)
    sampler.set_epoch(1)
    assert list(sampler) != first and sorted(sampler) == list(range(320))


def test_dpo_round_with_length_buckets_trains_on_every_pair(tiny, tmp_path):  # noqa: F811
    from datasets import Dataset

    from agent_align.stages.context import RunContext
    from agent_align.stages.dpo import train_round
    from agent_align.train.batching import LengthBucketMixin, LengthBucketSampler

    model, tok = tiny
    ds = Dataset.from_list(pairs(model.config.vocab_size, n=8))
    seen = []
    cfg = compose([*MICRO, "loss=rpo", "dpo.epochs=1", "hardware.dpo_batch_size=4", "dpo.group_by_length=true",
                   f"run_dir={tmp_path}"])
    trainer = train_round(cfg, RunContext(run_dir=tmp_path), copy.deepcopy(model), tok, ds, 0)
    assert isinstance(trainer, LengthBucketMixin) and isinstance(trainer._get_train_sampler(), LengthBucketSampler)
    for batch in trainer.get_train_dataloader():
        seen += batch["input_ids"][: len(batch["input_ids"]) // 2, :3].tolist()
    assert sorted(seen) == sorted(r["prompt_ids"][:3] for r in pairs(model.config.vocab_size, n=8))
    assert trainer.state.global_step == 2


def test_a_model_handed_on_in_memory_trains_under_autocast_again(tiny, tmp_path):  # noqa: F811
    """The pipeline hands the SFT model to DPO in memory, and DPO rounds hand theirs on. accelerate wraps a model's
    forward in autocast once and marks it prepared; TRL's next trainer put its fused-head forward in front, so every
    trainer after the first trained in fp32 on a bf16 run. Each training forward of every round runs under autocast."""
    from datasets import Dataset

    from agent_align.stages.context import RunContext
    from agent_align.stages.dpo import train_round
    from agent_align.stages.sft import build_trainer
    from agent_align.train.encode import Encoder, chat_of

    model, tok = copy.deepcopy(tiny[0]), tiny[1]
    seen = []

    def record(mod, args):
        if torch.is_grad_enabled():  # training forwards (the reference pass runs under no_grad)
            seen.append(torch.is_autocast_enabled("cpu"))

    model.model.layers[0].mlp.down_proj.register_forward_pre_hook(record)
    cfg = compose([*MICRO, "loss=rpo", "dpo.max_steps=1", "sft.max_steps=1", "hardware.dpo_batch_size=4",
                   "hardware.sft_batch_size=4", "hardware.precision=bf16", f"run_dir={tmp_path}"])
    ctx = RunContext(run_dir=tmp_path)
    enc = Encoder(tok, cfg.model.max_length, cfg.model.max_prompt_length)
    sft_rows = [enc.sft_example(chat_of({"prompt": f"request {i}"}, "system"), '{"name": "f", "arguments": {}}')
                for i in range(4)]
    trainer, _ = build_trainer(cfg, ctx, model, tok, sft_rows)
    trainer.train()
    for hook in trainer.fast_hooks:
        hook.remove()
    model = trainer.model
    ds = Dataset.from_list(pairs(model.config.vocab_size, n=4))
    for r in range(2):
        before = len(seen)
        model = train_round(cfg, ctx, model, tok, ds, r).model
        assert len(seen) > before
    assert seen and all(seen), seen
