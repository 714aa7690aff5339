"""Configuration from the district, at a real agent process on a real Mosquitto:
validated before anything is written, applied atomically, kept only if the agent
comes back healthy, otherwise rolled back by the agent itself."""

from __future__ import annotations

import asyncio
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config import parse_config
from edge_agent.control import ControlRequestError
from edge_agent.remote import config_version
from edge_agent.remote_config import validate_text
from fleet_protocol import EventType
from tests.edge_agent.agent_support import (
    AgentProcess,
    Seen,
    collecting,
    reply_to,
    send_command,
    write_config,
)
from tests.support.mosquitto import Broker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

DEVICE = "dev-001"


def _events(seen: Seen, type_: EventType) -> list[Any]:
    return [e for e in seen.events if e.type == type_]


async def test_good_config_is_applied_and_reported(broker: Broker, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, broker, DEVICE)
    old = config_version(cfg)
    async with collecting(broker) as seen:
        with AgentProcess(cfg, tmp_path / "agent.log") as agent:
            pid = agent.pid
            await seen.wait_for(lambda s: s.states, what="agent up")
            assert seen.states[0].config_version == old and seen.states[0].agent_version

            await send_command(
                broker, DEVICE, "c1", "config", set={"reports.heartbeat_s": 4.0}, deadline_s=60
            )
            reply = await reply_to(seen, "c1")
            assert reply.ok and reply.result["restarting"], (reply.error, agent.log()[-2000:])
            new = reply.result["version"]
            assert new != old and reply.result["previous"] == old
            applied = await seen.wait_for(
                lambda s: _events(s, EventType.CONFIG_APPLIED), timeout=40, what="config_applied"
            )
            assert applied[0].detail == f"{old} -> {new}"
            await seen.wait_for(
                lambda s: any(r.config_version == new for r in s.states), what="new version"
            )
            # Restarted in place (same PID, as systemd sees it), with the file changed
            # atomically, the comments kept, the previous one kept, the trial settled.
            assert agent.pid == pid and agent.proc is not None and agent.proc.poll() is None
            text = cfg.read_text()
            assert "heartbeat_s = 4.0" in text and config_version(cfg) == new
            assert (tmp_path / "agent.toml.prev").read_text().count("heartbeat_s = 3.0") == 1
            assert not (tmp_path / "agent.toml.pending").exists()
            assert [e.detail for e in _events(seen, EventType.AGENT_STOP)] == ["restart"]
            assert await asyncio.to_thread(agent.stop) == 0


async def test_bad_configs_are_refused_before_anything_is_written(
    broker: Broker, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path, broker, DEVICE)
    before = cfg.read_bytes()
    async with collecting(broker) as seen:
        with AgentProcess(cfg, tmp_path / "agent.log") as agent:
            await seen.wait_for(lambda s: s.states, what="agent up")
            cases = {
                "toml": ({"toml": "[device\nid = 'x'"}, "not valid TOML"),
                "field": ({"set": {"system.timeout_s": 9.0}}, "system.timeout_s"),
                "unknown": ({"set": {"system.pol_s": 9.0}}, "system.pol_s"),
                "id": ({"set": {"device.id": "dev-999"}}, "device.id is set by provisioning"),
                "none": ({}, "send 'toml'"),
            }
            for cid, (args, _words) in cases.items():
                await send_command(broker, DEVICE, cid, "config", **args)
            for cid, (_args, words) in cases.items():
                reply = await reply_to(seen, cid)
                assert not reply.ok and words in (reply.error or ""), (cid, reply.error)
            assert cfg.read_bytes() == before
            assert not (tmp_path / "agent.toml.prev").exists()
            assert not _events(seen, EventType.AGENT_STOP)
            assert await asyncio.to_thread(agent.stop) == 0


async def test_config_the_broker_refuses_is_rolled_back_and_the_device_returns(
    broker: Broker, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path, broker, DEVICE)
    old = config_version(cfg)
    async with collecting(broker) as seen:
        with AgentProcess(cfg, tmp_path / "agent.log") as agent:
            await seen.wait_for(lambda s: s.states, what="agent up")
            # Valid for the parser, refused by the broker: another user name.
            await send_command(
                broker,
                DEVICE,
                "c1",
                "config",
                set={"broker.username": "nobody-here"},
                deadline_s=10,
            )
            reply = await reply_to(seen, "c1")
            assert reply.ok and reply.result["restarting"], reply.error
            bad = reply.result["version"]
            rolled = await seen.wait_for(
                lambda s: _events(s, EventType.CONFIG_ROLLED_BACK),
                timeout=60,
                what="config_rolled_back",
            )
            assert rolled[0].detail.startswith(f"{bad} -> {old}: not healthy before the deadline")
            await seen.wait_for(
                lambda s: s.states and s.states[-1].config_version == old, what="old version"
            )
            assert config_version(cfg) == old
            assert not (tmp_path / "agent.toml.pending").exists()
            assert not _events(seen, EventType.CONFIG_APPLIED)
            assert "config rolled back" in agent.log()
            assert await asyncio.to_thread(agent.stop) == 0


async def test_a_trial_past_its_deadline_is_rolled_back_at_start(
    broker: Broker, tmp_path: Path
) -> None:
    """A config that crashed the agent until systemd restarted it past the deadline."""
    cfg = write_config(tmp_path, broker, DEVICE)
    good = cfg.read_text()
    old = config_version(cfg)
    (tmp_path / "agent.toml.prev").write_text(good)
    cfg.write_text(good.replace('log_level = "DEBUG"', 'log_level = "NOPE"'))
    (tmp_path / "agent.toml.pending").write_text(
        f'{{"version": "bad", "previous": "{old}", "deadline": {time.time() + 600}}}'
    )
    async with collecting(broker) as seen:
        # Does not even load: rolled back at once, deadline or not.
        with AgentProcess(cfg, tmp_path / "agent.log") as agent:
            rolled = await seen.wait_for(
                lambda s: _events(s, EventType.CONFIG_ROLLED_BACK), what="rolled back"
            )
            assert "does not load" in (rolled[0].detail or "")
            assert cfg.read_text() == good
            assert await asyncio.to_thread(agent.stop) == 0


def test_sms_trust_anchors_cannot_be_pushed_but_its_limits_can(tmp_path: Path) -> None:
    """The SMS number and key come from provisioning: a push that redirected the
    fault SMS to another number would spend the SIM's credit on it."""
    key = tmp_path / "sms.key"
    key.write_text("00" * 32 + "\n")

    def toml(**sms: object) -> str:
        values = {"number": '"+84912000000"', "key_file": f'"{key}"', **sms}
        return "\n".join(
            [
                '[device]\nid = "dev-001"\ncommune = "xa-test"',
                '[broker]\nurl = "mqtt://127.0.0.1:1883"',
                f'[modem]\nport = "{tmp_path / "ttyUSB2"}"',
                "[sms]",
                *(f"{k} = {v}" for k, v in values.items()),
            ]
        )

    running = validate_text(toml(), parse_config(tomllib.loads(toml())))
    assert validate_text(toml(max_per_day=1, after_s=1800.0), running).sms.max_per_day == 1  # type: ignore[union-attr]
    other_key = tmp_path / "other.key"
    other_key.write_text("11" * 32 + "\n")
    refused = {
        "number": toml(number='"+84999999999"'),
        "key_file": toml(key_file=f'"{other_key}"'),
        "removed": "\n".join(toml().split("\n")[:-3]),
    }
    for what, text in refused.items():
        with pytest.raises(ControlRequestError, match=r"sms\.(number|key_file)") as err:
            validate_text(text, running)
        assert "set by provisioning" in str(err.value), what
