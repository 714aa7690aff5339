"""``loa-collector db copy``: move a whole store between engines (SQLite <-> PostgreSQL).

The copy is generic: every table of the source's schema is copied, column by
name, so a table added by a later migration needs nothing here. The rules:

- both stores must be at the same schema version, the source at this
  collector's latest; a destination at version 0 (a new file, a new database
  with no tables) is migrated first;
- the destination must be empty: no row in any table (the schema-version
  bookkeeping aside). There is no merge;
- the source is read in one consistent snapshot (SQLite read transaction,
  PostgreSQL ``REPEATABLE READ READ ONLY``) and streamed in chunks of
  ``CHUNK`` rows (a cursor, never a whole table in memory);
- the destination is written in ONE transaction, parents before children
  (foreign keys of both stores), so a failure leaves it as empty as it was.
  PostgreSQL is written with ``COPY ... FROM STDIN``, SQLite with
  ``executemany``; the write lock of each engine is held throughout, so no
  collector writes to the destination meanwhile;
- PostgreSQL identity sequences are moved past the copied ids;
- after the commit the destination's row count of every table is compared
  with the source's count in the snapshot it was copied from.

Passwords in PostgreSQL URLs never appear in messages (``redact``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import aclosing, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from collector.store.base import StoreError
from collector.store.engines import is_postgres, open_url, sqlite_path
from collector.store.migrations import LATEST
from collector.store.sqlite import SQLiteRepository

if TYPE_CHECKING:
    from collector.store.postgres import PostgresRepository

#: Rows per chunk read from the source and written to the destination.
CHUNK: Final = 5000

#: Bookkeeping tables that are not data (PostgreSQL's schema version row).
_SCHEMA_TABLES: Final = frozenset({"loa_schema"})

Progress = Callable[[str, int, int], None]
"""``progress(table, rows copied so far, rows in the source table)``, after every chunk."""


class CopyError(StoreError):
    """The copy was refused or failed; the destination is unchanged."""


@dataclass(frozen=True, slots=True)
class TableCount:
    table: str
    source: int
    destination: int

    @property
    def ok(self) -> bool:
        return self.source == self.destination


@dataclass(frozen=True, slots=True)
class CopyReport:
    source: str  # redacted
    destination: str  # redacted
    tables: tuple[TableCount, ...]
    migrated: bool  # the destination was migrated from version 0 first
    seconds: float
    identities_reset: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.tables)

    @property
    def rows(self) -> int:
        return sum(t.source for t in self.tables)

    def format(self) -> str:
        """The per-table count report (``table  source  destination``)."""
        width = max([len("table"), *(len(t.table) for t in self.tables)])
        lines = [f"{'table':<{width}}  {'source':>10}  {'destination':>11}"]
        for t in self.tables:
            mark = "" if t.ok else "  MISMATCH"
            lines.append(f"{t.table:<{width}}  {t.source:>10}  {t.destination:>11}{mark}")
        lines.append(
            f"{'total':<{width}}  {self.rows:>10}  {sum(t.destination for t in self.tables):>11}"
        )
        return "\n".join(lines)


def describe_url(url: str) -> str:
    """``url`` fit for messages: any password in it redacted (whatever the scheme)."""
    from collector.store.postgres import redact

    return redact(url)


def check_url(url: str, what: str) -> None:
    """Refuse what ``open_url`` would misread (a relative path, another scheme)."""
    if is_postgres(url):
        return
    if not url.startswith("sqlite:///"):
        raise CopyError(
            f"{what} {describe_url(url)!r}: not a store URL; "
            "use postgresql://... or sqlite:///absolute/path"
        )


def _q(name: str) -> str:
    """An identifier quoted for both engines (``offset`` is reserved in PostgreSQL)."""
    return '"' + name.replace('"', '""') + '"'


# -- the two engines -----------------------------------------------------------------------


async def _count(execute: Callable[[str], Any], table: str) -> int:
    """Rows of ``table`` through a connection's ``execute`` (aiosqlite's or psycopg's)."""
    cur = await execute(f"SELECT count(*) FROM {_q(table)}")
    row = await cur.fetchone()
    await cur.close()
    return int(row[0])


class _Side:
    """What the copy needs of one store, per engine."""

    def __init__(self, url: str, repo: SQLiteRepository):
        self.url = url
        self.name = describe_url(url)
        self.repo = repo

    async def tables(self) -> list[str]:
        raise NotImplementedError

    async def columns(self, table: str) -> dict[str, str]:
        """Column name -> declared type, in table order."""
        raise NotImplementedError

    async def parents(self) -> dict[str, set[str]]:
        """Table -> the tables its foreign keys reference."""
        raise NotImplementedError

    async def counts(self, tables: Sequence[str]) -> dict[str, int]:
        out = {}
        for t in tables:
            rows = await self.repo._all(f"SELECT count(*) FROM {_q(t)}")
            out[t] = int(rows[0][0])
        return out

    async def data_tables(self) -> list[str]:
        return [t for t in await self.tables() if t not in _SCHEMA_TABLES]

    def stream(self, conn: Any, table: str, cols: Sequence[str]) -> AsyncIterator[list[Any]]:
        """The rows of ``table`` in the read snapshot ``conn``, CHUNK at a time."""
        raise NotImplementedError

    async def snapshot_counts(self, conn: Any, tables: Sequence[str]) -> dict[str, int]:
        """Row counts in the read snapshot ``conn`` (or in the write transaction)."""
        raise NotImplementedError

    async def write(
        self,
        db: Any,
        table: str,
        cols: Sequence[str],
        types: dict[str, str],
        chunks: AsyncIterator[list[Any]],
        progress: Callable[[int], None],
    ) -> None:
        """Insert ``chunks`` into ``table`` in the write transaction ``db``."""
        raise NotImplementedError

    async def reset_identities(self, db: Any, tables: Sequence[str]) -> list[str]:
        """Move identity sequences past the copied ids; the columns reset."""
        raise NotImplementedError


class _SQLiteSide(_Side):
    async def tables(self) -> list[str]:
        rows = await self.repo._all(
            "SELECT name FROM sqlite_master WHERE type = 'table'"
            " AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY rowid"
        )
        return [r[0] for r in rows]

    async def columns(self, table: str) -> dict[str, str]:
        rows = await self.repo._all(f"PRAGMA table_info({_q(table)})")
        return {r[1]: str(r[2]).upper() for r in rows}

    async def parents(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for t in await self.tables():
            rows = await self.repo._all(f"PRAGMA foreign_key_list({_q(t)})")
            out[t] = {r[2] for r in rows}
        return out

    async def stream(self, conn: Any, table: str, cols: Sequence[str]) -> AsyncIterator[list[Any]]:
        sql = f"SELECT {', '.join(map(_q, cols))} FROM {_q(table)}"
        async with conn.execute(sql) as cur:
            while rows := await cur.fetchmany(CHUNK):
                yield [tuple(r) for r in rows]

    async def snapshot_counts(self, conn: Any, tables: Sequence[str]) -> dict[str, int]:
        return {t: await _count(conn.execute, t) for t in tables}

    async def write(
        self,
        db: Any,
        table: str,
        cols: Sequence[str],
        types: dict[str, str],
        chunks: AsyncIterator[list[Any]],
        progress: Callable[[int], None],
    ) -> None:
        del types  # SQLite takes every value as it comes
        sql = (
            f"INSERT INTO {_q(table)} ({', '.join(map(_q, cols))})"
            f" VALUES ({', '.join('?' * len(cols))})"
        )
        async for rows in chunks:
            await db.executemany(sql, rows)
            progress(len(rows))

    async def reset_identities(self, db: Any, tables: Sequence[str]) -> list[str]:
        del db, tables  # INTEGER PRIMARY KEY continues from max(rowid) by itself
        return []


class _PgSide(_Side):
    repo: PostgresRepository

    async def tables(self) -> list[str]:
        rows = await self.repo._all(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')"
            " AND NOT c.relispartition ORDER BY c.oid"
        )
        return [r[0] for r in rows]

    async def columns(self, table: str) -> dict[str, str]:
        rows = await self.repo._all(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = ?"
            " ORDER BY ordinal_position",
            (table,),
        )
        return {r[0]: str(r[1]).upper() for r in rows}

    async def identities(self, table: str) -> list[str]:
        rows = await self.repo._all(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = ?"
            " AND (is_identity = 'YES' OR column_default LIKE 'nextval(%')",
            (table,),
        )
        return [r[0] for r in rows]

    async def parents(self) -> dict[str, set[str]]:
        rows = await self.repo._all(
            "SELECT a.relname, b.relname FROM pg_constraint k"
            " JOIN pg_class a ON a.oid = k.conrelid JOIN pg_class b ON b.oid = k.confrelid"
            " JOIN pg_namespace n ON n.oid = a.relnamespace"
            " WHERE k.contype = 'f' AND n.nspname = current_schema()"
        )
        out: dict[str, set[str]] = {}
        for child, parent in rows:
            out.setdefault(child, set()).add(parent)
        return out

    async def stream(self, conn: Any, table: str, cols: Sequence[str]) -> AsyncIterator[list[Any]]:
        # A server-side cursor in the read snapshot: CHUNK rows in memory at a time.
        sql = f"SELECT {', '.join(map(_q, cols))} FROM {_q(table)}"
        async with conn.conn.cursor(name="loa_copy") as cur:
            cur.itersize = CHUNK
            await cur.execute(sql)
            while rows := await cur.fetchmany(CHUNK):
                yield [tuple(r) for r in rows]

    async def snapshot_counts(self, conn: Any, tables: Sequence[str]) -> dict[str, int]:
        return {t: await _count(conn.conn.execute, t) for t in tables}

    async def write(
        self,
        db: Any,
        table: str,
        cols: Sequence[str],
        types: dict[str, str],
        chunks: AsyncIterator[list[Any]],
        progress: Callable[[int], None],
    ) -> None:
        convert = _pg_converter([types[c] for c in cols])
        sql = f"COPY {_q(table)} ({', '.join(map(_q, cols))}) FROM STDIN"
        async with db.conn.cursor() as cur, cur.copy(sql) as copy:
            async for rows in chunks:
                for r in rows:
                    await copy.write_row(convert(r))
                progress(len(rows))

    async def reset_identities(self, db: Any, tables: Sequence[str]) -> list[str]:
        done = []
        for t in tables:
            for col in await self.identities(t):
                # Empty: the next id is 1; else max + 1. (setval is not transactional,
                # so it runs last, after every row went in.)
                await db.conn.execute(
                    f"SELECT setval(pg_get_serial_sequence(%s, %s),"
                    f" coalesce(max({_q(col)}), 1), max({_q(col)}) IS NOT NULL) FROM {_q(t)}",
                    (_q(t), col),
                )
                done.append(f"{t}.{col}")
        return done


def _pg_converter(types: Sequence[str]) -> Callable[[Sequence[Any]], Sequence[Any]]:
    """Values of a source row as PostgreSQL takes them: no NUL in text (the store
    maps it the same way, ``postgres._param``), text in a bytea column as its
    UTF-8 bytes, bytes in a text column decoded (SQLite's loose typing)."""
    text_cols = [i for i, t in enumerate(types) if t in ("TEXT", "CHARACTER VARYING")]
    bytea_cols = [i for i, t in enumerate(types) if t == "BYTEA"]

    def convert(row: Sequence[Any]) -> Sequence[Any]:
        out: list[Any] | None = None
        for i in text_cols:
            v = row[i]
            if type(v) is str:
                if "\x00" in v:
                    out = out or list(row)
                    out[i] = v.replace("\x00", "\ufffd")
            elif isinstance(v, bytes | bytearray | memoryview):
                out = out or list(row)
                out[i] = bytes(v).decode("utf-8", "replace").replace("\x00", "\ufffd")
        for i in bytea_cols:
            v = row[i]
            if type(v) is str:
                out = out or list(row)
                out[i] = v.encode()
        return row if out is None else out

    return convert


async def _prefetched(
    chunks: AsyncIterator[list[Any]], depth: int = 2
) -> AsyncGenerator[list[Any], None]:
    """``chunks``, read up to ``depth`` chunks ahead while the caller writes the last one
    (the source's reads overlap the destination's writes)."""
    queue: asyncio.Queue[tuple[list[Any] | None, Exception | None]] = asyncio.Queue(depth)

    async def pump() -> None:
        try:
            async for rows in chunks:
                await queue.put((rows, None))
            await queue.put((None, None))
        except Exception as exc:  # handed to the consumer, raised there
            await queue.put((None, exc))

    task = asyncio.create_task(pump(), name="loa-copy-read")
    try:
        while True:
            rows, exc = await queue.get()
            if exc is not None:
                raise exc
            if rows is None:
                break
            yield rows
        await task
    finally:
        if not task.done():
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


def _side(url: str, repo: SQLiteRepository) -> _Side:
    return _PgSide(url, repo) if is_postgres(url) else _SQLiteSide(url, repo)


def _parents_first(tables: Sequence[str], parents: dict[str, set[str]]) -> list[str]:
    """``tables`` in their order, each after the tables it references."""
    done: list[str] = []
    seen: set[str] = set()

    def visit(t: str, path: tuple[str, ...]) -> None:
        if t in seen:
            return
        for p in sorted(parents.get(t, ())):
            if p in tables and p != t and p not in path:
                visit(p, (*path, t))
        seen.add(t)
        done.append(t)

    for t in tables:
        visit(t, ())
    return done


# -- the copy ------------------------------------------------------------------------------


async def _open(url: str, what: str, *, must_exist: bool) -> SQLiteRepository:
    check_url(url, what)
    if must_exist and not is_postgres(url) and not sqlite_path(url).is_file():
        raise CopyError(f"{what} {url}: no such file")
    try:
        return await open_url(url)
    except StoreError as exc:
        raise CopyError(f"{what}: {exc}") from exc


def _same_store(a: str, b: str) -> bool:
    if is_postgres(a) or is_postgres(b):
        return a == b
    return Path(sqlite_path(a)).resolve() == Path(sqlite_path(b)).resolve()


async def copy_store(src_url: str, dst_url: str, *, progress: Progress | None = None) -> CopyReport:
    """Copy every row of the store at ``src_url`` into the empty store at ``dst_url``
    (see the module docstring); returns the per-table counts. Raises ``CopyError``
    (a ``StoreError``) when refused or failed: the destination then holds no more
    rows than before (none)."""
    started = time.monotonic()
    check_url(src_url, "--from")
    check_url(dst_url, "--to")
    if _same_store(src_url, dst_url):
        raise CopyError(f"--from and --to are the same store: {describe_url(src_url)}")
    src_repo = await _open(src_url, "--from", must_exist=True)
    try:
        src_version = await src_repo.schema_version()
        if src_version != LATEST:
            raise CopyError(
                f"source {describe_url(src_url)}: schema version {src_version}, this collector "
                f"copies version {LATEST}; run `loa-collector db migrate` on it first"
            )
        dst_repo = await _open(dst_url, "--to", must_exist=False)
        try:
            return await _copy(
                _side(src_url, src_repo), _side(dst_url, dst_repo), progress, started
            )
        finally:
            await dst_repo.close()
    finally:
        await src_repo.close()


async def _copy(src: _Side, dst: _Side, progress: Progress | None, started: float) -> CopyReport:
    src_version = LATEST  # checked by copy_store before the destination was opened
    dst_version = await dst.repo.schema_version()
    migrated = False
    if dst_version == 0:
        if other := await dst.data_tables():
            raise CopyError(
                f"destination {dst.name}: has no collector schema but holds tables "
                f"({', '.join(other[:5])}{', ...' if len(other) > 5 else ''}); "
                "copy into an empty database"
            )
        await dst.repo.migrate()
        migrated = True
    elif dst_version != src_version:
        raise CopyError(
            f"destination {dst.name}: schema version {dst_version} differs from the "
            f"source's {src_version}; copy into an empty database or one at version {src_version}"
        )

    tables = await src.data_tables()
    dst_tables = await dst.data_tables()
    if set(tables) != set(dst_tables):
        raise CopyError(
            f"the schemas differ: only in the source {sorted(set(tables) - set(dst_tables))}, "
            f"only in the destination {sorted(set(dst_tables) - set(tables))}"
        )
    columns: dict[str, list[str]] = {}
    dst_types: dict[str, dict[str, str]] = {}
    for t in tables:
        s_cols, d_cols = await src.columns(t), await dst.columns(t)
        if set(s_cols) != set(d_cols):
            raise CopyError(
                f"table {t}: the columns differ: only in the source "
                f"{sorted(set(s_cols) - set(d_cols))}, only in the destination "
                f"{sorted(set(d_cols) - set(s_cols))}"
            )
        columns[t] = list(s_cols)
        dst_types[t] = d_cols
    parents = await src.parents()
    for child, ps in (await dst.parents()).items():
        parents.setdefault(child, set()).update(ps)
    order = _parents_first(tables, parents)

    src_counts: dict[str, int] = {}
    identities: list[str] = []
    async with dst.repo._tx() as db:
        # Checked under the destination's write lock: no collector can write meanwhile.
        holding = [f"{t} ({n})" for t, n in (await dst.snapshot_counts(db, order)).items() if n]
        if holding:
            raise CopyError(
                f"destination {dst.name} is not empty: {', '.join(holding)} row(s); "
                "db copy only fills an empty store (no merge)"
            )
        async with src.repo._read() as conn:
            src_counts = await src.snapshot_counts(conn, order)
            for t in order:
                total = src_counts[t]
                copied = 0

                def step(n: int, t: str = t, total: int = total) -> None:
                    nonlocal copied
                    copied += n
                    if progress is not None:
                        progress(t, copied, total)

                async with aclosing(_prefetched(src.stream(conn, t, columns[t]))) as chunks:
                    await dst.write(db, t, columns[t], dst_types[t], chunks, step)
                if copied != total:
                    raise CopyError(f"table {t}: read {copied} rows of {total}; nothing copied")
        identities = await dst.reset_identities(db, order)

    dst_counts = await dst.counts(order)
    report = CopyReport(
        source=src.name,
        destination=dst.name,
        tables=tuple(TableCount(t, src_counts[t], dst_counts[t]) for t in order),
        migrated=migrated,
        seconds=time.monotonic() - started,
        identities_reset=tuple(identities),
    )
    if not report.ok:
        bad = [t.table for t in report.tables if not t.ok]
        raise CopyError(
            f"copied, but the row counts differ in {', '.join(bad)}:\n{report.format()}"
        )
    return report
