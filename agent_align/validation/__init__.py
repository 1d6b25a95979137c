"""The strict judge of tool calls: extraction, schema check, one failure category per output.

    from agent_align.validation import validate_output
    validate_output('{"tool": "x", "parameters": {}}', schema, fmt="json").passed
"""

from agent_align.validation.categories import CATEGORIES, PRECEDENCE
from agent_align.validation.extract import extract_call
from agent_align.validation.validator import SchemaChecker, Verdict, summarize, validate_output

__all__ = ["CATEGORIES", "PRECEDENCE", "extract_call", "SchemaChecker", "Verdict", "validate_output", "summarize"]
