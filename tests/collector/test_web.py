"""The dashboard pages through the real app factory, store and auth (aiohttp test client).

The fleet is stored through the real ingest path (``Ingestor.prepare`` and
``write_batch``) from wire messages; no broker is needed for page rendering,
so ingest is off here (the browser tests in tests/e2e run it for real).
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from collector.app import create_app
from collector.auth import hash_password
from collector.config import CollectorConfig
from collector.ingest import Ingestor
from collector.keys import CONFIG, REPO
from collector.metrics import IngestStats
from collector.model import CommuneKind, InventoryDevice
from collector.store.base import Role, TicketState
from collector.store.sqlite import SQLiteRepository
from fleet_protocol import AmpState, FaultCode, Kind, Message, encode, topic
from tests.collector.conftest import make_config, presence, state

DAY = 86400.0
USERS = {
    "admin": (Role.ADMIN, ()),
    "viewer": (Role.DISTRICT_VIEWER, ()),
    "officer1": (Role.COMMUNE_OFFICER, ("xa-01",)),
    "tech": (Role.TECHNICIAN, ()),
}
INVENTORY = [
    InventoryDevice(
        device_id="dev-11",
        commune_code="xa-01",
        commune_name="Sơn Vi",
        latitude=21.30,
        longitude=105.25,
        contractor="Viettel Phú Thọ",
        position=0,
    ),
    InventoryDevice(
        device_id="dev-12",
        commune_code="xa-01",
        commune_name="Sơn Vi",
        latitude=21.31,
        longitude=105.26,
        contractor="Viettel Phú Thọ",
        position=1,
    ),
    InventoryDevice(
        device_id="dev-21",
        commune_code="xa-02",
        commune_name="Lâm Thao",
        commune_kind=CommuneKind.THI_TRAN,
        contractor="Bắc Việt",
        position=2,
    ),
    InventoryDevice(
        device_id="dev-22",
        commune_code="xa-02",
        commune_name="Lâm Thao",
        commune_kind=CommuneKind.THI_TRAN,
        position=3,
    ),
]


async def seed(repo: SQLiteRepository, cfg: CollectorConfig, now: float) -> None:
    """Users, inventory and a year of history, stored through the ingest path.

    dev-11 works all year; dev-12 lost the station stream 40 days ago and is
    under repair; dev-21 lost its SIM 3 days ago (ticket open, not started);
    dev-22 never reported.
    """
    for name, (role, communes) in USERS.items():
        await repo.add_user(
            name,
            role=role,
            communes=frozenset(communes),
            password_hash=hash_password(f"pw-{name}-long"),
        )
    await repo.upsert_inventory(INVENTORY, remove_missing=False, actor="test")
    ingestor = Ingestor(repo, cfg.ingest, IngestStats())
    seqs: dict[str, int] = {}

    async def send(device: str, msg_of: Any, ts: float) -> None:
        seqs[device] = seqs.get(device, 0) + 1
        msg: Message = msg_of(seqs[device], ts)
        kind = Kind.PRESENCE if msg_of.__name__ == "p" else Kind.STATE
        incoming = ingestor.prepare(topic(device, kind), encode(msg), received_at=ts)
        assert incoming is not None
        await repo.write_batch([incoming], late_after_s=cfg.ingest.late_after_s)

    for device in ("dev-11", "dev-12", "dev-21"):

        def p(seq: int, ts: float, device: str = device) -> Message:
            return presence(device, seq, True, ts)

        await send(device, p, now - 365 * DAY)
    # Monthly reports for a year, then hourly reports for the last 2 days.
    # The last report is a minute old: the app's offline sweep (grace 45 min) runs here too.
    times = sorted(
        [now - k * 30 * DAY for k in range(12, 1, -1)]
        + [now - 40 * DAY, now - 3 * DAY]
        + [now - 60.0 - h * 3600.0 for h in range(47, -1, -1)]
    )
    for ts in times:
        for device, broken_from, fault, commune in (
            ("dev-11", None, None, "xa-01"),
            ("dev-12", now - 40 * DAY, FaultCode.STREAM_LOST, "xa-01"),
            ("dev-21", now - 3 * DAY, FaultCode.SIM_ABSENT, "xa-02"),
        ):
            faults = (fault,) if fault and broken_from is not None and ts >= broken_from else ()

            def s(
                seq: int, ts: float, d: str = device, f: Any = faults, c: str = commune
            ) -> Message:
                report = state(d, seq, ts, faults=f, commune=c, rssi=-71.0 - (seq % 7))
                return type(report)(
                    **{
                        **{k: getattr(report, k) for k in report.__struct_fields__},
                        "amp": AmpState(temperature_c=41.0 + seq % 5),
                    }
                )

            await send(device, s, ts)
    t12 = await repo.open_ticket(
        "dev-12", actor="admin", at=now - 39 * DAY, note="mất sóng đài", cause=None
    )
    await repo.start_ticket(
        t12.id,
        actor="admin",
        at=now - 38 * DAY,
        contractor="Viettel Phú Thọ",
        technician="Nguyễn Văn An",
        note="",
    )
    await repo.open_ticket("dev-21", actor="officer1", at=now - 2 * DAY, note="", cause=None)


@dataclass
class Site:
    client: TestClient[web.Request, web.Application]
    app: web.Application
    now: float

    @property
    def repo(self) -> SQLiteRepository:
        repo = self.app[REPO]
        assert isinstance(repo, SQLiteRepository)
        return repo

    async def login(self, name: str) -> str:
        """Sign in as ``name`` (dropping any earlier session); returns the CSRF token."""
        self.client.session.cookie_jar.clear()
        async with self.client.post(
            "/api/v1/auth/login", json={"name": name, "password": f"pw-{name}-long"}
        ) as resp:
            assert resp.status == 200, await resp.text()
            return str((await resp.json())["csrf_token"])

    async def get(self, path: str, **kw: Any) -> tuple[int, str]:
        async with self.client.get(path, allow_redirects=False, **kw) as resp:
            return resp.status, await resp.text()

    async def post(self, path: str, data: Any, csrf: str | None) -> tuple[int, Any]:
        headers = {"X-CSRF-Token": csrf} if csrf else {}
        async with self.client.post(path, json=data, headers=headers) as resp:
            return resp.status, await resp.json()


@pytest.fixture
async def site(tmp_path: Path, repo: SQLiteRepository) -> AsyncIterator[Site]:
    """The dashboard over a seeded store, on each engine (``repo``)."""
    cfg = replace(
        make_config(None, tmp_path, repairs={"overdue_after_s": 3 * DAY, "auto_open_after_s": 0.0}),
        ingest_enabled=False,
    )
    now = time.time()
    await seed(repo, cfg, now)
    app = create_app(cfg)
    async with TestClient(TestServer(app)) as client:
        yield Site(client, app, now)


def stats(page: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r'data-stat="(\w+)">(\d+)<', page)}


# -- sign-in, assets, headers ------------------------------------------------------------------


async def test_pages_redirect_to_login_and_login_page_is_public(site: Site) -> None:
    for path in ("/", "/communes/xa-01", "/devices/dev-11", "/b2", "/repairs", "/users"):
        async with site.client.get(path, allow_redirects=False) as resp:
            assert resp.status == 303, path
            assert resp.headers["Location"] == f"/login?next={path}"
    status, page = await site.get("/login?next=/b2")
    assert status == 200
    assert "Đăng nhập hệ thống giám sát" in page and 'data-next="/b2"' in page
    async with site.client.get("/static/app.js") as resp:
        assert resp.status == 200
    # The live endpoint and the API stay JSON for scripts.
    async with site.client.get("/ui/live") as resp:
        assert resp.status == 401


async def test_login_next_cannot_leave_the_site(site: Site) -> None:
    for hostile in ("//evil.example/x", "https://evil.example/", "/\\evil", "javascript:alert(1)"):
        _, page = await site.get("/login", params={"next": hostile})
        assert 'data-next="/"' in page, hostile


async def test_html_pages_carry_security_headers_and_no_external_assets(site: Site) -> None:
    await site.login("admin")
    for path in ("/", "/communes/xa-01", "/devices/dev-12", "/b2", "/repairs", "/users"):
        async with site.client.get(path) as resp:
            assert resp.status == 200, path
            csp = resp.headers["Content-Security-Policy"]
            assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            page = await resp.text()
        # Every asset is served by the collector itself (district LANs have no internet).
        assert not re.search(r'(src|href)="(https?:)?//', page), path
        assert "style=" not in page, f"{path}: inline style breaks the CSP"


# -- overview ----------------------------------------------------------------------------------


async def test_overview_figures_match_the_api(site: Site) -> None:
    await site.login("admin")
    status, page = await site.get("/")
    assert status == 200
    async with site.client.get("/api/v1/fleet/summary") as resp:
        api = await resp.json()
    shown = stats(page)
    for key in ("total", "working", "broken", "in_repair", "not_repaired", "never_reported"):
        assert shown[key] == api[key], key
    assert shown["offline"] == api["total"] - api["online"] - api["never_reported"]
    assert (shown["total"], shown["working"], shown["broken"]) == (4, 1, 3)
    assert (shown["in_repair"], shown["not_repaired"]) == (1, 2)
    # Vietnamese by default, with diacritics; causes from the shared labels.
    for label in ("Tổng số cụm loa", "Hoạt động tốt", "Đang sửa chữa", "Chưa sửa chữa"):
        assert label in page
    assert "Không tiếp được sóng của đài" in page and "Cháy SIM, lỗi SIM" in page
    # Per-commune table with ratios, sortable.
    assert 'href="/communes/xa-01">Xã Sơn Vi</a>' in page
    assert "Thị trấn Lâm Thao" in page
    assert '<span class="ratio">50,0%</span>' in page
    assert '<span class="ratio">0,0%</span>' in page
    assert 'class="sortable"' in page


async def test_overview_trend_counts_each_month_end(site: Site) -> None:
    await site.login("admin")
    _, page = await site.get("/")
    trend = page[page.index('id="trend"') :]
    bars = re.findall(
        r"<title>(\d\d/\d\d): Hoạt động tốt (\d+), Hỏng, không hoạt động (\d+)</title>", trend
    )
    assert len(bars) == 12
    # A year ago only dev-11..21 had reported and all worked; dev-22 never reports
    # and was listed only now, so it did not count then (issue 16).
    assert bars[0][1:] == ("3", "0")
    # Now: dev-11 works; dev-12, dev-21 broken; dev-22 listed, never reported.
    assert bars[-1][1:] == ("1", "3")
    # The month before dev-12 broke (40 days ago) still had three working.
    assert ("3", "0") in [b[1:] for b in bars[-4:-2]]


async def test_overview_trend_says_no_data_before_the_fleet_existed(site: Site) -> None:
    """Installed 100 days ago: the months before say "no data" instead of counting
    the fleet broken; the months since count the installed clusters (issue 16)."""
    import datetime as dt

    installed = dt.date.fromtimestamp(site.now - 100 * DAY).isoformat()
    await site.repo.upsert_inventory(
        [replace(d, install_date=installed) for d in INVENTORY], remove_missing=False
    )
    await site.login("admin")
    for lang, no_data, working in (
        ("vi", "Không có dữ liệu", "Hoạt động tốt"),
        ("en", "No data", "Working"),
    ):
        _, page = await site.get(f"/?lang={lang}")
        trend = page[page.index('id="trend"') :].split("</section>")[0]
        empty = re.findall(rf"<title>(\d\d/\d\d): {no_data}</title>", trend)
        bars = re.findall(rf"<title>(\d\d/\d\d): {working} (\d+), [^<]* (\d+)</title>", trend)
        assert len(empty) + len(bars) == 12, trend
        assert 7 <= len(empty) <= 9, empty
        # Months ending after the install day count all four clusters.
        assert all(int(w) + int(b) == 4 for _, w, b in bars[1:]), bars


async def test_overview_and_b2_page_show_the_months_evaluation(site: Site) -> None:
    await site.login("admin")
    for path in ("/", "/b2"):
        _, page = await site.get(path)
        section = page[page.index('id="evaluation"') :].split("</section>")[0]
        assert "ĐÁNH GIÁ, XẾP LOẠI HOẠT ĐỘNG THÁNG" in section, path
        assert "Xếp hạng" in section and "Tỷ lệ hoạt động (%)" in section
        # xa-01: dev-11 worked the whole month, dev-12 lost its stream 40 days ago.
        row = re.search(r"<tr[^>]*>(?:(?!</tr>).)*Xã Sơn Vi(?:(?!</tr>).)*</tr>", section)
        assert row is not None, section
        assert ">50,0<" in row.group(0) and "Trung bình" in row.group(0), row.group(0)
    _, page = await site.get("/?lang=en")
    assert "MONTHLY EVALUATION" in page and "Availability (%)" in page


async def test_overview_lists_overdue_repairs_and_worst_communes(site: Site) -> None:
    await site.login("admin")
    _, page = await site.get("/")
    overdue = page[page.index('id="overdue"') :]
    # dev-12's ticket last moved 38 days ago (> 3 days); dev-21's was opened 2 days ago.
    assert 'href="/devices/dev-12"' in overdue
    assert 'href="/devices/dev-21"' not in overdue.split("</section>")[0]
    worst = page[page.index('id="worst"') :].split("</section>")[0]
    assert worst.index("Thị trấn Lâm Thao") < worst.index("Xã Sơn Vi")


# -- language ----------------------------------------------------------------------------------


async def test_language_switch_by_query_then_cookie(site: Site) -> None:
    await site.login("admin")
    async with site.client.get("/?lang=en") as resp:
        page = await resp.text()
        assert resp.cookies["loa_lang"].value == "en"
    assert '<html lang="en">' in page and "Total clusters" in page and "No station signal" in page
    _, page = await site.get("/repairs")
    assert "Open repair tickets" in page
    _, page = await site.get("/b2")
    assert "Download XLSX" in page
    _, page = await site.get("/?lang=vi")
    assert '<html lang="vi">' in page and "Tổng số cụm loa" in page
    _, page = await site.get("/?lang=xx")
    assert '<html lang="vi">' in page


# -- commune and cluster -----------------------------------------------------------------------


async def test_commune_page_lists_clusters_and_plots_positions(site: Site) -> None:
    await site.login("admin")
    status, page = await site.get("/communes/xa-01")
    assert status == 200
    assert "<h1>Xã Sơn Vi</h1>" in page
    clusters = page[page.index('id="clusters"') :].split("</section>")[0]
    assert clusters.count("<tr") == 3  # header + 2 clusters
    assert "Không tiếp được sóng của đài" in clusters and "Đang sửa chữa" in clusters
    assert "40 ngày" in clusters or "39 ngày" in clusters
    assert "Trung bình (RSRP -9" in clusters  # RSRP -91..-97 dBm: fair
    svg = page[page.index('id="map"') :]
    assert svg.count("<circle") == 2 and 'href="/devices/dev-12"' in svg
    # No coordinates in xa-02's inventory: a plain note instead of a map.
    _, page2 = await site.get("/communes/xa-02")
    assert "chưa có toạ độ" in page2
    status, _ = await site.get("/communes/nowhere")
    assert status == 404


async def test_device_page_shows_faults_charts_history_and_actions(site: Site) -> None:
    await site.login("admin")
    status, page = await site.get("/devices/dev-21")
    assert status == 200
    panel = page[page.index('id="status"') :].split("</section>")[0]
    assert "Không có SIM" in panel and "sim_absent" in panel and "test sim_absent" in panel
    charts = page[page.index('id="charts"') :].split("</section>")[0]
    assert charts.count("<polyline") >= 3  # RSSI, RSRP, temperature (SINR absent)
    assert "Nhiệt độ amply" in charts and 'fill="#2e8540"' in charts  # online span
    # Range switch: 30 days shows the older monthly points too.
    status, refused = await site.get("/devices/dev-21?range=1y")
    assert status == 400 and "range" in refused
    _, page30 = await site.get("/devices/dev-21?range=30d")
    assert 'aria-current="true">30 ngày' in page30
    # Ticket open, not started: start, note and cancel are offered; open is not.
    actions = page[page.index('id="actions"') :].split("</section>")[0]
    assert "/start" in actions and "/comment" in actions and "/cancel" in actions
    assert 'data-api="/api/v1/repairs"' not in actions
    assert 'value="Bắc Việt"' in actions  # contractor prefilled from the inventory
    _, page12 = await site.get("/devices/dev-12")
    history = page12[page12.index('id="repairs"') :]
    assert "Nguyễn Văn An" not in history or "Viettel Phú Thọ" in history
    assert "mất sóng đài" in history
    _, page11 = await site.get("/devices/dev-11")
    assert 'data-api="/api/v1/repairs"' in page11  # no ticket: "open a repair"
    status, _ = await site.get("/devices/nope-404")
    assert status == 404
    status, _ = await site.get("/devices/BAD%3Cscript%3E")
    assert status == 404


# -- B2 ----------------------------------------------------------------------------------------


async def test_b2_page_shows_the_table_summary_and_downloads(site: Site) -> None:
    await site.login("viewer")
    status, page = await site.get("/b2")
    assert status == 200
    assert "TÌNH HÌNH HOẠT ĐỘNG CỦA HỆ THỐNG TRUYỀN THANH CƠ SỞ" in page
    assert re.search(r"<td class=\"text\">Xã Sơn Vi</td>", page)
    assert re.search(r"<td class=\"text\">Tổng cộng</td>", page)
    summary = re.search(r'<p id="b2-summary">([^<]+)</p>', page)
    assert summary and "cụm loa hoạt động tốt" in summary.group(1)
    assert 'data-copy="#b2-summary"' in page
    links = re.findall(r'href="(/api/v1/reports/b2\?[^"]+)"', page)
    assert len(links) == 3
    xlsx = next(link for link in links if "format=xlsx" in link).replace("&amp;", "&")
    async with site.client.get(xlsx) as resp:
        assert resp.status == 200
        book = openpyxl.load_workbook(io.BytesIO(await resp.read()))
    values = [c.value for row in book.active.iter_rows() for c in row if c.value is not None]
    assert "Xã Sơn Vi" in values and "Tổng cộng" in values
    # A past date: a year ago dev-12 and dev-21 still worked.
    day = time.strftime("%Y-%m-%d", time.localtime(site.now - 300 * DAY))
    _, past = await site.get(f"/b2?as_of={day}&scope=district")
    assert "tính đến ngày" in past.lower() or "Tính đến ngày" in past
    status, bad_page = await site.get("/b2?as_of=31-31-2023")
    assert status == 400 and "as_of" in bad_page


# -- repairs -----------------------------------------------------------------------------------


async def test_repairs_page_filters_and_highlights_overdue(site: Site) -> None:
    await site.login("admin")
    _, page = await site.get("/repairs")
    rows = page[page.index('id="tickets"') :]
    assert rows.count('class="overdue"') == 1  # dev-12: no progress for 38 days
    assert "Quá hạn" in rows and "dev-21" in rows
    _, page = await site.get("/repairs?contractor=Viettel+Ph%C3%BA+Th%E1%BB%8D")
    rows = page[page.index('id="tickets"') :]
    assert "dev-12" in rows and "dev-21" not in rows
    _, page = await site.get("/repairs?commune=xa-02")
    rows = page[page.index('id="tickets"') :]
    assert "dev-21" in rows and "dev-12" not in rows
    _, page = await site.get("/repairs?min_age_days=10")
    rows = page[page.index('id="tickets"') :]
    assert "dev-12" in rows and "dev-21" not in rows
    status, _ = await site.get("/repairs?min_age_days=lots")
    assert status == 400
    # The page's query follows the API's rules (collector.schemas.RepairsPageParams):
    # a negative age is refused by name; an empty form field means "not given".
    status, page = await site.get("/repairs?min_age_days=-1")
    assert status == 400 and "min_age_days" in page
    status, page = await site.get("/repairs?commune=&contractor=&min_age_days=&lang=en")
    assert status == 200 and "dev-12" in page and "dev-21" in page


# -- roles -------------------------------------------------------------------------------------


async def test_commune_officer_sees_only_their_communes(site: Site) -> None:
    await site.login("officer1")
    _, page = await site.get("/")
    assert stats(page)["total"] == 2
    assert "Xã Sơn Vi" in page and "Thị trấn Lâm Thao" not in page
    async with site.client.get("/api/v1/fleet/summary") as resp:
        assert (await resp.json())["total"] == 2
    for path in ("/communes/xa-02", "/devices/dev-21", "/devices/dev-22"):
        status, _ = await site.get(path)
        assert status == 404, path
    status, _ = await site.get("/users")
    assert status == 403
    _, page = await site.get("/repairs")
    assert "dev-21" not in page
    _, page = await site.get("/b2")
    assert "Thị trấn Lâm Thao" not in page
    _, page = await site.get("/devices/dev-12")
    assert "/cancel" in page  # officers may cancel in their communes


async def test_viewer_and_technician_get_the_actions_their_role_allows(site: Site) -> None:
    await site.login("viewer")
    _, page = await site.get("/devices/dev-21")
    assert 'id="actions"' not in page
    assert 'href="/users"' not in page
    await site.login("tech")
    _, page = await site.get("/devices/dev-21")
    actions = page[page.index('id="actions"') :].split("</section>")[0]
    assert "/start" in actions and "/comment" in actions and "/cancel" not in actions


# -- writes: CSRF, users -----------------------------------------------------------------------


async def test_writes_with_the_session_cookie_need_the_csrf_token(site: Site) -> None:
    csrf = await site.login("admin")
    user = {"name": "new1", "password": "password-1", "role": "district_viewer", "communes": []}
    status, data = await site.post("/users", user, None)
    assert status == 403 and "X-CSRF-Token" in data["error"]
    status, _ = await site.post("/users", user, "wrong-token")
    assert status == 403
    status, _ = await site.post("/api/v1/repairs", {"device_id": "dev-11"}, None)
    assert status == 403
    assert await site.repo.list_tickets(device_id="dev-11") == []
    status, _ = await site.post("/users", user, csrf)
    assert status == 201
    status, data = await site.post("/api/v1/repairs", {"device_id": "dev-11", "note": "x"}, csrf)
    assert status == 201 and data["state"] == "open"


async def test_admin_creates_and_updates_users(site: Site) -> None:
    csrf = await site.login("admin")
    bad_cases: list[tuple[dict[str, Any], str]] = [
        ({"name": "o2", "password": "password-1", "role": "commune_officer"}, "communes"),
        ({"name": "o2", "password": "short", "role": "technician"}, "password"),
        ({"name": "o2", "password": "password-1", "role": "king"}, "role"),
        (
            {"name": "o2", "password": "password-1", "role": "commune_officer", "communes": ["zz"]},
            "communes",
        ),
        (
            {"name": "o2", "password": "password-1", "role": "admin", "communes": ["xa-01"]},
            "communes",
        ),
    ]
    for data, field in bad_cases:
        status, answer = await site.post("/users", data, csrf)
        assert status == 400 and answer["field"] == field, (data, answer)
    new = {"name": "o2", "password": "password-1", "role": "commune_officer", "communes": ["xa-02"]}
    status, answer = await site.post("/users", new, csrf)
    assert status == 201 and answer["communes"] == ["xa-02"]
    status, _ = await site.post("/users", new, csrf)
    assert status == 409
    _, page = await site.get("/users")
    assert 'data-api="/users/o2"' in page and "Cán bộ xã" in page
    # Move o2 to xa-01 and check what o2 then sees.
    change = {"role": "commune_officer", "communes": ["xa-01"], "disabled": False}
    status, answer = await site.post("/users/o2", change, csrf)
    assert status == 200 and answer["communes"] == ["xa-01"]
    status, _ = await site.post("/users/admin", {"role": "technician", "communes": []}, csrf)
    assert status == 400
    status, _ = await site.post("/users/ghost", change, csrf)
    assert status == 404
    site.client.session.cookie_jar.clear()
    async with site.client.post(
        "/api/v1/auth/login", json={"name": "o2", "password": "password-1"}
    ) as resp:
        assert resp.status == 200
    status, _ = await site.get("/communes/xa-01")
    assert status == 200
    status, _ = await site.get("/communes/xa-02")
    assert status == 404


async def test_user_names_are_escaped(site: Site) -> None:
    csrf = await site.login("admin")
    hostile = '<img src=x onerror="alert(1)">'
    user = {"name": hostile, "password": "password-1", "role": "district_viewer"}
    status, _ = await site.post("/users", user, csrf)
    assert status == 201
    _, page = await site.get("/users")
    # Jinja2's autoescape writes the quote as &#34; (the same character as &quot;).
    assert hostile not in page and "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in page


# -- live updates ------------------------------------------------------------------------------


async def test_live_fingerprint_changes_with_status_and_repairs(site: Site) -> None:
    csrf = await site.login("admin")
    async with site.client.get("/ui/live") as resp:
        first = await resp.json()
    async with site.client.get("/ui/live") as resp:
        assert (await resp.json())["fp"] == first["fp"]
    tickets = await site.repo.list_tickets(device_id="dev-21", states=frozenset({TicketState.OPEN}))
    status, _ = await site.post(
        f"/api/v1/repairs/{tickets[0].id}/start", {"contractor": "Bắc Việt"}, csrf
    )
    assert status == 200
    async with site.client.get("/ui/live") as resp:
        second = await resp.json()
    assert second["fp"] != first["fp"]
    assert second["summary"]["in_repair"] == first["summary"]["in_repair"] + 1
    _, page = await site.get("/")
    assert stats(page)["in_repair"] == second["summary"]["in_repair"]


async def test_the_cluster_history_says_what_brought_each_change(site: Site) -> None:
    """A device whose broker node died with its connection publishes no last will:
    the collector's silence rule takes it offline, and its history says so, apart
    from an offline presence (a will or an orderly stop) and from reports."""
    repo = site.repo
    cfg = site.app[CONFIG]
    ingestor = Ingestor(repo, cfg.ingest, IngestStats())
    at = time.time()
    bye = presence("dev-12", 10_000, False, at)
    incoming = ingestor.prepare(topic("dev-12", Kind.PRESENCE), encode(bye), received_at=at)
    assert incoming is not None
    await repo.write_batch([incoming], late_after_s=cfg.ingest.late_after_s)
    assert "dev-11" in await repo.mark_silent_offline(at + 7200, grace_s=30)
    await site.login("admin")
    async with site.client.get("/api/v1/devices/dev-11") as resp:
        assert resp.status == 200
        history = (await resp.json())["status_history"]
    assert history[0]["via"] == "online" and history[-1]["via"] == "silent"
    assert not history[-1]["online"]
    async with site.client.get("/api/v1/devices/dev-12") as resp:
        history = (await resp.json())["status_history"]
    assert {"state", "offline"} <= {h["via"] for h in history} and history[-1]["via"] == "offline"
    status, page = await site.get("/devices/dev-11")
    assert status == 200 and "Lịch sử trạng thái" in page
    assert "im lặng quá thời gian chờ, không có di chúc" in page
    status, page = await site.get("/devices/dev-12?lang=en")
    assert "the device went offline (orderly stop or MQTT last will)" in page
