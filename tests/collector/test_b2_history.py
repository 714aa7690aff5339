"""A cluster counts from when it existed, and the month's availability and ranking.

Pure parts (when a cluster counts, cluster-hours from transitions, grades and
ranks), then through the real SQLite store, ingest path, REST API, CLI and
every export: a B2 for a month before the fleet existed says "no data", and
the July 2023 evaluation of the Lâm Thao demo district matches an independent
computation from the messages sent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import io
import json
import sqlite3
import time
from pathlib import Path

import aiohttp
import openpyxl
import pytest
from aiohttp.test_utils import TestClient

from collector.b2 import end_of_day, zone
from collector.b2.availability import (
    CommuneAvailability,
    Grade,
    Thresholds,
    counted_seconds,
    evaluate,
    month_start,
)
from collector.b2.demo import DEMO_DAY, demo_inventory, demo_statuses
from collector.b2.service import b2_table
from collector.b2.settings import ReportSettings
from collector.b2.table import commune_label, compute_b2
from collector.cli import main
from collector.correlation import CorrelationConfig
from collector.exports import render
from collector.model import DeviceStatus, InventoryDevice, Status
from collector.store.base import StatusTimeline
from collector.store.migrations import MIGRATIONS
from collector.store.sqlite import SQLiteRepository, counted_from
from fleet_protocol import B2Cause
from tests.collector.test_b2_api import ADMIN, _drive, client  # noqa: F401 - fixture
from tests.collector.test_b2_store import Fleet, drive_to_july_state

TZ = zone()
DAY = 86400.0
HOUR = 3600.0
JULY_END = end_of_day(DEMO_DAY, TZ)
W, B = Status.WORKING, Status.BROKEN
BEFORE_FLEET = "2021-06-30"  # the demo inventory's first install date is 1/9/2021
T0 = dt.datetime(2023, 7, 1, tzinfo=TZ).timestamp()


# -- when a cluster counts ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("install", "listed", "first", "expect"),
    [
        ("2023-07-10", 5.0, 1.0, dt.datetime(2023, 7, 10, tzinfo=TZ).timestamp()),
        ("", 500.0, 100.0, 100.0),  # reported before it was listed: from the first report
        ("", 100.0, 500.0, 100.0),  # listed, first heard later: from the listing
        ("", 100.0, None, 100.0),
        ("", None, 300.0, 300.0),
        ("", None, None, None),  # nothing says: counts at every moment
        ("not a date", None, 7.0, 7.0),
    ],
)
def test_counted_from(
    install: str, listed: float | None, first: float | None, expect: object
) -> None:
    assert counted_from(install, listed, first) == expect


def test_compute_b2_leaves_out_clusters_that_did_not_exist_and_says_no_data() -> None:
    inv = [
        InventoryDevice(device_id=f"d-{i}", commune_code=c, commune_name=c, position=i)
        for i, c in enumerate(("A", "A", "B"))
    ]
    later = [
        DeviceStatus(device_id=d.device_id, commune_code=d.commune_code, status=B,
                     cause=B2Cause.UNKNOWN, never_reported=True, exists=False)
        for d in inv
    ]  # fmt: skip
    as_of = end_of_day(dt.date(2021, 6, 30), TZ)
    table = compute_b2(inv, later, as_of=as_of)
    assert table.no_data and table.rows == () and table.total.total == 0
    assert table.total.notes == "Không có dữ liệu"
    assert table.summary.startswith("Không có dữ liệu (tính đến ngày 30/6/2021)")
    en = compute_b2(inv, later, as_of=as_of, lang="en")
    assert en.summary.startswith("No data as of 30 June 2021") and en.total.notes == "No data"
    # One cluster of A existed: only it counts; B has no row yet.
    some = [dataclasses.replace(later[0], exists=True), *later[1:]]
    part = compute_b2(inv, some, as_of=as_of)
    assert not part.no_data and [(r.key, r.total, r.broken) for r in part.rows] == [("A", 1, 1)]


# -- cluster-hours from transitions --------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "initial", "changes", "expect"),
    [
        (None, W, (), (10 * HOUR, 10 * HOUR)),
        (None, B, (), (10 * HOUR, 0.0)),
        (None, None, (), (10 * HOUR, 0.0)),  # counted, never reported: not working
        (None, W, ((T0 + 2 * HOUR, B), (T0 + 5 * HOUR, W)), (10 * HOUR, 7 * HOUR)),
        (None, None, ((T0 + 1 * HOUR, W),), (10 * HOUR, 9 * HOUR)),
        (T0 + 4 * HOUR, B, ((T0 + 2 * HOUR, W),), (6 * HOUR, 6 * HOUR)),  # installed mid-window
        (T0 + 4 * HOUR, W, ((T0 + 6 * HOUR, B), (T0 + 6 * HOUR, W)), (6 * HOUR, 6 * HOUR)),
        (T0 + 20 * HOUR, W, (), (0.0, 0.0)),  # not yet installed
        (T0 - DAY, W, ((T0 + 12 * HOUR, B),), (10 * HOUR, 10 * HOUR)),  # change after the end
    ],
)
def test_counted_seconds(
    start: float | None,
    initial: Status | None,
    changes: tuple[tuple[float, Status], ...],
    expect: tuple[float, float],
) -> None:
    tl = StatusTimeline(
        device_id="d", commune_code="c", counted_from=start, initial=initial, changes=changes
    )
    assert counted_seconds(tl, T0, T0 + 10 * HOUR) == pytest.approx(expect)


def _tl(
    device: str, commune: str, initial: Status | None, *changes: tuple[float, Status]
) -> StatusTimeline:
    return StatusTimeline(
        device_id=device, commune_code=commune, counted_from=None, initial=initial, changes=changes
    )


def test_grades_ranks_ties_and_no_data() -> None:
    start = dt.datetime(2023, 7, 1, tzinfo=TZ)
    end = start + dt.timedelta(days=10)
    t = start.timestamp()
    inv, tls = [], []
    plan = {
        # commune: timelines -> share
        "A": [(W,), (W,)],  # 100 %
        "B": [(W, (t + 5 * DAY, B)), (W,)],  # 75 %
        "C": [(W,), (W, (t + 2 * DAY, B))],  # 60 %
        "D": [(B,)],  # 0 %
        "E": [(W, (t + 5 * DAY, B)), (W,)],  # 75 %: ties with B
    }
    for commune, devices in plan.items():
        for n, (initial, *changes) in enumerate(devices):
            d = f"{commune}-{n}"
            inv.append(
                InventoryDevice(device_id=d, commune_code=commune, commune_name=commune,
                                position=len(inv))
            )  # fmt: skip
            tls.append(_tl(d, commune, initial, *changes))
    # F is not installed before the window ends: no data, listed last.
    inv.append(InventoryDevice(device_id="F-0", commune_code="F", commune_name="F", position=99,
                               install_date="2024-01-01"))  # fmt: skip
    tls.append(dataclasses.replace(_tl("F-0", "F", None), counted_from=end.timestamp() + DAY))
    ev = evaluate(inv, tls, start=start, end=end, label=lambda d: d.commune_name)
    got = [(r.key, r.rank, r.grade, r.percent()) for r in ev.rows]
    assert got == [
        ("A", 1, Grade.GOOD, "100,0"),
        ("B", 2, Grade.FAIR, "75,0"),
        ("E", 2, Grade.FAIR, "75,0"),
        ("C", 4, Grade.AVERAGE, "60,0"),
        ("D", 5, Grade.POOR, "0,0"),
        ("F", None, None, ""),
    ]
    assert ev.total.clusters == 9 and ev.total.cluster_hours == pytest.approx(9 * 240)
    assert ev.total.share == pytest.approx((2 + 1.5 + 1.2 + 0 + 1.5) / 9)
    assert ev.cells(ev.rows[-1])[5] == "Không có dữ liệu"
    assert (
        ev.columns()[-1] == "Xếp loại" and ev.title() == "ĐÁNH GIÁ, XẾP LOẠI HOẠT ĐỘNG THÁNG 7/2023"
    )
    # Thresholds come from [report]; English labels on request.
    strict = evaluate(inv, tls, start=start, end=end, label=lambda d: d.commune_name, lang="en",
                      thresholds=Thresholds(good_pct=100, fair_pct=80, average_pct=70))  # fmt: skip
    assert [(r.key, r.grade and r.grade.label("en")) for r in strict.rows][:4] == [
        ("A", "Good"), ("B", "Average"), ("E", "Average"), ("C", "Poor"),
    ]  # fmt: skip
    assert strict.columns()[-1] == "Grade" and "Good from 100%" in strict.thresholds_note()


def test_report_thresholds_are_checked() -> None:
    assert ReportSettings().problems() == []
    bad = ReportSettings(rank_good_pct=70, rank_fair_pct=80)
    assert any("rank_good_pct" in p for p in bad.problems())


# -- through the store ---------------------------------------------------------------------------


# ``repo`` is tests/collector/conftest.py's: each of these runs on SQLite and PostgreSQL.


def _expected_july(inventory: list[InventoryDevice]) -> dict[str, float]:
    """Per commune, the working share of July 2023 implied by drive_to_july_state."""
    end = JULY_END.timestamp()
    first = dt.datetime(2023, 7, 1, 7, tzinfo=TZ).timestamp()
    commune = {d.device_id: d.commune_code for d in inventory}
    hours: dict[str, list[float]] = {}
    for s in demo_statuses(end):
        acc = hours.setdefault(commune[s.device_id], [0.0, 0.0])
        acc[0] += end - T0
        if s.never_reported:
            continue
        if s.status is Status.WORKING:
            acc[1] += end - first
        elif s.cause is B2Cause.UNKNOWN:
            acc[1] += end - 10 * DAY - first  # silent (offline) for the last ten days
        else:
            acc[1] += end - 3 * DAY - first  # broken three days before the end
    return {c: w / t for c, (t, w) in hours.items()}


async def test_july_evaluation_from_the_stored_transitions(repo: SQLiteRepository) -> None:
    inventory = demo_inventory()
    await repo.upsert_inventory(inventory, remove_missing=False)
    await drive_to_july_state(repo, Fleet(repo))
    table = await b2_table(repo, as_of=JULY_END, correlation=CorrelationConfig())
    ev = table.evaluation
    assert ev is not None and ev.start == dt.datetime(2023, 7, 1, tzinfo=TZ)
    expect = _expected_july(inventory)
    assert {r.key: r.share for r in ev.rows} == pytest.approx(expect)
    assert len(ev.rows) == 14 and all(r.clusters for r in ev.rows)
    shares = [r.share for r in ev.rows]
    assert shares == sorted(shares, reverse=True)  # ranking order
    assert ev.rows[0].rank == 1 and ev.total.clusters == 200
    labels = {commune_label(d.commune_kind, d.commune_name) for d in inventory}
    assert {r.unit for r in ev.rows} == labels
    # Mid-month: the window ends at as_of, and the ranking follows.
    mid = await b2_table(
        repo, as_of=end_of_day(dt.date(2023, 7, 15), TZ), correlation=CorrelationConfig()
    )
    reporting = sum(not s.never_reported for s in demo_statuses(JULY_END.timestamp()))
    assert mid.evaluation is not None and mid.evaluation.total.share == pytest.approx(
        (15 * DAY - 7 * HOUR) * reporting / (15 * DAY * 200), rel=1e-6
    )

    # Every export carries it.
    data = json.loads(render(table, "json").body)
    assert data["evaluation"]["month"] == "2023-07"
    assert data["evaluation"]["rows"][0]["rank"] == 1
    assert data["evaluation"]["rows"][0]["grade_label"] in ("Tốt", "Khá", "Trung bình", "Yếu")
    assert data["evaluation"]["total"]["clusters"] == 200
    csv = render(table, "csv").body.decode("utf-8-sig")
    assert "ĐÁNH GIÁ, XẾP LOẠI HOẠT ĐỘNG THÁNG 7/2023" in csv and "Xếp hạng,Đơn vị" in csv
    assert "Xếp loại: Tốt từ 90%" in csv
    book = openpyxl.load_workbook(io.BytesIO(render(table, "xlsx").body))
    sheet = book["Xếp loại"]
    assert sheet["A1"].value == "ĐÁNH GIÁ, XẾP LOẠI HOẠT ĐỘNG THÁNG 7/2023"
    assert [c.value for c in sheet[4]][:3] == ["Xếp hạng", "Đơn vị", "Số cụm loa"]
    assert sheet.cell(5, 1).value == 1 and sheet.cell(5 + 14, 2).value == "Tổng cộng"
    page = render(table, "html").body.decode()
    assert '<table class="evaluation">' in page and ev.rows[0].unit in page
    en = await b2_table(repo, as_of=JULY_END, lang="en", correlation=CorrelationConfig())
    assert en.evaluation is not None and "MONTHLY EVALUATION, 7/2023" in render(
        en, "csv"
    ).body.decode("utf-8-sig")


async def test_b2_before_the_fleet_existed_says_no_data(repo: SQLiteRepository) -> None:
    await repo.upsert_inventory(demo_inventory(), remove_missing=False)
    await drive_to_july_state(repo, Fleet(repo))
    before = end_of_day(dt.date.fromisoformat(BEFORE_FLEET), TZ)
    assert not any(s.exists for s in await repo.statuses_as_of(before.timestamp()))
    table = await b2_table(repo, as_of=before, correlation=CorrelationConfig())
    assert table.no_data and table.rows == () and table.total.broken == 0
    assert json.loads(render(table, "json").body)["no_data"] is True
    for fmt in ("csv", "html"):
        assert "Không có dữ liệu" in render(table, fmt).body.decode("utf-8-sig"), fmt
    sheet = openpyxl.load_workbook(io.BytesIO(render(table, "xlsx").body))["B2"]
    assert "Không có dữ liệu" in str(sheet.cell(7, sheet.max_column).value)
    ev = table.evaluation
    assert ev is not None and ev.total.share is None and all(r.share is None for r in ev.rows)
    # While communes were being installed, only the installed clusters count.
    sept = await b2_table(
        repo, as_of=end_of_day(dt.date(2021, 9, 10), TZ), correlation=CorrelationConfig()
    )
    assert not sept.no_data and 0 < sept.total.total < 200
    assert sept.total.total == sept.total.never_reported  # installed, not reporting yet
    july = await b2_table(repo, as_of=JULY_END, correlation=CorrelationConfig())
    assert july.total.total == 200 and not july.no_data


async def test_without_install_dates_a_cluster_counts_from_listing_or_first_report(
    repo: SQLiteRepository, tmp_path: Path
) -> None:
    inventory = [dataclasses.replace(d, install_date="") for d in demo_inventory()]
    await repo.upsert_inventory(inventory, remove_missing=False)
    await drive_to_july_state(repo, Fleet(repo))  # reports from 1/7/2023 07:00, listed now
    first = dt.datetime(2023, 7, 1, 7, tzinfo=TZ).timestamp()
    before = {s.device_id: s for s in await repo.statuses_as_of(first - 1)}
    after = {s.device_id: s for s in await repo.statuses_as_of(first + 1)}
    never = {s.device_id for s in demo_statuses(JULY_END.timestamp()) if s.never_reported}
    assert not any(s.exists for s in before.values())
    assert {d for d, s in after.items() if s.exists} == set(before) - never
    table = await b2_table(
        repo, as_of=end_of_day(dt.date(2023, 6, 30), TZ), correlation=CorrelationConfig()
    )
    assert table.no_data
    # Listed clusters that never reported count from their listing (now).
    now = {s.device_id: s for s in await repo.statuses_as_of(time.time() + 1)}
    assert all(now[d].exists and now[d].never_reported for d in never)
    earlier = {s.device_id: s for s in await repo.statuses_as_of(time.time() - 3600)}
    assert not any(earlier[d].exists for d in never)

    # The listing time survives a re-import (it is when the cluster was first listed).
    async def listed_at() -> dict[str, float]:
        rows = await repo._all("SELECT device_id, listed_at FROM inventory")
        return {r[0]: r[1] for r in rows}

    async with repo._tx() as db:
        await db.execute("UPDATE inventory SET listed_at = listed_at - 1000")
    first_listing = await listed_at()
    await repo.upsert_inventory(inventory, remove_missing=False)
    assert await listed_at() == first_listing


async def test_migration_2_dates_existing_rows_from_the_first_import(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as c:
        c.executescript(MIGRATIONS[0])
        c.execute("PRAGMA user_version = 1")
        c.execute(
            "INSERT INTO inventory (device_id, commune_code, commune_name, commune_kind, position)"
            " VALUES ('lt-a-01', '1', 'A', 'xã', 0)"
        )
        c.execute(
            "INSERT INTO audit_log (at, actor, action, target) VALUES"
            " (1000.0, 'x', 'inventory.upsert', 'inventory'),"
            " (5000.0, 'x', 'inventory.upsert', 'inventory')"
        )
    r = await SQLiteRepository.open(db, synchronous="normal")
    try:
        await r.migrate()
        [before] = await r.statuses_as_of(999.0)
        [after] = await r.statuses_as_of(1001.0)
        assert (before.exists, after.exists) == (False, True)
    finally:
        await r.close()


# -- the API and the CLI ------------------------------------------------------------------------


async def test_api_b2_before_the_fleet_says_no_data(
    client: TestClient[aiohttp.web.Request, object],  # noqa: F811 - the fixture
) -> None:
    from collector.b2.demo import demo_inventory as inv
    from collector.inventory import inventory_to_csv

    resp = await client.post(
        "/api/v1/inventory/import",
        data=inventory_to_csv(inv()),
        headers={**ADMIN, "Content-Type": "text/csv"},
    )
    assert resp.status == 200
    await _drive(client)
    resp = await client.get(f"/api/v1/reports/b2?as_of={BEFORE_FLEET}&format=json", headers=ADMIN)
    data = await resp.json()
    assert data["no_data"] is True and data["rows"] == [] and data["total"]["total"] == 0
    assert data["summary"].startswith("Không có dữ liệu")
    resp = await client.get(
        f"/api/v1/reports/b2?as_of={BEFORE_FLEET}&format=csv&lang=en", headers=ADMIN
    )
    assert "No data as of 30 June 2021" in (await resp.read()).decode("utf-8-sig")
    resp = await client.get("/api/v1/reports/b2?as_of=2023-07-31&format=json", headers=ADMIN)
    data = await resp.json()
    assert data["no_data"] is False and data["evaluation"]["total"]["clusters"] == 200


def test_cli_b2_before_the_fleet_says_no_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "collector.db"

    async def seed() -> None:
        r = await SQLiteRepository.open(db, synchronous="normal")
        try:
            await r.migrate()
            await r.upsert_inventory(demo_inventory(), remove_missing=False)
            await drive_to_july_state(r, Fleet(r))
        finally:
            await r.close()

    asyncio.run(seed())
    assert main(["report", "b2", "--as-of", BEFORE_FLEET, "--db", str(db), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["no_data"] is True and data["rows"] == []
    out = tmp_path / "b2.xlsx"
    args = ["report", "b2", "--as-of", "2023-07-31", "--db", str(db), "--format", "xlsx"]
    assert main([*args, "-o", str(out)]) == 0
    book = openpyxl.load_workbook(io.BytesIO(out.read_bytes()))
    assert book.sheetnames == ["B2", "Xếp loại"]


def test_commune_availability_share_is_none_without_hours() -> None:
    row = CommuneAvailability(key="x", unit="X", clusters=0, cluster_hours=0.0, working_hours=0.0)
    assert row.share is None and row.percent() == ""
    assert month_start(JULY_END) == dt.datetime(2023, 7, 1, tzinfo=TZ)
