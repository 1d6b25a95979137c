"""stage=compare over agentic runs (``stage=agent_pipeline``, ``agentic_summary.json``): one row per
method evaluated on the held-out test tasks, with standard errors computed from the episodes.

    python -m agent_align stage=compare 'compare.runs=[runs/a,runs/b]'

Rows, in this order:

* the base model (``agentic/eval_base/``, summary ``base``, when the run evaluated it) and the SFT policy
  (``agentic/eval_sft/``, ``before_dpo``), once per distinct evaluation: runs whose evaluations have the
  same episodes (same task ids, outcomes, actions and step categories; without trajectory files, the same
  summary numbers) share one row, labelled ``SFT``; when they differ, each is labelled by its runs, ``SFT [a, c]``;
* each run's trained policy: one row per entry of the summary's ``rounds`` (``agentic/eval_dpo_r<k>/``;
  round 1 in ``agentic/eval_dpo/`` when its episodes give that round's numbers, as stage=agent_pipeline
  writes it) and the final ``after_dpo`` (``agentic/eval_dpo/``) unless its numbers are the last round's.
  A run with one evaluation gets one row without a round suffix. A run that picked its policy on another
  world's tasks (``agent.val_world_seed``, summary ``selection``) adds no ``after_dpo`` row: the picked round's
  row says ``, kept`` (none does when SFT was kept).

Every number is computed from the evaluation's ``trajectories/*.json`` (one file per episode); an
evaluation without trajectory files falls back to its block of ``agentic_summary.json`` (marked ``*``):
no answerable split, no SE of the average steps, an unpaired difference (a ``rounds`` entry without ``n``
takes ``after_dpo``'s: the same test tasks).

Method labels (``method_label``), unless ``compare.labels`` names the runs (then that name, plus the
round suffix):

* the method: ``NAT`` (summary ``method: nat`` or ``data.negatives=nat``), ``stepwise``, ``Step-DPO``
  (method or loss ``stepwise``/``step_dpo``), another summary ``method`` by its own name, otherwise
  ``<preference_granularity> DPO`` ("step DPO", "trajectory DPO"); the loss comes from the summary's
  ``dpo.loss`` or ``method``, else the run's ``.hydra/config.yaml``;
* in parentheses: the loss of a DPO-family method when it is not plain ``dpo`` (``step DPO (rpo)``), then
  ``key=value`` for each override that differs between the compared agentic runs (swept keys for a sweep;
  the loss, granularity and ``data.negatives`` already named are left out), and ``DPO skipped`` when the
  pipeline found no pairs;
* ``, round k`` for the rounds of a multi-round run; `` [run]`` when two rows would still read the same.

Columns and standard errors (SE): success and answerable-task success are binomial, sqrt(p(1-p)/n) over
episodes; the valid-call rate is binomial over steps (steps of an episode are not independent: optimistic);
average steps is the sample SD / sqrt(n) over episodes; policy violations is a count. The difference
from SFT is the method's success minus the SFT evaluation of the same run: when both evaluations cover
the same task (sample) ids it is paired, the SE being the sample SD of the per-task differences / sqrt(n);
otherwise sqrt(SE_method^2 + SE_sft^2).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from agent_align.compare.agent_stats import NO_DIFF, Evaluation, difference, number, read_records
from agent_align.jsonl import atomic_open

SUMMARY = "agentic_summary.json"
# What the label already names, so an override of it is not repeated in the parentheses.
NAMED_KEYS = ("loss", "loss.name", "agent.preference_granularity", "data.negatives")
METHOD_NAMES = {"stepwise": "stepwise", "step_dpo": "Step-DPO", "nat": "NAT"}
DPO_LOSSES = ("dpo", "ipo", "rpo")
SFT, BASE = "SFT", "base model"
COLUMNS = ("method", "kind", "run", "eval", "n", "success_rate", "success_se", "answerable_success", "answerable_n",
           "answerable_rate", "answerable_se", "valid_call_rate", "valid_call_se", "n_steps", "avg_steps",
           "avg_steps_se", "policy_violations", "diff_vs_sft", "diff_se", "diff_se_kind", "n_paired", "vs",
           "source", "dir")


def load_agentic_summary(run_dir: Path) -> tuple[dict | None, str]:
    p = Path(run_dir) / SUMMARY
    if not p.is_file():
        return None, f"no {SUMMARY}"
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except ValueError as exc:
        return None, f"{SUMMARY} is not valid JSON ({exc})"
    if not isinstance(data, dict):
        return None, f"{SUMMARY} is not a JSON object"
    if not any(isinstance(data.get(k), dict) for k in ("before_dpo", "after_dpo")) and not _rounds(data):
        return None, f"{SUMMARY} has no before_dpo, after_dpo or rounds"
    return data, ""


def _rounds(summary: dict) -> list[dict]:
    rounds = summary.get("rounds")
    return [r for r in rounds if isinstance(r, dict)] if isinstance(rounds, list) else []


# ---------------------------------------------------------------- labels


def _hydra_config(run_dir: Path):
    p = Path(run_dir) / ".hydra" / "config.yaml"
    try:
        return OmegaConf.load(p) if p.is_file() else None
    except (OSError, ValueError, yaml.YAMLError, OmegaConfBaseException):  # unreadable: only the fallback is lost
        return None


def _select(cfg, key: str):
    return OmegaConf.select(cfg, key, default=None) if cfg is not None else None


def method_label(summary: dict, run_dir: Path, swept: dict[str, str]) -> str:
    """The preference method of one agentic run, by the rule in the module docstring."""
    cfg = _hydra_config(run_dir)
    dpo = summary.get("dpo") if isinstance(summary.get("dpo"), dict) else {}
    method = summary.get("method") or dpo.get("method")
    method = str(method) if method else None
    loss = dpo.get("loss") or (method if method in DPO_LOSSES else None) or _select(cfg, "loss.name") \
        or swept.get("loss")
    negatives = _select(cfg, "data.negatives") or swept.get("data.negatives")
    gran = summary.get("preference_granularity") or _select(cfg, "agent.preference_granularity") or "step"
    extras = []
    if method == "nat" or negatives == "nat":
        base = METHOD_NAMES["nat"]
    elif method in METHOD_NAMES or loss in METHOD_NAMES:
        base = METHOD_NAMES[method if method in METHOD_NAMES else loss]
    elif method and method not in DPO_LOSSES:
        base = method  # a method this table does not know yet: its own name
    else:
        base = f"{gran} DPO"
        if loss and loss != "dpo":
            extras.append(str(loss))
    extras += [f"{k}={v}" for k, v in swept.items() if v is not None and k not in NAMED_KEYS]
    if dpo.get("skipped"):
        extras.append("DPO skipped")
    return base + (f" ({', '.join(extras)})" if extras else "")


# ---------------------------------------------------------------- rows


def _row(label: str, kind: str, run_label: str, ev: Evaluation, diff: dict | None, vs: str | None) -> dict:
    row = {"method": label, "kind": kind, "run": run_label, "eval": ev.name, **ev.stats, **(diff or NO_DIFF), "vs": vs,
           "dir": str(ev.dir)}
    return {c: (round(row[c], 6) if isinstance(row[c], float) else row[c]) for c in COLUMNS}


def _evaluation(run, name: str | None, block: Any, what: str, fallback_n: Any = None) -> Evaluation | None:
    """``agentic/<name>/`` of the run with its trajectories, else summary block ``what`` alone (also when
    ``name`` is None); None when neither has a success rate."""
    block = dict(block) if isinstance(block, dict) else {}
    if number(block, "n") is None and number({"n": fallback_n}, "n") is not None:
        block["n"] = fallback_n  # rounds[] blocks leave n out: the same test tasks as after_dpo
    d = Path(run.dir) / "agentic" / (name or "")
    records = read_records(d) if name else None
    if records is None and number(block, "success_rate") is None:
        return None
    return Evaluation(name=name if records is not None else f"{what} (summary)", dir=d if records is not None
                      else Path(run.dir) / SUMMARY, records=records, block=block)


def _method_evals(run) -> list[tuple[str, Evaluation]]:
    """(label suffix, evaluation) per evaluation of the run's trained policy: one per round, and the
    final one (``after_dpo``) unless it is the last round's (see the module docstring)."""
    s = run.agentic
    after = s.get("after_dpo") if isinstance(s.get("after_dpo"), dict) else {}
    before = s.get("before_dpo") if isinstance(s.get("before_dpo"), dict) else {}
    n = after.get("n", before.get("n"))
    out: list[tuple[str, Evaluation]] = []
    used: set[str] = set()
    for i, r in enumerate(_rounds(s)):
        k = r.get("round", i + 1)
        ev = _evaluation(run, f"eval_dpo_r{k}", r, f"rounds[{i}]", n)
        if ev is not None and ev.records is None and "eval_dpo" not in used:
            first = _evaluation(run, "eval_dpo", r, f"rounds[{i}]", n)  # the pipeline evaluates round 1 in eval_dpo/
            ev = first if first is not None and first.records is not None and first.matches(r) else ev
        if ev is not None:
            used.add(ev.name)
            out.append((f", round {k}", ev))
    kept = s.get("selection", {}).get("kept") if isinstance(s.get("selection"), dict) else None
    if kept:  # agent.val_world_seed: after_dpo is one of the rounds (or SFT, its own row): mark it, add none
        if len(out) == 1:
            return [(", kept" if kept != "sft" else "", out[0][1])]
        return [(suffix + (", kept" if suffix == f", {kept}" else ""), ev) for suffix, ev in out]
    if after and not (out and out[-1][1].matches(after)):
        ev = _evaluation(run, "eval_dpo" if "eval_dpo" not in used else None, after, "after_dpo")
        out += [("", ev)] if ev is not None else []
    elif not out:  # no summary block at all: the trajectories alone
        ev = _evaluation(run, "eval_dpo", None, "after_dpo")
        out += [("", ev)] if ev is not None else []
    return [("", out[0][1])] if len(out) == 1 else out


def _shared_rows(ok: list, name: str, key: str, label: str,
                 kind: str) -> tuple[list[dict], dict[int, tuple[str, Evaluation]]]:
    """One row per distinct evaluation ``agentic/<name>/`` (summary block ``key``) among the runs; the
    runs that share it are named in its label only when the runs' evaluations differ."""
    groups: list[tuple[Evaluation, list]] = []
    for r in ok:
        ev = _evaluation(r, name, r.agentic.get(key), key)
        if ev is None:
            continue
        for g in groups:
            if g[0].same_as(ev):
                g[1].append(r)
                break
        else:
            groups.append((ev, [r]))
    rows, of = [], {}
    for ev, members in groups:
        names = ", ".join(m.label for m in members)
        text = label if len(groups) == 1 else f"{label} [{names}]"
        rows.append(_row(text, kind, names, ev, None, None))
        for m in members:
            of[id(m)] = (text, ev)
    return rows, of


def build_agent_rows(runs: list, labelled: bool = False) -> list[dict[str, Any]]:
    """Rows for the runs that have an agentic summary: the base model (when evaluated) and the SFT policy,
    once per distinct evaluation, then each run's method (its rounds, or its one evaluation).
    ``labelled``: ``run.label`` is the user's method label (``compare.labels``)."""
    ok = [r for r in runs if getattr(r, "agentic", None)]
    base_rows, _ = _shared_rows(ok, "eval_base", "base", BASE, "base")
    sft_rows, sft_of = _shared_rows(ok, "eval_sft", "before_dpo", SFT, "sft")
    method_rows = []
    for r in ok:
        name = r.label if labelled else method_label(r.agentic, r.dir, r.swept)
        ref = sft_of.get(id(r))
        for suffix, ev in _method_evals(r):
            method_rows.append(_row(name + suffix, "method", r.label, ev, difference(ev, ref[1]) if ref else None,
                                    ref[0] if ref else None))
    count: dict[str, int] = {}
    for row in method_rows:
        count[row["method"]] = count.get(row["method"], 0) + 1
    for row in method_rows:  # two runs that would read the same: name the run
        if count[row["method"]] > 1:
            row["method"] += f" [{row['run']}]"
    return base_rows + sft_rows + method_rows


def write_csv(rows: list[dict], path: Path) -> None:
    with atomic_open(path) as fh:
        w = csv.DictWriter(fh, fieldnames=list(COLUMNS))
        w.writeheader()
        w.writerows(rows)


# ---------------------------------------------------------------- markdown


def _pct(p: float | None, se: float | None) -> str:
    if p is None:
        return "-"
    return f"{100 * p:.1f}%" + (f" ± {100 * se:.1f}" if se is not None else "")


def _cells(r: dict, several_sft: bool) -> list[str]:
    mark = "*" if r["source"] == "summary" else ""
    answ = ("-" if r["answerable_n"] is None else
            f"{r['answerable_success']}/{r['answerable_n']}" + (f" ({100 * r['answerable_rate']:.1f}%)"
                                                                 if r["answerable_rate"] is not None else ""))
    steps = "-" if r["avg_steps"] is None else f"{r['avg_steps']:.2f}" + (
        f" ± {r['avg_steps_se']:.2f}" if r["avg_steps_se"] is not None else "")
    if r["diff_vs_sft"] is None:
        diff = "-"
    else:
        diff = f"{100 * r['diff_vs_sft']:+.1f}" + (f" ± {100 * r['diff_se']:.1f}" if r["diff_se"] is not None else "")
        diff += f" ({r['diff_se_kind']}" + (f", {r['n_paired']} tasks" if r["n_paired"] else "") + ")"
        if several_sft:
            diff += f" vs {r['vs']}"
    viol = "-" if r["policy_violations"] is None else str(r["policy_violations"])
    return [r["method"] + mark, _pct(r["success_rate"], r["success_se"]), answ,
            _pct(r["valid_call_rate"], r["valid_call_se"]), steps, viol, "-" if r["n"] is None else str(r["n"]), diff]


NOTE = ("± is one standard error (SE). success, answerable: binomial SE sqrt(p(1-p)/n) over episodes "
        "(answerable: the tasks whose tools and policy allow an answer, successes/episodes). valid calls: share "
        "of steps not `invalid_call`, binomial SE over steps (steps of one episode are not independent, so it "
        "is optimistic). avg steps: mean ± sample SD/sqrt(n) over episodes. policy violations: steps that broke "
        "the task's tool-usage policy, all episodes. Δ success vs SFT: the method's success minus its own run's "
        "SFT evaluation, in percentage points; paired (both evaluations cover the same tasks): SE = sample SD of "
        "the per-task differences / sqrt(n); unpaired: sqrt(SE_method² + SE_SFT²).")


def markdown(rows: list[dict], skipped: list, title: str) -> str:
    several_sft = len({r["vs"] for r in rows if r["vs"]}) > 1
    cols = ["method", "success", "answerable success", "valid calls", "avg steps", "policy violations", "n",
            "Δ success vs SFT (pp)"]
    lines = [f"# {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cells(r, several_sft)) + " |" for r in rows]
    lines += ["", NOTE]
    if any(r["source"] == "summary" for r in rows):
        lines += ["", ("\\* from agentic_summary.json (no trajectory files): no answerable split, no SE of the "
                       "average steps, unpaired difference.")]
    lines += [""] + [f"- {r['method']} (run{'s' if ', ' in r['run'] else ''} {r['run']}): `{r['dir']}`" for r in rows]
    if skipped:
        lines += ["", "Not included:"] + [f"- {r.label} (`{r.dir}`): {r.problem}" for r in skipped]
    return "\n".join(lines) + "\n"
