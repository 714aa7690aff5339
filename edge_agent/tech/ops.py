"""Control-socket operations the technician commands add to a running daemon.

``register_daemon_ops(server, agent)`` registers, next to the daemon's own
``status``/``diag``/``outbox``/``events``/``at``/``modbus``:

- ``tech.read`` ``{"role": "modem"|"amp"|"system"|"stream", "timeout": s}``:
  one fresh reading from the daemon's own probe of that role (the modem poll
  takes the port's lock like any poll, so nothing interleaves on the port),
  as ``edge_agent.tech.wire.reading_to_json``. It is not added to the
  daemon's history: a technician's look never changes what is reported.
- ``tech.port``: the modem port's counters (noise bytes dropped, stale lines,
  reopens, recent unsolicited lines) and the amplifier bus endpoint.
- ``tech.outbox``: the outbox summary with counts by kind
  (``edge_agent.tech.outboxfile.summary``, read-only, in a worker thread).

Imports stay light: the daemon imports this module at start.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from edge_agent.control import ControlRequestError, ControlServer, Handler
from edge_agent.tech import outboxfile
from edge_agent.tech.wire import ROLES, reading_to_json

#: Upper bound on one fresh reading (a stream check may take its full timeout).
MAX_READ_S = 60.0


class _Poller(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def probe(self) -> Any: ...


class _Outbox(Protocol):
    @property
    def path(self) -> Path: ...


class AgentView(Protocol):
    """What these ops need of ``edge_agent.agent.Agent``."""

    @property
    def pollers(self) -> Sequence[_Poller]: ...

    @property
    def modem(self) -> Any: ...

    @property
    def amp(self) -> Any: ...

    @property
    def outbox(self) -> _Outbox | None: ...


def register_daemon_ops(server: ControlServer, agent: AgentView) -> None:
    """Add the ``tech.*`` operations to ``server`` (see the module docstring)."""
    for op, handler in daemon_ops(agent).items():
        server.register(op, handler)


def daemon_ops(agent: AgentView) -> dict[str, Handler]:
    """The ``tech.*`` handlers by op name (the remote commands reuse them)."""

    async def read(req: dict[str, Any]) -> Any:
        role = req.get("role")
        timeout = req.get("timeout", 10.0)
        if role not in ROLES:
            raise ControlRequestError(f"'role' must be one of {', '.join(ROLES)}")
        if not isinstance(timeout, int | float) or not 0 < timeout <= MAX_READ_S:
            raise ControlRequestError(f"'timeout' must be 0..{MAX_READ_S:g} s")
        probe = next((p.probe for p in agent.pollers if p.name == role), None)
        if probe is None:
            raise ControlRequestError(f"no {role} probe configured", code="unavailable")
        try:
            async with asyncio.timeout(timeout):
                reading = await probe.read()
        except TimeoutError:
            raise ControlRequestError(
                f"{role}: no reading within {timeout:g} s", code="failed"
            ) from None
        return reading_to_json(reading)

    async def port(_req: dict[str, Any]) -> Any:
        out: dict[str, Any] = {"modem": None, "amp": None}
        if agent.modem is not None:
            p = agent.modem.port
            out["modem"] = {
                "where": p.where,
                "dialect": agent.modem.dialect.name,
                "garbage_bytes": p.garbage_bytes,
                "stale_lines": p.stale_lines,
                "reopens": p.reopens,
                "urcs": list(p.urcs)[-10:],
            }
        if agent.amp is not None:
            out["amp"] = {
                "endpoint": agent.amp.bus.endpoint,
                "unit": agent.amp.unit,
                "profile": agent.amp.profile.name,
            }
        return out

    async def outbox(_req: dict[str, Any]) -> Any:
        if agent.outbox is None:
            raise ControlRequestError("the outbox is not open", code="unavailable")
        try:
            return await asyncio.to_thread(outboxfile.summary, agent.outbox.path)
        except outboxfile.OutboxFileError as exc:
            raise ControlRequestError(str(exc), code="failed") from None

    return {"tech.read": read, "tech.port": port, "tech.outbox": outbox}


__all__ = ["AgentView", "daemon_ops", "register_daemon_ops"]
