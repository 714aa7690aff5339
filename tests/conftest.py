"""Shared fixtures: a real Mosquitto, and guards against leaked threads and processes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support.mosquitto import Broker, running_broker
from tests.support.postgres import PgServer, running_postgres


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A Mosquitto started from deploy/'s production config (plain listener, passwords, ACL)."""
    with running_broker(tmp_path / "broker") as b:
        yield b


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One throwaway PostgreSQL for the session, with a migrated template database
    (``loa_template``) that ``pg_url`` clones per test."""
    import asyncio
    import concurrent.futures

    from collector.store.postgres import PostgresRepository

    with running_postgres() as server:
        server.psql('CREATE DATABASE "loa_template"')

        async def migrate() -> None:
            repo = await PostgresRepository.open(server.url("loa_template"))
            try:
                await repo.migrate()
            finally:
                await repo.close()

        # In a thread of its own: the first user may be an async fixture, inside a loop.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, migrate()).result()
        yield server


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """A fresh, migrated PostgreSQL database of the session's server."""
    return pg_server.fresh_database("loa_template")


def _settle(check: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return bool(check())  # type: ignore[operator]


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail a test that leaves threads or child processes behind."""
    threads_before = {t.ident for t in threading.enumerate()}
    yield
    me = psutil.Process()

    def clean() -> bool:
        extra = [t for t in threading.enumerate() if t.ident not in threads_before and t.is_alive()]
        kids = [
            p
            for p in me.children(recursive=True)
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        ]
        return not extra and not kids

    if not _settle(clean):
        extra = [t.name for t in threading.enumerate() if t.ident not in threads_before]
        kids = [" ".join(p.cmdline()[:3]) for p in me.children(recursive=True)]
        pytest.fail(f"test left behind threads {extra} and processes {kids}")
