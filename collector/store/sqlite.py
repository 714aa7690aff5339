"""The embedded store: SQLite through aiosqlite, in WAL mode.

One writer connection (writes are serialised by an asyncio lock and each is
one ``BEGIN IMMEDIATE`` transaction, so several collector processes may share
the file) and one reader connection (WAL readers see the last committed
snapshot and never block the writer).
"""

from __future__ import annotations

from collector.store.sqlite_accounts import AccountRole
from collector.store.sqlite_base import _qmarks, counted_from, payload_digest
from collector.store.sqlite_commands import CommandRole
from collector.store.sqlite_history import HistoryRole
from collector.store.sqlite_ingest import IngestRole
from collector.store.sqlite_inventory import InventoryRole
from collector.store.sqlite_repairs import RepairRole


class SQLiteRepository(
    InventoryRole,
    IngestRole,
    HistoryRole,
    RepairRole,
    AccountRole,
    CommandRole,
):
    """``Repository`` on one SQLite file, one class per role over the same two
    connections. Build with ``await SQLiteRepository.open(path)``."""


__all__ = ["SQLiteRepository", "_qmarks", "counted_from", "payload_digest"]
