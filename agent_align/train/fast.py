"""Speed-ups that live inside TRL's trainers, each switchable from the config (issue 8's comparison).

Compact LM head (``hardware.compact_lm_head``): TRL 1.16's fused LM head projects only the positions
that carry a label on Triton devices, but on every other device it projects *all* positions ("the
number of valid positions would change the tile shapes ... and trigger a recompilation", which is
a concern for XLA/Neuron, not for eager CPU). Our prompts are ~80% of each sequence and carry no
label, so on CPU TRL spends most of its LM-head and log-softmax time on tokens it then zeroes.
Measured on the tiny model (batch 32 x 224 tokens): log-softmax forward+backward took 24% of a step.
TRL reads its private ``_use_triton`` only for that compact/full decision (the kernels import their
own copy), so swapping that one name is the smallest change that gives CPU the compact path.
"""

from __future__ import annotations

import logging
from functools import partial

log = logging.getLogger(__name__)
_ORIGINAL = None


def set_compact_lm_head(enabled: bool) -> None:
    """Score only labelled positions in TRL's fused LM head on every device (``enabled``), or restore TRL."""
    global _ORIGINAL
    import trl.trainer.utils as tu

    if _ORIGINAL is None:
        _ORIGINAL = tu._use_triton
    tu._use_triton = (lambda device: True) if enabled else _ORIGINAL


# --- SFT fast path (``hardware.sft_fast_path``) ------------------------------------------------------------------
# What the profile of an SFT step on SmolLM2 (bf16 autocast, one core) showed and these change; benchmarks/README.md
# *Where an SFT step's time goes* has the table. Each keeps the loss and gradients equal to TRL's path within bf16
# rounding (tests/test_sft_fast_path.py).
_ADDMM = None


def _addmm_bf16_on_cpu(acc, a, b) -> None:
    """TRL's fused head accumulates its backward GEMMs in fp32 by casting both bf16 operands to fp32 on CPU (its
    ``out_dtype`` GEMM is CUDA-only), which runs them at the fp32 rate: ~8x slower than bf16 on AMX (measured
    245 ms vs 30 ms for one 370 x 32768 x 576 product). oneDNN's bf16 GEMM accumulates in fp32 inside and rounds the
    product once; that rounded product is what every other weight gradient gets under autocast. TRL's warning about
    rounding "every vocabulary chunk's product" concerns many small chunks; its CPU chunk is 32,768 columns
    (2 chunks for a 49k vocabulary), summed here in fp32."""
    import torch

    if acc.device.type == "cpu" and a.dtype == b.dtype == torch.bfloat16:
        # contiguous operands: TRL passes views into a torch.empty buffer wider than the vocabulary chunk, and
        # oneDNN's bf16 GEMM on AMX read past such a view now and then (NaN gradients in 1-2 of 4 test processes
        # on an AMX machine; none in 6 with copies, nor with TRL's fp32 casts, which copy too)
        acc.add_(torch.mm(a.contiguous(), b.contiguous()))
    else:
        _ADDMM(acc, a, b)


def set_bf16_lm_head_grads(enabled: bool) -> None:
    """bf16 GEMMs (fp32 accumulation inside oneDNN) in the backward of TRL's fused LM head on CPU, or restore TRL."""
    global _ADDMM
    import trl.kernels.chunked_logprob as kc

    if _ADDMM is None:
        _ADDMM = kc._addmm_fp32
    kc._addmm_fp32 = _addmm_bf16_on_cpu if enabled else _ADDMM


def _right_padded(mask) -> bool:
    """Every row is ones then zeros (TRL's SFT collator pads on the right), and some row is padded."""
    return (mask.dim() == 2 and mask.shape[1] > 1 and not bool(mask.all()) and bool(mask[:, 0].all())
            and bool((mask[:, 1:] <= mask[:, :-1]).all()))


def _causal_only(module, args, kwargs):
    """With right padding, the causal mask alone already keeps every real token from seeing a pad (pads come after
    it), so the padding mask changes nothing a label depends on: pads have no label and their gradient is zero. Without
    it sdpa runs its causal kernel (no mask tensor, grouped-query heads without ``repeat_kv``): measured 77 -> 59 ms
    per layer forward + backward at batch 8 x 384 tokens on one core."""
    import torch

    mask = kwargs.get("attention_mask")
    if (module.training and isinstance(mask, torch.Tensor) and kwargs.get("past_key_values") is None
            and _right_padded(mask)):
        kwargs["attention_mask"] = None
    return args, kwargs


def _rope_in_autocast_dtype(module, args, out, training_only: bool = True):
    """Llama-family rotary embeddings return cos/sin in the dtype of the fp32 residual stream, so under bf16 autocast
    ``q * cos`` promotes the bf16 projections to fp32: RoPE runs in fp32 (forward and backward) and sdpa casts q and k
    back to bf16. Returning cos/sin in the autocast dtype keeps q and k in bf16; they differ from TRL's by the rounding
    of the two products before their sum (at most a few bf16 ulps), and sdpa saw bf16 q and k either way.
    ``training_only``: leave eval-mode forwards (generation) as they are."""
    import torch

    device = out[0].device.type
    if ((module.training or not training_only) and torch.is_autocast_enabled(device)
            and out[0].dtype == torch.float32):
        dtype = torch.get_autocast_dtype(device)
        return tuple(t.to(dtype) for t in out)
    return None


def sft_fast_hooks(model) -> list:
    """Hooks for SFT training on ``model`` (a causal LM, or PEFT around one): the padding mask dropped on right-padded
    batches, RoPE in the autocast dtype. Returns the handles; ``remove()`` each to restore the model."""
    backbone = _backbone(model)
    return [backbone.register_forward_pre_hook(_causal_only, with_kwargs=True), *_rope_hooks(backbone, True)]


def dpo_fast_hooks(model) -> list:
    """Hooks for DPO on ``model``: RoPE in the autocast dtype, in the training steps and in the reference pass too
    (it runs in eval mode; the same arithmetic on both sides keeps the step-0 log-ratios at zero). The shared-prompt
    rows carry a block mask, which the causal-only hook leaves alone. ``remove()`` each handle after training."""
    return _rope_hooks(_backbone(model), False)


def _backbone(model):
    from peft import PeftModel

    core = model.get_base_model() if isinstance(model, PeftModel) else model
    return core.base_model  # what TRL's fused forward calls (through __call__, so its hooks run)


def _rope_hooks(backbone, training_only: bool) -> list:
    hook = partial(_rope_in_autocast_dtype, training_only=training_only)
    return [m.register_forward_hook(hook) for m in backbone.modules() if type(m).__name__.endswith("RotaryEmbedding")]


# --- reference pass on a bf16 copy (``hardware.bf16_reference``) ----------------------------------------------------
class Bf16ReferenceMixin:
    """Put before a TRL ``DPOTrainer`` subclass (and before ``SharedPromptMixin``, so the copy is what gets packed):
    with bf16 on CPU, the precomputed reference pass runs on a bf16 copy of the policy instead of the fp32 model
    under autocast. Under autocast on CPU every forward casts each weight matrix to bf16 again and the residual
    stream, norms and activations stay fp32; the copy pays the cast once and runs everything in bf16. The reference
    log-probs move by bf16 rounding (tests/test_bf16_reference.py bounds it against fp32, next to autocast's own
    error). Measured on SmolLM2 (benchmarks/README.md): +20% reference pairs/s, but sums up to 1.01 nats from TRL's
    autocast ones where ours under autocast stay within 0.33, so it is opt-in. The copy lives for the precompute
    only; PEFT (adapters switched off for the reference) and DeepSpeed (an inference engine) keep TRL's path."""

    _ref_copy = None

    def _precompute_ref_logps(self, dataset, name, batch_size):
        import torch
        from accelerate.utils import is_peft_model
        from trl.trainer.utils import add_fused_lm_head

        from agent_align.generation import inference_copy

        model = self.model
        if (self.args.bf16 and self.ref_model is None and not self.is_deepspeed_enabled and model.device.type == "cpu"
                and model.dtype == torch.float32 and not is_peft_model(model)):
            self._ref_copy = inference_copy(model, True)
            add_fused_lm_head(self._ref_copy)
        try:
            return super()._precompute_ref_logps(dataset, name, batch_size)
        finally:
            self._ref_copy = None

    def compute_ref_log_probs(self, model, inputs):
        return super().compute_ref_log_probs(self._ref_copy if self._ref_copy is not None else model, inputs)


def with_bf16_reference(trainer_cls: type) -> type:
    """``trainer_cls`` with Bf16ReferenceMixin in front."""
    from agent_align.train.common import mixed_in

    return mixed_in(Bf16ReferenceMixin, trainer_cls, "Bf16Ref")
