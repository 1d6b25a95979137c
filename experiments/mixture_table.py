"""Table and plot of the data-mixture study, for a finished (or partly finished) sweep or any run dirs.

    python experiments/mixture_table.py multirun/mixture_study/<date_time>
    python experiments/mixture_table.py runs/a runs/b            # any run directories -> ./mixture_table.md

`python -m agent_align -m +experiment=mixture_study` already writes them when its sweep ends; this
re-runs the same code (agent_align/steps/mixture_table.py): mean ± sd over seeds per mix.
"""

from __future__ import annotations

import sys
from pathlib import Path

from agent_align.steps.mixture_table import write_tables


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    sweep = len(argv) == 1 and not (Path(argv[0]) / "summary.json").exists()
    try:
        result = write_tables(argv, Path(argv[0]) if sweep else Path("."))
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result["markdown"], end="")
    print(f"wrote {result['out']}/mixture_table.md, mixture_table.json, mixture.png")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
