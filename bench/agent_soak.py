"""Agent memory soak under the unit's memory limit, with a full outbox and a technician.

One ``loa-agent run`` on the simulators (``loa-sim modem`` on a pty, ``loa-sim
amp`` over Modbus TCP) in a memory cgroup with deploy/systemd/loa-agent.service's
``MemoryMax=`` and ``MemoryHigh=`` (cgroup v2 ``memory.max``/``memory.high``;
on a cgroup-v1 host ``memory.limit_in_bytes`` and the soft limit). Time is
compressed: every probe polls each ``--poll-s`` seconds (default 1 s instead
of 30-60 s), heartbeats every 5 s, full reports every 30 s, fault confirm and
clear windows of seconds. The broker is unreachable for the whole soak (a 4G
outage), and the outbox starts full (``outbox.max_bytes``, 8 MiB), so every
new message goes through eviction. Faults are raised and cleared on both
simulators every ``--storm-s`` seconds, and a technician runs status, outbox,
events, diag, AT and Modbus commands through the control socket every 2 s.

RSS (and USS, the cgroup's charge, fds, threads) is printed every
``--sample-s`` seconds; at the end, the median RSS after ``--warmup-min``
and the growth per hour (least-squares slope over the samples after warm-up).

Usage: ``.venv/bin/python bench/agent_soak.py [--hours 1] [--sample-s 30]``
(as root for the cgroup; without one it says so and runs unlimited).
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from agent_rig import (
    TechStats,
    cgroup_report,
    cli,
    machine,
    make_cgroup,
    prefill,
    rig,
    technician,
    unit_memory_limits,
)
from agent_rig import storm as fault_storm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.mosquitto import free_port


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) points, in MiB per hour."""
    if len(points) < 2:
        return float("nan")
    mt = statistics.fmean(t for t, _ in points)
    mv = statistics.fmean(v for _, v in points)
    num = sum((t - mt) * (v - mv) for t, v in points)
    den = sum((t - mt) ** 2 for t, _ in points)
    return num / den * 3600.0 if den else float("nan")


async def soak(args: argparse.Namespace) -> int:
    high, max_ = unit_memory_limits()
    print(f"machine: {machine()}")
    print(
        f"unit limits: MemoryHigh={high // 2**20}M MemoryMax={max_ // 2**20}M; "
        f"soak {args.hours:g} h, polls every {args.poll_s:g} s, faults toggled every "
        f"{args.storm_s:g} s, technician command every 2 s, broker unreachable"
    )
    cg = make_cgroup(f"loa-soak-{os.getpid()}", high, max_)
    p = args.poll_s
    # Each probe's timeout must stay under its poll interval; the simulators answer in ms.
    to = min(0.8 * p, 1.0)
    overrides = {
        "modem": {"poll_s": p, "timeout_s": to},
        "amp": {"poll_s": p, "timeout_s": to},
        "system": {"poll_s": p, "timeout_s": to},
        "reports": {"heartbeat_s": 5.0, "full_report_s": 30.0},
        "diagnosis": {
            "confirm_s": 3.0,
            "clear_s": 3.0,
            "weak_signal_confirm_s": 5.0,
            "flap_window_s": 60.0,
        },
        "recovery": {"soft_reset_after_s": 20.0, "soft_reset_min_interval_s": 60.0},
    }

    async def fill(config: Path) -> None:
        t0 = time.monotonic()
        n, b = await prefill(config)
        print(
            f"outbox prefilled: {n} messages, {b / 2**20:.2f} MiB in {time.monotonic() - t0:.0f} s"
        )

    with tempfile.TemporaryDirectory(prefix="loa-soak-", dir=args.dir) as tmp:
        try:
            async with rig(
                Path(tmp),
                broker_url=f"mqtt://127.0.0.1:{free_port()}",  # nothing listens: an outage
                password="unused-password-0000",
                overrides=overrides,
                cgroup=cg,
                before_start=fill,
            ) as r:
                stats = TechStats()
                tasks = [
                    asyncio.create_task(technician(r, stats)),
                    asyncio.create_task(fault_storm(r, args.storm_s)),
                ]
                t0 = time.monotonic()
                end = t0 + args.hours * 3600.0
                samples: list[tuple[float, float]] = []
                print("    t_s  rss_MiB  uss_MiB  cgroup_MiB  fds  threads  tech_runs  outbox_MiB")
                while time.monotonic() < end and r.alive():
                    ps = r.ps
                    rss = ps.memory_info().rss / 2**20
                    uss = ps.memory_full_info().uss / 2**20
                    cgm = cg.usage() / 2**20 if cg else float("nan")
                    ob = sum(
                        f.stat().st_size for f in Path(tmp).glob("outbox.sqlite*") if f.is_file()
                    )
                    t = time.monotonic() - t0
                    samples.append((t, rss))
                    print(
                        f"{t:7.0f}  {rss:7.1f}  {uss:7.1f}  {cgm:10.1f}  {ps.num_fds():3d}  "
                        f"{ps.num_threads():7d}  {stats.runs:9d}  {ob / 2**20:10.2f}",
                        flush=True,
                    )
                    await asyncio.sleep(args.sample_s)
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                alive = r.alive()
                print(cgroup_report(cg))
                if alive:
                    # What the storm made the agent record, as the technician sees it.
                    print((await cli(r, "events", "-n", "8", "--lang", "en"))[1].rstrip())
                    print((await cli(r, "outbox", "--lang", "en"))[1].rstrip())
                if not alive:
                    print(f"AGENT DIED (exit {r.proc.returncode}):\n{r.log_tail()}")
        finally:
            if cg is not None:
                cg.remove()
    warm = [(t, v) for t, v in samples if t >= args.warmup_min * 60.0]
    if not warm:
        warm = samples
    rss = [v for _, v in warm]
    print(
        f"RSS after {args.warmup_min:g} min warm-up over {warm[-1][0] / 3600:.2f} h: "
        f"median {statistics.median(rss):.1f} MiB, min {min(rss):.1f}, max {max(rss):.1f}; "
        f"first {warm[0][1]:.1f} -> last {warm[-1][1]:.1f} MiB"
    )
    print(f"RSS growth: {slope_per_hour(warm):+.2f} MiB/h (least squares over {len(warm)} samples)")
    print(
        f"technician commands: {stats.runs} run, {stats.failures} failed"
        + (f" (last: {stats.last_failure})" if stats.failures else "")
    )
    return 0 if alive else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--hours", type=float, default=1.0)
    p.add_argument("--sample-s", type=float, default=30.0)
    p.add_argument("--poll-s", type=float, default=1.0)
    p.add_argument("--storm-s", type=float, default=15.0)
    p.add_argument("--warmup-min", type=float, default=5.0)
    p.add_argument("--dir", help="where the agent's files go (default: the temp dir)")
    return asyncio.run(soak(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
