"""Model sources: the embedded tiny/small models (built locally), hub presets, local checkpoints."""

from agent_align.models.loading import load_model_and_tokenizer, resolve_model_path

__all__ = ["load_model_and_tokenizer", "resolve_model_path"]
