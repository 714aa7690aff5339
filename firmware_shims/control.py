"""The simulators' runtime control interface: JSON lines on a Unix socket.

Each simulator (``loa-sim modem``, ``loa-sim amp``) listens on a control socket
(``--control PATH``, default ``<link>.ctl``) while clients are connected to its
hardware side. One request per line, one reply per line:

    {"op": "set", "fault": "sim_failure"}    -> {"ok": true, "faults": ["sim_failure"]}
    {"op": "clear", "fault": "sim_failure"}  -> {"ok": true, "faults": []}
    {"op": "clear"}                          -> clears every fault
    {"op": "list"}                           -> {"ok": true, "faults": [...], "known": [...]}

An unknown op or fault gets ``{"ok": false, "error": "..."}`` and changes
nothing. ``loa-sim ctl --socket PATH set|clear|list [FAULT]`` is the shell
front end; tests and the demo use ``send`` / ``asend``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


class FaultSet:
    """The faults a simulator currently injects; ``on_change`` runs after every change."""

    def __init__(
        self,
        known: Iterable[str],
        initial: Iterable[str] = (),
        on_change: Callable[[frozenset[str]], None] | None = None,
    ) -> None:
        self.known = tuple(known)
        self._active: set[str] = set()
        self.on_change = on_change
        for f in initial:
            self.set(f)

    @property
    def active(self) -> frozenset[str]:
        return frozenset(self._active)

    def __contains__(self, fault: str) -> bool:
        return fault in self._active

    def _check(self, fault: str) -> None:
        if fault not in self.known:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(self.known)}")

    def set(self, fault: str) -> None:
        self._check(fault)
        self._active.add(fault)
        if self.on_change:
            self.on_change(self.active)

    def clear(self, fault: str | None = None) -> None:
        if fault is None:
            self._active.clear()
        else:
            self._check(fault)
            self._active.discard(fault)
        if self.on_change:
            self.on_change(self.active)

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """Apply one control request; never raises for a bad request."""
        op = request.get("op")
        fault = request.get("fault")
        try:
            if fault is not None and not isinstance(fault, str):
                raise ValueError("'fault' must be a string")
            if op == "set":
                if fault is None:
                    raise ValueError("'set' needs a 'fault'")
                self.set(fault)
            elif op == "clear":
                self.clear(fault)
            elif op != "list":
                raise ValueError(f"unknown op {op!r}; use set, clear or list")
        except ValueError as exc:
            return {"ok": False, "error": str(exc)}
        return {"ok": True, "faults": sorted(self._active), "known": list(self.known)}


async def serve(path: Path, faults: FaultSet) -> asyncio.AbstractServer:
    """Start the control server on ``path`` (replacing a stale socket file)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    req = json.loads(line)
                    if not isinstance(req, dict):
                        raise ValueError("request must be a JSON object")
                    reply = faults.handle(req)
                except ValueError as exc:
                    reply = {"ok": False, "error": f"bad request: {exc}"}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    return await asyncio.start_unix_server(client, path=str(path))


def send(
    path: Path | str, op: str, fault: str | None = None, timeout: float = 5.0
) -> dict[str, Any]:
    """Blocking one-shot control request (for tests and the CLI)."""
    req: dict[str, Any] = {"op": op}
    if fault is not None:
        req["fault"] = fault
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(json.dumps(req).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
    out = json.loads(buf)
    assert isinstance(out, dict)
    return out


async def asend(
    path: Path | str, op: str, fault: str | None = None, timeout: float = 5.0
) -> dict[str, Any]:
    """Async one-shot control request."""
    req: dict[str, Any] = {"op": op}
    if fault is not None:
        req["fault"] = fault
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_unix_connection(str(path))
        try:
            writer.write(json.dumps(req).encode() + b"\n")
            await writer.drain()
            line = await reader.readline()
        finally:
            writer.close()
            await writer.wait_closed()
    out = json.loads(line)
    assert isinstance(out, dict)
    return out
