"""Training batches of similar length, in random order (``dpo.group_by_length``, ``sft.group_by_length``).

TRL's collator pads every pair of a batch to the batch's longest, and the Trainer's random sampler puts pairs of any
length together: on the default run's pairs (266-token prompts on average, 447 at most) a batch of 8 ran about a
third more tokens than it held, and attention, quadratic in the padded length, more than that. transformers'
``group_by_length`` sampler fixes the padding but orders each megabatch longest first, so training would walk from
long requests to short ones. ``LengthBucketSampler`` shuffles the pairs every epoch, sorts each chunk of
``chunk_batches`` batches by length, cuts it into batches and shuffles the batches: padding drops to the length
spread within a chunk and the order stays random. SFT had the same problem the other way round: with
transformers' sampler the default run's 60 steps took the first 400 of ~3,000 shuffled rows longest first, so SFT
was a long-to-short curriculum (step 1 on the longest rows, step 50 on the shortest); it uses these batches too
(baseline SSPR 57.8% -> 67.3%, README *Measured results*).
"""

from __future__ import annotations

import random

from torch.utils.data import Sampler


class LengthBucketSampler(Sampler):
    def __init__(self, lengths: list[int], batch_size: int, seed: int, chunk_batches: int = 16):
        self.lengths, self.batch_size, self.seed, self.chunk_batches = list(lengths), batch_size, seed, chunk_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # the Trainer calls it each epoch; a resumed run replays the same order
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        rng = random.Random(f"{self.seed}-{self.epoch}")
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        chunk = self.batch_size * self.chunk_batches
        batches = []
        for start in range(0, len(order), chunk):
            part = sorted(order[start:start + chunk], key=self.lengths.__getitem__)
            batches += [part[i:i + self.batch_size] for i in range(0, len(part), self.batch_size)]
        rng.shuffle(batches)
        return iter([i for batch in batches for i in batch])


def row_lengths(dataset) -> list[int]:
    """Tokens a row puts through the model: a DPO pair's prompt and both completions, an SFT row's ``input_ids``."""
    if "prompt_ids" in dataset.column_names:
        from agent_align.train.ref_pass import pair_lengths

        return pair_lengths(dataset)
    return [len(ids) for ids in dataset["input_ids"]]


class LengthBucketMixin:
    """Put in front of a TRL ``DPOTrainer`` or ``SFTTrainer`` subclass (``with_length_buckets``): its training batches
    come from ``LengthBucketSampler`` (per-device batches; under DDP accelerate deals whole batches to the processes)."""

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        return LengthBucketSampler(row_lengths(dataset), self.args.per_device_train_batch_size, self.args.seed)


def with_length_buckets(trainer_cls: type) -> type:
    """``trainer_cls`` with LengthBucketMixin in front."""
    from agent_align.train.common import mixed_in

    return mixed_in(LengthBucketMixin, trainer_cls, "Buckets")
