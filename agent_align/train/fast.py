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

log = logging.getLogger(__name__)
_ORIGINAL = None


def set_compact_lm_head(enabled: bool) -> None:
    """Score only labelled positions in TRL's fused LM head on every device (``enabled``), or restore TRL."""
    global _ORIGINAL
    import trl.trainer.utils as tu

    if _ORIGINAL is None:
        _ORIGINAL = tu._use_triton
    tu._use_triton = (lambda device: True) if enabled else _ORIGINAL
