"""Tool definitions (OpenAI function-calling format) and the call schemas derived from them."""

from agent_align.tools.library import Tool, call_schema, load_builtin_tools, load_tools, load_tools_file

__all__ = ["Tool", "call_schema", "load_builtin_tools", "load_tools", "load_tools_file"]
