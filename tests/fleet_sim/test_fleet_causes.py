"""Show it: the four faults that silence a cluster, injected in the fleet simulator and
run through the real agents, Mosquitto, the SMS path (simulated SMS centre → the
district's modem → the SMS gateway) and the collector, give a B2 whose causes are
the injected ones, each with the expected source.

- ``k-a-01``: its SIM fails (it reports the SIM error before the bearer drops) →
  ``sim_failure`` from the device, live;
- ``k-b-01``: data blocked (SIM ready, registered, PDP refused): silent on MQTT,
  but its fault SMS arrives → ``unstable_network`` (no_bearer) from SMS;
- cell ``C1`` goes down: ``k-a-03``, ``k-c-01``, ``k-c-02`` (two communes) go
  silent together while other cells stay up → ``unstable_network`` inferred
  (rule ``cell_outage``);
- Xã D's mains fail: both its clusters, on two cells, die at once → ``power``
  inferred (rule ``commune_outage``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from collector.b2.service import b2_table
from collector.config import SmsGatewayConfig
from collector.correlation import CorrelationConfig
from collector.model import InventoryDevice
from collector.sms import SmsGateway
from collector.store.sqlite import SQLiteRepository
from firmware_shims.modem.port import AtPort
from firmware_shims.modem.sim import ModemEngine, SimOptions
from firmware_shims.modem.smsc import SmsCentre
from fleet_protocol import B2Cause
from fleet_sim.cluster import BrokerTarget, FleetSms, sim_phone
from fleet_sim.runner import Fleet
from fleet_sim.scenario import parse_scenario
from tests.collector.conftest import ingest_running, make_config, wait_for
from tests.support.mosquitto import Broker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

DISTRICT = "+84912000000"
SECRET = bytes.fromhex("5ec7e7" * 8)
SCENARIO: dict[str, Any] = {
    "scenario": {"name": "nguyên nhân", "prefix": "k", "seed": 5},
    "time": {"backfill_days": 0.1, "acceleration": 20000, "backfill_step_s": 1800},
    "agent": {
        "poll_s": 0.5,
        "system_poll_s": 0.5,
        "stream_poll_s": 0.5,
        "heartbeat_s": 2,
        "full_report_s": 4,
        "confirm_s": 1,
        "clear_s": 1.5,
        "keepalive_s": 5,
    },
    "defaults": {"dialects": {"quectel": 1, "simcom": 1}},
    "communes": [
        {"code": "08401", "name": "A", "slug": "a", "clusters": 3, "cells": ["A1", "A2", "C1"]},
        {"code": "08402", "name": "B", "slug": "b", "clusters": 2, "cells": ["B1", "B2"]},
        {"code": "08403", "name": "C", "slug": "c", "clusters": 2, "cells": ["C1"]},
        {"code": "08404", "name": "D", "slug": "d", "clusters": 2, "cells": ["D1", "D2"]},
    ],
    "faults": [
        {"fault": "modem.sim_failure", "cluster": "k-a-01", "start": "6s"},
        {"fault": "modem.data_blocked", "cluster": "k-b-01", "start": "6s"},
        {"fault": "modem.no_service", "clusters": ["k-a-03", "k-c-01", "k-c-02"], "start": "6s"},
        {"fault": "controller.off", "commune": "08404", "start": "6s"},
    ],
}
EXPECTED = {
    "k-a-01": ("sim_failure", "device_live", None),
    "k-b-01": ("unstable_network", "sms", None),
    "k-a-03": ("unstable_network", "inferred", "cell_outage"),
    "k-c-01": ("unstable_network", "inferred", "cell_outage"),
    "k-c-02": ("unstable_network", "inferred", "cell_outage"),
    "k-d-01": ("power", "inferred", "commune_outage"),
    "k-d-02": ("power", "inferred", "commune_outage"),
}


@contextlib.asynccontextmanager
async def running(coro: Any, name: str) -> AsyncIterator[asyncio.Task[Any]]:
    task = asyncio.create_task(coro, name=name)
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_injected_causes_reach_the_b2_with_their_sources(
    broker: Broker, tmp_path: Path
) -> None:
    scenario = parse_scenario(SCENARIO)
    broker.add_user(*(c.device_id for c in scenario.clusters))
    repo = await SQLiteRepository.open(tmp_path / "collector.db", synchronous="normal")
    await repo.migrate()
    await repo.upsert_inventory(
        [
            InventoryDevice(
                device_id=c.device_id,
                commune_code=c.commune,
                commune_name=scenario.commune(c.commune).name,
                sim_phone=sim_phone(scenario.seed, c.device_id, i),
                position=i,
            )
            for i, c in enumerate(scenario.clusters)
        ],
        remove_missing=False,
    )
    centre = SmsCentre()
    district = ModemEngine("simcom", options=SimOptions(urc_rate=0.0, seed=9))
    centre.attach(district, DISTRICT)
    gateway = SmsGateway(
        repo,
        SmsGatewayConfig(port="sim", secret_file="-", poll_s=0.5, timeout_s=0.4),
        AtPort.for_engine(district, name="district-modem"),
        secret=SECRET,
    )
    fleet = Fleet(
        scenario,
        broker=BrokerTarget(broker.url),
        state_dir=tmp_path / "fleet",
        passwords=broker.password,
        progress_s=1.0,
        sms=FleetSms(centre, SECRET, DISTRICT, after_s=3.0, check_s=0.5),
    )
    stop = asyncio.Event()
    try:
        async with (
            ingest_running(make_config(broker, tmp_path), repo),
            running(gateway.run(), "sms-gateway"),
        ):
            fleet_task = asyncio.create_task(fleet.run(stop), name="fleet")
            try:

                async def all_silent() -> bool:
                    rows = [await repo.get_device(d) for d in EXPECTED]
                    return all(not r.online for r in rows) and gateway.stats.stored >= 1

                await wait_for(all_silent, timeout=90, what="the injected clusters silent")

                async def causes() -> dict[str, tuple[str, str, str | None]]:
                    now = dt.datetime.now(dt.UTC)
                    table = await b2_table(
                        repo, as_of=now, record=False, correlation=CorrelationConfig()
                    )
                    return {
                        k: (v["cause"], v["source"], v["rule"])  # type: ignore[misc]
                        for k, v in table.causes_by_device.items()
                    }

                async def settled() -> bool:
                    return await causes() == EXPECTED

                try:
                    await wait_for(settled, timeout=30, what="B2 causes = injected causes")
                except AssertionError:
                    raise AssertionError(f"B2 causes: {await causes()}") from None
            finally:
                stop.set()
                await asyncio.wait_for(fleet_task, 30)
        table = await b2_table(
            repo, as_of=dt.datetime.now(dt.UTC), record=False, correlation=CorrelationConfig()
        )
        d_row = next(r for r in table.rows if r.key == "08404")
        assert d_row.cause_counts()[B2Cause.POWER] == 2
        assert "2 cụm: nguyên nhân suy ra từ các cụm lân cận" in d_row.notes
        b_row = next(r for r in table.rows if r.key == "08402")
        assert "1 cụm: nguyên nhân do thiết bị báo qua SMS" in b_row.notes
        assert gateway.stats.rejected == {}
        # Only the data-blocked cluster could text: a dead SIM, no cell or no power send nothing.
        senders = {s.sender for s in centre.submitted}
        assert senders == {sim_phone(5, "k-b-01", 3)}
    finally:
        await repo.close()
