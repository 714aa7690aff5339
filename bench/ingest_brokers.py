"""Collector ingest rate through RabbitMQ (AMQP quorum queue) beside Mosquitto (MQTT).

    .venv/bin/python bench/ingest_brokers.py [--messages 20000] [--devices 20] [--runs 3]

Both brokers run in the same process tree, in the same run, with the same
store (SQLite, ``synchronous="normal"``, a new database per run) and the same
messages: N real state reports from D devices (bench/ingest_rate.py's
``publish_backlog``: MQTT 3.1.1, QoS 1, 200 in flight per device).

- Mosquitto (tests/support/mosquitto.py, deploy/'s config): the collector's
  MQTT ingest (``collector.ingest.run_ingest``, ``[mqtt] receive_maximum``
  4000 as in bench/ingest_rate.py). Its persistent session is created first,
  then it goes away and the backlog is published.
- RabbitMQ, one node (tests/support/rabbitmq.py, deploy/rabbitmq's config; a
  quorum queue on one node has no replicas to wait for, so a 3-node cluster
  would be slower than this): the devices publish through the MQTT plugin,
  the collector consumes the quorum queue ``loa.ingest`` over AMQP
  (``collector.ingest_amqp.run_ingest_amqp``, ``[ingest] source = "amqp"``,
  ``[amqp] prefetch`` 0 = twice ``[ingest] batch_size``). The collector
  declares and binds the queue first, goes away, the backlog is published.
  Users and permissions (``device_permissions``,
  ``amqp_collector_permissions``) come in one ``rabbitmqctl import_definitions``.

Then the collector is started and timed from its start (connect included)
until ``IngestStats.stored`` reaches N. Prints each run and the medians.
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
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import aio_pika
from yarl import URL

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.ingest_rate import RECEIVE_MAXIMUM, publish_backlog
from bench.reconnect_storm_rabbitmq import import_users
from collector.broker_rabbitmq import (
    COLLECTOR_USER,
    amqp_collector_permissions,
    device_permissions,
)
from collector.config import CollectorConfig, config_from_dict
from collector.ingest import Ingestor, run_ingest
from collector.ingest_amqp import run_ingest_amqp
from collector.metrics import IngestStats
from collector.store.sqlite import SQLiteRepository
from tests.support.mosquitto import Broker, running_broker
from tests.support.rabbitmq import RabbitCluster

QUEUE = "loa.ingest"
SYNCHRONOUS = "normal"
Runner = Callable[..., Coroutine[Any, Any, None]]


@dataclass
class RabbitMqtt:
    """What ``publish_backlog`` uses of a Broker, for RabbitMQ's MQTT listener."""

    host: str
    port: int

    @staticmethod
    def password(user: str) -> str:
        return RabbitCluster.password(user)


def _db(path: Path) -> dict[str, str]:
    return {"path": str(path), "synchronous": SYNCHRONOUS}


def mqtt_config(broker: Broker, db: Path, run: int) -> CollectorConfig:
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
            "db": _db(db),
        }
    )


def amqp_url(cluster: RabbitCluster) -> str:
    return f"amqp://{COLLECTOR_USER}@{cluster.host}:{cluster.nodes[0].amqp_port}/%2F"


def amqp_config(cluster: RabbitCluster, db: Path, run: int) -> CollectorConfig:
    return config_from_dict(
        {
            "mqtt": {"client_id": f"bench-col-{run}"},
            "ingest": {"source": "amqp"},
            "amqp": {
                "url": amqp_url(cluster),
                "password": cluster.password(COLLECTOR_USER),
                "queue": QUEUE,
            },
            "db": _db(db),
        }
    )


async def purge(cluster: RabbitCluster) -> None:
    """Empty the ingest queue (what a previous run's cancelled collector left unacked)."""
    url = URL(amqp_url(cluster)).with_password(cluster.password(COLLECTOR_USER))
    conn = await aio_pika.connect(url, timeout=10)
    async with conn:
        channel = await conn.channel()
        queue = await channel.declare_queue(QUEUE, passive=True, timeout=10)
        await queue.purge(timeout=10)


async def timed_ingest(
    cfg: CollectorConfig,
    runner: Runner,
    backlog: Callable[[], Awaitable[None]],
    n: int,
    before_backlog: Callable[[], Awaitable[None]] | None = None,
) -> dict[str, float]:
    """Session/queue first, then the backlog, then the collector timed until all N are stored."""
    repo = await SQLiteRepository.open(Path(cfg.db.path), synchronous=SYNCHRONOUS)
    await repo.migrate()
    out: dict[str, float] = {}
    try:
        for phase in ("setup", "measure"):
            stats = IngestStats()
            ingestor = Ingestor(repo, cfg.ingest, stats)
            connected = asyncio.Event()
            start = time.perf_counter()
            task = asyncio.create_task(runner(cfg, ingestor, connected=connected))
            try:
                await asyncio.wait_for(connected.wait(), 30)
                if phase == "setup":
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                    if before_backlog is not None:
                        await before_backlog()
                    t0 = time.perf_counter()
                    await backlog()
                    out["publish_rate"] = n / (time.perf_counter() - t0)
                    continue
                # Polls the ingest's own counter, as bench/ingest_rate.py does.
                deadline = start + 600
                while stats.stored < n:
                    if time.perf_counter() > deadline:
                        raise RuntimeError(f"only {stats.stored}/{n} stored after 600 s")
                    await asyncio.sleep(0.01)
                out["rate"] = n / (time.perf_counter() - start)
                out["batches"] = stats.batches
                out["duplicates"] = stats.duplicates
                await asyncio.sleep(0.5)  # let the last acks go out before the cancel
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    finally:
        await repo.close()
    return out


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package} ${Version}; ", "mosquitto", "rabbitmq-server"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {versions}"


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


async def main_async(args: argparse.Namespace) -> int:
    devices = [f"bench-{i:03d}" for i in range(args.devices)]
    per_device = args.messages // args.devices
    n = per_device * args.devices
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {machine()}")
    print(f"before: {load()}", flush=True)
    results: dict[str, list[dict[str, float]]] = {"mosquitto": [], "rabbitmq": []}
    with tempfile.TemporaryDirectory(prefix="ingest-brokers-") as d:
        tmp = Path(d)
        cluster = RabbitCluster(tmp / "rmq", 1)
        try:
            with running_broker(tmp / "broker") as broker:
                broker.add_user(*devices)
                await asyncio.to_thread(cluster.start, 300)
                users = {dev: device_permissions(dev) for dev in devices}
                users[COLLECTOR_USER] = amqp_collector_permissions(QUEUE)
                took = await asyncio.to_thread(import_users, cluster, users)
                print(
                    f"RabbitMQ: 1 node, started in {cluster.started_in:.1f} s; "
                    f"{len(users)} users by one import_definitions in {took:.1f} s",
                    flush=True,
                )
                rabbit = cast(Broker, RabbitMqtt(cluster.host, cluster.nodes[0].mqtt_port))
                for run in range(args.runs):
                    base = run * per_device

                    def backlog(b: Broker, base: int = base) -> Callable[[], Awaitable[None]]:
                        return lambda: publish_backlog(b, devices, per_device, base_seq=base)

                    mq = await timed_ingest(
                        mqtt_config(broker, tmp / f"mosq-{run}.db", run),
                        run_ingest,
                        backlog(broker),
                        n,
                    )
                    rq = await timed_ingest(
                        amqp_config(cluster, tmp / f"rmq-{run}.db", run),
                        run_ingest_amqp,
                        backlog(rabbit),
                        n,
                        before_backlog=lambda: purge(cluster),
                    )
                    results["mosquitto"].append(mq)
                    results["rabbitmq"].append(rq)
                    print(
                        f"run {run + 1}: Mosquitto/MQTT ingest {mq['rate']:7.0f} msg/s "
                        f"({mq['batches']:.0f} batches); RabbitMQ/AMQP ingest "
                        f"{rq['rate']:7.0f} msg/s ({rq['batches']:.0f} batches); "
                        f"backlog published at {mq['publish_rate']:.0f} / "
                        f"{rq['publish_rate']:.0f} msg/s; {load()}",
                        flush=True,
                    )
        finally:
            await asyncio.to_thread(cluster.stop)
            left = cluster.leftovers()
            if left:
                print(f"LEFTOVER processes: {[p.pid for p in left]}", file=sys.stderr)

    def med(broker: str, key: str) -> float:
        return statistics.median(r[key] for r in results[broker])

    print(
        f"backlog of {n} state reports from {args.devices} devices, QoS 1; SQLite "
        f"synchronous={SYNCHRONOUS}; {args.runs} runs, medians; timed from collector start"
    )
    print(f"{'':34}{'Mosquitto (MQTT)':>18}{'RabbitMQ (AMQP)':>18}")
    for label, key in (
        ("collector ingest (msg/s)", "rate"),
        ("backlog publish (msg/s)", "publish_rate"),
        ("batches", "batches"),
    ):
        print(f"{label:34}{med('mosquitto', key):>18.0f}{med('rabbitmq', key):>18.0f}")
    print(f"after: {load()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--messages", type=int, default=20000)
    p.add_argument("--devices", type=int, default=20)
    p.add_argument("--runs", type=int, default=3)
    return asyncio.run(main_async(p.parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
