"""Fleet state: the pure fold, and offline/cause correction through the real ingest."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from collector.fleet import (
    INITIAL,
    Observation,
    ObsKind,
    diagnose,
    event_time,
    fold,
)
from collector.model import InventoryDevice, Status
from collector.store.sqlite import SQLiteRepository
from fleet_protocol import B2Cause, Fault, FaultCode
from tests.collector.conftest import ingest_running, make_config, publish, state, wait_for
from tests.support.mosquitto import Broker

R, ON, OFF, SILENT = ObsKind.REPORT, ObsKind.ONLINE, ObsKind.OFFLINE, ObsKind.SILENT
NET, SIM = B2Cause.UNSTABLE_NETWORK, B2Cause.SIM_FAILURE


def test_diagnose_counts_critical_faults_and_picks_the_upstream_cause() -> None:
    f = [Fault.of(FaultCode.WEAK_SIGNAL, 1e9, "")]
    assert diagnose(f) == (False, None)
    f += [Fault.of(FaultCode.STREAM_LOST, 1e9, ""), Fault.of(FaultCode.SIM_ABSENT, 1e9, "")]
    assert diagnose(f) == (True, B2Cause.SIM_FAILURE)


def test_future_timestamps_are_clamped_past_ones_kept() -> None:
    assert event_time(1000.0, 1000.0, max_future_s=300) == (1000.0, False)
    assert event_time(1299.0, 1000.0, max_future_s=300) == (1299.0, False)
    assert event_time(5000.0, 1000.0, max_future_s=300) == (1000.0, True)
    assert event_time(10.0, 1000.0, max_future_s=300) == (10.0, False)


@pytest.mark.parametrize(
    ("observations", "expected"),
    [
        # healthy, then a SIM failure, then fixed
        (
            [
                Observation(1, 1, R),
                Observation(2, 2, R, broken=True, cause=SIM),
                Observation(3, 3, R),
            ],
            [(1, "working", None), (2, "broken", SIM), (3, "working", None)],
        ),
        # offline keeps the last diagnosis as cause; unknown when it was healthy
        (
            [Observation(1, 1, R, broken=True, cause=SIM), Observation(2, 2, OFF)],
            [(1, "broken", SIM), (2, "broken", SIM)],
        ),
        (
            [Observation(1, 1, R), Observation(2, -2, SILENT)],
            [(1, "working", None), (2, "broken", B2Cause.UNKNOWN)],
        ),
        # a late (buffered) report corrects the cause but does not bring it online
        (
            [
                Observation(1, 1, R),
                Observation(2, -2, SILENT),
                Observation(3, 2, R, prompt=False, broken=True, cause=NET),
                Observation(4, 3, ON),
            ],
            [
                (1, "working", None),
                (2, "broken", B2Cause.UNKNOWN),
                (3, "broken", NET),
                (4, "broken", NET),
            ],
        ),
        # a presence "online" alone, before any report: still unknown
        ([Observation(1, 1, ON)], [(1, "broken", B2Cause.UNKNOWN)]),
    ],
)
def test_fold(
    observations: list[Observation], expected: list[tuple[float, str, B2Cause | None]]
) -> None:
    _, transitions = fold(INITIAL, observations)
    got = [(t.ts, t.status.value, t.cause) for t in transitions]
    # Transitions that change only the link or the diagnosis still appear; compare the
    # (status, cause) timeline at each expected moment.
    timeline = {ts: (s, c) for ts, s, c in got}
    assert [(ts, *timeline[ts]) for ts, _, _ in expected] == expected


def test_status_since_is_when_the_status_began() -> None:
    obs = [
        Observation(1, 1, R, broken=True, cause=SIM),
        Observation(5, 2, R, broken=True, cause=NET),
        Observation(9, 3, OFF),
    ]
    final, _ = fold(INITIAL, obs)
    assert final.status is Status.BROKEN and final.status_since == 1


@pytest.mark.integration
async def test_missing_heartbeat_then_buffered_reports_correct_the_cause(
    broker: Broker, tmp_path: Path, repo: SQLiteRepository
) -> None:
    grace = 2.0
    cfg = make_config(broker, tmp_path, ingest={"late_after_s": 1.0})
    dev = "dev-101"
    await repo.upsert_inventory(
        [
            InventoryDevice(device_id=dev, commune_code="xa-01", commune_name="Xã A"),
            InventoryDevice(
                device_id="dev-102", commune_code="xa-01", commune_name="Xã A", position=1
            ),
        ],
        remove_missing=False,
    )
    async with ingest_running(cfg, repo) as (ingestor, _):
        t0 = time.time()
        await publish(broker, dev, state(dev, 1, t0))

        async def working() -> bool:
            return bool(await repo.stored_seqs(dev))

        await wait_for(working, what="first report")
        # Silence: the sweep marks the device offline once the grace has passed.

        async def offline() -> bool:
            return bool(await repo.mark_silent_offline(time.time(), grace))

        await wait_for(offline, timeout=grace + 5, what="heartbeat-missing offline")
        d = await repo.get_device(dev)
        assert (d.status, d.cause, d.online) == (Status.BROKEN, B2Cause.UNKNOWN, False)
        # The device's link comes back and it drains its outbox: reports written
        # during the silence show it had lost the network.
        buffered = [
            state(dev, 2, t0 + 1.0, faults=(FaultCode.NOT_REGISTERED,)),
            state(dev, 3, t0 + 1.5, faults=(FaultCode.NOT_REGISTERED,)),
        ]
        await publish(broker, dev, *buffered)

        async def corrected() -> bool:
            return len(await repo.stored_seqs(dev)) == 3

        await wait_for(corrected, what="buffered reports stored")
        d = await repo.get_device(dev)
        assert (d.status, d.cause, d.online) == (Status.BROKEN, NET, False)
        # History now says: working, broken (network) from t0+1, offline at t0+grace.
        as_of = {s.device_id: s for s in await repo.statuses_as_of(t0 + 0.5)}
        assert as_of[dev].status is Status.WORKING
        assert as_of["dev-102"].never_reported and as_of["dev-102"].cause is B2Cause.UNKNOWN
        later = {s.device_id: s for s in await repo.statuses_as_of(t0 + 1.2)}
        assert (later[dev].status, later[dev].cause) == (Status.BROKEN, NET)
        assert (await repo.statuses_as_of(t0 - 10))[0].never_reported
        # A fresh report brings it back online and working.
        await publish(broker, dev, state(dev, 4))

        async def back() -> bool:
            d = await repo.get_device(dev)
            return d.status is Status.WORKING and d.online

        await wait_for(back, what="back online")
        assert ingestor.stats.duplicates == 0
