"""Open the configured store: SQLite (a file) or PostgreSQL (a URL)."""

from __future__ import annotations

from pathlib import Path

from collector.config import DbConfig
from collector.store.sqlite import SQLiteRepository


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def sqlite_path(url: str) -> Path:
    """The file of ``sqlite:///var/lib/x.db`` (the path after ``sqlite://``, absolute)."""
    return Path(url.removeprefix("sqlite://"))


async def open_url(url: str, *, synchronous: str = "full") -> SQLiteRepository:
    """The store at ``url``: ``postgresql://...`` or ``sqlite:///path``."""
    if is_postgres(url):
        from collector.store.postgres import PostgresRepository  # psycopg only when used

        return await PostgresRepository.open(url)
    return await SQLiteRepository.open(sqlite_path(url), synchronous=synchronous)


async def open_store(db: DbConfig) -> SQLiteRepository:
    """The store ``[db]`` names (``url`` when given, else the SQLite ``path``)."""
    if db.url:
        return await open_url(db.url, synchronous=db.synchronous)
    return await SQLiteRepository.open(Path(db.path), synchronous=db.synchronous)


def describe(db: DbConfig) -> str:
    """The store for messages and logs (no password)."""
    if db.url and is_postgres(db.url):
        from collector.store.postgres import redact

        return redact(db.url)
    return db.url or db.path
