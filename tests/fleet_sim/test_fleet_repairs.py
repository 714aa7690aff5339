"""The demo's repair crews: planned from the schedule, sent to the REST API at simulated times."""

from __future__ import annotations

import asyncio
import math
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from collector.app import create_app
from collector.auth import hash_password, secret_hash
from collector.keys import STATS
from collector.model import InventoryDevice
from collector.store.base import Role, TicketState
from collector.store.sqlite import SQLiteRepository
from fleet_sim.repairs import CollectorUnavailable, RepairCrew, broken_spans, plan_repairs
from fleet_sim.timeline import Episode
from tests.collector.conftest import make_config, wait_for
from tests.support.mosquitto import Broker

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


@pytest.fixture
async def collector(broker: Broker, tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    """A real collector app on a free port: (base URL, an admin's API token)."""
    cfg = make_config(broker, tmp_path)
    repo = await SQLiteRepository.open(cfg.db.path, synchronous="normal")
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
        for name, role in (("crew", Role.ADMIN), ("tech", Role.TECHNICIAN)):
            await repo.add_user(
                name, role=role, communes=frozenset(), password_hash=hash_password("pw-long-enough")
            )
            await repo.add_token(name, token_hash=secret_hash(f"tok-{name}"), label="t", at=T0)
    finally:
        await repo.close()
    app = create_app(cfg)
    async with TestServer(app) as server:
        # Stopping the app while its ingest is still connecting can hang the
        # teardown (seen here); start from a connected collector, as in production.
        await wait_for(lambda: _connected(app), what="ingest connected")
        yield str(server.make_url("")), "tok-crew"


async def _connected(app: web.Application) -> bool:
    return bool(app[STATS].connected)


async def test_crew_writes_tickets_at_simulated_times_through_the_api(
    collector: tuple[str, str], tmp_path: Path
) -> None:
    url, token = collector
    steps = plan_repairs(
        [ep("dev-a", 0, 10), ep("dev-b", 2, math.inf), ep("dev-x", 0, 3)],
        {},
        seed=5,
        start_probability=1.0,
    )
    now = [T0]
    crew = RepairCrew(url, token, steps, lambda: now[0])
    async with crew.session() as http:
        assert await crew.apply_due(http) == 0
        now[0] = T0 + 20 * DAY  # the clock passes every step
        assert await crew.apply_due(http) == 5
    # dev-x is not in the inventory: its open is refused (404), its later steps skipped.
    assert crew.skipped == 3
    repo = await SQLiteRepository.open(tmp_path / "collector.db")
    try:
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


async def test_crew_without_admin_rights_cannot_backdate(collector: tuple[str, str]) -> None:
    url, _ = collector
    crew = RepairCrew(
        url, "tok-tech", plan_repairs([ep("dev-a", 0, 10)], {}, seed=1), lambda: T0 + 20 * DAY
    )
    async with crew.session() as http:
        with pytest.raises(RuntimeError, match=r"HTTP 403.*at: recording a past time"):
            await crew.apply_due(http)


async def test_crew_keeps_its_steps_while_the_collector_is_down() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nobody listens here once closed
    steps = plan_repairs([ep("dev-a", 0, 10)], {}, seed=1)
    crew = RepairCrew(f"http://127.0.0.1:{port}", "t", steps, lambda: T0 + 20 * DAY)
    async with crew.session() as http:
        with pytest.raises(CollectorUnavailable):
            await crew.apply_due(http)
    assert crew.applied == 0 and crew.skipped == 0 and crew._next == 0


async def test_crew_run_stops_when_asked(collector: tuple[str, str]) -> None:
    url, token = collector
    crew = RepairCrew(url, token, [], lambda: T0)
    stop = asyncio.Event()
    task = asyncio.create_task(crew.run(stop, period_s=0.05))
    stop.set()
    await asyncio.wait_for(task, 5)
    assert crew.applied == 0


pytestmark = pytest.mark.filterwarnings("error")
