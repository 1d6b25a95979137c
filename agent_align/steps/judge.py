"""The LLM step judge (``scorer=lm``): a local Hugging Face model or an OpenAI-compatible endpoint.

    python -m agent_align stage=score_steps scorer=lm scorer.backend=hf scorer.model_path=runs/x/checkpoints/sft
    OPENAI_API_KEY=... python -m agent_align stage=score_steps scorer=lm scorer.backend=openai \
        scorer.base_url=http://localhost:8000/v1 scorer.api_model=qwen2.5-7b-instruct

Each step is judged in context (task, earlier steps, the step) and the reply is parsed to a score
(a number in [0, 1], or yes/no). Requests go out in batches; replies are cached on disk in SQLite,
keyed by a SHA-256 of (backend, model, prompt, max_new_tokens), so re-scoring a file costs nothing.
The API key is read from the environment variable named by ``scorer.api_key_env``, never from config.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sqlite3
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from agent_align.errors import UserError, config_error
from agent_align.steps.split import steps_only

log = logging.getLogger(__name__)

JUDGE_SYSTEM = "You grade single steps of an assistant's work. Reply with 1 if the step is correct, 0 if not."
JUDGE_TEMPLATE = ("Task:\n{task}\n\nTools offered: {tools}\n\nEarlier steps:\n{history}\n\nStep to grade:\n{step}\n\n"
                  "Is this step correct and useful for the task? Reply with a single number, 1 or 0.")


def parse_judgement(reply: str) -> float | None:
    """A score from the judge's reply: the first number in [0, 1], else yes/correct or no/incorrect;
    None when the reply holds neither (the scorer then falls back to ``scorer.unverifiable_score``)."""
    text = (reply or "").strip().lower()
    # a number ends at a non-digit: "1." and "Score: 0." are sentences, "10", "1.5" and "-1" are other numbers
    m = re.search(r"(?<![\d.\-])(1(?:\.0+)?|0(?:\.\d+)?)(?!\d|\.\d)", text)
    if m:
        return float(m.group(1))
    if re.search(r"\b(incorrect|wrong|no|not)\b", text):  # before "correct": "not correct" is a no
        return 0.0
    if re.search(r"\b(correct|yes|right)\b", text):
        return 1.0
    return None


class JudgeCache:
    """SQLite key -> reply. One file shared by runs; writes are committed per batch."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path)
        self.db.execute("CREATE TABLE IF NOT EXISTS judge (key TEXT PRIMARY KEY, reply TEXT NOT NULL)")

    @staticmethod
    def key(*parts) -> str:
        return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()

    def get_many(self, keys: list[str]) -> dict[str, str]:
        out = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            q = f"SELECT key, reply FROM judge WHERE key IN ({','.join('?' * len(chunk))})"
            out.update(dict(self.db.execute(q, chunk).fetchall()))
        return out

    def put_many(self, items: dict[str, str]) -> None:
        self.db.executemany("INSERT OR REPLACE INTO judge VALUES (?, ?)", list(items.items()))
        self.db.commit()


def openai_backend(scorer_cfg) -> Callable[[list[str]], list[str]]:
    """Chat completions over HTTP with retries; requests of a batch run concurrently."""
    if not scorer_cfg.base_url:
        raise config_error("scorer.base_url", None, "set the endpoint, e.g. scorer.base_url=http://localhost:8000/v1")
    if not scorer_cfg.api_model:
        raise config_error("scorer.api_model", None, "name the served model, e.g. scorer.api_model=gpt-4o-mini")
    key = os.environ.get(scorer_cfg.api_key_env, "")
    url = scorer_cfg.base_url.rstrip("/") + "/chat/completions"

    def one(prompt: str) -> str:
        body = json.dumps({"model": scorer_cfg.api_model, "temperature": 0, "max_tokens": scorer_cfg.max_new_tokens,
                           "messages": [{"role": "system", "content": JUDGE_SYSTEM},
                                        {"role": "user", "content": prompt}]}).encode()
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
        for attempt in range(scorer_cfg.retries + 1):
            try:
                req = urllib.request.Request(url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=scorer_cfg.timeout_s) as resp:
                    return json.loads(resp.read())["choices"][0]["message"]["content"] or ""
            except urllib.error.HTTPError as exc:
                if exc.code in (401, 403):
                    raise UserError(f"{url}: HTTP {exc.code}; set the key in environment variable "
                                    f"{scorer_cfg.api_key_env} (scorer.api_key_env names it)") from None
                err = exc
            except (urllib.error.URLError, TimeoutError, KeyError, ValueError) as exc:
                err = exc
            if attempt < scorer_cfg.retries:
                time.sleep(min(2 ** attempt, 10))
        raise UserError(f"{url}: no answer after {scorer_cfg.retries + 1} tries ({err}); check scorer.base_url")

    def call(prompts: list[str]) -> list[str]:
        with ThreadPoolExecutor(max_workers=min(8, max(1, len(prompts)))) as pool:
            return list(pool.map(one, prompts))
    return call


def judge_chat(prompt: str) -> dict:
    """The conversation a local judge model is given for one judge prompt."""
    return {"messages": [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": prompt}], "tools": []}


def hf_backend(scorer_cfg, cfg) -> Callable[[list[str]], list[str]]:
    """A local model through the pipeline's own loader and batched generation: each call is one
    greedy ``generate`` over the whole batch (LMJudgeScorer sends at most scorer.batch_size prompts)."""
    from agent_align.generation import generate, inference_copy
    from agent_align.hardware import resolve_precision
    from agent_align.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(cfg, path=scorer_cfg.model_path)
    # The judge never trains: convert it for decoding once here, rather than generate() copying it per batch.
    model = inference_copy(model.eval(), resolve_precision(cfg.hardware) == "bf16")

    def call(prompts: list[str]) -> list[str]:
        return generate(model, tokenizer, [judge_chat(p) for p in prompts], max_new_tokens=scorer_cfg.max_new_tokens,
                        batch_size=max(1, len(prompts)), do_sample=False, desc=None)
    return call


def hf_identity(scorer_cfg, cfg) -> str:
    """What the local judge's replies depend on, found without loading it, for the cache key.

    Why not just the path: a checkpoint directory is overwritten when its run is re-trained, and the
    embedded model behind ``model.*`` differs per preset and build; either would serve stale replies.
    A directory is identified by its weight files' names, sizes and mtimes; the embedded model by its
    build hash; a hub model by its id."""
    path = scorer_cfg.model_path or (cfg.model.path if cfg is not None else None)
    if path:
        p = Path(path)
        files = sorted(f for f in p.glob("*") if f.suffix in (".safetensors", ".bin", ".json")) if p.is_dir() else []
        return json.dumps([str(p.resolve())] + [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files])
    if cfg is None:
        raise UserError("scorer=lm scorer.backend=hf needs scorer.model_path (or the run config for model.*)")
    if cfg.model.hub_id:
        return cfg.model.hub_id
    from agent_align.models.tiny import model_hash

    return f"{cfg.model.name}-{model_hash(cfg.model, cfg.data, cfg.seed)}"


def _task_text(row: dict) -> str:
    p = row.get("prompt", "")
    if isinstance(p, list):
        return "\n".join(f"{m.get('role')}: {m.get('content')}" for m in p)
    return str(p)


class LMJudgeScorer:
    name = "lm"

    def __init__(self, scorer_cfg, cfg=None, backend: Callable[[list[str]], list[str]] | None = None):
        self.cfg = scorer_cfg
        self.unverifiable = float(scorer_cfg.unverifiable_score)
        if scorer_cfg.backend not in ("hf", "openai"):
            raise config_error("scorer.backend", scorer_cfg.backend, "valid: hf, openai")
        if scorer_cfg.backend == "openai":
            model_id = str(scorer_cfg.api_model)
        else:
            model_id = hf_identity(scorer_cfg, cfg) if backend is None else (scorer_cfg.model_path or "model.*")
        self.identity = (scorer_cfg.backend, model_id, scorer_cfg.max_new_tokens)
        self._backend = backend
        self._factory = (lambda: openai_backend(scorer_cfg)) if scorer_cfg.backend == "openai" else \
            (lambda: hf_backend(scorer_cfg, cfg))
        if scorer_cfg.cache_path:
            path = Path(scorer_cfg.cache_path)
        else:
            from agent_align.models.tiny import cache_root

            path = cache_root() / "judge_cache.sqlite"
        self.cache = JudgeCache(path)
        self.stats = {"requests": 0, "cache_hits": 0, "unparsed": 0}

    @property
    def backend(self):
        if self._backend is None:  # built on first miss: a fully cached file loads no model
            self._backend = self._factory()
        return self._backend

    def prompts_for(self, row: dict, completion, fmt: str) -> list[str]:
        steps = [s.text.strip() for s in steps_only(completion, fmt)]
        tools = ", ".join((t.get("function", t) or {}).get("name", "?") for t in row.get("tools") or []) or "none"
        return [JUDGE_TEMPLATE.format(task=_task_text(row), tools=tools, step=s,
                                      history="\n".join(steps[:i]) or "(none)") for i, s in enumerate(steps)]

    def judge(self, prompts: list[str]) -> list[float]:
        keys = [JudgeCache.key(*self.identity, p) for p in prompts]
        known = self.cache.get_many(sorted(set(keys)))
        self.stats["cache_hits"] += sum(k in known for k in keys)
        todo = list(dict.fromkeys((k, p) for k, p in zip(keys, prompts) if k not in known))
        bs = max(1, self.cfg.batch_size)
        for i in range(0, len(todo), bs):
            batch = todo[i:i + bs]
            replies = self.backend([p for _, p in batch])
            self.stats["requests"] += len(batch)
            fresh = {k: r for (k, _), r in zip(batch, replies)}
            self.cache.put_many(fresh)
            known.update(fresh)
        out, unparsed = [], []
        for k in keys:
            score = parse_judgement(known[k])
            if score is None:
                unparsed.append(known[k])
                score = self.unverifiable
            out.append(score)
        self.stats["unparsed"] += len(unparsed)
        if unparsed:  # an untrained or mis-prompted judge would otherwise score everything silently
            log.warning("%d of %d judge replies hold no score (e.g. %r); they score scorer.unverifiable_score=%s. "
                        "Check the judge model (scorer.model_path / scorer.api_model)", len(unparsed), len(keys),
                        unparsed[0][:80], self.unverifiable)
        return out

    def score(self, items: list[dict]) -> list[list[float]]:
        per_item = [self.prompts_for(it["row"], it["completion"], it["fmt"]) for it in items]
        flat = self.judge([p for ps in per_item for p in ps])
        out, pos = [], 0
        for ps in per_item:
            out.append(flat[pos:pos + len(ps)])
            pos += len(ps)
        return out
