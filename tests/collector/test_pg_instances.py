"""Two ``loa-collector serve`` processes on one PostgreSQL behind a Mosquitto
shared subscription, agents streaming: kill -9 one instance mid-stream and
restart it. Every seq the agents assigned (their own outbox records) is stored
exactly once, and the B2 equals that of a single SQLite collector fed the same
wire messages."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from collector.b2 import zone
from collector.b2.service import b2_table
from collector.config import IngestConfig
from collector.correlation import CorrelationConfig
from collector.ingest import Ingestor
from collector.metrics import IngestStats
from collector.model import InventoryDevice
from collector.store.postgres import PostgresRepository
from collector.store.sqlite import SQLiteRepository
from edge_agent.outbox import Priority
from fleet_protocol import FaultCode, Kind, topic
from tests.collector.conftest import state, wait_for
from tests.collector.test_delivery import (
    StreamingAgent,
    agents,
    assert_exactly_once,
    until_all_confirmed,
)
from tests.support.mosquitto import COLLECTOR_USER, Broker, free_port

pytestmark = pytest.mark.integration


def _config(path: Path, broker: Broker, url: str, name: str, port: int) -> Path:
    path.write_text(
        f'[db]\nurl = "{url}"\n'
        f'[http]\nhost = "127.0.0.1"\nport = {port}\nsecure_cookies = false\n'
        f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n'
        f'username = "{COLLECTOR_USER}"\npassword = "{Broker.password(COLLECTOR_USER)}"\n'
        f'client_id = "loa-collector-{name}"\nshared_group = "collectors"\nmax_backoff_s = 1.0\n'
        "[ingest]\nack_interval_s = 0.2\nbatch_size = 50\n"
        "[fleet]\nsweep_interval_s = 1.0\n",
        encoding="utf-8",
    )
    return path


class Instance:
    def __init__(self, conf: Path, port: int, log: Path):
        self.conf, self.port, self.log = conf, port, log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "collector.cli", "serve", "--config", str(self.conf),
                stdout=asyncio.subprocess.DEVNULL, stderr=err,
            )  # fmt: skip

        async def ingesting() -> bool:
            try:
                async with (
                    aiohttp.ClientSession() as s,
                    s.get(f"http://127.0.0.1:{self.port}/healthz") as r,
                ):
                    return bool((await r.json())["broker_connected"])
            except (aiohttp.ClientError, OSError):
                return False

        await wait_for(ingesting, timeout=30, what=f"collector on :{self.port} ingesting")

    async def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), 20)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


@contextlib.asynccontextmanager
async def instances(
    broker: Broker, url: str, tmp_path: Path, n: int
) -> AsyncIterator[list[Instance]]:
    out: list[Instance] = []
    try:
        for i in range(n):
            port = free_port()
            conf = _config(tmp_path / f"collector-{i}.toml", broker, url, f"i{i}", port)
            inst = Instance(conf, port, tmp_path / f"collector-{i}.log")
            out.append(inst)
            await inst.start()
        yield out
    finally:
        for inst in out:
            await inst.stop()


INVENTORY = [
    InventoryDevice(device_id=d, commune_code="xa-01", commune_name="Sơn Vi", position=i)
    for i, d in enumerate(("dev-101", "dev-102", "dev-103"))
]


async def emit(a: StreamingAgent) -> None:
    """One report; dev-102's SIM fails after its 20th (a broken cluster in the B2)."""
    faults = (FaultCode.SIM_FAILURE,) if a.device == "dev-102" and len(a.assigned) >= 20 else ()
    item = await a.outbox.put(
        Kind.STATE,
        lambda seq: state(a.device, seq, commune="xa-01", faults=faults),
        Priority.REPORT,
    )
    assert item is not None
    a.assigned.append(item.seq)


async def stream(fleet: list[StreamingAgent], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for a in fleet:
            await emit(a)
        await asyncio.sleep(0.03)


async def replay_into(sqlite: SQLiteRepository, pg: SQLiteRepository) -> int:
    """Feed a single SQLite collector the wire messages the instances stored, in
    the order and at the times they were received."""
    ingestor = Ingestor(sqlite, IngestConfig(), IngestStats())
    rows = await pg._all(
        "SELECT device_id, kind, payload, received_at FROM messages WHERE seq >= 0"
        " ORDER BY received_at, device_id, seq"
    )
    batch = []
    for r in rows:
        m = ingestor.prepare(topic(r[0], Kind(r[1])), bytes(r[2]), received_at=float(r[3]))
        assert m is not None
        batch.append(m)
        if len(batch) == 50:
            await sqlite.write_batch(batch, late_after_s=IngestConfig().late_after_s)
            batch = []
    if batch:
        await sqlite.write_batch(batch, late_after_s=IngestConfig().late_after_s)
    return len(rows)


async def assert_same_b2(pg: SQLiteRepository, single: SQLiteRepository, broken: str) -> None:
    """The B2 (rows, total, each cluster's cause) and the statuses of both stores
    agree, and ``broken``'s burnt SIM is in them."""
    as_of = dt.datetime.now(zone())
    tables = [
        await b2_table(r, as_of=as_of, correlation=CorrelationConfig(), record=False)
        for r in (pg, single)
    ]
    assert tables[0].causes_by_device[broken]["cause"] == "sim_failure"
    assert tables[0].rows == tables[1].rows and tables[0].total == tables[1].total
    assert tables[0].causes_by_device == tables[1].causes_by_device
    t = time.time()
    assert await pg.statuses_as_of(t) == await single.statuses_as_of(t)


async def test_two_instances_one_killed_and_restarted_store_every_seq_once_and_the_same_b2(
    broker: Broker, tmp_path: Path, pg_url: str
) -> None:
    pg = await PostgresRepository.open(pg_url)
    single = await SQLiteRepository.open(tmp_path / "single.db", synchronous="normal")
    try:
        await single.migrate()
        for r in (pg, single):
            await r.upsert_inventory(INVENTORY, remove_missing=False)
        async with (
            instances(broker, pg_url, tmp_path, 2) as (first, second),
            agents(broker, tmp_path) as fleet,
        ):
            await stream(fleet, 2.0)

            async def both_storing() -> bool:
                return await pg.message_count() >= 30

            await wait_for(both_storing, timeout=30, what="the instances storing")
            await first.kill9()  # mid-stream: its share of the group is in flight
            await stream(fleet, 2.0)
            await first.start()  # same client id: its persistent session resumes
            await stream(fleet, 2.0)
            await until_all_confirmed(fleet, pg, timeout=90)
            await assert_exactly_once(fleet, pg)
            assert sum(len(a.assigned) for a in fleet) > 150
            assert second.proc is not None and second.proc.returncode is None
        stored = await replay_into(single, pg)
        assert stored >= sum(len(a.assigned) for a in fleet)
        # dev-102's burnt SIM, as it reported it (the others went offline when
        # the agents stopped at the end: "unknown", the same on both).
        await assert_same_b2(pg, single, "dev-102")
    finally:
        await pg.close()
        await single.close()
