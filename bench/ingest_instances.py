"""Ingest through the whole path, one and two collector instances: MQTT in, store out.

    .venv/bin/python bench/ingest_instances.py [--devices 200] [--messages 20000] [--runs 3]

bench/store_engines.py times ``prepare`` + ``write_batch`` alone; this one times
the collector's ingest loop as it runs in ``loa-collector serve``
(``collector.ingest.run_ingest``: the MQTT client, flow control, the loop that
takes whatever is queued up to ``[ingest] batch_size``, the store, the PUBACKs),
each instance in its own OS process, on:

- SQLite, one instance;
- PostgreSQL, one instance;
- PostgreSQL, two instances behind the Mosquitto shared subscription
  ``$share/collectors/...``, each with its stable client id and persistent session.

Each run: the instances connect once (their sessions and the shared subscription
are created) and stop; the fleet's traffic (bench/store_engines.py's: compact
heartbeats, full reports, presence, in time order, each device publishing its
own messages at QoS 1 with its own credentials under deploy/'s ACL) is published
while no instance is connected, so the broker holds it as a backlog in their
sessions; then the instances start again and the time from the first one's
connection until every message is stored (counted in the database) is measured.
Publishing is not timed: on this 2-core machine the publishers would take CPU
from the collectors. Mosquitto runs with deploy/'s config; PostgreSQL durably
(fsync on), as in bench/store_engines.py. Median of ``--runs``; machine and load printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomqtt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from store_engines import (
    HEARTBEAT_S,
    _migrate,
    _migrate_sqlite,
    device_id,
    ingest_batches,
    load,
    machine,
    open_engine,
    pg_ctl_restart,
)

from collector.config import config_from_dict
from collector.ingest import Ingestor, run_ingest
from collector.metrics import IngestStats
from tests.support.mosquitto import COLLECTOR_USER, Broker, running_broker
from tests.support.postgres import running_postgres


def collector_config(url: str, broker: Broker, group: str, name: str) -> dict[str, Any]:
    """Instance ``name`` of the shared group ``group`` (one group per configuration and
    run: an earlier configuration's sessions, left in a group, would take a share)."""
    db: dict[str, Any] = {"synchronous": "full"}
    if url.startswith("sqlite://"):
        db["path"] = url.removeprefix("sqlite://")
    else:
        db["url"] = url
    return {
        "mqtt": {
            "host": broker.host,
            "port": broker.port,
            "username": COLLECTOR_USER,
            "password": broker.password(COLLECTOR_USER),
            "client_id": f"loa-collector-{group}-{name}",
            "shared_group": group,
        },
        "db": db,
    }


async def _instance(conf: dict[str, Any], url: str, connected_at: Any, stop: Any) -> None:
    cfg = config_from_dict(conf)
    repo = await open_engine(url, "full")
    try:
        connected = asyncio.Event()
        task = asyncio.create_task(
            run_ingest(cfg, Ingestor(repo, cfg.ingest, IngestStats()), connected=connected)
        )
        await asyncio.wait_for(connected.wait(), 30)
        connected_at.put(time.monotonic())  # CLOCK_MONOTONIC: comparable across processes
        while not stop.is_set():  # noqa: ASYNC110 (a multiprocessing event)
            await asyncio.sleep(0.05)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        await repo.close()


def instance(conf: dict[str, Any], url: str, connected_at: Any, stop: Any) -> None:
    """One collector instance in its own process (started with spawn)."""
    asyncio.run(_instance(conf, url, connected_at, stop))


def start_instances(
    url: str, broker: Broker, group: str, k: int
) -> tuple[list[Any], Any, list[float]]:
    ctx = mp.get_context("spawn")
    stop, connected_at = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(
            target=instance,
            args=(collector_config(url, broker, group, str(j)), url, connected_at, stop),
        )
        for j in range(k)
    ]
    for p in procs:
        p.start()
    times = [connected_at.get(timeout=60) for _ in procs]
    return procs, stop, times


def stop_instances(procs: list[Any], stop: Any) -> None:
    stop.set()
    for p in procs:
        p.join(60)
        if p.exitcode != 0:
            raise SystemExit(f"collector instance exited with {p.exitcode}")


async def publish(broker: Broker, wires: dict[str, list[tuple[str, bytes]]]) -> None:
    async def one(device: str, msgs: list[tuple[str, bytes]]) -> None:
        async with aiomqtt.Client(
            broker.host,
            broker.port,
            username=device,
            password=broker.password(device),
            identifier=device,
            max_inflight_messages=100,
        ) as c:
            c.pending_calls_threshold = 1000
            for i in range(0, len(msgs), 100):
                await asyncio.gather(*(c.publish(t, p, qos=1) for t, p in msgs[i : i + 100]))

    await asyncio.gather(*(one(d, m) for d, m in wires.items()))


async def all_stored(url: str, n: int) -> float:
    """When (CLOCK_MONOTONIC) the store holds ``n`` messages, polled every 50 ms over
    one connection (not one per poll: the instances share the machine)."""
    repo = await open_engine(url, "normal")
    try:
        deadline = time.monotonic() + 900
        while (got := await repo.message_count()) < n:
            if time.monotonic() > deadline:
                raise SystemExit(f"stored {got} of {n} messages in 900 s")
            await asyncio.sleep(0.05)
        return time.monotonic()
    finally:
        await repo.close()


def one_run(
    url: str, broker: Broker, group: str, k: int, wires: dict[str, list[tuple[str, bytes]]]
) -> float:
    n = sum(len(m) for m in wires.values())
    procs, stop, _ = start_instances(url, broker, group, k)  # sessions and the shared subscription
    stop_instances(procs, stop)
    asyncio.run(publish(broker, wires))
    procs, stop, times = start_instances(url, broker, group, k)
    try:
        end = asyncio.run(all_stored(url, n))
    finally:
        stop_instances(procs, stop)
    return n / (end - min(times))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--devices", type=int, default=200)
    p.add_argument("--messages", type=int, default=20000, help="per run, about")
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args(argv)
    print("command: " + shlex.join([sys.executable, *sys.argv]), flush=True)
    labels = ("SQLite x1", "PostgreSQL x1", "PostgreSQL x2")
    rates: dict[str, list[float]] = {x: [] for x in labels}
    with (
        tempfile.TemporaryDirectory(prefix="loa-bench-") as d,
        running_postgres() as pg,
        running_broker(Path(d) / "broker") as broker,
    ):
        pg_ctl_restart(pg, True)
        template = pg.fresh_database()
        asyncio.run(_migrate(template))
        template = template.split("?")[0].rsplit("/", 1)[1]
        for line in machine(pg.url()):
            print(line)
        print(flush=True)
        broker.add_user(*(device_id(i) for i in range(args.devices)))
        steps = max(2, args.messages // args.devices)
        n = 0
        for run in range(args.runs):
            # New seqs and times every run: each run's messages are new to the store.
            t0 = time.time() - steps * HEARTBEAT_S - 600 + run
            wires: dict[str, list[tuple[str, bytes]]] = {}
            for batch in ingest_batches(range(args.devices), steps, t0, "coalesced", 2, 500):
                for tp, payload, _t in batch:
                    wires.setdefault(tp.split("/")[2], []).append((tp, payload))
            n = sum(len(m) for m in wires.values())
            for label in labels:
                if label.startswith("SQLite"):
                    db = Path(d) / f"run-{run}.db"
                    asyncio.run(_migrate_sqlite(db, "full"))
                    url = f"sqlite://{db}"
                else:
                    url = pg.fresh_database(template)
                group = f"r{run}-{label.split()[0].lower()}-{label[-1]}"
                rate = one_run(url, broker, group, 2 if label.endswith("x2") else 1, wires)
                rates[label].append(rate)
                print(f"  run {run + 1} {label:14s} {rate:8.0f} msg/s (load {load()})", flush=True)
        print()
        print(
            f"Ingest through MQTT, messages/s (median of {args.runs}; a backlog of {n} messages"
            f" from {args.devices} devices per run)"
        )
        print("".join(f"{x:>16s}" for x in labels))
        print("".join(f"{statistics.median(rates[x]):16.0f}" for x in labels))
        print(f"load at the end: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
