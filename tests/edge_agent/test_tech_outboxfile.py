"""Read-only views of the outbox: written by the real Outbox, read from the file."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from pathlib import Path

import pytest

from edge_agent import reports
from edge_agent.outbox import Outbox, Priority
from edge_agent.tech import outboxfile
from fleet_protocol import EventType, Fault, FaultCode, Kind

DEVICE = "dev-001"


async def _fill(path: Path) -> Outbox:
    box = await Outbox.open(path, device=DEVICE, max_bytes=1 << 20)
    fault = Fault.of(FaultCode.SIM_FAILURE, time.time(), "+CME ERROR: 13 on AT+CPIN?")
    await box.put(
        Kind.EVENT,
        lambda seq: reports.event(DEVICE, seq, EventType.FAULT_RAISED, fault=fault),
        Priority.FAULT,
    )
    for _ in range(3):
        await box.put(
            Kind.STATE,
            lambda seq: reports.heartbeat(DEVICE, seq, [fault], outbox_depth=1),
            Priority.HEARTBEAT,
        )
    await box.put(
        Kind.EVENT,
        lambda seq: reports.event(
            DEVICE, seq, EventType.RECOVERY, action="modem_soft_reset", detail="AT+CFUN=1,1: OK"
        ),
        Priority.EVENT,
    )
    return box


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_summary_counts_by_kind_while_the_agent_writes(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    box = await _fill(path)
    try:
        s = outboxfile.summary(path)
        assert s["depth"] == box.depth == 5
        assert s["bytes"] == box.bytes
        assert s["kinds"]["event"]["count"] == 2 and s["kinds"]["state"]["count"] == 3
        assert s["oldest"] == pytest.approx(box.oldest)
        assert s["next_seq"] == box.next_seq
        events = outboxfile.pending_events(path, 10)
        assert [e["type"] for e in events] == ["fault_raised", "recovery"]
        assert outboxfile.pending_events(path, 1)[0]["action"] == "modem_soft_reset"
    finally:
        await box.aclose()


async def test_reading_never_changes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    await (await _fill(path)).aclose()
    before = _digest(path)
    outboxfile.summary(path)
    outboxfile.pending_events(path, 5)
    assert _digest(path) == before
    assert not Path(f"{path}-wal").exists() and not Path(f"{path}-shm").exists()


async def test_an_undecodable_event_is_listed_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    await (await _fill(path)).aclose()
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO outbox (seq, topic, payload, retain, priority, created)"
            " VALUES (?, ?, ?, 0, 2, ?)",
            (10**15, f"loa/v1/{DEVICE}/event", b"\xff not json", time.time()),
        )
    events = outboxfile.pending_events(path, 10)
    assert "undecodable" in events[-1] and events[-1]["seq"] == 10**15
    assert len(events) == 3


def test_missing_or_foreign_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(outboxfile.OutboxFileError, match="no such file"):
        outboxfile.summary(tmp_path / "nope.sqlite")
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(outboxfile.OutboxFileError, match=str(junk)):
        outboxfile.summary(junk)
