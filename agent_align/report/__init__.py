"""report.md and PNG plots for a pipeline run: SSPR before/after, failures, training curves."""

from agent_align.report.markdown import write_report

__all__ = ["write_report"]
