"""One poller per probe: read on a fixed schedule, hand readings on, never stop.

- Polls are aligned to a fixed grid of ``interval`` seconds. A poll that ends
  after the next one was due does not cause a burst of catch-up polls: the
  missed slots are skipped and counted (``skipped``), never queued.
- A read that raises (a programming error, since probes report hardware
  failures in their readings) or overruns ``interval`` is counted, logged once
  when the failing starts and once when it recovers, and the poller carries on.
- One poller's failure never touches another: each runs in its own task.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

log = logging.getLogger(__name__)

R_co = TypeVar("R_co", covariant=True)


class Readable(Protocol[R_co]):
    """What a poller needs of a probe (``firmware_shims.readings.Probe`` satisfies it)."""

    @property
    def name(self) -> str: ...

    async def read(self) -> R_co: ...

    async def aclose(self) -> None: ...


R = TypeVar("R")


class Poller(Generic[R]):
    """Runs ``probe.read()`` every ``interval`` s and calls ``on_reading`` with each reading."""

    def __init__(
        self,
        probe: Readable[R],
        interval: float,
        on_reading: Callable[[R], None],
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.probe = probe
        self.interval = interval
        self.on_reading = on_reading
        self.monotonic = monotonic
        self.polls = 0
        self.failures = 0
        self.skipped = 0
        self.last: R | None = None
        self.last_error: str | None = None
        self.wake = asyncio.Event()

    @property
    def name(self) -> str:
        return self.probe.name

    async def poll_once(self) -> R | None:
        """One read, with the failure bookkeeping; None when it failed."""
        try:
            async with asyncio.timeout(self.interval):
                reading = await self.probe.read()
        except TimeoutError:
            self._failed(f"read did not finish within the {self.interval:g} s poll interval")
            return None
        except Exception as exc:
            self._failed(f"{type(exc).__name__}: {exc}", exc)
            return None
        self.polls += 1
        if self.last_error is not None:
            log.info("probe[%s]: reading again", self.name)
            self.last_error = None
        self.last = reading
        self.on_reading(reading)
        return reading

    def _failed(self, message: str, exc: BaseException | None = None) -> None:
        self.failures += 1
        if self.last_error is None:
            log.error("probe[%s]: %s", self.name, message, exc_info=exc)
        self.last_error = message

    async def run(self) -> None:
        """Poll forever (until cancelled). ``wake.set()`` polls now, off the grid."""
        due = self.monotonic()
        while True:
            delay = due - self.monotonic()
            if delay > 0:
                try:
                    async with asyncio.timeout(delay):
                        await self.wake.wait()
                except TimeoutError:
                    pass
            self.wake.clear()
            await self.poll_once()
            due += self.interval
            late = self.monotonic() - due
            if late > 0:
                missed = math.floor(late / self.interval) + 1
                self.skipped += missed
                due += missed * self.interval
                log.debug("probe[%s]: %d poll(s) overdue, skipped", self.name, missed)


__all__ = ["Poller"]
