"""DPO-family trainers: which trainer class each ``loss.name`` uses, and pre-tokenised datasets."""

from __future__ import annotations

from trl import DPOTrainer

from agent_align.registry import Registry


class PretokenizedDPOTrainer(DPOTrainer):
    """TRL's DPOTrainer that accepts rows already holding ``prompt_ids``/``chosen_ids``/``rejected_ids``.

    Why: the pipeline tokenises every prompt once (agent_align.train.encode.Encoder) and reuses the
    ids across SFT, sampling, DPO and evaluation; TRL 1.16 would re-render and re-tokenise them.
    """

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if "prompt_ids" in dataset.column_names:
            if args.max_length is not None:
                dataset = dataset.filter(lambda ex: len(ex["prompt_ids"]) < args.max_length)
            return dataset
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)


TRAINERS: Registry = Registry("loss", "loss.name")
TRAINERS.register("dpo", PretokenizedDPOTrainer)
TRAINERS.register("ipo", PretokenizedDPOTrainer)
TRAINERS.register("rpo", PretokenizedDPOTrainer)
TRAINERS.register("step_dpo", PretokenizedDPOTrainer)  # Step-DPO pairs, plain sigmoid loss
TRAINERS.register("stepwise", "agent_align.steps.trainer:StepwiseDPOTrainer")
