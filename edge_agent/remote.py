"""Remote commands: what the agent does with a ``Command`` from the collector.

``RemoteCommands(agent).on_command(cmd)`` checks the command, runs its action
and stores one ``Reply`` (same ``id``) in the outbox. Actions:

- ``status``: the agent's status (as ``loa-agent status``);
- ``diag``: a fresh reading from every probe, taken through the probe's own
  port lock like any poll (``{"timeout": s}``, default 10), plus a diagnosis
  now and the raw answers of the last poll;
- ``read`` ``{"role": "modem"|"amp"|"system"|"stream"}``: one fresh reading;
- ``at`` ``{"command": "AT+CSQ"}``: read-only AT commands only (there is no
  ``force`` from the district: a state-changing AT line is refused);
- ``modbus`` ``{"address": 100, "count": 9, "input": true}``: register reads;
- ``outbox``: the outbox summary with counts by kind; ``events``
  ``{"limit": n}``: the last events;
- ``soft_reset`` and ``power_cycle``: the recovery ladder's modem soft reset
  and power-cycle hook, run only with ``{"confirm": true}``; each run is a
  ``recovery`` event like the ladder's own.

Other modules add actions with ``register`` (the tunnel, configuration and
upgrade commands).

Trust: only the collector's broker account may publish on a device's ``cmd``
topic (``deploy/mosquitto/acl``; devices may only read their own), and the
link is TLS with a pinned CA, so a command that arrives came from the
collector. Every command must carry ``expires``; one without it, past it, or
expiring implausibly far ahead (more than ``MAX_LIFETIME_S``) is refused and
not executed, so a command queued in the broker for days never runs late.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import msgspec

from edge_agent.control import ControlRequestError, Handler
from edge_agent.recovery import HOOK, SOFT_RESET, Action, run_hook
from fleet_protocol import PROTOCOL_VERSION, Command, Reply
from fleet_protocol.topics import MAX_PAYLOAD_BYTES

log = logging.getLogger(__name__)

#: A command may be queued at most this long (the collector caps it lower).
MAX_LIFETIME_S = 7 * 86400.0
#: Device clocks drift; an expiry this far beyond MAX_LIFETIME_S is still accepted.
CLOCK_SLACK_S = 300.0
#: Replies must fit the collector's payload limit with room for the envelope.
MAX_RESULT_BYTES = MAX_PAYLOAD_BYTES - 2048


class RemoteAgent(Protocol):
    """What the remote commands need of ``edge_agent.agent.Agent``."""

    device: str

    def status(self) -> dict[str, Any]: ...

    async def diag(self) -> dict[str, Any]: ...

    async def store_reply(self, reply: Callable[[int], Reply]) -> None: ...

    async def recovery_event(self, action: Action) -> None: ...

    def control_ops(self) -> dict[str, Handler]: ...


def version_of(data: bytes) -> str:
    """Short hash of an agent.toml's bytes: the config version the collector shows."""
    return hashlib.sha256(data).hexdigest()[:12]


def config_version(path: Path | None) -> str | None:
    """``version_of`` the file at ``path``; None without a (readable) file."""
    if path is None:
        return None
    try:
        return version_of(path.read_bytes())
    except OSError:
        return None


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def stale_reason(cmd: Command, now: float) -> str | None:
    """Why ``cmd`` must not run at device time ``now``; None when it may."""
    if cmd.expires is None:
        return "refused: the command carries no 'expires' (not executed)"
    if now > cmd.expires:
        return f"expired at {_iso(cmd.expires)} (device clock {_iso(now)}); not executed"
    if cmd.expires - now > MAX_LIFETIME_S + CLOCK_SLACK_S:
        return (
            f"refused: expiry {_iso(cmd.expires)} is more than {MAX_LIFETIME_S / 86400:g} days "
            "ahead (not executed)"
        )
    return None


class RemoteCommands:
    """Dispatches remote commands to their actions; see the module docstring."""

    def __init__(
        self,
        agent: RemoteAgent,
        *,
        hook_command: tuple[str, ...] = (),
        hook_timeout_s: float = 60.0,
        soft_reset: Callable[[], Awaitable[str]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.agent = agent
        self.clock = clock
        self.hook_command = hook_command
        self.hook_timeout_s = hook_timeout_s
        self._soft_reset = soft_reset
        self.handlers: dict[str, Handler] = {}
        self.confirm_needed: set[str] = set()
        self.after: dict[str, Callable[[Any], Awaitable[None]]] = {}
        self.executed = 0
        self.refused = 0
        ops = agent.control_ops()
        for action, op in (
            ("status", "status"),
            ("outbox", "tech.outbox"),
            ("events", "events"),
            ("modbus", "modbus"),
            ("read", "tech.read"),
        ):
            self.register(action, ops[op])
        self._at = ops["at"]
        self._read = ops["tech.read"]
        self.register("at", self._op_at)
        self.register("diag", self._op_diag)
        self.register("soft_reset", self._op_soft_reset, confirm=True)
        self.register("power_cycle", self._op_power_cycle, confirm=True)

    def register(
        self,
        action: str,
        handler: Handler,
        *,
        confirm: bool = False,
        after: Callable[[Any], Awaitable[None]] | None = None,
    ) -> None:
        """Add an action; ``confirm`` ones run only with ``{"confirm": true}`` in args.

        ``after(result)`` runs once the successful reply is stored (a restart
        must not happen before the answer is safe in the outbox).
        """
        self.handlers[action] = handler
        if confirm:
            self.confirm_needed.add(action)
        if after is not None:
            self.after[action] = after

    def info(self) -> dict[str, Any]:
        return {
            "executed": self.executed,
            "refused": self.refused,
            "actions": sorted(self.handlers),
        }

    # --- actions -------------------------------------------------------------------

    async def _op_at(self, args: dict[str, Any]) -> Any:
        # Never forward "force": from the district, only reading AT commands run.
        return await self._at({"command": args.get("command"), "timeout": args.get("timeout", 2.0)})

    async def _op_diag(self, args: dict[str, Any]) -> Any:
        timeout = args.get("timeout", 10.0)
        if not isinstance(timeout, int | float) or not 0 < timeout <= 60:
            raise ControlRequestError("'timeout' must be 0..60 s")
        roles = [p.name for p in getattr(self.agent, "pollers", ())]

        async def fresh(role: str) -> Any:
            try:
                return await self._read({"role": role, "timeout": timeout})
            except ControlRequestError as exc:
                return {"error": str(exc)}

        readings = await asyncio.gather(*(fresh(r) for r in roles))
        return {"readings": dict(zip(roles, readings, strict=True)), **await self.agent.diag()}

    async def _op_soft_reset(self, _args: dict[str, Any]) -> Any:
        if self._soft_reset is None:
            raise ControlRequestError("no modem configured", code="unavailable")
        try:
            detail = await self._soft_reset()
            ok = True
        except Exception as exc:
            ok, detail = False, str(exc)
        await self.agent.recovery_event(Action(self.clock(), SOFT_RESET, ok, f"remote; {detail}"))
        if not ok:
            raise ControlRequestError(detail, code="failed")
        return {"action": SOFT_RESET, "detail": detail}

    async def _op_power_cycle(self, _args: dict[str, Any]) -> Any:
        if not self.hook_command:
            raise ControlRequestError(
                "no power-cycle hook configured (recovery.hook_command)", code="unavailable"
            )
        ok, detail = await run_hook(self.hook_command, self.hook_timeout_s)
        await self.agent.recovery_event(Action(self.clock(), HOOK, ok, f"remote; {detail}"))
        if not ok:
            raise ControlRequestError(detail, code="failed")
        return {"action": HOOK, "detail": detail}

    # --- dispatch ------------------------------------------------------------------

    async def run(self, cmd: Command) -> tuple[bool, Any, str | None]:
        """(ok, result, error) for ``cmd``; never raises."""
        reason = stale_reason(cmd, self.clock())
        if reason is not None:
            self.refused += 1
            log.warning("remote command %s (%s) %s", cmd.id, cmd.action, reason)
            return False, None, reason
        handler = self.handlers.get(cmd.action)
        if handler is None:
            known = ", ".join(sorted(self.handlers))
            return False, None, f"unknown action {cmd.action!r}; known: {known}"
        if cmd.action in self.confirm_needed and cmd.args.get("confirm") is not True:
            return False, None, f"{cmd.action} changes the device: send confirm=true to run it"
        self.executed += 1
        log.info("remote command %s: %s", cmd.id, cmd.action)
        try:
            result = await handler(dict(cmd.args))
        except ControlRequestError as exc:
            return False, None, f"{exc.code}: {exc}"
        except Exception as exc:
            log.exception("remote command %s (%s) failed", cmd.id, cmd.action)
            return False, None, f"{type(exc).__name__}: {exc}"
        size = len(msgspec.json.encode(result))
        if size > MAX_RESULT_BYTES:
            return (
                False,
                None,
                f"result of {size} bytes exceeds the reply limit ({MAX_RESULT_BYTES})",
            )
        return True, result, None

    async def on_command(self, cmd: Command) -> None:
        """Run ``cmd`` and store its Reply in the outbox."""
        ok, result, error = await self.run(cmd)
        device = self.agent.device

        def build(seq: int) -> Reply:
            return Reply(
                v=PROTOCOL_VERSION,
                device=device,
                seq=seq,
                ts=round(self.clock(), 3),
                id=cmd.id,
                ok=ok,
                result=result,
                error=None if error is None else error[:512],
            )

        await self.agent.store_reply(build)
        after = self.after.get(cmd.action)
        if ok and after is not None:
            await after(result)


__all__ = [
    "MAX_LIFETIME_S",
    "RemoteAgent",
    "RemoteCommands",
    "config_version",
    "stale_reason",
    "version_of",
]
