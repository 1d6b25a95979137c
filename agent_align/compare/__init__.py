"""Cross-run comparison: which keys a sweep varied, where its jobs are and how they ended, and the
table/plots of SSPR, failures, reward margins and time across runs (``stage=compare``); agentic runs
(``agentic_summary.json``) get their own table of methods on the held-out tasks (``agent_table``,
``agent_plots``)."""
