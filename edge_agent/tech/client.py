"""The technician side of the agent's control socket, with a deadline on every call.

``await call(path, op, deadline=..., **args)`` returns the op's result or raises:

- ``NoDaemon``: nothing listens there (no socket file, or a stale one): the
  caller may open the hardware itself;
- ``DaemonUnreachable``: something is there but cannot be used (permission
  denied, no answer within the deadline, a reply that is not ours): the
  caller must NOT open the hardware (a live daemon may be holding it);
- ``OpFailed``: the daemon answered with ``ok: false``; ``code`` is its
  ``bad_request``/``unknown_op``/``unavailable``/``failed``/``internal``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any


class TechError(Exception):
    """Base of the technician commands' errors; the message is for a person."""


class NoDaemon(TechError):
    """No agent is listening on the socket."""


class DaemonUnreachable(TechError):
    """An agent may be running but cannot be asked (permission, timeout, bad reply)."""


class OpFailed(TechError):
    """The agent refused or failed the operation."""

    def __init__(self, op: str, code: str, error: str) -> None:
        self.op = op
        self.code = code
        self.error = error
        super().__init__(error)


async def _request(path: Path, request: dict[str, Any], deadline: float) -> dict[str, Any]:
    # Not edge_agent.control.request: ops such as "at" take their own "timeout" argument.
    async with asyncio.timeout(deadline):
        reader, writer = await asyncio.open_unix_connection(str(path), limit=16 * 1024 * 1024)
        try:
            writer.write(json.dumps(request).encode() + b"\n")
            await writer.drain()
            line = await reader.readline()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    reply = json.loads(line)
    if not isinstance(reply, dict):
        raise ValueError("reply is not a JSON object")
    return reply


async def call(path: Path, op: str, *, deadline: float, **args: Any) -> Any:
    """Run ``op`` (with ``args``) on the agent at ``path`` within ``deadline`` seconds;
    the result, or one of the errors above."""
    try:
        reply = await _request(path, {"op": op, **args}, deadline)
    except (FileNotFoundError, ConnectionRefusedError):
        raise NoDaemon(f"no agent is running (nothing listens on {path})") from None
    except PermissionError:
        raise DaemonUnreachable(
            f"cannot reach the agent at {path}: permission denied"
            " (add yourself to the loa-agent group, or use sudo)"
        ) from None
    except TimeoutError:
        raise DaemonUnreachable(
            f"the agent at {path} did not answer '{op}' within {deadline:g} s"
        ) from None
    except OSError as exc:
        raise DaemonUnreachable(f"cannot talk to the agent at {path}: {exc}") from None
    except ValueError as exc:
        raise DaemonUnreachable(
            f"the agent at {path} gave a reply that is not ours: {exc}"
        ) from None
    if reply.get("ok") is True:
        return reply.get("result")
    raise OpFailed(op, str(reply.get("code", "internal")), str(reply.get("error", "failed")))


async def listening(path: Path, *, timeout: float = 2.0) -> bool:
    """Whether an agent answers on ``path``; raises DaemonUnreachable if one may but cannot."""
    try:
        await call(path, "ops", deadline=timeout)
    except NoDaemon:
        return False
    return True


__all__ = ["DaemonUnreachable", "NoDaemon", "OpFailed", "TechError", "call", "listening"]
