"""Helpers for the agent's integration tests: config files with times scaled down,
the agent as a real subprocess (``loa-agent run``), and a collector-side subscriber."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

from fleet_protocol import Event, Kind, Message, Presence, StateReport, decode, parse_topic
from tests.support.mosquitto import COLLECTOR_USER, Broker

REPO = Path(__file__).resolve().parents[2]

#: Times scaled down so a test runs in seconds (production defaults are minutes).
FAST: dict[str, dict[str, Any]] = {
    "broker": {
        "keepalive_s": 10,
        "connect_timeout_s": 2.0,
        "publish_timeout_s": 3.0,
        "backoff_base_s": 2.0,
        "backoff_max_s": 0.5,
        "refused_backoff_max_s": 2.0,
    },
    "system": {"poll_s": 0.5, "timeout_s": 0.4},
    "reports": {"heartbeat_s": 3.0, "full_report_s": 30.0},
    "diagnosis": {
        "confirm_s": 1.0,
        "clear_s": 1.5,
        "weak_signal_confirm_s": 1.5,
        "flap_window_s": 20.0,
        "flap_count": 3,
    },
    "recovery": {
        "soft_reset_after_s": 600.0,
        "soft_reset_min_interval_s": 600.0,
        "hook_after_s": 900.0,
    },
}


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str | Path):
        return json.dumps(str(v))
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(v)


def write_config(
    tmp_path: Path,
    broker: Broker,
    device: str = "dev-001",
    /,
    **sections: dict[str, Any],
) -> Path:
    """agent.toml for ``device`` on ``broker`` (plain listener), FAST times, plus ``sections``."""
    broker.add_user(device)
    pw = tmp_path / "mqtt-password"
    pw.write_text(broker.password(device) + "\n")
    data: dict[str, dict[str, Any]] = {
        "device": {"id": device, "commune": "xa-test"},
        "broker": {"url": broker.url, "password_file": str(pw)},
        "outbox": {"path": str(tmp_path / "outbox.sqlite")},
        "control": {"socket": str(tmp_path / "control.sock")},
    }
    for name, values in FAST.items():
        data.setdefault(name, {}).update(values)
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return write_agent_toml(tmp_path / "agent.toml", data)


def write_agent_toml(path: Path, data: dict[str, dict[str, Any]]) -> Path:
    """``data`` (section -> key -> value) as an agent.toml at ``path``, DEBUG logging."""
    lines = ['log_level = "DEBUG"']
    for name, values in data.items():
        lines.append(f"\n[{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class AgentProcess:
    """``loa-agent run --config PATH`` as a child process; stderr goes to ``log``."""

    def __init__(self, config: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log_path = log
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        with self.log_path.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edge_agent.cli", "run", "--config", str(self.config)],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"agent ignored SIGTERM:\n{self.log()}") from None
        self.proc = None
        return rc

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> AgentProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc = None


@dataclass
class Seen:
    """Every message the collector side received, decoded, in arrival order."""

    messages: list[Message] = field(default_factory=list)
    raw_bytes: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def of(self, cls: type[Any]) -> list[Any]:
        return [m for m in self.messages if isinstance(m, cls)]

    @property
    def states(self) -> list[StateReport]:
        return self.of(StateReport)

    @property
    def events(self) -> list[Event]:
        return self.of(Event)

    @property
    def presence(self) -> list[Presence]:
        return self.of(Presence)

    async def wait_for(
        self, predicate: Callable[[Seen], Any], timeout: float = 15.0, what: str = ""
    ) -> Any:
        """Wait until ``predicate(self)`` is truthy; return its value."""
        try:
            async with asyncio.timeout(timeout):
                while not (value := predicate(self)):
                    self.arrived.clear()
                    await self.arrived.wait()
        except TimeoutError:
            tail = [type(m).__name__ for m in self.messages[-10:]]
            raise AssertionError(
                f"timed out waiting for {what or predicate}; last: {tail}"
            ) from None
        return value


@contextlib.asynccontextmanager
async def collecting(broker: Broker, client_id: str = "test-collector") -> AsyncIterator[Seen]:
    """Subscribe to ``loa/v1/#`` as the collector, with a persistent session that
    survives broker restarts (so an outage test sees every message exactly as sent)."""
    seen = Seen()
    ready = asyncio.Event()

    async def pump() -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    broker.host,
                    broker.port,
                    username=COLLECTOR_USER,
                    password=broker.password(COLLECTOR_USER),
                    identifier=client_id,
                    clean_session=False,
                    timeout=3.0,
                ) as c:
                    await c.subscribe("loa/v1/#", qos=1)
                    ready.set()
                    async for m in c.messages:
                        payload = m.payload
                        assert isinstance(payload, bytes | bytearray)
                        seen.raw_bytes += len(payload)
                        _, kind = parse_topic(str(m.topic))
                        if kind == Kind.CMD:
                            continue  # what the test itself sends the agent
                        seen.messages.append(decode(kind, payload))
                        seen.arrived.set()
            except aiomqtt.MqttError:
                await asyncio.sleep(0.1)

    task = asyncio.create_task(pump(), name="test-collector")
    try:
        async with asyncio.timeout(10):
            await ready.wait()
        yield seen
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def seqs(messages: list[Message]) -> list[int]:
    return [m.seq for m in messages]


def wait_path(path: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear in {timeout} s")
        time.sleep(0.02)


_NO_EXPIRY = object()


async def send_command(
    broker: Broker,
    device: str,
    cid: str,
    action: str,
    *,
    user: str = COLLECTOR_USER,
    expires: object = _NO_EXPIRY,
    protocol: aiomqtt.ProtocolVersion = aiomqtt.ProtocolVersion.V311,
    **args: Any,
) -> None:
    """Publish one Command to ``device`` as ``user`` (the collector by default).

    ``expires`` defaults to a minute from now; pass None for an undated command.
    """
    from fleet_protocol import PROTOCOL_VERSION, Command, encode, topic

    cmd = Command(
        v=PROTOCOL_VERSION,
        device=device,
        seq=int(time.time() * 1000),
        ts=time.time(),
        id=cid,
        action=action,
        args=args,
        expires=time.time() + 60 if expires is _NO_EXPIRY else expires,  # type: ignore[arg-type]
    )
    broker.add_user(user)
    async with aiomqtt.Client(
        broker.host,
        broker.port,
        username=user,
        password=broker.password(user),
        identifier=f"sender-{cid}",
        protocol=protocol,
    ) as c:
        await c.publish(topic(device, Kind.CMD), encode(cmd), qos=1)


async def reply_to(seen: Seen, cid: str, timeout: float = 30.0) -> Any:
    """The Reply to command ``cid``, once it arrived."""
    from fleet_protocol import Reply

    got = await seen.wait_for(
        lambda s: [r for r in s.of(Reply) if r.id == cid], timeout=timeout, what=f"reply {cid}"
    )
    return got[0]
