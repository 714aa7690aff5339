"""Outbox: real SQLite (WAL) on disk, including a kill -9 of a writer process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_agent.errors import OutboxError
from edge_agent.outbox import Outbox, Priority
from fleet_protocol import (
    Event,
    EventType,
    Fault,
    FaultCode,
    Kind,
    StateReport,
    decode,
)

DEV = "dev-001"


def _state(heartbeat: bool = False, pad: int = 0) -> Callable[[int], StateReport]:
    def build(seq: int) -> StateReport:
        return StateReport(
            v=1, device=DEV, seq=seq, ts=time.time(), heartbeat=heartbeat, commune="x" * pad
        )

    return build


def _fault_event(seq: int) -> Event:
    return Event(
        v=1,
        device=DEV,
        seq=seq,
        ts=time.time(),
        type=EventType.FAULT_RAISED,
        fault=Fault.of(FaultCode.SIM_FAILURE, time.time(), "+CME ERROR: 13 on AT+CPIN?"),
    )


async def test_put_batch_ack_deletes_exactly_what_was_acked(tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path / "o.db", device=DEV, max_bytes=1 << 20)
    try:
        items = [await box.put(Kind.STATE, _state(), Priority.REPORT) for _ in range(5)]
        seqs = [i.seq for i in items if i]
        assert seqs == sorted(seqs) and len(set(seqs)) == 5
        batch = await box.batch(3)
        assert [b.seq for b in batch] == seqs[:3]
        assert batch[0].topic == f"loa/v1/{DEV}/state"
        msg = decode(Kind.STATE, batch[0].payload)
        assert msg.seq == seqs[0]
        await box.ack([seqs[0], seqs[2]])  # seq[1] was not acknowledged: it stays
        assert [b.seq for b in await box.all()] == [seqs[1], seqs[3], seqs[4]]
        assert box.depth == 3
        assert box.oldest is not None
    finally:
        await box.aclose()


async def test_seq_is_persisted_and_strictly_increasing_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    box = await Outbox.open(path, device=DEV, max_bytes=1 << 20)
    first = box.next_seq
    # A fresh database starts at the clock in ms: a wiped SD card never reuses seqs.
    assert abs(first - time.time() * 1000) < 60_000
    a = await box.put(Kind.STATE, _state(), Priority.REPORT)
    will = await box.reserve_seq()
    await box.ack([a.seq] if a else [])
    await box.aclose()
    box = await Outbox.open(path, device=DEV, max_bytes=1 << 20)
    try:
        b = await box.put(Kind.STATE, _state(), Priority.REPORT)
        assert a and b and a.seq < will < b.seq
        assert box.depth == 1
    finally:
        await box.aclose()


async def test_full_outbox_thins_heartbeats_first_and_never_evicts_fault_events(
    tmp_path: Path,
) -> None:
    box = await Outbox.open(tmp_path / "o.db", device=DEV, max_bytes=64 * 1024)
    try:
        faults = []
        for i in range(40):
            if i % 10 == 0:
                ev = await box.put(Kind.EVENT, _fault_event, Priority.FAULT)
                assert ev
                faults.append(ev.seq)
            await box.put(Kind.STATE, _state(heartbeat=True, pad=40), Priority.HEARTBEAT)
        reports = [await box.put(Kind.STATE, _state(pad=400), Priority.REPORT) for _ in range(10)]
        assert all(reports)
        hb_before = [p.seq for p in await box.all() if p.priority == Priority.HEARTBEAT]
        # Fill past the cap with reports: heartbeats go first, thinned (every other one).
        while box.evicted == 0:
            assert await box.put(Kind.STATE, _state(pad=400), Priority.REPORT)
        stored = await box.all()
        hb_after = [p.seq for p in stored if p.priority == Priority.HEARTBEAT]
        assert hb_after == hb_before[::2]
        assert box.bytes <= box.max_bytes
        assert sum(len(p.payload) for p in stored) == box.bytes
        # Keep filling: all heartbeats, then the oldest reports go; fault events stay.
        for _ in range(2000):
            await box.put(Kind.STATE, _state(pad=400), Priority.REPORT)
        stored = await box.all()
        assert not [p for p in stored if p.priority == Priority.HEARTBEAT]
        assert [p.seq for p in stored if p.priority == Priority.FAULT] == faults
        assert reports[0] and reports[0].seq not in {p.seq for p in stored}
        assert box.bytes <= box.max_bytes
    finally:
        await box.aclose()


async def test_outbox_full_of_fault_events_refuses_reports_but_keeps_faults(
    tmp_path: Path,
) -> None:
    box = await Outbox.open(tmp_path / "o.db", device=DEV, max_bytes=64 * 1024)
    try:
        while box.bytes < box.max_bytes:
            assert await box.put(Kind.EVENT, _fault_event, Priority.FAULT)
        assert await box.put(Kind.STATE, _state(), Priority.HEARTBEAT) is None
        assert await box.put(Kind.STATE, _state(), Priority.REPORT) is None
        assert box.refused == 2
        assert await box.put(Kind.EVENT, _fault_event, Priority.FAULT)  # over the cap, kept
        assert box.evicted == 0
    finally:
        await box.aclose()


async def test_unreadable_database_is_moved_aside_and_a_new_one_started(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    path.write_bytes(b"this is not an sqlite database" * 100)
    box = await Outbox.open(path, device=DEV, max_bytes=1 << 20)
    try:
        assert await box.put(Kind.STATE, _state(), Priority.REPORT)
        assert list(tmp_path.glob("o.db.corrupt-*"))
    finally:
        await box.aclose()


WRITER = """
import asyncio, sys, time
from edge_agent.errors import OutboxError
from edge_agent.outbox import Outbox, Priority
from fleet_protocol import Kind, StateReport

async def main():
    box = await Outbox.open(sys.argv[1], device="dev-001", max_bytes=1 << 24)
    while True:
        item = await box.put(
            Kind.STATE,
            lambda s: StateReport(v=1, device="dev-001", seq=s, ts=time.time()),
            Priority.REPORT,
        )
        print(item.seq, flush=True)

asyncio.run(main())
"""


def test_kill_9_mid_write_loses_no_committed_message_and_reuses_no_seq(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.stdout is not None
    committed: list[int] = []
    try:
        for line in proc.stdout:
            committed.append(int(line))
            if len(committed) >= 200:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
    assert len(committed) >= 200

    async def check() -> None:
        box = await Outbox.open(path, device=DEV, max_bytes=1 << 24)
        try:
            stored = [p.seq for p in await box.all()]
            assert set(committed) <= set(stored)
            assert stored == sorted(stored)
            nxt = await box.put(Kind.STATE, _state(), Priority.REPORT)
            assert nxt and nxt.seq > max(stored)
        finally:
            await box.aclose()

    asyncio.run(check())


async def test_unopenable_path_is_an_outbox_error_naming_it() -> None:
    with pytest.raises(OutboxError, match="forbidden"):
        await Outbox.open("/proc/forbidden/o.db", device=DEV, max_bytes=1 << 20)


async def test_handed_messages_stay_until_confirmed_and_count_against_the_cap(
    tmp_path: Path,
) -> None:
    path = tmp_path / "o.db"
    box = await Outbox.open(path, device=DEV, max_bytes=64 * 1024)
    try:
        items = [await box.put(Kind.STATE, _state(pad=40), Priority.REPORT) for _ in range(6)]
        seqs = [i.seq for i in items if i]
        first = await box.batch(4)
        await box.handed([p.seq for p in first])
        # Handed ones are not given out again, but are still held and counted.
        assert [p.seq for p in await box.batch(10)] == seqs[4:]
        assert (box.depth, box.handed_count) == (6, 4)
        held = box.bytes
        # The collector confirms 0..1 and 3 (and a seq it never had): exactly those go.
        assert await box.confirm([(seqs[0], seqs[1]), (seqs[3], seqs[3]), (1, 2)]) == 3
        assert (box.depth, box.handed_count) == (3, 1)
        assert box.bytes < held
        assert await box.confirm([(seqs[0], seqs[1])]) == 0  # confirmed twice: nothing
        # After a reconnect the unconfirmed handed one is given out again, in seq order.
        assert await box.unhand() == 1
        assert [p.seq for p in await box.batch(10)] == [seqs[2], seqs[4], seqs[5]]
        await box.handed([seqs[2]], at=100.0)
        await box.handed([seqs[4]], at=200.0)
        assert await box.unhand(handed_before=150.0) == 1
        assert [p.seq for p in await box.batch(10)] == [seqs[2], seqs[5]]
        await box.handed([seqs[2]])
        assert await box.drop_handed() == 2  # falling back to PUBACK = delivered
        assert [p.seq for p in await box.all()] == [seqs[5]]
        await box.handed([seqs[5]])
    finally:
        await box.aclose()
    # Handed marks do not outlive the process: after a restart everything is sent again.
    box = await Outbox.open(path, device=DEV, max_bytes=64 * 1024)
    try:
        assert (box.depth, box.handed_count) == (1, 0)
        assert [p.seq for p in await box.batch(10)] == [seqs[5]]
        await box.set_meta("collector_confirms", 1)
        assert await box.get_meta("collector_confirms") == 1
        assert await box.get_meta("missing", 7) == 7
    finally:
        await box.aclose()


async def test_unconfirmed_messages_are_evicted_like_any_other(tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path / "o.db", device=DEV, max_bytes=64 * 1024)
    try:
        for _ in range(40):
            item = await box.put(Kind.STATE, _state(heartbeat=True, pad=400), Priority.HEARTBEAT)
            assert item is not None
            await box.handed([item.seq])
        for _ in range(200):
            await box.put(Kind.STATE, _state(pad=400), Priority.REPORT)
        assert box.bytes <= 64 * 1024
        assert box.evicted > 0
        # The cached counters match the table.
        assert box.handed_count == sum(1 for _ in await box.all()) - len(await box.batch(1000))
    finally:
        await box.aclose()
