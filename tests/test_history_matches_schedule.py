"""The simulated history tells the truth: what the collector stored for the past
matches the simulator's own fault schedule, for every cluster, at many moments.

A slice of the shipped Lâm Thao scenario (two communes, ten days) is backfilled
with its shipped ``backfill_step_s`` (a poll every four simulated hours) and
agent settings through the real agents, Mosquitto and the collector's ingest
and store. Then, for every reporting cluster and every half day of the
history, the stored status and B2 cause (``statuses_as_of``) must be what the
schedule's active episodes imply, wherever the cluster's schedule did not
change within the last three polls (a fault is confirmed at the second
failing poll and cleared at the second healthy one, so the record may lag by
two steps). Uses only the simulator's public API (scenario, schedule, Fleet).
"""

from __future__ import annotations

import asyncio
import contextlib
import tomllib
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import pytest

from collector.fleet import CAUSE_PRIORITY
from collector.inventory import parse_inventory
from collector.model import Status
from collector.store.sqlite import SQLiteRepository
from edge_agent.diagnosis import AMP_FLAG_FAULTS
from fleet_protocol import B2Cause, FaultCode, Severity, fault_info
from fleet_sim import inventory_csv
from fleet_sim.cluster import BrokerTarget
from fleet_sim.runner import Fleet
from fleet_sim.scenario import LINK_CUTTING, bundled, parse_scenario
from fleet_sim.timeline import OUTAGE, Episode
from tests.collector.conftest import ingest_running, make_config, wait_for
from tests.support.mosquitto import Broker

pytestmark = pytest.mark.integration

DAY = 86400.0
COMMUNES = ("08410", "08422")  # Lâm Thao (18 clusters), Thạch Sơn (15, two never report)
BACKFILL_DAYS = 10

#: The fault each scheduled episode must raise (None: nothing the B2 counts).
_MODEM = {
    "sim_absent": FaultCode.SIM_ABSENT,
    "sim_failure": FaultCode.SIM_FAILURE,
    "sim_locked": FaultCode.SIM_LOCKED,
    "no_service": FaultCode.NO_SERVICE,
    "denied": FaultCode.REGISTRATION_DENIED,
    "weak_signal": FaultCode.WEAK_SIGNAL,
    "unresponsive": FaultCode.MODEM_UNRESPONSIVE,
}
_OTHER = {
    "stream.lost": FaultCode.STREAM_LOST,
    "controller.disk_full": FaultCode.CONTROLLER_DISK_FULL,
    "controller.overheat": FaultCode.CONTROLLER_OVERHEAT,
    "amp.no_response": FaultCode.AMP_NO_RESPONSE,
    # A data outage with the modem registered: the network's fault (issue 16).
    OUTAGE: FaultCode.NETWORK_UNSTABLE,
}


def _code(name: str) -> FaultCode | None:
    group, _, fault = name.partition(".")
    if group == "modem":
        return _MODEM.get(fault)
    if group == "amp" and fault in AMP_FLAG_FAULTS:
        return AMP_FLAG_FAULTS[fault]
    return _OTHER.get(name)


def _outcome(codes: Iterable[FaultCode]) -> tuple[Status, B2Cause | None]:
    causes = {fault_info(c).cause for c in codes if fault_info(c).severity is Severity.CRITICAL}
    if not causes:
        return Status.WORKING, None
    return Status.BROKEN, min(causes, key=CAUSE_PRIORITY.index)


def expected(active: list[str]) -> set[tuple[Status, B2Cause | None]]:
    """The (status, cause) pairs the schedule allows for these active episode names."""
    codes = {c for n in active if (c := _code(n)) is not None}
    if OUTAGE in active and any(n in LINK_CUTTING for n in active):
        codes.discard(FaultCode.NETWORK_UNSTABLE)  # the modem's own fault says why
    allowed = {_outcome(codes)}
    if "modem.flapping" in active:
        # Registration coming and going for minutes cannot be seen by a poll
        # every four hours: either verdict, but never blamed on anything else.
        allowed.add(_outcome(codes | {FaultCode.NETWORK_UNSTABLE}))
    return allowed


def _scenario() -> Any:
    data = tomllib.loads(bundled("lam-thao").read_text(encoding="utf-8"))
    data["communes"] = [c for c in data["communes"] if c["code"] in COMMUNES]
    data["time"]["backfill_days"] = BACKFILL_DAYS
    # Ten days in about 17 s; backfill_step_s and [agent] stay as shipped.
    data["time"]["acceleration"] = 50000
    data["faults"] = [{"fault": "modem.weak_signal", "cluster": "lt-lamthao-03", "start": "-70d"}]
    data["outages"] = [{"commune": "08422", "start": "-6d", "duration": "2d"}]
    data["random_faults"] = [r for r in data["random_faults"] if r.get("phase") != "live"]
    return parse_scenario(data)


@contextlib.asynccontextmanager
async def _running(fleet: Fleet) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(fleet.run(stop), name="fleet")
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


@pytest.mark.timeout(240)
async def test_stored_history_matches_the_schedule(broker: Broker, tmp_path: Path) -> None:
    scenario = _scenario()
    assert scenario.time.backfill_step_s == 14400  # the shipped resolution
    broker.add_user(*(c.device_id for c in scenario.clusters))
    repo = await SQLiteRepository.open(tmp_path / "collector.db", synchronous="normal")
    await repo.migrate()
    # The inventory the simulator writes for the collector, in its order.
    await repo.upsert_inventory(
        parse_inventory(inventory_csv(scenario), source="lam-thao.csv"), remove_missing=False
    )
    fleet = Fleet(
        scenario,
        broker=BrokerTarget(broker.url),
        state_dir=tmp_path / "fleet",
        passwords=broker.password,
        progress_s=2.0,
    )
    origin, start = fleet.clock.origin, fleet.clock.start
    step = scenario.time.backfill_step_s
    try:
        async with ingest_running(make_config(broker, tmp_path), repo), _running(fleet):

            async def delivered() -> bool:
                st = fleet.status()
                return fleet.clock.live and st["outbox_depth"] == 0 and st["running"] > 0

            # Depth 0: the collector confirmed storing every message (DESIGN.md).
            await wait_for(delivered, timeout=150, what="the backfill delivered")
            moments = [origin + DAY + k * DAY / 2 for k in range(2 * BACKFILL_DAYS - 3)]
            stored = {t: {s.device_id: s for s in await repo.statuses_as_of(t)} for t in moments}
    finally:
        await repo.close()

    by_device: dict[str, list[Episode]] = {}
    for e in fleet.episodes:
        by_device.setdefault(e.device, []).append(e)
    lag = 3 * step
    judged, skipped, broken_judged, outage_judged = 0, 0, 0, 0
    mismatches: list[tuple[Any, ...]] = []
    for device in fleet.clusters:
        episodes = by_device.get(device, [])
        for t in moments:
            if t - lag < origin or any(
                (t - lag <= e.start <= t or t - lag <= e.end <= t)
                or (e.name == "controller.off" and e.start <= t and e.end >= t - lag)
                for e in episodes
            ):
                skipped += 1  # the record may still lag this change; a silent controller
                continue  # is the collector's silence rule's business, not diagnosis'
            active = [e.name for e in episodes if e.active(t)]
            got = stored[t][device]
            judged += 1
            broken_judged += _outcome(c for n in active if (c := _code(n)))[0] is Status.BROKEN
            outage_judged += OUTAGE in active
            if (got.status, got.cause) not in expected(active):
                mismatches.append(
                    (device, round((t - start) / 3600), active, got.status, got.cause)
                )
    total = judged + skipped
    assert total == len(fleet.clusters) * len(moments) and len(fleet.clusters) == 31
    assert not mismatches, f"{len(mismatches)} of {judged} judged: {mismatches[:20]}"
    assert judged >= 0.6 * total, (judged, total)
    # The schedule had something to check: faults of several kinds, and the outage.
    kinds = {e.name for e in fleet.episodes if e.start < start and e.end > origin}
    assert {OUTAGE, "stream.lost"} <= kinds and len(kinds) >= 5, kinds
    assert broken_judged >= 20 and outage_judged >= 10, (broken_judged, outage_judged)
