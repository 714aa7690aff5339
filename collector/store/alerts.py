"""Storage of alerts: rules, group state, the notification outbox, contacts, report runs.

``AlertStore`` is the interface the alerts code uses; ``SQLiteAlertStore`` runs
it on the collector's SQLite file through the repository's writer and reader
connections (same transactions, same locks). Rules of the outbox:

- a row per (notification, recipient, channel), with a unique idempotency key
  that every channel sends along, so receivers can drop a repeat;
- :meth:`claim` hands out due rows in one ``UPDATE ... RETURNING`` inside a
  ``BEGIN IMMEDIATE`` transaction: two instances never claim the same row
  while its lease runs, and a row whose claimer died (lease expired) is
  claimed again;
- a row marked ``sent`` is final: nothing ever claims it again.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from collector.store.base import NotFound, Role
from collector.store.sqlite import SQLiteRepository, _qmarks


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryDraft:
    """A delivery to create with its notification."""

    recipient: str
    channel: str
    address: str
    idem_key: str
    lang: str
    subject: str
    body: str
    payload: dict[str, Any]
    not_before: float
    attachment: bytes | None = None
    attachment_name: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class NotificationDraft:
    key: str
    rule: str
    group: str
    kind: str
    critical: bool
    created_at: float
    data: dict[str, Any]
    deliveries: tuple[DeliveryDraft, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    """A delivery row as the worker and the dashboard see it."""

    id: int
    notification_key: str
    kind: str
    rule: str
    recipient: str
    channel: str
    address: str
    idem_key: str
    lang: str
    subject: str
    body: str
    payload: dict[str, Any]
    attachment: bytes | None
    attachment_name: str
    state: str
    attempts: int
    not_before: float
    last_error: str
    created_at: float
    sent_at: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ContactRow:
    """A recipient's stored settings; for users joined with their account."""

    key: str
    name: str
    role: Role | None = None
    user_communes: frozenset[str] = frozenset()
    disabled: bool = False
    email: str = ""
    telegram: str = ""
    zalo: str = ""
    webhook_url: str = ""
    webhook_secret: str = ""
    communes: frozenset[str] = frozenset()
    quiet_start: str = ""
    quiet_end: str = ""
    lang: str = ""


#: Stored group state: (members JSON, pending_since, last_sent_at, seq) by (rule, group).
GroupRows = dict[tuple[str, str], tuple[dict[str, Any], float | None, float | None, int]]
GroupChanges = dict[tuple[str, str], tuple[dict[str, Any], float | None, float | None, int] | None]


class AlertStore(Protocol):
    async def rules(self) -> list[dict[str, Any]]: ...
    async def put_rule(self, data: dict[str, Any], *, actor: str) -> None: ...
    async def delete_rule(self, name: str, *, actor: str) -> None: ...
    async def seed_rules(self, rules: Sequence[dict[str, Any]]) -> int: ...
    async def contacts(self) -> list[ContactRow]: ...
    async def contact(self, key: str) -> ContactRow: ...
    async def put_contact(self, row: ContactRow, *, actor: str) -> None: ...
    async def delete_contact(self, key: str, *, actor: str) -> None: ...
    async def evaluate(
        self,
        step: Callable[[GroupRows], tuple[GroupChanges, list[NotificationDraft]]],
    ) -> list[NotificationDraft]: ...
    async def enqueue(self, notifications: Sequence[NotificationDraft]) -> int: ...
    async def claim(
        self, worker: str, *, now: float, lease_s: float, limit: int
    ) -> list[Delivery]: ...
    async def mark_sent(self, delivery_id: int, *, now: float) -> bool: ...
    async def mark_retry(
        self, delivery_id: int, *, worker: str, error: str, not_before: float
    ) -> None: ...
    async def mark_failed(self, delivery_id: int, *, worker: str, error: str) -> None: ...
    async def retry(self, delivery_id: int, *, actor: str, now: float) -> None: ...
    async def deliveries(
        self,
        *,
        states: frozenset[str] | None = None,
        notification_key: str | None = None,
        limit: int = 200,
    ) -> list[Delivery]: ...
    async def delivery_counts(self) -> list[tuple[str, str, int]]: ...
    async def enqueue_report(
        self,
        notification: NotificationDraft,
        *,
        period: str,
        scheduled: bool,
        worker: str,
        as_of: str,
        trigger: str,
        actor: str,
        summary: str,
    ) -> bool: ...
    async def report_log(self, *, limit: int = 50) -> list[dict[str, Any]]: ...


_DELIVERY_COLS = (
    "d.id, n.key AS notification_key, n.kind, n.rule, d.recipient, d.channel, d.address,"
    " d.idem_key, d.lang, d.subject, d.body, d.payload, d.attachment, d.attachment_name,"
    " d.state, d.attempts, d.not_before, d.last_error, d.created_at, d.sent_at"
)


def _delivery(r: sqlite3.Row) -> Delivery:
    """A row of ``_DELIVERY_COLS``, by column name."""
    return Delivery(
        id=r["id"],
        notification_key=r["notification_key"],
        kind=r["kind"],
        rule=r["rule"],
        recipient=r["recipient"],
        channel=r["channel"],
        address=r["address"],
        idem_key=r["idem_key"],
        lang=r["lang"],
        subject=r["subject"],
        body=r["body"],
        payload=json.loads(r["payload"]),
        attachment=r["attachment"],
        attachment_name=r["attachment_name"],
        state=r["state"],
        attempts=r["attempts"],
        not_before=r["not_before"],
        last_error=r["last_error"],
        created_at=r["created_at"],
        sent_at=r["sent_at"],
    )


_CONTACT_COLS = (
    "email, telegram, zalo, webhook_url, webhook_secret, communes, quiet_start, quiet_end, lang"
)


class SQLiteAlertStore:
    """``AlertStore`` on the collector's SQLite repository."""

    def __init__(self, repo: SQLiteRepository) -> None:
        self.repo = repo

    # -- rules -------------------------------------------------------------------------------

    async def rules(self) -> list[dict[str, Any]]:
        rows = await self.repo._all("SELECT data FROM alert_rules ORDER BY name")
        return [json.loads(r["data"]) for r in rows]

    async def put_rule(self, data: dict[str, Any], *, actor: str) -> None:
        async with self.repo._tx() as db:
            await db.execute(
                "INSERT INTO alert_rules (name, data, updated_at, updated_by) VALUES (?,?,?,?)"
                " ON CONFLICT(name) DO UPDATE SET data=excluded.data,"
                " updated_at=excluded.updated_at, updated_by=excluded.updated_by",
                (data["name"], json.dumps(data, ensure_ascii=False), time.time(), actor),
            )
            await self.repo._audit(db, actor, "alerts.rule.put", f"rule:{data['name']}", data)

    async def delete_rule(self, name: str, *, actor: str) -> None:
        async with self.repo._tx() as db:
            cur = await db.execute("DELETE FROM alert_rules WHERE name = ?", (name,))
            gone = cur.rowcount
            await cur.close()
            if not gone:
                raise NotFound(f"alert rule {name!r} does not exist")
            await self.repo._audit(db, actor, "alerts.rule.delete", f"rule:{name}", {})

    async def seed_rules(self, rules: Sequence[dict[str, Any]]) -> int:
        """Store ``rules`` if there are none at all (a new database); returns how many."""
        async with self.repo._tx() as db:
            async with db.execute("SELECT count(*) AS n FROM alert_rules") as cur:
                row = await cur.fetchone()
            if row and row["n"]:
                return 0
            now = time.time()
            await db.executemany(
                "INSERT INTO alert_rules (name, data, updated_at, updated_by) VALUES (?,?,?,?)",
                [(r["name"], json.dumps(r, ensure_ascii=False), now, "system") for r in rules],
            )
        return len(rules)

    # -- contacts ----------------------------------------------------------------------------

    @staticmethod
    def _contact(
        key: str, name: str, r: sqlite3.Row | None, user: sqlite3.Row | None
    ) -> ContactRow:
        """``r``: a row holding ``_CONTACT_COLS``; ``user``: one holding the account's
        role, user_communes and disabled; both by column name."""
        values: dict[str, Any] = {}
        if r is not None:
            values = {col: r[col] for col in _CONTACT_COLS.split(", ")}
            values["communes"] = frozenset(json.loads(values["communes"]))
        if user is not None:
            values["role"] = Role(user["role"])
            values["user_communes"] = frozenset(json.loads(user["user_communes"]))
            values["disabled"] = bool(user["disabled"])
        return ContactRow(key=key, name=name, **values)

    async def contacts(self) -> list[ContactRow]:
        """Every user (with or without settings), then every contractor contact."""
        async with self.repo._read() as db:
            async with db.execute(
                "SELECT u.name, u.role, u.communes AS user_communes, u.disabled,"
                " c.key AS contact_key, "
                + ", ".join("c." + col for col in _CONTACT_COLS.split(", "))
                + " FROM users u LEFT JOIN alert_contacts c ON c.key = 'user:' || u.name"
                " ORDER BY u.name"
            ) as cur:
                users = list(await cur.fetchall())
            async with db.execute(
                f"SELECT key, {_CONTACT_COLS} FROM alert_contacts"
                " WHERE key LIKE 'contractor:%' ORDER BY key"
            ) as cur:
                contractors = list(await cur.fetchall())
        out = [
            self._contact(
                f"user:{u['name']}", u["name"], u if u["contact_key"] is not None else None, u
            )
            for u in users
        ]
        out += [self._contact(c["key"], c["key"].split(":", 1)[1], c, None) for c in contractors]
        return out

    async def contact(self, key: str) -> ContactRow:
        """One contact (a user's even before they saved settings); raises NotFound."""
        kind, _, name = key.partition(":")
        rows = await self.repo._all(
            f"SELECT {_CONTACT_COLS} FROM alert_contacts WHERE key = ?", (key,)
        )
        if kind == "user":
            users = await self.repo._all(
                "SELECT role, communes AS user_communes, disabled FROM users WHERE name = ?",
                (name,),
            )
            if not users:
                raise NotFound(f"user {name!r} does not exist")
            return self._contact(key, name, rows[0] if rows else None, users[0])
        if kind != "contractor" or not rows:
            raise NotFound(f"contact {key!r} does not exist")
        return self._contact(key, name, rows[0], None)

    async def put_contact(self, row: ContactRow, *, actor: str) -> None:
        values = (
            row.email,
            row.telegram,
            row.zalo,
            row.webhook_url,
            row.webhook_secret,
            json.dumps(sorted(row.communes)),
            row.quiet_start,
            row.quiet_end,
            row.lang,
        )
        async with self.repo._tx() as db:
            await db.execute(
                f"INSERT INTO alert_contacts (key, {_CONTACT_COLS}, updated_at)"
                f" VALUES (?,{_qmarks(9)},?) ON CONFLICT(key) DO UPDATE SET"
                " email=excluded.email, telegram=excluded.telegram, zalo=excluded.zalo,"
                " webhook_url=excluded.webhook_url, webhook_secret=excluded.webhook_secret,"
                " communes=excluded.communes, quiet_start=excluded.quiet_start,"
                " quiet_end=excluded.quiet_end, lang=excluded.lang,"
                " updated_at=excluded.updated_at",
                (row.key, *values, time.time()),
            )
            # The audit log names what changed, never the webhook secret.
            await self.repo._audit(
                db,
                actor,
                "alerts.contact.put",
                row.key,
                {
                    "email": bool(row.email),
                    "telegram": bool(row.telegram),
                    "zalo": bool(row.zalo),
                    "webhook": bool(row.webhook_url),
                    "communes": sorted(row.communes),
                    "quiet": [row.quiet_start, row.quiet_end],
                },
            )

    async def delete_contact(self, key: str, *, actor: str) -> None:
        async with self.repo._tx() as db:
            cur = await db.execute("DELETE FROM alert_contacts WHERE key = ?", (key,))
            gone = cur.rowcount
            await cur.close()
            if not gone:
                raise NotFound(f"contact {key!r} does not exist")
            await self.repo._audit(db, actor, "alerts.contact.delete", key, {})

    # -- evaluation and the outbox -----------------------------------------------------------

    async def evaluate(
        self,
        step: Callable[[GroupRows], tuple[GroupChanges, list[NotificationDraft]]],
    ) -> list[NotificationDraft]:
        """Run ``step`` on the stored group states and store what it returns, in one transaction.

        ``step`` is pure (it gets the states read inside the write transaction),
        so two instances evaluating at once run one after the other and the
        second sees what the first stored: a change is notified once.
        """
        async with self.repo._tx() as db:
            async with db.execute(
                "SELECT rule, grp, members, pending_since, last_sent_at, seq FROM alert_groups"
            ) as cur:
                states: GroupRows = {
                    (r["rule"], r["grp"]): (
                        json.loads(r["members"]),
                        r["pending_since"],
                        r["last_sent_at"],
                        r["seq"],
                    )
                    for r in await cur.fetchall()
                }
            changes, notifications = step(states)
            for (rule, grp), value in changes.items():
                if value is None:
                    await db.execute(
                        "DELETE FROM alert_groups WHERE rule = ? AND grp = ?", (rule, grp)
                    )
                else:
                    members, pending, last, seq = value
                    await db.execute(
                        "INSERT OR REPLACE INTO alert_groups (rule, grp, members, pending_since,"
                        " last_sent_at, seq) VALUES (?,?,?,?,?,?)",
                        (rule, grp, json.dumps(members, ensure_ascii=False), pending, last, seq),
                    )
            await self._insert(db, notifications)
        return notifications

    async def _insert(self, db: Any, notifications: Sequence[NotificationDraft]) -> int:
        added = 0
        for n in notifications:
            cur = await db.execute(
                "INSERT OR IGNORE INTO notifications (key, rule, grp, kind, critical, created_at,"
                " data) VALUES (?,?,?,?,?,?,?)",
                (
                    n.key,
                    n.rule,
                    n.group,
                    n.kind,
                    int(n.critical),
                    n.created_at,
                    json.dumps(n.data, ensure_ascii=False),
                ),
            )
            if not cur.rowcount:
                await cur.close()
                continue  # stored already (the same key twice): never two copies
            nid = int(cur.lastrowid or 0)
            await cur.close()
            await db.executemany(
                "INSERT OR IGNORE INTO deliveries (notification_id, recipient, channel, address,"
                " idem_key, lang, subject, body, payload, attachment, attachment_name,"
                " not_before, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        nid,
                        d.recipient,
                        d.channel,
                        d.address,
                        d.idem_key,
                        d.lang,
                        d.subject,
                        d.body,
                        json.dumps(d.payload, ensure_ascii=False),
                        d.attachment,
                        d.attachment_name,
                        d.not_before,
                        n.created_at,
                    )
                    for d in n.deliveries
                ],
            )
            added += 1
        return added

    async def enqueue(self, notifications: Sequence[NotificationDraft]) -> int:
        """Store notifications and their deliveries (one transaction); returns how many were new."""
        async with self.repo._tx() as db:
            return await self._insert(db, notifications)

    async def claim(self, worker: str, *, now: float, lease_s: float, limit: int) -> list[Delivery]:
        """Claim up to ``limit`` due deliveries for ``worker`` until ``now + lease_s``.

        Due: pending with ``not_before`` reached, or sending with an expired
        lease (the claimer died). Oldest first. One statement, one transaction.
        """
        async with self.repo._tx() as db:
            async with db.execute(
                "UPDATE deliveries SET state = 'sending', claimed_by = ?, lease_until = ?,"
                " attempts = attempts + 1 WHERE id IN (SELECT id FROM deliveries"
                " WHERE (state = 'pending' AND not_before <= ?)"
                " OR (state = 'sending' AND lease_until < ?) ORDER BY not_before, id LIMIT ?)"
                " RETURNING id",
                (worker, now + lease_s, now, now, limit),
            ) as cur:
                ids = [int(r["id"]) for r in await cur.fetchall()]
            if not ids:
                return []
            async with db.execute(
                f"SELECT {_DELIVERY_COLS} FROM deliveries d JOIN notifications n"
                f" ON n.id = d.notification_id WHERE d.id IN ({_qmarks(len(ids))})"
                " ORDER BY d.not_before, d.id",
                ids,
            ) as cur:
                return [_delivery(r) for r in await cur.fetchall()]

    async def mark_sent(self, delivery_id: int, *, now: float) -> bool:
        """Record a delivery as sent (once: False if it was recorded already)."""
        async with self.repo._tx() as db:
            cur = await db.execute(
                "UPDATE deliveries SET state = 'sent', sent_at = ?, lease_until = NULL,"
                " last_error = '' WHERE id = ? AND state = 'sending'",
                (now, delivery_id),
            )
            done = cur.rowcount > 0
            await cur.close()
        return done

    async def mark_retry(
        self, delivery_id: int, *, worker: str, error: str, not_before: float
    ) -> None:
        async with self.repo._tx() as db:
            await db.execute(
                "UPDATE deliveries SET state = 'pending', not_before = ?, last_error = ?,"
                " lease_until = NULL WHERE id = ? AND state = 'sending' AND claimed_by = ?",
                (not_before, error[:500], delivery_id, worker),
            )

    async def mark_failed(self, delivery_id: int, *, worker: str, error: str) -> None:
        async with self.repo._tx() as db:
            await db.execute(
                "UPDATE deliveries SET state = 'failed', last_error = ?, lease_until = NULL"
                " WHERE id = ? AND state = 'sending' AND claimed_by = ?",
                (error[:500], delivery_id, worker),
            )

    async def retry(self, delivery_id: int, *, actor: str, now: float) -> None:
        """Put a failed delivery back in the queue (attempts start again); NotFound otherwise."""
        async with self.repo._tx() as db:
            cur = await db.execute(
                "UPDATE deliveries SET state = 'pending', attempts = 0, not_before = ?"
                " WHERE id = ? AND state = 'failed'",
                (now, delivery_id),
            )
            changed = cur.rowcount
            await cur.close()
            if not changed:
                raise NotFound(f"delivery {delivery_id} does not exist or has not failed")
            await self.repo._audit(
                db, actor, "alerts.delivery.retry", f"delivery:{delivery_id}", {}
            )

    async def deliveries(
        self,
        *,
        states: frozenset[str] | None = None,
        notification_key: str | None = None,
        limit: int = 200,
    ) -> list[Delivery]:
        where: list[str] = []
        params: list[Any] = []
        if states is not None:
            where.append(f"d.state IN ({_qmarks(len(states))})")
            params.extend(sorted(states))
        if notification_key is not None:
            where.append("n.key = ?")
            params.append(notification_key)
        sql = (
            f"SELECT {_DELIVERY_COLS} FROM deliveries d"
            " JOIN notifications n ON n.id = d.notification_id"
        )
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = await self.repo._all(sql + " ORDER BY d.id DESC LIMIT ?", [*params, limit])
        return [_delivery(r) for r in rows]

    async def delivery_counts(self) -> list[tuple[str, str, int]]:
        """(state, channel, count) of every delivery."""
        rows = await self.repo._all(
            "SELECT state, channel, count(*) AS n FROM deliveries GROUP BY state, channel"
            " ORDER BY state, channel"
        )
        return [(r["state"], r["channel"], int(r["n"])) for r in rows]

    # -- the monthly report ------------------------------------------------------------------

    async def enqueue_report(
        self,
        notification: NotificationDraft,
        *,
        period: str,
        scheduled: bool,
        worker: str,
        as_of: str,
        trigger: str,
        actor: str,
        summary: str,
    ) -> bool:
        """Queue a report's deliveries and log the sending, in one transaction.

        A scheduled report is sent once per ``period`` ("2026-11") across all
        instances: whoever inserts the period's run row queues it, the others
        get False. On-demand reports are queued every time.
        """
        async with self.repo._tx() as db:
            if scheduled:
                cur = await db.execute(
                    "INSERT OR IGNORE INTO report_runs (period, claimed_by, claimed_at)"
                    " VALUES (?,?,?)",
                    (period, worker, notification.created_at),
                )
                won = cur.rowcount > 0
                await cur.close()
                if not won:
                    return False
            if not await self._insert(db, [notification]):
                return False
            recipients = [d.address for d in notification.deliveries]
            await db.execute(
                "INSERT INTO report_log (at, period, as_of, trigger, actor, notification_key,"
                " recipients, summary) VALUES (?,?,?,?,?,?,?,?)",
                (
                    notification.created_at,
                    period,
                    as_of,
                    trigger,
                    actor,
                    notification.key,
                    json.dumps(recipients, ensure_ascii=False),
                    summary,
                ),
            )
            await self.repo._audit(
                db,
                actor,
                "report.send",
                f"report:{period}",
                {"trigger": trigger, "recipients": recipients, "key": notification.key},
            )
        return True

    async def report_log(self, *, limit: int = 50) -> list[dict[str, Any]]:
        rows = await self.repo._all(
            "SELECT l.at, l.period, l.as_of, l.trigger, l.actor, l.notification_key,"
            " l.recipients, l.summary,"
            " (SELECT group_concat(d.state || ':' || d.address, ', ') FROM deliveries d"
            "  JOIN notifications n ON n.id = d.notification_id WHERE n.key = l.notification_key)"
            " AS deliveries FROM report_log l ORDER BY l.id DESC LIMIT ?",
            (limit,),
        )
        return [
            {
                "at": r["at"],
                "period": r["period"],
                "as_of": r["as_of"],
                "trigger": r["trigger"],
                "actor": r["actor"],
                "notification_key": r["notification_key"],
                "recipients": json.loads(r["recipients"]),
                "summary": r["summary"],
                "deliveries": r["deliveries"] or "",
            }
            for r in rows
        ]
