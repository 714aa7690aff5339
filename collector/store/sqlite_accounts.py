"""``AccountStore`` on SQLite: users, tokens, sessions, the login throttle, the audit log."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from collector.store.base import (
    Conflict,
    NotFound,
    Role,
    Session,
    ThrottleRule,
    User,
)
from collector.store.sqlite_base import (
    INTEGRITY_ERRORS,
    _SQLiteBase,
)


class AccountRole(_SQLiteBase):
    """``AccountStore`` on SQLite: users, tokens, sessions, throttle, audit log."""

    @staticmethod
    def _user(r: sqlite3.Row) -> User:
        return User(
            id=r["id"],
            name=r["name"],
            role=Role(r["role"]),
            communes=frozenset(json.loads(r["communes"])),
            disabled=bool(r["disabled"]),
        )

    async def add_user(
        self, name: str, *, role: Role, communes: frozenset[str], password_hash: str
    ) -> User:
        async with self._tx() as db:
            try:
                cur = await db.execute(
                    "INSERT INTO users (name, role, communes, password_hash, created_at)"
                    " VALUES (?,?,?,?,?)",
                    (name, str(role), json.dumps(sorted(communes)), password_hash, time.time()),
                )
            except INTEGRITY_ERRORS:
                raise Conflict(f"user {name!r} exists already") from None
            uid = int(cur.lastrowid or 0)
            await cur.close()
            await self._audit(
                db, "cli", "user.add", f"user:{name}", {"role": role, "communes": sorted(communes)}
            )
        return User(id=uid, name=name, role=role, communes=communes)

    async def get_user(self, name: str) -> tuple[User, str]:
        rows = await self._all(
            "SELECT id, name, role, communes, disabled, password_hash FROM users WHERE name = ?",
            (name,),
        )
        if not rows:
            raise NotFound(f"user {name!r} does not exist")
        return self._user(rows[0]), str(rows[0]["password_hash"])

    async def add_token(self, user_name: str, *, token_hash: str, label: str, at: float) -> None:
        async with self._tx() as db:
            async with db.execute("SELECT id FROM users WHERE name = ?", (user_name,)) as cur:
                row = await cur.fetchone()
            if row is None:
                raise NotFound(f"user {user_name!r} does not exist")
            await db.execute(
                "INSERT INTO api_tokens (token_hash, user_id, label, created_at) VALUES (?,?,?,?)",
                (token_hash, row["id"], label, at),
            )
            await self._audit(db, "cli", "token.add", f"user:{user_name}", {"label": label})

    async def user_by_token(self, token_hash: str, *, at: float) -> User | None:
        del at
        rows = await self._all(
            "SELECT u.id, u.name, u.role, u.communes, u.disabled FROM api_tokens t"
            " JOIN users u ON u.id = t.user_id WHERE t.token_hash = ?",
            (token_hash,),
        )
        return self._user(rows[0]) if rows else None

    async def add_session(
        self, user_name: str, *, session_hash: str, csrf_token: str, expires_at: float
    ) -> None:
        async with self._tx() as db:
            await db.execute("DELETE FROM sessions WHERE expires_at < ?", (time.time(),))
            await db.execute(
                "INSERT INTO sessions (session_hash, user_id, csrf_token, expires_at)"
                " SELECT ?, id, ?, ? FROM users WHERE name = ?",
                (session_hash, csrf_token, expires_at, user_name),
            )

    async def session(self, session_hash: str, *, at: float) -> Session | None:
        rows = await self._all(
            "SELECT u.id, u.name, u.role, u.communes, u.disabled, s.csrf_token, s.expires_at"
            " FROM sessions s JOIN users u ON u.id = s.user_id"
            " WHERE s.session_hash = ? AND s.expires_at > ?",
            (session_hash, at),
        )
        if not rows:
            return None
        r = rows[0]
        return Session(user=self._user(r), csrf_token=r["csrf_token"], expires_at=r["expires_at"])

    async def drop_session(self, session_hash: str) -> None:
        async with self._tx() as db:
            await db.execute("DELETE FROM sessions WHERE session_hash = ?", (session_hash,))

    async def audit(self, actor: str, action: str, target: str, detail: dict[str, Any]) -> None:
        async with self._tx() as db:
            await self._audit(db, actor, action, target, detail)

    async def throttle_attempt(self, rules: Sequence[ThrottleRule], *, at: float) -> float:
        async with self._tx() as db:
            counted: list[tuple[ThrottleRule, int]] = []
            wait = 0.0
            for rule in rules:
                async with db.execute(
                    "SELECT attempts, next_at, last_at FROM login_throttle WHERE key = ?",
                    (rule.key,),
                ) as cur:
                    row = await cur.fetchone()
                if row is None or at - float(row["last_at"]) > rule.forget_s:
                    counted.append((rule, 0))
                    continue
                wait = max(wait, float(row["next_at"]) - at)
                counted.append((rule, int(row["attempts"])))
            if wait > 0:
                return wait
            for rule, before in counted:
                attempts = before + 1
                await db.execute(
                    "INSERT INTO login_throttle (key, name, attempts, next_at, last_at)"
                    " VALUES (?,?,?,?,?) ON CONFLICT(key) DO UPDATE SET"
                    " attempts = excluded.attempts, next_at = excluded.next_at,"
                    " last_at = excluded.last_at",
                    (rule.key, rule.name, attempts, at + rule.delay_after(attempts), at),
                )
            if rules:
                horizon = max(r.forget_s for r in rules)
                await db.execute("DELETE FROM login_throttle WHERE last_at < ?", (at - horizon,))
        return 0.0

    async def throttle_clear(self, keys: Sequence[str]) -> None:
        async with self._tx() as db:
            await db.executemany("DELETE FROM login_throttle WHERE key = ?", [(k,) for k in keys])

    async def throttle_unlock(self, name: str, *, actor: str) -> int:
        async with self._tx() as db:
            cur = await db.execute("DELETE FROM login_throttle WHERE name = ?", (name,))
            cleared = cur.rowcount
            await cur.close()
            await self._audit(db, actor, "auth.unlock", f"user:{name}", {"keys": cleared})
        return cleared

    async def audit_log(self, *, limit: int = 200) -> list[dict[str, Any]]:
        rows = await self._all(
            "SELECT at, actor, action, target, detail FROM audit_log ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return [
            {
                "at": r["at"],
                "actor": r["actor"],
                "action": r["action"],
                "target": r["target"],
                "detail": json.loads(r["detail"]),
            }
            for r in rows
        ]

    async def list_users(self) -> list[User]:
        rows = await self._all("SELECT id, name, role, communes, disabled FROM users ORDER BY name")
        return [self._user(r) for r in rows]

    async def update_user(
        self,
        name: str,
        *,
        role: Role,
        communes: frozenset[str],
        disabled: bool,
        actor: str,
    ) -> User:
        async with self._tx() as db:
            cur = await db.execute(
                "UPDATE users SET role = ?, communes = ?, disabled = ? WHERE name = ?",
                (str(role), json.dumps(sorted(communes)), int(disabled), name),
            )
            changed = cur.rowcount
            await cur.close()
            if not changed:
                raise NotFound(f"user {name!r} does not exist")
            await self._audit(
                db,
                actor,
                "user.update",
                f"user:{name}",
                {"role": role, "communes": sorted(communes), "disabled": disabled},
            )
            async with db.execute(
                "SELECT id, name, role, communes, disabled FROM users WHERE name = ?", (name,)
            ) as rows:
                row = await rows.fetchone()
        assert row is not None
        return self._user(row)
