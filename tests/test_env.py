"""The agentic environment: step rules, tools (FTS5, loopback REST, remote index), tasks, availability, policies."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agent_align.agents.policies import GroundTruthExpert
from agent_align.agents.runner import Runner
from agent_align.env.backends import ElasticsearchIndex, RestServer, SqliteIndex, rest_get
from agent_align.env.environment import CANNOT_ANSWER, OrgEnv, is_cannot_answer, match_judge
from agent_align.env.tasks import read_task_file
from agent_align.env.world import ApiError, build_world
from agent_align.errors import UserError
from tests.conftest import compose


def call(tool, **params):
    return json.dumps({"tool": tool, "parameters": params})


@pytest.fixture(scope="module")
def org():
    with OrgEnv(compose().env) as o:
        yield o


def task_where(org, **want):
    return next(t for t in org.tasks if all(t[k] == v for k, v in want.items()))


@pytest.mark.parametrize("mode", ["slot_filling", "rest", "selection"])
def test_ground_truth_expert_solves_every_test_task(mode):
    cfg = compose([f"env.subdomain_mode={mode}", "agent=expert"])
    with OrgEnv(cfg.env) as org:
        tests = [t for t in org.tasks if t["split"] == "test"]
        records = list(Runner(org, None, GroundTruthExpert(), match_judge, cfg.agent).run(
            [(t, 0, t["task_id"]) for t in tests]))
    assert len(records) == len(tests) == 50
    assert all(r["success"] and r["terminated"] and not r["truncated"] for r in records)
    assert all(r["expert_assistance"]["tracker"] == [1] * r["total_time_steps"] for r in records)
    assert all(s["category"] in ("correct", "correct_final") for r in records for s in r["steps"])
    neither = [r for r in records if r["tool_availability"] == "neither_api_rag"]
    assert neither and all(r["final_answer"] == CANNOT_ANSWER and r["total_time_steps"] == 1 for r in neither)
    both = {r["scenario"] for r in records if r["answerable"]}
    assert both == {"rag_before_api", "api_before_rag"}


def test_step_categories_and_error_observations(org):
    t = task_where(org, family="employee_leave", tool_availability="both_api_rag", tool_usage="")
    env = org.episode()
    chat = env.reset(t)
    assert [m["role"] for m in chat["messages"]] == ["system", "user"]
    obs, r, term, trunc, info = env.step("let me think")
    assert (info["category"], info["validator_category"], term, trunc) == ("invalid_call", "json_error", False, False)
    assert obs.startswith("ERROR invalid_call/json_error") and r < 0
    assert env.step(call("get_employe", name="x"))[4]["validator_category"] == "wrong_tool"
    assert env.step(call("get_employee"))[4]["validator_category"] == "missing_required"
    obs, _, _, _, info = env.step(call("get_employee", name="Nobody Here"))
    assert info["category"] == "tool_error" and "no record" in obs
    name = t["trajectory"][0]["args"]["name"]
    obs, r, _, _, info = env.step(call("get_employee", name=name))
    assert info["category"] == "correct" and info["progress"] and json.loads(obs)["name"] == name and r > 0
    obs, _, _, trunc, info = env.step(call("get_employee", name=name))
    assert info["category"] == "redundant" and "repeated call" in obs and trunc  # 6th step: horizon
    assert env.truncated and env.truncated_reason == "horizon" and not env.terminated
    assert [m["role"] for m in env.messages[2:4]] == ["assistant", "tool"]
    with pytest.raises(RuntimeError):
        env.step(call("FINAL", answer="x"))


def test_final_ends_episode_and_is_judged(org):
    t = task_where(org, family="meeting_floor", tool_availability="both_api_rag", tool_usage="")
    env = org.episode()
    env.reset(t)
    _, r, term, _, info = env.step(call("FINAL", answer="floor 99"))
    assert term and info["category"] == "wrong_final" and not env.success and r == -1.0
    env.reset(t)
    _, r, term, _, info = env.step(call("FINAL", answer=f"It is on floor {t['answer']}."))
    assert term and info["category"] == "correct_final" and env.success and env.messages[-1]["role"] == "assistant"


@pytest.mark.parametrize("availability,offered", [
    ("both_api_rag", {"retrieve_documents", "get_employee", "get_department", "get_order", "get_inventory",
                      "get_calendar", "FINAL"}),
    ("only_rag", {"retrieve_documents", "FINAL"}),
    ("only_api", {"get_employee", "get_department", "get_order", "get_inventory", "get_calendar", "FINAL"}),
    ("neither_api_rag", {"FINAL"}),
])
def test_tool_availability(org, availability, offered):
    t = task_where(org, tool_availability=availability, tool_usage="")
    env = org.episode()
    chat = env.reset(t)
    assert {d["function"]["name"] for d in chat["tools"]} == offered
    assert t["answerable"] == (availability == "both_api_rag")
    if availability != "both_api_rag":
        assert t["trajectory"] == [{"kind": "final", "answer": CANNOT_ANSWER}]
        hidden = "get_employee" if "get_employee" not in offered else "retrieve_documents"
        obs, *_, info = env.step(call(hidden, name="x") if hidden == "get_employee" else
                                 call(hidden, collection="hr_policies", query="leave"))
        assert info["validator_category"] == "wrong_tool" and "not available" in obs
        # answering from memory what the tools cannot tell is wrong; saying so is right
        assert env.step(call("FINAL", answer=t["solution"]["answer"]))[4]["category"] == "wrong_final"
        env.reset(t)
        assert env.step(call("FINAL", answer="Sorry, I can not answer that with these tools."))[4]["category"] == \
            "correct_final"


def test_tool_usage_policy_is_enforced_and_counted(org):
    t = next(t for t in org.tasks if "retrieve_documents" in t["tool_usage"] and t["tool_availability"] == "both_api_rag")
    collection = t["tool_usage"].split("$")[3]
    env = org.episode()
    env.reset(t)
    assert t["tool_usage"] in env.messages[0]["content"]
    obs, r, term, _, info = env.step(call("retrieve_documents", collection=collection, query="anything"))
    assert info["category"] == "policy_violation" and obs.startswith("ERROR policy_violation") and not term
    other = next(c for c in org.index.collections if c != collection)
    assert env.step(call("retrieve_documents", collection=other, query="policy"))[4]["category"] == "correct"
    needed = {s.get("collection") for s in t["solution"]["trajectory"]}
    assert t["answerable"] == (collection not in needed)
    api = next(t for t in org.tasks if "API" in t["tool_usage"] and t["tool_availability"] == "both_api_rag")
    env.reset(api)
    sub = api["tool_usage"].split("$")[1]
    tool = {"hr": "get_employee", "sales": "get_order", "calendar": "get_calendar"}[sub]
    args = {"get_employee": {"name": "x"}, "get_order": {"order_id": "x"}, "get_calendar": {"employee": "x", "date": "x"}}
    assert env.step(call(tool, **args[tool]))[4]["category"] == "policy_violation"


def test_policy_text_that_cannot_be_enforced_is_a_file_line_error(tmp_path, org):
    good = dict(task_where(org, tool_usage=""))
    bad = {**good, "tool_usage": "Please be careful with the HR system."}
    path = tmp_path / "tasks.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(UserError, match=r"tasks.jsonl:2: cannot enforce policy text"):
        read_task_file(str(path), org.index.collections)
    path.write_text(json.dumps(good) + "\n")
    assert read_task_file(str(path), org.index.collections)[0]["task_id"] == good["task_id"]


def test_tasks_are_deterministic_balanced_and_split():
    a, b = OrgEnv(compose().env), OrgEnv(compose().env)
    try:
        assert json.dumps(a.tasks) == json.dumps(b.tasks)
    finally:
        a.close(), b.close()
    for scenario in ("rag_before_api", "api_before_rag"):
        with OrgEnv(compose([f"env.scenario={scenario}", "env.n_tasks=40"]).env) as o:
            assert {t["scenario"] for t in o.tasks} == {scenario} and len(o.tasks) == 40
            first = o.tasks[0]["solution"]["trajectory"][0]["kind"]
            assert first == ("rag" if scenario == "rag_before_api" else "api")
    with pytest.raises(UserError, match="env.n_tasks"):
        _ = OrgEnv(compose(["env.n_tasks=999"]).env).tasks


def test_fts5_bm25_retrieval_ranks_and_respects_top_k():
    world = build_world(0)
    index = SqliteIndex(world.documents)
    p = world.facts["projects"][3]["project"]
    hits = index.search("company_docs", f"Project {p}", 2)
    assert len(hits) == 2 and hits[0]["title"] == f"Project {p}"
    assert len(index.search("company_docs", f"Project {p}", 5)) == 5
    assert index.search("hr_policies", 'annual leave "Norway" AND NEAR(*', 1)[0]["title"] == "Leave policy Norway"
    with pytest.raises(ApiError):
        index.search("hr_policies", "?!", 2)


def test_rest_server_serves_the_api_on_loopback_and_stops():
    world = build_world(0)
    emp = world.facts["employees"][0]
    with RestServer(world) as server:
        assert server.base_url.startswith("http://127.0.0.1:")
        assert rest_get(server.base_url, "/hr/employees", {"name": emp["name"].upper()})["email"] == emp["email"]
        with pytest.raises(ApiError, match="no record"):
            rest_get(server.base_url, "/hr/employees", {"name": "Nobody"})
        with pytest.raises(ApiError, match="unknown parameter"):
            rest_get(server.base_url, "/hr/employees", {"nam": "x"})
        with pytest.raises(ApiError, match="unknown endpoint"):
            rest_get(server.base_url, "/hr/salaries", {})
        url = server.base_url
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "/hr/employees?name=x", timeout=2)


def test_rest_mode_env_starts_and_stops_its_server():
    org = OrgEnv(compose(["env.subdomain_mode=rest"]).env)
    base = org.server.base_url
    t = task_where(org, family="order_warranty", tool_availability="both_api_rag", tool_usage="")
    env = org.episode()
    env.reset(t)
    oid = t["trajectory"][0]["args"]["order_id"]
    obs, *_, info = env.step(call("call_api", endpoint="/sales/orders", params={"order_id": oid}))
    assert info["category"] == "correct" and info["progress"] and json.loads(obs)["order_id"] == oid
    obs, *_, info = env.step(call("call_api", endpoint="/sales/orders", params={"id": oid}))
    assert info["category"] == "tool_error" and "unknown parameter" in obs
    org.close()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(base + "/sales/orders?order_id=x", timeout=2)


def test_elasticsearch_backend_uploads_and_searches_over_http(monkeypatch):
    seen = []

    class FakeES(BaseHTTPRequestHandler):
        def _reply(self, body):
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._reply({"version": {"number": "8.0"}})

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            seen.append((self.path, body, self.headers.get("Authorization")))
            if self.path.startswith("/_bulk"):
                return self._reply({"errors": False})
            self._reply({"hits": {"hits": [{"_id": "hr-1", "_source": {"title": "Leave policy", "text": "28 days"}}]}})

        def log_message(self, *a):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeES)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.setenv("ES_USERNAME", "elastic")
    try:
        world = build_world(0)
        index = ElasticsearchIndex(f"http://127.0.0.1:{httpd.server_address[1]}", "aa-", world.documents, True, 5)
        hits = index.search("hr_policies", "annual leave", 2)
    finally:
        httpd.shutdown()
        httpd.server_close()
    bulk, search = seen
    assert bulk[0] == "/_bulk?refresh=true" and bulk[1].count("\n") == 2 * sum(map(len, world.documents.values()))
    assert search[0] == "/aa-hr_policies/_search" and json.loads(search[1])["size"] == 2
    assert search[2].startswith("Basic ") and hits == [{"id": "hr-1", "title": "Leave policy", "text": "28 days"}]
    with pytest.raises(UserError, match="env.retrieval_url"):
        ElasticsearchIndex(f"http://127.0.0.1:{httpd.server_address[1]}", "aa-", {}, False, 1)


def test_match_judge_normalises():
    t = {"answerable": True, "answer": "priya.eriksen@acme.example"}
    assert match_judge(t, "The email is Priya.Eriksen@acme.example.")[0]
    assert not match_judge(t, "priya.eriksen@acme.org")[0]
    n = {"answerable": True, "answer": "3"}
    assert match_judge(n, "Floor 3") [0] and not match_judge(n, "floor 13")[0]
    assert not match_judge(n, CANNOT_ANSWER)[0]
    assert is_cannot_answer(CANNOT_ANSWER) and not is_cannot_answer("I can answer: 3")
