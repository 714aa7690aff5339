"""``Fleet``: run a scenario's clusters in one process until stopped.

``await Fleet(scenario, broker=..., passwords=..., state_dir=...).run(stop)``
builds every (reporting) cluster of the scenario, or one shard of them, puts
the schedule's episodes that are already under way in place, starts the
agents (spread over a second or two so the broker sees no connection storm),
then applies each fault and outage start/end when the simulated clock reaches
it. While backfilling, probes poll every ``backfill_step_s`` simulated
seconds; once the clock has caught up they switch to the scenario's live
intervals. ``stop`` set: every agent shuts down in order (final report,
``offline`` presence), bounded by a timeout, then ``run`` returns.

``fleet.status()`` is a JSON-able summary (phase, simulated time, counts),
also logged every ``progress_s`` and written to ``status_file`` if given.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import resource
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fleet_sim.cluster import BrokerTarget, ClusterSim, FleetSms, Intervals
from fleet_sim.scenario import Scenario
from fleet_sim.timeline import Change, FleetClock, build_schedule, changes

log = logging.getLogger("loa.fleet")

#: CPU seconds one probe read costs with its share of diagnosis, outbox and
#: uplink work (bench/fleet_scale.py --scenario lam-thao on a 2-core VM:
#: 250,684 polls in 99 s of CPU).
CPU_PER_READ_S = 0.0004
#: Probe reads a second past which a backfill starves the event loop: MQTT
#: keepalives and CONNACKs wait behind the polls and connections time out. The
#: 1,000-cluster stress fleet failed to connect while backfilling at 1,100/s
#: (its thousand boots, outboxes and connections compete with the polls);
#: Lâm Thao's 195 clusters backfill at 1,950/s with no poll skipped.
MAX_BACKFILL_READS_PER_S = 2000.0


def backfill_reads_per_s(scenario: Scenario, clusters: int) -> float:
    """Probe reads per real second while backfilling (0 without a backfill)."""
    t = scenario.time
    if t.backfill_days <= 0:
        return 0.0
    return clusters * 4 / (t.backfill_step_s / t.acceleration)


#: File descriptors one cluster holds: the outbox (db, -wal, -shm) and its MQTT socket.
FDS_PER_CLUSTER = 5


def raise_fd_limit(needed: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards the hard limit; returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        new = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return soft


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


class Fleet:
    """The clusters of ``scenario`` (shard ``k`` of ``n``), run by ``run(stop)``."""

    def __init__(
        self,
        scenario: Scenario,
        *,
        broker: BrokerTarget,
        state_dir: Path,
        passwords: Callable[[str], str | None] | Mapping[str, str] | None = None,
        clock: FleetClock | None = None,
        shard: tuple[int, int] = (1, 1),
        progress_s: float = 10.0,
        status_file: Path | None = None,
        stop_timeout_s: float = 10.0,
        sms: FleetSms | None = None,
    ) -> None:
        """``sms``: attach every cluster's modem to a simulated SMS centre and turn on
        the agents' SMS fallback (``FleetSms``)."""
        k, n = shard
        if not 1 <= k <= n:
            raise ValueError(f"shard {k}/{n}: need 1 <= k <= n")
        self.scenario = scenario
        self.broker = broker
        self.state_dir = state_dir
        self.clock = clock or FleetClock(
            backfill_s=scenario.time.backfill_days * 86400.0,
            acceleration=scenario.time.acceleration,
        )
        self.progress_s = progress_s
        self.status_file = status_file
        self.stop_timeout_s = stop_timeout_s
        if passwords is None:
            lookup: Callable[[str], str | None] = lambda _d: None  # noqa: E731
        elif isinstance(passwords, Mapping):
            table = dict(passwords)
            lookup = table.get
        else:
            lookup = passwords
        self._password = lookup
        members = [
            (i, c) for i, c in enumerate(scenario.clusters) if not c.silent and i % n == k - 1
        ]
        self.live = self.clock.live
        t = scenario.time
        a = scenario.agent
        self._live_iv = Intervals(a.poll_s, a.poll_s, a.system_poll_s, a.stream_poll_s)
        step = t.backfill_step_s / t.acceleration if t.acceleration > 1 else a.poll_s
        self._backfill_iv = Intervals(step, step, step, step)
        state_dir.mkdir(parents=True, exist_ok=True)
        self.clusters: dict[str, ClusterSim] = {
            spec.device_id: ClusterSim(
                spec,
                scenario,
                index=i,
                clock=self.clock,
                state_dir=state_dir,
                broker=broker,
                password=self._password(spec.device_id),
                phase_intervals=self.intervals,
                sms=sms,
            )
            for i, spec in members
        }
        episodes = [
            e for e in build_schedule(scenario, self.clock.start) if e.device in self.clusters
        ]
        self.episodes = episodes
        self._changes: list[Change] = changes(episodes)
        self._next = 0
        self.applied = 0
        self.started_at = time.time()

    def intervals(self) -> Intervals:
        """Poll intervals of the current phase."""
        return self._live_iv if self.clock.live else self._backfill_iv

    # --- schedule ------------------------------------------------------------------

    async def _apply_due(self) -> None:
        now = self.clock.now()
        while self._next < len(self._changes) and self._changes[self._next].at <= now:
            ch = self._changes[self._next]
            self._next += 1
            self.applied += 1
            cluster = self.clusters[ch.device]
            was_powered = cluster.powered
            cluster.apply(ch.name, ch.on)
            if was_powered and not cluster.powered:
                await cluster.power_cut()
            elif cluster.powered and not was_powered:
                cluster.start()

    async def _schedule_loop(self) -> None:
        while self._next < len(self._changes):
            delay = self.clock.real_delay(self._changes[self._next].at)
            if delay > 0:
                # Re-check at least every second: the wall clock may step.
                await asyncio.sleep(min(delay, 1.0))
            await self._apply_due()

    async def _phase_loop(self) -> None:
        while not self.clock.live:  # noqa: ASYNC110 - waiting for a clock, not an event
            await asyncio.sleep(min(1.0, max(0.01, self.clock.real_delay(self.clock.caught_up_at))))
        if not self.live:
            self.live = True
            for c in self.clusters.values():
                c.set_intervals(self._live_iv)
            log.info(
                "backfill done: history from %s to now; the fleet runs live",
                _iso(self.clock.origin),
            )

    async def _progress_loop(self) -> None:
        while True:
            await asyncio.sleep(self.progress_s)
            st = self.status()
            log.info(
                "%s %s (%.0f%%): %d/%d agents running, %d links down, %d injected faults, "
                "%d messages published, %d in outboxes, %d of %d polls skipped",
                st["phase"],
                st["sim_time"],
                100 * st["backfill_progress"],
                st["running"],
                st["clusters"],
                st["links_down"],
                st["injected"],
                st["published"],
                st["outbox_depth"],
                st["skipped_polls"],
                st["polls"] + st["skipped_polls"],
            )
            self._write_status(st)

    def _write_status(self, st: dict[str, Any]) -> None:
        if self.status_file is None:
            return
        tmp = self.status_file.with_name(self.status_file.name + ".tmp")
        try:
            tmp.write_text(json.dumps(st, ensure_ascii=False, indent=1), encoding="utf-8")
            os.replace(tmp, self.status_file)
        except OSError as exc:
            log.warning("cannot write %s: %s", self.status_file, exc)

    def status(self) -> dict[str, Any]:
        """A JSON-able summary of the fleet right now."""
        per = [c.status() for c in self.clusters.values()]
        injected: Counter[str] = Counter()
        for c in self.clusters.values():
            injected.update(c.active)
        return {
            "scenario": self.scenario.name,
            "phase": "live" if self.clock.live else "backfill",
            "sim_time": _iso(self.clock.now()),
            "sim_ts": self.clock.now(),
            "origin_ts": self.clock.origin,
            "backfill_progress": round(self.clock.progress(), 3),
            "clusters": len(per),
            "running": sum(1 for p in per if p["running"]),
            "connected": sum(1 for p in per if p["connected"]),
            "links_down": sum(1 for p in per if not p["link"]),
            "injected": sum(injected.values()),
            "injected_by_name": dict(sorted(injected.items())),
            "published": sum(p["published"] for p in per),
            "outbox_depth": sum(p["outbox"] or 0 for p in per),
            # Polls skipped because the previous one overran: the fleet is CPU-bound.
            "polls": sum(p["polls"] for p in per),
            "skipped_polls": sum(p["skipped"] for p in per),
            "changes_applied": self.applied,
            "changes_total": len(self._changes),
        }

    # --- lifetime ------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set (module docstring)."""
        raise_fd_limit(len(self.clusters) * FDS_PER_CLUSTER + 256)
        log.info(
            "fleet %r: %d clusters, %d episodes; clock from %s at x%g%s",
            self.scenario.name,
            len(self.clusters),
            len(self.episodes),
            _iso(self.clock.origin),
            self.clock.acceleration,
            f", live after {self.clock.caught_up_at - time.time():.0f} s" if not self.live else "",
        )
        load = backfill_reads_per_s(self.scenario, len(self.clusters))
        # Many clusters booting at once need headroom on top of the polls.
        budget = MAX_BACKFILL_READS_PER_S * min(1.0, 300 / max(1, len(self.clusters)))
        if load > budget and not self.live:
            log.warning(
                "backfilling %d clusters means %.0f probe reads/s (about %.1f cores): the agents"
                " will lag and lose their broker connections; raise time.backfill_step_s, lower"
                " time.acceleration, or split the fleet with --shard",
                len(self.clusters),
                load,
                load * CPU_PER_READ_S,
            )
        await self._apply_due()  # what is already under way at the start of history
        tasks = [
            asyncio.create_task(self._start_all(stop), name="fleet.start"),
            asyncio.create_task(self._schedule_loop(), name="fleet.schedule"),
            asyncio.create_task(self._phase_loop(), name="fleet.phase"),
            asyncio.create_task(self._progress_loop(), name="fleet.progress"),
        ]
        stopped = asyncio.create_task(stop.wait(), name="fleet.stop")
        try:
            pending: set[asyncio.Task[Any]] = {stopped, *tasks}
            while not stop.is_set():
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    if t is not stopped and not t.cancelled() and t.exception() is not None:
                        raise t.exception()  # type: ignore[misc]
        finally:
            for t in (*tasks, stopped):
                t.cancel()
            await asyncio.gather(*tasks, stopped, return_exceptions=True)
            await self._stop_all()
            self._write_status(self.status())

    async def _start_all(self, stop: asyncio.Event) -> None:
        # Spread the boots: every agent's pollers then run on their own phase,
        # and the broker is not hit by a thousand CONNECTs at once.
        clusters = list(self.clusters.values())
        spread = min(2.0, max(0.2, len(clusters) / 500))
        for i, c in enumerate(clusters):
            if stop.is_set():
                return
            c.start()
            if i % 25 == 24:
                await asyncio.sleep(spread * 25 / len(clusters))

    async def _stop_all(self) -> None:
        clusters = list(self.clusters.values())
        await asyncio.gather(
            *(c.stop(self.stop_timeout_s) for c in clusters), return_exceptions=True
        )
        log.info("fleet stopped: %d messages published", self.status()["published"])


__all__ = [
    "CPU_PER_READ_S",
    "FDS_PER_CLUSTER",
    "MAX_BACKFILL_READS_PER_S",
    "Fleet",
    "backfill_reads_per_s",
    "raise_fd_limit",
]
