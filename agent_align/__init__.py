"""agent_align: align small language models for schema-strict agentic tool use.

    python -m agent_align                      # the whole CPU loop on the embedded tiny model
    python -m agent_align stage=generate       # just the hard-negative preference data
"""

import os

__version__ = "0.1.0"

# Idle OpenMP threads sleep instead of spinning: on a small shared CPU spinning threads slowed
# training ~2x whenever another process ran (measured here with 2 cores). Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
