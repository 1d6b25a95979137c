"""External evaluation on the Berkeley Function Calling Leaderboard (BFCL): loader, output parser,
AST and strict scorers, and the score/evaluate stage entry points. See docs/bfcl.md.

    python -m agent_align stage=score data=bfcl data.bfcl_dir=PATH score.predictions=preds.jsonl
"""
