"""The agent as a real process (``loa-agent run``) against a real Mosquitto."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edge_agent import control
from fleet_protocol import EventType, PresenceStatus
from tests.edge_agent.agent_support import AgentProcess, collecting, seqs, write_config
from tests.support.mosquitto import Broker

pytestmark = pytest.mark.integration


async def test_start_reports_then_sigterm_flushes_and_says_offline(
    broker: Broker, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path, broker)
    async with collecting(broker) as seen:
        with AgentProcess(cfg, tmp_path / "agent.log") as agent:
            await seen.wait_for(
                lambda s: any(p.status == PresenceStatus.ONLINE for p in s.presence), what="birth"
            )
            await seen.wait_for(
                lambda s: any(e.type == EventType.AGENT_START for e in s.events), what="start"
            )
            first = await seen.wait_for(lambda s: s.states, what="state report")
            assert first[0].system is not None and first[0].system.boot_id
            assert first[0].commune == "xa-test"

            reply = await control.request(tmp_path / "control.sock", "status")
            assert reply["ok"], reply
            status = reply["result"]
            assert status["device"] == "dev-001"
            assert status["link"]["connected"] is True
            assert "system" in status["readings"]
            assert (tmp_path / "control.sock").stat().st_mode & 0o777 == 0o660

            bad = await control.request(tmp_path / "control.sock", "frobnicate", id=7)
            assert bad == {
                "id": 7,
                "ok": False,
                "error": bad["error"],
                "code": "unknown_op",
            }

            rc = await asyncio.to_thread(agent.stop)
            assert rc == 0, agent.log()
        await seen.wait_for(
            lambda s: any(e.type == EventType.AGENT_STOP for e in s.events), what="stop event"
        )
        await seen.wait_for(
            lambda s: s.presence and s.presence[-1].status == PresenceStatus.OFFLINE,
            what="offline presence",
        )
        data = [m for m in seen.messages if m not in seen.presence]
        assert seqs(data) == sorted(set(seqs(data)))
        # The final state report precedes the stop event.
        kinds = [type(m).__name__ for m in data]
        assert kinds[-2:] == ["StateReport", "Event"]
