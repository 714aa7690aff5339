"""Typed application keys of the collector's aiohttp app (shared with the dashboard)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from collector.config import CollectorConfig
from collector.metrics import IngestStats
from collector.store.base import Repository

CONFIG = web.AppKey("config", CollectorConfig)
REPO = web.AppKey("repo", Repository)
STATS = web.AppKey("stats", IngestStats)
#: Extra text for /metrics, appended after the ingest and fleet lines (e.g. alert deliveries).
METRIC_SOURCES = web.AppKey("metric_sources", list[Callable[[], Awaitable[str]]])
