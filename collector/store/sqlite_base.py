"""SQLite store: connections, transactions, schema and the shared helpers."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final, Self

import aiosqlite
import msgspec

from collector.correlation import cell_key
from collector.fleet import FleetState, Observation, ObsKind
from collector.fleet_step import (
    DeviceRecord,
)
from collector.model import CommuneKind, InventoryDevice, Status
from collector.store.base import (
    DeviceRow,
    IncomingMessage,
    StoreError,
)
from collector.store.migrations import LATEST, MIGRATIONS
from fleet_protocol import B2Cause

try:  # the server store's driver (a collector dependency); its errors are integrity errors too
    import psycopg

    INTEGRITY_ERRORS: tuple[type[Exception], ...] = (sqlite3.IntegrityError, psycopg.IntegrityError)
except ImportError:  # pragma: no cover - an install without the collector extra
    INTEGRITY_ERRORS = (sqlite3.IntegrityError,)

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


def _state_of(row: sqlite3.Row) -> FleetState:
    """FleetState from a row's columns online, has_diag, diag_broken, diag_cause and
    status_since, by name."""
    return FleetState(
        online=bool(row["online"]),
        has_diag=bool(row["has_diag"]),
        diag_broken=bool(row["diag_broken"]),
        diag_cause=_cause(row["diag_cause"]),
        status_since=row["status_since"],
    )


def _obs_of(row: sqlite3.Row) -> Observation:
    """An observation from a row's columns ts, seq, obs_kind, prompt, broken, cause."""
    return Observation(
        row["ts"],
        row["seq"],
        ObsKind(row["obs_kind"]),
        prompt=bool(row["prompt"]),
        broken=bool(row["broken"]),
        cause=_cause(row["cause"]),
    )


#: The ``devices`` columns of a ``DeviceRecord`` (``_record_of``).
_RECORD_COLS: Final = (
    "device_id, commune_code, online, has_diag, diag_broken, diag_cause, status_since,"
    " obs_ts, obs_seq, last_ts, last_seq, last_seen, report_ts, first_seen"
)


def _record_of(r: sqlite3.Row) -> DeviceRecord:
    """A ``devices`` row (``_RECORD_COLS``) as the fleet step's record, read by name."""
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


def _inventory_of(r: sqlite3.Row) -> InventoryDevice:
    """A row holding ``_INVENTORY_COLS``, by column name."""
    return InventoryDevice(
        device_id=r["device_id"],
        commune_code=r["commune_code"],
        commune_name=r["commune_name"],
        commune_kind=CommuneKind(r["commune_kind"]),
        district=r["district"],
        province=r["province"],
        address=r["address"],
        latitude=r["latitude"],
        longitude=r["longitude"],
        contractor=r["contractor"],
        sim_iccid=r["sim_iccid"],
        sim_phone=r["sim_phone"],
        install_date=r["install_date"],
        position=r["position"],
    )


def _chunks(seq: Sequence[Any], n: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


#: Past this many devices a condition on them reads every row instead (bound
#: parameters have limits; the callers keep only the devices asked for).
_ONLY_MAX: Final = 2000

#: The schema version from which devices carry their cell (migration 15).
_CELLS_FROM: Final = 15


def _qmarks(n: int) -> str:
    return ",".join("?" * n)


def _only(column: str, devices: Collection[str] | None) -> tuple[str, tuple[str, ...]]:
    """A condition keeping the rows of ``devices`` (all of them for None), and its params."""
    if devices is None:
        return "1 = 1", ()
    ids = tuple(sorted(set(devices)))
    if not ids:
        return "1 = 0", ()
    if len(ids) > _ONLY_MAX:
        return "1 = 1", ()  # as cheap to read all; the caller keeps those of ``devices``
    return f"{column} IN ({_qmarks(len(ids))})", ids


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


class _SQLiteBase:
    """The connections, transactions and schema, and what several roles share
    (the audit log, device rows)."""

    #: The two-argument minimum of this engine's SQL.
    least = "min"
    greatest = "max"

    _INSERT_MESSAGE: Final = (
        "INSERT OR IGNORE INTO messages (device_id, seq, kind, ts, received_at, obs_kind,"
        " prompt, broken, cause, rssi_dbm, rsrp_dbm, rsrq_db, sinr_db, csq, payload,"
        " digest, boot_id, mono, time_estimated)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
    )

    async def _insert_messages(
        self, db: aiosqlite.Connection, rows: Sequence[tuple[Any, ...]]
    ) -> set[tuple[str, int]]:
        """Insert message rows (duplicates ignored); the keys that were new."""
        async with db.execute("SELECT coalesce(max(rowid), 0) AS high FROM messages") as cur:
            row = await cur.fetchone()
        high = int(row["high"]) if row else 0
        await db.executemany(self._INSERT_MESSAGE, rows)
        async with db.execute(
            "SELECT device_id, seq FROM messages WHERE rowid > ?", (high,)
        ) as cur:
            return {(r["device_id"], r["seq"]) for r in await cur.fetchall()}

    def __init__(self, path: Path, writer: aiosqlite.Connection, reader: aiosqlite.Connection):
        self.path = path
        self._w = writer
        self._r = reader
        self._wlock = asyncio.Lock()
        self._rlock = asyncio.Lock()

    @classmethod
    async def open(
        cls, path: Path | str, *, synchronous: str = "full", busy_timeout_s: float = 10.0
    ) -> Self:
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
                conn.row_factory = sqlite3.Row  # rows read by column name (and still by index)
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
        return int(row["user_version"]) if row else 0

    async def migrate(self) -> int:
        async with self._tx() as db:
            async with db.execute("PRAGMA user_version") as cur:
                row = await cur.fetchone()
            version = int(row["user_version"]) if row else 0
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
            await self._after_migrations(db, version)
        return LATEST

    async def _after_migrations(self, db: Any, version: int) -> None:
        """What a migration needs beyond SQL, once the schema is up from ``version``."""
        if version < _CELLS_FROM and version > 0:
            await self._fill_cells(db)

    async def _fill_cells(self, db: Any) -> None:
        """Each device's cell from its newest stored full report (migration 15)."""
        async with db.execute("SELECT device_id FROM devices") as cur:
            devices = [r["device_id"] for r in await cur.fetchall()]
        rows: list[tuple[Any, ...]] = []
        for device in devices:
            async with db.execute(
                "SELECT ts, payload FROM messages WHERE device_id = ? AND kind = 'state'"
                " AND instr(CAST(payload AS TEXT), '\"modem\"') > 0 ORDER BY ts DESC, seq DESC"
                " LIMIT 1",
                (device,),
            ) as cur:
                r = await cur.fetchone()
            if r is None:
                continue
            try:
                data = msgspec.json.decode(bytes(r["payload"]))
            except msgspec.DecodeError:
                continue
            modem = data.get("modem") if isinstance(data, dict) else None
            if isinstance(modem, dict):
                rows.append((cell_key(modem), float(r["ts"]), device))
        await db.executemany("UPDATE devices SET cell = ?, cell_ts = ? WHERE device_id = ?", rows)

    async def claim_periodic(self, name: str, holder: str, *, now: float, lease_s: float) -> bool:
        """Whether ``holder`` runs this round of the periodic job ``name``: true for
        the holder of an unexpired lease (renewed) or anyone once it has expired.
        Several instances on one database thus run each round once; a dead
        holder's work is taken over when its lease ends."""
        async with self._tx() as db:
            await db.execute(
                "INSERT OR IGNORE INTO periodic_claims (name, holder, lease_until) VALUES (?,?,?)",
                (name, "", 0.0),
            )
            cur = await db.execute(
                "UPDATE periodic_claims SET holder = ?, lease_until = ?"
                " WHERE name = ? AND (lease_until <= ? OR holder = ?)",
                (holder, now + lease_s, name, now, holder),
            )
            won = cur.rowcount > 0
            await cur.close()
        return won

    async def require_schema(self) -> None:
        """Raise StoreError unless the schema is at the latest version."""
        version = await self.schema_version()
        if version != LATEST:
            raise StoreError(
                f"{self.path}: schema version {version}, this collector needs {LATEST}; "
                "run `loa-collector db migrate`"
            )

    async def _lock_devices(self, db: Any, devices: Collection[str]) -> None:
        """In an ingest write (``_tx(ingest=True)``), before the state of ``devices``
        is read and changed: nothing on SQLite (its writer is alone)."""
        del db, devices

    @asynccontextmanager
    async def _tx(self, *, ingest: bool = False) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT, rolled back on any error).

        ``ingest``: the transaction is an ingest write that changes only its
        devices' own rows and the fleet's commutative counts, and locks the
        devices whose state it changes (``_lock_devices``). SQLite has one writer anyway;
        PostgreSQL lets such writes run beside each other.
        """
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

    #: What the fleet's counts count of each cluster (fleet_members' columns).
    _MEMBER_COLS: Final = (
        "commune",
        "status",
        "cause",
        "in_repair",
        "online",
        "never_reported",
        "since",
    )

    @staticmethod
    def _member_select(n: int) -> str:
        """The fleet_members rows of ``n`` clusters (their ids bound twice), as the
        inventory, the devices and the tickets say now (migration 11's query)."""
        q = _qmarks(n)
        return f"""
            SELECT ids.device_id,
                   coalesce(i.commune_code, d.commune_code, '') AS commune,
                   coalesce(d.status, 'broken') AS status,
                   CASE WHEN d.device_id IS NULL THEN 'unknown'
                        WHEN d.status = 'broken' THEN coalesce(d.cause, 'unknown')
                        ELSE '' END AS cause,
                   CASE WHEN coalesce(d.status, 'broken') = 'broken' AND EXISTS (
                        SELECT 1 FROM tickets t WHERE t.device_id = ids.device_id
                        AND t.state = 'in_repair') THEN 1 ELSE 0 END AS in_repair,
                   coalesce(d.online, 0) AS online,
                   CASE WHEN d.device_id IS NULL THEN 1 ELSE 0 END AS never_reported,
                   d.status_since AS since
            FROM (SELECT device_id FROM inventory WHERE device_id IN ({q})
                  UNION SELECT device_id FROM devices WHERE device_id IN ({q})) AS ids
                 LEFT JOIN inventory i ON i.device_id = ids.device_id
                 LEFT JOIN devices d ON d.device_id = ids.device_id
        """

    async def _touch(
        self, db: aiosqlite.Connection, devices: Iterable[str], *, shown: Iterable[str] = ()
    ) -> None:
        """Bring the fleet's counts up to date for ``devices`` after a change in this
        transaction, and bump the version of every commune whose page changed
        (also those of ``shown``: a ticket's progress, a new event)."""
        shown = set(shown)
        ids = sorted(set(devices) | shown)
        delta: dict[tuple[Any, ...], int] = {}
        bumped: set[str] = set()
        cols = self._MEMBER_COLS
        # A member is kept as the tuple of its ``_MEMBER_COLS`` (in that order, the
        # same from fleet_members and from ``_member_select``): old and new are
        # compared whole, upserted as is, and their first six values (commune
        # .. never_reported) are the fleet_tally key. Positional on purpose.
        for chunk in _chunks(ids):
            async with db.execute(
                f"SELECT device_id, {', '.join(cols)} FROM fleet_members"
                f" WHERE device_id IN ({_qmarks(len(chunk))})",
                chunk,
            ) as cur:
                old = {r["device_id"]: tuple(r)[1:] for r in await cur.fetchall()}
            async with db.execute(self._member_select(len(chunk)), [*chunk, *chunk]) as cur:
                new = {r["device_id"]: tuple(r)[1:] for r in await cur.fetchall()}
            upserts, gone = [], []
            for dev in chunk:
                o, n = old.get(dev), new.get(dev)
                if o != n:
                    for row, sign in ((o, -1), (n, 1)):
                        if row is not None:
                            for commune in (row[0], "*"):
                                key = (commune, *row[1:6])
                                delta[key] = delta.get(key, 0) + sign
                    if n is None:
                        gone.append(dev)
                    else:
                        upserts.append((dev, *n))
                if o != n or dev in shown:
                    bumped.update(r[0] for r in (o, n) if r is not None)
            if gone:
                await db.execute(
                    f"DELETE FROM fleet_members WHERE device_id IN ({_qmarks(len(gone))})", gone
                )
            if upserts:
                await db.executemany(
                    f"INSERT INTO fleet_members (device_id, {', '.join(cols)})"
                    f" VALUES ({_qmarks(len(cols) + 1)}) ON CONFLICT(device_id) DO UPDATE SET "
                    + ", ".join(f"{c} = excluded.{c}" for c in cols),
                    upserts,
                )
        changes = [(*k, v) for k, v in sorted(delta.items()) if v]
        if changes:
            await db.executemany(
                "INSERT INTO fleet_tally (commune, status, cause, in_repair, online,"
                " never_reported, n) VALUES (?,?,?,?,?,?,?)"
                " ON CONFLICT(commune, status, cause, in_repair, online, never_reported)"
                " DO UPDATE SET n = fleet_tally.n + excluded.n",
                changes,
            )
            await db.execute("DELETE FROM fleet_tally WHERE n = 0")
        if bumped:
            await db.executemany(
                "INSERT INTO fleet_versions (commune, version) VALUES (?, 1)"
                " ON CONFLICT(commune) DO UPDATE SET version = fleet_versions.version + 1",
                [(c,) for c in sorted(bumped | {"*"})],
            )

    async def _history_changed(self, db: aiosqlite.Connection, since: float | None) -> None:
        """History at or after ``since`` (None: all of it) changed in this transaction:
        drop the counts kept for those moments (``counts_as_of``) and the monthly
        sums kept up to them (``availability_kept``)."""
        if since is None:
            await db.execute("DELETE FROM counts_as_of")
            await db.execute("DELETE FROM availability_kept")
        else:
            await db.execute("DELETE FROM counts_as_of WHERE as_of >= ?", (since,))
            await db.execute("DELETE FROM availability_kept WHERE kept_until >= ?", (since,))
        await db.execute(
            "INSERT INTO fleet_versions (commune, version) VALUES ('~history', 1)"
            " ON CONFLICT(commune) DO UPDATE SET version = fleet_versions.version + 1"
        )

    #: (inventory version, the list read at it): a province's inventory changes
    #: seldom and is read by every fleet-wide page.
    _inventory_kept: tuple[int, list[InventoryDevice]] | None = None

    async def _kept_inventory(self) -> list[InventoryDevice]:
        """The inventory in order (``list_inventory``), read again only once it changed."""
        # The version first: a change committed between the two reads leaves a
        # list newer than its version, read again next time, never an older one.
        version = await self._all("SELECT version FROM fleet_versions WHERE commune = '~inventory'")
        v = int(version[0]["version"]) if version else 0
        kept = self._inventory_kept
        if kept is not None and kept[0] == v:
            return list(kept[1])
        rows = await self._all(
            f"SELECT {_INVENTORY_COLS} FROM inventory ORDER BY position, device_id"
        )
        out = [_inventory_of(r) for r in rows]
        self._inventory_kept = (v, out)
        return list(out)

    async def _history_generation(self, db: aiosqlite.Connection | None = None) -> int:
        sql = "SELECT version FROM fleet_versions WHERE commune = '~history'"
        if db is None:
            rows = await self._all(sql)
        else:
            async with db.execute(sql) as cur:
                rows = list(await cur.fetchall())
        return int(rows[0]["version"]) if rows else 0

    async def fleet_tally(
        self, communes: Iterable[str] | None = None, *, each: bool = False
    ) -> tuple[list[tuple[Any, ...]], int]:
        """The kept counts of ``communes`` (None: the whole fleet, as one commune
        '*', or with ``each`` per commune), rows of (commune, status, cause,
        in_repair, online, never_reported, n), and their version: it changes
        whenever anything a page of that scope shows changes."""
        async with self._read() as db:
            if communes is None:
                keys: list[str] = ["*"]
            else:
                keys = sorted(set(communes))
            if each and communes is None:
                async with db.execute(
                    "SELECT commune, status, cause, in_repair, online, never_reported, n"
                    " FROM fleet_tally WHERE commune != '*'"
                ) as cur:
                    # Whole rows, in the documented column order: the API returns tuples.
                    every = [tuple(r) for r in await cur.fetchall()]
                async with db.execute(
                    "SELECT version FROM fleet_versions WHERE commune = '*'"
                ) as cur:
                    r = await cur.fetchone()
                return every, int(r["version"]) if r else 0
            rows: list[tuple[Any, ...]] = []
            version = 0
            for chunk in _chunks(keys):
                q = _qmarks(len(chunk))
                async with db.execute(
                    "SELECT commune, status, cause, in_repair, online, never_reported, n"
                    f" FROM fleet_tally WHERE commune IN ({q})",
                    chunk,
                ) as cur:
                    rows.extend(tuple(r) for r in await cur.fetchall())
                async with db.execute(
                    "SELECT coalesce(sum(version), 0) AS version FROM fleet_versions"
                    f" WHERE commune IN ({q})",
                    chunk,
                ) as cur:
                    r = await cur.fetchone()
                    version += int(r["version"]) if r else 0
        return rows, version

    _DEVICE_SELECT: Final = f"""
        WITH ids AS (SELECT device_id FROM inventory UNION SELECT device_id FROM devices),
        v AS (
            SELECT ids.device_id AS id,
                   coalesce(i.commune_code, d.commune_code, '') AS commune,
                   coalesce(d.status, 'broken') AS status,
                   CASE WHEN d.device_id IS NULL THEN 'unknown' ELSE d.cause END AS cause,
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
    def _device_row(r: sqlite3.Row) -> DeviceRow:
        """A row of ``_DEVICE_SELECT``, by column name."""
        status = Status(r["status"])
        return DeviceRow(
            device_id=r["id"],
            commune_code=r["commune"],
            status=status,
            cause=_cause(r["cause"]) if status is Status.BROKEN else None,
            in_repair=bool(r["in_repair"]) and status is Status.BROKEN,
            online=bool(r["online"]),
            since=r["status_since"],
            last_seen=r["last_seen"],
            last_ts=r["last_ts"],
            last_seq=r["last_seq"],
            last_report=msgspec.json.decode(r["last_report"]) if r["last_report"] else None,
            in_inventory=bool(r["in_inventory"]),
            never_reported=bool(r["never_reported"]),
            inventory=_inventory_of(r) if r["in_inventory"] else None,
        )
