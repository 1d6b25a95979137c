"""Shared-prompt DPO (``hardware.shared_prompt_dpo``): each pair's prompt goes through the model once.

TRL 1.16's DPOTrainer batches a pair as two rows, ``prompt + chosen`` and ``prompt + rejected``, so the
prompt (~80% of a pair's tokens here) runs twice, in the reference pass and in every training step. This
module packs each pair into one row instead:

    [ shared prefix | last shared token, chosen ... | last shared token, rejected ... ]
      positions 0..S-1  S, S+1, ...                   S, S+1, ...  (restart after the prefix)

with a block attention mask: the prefix is causal, each branch sees the prefix and itself causally, never
the other branch. The shared prefix is the two rows' longest common prefix minus its last token (at least
the prompt minus one token; more when the completions start alike). That last common token opens both
branches, so the position that predicts each side's first differing token has exactly that side's
context. Every hidden state therefore equals the one TRL computes for the same token in its own row.

``PackedForward`` wraps the model where TRL calls it (``_compute_loss``, ``compute_ref_log_probs``, and
the step-wise trainer's ``_weighted_logps``): it takes TRL's ``[chosen rows; rejected rows]`` batch and
labels, runs the packed rows through TRL's fused LM head (log-softmax on labelled tokens only, with
``hardware.compact_lm_head``), and hands back per-token outputs in TRL's own layout. All of TRL's loss code
(every ``loss_type``, ``loss_weights``, ``ld_alpha``, WPO weights, metrics) then runs unchanged, and so do
per-token masks (agent pairs) and step weights, which only ever read that layout.

Why not continue chosen and rejected from the prompt's KV cache: with gradients through the cache, one
backward has to reach the prompt from two continuations of different lengths and left-padded prompts need
shifted positions; the packed row is one ordinary forward. transformers 5 passes a 4D mask to sdpa as is
(``masking_utils._preprocess_mask_arguments``).
"""

from __future__ import annotations

import torch

# TRL's FusedCausalLMOutput fields that are per token, (batch, seq_len - 1)
_PER_TOKEN = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1", "label_mask")


def pack(input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, pad_token_id: int,
         pad_to_multiple_of: int | None = None) -> dict:
    """TRL's ``[chosen; rejected]`` rows (right-padded, ``labels`` -100 off the completion) as one packed row per
    pair, plus where each scored token's log-prob lands in TRL's shifted ``(2B, L-1)`` layout.

    Returns ``input_ids``, ``attention_mask`` (B, 1, Lp, Lp; bool, True = may attend), ``position_ids``,
    ``labels`` (the packed rows' labels; the fused head shifts them), ``src`` (flat indices into the packed
    (B, Lp-1) per-token outputs), ``dst`` (the matching flat indices into (2B, L-1)) and ``segments`` (0 shared
    prefix, 1 chosen, 2 rejected, -1 padding).
    """
    dev = input_ids.device
    input_ids, attention_mask, scored = input_ids.cpu(), attention_mask.cpu(), (labels != -100).cpu()
    two_b, L = input_ids.shape
    B = two_b // 2
    lengths = attention_mask.sum(dim=1).tolist()
    packed, src_local, dst = [], [], []
    for i in range(B):
        n_c, n_r = int(lengths[i]), int(lengths[B + i])
        c, r = input_ids[i, :n_c], input_ids[B + i, :n_r]
        m = min(n_c, n_r)
        diff = (c[:m] != r[:m]).nonzero()
        lcp = int(diff[0]) if len(diff) else m
        s = max(lcp - 1, 0)  # shared prefix [0, s); both branches open with token s (common when lcp > 0)
        ids = torch.cat([c, r[s:]])
        pos = torch.cat([torch.arange(n_c), torch.arange(s, n_r)])
        seg = torch.cat([torch.zeros(s, dtype=torch.long), torch.ones(n_c - s, dtype=torch.long),
                         torch.full((n_r - s,), 2, dtype=torch.long)])
        lab = torch.full((len(ids),), -100, dtype=torch.long)
        for side, row in ((0, i), (1, B + i)):
            n = n_c if side == 0 else n_r
            o = scored[row, 1:n].nonzero().squeeze(1) + 1  # tokens TRL scores in this row (never token 0)
            # the packed position predicting row token o: row position o-1, which for rejected lies in the
            # shared prefix (o-1 < s) or in the rejected branch (starting at packed n_c with row token s)
            pred = o - 1 if side == 0 else torch.where(o - 1 < s, o - 1, n_c + (o - 1 - s))
            lab[pred + 1] = input_ids[row, o]  # for o <= s the chosen row has the same token there
            src_local.append((i, pred))
            dst.append(row * (L - 1) + (o - 1))
        packed.append((ids, pos, seg, lab))
    Lp = max(len(p[0]) for p in packed)
    if pad_to_multiple_of:
        Lp = -(-Lp // pad_to_multiple_of) * pad_to_multiple_of
    ids = torch.full((B, Lp), pad_token_id, dtype=input_ids.dtype)
    lab = torch.full((B, Lp), -100, dtype=torch.long)
    pos = torch.zeros((B, Lp), dtype=torch.long)
    seg = torch.full((B, Lp), -1, dtype=torch.long)  # -1: padding
    for i, (a, p, g, y) in enumerate(packed):
        ids[i, :len(a)], pos[i, :len(a)], seg[i, :len(a)], lab[i, :len(a)] = a, p, g, y
    src = torch.cat([i * (Lp - 1) + pred for i, pred in src_local])
    idx = torch.arange(Lp)
    causal = idx[:, None] >= idx[None, :]  # (q, k) in packed order
    q, k = seg[:, :, None], seg[:, None, :]
    mask = causal[None] & ((q == k) | ((k == 0) & (q > 0))) & (q >= 0)  # a branch sees the prefix, never the other branch
    mask |= torch.eye(Lp, dtype=torch.bool)[None]  # padding attends to itself (an all-masked row gives NaN in sdpa)
    return {"input_ids": ids.to(dev), "attention_mask": mask[:, None].to(dev), "position_ids": pos.to(dev),
            "labels": lab.to(dev), "src": src.to(dev), "dst": torch.cat(dst).to(dev), "segments": seg}


def unpack(x: torch.Tensor, packed: dict, shape: tuple[int, int]) -> torch.Tensor:
    """Per-token outputs of the packed rows, (B, Lp-1), in TRL's (2B, L-1) layout; zero where TRL scores
    nothing. Differentiable: a shared-prefix token scored in both rows gets both rows' gradients."""
    flat = x.reshape(-1)[packed["src"]]
    return x.new_zeros(shape[0] * shape[1]).index_put((packed["dst"],), flat).view(shape)


class PackedForward:
    """Stands in for the model where TRL calls ``model(input_ids, attention_mask, labels=..., fused_lm_head=True)``
    on ``[chosen; rejected]`` rows: runs the pairs packed (``pack``) through the real model, TRL's fused LM head
    included, and returns its FusedCausalLMOutput in the unpacked layout. Any other call goes to the model."""

    def __init__(self, model, pad_to_multiple_of: int | None = None):
        self.model, self.pad_to_multiple_of = model, pad_to_multiple_of

    def __call__(self, input_ids=None, attention_mask=None, labels=None, fused_lm_head=False, **kwargs):
        if not fused_lm_head or labels is None or input_ids is None or input_ids.shape[0] % 2:
            return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                              fused_lm_head=fused_lm_head, **kwargs)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        p = pack(input_ids, attention_mask, labels, pad_token_id=0, pad_to_multiple_of=self.pad_to_multiple_of)
        kwargs["use_cache"] = False
        out = self.model(input_ids=p["input_ids"], attention_mask=p["attention_mask"], position_ids=p["position_ids"],
                         labels=p["labels"], fused_lm_head=True, **kwargs)
        shape = (input_ids.shape[0], input_ids.shape[1] - 1)
        return type(out)(**{k: (unpack(v, p, shape) if k in _PER_TOKEN and v is not None else v)
                            for k, v in out.items()})


class SharedPromptMixin:
    """Put before a TRL ``DPOTrainer`` subclass (``with_shared_prompt``): its policy and reference forwards run
    each pair's prompt once. TRL's batches, collators, caches and losses are untouched."""

    def _packed(self, model):
        return PackedForward(model, self.args.pad_to_multiple_of)

    def _compute_loss(self, model, inputs, return_outputs):
        return super()._compute_loss(self._packed(model), inputs, return_outputs)

    def compute_ref_log_probs(self, model, inputs):
        return super().compute_ref_log_probs(self._packed(model), inputs)


def with_shared_prompt(trainer_cls: type) -> type:
    """``trainer_cls`` with SharedPromptMixin in front."""
    from agent_align.train.common import mixed_in

    return mixed_in(SharedPromptMixin, trainer_cls, "SharedPrompt")
