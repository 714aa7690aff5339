"""``RepairStore`` on SQLite: repair tickets and on-site findings."""

from __future__ import annotations

import sqlite3
import statistics
from collections import defaultdict
from collections.abc import Collection
from typing import Any, Final

import aiosqlite

from collector.store.base import (
    Conflict,
    DeviceRow,
    Finding,
    NotFound,
    RepairStat,
    StoreError,
    Ticket,
    TicketEntry,
    TicketState,
)
from collector.store.sqlite_base import (
    INTEGRITY_ERRORS,
    _cause,
    _only,
    _qmarks,
    _SQLiteBase,
)
from fleet_protocol import B2Cause


class RepairRole(_SQLiteBase):
    """``RepairStore`` on SQLite: tickets and on-site findings."""

    async def _commune_of(self, db: aiosqlite.Connection, device_id: str) -> str:
        async with db.execute(
            "SELECT coalesce((SELECT commune_code FROM inventory WHERE device_id = ?),"
            " (SELECT commune_code FROM devices WHERE device_id = ?)) AS commune",
            (device_id, device_id),
        ) as cur:
            row = await cur.fetchone()
        if row is None or row["commune"] is None:
            raise NotFound(f"device {device_id!r} is not known")
        return str(row["commune"])

    async def _ticket(self, db: aiosqlite.Connection, ticket_id: int) -> Ticket:
        async with db.execute(
            "SELECT id, device_id, commune_code, state, cause, opened_at, opened_by, contractor,"
            " technician, started_at, closed_at, last_progress_at, note FROM tickets"
            " WHERE id = ?",
            (ticket_id,),
        ) as cur:
            r = await cur.fetchone()
        if r is None:
            raise NotFound(f"repair ticket {ticket_id} does not exist")
        async with db.execute(
            "SELECT at, actor, action, note FROM ticket_history WHERE ticket_id = ?"
            " ORDER BY at, id",
            (ticket_id,),
        ) as cur:
            hist = tuple(
                TicketEntry(at=h["at"], actor=h["actor"], action=h["action"], note=h["note"])
                for h in await cur.fetchall()
            )
        return Ticket(
            id=r["id"],
            device_id=r["device_id"],
            commune_code=r["commune_code"],
            state=TicketState(r["state"]),
            cause=_cause(r["cause"]),
            opened_at=r["opened_at"],
            opened_by=r["opened_by"],
            contractor=r["contractor"],
            technician=r["technician"],
            started_at=r["started_at"],
            closed_at=r["closed_at"],
            last_progress_at=r["last_progress_at"],
            note=r["note"],
            history=hist,
        )

    async def _history(
        self,
        db: aiosqlite.Connection,
        ticket_id: int,
        at: float,
        actor: str,
        action: str,
        note: str,
    ) -> None:
        await db.execute(
            "INSERT INTO ticket_history (ticket_id, at, actor, action, note) VALUES (?,?,?,?,?)",
            (ticket_id, at, actor, action, note),
        )
        await self._audit(db, actor, f"repair.{action}", f"ticket:{ticket_id}", {"note": note})
        async with db.execute("SELECT device_id FROM tickets WHERE id = ?", (ticket_id,)) as cur:
            row = await cur.fetchone()
        if row is not None:  # in repair or not, and the page's ticket list changed
            await self._touch(db, [row["device_id"]], shown=[row["device_id"]])

    async def open_ticket(
        self, device_id: str, *, actor: str, at: float, note: str, cause: B2Cause | None
    ) -> Ticket:
        async with self._tx() as db:
            commune = await self._commune_of(db, device_id)
            try:
                cur = await db.execute(
                    "INSERT INTO tickets (device_id, commune_code, state, cause, opened_at,"
                    " opened_by, last_progress_at, note) VALUES (?,?,?,?,?,?,?,?)",
                    (device_id, commune, "open", cause and str(cause), at, actor, at, note),
                )
            except INTEGRITY_ERRORS:
                async with db.execute(
                    "SELECT id FROM tickets WHERE device_id = ? AND state IN ('open', 'in_repair')",
                    (device_id,),
                ) as c:
                    row = await c.fetchone()
                active = int(row["id"]) if row else None
                raise Conflict(
                    f"device {device_id!r} already has an active repair ticket ({active})",
                    ticket_id=active,
                ) from None
            ticket_id = int(cur.lastrowid or 0)
            await cur.close()
            await self._history(db, ticket_id, at, actor, "open", note)
            return await self._ticket(db, ticket_id)

    async def _active(self, db: aiosqlite.Connection, ticket_id: int) -> Ticket:
        t = await self._ticket(db, ticket_id)
        if not t.state.active:
            raise Conflict(f"repair ticket {ticket_id} is {t.state}, not open", ticket_id=ticket_id)
        return t

    async def start_ticket(
        self,
        ticket_id: int,
        *,
        actor: str,
        at: float,
        contractor: str,
        technician: str,
        note: str,
    ) -> Ticket:
        async with self._tx() as db:
            t = await self._active(db, ticket_id)
            if t.state is TicketState.IN_REPAIR:
                raise Conflict(
                    f"repair ticket {ticket_id} is already in repair", ticket_id=ticket_id
                )
            await db.execute(
                "UPDATE tickets SET state = 'in_repair', contractor = ?, technician = ?,"
                " started_at = ?, last_progress_at = ? WHERE id = ?",
                (contractor, technician, at, at, ticket_id),
            )
            await self._history(
                db,
                ticket_id,
                at,
                actor,
                "start",
                f"{note} [contractor: {contractor}; technician: {technician}]".strip(),
            )
            return await self._ticket(db, ticket_id)

    async def comment_ticket(self, ticket_id: int, *, actor: str, at: float, note: str) -> Ticket:
        async with self._tx() as db:
            await self._active(db, ticket_id)
            await db.execute(
                "UPDATE tickets SET last_progress_at = ? WHERE id = ?", (at, ticket_id)
            )
            await self._history(db, ticket_id, at, actor, "comment", note)
            return await self._ticket(db, ticket_id)

    async def close_ticket(
        self, ticket_id: int, *, actor: str, at: float, state: TicketState, note: str
    ) -> Ticket:
        if state not in (TicketState.RESOLVED, TicketState.CANCELLED):
            raise Conflict(f"a ticket closes as resolved or cancelled, not {state}")
        async with self._tx() as db:
            await self._active(db, ticket_id)
            await db.execute(
                "UPDATE tickets SET state = ?, closed_at = ?, last_progress_at = ? WHERE id = ?",
                (str(state), at, at, ticket_id),
            )
            action = "resolve" if state is TicketState.RESOLVED else "cancel"
            await self._history(db, ticket_id, at, actor, action, note)
            return await self._ticket(db, ticket_id)

    async def get_ticket(self, ticket_id: int) -> Ticket:
        async with self._read() as db:
            return await self._ticket(db, ticket_id)

    async def list_tickets(
        self,
        *,
        communes: frozenset[str] | None = None,
        device_id: str | None = None,
        states: frozenset[TicketState] | None = None,
        limit: int = 500,
    ) -> list[Ticket]:
        where: list[str] = []
        params: list[Any] = []
        if communes is not None:
            where.append(f"commune_code IN ({_qmarks(len(communes))})")
            params.extend(sorted(communes))
        if device_id is not None:
            where.append("device_id = ?")
            params.append(device_id)
        if states is not None:
            where.append(f"state IN ({_qmarks(len(states))})")
            params.extend(sorted(str(s) for s in states))
        sql = "SELECT id FROM tickets"
        if where:
            sql += " WHERE " + " AND ".join(where)
        async with self._read() as db:
            async with db.execute(sql + " ORDER BY opened_at DESC LIMIT ?", [*params, limit]) as c:
                ids = [int(r["id"]) for r in await c.fetchall()]
            return [await self._ticket(db, i) for i in ids]

    async def repair_stats(self, by: str) -> list[RepairStat]:
        column = {"commune": "commune_code", "contractor": "contractor"}.get(by)
        if column is None:
            raise StoreError(f"repair_stats: by must be 'commune' or 'contractor', not {by!r}")
        rows = await self._all(
            f"SELECT {column} AS grp, closed_at - opened_at AS seconds FROM tickets"
            " WHERE state = 'resolved'"
        )
        groups: dict[str, list[float]] = defaultdict(list)
        for r in rows:
            groups[r["grp"] or ""].append(r["seconds"] / 3600.0)
        return [
            RepairStat(
                key,
                len(v),
                round(statistics.fmean(v), 3),
                round(statistics.median(v), 3),
                round(max(v), 3),
            )
            for key, v in sorted(groups.items())
        ]

    async def devices_for_repair_sweep(self) -> list[DeviceRow]:
        rows = await self._all(
            self._DEVICE_SELECT
            + " WHERE id IN (SELECT device_id FROM devices WHERE diag_broken = 1"
            " UNION SELECT device_id FROM tickets WHERE state IN ('open', 'in_repair'))"
        )
        return [self._device_row(r) for r in rows]

    async def diag_broken_since(self, device_id: str) -> float | None:
        """Event time since which the device's diagnosis has been continuously broken."""
        rows = await self._all(
            "SELECT ts, diag_broken FROM transitions WHERE device_id = ?"
            " ORDER BY ts DESC, seq DESC LIMIT 200",
            (device_id,),
        )
        since: float | None = None
        for r in rows:
            if not r["diag_broken"]:
                break
            since = r["ts"]
        return since

    @staticmethod
    def _finding(r: sqlite3.Row) -> Finding:
        return Finding(
            id=r["id"],
            ticket_id=r["ticket_id"],
            device_id=r["device_id"],
            cause=B2Cause(r["cause"]),
            text=r["text"],
            at=r["at"],
            actor=r["actor"],
        )

    _FINDING_COLS: Final = "id, ticket_id, device_id, cause, text, at, actor"

    async def record_finding(
        self, ticket_id: int, *, actor: str, at: float, cause: B2Cause, text: str
    ) -> Finding:
        async with self._tx() as db:
            ticket = await self._ticket(db, ticket_id)
            cur = await db.execute(
                "INSERT INTO findings (ticket_id, device_id, cause, text, at, actor)"
                " VALUES (?,?,?,?,?,?)",
                (ticket_id, ticket.device_id, str(cause), text, at, actor),
            )
            finding_id = int(cur.lastrowid or 0)
            await cur.close()
            await db.execute(
                "INSERT INTO ticket_history (ticket_id, at, actor, action, note)"
                " VALUES (?,?,?,?,?)",
                (ticket_id, at, actor, "finding", f"{cause.label()}: {text}".rstrip(": ")),
            )
            await self._audit(
                db,
                actor,
                "repair.finding",
                f"ticket:{ticket_id}",
                {"device": ticket.device_id, "cause": str(cause), "text": text, "at": at},
            )
            async with db.execute(
                f"SELECT {self._FINDING_COLS} FROM findings WHERE id = ?", (finding_id,)
            ) as c:
                row = await c.fetchone()
        assert row is not None
        return self._finding(row)

    async def list_findings(self, device_id: str) -> list[Finding]:
        rows = await self._all(
            f"SELECT {self._FINDING_COLS} FROM findings WHERE device_id = ? ORDER BY at, id",
            (device_id,),
        )
        return [self._finding(r) for r in rows]

    async def findings_as_of(
        self, t: float, *, devices: Collection[str] | None = None
    ) -> dict[str, Finding]:
        only, only_params = _only("device_id", devices)
        rows = await self._all(
            f"SELECT {self._FINDING_COLS} FROM (SELECT *, row_number() OVER"
            " (PARTITION BY device_id ORDER BY at DESC, id DESC) AS rn FROM findings"
            f" WHERE at <= ? AND {only}) AS latest WHERE rn = 1",
            (t, *only_params),
        )
        return {
            r["device_id"]: self._finding(r)
            for r in rows
            if devices is None or r["device_id"] in devices
        }
