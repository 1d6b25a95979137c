"""Cross-run comparison: which keys a sweep varied, where its jobs are and how they ended, and the
table/plots of SSPR, failures, reward margins and time across runs (``stage=compare``)."""
