"""The precomputed reference pass (``dpo.precompute_ref_log_probs``) in length order, with its progress in the log.

TRL's ``_precompute_ref_logps`` walks the dataset in its stored order, ``hardware.eval_batch_size`` pairs a batch
(64 on CPU), so each batch is padded to the longest of 64 random pairs: on the default run's pairs (prompts of
266 tokens on average, 447 at most) about a third of the tokens a batch runs, and more of its attention, were
padding. The pass is per pair, so its order changes no value: ``RefPassMixin`` runs it over the pairs sorted by
length and hands the log-probs back in the dataset's own order. It also logs "reference log-probs (train):
192/320 pairs (60%), ..." lines, which a log file or a SLURM job's output did not get from TRL's terminal bar.
"""

from __future__ import annotations


def pair_lengths(dataset) -> list[int]:
    """Tokens a pair puts through the model: its prompt and both completions (what a shared-prompt row holds)."""
    return [len(p) + len(c) + len(r) for p, c, r in
            zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"])]


class RefPassMixin:
    """Put in front of a TRL ``DPOTrainer`` subclass (``with_ref_pass``)."""

    _ref_bar = None

    def _precompute_ref_logps(self, dataset, name, batch_size):
        from datasets import Dataset

        from agent_align.progress import Progress

        if not isinstance(dataset, Dataset) or len(dataset) < 2:  # an IterableDataset gets TRL's own error
            return super()._precompute_ref_logps(dataset, name, batch_size)
        lengths = pair_lengths(dataset)
        order = sorted(range(len(dataset)), key=lengths.__getitem__)
        back = [0] * len(order)
        for pos, i in enumerate(order):
            back[i] = pos
        main = self.accelerator.is_main_process
        self._ref_bar = Progress(len(dataset), f"reference log-probs ({name})" if main else None, unit="pair", bar=False)
        try:
            # flatten: TRL concatenates its cached columns beside the rows, which needs them in storage order
            out = super()._precompute_ref_logps(dataset.select(order).flatten_indices(), name, batch_size)
        finally:
            self._ref_bar.close()
            self._ref_bar = None
        return out.select(back).flatten_indices()

    def compute_ref_log_probs(self, model, inputs):
        out = super().compute_ref_log_probs(model, inputs)
        if self._ref_bar is not None:  # [chosen rows; rejected rows] on each process
            self._ref_bar.update(inputs["input_ids"].shape[0] // 2 * self.accelerator.num_processes)
        return out


def with_ref_pass(trainer_cls: type) -> type:
    """``trainer_cls`` with RefPassMixin in front."""
    from agent_align.train.common import mixed_in

    return mixed_in(RefPassMixin, trainer_cls, "RefPass")
