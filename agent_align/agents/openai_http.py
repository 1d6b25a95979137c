"""An OpenAI-compatible chat-completions client: retries, concurrency, and a response cache on disk.

The API key is read from the environment variable named by ``agent.openai.api_key_env`` at request
time and only ever placed in the Authorization header: it is not stored on this object, in the
cache, in errors or in any output file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from agent_align.errors import UserError

log = logging.getLogger(__name__)
RETRY_STATUS = (408, 409, 429, 500, 502, 503, 504)


def to_openai_messages(chat: dict) -> list[dict]:
    """Our chats use role ``tool`` without tool_call ids (calls are text), which the OpenAI API rejects:
    observations become user turns, and the tool list is written into the system message."""
    tools = chat.get("tools") or []
    out = []
    for m in chat["messages"]:
        if m["role"] == "tool":
            out.append({"role": "user", "content": f"Tool result: {m['content']}"})
        else:
            out.append({"role": m["role"], "content": m["content"]})
    if tools:
        listing = "\n".join(json.dumps(t.get("function", t), ensure_ascii=False) for t in tools)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\nTools:\n" + listing}
        else:
            out.insert(0, {"role": "system", "content": "Tools:\n" + listing})
    return out


def _reply_text(body: dict) -> str:
    msg = body["choices"][0]["message"]
    calls = msg.get("tool_calls") or []
    if not msg.get("content") and calls:  # a server that answers natively: back to our call format
        fn = calls[0]["function"]
        try:
            params = json.loads(fn.get("arguments") or "{}")
        except ValueError:
            return fn.get("arguments") or ""
        return json.dumps({"tool": fn["name"], "parameters": params}, ensure_ascii=False)
    return msg.get("content") or ""


class ResponseCache:
    """request hash -> reply text, in one SQLite file (safe across the client's threads)."""

    def __init__(self, directory: str | os.PathLike):
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(Path(directory) / "responses.sqlite"), check_same_thread=False)
        self.db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, reply TEXT)")
        self.lock = threading.Lock()

    def get(self, key: str) -> str | None:
        with self.lock:
            row = self.db.execute("SELECT reply FROM responses WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def put(self, key: str, reply: str) -> None:
        with self.lock:
            self.db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?)", (key, reply))
            self.db.commit()


class OpenAIBackend:
    def __init__(self, ocfg, *, max_new_tokens: int, temperature: float, top_p: float, cache_dir: str | None,
                 backoff_s: float = 1.0):
        self.cfg, self.backoff_s = ocfg, backoff_s
        self.url = ocfg.base_url.rstrip("/") + "/chat/completions"
        self.params = {"model": ocfg.model, "max_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p}
        self.cache = ResponseCache(cache_dir) if ocfg.cache and cache_dir else None
        self.requests = 0  # HTTP requests sent (cache hits send none)

    def _post(self, body: dict) -> dict:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.cfg.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        last = ""
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            self.requests += 1
            req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
                if exc.code in (401, 403):
                    raise UserError(f"config key 'agent.openai.base_url' = {self.cfg.base_url!r}: {last} "
                                    f"(unauthorised); put a valid key in ${self.cfg.api_key_env}") from None
                if exc.code not in RETRY_STATUS:
                    raise UserError(f"config key 'agent.openai.base_url' = {self.cfg.base_url!r}: {last} for "
                                    f"model {self.cfg.model!r}; check agent.openai.model and the server") from None
            except (urllib.error.URLError, OSError, ValueError) as exc:
                last = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
            log.warning("openai request failed (%s), attempt %d/%d", last, attempt + 1, self.cfg.max_retries + 1)
        raise UserError(f"config key 'agent.openai.base_url' = {self.cfg.base_url!r}: no answer after "
                        f"{self.cfg.max_retries + 1} attempts ({last}); check the server or raise agent.openai.max_retries")

    def _one(self, chat: dict) -> str:
        body = {**self.params, "messages": to_openai_messages(chat)}
        if self.params["temperature"] > 0 and "seed" in chat:
            body["seed"] = chat["seed"]  # distinct samples of one prompt get distinct cache entries
        key = hashlib.sha256((self.url + json.dumps(body, sort_keys=True)).encode()).hexdigest()
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                return hit
        reply = _reply_text(self._post(body))
        if self.cache is not None:
            self.cache.put(key, reply)
        return reply

    def complete(self, chats: list[dict]) -> list[str | None]:
        if len(chats) <= 1 or self.cfg.concurrency <= 1:
            return [self._one(c) for c in chats]
        with ThreadPoolExecutor(self.cfg.concurrency) as pool:
            return list(pool.map(self._one, chats))
