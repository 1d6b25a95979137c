"""The statistics behind the agentic comparison table (agent_table.py): one ``Evaluation`` per
``agentic/eval_*/`` directory, its numbers from the episodes' trajectory files (or, without them, from
its block of ``agentic_summary.json``), standard errors, and a method's success difference from SFT,
paired by task when both evaluations cover the same tasks."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_align.errors import UserError

# the numbers an agentic_summary.json block gives that identify an evaluation
MATCH_KEYS = ("n", "success_rate", "valid_call_rate", "avg_steps", "policy_violations")


@dataclass
class Evaluation:
    name: str  # eval_base, eval_sft, eval_dpo, eval_dpo_r<k>; "summary" when only the summary has it
    dir: Path
    records: dict[str, dict] | None  # sample_id -> trajectory record; None: no trajectory files
    block: dict  # its block of agentic_summary.json ({} when the summary has none)
    _stats: dict | None = field(default=None, repr=False)

    @property
    def stats(self) -> dict[str, Any]:
        if self._stats is None:
            self._stats = stats_from_summary(self.block) if self.records is None else stats_from_records(self.records)
        return self._stats

    def fingerprint(self) -> str:
        """Equal for evaluations with the same episodes (same tasks, outcomes, actions and step categories)."""
        what = [[sid, r.get("success"), r.get("final_answer"),
                 [[s.get("action"), s.get("category")] for s in r.get("steps") or []]]
                for sid, r in sorted((self.records or {}).items())]
        return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()

    def matches(self, block: dict) -> bool:
        """The numbers ``block`` gives (of MATCH_KEYS) are this evaluation's; False when it gives none."""
        keys = [k for k in MATCH_KEYS if number(block, k) is not None]
        return bool(keys) and all(self.stats[k] is not None and abs(self.stats[k] - number(block, k)) < 1e-9
                                  for k in keys)

    def same_as(self, other: Evaluation) -> bool:
        if self.dir.resolve() == other.dir.resolve() and self.records is not None:
            return True
        if self.records is not None and other.records is not None:
            return self.fingerprint() == other.fingerprint()
        return self.matches({k: other.stats[k] for k in MATCH_KEYS if other.stats[k] is not None})


def read_records(d: Path) -> dict[str, dict] | None:
    from agent_align.stages.agent import read_trajectories  # the reader stage=agent resumes with

    tdir = d / "trajectories"
    if not tdir.is_dir() or not any(tdir.glob("*.json")):
        return None
    try:
        records = read_trajectories(d, "compare.runs")
    except (KeyError, TypeError, AttributeError):
        raise UserError(f"{tdir}: a trajectory file has no sample_id (not written by stage=agent?)") from None
    for sid, r in records.items():
        missing = [k for k in ("success", "steps") if k not in r]
        if missing:
            raise UserError(f"{tdir}/{sid}.json: trajectory without {', '.join(missing)} (not written by stage=agent?)")
    return records


def binomial_se(p: float | None, n: int | None) -> float | None:
    if p is None or not n:
        return None
    return math.sqrt(max(p * (1 - p), 0.0) / n)


def mean_se(xs: list[float]) -> tuple[float | None, float | None]:
    n = len(xs)
    if not n:
        return None, None
    mean = sum(xs) / n
    if n < 2:
        return mean, None
    var = sum((x - mean) ** 2 for x in xs) / (n - 1)
    return mean, math.sqrt(var / n)


def _answerable(r: dict) -> bool | None:
    a = r.get("answerable")
    if a is None and isinstance(r.get("task"), dict):
        a = r["task"].get("answerable")
    return None if a is None else bool(a)


def stats_from_records(records: dict[str, dict]) -> dict[str, Any]:
    recs = list(records.values())
    n = len(recs)
    steps = [s for r in recs for s in r["steps"]]
    valid = sum(s.get("category") != "invalid_call" for s in steps)  # stage=agent's valid_call_rate
    known = all(_answerable(r) is not None for r in recs)
    answ = [r for r in recs if _answerable(r)] if known else []
    avg, avg_se = mean_se([float(r.get("total_time_steps", len(r["steps"]))) for r in recs])
    viol = sum(int(r["policy_violations"]) if isinstance(r.get("policy_violations"), (int, float))
               else sum(s.get("category") == "policy_violation" for s in r["steps"]) for r in recs)
    p = sum(bool(r["success"]) for r in recs) / n if n else None
    k_answ = sum(bool(r["success"]) for r in answ)
    pa = k_answ / len(answ) if answ else None
    pv = valid / len(steps) if steps else None
    return {"n": n, "success_rate": p, "success_se": binomial_se(p, n),
            "answerable_success": k_answ if known else None, "answerable_n": len(answ) if known else None,
            "answerable_rate": pa, "answerable_se": binomial_se(pa, len(answ)),
            "valid_call_rate": pv, "valid_call_se": binomial_se(pv, len(steps)), "n_steps": len(steps),
            "avg_steps": avg, "avg_steps_se": avg_se, "policy_violations": viol, "source": "trajectories"}


def number(block: dict, key: str) -> float | None:
    v = block.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def stats_from_summary(block: dict) -> dict[str, Any]:
    n = int(block["n"]) if number(block, "n") is not None else None
    p, pv, avg = number(block, "success_rate"), number(block, "valid_call_rate"), number(block, "avg_steps")
    n_steps = round(avg * n) if avg is not None and n else None  # avg_steps is total_time_steps / n
    viol = number(block, "policy_violations")
    return {"n": n, "success_rate": p, "success_se": binomial_se(p, n), "answerable_success": None,
            "answerable_n": None, "answerable_rate": None, "answerable_se": None, "valid_call_rate": pv,
            "valid_call_se": binomial_se(pv, n_steps), "n_steps": n_steps, "avg_steps": avg, "avg_steps_se": None,
            "policy_violations": None if viol is None else int(viol), "source": "summary"}


def difference(ev: Evaluation, ref: Evaluation) -> dict[str, Any]:
    """Success of ``ev`` minus that of ``ref``: paired by sample (= task) id when both cover the same ones."""
    st, ref_st = ev.stats, ref.stats
    if st["success_rate"] is None or ref_st["success_rate"] is None:
        return dict(NO_DIFF)
    if ev.records is not None and ref.records is not None and set(ev.records) == set(ref.records):
        d = [float(bool(ev.records[k]["success"])) - float(bool(ref.records[k]["success"])) for k in sorted(ev.records)]
        mean, se = mean_se(d)
        return {"diff_vs_sft": mean, "diff_se": se, "diff_se_kind": "paired", "n_paired": len(d)}
    se = (math.sqrt(st["success_se"] ** 2 + ref_st["success_se"] ** 2)
          if st["success_se"] is not None and ref_st["success_se"] is not None else None)
    return {"diff_vs_sft": st["success_rate"] - ref_st["success_rate"], "diff_se": se, "diff_se_kind": "unpaired",
            "n_paired": None}


NO_DIFF = {"diff_vs_sft": None, "diff_se": None, "diff_se_kind": None, "n_paired": None}
