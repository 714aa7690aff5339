"""The agent through a broker outage, kill -9 and an unplugged modem (real processes)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from edge_agent import control
from firmware_shims.modem.sim import running_modem
from fleet_protocol import EventType, FaultCode, Message, Presence, PresenceStatus
from tests.edge_agent.agent_support import AgentProcess, Seen, collecting, write_config
from tests.support.mosquitto import Broker

pytestmark = pytest.mark.integration

#: A steady stream of messages: a heartbeat every 0.3 s.
BUSY = {"reports": {"heartbeat_s": 0.3, "full_report_s": 2.0}}


def _will_seqs(*logs: str) -> set[int]:
    return {int(m) for log in logs for m in re.findall(r"last will seq (\d+)", log)}


def _last_reserved(outbox: Path) -> str:
    """After a kill -9: the newest seq the outbox handed out, as a log line.

    A connect attempt commits its will seq, then logs it; a kill between the two
    leaves that one seq used but unlogged (never a message: data seqs are stored
    with their message). Only the newest seq can be in that state.
    """
    with contextlib.closing(sqlite3.connect(outbox)) as db:
        (next_seq,) = db.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()
    return f"killed with last will seq {int(next_seq) - 1} possibly unlogged"


def check_delivery(seen: Seen, *logs: str) -> list[int]:
    """No loss, order kept: the data seqs seen, deduplicated in arrival order, must be
    increasing, and every seq missing between first and last must be a presence message
    (birth/offline, seen) or a last will that was never needed (its seq is in the logs)."""
    data: list[Message] = [m for m in seen.messages if not isinstance(m, Presence)]
    first_arrivals: list[int] = []
    for m in data:
        if m.seq not in first_arrivals:
            first_arrivals.append(m.seq)
    assert first_arrivals == sorted(first_arrivals), "order not kept"
    expected = set(range(first_arrivals[0], first_arrivals[-1] + 1))
    presence = {p.seq for p in seen.presence}
    missing = expected - set(first_arrivals) - presence - _will_seqs(*logs)
    assert not missing, f"lost seqs: {sorted(missing)[:20]}"
    return first_arrivals


async def _status(sock: Path) -> dict[str, object]:
    reply = await control.request(sock, "status")
    assert reply["ok"], reply
    result = reply["result"]
    assert isinstance(result, dict)
    return result


async def _until(predicate: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    """Poll the agent's control socket until ``predicate`` holds (it has no push API)."""
    for _ in range(int(timeout / 0.1)):
        if await predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"condition not met within {timeout} s")


@pytest.mark.timeout(120)
async def test_broker_outage_loses_nothing_and_keeps_order(broker: Broker, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, broker, **BUSY)
    sock = tmp_path / "control.sock"
    async with collecting(broker) as seen:
        with AgentProcess(cfg, tmp_path / "agent.log") as agent:
            await seen.wait_for(lambda s: len(s.states) >= 3, what="first reports")
            await asyncio.to_thread(broker.stop)

            async def backlog() -> bool:
                ob = (await _status(sock))["outbox"]
                assert isinstance(ob, dict)
                return int(ob["depth"]) >= 10

            await _until(backlog)
            status = await _status(sock)
            assert status["link"]["connected"] is False  # type: ignore[index]
            before = len(seen.messages)
            await asyncio.to_thread(broker.start)

            async def drained() -> bool:
                s = await _status(sock)
                return bool(s["link"]["connected"]) and s["outbox"]["depth"] <= 2  # type: ignore[index]

            await _until(drained)
            # New reports keep flowing behind the backlog.
            await seen.wait_for(lambda s: len(s.messages) >= before + 15, what="backlog + new")
            assert await asyncio.to_thread(agent.stop) == 0
        await seen.wait_for(
            lambda s: any(e.type == EventType.AGENT_STOP for e in s.events), what="stop"
        )
        arrivals = check_delivery(seen, agent.log())
        assert len(arrivals) >= 15


@pytest.mark.timeout(120)
async def test_kill_9_mid_run_and_restart_loses_nothing(broker: Broker, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, broker, **BUSY)
    sock = tmp_path / "control.sock"
    logs: list[str] = []
    async with collecting(broker) as seen:
        # 1. Killed while connected: the broker publishes the retained last will.
        agent = AgentProcess(cfg, tmp_path / "agent1.log").start()
        try:
            await seen.wait_for(lambda s: len(s.states) >= 3, what="first reports")
            agent.kill9()
            logs.append(_last_reserved(tmp_path / "outbox.sqlite"))
        finally:
            logs.append(agent.log())
        await seen.wait_for(
            lambda s: s.presence and s.presence[-1].status == PresenceStatus.OFFLINE,
            what="last will",
        )
        assert seen.presence[-1].seq in _will_seqs(*logs)
        # 2. Killed while the broker is away, with a backlog in the outbox.
        await asyncio.to_thread(broker.stop)
        agent = AgentProcess(cfg, tmp_path / "agent2.log").start()
        try:

            async def backlog() -> bool:
                try:
                    return int((await _status(sock))["outbox"]["depth"]) >= 10  # type: ignore[index]
                except OSError:
                    return False

            await _until(backlog)
            agent.kill9()
            logs.append(_last_reserved(tmp_path / "outbox.sqlite"))
        finally:
            logs.append(agent.log())
        await asyncio.to_thread(broker.start)
        # 3. Restarted: the backlog drains, then new reports follow.
        with AgentProcess(cfg, tmp_path / "agent3.log") as agent3:
            await seen.wait_for(
                lambda s: sum(e.type == EventType.AGENT_START for e in s.events) >= 3,
                what="third start",
            )
            await seen.wait_for(lambda s: len(s.states) >= 30, what="backlog and new reports")
            assert await asyncio.to_thread(agent3.stop) == 0
            logs.append(agent3.log())
        await seen.wait_for(
            lambda s: any(e.type == EventType.AGENT_STOP for e in s.events), what="stop"
        )
        check_delivery(seen, *logs)


@pytest.mark.timeout(120)
async def test_unplugged_modem_is_reopened_when_it_comes_back(
    broker: Broker, tmp_path: Path
) -> None:
    link = tmp_path / "modem"
    async with collecting(broker) as seen:
        async with running_modem(link, dialect="generic") as modem:
            cfg = write_config(
                tmp_path,
                broker,
                modem={"port": str(link), "dialect": "generic", "poll_s": 0.5, "timeout_s": 0.4},
            )
            agent = AgentProcess(cfg, tmp_path / "agent.log").start()
            await seen.wait_for(
                lambda s: any(r.modem and r.modem.responding for r in s.states), what="modem"
            )
        assert not link.exists()  # the pty is gone, as when a USB modem drops off the bus
        try:
            await seen.wait_for(
                lambda s: any(
                    e.type == EventType.FAULT_RAISED
                    and e.fault
                    and e.fault.code == FaultCode.MODEM_UNRESPONSIVE
                    for e in s.events
                ),
                what="modem_unresponsive",
            )
            async with running_modem(link, dialect="generic") as modem:
                assert modem.link == link
                await seen.wait_for(
                    lambda s: any(
                        e.type == EventType.FAULT_CLEARED
                        and e.fault
                        and e.fault.code == FaultCode.MODEM_UNRESPONSIVE
                        for e in s.events
                    ),
                    what="modem back",
                )
                assert seen.states[-1].modem and seen.states[-1].modem.responding
                assert await asyncio.to_thread(agent.stop) == 0
        finally:
            if agent.proc is not None:
                agent.proc.kill()
                agent.proc.wait()
