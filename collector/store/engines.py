"""Open the configured store: SQLite (a file) or PostgreSQL (a URL)."""

from __future__ import annotations

from pathlib import Path

from collector.config import DbConfig
from collector.store.sqlite import SQLiteRepository

#: What ``--db`` takes besides a SQLite file path (as ``[db] url`` does).
URL_SCHEMES = ("postgresql://", "postgres://", "sqlite:///")


class StoreOptionError(ValueError):
    """A ``--db`` value that names no store this collector can open (the message says why)."""


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


def db_option(value: str, *, synchronous: str = "full") -> DbConfig:
    """The store a command's ``--db`` names: a URL (``postgresql://...``,
    ``sqlite:///abs/path``) or, as before URLs, a SQLite file path.

    Anything else with a scheme (``mysql://``, ``sqlite://relative``) raises
    StoreOptionError naming the scheme; the value is shown without its password.
    """
    if value.startswith(URL_SCHEMES):
        return DbConfig(url=value, synchronous=synchronous)
    scheme, sep, _ = value.partition("://")
    if sep:
        from collector.store.postgres import redact

        hint = (
            "sqlite:// needs an absolute path (sqlite:///var/lib/...)"
            if scheme.lower() == "sqlite"
            else f"unsupported URL scheme {scheme!r}"
        )
        raise StoreOptionError(
            f"--db {redact(value)!r}: {hint}; give postgresql://..., "
            "sqlite:///absolute/path or a SQLite file path"
        )
    return DbConfig(path=value, synchronous=synchronous)


def sqlite_file(db: DbConfig) -> Path | None:
    """The SQLite file ``[db]`` names (None on PostgreSQL)."""
    if db.url:
        return None if is_postgres(db.url) else sqlite_path(db.url)
    return Path(db.path)


def describe(db: DbConfig) -> str:
    """The store for messages and logs (no password)."""
    if db.url and is_postgres(db.url):
        from collector.store.postgres import redact

        return redact(db.url)
    return db.url or db.path
