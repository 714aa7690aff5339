"""Attacks on sign-in and the API, run against a real collector app on a TCP socket.

Login throttling (concurrent guesses, lock-out through a trusted proxy, spoofed
X-Forwarded-For), the metrics endpoint's access, fleet-wide data reaching a
commune officer, hostile JSON bodies, 409s naming the ticket, and the OpenAPI
document against the route table.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from collector.app import create_app
from collector.auth import client_address
from collector.cli import main
from collector.keys import CONFIG
from collector.openapi import openapi_document
from collector.params import safe_next
from collector.routes import ROUTES
from collector.store.base import ThrottleRule
from collector.store.sqlite import SQLiteRepository
from tests.collector.conftest import make_config, publish, state, wait_for
from tests.collector.test_api import Api, start_api
from tests.support.mosquitto import Broker

pytestmark = pytest.mark.integration

LOGIN = "/api/v1/auth/login"
WRONG = {"name": "viewer", "password": "not-the-password"}
RIGHT = {"name": "viewer", "password": "pw-viewer-long"}
#: Delays long enough to outlast a test on a loaded machine.
SLOW = {"first_delay_s": 300.0, "max_delay_s": 900.0}


@pytest.fixture
async def api(broker: Broker, tmp_path: Path, repo: SQLiteRepository) -> AsyncIterator[Api]:
    """On each engine (``repo``)."""
    (tmp_path / "metrics-token").write_text("metrics-token-0123456789abcdef\n")
    cfg = make_config(
        broker,
        tmp_path,
        http={"metrics_token_file": str(tmp_path / "metrics-token")},
        login=SLOW,
    )
    async for a in start_api(broker, tmp_path, cfg):
        yield a


@pytest.fixture
async def proxied(broker: Broker, tmp_path: Path) -> AsyncIterator[Api]:
    """The collector behind a reverse proxy on 127.0.0.1 (where the test client is)."""
    cfg = make_config(broker, tmp_path, http={"trusted_proxies": ["127.0.0.1", "::1"]}, login=SLOW)
    async for a in start_api(broker, tmp_path, cfg):
        yield a


async def _login(api: Api, payload: dict[str, str], **headers: str) -> int:
    async with api.client.post(LOGIN, json=payload, headers=headers) as r:
        return r.status


async def _failures(api: Api) -> list[dict[str, Any]]:
    return [a for a in await api.repo.audit_log(limit=1000) if a["action"] == "auth.login_failed"]


# -- login throttling --------------------------------------------------------------------------


async def test_60_concurrent_wrong_logins_make_at_most_5_password_checks(api: Api) -> None:
    statuses = Counter(await asyncio.gather(*(_login(api, WRONG) for _ in range(60))))
    # 401 = the password was checked and wrong; 429 = refused before any check.
    assert statuses == {401: 5, 429: 55}, statuses
    failures = await _failures(api)
    assert len(failures) == 5
    assert all(f["target"] == "user:viewer" and f["detail"]["client"] for f in failures)
    # The right password waits too (a delay, not a lock) ...
    async with api.client.post(LOGIN, json=RIGHT) as r:
        assert r.status == 429
        assert int(r.headers["Retry-After"]) >= 1
        assert (await r.json())["field"] == "name"
    # ... until an admin clears it; then it signs in at once.
    status, data = await api.call("admin", "POST", "/api/v1/users/viewer/unlock")
    assert status == 200 and data == {"name": "viewer", "cleared": 2}
    assert await _login(api, RIGHT) == 200
    assert "auth.unlock" in {a["action"] for a in await api.repo.audit_log()}
    # Only admins unlock; unknown names are 404.
    assert (await api.call("officer1", "POST", "/api/v1/users/viewer/unlock"))[0] == 403
    status, data = await api.call("admin", "POST", "/api/v1/users/nobody/unlock")
    assert status == 404 and data["field"] == "name"
    # Scripts with tokens were never affected.
    assert (await api.call("viewer", "GET", "/api/v1/fleet/summary"))[0] == 200


async def test_two_collector_instances_share_one_count(api: Api) -> None:
    """A second collector (API only) on the same database: guesses split between the
    two instances still get 5 password checks in all."""
    second = create_app(replace(api.app[CONFIG], ingest_enabled=False))
    async with TestClient(TestServer(second)) as other:

        async def guess(client: TestClient[web.Request, web.Application]) -> int:
            async with client.post(LOGIN, json=WRONG) as r:
                return r.status

        statuses = Counter(await asyncio.gather(*(guess(c) for c in [api.client, other] * 30)))
    assert statuses == {401: 5, 429: 55}, statuses


async def test_lockout_attempt_through_the_trusted_proxy_spares_the_owner(proxied: Api) -> None:
    attacker = "203.0.113.9"
    # The proxy appends the peer; whatever the attacker puts in front is not believed.
    guesses = [
        _login(proxied, WRONG, **{"X-Forwarded-For": f"10.9.{i}.1, {attacker}"}) for i in range(60)
    ]
    statuses = Counter(await asyncio.gather(*guesses))
    assert statuses == {401: 5, 429: 55}, statuses
    assert {f["detail"]["client"] for f in await _failures(proxied)} == {attacker}
    # The owner, at another address behind the same proxy, signs in at once.
    assert await _login(proxied, RIGHT, **{"X-Forwarded-For": "198.51.100.7"}) == 200
    # The attacker stays slowed down.
    assert await _login(proxied, WRONG, **{"X-Forwarded-For": attacker}) == 429


async def test_x_forwarded_for_from_an_untrusted_peer_is_ignored(api: Api) -> None:
    # No trusted proxy configured: a fresh forged address per guess changes nothing.
    statuses = [
        await _login(api, WRONG, **{"X-Forwarded-For": f"192.0.2.{i}"}) for i in range(1, 12)
    ]
    assert statuses[:5] == [401] * 5
    assert set(statuses[5:]) == {429}
    assert {f["detail"]["client"] for f in await _failures(api)} == {"127.0.0.1"}


async def test_cli_unlock_clears_delays(api: Api, tmp_path: Path) -> None:
    await asyncio.gather(*(_login(api, WRONG) for _ in range(8)))
    assert await _login(api, RIGHT) == 429
    cfg = tmp_path / "c.toml"
    url = getattr(api.repo, "url", None)  # PostgreSQL: the login throttle is in it too
    where = f'url = "{url}"' if url else f'path = "{api.repo.path}"'
    cfg.write_text(f"[db]\n{where}\n", encoding="utf-8")
    assert await asyncio.to_thread(main, ["users", "unlock", "viewer", "--config", str(cfg)]) == 0
    assert await _login(api, RIGHT) == 200
    assert await asyncio.to_thread(main, ["users", "unlock", "ghost", "--config", str(cfg)]) == 1


def test_delays_grow_exponentially_and_are_capped() -> None:
    rule = ThrottleRule(
        key="k", name="n", free=3, first_delay_s=1.0, max_delay_s=60.0, forget_s=3600.0
    )
    assert [rule.delay_after(n) for n in range(1, 11)] == [0, 0, 1, 2, 4, 8, 16, 32, 60, 60]


async def test_throttle_state_is_shared_by_instances_on_one_database(tmp_path: Path) -> None:
    """Two repositories on one file (two collector processes) share one count."""
    path = tmp_path / "shared.db"
    a = await SQLiteRepository.open(path, synchronous="normal")
    await a.migrate()
    b = await SQLiteRepository.open(path, synchronous="normal")
    rule = ThrottleRule(
        key="pair:x|viewer", name="viewer", free=5, first_delay_s=2.0, max_delay_s=8.0, forget_s=60
    )
    try:
        waits = await asyncio.gather(*(r.throttle_attempt([rule], at=1000.0) for r in [a, b] * 20))
        assert sum(1 for w in waits if w == 0) == 5
        assert await b.throttle_attempt([rule], at=1001.9) == pytest.approx(0.1)
        assert await a.throttle_attempt([rule], at=1002.0) == 0  # 6th, after 2 s
        assert await b.throttle_attempt([rule], at=1005.9) == pytest.approx(0.1)  # 4 s now
        assert await a.throttle_attempt([rule], at=1006.0) == 0
        # A key not tried for forget_s starts over.
        assert await b.throttle_attempt([rule], at=1100.0) == 0
        assert await b.throttle_unlock("viewer", actor="test") == 1
        assert await a.throttle_attempt([rule], at=1100.1) == 0
    finally:
        await a.close()
        await b.close()


def test_client_address_believes_only_trusted_proxies() -> None:
    from aiohttp.test_utils import make_mocked_request

    from collector.config import ConfigError, config_from_dict

    def addr(peer: str, xff: str | None, trusted: list[str]) -> str:
        headers = {"X-Forwarded-For": xff} if xff is not None else {}
        request = make_mocked_request("POST", LOGIN, headers=headers)
        request = request.clone(remote=peer)
        networks = config_from_dict({"http": {"trusted_proxies": trusted}}).http.proxy_networks()
        return client_address(request, networks)

    assert addr("203.0.113.5", "1.2.3.4", []) == "203.0.113.5"
    assert addr("10.0.0.2", "1.2.3.4", ["127.0.0.1"]) == "10.0.0.2"
    assert addr("127.0.0.1", "9.9.9.9, 1.2.3.4", ["127.0.0.1"]) == "1.2.3.4"
    # Two proxies in a row (10.0.0.0/8 and loopback): the first untrusted hop from the right.
    assert addr("127.0.0.1", "5.6.7.8, 10.1.1.1", ["127.0.0.1", "10.0.0.0/8"]) == "5.6.7.8"
    assert addr("127.0.0.1", "1.2.3.4, not-an-address", ["127.0.0.1"]) == "127.0.0.1"
    assert addr("127.0.0.1", None, ["127.0.0.1"]) == "127.0.0.1"
    with pytest.raises(ConfigError, match=r"\[http\] trusted_proxies: 'proxy.lan'"):
        config_from_dict({"http": {"trusted_proxies": ["proxy.lan"]}})


# -- /metrics and scope --------------------------------------------------------------------------


async def test_metrics_only_for_admins_and_the_metrics_token(api: Api) -> None:
    for user in ("officer1", "viewer", "tech"):
        status, data = await api.call(user, "GET", "/metrics")
        assert status == 403, user
        assert data["field"] == "role"
    assert (await api.call(None, "GET", "/metrics"))[0] == 401
    status, text = await api.call("admin", "GET", "/metrics")
    assert status == 200 and "loa_devices" in text
    scraper = {"Authorization": "Bearer metrics-token-0123456789abcdef"}
    async with api.client.get("/metrics", headers=scraper) as r:
        assert r.status == 200 and "loa_devices" in await r.text()
    async with api.client.get("/metrics", headers={"Authorization": "Bearer guess"}) as r:
        assert r.status == 401


def _concrete(path: str, ticket: int) -> str:
    return (
        path.replace("{device_id}", "dev-21")
        .replace("{ticket_id}", str(ticket))
        .replace("{name}", "viewer")
    )


async def test_nothing_fleet_wide_reaches_a_commune_officer(api: Api) -> None:
    """Every GET route, every format, as officer1 of xa-01: nothing of xa-02 comes back."""
    await publish(api.broker, "dev-21", state("dev-21", 1, commune="xa-02"))
    await publish(api.broker, "dev-11", state("dev-11", 1, commune="xa-01"))

    async def stored() -> bool:
        return len(await api.repo.list_events(limit=10)) >= 0 and (
            (await api.repo.get_device("dev-21")).last_seen is not None
        )

    await wait_for(stored, what="dev-21 reported")
    status, ticket = await api.call("officer2", "POST", "/api/v1/repairs", {"device_id": "dev-21"})
    assert status == 201
    foreign = re.compile(r"xa-02|dev-2[12]|Lâm Thao|L\\u00e2m Thao")
    checked = 0
    for route in ROUTES:
        if route.method != "GET" or route.path == "/api/v1/openapi.json":
            continue
        queries = [""]
        if route.path == "/api/v1/reports/b2":
            queries = ["", "?format=csv", "?format=html", "?scope=district", "?scope=province"]
        elif route.path == "/api/v1/reports/b2/summary":
            queries = ["", "?compare=1"]
        elif route.path == "/api/v1/inventory":
            queries = ["", "?format=csv"]
        elif route.path == "/api/v1/repairs/stats":
            queries = ["?by=commune", "?by=contractor"]
        for q in queries:
            url = _concrete(route.path, ticket["id"]) + q
            status, data = await api.call("officer1", "GET", url)
            body = data if isinstance(data, str) else repr(data)
            assert status in (200, 403, 404), (route.path, q, status)
            assert not foreign.search(body), (route.path, q, body[:300])
            checked += 1
    assert checked >= 20
    # The same requests as the district viewer do show xa-02: the check above can fail.
    status, data = await api.call("viewer", "GET", "/api/v1/devices/dev-21")
    assert status == 200 and data["commune_code"] == "xa-02"


async def test_out_of_scope_and_missing_devices_answer_alike(api: Api) -> None:
    """An officer cannot tell a device elsewhere from one that does not exist."""
    elsewhere = await api.call("officer1", "POST", "/api/v1/repairs", {"device_id": "dev-21"})
    missing = await api.call("officer1", "POST", "/api/v1/repairs", {"device_id": "dev-99"})
    assert elsewhere == missing == (404, {"error": "device_id: not found", "field": "device_id"})
    assert (await api.call("officer1", "GET", "/api/v1/devices/dev-21")) == (
        await api.call("officer1", "GET", "/api/v1/devices/dev-99")
    )


# -- hostile bodies ------------------------------------------------------------------------------


async def _post_raw(api: Api, path: str, data: bytes, user: str | None = "admin") -> Any:
    headers = {"Content-Type": "application/json"}
    if user:
        headers["Authorization"] = f"Bearer {api.tokens[user]}"
    async with api.client.post(path, data=data, headers=headers) as r:
        return r.status, await r.json()


@pytest.mark.parametrize("path", [LOGIN, "/api/v1/repairs", "/api/v1/repairs/1/comment"])
async def test_30000_deep_json_is_a_400(api: Api, path: str) -> None:
    user = None if path == LOGIN else "admin"
    status, data = await _post_raw(api, path, b"[" * 30000 + b"]" * 30000, user)
    assert status == 400 and data["field"] == "$" and "nested deeper" in data["error"]
    deep = b'{"a":' * 10000 + b"1" + b"}" * 10000  # as deep as fits in the 64 KiB limit
    status, data = await _post_raw(api, path, deep, user)
    assert status == 400 and "nested deeper" in data["error"]
    # Brackets inside strings are text, not nesting.
    ok = b'{"device_id": "dev-11", "note": "' + b"[" * 1000 + b'"}'
    if path == "/api/v1/repairs":
        assert (await _post_raw(api, path, ok))[0] == 201


@pytest.mark.parametrize(
    ("path", "payload", "field"),
    [
        # "cause" is a field since issue 14 (the finding on opening): misspell it.
        ("/api/v1/repairs", {"device_id": "dev-11", "causes": "power"}, "causes"),
        ("/api/v1/repairs", {"device_id": "dev-11", "contract": "VNPT"}, "contract"),
        (LOGIN, {"name": "viewer", "password": "x", "remember": True}, "remember"),
        ("/api/v1/repairs/1/start", {"contractor": "A", "tech": "B"}, "tech"),
    ],
)
async def test_unknown_fields_are_refused_by_name(
    api: Api, path: str, payload: dict[str, Any], field: str
) -> None:
    status, data = await api.call("admin", "POST", path, payload)
    assert status == 400, data
    assert data["field"] == field and "unknown field" in data["error"], data


async def test_409_names_the_conflicting_ticket(api: Api) -> None:
    status, first = await api.call("admin", "POST", "/api/v1/repairs", {"device_id": "dev-12"})
    assert status == 201
    status, data = await api.call("admin", "POST", "/api/v1/repairs", {"device_id": "dev-12"})
    assert status == 409
    assert data["ticket_id"] == first["id"] and data["field"] == "ticket_id"
    assert f"({first['id']})" in data["error"]
    tid = first["id"]
    status, _ = await api.call("admin", "POST", f"/api/v1/repairs/{tid}/cancel", {"note": "x"})
    assert status == 200
    status, data = await api.call("admin", "POST", f"/api/v1/repairs/{tid}/comment", {"note": "y"})
    assert status == 409 and data["ticket_id"] == tid


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/api/v1/devices?limit=0", "limit"),
        ("/api/v1/devices?limit=", "limit"),
        ("/api/v1/devices?limit=1.0", "limit"),
        ("/api/v1/devices?limt=5", "limt"),
        ("/api/v1/devices?limit=5&limit=6", "limit"),
        ("/api/v1/reports/b2?format=", "format"),
        ("/api/v1/reports/b2/summary?compare=true", "compare"),
        ("/api/v1/fleet/summary?at=2023-02-30", "at"),
        ("/api/v1/fleet/summary?at=2023-07-31%0A", "at"),
        ("/api/v1/devices?commune=", "commune"),
    ],
)
async def test_parameters_are_exactly_what_the_document_says(
    api: Api, path: str, field: str
) -> None:
    status, data = await api.call("admin", "GET", path)
    assert status == 400, data
    assert data["field"] == field and data["error"].startswith(f"{field}: "), data


async def test_every_4xx_names_a_field_and_a_reason(api: Api) -> None:
    cases = [
        await api.call(None, "GET", "/api/v1/devices"),
        await api.call("viewer", "POST", "/api/v1/repairs", {"device_id": "dev-11"}),
        await api.call("admin", "GET", "/api/v1/devices/dev-99"),
        await api.call("admin", "GET", "/api/v1/repairs/12345"),
        await api.call("admin", "POST", "/api/v1/repairs/1/comment", {"note": "   "}),
        await api.call("admin", "POST", "/api/v1/repairs", {"device_id": "dev-11", "note": 5}),
    ]
    for status, data in cases:
        assert 400 <= status < 500
        assert isinstance(data["field"], str) and data["error"].startswith(data["field"] + ": ")
        assert len(data["error"]) > len(data["field"]) + 5, data


async def test_blank_notes_and_names_follow_the_document(api: Api) -> None:
    """Empty optional text is accepted; required text needs a visible character."""
    status, ticket = await api.call(
        "admin", "POST", "/api/v1/repairs", {"device_id": "dev-11", "note": ""}
    )
    assert status == 201
    status, data = await api.call(
        "admin", "POST", f"/api/v1/repairs/{ticket['id']}/start", {"contractor": "  VNPT  "}
    )
    assert status == 200 and data["contractor"] == "VNPT"
    status, data = await api.call("admin", "GET", "/api/v1/auth/me")
    assert status == 200 and data["csrf_token"] is None and data["via"] == "token"


# -- the document ----------------------------------------------------------------------------------


def test_document_carries_the_constraints_and_every_answer() -> None:
    doc = openapi_document(ROUTES)
    schemas = doc["components"]["schemas"]
    devices = doc["paths"]["/api/v1/devices"]["get"]
    limit = next(p for p in devices["parameters"] if p["name"] == "limit")
    assert limit["schema"]["minimum"] == 1 and limit["schema"]["maximum"] == 10000
    me = schemas["Me"]["properties"]["csrf_token"]
    assert {"type": "null"} in me["anyOf"]
    create = doc["paths"]["/api/v1/repairs"]["post"]
    assert {"201", "400", "404", "409", "413", "415"} <= set(create["responses"])
    assert schemas["RepairOpenBody"]["additionalProperties"] is False
    b2 = doc["paths"]["/api/v1/reports/b2"]["get"]
    fmt = next(p for p in b2["parameters"] if p["name"] == "format")
    assert sorted(fmt["schema"]["enum"]) == ["csv", "html", "json", "xlsx"]
    compare = next(
        p
        for p in doc["paths"]["/api/v1/reports/b2/summary"]["get"]["parameters"]
        if p["name"] == "compare"
    )
    assert compare["schema"]["enum"] == ["0", "1"]
    note = schemas["NoteBody"]["properties"]["note"]
    assert re.fullmatch(note["pattern"], "   ") is None and re.fullmatch(note["pattern"], " x ")


# -- next= ------------------------------------------------------------------------------

HOSTILE_NEXT = [
    "//evil.example/",
    "/\\evil.example/",
    "\\\\evil.example",
    "/%09/evil.example/",
    "/%0a/evil.example/",
    "/%0d/evil.example/",
    "/%0A%0D/evil.example",
    "/%2F/evil.example",
    "/%5Cevil.example",
    "/%252F%252Fevil.example",
    "/\t/evil.example",
    "https://evil.example/",
    "javascript:alert(1)",
    "evil.example",
    "/ /evil.example",
    "",
]


@pytest.mark.parametrize("raw", HOSTILE_NEXT)
def test_safe_next_refuses_other_origins(raw: str) -> None:
    assert safe_next(raw) == "/"


@pytest.mark.parametrize("raw", ["/", "/repairs", "/communes/xa-01?as_of=2023-07-31", "/b2#top"])
def test_safe_next_keeps_local_paths(raw: str) -> None:
    assert safe_next(raw) == raw
