"""A technician's shell through the carrier's NAT: a reverse SSH tunnel for a bounded time.

Nothing can connect to a controller on 4G, so on a ``tunnel`` command the
agent connects *out* to the district jump host with OpenSSH
(``ssh -N -R 127.0.0.1:<remote_port>:<local_host>:<local_port>``) and the
technician then reaches the controller's sshd through the jump host::

    ssh -J loa-tech@jump -p <remote_port> pi@127.0.0.1

- The device authenticates with its own key (``tunnel.key_file``) and trusts
  only the jump host's pinned host key (``tunnel.known_hosts_file``,
  ``StrictHostKeyChecking=yes``, no other known_hosts, no ssh config files);
  on the jump host that key may do nothing but listen on its one port.
- The tunnel closes by itself at its deadline (at most ``tunnel.max_s``), on
  a ``tunnel_close`` command, when the agent stops, or when ssh dies; opening
  and closing are ``tunnel_opened`` / ``tunnel_closed`` events.
- One tunnel at a time: asking again while one is open answers with it.

Opening waits for ssh's own word that the remote forward is in place (its
verbose ``remote forward success`` line), so a refused host key, a bad key or
a port already taken on the jump host is a failed command, not a silent one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from edge_agent.config import TunnelConfig
from edge_agent.control import ControlRequestError

log = logging.getLogger(__name__)

_SUCCESS = b"remote forward success for: listen"
Emit = Callable[[str, str], Awaitable[None]]  # (event type "opened"/"closed", detail)


def ssh_argv(cfg: TunnelConfig) -> list[str]:
    """The ssh command line of the tunnel (pure, for tests and ``status``)."""
    opts = {
        "BatchMode": "yes",
        "StrictHostKeyChecking": "yes",
        "UserKnownHostsFile": str(cfg.known_hosts_file),
        "GlobalKnownHostsFile": "/dev/null",
        "IdentitiesOnly": "yes",
        "IdentityFile": str(cfg.key_file),
        "ExitOnForwardFailure": "yes",
        "ConnectTimeout": str(max(1, int(cfg.connect_timeout_s))),
        "ServerAliveInterval": "30",
        "ServerAliveCountMax": "3",
        "ControlMaster": "no",
        "ControlPath": "none",
        "PermitLocalCommand": "no",
        "ForwardAgent": "no",
        "ForwardX11": "no",
    }
    argv = [cfg.ssh, "-F", "/dev/null", "-N", "-v", "-p", str(cfg.port)]
    for key, value in opts.items():
        argv += ["-o", f"{key}={value}"]
    argv += ["-R", f"127.0.0.1:{cfg.remote_port}:{cfg.local_host}:{cfg.local_port}"]
    argv.append(f"{cfg.user}@{cfg.host}")
    return argv


class Tunnel:
    """The one tunnel of an agent. ``open(duration_s)``, ``close()``, ``aclose()`` at stop."""

    def __init__(
        self, cfg: TunnelConfig, emit: Emit, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.cfg = cfg
        self.emit = emit
        self.clock = clock
        self.opened_at: float | None = None
        self.closes_at: float | None = None
        self.last_close: str | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._close = asyncio.Event()
        self._stderr: deque[str] = deque(maxlen=20)
        self._lock = asyncio.Lock()

    @property
    def is_open(self) -> bool:
        return self._task is not None and not self._task.done()

    def info(self) -> dict[str, Any]:
        return {
            "open": self.is_open,
            "jump": f"{self.cfg.user}@{self.cfg.host}:{self.cfg.port}",
            "remote_port": self.cfg.remote_port,
            "opened_at": self.opened_at if self.is_open else None,
            "closes_at": self.closes_at if self.is_open else None,
            "last_close": self.last_close,
        }

    async def open(self, duration_s: float) -> dict[str, Any]:
        """Open for ``duration_s`` (capped at ``max_s``); raises ControlRequestError on failure."""
        if not duration_s > 0:
            raise ControlRequestError("'duration_s' must be positive")
        async with self._lock:
            if self.is_open:
                return {**self.info(), "already_open": True}
            duration = min(float(duration_s), self.cfg.max_s)
            self._stderr.clear()
            self._close.clear()
            try:
                proc = await asyncio.create_subprocess_exec(
                    *ssh_argv(self.cfg),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.PIPE,
                )
            except OSError as exc:
                raise ControlRequestError(
                    f"cannot run {self.cfg.ssh}: {exc.strerror or exc}", code="unavailable"
                ) from None
            assert proc.stderr is not None
            try:
                async with asyncio.timeout(self.cfg.connect_timeout_s + 5):
                    established = await self._wait_established(proc.stderr)
            except TimeoutError:
                established = False
                self._stderr.append(f"no remote forward within {self.cfg.connect_timeout_s:g} s")
            if not established:
                await self._kill(proc)
                why = self._why()
                raise ControlRequestError(
                    f"tunnel to {self.cfg.host}:{self.cfg.port} not opened: {why}", code="failed"
                )
            self._proc = proc
            self.opened_at = self.clock()
            self.closes_at = round(self.opened_at + duration, 3)
            self._task = asyncio.create_task(self._hold(proc, duration), name="tunnel")
            detail = (
                f"{self.cfg.user}@{self.cfg.host}:{self.cfg.port} port {self.cfg.remote_port} "
                f"for {duration:.0f} s"
            )
            log.warning("tunnel opened: %s", detail)
            await self.emit("opened", detail)
            return self.info()

    async def _wait_established(self, stream: asyncio.StreamReader) -> bool:
        while True:
            line = await stream.readline()
            if not line:
                return False
            if not line.startswith(b"debug"):
                self._stderr.append(line.decode("utf-8", "replace").strip())
            if _SUCCESS in line:
                return True

    def _why(self) -> str:
        # ssh's own last words ("Host key verification failed.", "Permission denied ...").
        lines = [s for s in self._stderr if s]
        return lines[-1][:300] if lines else "ssh exited"

    async def _hold(self, proc: asyncio.subprocess.Process, duration: float) -> None:
        """Keep the tunnel until the deadline, a close request or ssh's exit; then report."""
        assert proc.stderr is not None
        drain = asyncio.create_task(self._drain(proc.stderr), name="tunnel.stderr")
        closing = asyncio.create_task(self._close.wait(), name="tunnel.close")
        exited = asyncio.create_task(proc.wait(), name="tunnel.wait")
        reason = "deadline"
        try:
            done, _ = await asyncio.wait({closing, exited}, timeout=duration)
            if exited in done:
                reason = f"ssh exited ({proc.returncode}): {self._why()}"
            elif closing in done:
                reason = "closed by command"
        except asyncio.CancelledError:
            reason = "agent stopping"
            raise
        finally:
            closing.cancel()
            exited.cancel()
            await self._kill(proc)
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain
            self._proc = None
            self.last_close = reason
            log.warning("tunnel closed: %s", reason)
            with contextlib.suppress(Exception):
                await self.emit("closed", reason)

    async def _drain(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            if not line.startswith(b"debug"):
                self._stderr.append(line.decode("utf-8", "replace").strip())

    @staticmethod
    async def _kill(proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                async with asyncio.timeout(5.0):
                    await proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()

    async def close(self) -> dict[str, Any]:
        """Close an open tunnel now (the ``tunnel_close`` command)."""
        task = self._task
        if task is None or task.done():
            return {**self.info(), "was_open": False}
        self._close.set()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return {**self.info(), "was_open": True}

    async def aclose(self) -> None:
        """At agent stop: end the tunnel (and its ssh) without waiting for the deadline."""
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def register(remote: Any, tunnel: Tunnel) -> None:
    """Add ``tunnel`` ({"duration_s": s}) and ``tunnel_close`` to the remote commands."""

    async def open_(args: dict[str, Any]) -> Any:
        duration = args.get("duration_s", 900)
        if isinstance(duration, bool) or not isinstance(duration, int | float):
            raise ControlRequestError("'duration_s' must be a number of seconds")
        return await tunnel.open(float(duration))

    async def close_(_args: dict[str, Any]) -> Any:
        return await tunnel.close()

    remote.register("tunnel", open_)
    remote.register("tunnel_close", close_)


__all__ = ["Tunnel", "register", "ssh_argv"]
