"""A cluster's cause now (``causes.cause_now``) from its correlation neighbours
only (``correlation_neighbours``: its commune, its serving cell, a few online on
other cells) equals the whole fleet's attribution for it -- cell and commune
outages, lone silences, device-reported causes, findings -- on both engines; the
store keeps each device's cell from its newest full report at ingest."""

from __future__ import annotations

import random
import time

import pytest

from collector.causes import attribute_all, cause_now, statuses_with_causes
from collector.config import IngestConfig
from collector.correlation import CorrelationConfig
from collector.ingest import Ingestor
from collector.metrics import IngestStats
from collector.model import InventoryDevice
from collector.store.sqlite import SQLiteRepository
from edge_agent.reports import Snapshot, full_report, heartbeat
from fleet_protocol import (
    B2Cause,
    Fault,
    FaultCode,
    Kind,
    ModemState,
    RegState,
    SimState,
    encode,
    topic,
)

GRACE = 1800.0
CFG = CorrelationConfig()

#: (commune, cell) of each cluster: commune xa-a spans cells c1 and c2, c2 also
#: serves xa-b, c3 serves xa-c only.
LAYOUT = [("xa-a", "c1")] * 8 + [("xa-a", "c2")] * 4 + [("xa-b", "c2")] * 6 + [("xa-c", "c3")] * 10


def _inventory() -> list[InventoryDevice]:
    return [
        InventoryDevice(
            device_id=f"loa-{i:02d}", commune_code=c, commune_name=c.upper(), position=i
        )
        for i, (c, _cell) in enumerate(LAYOUT)
    ]


class Fleet:
    def __init__(self, repo: SQLiteRepository) -> None:
        self.repo = repo
        self.ing = Ingestor(repo, IngestConfig(), IngestStats())
        self.seq: dict[str, int] = {}

    def _next(self, device: str) -> int:
        self.seq[device] = self.seq.get(device, 0) + 1
        return self.seq[device]

    async def send(
        self,
        device: str,
        ts: float,
        *,
        cell: str | None,
        faults: tuple[Fault, ...] = (),
        received: float | None = None,
    ) -> None:
        if cell is None:
            msg = heartbeat(device, self._next(device), faults, outbox_depth=0, ts=ts)
        else:
            modem = ModemState(
                sim=SimState.READY,
                registration=RegState.HOME,
                rssi_dbm=-77.0,
                tac="4A1F",
                cell_id=cell,
            )
            msg = full_report(
                device,
                "",
                self._next(device),
                Snapshot(modem=modem, faults=faults),
                outbox_depth=0,
                ts=ts,
            )
        m = self.ing.prepare(
            topic(device, Kind.STATE),
            encode(msg),
            received_at=ts + 1 if received is None else received,
        )
        assert m is not None
        await self.repo.write_batch([m], late_after_s=120)


async def _cells(repo: SQLiteRepository) -> dict[str, str | None]:
    rows = await repo._all("SELECT device_id, cell FROM devices")
    return {r["device_id"]: r["cell"] for r in rows}


async def _drive(repo: SQLiteRepository, seed: int) -> tuple[list[InventoryDevice], float, float]:
    """The scenario below through the write path; (inventory, its start, now)."""
    rng = random.Random(seed)
    inv = _inventory()
    await repo.upsert_inventory(inv, remove_missing=True)
    fleet = Fleet(repo)
    t = time.time() - 6 * 3600
    for d, (_c, cell) in zip(inv, LAYOUT, strict=True):
        await fleet.send(d.device_id, t + rng.uniform(0, 60), cell=cell)
    # xa-a loses power: nearly all of it, on both its cells, within minutes. Cell c3
    # fails: most of its clusters fall silent together. A few lone silences and
    # device-reported faults.
    silent_at: dict[str, float] = {}
    for i, (commune, cell) in enumerate(LAYOUT):
        dev = inv[i].device_id
        if commune == "xa-a" and rng.random() < 0.9:
            silent_at[dev] = t + 3600 + rng.uniform(0, 300)
        elif cell == "c3" and rng.random() < 0.8:
            silent_at[dev] = t + 7200 + rng.uniform(0, 400)
        elif rng.random() < 0.15:
            silent_at[dev] = t + rng.uniform(3000, 15000)
    broken = rng.sample([d.device_id for d in inv if d.device_id not in silent_at], 3)
    now = t
    for k in range(1, 34):
        now = t + k * 600
        for d, (_c, cell) in zip(inv, LAYOUT, strict=True):
            dev = d.device_id
            if dev in silent_at and now >= silent_at[dev]:
                continue
            faults = (
                (Fault.of(FaultCode.STREAM_LOST, now, "no audio"),)
                if dev in broken and k > 5
                else ()
            )
            # Full reports on change and every 6th period; heartbeats between.
            full = (k == 6 and dev in broken) or k % 6 == 0
            await fleet.send(
                dev, now + rng.uniform(0, 30), cell=cell if full else None, faults=faults
            )
        await repo.mark_silent_offline(now + 40, GRACE)
    # A finding on one broken cluster, recorded on site.
    ticket = await repo.open_ticket(broken[0], actor="xa", at=now - 900, note="hỏng", cause=None)
    await repo.record_finding(
        ticket.id, actor="kỹ thuật", at=now - 600, cause=B2Cause.NO_STATION_SIGNAL, text="đứt dây"
    )
    return inv, t, now + 60


@pytest.mark.parametrize("seed", [1, 4])
async def test_a_clusters_cause_from_its_neighbours_equals_the_whole_fleets(
    repo: SQLiteRepository, seed: int
) -> None:
    inv, _t0, at = await _drive(repo, seed)
    _, everyone = await statuses_with_causes(repo, at, CFG)
    assert {a.rule for a in everyone.values()} >= {"cell_outage", "commune_outage"}
    sizes = []
    for d in inv:
        peers = await repo.correlation_neighbours(d.device_id)
        assert peers is not None and d.device_id in peers
        sizes.append(len(peers))
        assert await cause_now(repo, d.device_id, at, CFG) == everyone.get(d.device_id), d
    # xa-c on c3 reads xa-c and three witnesses of other cells, not the fleet.
    assert min(sizes) <= 10 + 3 < len(inv)


@pytest.mark.parametrize("only_max", [2000, 3])
async def test_the_fleets_causes_read_over_what_each_needs_equal_reading_everything(
    repo: SQLiteRepository, monkeypatch: pytest.MonkeyPatch, only_max: int
) -> None:
    # only_max 3: every restricted read takes the read-everything path and filters.
    monkeypatch.setattr("collector.store.sqlite_base._ONLY_MAX", only_max)
    _inv, t0, at = await _drive(repo, 1)
    rules: set[str] = set()
    for t in (t0 + 1800, t0 + 3 * 3600 + 17, t0 + 4.5 * 3600, at, at + 86400):
        repo.kept_state_reads = True
        kept = await repo.statuses_as_of(t)
        kept_causes = await statuses_with_causes(repo, t, CFG)
        repo.kept_state_reads = False
        assert await repo.statuses_as_of(t) == kept, t
        statuses = await repo.statuses_as_of(t)
        reference = attribute_all(
            statuses,
            await repo.diag_evidence_as_of(t),
            await repo.last_reports_as_of(t),
            await repo.findings_as_of(t),
            CFG,
        )
        assert kept_causes == reference, t
        assert await statuses_with_causes(repo, t, CFG) == reference, t
        rules |= {a.rule for a in reference[1].values()}
    assert rules >= {"cell_outage", "commune_outage", "lone_silence"}


async def test_the_cell_kept_is_the_newest_full_reports(repo: SQLiteRepository) -> None:
    await repo.upsert_inventory(_inventory()[:2], remove_missing=True)
    fleet = Fleet(repo)
    t = time.time() - 3600
    await fleet.send("loa-00", t, cell="c1")
    await fleet.send("loa-00", t + 600, cell=None)  # a heartbeat names no cell
    assert (await _cells(repo))["loa-00"] == "4A1F/c1"
    await fleet.send("loa-00", t + 1200, cell="c2")
    # A drained backlog's older full report does not move it back.
    await fleet.send("loa-00", t + 900, cell="c1", received=t + 1300)
    assert (await _cells(repo))["loa-00"] == "4A1F/c2"
    assert await repo.correlation_neighbours("loa-00") is not None
    # Reports stored before cells were kept (migration 15 fills them from them).
    async with repo._tx() as db:
        await db.execute("UPDATE devices SET cell = NULL, cell_ts = NULL")
    assert await repo.correlation_neighbours("loa-00") is None  # the whole fleet then
    async with repo._tx() as db:
        await repo._fill_cells(db)
    assert (await _cells(repo))["loa-00"] == "4A1F/c2"
