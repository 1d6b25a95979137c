"""agent_align: align small language models for schema-strict agentic tool use.

    python -m agent_align                      # the whole CPU loop on the embedded tiny model
    python -m agent_align stage=generate       # just the hard-negative preference data
"""

__version__ = "0.1.0"
