"""The outbox: every message the agent sends, stored in SQLite before it is sent.

A transaction in the manner of Telegraf's buffer: ``batch()`` hands out the
oldest messages not yet handed to the broker (in seq order), the uplink
publishes them, and then either

- ``handed(seqs)`` marks the ones the broker acknowledged (PUBACK) as handed:
  they stay until the collector confirms it stored them (``confirm(ranges)``
  deletes them) or the uplink gives them out again (``unhand``) after a
  reconnect or when the collector confirmed later messages but not these; or
- ``ack(seqs)`` deletes them at once, for a collector that does not confirm
  (protocol versions before store confirmations).

Whatever is not deleted is handed out again, so delivery is at-least-once and
the collector de-duplicates by (device, seq). Handed marks live only as long
as the process: after a restart everything stored is sent again.

Guarantees a caller may rely on:

- ``put`` returns only after the message and the advanced seq counter are
  committed together (WAL, ``synchronous=FULL``: a commit is on the SD card
  before ``put`` returns, so neither kill -9 nor a power cut loses an
  acknowledged write or lets a seq be reused);
- ``seq`` is strictly increasing across restarts; a fresh database starts at
  the current UNIX time in milliseconds, so a replaced or wiped SD card never
  reuses numbers the collector has already seen;
- the payload bytes held (handed but unconfirmed messages included) stay under
  ``max_bytes``: when a new message does not
  fit, heartbeats are thinned (every other one dropped, keeping coverage of
  the whole outage), then the oldest state reports and replies, then other
  events; fault events are never evicted (they are stored even over the cap);
  every eviction is counted;
- a database that SQLite cannot read is moved aside (``*.corrupt-<time>``) and
  a new one started, logged once, rather than stopping the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from edge_agent.errors import OutboxError
from fleet_protocol import Kind, Message, encode, topic

log = logging.getLogger(__name__)


class Priority(enum.IntEnum):
    """Eviction class: lower is evicted first; FAULT is never evicted."""

    HEARTBEAT = 0
    REPORT = 1
    EVENT = 2
    FAULT = 3


@dataclass(frozen=True, slots=True)
class Pending:
    """One stored message, as handed to the uplink."""

    seq: int
    topic: str
    payload: bytes
    retain: bool
    priority: Priority
    created: float


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    seq      INTEGER PRIMARY KEY,
    topic    TEXT    NOT NULL,
    payload  BLOB    NOT NULL,
    retain   INTEGER NOT NULL DEFAULT 0,
    priority INTEGER NOT NULL,
    created  REAL    NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_priority ON outbox (priority, seq);
"""
#: Which messages the broker holds (PUBACK) until the collector confirms them:
#: a temporary table in memory. The marks do not outlive the process anyway
#: (after a restart everything stored is sent again), so writing them to the
#: SD card, one fsynced commit per PUBACK, bought nothing. (Outboxes from the
#: first store-confirmation release kept them in a ``handed`` column with a
#: partial index; the column is left unused, the index dropped.)
_HANDED = """
DROP INDEX IF EXISTS outbox_unhanded;
CREATE TEMP TABLE IF NOT EXISTS handed (seq INTEGER PRIMARY KEY, at REAL NOT NULL);
"""


class Outbox:
    """Open with ``await Outbox.open(path, device=..., max_bytes=...)``; close with ``aclose()``."""

    def __init__(self, db: aiosqlite.Connection, path: Path, device: str, max_bytes: int) -> None:
        self._db = db
        self.path = path
        self.device = device
        self.max_bytes = max_bytes
        self._lock = asyncio.Lock()
        self._next_seq = 0
        self._bytes = 0
        self._depth = 0
        self._handed = 0
        self._oldest: float | None = None
        #: Set whenever a message is stored; the uplink waits on it when idle.
        self.changed = asyncio.Event()
        #: Messages evicted to stay under the cap, and new ones refused because
        #: only fault events were left to evict.
        self.evicted = 0
        self.refused = 0
        self._full_logged = False

    # --- lifecycle -----------------------------------------------------------------

    @classmethod
    async def open(cls, path: Path | str, *, device: str, max_bytes: int) -> Outbox:
        p = Path(path)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutboxError(f"outbox {p}: cannot create its folder: {exc}") from exc
        try:
            db = await cls._connect(p)
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and "unable to open" in str(exc):
                raise OutboxError(f"outbox {p}: cannot open: {exc}") from exc
            aside = p.with_name(f"{p.name}.corrupt-{int(time.time())}")
            log.error("outbox %s is unreadable (%s); moved aside to %s", p, exc, aside)
            for suffix in ("", "-wal", "-shm"):
                src = Path(f"{p}{suffix}")
                if src.exists():
                    src.rename(Path(f"{aside}{suffix}"))
            try:
                db = await cls._connect(p)
            except sqlite3.Error as exc2:
                raise OutboxError(f"outbox {p}: cannot create: {exc2}") from exc2
        box = cls(db, p, device, max_bytes)
        await box._load()
        return box

    @staticmethod
    async def _connect(p: Path) -> aiosqlite.Connection:
        db = await aiosqlite.connect(p, isolation_level=None)
        try:
            # A new outbox uses 1 KiB pages (a no-op on an existing one): a commit
            # appends one WAL frame per page it changed, and a report is a few
            # hundred bytes, so 4 KiB pages wrote mostly unchanged bytes to the card.
            await db.execute("PRAGMA page_size=1024")
            await db.execute("PRAGMA journal_mode=WAL")
            # FULL: in WAL mode this fsyncs the log at every commit, so a power cut
            # loses nothing put() returned for. A few hundred commits a day: no SD wear issue.
            await db.execute("PRAGMA synchronous=FULL")
            await db.execute("PRAGMA busy_timeout=5000")
            # A queue of a few hundred rows needs no 2 MiB page cache (the default).
            await db.execute("PRAGMA cache_size=-256")
            # The handed marks (and SQLite's sort space) stay in memory.
            await db.execute("PRAGMA temp_store=MEMORY")
            # After a checkpoint the WAL file is cut back to 256 KiB, not left at
            # its high-water mark (a backlog's worth) on the card.
            await db.execute("PRAGMA journal_size_limit=262144")
            async with db.execute("PRAGMA quick_check") as cur:
                row = await cur.fetchone()
            if row is None or row[0] != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {row[0] if row else 'no answer'}")
            await db.executescript(_SCHEMA)
            await db.executescript(_HANDED)
        except BaseException:
            await db.close()
            raise
        return db

    async def _load(self) -> None:
        async with self._db.execute("SELECT value FROM meta WHERE key='next_seq'") as cur:
            row = await cur.fetchone()
        if row is None:
            self._next_seq = int(time.time() * 1000)
            await self._db.execute(
                "INSERT INTO meta (key, value) VALUES ('next_seq', ?)", (self._next_seq,)
            )
        else:
            self._next_seq = int(row[0])
        async with self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0), MAX(seq) FROM outbox"
        ) as cur:
            row = await cur.fetchone()
        assert row is not None
        self._depth, self._bytes = int(row[0]), int(row[1])
        if row[2] is not None and int(row[2]) >= self._next_seq:
            # Cannot happen with the transactional writes below; guard it anyway.
            self._next_seq = int(row[2]) + 1
        await self._refresh_oldest()
        if self._depth:
            self.changed.set()

    async def aclose(self) -> None:
        async with self._lock:
            with contextlib.suppress(sqlite3.Error):
                await self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            await self._db.close()

    # --- introspection -------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Messages stored and not yet confirmed (or acknowledged, without confirmations)."""
        return self._depth

    @property
    def bytes(self) -> int:
        """Payload bytes stored (handed, unconfirmed ones included)."""
        return self._bytes

    @property
    def handed_count(self) -> int:
        """Messages the broker acknowledged that the collector has not confirmed yet."""
        return self._handed

    @property
    def oldest(self) -> float | None:
        """Creation time of the oldest stored message, or None when empty."""
        return self._oldest

    @property
    def next_seq(self) -> int:
        return self._next_seq

    async def _refresh_oldest(self) -> None:
        async with self._db.execute("SELECT MIN(created) FROM outbox") as cur:
            row = await cur.fetchone()
        self._oldest = None if row is None or row[0] is None else float(row[0])

    # --- writing -------------------------------------------------------------------

    async def reserve_seq(self) -> int:
        """Take one seq number without storing a message (last will, birth message)."""
        async with self._lock:
            seq = self._next_seq
            self._next_seq += 1
            try:
                await self._db.execute(
                    "UPDATE meta SET value=? WHERE key='next_seq'", (self._next_seq,)
                )
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox {self.path}: cannot persist seq: {exc}") from exc
            return seq

    async def put(
        self,
        kind: Kind,
        build: Callable[[int], Message],
        priority: Priority,
        *,
        retain: bool = False,
    ) -> Pending | None:
        """Store the message ``build(seq)`` on ``kind``'s topic; None if refused when full.

        The message is committed (with the seq counter) before this returns.
        """
        async with self._lock:
            seq = self._next_seq
            self._next_seq += 1
            payload = encode(build(seq))
            now = time.time()
            item = Pending(seq, topic(self.device, kind), payload, retain, priority, now)
            async with self._transaction(f"store seq {seq}"):
                await self._db.execute(
                    "UPDATE meta SET value=? WHERE key='next_seq'", (self._next_seq,)
                )
                fits = await self._make_room(len(payload), priority)
                if fits:
                    await self._db.execute(
                        "INSERT INTO outbox (seq, topic, payload, retain, priority, created)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        (seq, item.topic, payload, int(retain), int(priority), now),
                    )
            if not fits:
                self.refused += 1
                return None
            self._depth += 1
            self._bytes += len(payload)
            if self._oldest is None:
                self._oldest = now
            self.changed.set()
            return item

    async def _make_room(self, size: int, priority: Priority) -> bool:
        """Evict (inside the caller's transaction) until ``size`` more bytes fit."""
        while self._bytes + size > self.max_bytes:
            if not await self._evict_one_step(priority):
                if priority == Priority.FAULT:
                    return True  # fault events are kept even over the cap
                if not self._full_logged:
                    log.warning(
                        "outbox %s full (%d bytes) of fault events: refusing %s messages",
                        self.path,
                        self._bytes,
                        priority.name.lower(),
                    )
                    self._full_logged = True
                return False
        self._full_logged = False
        return True

    async def _evict_one_step(self, incoming: Priority) -> bool:
        async with self._db.execute(
            "SELECT priority, COUNT(*) FROM outbox WHERE priority < ? GROUP BY priority",
            (int(Priority.FAULT),),
        ) as cur:
            counts = {int(p): int(n) for p, n in await cur.fetchall()}
        if not counts:
            return False
        lowest = min(counts)
        if lowest > incoming:
            return False  # never evict something more important than what comes in
        if lowest == Priority.HEARTBEAT and counts[lowest] > 1:
            # Thin: drop every other heartbeat, so the outage stays covered at half the rate.
            where = (
                "seq IN (SELECT seq FROM (SELECT seq, ROW_NUMBER() OVER (ORDER BY seq) AS n"
                " FROM outbox WHERE priority=0) WHERE n % 2 = 0)"
            )
        else:
            where = f"seq IN (SELECT seq FROM outbox WHERE priority={lowest} ORDER BY seq LIMIT 16)"
        async with self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0),"
            f" COALESCE(SUM(seq IN (SELECT seq FROM handed)), 0) FROM outbox WHERE {where}"
        ) as cur:
            row = await cur.fetchone()
        assert row is not None
        await self._db.execute(f"DELETE FROM handed WHERE {where}")
        await self._db.execute(f"DELETE FROM outbox WHERE {where}")
        self._depth -= int(row[0])
        self._bytes -= int(row[1])
        self._handed -= int(row[2])
        self.evicted += int(row[0])
        log.info(
            "outbox %s over %d bytes: evicted %d %s message(s)",
            self.path,
            self.max_bytes,
            row[0],
            Priority(lowest).name.lower(),
        )
        return True

    @contextlib.asynccontextmanager
    async def _transaction(self, what: str) -> AsyncIterator[None]:
        """BEGIN IMMEDIATE .. COMMIT under the caller's lock; on a SQLite error the
        transaction is rolled back, the cached counters reloaded, and OutboxError
        names ``what`` failed."""
        try:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                await self._db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    await self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            await self._resync()
            raise OutboxError(f"outbox {self.path}: cannot {what}: {exc}") from exc

    async def _resync(self) -> None:
        """Reload the cached counters after a failed transaction."""
        with contextlib.suppress(sqlite3.Error):
            async with self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox"
            ) as cur:
                row = await cur.fetchone()
            if row is not None:
                self._depth, self._bytes = int(row[0]), int(row[1])
            async with self._db.execute("SELECT COUNT(*) FROM handed") as cur:
                row = await cur.fetchone()
            if row is not None:
                self._handed = int(row[0])
            await self._refresh_oldest()

    # --- the transaction the uplink drives -----------------------------------------

    async def batch(self, limit: int) -> list[Pending]:
        """The oldest ``limit`` stored messages, in seq order (begin)."""
        async with self._lock:
            try:
                rows = await self._select(
                    "WHERE seq NOT IN (SELECT seq FROM handed) ORDER BY seq LIMIT ?", (limit,)
                )
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox {self.path}: cannot read: {exc}") from exc
            if not rows:
                self.changed.clear()
            return rows

    async def _select(self, where: str, params: tuple[Any, ...]) -> list[Pending]:
        async with self._db.execute(
            f"SELECT seq, topic, payload, retain, priority, created FROM outbox {where}", params
        ) as cur:
            rows = await cur.fetchall()
        return [
            Pending(int(s), str(t), bytes(p), bool(r), Priority(int(pr)), float(c))
            for s, t, p, r, pr, c in rows
        ]

    async def ack(self, seqs: Iterable[int]) -> None:
        """Delete exactly the acknowledged messages (accept, without confirmations)."""
        ids = list(seqs)
        if ids:
            await self._delete([(s, s) for s in ids], "delete acked")

    async def confirm(self, ranges: Iterable[tuple[int, int]]) -> int:
        """Delete the messages the collector confirmed (``(first, last)`` seq ranges).

        Seqs no longer held (confirmed twice, evicted) are ignored. Returns how
        many messages were deleted.
        """
        spans = [(a, b) for a, b in ranges if a <= b]
        return await self._delete(spans, "delete confirmed") if spans else 0

    async def _delete(self, spans: list[tuple[int, int]], what: str) -> int:
        async with self._lock:
            deleted = 0
            async with self._transaction(what):
                for i in range(0, len(spans), 200):
                    part = spans[i : i + 200]
                    where = " OR ".join("seq BETWEEN ? AND ?" for _ in part)
                    params = [x for span in part for x in span]
                    async with self._db.execute(
                        "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0),"
                        " COALESCE(SUM(seq IN (SELECT seq FROM handed)), 0)"
                        f" FROM outbox WHERE {where}",
                        params,
                    ) as cur:
                        row = await cur.fetchone()
                    assert row is not None
                    if int(row[0]):
                        await self._db.execute(f"DELETE FROM handed WHERE {where}", params)
                        await self._db.execute(f"DELETE FROM outbox WHERE {where}", params)
                    deleted += int(row[0])
                    self._depth -= int(row[0])
                    self._bytes -= int(row[1])
                    self._handed -= int(row[2])
            if deleted:
                await self._refresh_oldest()
            return deleted

    async def handed(self, seqs: Iterable[int], *, at: float | None = None) -> None:
        """Mark messages the broker acknowledged as handed (kept until confirmed)."""
        ids = list(seqs)
        if not ids:
            return
        when = time.monotonic() if at is None else at
        async with self._lock:
            try:
                for i in range(0, len(ids), 500):
                    part = ids[i : i + 500]
                    cur = await self._db.execute(
                        "INSERT OR IGNORE INTO handed (seq, at) SELECT seq, ? FROM outbox"
                        f" WHERE seq IN ({','.join('?' * len(part))})",
                        (when, *part),
                    )
                    self._handed += max(0, cur.rowcount)
                    await cur.close()
            except sqlite3.Error as exc:
                await self._resync()
                raise OutboxError(f"outbox {self.path}: cannot mark handed: {exc}") from exc

    async def unhand(self, *, handed_before: float | None = None) -> int:
        """Give handed messages out again (all, or those handed before that monotonic time)."""
        async with self._lock:
            try:
                if handed_before is None:
                    cur = await self._db.execute("DELETE FROM handed")
                else:
                    cur = await self._db.execute(
                        "DELETE FROM handed WHERE at < ?", (handed_before,)
                    )
                n = max(0, cur.rowcount)
                await cur.close()
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox {self.path}: cannot re-queue: {exc}") from exc
            self._handed -= n
            if n:
                self.changed.set()
            return n

    async def drop_handed(self) -> int:
        """Delete every handed message (the collector does not confirm: PUBACK is final)."""
        async with self._lock:
            try:
                async with self._db.execute("SELECT seq FROM handed") as cur:
                    seqs = [int(r[0]) for r in await cur.fetchall()]
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox {self.path}: cannot read: {exc}") from exc
        return await self._delete([(s, s) for s in seqs], "delete handed")

    async def get_meta(self, key: str, default: int = 0) -> int:
        """A persisted integer the uplink keeps with the outbox (``default`` when unset)."""
        async with (
            self._lock,
            self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)) as cur,
        ):
            row = await cur.fetchone()
        return default if row is None else int(row[0])

    async def set_meta(self, key: str, value: int) -> None:
        async with self._lock:
            try:
                await self._db.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?)"
                    " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (key, int(value)),
                )
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox {self.path}: cannot persist {key}: {exc}") from exc

    async def seq_range(self) -> tuple[int, int] | None:
        """(lowest, highest) seq still held, or None when empty (the fault SMS names it)."""
        async with self._db.execute("SELECT MIN(seq), MAX(seq) FROM outbox") as cur:
            row = await cur.fetchone()
        if row is None or row[0] is None:
            return None
        return int(row[0]), int(row[1])

    async def all(self) -> list[Pending]:
        """Every stored message in seq order, handed ones included (technician CLI, tests)."""
        async with self._lock:
            try:
                return await self._select("ORDER BY seq", ())
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox {self.path}: cannot read: {exc}") from exc


__all__ = ["Outbox", "Pending", "Priority"]
