"""The agent's local control server: JSON lines on a Unix socket.

The technician CLI (``loa-agent status|diag|at|modbus|outbox|events``) talks
to the running daemon here, so it shares the daemon's port locks instead of
opening the serial port a second time. The socket is created with mode 0660:
root and the agent's group (technicians) only.

Protocol, one JSON object per line each way, any number of requests per
connection, answered in order:

    request:  {"op": "<name>", "id": <optional, echoed>, ...arguments of the op}
    success:  {"id": ..., "ok": true, "result": <op-specific JSON>}
    failure:  {"id": ..., "ok": false, "error": "<what was wrong>", "code": "<key>"}

``code`` is one of ``bad_request`` (not JSON, not an object, a missing or
wrong argument), ``unknown_op``, ``unavailable`` (e.g. no modem configured),
``failed`` (the operation ran and failed: a timeout, a refused command) and
``internal``. Requests longer than 64 KiB are refused and the connection
closed. ``{"op": "ops"}`` lists the available operations.

Operations the daemon registers (``edge_agent.agent``):

- ``status``: link state, last readings, active faults, outbox depth and
  oldest message, poller counters, last recovery actions;
- ``diag``: a fresh diagnosis now (the active faults with evidence, and the
  raw modem answers of the last poll);
- ``outbox``: depth, bytes, oldest, next seq, evicted/refused counters;
- ``events``: the last events the agent produced (``{"limit": n}``);
- ``at``: ``{"command": "AT+CSQ", "timeout": 2.0}`` through the modem's port
  lock; read-only commands only unless ``"force": true``;
- ``modbus``: ``{"address": 100, "count": 9, "input": true}`` raw registers
  through the amplifier bus's lock.

New operations are added with ``ControlServer.register(op, handler)``; a
handler is ``async (request: dict) -> JSON-able`` and raises
``ControlRequestError`` (or a subclass naming its ``code``) for a request it
cannot serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 64 * 1024
Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class ControlRequestError(Exception):
    """A request the handler cannot serve; ``code`` goes into the reply."""

    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class ControlServer:
    """Serves registered operations on ``path``; ``start()``, then ``aclose()``."""

    def __init__(self, path: Path, *, mode: int = 0o660) -> None:
        self.path = path
        self.mode = mode
        self.handlers: dict[str, Handler] = {}
        self.bad_requests = 0
        self._server: asyncio.AbstractServer | None = None
        self.register("ops", self._ops)

    def register(self, op: str, handler: Handler) -> None:
        self.handlers[op] = handler

    async def _ops(self, _request: dict[str, Any]) -> list[str]:
        return sorted(self.handlers)

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a stale socket from a killed agent
        # Create the socket under a umask so there is no moment it is world-writable.
        old = os.umask(0o777 & ~self.mode)
        try:
            self._server = await asyncio.start_unix_server(
                self._client, path=str(self.path), limit=MAX_REQUEST_BYTES
            )
        finally:
            os.umask(old)
        os.chmod(self.path, self.mode)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def handle(self, raw: bytes) -> dict[str, Any]:
        """One request line in, one reply object out; never raises."""
        req_id: Any = None
        try:
            try:
                request = json.loads(raw)
            except ValueError as exc:
                raise ControlRequestError(f"not JSON: {exc}") from None
            if not isinstance(request, dict):
                raise ControlRequestError("a request must be a JSON object")
            req_id = request.get("id")
            op = request.get("op")
            if not isinstance(op, str):
                raise ControlRequestError("missing 'op' (a string)")
            handler = self.handlers.get(op)
            if handler is None:
                raise ControlRequestError(
                    f"unknown op {op[:40]!r}; ops: {', '.join(sorted(self.handlers))}",
                    code="unknown_op",
                )
            result = await handler(request)
        except ControlRequestError as exc:
            if exc.code == "bad_request":
                self.bad_requests += 1
                if self.bad_requests == 1 or self.bad_requests % 100 == 0:
                    log.warning("control: bad request (%d so far): %s", self.bad_requests, exc)
            return {"id": req_id, "ok": False, "error": str(exc), "code": exc.code}
        except Exception as exc:
            log.exception("control: op failed")
            return {
                "id": req_id,
                "ok": False,
                "error": f"internal error: {exc}",
                "code": "internal",
            }
        return {"id": req_id, "ok": True, "result": result}

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError as exc:
                    if not exc.partial.strip():
                        return
                    line = exc.partial
                except asyncio.LimitOverrunError:
                    reply = {
                        "id": None,
                        "ok": False,
                        "error": f"request longer than {MAX_REQUEST_BYTES} bytes",
                        "code": "bad_request",
                    }
                    writer.write(json.dumps(reply).encode() + b"\n")
                    await writer.drain()
                    return
                if not line.strip():
                    continue
                reply = await self.handle(line)
                writer.write(json.dumps(reply, ensure_ascii=False, default=str).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()


async def request(
    path: Path | str, op: str, *, timeout: float = 10.0, **args: Any
) -> dict[str, Any]:
    """One request to a running agent; returns the reply object. Raises OSError/TimeoutError."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_unix_connection(str(path), limit=16 * 1024 * 1024)
        try:
            writer.write(json.dumps({"op": op, **args}).encode() + b"\n")
            await writer.drain()
            line = await reader.readline()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    out = json.loads(line)
    if not isinstance(out, dict):
        raise ValueError(f"control socket {path}: reply is not an object")
    return out


def request_sync(
    path: Path | str, op: str, *, timeout: float = 10.0, **args: Any
) -> dict[str, Any]:
    """Blocking form of ``request`` (for the CLI without an event loop)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
        buf = bytearray()
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    out = json.loads(buf)
    if not isinstance(out, dict):
        raise ValueError(f"control socket {path}: reply is not an object")
    return out


__all__ = ["ControlRequestError", "ControlServer", "Handler", "request", "request_sync"]
