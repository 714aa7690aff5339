"""The collector's aiohttp application: ``create_app(config)``.

Everything with a lifetime lives in ``cleanup_ctx``: the database, the ingest
task (MQTT or AMQP, ``[ingest] source``), the periodic sweeps (silent devices,
raw retention, repairs) and the alerts' evaluation, delivery and monthly-report
tasks (``collector.alerts``).
Tests and ``loa-collector serve`` build the app with this same factory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

from aiohttp import web

from collector import api, auth, remote_api, repairs, routes
from collector.alerts import service as alerts
from collector.alerts import web as alerts_web
from collector.config import CollectorConfig
from collector.ingest import Ingestor, run_ingest
from collector.keys import CONFIG, METRIC_SOURCES, REPO, STATS
from collector.metrics import IngestStats
from collector.store.base import StoreError
from collector.store.engines import open_store
from collector.web import setup_dashboard

log = logging.getLogger("loa.collector")

TASKS = web.AppKey("tasks", list[asyncio.Task[None]])


#: This process among the collector instances sharing a database (periodic_claims).
INSTANCE: Final = f"{socket.gethostname()}:{os.getpid()}"


async def _periodic(
    name: str,
    interval_s: float,
    job: Callable[[], Awaitable[object]],
    claim: Callable[[str, float], Awaitable[bool]] | None = None,
) -> None:
    """Run ``job`` every ``interval_s``; a failure is logged once, and its recovery once.

    With ``claim`` (the store's ``claim_periodic``), a round runs only where the
    claim is won: once across the instances sharing the database, taken over by
    another within one interval when the holder dies.
    """
    failing = False
    while True:
        try:
            async with asyncio.timeout(max(30.0, interval_s * 5)):
                if claim is None or await claim(name, interval_s):
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


async def supervise(
    name: str,
    run: Callable[[], Awaitable[None]],
    stats: IngestStats,
    *,
    backoff_max_s: float = 60.0,
    rng: Callable[[float, float], float] = random.uniform,
) -> None:
    """Run ``run()`` forever: if it ever ends, log why, and restart it with backoff.

    ``stats`` says whether it runs, how often it was restarted and why it last
    ended (``/healthz``, ``/metrics``). A run that lasted a minute resets the
    backoff. Cancel to stop.
    """
    loop = asyncio.get_running_loop()
    attempt = 0
    while True:
        started = loop.time()
        stats.task_running = True
        try:
            await run()
            reason = "returned"
        except Exception as exc:  # anything: the point is that ingest comes back
            reason = f"{type(exc).__name__}: {exc}"[:300]
            log.error("%s task failed: %s", name, reason, exc_info=True)
        finally:
            stats.task_running = False
        stats.task_restarts += 1
        stats.task_last_error = reason
        attempt = 1 if loop.time() - started > 60 else attempt + 1
        delay = rng(0.5, min(backoff_max_s, 0.5 * 2**attempt))
        log.error("%s task ended (%s); restarting in %.1f s", name, reason, delay)
        await asyncio.sleep(delay)


async def _db_ctx(app: web.Application) -> AsyncIterator[None]:
    cfg = app[CONFIG]
    repo = await open_store(cfg.db)
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

        async def run() -> None:
            if cfg.ingest.source == "amqp":
                # Imported only when chosen: an MQTT-only install needs no aio-pika.
                from collector.ingest_amqp import run_ingest_amqp

                await run_ingest_amqp(cfg, ingestor)
            else:
                await run_ingest(cfg, ingestor)

        tasks.append(asyncio.create_task(supervise("ingest", run, app[STATS]), name="ingest"))

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

    async def compaction() -> None:
        done = await repo.compact_raw(time.time() - cfg.db.raw_detail_hours * 3600)
        if done.dropped:
            log.info(
                "compaction: %d redundant heartbeats of %d clusters dropped (%d new seq ranges)",
                done.dropped,
                done.devices,
                done.spans,
            )

    async def repair_sweep() -> None:
        for action in await repairs.sweep(repo, cfg.repairs, now=time.time()):
            log.info("repair sweep: %s", action)

    async def claim(name: str, interval_s: float) -> bool:
        # The lease ends a little before this instance's next round, so the holder
        # renews it each round and another instance takes it one round after a death.
        return await repo.claim_periodic(name, INSTANCE, now=time.time(), lease_s=interval_s * 0.9)

    tasks.append(
        asyncio.create_task(
            _periodic("fleet sweep", cfg.fleet.sweep_interval_s, fleet_sweep, claim),
            name="fleet-sweep",
        )
    )
    tasks.append(
        asyncio.create_task(
            _periodic("repair sweep", cfg.repairs.sweep_interval_s, repair_sweep, claim),
            name="repair-sweep",
        )
    )
    tasks.append(
        asyncio.create_task(
            _periodic("compaction", cfg.db.compact_interval_s, compaction, claim),
            name="compaction",
        )
    )
    if cfg.sms.port:
        from collector.sms import build_gateway

        gateway = build_gateway(repo, cfg.sms)

        async def sms_metrics() -> str:
            return gateway.stats.prometheus()

        app[METRIC_SOURCES].append(sms_metrics)
        tasks.append(asyncio.create_task(gateway.run(), name="sms-gateway"))
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
    app.cleanup_ctx.append(_db_ctx)
    app.cleanup_ctx.append(_tasks_ctx)
    app[METRIC_SOURCES] = []
    app.cleanup_ctx.append(alerts.alerts_ctx)
    routes.add_routes(app)
    remote_api.setup(app)
    setup_dashboard(app)
    alerts_web.add_routes(app)
    return app
