"""The collector's aiohttp application: ``create_app(config)``.

Everything with a lifetime lives in ``cleanup_ctx``: the database, the MQTT
ingest task and the periodic sweeps (silent devices, raw retention, repairs).
Tests and ``loa-collector serve`` build the app with this same factory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from aiohttp import web

from collector import api, auth, remote_api, repairs
from collector.b2 import api as b2_api
from collector.config import CollectorConfig
from collector.ingest import Ingestor, run_ingest
from collector.keys import CONFIG, REPO, STATS, THROTTLE
from collector.metrics import IngestStats
from collector.store.base import StoreError
from collector.store.sqlite import SQLiteRepository
from collector.web import setup_dashboard

log = logging.getLogger("loa.collector")

TASKS = web.AppKey("tasks", list[asyncio.Task[None]])


async def _periodic(name: str, interval_s: float, job: Callable[[], Awaitable[object]]) -> None:
    """Run ``job`` every ``interval_s``; a failure is logged once, and its recovery once."""
    failing = False
    while True:
        try:
            async with asyncio.timeout(max(30.0, interval_s * 5)):
                await job()
        except (StoreError, TimeoutError) as exc:
            if not failing:
                log.error("%s failing: %s", name, exc)
                failing = True
        else:
            if failing:
                log.info("%s recovered", name)
                failing = False
        await asyncio.sleep(interval_s)


async def _db_ctx(app: web.Application) -> AsyncIterator[None]:
    cfg = app[CONFIG]
    repo = await SQLiteRepository.open(Path(cfg.db.path), synchronous=cfg.db.synchronous)
    try:
        await repo.require_schema()
    except StoreError:
        await repo.close()
        raise
    app[REPO] = repo
    yield
    await repo.close()


async def _tasks_ctx(app: web.Application) -> AsyncIterator[None]:
    cfg = app[CONFIG]
    repo = app[REPO]
    tasks: list[asyncio.Task[None]] = []
    if cfg.ingest_enabled:
        ingestor = Ingestor(repo, cfg.ingest, app[STATS])
        tasks.append(asyncio.create_task(run_ingest(cfg, ingestor), name="ingest"))

    async def fleet_sweep() -> None:
        now = time.time()
        marked = await repo.mark_silent_offline(now, cfg.fleet.heartbeat_grace_s)
        if marked:
            log.info(
                "offline (no heartbeat for %.0f s): %s",
                cfg.fleet.heartbeat_grace_s,
                ", ".join(marked[:20]) + (" ..." if len(marked) > 20 else ""),
            )
        await repo.purge_raw(now - cfg.db.raw_retention_days * 86400)

    async def repair_sweep() -> None:
        for action in await repairs.sweep(repo, cfg.repairs, now=time.time()):
            log.info("repair sweep: %s", action)

    tasks.append(
        asyncio.create_task(
            _periodic("fleet sweep", cfg.fleet.sweep_interval_s, fleet_sweep), name="fleet-sweep"
        )
    )
    tasks.append(
        asyncio.create_task(
            _periodic("repair sweep", cfg.repairs.sweep_interval_s, repair_sweep),
            name="repair-sweep",
        )
    )
    app[TASKS] = tasks
    yield
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await t


def create_app(config: CollectorConfig) -> web.Application:
    """The collector app. The database must be migrated (``loa-collector db migrate``)."""
    app = web.Application(
        client_max_size=config.http.max_body_bytes,
        middlewares=[api.error_middleware, auth.auth_middleware(lambda r: r.app[REPO])],
    )
    app[CONFIG] = config
    app[STATS] = IngestStats()
    app[THROTTLE] = auth.LoginThrottle()
    app.cleanup_ctx.append(_db_ctx)
    app.cleanup_ctx.append(_tasks_ctx)
    api.add_routes(app)
    b2_api.add_routes(app)
    remote_api.setup(app)
    setup_dashboard(app)
    return app
