"""SD-card writes of the agent per day: stable, and in a fault storm with a full outbox.

Runs the real agent (``loa-agent run``) on the simulators (``loa-sim modem``
on a pty, ``loa-sim amp`` over Modbus TCP) and, for the stable phase, a real
Mosquitto from deploy/'s config. The agent's outbox lives on a disk file
system (the temp dir's; a tmpfs would show no writes at all), and what it
writes is read from ``/proc/PID/io``:

- ``write_bytes``: bytes the agent caused to be sent to the storage layer
  (page-cache pages it dirtied, 4 KiB each, counted once per writeback);
- ``wchar``: bytes it passed to write()/pwrite() (SQLite's WAL frames, etc.);
- with ``--strace``, the number of fsync/fdatasync calls (each one forces a
  flash program on the card, however few bytes it carries);
- the SQLite files' growth, and the bytes the agent logged to stderr (what
  journald would store at the default log level, before its own overhead).

Two phases, each ``--day-seconds`` long, standing for one day:

1. ``stable``: a device with no faults and the broker up, at the defaults
   except that the report timers (heartbeat 600 s, full report 6 h) run
   ``86400 / --day-seconds`` times faster, so the window holds a day's
   reports. Polls stay at their defaults: a poll stores nothing unless a
   reading moved past its hysteresis, so the reports are the day's writes
   (the number of messages stored is printed to check).
2. ``storm``: the broker unreachable and the outbox full (prefilled to
   ``outbox.max_bytes``, so every message goes through eviction), probes
   polled every second, the diagnosis windows shortened to seconds, and
   faults raised and cleared on the amplifier and the modem every
   ``--storm-s`` seconds. Figures are per day at that storm's rate, which is
   printed (fault events per hour): a storm far denser than any real day.

Usage: ``.venv/bin/python bench/sd_writes.py [--day-seconds 300] [--runs 3]
[--phases stable storm] [--strace]``. Prints the median of ``--runs`` runs
per phase; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_rig import Rig, machine, prefill, rig, storm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.mosquitto import free_port, running_broker

DAY = 86400.0
MIB = 2**20


def proc_io(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = int(value)
    return out


def fs_type(path: Path) -> str:
    """The file system type holding ``path`` (longest mount point prefix in /proc/mounts)."""
    best, kind = "", "?"
    real = str(path.resolve())
    for line in Path("/proc/mounts").read_text().splitlines():
        _, mnt, typ, *_ = line.split()
        if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
            best, kind = mnt, typ
    return f"{kind} at {best}"


def files_size(root: Path) -> int:
    return sum(f.stat().st_size for f in root.glob("outbox.sqlite*") if f.is_file())


def next_seq(db: Path) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        row = con.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()
    finally:
        con.close()
    return int(row[0]) if row else 0


@dataclass
class Window:
    write_bytes: int
    wchar: int
    file_growth: int
    log_bytes: int
    messages: int
    fsyncs: int | None
    seconds: float
    #: Real seconds that stand for one day in this window (``--day-seconds``
    #: where the report timers were compressed; 86400 where they run at the defaults).
    day: float = DAY
    fault_events: int = 0

    def per_day(self, value: float) -> float:
        return value * self.day / self.seconds


async def measure(r: Rig, seconds: float, use_strace: bool) -> Window:
    """Counters over ``seconds`` of the running agent."""
    tracer = None
    trace_out = r.root / "strace.txt"
    if use_strace:
        tracer = await asyncio.create_subprocess_exec(
            "strace", "-f", "-c", "-e", "trace=fsync,fdatasync", "-o", str(trace_out),
            "-p", str(r.proc.pid), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        await asyncio.sleep(1.0)  # attached to every thread
    io0, size0 = proc_io(r.proc.pid), files_size(r.root)
    log0 = (r.root / "agent.log").stat().st_size
    seq0 = next_seq(r.root / "outbox.sqlite")
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - t0
    io1, size1 = proc_io(r.proc.pid), files_size(r.root)
    seq1 = next_seq(r.root / "outbox.sqlite")
    log1 = (r.root / "agent.log").stat().st_size
    fsyncs = None
    if tracer is not None:
        tracer.send_signal(2)  # SIGINT: detach and write the summary
        await tracer.wait()
        fsyncs = 0
        for line in trace_out.read_text().splitlines():
            parts = line.split()
            if parts and parts[-1] in ("fsync", "fdatasync"):
                fsyncs += int(parts[3]) if len(parts) >= 5 else 0
    return Window(
        write_bytes=io1["write_bytes"] - io0["write_bytes"],
        wchar=io1["wchar"] - io0["wchar"],
        file_growth=size1 - size0,
        log_bytes=log1 - log0,
        messages=seq1 - seq0,
        fsyncs=fsyncs,
        seconds=elapsed,
    )


async def phase_stable(root: Path, args: argparse.Namespace) -> Window:
    k = args.day_seconds / DAY
    overrides = {"reports": {"heartbeat_s": 600.0 * k, "full_report_s": 21600.0 * k}}
    with running_broker(root / "broker") as broker:
        broker.add_user("bench-000")
        async with rig(
            root / "agent",
            broker_url=f"mqtt://{broker.host}:{broker.port}",
            password=broker.password("bench-000"),
            overrides=overrides,
            log_level=args.log_level,
        ) as r:
            await asyncio.sleep(args.settle)  # birth, agent_start, first report, first polls
            w = await measure(r, args.day_seconds, args.strace)
            w.day = args.day_seconds
            return w


async def phase_storm(root: Path, args: argparse.Namespace) -> Window:
    k = args.day_seconds / DAY
    overrides = {
        "modem": {"poll_s": 1.0, "timeout_s": 0.8},
        "amp": {"poll_s": 1.0, "timeout_s": 0.8},
        "system": {"poll_s": 1.0, "timeout_s": 0.8},
        "reports": {"heartbeat_s": 600.0 * k, "full_report_s": 21600.0 * k},
        "diagnosis": {"confirm_s": 2.0, "clear_s": 2.0, "weak_signal_confirm_s": 3.0},
    }

    async def fill(config: Path) -> None:
        await prefill(config)

    async with rig(
        root / "agent",
        broker_url=f"mqtt://127.0.0.1:{free_port()}",  # nothing listens: the 4G is down
        password="unused-password-0000",
        overrides=overrides,
        before_start=fill,
        log_level=args.log_level,
    ) as r:
        task = asyncio.create_task(storm(r, args.storm_s))
        try:
            await asyncio.sleep(args.settle)
            w = await measure(r, args.day_seconds, args.strace)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        con = sqlite3.connect(f"file:{r.root / 'outbox.sqlite'}?mode=ro", uri=True, timeout=10)
        try:
            w.fault_events = int(
                con.execute("SELECT COUNT(*) FROM outbox WHERE priority=3").fetchone()[0]
            )
        finally:
            con.close()
        return w


def report(name: str, windows: list[Window]) -> None:
    def med(f: Any) -> float:
        return statistics.median(f(w) for w in windows)

    def spread(f: Any, fmt: str) -> str:
        vals = [f(w) for w in windows]
        lo, hi = fmt.format(min(vals)), fmt.format(max(vals))
        return f"{fmt.format(statistics.median(vals))} (min {lo}, max {hi})"

    n = len(windows)
    print(f"{name}: {n} run(s) of {windows[0].seconds:.0f} s each, per day:")
    print("  write_bytes: " + spread(lambda w: w.per_day(w.write_bytes) / MIB, "{:.2f} MiB"))
    print("  wchar (write calls): " + spread(lambda w: w.per_day(w.wchar) / MIB, "{:.2f} MiB"))
    if all(w.fsyncs is not None for w in windows):
        print("  fsync+fdatasync: " + spread(lambda w: w.per_day(w.fsyncs or 0), "{:.0f}"))
    print(
        "  SQLite files' growth: " + spread(lambda w: w.per_day(w.file_growth) / MIB, "{:.2f} MiB")
    )
    print(
        "  log bytes to stderr (journald): "
        + spread(lambda w: w.per_day(w.log_bytes) / 1024, "{:.1f} KiB")
    )
    msgs = med(lambda w: w.per_day(w.messages))
    print(
        f"  messages stored: {msgs:.0f}/day; write_bytes per message: "
        f"{med(lambda w: w.write_bytes / max(w.messages, 1)) / 1024:.1f} KiB"
    )


async def main_async(args: argparse.Namespace) -> None:
    print(f"machine: {machine()}")
    base = Path(args.dir or tempfile.gettempdir())
    print(
        f"outbox on {base} ({fs_type(base)}); log level {args.log_level}; "
        f"1 simulated day = {args.day_seconds:g} s"
    )
    for phase in args.phases:
        windows = []
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="loa-sd-", dir=base) as tmp:
                fn = phase_stable if phase == "stable" else phase_storm
                windows.append(await fn(Path(tmp), args))
        report(phase, windows)
        if phase == "storm":
            rate = statistics.median(w.fault_events * 3600 / w.seconds for w in windows)
            print(f"  storm rate: ~{rate:.0f} fault events stored per hour (of real time)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--day-seconds", type=float, default=300.0)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--settle", type=float, default=10.0)
    p.add_argument("--storm-s", type=float, default=10.0)
    p.add_argument("--log-level", default="INFO", help="the agent's log_level (default INFO)")
    p.add_argument("--strace", action="store_true", help="count fsync/fdatasync with strace")
    p.add_argument("--dir", help="where the outbox goes (a disk file system)")
    p.add_argument("--phases", nargs="+", default=["stable", "storm"], choices=["stable", "storm"])
    args = p.parse_args(argv)
    if args.strace and not shutil.which("strace"):
        p.error("--strace needs strace (apt-get install strace)")
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
