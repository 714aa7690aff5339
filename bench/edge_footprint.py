"""Edge agent footprint: steady RSS, CPU per poll cycle, MQTT bytes per day, reconnect time.

Runs real processes: Mosquitto (the production config), ``loa-sim modem``
(Quectel dialect, on a pty) and ``loa-sim amp`` (generic profile, Modbus TCP)
per simulated device, and ``loa-agent run`` for each, with a byte-counting TCP
proxy between every agent and the broker. Three phases, each over
``--devices`` agents at once (the median is printed, with the spread):

1. ``day``: MQTT bytes of a stable device per simulated day, with the real
   collector ingest running (so the collector's store confirmations, and the
   agent's PUBACKs for them, are counted). The report timers (heartbeat, full
   report) and the collector's confirmation interval run ``86400 /
   --day-seconds`` times faster than the defaults, everything else as
   configured by default, so one ``--day-seconds`` window holds a day's worth
   of reports and confirmations. Bytes are TCP payload both ways (MQTT packets
   only: add TLS and TCP/IP overhead for the SIM's bill; an estimate is printed).
2. ``steady``: the default config exactly (30 s modem and amplifier polls),
   measured over ``--cpu-window`` seconds after a warm-up: RSS at the end, CPU
   time per 30 s poll cycle and as a share of one core.
3. ``reconnect``: the broker is stopped and started ``--outages`` times; the
   time from the broker listening again to each agent's new MQTT session.

Usage: ``.venv/bin/python bench/edge_footprint.py [--devices 3] [--day-seconds 60]
[--cpu-window 150] [--outages 3]``. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from collector.config import IngestConfig  # noqa: E402
from firmware_shims.amp.sim import amp_simulator  # noqa: E402
from firmware_shims.modem.sim import running_modem  # noqa: E402
from tests.support.mosquitto import Broker, running_broker  # noqa: E402

DAY = 86400.0
#: Extra environment for the agents (``--env``), e.g. MALLOC_ARENA_MAX=2 as a unit file sets it.
AGENT_ENV: dict[str, str] = {}
HEARTBEAT_S = 600.0  # the defaults this bench measures (edge_agent.config.ReportsConfig)
FULL_REPORT_S = 21600.0
ACK_INTERVAL_S = IngestConfig().ack_interval_s  # the collector's default
#: ``--clock``: "trust" measures a synchronised controller (the normal case) even
#: where this machine's kernel says otherwise; "kernel" asks the kernel.
CLOCK_SYNC = ["trust"]


@dataclass
class Counted:
    """Bytes through one agent's proxy, and when each MQTT session started."""

    up: int = 0
    down: int = 0
    sessions: list[float] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.up + self.down


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, counted: Counted, up: bool
) -> None:
    try:
        while chunk := await reader.read(65536):
            if up:
                counted.up += len(chunk)
            else:
                counted.down += len(chunk)
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def proxy(broker: Broker, counted: Counted) -> AsyncIterator[int]:
    """A TCP proxy to the broker counting bytes; yields its port."""

    async def client(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            br, bw = await asyncio.open_connection(broker.host, broker.port)
        except OSError:
            cw.close()  # broker down: the agent sees a refused/closed link, as in the field
            return
        counted.sessions.append(time.monotonic())
        await asyncio.gather(_pipe(cr, bw, counted, True), _pipe(br, cw, counted, False))

    server = await asyncio.start_server(client, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


def _toml(data: dict[str, dict[str, Any]]) -> str:
    out = []
    for section, values in data.items():
        out.append(f"[{section}]")
        out += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    return "\n".join(out) + "\n"


@dataclass
class Device:
    name: str
    root: Path
    counted: Counted
    proc: asyncio.subprocess.Process | None = None

    @property
    def ps(self) -> psutil.Process:
        assert self.proc is not None
        return psutil.Process(self.proc.pid)


@contextlib.asynccontextmanager
async def device(
    broker: Broker, root: Path, name: str, reports: dict[str, Any]
) -> AsyncIterator[Device]:
    """Simulators, proxy and a running agent for one device."""
    root.mkdir(parents=True)
    broker.add_user(name)
    (root / "pw").write_text(broker.password(name) + "\n")
    counted = Counted()
    async with (
        running_modem(root / "modem", dialect="quectel") as modem,
        amp_simulator(tcp="127.0.0.1:0", control_socket=root / "amp.ctl") as amp,
        proxy(broker, counted) as port,
    ):
        assert amp.tcp is not None
        cfg = {
            "device": {"id": name, "commune": "bench"},
            "broker": {"url": f"mqtt://127.0.0.1:{port}", "password_file": str(root / "pw")},
            "modem": {"port": str(modem.link), "dialect": "quectel"},
            "amp": {"transport": "tcp", "address": f"{amp.tcp[0]}:{amp.tcp[1]}"},
            "system": {"disk_path": str(root), "clock_sync": CLOCK_SYNC[0]},
            "reports": reports,
            "outbox": {"path": str(root / "outbox.sqlite")},
            "control": {"socket": str(root / "control.sock")},
        }
        (root / "agent.toml").write_text('log_level = "WARNING"\n' + _toml(cfg))
        with (root / "agent.log").open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "edge_agent.cli",
                "run",
                "--config",
                str(root / "agent.toml"),
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env={**os.environ, **AGENT_ENV},
            )
        dev = Device(name, root, counted, proc)
        try:
            yield dev
        finally:
            proc.terminate()
            try:
                async with asyncio.timeout(20):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _wait_sessions(devs: list[Device], n: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while any(len(d.counted.sessions) < n for d in devs):
        if time.monotonic() > deadline:
            logs = "\n".join((d.root / "agent.log").read_text()[-2000:] for d in devs)
            raise RuntimeError(f"agents did not connect:\n{logs}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def fleet(
    broker: Broker, root: Path, n: int, reports: dict[str, Any]
) -> AsyncIterator[list[Device]]:
    async with contextlib.AsyncExitStack() as stack:
        devs = [
            await stack.enter_async_context(
                device(broker, root / f"d{i}", f"bench-{i:03d}", reports)
            )
            for i in range(n)
        ]
        await _wait_sessions(devs, 1)
        yield devs


def _spread(values: list[float], fmt: str) -> str:
    med, lo, hi = statistics.median(values), min(values), max(values)
    return f"{fmt.format(med)} (min {fmt.format(lo)}, max {fmt.format(hi)}, n={len(values)})"


@contextlib.asynccontextmanager
async def collector(broker: Broker, root: Path, ack_interval_s: float) -> AsyncIterator[Any]:
    """The real collector ingest (SQLite, store confirmations) in this process."""
    from collector.ingest import Ingestor, run_ingest
    from collector.metrics import IngestStats
    from collector.store.sqlite import SQLiteRepository
    from tests.collector.conftest import make_config

    root.mkdir(parents=True, exist_ok=True)
    cfg = make_config(broker, root, ingest={"ack_interval_s": ack_interval_s})
    repo = await SQLiteRepository.open(cfg.db.path, synchronous="normal")
    await repo.migrate()
    ingestor = Ingestor(repo, cfg.ingest, IngestStats())
    connected = asyncio.Event()
    task = asyncio.create_task(run_ingest(cfg, ingestor, connected=connected))
    try:
        await asyncio.wait_for(connected.wait(), 10)
        yield ingestor
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await repo.close()


async def phase_day(broker: Broker, root: Path, n: int, day_seconds: float) -> dict[str, Any]:
    k = day_seconds / DAY
    reports = {"heartbeat_s": HEARTBEAT_S * k, "full_report_s": FULL_REPORT_S * k}
    async with (
        collector(broker, root / "collector", ACK_INTERVAL_S * k) as ingestor,
        fleet(broker, root / "day", n, reports) as devs,
    ):
        await asyncio.sleep(5.0)  # start-up: birth, agent_start, first full report
        start = [d.counted.total for d in devs]
        acks0 = ingestor.stats.confirmations
        await asyncio.sleep(day_seconds)
        per_day = [d.counted.total - s for d, s in zip(devs, start, strict=True)]
        acks = (ingestor.stats.confirmations - acks0) / n
    return {"per_day": per_day, "acks_per_device": acks}


async def phase_steady(broker: Broker, root: Path, n: int, window: float) -> dict[str, Any]:
    async with fleet(broker, root / "steady", n, {}) as devs:
        await asyncio.sleep(35.0)  # warm-up: first polls, imports, first reports
        startup = [d.counted.total for d in devs]  # no heartbeat is due yet at defaults
        t0 = time.monotonic()
        cpu0 = [sum(d.ps.cpu_times()[:2]) for d in devs]
        await asyncio.sleep(window)
        elapsed = time.monotonic() - t0
        cpu = [sum(d.ps.cpu_times()[:2]) - c for d, c in zip(devs, cpu0, strict=True)]
        rss = [d.ps.memory_info().rss / 2**20 for d in devs]
        uss = [d.ps.memory_full_info().uss / 2**20 for d in devs]
        threads = [d.ps.num_threads() for d in devs]
    cycles = elapsed / 30.0
    return {
        "cpu_ms_per_cycle": [c * 1000 / cycles for c in cpu],
        "cpu_pct": [c * 100 / elapsed for c in cpu],
        "rss_mib": rss,
        "uss_mib": uss,
        "threads": threads,
        "window_s": elapsed,
        "startup": startup,
    }


async def phase_reconnect(broker: Broker, root: Path, n: int, outages: int) -> list[float]:
    delays: list[float] = []
    async with fleet(broker, root / "reconnect", n, {}) as devs:
        for i in range(outages):
            await asyncio.to_thread(broker.stop)
            await asyncio.sleep(8.0)  # long enough for the backoff to reach its cap
            await asyncio.to_thread(broker.start)
            back = time.monotonic()
            await _wait_sessions(devs, i + 2)
            delays += [d.counted.sessions[i + 1] - back for d in devs]
    return delays


def _machine() -> str:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{platform.machine()} {model or platform.processor()}, {os.cpu_count()} CPUs, "
        f"{psutil.virtual_memory().total / 2**30:.1f} GiB, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


@contextlib.contextmanager
def _broker(root: Path) -> Iterator[Broker]:
    with running_broker(root / "broker") as b:
        yield b


async def main_async(args: argparse.Namespace) -> None:
    print(f"machine: {_machine()}")
    print(f"devices per phase: {args.devices} (agents run side by side; medians over devices)")
    print(f"agents' clock_sync: {CLOCK_SYNC[0]}")
    if AGENT_ENV:
        print(f"agent environment: {AGENT_ENV}")
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp, _broker(Path(tmp)) as broker:
        root = Path(tmp)
        if "day" in args.phases:
            day = await phase_day(broker, root, args.devices, args.day_seconds)
            per_day = [float(b) for b in day["per_day"]]
            print(
                f"MQTT bytes per simulated day (stable device, defaults, heartbeat "
                f"{HEARTBEAT_S:.0f} s, full report {FULL_REPORT_S:.0f} s): "
                + _spread([b / 1024 for b in per_day], "{:.1f} KiB")
            )
            print(
                f"  including {day['acks_per_device']:.0f} store confirmations per device "
                f"(collector ack_interval_s {ACK_INTERVAL_S:.0f} s)"
            )
            msgs = DAY / HEARTBEAT_S + DAY / FULL_REPORT_S + day["acks_per_device"]
            # TLS 1.2 AES-GCM record ~29 B; TCP/IPv4 headers 52 B per segment, and each
            # publish is a segment each way plus a bare ACK: an estimate, not a measurement.
            est = statistics.median(per_day) + msgs * (2 * 29 + 3 * 52)
            print(f"  estimated with TLS + TCP/IP overhead: {est / 1024:.1f} KiB/day")
        if "steady" in args.phases:
            st = await phase_steady(broker, root, args.devices, args.cpu_window)
            print(f"steady state at defaults (30 s polls), window {st['window_s']:.0f} s:")
            print("  RSS: " + _spread(st["rss_mib"], "{:.1f} MiB"))
            print("  USS: " + _spread(st["uss_mib"], "{:.1f} MiB"))
            print("  CPU per 30 s poll cycle: " + _spread(st["cpu_ms_per_cycle"], "{:.1f} ms"))
            print("  CPU share of one core: " + _spread(st["cpu_pct"], "{:.3f} %"))
            print(f"  threads: {st['threads']}")
            print(
                "  start-up traffic (CONNECT, SUBSCRIBE, birth, agent_start, first report): "
                + _spread([float(b) for b in st["startup"]], "{:.0f} B")
            )
        if "reconnect" in args.phases:
            delays = await phase_reconnect(broker, root, args.devices, args.outages)
            print(
                "reconnect after the broker returns (8 s outages): " + _spread(delays, "{:.2f} s")
            )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--devices", type=int, default=3)
    p.add_argument("--day-seconds", type=float, default=60.0)
    p.add_argument("--cpu-window", type=float, default=150.0)
    p.add_argument("--outages", type=int, default=3)
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--clock",
        choices=["trust", "kernel"],
        default="trust",
        help="agents' [system] clock_sync (kernel: unsynchronised here, every message stamped)",
    )
    p.add_argument(
        "--phases",
        nargs="+",
        default=["day", "steady", "reconnect"],
        choices=["day", "steady", "reconnect"],
    )
    args = p.parse_args(argv)
    AGENT_ENV.update(item.split("=", 1) for item in args.env)
    CLOCK_SYNC[0] = args.clock
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
