"""The SFT fast path (``hardware.sft_fast_path``, agent_align/train/fast.py) against TRL's SFTTrainer as it comes
(every position through the fused head, the padding mask, fp32 RoPE under autocast, fp32 head GEMMs): the same
loss and gradients, tight in fp32, and in bf16 autocast no further from TRL's bf16 than TRL's bf16 is from fp32."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.conftest import MICRO, compose


@pytest.fixture(scope="module")
def tiny():
    from agent_align.models import load_model_and_tokenizer, resolve_model_path

    cfg = compose(MICRO)
    model, tok = load_model_and_tokenizer(cfg, resolve_model_path(cfg))
    return model, tok


@pytest.fixture(autouse=True)
def restore_trl():
    yield
    from agent_align.train.fast import set_bf16_lm_head_grads, set_compact_lm_head

    set_compact_lm_head(False)
    set_bf16_lm_head_grads(False)


def examples(vocab: int, n: int = 6, seed: int = 0) -> list[dict]:
    """Token rows shaped like ours: a long unlabelled prompt, a short labelled completion, lengths that differ
    (so the batch is right-padded), one row with a single labelled token."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        p = int(torch.randint(20, 90, (1,), generator=g))
        c = 1 if i == 2 else int(torch.randint(4, 20, (1,), generator=g))
        ids = torch.randint(3, vocab, (p + c,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] * p + ids[p:]})
    return out


def ours(tiny, rows, tmp_path, precision: str, fast: bool = True):
    from agent_align.stages.context import RunContext
    from agent_align.stages.sft import build_trainer

    model, tok = tiny
    cfg = compose(MICRO + [f"hardware.precision={precision}", f"hardware.sft_fast_path={str(fast).lower()}",
                           "hardware.compact_lm_head=true", f"hardware.sft_batch_size={len(rows)}"])
    trainer, _ = build_trainer(cfg, RunContext(run_dir=tmp_path / f"ours-{precision}-{fast}"), copy.deepcopy(model),
                               tok, rows)
    return trainer


def plain(tiny, rows, tmp_path, bf16: bool):
    """TRL's SFTTrainer on the same tokenised rows, with its CPU defaults (every position scored)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from agent_align.train.fast import set_bf16_lm_head_grads, set_compact_lm_head

    set_compact_lm_head(False)
    set_bf16_lm_head_grads(False)
    model, tok = tiny
    args = SFTConfig(output_dir=str(tmp_path / f"plain-{bf16}"), per_device_train_batch_size=len(rows), max_length=256,
                     report_to=[], use_cpu=True, save_strategy="no", bf16=bf16, gradient_checkpointing=False)
    return SFTTrainer(copy.deepcopy(model), args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)


def loss_and_grads(trainer, compact: bool, bf16_grads: bool):
    """Loss, parameter gradients and logged metrics of one batch holding every row, with TRL's module switches
    set as this trainer's side had them (they are process-wide)."""
    from agent_align.train.fast import set_bf16_lm_head_grads, set_compact_lm_head

    set_compact_lm_head(compact)
    set_bf16_lm_head_grads(bf16_grads)
    model = trainer.model
    model.train()
    model.zero_grad()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])
    assert not bool(batch["attention_mask"].all())  # right-padded: the case the fast path changes
    with trainer.accelerator.autocast():
        loss = trainer.compute_loss(model, batch)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items() if k in ("entropy", "mean_token_accuracy")}
    return loss.detach().float(), grads.float(), metrics


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp(min=1e-12)).item()


def test_fast_path_equals_trl_in_fp32(tiny, tmp_path):
    rows = examples(len(tiny[1]))
    loss_t, g_t, m_t = loss_and_grads(plain(tiny, rows, tmp_path, bf16=False), compact=False, bf16_grads=False)
    trainer = ours(tiny, rows, tmp_path, "fp32")
    assert trainer.fast_hooks  # the fast path is on by default
    seen = []  # runs after ours: the backbone really got no mask
    trainer.model.base_model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw.get("attention_mask")),
                                                       with_kwargs=True)
    loss_o, g_o, m_o = loss_and_grads(trainer, compact=True, bf16_grads=True)
    assert seen == [None]
    assert loss_t.item() > 0 and g_t.abs().sum() > 0
    torch.testing.assert_close(loss_o, loss_t, rtol=1e-5, atol=1e-6)
    assert rel(g_o, g_t) < 1e-5
    for k in m_t:
        assert m_o[k] == pytest.approx(m_t[k], rel=1e-4, abs=1e-5), k


def test_fast_path_in_bf16_is_as_close_to_trl_as_trls_own_bf16(tiny, tmp_path):
    """bf16 autocast: our loss and gradients against TRL's bf16 within twice TRL's bf16-vs-fp32 difference."""
    rows = examples(len(tiny[1]), seed=1)
    loss32, g32, _ = loss_and_grads(plain(tiny, rows, tmp_path, bf16=False), compact=False, bf16_grads=False)
    loss_t, g_t, _ = loss_and_grads(plain(tiny, rows, tmp_path, bf16=True), compact=False, bf16_grads=False)
    trainer = ours(tiny, rows, tmp_path, "bf16")
    rope = [m for m in trainer.model.modules() if type(m).__name__.endswith("RotaryEmbedding")]
    dtypes = []
    rope[0].register_forward_hook(lambda m, a, out: dtypes.append(out[0].dtype))
    loss_o, g_o, _ = loss_and_grads(trainer, compact=True, bf16_grads=True)
    assert dtypes == [torch.bfloat16]  # cos/sin in the autocast dtype
    assert rel(g_t, g32) > 0  # autocast was on: bf16 differs from fp32
    assert abs(loss_o - loss_t) <= 2 * abs(loss_t - loss32) + 1e-3 * loss_t
    assert rel(g_o, g_t) <= 2 * rel(g_t, g32) + 1e-4 and rel(g_o, g_t) < 0.05
    assert rel(g_o, g32) <= 2 * rel(g_t, g32) + 1e-4


def test_each_switch_alone_keeps_bf16_gradients(tiny, tmp_path):
    """The head's bf16 GEMMs alone, and the hooks alone, each stay within TRL's own bf16 error."""
    rows = examples(len(tiny[1]), seed=2)
    _, g32, _ = loss_and_grads(plain(tiny, rows, tmp_path, bf16=False), compact=False, bf16_grads=False)
    trl_bf16 = plain(tiny, rows, tmp_path, bf16=True)
    _, g_t, _ = loss_and_grads(trl_bf16, compact=False, bf16_grads=False)
    _, g_head, _ = loss_and_grads(trl_bf16, compact=True, bf16_grads=True)
    err = rel(g_t, g32)
    assert rel(g_head, g_t) <= 2 * err + 1e-4
    off = ours(tiny, rows, tmp_path, "bf16", fast=False)
    assert off.fast_hooks == []
    _, g_off, _ = loss_and_grads(off, compact=True, bf16_grads=False)
    assert rel(g_off, g_t) <= 2 * err + 1e-4


def test_hooks_leave_other_masks_alone_and_come_off(tiny):
    from agent_align.train.fast import _right_padded, sft_fast_hooks

    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    assert _right_padded(right)
    assert not _right_padded(left)  # generation pads on the left: its mask is kept
    assert not _right_padded(torch.ones(2, 4, dtype=torch.long))
    assert not _right_padded(torch.tensor([[1, 0, 1, 0]]))  # holes: not plain padding

    model = copy.deepcopy(tiny[0])
    ids = torch.randint(3, 100, (2, 4))
    model.eval()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=left).logits
        handles = sft_fast_hooks(model)
        assert len(handles) >= 2  # the mask hook and the rotary embedding's
        got = model(input_ids=ids, attention_mask=left).logits
        for h in handles:
            h.remove()
    torch.testing.assert_close(got, want)


def test_sft_trains_with_the_fast_path(tiny, tmp_path):
    rows = examples(len(tiny[1]), n=8, seed=3)
    trainer = ours(tiny, rows, tmp_path, "auto")
    trainer.args.max_steps = 2
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    assert any("loss" in h for h in trainer.state.log_history)
    assert all(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))


@pytest.mark.parametrize("grouped", [True, False])
def test_sft_batches_group_lengths_in_random_order(tiny, tmp_path, grouped):
    """``sft.group_by_length`` batches rows of similar length in random order; transformers' own sampler walked the
    default run's rows longest first. Off, the Trainer's random sampler. Every row comes once an epoch either way."""
    from agent_align.stages.context import RunContext
    from agent_align.stages.sft import build_trainer
    from agent_align.train.batching import LengthBucketSampler

    model, tok = tiny
    rows = examples(model.config.vocab_size, n=256, seed=1)
    cfg = compose(MICRO + ["hardware.sft_batch_size=4", f"sft.group_by_length={str(grouped).lower()}"])
    trainer, _ = build_trainer(cfg, RunContext(run_dir=tmp_path), copy.deepcopy(model), tok, rows)
    assert isinstance(trainer._get_train_sampler(), LengthBucketSampler) == grouped
    widths, firsts = [], []
    for batch in trainer.get_train_dataloader():
        widths.append(int(batch["attention_mask"].sum(1).max()))  # the batch's longest row
        firsts += batch["input_ids"][:, 0].tolist()
    assert sorted(firsts) == sorted(r["input_ids"][0] for r in rows)
    padded, held = 4 * sum(widths), sum(len(r["input_ids"]) for r in rows)  # rows padded to their batch's longest
    assert (padded < 1.1 * held) == grouped  # random batches of 4 run ~1.3x the tokens they hold
    assert widths != sorted(widths, reverse=True) and widths != sorted(widths)  # not a length curriculum
