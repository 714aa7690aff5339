"""The demo's repair crews: tickets opened, started and resolved on the fleet's clock.

A district's B2 table splits broken clusters into "đang sửa chữa" (a contractor
has started a repair) and "chưa sửa chữa". In a simulated fleet nobody repairs
anything, so ``plan_repairs`` derives what the people would have done from the
scenario's schedule: a ticket opens a day into every breakdown, a contractor
starts most of them within days, and a ticket resolves soon after the
breakdown ends. ``RepairCrew`` writes those steps into the collector's store
as the simulated clock passes them, at their simulated times, so backfilled
history has realistic repair figures (the collector's own automatic open and
resolve are switched off in the demo, since they work on wall-clock time).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from firmware_shims.fleet.timeline import Episode

if TYPE_CHECKING:  # the collector's store is imported only when the crew runs
    from collector.store.base import Repository

log = logging.getLogger(__name__)

#: Scenario faults that only warn: they do not break a cluster, so nobody repairs them.
WARNING_FAULTS = frozenset({"modem.weak_signal", "amp.battery_low"})
TECHNICIANS = ("Nguyễn Văn Hùng", "Trần Thị Bình", "Lê Minh Tuấn", "Phạm Quốc Khánh", "Đỗ Thu Hà")

StepKind = Literal["open", "start", "resolve"]


@dataclass(frozen=True, slots=True, order=True)
class RepairStep:
    """One thing a person does to a device's ticket at simulated time ``at``."""

    at: float
    device: str
    kind: StepKind
    contractor: str = ""
    technician: str = ""
    note: str = ""


def broken_spans(episodes: Iterable[Episode]) -> dict[str, list[tuple[float, float]]]:
    """Per device, the merged intervals during which some breaking fault was active."""
    by_device: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for e in sorted(episodes):
        if e.name in WARNING_FAULTS:
            continue
        spans = by_device[e.device]
        if spans and e.start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], e.end))
        else:
            spans.append((e.start, e.end))
    return dict(by_device)


def plan_repairs(
    episodes: Iterable[Episode],
    contractors: Mapping[str, str],
    *,
    seed: int,
    open_after_s: float = 86400.0,
    start_probability: float = 0.6,
    start_delay_s: tuple[float, float] = (43200.0, 5 * 86400.0),
    resolve_after_s: float = 3600.0,
) -> list[RepairStep]:
    """Every repair step for the schedule, by time. Pure and deterministic for ``seed``."""
    steps: list[RepairStep] = []
    for device, spans in broken_spans(episodes).items():
        for start, end in spans:
            opened = start + open_after_s
            if opened >= end:
                continue  # healed before anyone noticed it was a breakdown
            rng = random.Random(f"{seed}:repair:{device}:{start:.0f}")
            steps.append(
                RepairStep(opened, device, "open", note="Xã báo cụm loa không phát quá 24 giờ")
            )
            started = opened + rng.uniform(*start_delay_s)
            if rng.random() < start_probability and started < end:
                steps.append(
                    RepairStep(
                        started,
                        device,
                        "start",
                        contractor=contractors.get(device, "") or "Viettel",
                        technician=rng.choice(TECHNICIANS),
                        note="Đơn vị thi công nhận phiếu, kiểm tra tại chỗ",
                    )
                )
            if math.isfinite(end):
                steps.append(
                    RepairStep(
                        end + resolve_after_s, device, "resolve", note="Đã khắc phục, loa phát lại"
                    )
                )
    steps.sort()
    return steps


class RepairCrew:
    """Applies planned steps to the collector's database as the fleet's clock passes them."""

    def __init__(
        self,
        db_path: Path,
        steps: list[RepairStep],
        clock: Callable[[], float],
        *,
        actor: str = "demo-crew",
    ) -> None:
        self.db_path = db_path
        self.steps = steps
        self.clock = clock
        self.actor = actor
        self.applied = 0
        self.skipped = 0
        self._next = 0
        self._tickets: dict[str, int] = {}

    async def run(self, stop: asyncio.Event, *, period_s: float = 1.0) -> None:
        """Apply due steps every ``period_s`` until ``stop`` is set."""
        from collector.store.sqlite import SQLiteRepository

        repo = await SQLiteRepository.open(self.db_path, synchronous="normal")
        try:
            while not stop.is_set():
                await self.apply_due(repo)
                try:
                    async with asyncio.timeout(period_s):
                        await stop.wait()
                except TimeoutError:
                    pass
        finally:
            await repo.close()

    async def apply_due(self, repo: Repository) -> int:
        """Apply every step whose time has come; returns how many were applied."""
        from collector.store.base import Conflict, NotFound, TicketState

        now = self.clock()
        done = 0
        while self._next < len(self.steps) and self.steps[self._next].at <= now:
            step = self.steps[self._next]
            self._next += 1
            try:
                if step.kind == "open":
                    ticket = await repo.open_ticket(
                        step.device, actor=self.actor, at=step.at, note=step.note, cause=None
                    )
                    self._tickets[step.device] = ticket.id
                elif step.device not in self._tickets:
                    self.skipped += 1
                    continue
                elif step.kind == "start":
                    await repo.start_ticket(
                        self._tickets[step.device],
                        actor=self.actor,
                        at=step.at,
                        contractor=step.contractor,
                        technician=step.technician,
                        note=step.note,
                    )
                else:
                    await repo.close_ticket(
                        self._tickets.pop(step.device),
                        actor=self.actor,
                        at=step.at,
                        state=TicketState.RESOLVED,
                        note=step.note,
                    )
            except (Conflict, NotFound) as exc:
                # A person acted on the dashboard meanwhile: theirs stands.
                self.skipped += 1
                log.info("repair crew: skipped %s %s: %s", step.kind, step.device, exc)
                continue
            done += 1
        self.applied += done
        return done
