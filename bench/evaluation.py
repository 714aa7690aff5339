"""The monthly evaluation's cost, next to recomputing the fleet hour by hour.

    .venv/bin/python bench/evaluation.py [--clusters 500] [--changes 8] [--runs 3]

A real SQLite store is filled through the collector's ingest path with a month
(July 2023) of state reports: per cluster ``--changes`` status changes at
random times (broken by a lost stream, then working again). Then, for the
month, two ways to get every commune's share of working cluster-hours:

- ``evaluation``: ``collector.b2.service.monthly_evaluation`` (one query of the
  month's transitions, one pass per cluster);
- ``hourly``: the alternative, ``statuses_as_of`` at every hour of the month
  (744 queries), counting the working clusters per commune.

Both must agree to within the hour's resolution. Prints the median of
``--runs`` runs of each and the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from collector.b2.dates import end_of_day, zone
from collector.b2.service import monthly_evaluation
from collector.config import IngestConfig
from collector.ingest import Ingestor
from collector.metrics import IngestStats
from collector.model import InventoryDevice, Status
from collector.store.sqlite import SQLiteRepository
from fleet_protocol import (
    PROTOCOL_VERSION,
    Fault,
    FaultCode,
    Kind,
    ModemState,
    RegState,
    SimState,
    StateReport,
    StreamState,
    encode,
    topic,
)

TZ = zone()
START = dt.datetime(2023, 7, 1, tzinfo=TZ)
END = end_of_day(dt.date(2023, 7, 31), TZ)


def _report(device: str, seq: int, ts: float, broken: bool) -> StateReport:
    return StateReport(
        v=PROTOCOL_VERSION,
        device=device,
        seq=seq,
        ts=ts,
        modem=ModemState(sim=SimState.READY, registration=RegState.HOME, rssi_dbm=-71.0),
        stream=StreamState(receiving=not broken),
        faults=[Fault.of(FaultCode.STREAM_LOST, ts - 60, "bench")] if broken else [],
    )


async def _fill(repo: SQLiteRepository, clusters: int, changes: int, seed: int) -> None:
    rng = random.Random(seed)
    inventory = [
        InventoryDevice(
            device_id=f"b-{i // 15:03d}-{i % 15:02d}",
            commune_code=f"{i // 15:05d}",
            commune_name=f"Xã {i // 15}",
            position=i,
            install_date="2023-01-01",
        )
        for i in range(clusters)
    ]
    await repo.upsert_inventory(inventory, remove_missing=False)
    ingestor = Ingestor(repo, IngestConfig(), IngestStats())
    t0, t1 = START.timestamp() - 86400, END.timestamp()
    batch = []
    for d in inventory:
        times = sorted(rng.uniform(t0, t1) for _ in range(changes))
        for seq, ts in enumerate([t0, *times], start=1):
            msg = _report(d.device_id, seq, ts, broken=seq % 2 == 0)
            prepared = ingestor.prepare(
                topic(d.device_id, Kind.STATE), encode(msg), received_at=ts + 1.0
            )
            assert prepared is not None
            batch.append(prepared)
    batch.sort(key=lambda m: m.ts)
    for i in range(0, len(batch), 2000):
        await ingestor.write(batch[i : i + 2000])


async def _hourly(repo: SQLiteRepository) -> dict[str, float]:
    worked: dict[str, int] = {}
    total: dict[str, int] = {}
    t = START.timestamp() + 1800  # the middle of each hour
    while t < END.timestamp():
        for s in await repo.statuses_as_of(t):
            total[s.commune_code] = total.get(s.commune_code, 0) + 1
            worked[s.commune_code] = worked.get(s.commune_code, 0) + (s.status is Status.WORKING)
        t += 3600
    return {c: worked[c] / total[c] for c in total}


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        repo = await SQLiteRepository.open(Path(tmp) / "bench.db", synchronous="normal")
        try:
            await repo.migrate()
            await _fill(repo, args.clusters, args.changes, args.seed)
            devices = await repo.list_inventory()
            ev_times, hourly_times = [], []
            ev = None
            hourly: dict[str, float] = {}
            for _ in range(args.runs):
                t = time.perf_counter()
                ev = await monthly_evaluation(repo, devices, as_of=END)
                ev_times.append(time.perf_counter() - t)
                t = time.perf_counter()
                hourly = await _hourly(repo)
                hourly_times.append(time.perf_counter() - t)
            assert ev is not None
            worst = max(abs((r.share or 0.0) - hourly[r.key]) for r in ev.rows)
        finally:
            await repo.close()
    transitions = args.clusters * (args.changes + 1)
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs,")
    print(f"  Python {platform.python_version()}, SQLite via aiosqlite; {platform.platform()}")
    print(f"fleet: {args.clusters} clusters, ~{transitions} status changes in July 2023")
    print(f"evaluation (transitions, one pass): median {statistics.median(ev_times) * 1000:.1f} ms")
    print(
        f"hourly statuses_as_of (744 queries): median {statistics.median(hourly_times):.2f} s"
        f"  ({statistics.median(hourly_times) / statistics.median(ev_times):.0f}x)"
    )
    print(f"largest difference in a commune's share: {worst * 100:.2f} points (hour sampling)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clusters", type=int, default=500)
    p.add_argument("--changes", type=int, default=8, help="status changes per cluster")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seed", type=int, default=16)
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
