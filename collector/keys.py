"""Typed application keys of the collector's aiohttp app (shared with the dashboard)."""

from __future__ import annotations

from aiohttp import web

from collector.config import CollectorConfig
from collector.metrics import IngestStats
from collector.store.base import Repository

CONFIG = web.AppKey("config", CollectorConfig)
REPO = web.AppKey("repo", Repository)
STATS = web.AppKey("stats", IngestStats)
