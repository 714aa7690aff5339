"""What a simulated fleet costs on this machine: CPU, memory, threads, descriptors.

    .venv/bin/python bench/fleet_scale.py [--scenario stress] [--clusters 1000]
                                          [--live 60] [--backfill-days 1]

Starts a real Mosquitto (deploy/'s config, password auth, per-device ACL) and
runs the scenario's first ``--clusters`` clusters with ``fleet_sim``
in this process, each with the real agent (probes over in-process engines,
diagnosis, its own SQLite outbox, one MQTT connection). Prints:

- startup: seconds until every agent is connected, RSS and threads then;
- backfill: wall seconds and CPU (process) for ``--backfill-days`` of history;
- live: CPU % of one core, RSS, threads, open descriptors, and messages/s
  over ``--live`` seconds at the scenario's live poll intervals;
- Mosquitto's CPU and RSS over the same window.

Numbers, not assertions: compare runs on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fleet_sim import with_time
from fleet_sim.cluster import BrokerTarget
from fleet_sim.runner import Fleet
from fleet_sim.scenario import load_scenario
from tests.support.mosquitto import Broker


def _cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return float(t.user + t.system)


async def _until(check: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.2)
    return False


async def bench(args: argparse.Namespace, broker: Broker, state_dir: Path) -> None:
    scenario = with_time(
        load_scenario(args.scenario),
        backfill_days=args.backfill_days,
        acceleration=args.acceleration,
    )
    keep = [c for c in scenario.clusters if not c.silent][: args.clusters]
    ids = {c.device_id for c in keep}
    scenario = dataclasses.replace(
        scenario,
        clusters=tuple(keep),
        faults=tuple(
            dataclasses.replace(f, targets=tuple(d for d in f.targets if d in ids))
            for f in scenario.faults
        ),
        outages=tuple(
            dataclasses.replace(o, targets=tuple(d for d in o.targets if d in ids))
            for o in scenario.outages
        ),
    )
    me = psutil.Process()
    mosq = psutil.Process(broker.proc.pid) if broker.proc else None
    rss0 = me.memory_info().rss
    fleet = Fleet(
        scenario,
        broker=BrokerTarget(broker.url),
        state_dir=state_dir,
        passwords=broker.password,
        progress_s=30.0,
    )
    stop = asyncio.Event()
    t_start, cpu_start = time.monotonic(), _cpu(me)
    task = asyncio.create_task(fleet.run(stop))
    n = len(fleet.clusters)
    connected = await _until(lambda: fleet.status()["connected"] >= 0.9 * n, 120)
    t_conn = time.monotonic() - t_start
    grown = (me.memory_info().rss - rss0) / 2**20
    print(
        f"startup: {fleet.status()['connected']}/{n} connected after {t_conn:.1f} s"
        f"{'' if connected else ' (timed out)'}; RSS +{grown:.0f} MiB,"
        f" {threading.active_count()} threads, {me.num_fds()} fds"
    )
    if not fleet.clock.live:
        await _until(lambda: fleet.clock.live, 3600)
        t_bf = time.monotonic() - t_start
        cpu_bf = _cpu(me) - cpu_start
        print(
            f"backfill: {scenario.time.backfill_days:g} d of history in {t_bf:.0f} s,"
            f" {cpu_bf:.0f} s CPU ({100 * cpu_bf / t_bf:.0f} % of a core),"
            f" {fleet.status()['published']} messages, {fleet.status()['polls']} polls"
            f" ({fleet.status()['skipped_polls']} skipped: overload)"
        )
    await asyncio.sleep(5)  # let the switch to live intervals settle
    pub0, cpu0, t0 = fleet.status()["published"], _cpu(me), time.monotonic()
    mcpu0 = _cpu(mosq) if mosq else 0.0
    await asyncio.sleep(args.live)
    dt = time.monotonic() - t0
    st = fleet.status()
    print(
        f"live ({dt:.0f} s, {n} clusters): fleet {100 * (_cpu(me) - cpu0) / dt:.0f} % of a core,"
        f" RSS {me.memory_info().rss / 2**20:.0f} MiB"
        f" ({(me.memory_info().rss - rss0) / 2**10 / n:.0f} KiB/cluster),"
        f" {threading.active_count()} threads, {me.num_fds()} fds,"
        f" {(st['published'] - pub0) / dt:.1f} msg/s, {st['links_down']} links down,"
        f" {st['injected']} injected faults, {st['skipped_polls']} polls skipped in all"
    )
    if mosq:
        print(
            f"mosquitto: {100 * (_cpu(mosq) - mcpu0) / dt:.0f} % of a core,"
            f" RSS {mosq.memory_info().rss / 2**20:.0f} MiB"
        )
    t_stop = time.monotonic()
    stop.set()
    await task
    print(f"stop: {time.monotonic() - t_stop:.1f} s for {n} agents to stop in order")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenario", default="stress")
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--live", type=float, default=60.0, help="seconds of live running measured")
    p.add_argument("--backfill-days", type=float, default=None)
    p.add_argument("--acceleration", type=float, default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for name in ("edge_agent", "firmware_shims", "pymodbus"):
        logging.getLogger(name).setLevel(logging.ERROR)
    print(
        f"{platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()},"
        f" scenario {args.scenario}, {args.clusters} clusters"
    )
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as d:
        broker = Broker(Path(d) / "broker")
        scenario = load_scenario(args.scenario)
        # Before the start: each add_user on a running broker reloads it (SIGHUP).
        t = time.monotonic()
        broker.add_user(*[c.device_id for c in scenario.clusters if not c.silent][: args.clusters])
        print(f"broker users created in {time.monotonic() - t:.0f} s")
        broker.start()
        try:
            shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
            with tempfile.TemporaryDirectory(prefix="fleet-bench-", dir=shm) as state:
                asyncio.run(bench(args, broker, Path(state)))
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
