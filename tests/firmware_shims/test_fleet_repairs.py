"""The demo's repair crews: planned from the schedule, written at simulated times."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from collector.model import InventoryDevice
from collector.store.base import TicketState
from collector.store.sqlite import SQLiteRepository
from firmware_shims.fleet.repairs import RepairCrew, broken_spans, plan_repairs
from firmware_shims.fleet.timeline import Episode

DAY = 86400.0
T0 = 1_690_000_000.0


def ep(device: str, start_d: float, end_d: float, name: str = "stream.lost") -> Episode:
    return Episode(T0 + start_d * DAY, T0 + end_d * DAY, device, name, "test")


def test_overlapping_breakdowns_merge_and_warnings_do_not_count() -> None:
    spans = broken_spans(
        [
            ep("a", 0, 2),
            ep("a", 1, 3, "modem.sim_failure"),
            ep("a", 5, 6),
            ep("a", 2.5, 9, "modem.weak_signal"),
            ep("b", 0, 1, "amp.battery_low"),
        ]
    )
    assert spans == {"a": [(T0, T0 + 3 * DAY), (T0 + 5 * DAY, T0 + 6 * DAY)]}


def test_plan_opens_after_a_day_starts_most_and_resolves_after_the_end() -> None:
    episodes = [ep(f"d{i}", 0, 10) for i in range(200)] + [ep("short", 0, 0.5)]
    steps = plan_repairs(episodes, {"d0": "Viettel Phú Thọ"}, seed=1)
    assert steps == sorted(steps)
    by_kind: dict[str, list[str]] = {}
    for s in steps:
        by_kind.setdefault(s.kind, []).append(s.device)
    assert "short" not in {s.device for s in steps}  # healed within the day
    assert len(by_kind["open"]) == len(by_kind["resolve"]) == 200
    assert 90 < len(by_kind["start"]) < 150  # about 60 % get a contractor in time
    for s in steps:
        if s.kind == "open":
            assert s.at == T0 + DAY
        elif s.kind == "start":
            assert T0 + 1.5 * DAY <= s.at <= T0 + 6 * DAY and s.technician
        else:
            assert s.at == T0 + 10 * DAY + 3600
    d0_start = [s for s in steps if s.device == "d0" and s.kind == "start"]
    assert all(s.contractor == "Viettel Phú Thọ" for s in d0_start)
    assert plan_repairs(episodes, {}, seed=1) != plan_repairs(episodes, {}, seed=2)
    assert plan_repairs(episodes, {}, seed=1) == plan_repairs(episodes, {}, seed=1)


def test_an_unending_breakdown_keeps_its_ticket() -> None:
    steps = plan_repairs([ep("a", 0, math.inf)], {}, seed=3, start_probability=1.0)
    assert [s.kind for s in steps] == ["open", "start"]


async def test_crew_writes_tickets_at_simulated_times(tmp_path: Path) -> None:
    repo = await SQLiteRepository.open(tmp_path / "c.db", synchronous="normal")
    try:
        await repo.migrate()
        await repo.upsert_inventory(
            [
                InventoryDevice(device_id=d, commune_code="xa-01", commune_name="Xã Sơn Vi")
                for d in ("dev-a", "dev-b")
            ],
            remove_missing=False,
            actor="test",
        )
        steps = plan_repairs(
            [ep("dev-a", 0, 10), ep("dev-b", 2, math.inf)], {}, seed=5, start_probability=1.0
        )
        now = [T0]
        crew = RepairCrew(tmp_path / "c.db", steps, lambda: now[0])
        assert await crew.apply_due(repo) == 0
        now[0] = T0 + 20 * DAY  # the clock passes every step
        assert await crew.apply_due(repo) == 5
        tickets = {t.device_id: t for t in await repo.list_tickets()}
        a, b = tickets["dev-a"], tickets["dev-b"]
        assert a.state is TicketState.RESOLVED and a.opened_at == T0 + DAY
        assert b.state is TicketState.IN_REPAIR and b.opened_at == T0 + 3 * DAY
        # As of day 6 both clusters were in repair; the history says so today.
        as_of = {s.device_id: s for s in await repo.statuses_as_of(T0 + 6 * DAY)}
        assert as_of["dev-a"].in_repair and as_of["dev-b"].in_repair
        assert not {s.device_id: s for s in await repo.statuses_as_of(T0 + 15 * DAY)}[
            "dev-a"
        ].in_repair
    finally:
        await repo.close()


async def test_crew_run_stops_when_asked(tmp_path: Path) -> None:
    repo = await SQLiteRepository.open(tmp_path / "c.db")
    await repo.migrate()
    await repo.close()
    crew = RepairCrew(tmp_path / "c.db", [], lambda: T0)
    stop = asyncio.Event()
    task = asyncio.create_task(crew.run(stop, period_s=0.05))
    stop.set()
    await asyncio.wait_for(task, 5)
    assert crew.applied == 0


pytestmark = pytest.mark.filterwarnings("error")
