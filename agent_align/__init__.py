"""agent_align: align small language models for schema-strict agentic tool use.

    python -m agent_align                      # the whole CPU loop on SmolLM2-135M-Instruct
    python -m agent_align stage=generate       # just the hard-negative preference data
"""

import sys

from agent_align import openmp

__version__ = "0.1.0"

# How idle OpenMP threads wait (spin briefly on an idle machine, sleep on a busy one; agent_align/openmp.py has the
# measurements). It must be set before torch loads its OpenMP runtime; once torch is loaded it is too late.
if "torch" not in sys.modules:
    openmp.CHOICE = openmp.choose_wait_policy()
