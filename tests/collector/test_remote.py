"""Remote commands end to end: the collector's API and CLI → Mosquitto → a real agent
process on the modem simulator → its reply back, with roles, timeouts and the audit log."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from collector.cli import main as collector_main
from collector.store.base import NotFound
from collector.store.sqlite import SQLiteRepository
from firmware_shims.modem.sim import SimProcess, running_modem
from tests.collector.conftest import make_config, wait_for
from tests.collector.test_api import Api, start_api
from tests.edge_agent.agent_support import AgentProcess, write_config
from tests.support.mosquitto import Broker

pytestmark = pytest.mark.integration

DEVICE = "dev-001"
#: A slow poll: only a fresh reading can see a change made just before the command.
MODEM = {"poll_s": 30.0, "timeout_s": 2.0, "dialect": "quectel"}


@pytest.fixture
async def api(broker: Broker, tmp_path: Path, repo: SQLiteRepository) -> AsyncIterator[Api]:
    """On each engine (``repo``)."""
    cfg = make_config(broker, tmp_path, fleet={"heartbeat_grace_s": 600.0})
    async for a in start_api(broker, tmp_path, cfg):
        yield a


@contextlib.asynccontextmanager
async def agent_on_modem(
    broker: Broker, tmp_path: Path, **sections: dict[str, object]
) -> AsyncIterator[tuple[AgentProcess, SimProcess]]:
    async with running_modem(tmp_path / "modem", dialect="quectel") as modem:
        cfg = write_config(
            tmp_path, broker, DEVICE, modem={"port": str(modem.link), **MODEM}, **sections
        )
        with AgentProcess(cfg, tmp_path / "agent.log") as agent:
            yield agent, modem


async def online(api: Api, device: str = DEVICE, want: bool = True, *, modem: bool = True) -> None:
    """Wait until the store has ``device`` online (with a modem report) or offline."""

    async def check() -> bool:
        try:
            d = await api.repo.get_device(device)
        except NotFound:
            return False
        report = d.last_report or {}
        return d.online is want and (not want or not modem or bool(report.get("modem")))

    await wait_for(check, timeout=30, what=f"{device} online={want} in the store")


async def command(api: Api, user: str, action: str, **body: object) -> tuple[int, dict]:
    status, data = await api.call(
        user, "POST", f"/api/v1/devices/{DEVICE}/commands", json={"action": action, **body}
    )
    assert isinstance(data, dict), data
    return status, data


async def test_remote_diag_returns_fresh_readings_and_is_audited(
    api: Api, broker: Broker, tmp_path: Path
) -> None:
    async with agent_on_modem(broker, tmp_path) as (agent, modem):
        await online(api)
        status, first = await command(api, "tech", "status")
        assert status == 200 and first["ok"], (first, agent.log()[-3000:])
        assert first["result"]["device"] == DEVICE
        assert first["result"]["readings"]["modem"]["registration"] == "home"

        # The modem loses its network now; the agent's next poll is 30 s away.
        await modem.set("denied")
        before = time.time()
        status, diag = await command(api, "tech", "diag")
        assert status == 200 and diag["ok"], diag
        fresh = diag["result"]["readings"]["modem"]
        assert fresh["state"]["registration"] == "denied"
        assert fresh["ts"] >= before - 1.0
        assert "faults" in diag["result"]

        status, at = await command(api, "admin", "at", args={"command": "AT+CSQ"})
        assert status == 200 and at["ok"] and at["result"]["final"] == "OK", at
        # From the district only reading AT commands run, even with "force".
        status, cfun = await command(
            api, "admin", "at", args={"command": "AT+CFUN=1,1", "force": True}
        )
        assert status == 200 and not cfun["ok"] and "changes the modem" in cfun["error"]

        # The recovery actions need an explicit confirmation.
        status, refused = await command(api, "tech", "soft_reset")
        assert status == 400 and "confirm" in refused["error"]
        status, reset = await command(api, "tech", "soft_reset", confirm=True)
        assert status == 200 and reset["ok"], reset
        assert reset["result"]["detail"].endswith(": OK"), reset
        # Like the ladder's own steps, the remote soft reset is a recovery event.
        await wait_for(
            lambda: _has_event(api, "recovery", "modem_soft_reset"), what="recovery event"
        )

        # Viewers and commune officers may not send commands.
        for user in ("viewer", "officer1"):
            status, _ = await command(api, user, "status")
            assert status in (403, 404), user
        status, bad = await command(api, "tech", "reboot")
        assert status == 400 and bad["field"] == "action"

        # The result is kept, listed, and every command is in the audit log with its result.
        status, got = await api.call("tech", "GET", f"/api/v1/commands/{diag['id']}")
        assert status == 200 and got["state"] == "replied" and got["actor"] == "tech"
        status, listed = await api.call("tech", "GET", f"/api/v1/devices/{DEVICE}/commands")
        assert [c["action"] for c in listed["commands"]][:2] == ["soft_reset", "at"]
        audit = await api.repo.audit_log()
        actions = [a["action"] for a in audit]
        for action in ("remote.status", "remote.diag", "remote.at", "remote.soft_reset"):
            assert action in actions and f"{action}.result" in actions, actions
        result = next(a for a in audit if a["action"] == "remote.diag.result")
        assert result["detail"]["ok"] is True and result["detail"]["id"] == diag["id"]
        assert await asyncio.to_thread(agent.stop) == 0


async def test_cli_sends_a_command_through_the_api(
    api: Api, broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "collector.toml"
    conf.write_text(f'[db]\npath = "{tmp_path / "collector.db"}"\n')
    token = tmp_path / "token"
    token.write_text(api.tokens["tech"] + "\n")
    url = str(api.client.make_url("/"))
    base = ["remote", "--config", str(conf), "--url", url, "--token-file", str(token)]
    async with agent_on_modem(broker, tmp_path) as (agent, _modem):
        await online(api)
        rc = await asyncio.to_thread(collector_main, [*base, DEVICE, "at", "AT+CSQ"])
        out = capsys.readouterr()
        assert rc == 0, out.err
        assert "replied" in out.out and '"final": "OK"' in out.out
        rc = await asyncio.to_thread(collector_main, [*base, DEVICE, "power_cycle"])
        assert rc == 1 and "confirm" in capsys.readouterr().err
        viewer = tmp_path / "viewer-token"
        viewer.write_text(api.tokens["viewer"])
        args = ["remote", "--config", str(conf), "--url", url, "--token-file", str(viewer)]
        rc = await asyncio.to_thread(collector_main, [*args, DEVICE, "status"])
        assert rc == 1 and "HTTP 403" in capsys.readouterr().err
        push = ["config-push", *base[1:], "--device", DEVICE, "--set", "reports.heartbeat_s=6.0"]
        rc = await asyncio.to_thread(collector_main, [*push, "--deadline", "60"])
        out = capsys.readouterr()
        assert rc == 0, out.err
        assert "{'accepted': 1}" in out.out and f"{DEVICE}\treplied\t" in out.out
        await wait_for(
            lambda: _has_event(api, "config_applied", "config"), timeout=40, what="applied"
        )
        assert await asyncio.to_thread(agent.stop) == 0


async def test_offline_device_times_out_is_refused_or_queued(
    api: Api, broker: Broker, tmp_path: Path
) -> None:
    async with agent_on_modem(broker, tmp_path) as (agent, _modem):
        await online(api)
        # A hung controller: its TCP link stays up, so the broker and the
        # collector still count it online, but nothing answers.
        os.kill(agent.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            status, hung = await command(api, "tech", "status", wait_s=1.5)
            assert status == 504, hung
            assert hung["state"] == "unreachable"
            assert f"{DEVICE} did not answer within 1.5 s: unreachable" in hung["error"]
            assert time.monotonic() - started < 10
        finally:
            os.kill(agent.pid, signal.SIGCONT)
        # Woken up, the agent answers the late command (it has not expired): the
        # record keeps the reply.
        await wait_for(
            lambda: _state_is(api, hung["id"], "replied"), timeout=20, what="late reply recorded"
        )
        assert await asyncio.to_thread(agent.stop) == 0
        await online(api, want=False)

        # Offline now: refused unless the operator asks to queue it.
        status, refused = await command(api, "tech", "status")
        assert status == 409 and refused["state"] == "refused"
        assert "is offline" in refused["error"] and 'offline="queue"' in refused["error"]
        status, queued = await command(
            api, "tech", "status", offline="queue", expires_s=120, wait_s=0.5
        )
        assert status == 202 and queued["state"] == "queued", queued
        assert queued["expires_at"] == pytest.approx(time.time() + 120, abs=10)

        agent.start()  # back: the broker delivers the queued command from its session
        await wait_for(
            lambda: _state_is(api, queued["id"], "replied"), timeout=30, what="queued reply"
        )
        status, done = await api.call("tech", "GET", f"/api/v1/commands/{queued['id']}")
        assert done["ok"] and done["result"]["device"] == DEVICE
        audit = [a["action"] for a in await api.repo.audit_log()]
        assert audit.count("remote.status.result") >= 4  # unreachable, reply, refused, reply
        assert await asyncio.to_thread(agent.stop) == 0


async def _state_is(api: Api, command_id: str, state: str) -> bool:
    record = await api.repo.get_command(command_id)
    return record.state.value == state


async def _has_event(api: Api, type_: str, action: str, device: str = DEVICE) -> bool:
    events = await api.repo.list_events(device_id=device, limit=100)
    return any(e.type == type_ and e.action == action for e in events)


async def test_config_push_to_a_commune_is_applied_and_versions_shown(
    api: Api, broker: Broker, tmp_path: Path
) -> None:
    devices = ["dev-001", "dev-002"]
    agents = []
    for d in devices:
        (tmp_path / d).mkdir()
        agents.append(AgentProcess(write_config(tmp_path / d, broker, d), tmp_path / d / "log"))
    for a in agents:
        a.start()
    try:
        for d in devices:
            await online(api, d, modem=False)

        async def versions_shown() -> bool:
            # Online comes with the birth presence; the version with the first report.
            _, body = await api.call("viewer", "GET", "/api/v1/config/versions")
            return all(v["config_version"] for v in body["devices"] if v["device_id"] in devices)

        await wait_for(versions_shown, timeout=30, what="both config versions shown")
        status, before = await api.call("viewer", "GET", "/api/v1/config/versions")
        old = {v["device_id"]: v["config_version"] for v in before["devices"]}
        assert all(old[d] for d in devices), before
        # Viewers may look but not push; a whole agent.toml goes to one device only.
        status, _ = await api.call(
            "viewer", "POST", "/api/v1/config/push", json={"commune": "xa-test", "set": {}}
        )
        assert status == 403
        status, bad = await api.call(
            "tech", "POST", "/api/v1/config/push", json={"commune": "xa-test", "toml": "x"}
        )
        assert status == 400 and bad["field"] == "toml"
        status, pushed = await api.call(
            "tech",
            "POST",
            "/api/v1/config/push",
            json={"commune": "xa-test", "set": {"reports.heartbeat_s": 5.0}, "deadline_s": 60},
        )
        assert status == 200 and pushed["summary"] == {"accepted": 2}, pushed
        assert 0 < pushed["bytes_per_device"] < 200
        new = {r["device_id"]: r["result"]["version"] for r in pushed["devices"]}

        async def versions_changed() -> bool:
            _, now = await api.call("viewer", "GET", "/api/v1/config/versions?commune=xa-test")
            got = {v["device_id"]: v["config_version"] for v in now["devices"]}
            return all(got.get(d) == new[d] != old[d] for d in devices)

        await wait_for(versions_changed, timeout=60, what="new config versions reported")
        for d in devices:
            await wait_for(
                lambda d=d: _has_event(api, "config_applied", "config", d), what="config_applied"
            )
    finally:
        for a in agents:
            await asyncio.to_thread(a.stop)
