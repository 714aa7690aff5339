"""The store's contract on both engines (the ``repo`` fixture runs each test on
SQLite and on PostgreSQL), for what several collector instances share, and the
PostgreSQL translation of the roles' SQL."""

from __future__ import annotations

import asyncio
import re
import time

import msgspec
import pytest

from collector.api import summarize, summarize_tally
from collector.config import IngestConfig
from collector.ingest import Ingestor
from collector.metrics import IngestStats
from collector.model import InventoryDevice
from collector.store.base import Conflict, Role, TicketState
from collector.store.postgres import pg_migration, pg_sql
from collector.store.sqlite import SQLiteRepository
from fleet_protocol import Fault, FaultCode, Kind, encode, topic
from tests.collector.conftest import state


async def report(repo: SQLiteRepository, *devices: str) -> None:
    ing = Ingestor(repo, IngestConfig(), IngestStats())
    now = time.time()
    msgs = [
        ing.prepare(topic(d, Kind.STATE), encode(state(d, 1, now)), received_at=now)
        for d in devices
    ]
    await repo.write_batch([m for m in msgs if m], late_after_s=600)


async def test_a_periodic_round_runs_once_across_instances_and_passes_on_when_the_holder_dies(
    repo: SQLiteRepository,
) -> None:
    now = 1_000_000.0
    assert await repo.claim_periodic("fleet sweep", "a:1", now=now, lease_s=9.0)
    # Another instance in the same round: refused; the holder renews.
    assert not await repo.claim_periodic("fleet sweep", "b:2", now=now + 1, lease_s=9.0)
    assert await repo.claim_periodic("fleet sweep", "a:1", now=now + 5, lease_s=9.0)
    assert not await repo.claim_periodic("fleet sweep", "b:2", now=now + 13, lease_s=9.0)
    # Other jobs are claimed on their own.
    assert await repo.claim_periodic("repair sweep", "b:2", now=now + 13, lease_s=9.0)
    # a:1 dies: once its lease (renewed at +5, until +14) ends, b:2 takes the job.
    assert await repo.claim_periodic("fleet sweep", "b:2", now=now + 14.5, lease_s=9.0)
    assert not await repo.claim_periodic("fleet sweep", "a:1", now=now + 15, lease_s=9.0)


async def test_concurrent_claims_elect_exactly_one(repo: SQLiteRepository) -> None:
    now = time.time()
    won = await asyncio.gather(
        *(repo.claim_periodic("retention", f"i:{i}", now=now, lease_s=30) for i in range(8))
    )
    assert sum(won) == 1


async def test_a_second_active_ticket_is_refused_and_the_transaction_goes_on(
    repo: SQLiteRepository,
) -> None:
    await report(repo, "dev-1", "dev-2")
    first = await repo.open_ticket("dev-1", actor="op", at=100.0, note="", cause=None)
    with pytest.raises(Conflict) as exc:
        await repo.open_ticket("dev-1", actor="op", at=101.0, note="", cause=None)
    assert exc.value.ticket_id == first.id  # looked up after the refused insert
    other = await repo.open_ticket("dev-2", actor="op", at=102.0, note="", cause=None)
    assert other.id > first.id


async def test_a_user_name_taken_twice_is_a_conflict(repo: SQLiteRepository) -> None:
    await repo.add_user("an", role=Role.ADMIN, communes=frozenset(), password_hash="h")
    with pytest.raises(Conflict):
        await repo.add_user("an", role=Role.ADMIN, communes=frozenset(), password_hash="h")


async def test_hostile_text_with_nul_is_stored_without_failing_the_batch(
    repo: SQLiteRepository,
) -> None:
    """PostgreSQL's text cannot hold NUL: a device's evidence string with one must
    not make the batch (and every other device's messages in it) fail."""
    ing = Ingestor(repo, IngestConfig(), IngestStats())
    now = time.time()
    good = state("dev-ok", 1, now)
    bad = state("dev-nul", 1, now, faults=(FaultCode.SIM_FAILURE,))
    bad = msgspec.structs.replace(
        bad, faults=[Fault.of(FaultCode.SIM_FAILURE, now - 60, "CME ERROR\x00 13")]
    )
    msgs = [
        ing.prepare(topic(dev, Kind.STATE), encode(m), received_at=now)
        for dev, m in (("dev-ok", good), ("dev-nul", bad))
    ]
    assert all(m is not None for m in msgs)
    result = await repo.write_batch([m for m in msgs if m], late_after_s=600)
    assert result.stored == 2
    faults = await repo.list_faults("dev-nul")
    assert [f.code for f in faults] == [FaultCode.SIM_FAILURE]
    assert "13" in faults[0].evidence


def test_translation_of_the_sqlite_idioms() -> None:
    t = pg_sql("INSERT OR IGNORE INTO events (a, b) VALUES (?,?)")
    assert t.sql == "INSERT INTO events (a, b) VALUES (%s,%s) ON CONFLICT DO NOTHING"
    t = pg_sql("INSERT OR REPLACE INTO inventory (device_id, x, y) VALUES (?,?,?)")
    assert t.sql.endswith("ON CONFLICT (device_id) DO UPDATE SET x = EXCLUDED.x, y = EXCLUDED.y")
    t = pg_sql("SELECT ?2 = 1, ? FROM t WHERE k LIKE 'a%' AND c = '?'")
    assert t.sql == "SELECT %s = 1, %s FROM t WHERE k LIKE 'a%%' AND c = '?'"
    assert t.params(["x", "y", "z"]) == ["y", "z"]
    t = pg_sql("SELECT 1 WHERE a IN () OR b NOT IN ()")
    assert t.sql == (
        "SELECT 1 WHERE a IN (SELECT NULL WHERE FALSE) OR b NOT IN (SELECT NULL WHERE FALSE)"
    )
    t = pg_sql("INSERT INTO tickets (device_id) VALUES (?)")
    assert t.returns_id and t.sql.endswith("RETURNING id")
    assert "string_agg(" in pg_sql("SELECT group_concat(a, ', ') FROM t").sql
    assert (
        "position('\"m\"'::bytea in payload)"
        in pg_sql("SELECT 1 WHERE instr(CAST(payload AS TEXT), '\"m\"') > 0").sql
    )


def test_ddl_of_every_migration_maps_to_postgres_types() -> None:
    from collector.store.migrations import MIGRATIONS

    ddl = "\n".join(pg_migration(m) for m in MIGRATIONS)
    assert "BLOB" not in ddl and "WITHOUT ROWID" not in ddl and " REAL" not in ddl
    assert re.search(r'"offset"\s+DOUBLE PRECISION', ddl)
    assert "id         BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY" in ddl


async def _kept_equals_recomputed(repo: SQLiteRepository) -> None:
    rows = await repo.list_devices(limit=10**7)
    tally, _ = await repo.fleet_tally()
    assert summarize_tally(tally) == summarize(rows)
    for commune in {r.commune_code for r in rows} | {"xa-nowhere"}:
        scoped, _ = await repo.fleet_tally([commune])
        assert summarize_tally(scoped) == summarize([r for r in rows if r.commune_code == commune])
    each, _ = await repo.fleet_tally(each=True)
    assert sum(r[-1] for r in each) == len(rows)


async def test_the_kept_counts_follow_every_change_of_the_fleet(repo: SQLiteRepository) -> None:
    """Reports, silence, presence, tickets and the inventory each move the counts
    exactly as a recount of every cluster would; the version moves with them."""
    inventory = [
        InventoryDevice(device_id=f"dev-{i}", commune_code=f"xa-0{i % 3}", commune_name="X",
                        position=i)
        for i in range(9)
    ]  # fmt: skip
    await repo.upsert_inventory(inventory, remove_missing=False)
    await _kept_equals_recomputed(repo)
    _, v0 = await repo.fleet_tally()
    ing = Ingestor(repo, IngestConfig(), IngestStats())
    now = time.time()
    msgs = [
        ing.prepare(
            topic(f"dev-{i}", Kind.STATE),
            encode(state(f"dev-{i}", 1, now - 300, commune=f"xa-0{i % 3}",
                         faults=(FaultCode.SIM_FAILURE,) if i % 4 == 0 else ())),
            received_at=now - 300,
        )
        for i in range(7)
    ]  # fmt: skip
    msgs.append(
        ing.prepare(topic("dev-x", Kind.STATE), encode(state("dev-x", 1, now)), received_at=now)
    )  # fmt: skip  (not in the inventory)
    await repo.write_batch([m for m in msgs if m], late_after_s=600)
    await _kept_equals_recomputed(repo)
    _, v1 = await repo.fleet_tally()
    assert v1 > v0
    t = await repo.open_ticket("dev-0", actor="op", at=now, note="", cause=None)
    await repo.start_ticket(t.id, actor="op", at=now, contractor="c", technician="t", note="")
    await _kept_equals_recomputed(repo)
    scoped_before = (await repo.fleet_tally(["xa-00"]))[1]
    other_before = (await repo.fleet_tally(["xa-01"]))[1]
    await repo.comment_ticket(t.id, actor="op", at=now + 1, note="on the way")
    assert (await repo.fleet_tally(["xa-00"]))[1] > scoped_before  # its page changed
    assert (await repo.fleet_tally(["xa-01"]))[1] == other_before  # that one did not
    await repo.mark_silent_offline(now + 10_000, 600)
    await _kept_equals_recomputed(repo)
    await repo.close_ticket(t.id, actor="op", at=now, state=TicketState.RESOLVED, note="")
    await repo.upsert_inventory(inventory[:4], remove_missing=True)
    await _kept_equals_recomputed(repo)


async def test_past_counts_are_kept_and_dropped_when_late_history_changes_them(
    repo: SQLiteRepository,
) -> None:
    inventory = [
        InventoryDevice(device_id=f"dev-{i}", commune_code="xa-01", commune_name="X", position=i)
        for i in range(3)
    ]
    await repo.upsert_inventory(inventory, remove_missing=False)
    ing = Ingestor(repo, IngestConfig(), IngestStats())
    now = time.time()
    t0, t1 = now - 7200, now - 3600

    async def send(
        dev: str, seq: int, ts: float, faults: tuple[FaultCode, ...] = (), at: float | None = None
    ) -> None:
        at = ts if at is None else at
        m = ing.prepare(
            topic(dev, Kind.STATE), encode(state(dev, seq, ts, faults=faults)), received_at=at
        )
        assert m is not None
        await repo.write_batch([m], late_after_s=600)

    for i in range(3):
        await send(f"dev-{i}", 1, t0)
    assert await repo.counts_as_of(t1, keep_before=now) == {"*": (3, 0), "xa-01": (3, 0)}
    kept = await repo._all("SELECT count(*) FROM counts_as_of WHERE as_of = ?", (t1,))
    assert kept[0][0] == 2
    # A report from before t1 arrives late (a backlog): dev-1 was broken by then.
    await send("dev-1", 2, t1 - 600, faults=(FaultCode.SIM_FAILURE,), at=now)
    assert await repo.counts_as_of(t1, keep_before=now) == {"*": (2, 1), "xa-01": (2, 1)}
    # Moments not in the past (after keep_before) are never kept.
    await repo.counts_as_of(now + 1, keep_before=now)
    assert not await repo._all("SELECT 1 FROM counts_as_of WHERE as_of > ?", (now,))
