"""Ingest writes of different devices run at once on PostgreSQL; of one device, in turn.

``PostgresRepository._tx(ingest=True)`` takes the write lock shared, and one lock
per device with news once its messages are in (``_lock_devices``); every other
write takes the write lock alone. Several collector
instances (here several repositories, each with its own connection, on one
database) writing the same fleet at the same time, replays and one device's
messages split across them included, must leave what one instance writing
everything in order leaves: every seq once, the same states, fault episodes and
kept counts.
"""

from __future__ import annotations

import asyncio
import random
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from collector.config import IngestConfig
from collector.ingest import Ingestor
from collector.metrics import IngestStats
from collector.store.base import IncomingMessage
from collector.store.postgres import PostgresRepository, device_lock_key
from collector.store.sqlite import SQLiteRepository
from fleet_protocol import Fault, FaultCode, Kind, encode, topic
from tests.collector.conftest import state, wait_for
from tests.collector.test_store_contract import _kept_equals_recomputed

pytestmark = pytest.mark.integration

LATE = IngestConfig().late_after_s


@pytest.fixture
async def instances(pg_url: str) -> AsyncIterator[list[PostgresRepository]]:
    repos = [await PostgresRepository.open(pg_url) for _ in range(4)]
    try:
        yield repos
    finally:
        for r in repos:
            await r.close()


def prepared(
    ingestor: Ingestor, device: str, seq: int, ts: float, t0: float = 0.0
) -> IncomingMessage:
    """Report ``seq``: the station stream lost in reports 3-5 and 9-11 (each episode's
    fault carries the time it was first seen, as the agent's do)."""
    lost = (seq // 3) % 2 == 1
    msg = state(
        device,
        seq,
        ts,
        faults=(FaultCode.STREAM_LOST,) if lost else (),
        commune=f"xa-{zlib.crc32(device.encode()) % 3:02d}",
    )
    if lost:
        first = t0 + 60.0 * (seq - seq % 3)
        msg = msgspec.structs.replace(
            msg, faults=[Fault.of(FaultCode.STREAM_LOST, first, "no audio")]
        )
    m = ingestor.prepare(topic(device, Kind.STATE), encode(msg), received_at=ts + 1.0)
    assert m is not None
    return m


async def waiting(repo: PostgresRepository, locktype: str = "advisory", n: int = 1) -> bool:
    """Whether at least ``n`` locks of ``locktype`` are waited for (pg_locks)."""
    rows = await repo._all(
        "SELECT count(*) AS n FROM pg_locks WHERE locktype = ? AND NOT granted", (locktype,)
    )
    return int(rows[0]["n"]) >= n


async def test_an_ingest_write_waits_only_for_its_own_devices_and_for_exclusive_writes(
    instances: list[PostgresRepository],
) -> None:
    a, b, c, watcher = instances
    ingestor = Ingestor(b, IngestConfig(), IngestStats())
    t = time.time() - 60
    assert device_lock_key("dev-1") != device_lock_key("dev-2")
    await b.write_batch([prepared(ingestor, "dev-3", 1, t)], late_after_s=LATE)
    async with a._tx(ingest=True) as db:  # A's write of dev-1, dev-3
        await a._lock_devices(db, ["dev-1", "dev-3"])
        # A replay changes no state: it waits for no device.
        replay = await asyncio.wait_for(
            b.write_batch([prepared(ingestor, "dev-3", 1, t)], late_after_s=LATE), 10
        )
        assert (replay.stored, replay.duplicates) == (0, 1)
        # Another device's write goes through beside it...
        other = await asyncio.wait_for(
            b.write_batch([prepared(ingestor, "dev-2", 1, t)], late_after_s=LATE), 10
        )
        assert other.stored == 1
        # ...the same device's waits for it, and so does a write that must be alone.
        same = asyncio.create_task(
            b.write_batch([prepared(ingestor, "dev-1", 1, t)], late_after_s=LATE)
        )
        await wait_for(lambda: waiting(watcher), what="dev-1's write waiting")
        assert not same.done()
        alone = asyncio.create_task(c.mark_silent_offline(time.time(), 3600.0))
        await wait_for(
            lambda: waiting(watcher, n=2), what="the exclusive write waiting beside dev-1's"
        )
        assert not alone.done()
    assert (await asyncio.wait_for(same, 10)).stored == 1
    await asyncio.wait_for(alone, 10)
    assert await a.stored_seqs("dev-1") == [1] and await a.stored_seqs("dev-2") == [1]


async def test_instances_writing_one_fleet_at_once_leave_what_one_in_order_leaves(
    instances: list[PostgresRepository], tmp_path: Path
) -> None:
    ingestor = Ingestor(instances[0], IngestConfig(), IngestStats())
    t0 = time.time() - 3600
    devices = [f"dev-{i:03d}" for i in range(60)]
    steps = 11  # the stream is lost in the last reports: a fault open at the end
    traffic = [
        prepared(ingestor, d, k, t0 + 60.0 * k + i, t0)
        for k in range(1, steps + 1)
        for i, d in enumerate(devices)
    ]
    # Coalesced batches across devices, as the ingest loop takes them; a fifth of
    # them delivered again (a broker's redelivery), to another instance.
    batches = [traffic[j : j + 25] for j in range(0, len(traffic), 25)]
    rnd = random.Random(20)
    batches += rnd.sample(batches, len(batches) // 5)
    queue: asyncio.Queue[list[IncomingMessage]] = asyncio.Queue()
    for batch in batches:
        queue.put_nowait(batch)

    async def instance(repo: PostgresRepository) -> int:
        stored = 0
        while not queue.empty():
            stored += (await repo.write_batch(queue.get_nowait(), late_after_s=LATE)).stored
        return stored

    stored = await asyncio.gather(*(instance(r) for r in instances))
    assert sum(stored) == len(traffic)  # replays refused, nothing lost
    assert all(n > 0 for n in stored)  # every instance took part
    pg = instances[0]
    for d in devices:
        assert await pg.stored_seqs(d) == list(range(1, steps + 1)), d
    await _kept_equals_recomputed(pg)

    serial = await SQLiteRepository.open(tmp_path / "one.db", synchronous="normal")
    try:
        await serial.migrate()
        for j in range(0, len(traffic), 25):
            await serial.write_batch(traffic[j : j + 25], late_after_s=LATE)
        want = {r.device_id: r for r in await serial.list_devices(limit=10**6)}
        got = {r.device_id: r for r in await pg.list_devices(limit=10**6)}
        assert set(got) == set(want)
        for d, row in want.items():
            assert got[d] == row, d  # state, since, last seq and the merged report
            # The faults open now (an episode's edges follow the order a device's
            # reports were taken in, which two instances may swap, lock or no lock).
            open_now = [
                (f.code, f.since) for f in await serial.list_faults(d) if f.cleared_at is None
            ]
            assert open_now == [(FaultCode.STREAM_LOST, t0 + 540.0)], d
            assert [
                (f.code, f.since) for f in await pg.list_faults(d) if f.cleared_at is None
            ] == open_now, d
        end = t0 + 60.0 * (steps + 1)
        assert await pg.statuses_as_of(end) == await serial.statuses_as_of(end)
    finally:
        await serial.close()


async def test_an_ingest_write_chosen_as_a_deadlock_victim_is_tried_again_whole(
    instances: list[PostgresRepository], pg_url: str
) -> None:
    """Another transaction holds the fleet's kept count, then waits for the device
    lock the ingest write holds while it waits for that count: PostgreSQL aborts
    the ingest write (it waited first; the other side waits 20 s before it looks),
    which is tried again and stores its message once."""
    import psycopg

    from collector.store.postgres import _DEVICE_LOCKS

    repo, watcher = instances[0], instances[1]
    ingestor = Ingestor(repo, IngestConfig(), IngestStats())
    t = time.time() - 60
    await repo.write_batch([prepared(ingestor, "dev-1", 1, t)], late_after_s=LATE)
    async with await psycopg.AsyncConnection.connect(pg_url) as other:
        await other.execute("SET deadlock_timeout = '20s'")
        await other.execute("SELECT n FROM fleet_tally WHERE commune = '*' FOR UPDATE")
        # A new device: the write must add it to the fleet's count, held above.
        write = asyncio.create_task(
            repo.write_batch([prepared(ingestor, "dev-2", 1, t)], late_after_s=LATE)
        )
        await wait_for(
            lambda: waiting(watcher, "transactionid"), what="the write waiting on the count"
        )
        await other.execute(
            "SELECT pg_advisory_xact_lock(%s, %s)", (_DEVICE_LOCKS, device_lock_key("dev-2"))
        )  # returns once PostgreSQL aborted the ingest write, which held it
        await other.rollback()
    assert (await asyncio.wait_for(write, 30)).stored == 1
    assert repo.deadlock_retries == 1
    assert await repo.stored_seqs("dev-2") == [1]
    await _kept_equals_recomputed(repo)
