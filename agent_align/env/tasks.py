"""Multi-hop tasks over the synthetic organisation, each with a gold answer and a ground-truth trajectory.

    tasks = load_tasks(cfg.env)            # generated (deterministic for env.world_seed), or env.tasks_path
    [t for t in tasks if t["split"] == "test"]

A task needs one document lookup and one or two API calls, in the order of its ``scenario``:
``rag_before_api`` (a document names the value the API needs) or ``api_before_rag`` (the API names
what to look up). Its ``tool_availability`` and textual ``tool_usage`` policy may take away a needed
tool; then the only correct action is ``FINAL`` with the cannot-answer message, and the ground-truth
trajectory is that single step. Trajectory steps are mode-independent:
``{"kind": "rag", "collection", "query", "doc_id"}``, ``{"kind": "api", "endpoint", "args"}``,
``{"kind": "final", "answer"}``.
"""

from __future__ import annotations

import random

from agent_align.env.toolset import AVAILABILITY, CANNOT_ANSWER, parse_policy, policy_text
from agent_align.env.world import ENDPOINTS_BY_NAME, SUBDOMAINS, World, doc_index
from agent_align.errors import config_error, file_error
from agent_align.jsonl import read_jsonl

SCENARIOS = ("rag_before_api", "api_before_rag")
TASK_KEYS = ("task_id", "split", "scenario", "question", "answer", "answerable", "tool_availability", "tool_usage",
             "trajectory")


def _rag(collection: str, query: str, doc: dict) -> dict:
    return {"kind": "rag", "collection": collection, "query": query, "doc_id": doc["id"]}


def _api(endpoint: str, **args) -> dict:
    return {"kind": "api", "endpoint": endpoint, "args": args}


def _families(world: World):
    """(family, scenario, question, answer, steps) for every entity of the world."""
    f, docs = world.facts, doc_index(world)
    heads = {d["name"]: d["head"] for d in f["departments"]}
    emails = {e["name"]: e["email"] for e in f["employees"]}
    country = {e["name"]: e["country"] for e in f["employees"]}
    leave = {r["country"]: r for r in f["leave"]}
    product = {p["product"]: p for p in f["products"]}
    floor = {r["room"]: r["floor"] for r in f["rooms"]}
    for p in f["projects"]:
        name, dept = p["project"], p["department"]
        doc = docs["company_docs"][f"Project {name}"]
        yield ("project_head", "rag_before_api", f"Who heads the department that runs Project {name}?", heads[dept],
               [_rag("company_docs", f"Project {name}", doc), _api("get_department", name=dept)])
        yield ("project_head_email", "rag_before_api",
               f"What is the email address of the head of the department that runs Project {name}?",
               emails[heads[dept]], [_rag("company_docs", f"Project {name}", doc), _api("get_department", name=dept),
                                     _api("get_employee", name=heads[dept])])
    for p in f["products"]:
        yield ("product_stock", "rag_before_api", f"How many units of the {p['product']} are in stock?",
               str(p["in_stock"]), [_rag("product_docs", p["product"], docs["product_docs"][p["product"]]),
                                    _api("get_inventory", sku=p["sku"])])
    for e in f["employees"]:
        c = country[e["name"]]
        yield ("employee_leave", "api_before_rag", f"How many days of annual leave does {e['name']} get per year?",
               str(leave[c]["annual"]), [_api("get_employee", name=e["name"]),
                                         _rag("hr_policies", f"annual leave {c}", docs["hr_policies"][f"Leave policy {c}"])])
    for o in f["orders"]:
        p = product[o["product"]]
        yield ("order_warranty", "api_before_rag",
               f"How many months of warranty does the product in order {o['order_id']} carry?", str(p["warranty"]),
               [_api("get_order", order_id=o["order_id"]),
                _rag("product_docs", f"{p['product']} warranty", docs["product_docs"][p["product"]])])
    for m in f["meetings"]:
        yield ("meeting_floor", "api_before_rag",
               f"On which floor is the room of {m['employee']}'s meeting on {m['date']}?", str(floor[m["room"]]),
               [_api("get_calendar", employee=m["employee"], date=m["date"]),
                _rag("facilities", f"meeting room {m['room']}", docs["facilities"][f"Meeting room {m['room']}"])])


def _needs(steps: list[dict]) -> list[tuple[str, str]]:
    return [("rag", s["collection"]) if s["kind"] == "rag" else ("api", ENDPOINTS_BY_NAME[s["endpoint"]].subdomain)
            for s in steps]


def generate_tasks(env_cfg, world: World) -> list[dict]:
    """``env.n_tasks`` tasks, balanced across the selected scenarios, split train/test."""
    scenarios = SCENARIOS if env_cfg.scenario == "both" else (env_cfg.scenario,)
    rng = random.Random(f"tasks-{env_cfg.world_seed}")
    pools = {s: [x for x in _families(world) if x[1] == s] for s in scenarios}
    for pool in pools.values():
        rng.shuffle(pool)
    picked, i = [], 0
    while len(picked) < env_cfg.n_tasks and any(pools.values()):  # round-robin keeps the scenarios balanced
        pool = pools[scenarios[i % len(scenarios)]]
        if pool:
            picked.append(pool.pop())
        i += 1
    if len(picked) < env_cfg.n_tasks:
        raise config_error("env.n_tasks", env_cfg.n_tasks, f"this world has {len(picked)} distinct tasks for "
                           f"env.scenario={env_cfg.scenario}; use at most {len(picked)}")
    n_test = round(env_cfg.test_fraction * len(picked))
    collections = sorted(world.documents)
    avail_names = list(env_cfg.availability_mix)
    avail_weights = [env_cfg.availability_mix[a] for a in avail_names]
    tasks = []
    for i, (family, scenario, question, answer, steps) in enumerate(picked):
        trng = random.Random(f"task-{env_cfg.world_seed}-{i}")
        availability = env_cfg.tool_availability or trng.choices(avail_names, avail_weights)[0]
        needs = _needs(steps)
        rules: list[tuple[str, str]] = []
        if trng.random() < env_cfg.policy_fraction:
            if trng.random() < 0.5:  # forbid something the task needs: it becomes unanswerable
                rules = [trng.choice(needs)]
            else:  # a policy that does not get in the way, but must still be respected
                spare = [("rag", c) for c in collections if ("rag", c) not in needs] + \
                        [("api", s) for s in SUBDOMAINS if ("api", s) not in needs]
                rules = [trng.choice(spare)]
        answerable = availability == "both_api_rag" and not set(rules) & set(needs)
        tasks.append({
            "task_id": f"{scenario[:3]}-{family}-{i:04d}", "split": "test" if i < n_test else "train",
            "family": family, "scenario": scenario, "question": question,
            "answer": answer if answerable else CANNOT_ANSWER, "answerable": answerable,
            "tool_availability": availability, "tool_usage": policy_text(rules),
            "trajectory": (steps if answerable else []) + [{"kind": "final",
                                                            "answer": answer if answerable else CANNOT_ANSWER}],
            "solution": {"answer": answer, "trajectory": steps},  # what a fully equipped agent would do
        })
    return tasks


def read_task_file(path: str, collections: list[str]) -> list[dict]:
    """Tasks from JSONL (``env.tasks_path``), e.g. an exported or hand-written set, checked per line."""
    tasks = read_jsonl(path, "env.tasks_path", required=TASK_KEYS)
    for t in tasks:
        where = f"{path}:{t['_line']}"
        if t["scenario"] not in SCENARIOS:
            raise file_error(path, t["_line"], f"scenario {t['scenario']!r}", f"valid: {', '.join(SCENARIOS)}")
        if t["tool_availability"] not in AVAILABILITY:
            raise file_error(path, t["_line"], f"tool_availability {t['tool_availability']!r}",
                             f"valid: {', '.join(AVAILABILITY)}")
        parse_policy(t["tool_usage"], collections, where)
        if not t["trajectory"] or t["trajectory"][-1].get("kind") != "final":
            raise file_error(path, t["_line"], "trajectory must end with a {\"kind\": \"final\"} step")
    return tasks


def load_tasks(env_cfg, world: World) -> list[dict]:
    if env_cfg.tasks_path:
        return read_task_file(env_cfg.tasks_path, sorted(world.documents))
    return generate_tasks(env_cfg, world)


def select_split(tasks: list[dict], split: str, limit: int = 0) -> list[dict]:
    chosen = tasks if split == "all" else [t for t in tasks if t["split"] == split]
    if not chosen:
        raise config_error("agent.split", split, "no task in this split; use train, test or all")
    return chosen[:limit] if limit > 0 else chosen
