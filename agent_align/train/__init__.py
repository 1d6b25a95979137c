"""Training: tokenised datasets, TRL trainer construction, checkpoints and resume."""
