"""The collector store on SQLite and on PostgreSQL (one and two instances), side by side.

    .venv/bin/python bench/store_engines.py [--only ingest|fleet] [--runs 3]
        [--clusters 2000] [--days 1] [--sqlite-sync full] [--pg-fsync on]

1. Ingest: messages/s through the collector's own path (``Ingestor.prepare`` +
   ``write_batch``; the wire bytes are built beforehand and not timed), live-shaped
   (each batch is one device's ``--live-batch`` consecutive messages: live traffic
   while it is light, every message stored on its own) and coalesced
   (``--backlog-batch`` messages of the fleet's traffic in time order per batch,
   nearly all of different devices: live traffic once it comes faster than one
   write, as the ingest loop takes whatever is queued up to ``[ingest]
   batch_size``; a reconnecting fleet's backlog looks the same), on
   SQLite, PostgreSQL with one collector instance and PostgreSQL with two
   instances (two spawned OS processes, each with its own ``PostgresRepository``
   on the same database, each writing half of the devices at the same time).
   Every run starts from a freshly migrated database; median of ``--runs``.
2. Fleet: ``--clusters`` clusters with ``--days`` of history at the demo fleet's
   intervals (fleet_sim ``AgentSettings``: a heartbeat every 300 s, a full report
   every 21600 s), seeded through ``write_batch`` in batches of ``--seed-batch``
   (seeding stops adding history after ``--seed-budget-s`` per engine; the history
   actually seeded is printed and used for the per-day size). Then the database
   size per cluster per day and the median time of the reads the service makes:
   the B2 table as of the end of the history (``b2_table``), ``statuses_as_of``,
   ``list_devices`` as ``GET /api/v1/devices`` calls it (its default limit 500)
   and with every device (as the overview and the commune list call it), and the
   dashboard's overview page (an HTTP GET of ``/`` on the real app, logged in).

The traffic is what the agent sends (``edge_agent.reports``): compact heartbeats
(``heartbeat: true``, active faults only), a full report every 72nd heartbeat and
on every change, presence online/offline; a few clusters per day lose the
station stream for two hours, a few go offline for half an hour, a few stay
broken all day.

PostgreSQL is the throwaway server of ``tests.support.postgres``, restarted with
``fsync`` and ``full_page_writes`` on and PostgreSQL's default 128 MB of shared
buffers (``--pg-fsync off`` keeps the test server's non-durable settings), on the
same disk as SQLite, over its Unix socket.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import multiprocessing as mp
import os
import platform
import shlex
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import psycopg
from aiohttp.test_utils import TestClient, TestServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from collector.app import create_app
from collector.auth import hash_password
from collector.b2.availability import evaluate, month_start
from collector.b2.dates import DEFAULT_TZ
from collector.b2.service import b2_table, monthly_evaluation
from collector.b2.table import commune_label
from collector.config import CollectorConfig, DbConfig, IngestConfig, config_from_dict
from collector.correlation import CorrelationConfig
from collector.ingest import Ingestor
from collector.metrics import IngestStats
from collector.model import InventoryDevice
from collector.store.base import Role
from collector.store.engines import open_url
from collector.store.sqlite import SQLiteRepository
from edge_agent.reports import Snapshot, full_report, heartbeat
from fleet_protocol import (
    PROTOCOL_VERSION,
    AmpState,
    Fault,
    FaultCode,
    Kind,
    Message,
    ModemState,
    Presence,
    PresenceStatus,
    RegState,
    SimState,
    StreamState,
    SystemState,
    encode,
    topic,
)
from tests.support.postgres import PgServer, running_postgres

#: The demo fleet's intervals (fleet_sim.scenario.AgentSettings).
HEARTBEAT_S = 300.0
FULL_REPORT_S = 21600.0
STEPS_PER_DAY = int(86400 / HEARTBEAT_S)
FULL_EVERY = int(FULL_REPORT_S / HEARTBEAT_S)
#: Receive delay of a live message (prompt: well under ``late_after_s``).
DELAY_S = 0.5
ADMIN = ("bench-admin", "bench-admin-password")

#: (topic, payload, event time); the receive time is the event time + DELAY_S.
Wire = tuple[str, bytes, float]


# -- the traffic -------------------------------------------------------------------------------


def device_id(i: int) -> str:
    return f"loa-{i:06d}"


def commune_of(i: int) -> str:
    return f"xa-{i // 10:05d}"


@dataclass
class Device:
    """One cluster's agent as far as its messages go: seq, faults, presence."""

    index: int
    seq: int = 0
    online: bool = False
    faults: tuple[Fault, ...] = ()
    boot: str = field(default="")

    def __post_init__(self) -> None:
        self.boot = f"{self.index:08x}-b007"

    @property
    def name(self) -> str:
        return device_id(self.index)

    def _next(self) -> int:
        self.seq += 1
        return self.seq

    def _snapshot(self, t: float) -> Snapshot:
        i = self.index
        rssi = -70.0 - i % 17
        streaming = not any(f.code is FaultCode.STREAM_LOST for f in self.faults)
        return Snapshot(
            modem=ModemState(
                sim=SimState.READY,
                iccid=f"8984{i:016d}",
                operator="Viettel",
                mccmnc="45204",
                registration=RegState.HOME,
                rssi_dbm=rssi,
                rsrp_dbm=rssi - 20,
                rsrq_db=-11.0,
                sinr_db=9.0,
                csq=int((rssi + 113) / 2),
                data=True,
            ),
            amp=AmpState(power=True, volume=180, temperature_c=41.0 + i % 5, mains_v=226.0),
            stream=StreamState(receiving=streaming, source="dai-huyen"),
            system=SystemState(
                cpu_pct=12.0, mem_pct=41.0, disk_pct=33.0, soc_temp_c=52.0, uptime_s=t % 1e6
            ),
            faults=self.faults,
        )

    def _full(self, t: float, *, periodic: bool) -> Message:
        return full_report(
            self.name,
            commune_of(self.index),
            self._next(),
            self._snapshot(t),
            outbox_depth=0,
            heartbeat=periodic,
            ts=round(t, 3),
            agent_version="1.4.2",
            config_version="c-2024-07",
        )

    def _presence(self, t: float, online: bool) -> Message:
        self.online = online
        status = PresenceStatus.ONLINE if online else PresenceStatus.OFFLINE
        return Presence(
            v=PROTOCOL_VERSION, device=self.name, seq=self._next(), ts=round(t, 3), status=status
        )

    def messages(self, k: int, t: float) -> list[Message]:
        """What the agent sends in heartbeat period ``k`` (from the start of its history)."""
        i, day_step = self.index, k % STEPS_PER_DAY
        out: list[Message] = []
        if k == 0:
            # A boot: stamped (boot id, monotonic seconds) until the collector confirms.
            first = self._presence(t, True)
            out.append(msgspec.structs.replace(first, boot_id=self.boot, mono=120.0))
            if i % 47 == 3:  # broken all along: no station stream
                self.faults = (Fault.of(FaultCode.STREAM_LOST, t - 600, "no audio 10 min"),)
            return [*out, self._full(t + 1, periodic=False)]
        if i % 101 == 7 and day_step == (i * 13) % (STEPS_PER_DAY - 8) + 1:
            return [self._presence(t, False)]  # the last will: lost the link
        if not self.online:
            if i % 101 == 7 and day_step == (i * 13) % (STEPS_PER_DAY - 8) + 7:
                return [self._presence(t, True), self._full(t + 1, periodic=False)]
            return []
        if i % 33 == 5:  # loses the station stream for two hours a day
            start = (i * 7) % (STEPS_PER_DAY - 30) + 2
            if day_step == start:
                self.faults = (Fault.of(FaultCode.STREAM_LOST, t - 120, "no audio"),)
                return [self._full(t, periodic=False)]
            if day_step == start + 24:
                self.faults = ()
                return [self._full(t, periodic=False)]
        if k % FULL_EVERY == i % FULL_EVERY:
            return [self._full(t, periodic=True)]
        return [heartbeat(self.name, self._next(), self.faults, outbox_depth=0, ts=round(t, 3))]


def wires_of(messages: list[Message], t: float) -> list[Wire]:
    out = []
    for m in messages:
        kind = Kind.PRESENCE if isinstance(m, Presence) else Kind.STATE
        out.append((topic(m.device, kind), encode(m), max(t, m.ts)))
    return out


def phase(i: int) -> float:
    """A device's offset in the heartbeat period (devices are not in lockstep)."""
    return (i * 37.77) % HEARTBEAT_S


def step_major(devices: list[Device], steps: range, t0: float) -> Iterator[list[Wire]]:
    """Per heartbeat period, every device's messages (the fleet's traffic in time order)."""
    for k in steps:
        out: list[Wire] = []
        for d in devices:
            t = t0 + k * HEARTBEAT_S + phase(d.index)
            out += wires_of(d.messages(k, t), t)
        out.sort(key=lambda w: w[2])
        yield out


def device_major(devices: list[Device], steps: int, t0: float, batch: int) -> Iterator[list[Wire]]:
    """Groups of devices, each with its whole history in time order (a fleet's
    backlog): the same stored history as ``step_major`` at backlog speed, for
    seeding large fleets within the budget."""
    group = max(1, batch // max(1, steps))
    for g in range(0, len(devices), group):
        out: list[Wire] = []
        for d in devices[g : g + group]:
            for k in range(steps):
                t = t0 + k * HEARTBEAT_S + phase(d.index)
                out += wires_of(d.messages(k, t), t)
        yield out


def ingest_batches(
    indexes: range, steps: int, t0: float, shape: str, live_batch: int, backlog_batch: int
) -> list[list[Wire]]:
    devices = [Device(i) for i in indexes]
    if shape == "coalesced":
        flat = [w for chunk in step_major(devices, range(steps), t0) for w in chunk]
        return [flat[j : j + backlog_batch] for j in range(0, len(flat), backlog_batch)]
    batches: list[list[Wire]] = []
    for k0 in range(0, steps, live_batch):
        for d in devices:
            batch: list[Wire] = []
            for k in range(k0, min(k0 + live_batch, steps)):
                t = t0 + k * HEARTBEAT_S + phase(d.index)
                batch += wires_of(d.messages(k, t), t)
            if batch:
                batches.append(batch)
    return batches


async def store_batch(ingestor: Ingestor, batch: list[Wire]) -> int:
    """prepare + write_batch, as the ingest loop does; the number stored."""
    prepared = []
    for tp, payload, t in batch:
        m = ingestor.prepare(tp, payload, received_at=t + DELAY_S)
        if m is None:
            raise SystemExit(f"bench message rejected: {tp} {payload[:200]!r}")
        prepared.append(m)
    result = await ingestor.write(prepared)
    return result.stored


# -- engines -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Engine:
    label: str
    url: str  # sqlite:///path or postgresql://...
    instances: int = 1

    @property
    def postgres(self) -> bool:
        return self.url.startswith("postgresql")


async def open_engine(url: str, synchronous: str) -> SQLiteRepository:
    return await open_url(url, synchronous=synchronous)


def pg_ctl_restart(server: PgServer, fsync: bool) -> None:
    """Restart the test server with durable settings (or keep its own)."""
    if not fsync:
        return
    data = server.folder / "data"
    opts = (
        f"-k {server.socket_dir} -c listen_addresses='' -c max_connections=200"
        " -c fsync=on -c full_page_writes=on -c synchronous_commit=on -c shared_buffers=128MB"
    )
    log = str(server.folder / "log")
    cmd = [str(server.bin / "pg_ctl"), "-D", str(data), "-l", log, "-m", "fast", "-w", "-o", opts]
    cmd.append("restart")
    if server.run_as:
        cmd = ["runuser", "-u", server.run_as, "--", *cmd]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)
    server.pid = int((data / "postmaster.pid").read_text().split()[0])


def pg_settings(url: str) -> str:
    names = ("server_version", "fsync", "synchronous_commit", "full_page_writes", "shared_buffers")
    with psycopg.connect(url) as c:
        vals = [str(c.execute(f"SHOW {n}").fetchone()[0]) for n in names]  # type: ignore[index]
    return ", ".join(f"{n}={v}" for n, v in zip(names, vals, strict=True))


def pg_db_size(url: str) -> int:
    with psycopg.connect(url) as c:
        row = c.execute("SELECT pg_database_size(current_database())").fetchone()
    assert row is not None
    return int(row[0])


def pg_analyze(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("ANALYZE")


def pg_live_size(url: str) -> int:
    """The database after VACUUM FULL: what its rows take once freed space is reused."""
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("VACUUM FULL")
    return pg_db_size(url)


def sqlite_live_size(path: Path) -> int:
    """The file less its free pages (reused by later writes) after a checkpoint."""
    with contextlib.closing(sqlite3.connect(path)) as c:
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages = c.execute("PRAGMA page_count").fetchone()[0]
        free = c.execute("PRAGMA freelist_count").fetchone()[0]
        size = c.execute("PRAGMA page_size").fetchone()[0]
    return int((pages - free) * size)


def sqlite_size(path: Path) -> int:
    """The file plus its WAL after a truncating checkpoint."""
    with contextlib.closing(sqlite3.connect(path)) as c:
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    wal = Path(f"{path}-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


# -- 1. ingest ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerSpec:
    url: str
    synchronous: str
    first: int
    last: int
    steps: int
    t0: float
    shape: str
    live_batch: int
    backlog_batch: int


async def _ingest_worker(spec: WorkerSpec, ready: Callable[[], object]) -> tuple[float, float, int]:
    batches = ingest_batches(
        range(spec.first, spec.last),
        spec.steps,
        spec.t0,
        spec.shape,
        spec.live_batch,
        spec.backlog_batch,
    )
    repo = await open_engine(spec.url, spec.synchronous)
    try:
        ingestor = Ingestor(repo, IngestConfig(), IngestStats())
        ready()
        start = time.monotonic()  # CLOCK_MONOTONIC: comparable across processes
        stored = 0
        for b in batches:
            stored += await store_batch(ingestor, b)
        end = time.monotonic()
    finally:
        await repo.close()
    expected = sum(len(b) for b in batches)
    if stored != expected:
        raise SystemExit(f"stored {stored} of {expected} messages")
    return start, end, stored


def ingest_worker(spec: WorkerSpec, barrier: Any, out: Any) -> None:
    """One collector instance in its own process (started with spawn)."""
    out.put(asyncio.run(_ingest_worker(spec, barrier.wait)))


def ingest_run(engine: Engine, args: argparse.Namespace, shape: str) -> tuple[float, int]:
    """One measured run: ``engine.instances`` processes, each half of the devices."""
    ctx = mp.get_context("spawn")
    n, k = args.ingest_devices, engine.instances
    steps = max(2, args.ingest_messages // n)
    t0 = time.time() - steps * HEARTBEAT_S - 600
    barrier, out = ctx.Barrier(k), ctx.Queue()
    procs = []
    for j in range(k):
        spec = WorkerSpec(
            engine.url,
            args.sqlite_sync,
            j * n // k,
            (j + 1) * n // k,
            steps,
            t0,
            shape,
            args.live_batch,
            args.backlog_batch,
        )
        p = ctx.Process(target=ingest_worker, args=(spec, barrier, out))
        p.start()
        procs.append(p)
    results = [out.get(timeout=900) for _ in procs]
    for p in procs:
        p.join(60)
        if p.exitcode != 0:
            raise SystemExit(f"ingest worker exited with {p.exitcode}")
    start = min(r[0] for r in results)
    end = max(r[1] for r in results)
    stored = sum(r[2] for r in results)
    return stored / (end - start), stored


def bench_ingest(args: argparse.Namespace, tmp: Path, pg: PgServer, template: str) -> None:
    shapes = {
        "live": f"live ({args.live_batch} msgs of one device per batch)",
        "coalesced": f"coalesced ({args.backlog_batch} msgs across devices per batch)",
    }
    labels = ("SQLite", "PostgreSQL x1", "PostgreSQL x2")
    rates: dict[tuple[str, str], list[float]] = {}
    total = 0
    for run in range(args.runs):
        for shape in shapes:
            db = tmp / f"ingest-{shape}-{run}.db"
            asyncio.run(_migrate_sqlite(db, args.sqlite_sync))
            engines = (
                Engine(labels[0], f"sqlite://{db}"),
                Engine(labels[1], pg.fresh_database(template)),
                Engine(labels[2], pg.fresh_database(template), instances=2),
            )
            for e in engines:
                rate, total = ingest_run(e, args, shape)
                rates.setdefault((shape, e.label), []).append(rate)
                print(
                    f"  run {run + 1} {shape:9s} {e.label:14s} {rate:8.0f} msg/s "
                    f"({total} msgs, load {load()})",
                    flush=True,
                )
            db.unlink()
    print()
    print(
        f"Ingest, messages/s (median of {args.runs}; {total} messages from "
        f"{args.ingest_devices} devices per run, prepare + write_batch only)"
    )
    print(f"  {'shape':52s}" + "".join(f"{x:>16s}" for x in labels))
    for shape, title in shapes.items():
        cells = "".join(f"{statistics.median(rates[(shape, x)]):16.0f}" for x in labels)
        print(f"  {title:52s}{cells}")
    print()


async def _migrate_sqlite(path: Path, synchronous: str) -> None:
    repo = await SQLiteRepository.open(path, synchronous=synchronous)
    try:
        await repo.migrate()
    finally:
        await repo.close()


async def _migrate(url: str) -> None:
    repo = await open_url(url)
    try:
        await repo.migrate()
    finally:
        await repo.close()


# -- 2. fleet ----------------------------------------------------------------------------------


def inventory(n: int) -> list[InventoryDevice]:
    return [
        InventoryDevice(
            device_id=device_id(i),
            commune_code=commune_of(i),
            commune_name=f"Xã Số {i // 10}",
            district=f"Huyện {i // 1000}",
            province="Phú Thọ",
            latitude=21.0 + (i % 1000) / 1000,
            longitude=105.0 + (i // 1000) / 100,
            contractor="Viettel Phú Thọ",
            install_date="2024-01-15",
            position=i,
        )
        for i in range(n)
    ]


@dataclass
class Seeded:
    messages: int = 0
    seconds: float = 0.0
    steps: int = 0
    size: int = 0
    empty: int = 0
    reads: dict[str, float] = field(default_factory=dict)
    #: After compaction with [db] raw_detail_hours of detail: the reads, the size,
    #: and the pass's seconds; then everything compacted (the per-day cost of
    #: history older than the detail window).
    reads_compacted: dict[str, float] = field(default_factory=dict)
    size_detail: int = 0
    size_compacted: int = 0
    compact_s: float = 0.0
    compact_all_s: float = 0.0
    dropped: int = 0


async def seed(repo: SQLiteRepository, args: argparse.Namespace, t0: float) -> Seeded:
    """Inventory, an admin, then the history through write_batch, oldest first."""
    await repo.upsert_inventory(inventory(args.clusters), remove_missing=False, actor="bench")
    await repo.add_user(
        ADMIN[0], role=Role.ADMIN, communes=frozenset(), password_hash=hash_password(ADMIN[1])
    )
    ingestor = Ingestor(repo, IngestConfig(), IngestStats())
    devices = [Device(i) for i in range(args.clusters)]
    s = Seeded()
    steps = max(1, round(args.days * STEPS_PER_DAY))
    pending: list[Wire] = []
    next_print = time.monotonic() + 30
    chunks = (
        step_major(devices, range(steps), t0)
        if args.seed_order == "time"
        else device_major(devices, steps, t0, args.seed_batch)
    )
    for k, chunk in enumerate(chunks):
        pending += chunk
        start = time.perf_counter()
        while len(pending) >= args.seed_batch:
            s.messages += await store_batch(ingestor, pending[: args.seed_batch])
            del pending[: args.seed_batch]
        s.seconds += time.perf_counter() - start
        by_device = args.seed_order == "device"
        # Device order seeds whole histories: it runs to the end (no budget).
        s.steps = steps if by_device else k + 1
        if time.monotonic() > next_print:
            next_print += 30
            done = f"{k + 1} device groups" if by_device else f"{s.steps}/{steps} periods"
            print(
                f"    seeding: {s.messages} msgs, {done}, "
                f"{s.messages / max(s.seconds, 1e-9):.0f} msg/s, load {load()}",
                flush=True,
            )
        if not by_device and s.seconds > args.seed_budget_s:
            break
    start = time.perf_counter()
    if pending:
        s.messages += await store_batch(ingestor, pending)
    s.seconds += time.perf_counter() - start
    return s


async def timed(fn: Callable[[], Awaitable[object]], runs: int) -> float:
    """Median seconds of ``runs`` calls after one warm-up call."""
    await fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def app_config(url: str, synchronous: str) -> CollectorConfig:
    # The bench compacts itself (and times it): the app's own pass would run
    # during the reads, so its detail window is set past the history.
    db: dict[str, Any] = {"synchronous": synchronous, "raw_detail_hours": 1e6}
    if url.startswith("sqlite://"):
        db["path"] = url.removeprefix("sqlite://")
    else:
        db["url"] = url
    cfg = config_from_dict(
        {
            "mqtt": {"host": "127.0.0.1", "port": 1883},
            "db": db,
            "http": {"port": 0, "secure_cookies": False},
        }
    )
    return replace(cfg, ingest_enabled=False)


async def reads(url: str, args: argparse.Namespace, end: float) -> dict[str, float]:
    as_of = dt.datetime.fromtimestamp(end, ZoneInfo(DEFAULT_TZ))
    corr = CorrelationConfig()
    out: dict[str, float] = {}
    repo = await open_engine(url, args.sqlite_sync)
    try:
        n = len(await repo.statuses_as_of(end))
        if n != args.clusters:
            raise SystemExit(f"statuses_as_of: {n} clusters, expected {args.clusters}")
        devices = await repo.list_inventory()
        start = month_start(as_of)

        async def recount() -> object:  # the evaluation before the kept sums
            timelines = await repo.status_timelines(start.timestamp(), end)
            return evaluate(
                devices,
                timelines,
                start=start,
                end=as_of,
                label=lambda d: commune_label(d.commune_kind, d.commune_name, "vi"),
            )

        async with repo._tx() as db:  # nothing kept yet: the first call keeps the sums
            await db.execute("DELETE FROM availability_kept")
        first = time.perf_counter()
        kept = await monthly_evaluation(repo, devices, as_of=as_of)
        out["monthly_evaluation: first (keeps the sums)"] = time.perf_counter() - first
        out["monthly_evaluation: again (kept sums)"] = await timed(
            lambda: monthly_evaluation(repo, devices, as_of=as_of), args.runs
        )
        out["monthly evaluation recounted (timelines)"] = await timed(recount, args.runs)
        if await recount() != kept:
            raise SystemExit("monthly_evaluation: differs from the recount")
        out["B2 table as of the end (b2_table)"] = await timed(
            lambda: b2_table(repo, as_of=as_of, correlation=corr), args.runs
        )
        out["statuses_as_of(end)"] = await timed(lambda: repo.statuses_as_of(end), args.runs)
        out["list_devices(limit=500): /api/v1/devices"] = await timed(
            lambda: repo.list_devices(limit=500), args.runs
        )
        out["list_devices(all): overview, communes"] = await timed(
            lambda: repo.list_devices(limit=10**7), args.runs
        )
    finally:
        await repo.close()
    # The app's command publisher retries a broker the bench does not run: not news.
    logging.getLogger("loa.collector.remote").setLevel(logging.ERROR)
    app = create_app(app_config(url, args.sqlite_sync))
    async with TestClient(TestServer(app)) as client:
        login = {"name": ADMIN[0], "password": ADMIN[1]}
        async with client.post("/api/v1/auth/login", json=login) as resp:
            if resp.status != 200:
                raise SystemExit(f"login: {resp.status} {await resp.text()}")

        async def overview() -> None:
            async with client.get("/", allow_redirects=False) as resp:
                body = await resp.text()
                if resp.status != 200:
                    raise SystemExit(f"overview: {resp.status} {body[:300]}")

        async def api_devices() -> None:
            async with client.get("/api/v1/devices") as resp:
                await resp.read()
                if resp.status != 200:
                    raise SystemExit(f"/api/v1/devices: {resp.status}")

        def getter(path: str) -> Callable[[], Awaitable[None]]:
            async def get() -> None:
                async with client.get(path) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise SystemExit(f"{path}: {resp.status}")

            return get

        out["GET /api/v1/devices (HTTP, JSON)"] = await timed(api_devices, args.runs)
        out["GET / overview page (HTTP, HTML)"] = await timed(overview, args.runs)
        # What every open dashboard polls every 2 s, and the fleet's figures.
        out["GET /ui/live (HTTP, JSON)"] = await timed(getter("/ui/live"), args.runs)
        out["GET /api/v1/fleet/summary (HTTP, JSON)"] = await timed(
            getter("/api/v1/fleet/summary"), args.runs
        )
    return out


async def bench_fleet_engine(
    label: str, url: str, args: argparse.Namespace, t0: float, sqlite_file: Path | None
) -> Seeded:
    print(f"  {label}: seeding {args.clusters} clusters x {args.days} day(s)", flush=True)
    repo = await open_engine(url, args.sqlite_sync)
    try:
        if sqlite_file is not None:
            await repo.migrate()
    finally:
        await repo.close()
    empty = sqlite_size(sqlite_file) if sqlite_file is not None else pg_db_size(url)
    repo = await open_engine(url, args.sqlite_sync)
    try:
        s = await seed(repo, args, t0)
    finally:
        await repo.close()
    print(
        f"  {label}: seeded {s.messages} msgs ({s.steps} heartbeat periods) in "
        f"{s.seconds:.0f} s: {s.messages / s.seconds:.0f} msg/s, load {load()}",
        flush=True,
    )
    if sqlite_file is not None:
        s.size = sqlite_size(sqlite_file)
    else:
        pg_analyze(url)  # what autovacuum's analyze does a minute after a bulk load
        s.size = pg_db_size(url)
    s.empty = empty
    end = t0 + s.steps * HEARTBEAT_S
    s.reads = await reads(url, args, end)
    print(f"  {label}: reads done, load {load()}", flush=True)

    def live() -> int:
        return sqlite_live_size(sqlite_file) if sqlite_file is not None else pg_live_size(url)

    detail_s = DbConfig().raw_detail_hours * 3600
    repo = await open_engine(url, args.sqlite_sync)
    try:
        start = time.perf_counter()
        done = await repo.compact_raw(end - detail_s)
        s.compact_s = time.perf_counter() - start
        s.dropped = done.dropped
        s.size_detail = live()
        s.reads_compacted = await reads(url, args, end)
        start = time.perf_counter()
        done = await repo.compact_raw(end + 1)
        s.compact_all_s = time.perf_counter() - start
        s.dropped += done.dropped
        s.size_compacted = live()
    finally:
        await repo.close()
    print(f"  {label}: compacted ({s.dropped} dropped), load {load()}", flush=True)
    return s


def bench_fleet(args: argparse.Namespace, tmp: Path, pg: PgServer, template: str) -> None:
    # The history ends a minute ago: the app's offline sweep finds the fleet online.
    t0 = time.time() - args.days * 86400 - 60
    db = tmp / "fleet.db"
    results = {
        "SQLite": asyncio.run(bench_fleet_engine("SQLite", f"sqlite://{db}", args, t0, db)),
        "PostgreSQL": asyncio.run(
            bench_fleet_engine("PostgreSQL", pg.fresh_database(template), args, t0, None)
        ),
    }
    labels = list(results)
    print()
    print(
        f"Fleet of {args.clusters} clusters, {args.days} day(s) of history "
        f"(heartbeat {HEARTBEAT_S:.0f} s, full report {FULL_REPORT_S:.0f} s)"
    )
    print(f"  {'':48s}" + "".join(f"{x:>16s}" for x in labels))

    def row(title: str, cells: list[str]) -> None:
        print(f"  {title:48s}" + "".join(f"{c:>16s}" for c in cells))

    r = list(results.values())
    row("messages seeded", [f"{s.messages}" for s in r])
    row("history seeded (days)", [f"{s.steps / STEPS_PER_DAY:.2f}" for s in r])
    row(
        f"seeding rate (msg/s, batches of {args.seed_batch})",
        [f"{s.messages / s.seconds:.0f}" for s in r],
    )
    row("database size (MB)", [f"{s.size / 1e6:.1f}" for s in r])
    row("empty migrated database (MB)", [f"{s.empty / 1e6:.1f}" for s in r])
    row(
        "size per cluster per day, less empty (KB)",
        [f"{(s.size - s.empty) / 1e3 / args.clusters / (s.steps / STEPS_PER_DAY):.1f}" for s in r],
    )
    row(
        "size per message, less empty (bytes)",
        [f"{(s.size - s.empty) / s.messages:.0f}" for s in r],
    )
    days = [s.steps / STEPS_PER_DAY for s in r]
    detail_h = DbConfig().raw_detail_hours
    row(
        f"compaction, {detail_h:.0f} h of detail kept (s)",
        [f"{s.compact_s:.1f}" for s in r],
    )
    row(
        "  live size then, per cluster per day (KB)",
        [
            f"{(x.size_detail - x.empty) / 1e3 / args.clusters / d:.1f}"
            for x, d in zip(r, days, strict=True)
        ],
    )
    row("compaction of the rest (s)", [f"{s.compact_all_s:.1f}" for s in r])
    row(
        "  live size then, per cluster per day (KB)",
        [
            f"{(x.size_compacted - x.empty) / 1e3 / args.clusters / d:.1f}"
            for x, d in zip(r, days, strict=True)
        ],
    )
    row("heartbeats dropped", [f"{s.dropped}" for s in r])
    print(f"  read times, ms (median of {args.runs} after one warm-up):")
    for name in r[0].reads:
        row("  " + name, [f"{s.reads[name] * 1000:.1f}" for s in r])
    print(f"  read times after compaction with {detail_h:.0f} h of detail, ms:")
    for name in r[0].reads_compacted:
        row("  " + name, [f"{s.reads_compacted[name] * 1000:.1f}" for s in r])
    print()


# -- machine and main --------------------------------------------------------------------------


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def machine(pg_url: str) -> list[str]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return [
        f"machine: {cpu}, {os.cpu_count()} cores, load {load()} (1/5/15 min)",
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"psycopg {psycopg.__version__}",
        f"PostgreSQL: {pg_settings(pg_url)}",
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--only", choices=("ingest", "fleet"))
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--clusters", type=int, default=2000)
    p.add_argument("--days", type=float, default=1.0, help="may be a fraction (large fleets)")
    p.add_argument("--sqlite-sync", choices=("normal", "full"), default="full")
    p.add_argument("--pg-fsync", choices=("on", "off"), default="on")
    p.add_argument("--ingest-devices", type=int, default=200)
    p.add_argument("--ingest-messages", type=int, default=6000, help="per run, about")
    p.add_argument("--live-batch", type=int, default=2)
    p.add_argument("--backlog-batch", type=int, default=500)
    p.add_argument("--seed-batch", type=int, default=1000)
    p.add_argument(
        "--seed-order",
        choices=("time", "device"),
        default="time",
        help="time: the fleet's traffic in time order; device: each device's backlog in turn",
    )
    p.add_argument("--seed-budget-s", type=float, default=600.0, help="per engine")
    args = p.parse_args(argv)
    print("command: " + shlex.join([sys.executable, *sys.argv]), flush=True)
    with tempfile.TemporaryDirectory(prefix="loa-bench-") as d, running_postgres() as pg:
        pg_ctl_restart(pg, args.pg_fsync == "on")
        template = pg.fresh_database()
        asyncio.run(_migrate(template))
        template = template.split("?")[0].rsplit("/", 1)[1]
        for line in machine(pg.url()):
            print(line)
        print(f"SQLite synchronous={args.sqlite_sync} (WAL), same disk, {d}")
        print(flush=True)
        if args.only in (None, "ingest"):
            bench_ingest(args, Path(d), pg, template)
        if args.only in (None, "fleet"):
            bench_fleet(args, Path(d), pg, template)
        print(f"load at the end: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
