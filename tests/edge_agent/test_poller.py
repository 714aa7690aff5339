"""Pollers: overdue polls are skipped and counted; failures logged once, recovery once."""

from __future__ import annotations

import asyncio
import logging

import pytest

from edge_agent.poller import Poller


class ScriptedProbe:
    """A probe whose reads follow a script: a number (seconds to take) or an exception."""

    name = "scripted"

    def __init__(self, script: list[float | Exception]) -> None:
        self.script = list(script)
        self.reads = 0

    async def read(self) -> int:
        self.reads += 1
        step = self.script.pop(0) if self.script else 0.0
        if isinstance(step, Exception):
            raise step
        await asyncio.sleep(step)
        return self.reads

    async def aclose(self) -> None:
        return None


async def _run_until(poller: Poller[int], polls: int, timeout: float = 10.0) -> None:
    task = asyncio.create_task(poller.run())
    try:
        for _ in range(int(timeout / 0.01)):
            if poller.polls + poller.failures >= polls:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError(f"{polls} polls not done in {timeout} s")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_overdue_poll_is_skipped_not_queued() -> None:
    """The loop stalls for 3.5 intervals during read 2 (an SD card stall, a suspend):
    the slots it overran are skipped and counted, not run back to back."""
    clock = [0.0]

    class Stalling(ScriptedProbe):
        async def read(self) -> int:
            self.reads += 1
            clock[0] += self.script.pop(0) if self.script else 0.0
            return self.reads

    got: list[int] = []
    poller = Poller(Stalling([0.0, 0.35, 0.0, 0.0]), 0.1, got.append, monotonic=lambda: clock[0])
    await _run_until(poller, 4)
    # Read 2 ends at 0.35 with slots 0.2 and 0.3 overrun: both skipped, next poll at 0.4.
    assert poller.skipped == 2
    assert got == [1, 2, 3, 4]


async def test_read_longer_than_the_interval_is_a_counted_failure() -> None:
    probe = ScriptedProbe([5.0, 0.0])
    poller = Poller(probe, 0.2, lambda r: None)
    await _run_until(poller, 2)
    assert poller.failures == 1 and poller.polls == 1


async def test_failure_logged_once_and_recovery_once(caplog: pytest.LogCaptureFixture) -> None:
    probe = ScriptedProbe([RuntimeError("boom")] * 5 + [0.0, 0.0])
    poller = Poller(probe, 0.01, lambda r: None)
    with caplog.at_level(logging.INFO, logger="edge_agent.poller"):
        await _run_until(poller, 7)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    recovered = [r for r in caplog.records if "reading again" in r.getMessage()]
    assert poller.failures == 5 and len(errors) == 1 and len(recovered) == 1
    assert "boom" in errors[0].getMessage()
