"""Readings as JSON, both ways: how the daemon hands a fresh reading to the CLI.

``reading_to_json(role, reading)`` gives a JSON-able dict; ``reading_from_json``
turns it back into the same frozen reading type (defaults the wire omitted are
restored by msgspec), so the CLI runs the very same pure diagnosis on it as the
daemon would. Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

import msgspec

from firmware_shims.readings import (
    AmpReading,
    ModemReading,
    Reading,
    StreamReading,
    SystemReading,
)
from fleet_protocol import AmpState, ModemState, StreamState, SystemState, to_builtins

ROLES = ("modem", "amp", "system", "stream")


def reading_to_json(reading: Reading) -> dict[str, Any]:
    """A JSON-able dict of any reading (state fields at their defaults are left out)."""
    out: dict[str, Any] = {"ts": reading.ts, "state": to_builtins(reading.state)}
    if isinstance(reading, ModemReading):
        out["errors"] = dict(reading.errors)
        out["raw"] = {k: list(v) for k, v in reading.raw.items()}
    elif isinstance(reading, AmpReading):
        out["error"] = reading.error
        out["registers"] = {str(k): v for k, v in reading.registers.items()}
    return out


def state_from_json(role: str, state: Any) -> Any:
    """The wire section of ``role`` from its JSON form; ValueError if it does not fit."""
    cls = {"modem": ModemState, "amp": AmpState, "system": SystemState, "stream": StreamState}
    try:
        return msgspec.convert(state, cls[role])
    except (KeyError, msgspec.ValidationError) as exc:
        raise ValueError(f"{role} reading: {exc}") from None


def reading_from_json(role: str, data: dict[str, Any]) -> Reading:
    """Inverse of ``reading_to_json``; ValueError naming the role if ``data`` does not fit."""
    try:
        ts = float(data["ts"])
        state = state_from_json(role, data.get("state", {}))
        if role == "modem":
            raw = {str(k): tuple(str(x) for x in v) for k, v in (data.get("raw") or {}).items()}
            errors = {str(k): str(v) for k, v in (data.get("errors") or {}).items()}
            return ModemReading(ts=ts, state=state, errors=errors, raw=raw)
        if role == "amp":
            regs = {int(k): int(v) for k, v in (data.get("registers") or {}).items()}
            return AmpReading(ts=ts, state=state, error=data.get("error"), registers=regs)
        if role == "system":
            return SystemReading(ts=ts, state=state)
        if role == "stream":
            return StreamReading(ts=ts, state=state)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{role} reading: missing or malformed {exc}") from None
    raise ValueError(f"unknown role {role!r}; known: {', '.join(ROLES)}")


__all__ = ["ROLES", "reading_from_json", "reading_to_json", "state_from_json"]
