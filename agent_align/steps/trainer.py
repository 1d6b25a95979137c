"""Step-wise DPO (``loss=stepwise``): a ``trl.DPOTrainer`` whose rewards weight each step by its score.

For a completion split into steps s (``agent_align.steps.split``) with per-token log-probs summed
over the tokens of each step,

    r_s        = beta * (log pi(step s) - log pi_ref(step s))
    R_chosen   = sum_s  w_c,s      * r_s         w_c,s: score of chosen step s, in [0, 1]
    R_rejected = sum_s  (1 - w_r,s) * r_s        w_r,s: score of rejected step s
    loss       = -log sigmoid(R_chosen - R_rejected)

A correct step of the rejected answer (w_r,s = 1) has weight 0: it is neither pushed down nor up,
which is the point (seed 002; issue 5). Observations inside a completion belong to no step and get
weight 0. With every chosen score 1 and every rejected score 0 this is exactly TRL's sigmoid DPO.

Because R is linear in the per-token log-ratios, R = beta * sum_t v_t (log pi_t - log pi_ref_t) with
v_t the weight of the step token t falls in. The collator carries v_t per token; the reference part
sum_t v_t log pi_ref_t is one number per sequence, so TRL's ``precompute_ref_log_probs`` keeps working
(it stores the weighted reference sum instead of the plain one).

Data comes from ``prepare_stepwise_dataset`` (agent_align.steps.stepwise_data): pre-tokenised with
the pipeline's Encoder, or text rows that TRL tokenises and this trainer aligns to steps.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from accelerate.utils import is_peft_model
from trl import DPOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.dpo_trainer import DataCollatorForPreference
from trl.trainer.utils import pad, use_adapter

from agent_align.errors import UserError
from agent_align.steps.stepwise_data import WEIGHT_COLUMNS, prepare_stepwise_dataset, token_weights

__all__ = ["StepwiseDPOTrainer", "StepwiseCollator", "prepare_stepwise_dataset"]
_OWN_KEYS = {"token_weights", "completion_mask", "ref_chosen_logps", "ref_rejected_logps"}


# -- batches ----------------------------------------------------------------------------------------
class StepwiseCollator(DataCollatorForPreference):
    """TRL's preference collator plus ``token_weights`` (2B, L): 0 on prompt and padding, the step
    weight on completion tokens, truncated exactly like the ids."""

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        out = super().torch_call(examples)
        rows = [[0.0] * len(e["prompt_ids"]) + list(e["chosen_token_weights"]) for e in examples]
        rows += [[0.0] * len(e["prompt_ids"]) + list(e["rejected_token_weights"]) for e in examples]
        if self.max_length is not None:
            sl = slice(None, self.max_length) if self.truncation_mode == "keep_start" else slice(-self.max_length, None)
            rows = [r[sl] for r in rows]
        w = pad([torch.tensor(r, dtype=torch.float32) for r in rows], padding_value=0.0, padding_side="right",
                pad_to_multiple_of=self.pad_to_multiple_of)
        out["token_weights"] = w[:, : out["input_ids"].shape[1]]
        return out


# -- the trainer ------------------------------------------------------------------------------------
class StepwiseDPOTrainer(DPOTrainer):
    """``DPOTrainer`` with the step-weighted sigmoid loss above. Same constructor arguments; the
    train (and eval) dataset come from ``prepare_stepwise_dataset``."""

    def __init__(self, model, ref_model=None, args=None, data_collator=None, train_dataset=None, eval_dataset=None,
                 processing_class=None, **kwargs):
        if args is not None and list(args.loss_type) != ["sigmoid"]:
            raise UserError(f"config key 'loss.loss_type' = {list(args.loss_type)!r}: loss=stepwise trains with "
                            f"[sigmoid] only")
        if train_dataset is not None and not {"chosen_segment_ends", WEIGHT_COLUMNS[0]} & set(train_dataset.column_names):
            raise UserError("step-wise DPO needs rows from prepare_stepwise_dataset (no chosen_segment_ends column)")
        if data_collator is None and processing_class is not None and args is not None:
            tok = getattr(processing_class, "tokenizer", processing_class)
            pad_token = args.pad_token or tok.pad_token or tok.eos_token
            data_collator = StepwiseCollator(pad_token_id=tok.convert_tokens_to_ids(pad_token),
                                             max_length=args.max_length, truncation_mode=args.truncation_mode,
                                             pad_to_multiple_of=args.pad_to_multiple_of)
        super().__init__(model, ref_model=ref_model, args=args, data_collator=data_collator,
                         train_dataset=train_dataset, eval_dataset=eval_dataset, processing_class=processing_class,
                         **kwargs)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if WEIGHT_COLUMNS[0] in dataset.column_names:  # pre-tokenised by prepare_stepwise_dataset
            if args.max_length is not None:
                dataset = dataset.filter(lambda ex: len(ex["prompt_ids"]) < args.max_length)
            return dataset
        dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        tok = getattr(processing_class, "tokenizer", processing_class)

        def add(example):
            return {f"{side}_token_weights": token_weights(tok, example, side) for side in ("chosen", "rejected")}
        return dataset.map(add, desc=f"Aligning steps to tokens ({dataset_name})", num_proc=args.dataset_num_proc)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        self._signature_columns = list(self._signature_columns) + list(WEIGHT_COLUMNS)

    def _weighted_logps(self, model, inputs, grad: bool) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """(sum_t v_t log pi_t, sum_t log pi_t) per sequence, and the model outputs."""
        model_kwargs = {k: v for k, v in inputs.items() if k not in _OWN_KEYS}
        model_kwargs["use_cache"] = False
        labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
        with contextlib.nullcontext() if grad else torch.no_grad():
            outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
        seq_len = inputs["completion_mask"].size(1) - 1
        per_token = outputs.log_probs[:, -seq_len:]  # position t scores token t+1
        v = inputs["token_weights"][:, 1:].to(per_token.dtype)
        return (per_token * v).sum(dim=1), per_token.sum(dim=1), outputs

    def compute_ref_log_probs(self, model, inputs):
        """Weighted reference sums sum_t v_t log pi_ref_t, one per sequence (chosen half, rejected half)."""
        ctx = contextlib.nullcontext()
        if self.ref_model is None and is_peft_model(self.model):
            unwrapped = self.accelerator.unwrap_model(self.model)
            ctx = use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)
        with disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs), ctx, \
                self.accelerator.autocast():
            weighted, _, _ = self._weighted_logps(model, inputs, grad=False)
        return weighted.chunk(2, dim=0)

    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        weighted, plain, outputs = self._weighted_logps(model, inputs, grad=True)
        chosen_w, rejected_w = weighted.chunk(2, dim=0)
        if self.precompute_ref_logps:
            ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            ref_chosen, ref_rejected = self.compute_ref_log_probs(self.ref_model or self.model, inputs)
        r_chosen = self.beta * (chosen_w - ref_chosen)  # R_chosen = sum_s w_c,s r_s
        r_rejected = self.beta * (rejected_w - ref_rejected)  # R_rejected = sum_s (1 - w_r,s) r_s
        loss = -F.logsigmoid(r_chosen - r_rejected).mean()
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss
        gather = self.accelerator.gather_for_metrics
        rc, rr = gather(r_chosen.detach()), gather(r_rejected.detach())
        lc, lr = plain.detach().chunk(2, dim=0)
        m = self._metrics[mode]
        m["rewards/chosen"].append(rc.mean().item())
        m["rewards/rejected"].append(rr.mean().item())
        m["rewards/margins"].append((rc - rr).mean().item())
        m["rewards/accuracies"].append((rc > rr).float().mean().item())
        m["logps/chosen"].append(gather(lc).mean().item())
        m["logps/rejected"].append(gather(lr).mean().item())
        return (loss, outputs) if return_outputs else loss
