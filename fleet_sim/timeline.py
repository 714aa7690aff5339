"""The fleet's simulated clock and its schedule of faults and outages. Pure; no I/O.

``FleetClock`` starts ``backfill_days`` before the wall clock and runs
``acceleration`` times faster until it has caught up; from then on it *is*
the wall clock. Everything the simulated hardware and the agents stamp
(readings, fault ``since``, message ``ts``) comes from it, so the collector
receives a month of history with device timestamps in the past, then a live
fleet.

``build_schedule(scenario, start)`` turns the scenario's explicit faults,
random fault rules and outages into ``Episode``s (absolute simulated times),
deterministically from the scenario's seed: the same scenario started at the
same moment gives the same history.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from fleet_sim.scenario import Scenario

#: The episode name of a network outage (faults use their scenario names).
OUTAGE = "network.outage"


class FleetClock:
    """Simulated UNIX time: accelerated from ``start - backfill_s`` until it meets the wall.

    ``now()`` is continuous and never runs ahead of the wall clock, so no
    timestamp it gives lies in the future.
    """

    def __init__(
        self,
        *,
        backfill_s: float = 0.0,
        acceleration: float = 1.0,
        wall: Callable[[], float] = time.time,
        start: float | None = None,
    ) -> None:
        if backfill_s < 0 or acceleration < 1:
            raise ValueError("backfill_s must be >= 0 and acceleration >= 1")
        if backfill_s > 0 and acceleration == 1:
            raise ValueError("backfilling needs an acceleration above 1")
        self.wall = wall
        self.start = wall() if start is None else start
        self.origin = self.start - backfill_s
        self.acceleration = acceleration
        #: Wall time at which the simulated clock catches up (== start with no backfill).
        self.caught_up_at = self.start + (
            backfill_s / (acceleration - 1) if backfill_s > 0 else 0.0
        )

    def now(self) -> float:
        w = self.wall()
        if w >= self.caught_up_at:
            return w
        return self.origin + (w - self.start) * self.acceleration

    def __call__(self) -> float:
        return self.now()

    @property
    def live(self) -> bool:
        """True once the simulated clock is the wall clock."""
        return self.wall() >= self.caught_up_at

    def real_delay(self, sim_t: float) -> float:
        """Real seconds until ``now()`` reaches ``sim_t`` (0 if it has)."""
        if sim_t <= self.now():
            return 0.0
        if sim_t < self.caught_up_at:
            at = self.start + (sim_t - self.origin) / self.acceleration
        else:
            at = sim_t  # reached at its own wall time, once live
        return max(0.0, at - self.wall())

    def progress(self) -> float:
        """Fraction of the backfill done (1.0 when live)."""
        if self.caught_up_at <= self.start:
            return 1.0
        return min(1.0, (self.wall() - self.start) / (self.caught_up_at - self.start))


@dataclass(frozen=True, slots=True, order=True)
class Episode:
    """``name`` (a fault, or ``network.outage``) on ``device`` over [start, end)."""

    start: float
    end: float  # math.inf: until the fleet stops
    device: str
    name: str
    #: Where it came from: "faults[3]", "random_faults[0]", "outages[1]".
    source: str

    def active(self, t: float) -> bool:
        return self.start <= t < self.end


def _log_uniform(rng: random.Random, lo: float, hi: float) -> float:
    return lo if lo == hi else math.exp(rng.uniform(math.log(lo), math.log(hi)))


def build_schedule(scenario: Scenario, start: float) -> list[Episode]:
    """Every episode of the scenario for a fleet started at wall time ``start``, by start."""
    origin = start - scenario.time.backfill_days * 86400.0
    end_of_time = start + scenario.time.horizon_days * 86400.0
    out: list[Episode] = []

    def moment(value: float, absolute: bool) -> float:
        return value if absolute else start + value

    for i, f in enumerate(scenario.faults):
        t0 = moment(f.start, f.absolute)
        t1 = math.inf if f.duration is None else t0 + f.duration
        out += [Episode(t0, t1, d, f.fault, f"faults[{i}]") for d in f.targets]
    for i, o in enumerate(scenario.outages):
        t0 = moment(o.start, o.absolute)
        t1 = math.inf if o.duration is None else t0 + o.duration
        out += [Episode(t0, t1, d, OUTAGE, f"outages[{i}]") for d in o.targets]
    reporting = [c for c in scenario.clusters if not c.silent]
    for i, r in enumerate(scenario.random_faults):
        lo_t = start if r.phase == "live" else origin
        hi_t = start if r.phase == "backfill" else end_of_time
        for c in reporting:
            if r.communes and c.commune not in r.communes:
                continue
            # One stream per (rule, cluster): adding a cluster or a rule does not
            # reshuffle the others' histories.
            rng = random.Random(f"{scenario.seed}:{i}:{c.device_id}")
            # Start the process one mean interval early so the first window is not empty.
            t = lo_t - rng.expovariate(1.0 / r.mtbf) if r.phase != "live" else lo_t
            while True:
                t += rng.expovariate(1.0 / r.mtbf)
                if t >= hi_t:
                    break
                length = _log_uniform(rng, *r.duration)
                if t + length > lo_t:
                    out.append(Episode(t, t + length, c.device_id, r.fault, f"random_faults[{i}]"))
                t += length  # the next episode starts after this one was repaired
    out.sort()
    return out


@dataclass(frozen=True, slots=True)
class Change:
    """At simulated time ``at``, ``name`` starts (``on``) or ends on ``device``."""

    at: float
    device: str
    name: str
    on: bool


def changes(episodes: Iterable[Episode]) -> list[Change]:
    """Start and end changes of ``episodes`` in time order (ends first at equal times)."""
    out: list[Change] = []
    for e in episodes:
        out.append(Change(e.start, e.device, e.name, True))
        if e.end != math.inf:
            out.append(Change(e.end, e.device, e.name, False))
    out.sort(key=lambda c: (c.at, c.on))
    return out


__all__ = ["OUTAGE", "Change", "Episode", "FleetClock", "build_schedule", "changes"]
