"""The REST API built by create_app, driven over HTTP with a real broker and ingest behind it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from collector.app import create_app
from collector.auth import hash_password, secret_hash
from collector.config import CollectorConfig
from collector.keys import REPO, STATS
from collector.model import InventoryDevice
from collector.openapi import openapi_document
from collector.routes import ROUTES
from collector.store.base import Role
from collector.store.engines import open_store
from collector.store.sqlite import SQLiteRepository
from fleet_protocol import FaultCode, Kind, topic
from tests.collector.conftest import make_config, publish, state, wait_for
from tests.support.mosquitto import Broker

pytestmark = pytest.mark.integration

PATHS = openapi_document(ROUTES)["paths"]

USERS = {
    "admin": (Role.ADMIN, ()),
    "viewer": (Role.DISTRICT_VIEWER, ()),
    "officer1": (Role.COMMUNE_OFFICER, ("xa-01",)),
    "officer2": (Role.COMMUNE_OFFICER, ("xa-02",)),
    "tech": (Role.TECHNICIAN, ()),
}
INVENTORY = [
    InventoryDevice(device_id=f"dev-{c}{n}", commune_code=f"xa-0{c}", commune_name=name, position=i)
    for i, (c, n, name) in enumerate(
        [
            (1, 1, "Xã Sơn Vi"),
            (1, 2, "Xã Sơn Vi"),
            (2, 1, "Thị trấn Lâm Thao"),
            (2, 2, "Thị trấn Lâm Thao"),
        ]
    )
]


@dataclass
class Api:
    client: TestClient[web.Request, web.Application]
    app: web.Application
    tokens: dict[str, str]
    broker: Broker

    @property
    def repo(self) -> SQLiteRepository:
        repo = self.app[REPO]
        assert isinstance(repo, SQLiteRepository)
        return repo

    async def call(
        self, user: str | None, method: str, path: str, json: Any = None, **kw: Any
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.tokens[user]}"} if user else {}
        async with self.client.request(method, path, json=json, headers=headers, **kw) as resp:
            data = (
                await resp.json() if resp.content_type == "application/json" else await resp.text()
            )
            return resp.status, data


async def start_api(broker: Broker, tmp_path: Path, cfg: CollectorConfig) -> AsyncIterator[Api]:
    repo = await open_store(cfg.db)
    await repo.migrate()
    tokens: dict[str, str] = {}
    for name, (role, communes) in USERS.items():
        await repo.add_user(
            name,
            role=role,
            communes=frozenset(communes),
            password_hash=hash_password(f"pw-{name}-long"),
        )
        tokens[name] = f"token-{name}"
        await repo.add_token(name, token_hash=secret_hash(tokens[name]), label="t", at=time.time())
    await repo.upsert_inventory(INVENTORY, remove_missing=False, actor="test")
    await repo.close()
    app = create_app(cfg)
    async with TestClient(TestServer(app)) as client:
        await wait_for(lambda: _true(app[STATS].connected), what="ingest connected")
        yield Api(client, app, tokens, broker)


async def _true(v: bool) -> bool:
    return v


@pytest.fixture
async def api(broker: Broker, tmp_path: Path, repo: SQLiteRepository) -> AsyncIterator[Api]:
    """The API over the store of ``repo``: each test runs on SQLite and PostgreSQL."""
    cfg = make_config(
        broker,
        tmp_path,
        repairs={
            "auto_resolve_after_s": 0.5,
            "auto_open_after_s": 0.0,
            "overdue_after_s": 0.3,
            "sweep_interval_s": 0.1,
        },
    )
    async for a in start_api(broker, tmp_path, cfg):
        yield a


async def test_auth_required_everywhere_but_healthz(api: Api) -> None:
    status, data = await api.call(None, "GET", "/healthz")
    assert status == 200 and data["ok"] is True
    for path in PATHS:
        if path in ("/healthz", "/api/v1/auth/login"):
            continue
        if path.startswith("/upgrades/download/"):
            continue  # a capability URL: its token is the check (tests/collector/test_upgrades.py)
        concrete = path.replace("{device_id}", "dev-11").replace("{ticket_id}", "1")
        for method in PATHS[path]:
            status, _ = await api.call(None, method.upper(), concrete)
            assert status == 401, (method, concrete)
    bad = {"Authorization": "Bearer nope"}
    async with api.client.get("/api/v1/devices", headers=bad) as resp:
        assert resp.status == 401


async def test_browser_session_needs_csrf_for_changes(api: Api) -> None:
    c = api.client
    async with c.post("/api/v1/auth/login", json={"name": "officer1", "password": "wrong"}) as r:
        assert r.status == 401
    async with c.post(
        "/api/v1/auth/login", json={"name": "officer1", "password": "pw-officer1-long"}
    ) as r:
        assert r.status == 200
        csrf = (await r.json())["csrf_token"]
    async with c.get("/api/v1/auth/me") as r:
        me = await r.json()
        assert me["role"] == "commune_officer" and me["communes"] == ["xa-01"]
    async with c.post("/api/v1/repairs", json={"device_id": "dev-11"}) as r:
        assert r.status == 403 and "CSRF" in (await r.json())["error"]
    async with c.post(
        "/api/v1/repairs", json={"device_id": "dev-11"}, headers={"X-CSRF-Token": csrf}
    ) as r:
        assert r.status == 201
    async with c.post("/api/v1/auth/logout", headers={"X-CSRF-Token": csrf}) as r:
        assert r.status == 200
    async with c.get("/api/v1/auth/me") as r:
        assert r.status == 401


async def test_commune_officer_cannot_see_or_change_another_commune(api: Api) -> None:
    status, data = await api.call("officer1", "GET", "/api/v1/devices")
    assert status == 200
    assert {d["device_id"] for d in data["devices"]} == {"dev-11", "dev-12"}
    status, data = await api.call("officer1", "GET", "/api/v1/devices?commune=xa-02")
    assert status == 200 and data["devices"] == []
    assert (await api.call("officer1", "GET", "/api/v1/devices/dev-21"))[0] == 404
    assert (await api.call("officer1", "POST", "/api/v1/repairs", {"device_id": "dev-21"}))[
        0
    ] == 404
    # A ticket in xa-02, opened by its own officer, is invisible and untouchable to officer1.
    status, ticket = await api.call("officer2", "POST", "/api/v1/repairs", {"device_id": "dev-21"})
    assert status == 201
    tid = ticket["id"]
    assert (await api.call("officer1", "GET", f"/api/v1/repairs/{tid}"))[0] == 404
    for action, payload in (
        ("start", {"contractor": "X"}),
        ("comment", {"note": "n"}),
        ("cancel", {"note": "n"}),
    ):
        status, _ = await api.call("officer1", "POST", f"/api/v1/repairs/{tid}/{action}", payload)
        assert status == 404, action
    status, data = await api.call("officer1", "GET", "/api/v1/repairs")
    assert data["repairs"] == []
    status, summary = await api.call("officer1", "GET", "/api/v1/fleet/summary")
    assert summary["total"] == 2
    status, data = await api.call("officer1", "GET", "/api/v1/communes")
    assert [c["code"] for c in data["communes"]] == ["xa-01"]
    # The district viewer reads everything but changes nothing.
    assert (await api.call("viewer", "GET", "/api/v1/devices/dev-21"))[0] == 200
    assert (await api.call("viewer", "POST", f"/api/v1/repairs/{tid}/cancel", {"note": "x"}))[
        0
    ] == 403
    # Technicians work on tickets but do not cancel them.
    assert (await api.call("tech", "POST", f"/api/v1/repairs/{tid}/comment", {"note": "ok"}))[
        0
    ] == 200
    assert (await api.call("tech", "POST", f"/api/v1/repairs/{tid}/cancel", {"note": "x"}))[
        0
    ] == 403


@pytest.mark.parametrize(
    ("method", "path", "payload", "field"),
    [
        ("GET", "/api/v1/devices?status=dead", None, "status"),
        ("GET", "/api/v1/devices?cause=aliens", None, "cause"),
        ("GET", "/api/v1/devices?limit=-1", None, "limit"),
        ("GET", "/api/v1/devices?limit=1e9", None, "limit"),
        ("GET", "/api/v1/fleet/summary?at=yesterday", None, "at"),
        ("GET", "/api/v1/fleet/summary?at=nan", None, "at"),
        ("GET", "/api/v1/devices/DROP%20TABLE", None, "device_id"),
        ("GET", "/api/v1/events?device=%27%3B--", None, "device"),
        ("GET", "/api/v1/repairs/abc", None, "ticket_id"),
        ("GET", "/api/v1/repairs/99999999999999999999999", None, "ticket_id"),
        ("GET", "/api/v1/repairs/stats?by=weather", None, "by"),
        ("POST", "/api/v1/repairs", [1, 2], "$"),
        ("POST", "/api/v1/repairs", {}, "device_id"),
        ("POST", "/api/v1/repairs", {"device_id": 7}, "device_id"),
        ("POST", "/api/v1/repairs", {"device_id": "dev-11", "note": "a\x00b"}, "note"),
        ("POST", "/api/v1/repairs", {"device_id": "dev-11", "note": "x" * 5000}, "note"),
    ],
)
async def test_validation_errors_name_the_field(
    api: Api, method: str, path: str, payload: Any, field: str
) -> None:
    status, data = await api.call("admin", method, path, payload)
    assert 400 <= status < 500, (status, data)
    assert data["field"] == field, data


async def test_malformed_and_huge_bodies_are_4xx(api: Api) -> None:
    headers = {"Authorization": f"Bearer {api.tokens['admin']}", "Content-Type": "application/json"}
    async with api.client.post("/api/v1/repairs", data=b"{nope", headers=headers) as r:
        assert r.status == 400 and (await r.json())["field"] == "$"
    async with api.client.post("/api/v1/repairs", data=b"[" * 100000, headers=headers) as r:
        assert r.status == 413
    async with api.client.post(
        "/api/v1/repairs", data=b"x", headers={**headers, "Content-Type": "text/plain"}
    ) as r:
        assert r.status == 415


async def test_repair_lifecycle_with_auto_resolve(api: Api) -> None:
    dev = "dev-12"
    await publish(api.broker, dev, state(dev, 1, faults=(FaultCode.AMP_LINE_OPEN,)))

    async def broken() -> bool:
        s, d = await api.call("admin", "GET", f"/api/v1/devices/{dev}")
        return s == 200 and d["status"] == "broken" and d["cause"] == "amplifier_speaker"

    await wait_for(broken, what="device broken")
    odd = "Đã báo nhà thầu '; DROP TABLE tickets;-- \u202e"
    status, t = await api.call(
        "officer1", "POST", "/api/v1/repairs", {"device_id": dev, "note": odd}
    )
    assert status == 201 and t["state"] == "open" and t["cause"] == "amplifier_speaker"
    assert (await api.call("officer1", "POST", "/api/v1/repairs", {"device_id": dev}))[0] == 409
    status, t = await api.call(
        "tech",
        "POST",
        f"/api/v1/repairs/{t['id']}/start",
        {"contractor": "Viettel", "technician": "Nguyễn Văn A", "note": "thay dây loa"},
    )
    assert status == 200 and t["state"] == "in_repair"
    _, summary = await api.call("viewer", "GET", "/api/v1/fleet/summary?commune=xa-01")
    assert summary["in_repair"] == 1 and summary["by_cause"]["amplifier_speaker"] == 1
    # Overdue: no progress for longer than overdue_after_s (0.3 s in this config).

    async def overdue() -> bool:
        _, d = await api.call("viewer", "GET", "/api/v1/repairs/overdue")
        return [r["id"] for r in d["repairs"]] == [t["id"]]

    await wait_for(overdue, what="ticket overdue")
    # The cluster is fixed: healthy reports; the ticket resolves itself.
    await publish(api.broker, dev, state(dev, 2))

    async def resolved() -> bool:
        _, d = await api.call("viewer", "GET", f"/api/v1/repairs/{t['id']}")
        return d["state"] == "resolved"

    await wait_for(resolved, what="auto-resolve")
    _, d = await api.call("viewer", "GET", f"/api/v1/repairs/{t['id']}")
    assert [h["action"] for h in d["history"]] == ["open", "start", "resolve"]
    assert d["history"][0]["note"] == odd
    _, stats = await api.call("viewer", "GET", "/api/v1/repairs/stats?by=contractor")
    assert [s["key"] for s in stats["stats"]] == ["Viettel"]
    _, stats = await api.call("viewer", "GET", "/api/v1/repairs/stats?by=commune")
    assert stats["stats"][0]["key"] == "xa-01" and stats["stats"][0]["resolved"] == 1
    audit = await api.repo.audit_log()
    assert {"repair.open", "repair.start", "repair.resolve", "inventory.upsert"} <= {
        a["action"] for a in audit
    }


async def test_open_already_started_and_resolve_by_hand(api: Api) -> None:
    # One call: the contractor was called before anyone opened a ticket.
    status, t = await api.call(
        "tech",
        "POST",
        "/api/v1/repairs",
        {"device_id": "dev-11", "note": "xã báo", "contractor": "VNPT", "technician": "Lê B"},
    )
    assert status == 201 and t["state"] == "in_repair", t
    _, d = await api.call("viewer", "GET", f"/api/v1/repairs/{t['id']}")
    assert [h["action"] for h in d["history"]] == ["open", "start"]
    assert d["contractor"] == "VNPT" and d["technician"] == "Lê B"
    # A technician without a contractor is a mistake, named.
    status, err = await api.call(
        "tech", "POST", "/api/v1/repairs", {"device_id": "dev-12", "technician": "Lê B"}
    )
    assert status == 400 and err["field"] == "contractor"
    # The viewer cannot resolve; the technician can; twice is a conflict.
    path = f"/api/v1/repairs/{t['id']}/resolve"
    assert (await api.call("viewer", "POST", path, {}))[0] == 403
    status, t = await api.call("tech", "POST", path, {"note": "thay loa xong"})
    assert status == 200 and t["state"] == "resolved"
    assert (await api.call("tech", "POST", path, {}))[0] == 409


async def test_only_an_admin_records_a_past_time(api: Api) -> None:
    past = time.time() - 3 * 86400
    status, err = await api.call(
        "officer1", "POST", "/api/v1/repairs", {"device_id": "dev-11", "at": past}
    )
    assert status == 403 and err["field"] == "at"
    for bad_at in (time.time() + 3600, "yesterday", True, 1e300, 0):
        status, err = await api.call(
            "admin", "POST", "/api/v1/repairs", {"device_id": "dev-11", "at": bad_at}
        )
        assert status == 400 and err["field"] == "at", bad_at
    status, t = await api.call(
        "admin", "POST", "/api/v1/repairs", {"device_id": "dev-11", "at": past}
    )
    assert status == 201 and t["opened_at"] == pytest.approx(past)
    status, t = await api.call(
        "admin", "POST", f"/api/v1/repairs/{t['id']}/resolve", {"at": past + 3600}
    )
    assert status == 200 and t["closed_at"] == pytest.approx(past + 3600)


async def test_times_follow_the_configured_report_time_zone(broker: Broker, tmp_path: Path) -> None:
    import datetime as dt

    cfg = make_config(broker, tmp_path, report={"time_zone": "Europe/London"})
    london = dt.timezone(dt.timedelta(hours=1))  # BST on 31 July
    end_of_day = dt.datetime(2023, 8, 1, tzinfo=london).timestamp() - 1e-6
    async for a in start_api(broker, tmp_path, cfg):
        for raw in ("2023-07-31", "31/07/2023", "31/7/2023"):
            status, data = await a.call("viewer", "GET", f"/api/v1/fleet/summary?at={raw}")
            assert status == 200 and data["at"] == pytest.approx(end_of_day), raw
        _, data = await a.call("viewer", "GET", "/api/v1/fleet/summary?at=2023-07-31T08:00:00")
        assert data["at"] == dt.datetime(2023, 7, 31, 8, tzinfo=london).timestamp()
        status, data = await a.call("viewer", "GET", "/api/v1/fleet/summary?at=31/02/2023")
        assert status == 400 and data["field"] == "at"


async def test_metrics_and_openapi(api: Api) -> None:
    await publish(api.broker, "dev-11", (topic("dev-11", Kind.STATE), b"{bad"), state("dev-11", 1))

    async def stored() -> bool:
        return api.app[STATS].stored >= 1 and api.app[STATS].rejected["json"] >= 1

    await wait_for(stored, what="one stored, one rejected")
    status, text = await api.call("admin", "GET", "/metrics")
    assert status == 200
    assert 'loa_ingest_rejected_total{kind="json"} 1' in text
    assert 'loa_devices{status="working",cause=""} 1' in text
    assert 'loa_devices{status="broken",cause="unknown"} 3' in text
    assert "loa_ingest_rate " in text
    status, doc = await api.call("viewer", "GET", "/api/v1/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    # The JSON API and the two operational endpoints; the dashboard's HTML pages are not API.
    routes = {
        (r.method.lower(), r.resource.canonical)
        for r in api.app.router.routes()
        if r.resource is not None
        and r.method != "HEAD"
        and (r.resource.canonical.startswith("/api/") or r.resource.canonical in PATHS)
    }
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert routes == documented
