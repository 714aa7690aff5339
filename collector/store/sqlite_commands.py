"""Remote commands (``collector.store.commands``) on SQLite."""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Final

from collector.store.base import (
    NotFound,
)
from collector.store.commands import CommandRecord, CommandState, audit_of
from collector.store.sqlite_base import (
    _SQLiteBase,
)


class CommandRole(_SQLiteBase):
    """Remote commands (``collector.store.commands``) on SQLite."""

    _COMMAND_COLS: Final = (
        "id, device_id, action, args, actor, mode, created_at, expires_at, state,"
        " replied_at, ok, result, error"
    )

    @staticmethod
    def _command(r: sqlite3.Row) -> CommandRecord:
        return CommandRecord(
            id=r["id"],
            device_id=r["device_id"],
            action=r["action"],
            args=json.loads(r["args"]),
            actor=r["actor"],
            mode=r["mode"],
            created_at=r["created_at"],
            expires_at=r["expires_at"],
            state=CommandState(r["state"]),
            replied_at=r["replied_at"],
            ok=None if r["ok"] is None else bool(r["ok"]),
            result=None if r["result"] is None else json.loads(r["result"]),
            error=r["error"],
        )

    async def add_command(self, record: CommandRecord) -> None:
        async with self._tx() as db:
            await db.execute(
                f"INSERT INTO remote_commands ({self._COMMAND_COLS}) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    record.id,
                    record.device_id,
                    record.action,
                    json.dumps(record.args, ensure_ascii=False),
                    record.actor,
                    record.mode,
                    record.created_at,
                    record.expires_at,
                    str(record.state),
                    None,
                    None,
                    None,
                    record.error,
                ),
            )
            await self._audit(
                db,
                record.actor,
                f"remote.{record.action}",
                f"device:{record.device_id}",
                {
                    "id": record.id,
                    "args": record.args,
                    "mode": record.mode,
                    "expires_at": record.expires_at,
                },
            )

    async def finish_command(
        self,
        command_id: str,
        *,
        device_id: str,
        state: CommandState,
        at: float,
        ok: bool | None = None,
        result: Any = None,
        error: str | None = None,
    ) -> CommandRecord | None:
        replied = state is CommandState.REPLIED
        async with self._tx() as db:
            # Nothing overwrites a reply; a reply overwrites any pending state.
            cur = await db.execute(
                "UPDATE remote_commands SET state = ?, replied_at = ?, ok = ?, result = ?,"
                " error = ? WHERE id = ? AND device_id = ? AND state != 'replied'",
                (
                    str(state),
                    at if replied else None,
                    None if ok is None else int(ok),
                    None if result is None else json.dumps(result, ensure_ascii=False),
                    error,
                    command_id,
                    device_id,
                ),
            )
            changed = cur.rowcount
            await cur.close()
            if not changed:
                return None
            async with db.execute(
                f"SELECT {self._COMMAND_COLS} FROM remote_commands WHERE id = ?", (command_id,)
            ) as rows:
                row = await rows.fetchone()
            assert row is not None
            record = self._command(row)
            action, target, detail = audit_of(record)
            await self._audit(db, "device" if replied else "collector", action, target, detail)
        return record

    async def get_command(self, command_id: str) -> CommandRecord:
        rows = await self._all(
            f"SELECT {self._COMMAND_COLS} FROM remote_commands WHERE id = ?", (command_id,)
        )
        if not rows:
            raise NotFound(f"command {command_id!r} not found")
        return self._command(rows[0])

    async def list_commands(self, device_id: str, *, limit: int = 50) -> list[CommandRecord]:
        rows = await self._all(
            f"SELECT {self._COMMAND_COLS} FROM remote_commands WHERE device_id = ?"
            " ORDER BY created_at DESC LIMIT ?",
            (device_id, limit),
        )
        return [self._command(r) for r in rows]
