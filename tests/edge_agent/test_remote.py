"""Remote commands at the agent: stale ones are not executed, forged ones never arrive.

A real agent process on a real Mosquitto; the power-cycle hook is a script
that writes a file, so "executed" is something the test can see on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import aiomqtt
import pytest

from edge_agent.remote import MAX_LIFETIME_S, stale_reason
from fleet_protocol import PROTOCOL_VERSION, Command, Reply
from tests.edge_agent.agent_support import (
    AgentProcess,
    collecting,
    reply_to,
    send_command,
    write_config,
)
from tests.support.mosquitto import Broker

pytestmark = pytest.mark.integration

DEVICE = "dev-001"


def _hook(tmp_path: Path) -> tuple[list[str], Path]:
    marker = tmp_path / "power-cycled"
    script = tmp_path / "power-cycle.sh"
    script.write_text(f'#!/bin/sh\necho cycled >> "{marker}"\necho "modem power cycled"\n')
    script.chmod(0o755)
    return [str(script)], marker


async def test_stale_or_undated_commands_are_not_executed(broker: Broker, tmp_path: Path) -> None:
    hook, marker = _hook(tmp_path)
    cfg = write_config(tmp_path, broker, DEVICE, recovery={"hook_command": hook})
    async with collecting(broker) as seen:
        with AgentProcess(cfg, tmp_path / "agent.log") as agent:
            await seen.wait_for(lambda s: s.states, what="agent up")
            now = time.time()
            await send_command(broker, DEVICE, "old", "power_cycle", expires=now - 5, confirm=True)
            await send_command(broker, DEVICE, "undated", "power_cycle", expires=None, confirm=True)
            far_ahead = now + MAX_LIFETIME_S + 3600
            await send_command(
                broker, DEVICE, "far", "power_cycle", expires=far_ahead, confirm=True
            )
            await send_command(broker, DEVICE, "unconfirmed", "power_cycle", expires=now + 60)
            old = await reply_to(seen, "old")
            assert (
                not old.ok
                and "expired at" in (old.error or "")
                and "not executed" in (old.error or "")
            )
            undated = await reply_to(seen, "undated")
            assert not undated.ok and "no 'expires'" in (undated.error or "")
            far = await reply_to(seen, "far")
            assert not far.ok and "days ahead" in (far.error or "")
            unconfirmed = await reply_to(seen, "unconfirmed")
            assert not unconfirmed.ok and "confirm=true" in (unconfirmed.error or "")
            assert not marker.exists()

            # The same command, in date and confirmed, does run: the test can see execution.
            await send_command(
                broker, DEVICE, "fresh", "power_cycle", expires=now + 60, confirm=True
            )
            fresh = await reply_to(seen, "fresh")
            assert fresh.ok and fresh.result["detail"].endswith("modem power cycled"), fresh
            assert marker.read_text().count("cycled") == 1
            assert "expired at" in agent.log()
            assert await asyncio.to_thread(agent.stop) == 0


@pytest.mark.parametrize("sender", [DEVICE, "dev-002"])
async def test_forged_command_from_device_credentials_is_refused_by_the_acl(
    broker: Broker, tmp_path: Path, sender: str
) -> None:
    hook, marker = _hook(tmp_path)
    cfg = write_config(tmp_path, broker, DEVICE, recovery={"hook_command": hook})
    async with collecting(broker) as seen:
        with AgentProcess(cfg, tmp_path / "agent.log") as agent:
            await seen.wait_for(lambda s: s.states, what="agent up")
            # MQTT 5: the broker answers the denied publish with PUBACK "not authorized".
            # (A 3.1.1 client is disconnected instead; either way nothing is routed.)
            for protocol in (aiomqtt.ProtocolVersion.V5, aiomqtt.ProtocolVersion.V311):
                with contextlib.suppress(aiomqtt.MqttError):
                    await send_command(
                        broker,
                        DEVICE,
                        "forged",
                        "power_cycle",
                        user=sender,
                        protocol=protocol,
                        confirm=True,
                    )
            # The collector's command, sent after the forged ones were PUBACKed, is answered;
            # by then the forged ones would have been too.
            await send_command(broker, DEVICE, "real", "status", expires=time.time() + 60)
            real = await reply_to(seen, "real")
            assert real.ok
            assert not [r for r in seen.of(Reply) if r.id == "forged"]
            assert not marker.exists()
            assert await asyncio.to_thread(agent.stop) == 0


def test_stale_reason_rules() -> None:
    def cmd(expires: float | None) -> Command:
        return Command(
            v=PROTOCOL_VERSION,
            device=DEVICE,
            seq=1,
            ts=1e9,
            id="x",
            action="status",
            expires=expires,
        )

    now = 1.7e9
    assert stale_reason(cmd(now + 10), now) is None
    assert stale_reason(cmd(now + MAX_LIFETIME_S), now) is None
    assert "expired" in (stale_reason(cmd(now - 0.001), now) or "")
    assert "no 'expires'" in (stale_reason(cmd(None), now) or "")
    assert "ahead" in (stale_reason(cmd(now + MAX_LIFETIME_S + 1000), now) or "")
