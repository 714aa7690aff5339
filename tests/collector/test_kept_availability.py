"""The monthly evaluation's kept sums (``availability_seconds``, table
``availability_kept``) against a recount from the transitions
(``counted_seconds`` over ``status_timelines``), on both engines, through the real
write path: reports in order and late (out of order), silence marks, inventory
changes, and moments asked before and after what is kept."""

from __future__ import annotations

import datetime as dt
import random
import types
from zoneinfo import ZoneInfo

import pytest

from collector.b2.availability import counted_seconds, evaluate, month_start
from collector.b2.service import monthly_evaluation
from collector.b2.table import commune_label
from collector.config import IngestConfig
from collector.ingest import Ingestor
from collector.metrics import IngestStats
from collector.model import InventoryDevice
from collector.store.sqlite import SQLiteRepository
from fleet_protocol import FaultCode, Kind, encode, topic
from tests.collector.conftest import presence, state

TZ = ZoneInfo("Asia/Ho_Chi_Minh")
AS_OF = dt.datetime(2026, 3, 20, 15, 27, 11, tzinfo=TZ)
T0 = month_start(AS_OF).timestamp()
HOUR = 3600.0


class Fleet:
    """Writes a cluster fleet's history through the store's write path."""

    def __init__(self, repo: SQLiteRepository, monkeypatch: pytest.MonkeyPatch) -> None:
        self.repo = repo
        self.ing = Ingestor(repo, IngestConfig(), IngestStats())
        self.seqs: dict[str, int] = {}
        self.now = T0 - 2 * 86400.0
        # The inventory's first-listing time is the store's clock: the simulated one.
        monkeypatch.setattr(
            "collector.store.sqlite_inventory.time", types.SimpleNamespace(time=lambda: self.now)
        )

    async def send(self, device: str, ts: float, *, broken: bool = False, offline: bool = False):
        seq = self.seqs[device] = self.seqs.get(device, 0) + 1
        if offline:
            body = encode(presence(device, seq, False, ts))
            t = topic(device, Kind.PRESENCE)
        else:
            faults = (FaultCode.SIM_FAILURE,) if broken else ()
            body = encode(state(device, seq, ts, faults=faults, commune=None))
            t = topic(device, Kind.STATE)
        m = self.ing.prepare(t, body, received_at=self.now)
        assert m is not None
        await self.repo.write_batch([m], late_after_s=600)

    async def list(self, devices: list[InventoryDevice]) -> None:
        await self.repo.upsert_inventory(devices, remove_missing=True)


def _device(i: int, install_date: str = "") -> InventoryDevice:
    return InventoryDevice(
        device_id=f"dev-{i:02d}",
        commune_code=f"xa-{i % 3}",
        commune_name=f"X{i % 3}",
        position=i,
        install_date=install_date,
    )


async def _kept(repo: SQLiteRepository) -> list[float]:
    rows = await repo._all("SELECT DISTINCT kept_until FROM availability_kept")
    return sorted(float(r[0]) for r in rows)


async def _assert_same(repo: SQLiteRepository, t: float) -> dict[str, tuple[float, float]]:
    got = await repo.availability_seconds(T0, t)
    want = {tl.device_id: counted_seconds(tl, T0, t) for tl in await repo.status_timelines(T0, t)}
    assert set(got) == set(want), t
    for device, (seconds, working) in want.items():
        g = got[device]
        assert g[0] == pytest.approx(seconds, abs=1e-6), (device, t)
        assert g[1] == pytest.approx(working, abs=1e-6), (device, t)
    return got


async def _assert_same_evaluation(repo: SQLiteRepository, as_of: dt.datetime) -> None:
    devices = await repo.list_inventory()
    got = await monthly_evaluation(repo, devices, as_of=as_of)
    start = month_start(as_of)
    timelines = await repo.status_timelines(start.timestamp(), as_of.timestamp())
    want = evaluate(
        devices,
        timelines,
        start=start,
        end=as_of,
        label=lambda d: commune_label(d.commune_kind, d.commune_name, "vi"),
    )
    assert got == want


@pytest.mark.parametrize("seed", [1, 2])
async def test_kept_sums_equal_a_recount_through_random_history(
    repo: SQLiteRepository, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    rng = random.Random(seed)
    fleet = Fleet(repo, monkeypatch)
    listed = [_device(i, "2026-03-04" if i == 3 else "") for i in range(8)]
    await fleet.list(listed)
    for d in listed[:6]:  # two clusters never report before the month starts
        await fleet.send(d.device_id, fleet.now - rng.uniform(0, 3600), broken=rng.random() < 0.3)
    fleet.now = T0 + rng.uniform(0, 2 * HOUR)
    next_id = len(listed)
    advanced = late_inside = 0
    for step in range(45):
        fleet.now += rng.uniform(0.2, 7) * HOUR
        for d in rng.sample(listed, k=rng.randint(0, len(listed))):
            await fleet.send(
                d.device_id,
                fleet.now - rng.uniform(0, 300),
                broken=rng.random() < 0.3,
                offline=rng.random() < 0.1,
            )
        if rng.random() < 0.4:  # a backlog: reports from hours or days ago
            kept = await _kept(repo)
            d = rng.choice(listed)
            ts = max(T0 - HOUR, fleet.now - rng.uniform(0.5, 72) * HOUR)
            late_inside += bool(kept and ts <= kept[-1])
            await fleet.send(d.device_id, ts, broken=rng.random() < 0.5)
        if rng.random() < 0.3:
            await repo.mark_silent_offline(fleet.now, rng.choice([600.0, 2700.0, 4 * HOUR]))
        if rng.random() < 0.12:  # the inventory changes: a cluster added, one removed
            if rng.random() < 0.6:
                listed.append(_device(next_id, rng.choice(["", "2026-03-10", "2026-02-01"])))
                next_id += 1
            else:
                listed.remove(rng.choice(listed))
            await fleet.list(listed)
        before = await _kept(repo)
        moments = [
            fleet.now,
            fleet.now - rng.uniform(0, 5) * HOUR,
            fleet.now + rng.uniform(0, 3) * HOUR,
            fleet.now,
        ]
        rng.shuffle(moments)
        for t in moments:
            await _assert_same(repo, max(T0, t))
        advanced += (await _kept(repo)) != before
        if step % 9 == 0:
            as_of = dt.datetime.fromtimestamp(fleet.now, TZ)
            await _assert_same_evaluation(repo, as_of)
    assert advanced > 5  # the kept path was taken, not only recounts
    assert late_inside > 0  # and late history fell before what was kept
    assert len(await _kept(repo)) <= 1  # one kept moment per month start


async def test_late_history_before_the_kept_moment_drops_the_kept_sums(
    repo: SQLiteRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = Fleet(repo, monkeypatch)
    devices = [_device(i) for i in range(3)]
    await fleet.list(devices)
    fleet.now = T0 + HOUR
    for d in devices:
        await fleet.send(d.device_id, T0 + HOUR)
    fleet.now = T0 + 20 * HOUR + 600
    got = await _assert_same(repo, fleet.now)
    assert got["dev-01"] == (20 * HOUR + 600, 19 * HOUR + 600)
    assert await _kept(repo) == [T0 + 19 * HOUR]  # the last whole hour an hour back
    # A report from before the kept moment arrives late: dev-01 was broken from +5 h.
    await fleet.send("dev-01", T0 + 5 * HOUR, broken=True)
    assert await _kept(repo) == []
    got = await _assert_same(repo, fleet.now)
    assert got["dev-01"] == (20 * HOUR + 600, 4 * HOUR)
    # One after it (in flight) leaves the kept sums be and still counts.
    await fleet.send("dev-02", T0 + 19.5 * HOUR, broken=True)
    assert await _kept(repo) == [T0 + 19 * HOUR]
    got = await _assert_same(repo, fleet.now)
    assert got["dev-02"] == (20 * HOUR + 600, 18.5 * HOUR)
    # The inventory changing drops them too.
    await fleet.list(devices[:2])
    assert await _kept(repo) == []
    assert set(await _assert_same(repo, fleet.now)) == {"dev-00", "dev-01"}


async def test_a_cluster_counting_from_its_first_report_after_the_kept_moment(
    repo: SQLiteRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Listed with no listing time (rows from before listings were kept) and no
    report, a cluster counts at every moment; its first report, after the kept
    moment, makes it count from then, in the past too."""
    fleet = Fleet(repo, monkeypatch)
    await fleet.list([_device(0), _device(1)])
    async with repo._tx() as db:
        await db.execute("UPDATE inventory SET listed_at = NULL")
    fleet.now = T0 + 30 * HOUR
    await fleet.send("dev-00", T0 + HOUR)
    got = await _assert_same(repo, fleet.now)
    assert got["dev-01"] == (30 * HOUR, 0.0)
    assert await _kept(repo) == [T0 + 29 * HOUR]
    fleet.now += 600
    await fleet.send("dev-01", fleet.now - 60)
    assert await _kept(repo) == [T0 + 29 * HOUR]
    got = await _assert_same(repo, fleet.now)
    assert got["dev-01"] == (60.0, 60.0)
