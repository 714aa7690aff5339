"""The fleet simulator end to end: real agents → real Mosquitto → the collector's ingest and store.

One small scenario, backfilled over two simulated days in a few seconds, then
live: a past amplifier fault shows in the collector's history at its device
time, a stream lost at the end shows in the fleet state, and a commune's
outage takes both of its clusters offline (last will).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from collector.model import InventoryDevice, Status
from collector.store.sqlite import SQLiteRepository
from fleet_protocol import B2Cause
from fleet_sim.cluster import BrokerTarget
from fleet_sim.runner import Fleet
from fleet_sim.scenario import parse_scenario
from tests.collector.conftest import ingest_running, make_config, wait_for
from tests.support.mosquitto import Broker

pytestmark = pytest.mark.integration

HOUR = 3600.0

SCENARIO: dict[str, Any] = {
    "scenario": {"name": "thử nghiệm", "prefix": "t", "seed": 3},
    # Two simulated days in ~8.6 real seconds, polling every simulated half hour.
    "time": {"backfill_days": 2, "acceleration": 20000, "backfill_step_s": 1800},
    "agent": {
        "poll_s": 0.5,
        "system_poll_s": 0.5,
        "stream_poll_s": 0.5,
        "heartbeat_s": 2,
        "full_report_s": 10,
        "confirm_s": 1,
        "clear_s": 1.5,
        "keepalive_s": 5,
    },
    "defaults": {"dialects": {"quectel": 1, "simcom": 1, "generic": 1}},
    "communes": [
        {"code": "08410", "name": "Lâm Thao", "kind": "thị trấn", "slug": "a", "clusters": 2},
        {"code": "08449", "name": "Xuân Lũng", "slug": "b", "clusters": 2},
    ],
    "faults": [
        # History: the speaker line of t-a-01 was open for 12 h, a day and a half ago.
        {"fault": "amp.line_open", "cluster": "t-a-01", "start": "-36h", "duration": "12h"},
        # Now: t-a-02 lost the broadcast stream an hour ago, for good.
        {"fault": "stream.lost", "cluster": "t-a-02", "start": "-1h"},
    ],
    # Live: Xuân Lũng loses its data link shortly after the history is done.
    "outages": [{"commune": "08449", "start": "12s", "duration": "10m"}],
}


@contextlib.asynccontextmanager
async def running_fleet(fleet: Fleet) -> AsyncIterator[asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(fleet.run(stop), name="fleet")
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_history_live_faults_and_commune_outage_reach_the_collector(
    broker: Broker, tmp_path: Path
) -> None:
    scenario = parse_scenario(SCENARIO)
    devices = [c.device_id for c in scenario.clusters]
    broker.add_user(*devices)
    repo = await SQLiteRepository.open(tmp_path / "collector.db", synchronous="normal")
    await repo.migrate()
    await repo.upsert_inventory(
        [
            InventoryDevice(
                device_id=c.device_id,
                commune_code=c.commune,
                commune_name=scenario.commune(c.commune).name,
                position=i,
            )
            for i, c in enumerate(scenario.clusters)
        ],
        remove_missing=False,
    )
    cfg = make_config(broker, tmp_path)
    fleet = Fleet(
        scenario,
        broker=BrokerTarget(broker.url),
        state_dir=tmp_path / "fleet",
        passwords=broker.password,
        progress_s=1.0,
        status_file=tmp_path / "status.json",
    )
    t0 = fleet.clock.start
    try:
        async with ingest_running(cfg, repo), running_fleet(fleet):

            async def live_stream_lost() -> bool:
                d = await repo.get_device("t-a-02")
                return (
                    fleet.clock.live
                    and d.status is Status.BROKEN
                    and d.online
                    and (d.cause is B2Cause.NO_STATION_SIGNAL)
                )

            await wait_for(live_stream_lost, timeout=40, what="t-a-02 broken: no station signal")

            async def commune_offline() -> bool:
                rows = [await repo.get_device(d) for d in ("t-b-01", "t-b-02")]
                return all(not r.online and r.status is Status.BROKEN for r in rows)

            await wait_for(commune_offline, timeout=40, what="Xuân Lũng's outage: both offline")
            st = fleet.status()
            assert st["phase"] == "live" and st["links_down"] == 2

            # The backfilled history, at device time: t-a-01 worked, was broken by
            # its speaker line for those 12 simulated hours, and worked again.
            async def at(dt: float) -> dict[str, Any]:
                return {s.device_id: s for s in await repo.statuses_as_of(t0 + dt)}

            before, during, after = await at(-44 * HOUR), await at(-30 * HOUR), await at(-12 * HOUR)
            assert before["t-a-01"].status is Status.WORKING
            assert (during["t-a-01"].status, during["t-a-01"].cause) == (
                Status.BROKEN,
                B2Cause.AMPLIFIER_SPEAKER,
            )
            assert after["t-a-01"].status is Status.WORKING
            assert all(during[d].status is Status.WORKING for d in ("t-a-02", "t-b-01", "t-b-02"))
            # History arrived with the device's (past) timestamps, not the receive time.
            assert (await repo.get_device("t-a-01")).status is Status.WORKING
            assert time.time() - t0 < 120
    finally:
        await repo.close()
    # Stopped in order: nothing left running, every outbox closed.
    assert all(not c.running for c in fleet.clusters.values())
    assert (tmp_path / "status.json").exists()


def test_loa_sim_fleet_runs_and_stops_on_sigterm(broker: Broker, tmp_path: Path) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text(
        '[scenario]\nprefix = "c"\n[agent]\npoll_s = 1\nheartbeat_s = 2\n'
        '[[communes]]\ncode = "1"\nname = "Xã Tiên Kiên"\nslug = "tk"\nclusters = 3\n',
        encoding="utf-8",
    )
    broker.add_user("c-tk-01", "c-tk-02", "c-tk-03")
    status = tmp_path / "status.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fleet_sim.cli",
            "fleet",
            "--scenario",
            str(scenario),
            "--broker",
            broker.url,
            "--password-template",
            "pw-{device}",
            "--progress",
            "0.5",
            "--status-file",
            str(status),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            st = json.loads(status.read_text()) if status.exists() else {}
            if st.get("connected") == 3 and st.get("published", 0) >= 6:
                break
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, f"fleet not connected: {st}"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
        err = proc.stderr.read().decode() if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
    assert rc == 0, err
    final = json.loads(status.read_text())
    assert final["running"] == 0 and final["connected"] == 0
    assert "Traceback" not in err and "never retrieved" not in err
