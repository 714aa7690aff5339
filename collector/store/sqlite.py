"""The embedded store: SQLite through aiosqlite, in WAL mode.

One writer connection (writes are serialised by an asyncio lock and each is
one ``BEGIN IMMEDIATE`` transaction, so several collector processes may share
the file) and one reader connection (WAL readers see the last committed
snapshot and never block the writer).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import sqlite3
import statistics
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import aiosqlite
import msgspec

from collector.clocktruth import date_message, install_floor, learned_offset
from collector.fleet import INITIAL, FleetState, Observation, ObsKind, Transition, fold
from collector.fleet_step import (
    DeviceRecord,
    DeviceStep,
    fuller_report,
    merged_report,
    reconcile_faults,
    refold_start,
    silence,
    step_device,
)
from collector.model import CommuneKind, DeviceStatus, InventoryDevice, Status
from collector.store.base import (
    B2Snapshot,
    BatchResult,
    Conflict,
    DeviceRow,
    DiagEvidence,
    EventRow,
    FaultRow,
    Finding,
    IncomingMessage,
    NotFound,
    RepairStat,
    Role,
    Session,
    SignalPoint,
    StatusTimeline,
    StoreError,
    ThrottleRule,
    Ticket,
    TicketEntry,
    TicketState,
    User,
)
from collector.store.commands import CommandRecord, CommandState, audit_of
from collector.store.migrations import LATEST, MIGRATIONS
from fleet_protocol import B2Cause

#: SQLite's default limit on bound parameters is 32766 (3.32+); stay far below.
_CHUNK: Final = 500
_SYNCHRONOUS: Final = ("off", "normal", "full", "extra")

_INVENTORY_COLS: Final = (
    "device_id, commune_code, commune_name, commune_kind, district, province, address, "
    "latitude, longitude, contractor, sim_iccid, sim_phone, install_date, position"
)


#: Install dates are days in Vietnam's one time zone: a cluster counts from 00:00 there.
_INSTALL_TZ: Final = dt.timezone(dt.timedelta(hours=7))


def _install_ts(day: str) -> float | None:
    try:
        return dt.datetime.combine(dt.date.fromisoformat(day), dt.time(0), _INSTALL_TZ).timestamp()
    except ValueError:
        return None


def counted_from(
    install_date: str, listed_at: float | None, first_report: float | None
) -> float | None:
    """When a cluster starts to count: its install date, else the earlier of its
    first inventory listing and its first report; None when nothing says (it
    then counts at every moment)."""
    installed = _install_ts(install_date) if install_date else None
    if installed is not None:
        return installed
    known = [t for t in (listed_at, first_report) if t is not None]
    return min(known) if known else None


def _cause(v: str | None) -> B2Cause | None:
    return None if v is None else B2Cause(v)


def _state_of(row: sqlite3.Row | tuple[Any, ...], at: int = 0) -> FleetState:
    """FleetState from (online, has_diag, diag_broken, diag_cause, status_since) at ``at``."""
    online, has_diag, broken, cause, since = tuple(row)[at : at + 5]
    return FleetState(
        online=bool(online),
        has_diag=bool(has_diag),
        diag_broken=bool(broken),
        diag_cause=_cause(cause),
        status_since=since,
    )


def _obs_of(row: sqlite3.Row | tuple[Any, ...]) -> Observation:
    ts, seq, kind, prompt, broken, cause = tuple(row)
    return Observation(
        ts, seq, ObsKind(kind), prompt=bool(prompt), broken=bool(broken), cause=_cause(cause)
    )


#: The ``devices`` columns of a ``DeviceRecord`` (``_record_of``).
_RECORD_COLS: Final = (
    "device_id, commune_code, online, has_diag, diag_broken, diag_cause, status_since,"
    " obs_ts, obs_seq, last_ts, last_seq, last_seen, report_ts, first_seen"
)


_RECORD_NAMES: Final = tuple(c.strip() for c in _RECORD_COLS.split(","))


def _record_of(row: sqlite3.Row | tuple[Any, ...]) -> DeviceRecord:
    """A ``devices`` row (``_RECORD_COLS``) as the fleet step's record, read by name."""
    r = dict(zip(_RECORD_NAMES, tuple(row), strict=True))
    return DeviceRecord(
        device_id=r["device_id"],
        commune_code=r["commune_code"] or "",
        state=FleetState(
            online=bool(r["online"]),
            has_diag=bool(r["has_diag"]),
            diag_broken=bool(r["diag_broken"]),
            diag_cause=_cause(r["diag_cause"]),
            status_since=r["status_since"],
        ),
        obs_key=None if r["obs_ts"] is None else (r["obs_ts"], r["obs_seq"]),
        last_key=None if r["last_ts"] is None else (r["last_ts"], r["last_seq"]),
        last_seen=r["last_seen"],
        report_ts=r["report_ts"],
        first_seen=r["first_seen"],
    )


def _state_cols(state: FleetState) -> tuple[Any, ...]:
    """online, has_diag, diag_broken, diag_cause, status, cause, status_since."""
    return (
        int(state.online),
        int(state.has_diag),
        int(state.diag_broken),
        state.diag_cause and str(state.diag_cause),
        str(state.status),
        state.cause and str(state.cause),
        state.status_since,
    )


def _inventory_of(row: sqlite3.Row | tuple[Any, ...]) -> InventoryDevice:
    r = tuple(row)
    return InventoryDevice(
        device_id=r[0],
        commune_code=r[1],
        commune_name=r[2],
        commune_kind=CommuneKind(r[3]),
        district=r[4],
        province=r[5],
        address=r[6],
        latitude=r[7],
        longitude=r[8],
        contractor=r[9],
        sim_iccid=r[10],
        sim_phone=r[11],
        install_date=r[12],
        position=r[13],
    )


def _chunks(seq: Sequence[Any], n: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def _qmarks(n: int) -> str:
    return ",".join("?" * n)


def payload_digest(payload: bytes) -> bytes:
    """The content digest stored per message (replay conflicts compare it)."""
    return hashlib.blake2b(payload, digest_size=16).digest()


def _shifted_since(since: float, delta: float, ts: float) -> float:
    """A fault's ``since``, stamped by the same clock as its report, moved as the report
    was by ``delta``; never after the report's (new) time ``ts``."""
    return min(since + delta, ts)


def _redated(m: IncomingMessage, ts: float, late_after_s: float) -> IncomingMessage:
    """``m`` at event time ``ts``; a report's promptness and its faults' since follow."""
    if ts == m.ts:
        return m
    obs = m.observation
    if obs is not None:
        prompt = obs.prompt
        if obs.kind is ObsKind.REPORT:
            prompt = m.received_at - ts <= late_after_s
        obs = dataclasses.replace(obs, ts=ts, prompt=prompt)
    faults = m.faults
    if faults:
        delta = ts - m.ts
        faults = tuple(
            (code, _shifted_since(since, delta, ts), cause, severity, evidence)
            for code, since, cause, severity, evidence in faults
        )
    return dataclasses.replace(m, ts=ts, observation=obs, faults=faults)


class SQLiteRepository:
    """``Repository`` on one SQLite file. Build with ``await SQLiteRepository.open(path)``."""

    def __init__(self, path: Path, writer: aiosqlite.Connection, reader: aiosqlite.Connection):
        self.path = path
        self._w = writer
        self._r = reader
        self._wlock = asyncio.Lock()
        self._rlock = asyncio.Lock()

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    async def open(
        cls, path: Path | str, *, synchronous: str = "full", busy_timeout_s: float = 10.0
    ) -> SQLiteRepository:
        """Open (creating if needed) the database; does not migrate.

        ``synchronous`` is SQLite's WAL durability: "full" survives power loss,
        "normal" survives a crash of the process (kill -9) but may lose the last
        commits on power loss.
        """
        if synchronous not in _SYNCHRONOUS:
            raise StoreError(f"{path}: synchronous must be one of {_SYNCHRONOUS}")
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conns: list[aiosqlite.Connection] = []
            for _ in range(2):
                conn = await aiosqlite.connect(path, isolation_level=None)
                conns.append(conn)
                await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
                await conn.execute("PRAGMA journal_mode = WAL")
                await conn.execute(f"PRAGMA synchronous = {synchronous}")
                await conn.execute("PRAGMA foreign_keys = ON")
        except (sqlite3.Error, OSError) as exc:
            for c in conns:
                await c.close()
            raise StoreError(f"{path}: cannot open database: {exc}") from exc
        return cls(path, conns[0], conns[1])

    async def close(self) -> None:
        async with self._wlock, self._rlock:
            await self._w.close()
            await self._r.close()

    async def schema_version(self) -> int:
        async with self._r.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def migrate(self) -> int:
        async with self._tx() as db:
            async with db.execute("PRAGMA user_version") as cur:
                row = await cur.fetchone()
            version = int(row[0]) if row else 0
            if version > LATEST:
                raise StoreError(
                    f"{self.path}: schema version {version} is newer than this collector "
                    f"({LATEST}); upgrade the collector"
                )
            for step in range(version, LATEST):
                for stmt in MIGRATIONS[step].split(";"):
                    if stmt.strip():
                        await db.execute(stmt)
                await db.execute(f"PRAGMA user_version = {step + 1}")
        return LATEST

    async def require_schema(self) -> None:
        """Raise StoreError unless the schema is at the latest version."""
        version = await self.schema_version()
        if version != LATEST:
            raise StoreError(
                f"{self.path}: schema version {version}, this collector needs {LATEST}; "
                "run `loa-collector db migrate`"
            )

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT, rolled back on any error)."""
        async with self._wlock:
            try:
                await self._w.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: cannot begin a write: {exc}") from exc
            try:
                yield self._w
            except sqlite3.Error as exc:
                await self._w.execute("ROLLBACK")
                raise StoreError(f"{self.path}: write failed, rolled back: {exc}") from exc
            except BaseException:
                await self._w.execute("ROLLBACK")
                raise
            try:
                await self._w.execute("COMMIT")
            except sqlite3.Error as exc:
                await self._w.execute("ROLLBACK")
                raise StoreError(f"{self.path}: commit failed: {exc}") from exc

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[aiosqlite.Connection]:
        """A consistent read snapshot over several statements."""
        async with self._rlock:
            await self._r.execute("BEGIN")
            try:
                yield self._r
            finally:
                await self._r.execute("COMMIT")

    async def _all(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        async with self._rlock, self._r.execute(sql, params) as cur:
            return list(await cur.fetchall())

    # -- inventory -------------------------------------------------------------------------

    async def upsert_inventory(
        self, devices: Sequence[InventoryDevice], *, remove_missing: bool, actor: str = "system"
    ) -> tuple[int, int, int]:
        ids = [d.device_id for d in devices]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise Conflict(f"inventory lists device {dup!r} twice")
        now = time.time()
        async with self._tx() as db:
            async with db.execute("SELECT device_id, listed_at FROM inventory") as cur:
                listed = {r[0]: r[1] for r in await cur.fetchall()}
            existing = set(listed)
            rows = [
                (
                    d.device_id,
                    d.commune_code,
                    d.commune_name,
                    str(d.commune_kind),
                    d.district,
                    d.province,
                    d.address,
                    d.latitude,
                    d.longitude,
                    d.contractor,
                    d.sim_iccid,
                    d.sim_phone,
                    d.install_date,
                    d.position,
                    # First listed: kept across re-imports (a cluster counts from then).
                    listed.get(d.device_id) or now,
                )
                for d in devices
            ]
            await db.executemany(
                f"INSERT OR REPLACE INTO inventory ({_INVENTORY_COLS}, listed_at)"
                f" VALUES ({_qmarks(15)})",
                rows,
            )
            removed = existing - set(ids) if remove_missing else set()
            for chunk in _chunks(sorted(removed)):
                await db.execute(
                    f"DELETE FROM inventory WHERE device_id IN ({_qmarks(len(chunk))})", chunk
                )
            added = len(set(ids) - existing)
            updated = len(ids) - added
            await self._audit(
                db,
                actor,
                "inventory.upsert",
                "inventory",
                {"added": added, "updated": updated, "removed": sorted(removed)},
            )
        return added, updated, len(removed)

    async def list_inventory(self) -> list[InventoryDevice]:
        rows = await self._all(
            f"SELECT {_INVENTORY_COLS} FROM inventory ORDER BY position, device_id"
        )
        return [_inventory_of(r) for r in rows]

    async def statuses_as_of(self, t: float) -> list[DeviceStatus]:
        async with self._read() as db:
            async with db.execute(
                f"SELECT {_INVENTORY_COLS} FROM inventory ORDER BY position, device_id"
            ) as cur:
                inventory = [_inventory_of(r) for r in await cur.fetchall()]
            async with db.execute(
                """
                SELECT device_id, online, has_diag, diag_broken, diag_cause, status_since, ts
                FROM (SELECT *, row_number() OVER (PARTITION BY device_id
                                                   ORDER BY ts DESC, seq DESC) AS rn
                      FROM transitions WHERE ts <= ?)
                WHERE rn = 1 AND device_id IN (SELECT device_id FROM inventory)
                """,
                (t,),
            ) as cur:
                states = {r[0]: (_state_of(r, 1), r[6]) for r in await cur.fetchall()}
            async with db.execute(
                "SELECT DISTINCT device_id FROM tickets WHERE started_at <= ? "
                "AND (closed_at IS NULL OR closed_at > ?)",
                (t, t),
            ) as cur:
                repairing = {r[0] for r in await cur.fetchall()}
            starts = await self._counted_from(db)
            async with db.execute(
                """
                SELECT i.device_id,
                       (SELECT max(m.ts) FROM messages m
                        WHERE m.device_id = i.device_id AND m.ts <= ? AND m.seq >= 0)
                FROM inventory i
                """,
                (t,),
            ) as cur:
                heard = {r[0]: r[1] for r in await cur.fetchall()}
        out: list[DeviceStatus] = []
        for d in inventory:
            found = states.get(d.device_id)
            start = starts.get(d.device_id)
            exists = start is None or start <= t
            if found is None:
                out.append(
                    DeviceStatus(
                        device_id=d.device_id,
                        commune_code=d.commune_code,
                        status=Status.BROKEN,
                        cause=B2Cause.UNKNOWN,
                        in_repair=d.device_id in repairing,
                        never_reported=True,
                        exists=exists,
                    )
                )
                continue
            state, tr_ts = found
            last = heard.get(d.device_id)
            out.append(
                DeviceStatus(
                    device_id=d.device_id,
                    commune_code=d.commune_code,
                    status=state.status,
                    cause=state.cause,
                    in_repair=state.status is Status.BROKEN and d.device_id in repairing,
                    online=state.online,
                    since=state.status_since,
                    last_seen=last if last is not None else tr_ts,
                    exists=exists,
                )
            )
        return out

    async def _counted_from(self, db: aiosqlite.Connection) -> dict[str, float | None]:
        """Per inventory device, when it starts to count (``counted_from``)."""
        async with db.execute(
            "SELECT i.device_id, i.install_date, i.listed_at,"
            " (SELECT min(t.ts) FROM transitions t WHERE t.device_id = i.device_id)"
            " FROM inventory i"
        ) as cur:
            return {r[0]: counted_from(r[1], r[2], r[3]) for r in await cur.fetchall()}

    async def status_timelines(self, t0: float, t1: float) -> list[StatusTimeline]:
        async with self._read() as db:
            async with db.execute(
                "SELECT device_id, commune_code FROM inventory ORDER BY position, device_id"
            ) as cur:
                inventory = [(r[0], r[1]) for r in await cur.fetchall()]
            starts = await self._counted_from(db)
            async with db.execute(
                """
                SELECT device_id, online, has_diag, diag_broken, diag_cause, status_since
                FROM (SELECT *, row_number() OVER (PARTITION BY device_id
                                                   ORDER BY ts DESC, seq DESC) AS rn
                      FROM transitions WHERE ts <= ?)
                WHERE rn = 1
                """,
                (t0,),
            ) as cur:
                initial = {r[0]: _state_of(r, 1).status for r in await cur.fetchall()}
            changes: dict[str, list[tuple[float, Status]]] = {}
            async with db.execute(
                "SELECT device_id, ts, online, has_diag, diag_broken, diag_cause, status_since"
                " FROM transitions WHERE ts > ? AND ts <= ? ORDER BY device_id, ts, seq",
                (t0, t1),
            ) as cur:
                async for r in cur:
                    changes.setdefault(r[0], []).append((float(r[1]), _state_of(r, 2).status))
        return [
            StatusTimeline(
                device_id=device,
                commune_code=commune,
                counted_from=starts.get(device),
                initial=initial.get(device),
                changes=tuple(changes.get(device, ())),
            )
            for device, commune in inventory
        ]

    # -- ingest ----------------------------------------------------------------------------

    async def write_batch(
        self,
        messages: Sequence[IncomingMessage],
        *,
        late_after_s: float,
        max_future_s: float = 300.0,
    ) -> BatchResult:
        if not messages:
            return BatchResult(0, 0)
        async with self._tx() as db:
            dated, dating, learned = await self._date(
                db, messages, late_after_s=late_after_s, max_future_s=max_future_s
            )
            rows = [
                (
                    m.device_id,
                    m.seq,
                    m.kind,
                    m.ts,
                    m.received_at,
                    None if m.observation is None else str(m.observation.kind),
                    1 if m.observation is None or m.observation.prompt else 0,
                    1 if m.observation is not None and m.observation.broken else 0,
                    None
                    if m.observation is None or m.observation.cause is None
                    else str(m.observation.cause),
                    *(m.signal or (None, None, None, None, None)),
                    m.payload,
                    m.digest if m.digest is not None else payload_digest(m.payload),
                    m.boot_id,
                    m.mono,
                    int(est),
                )
                for m, est in dated
            ]
            async with db.execute("SELECT coalesce(max(rowid), 0) FROM messages") as cur:
                row = await cur.fetchone()
            high = int(row[0]) if row else 0
            await db.executemany(
                "INSERT OR IGNORE INTO messages (device_id, seq, kind, ts, received_at, obs_kind,"
                " prompt, broken, cause, rssi_dbm, rsrp_dbm, rsrq_db, sinr_db, csq, payload,"
                " digest, boot_id, mono, time_estimated)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                rows,
            )
            async with db.execute(
                "SELECT device_id, seq FROM messages WHERE rowid > ?", (high,)
            ) as cur:
                fresh = {(r[0], r[1]) for r in await cur.fetchall()}
            new: list[IncomingMessage] = []
            dups: list[IncomingMessage] = []
            for m, _est in dated:
                if (m.device_id, m.seq) in fresh:
                    fresh.discard((m.device_id, m.seq))
                    new.append(m)
                else:
                    dups.append(m)
            conflicts = await self._replay_conflicts(db, dups)
            refold_from, restamped = await self._restamp(
                db, learned, late_after_s=late_after_s, max_future_s=max_future_s
            )
            if restamped:
                dating["restamped"] = restamped
            changed = await self._apply(db, new, refold_from)
        return BatchResult(
            len(new),
            len(messages) - len(new),
            tuple(changed),
            conflicts=conflicts,
            dating=tuple(sorted(dating.items())),
        )

    # -- clock truth (collector.clocktruth holds the rules) ------------------------------

    async def _floors(self, db: aiosqlite.Connection, devices: Sequence[str]) -> dict[str, float]:
        floors: dict[str, float] = {}
        for chunk in _chunks(devices):
            async with db.execute(
                "SELECT device_id, install_date FROM inventory WHERE install_date != ''"
                f" AND device_id IN ({_qmarks(len(chunk))})",
                chunk,
            ) as cur:
                for r in await cur.fetchall():
                    floor = install_floor(r[1])
                    if floor is not None:
                        floors[r[0]] = floor
        return floors

    async def _date(
        self,
        db: aiosqlite.Connection,
        messages: Sequence[IncomingMessage],
        *,
        late_after_s: float,
        max_future_s: float,
    ) -> tuple[list[tuple[IncomingMessage, bool]], dict[str, int], dict[tuple[str, str], float]]:
        """Date every message (boot offsets, install dates); learn the batch's new offsets."""
        devices = sorted({m.device_id for m in messages})
        floors = await self._floors(db, devices)
        boots = sorted({(m.device_id, m.boot_id) for m in messages if m.boot_id is not None})
        offsets: dict[tuple[str, str], float] = {}
        for dev, boot in boots:
            async with db.execute(
                "SELECT offset FROM boot_clocks WHERE device_id = ? AND boot_id = ?", (dev, boot)
            ) as cur:
                r = await cur.fetchone()
            if r is not None:
                offsets[(dev, boot)] = float(r[0])
        learned: dict[tuple[str, str], float] = {}
        # Synchronised messages first: they may teach the offset that dates the others.
        for m in messages:
            if m.device_ts is None or m.boot_id is None or (m.device_id, m.boot_id) in offsets:
                continue
            dated = date_message(
                ts=m.device_ts,
                received_at=m.received_at,
                clock_synced=m.clock_synced,
                mono=m.mono,
                offset=None,
                floor=floors.get(m.device_id),
                max_future_s=max_future_s,
            )
            off = learned_offset(
                ts=m.device_ts,
                clock_synced=m.clock_synced,
                boot_id=m.boot_id,
                mono=m.mono,
                dated=dated,
            )
            if off is not None:
                offsets[(m.device_id, m.boot_id)] = learned[(m.device_id, m.boot_id)] = off
        if learned:
            now = time.time()
            await db.executemany(
                "INSERT OR IGNORE INTO boot_clocks (device_id, boot_id, offset, learned_at)"
                " VALUES (?,?,?,?)",
                [(d, b, off, now) for (d, b), off in learned.items()],
            )
        out: list[tuple[IncomingMessage, bool]] = []
        dating: dict[str, int] = defaultdict(int)
        for m in messages:
            if m.device_ts is None:
                out.append((m, False))
                continue
            dated = date_message(
                ts=m.device_ts,
                received_at=m.received_at,
                clock_synced=m.clock_synced,
                mono=m.mono,
                offset=None if m.boot_id is None else offsets.get((m.device_id, m.boot_id)),
                floor=floors.get(m.device_id),
                max_future_s=max_future_s,
            )
            dating[str(dated.how)] += 1
            out.append((_redated(m, dated.ts, late_after_s), dated.how.estimated))
        return out, dating, learned

    async def _restamp(
        self,
        db: aiosqlite.Connection,
        learned: dict[tuple[str, str], float],
        *,
        late_after_s: float,
        max_future_s: float,
    ) -> tuple[dict[str, tuple[float, int]], int]:
        """Re-date the stored estimated messages of boots whose offset was just learned.

        Returns, per device, the earliest observation key touched (old or new
        time), from which its history must be re-derived, and how many were re-dated.
        """
        refold_from: dict[str, tuple[float, int]] = {}
        count = 0
        floors = await self._floors(db, sorted({d for d, _ in learned}))
        for (device, boot), offset in learned.items():
            async with db.execute(
                "SELECT seq, ts, received_at, mono, obs_kind FROM messages WHERE device_id = ?"
                " AND boot_id = ? AND time_estimated = 1 AND mono IS NOT NULL",
                (device, boot),
            ) as cur:
                rows = list(await cur.fetchall())
            updates: list[tuple[Any, ...]] = []
            shifts: list[tuple[Any, ...]] = []
            for seq, old_ts, received_at, mono, obs_kind in rows:
                dated = date_message(
                    ts=float(mono) + offset,
                    received_at=float(received_at),
                    clock_synced=None,
                    mono=None,
                    offset=None,
                    floor=floors.get(device),
                    max_future_s=max_future_s,
                )
                if dated.how.estimated:
                    continue
                late = obs_kind == ObsKind.REPORT and received_at - dated.ts > late_after_s
                prompt = 0 if late else 1
                updates.append((dated.ts, prompt, device, seq))
                shifts.append((dated.ts - float(old_ts), dated.ts, device, seq))
                key = min((float(old_ts), int(seq)), (dated.ts, int(seq)))
                refold_from[device] = min(refold_from.get(device, key), key)
            if updates:
                await db.executemany(
                    "UPDATE messages SET ts = ?, prompt = ?, time_estimated = 0"
                    " WHERE device_id = ? AND seq = ?",
                    updates,
                )
                await db.executemany(
                    "UPDATE events SET ts = ? WHERE device_id = ? AND seq = ?",
                    [(ts, d, s) for ts, _p, d, s in updates],
                )
                # The fault episodes these reports opened or closed move with them
                # (``_shifted_since``: since was stamped by the same wrong clock).
                await db.executemany(
                    "UPDATE faults SET since = min(since + ?, ?)"
                    " WHERE device_id = ? AND opened_seq = ?",
                    shifts,
                )
                await db.executemany(
                    "UPDATE faults SET cleared_at = ? WHERE device_id = ? AND cleared_seq = ?",
                    [(ts, d, s) for _delta, ts, d, s in shifts],
                )
                count += len(updates)
        return refold_from, count

    async def _replay_conflicts(
        self, db: aiosqlite.Connection, dups: Sequence[IncomingMessage]
    ) -> tuple[tuple[str, int], ...]:
        """Duplicates whose content differs from the stored message of that (device, seq)."""
        by_device: dict[str, list[IncomingMessage]] = defaultdict(list)
        for m in dups:
            by_device[m.device_id].append(m)
        out: list[tuple[str, int]] = []
        for device, msgs in sorted(by_device.items()):
            stored: dict[int, bytes] = {}
            for chunk in _chunks(sorted({m.seq for m in msgs})):
                async with db.execute(
                    "SELECT seq, digest, payload FROM messages WHERE device_id = ?"
                    f" AND seq IN ({_qmarks(len(chunk))})",
                    (device, *chunk),
                ) as cur:
                    for seq, digest, payload in await cur.fetchall():
                        # Rows stored before digests existed: hash the kept payload.
                        stored[int(seq)] = (
                            bytes(digest) if digest is not None else payload_digest(payload or b"")
                        )
            for m in msgs:
                digest = m.digest if m.digest is not None else payload_digest(m.payload)
                if m.seq in stored and stored[m.seq] != digest:
                    out.append((device, m.seq))
        return tuple(out)

    async def _stored_report(self, db: aiosqlite.Connection, device: str) -> bytes | None:
        async with db.execute(
            "SELECT last_report FROM devices WHERE device_id = ?", (device,)
        ) as cur:
            row = await cur.fetchone()
        return row[0] if row is not None else None

    async def _apply(
        self,
        db: aiosqlite.Connection,
        new: Sequence[IncomingMessage],
        refold_from: dict[str, tuple[float, int]] | None = None,
    ) -> list[str]:
        """Load, step (``collector.fleet_step``: the rules), save: the new messages of a
        batch into devices, transitions, events and fault episodes.

        ``refold_from`` forces a device's history to be re-derived from that key
        (its stored messages were re-dated).
        """
        refold_from = refold_from or {}
        by_device: dict[str, list[IncomingMessage]] = defaultdict(list)
        for m in new:
            by_device[m.device_id].append(m)
        if not by_device:
            return []
        current: dict[str, DeviceRecord] = {}
        ids = sorted(by_device)
        for chunk in _chunks(ids):
            async with db.execute(
                f"SELECT {_RECORD_COLS} FROM devices WHERE device_id IN ({_qmarks(len(chunk))})",
                chunk,
            ) as cur:
                for r in await cur.fetchall():
                    rec = _record_of(r)
                    current[rec.device_id] = rec
        steps: dict[str, DeviceStep] = {}
        for device, msgs in by_device.items():
            cur_rec = current.get(device)
            start = refold_start(cur_rec, msgs, refold_from.get(device))
            history = await self._stored_history(db, device, start) if start is not None else None
            steps[device] = step_device(device, cur_rec, msgs, history=history, replace_from=start)
        for device, st in steps.items():
            if st.replace_from is not None:
                ts0, seq0 = st.replace_from
                await db.execute(
                    "DELETE FROM transitions WHERE device_id = ?"
                    " AND (ts > ? OR (ts = ? AND seq >= ?))",
                    (device, ts0, ts0, seq0),
                )
        device_rows: list[tuple[Any, ...]] = []
        for device, st in steps.items():
            rec = st.record
            last_report: bytes | None = None
            if st.report is not None:
                base = None
                if st.report.heartbeat:
                    base = fuller_report(st.report, by_device[device])
                    if base is None:
                        base = await self._stored_report(db, device)
                last_report = merged_report(st.report, base)
            device_rows.append(
                (
                    device,
                    rec.commune_code,
                    *_state_cols(rec.state),
                    None if rec.obs_key is None else rec.obs_key[0],
                    None if rec.obs_key is None else rec.obs_key[1],
                    None if rec.last_key is None else rec.last_key[0],
                    None if rec.last_key is None else rec.last_key[1],
                    rec.last_seen,
                    rec.first_seen,
                    rec.report_ts,
                    last_report,
                    1 if st.report is not None else 0,
                )
            )
        await db.executemany(
            """
            INSERT INTO devices (device_id, commune_code, online, has_diag, diag_broken,
                diag_cause, status, cause, status_since, obs_ts, obs_seq, last_ts, last_seq,
                last_seen, first_seen, report_ts, last_report)
            VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)
            ON CONFLICT(device_id) DO UPDATE SET
                commune_code=excluded.commune_code, online=excluded.online,
                has_diag=excluded.has_diag, diag_broken=excluded.diag_broken,
                diag_cause=excluded.diag_cause, status=excluded.status, cause=excluded.cause,
                status_since=excluded.status_since, obs_ts=excluded.obs_ts,
                obs_seq=excluded.obs_seq, last_ts=excluded.last_ts, last_seq=excluded.last_seq,
                last_seen=excluded.last_seen, report_ts=excluded.report_ts,
                last_report=CASE WHEN ?18 THEN excluded.last_report ELSE devices.last_report END
            """,
            device_rows,
        )
        await self._save_transitions(
            db, [(device, tr) for device, st in steps.items() for tr in st.transitions]
        )
        await self._save_faults(
            db, {d: st.fault_reports for d, st in steps.items() if st.fault_reports}
        )
        events = [(d, *e) for d, st in steps.items() for e in st.events]
        if events:
            await db.executemany(
                "INSERT OR IGNORE INTO events (device_id, seq, ts, type, fault_code, action,"
                " detail) VALUES (?,?,?,?,?,?,?)",
                events,
            )
        return [d for d, st in steps.items() if st.changed]

    async def _save_transitions(
        self, db: aiosqlite.Connection, rows: Sequence[tuple[str, Transition]]
    ) -> None:
        await db.executemany(
            "INSERT OR REPLACE INTO transitions (device_id, ts, seq, online, has_diag,"
            " diag_broken, diag_cause, status, cause, status_since)"
            " VALUES (?,?,?,?,?,?,?,?,?,?)",
            [(device, tr.ts, tr.seq, *_state_cols(tr.state)) for device, tr in rows],
        )

    async def _stored_history(
        self, db: aiosqlite.Connection, device: str, start: tuple[float, int]
    ) -> tuple[FleetState, list[Observation]]:
        """(state before ``start``, stored observations from it on) for a refold.

        The state is the last stored transition before ``start``; the
        observations are the stored messages (which already include this batch).
        """
        ts0, seq0 = start
        async with db.execute(
            "SELECT online, has_diag, diag_broken, diag_cause, status_since FROM transitions"
            " WHERE device_id = ? AND (ts < ? OR (ts = ? AND seq < ?))"
            " ORDER BY ts DESC, seq DESC LIMIT 1",
            (device, ts0, ts0, seq0),
        ) as cur:
            row = await cur.fetchone()
        base = INITIAL if row is None else _state_of(row)
        async with db.execute(
            "SELECT ts, seq, obs_kind, prompt, broken, cause FROM messages"
            " WHERE device_id = ? AND obs_kind IS NOT NULL AND (ts > ? OR (ts = ? AND seq >= ?))"
            " ORDER BY ts, seq",
            (device, ts0, ts0, seq0),
        ) as cur:
            observations = [_obs_of(r) for r in await cur.fetchall()]
        return base, observations

    async def _save_faults(
        self, db: aiosqlite.Connection, reports: dict[str, Sequence[IncomingMessage]]
    ) -> None:
        """Fault episodes (``fleet_step.reconcile_faults``) against the stored open ones."""
        devices = sorted(reports)
        open_now: dict[str, set[str]] = defaultdict(set)
        for chunk in _chunks(devices):
            async with db.execute(
                "SELECT device_id, code FROM faults WHERE cleared_at IS NULL"
                f" AND device_id IN ({_qmarks(len(chunk))})",
                chunk,
            ) as cur:
                for r in await cur.fetchall():
                    open_now[r[0]].add(r[1])
        clears: list[tuple[Any, ...]] = []
        inserts: list[tuple[Any, ...]] = []
        for device in devices:
            changes = reconcile_faults(open_now[device], reports[device])
            clears += [(c.at, c.seq, device, c.code) for c in changes.cleared]
            for o in changes.opened:
                row = (o.code, o.since, o.cause, o.severity, o.evidence, o.cleared_at)
                inserts.append((device, *row, o.opened_seq, o.cleared_seq))
        if clears:
            await db.executemany(
                "UPDATE faults SET cleared_at = ?, cleared_seq = ? WHERE device_id = ?"
                " AND code = ? AND cleared_at IS NULL",
                clears,
            )
        if inserts:
            await db.executemany(
                "INSERT INTO faults (device_id, code, since, cause, severity, evidence,"
                " cleared_at, opened_seq, cleared_seq) VALUES (?,?,?,?,?,?,?,?,?)",
                inserts,
            )

    async def mark_silent_offline(self, now: float, grace_s: float) -> list[str]:
        marked: list[str] = []
        async with self._tx() as db:
            async with db.execute(
                "SELECT device_id, online, has_diag, diag_broken, diag_cause, status_since,"
                " last_ts, obs_ts, obs_seq FROM devices WHERE online = 1 AND last_seen < ?",
                (now - grace_s,),
            ) as cur:
                rows = list(await cur.fetchall())
            for r in rows:
                device = r[0]
                obs_key = None if r[7] is None else (float(r[7]), int(r[8]))
                obs = silence(float(r[6]), obs_key, now=now, grace_s=grace_s)
                await db.execute(
                    "INSERT OR IGNORE INTO messages (device_id, seq, kind, ts, received_at,"
                    " obs_kind) VALUES (?,?,?,?,?,?)",
                    (device, obs.seq, "silent", obs.ts, now, str(ObsKind.SILENT)),
                )
                state, trs = fold(_state_of(r, 1), [obs])
                await self._save_transitions(db, [(device, tr) for tr in trs])
                await db.execute(
                    "UPDATE devices SET online = 0, status = ?, cause = ?, status_since = ?,"
                    " obs_ts = ?, obs_seq = ? WHERE device_id = ?",
                    (
                        str(state.status),
                        state.cause and str(state.cause),
                        state.status_since,
                        obs.ts,
                        obs.seq,
                        device,
                    ),
                )
                marked.append(device)
        return marked

    async def purge_raw(self, older_than: float) -> int:
        async with self._tx() as db:
            cur = await db.execute("DELETE FROM messages WHERE received_at < ?", (older_than,))
            n = cur.rowcount
            await cur.close()
            await db.execute("DELETE FROM boot_clocks WHERE learned_at < ?", (older_than,))
        return int(n)

    # -- fleet views -----------------------------------------------------------------------

    _DEVICE_SELECT: Final = f"""
        WITH ids AS (SELECT device_id FROM inventory UNION SELECT device_id FROM devices),
        v AS (
            SELECT ids.device_id AS id,
                   coalesce(i.commune_code, d.commune_code, '') AS commune,
                   coalesce(d.status, 'broken') AS status,
                   CASE WHEN d.device_id IS NULL THEN 'unknown' ELSE d.cause END AS cause,
                   i.position AS position,
                   EXISTS (SELECT 1 FROM tickets t WHERE t.device_id = ids.device_id
                           AND t.state = 'in_repair') AS in_repair,
                   d.online, d.status_since, d.last_seen, d.last_ts, d.last_seq, d.last_report,
                   i.device_id IS NOT NULL AS in_inventory,
                   d.device_id IS NULL AS never_reported,
                   {", ".join("i." + c.strip() for c in _INVENTORY_COLS.split(","))}
            FROM ids LEFT JOIN inventory i ON i.device_id = ids.device_id
                     LEFT JOIN devices d ON d.device_id = ids.device_id
        )
        SELECT * FROM v
    """

    @staticmethod
    def _device_row(r: sqlite3.Row | tuple[Any, ...]) -> DeviceRow:
        t = tuple(r)
        status = Status(t[2])
        return DeviceRow(
            device_id=t[0],
            commune_code=t[1],
            status=status,
            cause=_cause(t[3]) if status is Status.BROKEN else None,
            in_repair=bool(t[5]) and status is Status.BROKEN,
            online=bool(t[6]),
            since=t[7],
            last_seen=t[8],
            last_ts=t[9],
            last_seq=t[10],
            last_report=msgspec.json.decode(t[11]) if t[11] else None,
            in_inventory=bool(t[12]),
            never_reported=bool(t[13]),
            inventory=_inventory_of(t[14:]) if t[12] else None,
        )

    async def list_devices(
        self,
        *,
        communes: frozenset[str] | None = None,
        status: Status | None = None,
        cause: B2Cause | None = None,
        limit: int = 1000,
        offset: int = 0,
    ) -> list[DeviceRow]:
        where: list[str] = []
        params: list[Any] = []
        if communes is not None:
            where.append(f"commune IN ({_qmarks(len(communes))})")
            params.extend(sorted(communes))
        if status is not None:
            where.append("status = ?")
            params.append(str(status))
        if cause is not None:
            where.append("cause = ? AND status = 'broken'")
            params.append(str(cause))
        sql = self._DEVICE_SELECT
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY position IS NULL, position, id LIMIT ? OFFSET ?"
        rows = await self._all(sql, [*params, limit, offset])
        return [self._device_row(r) for r in rows]

    async def get_device(self, device_id: str) -> DeviceRow:
        rows = await self._all(self._DEVICE_SELECT + " WHERE id = ?", (device_id,))
        if not rows:
            raise NotFound(f"device {device_id!r} is not known")
        return self._device_row(rows[0])

    async def status_history(
        self, device_id: str, *, since: float | None = None, until: float | None = None
    ) -> list[Transition]:
        rows = await self._all(
            "SELECT ts, seq, online, has_diag, diag_broken, diag_cause, status_since"
            " FROM transitions WHERE device_id = ? AND ts >= ? AND ts <= ? ORDER BY ts, seq",
            (device_id, since if since is not None else 0.0, until if until is not None else 1e12),
        )
        return [Transition(r[0], r[1], _state_of(r, 2)) for r in rows]

    async def signal_history(
        self,
        device_id: str,
        *,
        since: float | None = None,
        until: float | None = None,
        limit: int = 1000,
    ) -> list[SignalPoint]:
        rows = await self._all(
            "SELECT ts, rssi_dbm, rsrp_dbm, rsrq_db, sinr_db, csq FROM messages"
            " WHERE device_id = ? AND kind = 'state' AND ts >= ? AND ts <= ?"
            " ORDER BY ts DESC LIMIT ?",
            (
                device_id,
                since if since is not None else 0.0,
                until if until is not None else 1e12,
                limit,
            ),
        )
        return [SignalPoint(*tuple(r)) for r in reversed(rows)]

    async def list_events(
        self,
        *,
        communes: frozenset[str] | None = None,
        device_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 200,
    ) -> list[EventRow]:
        where = ["e.ts >= ?", "e.ts <= ?"]
        params: list[Any] = [
            since if since is not None else 0.0,
            until if until is not None else 1e12,
        ]
        if device_id is not None:
            where.append("e.device_id = ?")
            params.append(device_id)
        commune = "coalesce(i.commune_code, d.commune_code, '')"
        if communes is not None:
            where.append(f"{commune} IN ({_qmarks(len(communes))})")
            params.extend(sorted(communes))
        rows = await self._all(
            f"SELECT e.device_id, {commune}, e.seq, e.ts, e.type, e.fault_code, e.action,"
            " e.detail FROM events e LEFT JOIN inventory i ON i.device_id = e.device_id"
            " LEFT JOIN devices d ON d.device_id = e.device_id"
            f" WHERE {' AND '.join(where)} ORDER BY e.ts DESC, e.seq DESC LIMIT ?",
            [*params, limit],
        )
        return [
            EventRow(
                device_id=r[0],
                commune_code=r[1],
                seq=r[2],
                ts=r[3],
                type=r[4],
                fault_code=r[5],
                action=r[6],
                detail=r[7],
            )
            for r in rows
        ]

    async def list_faults(self, device_id: str, *, active_only: bool = False) -> list[FaultRow]:
        sql = (
            "SELECT device_id, code, severity, cause, since, cleared_at, evidence FROM faults"
            " WHERE device_id = ?"
        )
        if active_only:
            sql += " AND cleared_at IS NULL"
        rows = await self._all(sql + " ORDER BY since DESC LIMIT 500", (device_id,))
        return [
            FaultRow(
                device_id=r[0],
                code=r[1],
                severity=r[2],
                cause=r[3],
                since=r[4],
                cleared_at=r[5],
                evidence=r[6],
            )
            for r in rows
        ]

    async def message_count(self) -> int:
        rows = await self._all("SELECT count(*) FROM messages WHERE seq >= 0")
        return int(rows[0][0])

    async def stored_seqs(self, device_id: str) -> list[int]:
        """Wire seqs stored for ``device_id``, ascending (tests, diagnostics)."""
        rows = await self._all(
            "SELECT seq FROM messages WHERE device_id = ? AND seq >= 0 ORDER BY seq",
            (device_id,),
        )
        return [int(r[0]) for r in rows]

    # -- repairs -----------------------------------------------------------------------------

    async def _commune_of(self, db: aiosqlite.Connection, device_id: str) -> str:
        async with db.execute(
            "SELECT coalesce((SELECT commune_code FROM inventory WHERE device_id = ?),"
            " (SELECT commune_code FROM devices WHERE device_id = ?))",
            (device_id, device_id),
        ) as cur:
            row = await cur.fetchone()
        if row is None or row[0] is None:
            raise NotFound(f"device {device_id!r} is not known")
        return str(row[0])

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
                TicketEntry(at=h[0], actor=h[1], action=h[2], note=h[3])
                for h in await cur.fetchall()
            )
        return Ticket(
            id=r[0],
            device_id=r[1],
            commune_code=r[2],
            state=TicketState(r[3]),
            cause=_cause(r[4]),
            opened_at=r[5],
            opened_by=r[6],
            contractor=r[7],
            technician=r[8],
            started_at=r[9],
            closed_at=r[10],
            last_progress_at=r[11],
            note=r[12],
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
            except sqlite3.IntegrityError:
                async with db.execute(
                    "SELECT id FROM tickets WHERE device_id = ? AND state IN ('open', 'in_repair')",
                    (device_id,),
                ) as c:
                    row = await c.fetchone()
                active = int(row[0]) if row else None
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
                ids = [int(r[0]) for r in await c.fetchall()]
            return [await self._ticket(db, i) for i in ids]

    async def repair_stats(self, by: str) -> list[RepairStat]:
        column = {"commune": "commune_code", "contractor": "contractor"}.get(by)
        if column is None:
            raise StoreError(f"repair_stats: by must be 'commune' or 'contractor', not {by!r}")
        rows = await self._all(
            f"SELECT {column}, closed_at - opened_at FROM tickets WHERE state = 'resolved'"
        )
        groups: dict[str, list[float]] = defaultdict(list)
        for key, seconds in rows:
            groups[key or ""].append(seconds / 3600.0)
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
        for ts, broken in rows:
            if not broken:
                break
            since = ts
        return since

    # -- users, tokens, sessions, audit --------------------------------------------------------

    @staticmethod
    def _user(r: sqlite3.Row | tuple[Any, ...]) -> User:
        return User(
            id=r[0],
            name=r[1],
            role=Role(r[2]),
            communes=frozenset(json.loads(r[3])),
            disabled=bool(r[4]),
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
            except sqlite3.IntegrityError:
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
        return self._user(rows[0]), str(rows[0][5])

    async def add_token(self, user_name: str, *, token_hash: str, label: str, at: float) -> None:
        async with self._tx() as db:
            async with db.execute("SELECT id FROM users WHERE name = ?", (user_name,)) as cur:
                row = await cur.fetchone()
            if row is None:
                raise NotFound(f"user {user_name!r} does not exist")
            await db.execute(
                "INSERT INTO api_tokens (token_hash, user_id, label, created_at) VALUES (?,?,?,?)",
                (token_hash, row[0], label, at),
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
        return Session(user=self._user(r), csrf_token=r[5], expires_at=r[6])

    async def drop_session(self, session_hash: str) -> None:
        async with self._tx() as db:
            await db.execute("DELETE FROM sessions WHERE session_hash = ?", (session_hash,))

    async def _audit(
        self,
        db: aiosqlite.Connection,
        actor: str,
        action: str,
        target: str,
        detail: dict[str, Any],
    ) -> None:
        await db.execute(
            "INSERT INTO audit_log (at, actor, action, target, detail) VALUES (?,?,?,?,?)",
            (time.time(), actor, action, target, json.dumps(detail, ensure_ascii=False)),
        )

    async def audit(self, actor: str, action: str, target: str, detail: dict[str, Any]) -> None:
        async with self._tx() as db:
            await self._audit(db, actor, action, target, detail)

    # -- login throttle ------------------------------------------------------------------------

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
                if row is None or at - float(row[2]) > rule.forget_s:
                    counted.append((rule, 0))
                    continue
                wait = max(wait, float(row[1]) - at)
                counted.append((rule, int(row[0])))
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
            {"at": r[0], "actor": r[1], "action": r[2], "target": r[3], "detail": json.loads(r[4])}
            for r in rows
        ]

    # -- used by the dashboard (collector.web) ----------------------------------------------

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

    async def state_reports(
        self, device_id: str, *, since: float, until: float, limit: int = 10000
    ) -> list[tuple[float, dict[str, Any]]]:
        rows = await self._all(
            "SELECT ts, payload FROM messages WHERE device_id = ? AND kind = 'state'"
            " AND seq >= 0 AND ts >= ? AND ts <= ? AND payload IS NOT NULL"
            " ORDER BY ts DESC LIMIT ?",
            (device_id, since, until, limit),
        )
        out: list[tuple[float, dict[str, Any]]] = []
        for r in reversed(rows):
            try:
                data = msgspec.json.decode(r[1])
            except msgspec.DecodeError:
                continue  # stored payloads were validated on the way in; never expected
            if isinstance(data, dict):
                out.append((float(r[0]), data))
        return out

    # -- causes of silent clusters (collector.causes) -------------------------------------------

    @staticmethod
    def _finding(r: sqlite3.Row | tuple[Any, ...]) -> Finding:
        return Finding(
            id=r[0],
            ticket_id=r[1],
            device_id=r[2],
            cause=B2Cause(r[3]),
            text=r[4],
            at=r[5],
            actor=r[6],
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

    async def findings_as_of(self, t: float) -> dict[str, Finding]:
        rows = await self._all(
            f"SELECT {self._FINDING_COLS} FROM (SELECT *, row_number() OVER"
            " (PARTITION BY device_id ORDER BY at DESC, id DESC) AS rn FROM findings"
            " WHERE at <= ?) WHERE rn = 1",
            (t,),
        )
        return {r[2]: self._finding(r) for r in rows}

    async def diag_evidence_as_of(self, t: float) -> dict[str, DiagEvidence]:
        rows = await self._all(
            "SELECT device_id, kind, prompt, broken, cause, ts, received_at, payload FROM"
            " (SELECT *, row_number() OVER (PARTITION BY device_id ORDER BY ts DESC, seq DESC)"
            "  AS rn FROM messages WHERE obs_kind = 'state' AND ts <= ?) WHERE rn = 1",
            (t,),
        )
        out: dict[str, DiagEvidence] = {}
        for r in rows:
            faults: tuple[str, ...] = ()
            with contextlib.suppress(msgspec.DecodeError, TypeError, AttributeError):
                data = msgspec.json.decode(r[7]) if r[7] else {}
                faults = tuple(str(f["code"]) for f in data.get("faults", ()))
            out[r[0]] = DiagEvidence(
                device_id=r[0],
                kind=r[1],
                prompt=bool(r[2]),
                broken=bool(r[3]),
                cause=_cause(r[4]),
                ts=r[5],
                received_at=r[6],
                faults=faults,
            )
        return out

    async def last_reports_as_of(self, t: float) -> dict[str, dict[str, Any]]:
        rows = await self._all(
            "SELECT device_id, ts, payload FROM"
            " (SELECT device_id, ts, payload, row_number() OVER (PARTITION BY device_id"
            "  ORDER BY ts DESC, seq DESC) AS rn FROM messages WHERE kind = 'state'"
            "  AND ts <= ? AND instr(CAST(payload AS TEXT), '\"modem\"') > 0) WHERE rn = 1",
            (t,),
        )
        out: dict[str, dict[str, Any]] = {}
        for r in rows:
            with contextlib.suppress(msgspec.DecodeError):
                data = msgspec.json.decode(r[2])
                if isinstance(data, dict):
                    out[r[0]] = data
        return out

    async def save_b2_snapshot(self, snapshot: B2Snapshot) -> None:
        async with self._tx() as db:
            await db.execute(
                "INSERT INTO b2_snapshots (as_of, scope, produced_at, body) VALUES (?,?,?,?)",
                (
                    snapshot.as_of,
                    snapshot.scope,
                    snapshot.produced_at,
                    json.dumps(snapshot.body, ensure_ascii=False),
                ),
            )

    async def b2_snapshots(self, as_of: float, scope: str) -> list[B2Snapshot]:
        rows = await self._all(
            "SELECT as_of, scope, produced_at, body FROM b2_snapshots WHERE as_of = ?"
            " AND scope = ? ORDER BY produced_at, id",
            (as_of, scope),
        )
        return [
            B2Snapshot(as_of=r[0], scope=r[1], produced_at=r[2], body=json.loads(r[3]))
            for r in rows
        ]

    # -- remote commands (collector.remote) --------------------------------------------------

    _COMMAND_COLS: Final = (
        "id, device_id, action, args, actor, mode, created_at, expires_at, state,"
        " replied_at, ok, result, error"
    )

    @staticmethod
    def _command(r: sqlite3.Row | tuple[Any, ...]) -> CommandRecord:
        row = tuple(r)
        return CommandRecord(
            id=row[0],
            device_id=row[1],
            action=row[2],
            args=json.loads(row[3]),
            actor=row[4],
            mode=row[5],
            created_at=row[6],
            expires_at=row[7],
            state=CommandState(row[8]),
            replied_at=row[9],
            ok=None if row[10] is None else bool(row[10]),
            result=None if row[11] is None else json.loads(row[11]),
            error=row[12],
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
