"""sd_notify in pure Python: path and abstract sockets, watchdog, and the daemon's use of it."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.sdnotify import Notifier
from tests.edge_agent.agent_support import AgentProcess, write_config
from tests.support.mosquitto import Broker


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    s.bind(path)
    s.settimeout(20)
    yield s, path
    s.close()


def test_path_socket_gets_ready_and_status(listener: tuple[socket.socket, str]) -> None:
    s, path = listener
    assert Notifier(path).ready("polling modem")
    assert s.recv(4096) == b"READY=1\nSTATUS=polling modem"


def test_abstract_socket() -> None:
    name = f"loa-agent-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        s.settimeout(5)
        assert Notifier("@" + name).watchdog()
        assert s.recv(100) == b"WATCHDOG=1"


def test_outside_systemd_and_dead_socket_are_quiet(tmp_path: Path) -> None:
    assert Notifier.from_env({}).ready() is False
    dead = Notifier(str(tmp_path / "nobody-listens"))
    assert dead.ready() is False and dead.watchdog() is False


def test_watchdog_interval_is_half_of_watchdog_sec_and_checks_the_pid() -> None:
    mine = Notifier.from_env({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())})
    assert mine.watchdog_interval == 2.0
    other = Notifier.from_env({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval is None


def test_daemon_sends_ready_and_watchdog_pings(
    broker: Broker, tmp_path: Path, listener: tuple[socket.socket, str]
) -> None:
    s, path = listener
    cfg = write_config(tmp_path, broker)
    # WATCHDOG_PID is left out: systemd sets it to the service's pid, unknown before start.
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}
    with AgentProcess(cfg, tmp_path / "agent.log", env=env) as agent:
        got = [s.recv(4096) for _ in range(3)]
        assert any(g.startswith(b"READY=1") for g in got), got
        assert b"WATCHDOG=1" in got, got
        assert agent.stop() == 0
    rest = []
    s.settimeout(0.5)
    try:
        while True:
            rest.append(s.recv(4096))
    except TimeoutError:
        pass
    assert b"STOPPING=1" in rest, rest
