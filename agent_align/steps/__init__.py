"""Step-level alignment (issue 5): step splitting, step scorers, step-wise DPO, Step-DPO pairs,
negative-aware tuning, failure-mode analysis, data mixtures and trajectory data management.

Kept import-light: submodules pull torch/TRL only where they train.
"""
