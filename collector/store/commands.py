"""Remote commands as the store keeps them (``collector.remote`` sends them)."""

from __future__ import annotations

import dataclasses
import enum
import json
from dataclasses import dataclass
from typing import Any

#: Audit entries keep at most this much of a result (the full result is in the record).
AUDIT_RESULT_CHARS = 2000


class CommandState(enum.StrEnum):
    SENT = "sent"  # published, waiting for the reply
    REPLIED = "replied"  # the device answered (ok or not)
    UNREACHABLE = "unreachable"  # no reply within the wait; not queued
    QUEUED = "queued"  # no reply yet; waits in the broker session until it expires
    REFUSED = "refused"  # not sent: the device is offline and queueing was not asked for
    EXPIRED = "expired"  # past its expiry without a reply (derived when read)


@dataclass(frozen=True, kw_only=True)
class CommandRecord:
    """One remote command as stored and shown."""

    id: str
    device_id: str
    action: str
    args: dict[str, Any]
    actor: str
    mode: str  # "wait" or "queue"
    created_at: float
    expires_at: float
    state: CommandState
    replied_at: float | None = None
    ok: bool | None = None
    result: Any = None
    error: str | None = None

    def shown(self, now: float) -> CommandRecord:
        """The record as of ``now``: a pending one past its expiry is ``expired``."""
        pending = self.state in (CommandState.SENT, CommandState.QUEUED, CommandState.UNREACHABLE)
        if pending and now > self.expires_at:
            return dataclasses.replace(self, state=CommandState.EXPIRED)
        return self

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "device_id": self.device_id,
            "action": self.action,
            "args": self.args,
            "actor": self.actor,
            "mode": self.mode,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "state": self.state.value,
            "replied_at": self.replied_at,
            "ok": self.ok,
            "result": self.result,
            "error": self.error,
        }


def _result_for_audit(record: CommandRecord) -> dict[str, Any]:
    out: dict[str, Any] = {"id": record.id, "state": record.state.value, "ok": record.ok}
    if record.error:
        out["error"] = record.error
    if record.result is not None:
        text = json.dumps(record.result, ensure_ascii=False, default=str)
        out["result"] = text if len(text) <= AUDIT_RESULT_CHARS else text[:AUDIT_RESULT_CHARS]
        out["result_truncated"] = len(text) > AUDIT_RESULT_CHARS
    return out


def audit_of(record: CommandRecord) -> tuple[str, str, dict[str, Any]]:
    """(action, target, detail) of the audit entry for a command's outcome."""
    return f"remote.{record.action}.result", f"device:{record.device_id}", _result_for_audit(record)


__all__ = ["CommandRecord", "CommandState", "audit_of"]
