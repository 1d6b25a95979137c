"""stage=infer: one request (or an interactive loop), printing the call and its verdict.

    python -m agent_align stage=infer infer.model_path=runs/default/checkpoints/dpo \
        infer.prompt="Create a task with title 'Review PR' and priority high." infer.tools=[create_task,web_search]
"""

from __future__ import annotations

import sys

from agent_align.errors import config_error
from agent_align.generation import generate
from agent_align.hardware import resolve_precision
from agent_align.stages.context import RunContext
from agent_align.tools.library import call_schema, load_tools
from agent_align.train.encode import system_prompt
from agent_align.validation.extract import extract_call
from agent_align.validation.validator import validate_output


def verdict_for(output: str, tools: dict, fmt: str):
    """Judge ``output`` against the schema of the tool it names (unknown name -> wrong_tool)."""
    obj, _ = extract_call(output, fmt)
    name = obj.get("tool") if isinstance(obj, dict) else None
    tool = tools.get(name) or next(iter(tools.values()))
    return validate_output(output, call_schema(tool), fmt)


def run(cfg, ctx: RunContext) -> dict:
    from agent_align.stages.sft import policy

    library = {t.name: t for t in load_tools(cfg.data.tools_file, cfg.data.include_builtin_tools)}
    names = list(cfg.infer.tools) or list(library)
    unknown = [n for n in names if n not in library]
    if unknown:
        raise config_error("infer.tools", names, f"{unknown} not in the tool library; valid: {sorted(library)}")
    offered = {n: library[n] for n in names}
    model, tok, _ = policy(cfg, ctx, cfg.infer.model_path, for_training=False)
    bf16 = resolve_precision(cfg.hardware) == "bf16"
    system = system_prompt(cfg)

    def answer(text: str) -> dict:
        if cfg.data.negatives == "nat":  # NAT: inference always uses the positive tag
            from agent_align.steps.nat import nat_inference_prompt

            text = nat_inference_prompt(text, cfg.nat)
        chat = {"messages": [{"role": "system", "content": system}, {"role": "user", "content": text}],
                "tools": [t.openai() for t in offered.values()]}
        out = generate(model, tok, [chat], max_new_tokens=cfg.evaluate.max_new_tokens, bf16=bf16, desc=None)[0]
        v = verdict_for(out, offered, cfg.data.format)
        print(out)
        print(f"-> {'PASS' if v.passed else 'FAIL ' + str(v.category)}{': ' + v.detail if v.detail else ''}")
        return {"prompt": text, "output": out, "passed": v.passed, "category": v.category}

    if cfg.infer.prompt:
        return answer(cfg.infer.prompt)
    print(f"tools offered: {', '.join(offered)}. Type a request (empty line or Ctrl-D to quit).")
    last = {}
    for line in sys.stdin:
        if not line.strip():
            break
        last = answer(line.strip())
    return last
