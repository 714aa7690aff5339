"""Collector test helpers: a migrated store, configs pointing at the test broker, devices."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from collector.config import CollectorConfig, config_from_dict
from collector.store.sqlite import SQLiteRepository
from fleet_protocol import (
    PROTOCOL_VERSION,
    Event,
    EventType,
    Fault,
    FaultCode,
    Kind,
    Message,
    ModemState,
    Presence,
    PresenceStatus,
    RegState,
    SimState,
    StateReport,
    StreamState,
    encode,
    topic,
)
from tests.support.mosquitto import COLLECTOR_USER, Broker

#: The database of the running test's ``repo`` when it is PostgreSQL: ``make_config``
#: points the collector at it, so a test that starts a collector beside its
#: ``repo`` runs on the same engine.
_PG_URL: list[str] = []


@pytest.fixture(params=["sqlite", "postgres"])
async def repo(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SQLiteRepository]:
    """A migrated store on each engine: every test that takes ``repo`` is the
    contract suite, run against SQLite and PostgreSQL alike."""
    if request.param == "postgres":
        from collector.store.postgres import PostgresRepository

        url = request.getfixturevalue("pg_url")
        r: SQLiteRepository = await PostgresRepository.open(url)
        _PG_URL.append(url)
    else:
        r = await SQLiteRepository.open(tmp_path / "collector.db", synchronous="normal")
        await r.migrate()
    try:
        yield r
    finally:
        _PG_URL.clear()
        await r.close()


def make_config(
    broker: Broker | None, tmp_path: Path, **sections: dict[str, Any]
) -> CollectorConfig:
    """A collector config for tests: the test broker, a temp database, plain HTTP."""
    data: dict[str, Any] = {
        "mqtt": {
            "host": broker.host if broker else "127.0.0.1",
            "port": broker.port if broker else 1883,
            "username": COLLECTOR_USER,
            "password": Broker.password(COLLECTOR_USER),
            "client_id": f"loa-collector-test-{tmp_path.name}"[:60],
            "max_backoff_s": 1.0,
        },
        "db": {"path": str(tmp_path / "collector.db"), "synchronous": "normal"},
        "http": {"port": 0, "secure_cookies": False},
    }
    if _PG_URL:
        data["db"]["url"] = _PG_URL[-1]
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return config_from_dict(data)


def state(
    device: str,
    seq: int,
    ts: float | None = None,
    *,
    faults: tuple[FaultCode, ...] = (),
    commune: str | None = "xa-01",
    rssi: float = -75.0,
    heartbeat: bool = False,
) -> StateReport:
    now = time.time() if ts is None else ts
    return StateReport(
        v=PROTOCOL_VERSION,
        device=device,
        seq=seq,
        ts=now,
        commune=commune,
        heartbeat=heartbeat,
        modem=ModemState(
            sim=SimState.READY,
            registration=RegState.HOME,
            rssi_dbm=rssi,
            rsrp_dbm=rssi - 20,
            csq=int((rssi + 113) / 2),
        ),
        stream=StreamState(receiving=FaultCode.STREAM_LOST not in faults),
        faults=[Fault.of(code, now - 60, f"test {code}") for code in faults],
    )


def presence(device: str, seq: int, online: bool, ts: float | None = None) -> Presence:
    return Presence(
        v=PROTOCOL_VERSION,
        device=device,
        seq=seq,
        ts=time.time() if ts is None else ts,
        status=PresenceStatus.ONLINE if online else PresenceStatus.OFFLINE,
    )


def event(device: str, seq: int, code: FaultCode, raised: bool = True) -> Event:
    now = time.time()
    return Event(
        v=PROTOCOL_VERSION,
        device=device,
        seq=seq,
        ts=now,
        type=EventType.FAULT_RAISED if raised else EventType.FAULT_CLEARED,
        fault=Fault.of(code, now, "test"),
    )


KIND_OF = {StateReport: Kind.STATE, Event: Kind.EVENT, Presence: Kind.PRESENCE}


def device_client(broker: Broker, device: str, **kw: Any) -> aiomqtt.Client:
    broker.add_user(device)
    kw.setdefault("identifier", f"{device}-test")
    return aiomqtt.Client(
        broker.host, broker.port, username=device, password=broker.password(device), **kw
    )


async def publish(broker: Broker, device: str, *messages: Message | tuple[str, bytes]) -> None:
    """Publish as ``device`` (QoS 1): protocol messages, or raw (topic, payload) pairs."""
    async with device_client(broker, device) as c:
        for m in messages:
            if isinstance(m, tuple):
                await c.publish(m[0], m[1], qos=1)
            else:
                await c.publish(topic(device, KIND_OF[type(m)]), encode(m), qos=1)


async def wait_for(
    check: Callable[[], Awaitable[bool]], timeout: float = 10.0, what: str = "condition"
) -> None:
    """Poll ``check`` until true; fail the test naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


@asynccontextmanager
async def ingest_running(
    cfg: CollectorConfig, repo: SQLiteRepository
) -> AsyncIterator[tuple[Any, asyncio.Task[None]]]:
    """The real MQTT ingest loop in a task, connected; cancelled at exit."""
    from collector.ingest import Ingestor, run_ingest
    from collector.metrics import IngestStats

    ingestor = Ingestor(repo, cfg.ingest, IngestStats())
    connected = asyncio.Event()
    task = asyncio.create_task(run_ingest(cfg, ingestor, connected=connected), name="ingest")
    try:
        await asyncio.wait_for(connected.wait(), 10)
        yield ingestor, task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
