"""Ingest throughput of the collector, next to the broker's raw delivery rate.

    .venv/bin/python bench/ingest_rate.py [--messages 20000] [--devices 20] [--runs 3]

Each run starts from a broker holding a backlog: the subscriber's persistent
session is created, the subscriber goes away, devices publish N real state
reports (QoS 1), then the subscriber comes back and the time to take in the
whole backlog is measured. That isolates the subscriber from the publishers'
speed. Two subscribers are measured against the same Mosquitto in the same
run: a bare aiomqtt client (MQTT 5, same receive maximum, auto-ack, counts
messages) and the collector's ingest (decode, validate, dedupe, SQLite batch
write, then ack). Prints the median of ``--runs`` runs and the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from collector.config import CollectorConfig, config_from_dict
from collector.ingest import Ingestor, run_ingest
from collector.metrics import IngestStats
from collector.store.sqlite import SQLiteRepository
from fleet_protocol import Kind, encode, topic
from tests.collector.conftest import state
from tests.support.mosquitto import COLLECTOR_USER, Broker, running_broker

RECEIVE_MAXIMUM = 4000


async def publish_backlog(
    broker: Broker, devices: list[str], per_device: int, base_seq: int
) -> None:
    t0 = time.time() - per_device

    async def one(device: str) -> None:
        async with aiomqtt.Client(
            broker.host,
            broker.port,
            username=device,
            password=broker.password(device),
            identifier=f"{device}-bench",
            max_inflight_messages=200,
        ) as c:
            c.pending_calls_threshold = 1000  # 200 publishes in flight is the point here
            payloads = [encode(state(device, base_seq + i, t0 + i)) for i in range(per_device)]
            t = topic(device, Kind.STATE)
            for i in range(0, len(payloads), 200):
                await asyncio.gather(*(c.publish(t, p, qos=1) for p in payloads[i : i + 200]))

    await asyncio.gather(*(one(d) for d in devices))


def _props() -> Properties:
    p = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    p.SessionExpiryInterval = 3600
    p.ReceiveMaximum = RECEIVE_MAXIMUM
    return p


def _bare(broker: Broker, client_id: str) -> aiomqtt.Client:
    return aiomqtt.Client(
        broker.host,
        broker.port,
        username=COLLECTOR_USER,
        password=broker.password(COLLECTOR_USER),
        identifier=client_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=False,
        properties=_props(),
    )


async def raw_run(broker: Broker, devices: list[str], per_device: int, run: int) -> float:
    cid = f"bench-raw-{run}"
    async with _bare(broker, cid) as c:
        await c.subscribe("loa/v1/+/state", qos=1)
    await publish_backlog(broker, devices, per_device, base_seq=run * per_device)
    n = len(devices) * per_device
    got = 0
    async with _bare(broker, cid) as c:
        start = time.perf_counter()
        async for _ in c.messages:
            got += 1
            if got == n:
                break
        return n / (time.perf_counter() - start)


def _cfg(broker: Broker, db: Path, run: int) -> CollectorConfig:
    return config_from_dict(
        {
            "mqtt": {
                "host": broker.host,
                "port": broker.port,
                "username": COLLECTOR_USER,
                "password": broker.password(COLLECTOR_USER),
                "client_id": f"bench-col-{run}",
                "receive_maximum": RECEIVE_MAXIMUM,
            },
            "db": {"path": str(db), "synchronous": "full"},
        }
    )


async def collector_run(
    broker: Broker, devices: list[str], per_device: int, run: int, tmp: Path
) -> tuple[float, int]:
    db = tmp / f"bench-{run}.db"
    repo = await SQLiteRepository.open(db, synchronous="full")
    await repo.migrate()
    cfg = _cfg(broker, db, run)
    n = len(devices) * per_device
    try:
        for phase in ("session", "measure"):
            stats = IngestStats()
            ingestor = Ingestor(repo, cfg.ingest, stats)
            connected = asyncio.Event()
            task = asyncio.create_task(run_ingest(cfg, ingestor, connected=connected))
            await asyncio.wait_for(connected.wait(), 10)
            if phase == "session":
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await publish_backlog(broker, devices, per_device, base_seq=run * per_device)
                continue
            start = time.perf_counter()
            # Polls the ingest's own counter: adding an event to the ingest for a
            # benchmark would change what is measured.
            while stats.stored < n:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            elapsed = time.perf_counter() - start
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return n / elapsed, stats.batches
    finally:
        await repo.close()
    raise AssertionError("unreachable")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mosq = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True).stdout.splitlines()
    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{mosq[0] if mosq else 'mosquitto'}, SQLite synchronous=full, same host"
    )


async def main_async(args: argparse.Namespace) -> None:
    devices = [f"bench-{i:03d}" for i in range(args.devices)]
    per_device = args.messages // args.devices
    n = per_device * args.devices
    raw: list[float] = []
    col: list[float] = []
    with tempfile.TemporaryDirectory() as d, running_broker(Path(d) / "broker") as broker:
        broker.add_user(*devices)
        for run in range(args.runs):
            raw.append(await raw_run(broker, devices, per_device, run))
            rate, batches = await collector_run(broker, devices, per_device, run, Path(d))
            col.append(rate)
            print(
                f"run {run + 1}: broker -> bare subscriber {raw[-1]:8.0f} msg/s; "
                f"collector ingest {rate:8.0f} msg/s ({batches} batches)",
                flush=True,
            )
    print(f"machine: {machine()}")
    print(f"backlog of {n} state reports from {args.devices} devices, {args.runs} runs")
    print(f"raw broker delivery (median):   {statistics.median(raw):8.0f} msg/s")
    print(f"collector ingest (median):      {statistics.median(col):8.0f} msg/s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=20000)
    p.add_argument("--devices", type=int, default=20)
    p.add_argument("--runs", type=int, default=3)
    asyncio.run(main_async(p.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
