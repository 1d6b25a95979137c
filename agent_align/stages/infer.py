"""stage=infer: one request (or an interactive loop), printing the call and its verdict.

    python -m agent_align stage=infer infer.model_path=runs/default/checkpoints/dpo \
        infer.prompt="Create a task with title 'Review PR' and priority high." infer.tools=[create_task,web_search]

The model is ``infer.model_path``, else the newest finished checkpoint of the run directory, else a
pretrained ``model.*`` (said so on stderr). A model built from scratch and never trained is refused:
its output would be noise. The verdict line says whether the output is a valid call to an offered
tool; PASS/FAIL only when ``infer.expect_tool`` names the tool the request should call.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from agent_align.errors import UserError, config_error
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


def model_to_use(cfg, ctx: RunContext) -> str | None:
    """The checkpoint to load (None: the configured pretrained ``model.*``); refuses an untrained
    model built from scratch."""
    if cfg.infer.model_path:
        return cfg.infer.model_path
    for stage in ("dpo", "sft"):
        marker = ctx.path("stages", f"{stage}.json")
        try:
            ckpt = json.loads(marker.read_text(encoding="utf-8")).get("checkpoint") if marker.is_file() else None
        except (ValueError, OSError, AttributeError):
            ckpt = None
        ckpt = ckpt or str(ctx.path("checkpoints", stage))
        if (Path(ckpt) / "config.json").is_file() or (Path(ckpt) / "adapter_config.json").is_file():
            print(f"infer: using the {stage.upper()} checkpoint {ckpt} (set infer.model_path=DIR for another)",
                  file=sys.stderr)
            return ckpt
    m = cfg.model
    pretrained = m.path or m.hub_id or m.get("gguf_path") or m.get("gguf_package")
    if not pretrained:
        raise UserError(f"stage=infer: no trained model: infer.model_path is not set and {ctx.run_dir} has no "
                        "finished checkpoint (checkpoints/dpo or checkpoints/sft); set "
                        "infer.model_path=runs/<experiment>/<run>/checkpoints/dpo, or run_dir= to a trained run")
    print(f"infer: no trained checkpoint in {ctx.run_dir}; using the pretrained model '{pretrained}' as it is",
          file=sys.stderr)
    return None


def verdict_line(output: str, v, expect: str | None, fmt: str) -> str:
    """'valid call to X' / 'invalid call (category: detail)'; PASS/FAIL only against ``expect``."""
    obj, _ = extract_call(output, fmt)
    named = obj.get("tool") if isinstance(obj, dict) else None
    detail = f": {v.detail}" if v.detail else ""
    if expect is None:
        return f"-> valid call to {named}" if v.passed else f"-> invalid call ({v.category}{detail})"
    return "-> PASS" if v.passed else f"-> FAIL {v.category}{detail}"


def run(cfg, ctx: RunContext) -> dict:
    from agent_align.stages.sft import policy

    library = {t.name: t for t in load_tools(cfg.data.tools_file, cfg.data.include_builtin_tools)}
    names = list(cfg.infer.tools) or list(library)
    unknown = [n for n in names if n not in library]
    if unknown:
        raise config_error("infer.tools", names, f"{unknown} not in the tool library; valid: {sorted(library)}")
    offered = {n: library[n] for n in names}
    expect = cfg.infer.get("expect_tool")
    if expect is not None and expect not in offered:
        raise config_error("infer.expect_tool", expect, f"not among the offered tools {sorted(offered)}")
    model, tok, _ = policy(cfg, ctx, model_to_use(cfg, ctx), for_training=False)
    bf16 = resolve_precision(cfg.hardware) == "bf16"
    system = system_prompt(cfg)

    def answer(text: str) -> dict:
        if cfg.data.negatives == "nat":  # NAT: inference always uses the positive tag
            from agent_align.steps.nat import nat_inference_prompt

            text = nat_inference_prompt(text, cfg.nat)
        chat = {"messages": [{"role": "system", "content": system}, {"role": "user", "content": text}],
                "tools": [t.openai() for t in offered.values()]}
        out = generate(model, tok, [chat], max_new_tokens=cfg.evaluate.max_new_tokens, bf16=bf16, desc=None)[0]
        if expect is None:
            v = verdict_for(out, offered, cfg.data.format)
        else:
            v = validate_output(out, call_schema(offered[expect]), cfg.data.format)
        print(out)
        print(verdict_line(out, v, expect, cfg.data.format))
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
