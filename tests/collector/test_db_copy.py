"""``loa-collector db copy``: a whole district's store between SQLite and PostgreSQL.

The Lâm Thao demo district is driven through the real ingest path into a SQLite
store (July's history and August's events, repair tickets opened, started,
resolved, a finding, a user with a session and a token, alerts, remote commands,
B2 snapshots: a row in every table), copied to PostgreSQL and back, and the B2
tables, statuses and accounts read from the copies must equal the original's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import os
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from collector.auth import hash_password, secret_hash, verify_password
from collector.b2 import end_of_day
from collector.b2.demo import demo_inventory
from collector.b2.service import b2_table
from collector.correlation import CorrelationConfig
from collector.model import DeviceStatus
from collector.store.alerts import DeliveryDraft, NotificationDraft, SQLiteAlertStore
from collector.store.base import Role, StoreError, ThrottleRule, TicketState
from collector.store.commands import CommandRecord, CommandState
from collector.store.copy import CopyError, CopyReport, _PgSide, _side, copy_store
from collector.store.engines import open_url
from collector.store.migrations import LATEST, MIGRATIONS
from collector.store.sqlite import SQLiteRepository
from edge_agent.reports import heartbeat
from fleet_protocol import (
    PROTOCOL_VERSION,
    B2Cause,
    Event,
    EventType,
    Fault,
    FaultCode,
    Kind,
)
from tests.collector.test_b2_store import JULY_END, TZ, Fleet, drive_to_july_state
from tests.support.postgres import PgServer

DAY = 86400.0
AUG_END = end_of_day(dt.date(2023, 8, 31), TZ)
MID_AUG = end_of_day(dt.date(2023, 8, 15), TZ)
AS_OF = (JULY_END, MID_AUG, AUG_END)
PASSWORD = "mật-khẩu-đủ-dài"
TOKEN = "tok-0123456789"
SESSION = "sess-0123456789"
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Seeded:
    path: Path
    tables: dict[str, list[tuple[Any, ...]]]  # every row of every table, sorted
    b2: dict[str, Any]  # as-of -> B2Table
    statuses: dict[str, list[DeviceStatus]]

    @property
    def url(self) -> str:
        return f"sqlite://{self.path}"


async def _seed(path: Path) -> None:
    repo = await SQLiteRepository.open(path, synchronous="normal")
    try:
        await repo.migrate()
        await repo.upsert_inventory(demo_inventory(), remove_missing=False)
        fleet = Fleet(repo)
        tickets = await drive_to_july_state(repo, fleet)
        july = JULY_END.timestamp()
        repaired = list(tickets)[:3]
        for device in repaired:
            fleet.healthy(device, july + 5 * DAY)
        fleet.fault("lt-lamthao-01", july + 10 * DAY, FaultCode.STREAM_LOST)
        fleet.fault("lt-sonvi-01", july + 12 * DAY, FaultCode.STREAM_LOST)
        fleet.healthy("lt-xuanhuy-15", july + 3 * DAY)
        fleet.gone("lt-caoxa-01", july + 20 * DAY)
        at = july + 11 * DAY
        fleet.send(
            Event(
                v=PROTOCOL_VERSION,
                device="lt-lamthao-01",
                seq=fleet.next_seq("lt-lamthao-01"),
                ts=at,
                type=EventType.FAULT_RAISED,
                fault=Fault.of(FaultCode.STREAM_LOST, at, "mất tín hiệu đài"),
            ),
            Kind.EVENT,
        )
        # A district's worth of heartbeats through August: a few hundred more messages.
        for day in range(1, 31, 3):
            for d in demo_inventory()[:40]:
                if d.device_id in fleet.seq and d.device_id not in tickets:
                    fleet.healthy(d.device_id, july + day * DAY + 7 * 3600)
        # An hour of compact heartbeats from one cluster, then compaction: its
        # dropped seqs (seq_spans) and marks are copied too.
        quiet = next(
            d.device_id
            for d in demo_inventory()
            if d.device_id in fleet.seq and d.device_id not in tickets
        )
        for k in range(7):
            fleet.send(
                heartbeat(
                    quiet, fleet.next_seq(quiet), (), outbox_depth=0, ts=july + 25 * DAY + k * 600
                ),
                Kind.STATE,
            )
        await fleet.flush()
        assert (await repo.compact_raw(AUG_END.timestamp())).dropped > 0
        for device in repaired:
            await repo.close_ticket(
                tickets[device],
                actor="huyen",
                at=july + 6 * DAY,
                state=TicketState.RESOLVED,
                note="đã thay loa",
            )
        await repo.record_finding(
            tickets[repaired[0]],
            actor="Nguyễn Văn A",
            at=july + 5 * DAY,
            cause=B2Cause.NO_STATION_SIGNAL,
            text="đứt dây anten",
        )
        # Accounts.
        await repo.add_user(
            "huyen",
            role=Role.DISTRICT_VIEWER,
            communes=frozenset(),
            password_hash=hash_password(PASSWORD),
        )
        await repo.add_token("huyen", token_hash=secret_hash(TOKEN), label="báo cáo", at=july)
        await repo.add_session(
            "huyen", session_hash=secret_hash(SESSION), csrf_token="csrf", expires_at=4e9
        )
        await repo.audit("huyen", "b2.export", "district:lam-thao", {"as_of": "2023-07-31"})
        rule = ThrottleRule(
            key="name:huyen", name="huyen", free=3, first_delay_s=1, max_delay_s=60, forget_s=900
        )
        await repo.throttle_attempt([rule], at=july)
        # Alerts: a notification with an e-mailed PDF (a blob) in its outbox.
        await SQLiteAlertStore(repo).enqueue(
            [
                NotificationDraft(
                    key="offline:lam-thao:1",
                    rule="offline",
                    group="lam-thao",
                    kind="firing",
                    critical=True,
                    created_at=july,
                    data={"devices": ["lt-caoxa-01"]},
                    deliveries=(
                        DeliveryDraft(
                            recipient="user:huyen",
                            channel="email",
                            address="huyen@example.vn",
                            idem_key="offline:lam-thao:1:huyen:email",
                            lang="vi",
                            subject="Cụm loa mất kết nối",
                            body="lt-caoxa-01",
                            payload={"n": 1},
                            not_before=july,
                            attachment=b"%PDF-1.4\x00\xff\x01",
                            attachment_name="b2.pdf",
                        ),
                    ),
                )
            ]
        )
        await repo.add_command(
            CommandRecord(
                id="cmd-1",
                device_id="lt-lamthao-01",
                action="restart_stream",
                args={},
                actor="huyen",
                mode="queue",
                created_at=july,
                expires_at=july + 3600,
                state=CommandState.QUEUED,
            )
        )
        async with repo._tx() as db:
            await db.execute(
                "INSERT INTO alert_rules (name, data, updated_at, updated_by) VALUES (?,?,?,?)",
                ("offline", '{"name": "offline"}', july, "admin"),
            )
            await db.execute(
                "INSERT INTO alert_groups (rule, grp, members, seq) VALUES (?,?,?,?)",
                ("offline", "lam-thao", '{"lt-caoxa-01": 1}', 1),
            )
            await db.execute(
                "INSERT INTO alert_contacts (key, email, updated_at) VALUES (?,?,?)",
                ("user:huyen", "huyen@example.vn", july),
            )
            await db.execute(
                "INSERT INTO report_runs (period, claimed_by, claimed_at) VALUES (?,?,?)",
                ("2023-07", "collector-1", july),
            )
            await db.execute(
                "INSERT INTO report_log (at, period, as_of, trigger, actor, notification_key)"
                " VALUES (?,?,?,?,?,?)",
                (july, "2023-07", "2023-07-31", "schedule", "system", "report:2023-07"),
            )
            await db.execute(
                "INSERT INTO boot_clocks (device_id, boot_id, offset, learned_at) VALUES (?,?,?,?)",
                ("lt-lamthao-01", "boot-1", 1.69e9, july),
            )
        await repo.claim_periodic("fleet-sweep", "collector-1", now=july, lease_s=60)
        await repo.counts_as_of(july, keep_before=july + 1)  # the overview's kept trend
        # B2 snapshots, as the scheduled report keeps them.
        for as_of in AS_OF:
            await b2_table(repo, as_of=as_of, correlation=CorrelationConfig())
    finally:
        await repo.close()


async def _rows(repo: SQLiteRepository) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every data table, columns by name, sorted (engine-independent)."""
    from collector.store.postgres import PostgresRepository

    side = _side("postgresql://" if isinstance(repo, PostgresRepository) else "sqlite:///", repo)
    out = {}
    for t in await side.data_tables():
        cols = ", ".join(f'"{c}"' for c in sorted(await side.columns(t)))
        rows = await repo._all(f"SELECT {cols} FROM {t}")
        out[t] = sorted((tuple(r) for r in rows), key=repr)
    return out


async def _b2(repo: SQLiteRepository) -> dict[str, Any]:
    return {
        a.isoformat(): await b2_table(repo, as_of=a, correlation=CorrelationConfig(), record=False)
        for a in AS_OF
    }


async def _statuses(repo: SQLiteRepository) -> dict[str, list[DeviceStatus]]:
    return {a.isoformat(): await repo.statuses_as_of(a.timestamp()) for a in AS_OF}


async def _read_back(path: Path) -> Seeded:
    repo = await SQLiteRepository.open(path)
    try:
        return Seeded(path, await _rows(repo), await _b2(repo), await _statuses(repo))
    finally:
        await repo.close()


def _in_thread(coro: Any) -> Any:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@pytest.fixture(scope="module")
def seeded_file(tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    path = tmp_path_factory.mktemp("seed") / "collector.db"
    _in_thread(_seed(path))
    seeded: Seeded = _in_thread(_read_back(path))
    return seeded


@pytest.fixture
def seeded(seeded_file: Seeded, tmp_path: Path) -> Seeded:
    """A private copy of the seeded district's SQLite file."""
    path = tmp_path / "src" / "collector.db"
    path.parent.mkdir()
    shutil.copy(seeded_file.path, path)
    return Seeded(path, seeded_file.tables, seeded_file.b2, seeded_file.statuses)


async def _counts(url: str) -> dict[str, int]:
    repo = await open_url(url)
    try:
        return {t: len(rows) for t, rows in (await _rows(repo)).items()}
    finally:
        await repo.close()


def test_the_seed_has_rows_in_every_table(seeded_file: Seeded) -> None:
    empty = [t for t, rows in seeded_file.tables.items() if not rows]
    assert empty == []
    assert len(seeded_file.tables["messages"]) > 300
    assert {r for t in seeded_file.tables["tickets"] for r in t} >= {"resolved", "in_repair"}


async def test_sqlite_to_postgres_and_back(seeded: Seeded, pg_url: str, tmp_path: Path) -> None:
    seen: list[tuple[str, int, int]] = []
    report = await copy_store(seeded.url, pg_url, progress=lambda *a: seen.append(a))
    assert isinstance(report, CopyReport) and report.ok and not report.migrated
    want = {t: len(rows) for t, rows in seeded.tables.items()}
    assert {c.table: c.source for c in report.tables} == want
    assert {c.table: c.destination for c in report.tables} == want
    assert await _counts(pg_url) == want
    assert {t for t, done, total in seen if done == total} == {t for t, n in want.items() if n}
    # Parents first: the foreign keys hold at every row.
    order = [c.table for c in report.tables]
    assert order.index("tickets") < order.index("ticket_history")
    assert order.index("tickets") < order.index("findings")
    assert order.index("users") < min(order.index("api_tokens"), order.index("sessions"))
    assert order.index("notifications") < order.index("deliveries")
    assert "tickets.id" in report.identities_reset
    assert _table_lines(report.format()) == {
        **{t: (n, n) for t, n in want.items()},
        "total": (sum(want.values()), sum(want.values())),
    }

    pg = await open_url(pg_url)
    try:
        assert await pg.schema_version() == LATEST
        assert await _rows(pg) == seeded.tables
        assert await _b2(pg) == seeded.b2
        assert await _statuses(pg) == seeded.statuses
        user, stored_hash = await pg.get_user("huyen")
        assert user.role is Role.DISTRICT_VIEWER and verify_password(stored_hash, PASSWORD)
        assert (await pg.user_by_token(secret_hash(TOKEN), at=JULY_END.timestamp())) == user
        session = await pg.session(secret_hash(SESSION), at=JULY_END.timestamp())
        assert session is not None and session.user == user
    finally:
        await pg.close()

    # And back: PostgreSQL -> a new SQLite file, row for row the original.
    back = tmp_path / "back" / "collector.db"
    report = await copy_store(pg_url, f"sqlite://{back}")
    assert report.ok and report.migrated
    again = await _read_back(back)
    assert again.tables == seeded.tables
    assert again.b2 == seeded.b2
    assert again.statuses == seeded.statuses


async def _open_ticket_after_copy(pg_url: str) -> None:
    pg = await open_url(pg_url)
    try:
        before = {t.id for t in await pg.list_tickets()}
        ticket = await pg.open_ticket(
            "lt-caoxa-01", actor="xa", at=AUG_END.timestamp(), note="mất kết nối", cause=None
        )
        assert ticket.id == max(before) + 1
        finding = await pg.record_finding(
            ticket.id, actor="A", at=AUG_END.timestamp(), cause=B2Cause.UNKNOWN, text="x"
        )
        assert finding.id == 2
        await pg.add_user("thanh", role=Role.ADMIN, communes=frozenset(), password_hash="h")
        assert {u.name: u.id for u in await pg.list_users()} == {"huyen": 1, "thanh": 2}
    finally:
        await pg.close()


async def test_new_rows_after_the_copy_get_fresh_ids(seeded: Seeded, pg_url: str) -> None:
    await copy_store(seeded.url, pg_url)
    await _open_ticket_after_copy(pg_url)


async def test_without_the_identity_reset_new_rows_collide(
    seeded: Seeded, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_reset(self: Any, db: Any, tables: Any) -> list[str]:
        return []

    monkeypatch.setattr(_PgSide, "reset_identities", no_reset)
    await copy_store(seeded.url, pg_url)
    with pytest.raises((StoreError, AssertionError)):
        await _open_ticket_after_copy(pg_url)


async def test_an_unmigrated_postgres_database_is_migrated_first(
    seeded: Seeded, pg_server: PgServer
) -> None:
    url = pg_server.fresh_database()
    report = await copy_store(seeded.url, url)
    assert report.migrated and report.ok
    assert await _counts(url) == {t: len(rows) for t, rows in seeded.tables.items()}


async def test_sqlite_to_sqlite(seeded: Seeded, tmp_path: Path) -> None:
    dst = tmp_path / "dst" / "collector.db"
    report = await copy_store(seeded.url, f"sqlite://{dst}")
    assert report.ok and report.migrated
    assert (await _read_back(dst)).tables == seeded.tables


async def _snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    repo = await open_url(url)
    try:
        return await _rows(repo)
    finally:
        await repo.close()


@pytest.fixture(params=["postgres", "sqlite"])
def empty_dst(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty destination on each engine."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("pg_url")
        return url
    path = tmp_path / "dst" / "collector.db"

    async def migrate() -> None:
        repo = await SQLiteRepository.open(path)
        try:
            await repo.migrate()
        finally:
            await repo.close()

    _in_thread(migrate())
    return f"sqlite://{path}"


async def test_a_destination_with_rows_is_refused_and_left_alone(
    seeded: Seeded, empty_dst: str
) -> None:
    repo = await open_url(empty_dst)
    try:
        await repo.add_user("admin", role=Role.ADMIN, communes=frozenset(), password_hash="h")
    finally:
        await repo.close()
    before = await _snapshot(empty_dst)
    with pytest.raises(CopyError, match=r"not empty: users \(1\), audit_log \(1\)"):
        await copy_store(seeded.url, empty_dst)
    assert await _snapshot(empty_dst) == before


async def test_a_failure_mid_copy_leaves_the_destination_empty(
    seeded: Seeded, empty_dst: str, pg_server: PgServer
) -> None:
    # The destination rejects the first finding: findings come after messages,
    # tickets and the rest, so a lot was written in the transaction by then.
    if empty_dst.startswith("postgresql"):
        dbname = empty_dst.split("///")[1].split("?")[0]
        pg_server.psql(
            "CREATE FUNCTION no_findings() RETURNS trigger LANGUAGE plpgsql AS"
            " $$BEGIN RAISE EXCEPTION 'findings are refused here'; END$$;"
            " CREATE TRIGGER no_findings BEFORE INSERT ON findings"
            " FOR EACH ROW EXECUTE FUNCTION no_findings()",
            dbname,
        )
    else:
        with sqlite3.connect(empty_dst.removeprefix("sqlite://")) as db:
            db.execute(
                "CREATE TRIGGER no_findings BEFORE INSERT ON findings"
                " BEGIN SELECT RAISE(ABORT, 'findings are refused here'); END"
            )
    with pytest.raises(StoreError, match="findings are refused here"):
        await copy_store(seeded.url, empty_dst)
    counts = await _counts(empty_dst)
    assert set(counts) == set(seeded.tables)
    assert set(counts.values()) == {0}


async def test_schema_versions_must_match(seeded: Seeded, tmp_path: Path) -> None:
    older = tmp_path / "older.db"
    with sqlite3.connect(older) as db:
        for step in MIGRATIONS[:5]:
            db.executescript(step)
        db.execute("PRAGMA user_version = 5")
    with pytest.raises(CopyError, match=f"schema version 5 differs from the source's {LATEST}"):
        await copy_store(seeded.url, f"sqlite://{older}")
    with pytest.raises(CopyError, match=r"source .*schema version 5, this collector copies"):
        await copy_store(f"sqlite://{older}", f"sqlite://{tmp_path / 'new.db'}")
    assert not (tmp_path / "new.db").exists()


async def test_bad_urls_are_refused(seeded: Seeded, tmp_path: Path) -> None:
    with pytest.raises(CopyError, match="not a store URL"):
        await copy_store(seeded.url, "collector.db")
    with pytest.raises(CopyError, match="no such file"):
        await copy_store(f"sqlite://{tmp_path}/missing.db", f"sqlite://{tmp_path}/x.db")
    assert not (tmp_path / "missing.db").exists()
    with pytest.raises(CopyError, match="same store"):
        await copy_store(seeded.url, seeded.url)
    with pytest.raises(CopyError) as exc:
        await copy_store(seeded.url, "postgresql://loa:hunter2@127.0.0.1:1/loa")
    assert "hunter2" not in str(exc.value) and "cannot connect" in str(exc.value)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "collector.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )


def _table_lines(out: str) -> dict[str, tuple[int, int]]:
    lines = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            lines[parts[0]] = (int(parts[1]), int(parts[2]))
    return lines


def test_cli_copies_and_prints_the_counts(seeded: Seeded, pg_url: str) -> None:
    done = _cli("db", "copy", "--from", seeded.url, "--to", pg_url)
    assert done.returncode == 0, done.stderr
    counts = _table_lines(done.stdout)
    for table, rows in seeded.tables.items():
        assert counts[table] == (len(rows), len(rows))
    assert done.stdout.splitlines()[0].split() == ["table", "source", "destination"]
    assert "row counts verified" in done.stdout
    # A second copy into the now full destination is refused.
    again = _cli("db", "copy", "--from", seeded.url, "--to", pg_url)
    assert again.returncode == 1
    assert "is not empty" in again.stderr and "no merge" in again.stderr


@pytest.mark.parametrize(
    ("to", "message"),
    [
        ("mysql://loa:hunter2@db/loa", "not a store URL"),
        ("postgresql://loa:hunter2@127.0.0.1:1/loa", "cannot connect"),
    ],
)
def test_cli_bad_url(seeded: Seeded, to: str, message: str) -> None:
    done = _cli("db", "copy", "--from", seeded.url, "--to", to)
    assert done.returncode == 1
    assert done.stderr.startswith("loa-collector: ") and message in done.stderr
    assert "hunter2" not in done.stderr + done.stdout
    assert "loa:***@" in done.stderr
