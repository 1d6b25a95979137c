"""Our chat templates: shared tool macros (templates/macros.jinja) before a body that sets the markup.

- ``builtin``: ``<|system|>...<|end|>`` turns, for the models built here (agent_align.models.tiny);
- ``chatml``: ``<|im_start|>role\\n...<|im_end|>``, for pretrained ChatML models such as SmolLM2, whose
  own template knows no tools.

Both put the tool list after the first user message and mark assistant turns with ``{% generation %}``
(TRL's ``assistant_only_loss`` and our own masks need them). ``tool_format`` chooses how a tool is
shown: ``compact`` signatures (``create_task(title: string, priority?: low|high)``), ``call`` templates
in the answer's own shape (``{"tool": "create_task", "parameters": {"title": string, "priority"?: "low"|"high"}}``:
a name copied from the list is then the very tokens the answer needs; in the compact form
``nights: integer`` tokenises as `` nights``, and SmolLM2 copied that into ``" nights"`` keys), or the full
OpenAI ``json`` definition, descriptions included (README, *Models*).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

HERE = Path(__file__).parent / "templates"
TOOL_LINES = {
    "compact": "{{ '\\n' }}{{ f.name }}{{ t(f.parameters) | replace('{', '(', 1) | reverse | replace('}', ')', 1) | reverse }}",
    "call": "{{ '\\n' }}{\"tool\": {{ f.name | tojson }}, \"parameters\": {{ c(f.parameters) }}}",
    "json": "{{ '\\n' }}{{ f | tojson }}",
}
BODIES = ("builtin", "chatml")


@lru_cache(maxsize=None)
def chat_template(body: str = "builtin", tool_format: str = "compact") -> str:
    if body not in BODIES:
        raise ValueError(f"unknown chat template body {body!r}; valid: {', '.join(BODIES)}")
    macros = (HERE / "macros.jinja").read_text().replace("@TOOL_LINE@", TOOL_LINES[tool_format])
    return macros + (HERE / f"{body}.jinja").read_text()
