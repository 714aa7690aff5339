"""Compaction of redundant heartbeats (``collector.compaction``, ``compact_raw``):
the history, the fleet as of any moment, the diagnoses' evidence and the B2 are
the same with and without it; dropped seqs stay duplicates; passes resume.

Every store test runs on both engines (``repo``); the twin that is never
compacted is a SQLite file fed the same messages."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from collector.b2.service import b2_table
from collector.compaction import StoredReport, plan
from collector.config import CorrelationConfig, IngestConfig
from collector.ingest import Ingestor
from collector.metrics import IngestStats
from collector.model import InventoryDevice
from collector.store.base import IncomingMessage
from collector.store.sqlite import SQLiteRepository
from edge_agent.reports import Snapshot, full_report, heartbeat
from fleet_protocol import (
    PROTOCOL_VERSION,
    Fault,
    FaultCode,
    Kind,
    ModemState,
    Presence,
    PresenceStatus,
    RegState,
    SimState,
    StateReport,
    encode,
    topic,
)

TZ = ZoneInfo("Asia/Ho_Chi_Minh")
T0 = dt.datetime(2026, 3, 2, 0, 0, tzinfo=TZ).timestamp()
HB = 600.0
GRACE = 1800.0
HOUR = 3600.0


# -- the planner ---------------------------------------------------------------


def _r(
    seq: int,
    *,
    ts: float | None = None,
    hb: bool = True,
    broken: bool = False,
    kind: str | None = "state",
    received: float | None = None,
    faults: tuple[str, ...] = (),
) -> StoredReport:
    t = float(seq * 600) if ts is None else ts
    return StoredReport(
        seq=seq,
        ts=t,
        received_at=t if received is None else received,
        obs_kind=kind,
        prompt=True,
        broken=broken,
        cause="no_station_signal" if broken else None,
        droppable=hb and kind == "state",
        faults=faults,
    )


def test_a_run_keeps_its_ends_and_drops_its_middle() -> None:
    rows = [_r(1, hb=False), *(_r(s) for s in range(2, 8)), _r(8, hb=False)]
    p = plan(rows, horizon=1e9)
    assert p.drop == [2, 3, 4, 5, 6, 7]  # the full report at 8 says the same: 7 goes too
    assert p.run_until == {1: 7 * 600.0}
    assert p.spans == [(2, 7)]


def test_the_report_before_a_change_or_a_silence_is_kept() -> None:
    change = [_r(1, hb=False), _r(2), _r(3), _r(4, broken=True, faults=("stream_lost",)), _r(5)]
    assert plan(change, horizon=1e9).drop == [2]
    silent = [_r(1, hb=False), _r(2), _r(3), _r(-1, ts=3 * 600 + GRACE, kind="silent")]
    p = plan(silent, horizon=1e9)
    assert p.drop == [2]  # 3 is the last heard before the silence: exact
    # A report whose fault list differs says something else, even when it is as broken.
    same_cause = [_r(1, broken=True, faults=("a",)), _r(2, broken=True, faults=("b",)), _r(3)]
    assert plan(same_cause, horizon=1e9).drop == []


def test_only_what_was_received_before_the_horizon_is_dropped() -> None:
    rows = [_r(1, hb=False), *(_r(s) for s in range(2, 10))]
    p = plan(rows, horizon=5 * 600.0)
    assert p.drop == [2, 3, 4]
    # The next pass starts at the last kept row before the newest eligible one, so
    # the run goes on growing instead of leaving a row behind at every pass.
    assert p.mark == (600.0, 1)
    later = plan([r for r in rows if r.seq not in p.drop], horizon=1e9)
    assert later.drop == [5, 6, 7, 8]


def test_not_droppable_rows_stay() -> None:
    rows = [_r(1, hb=False), _r(2, hb=False), _r(3, hb=False), _r(4, hb=False)]
    assert plan(rows, horizon=1e9).drop == []


# -- the store -----------------------------------------------------------------


def _device(i: int) -> InventoryDevice:
    return InventoryDevice(
        device_id=f"cum-{i:02d}",
        commune_code=f"xa-{i % 2}",
        commune_name=f"Xã {i % 2}",
        position=i,
    )


class Feed:
    """A small fleet's traffic as the agent sends it (heartbeats, a full report
    every 6 h, fault episodes, outages with a buffered backlog), written through
    ``Ingestor.prepare`` and ``write_batch`` into several stores at once."""

    def __init__(self, repos: Sequence[SQLiteRepository], seed: int, n: int = 4) -> None:
        self.repos = repos
        self.ings = [Ingestor(r, IngestConfig(), IngestStats()) for r in repos]
        self.rng = random.Random(seed)
        self.devices = [_device(i) for i in range(n)]
        self.seq = dict.fromkeys((d.device_id for d in self.devices), 0)
        self.faults: dict[str, tuple[Fault, ...]] = {d.device_id: () for d in self.devices}
        self.down_until: dict[str, float] = {}
        self.backlog: dict[str, list[tuple[str, bytes, float]]] = {}
        self.sent: list[tuple[str, bytes, float]] = []

    def _next(self, device: str) -> int:
        self.seq[device] += 1
        return self.seq[device]

    def _full(self, device: str, t: float) -> StateReport:
        rssi = self.rng.choice([-71.0, -75.0, -83.0])
        snap = Snapshot(
            modem=ModemState(sim=SimState.READY, registration=RegState.HOME, rssi_dbm=rssi, csq=15),
            faults=self.faults[device],
        )
        return full_report(device, "xa-0", self._next(device), snap, outbox_depth=0, ts=t)

    def messages(self, device: str, k: int, t: float) -> list[StateReport | Presence]:
        rng = self.rng
        if k == 0:
            on = Presence(
                v=PROTOCOL_VERSION,
                device=device,
                seq=self._next(device),
                ts=t,
                status=PresenceStatus.ONLINE,
            )
            return [on, self._full(device, t + 1)]
        if rng.random() < 0.01:
            self.faults[device] = (
                () if self.faults[device] else (Fault.of(FaultCode.STREAM_LOST, t, "no audio"),)
            )
            return [self._full(device, t)]
        if k % 36 == 0:
            return [self._full(device, t)]
        return [heartbeat(device, self._next(device), self.faults[device], outbox_depth=0, ts=t)]

    async def run(self, hours: float, *, between: object = None, start: float = T0) -> float:
        for repo in self.repos:
            await repo.upsert_inventory(self.devices, remove_missing=True)
        steps = int(hours * HOUR / HB)
        now = start
        for k in range(steps):
            now = start + k * HB
            batch: list[tuple[str, bytes, float]] = []
            for d in self.devices:
                dev = d.device_id
                t = now + self.devices.index(d) * 7.0
                if dev not in self.down_until and k > 0 and self.rng.random() < 0.004:
                    self.down_until[dev] = now + self.rng.uniform(2, 9) * HOUR
                    self.backlog[dev] = []
                down = self.down_until.get(dev)
                for m in self.messages(dev, k, t):
                    kind = Kind.PRESENCE if isinstance(m, Presence) else Kind.STATE
                    wire = (topic(dev, kind), encode(m), t)
                    if down is not None:
                        self.backlog[dev].append(wire)  # the outbox keeps it
                    else:
                        batch.append(wire)
                if down is not None and now >= down:
                    # Back: the outbox drains, every report late (received now).
                    batch += [(tp, body, now + 5) for tp, body, _t in self.backlog.pop(dev)]
                    del self.down_until[dev]
            await self.write(batch)
            if k % 6 == 0:
                for repo in self.repos:
                    await repo.mark_silent_offline(now + 1, GRACE)
            if between is not None and k % 6 == 3:
                await between(now)  # type: ignore[operator]
        return now

    async def write(self, batch: Sequence[tuple[str, bytes, float]]) -> None:
        if not batch:
            return
        self.sent += batch
        for repo, ing in zip(self.repos, self.ings, strict=True):
            msgs: list[IncomingMessage] = []
            for tp, body, received in batch:
                m = ing.prepare(tp, body, received_at=received)
                assert m is not None
                msgs.append(m)
            await repo.write_batch(msgs, late_after_s=120)


async def _raw_rows(repo: SQLiteRepository) -> int:
    return int((await repo._all("SELECT count(*) AS n FROM messages"))[0]["n"])


async def _history(repo: SQLiteRepository, devices: Sequence[InventoryDevice]) -> object:
    return {d.device_id: await repo.status_history(d.device_id) for d in devices}


async def _fleet_at(repo: SQLiteRepository, t: float) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    for s in await repo.statuses_as_of(t):
        # last_seen is exact when the cluster is offline (the correlation's input).
        seen = s.last_seen if not s.online else None
        out.append((s.device_id, s.status, s.cause, s.online, s.in_repair, s.since, seen))
    return out


async def _evidence_at(repo: SQLiteRepository, t: float) -> dict[str, tuple[object, ...]]:
    ev = await repo.diag_evidence_as_of(t)
    return {d: (e.kind, e.prompt, e.broken, e.cause, sorted(e.faults)) for d, e in ev.items()}


async def _b2(repo: SQLiteRepository, t: float) -> tuple[object, ...]:
    table = await b2_table(
        repo,
        as_of=dt.datetime.fromtimestamp(t, TZ),
        correlation=CorrelationConfig(),
        record=False,
    )
    causes = {d: (c.get("cause"), c.get("source")) for d, c in table.causes_by_device.items()}
    return (table.rows, table.total, table.summary, causes, table.evaluation)


@pytest.fixture
async def twin(tmp_path: Path) -> AsyncIterator[SQLiteRepository]:
    r = await SQLiteRepository.open(tmp_path / "twin.db", synchronous="normal")
    await r.migrate()
    try:
        yield r
    finally:
        await r.close()


@pytest.mark.parametrize("seed", [3, 8])
async def test_history_fleet_evidence_and_b2_are_the_same_with_compaction(
    repo: SQLiteRepository, twin: SQLiteRepository, seed: int
) -> None:
    feed = Feed([repo, twin], seed)
    passes = 0

    async def compact(now: float) -> None:
        nonlocal passes
        passes += 1
        await repo.compact_raw(now - 6 * HOUR)  # hourly passes, six hours of detail

    end = await feed.run(72, between=compact)
    done = await repo.compact_raw(end + HOUR)
    assert passes > 60 and done.devices == len(feed.devices)
    kept, raw = await _raw_rows(repo), await _raw_rows(twin)
    # 4 clusters x 3 days x 144 heartbeats: nearly all that came promptly went (the
    # outages' drained backlogs stay: late reports are never dropped).
    assert kept < raw / 3, (kept, raw)
    assert await _history(repo, feed.devices) == await _history(twin, feed.devices)
    for t in [T0 + h * HOUR + 17.0 for h in range(0, 74, 1)]:
        assert await _fleet_at(repo, t) == await _fleet_at(twin, t), t
        assert await _evidence_at(repo, t) == await _evidence_at(twin, t), t
        got = {s.device_id: s.last_seen for s in await repo.statuses_as_of(t)}
        for s in await twin.statuses_as_of(t):
            if s.online and s.last_seen is not None:  # heard: within one heartbeat
                g = got[s.device_id]
                assert g is not None and s.last_seen - 1 <= g <= s.last_seen + HB + 1, t
    for h in (5, 29, 47.5, 70):
        assert await _b2(repo, T0 + h * HOUR) == await _b2(twin, T0 + h * HOUR), h
    for d in feed.devices:
        assert await repo.stored_seqs(d.device_id) == await twin.stored_seqs(d.device_id)
    assert await repo.message_count() == await twin.message_count()


async def test_a_replayed_dropped_seq_is_a_duplicate_and_passes_resume(
    repo: SQLiteRepository, twin: SQLiteRepository
) -> None:
    feed = Feed([repo, twin], seed=5, n=2)
    end = await feed.run(24)
    first = await repo.compact_raw(end - 6 * HOUR)
    assert first.dropped > 100 and first.spans >= 1
    again = await repo.compact_raw(end - 6 * HOUR)  # nothing new received: nothing to do
    assert again.dropped == 0
    before = {d.device_id: await repo.stored_seqs(d.device_id) for d in feed.devices}
    dropped = sorted(
        set(before[feed.devices[0].device_id])
        - {
            int(r["seq"])
            for r in await repo._all(
                "SELECT seq FROM messages WHERE device_id = ?", (feed.devices[0].device_id,)
            )
        }
    )
    assert len(dropped) > 50
    # The whole day replayed (an agent whose outbox lost its sent marks): not one is new.
    ing = Ingestor(repo, IngestConfig(), IngestStats())
    msgs = [ing.prepare(tp, body, received_at=end + 60) for tp, body, _ in feed.sent]
    result = await repo.write_batch([m for m in msgs if m is not None], late_after_s=120)
    assert result.stored == 0 and result.duplicates == len(feed.sent)
    assert not result.conflicts
    after = {d.device_id: await repo.stored_seqs(d.device_id) for d in feed.devices}
    assert after == before
    # The rest of the day, compacted later: the run left at the mark keeps growing,
    # and the spans meet (one range per gap between kept reports, not per pass).
    spans0 = (await repo._all("SELECT count(*) AS n FROM seq_spans"))[0]["n"]
    await repo.compact_raw(end + HOUR)
    spans1 = (await repo._all("SELECT count(*) AS n FROM seq_spans"))[0]["n"]
    kept = await _raw_rows(repo)
    assert spans1 - spans0 <= 2 * len(feed.devices) + 2
    fresh = twin  # the same traffic compacted once, at the end
    await fresh.compact_raw(end + HOUR)
    assert kept <= await _raw_rows(fresh) + 2 * len(feed.devices)
    assert await _history(repo, feed.devices) == await _history(fresh, feed.devices)


async def test_retention_drops_the_ranges_with_the_rows(repo: SQLiteRepository) -> None:
    feed = Feed([repo], seed=11, n=1)
    end = await feed.run(12)
    await repo.compact_raw(end)
    assert (await repo._all("SELECT count(*) AS n FROM seq_spans"))[0]["n"] > 0
    await repo.purge_raw(end + 10)
    assert (await repo._all("SELECT count(*) AS n FROM seq_spans"))[0]["n"] == 0
    assert await repo.message_count() == 0
