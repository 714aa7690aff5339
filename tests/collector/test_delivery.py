"""End-to-end delivery through a broker crash: kill -9 of Mosquitto mid-stream.

The agents here are the agent's own delivery path (its outbox and uplink, as
``loa-agent`` runs them), against the production Mosquitto config and the real
collector ingest on SQLite. What every agent assigned is recorded from the
outbox itself (the seqs ``put`` returned); at the end, the store must hold
each of those seqs exactly once. Mosquitto PUBACKs a message as soon as it is
in memory and persists only every ``autosave_interval``, so a kill -9 loses
what it had taken: only the collector's store confirmations make this pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from collector.store.sqlite import SQLiteRepository
from edge_agent.config import load_config
from edge_agent.outbox import Outbox, Priority
from edge_agent.uplink import Uplink
from fleet_protocol import Command, Kind
from tests.collector.conftest import ingest_running, make_config, state, wait_for
from tests.edge_agent.agent_support import write_config
from tests.support.mosquitto import Broker

pytestmark = pytest.mark.integration

DEVICES = ("dev-101", "dev-102", "dev-103")


@dataclass
class StreamingAgent:
    device: str
    outbox: Outbox
    uplink: Uplink
    #: Every seq this agent assigned to a message it must deliver (its own record).
    assigned: list[int] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    async def emit(self) -> None:
        item = await self.outbox.put(
            Kind.STATE, lambda seq: state(self.device, seq, commune="xa-01"), Priority.REPORT
        )
        assert item is not None
        self.assigned.append(item.seq)


async def _no_command(_cmd: Command) -> None:
    return None


@contextlib.asynccontextmanager
async def agents(broker: Broker, tmp_path: Path) -> AsyncIterator[list[StreamingAgent]]:
    out: list[StreamingAgent] = []
    try:
        for dev in DEVICES:
            d = tmp_path / dev
            d.mkdir()
            cfg = load_config(
                write_config(
                    d, broker, dev, outbox={"path": str(d / "outbox.sqlite"), "resend_after_s": 1.0}
                )
            )
            box = await Outbox.open(cfg.outbox.path, device=dev, max_bytes=cfg.outbox.max_bytes)
            agent = StreamingAgent(dev, box, Uplink(cfg, box, _no_command))
            agent.task = asyncio.create_task(agent.uplink.run(), name=f"uplink[{dev}]")
            out.append(agent)
        yield out
    finally:
        for a in out:
            a.uplink.stop()
        for a in out:
            if a.task is not None:
                try:
                    async with asyncio.timeout(10):
                        await a.task
                except TimeoutError:
                    a.task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await a.task
            await a.outbox.aclose()


async def stream(fleet: list[StreamingAgent], seconds: float, every: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for a in fleet:
            await a.emit()
        await asyncio.sleep(every)


async def until_all_confirmed(
    fleet: list[StreamingAgent], repo: SQLiteRepository, timeout: float
) -> None:
    """Keep a heartbeat going (as agents do) until every assigned seq is stored and confirmed."""

    async def done() -> bool:
        for a in fleet:
            if a.outbox.depth or set(a.assigned) - set(await repo.stored_seqs(a.device)):
                return False
        return True

    deadline = time.monotonic() + timeout
    last_beat = time.monotonic()
    while not await done():
        if time.monotonic() > deadline:
            missing = {
                a.device: (
                    len(set(a.assigned) - set(await repo.stored_seqs(a.device))),
                    a.outbox.depth,
                    a.outbox.handed_count,
                    a.uplink.confirming,
                    a.uplink.connected,
                    [p.seq for p in await a.outbox.all()][:5],
                )
                for a in fleet
            }
            raise AssertionError(f"not every seq stored and confirmed: missing {missing}")
        if time.monotonic() - last_beat > 1.0:
            last_beat = time.monotonic()
            for a in fleet:
                await a.emit()
        await asyncio.sleep(0.1)


async def assert_exactly_once(fleet: list[StreamingAgent], repo: SQLiteRepository) -> None:
    """Every seq an agent assigned is stored once; the only others are its presence messages."""
    for a in fleet:
        rows = await repo._all(
            "SELECT seq, kind FROM messages WHERE device_id = ? ORDER BY seq", (a.device,)
        )
        reports = [seq for seq, kind in rows if kind == "state"]
        assert reports == sorted(a.assigned), a.device
        assert {kind for _, kind in rows} <= {"state", "presence"}


async def confirming(fleet: list[StreamingAgent]) -> None:
    for a in fleet:
        await a.emit()

    async def all_confirm() -> bool:
        return all(a.uplink.confirming for a in fleet)

    await wait_for(all_confirm, timeout=20, what="agents seeing store confirmations")


async def test_broker_kill9_while_the_collector_runs_loses_nothing(
    broker: Broker, tmp_path: Path, repo: SQLiteRepository
) -> None:
    cfg = make_config(broker, tmp_path, ingest={"ack_interval_s": 0.2})
    async with ingest_running(cfg, repo) as (ingestor, _), agents(broker, tmp_path) as fleet:
        await confirming(fleet)
        await stream(fleet, 1.5, 0.01)
        broker.kill9()  # mid-stream: the agents keep producing while it is down
        await stream(fleet, 0.5, 0.01)
        broker.start()
        await stream(fleet, 1.0, 0.01)
        await until_all_confirmed(fleet, repo, timeout=60)
        await assert_exactly_once(fleet, repo)
        assert sum(len(a.assigned) for a in fleet) > 300
        assert ingestor.stats.rejected == {}


async def test_broker_kill9_while_the_collector_is_down_loses_nothing(
    broker: Broker, tmp_path: Path, repo: SQLiteRepository
) -> None:
    cfg = make_config(broker, tmp_path, ingest={"ack_interval_s": 0.2})
    async with agents(broker, tmp_path) as fleet:
        async with ingest_running(cfg, repo):
            await confirming(fleet)
        # The collector is down; the broker takes (and PUBACKs) everything, queued
        # for the collector's session in memory only.
        await stream(fleet, 2.0, 0.01)

        async def all_handed() -> bool:
            return all(a.outbox.handed_count == a.outbox.depth for a in fleet)

        await wait_for(all_handed, what="every message handed to the broker")
        handed = sum(a.outbox.handed_count for a in fleet)
        assert handed > 300
        broker.kill9()
        broker.start()
        await stream(fleet, 0.5, 0.01)
        async with ingest_running(cfg, repo):
            await until_all_confirmed(fleet, repo, timeout=60)
        await assert_exactly_once(fleet, repo)
        # What the broker lost came again from the agents.
        assert sum(a.uplink.resent for a in fleet) >= handed


async def test_an_agent_does_not_hold_messages_forever_for_a_collector_that_stopped_confirming(
    broker: Broker, tmp_path: Path, repo: SQLiteRepository, caplog: pytest.LogCaptureFixture
) -> None:
    import aiomqtt

    from fleet_protocol import PROTOCOL_VERSION, Ack, encode, topic
    from tests.support.mosquitto import COLLECTOR_USER

    dev = "dev-104"
    # A newer collector once confirmed this device (its retained ack is still on
    # the broker); then an older one, which never confirms, took its place.
    async with aiomqtt.Client(
        broker.host,
        broker.port,
        username=COLLECTOR_USER,
        password=broker.password(COLLECTOR_USER),
        identifier="collector-before",
    ) as c:
        ack = Ack(v=PROTOCOL_VERSION, device=dev, stored=[1])
        await c.publish(topic(dev, Kind.ACK), encode(ack), qos=1, retain=True)
    d = tmp_path / dev
    d.mkdir()
    cfg = load_config(
        write_config(
            d,
            broker,
            dev,
            outbox={
                "path": str(d / "outbox.sqlite"),
                "resend_after_s": 1.0,
                "confirm_fallback_s": 3.0,
            },
        )
    )
    box = await Outbox.open(cfg.outbox.path, device=dev, max_bytes=cfg.outbox.max_bytes)
    agent = StreamingAgent(dev, box, Uplink(cfg, box, _no_command))
    agent.task = asyncio.create_task(agent.uplink.run())
    caplog.set_level("INFO", logger="edge_agent.uplink")
    try:

        async def confirming() -> bool:
            return agent.uplink.confirming

        await wait_for(confirming, what="the retained ack taken as proof of confirmations")
        for _ in range(5):
            await agent.emit()

        async def held() -> bool:
            return box.handed_count == 5

        await wait_for(held, what="messages held for a confirmation")

        # No confirmation comes: after confirm_fallback_s of connected time the agent
        # takes PUBACKs as delivery again and lets the held messages go.
        async def fell_back() -> bool:
            return not agent.uplink.confirming and box.depth == 0

        await wait_for(fell_back, timeout=20, what="the fallback to PUBACK deletion")
        assert any("no store confirmation" in r.getMessage() for r in caplog.records)
        # The stale retained ack no longer counts (it comes again at every reconnect),
        # so new messages go on PUBACK from now on.
        for _ in range(3):
            await agent.emit()

        async def sent() -> bool:
            return box.depth == 0 and agent.uplink.published >= 8

        await wait_for(sent, what="new messages deleted on PUBACK")
        assert not agent.uplink.confirming
        # A live ack (a confirming collector is back) switches confirmations on again.
        cfg_c = make_config(broker, tmp_path, ingest={"ack_interval_s": 0.2})
        async with ingest_running(cfg_c, repo):
            await agent.emit()
            await wait_for(confirming, what="confirmations back on after a live ack")
    finally:
        agent.uplink.stop()
        await asyncio.wait_for(agent.task, 10)
        await box.aclose()
