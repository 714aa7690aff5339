"""One real agent on real simulators, for the soak and SD-card benches.

``rig()`` starts ``loa-sim modem`` (Quectel dialect, on a pty) and ``loa-sim
amp`` (generic profile, Modbus TCP), writes an ``agent.toml`` and runs
``loa-agent run`` from this tree's venv, optionally inside a memory cgroup.
``prefill()`` fills an outbox to its cap the way a long outage does, before
the agent opens it. ``technician()`` runs the technician's commands against
the running agent in a loop. ``storm()`` raises and clears faults on both
simulators. Everything is real; nothing asserts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from edge_footprint import _machine, _toml  # noqa: E402

from firmware_shims.amp.sim import RunningSim, amp_simulator  # noqa: E402
from firmware_shims.modem.sim import SimProcess, running_modem  # noqa: E402

__all__ = ["Rig", "cgroup_report", "machine", "prefill", "rig", "storm", "technician"]
machine = _machine


# --- memory cgroup -----------------------------------------------------------------


@dataclass
class Cgroup:
    """A memory cgroup the agent runs in (v2, or v1 where that is what the host mounts)."""

    path: Path
    version: int

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(f"{pid}\n")

    def usage(self) -> int:
        name = "memory.current" if self.version == 2 else "memory.usage_in_bytes"
        return int((self.path / name).read_text())

    def peak(self) -> int | None:
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        with contextlib.suppress(OSError, ValueError):
            return int((self.path / name).read_text())
        return None

    def limit_hits(self) -> str:
        """How often the limit was reached (v1 failcnt; v2 memory.events high/max/oom)."""
        if self.version == 1:
            return f"failcnt={(self.path / 'memory.failcnt').read_text().strip()}"
        ev = dict(line.split() for line in (self.path / "memory.events").read_text().splitlines())
        return " ".join(f"{k}={ev.get(k, '?')}" for k in ("high", "max", "oom", "oom_kill"))

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.rmdir()


def unit_memory_limits() -> tuple[int, int]:
    """MemoryHigh= and MemoryMax= of deploy/systemd/loa-agent.service, in bytes."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    found: dict[str, int] = {}
    for line in (ROOT / "deploy/systemd/loa-agent.service").read_text().splitlines():
        key, _, value = line.strip().partition("=")
        if key in ("MemoryHigh", "MemoryMax"):
            found[key] = int(value[:-1]) * units[value[-1]] if value[-1] in units else int(value)
    return found["MemoryHigh"], found["MemoryMax"]


def make_cgroup(name: str, high: int, max_: int) -> Cgroup | None:
    """A cgroup with the unit's limits, or None (printed why) where none can be made here."""
    v2 = Path("/sys/fs/cgroup")
    if (
        "memory" in (v2 / "cgroup.controllers").read_text(errors="ignore").split()
        if (v2 / "cgroup.controllers").exists()
        else False
    ):
        path = v2 / name
        try:
            path.mkdir()
            (path / "memory.high").write_text(str(high))
            (path / "memory.max").write_text(str(max_))
            (path / "memory.swap.max").write_text("0")
        except OSError as exc:
            print(f"cgroup v2: cannot make {path}: {exc}")
            return None
        return Cgroup(path, 2)
    v1 = Path("/sys/fs/cgroup/memory")
    if v1.is_dir():
        path = v1 / name
        try:
            path.mkdir()
            # v1 has no MemoryHigh: its nearest, the soft limit, only matters under
            # host memory pressure. memory.limit_in_bytes is MemoryMax exactly.
            (path / "memory.limit_in_bytes").write_text(str(max_))
            (path / "memory.soft_limit_in_bytes").write_text(str(high))
            with contextlib.suppress(OSError):
                (path / "memory.memsw.limit_in_bytes").write_text(str(max_))
        except OSError as exc:
            print(f"cgroup v1: cannot make {path}: {exc}")
            return None
        return Cgroup(path, 1)
    print("no writable memory cgroup on this host: running without a limit")
    return None


def cgroup_report(cg: Cgroup | None) -> str:
    if cg is None:
        return "no cgroup"
    peak = cg.peak()
    return (
        f"cgroup v{cg.version} {cg.path}: usage {cg.usage() / 2**20:.1f} MiB"
        + (f", peak {peak / 2**20:.1f} MiB" if peak is not None else "")
        + f", {cg.limit_hits()}"
    )


# --- the agent and its simulators --------------------------------------------------


@dataclass
class Rig:
    root: Path
    config: Path
    proc: asyncio.subprocess.Process
    modem: SimProcess
    amp: RunningSim
    cgroup: Cgroup | None

    @property
    def ps(self) -> psutil.Process:
        return psutil.Process(self.proc.pid)

    def alive(self) -> bool:
        return self.proc.returncode is None

    def log_tail(self, n: int = 3000) -> str:
        return (self.root / "agent.log").read_text(errors="replace")[-n:]


def agent_config(
    root: Path,
    *,
    broker_url: str,
    password_file: Path,
    modem_link: Path,
    amp_address: str,
    overrides: dict[str, dict[str, Any]],
    log_level: str = "WARNING",
) -> Path:
    cfg: dict[str, dict[str, Any]] = {
        "device": {"id": "bench-000", "commune": "bench"},
        "broker": {"url": broker_url, "password_file": str(password_file)},
        "modem": {"port": str(modem_link), "dialect": "quectel"},
        "amp": {"transport": "tcp", "address": amp_address},
        "system": {"disk_path": str(root)},
        "outbox": {"path": str(root / "outbox.sqlite")},
        "control": {"socket": str(root / "control.sock")},
    }
    for section, values in overrides.items():
        cfg.setdefault(section, {}).update(values)
    path = root / "agent.toml"
    path.write_text(f'log_level = "{log_level}"\n' + _toml(cfg))
    return path


@contextlib.asynccontextmanager
async def rig(
    root: Path,
    *,
    broker_url: str,
    password: str,
    overrides: dict[str, dict[str, Any]] | None = None,
    cgroup: Cgroup | None = None,
    env: dict[str, str] | None = None,
    before_start: Any = None,
    log_level: str = "WARNING",
) -> AsyncIterator[Rig]:
    """Simulators and a running agent in ``root``; ``before_start(config)`` runs first."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "pw").write_text(password + "\n")
    async with (
        running_modem(root / "modem", dialect="quectel", control_path=root / "modem.ctl") as modem,
        amp_simulator(tcp="127.0.0.1:0", control_socket=root / "amp.ctl") as amp,
    ):
        assert amp.tcp is not None
        config = agent_config(
            root,
            broker_url=broker_url,
            password_file=root / "pw",
            modem_link=modem.link,
            amp_address=f"{amp.tcp[0]}:{amp.tcp[1]}",
            overrides=overrides or {},
            log_level=log_level,
        )
        if before_start is not None:
            await before_start(config)
        with (root / "agent.log").open("ab") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "edge_agent.cli",
                "run",
                "--config",
                str(config),
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **(env or {})},
            )
        if cgroup is not None:
            # Moved in right after exec: the interpreter's start-up is charged too.
            cgroup.add(proc.pid)
        r = Rig(root, config, proc, modem, amp, cgroup)
        try:
            await wait_control(r)
            yield r
        finally:
            if proc.returncode is None:
                proc.terminate()
                try:
                    async with asyncio.timeout(60):
                        await proc.wait()
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


async def wait_control(r: Rig, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not (r.root / "control.sock").exists():
        if r.proc.returncode is not None or time.monotonic() > deadline:
            raise RuntimeError(f"agent did not start:\n{r.log_tail()}")
        await asyncio.sleep(0.1)


async def cli(r: Rig, *args: str, timeout: float = 60.0) -> tuple[int, str]:
    """One ``loa-agent`` technician command against the rig's agent."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge_agent.cli",
        *args,
        "--config",
        str(r.config),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(timeout):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return -1, "timeout"
    return int(proc.returncode or 0), out.decode(errors="replace")


@dataclass
class TechStats:
    runs: int = 0
    failures: int = 0
    last_failure: str = ""


async def technician(r: Rig, stats: TechStats, every: float = 2.0) -> None:
    """A technician over SSH: status, outbox, events, diag, AT and Modbus reads, in turn."""
    commands = [
        ("status",),
        ("outbox",),
        ("events", "-n", "50"),
        ("status", "--json"),
        ("diag", "modem"),
        ("at", "AT+CSQ"),
        ("modbus", "read", "0", "4"),
        ("diag", "all"),
    ]
    i = 0
    while True:
        cmd = commands[i % len(commands)]
        i += 1
        code, out = await cli(r, *cmd)
        stats.runs += 1
        # diag exits non-zero when a check fails, which a fault storm makes happen.
        if code not in (0, 1) or (code == 1 and cmd[0] not in ("diag", "status")):
            stats.failures += 1
            stats.last_failure = f"{' '.join(cmd)} -> {code}: {out[-300:]}"
        await asyncio.sleep(every)


async def storm(r: Rig, period: float, stop: asyncio.Event | None = None) -> int:
    """Raise and clear amplifier and modem faults every ``period`` seconds; returns toggles."""
    amp_faults = ["over_temp", "output_short", "line_open", "mains_fail", "battery_low"]
    modem_faults = ["weak_signal", "no_service", "sim_absent"]
    rnd = random.Random(18)
    toggles = 0
    active_amp: str | None = None
    active_modem: str | None = None
    while stop is None or not stop.is_set():
        if active_amp:
            await r.amp.clear_fault(active_amp)
            active_amp = None
        else:
            active_amp = rnd.choice(amp_faults)
            await r.amp.set_fault(active_amp)
        if toggles % 3 == 0:
            if active_modem:
                await r.modem.clear(active_modem)
                active_modem = None
            else:
                active_modem = rnd.choice(modem_faults)
                await r.modem.set(active_modem)
        toggles += 1
        await asyncio.sleep(period)
    return toggles


async def prefill(config_path: Path, target_bytes: int | None = None) -> tuple[int, int]:
    """Fill the agent's outbox to its cap (``outbox.max_bytes``) as a long outage does.

    Full reports and heartbeats in the proportion the defaults make them, a fault
    recovery event now and then, each through ``Outbox.put`` like the agent's own.
    Returns (messages, payload bytes) stored.
    """
    from edge_agent import reports
    from edge_agent.config import load_config
    from edge_agent.outbox import Outbox, Priority
    from fleet_protocol import EventType, Kind

    cfg = load_config(config_path)
    box = await Outbox.open(cfg.outbox.path, device=cfg.device.id, max_bytes=cfg.outbox.max_bytes)
    # A month of outage written in seconds: no fsync per message for the fill
    # itself (the agent reopens the file with its own settings).
    await box._db.execute("PRAGMA synchronous=OFF")
    target = cfg.outbox.max_bytes if target_bytes is None else target_bytes
    snap = reports.Snapshot(modem=None, amp=None, stream=None, system=None, faults=())
    t = time.time() - 30 * 86400.0
    n = 0
    try:
        while box.bytes < target - 2048:
            t += 600.0
            n += 1
            if n % 36 == 0:
                await box.put(
                    Kind.STATE,
                    lambda seq, n=n, t=t: reports.full_report(
                        cfg.device.id, cfg.device.commune, seq, snap, outbox_depth=n, ts=t
                    ),
                    Priority.REPORT,
                )
            elif n % 500 == 0:
                await box.put(
                    Kind.EVENT,
                    lambda seq, t=t: reports.event(
                        cfg.device.id, seq, EventType.RECOVERY, action="modem_soft_reset", ts=t
                    ),
                    Priority.EVENT,
                )
            else:
                await box.put(
                    Kind.STATE,
                    lambda seq, n=n, t=t: reports.heartbeat(
                        cfg.device.id, seq, (), outbox_depth=n, ts=t
                    ),
                    Priority.HEARTBEAT,
                )
        return box.depth, box.bytes
    finally:
        await box.aclose()
