"""The synthetic organisation the agent works in: a relational database and document collections.

    world = build_world(seed=0)
    world.query("SELECT name, country FROM employees LIMIT 2")

Everything is drawn from ``random.Random(seed)``, so a seed always gives the same employees,
orders, meetings and documents (and therefore the same tasks and gold answers). The API endpoints
are read-only queries over this database; the documents are indexed for ``retrieve_documents``.
"""

from __future__ import annotations

import random
import sqlite3
import threading
from dataclasses import dataclass, field
from typing import Any

FIRST = ["Amara", "Bruno", "Chiara", "Dmitri", "Elif", "Felix", "Greta", "Hiro", "Ines", "Jonas", "Kavya", "Lars",
         "Mei", "Nadia", "Omar", "Priya", "Quentin", "Rosa", "Sven", "Tariq", "Uma", "Viktor", "Wanjiru", "Yusuf"]
LAST = ["Abara", "Berg", "Costa", "Dahl", "Eriksen", "Fischer", "Garcia", "Horvat", "Ito", "Jansen", "Kowalski",
        "Larsen", "Moreno", "Nakamura", "Okoye", "Petrova", "Quinn", "Rossi", "Sato", "Tanaka"]
COUNTRIES = ["Germany", "France", "Spain", "Italy", "Japan", "Canada", "Brazil", "India", "Kenya", "Norway"]
DEPARTMENTS = ["Logistics", "Finance", "Research", "Marketing", "Support", "Legal", "Design", "Security",
               "Procurement", "Analytics"]
TITLES = ["Engineer", "Analyst", "Manager", "Specialist", "Coordinator", "Director"]
PROJECT_A = ["Silver", "Crimson", "Amber", "Iron", "Velvet", "Hollow", "Northern", "Quiet", "Golden", "Swift"]
PROJECT_B = ["Falcon", "Orchid", "Granite", "Nimbus", "Quartz", "Tundra", "Cobalt", "Juniper", "Zephyr", "Basalt"]
TOPICS = ["warehouse automation", "supplier audits", "customer churn", "brand refresh", "contract templates",
          "badge access", "demand forecasting", "invoice matching", "ticket triage", "office relocation"]
BRANDS = ["Aero", "Lumen", "Terra", "Vanta", "Kesto", "Orbis", "Pyra", "Solace"]
ITEMS = [("Kettle", "keeps water hot for {n} hours"), ("Desk Lamp", "dims itself in {n} brightness steps"),
         ("Backpack", "holds a laptop and {n} litres of gear"), ("Headset", "cancels noise for {n} hours of calls"),
         ("Blender", "crushes ice with {n} steel blades"), ("Router", "covers {n} rooms with mesh wifi")]
ROOMS = ["Orion", "Lyra", "Vega", "Draco", "Cygnus", "Phoenix", "Carina", "Hydra", "Pavo", "Tucana", "Aquila",
         "Columba"]
BUILDINGS = ["North", "South", "Harbour"]
MEETINGS = ["Budget review", "Design critique", "Vendor call", "Roadmap sync", "Hiring panel", "Incident review"]
CUSTOMERS = ["Brightline GmbH", "Kestrel Foods", "Nordvik AS", "Palomar Labs", "Rivera & Sons", "Tamsin Retail",
             "Umbra Systems", "Willow Clinics"]
STATUSES = ["pending", "shipped", "delivered", "cancelled"]
DATES = [f"2025-03-{d:02d}" for d in range(3, 29)]


@dataclass
class Endpoint:
    """One read-only API endpoint: a typed tool in slot_filling mode, a path in rest mode."""
    name: str
    path: str
    subdomain: str  # hr | sales | calendar (tool_usage policies forbid a whole subdomain)
    description: str
    params: dict[str, str]  # parameter -> description (all strings: lossless in a query string)
    sql: str  # named placeholders :param; string comparisons are case-insensitive
    many: bool = False  # list of rows (calendar) rather than one record

    def parameters_schema(self) -> dict:
        return {"type": "object", "properties": {k: {"type": "string", "description": d} for k, d in self.params.items()},
                "required": list(self.params)}


ENDPOINTS = [
    Endpoint("get_employee", "/hr/employees", "hr", "Look up an employee record by full name.",
             {"name": "Full name of the employee"},
             "SELECT employee_id, name, email, department, title, country FROM employees WHERE name = :name COLLATE NOCASE"),
    Endpoint("get_department", "/hr/departments", "hr", "Look up a department: head, location, cost centre.",
             {"name": "Department name"},
             "SELECT name, head, location, cost_centre FROM departments WHERE name = :name COLLATE NOCASE"),
    Endpoint("get_order", "/sales/orders", "sales", "Look up a customer order by its id.",
             {"order_id": "Order id such as O-5001"},
             "SELECT order_id, customer, product, sku, quantity, status FROM orders WHERE order_id = :order_id COLLATE NOCASE"),
    Endpoint("get_inventory", "/sales/inventory", "sales", "Units in stock for a product SKU.",
             {"sku": "Product SKU such as AK-1042"},
             "SELECT sku, product, warehouse, in_stock FROM inventory WHERE sku = :sku COLLATE NOCASE"),
    Endpoint("get_calendar", "/calendar/events", "calendar", "An employee's meetings on a date.",
             {"employee": "Full name of the employee", "date": "Date as YYYY-MM-DD"},
             "SELECT title, date, room FROM calendar WHERE employee = :employee COLLATE NOCASE AND date = :date",
             many=True),
]
ENDPOINTS_BY_NAME = {e.name: e for e in ENDPOINTS}
ENDPOINTS_BY_PATH = {e.path: e for e in ENDPOINTS}
SUBDOMAINS = sorted({e.subdomain for e in ENDPOINTS})


class ApiError(Exception):
    """A tool call that reached the API but failed (no such record, bad parameter): a ``tool_error``."""


@dataclass
class World:
    db: sqlite3.Connection
    documents: dict[str, list[dict]]  # collection -> [{"id", "title", "text"}]
    facts: dict[str, list[dict]] = field(default_factory=dict)  # what task templates draw from
    lock: threading.Lock = field(default_factory=threading.Lock)  # the REST server queries from its threads

    def query(self, sql: str, params: dict | tuple = ()) -> list[dict]:
        with self.lock:
            cur = self.db.execute(sql, params)
            cols = [c[0] for c in cur.description]
            return [dict(zip(cols, row)) for row in cur.fetchall()]

    def call_endpoint(self, name: str, params: dict[str, Any]) -> Any:
        """The endpoint's result; ``ApiError`` for unknown/missing parameters or no matching record."""
        ep = ENDPOINTS_BY_NAME[name]
        unknown = sorted(set(params) - set(ep.params))
        missing = [p for p in ep.params if p not in params]
        if unknown or missing:
            raise ApiError(f"{ep.path}: " + "; ".join(filter(None, [
                f"unknown parameter(s) {unknown}" if unknown else "", f"missing parameter(s) {missing}" if missing else ""]))
                + f" (expects {list(ep.params)})")
        rows = self.query(ep.sql, {k: str(v) for k, v in params.items()})
        if not rows:
            shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
            raise ApiError(f"{ep.path}: no record with {shown}")
        return rows if ep.many else rows[0]


def _schema(db: sqlite3.Connection) -> None:
    db.executescript("""
        CREATE TABLE employees (employee_id TEXT PRIMARY KEY, name TEXT UNIQUE, email TEXT, department TEXT,
                                title TEXT, country TEXT);
        CREATE TABLE departments (name TEXT PRIMARY KEY, head TEXT, location TEXT, cost_centre TEXT);
        CREATE TABLE orders (order_id TEXT PRIMARY KEY, customer TEXT, product TEXT, sku TEXT, quantity INTEGER,
                             status TEXT);
        CREATE TABLE inventory (sku TEXT PRIMARY KEY, product TEXT, warehouse TEXT, in_stock INTEGER);
        CREATE TABLE calendar (event_id TEXT PRIMARY KEY, employee TEXT, date TEXT, title TEXT, room TEXT);
    """)


def _insert(db: sqlite3.Connection, table: str, rows: list[dict]) -> None:
    cols = list(rows[0])
    db.executemany(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                   [tuple(r[c] for c in cols) for r in rows])


def build_world(seed: int = 0, n_employees: int = 80, n_orders: int = 80, n_meetings: int = 60) -> World:
    rng = random.Random(f"world-{seed}")
    names = rng.sample([f"{f} {l}" for f in FIRST for l in LAST], n_employees)
    employees = []
    for i, name in enumerate(names):
        employees.append({"employee_id": f"E{1001 + i}", "name": name, "department": rng.choice(DEPARTMENTS),
                          "email": name.lower().replace(" ", ".") + "@acme.example", "title": rng.choice(TITLES),
                          "country": rng.choice(COUNTRIES)})
    heads = rng.sample(employees, len(DEPARTMENTS))
    departments = [{"name": d, "head": h["name"], "location": rng.choice(COUNTRIES), "cost_centre": f"CC-{310 + i}"}
                   for i, (d, h) in enumerate(zip(DEPARTMENTS, heads))]
    products = []
    for i, (brand, (item, feature)) in enumerate(rng.sample([(b, it) for b in BRANDS for it in ITEMS], 40)):
        sku = f"{brand[0]}{item[0]}-{1000 + 37 * i}"
        products.append({"sku": sku, "product": f"{brand} {item}", "feature": feature.format(n=rng.randint(2, 12)),
                         "warranty": rng.choice([6, 12, 18, 24, 36]), "warehouse": rng.choice(BUILDINGS),
                         "in_stock": rng.randint(0, 400)})
    orders = []
    for i in range(n_orders):
        p = rng.choice(products)
        orders.append({"order_id": f"O-{5001 + i}", "customer": rng.choice(CUSTOMERS), "product": p["product"],
                       "sku": p["sku"], "quantity": rng.randint(1, 50), "status": rng.choice(STATUSES)})
    rooms = [{"room": r, "floor": rng.randint(1, 9), "building": rng.choice(BUILDINGS), "seats": rng.randint(4, 30)}
             for r in ROOMS]
    slots = rng.sample([(e["name"], d) for e in employees for d in DATES], n_meetings)  # (employee, date) unique
    meetings = [{"event_id": f"M-{701 + i}", "employee": who, "date": day, "title": rng.choice(MEETINGS),
                 "room": rng.choice(ROOMS)} for i, (who, day) in enumerate(slots)]
    projects = [{"project": f"{a} {b}", "department": rng.choice(DEPARTMENTS), "topic": rng.choice(TOPICS),
                 "year": rng.randint(2019, 2025)} for a, b in rng.sample([(a, b) for a in PROJECT_A for b in PROJECT_B], 40)]
    leave = {c: {"annual": rng.randint(20, 32), "sick": rng.randint(5, 15)} for c in COUNTRIES}

    db = sqlite3.connect(":memory:", check_same_thread=False)
    _schema(db)
    _insert(db, "employees", employees)
    _insert(db, "departments", departments)
    _insert(db, "orders", orders)
    _insert(db, "inventory", [{k: p[k] for k in ("sku", "product", "warehouse", "in_stock")} for p in products])
    _insert(db, "calendar", meetings)
    db.commit()

    documents = {
        "hr_policies": [{"id": f"hr-{i}", "title": f"Leave policy {c}",
                         "text": f"Employees based in {c} receive {v['annual']} days of annual leave and "
                                 f"{v['sick']} days of paid sick leave per year."}
                        for i, (c, v) in enumerate(leave.items())]
        + [{"id": "hr-x1", "title": "Expense policy", "text": "Travel expenses above 500 EUR need a manager's approval."},
           {"id": "hr-x2", "title": "Remote work", "text": "Employees may work remotely up to three days per week."}],
        "company_docs": [{"id": f"co-{i}", "title": f"Project {p['project']}",
                          "text": f"Project {p['project']} is run by the {p['department']} department. It started in "
                                  f"{p['year']} and focuses on {p['topic']}."} for i, p in enumerate(projects)],
        "product_docs": [{"id": f"pr-{i}", "title": p["product"],
                          "text": f"The {p['product']} (SKU {p['sku']}) {p['feature']}. It carries a "
                                  f"{p['warranty']}-month warranty."} for i, p in enumerate(products)],
        "facilities": [{"id": f"fa-{i}", "title": f"Meeting room {r['room']}",
                        "text": f"Meeting room {r['room']} is on floor {r['floor']} of the {r['building']} building "
                                f"and seats {r['seats']} people."} for i, r in enumerate(rooms)],
    }
    facts = {"employees": employees, "departments": departments, "products": products, "orders": orders,
             "rooms": rooms, "meetings": meetings, "projects": projects,
             "leave": [{"country": c, **v} for c, v in leave.items()]}
    return World(db=db, documents=documents, facts=facts)


def doc_index(world: World) -> dict[str, dict[str, dict]]:
    """collection -> {title: doc} lookups for the task generator."""
    return {c: {d["title"]: d for d in docs} for c, docs in world.documents.items()}
