"""DPO-family trainers: which trainer class each ``loss.name`` uses, pre-tokenised datasets, and
per-token loss masks for completions that hold several messages (agent trajectories)."""

from __future__ import annotations

import logging
from typing import Any

import torch
from trl import DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference
from trl.trainer.utils import pad

from agent_align.errors import UserError
from agent_align.registry import Registry

log = logging.getLogger(__name__)
MASK_COLUMNS = ("chosen_mask", "rejected_mask")


class MaskedPreferenceCollator(DataCollatorForPreference):
    """TRL's preference collator whose ``completion_mask`` is the rows' own per-token masks.

    Why this is enough: TRL's DPOTrainer derives everything from ``completion_mask`` (labels are -100
    where it is 0, so those positions add nothing to the summed log-probs) in the policy forward
    (``_compute_loss``), the reference forward (``compute_ref_log_probs``, which
    ``_precompute_ref_logps`` runs through this same collator), the NLL term of ``rpo`` and the length
    normalisation of ``ipo``. Masking tool observations and ``"train": false`` turns here removes them
    from all of those at once.
    """

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        out = super().torch_call(examples)
        # TRL's order: every chosen sequence, then every rejected one
        rows = [[0] * len(e["prompt_ids"]) + list(e[f"{side}_mask"]) for side in ("chosen", "rejected") for e in examples]
        if self.max_length is not None:  # truncated exactly like the ids
            sl = slice(None, self.max_length) if self.truncation_mode == "keep_start" else slice(-self.max_length, None)
            rows = [r[sl] for r in rows]
        mask = pad([torch.tensor(r, dtype=torch.long) for r in rows], padding_value=0, padding_side="right",
                   pad_to_multiple_of=self.pad_to_multiple_of)
        if mask.shape != out["completion_mask"].shape:
            raise ValueError(f"per-token masks {tuple(mask.shape)} do not match the ids "
                             f"{tuple(out['completion_mask'].shape)}: each chosen_mask/rejected_mask needs one "
                             "entry per chosen_ids/rejected_ids token")
        out["completion_mask"] = out["completion_mask"] * mask  # never wider than TRL's completion span
        return out


def decision_masks(ex: dict, n: int, sides: str = "both") -> dict:
    """``ex`` (a preference_example) training only the tokens both completions share up to where they part
    and the first ``n`` tokens from there, on both sides or (``sides="rejected"``) on the rejected one only.
    The shared tokens cancel in the DPO margin (same context, same tokens); what follows the parting tokens
    is conditioned on different contexts, and DPO would push the rejected side's copy of it down: after
    ``get_employee`` vs ``get_calendar``, the JSON of the arguments, which both calls write alike (likelihood
    displacement of the call format). Raising the chosen side's rest is what SFT does; ``"rejected"`` keeps
    it, and with it the NLL term of ``loss=rpo`` on the whole chosen call."""
    if sides not in ("both", "rejected"):
        raise ValueError(f"sides must be 'both' or 'rejected', got {sides!r}")
    chosen, rejected = ex["chosen_ids"], ex["rejected_ids"]
    k = 0
    while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
        k += 1
    out = {**ex, "rejected_mask": [m if i < k + n else 0 for i, m in enumerate(ex["rejected_mask"])]}
    if sides == "both":
        out["chosen_mask"] = [m if i < k + n else 0 for i, m in enumerate(ex["chosen_mask"])]
    return out


def masked_preference_dataset(rows: list[dict], tokenizer, max_length: int, max_prompt_length: int,
                              decision_tokens: int = 0, decision_sides: str = "both"):
    """A Dataset of conversational preference rows (``prompt``/``chosen``/``rejected`` message lists, see
    agent_align.env.preferences) with MASK_COLUMNS. Pairs with no trained token left on a side within
    ``max_length`` (TRL keeps the start) are dropped: such a side would contribute a constant 0 log-prob.
    ``decision_tokens`` > 0 trains only where the sides part (``decision_masks``, on ``decision_sides``)."""
    from datasets import Dataset

    from agent_align.env.masking import preference_example

    examples, dropped = [], 0
    for row in rows:
        ex = preference_example(row, tokenizer, max_prompt_length)
        if decision_tokens:
            ex = decision_masks(ex, decision_tokens, decision_sides)
        room = max_length - len(ex["prompt_ids"])
        if all(sum(ex[m][:max(room, 0)]) > 0 for m in MASK_COLUMNS):
            examples.append(ex)
        else:
            dropped += 1
    if dropped:
        log.warning("%d of %d preference pairs have no trained assistant token on one side within "
                    "model.max_length=%d; dropped", dropped, len(rows), max_length)
    if not examples:
        raise UserError(f"config key 'model.max_length' = {max_length}: no preference pair keeps a trained assistant "
                        "token on both sides; raise model.max_length or check the pairs' 'train' flags")
    return Dataset.from_list(examples)


class PretokenizedDPOTrainer(DPOTrainer):
    """TRL's DPOTrainer that accepts rows already holding ``prompt_ids``/``chosen_ids``/``rejected_ids``,
    and, when they also hold MASK_COLUMNS, trains only the tokens those masks mark.

    Why: the pipeline tokenises every prompt once (agent_align.train.encode.Encoder) and reuses the
    ids across SFT, sampling, DPO and evaluation; TRL 1.16 would re-render and re-tokenise them. And
    TRL trains every completion token, which inside an agent trajectory includes the observations.
    """

    def __init__(self, model, ref_model=None, args=None, data_collator=None, train_dataset=None, eval_dataset=None,
                 processing_class=None, **kwargs):
        masked = train_dataset is not None and MASK_COLUMNS[0] in train_dataset.column_names
        if masked and data_collator is None:
            if args is None or processing_class is None:
                raise ValueError("rows with chosen_mask/rejected_mask need args and processing_class to build "
                                 "their collator")
            tok = getattr(processing_class, "tokenizer", processing_class)
            pad_token = args.pad_token or tok.pad_token or tok.eos_token
            data_collator = MaskedPreferenceCollator(pad_token_id=tok.convert_tokens_to_ids(pad_token),
                                                     max_length=args.max_length, truncation_mode=args.truncation_mode,
                                                     pad_to_multiple_of=args.pad_to_multiple_of)
        super().__init__(model, ref_model=ref_model, args=args, data_collator=data_collator, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class, **kwargs)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if "prompt_ids" in dataset.column_names:
            if args.max_length is not None:
                dataset = dataset.filter(lambda ex: len(ex["prompt_ids"]) < args.max_length)
            return dataset
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()  # keeps the masks when remove_unused_columns=True
        self._signature_columns = list(dict.fromkeys([*self._signature_columns, *MASK_COLUMNS]))


TRAINERS: Registry = Registry("loss", "loss.name")
TRAINERS.register("dpo", PretokenizedDPOTrainer)
TRAINERS.register("ipo", PretokenizedDPOTrainer)
TRAINERS.register("rpo", PretokenizedDPOTrainer)
TRAINERS.register("step_dpo", PretokenizedDPOTrainer)  # Step-DPO pairs, plain sigmoid loss
TRAINERS.register("stepwise", "agent_align.steps.trainer:StepwiseDPOTrainer")
