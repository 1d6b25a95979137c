"""Where tool calls are served: document retrieval (SQLite FTS5, or a remote Elasticsearch/OpenSearch
index) and the API endpoints over HTTP (a loopback server the environment starts, or a remote base URL).

    with RestServer(world) as server:            # http://127.0.0.1:<ephemeral port>
        rest_get(server.base_url, "/hr/employees", {"name": "Mei Sato"})
"""

from __future__ import annotations

import base64
import json
import os
import re
import sqlite3
import threading
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from agent_align.env.world import ENDPOINTS_BY_PATH, ApiError, World
from agent_align.errors import config_error

_WORD = re.compile(r"\w+")


class SqliteIndex:
    """BM25 ranking from SQLite's FTS5 (built into the stdlib sqlite3), one table for all collections."""

    def __init__(self, documents: dict[str, list[dict]]):
        self.db = sqlite3.connect(":memory:", check_same_thread=False)
        self.lock = threading.Lock()
        self.db.execute("CREATE VIRTUAL TABLE docs USING fts5(collection UNINDEXED, doc_id UNINDEXED, title, text)")
        self.db.executemany("INSERT INTO docs VALUES (?, ?, ?, ?)",
                            [(c, d["id"], d["title"], d["text"]) for c, docs in documents.items() for d in docs])
        self.collections = sorted(documents)

    def search(self, collection: str, query: str, k: int) -> list[dict]:
        terms = _WORD.findall(query.lower())
        if not terms:
            raise ApiError("retrieve_documents: the query has no words to search for")
        # Quoting each term keeps FTS5 query syntax (AND, NEAR, *, :) in user text from being parsed.
        match = " OR ".join('"' + t.replace('"', '') + '"' for t in terms)
        with self.lock:
            rows = self.db.execute("SELECT doc_id, title, text FROM docs WHERE docs MATCH ? AND collection = ? "
                                   "ORDER BY bm25(docs) LIMIT ?", (match, collection, k)).fetchall()
        return [{"id": i, "title": t, "text": x} for i, t, x in rows]


def _basic_auth() -> dict:
    """Credentials come from ES_USERNAME / ES_PASSWORD only (never from config files)."""
    user, pw = os.environ.get("ES_USERNAME"), os.environ.get("ES_PASSWORD")
    if not user:
        return {}
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{pw or ''}".encode()).decode()}


def _http_json(method: str, url: str, body: bytes | None = None, headers: dict | None = None,
               timeout: float = 10.0) -> tuple[int, object]:
    req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json",
                                                                         **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"null")
        except ValueError:
            return exc.code, None


class ElasticsearchIndex:
    """Remote retrieval (Elasticsearch or OpenSearch: the same ``_search``/``_bulk`` REST API).
    Each collection is the index ``<prefix><collection>`` with ``title`` and ``text`` fields."""

    def __init__(self, url: str, prefix: str, documents: dict[str, list[dict]], populate: bool, timeout: float):
        self.url, self.prefix, self.timeout = url.rstrip("/"), prefix, timeout
        self.collections = sorted(documents)
        try:
            _http_json("GET", self.url + "/", headers=_basic_auth(), timeout=timeout)
        except (urllib.error.URLError, OSError) as exc:
            raise config_error("env.retrieval_url", url, f"cannot reach the index ({exc}); start it or use "
                               "env.retrieval_backend=sqlite") from None
        if populate:
            self._populate(documents)

    def _populate(self, documents: dict[str, list[dict]]) -> None:
        lines = []
        for c, docs in documents.items():
            for d in docs:  # ids make re-uploading idempotent
                lines.append(json.dumps({"index": {"_index": self.prefix + c, "_id": d["id"]}}))
                lines.append(json.dumps({"title": d["title"], "text": d["text"]}))
        status, body = _http_json("POST", self.url + "/_bulk?refresh=true", ("\n".join(lines) + "\n").encode(),
                                  {"Content-Type": "application/x-ndjson", **_basic_auth()}, self.timeout)
        if status >= 300 or (isinstance(body, dict) and body.get("errors")):
            raise config_error("env.retrieval_url", self.url, f"bulk upload failed (HTTP {status}); check the "
                               "credentials in ES_USERNAME/ES_PASSWORD or set env.retrieval_populate=false")

    def search(self, collection: str, query: str, k: int) -> list[dict]:
        body = json.dumps({"size": k, "query": {"multi_match": {"query": query, "fields": ["title", "text"]}}})
        status, res = _http_json("POST", f"{self.url}/{self.prefix}{collection}/_search", body.encode(),
                                 _basic_auth(), self.timeout)
        if status >= 300 or not isinstance(res, dict):
            raise ApiError(f"retrieve_documents: the index answered HTTP {status}")
        return [{"id": h["_id"], "title": h["_source"].get("title", ""), "text": h["_source"].get("text", "")}
                for h in res.get("hits", {}).get("hits", [])]


def build_index(env_cfg, world: World):
    if env_cfg.retrieval_backend == "sqlite":
        return SqliteIndex(world.documents)
    if not env_cfg.retrieval_url:
        raise config_error("env.retrieval_url", None, "env.retrieval_backend=elasticsearch needs the index URL, "
                           "e.g. env.retrieval_url=https://es.example:9200")
    return ElasticsearchIndex(env_cfg.retrieval_url, env_cfg.retrieval_index_prefix, world.documents,
                              env_cfg.retrieval_populate, env_cfg.http_timeout_s)


class _Handler(BaseHTTPRequestHandler):
    world: World  # set on the subclass built per server

    def do_GET(self):  # noqa: N802 (http.server's naming)
        url = urllib.parse.urlsplit(self.path)
        ep = ENDPOINTS_BY_PATH.get(url.path)
        if ep is None:
            return self._send(404, {"error": f"unknown endpoint {url.path}; valid: {sorted(ENDPOINTS_BY_PATH)}"})
        params = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query, keep_blank_values=True).items()}
        try:
            self._send(200, {"result": self.world.call_endpoint(ep.name, params)})
        except ApiError as exc:
            self._send(404 if "no record" in str(exc) else 400, {"error": str(exc)})

    def _send(self, code: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # one line per request would flood the run log
        pass


class RestServer:
    """The API endpoints served over real HTTP on 127.0.0.1, on a port the OS picks."""

    def __init__(self, world: World):
        handler = type("Handler", (_Handler,), {"world": world})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="rest-api", daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "RestServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def rest_get(base_url: str, path: str, params: dict, timeout: float = 10.0):
    """GET ``base_url + path?params``: the result, or ``ApiError`` with the server's message."""
    if not isinstance(params, dict) or any(isinstance(v, (dict, list)) for v in params.values()):
        raise ApiError(f"{path}: 'params' must be an object of scalar values")
    query = urllib.parse.urlencode({k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()})
    try:
        status, body = _http_json("GET", f"{base_url.rstrip('/')}{path}?{query}", timeout=timeout)
    except (urllib.error.URLError, OSError) as exc:
        raise config_error("env.rest_base_url", base_url, f"the API server is unreachable ({exc})") from None
    if status != 200:
        msg = body.get("error") if isinstance(body, dict) else None
        raise ApiError(msg or f"{path}: HTTP {status}")
    return body["result"]
