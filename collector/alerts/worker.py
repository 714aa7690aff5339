"""The delivery worker: claim due deliveries, send each through its channel, record the outcome.

At least once, recorded once: a delivery is claimed with a lease, sent, then
marked sent. If the process dies between sending and marking, the lease
expires and the delivery is sent again (with the same idempotency key, which
receivers can dedupe on); a delivery marked sent is never claimed again.
Failures are retried with exponential backoff and jitter (or the server's
``retry_after``), up to ``max_attempts``; permanent ones fail at once. Each
channel's failing is logged once, and its recovery once.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from collector.alerts.channels import ChannelError, Sender
from collector.alerts.settings import AlertsSettings
from collector.store.alerts import AlertStore, Delivery
from collector.store.base import StoreError

log = logging.getLogger("loa.collector.alerts")


@dataclass
class DeliveryStats:
    """What this process's worker did since it started (per channel)."""

    sent: Counter[str] = field(default_factory=Counter)
    retried: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)


def backoff(attempt: int, *, base_s: float, max_s: float, rng: random.Random) -> float:
    """Delay before attempt ``attempt + 1``: base * 2^(attempt-1), capped, with jitter."""
    delay = min(max_s, base_s * 2 ** min(30, max(0, attempt - 1)))
    return float(delay * rng.uniform(0.5, 1.0))


class DeliveryWorker:
    def __init__(
        self,
        store: AlertStore,
        senders: Mapping[str, Sender],
        settings: AlertsSettings,
        *,
        worker_id: str,
        clock: Callable[[], float],
        stats: DeliveryStats | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.senders = senders
        self.settings = settings
        self.worker_id = worker_id
        self.clock = clock
        self.stats = stats or DeliveryStats()
        self.rng = rng or random.Random()
        #: Set to wake the worker early (new deliveries were queued).
        self.wake = asyncio.Event()
        self._failing: set[str] = set()

    async def _one(self, d: Delivery) -> None:
        sender = self.senders.get(d.channel)
        try:
            if sender is None:
                raise ChannelError(f"{d.channel}: channel not configured", permanent=True)
            async with asyncio.timeout(self.settings.lease_s / 2):
                await sender.send(d)
        except (ChannelError, TimeoutError) as exc:
            err = exc if isinstance(exc, ChannelError) else ChannelError(f"{d.channel}: timed out")
            if d.channel not in self._failing:
                log.warning("%s delivery failing: %s", d.channel, err)
                self._failing.add(d.channel)
            if err.permanent or d.attempts >= self.settings.max_attempts:
                self.stats.failed[d.channel] += 1
                await self.store.mark_failed(d.id, worker=self.worker_id, error=str(err))
                log.error(
                    "delivery %s (%s to %s) failed after %d attempt(s): %s",
                    d.id,
                    d.channel,
                    d.recipient,
                    d.attempts,
                    err,
                )
                return
            delay = (
                err.retry_after
                if err.retry_after is not None
                else backoff(
                    d.attempts,
                    base_s=self.settings.backoff_base_s,
                    max_s=self.settings.backoff_max_s,
                    rng=self.rng,
                )
            )
            self.stats.retried[d.channel] += 1
            await self.store.mark_retry(
                d.id, worker=self.worker_id, error=str(err), not_before=self.clock() + delay
            )
            return
        if d.channel in self._failing:
            log.info("%s delivery recovered", d.channel)
            self._failing.discard(d.channel)
        if await self.store.mark_sent(d.id, now=self.clock()):
            self.stats.sent[d.channel] += 1

    async def run_once(self) -> int:
        """Claim one batch of due deliveries and handle them; returns how many."""
        batch = await self.store.claim(
            self.worker_id,
            now=self.clock(),
            lease_s=self.settings.lease_s,
            limit=self.settings.batch_size,
        )
        for d in batch:
            await self._one(d)
        return len(batch)

    async def drain(self, *, timeout_s: float = 60.0) -> None:
        """Handle due deliveries until none is left (the CLI's ``report send``)."""
        async with asyncio.timeout(timeout_s):
            while await self.run_once():
                pass

    async def run(self) -> None:
        """Forever: handle batches; when idle, wait for ``wake`` or the poll interval."""
        failing = False
        while True:
            try:
                handled = await self.run_once()
            except StoreError as exc:
                if not failing:
                    log.error("delivery worker: store failing: %s", exc)
                    failing = True
                handled = 0
            else:
                if failing:
                    log.info("delivery worker: store recovered")
                    failing = False
            if handled:
                continue
            self.wake.clear()
            try:
                async with asyncio.timeout(self.settings.deliver_interval_s):
                    await self.wake.wait()
            except TimeoutError:
                pass
