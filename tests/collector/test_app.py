"""The app's supervision of ingest, and what /healthz says about it."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from collector import metrics
from collector.app import create_app, supervise
from collector.keys import STATS
from collector.metrics import IngestStats
from collector.store.sqlite import SQLiteRepository
from tests.collector.conftest import make_config, wait_for
from tests.support.mosquitto import Broker


async def test_a_task_that_ends_is_logged_and_restarted_with_backoff(caplog: object) -> None:
    stats = IngestStats()
    calls = 0
    delays: list[float] = []
    forever = asyncio.Event()

    async def run() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RecursionError("maximum recursion depth exceeded")
        if calls == 2:
            return  # ended without an error: restarted all the same
        await forever.wait()

    def rng(low: float, high: float) -> float:
        delays.append(high)
        return 0.0

    task = asyncio.create_task(supervise("ingest", run, stats, rng=rng))
    try:

        async def third_run() -> bool:
            return calls == 3 and stats.task_running

        await wait_for(third_run, what="the third run")
        assert stats.task_restarts == 2
        assert stats.task_last_error == "returned"
        assert delays == [1.0, 2.0]  # backoff grows while runs keep failing fast
        text = metrics.render(stats, [])
        assert "loa_ingest_task_restarts_total 2" in text
        assert "loa_ingest_task_running 1" in text
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert not stats.task_running


@pytest.mark.integration
async def test_healthz_reports_the_ingest_task(broker: Broker, tmp_path: Path) -> None:
    cfg = make_config(broker, tmp_path)
    repo = await SQLiteRepository.open(cfg.db.path)
    await repo.migrate()
    await repo.close()
    app = create_app(cfg)
    async with TestClient(TestServer(app)) as client:

        async def connected() -> bool:
            return app[STATS].connected

        await wait_for(connected, what="ingest connected")
        async with client.get("/healthz") as resp:
            assert resp.status == 200
            body = await resp.json()
        assert body["ingest"] == {
            "enabled": True,
            "running": True,
            "restarts": 0,
            "last_error": None,
        }
        # What a crashed ingest looks like between two attempts.
        app[STATS].task_running = False
        app[STATS].task_last_error = "RuntimeError: boom"
        async with client.get("/healthz") as resp:
            assert resp.status == 503
            body = await resp.json()
        assert body["ok"] is False and body["ingest"]["last_error"] == "RuntimeError: boom"
