"""Ingest's in-memory structures stay bounded under a flood (bench/ingest_flood.py has the RSS)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from collector.config import IngestConfig
from collector.ingest import Confirmations, Ingestor, LogOnce, _Queue, _Received
from collector.metrics import IngestStats
from collector.store.sqlite import SQLiteRepository


def test_log_once_stops_growing_at_its_limit(caplog: pytest.LogCaptureFixture) -> None:
    once = LogOnce(100, "rejections")
    firsts = sum(once.first(f"dev-{i:05d}", "json") for i in range(10_000))
    assert firsts == 100 and len(once) == 100
    assert not once.first("dev-00001", "json")  # seen: never again
    assert sum("no longer logging" in r.getMessage() for r in caplog.records) == 1
    assert len(LogOnce(10, "x")._seen) == 0
    huge = LogOnce(10, "x")
    huge.first("x" * 100_000, "json")
    assert max(len(s) for s, _ in huge._seen) == 120  # keys are capped too


def test_confirmations_ask_for_a_flush_before_they_grow_past_their_bounds() -> None:
    c = Confirmations(max_devices=50, max_seqs=1000)
    due = [c.add("dev-001", s, stored=True) for s in range(999)]
    assert not any(due) and not c.due.is_set()
    assert c.add("dev-001", 999, stored=True) and c.due.is_set()
    acks = c.take()
    assert len(c) == 0 and not c.due.is_set()
    assert [a.stored for a in acks] == [[[0, 999]]]
    # Many devices: due once past max_devices.
    assert not any(c.add(f"dev-{i:03d}", 1, stored=True) for i in range(50))
    assert c.add("dev-999", 1, stored=False)
    # Thousands of scattered seqs split into Acks of at most 1000 ranges each.
    c.take()
    for s in range(0, 5000, 2):
        c.add("dev-001", s, stored=True)
    acks = c.take()
    assert [len(a.stored) for a in acks] == [1000, 1000, 500]


async def test_a_rejected_message_is_queued_without_its_payload(tmp_path: Path) -> None:
    import aiomqtt

    repo = await SQLiteRepository.open(tmp_path / "c.db")
    try:
        ingestor = Ingestor(repo, IngestConfig(), IngestStats())
        queue_cls = type("_Q", (_Queue,), {"instances": [], "ingestor": ingestor})
        q = queue_cls()
        big = aiomqtt.Message(
            "loa/v1/dev-001/state",
            b'{"pad":"' + b"x" * 70_000 + b'"}',
            qos=1,
            retain=False,
            mid=7,
            properties=None,
        )
        q.put_nowait(big)
        item = q.get_nowait()
        assert item == _Received(7, 1, None)
        assert ingestor.stats.rejected == {"oversize": 1}
    finally:
        await repo.close()


def test_quiet_logging_is_announced_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    once = LogOnce(1, "replay conflicts")
    once.first("a", "k")
    for i in range(100):
        once.first(f"b{i}", "k")
    assert [r.getMessage() for r in caplog.records] == [
        "replay conflicts from more than 1 sources: no longer logging new ones"
    ]
