"""Step scorers (``scorer=verifier|lm``): one score in [0, 1] per step of a completion.

    from agent_align.steps.scorers import build_scorer
    scorer = build_scorer(cfg.scorer, cfg)            # cfg.scorer.name picks the implementation
    scores = scorer.score([{"row": row, "completion": row["rejected"], "fmt": "react"}])

``verifier`` is deterministic. A step holding a call is correct when the call passes the validator
(the row's ``schema``, or the offered tool's call schema) and matches a ground-truth call (the row's
``gold_calls``, else the calls of its ``chosen``), or, with no matching gold call, when its result is
consistent with the gold ``answer`` (a calculator call is recomputed with the safe calculator; a
tool observation that contains the answer). A thought that names an offered tool other than the
gold one is wrong; any ``a op b = c`` equation is recomputed. A final answer is compared with the
row's ``answer``. Steps with nothing to check get ``scorer.unverifiable_score``.
The ``lm`` judge lives in ``agent_align.steps.judge``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from agent_align.registry import Registry
from agent_align.steps.calculator import CalcError, calculate, check_equations, close, parse_number
from agent_align.steps.split import detect_format, split_steps, steps_only
from agent_align.tools.library import Tool, call_schema
from agent_align.validation.compiled import json_equal
from agent_align.validation.extract import extract_call
from agent_align.validation.validator import SchemaChecker

SCORERS: Registry = Registry("step scorer", "scorer")
SCORERS.register("verifier", "agent_align.steps.scorers:VerifierScorer")
SCORERS.register("lm", "agent_align.steps.judge:LMJudgeScorer")
FINAL_TOOLS = {"final", "final_answer", "finish", "answer"}  # call names that end an episode with an answer
_DECODER = json.JSONDecoder()


def build_scorer(scorer_cfg, cfg=None):
    return SCORERS.get(scorer_cfg.name)(scorer_cfg, cfg)


def find_call(text: str) -> dict | None:
    """The first call object ``{"tool"|"name", ...}`` in a step: a react Action block, a whole-JSON
    step, or the first JSON object embedded in prose."""
    for fmt in ("react", "json"):
        obj, _ = extract_call(text, fmt)
        if obj is not None:
            return normalize_call(obj)
    for m in re.finditer(r"\{", text):
        try:
            obj, _ = _DECODER.raw_decode(text[m.start():])
        except ValueError:
            continue
        if isinstance(obj, dict) and ("tool" in obj or "name" in obj):
            return normalize_call(obj)
    return None


def normalize_call(obj: dict) -> dict:
    """``{"name", "arguments"}`` (OpenAI style) -> ``{"tool", "parameters"}``; others unchanged."""
    if "tool" not in obj and "name" in obj:
        args = obj.get("arguments", obj.get("parameters", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError:
                pass
        return {"tool": obj["name"], "parameters": args}
    return obj


def norm_answer(text: Any) -> str:
    return re.sub(r"[^a-z0-9.]+", " ", str(text).lower()).strip()


def answer_matches(candidate: str, gold: Any) -> bool:
    """Numbers compare numerically (last number in the candidate); text by normalised containment."""
    g = parse_number(str(gold)) if re.fullmatch(r"\s*-?[\d,]+(\.\d+)?\s*", str(gold)) else None
    if g is not None:
        c = parse_number(candidate)
        return c is not None and close(c, g, rel=1e-4, abs_tol=1e-2)
    gold_n = norm_answer(gold)
    return bool(gold_n) and gold_n in norm_answer(candidate)


class VerifierScorer:
    name = "verifier"

    def __init__(self, scorer_cfg, cfg=None):
        self.unverifiable = float(scorer_cfg.unverifiable_score)
        self.checker = SchemaChecker()

    # -- ground truth of a row -------------------------------------------------------------------
    def gold_calls(self, row: dict) -> list[dict]:
        if row.get("gold_calls") is not None:
            return [normalize_call(c) for c in row["gold_calls"]]
        if row.get("gold_call") is not None:
            return [normalize_call(row["gold_call"])]
        chosen = row.get("chosen")
        if chosen is None:
            return []
        fmt = detect_format(chosen)
        calls = [find_call(s.text) for s in steps_only(chosen, fmt)]
        return [c for c in calls if c is not None]

    def schemas(self, row: dict) -> dict[str, dict]:
        out = {}
        for t in row.get("tools") or []:
            fn = t.get("function", t)
            if isinstance(fn, dict) and "name" in fn:
                out[fn["name"]] = call_schema(Tool(fn["name"], fn.get("description", ""),
                                                   fn.get("parameters") or {"type": "object", "properties": {}}))
        return out

    # -- one completion ----------------------------------------------------------------------------
    def score_completion(self, row: dict, completion: Any, fmt: str) -> list[float]:
        segments = split_steps(completion, fmt)
        gold = self.gold_calls(row)
        gold_tools = {c.get("tool") for c in gold}
        offered = self.schemas(row)
        answer = row.get("answer")
        step_idx = [i for i, s in enumerate(segments) if s.kind == "step"]
        scores, any_call = [], False
        for n, i in enumerate(step_idx):
            text = segments[i].text
            nxt = segments[i + 1] if i + 1 < len(segments) and segments[i + 1].kind == "observation" else None
            call = None if text.lstrip().startswith("Thought") else find_call(text)
            last = n == len(step_idx) - 1
            any_call = any_call or call is not None
            if call is not None and str(call.get("tool", "")).lower() not in FINAL_TOOLS:
                scores.append(self.score_call(call, row, offered, gold, answer, nxt.text if nxt else None))
            elif call is not None:  # a FINAL action: its answer is what counts
                params = call.get("parameters") or {}
                final = params.get("answer", json.dumps(params)) if isinstance(params, dict) else params
                scores.append(self.score_text(str(final), gold_tools, offered, answer, True))
            elif fmt == "json" and row.get("schema") is not None:
                scores.append(0.0)  # a json-format output with no call in it is wrong
            elif fmt == "react" and text.lstrip().startswith("Action"):
                scores.append(0.0)  # an Action with no parsable call
            else:
                is_final = last and (fmt in ("text", "trajectory") or text.lstrip().startswith("Final Answer"))
                scores.append(self.score_text(text, gold_tools, offered, answer, is_final))
        if scores and row.get("schema") is not None and not any_call:
            scores[-1] = 0.0  # a call was expected and the completion never makes one
        return scores

    def score_call(self, call, row, offered, gold, answer, observation) -> float:
        schema = offered.get(call.get("tool")) or row.get("schema")  # an unknown tool fails the row's schema
        if schema is None or not self.checker.check(call, schema).passed:
            return 0.0
        if any(json_equal(call, g) for g in gold):
            return 1.0
        if answer is not None:
            if call.get("tool") == "calculator":
                try:
                    return float(close(calculate(call["parameters"]["expression"]), float(parse_number(str(answer)))))
                except (CalcError, KeyError, TypeError, ValueError):
                    return 0.0
            if observation is not None:
                return float(answer_matches(observation, answer))
        return 0.0 if gold else self.unverifiable

    def score_text(self, text, gold_tools, offered, answer, is_final) -> float:
        checked, wrong = check_equations(text)
        if wrong:
            return 0.0
        if gold_tools and offered:
            named = {t for t in offered if re.search(rf"\b{re.escape(t)}\b", text)}
            if named and not named & gold_tools:
                return 0.0  # plans to use the wrong tool
            if named & gold_tools:
                return 1.0
        if is_final and answer is not None:
            return float(answer_matches(text, answer))
        return 1.0 if checked else self.unverifiable

    def score(self, items: list[dict]) -> list[list[float]]:
        return [self.score_completion(it["row"], it["completion"], it["fmt"]) for it in items]
