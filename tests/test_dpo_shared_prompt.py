"""Shared-prompt DPO (agent_align.train.shared_prompt) against TRL's own two-rows-per-pair path: the same
per-token log-probs, precomputed reference log-probs, losses and gradients, for sigmoid, ipo, rpo
(sigmoid + sft with loss_weights), masked agent pairs and step-wise DPO; tight in fp32, and in bf16
autocast no further from TRL's bf16 than TRL's bf16 is from fp32."""

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


def pairs(vocab: int, n: int = 6, seed: int = 0) -> list[dict]:
    """Random token rows with what makes packing tricky: completions that start alike, a chosen that is a
    prefix of its rejected, one-token completions, and rows longer than max_length (truncated)."""
    g = torch.Generator().manual_seed(seed)

    def ids(lo, hi):
        return torch.randint(3, vocab, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()
    out = []
    for i in range(n):
        p, c, r = ids(5, 40), ids(1, 14), ids(1, 14)
        if i == 1:
            r = c[:3] + r
        if i == 2:
            r = c + r
        if i == 3:
            c, r = c[:1], r[:1]
        if i == 4:
            p, c = ids(50, 55), ids(20, 30)  # 50+ prompt + 20+ chosen > max_length 64: TRL keeps the start
        out.append({"prompt_ids": p, "chosen_ids": c, "rejected_ids": r})
    return out


def make(tiny, rows, cls, *, loss_type=("sigmoid",), loss_weights=None, bf16=False, tmp_path, **extra):
    from datasets import Dataset
    from trl import DPOConfig

    model, tok = tiny
    args = DPOConfig(output_dir=str(tmp_path / cls.__name__), per_device_train_batch_size=len(rows), max_length=64,
                     beta=0.5, loss_type=list(loss_type), loss_weights=loss_weights, precompute_ref_log_probs=True,
                     precompute_ref_batch_size=4, report_to=[], use_cpu=True, save_strategy="no", bf16=bf16,
                     pad_to_multiple_of=32, disable_dropout=True, **extra)
    data = rows if hasattr(rows, "column_names") else Dataset.from_list(rows)
    return cls(copy.deepcopy(model), args=args, train_dataset=data, processing_class=tok)


def loss_and_grads(trainer, seed: int = 1):
    """Loss and parameter gradients on the whole train set as one batch, after moving the policy away from the
    (precomputed) reference so the log-ratios are not all zero."""
    model = trainer.model
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    model.train()
    model.zero_grad()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])
    with trainer.accelerator.autocast():
        loss = trainer.compute_loss(model, batch)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return loss.detach(), grads, metrics


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-12)).item()


def refs(trainer) -> torch.Tensor:
    return torch.tensor([trainer.train_dataset["ref_chosen_logps"], trainer.train_dataset["ref_rejected_logps"]])


def test_packed_forward_gives_trls_per_token_outputs(tiny):
    """Log-probs, entropy, mean logits and top-1 flags of every scored token, in TRL's layout, fp32."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference
    from trl.trainer.utils import add_fused_lm_head

    from agent_align.train.shared_prompt import PackedForward, pack

    model = copy.deepcopy(tiny[0])
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    rows = pairs(model.config.vocab_size)
    b = DataCollatorForPreference(pad_token_id=0, max_length=64, pad_to_multiple_of=8)(rows)
    labels = b["input_ids"].masked_fill(b["completion_mask"] == 0, -100)
    with torch.no_grad():
        want = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=labels, fused_lm_head=True)
        got = PackedForward(model, 8)(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=labels,
                                      fused_lm_head=True, use_cache=False)
    for k in ("log_probs", "entropy", "mean_logits"):
        torch.testing.assert_close(getattr(got, k), getattr(want, k), rtol=1e-5, atol=1e-5, msg=k)
    assert torch.equal(got.is_top1, want.is_top1)
    assert torch.count_nonzero(want.log_probs) == (labels[:, 1:] != -100).sum() > 0
    p = pack(b["input_ids"], b["attention_mask"], labels, pad_token_id=0)
    n_trl = int(b["attention_mask"].sum())
    assert p["input_ids"].shape[0] == len(rows)  # one row per pair, each prompt but its last token sent once
    assert int((p["segments"] >= 0).sum()) <= n_trl - sum(len(r["prompt_ids"]) - 1 for r in rows)
    # the mask is what makes it right: letting the rejected branch also see the chosen tokens changes its scores
    seg_free = p["attention_mask"] | torch.tril(torch.ones_like(p["attention_mask"][0, 0]))[None, None]
    with torch.no_grad():
        leaky = model(input_ids=p["input_ids"], attention_mask=seg_free, position_ids=p["position_ids"],
                      labels=p["labels"], fused_lm_head=True).log_probs
    assert (leaky.reshape(-1)[p["src"]] - got.log_probs.reshape(-1)[p["dst"]]).abs().max() > 1e-3


LOSSES = {"sigmoid": (("sigmoid",), None), "ipo": (("ipo",), None), "rpo": (("sigmoid", "sft"), [1.0, 0.5])}


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_same_reference_loss_and_gradients_as_trl_in_fp32(tiny, tmp_path, loss):
    from agent_align.train.dpo import PretokenizedDPOTrainer
    from agent_align.train.shared_prompt import with_shared_prompt

    loss_type, weights = LOSSES[loss]
    rows = pairs(tiny[0].config.vocab_size)
    trl_t = make(tiny, rows, PretokenizedDPOTrainer, loss_type=loss_type, loss_weights=weights, tmp_path=tmp_path)
    ours = make(tiny, rows, with_shared_prompt(PretokenizedDPOTrainer), loss_type=loss_type, loss_weights=weights,
                tmp_path=tmp_path)
    torch.testing.assert_close(refs(ours), refs(trl_t), rtol=1e-5, atol=1e-4)
    loss_t, grad_t, m_t = loss_and_grads(trl_t)
    loss_o, grad_o, m_o = loss_and_grads(ours)
    assert loss_t.item() > 0 and grad_t.abs().sum() > 0
    torch.testing.assert_close(loss_o, loss_t, rtol=1e-5, atol=1e-6)
    assert rel(grad_o, grad_t) < 1e-4
    for k in ("rewards/margins", "logps/chosen", "logps/rejected", "entropy", "mean_token_accuracy"):
        assert m_o[k] == pytest.approx(m_t[k], rel=1e-4, abs=1e-5), k


def test_bf16_autocast_is_as_close_to_trl_as_trls_own_bf16(tiny, tmp_path):
    """rpo under bf16 autocast: our error against TRL's bf16 is within twice TRL's bf16-vs-fp32 error."""
    from agent_align.train.dpo import PretokenizedDPOTrainer
    from agent_align.train.shared_prompt import with_shared_prompt

    loss_type, weights = LOSSES["rpo"]
    rows = pairs(tiny[0].config.vocab_size)
    run = {}
    for name, cls, bf16 in (("fp32", PretokenizedDPOTrainer, False), ("trl", PretokenizedDPOTrainer, True),
                            ("ours", with_shared_prompt(PretokenizedDPOTrainer), True)):
        t = make(tiny, rows, cls, loss_type=loss_type, loss_weights=weights, bf16=bf16, tmp_path=tmp_path / name)
        run[name] = (refs(t), *loss_and_grads(t)[:2])
    (ref32, loss32, g32), (ref_t, loss_t, g_t), (ref_o, loss_o, g_o) = run["fp32"], run["trl"], run["ours"]
    assert rel(ref_t, ref32) > 0  # autocast was on: bf16 differs from fp32
    assert rel(ref_o, ref_t) <= 2 * rel(ref_t, ref32) + 1e-6
    assert abs(loss_o - loss_t) <= 2 * abs(loss_t - loss32) + 1e-6
    assert rel(g_o, g_t) <= 2 * rel(g_t, g32) + 1e-4 and rel(g_o, g_t) < 0.05


def test_masked_agent_pairs_match_trl(tiny, tmp_path):
    """Per-token masks (tool observations out of the log-probs) survive packing: loss and gradients equal."""
    from tests.test_dpo_masking import FINAL, PROMPT, TOOLS, call, obs

    from agent_align.train.dpo import PretokenizedDPOTrainer, masked_preference_dataset
    from agent_align.train.shared_prompt import with_shared_prompt

    _, tok = tiny
    rows = [{"prompt": PROMPT, "tools": TOOLS, "chosen": c, "rejected": r} for c, r in (
        ([call("Mei Sato"), obs('{"name": "Mei Sato", "country": "Japan"}'), FINAL],
         [call("Sato"), obs("ERROR not_found: no employee named Sato"), call("Mei"), obs("ERROR not_found")]),
        ([FINAL], [call("Mei Sato"), obs('{"country": "Japan"}')]),
        ([call("Mei Sato"), obs("{}"), FINAL], [call("Mei Sato"), obs("{}"), call("Mei")]))]  # alike for a turn
    ds = masked_preference_dataset(rows, tok, max_length=512, max_prompt_length=400)
    from trl import DPOConfig

    def build(cls):
        model, _ = tiny
        args = DPOConfig(output_dir=str(tmp_path / cls.__name__), per_device_train_batch_size=3, max_length=512,
                         beta=0.5, loss_type=["sigmoid", "sft"], loss_weights=[1.0, 1.0], precompute_ref_log_probs=True,
                         precompute_ref_batch_size=2, report_to=[], use_cpu=True, save_strategy="no", bf16=False,
                         pad_to_multiple_of=32)
        return cls(copy.deepcopy(model), args=args, train_dataset=ds, processing_class=tok)

    trl_t, ours = build(PretokenizedDPOTrainer), build(with_shared_prompt(PretokenizedDPOTrainer))
    torch.testing.assert_close(refs(ours), refs(trl_t), rtol=1e-5, atol=1e-4)
    loss_t, grad_t, _ = loss_and_grads(trl_t)
    loss_o, grad_o, _ = loss_and_grads(ours)
    torch.testing.assert_close(loss_o, loss_t, rtol=1e-5, atol=1e-6)
    assert rel(grad_o, grad_t) < 1e-4


def test_stepwise_trainer_matches_its_unshared_self(tmp_path):
    from tests.test_steps_trainer import ROWS, tiny_lm
    from trl import DPOConfig

    from agent_align.steps.trainer import StepwiseDPOTrainer, prepare_stepwise_dataset
    from agent_align.train.shared_prompt import with_shared_prompt

    model, tok = tiny_lm()
    ds = prepare_stepwise_dataset(ROWS, tok, fmt="react")
    out = {}
    for cls in (StepwiseDPOTrainer, with_shared_prompt(StepwiseDPOTrainer)):
        args = DPOConfig(output_dir=str(tmp_path / cls.__name__), per_device_train_batch_size=2, max_length=128,
                         beta=0.5, precompute_ref_log_probs=True, report_to=[], use_cpu=True, save_strategy="no",
                         bf16=False, disable_dropout=True)
        t = cls(copy.deepcopy(model), args=args, train_dataset=ds, processing_class=tok)
        out[cls.__name__] = (refs(t), *loss_and_grads(t)[:2])
    (ref_t, loss_t, g_t), (ref_o, loss_o, g_o) = out.values()
    torch.testing.assert_close(ref_o, ref_t, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(loss_o, loss_t, rtol=1e-5, atol=1e-6)
    assert rel(g_o, g_t) < 1e-4


def test_dpo_stage_trains_through_the_shared_path_and_can_switch_it_off(tiny, tmp_path):
    from agent_align.stages.context import RunContext
    from agent_align.stages.dpo import train_round
    from agent_align.train.fast import Bf16ReferenceMixin
    from agent_align.train.shared_prompt import SharedPromptMixin

    model, tok = tiny
    from datasets import Dataset

    ds = Dataset.from_list(pairs(model.config.vocab_size, n=8))
    for flag in (True, False):
        cfg = compose([*MICRO, "loss=rpo", "dpo.max_steps=2", "hardware.dpo_batch_size=4", "dpo.lr=1e-2",
                       f"hardware.shared_prompt_dpo={str(flag).lower()}", f"hardware.bf16_reference={str(flag).lower()}",
                       f"run_dir={tmp_path / str(flag)}"])
        m = copy.deepcopy(model)
        before = [p.detach().clone() for p in m.parameters()]
        trainer = train_round(cfg, RunContext(run_dir=tmp_path / str(flag)), m, tok, ds, 0)
        assert isinstance(trainer, SharedPromptMixin) == flag and isinstance(trainer, Bf16ReferenceMixin) == flag
        assert all(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
        assert any("loss" in h for h in trainer.state.log_history)


def test_dpo_activation_checkpointing_changes_memory_not_the_updates(tiny, tmp_path):
    """hardware.dpo_gradient_checkpointing (cpu.yaml: on) recomputes activations in the backward; the losses and the
    trained weights are the ones without it."""
    from agent_align.stages.context import RunContext
    from agent_align.stages.dpo import train_round

    model, tok = tiny
    from datasets import Dataset

    ds = Dataset.from_list(pairs(model.config.vocab_size, n=8))
    runs = {}
    for flag in (True, False):
        cfg = compose([*MICRO, "loss=rpo", "dpo.max_steps=2", "hardware.dpo_batch_size=4", "dpo.lr=1e-2",
                       f"hardware.dpo_gradient_checkpointing={str(flag).lower()}", f"run_dir={tmp_path / str(flag)}"])
        trainer = train_round(cfg, RunContext(run_dir=tmp_path / str(flag)), copy.deepcopy(model), tok, ds, 0)
        assert trainer.args.gradient_checkpointing == flag
        layers = [m for m in trainer.model.modules() if hasattr(m, "gradient_checkpointing")]
        assert layers and all(m.gradient_checkpointing == flag for m in layers)
        runs[flag] = ([h["loss"] for h in trainer.state.log_history if "loss" in h],
                      [p.detach().clone() for p in trainer.model.parameters()])
    (loss_on, w_on), (loss_off, w_off) = runs[True], runs[False]
    assert loss_on and loss_on == pytest.approx(loss_off, rel=1e-5)
    for a, b in zip(w_on, w_off):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
