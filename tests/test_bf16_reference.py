"""hardware.bf16_reference: the precomputed reference pass on a bf16 copy of the policy (agent_align.train.fast).
The copy is used on bf16 CPU runs only, lives for the precompute only, leaves the fp32 policy untouched, and its
log-probs stay within bf16 rounding of fp32: the bound is set against autocast's own error."""

from __future__ import annotations

import torch

from tests.test_dpo_shared_prompt import make, pairs, refs, rel, tiny  # noqa: F401  (tiny: a fixture)


def test_reference_pass_runs_on_a_bf16_copy_within_bf16_rounding(tiny, tmp_path, monkeypatch):  # noqa: F811
    from agent_align.train.dpo import PretokenizedDPOTrainer
    from agent_align.train.fast import with_bf16_reference
    from agent_align.train.shared_prompt import with_shared_prompt

    rows = pairs(tiny[0].config.vocab_size, n=8)
    packed = with_shared_prompt(PretokenizedDPOTrainer)
    seen = []
    real = PretokenizedDPOTrainer.compute_ref_log_probs

    def spy(self, model, inputs):
        seen.append(getattr(model, "model", model).dtype)  # PackedForward wraps the model it is given
        return real(self, model, inputs)

    monkeypatch.setattr(PretokenizedDPOTrainer, "compute_ref_log_probs", spy)
    run = {}
    for name, cls, bf16 in (("fp32", packed, False), ("autocast", packed, True),
                            ("copy", with_bf16_reference(packed), True),
                            ("copy_fp32", with_bf16_reference(packed), False)):
        seen.clear()
        t = make(tiny, rows, cls, bf16=bf16, tmp_path=tmp_path / name)
        run[name] = (refs(t), set(seen), t)
    (ref32, _, _), (ref_ac, d_ac, _), (ref_b, d_b, copied), (ref_f, d_f, _) = (
        run[k] for k in ("fp32", "autocast", "copy", "copy_fp32"))
    assert d_ac == {torch.float32} and d_b == {torch.bfloat16} and d_f == {torch.float32}  # the copy only with bf16
    torch.testing.assert_close(ref_f, ref32)  # without bf16 the mixin changes nothing
    assert copied._ref_copy is None and copied.model.dtype == torch.float32  # not kept; the policy stays fp32
    assert 0 < rel(ref_ac, ref32) and 0 < rel(ref_b, ref32) < 4 * rel(ref_ac, ref32)
    assert (ref_b - ref32).abs().max() <= 0.02 * ref32.abs().max()  # within 2% of the sums (as benchmarks/run.py checks)
