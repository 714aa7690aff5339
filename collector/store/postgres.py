"""The server store: PostgreSQL through psycopg 3 (async), for a province or a nation.

``[db] url = "postgresql://..."`` selects it. The roles (``sqlite_inventory``,
``sqlite_ingest``, ...) are shared with the SQLite store: they speak a small
DB-API shape (``execute`` / ``executemany`` / ``fetchone`` / ``fetchall`` /
``rowcount`` / ``lastrowid``) with SQLite's ``?`` placeholders, and this module
gives them that shape over psycopg, translating each statement once (cached):

- ``?`` and ``?N`` placeholders become psycopg's ``%s`` (parameters reordered
  for ``?N``), literal ``%`` is doubled;
- ``INSERT OR IGNORE`` becomes ``ON CONFLICT DO NOTHING``; ``INSERT OR
  REPLACE`` an upsert on the table's primary key (``_PRIMARY_KEYS``);
- ``group_concat`` becomes ``string_agg``; an empty ``IN ()`` an empty
  subquery; ``instr(CAST(x AS TEXT), 'lit')`` becomes ``position('lit'::bytea in x)``;
- an ``INSERT`` into a table with an identity ``id`` gets ``RETURNING id``,
  which is the cursor's ``lastrowid``.

A statement the translator cannot handle raises at once (the contract suite
runs every role against both engines, ``tests/collector/test_store_contract.py``
and the ``repo`` fixture).

Why psycopg 3 rather than asyncpg: one library for the service (async) and the
command line (``db copy``), Debian packages it (``python3-psycopg``),
client-side binding (``AsyncClientCursor``) keeps SQLite's loose typing of
parameters (``? IS NULL``, integers into real columns) without a cast per
placeholder, and its COPY support moves a district's history in bulk.
asyncpg is faster per statement but has its own ``$1`` dialect, server-side
typing of every parameter and no synchronous API.

Concurrency: like SQLite's ``BEGIN IMMEDIATE``, a write transaction takes one
transaction-scoped advisory lock (``_WRITE_LOCK``) exclusively, so it is alone
across every collector instance on the database. An ingest write
(``write_batch``, ``_tx(ingest=True)``) changes only its devices' own rows
(messages, devices, transitions, events, faults, boot clocks) and the fleet's
commutative kept counts (``fleet_tally`` increments, version bumps, deletions
of kept counts that went stale): it takes ``_WRITE_LOCK`` shared, dates,
dedupes and inserts its messages, then takes one exclusive lock per device
with news (``_lock_devices``: ``_DEVICE_LOCKS``, keys in ascending order, so
two ingest writes never wait on each other in a cycle for them) for the
read-modify-write of their state. Ingest writes of other devices run at once
on several instances; two of the same device (a shared subscription hands a
device's messages to either instance) overlap in their inserts and take turns
for its state, so the fleet rules stay serialised per device; every other
write waits until no ingest write is in flight. The kept rows all
ingest writes update are locked in one order (sorted keys), and a deadlock
PostgreSQL still detects (it aborts one transaction) makes ``write_batch`` try
again (``PostgresRepository.write_batch``). Reads run on their own connection
in a ``REPEATABLE READ READ ONLY`` snapshot and never wait for writers.
``periodic_lock`` hands periodic work (offline sweep, repairs sweep,
retention) to one instance at a time with a session advisory lock taken
without waiting.

Schema: ``collector.store.migrations`` is the one list of steps for both
engines; ``pg_migration`` maps each step's SQLite DDL to PostgreSQL (types,
identity keys, the reserved word ``offset``). The version in place is
``loa_schema.version``. Raw messages and transitions carry time indexes
(``messages_received``, ``transitions_ts``): retention is a range delete on
them. Declarative partitions were not used because PostgreSQL requires a
partitioned table's primary key to contain the partition key, and the
exactly-once dedupe is the key ``(device_id, seq)`` alone.
"""

from __future__ import annotations

import functools
import logging
import re
import zlib
from collections.abc import AsyncIterator, Awaitable, Collection, Generator, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any, ClassVar, Final, Self

import psycopg
from psycopg import AsyncClientCursor, AsyncConnection, AsyncCursor
from psycopg.adapt import Loader
from psycopg.rows import RowMaker

from collector.store.base import BatchResult, IncomingMessage, StoreError
from collector.store.migrations import LATEST, MIGRATIONS
from collector.store.sqlite import SQLiteRepository
from collector.store.sqlite_base import _SQLiteBase

_log = logging.getLogger("loa.collector.store")

#: The advisory lock key every write transaction holds ("loa" + 1): exclusively,
#: or shared by ingest writes (which also lock their devices).
_WRITE_LOCK: Final = 0x6C6F6101

#: The first key of the two-key advisory locks of devices ("loa" + 2); the second
#: is ``device_lock_key``. (PostgreSQL keeps one- and two-key locks apart.)
_DEVICE_LOCKS: Final = 0x6C6F6102

#: How often an ingest write is tried when PostgreSQL aborts it as a deadlock victim.
_DEADLOCK_TRIES: Final = 5


def device_lock_key(device_id: str) -> int:
    """A device's advisory lock key: a stable signed 32-bit hash of its id (the same
    in every instance; a collision only makes two devices take turns)."""
    return zlib.crc32(device_id.encode()) - (1 << 31)


#: Tables whose ``id`` is an identity column (``lastrowid`` comes from ``RETURNING id``).
_IDENTITY_TABLES: Final = frozenset(
    {
        "faults",
        "tickets",
        "ticket_history",
        "users",
        "audit_log",
        "notifications",
        "deliveries",
        "report_log",
        "findings",
        "b2_snapshots",
    }
)

#: Conflict targets of ``INSERT OR REPLACE``.
_PRIMARY_KEYS: Final = {
    "transitions": ("device_id", "ts", "seq"),
    "inventory": ("device_id",),
    "alert_groups": ("rule", "grp"),
}

_TOKEN = re.compile(r"'(?:[^']|'')*'|\?(\d*)|%")
_OR_IGNORE = re.compile(r"^\s*INSERT\s+OR\s+IGNORE\s+INTO\b", re.I)
_OR_REPLACE = re.compile(r"^\s*INSERT\s+OR\s+REPLACE\s+INTO\s+(\w+)\s*\(([^)]*)\)", re.I | re.S)
_INSERT_INTO = re.compile(r"^\s*INSERT\s+INTO\s+(\w+)", re.I)
_RETURNING = re.compile(r"\bRETURNING\b", re.I)
_INSTR_TEXT = re.compile(r"instr\(CAST\((\w+(?:\.\w+)?) AS TEXT\),\s*('(?:[^']|'')*')\)", re.I)


class Translated:
    __slots__ = ("is_insert", "order", "returns_id", "sql")

    def __init__(self, sql: str, order: tuple[int, ...] | None, returns_id: bool, is_insert: bool):
        self.sql = sql
        self.order = order
        self.returns_id = returns_id
        self.is_insert = is_insert

    def params(self, params: Sequence[Any]) -> Sequence[Any]:
        if self.order is None:
            return [_param(p) for p in params]
        return [_param(params[i]) for i in self.order]


def _param(p: Any) -> Any:
    # PostgreSQL's text cannot hold NUL; the store keeps what it can (the raw
    # payload is bytea and keeps the original bytes).
    if isinstance(p, str) and "\x00" in p:
        return p.replace("\x00", "\ufffd")
    return p


def _with_tail(sql: str, tail: str) -> str:
    """``sql`` with ``tail`` inserted before its RETURNING clause (or appended)."""
    m = _RETURNING.search(sql)
    if m is None:
        return sql.rstrip().rstrip(";") + " " + tail
    return sql[: m.start()] + tail + " " + sql[m.start() :]


@functools.lru_cache(maxsize=2048)
def pg_sql(sql: str) -> Translated:
    """SQLite-flavoured SQL as PostgreSQL (see the module's docstring)."""
    order: list[int] = []
    numbered = False

    def sub(m: re.Match[str]) -> str:
        nonlocal numbered
        tok = m.group(0)
        if tok == "%":
            return "%%"
        if tok.startswith("'"):
            return tok.replace("%", "%%")
        if m.group(1):
            numbered = True
            order.append(int(m.group(1)) - 1)
        else:
            order.append(max(order, default=-1) + 1)
        return "%s"

    out = _TOKEN.sub(sub, sql)
    out = _INSTR_TEXT.sub(lambda m: f"position({m.group(2)}::bytea in {m.group(1)})", out)
    out = re.sub(r"\bgroup_concat\(", "string_agg(", out, flags=re.I)
    # SQLite takes an empty list (``x IN ()`` false, ``NOT IN ()`` true); an empty
    # subquery means the same in PostgreSQL.
    out = re.sub(r"\bIN\s*\(\s*\)", "IN (SELECT NULL WHERE FALSE)", out, flags=re.I)
    if _OR_IGNORE.match(out):
        out = _with_tail(_OR_IGNORE.sub("INSERT INTO", out, count=1), "ON CONFLICT DO NOTHING")
    elif m := _OR_REPLACE.match(out):
        table, cols = m.group(1), [c.strip() for c in m.group(2).split(",")]
        if table not in _PRIMARY_KEYS:
            raise StoreError(f"INSERT OR REPLACE into {table}: no conflict target known")
        key = _PRIMARY_KEYS[table]
        sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in cols if c not in key)
        out = _OR_REPLACE.sub(f"INSERT INTO {table} ({m.group(2)})", out, count=1)
        out = _with_tail(out, f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {sets}")
    returns_id = False
    ins = _INSERT_INTO.match(out)
    if ins and ins.group(1) in _IDENTITY_TABLES and not _RETURNING.search(out):
        out = out.rstrip().rstrip(";") + " RETURNING id"
        returns_id = True
    return Translated(
        out,
        tuple(order) if numbered else None,
        returns_id,
        ins is not None and "ON CONFLICT" not in out,
    )


_DDL_RULES: Final = (
    (re.compile(r"\bINTEGER PRIMARY KEY\b"), "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
    (re.compile(r"\)\s*WITHOUT ROWID"), ")"),
    (re.compile(r"^(\s*)offset(\s)", re.M), r'\1"offset"\2'),
)


def pg_migration(step: str) -> str:
    """One step of ``MIGRATIONS`` (SQLite DDL) as PostgreSQL DDL."""
    for rx, repl in _DDL_RULES:
        step = rx.sub(repl, step)
    return step


class _NumberLoader(Loader):
    """numeric (sum, avg of integers) as int when integral, else float, not Decimal."""

    def load(self, data: Any) -> int | float:
        s = bytes(data).decode()
        if "." in s or "e" in s or "E" in s or s in ("NaN", "Infinity", "-Infinity"):
            return float(s)
        return int(s)


class Row(tuple[Any, ...]):
    """A result row read by position or by column name, like ``sqlite3.Row``."""

    __slots__ = ()
    _index: ClassVar[dict[str, int]] = {}

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._index)


@functools.lru_cache(maxsize=512)
def _row_class(names: tuple[str, ...]) -> type[Row]:
    return type("Row", (Row,), {"__slots__": (), "_index": {n: i for i, n in enumerate(names)}})


def _row_factory(cursor: Any) -> RowMaker[Row]:
    desc = cursor.description
    if desc is None:
        return tuple  # type: ignore[return-value]
    cls = _row_class(tuple(c.name for c in desc))
    return cls


class _Cursor:
    """The part of aiosqlite's cursor the roles use."""

    def __init__(self, cur: AsyncCursor[Row], lastrowid: int | None):
        self._cur = cur
        self.lastrowid = lastrowid

    @property
    def rowcount(self) -> int:
        return self._cur.rowcount

    async def fetchone(self) -> Row | None:
        if self._cur.description is None:
            return None
        return await self._cur.fetchone()

    async def fetchall(self) -> list[Row]:
        if self._cur.description is None:
            return []
        return await self._cur.fetchall()

    async def close(self) -> None:
        await self._cur.close()

    def __aiter__(self) -> AsyncIterator[Row]:
        return self._cur.__aiter__()


class _Result:
    """Awaitable and async context manager, as aiosqlite's ``execute`` returns."""

    def __init__(self, coro: Awaitable[_Cursor]):
        self._coro = coro
        self._cur: _Cursor | None = None

    def __await__(self) -> Generator[Any, None, _Cursor]:
        return self._coro.__await__()

    async def __aenter__(self) -> _Cursor:
        self._cur = await self._coro
        return self._cur

    async def __aexit__(self, *exc: object) -> None:
        if self._cur is not None:
            await self._cur.close()


class PgConnection:
    """One psycopg connection with aiosqlite's ``execute`` / ``executemany``."""

    def __init__(self, conn: AsyncConnection[Row]):
        self.conn = conn
        self.in_tx = False

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Result:
        return _Result(self._execute(sql, params))

    async def _execute(self, sql: str, params: Sequence[Any]) -> _Cursor:
        t = pg_sql(sql)
        cur = self.conn.cursor()
        args = t.params(params) if params else None
        if self.in_tx and t.is_insert:
            # An integrity error must not abort the whole transaction: the
            # roles catch it and go on (e.g. look up the active ticket).
            await cur.execute("SAVEPOINT loa_stmt")
            try:
                await cur.execute(t.sql, args)
            except psycopg.IntegrityError:
                await self.conn.execute("ROLLBACK TO SAVEPOINT loa_stmt")
                raise
            rowid = await _rowid(cur) if t.returns_id else None
            await self.conn.execute("RELEASE SAVEPOINT loa_stmt")
            return _Cursor(cur, rowid)
        await cur.execute(t.sql, args)
        return _Cursor(cur, await _rowid(cur) if t.returns_id else None)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        rows = list(rows)
        if not rows:
            return
        t = pg_sql(sql)
        async with self.conn.cursor() as cur:
            await cur.executemany(t.sql, [t.params(r) for r in rows])

    async def close(self) -> None:
        await self.conn.close()


async def _rowid(cur: AsyncCursor[Row]) -> int | None:
    row = await cur.fetchone()
    return None if row is None else int(row[0])


async def _connect(url: str) -> PgConnection:
    conn = await AsyncConnection.connect(
        url,
        autocommit=True,
        cursor_factory=AsyncClientCursor,
        row_factory=_row_factory,
        connect_timeout=10,
    )
    conn.adapters.register_loader("numeric", _NumberLoader)
    await conn.execute("SET TIME ZONE 'UTC'")
    return PgConnection(conn)


def redact(url: str) -> str:
    """The URL without its password (it goes into error messages and logs): the
    one after ``user:`` and a libpq ``?password=`` parameter."""
    url = re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url)
    return re.sub(r"([?&]password=)[^&]*", r"\1***", url, flags=re.IGNORECASE)


class _PgBase(_SQLiteBase):
    """Connections, transactions and schema on PostgreSQL; the roles' SQL is
    translated by ``PgConnection``."""

    least = "LEAST"
    greatest = "GREATEST"

    def __init__(self, url: str, writer: PgConnection, reader: PgConnection):
        super().__init__(redact(url), writer, reader)  # type: ignore[arg-type]
        self.url = url

    @classmethod
    async def open(  # type: ignore[override]
        cls, url: str, *, synchronous: str = "full", busy_timeout_s: float = 10.0
    ) -> Self:
        del synchronous, busy_timeout_s  # SQLite's; PostgreSQL commits durably
        conns: list[PgConnection] = []
        try:
            for _ in range(2):
                conns.append(await _connect(url))
        except psycopg.Error as exc:
            for c in conns:
                await c.close()
            raise StoreError(f"{redact(url)}: cannot connect: {exc}") from exc
        return cls(url, conns[0], conns[1])

    async def _healthy(self, which: str) -> PgConnection:
        """The writer or reader, reconnected if the server dropped it (a restart)."""
        conn: PgConnection = getattr(self, which)
        if conn.conn.closed or conn.conn.broken:
            try:
                fresh = await _connect(self.url)
            except psycopg.Error as exc:
                raise StoreError(f"{self.path}: cannot reconnect: {exc}") from exc
            setattr(self, which, fresh)
            return fresh
        return conn

    async def close(self) -> None:
        async with self._wlock, self._rlock:
            await self._w.close()
            await self._r.close()

    async def schema_version(self) -> int:
        async with self._rlock:
            r = await self._healthy("_r")
            try:
                async with r.execute("SELECT version FROM loa_schema WHERE id = 1") as cur:
                    row = await cur.fetchone()
            except psycopg.errors.UndefinedTable:
                return 0
            except psycopg.Error as exc:
                raise StoreError(f"{self.path}: {exc}") from exc
        return int(row[0]) if row else 0

    async def migrate(self) -> int:
        async with self._tx() as db:
            await db.execute(
                "CREATE TABLE IF NOT EXISTS loa_schema (id INTEGER PRIMARY KEY CHECK (id = 1),"
                " version INTEGER NOT NULL)"
            )
            await db.execute("INSERT OR IGNORE INTO loa_schema (id, version) VALUES (1, 0)")
            async with db.execute("SELECT version FROM loa_schema WHERE id = 1 FOR UPDATE") as cur:
                row = await cur.fetchone()
            version = int(row[0]) if row else 0
            if version > LATEST:
                raise StoreError(
                    f"{self.path}: schema version {version} is newer than this collector "
                    f"({LATEST}); upgrade the collector"
                )
            for step in range(version, LATEST):
                for stmt in pg_migration(MIGRATIONS[step]).split(";"):
                    if stmt.strip():
                        await db.conn.execute(stmt)  # DDL: no placeholders, no translation
                await db.execute("UPDATE loa_schema SET version = ? WHERE id = 1", (step + 1,))
            await self._after_migrations(db, version)
        return LATEST

    @asynccontextmanager
    async def _tx(  # type: ignore[override]
        self, *, ingest: bool = False
    ) -> AsyncIterator[PgConnection]:
        """One write transaction: alone across instances (``_WRITE_LOCK``), or, for an
        ingest write, beside other ingest writes (which lock their devices)."""
        async with self._wlock:
            w = await self._healthy("_w")
            try:
                await w.conn.execute("BEGIN")
                shared = "_shared" if ingest else ""
                await w.conn.execute(f"SELECT pg_advisory_xact_lock{shared}({_WRITE_LOCK})")
            except psycopg.Error as exc:
                raise StoreError(f"{self.path}: cannot begin a write: {exc}") from exc
            w.in_tx = True
            try:
                yield w
            except psycopg.Error as exc:
                await _rollback(w)
                raise StoreError(f"{self.path}: write failed, rolled back: {exc}") from exc
            except BaseException:
                await _rollback(w)
                raise
            finally:
                w.in_tx = False
            try:
                await w.conn.execute("COMMIT")
            except psycopg.Error as exc:
                await _rollback(w)
                raise StoreError(f"{self.path}: commit failed: {exc}") from exc

    async def _lock_devices(self, db: Any, devices: Collection[str]) -> None:
        """Lock ``devices`` until the ingest write ends, keys ascending (so two
        writes never wait on each other in a cycle for them)."""
        keys = sorted({device_lock_key(d) for d in devices})
        if keys:
            # unnest keeps the array's order: the locks are taken ascending.
            await db.conn.execute(
                f"SELECT count(pg_advisory_xact_lock({_DEVICE_LOCKS}, k))"
                " FROM unnest(%s::integer[]) AS k",
                (keys,),
            )

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[PgConnection]:  # type: ignore[override]
        async with self._rlock:
            r = await self._healthy("_r")
            try:
                await r.conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            except psycopg.Error as exc:
                raise StoreError(f"{self.path}: cannot begin a read: {exc}") from exc
            try:
                yield r
            except psycopg.Error as exc:
                raise StoreError(f"{self.path}: read failed: {exc}") from exc
            finally:
                await _rollback(r)

    async def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        async with self._rlock:
            r = await self._healthy("_r")
            try:
                async with r.execute(sql, params) as cur:
                    return list(await cur.fetchall())
            except psycopg.Error as exc:
                raise StoreError(f"{self.path}: read failed: {exc}") from exc

    async def _insert_messages(
        self, db: Any, rows: Sequence[tuple[Any, ...]]
    ) -> set[tuple[str, int]]:
        """Insert message rows (duplicates ignored); the keys that were new."""
        fresh: set[tuple[str, int]] = set()
        t = pg_sql(self._INSERT_MESSAGE + " RETURNING device_id, seq")
        async with db.conn.cursor() as cur:
            await cur.executemany(t.sql, [t.params(r) for r in rows], returning=True)
            while True:
                for r in await cur.fetchall():
                    fresh.add((r[0], int(r[1])))
                if not cur.nextset():
                    break
        return fresh


async def _rollback(conn: PgConnection) -> None:
    if conn.conn.closed or conn.conn.broken:
        return
    with suppress(psycopg.Error):
        await conn.conn.execute("ROLLBACK")


class PostgresRepository(_PgBase, SQLiteRepository):
    """``Repository`` on PostgreSQL: the same roles as ``SQLiteRepository`` (it is
    one, to every caller typed against it), over ``_PgBase``'s connections.
    Build with ``await PostgresRepository.open(url)``."""

    #: Ingest writes PostgreSQL aborted as deadlock victims and that were tried again.
    deadlock_retries = 0

    async def write_batch(
        self,
        messages: Sequence[IncomingMessage],
        *,
        late_after_s: float,
        max_future_s: float = 300.0,
    ) -> BatchResult:
        """``IngestRole.write_batch``, tried again when PostgreSQL resolved a deadlock
        between concurrent ingest writes by aborting this one (nothing of it was
        kept: the whole transaction rolled back)."""
        for attempt in range(1, _DEADLOCK_TRIES + 1):
            try:
                return await super().write_batch(
                    messages, late_after_s=late_after_s, max_future_s=max_future_s
                )
            except StoreError as exc:
                if attempt == _DEADLOCK_TRIES or not isinstance(
                    exc.__cause__, psycopg.errors.DeadlockDetected
                ):
                    raise
                self.deadlock_retries += 1
                _log.info("ingest write chosen as a deadlock victim; trying again (%d)", attempt)
        raise AssertionError("unreachable")


def is_postgres_url(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))
