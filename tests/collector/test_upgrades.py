"""Agent upgrades end to end: a signed wheelhouse served by the collector, real agent
processes (under a systemd-like supervisor) on a real Mosquitto, staged rollouts."""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from collector import upgrades
from edge_agent.config import load_config
from edge_agent.upgrade import current_target
from tests.collector.conftest import make_config, wait_for
from tests.collector.test_api import Api, start_api
from tests.edge_agent.agent_support import write_config
from tests.support.mosquitto import Broker
from tests.support.supervisor import Supervisor
from tests.support.wheels import build_agent_wheel, crash_at_start

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

BASE_VENV = Path(sys.prefix)
BIN = Path(sys.executable).parent


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return upgrades.keygen(tmp_path / "keys")


@pytest.fixture
async def api(broker: Broker, tmp_path: Path, keys: tuple[Path, Path]) -> AsyncIterator[Api]:
    cfg = make_config(
        broker,
        tmp_path,
        upgrades={"dir": str(tmp_path / "upgrades"), "signing_key": str(keys[0])},
        remote={"wait_s": 20.0, "max_wait_s": 120.0},
    )
    async for a in start_api(broker, tmp_path, cfg):
        yield a


@dataclass
class Device:
    id: str
    root: Path
    config: Path
    supervisor: Supervisor


async def commune(broker: Broker, tmp_path: Path, pub: Path, n: int) -> list[Device]:
    """``n`` agents of commune xa-test, each under its own supervisor and upgrade root."""
    out = []
    for i in range(1, n + 1):
        device = f"dev-00{i}"
        home = tmp_path / device
        home.mkdir()
        root = home / "root"
        root.mkdir()
        (root / "current").symlink_to(BASE_VENV)  # as install-agent.sh leaves it
        cfg = write_config(
            home,
            broker,
            device,
            upgrade={
                "public_key": str(pub),
                "root": str(root),
                "base_venv": str(BASE_VENV),
                "python": sys._base_executable,
                "health_deadline_s": 60.0,
                "max_attempts": 2,
            },
        )
        sup = Supervisor(
            [str(BIN / "loa-agent"), "upgrade-guard", "--config", str(cfg)],
            [str(root / "current" / "bin" / "loa-agent"), "run", "--config", str(cfg)],
            home / "agent.log",
            cwd=home,
        )
        out.append(Device(device, root, cfg, sup.begin()))
    return out


async def versions(api: Api) -> dict[str, Any]:
    _, data = await api.call("viewer", "GET", "/api/v1/config/versions")
    return {v["device_id"]: v["agent_version"] for v in data["devices"]}


async def all_reporting(api: Api, devices: list[Device], version: str) -> None:
    async def check() -> bool:
        got = await versions(api)
        return all(got.get(d.id) == version for d in devices)

    await wait_for(check, timeout=60, what=f"every device on {version}")


async def rollout_state(api: Api, rid: str, *states: str) -> dict[str, Any]:
    result: dict[str, Any] = {}

    async def check() -> bool:
        nonlocal result
        _, result = await api.call("admin", "GET", f"/api/v1/upgrades/rollouts/{rid}")
        return result["state"] in states

    await wait_for(check, timeout=150, what=f"rollout {states}")
    return result


async def test_good_upgrade_rolls_out_canary_first_across_a_commune(
    api: Api, broker: Broker, tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    wheel = build_agent_wheel(tmp_path / "wheels", "0.1.1")
    art = upgrades.add_artifact(tmp_path / "upgrades", keys[0], "0.1.1", [wheel])
    devices = await commune(broker, tmp_path, keys[1], 3)
    try:
        await all_reporting(api, devices, "0.1.0")
        # The cost first: bytes per device and for the commune, before anything is sent.
        status, plan = await api.call(
            "admin", "GET", "/api/v1/upgrades/0.1.1/plan?commune=xa-test&canaries=dev-002"
        )
        assert status == 200, plan
        assert plan["bytes_per_device"] == art.size and plan["devices"] == 3
        assert plan["total_bytes"] == 3 * art.size
        assert plan["canaries"] == ["dev-002"] and sorted(plan["rest"]) == ["dev-001", "dev-003"]
        status, _ = await api.call("tech", "GET", "/api/v1/upgrades/0.1.1/plan")
        assert status == 403  # upgrades are for admins

        status, started = await api.call(
            "admin",
            "POST",
            "/api/v1/upgrades/rollouts",
            json={"version": "0.1.1", "commune": "xa-test", "canaries": ["dev-002"]},
        )
        assert status == 202 and started["total_bytes"] == 3 * art.size, started
        done = await rollout_state(api, started["id"], "done", "halted")
        assert done["state"] == "done" and not done["reason"], done
        await all_reporting(api, devices, "0.1.1")
        # Canary first: the others were sent the upgrade only after it came back healthy.
        canary_ok = done["devices"]["dev-002"]["at"]
        commands = {d.id: await api.repo.list_commands(d.id) for d in devices}
        for d in ("dev-001", "dev-003"):
            sent = [c for c in commands[d] if c.action == "upgrade"]
            assert len(sent) == 1 and sent[0].created_at >= canary_ok - 0.01
        for d in devices:
            assert current_target(load_config(d.config).upgrade) == d.root / "venvs" / "0.1.1"  # type: ignore[arg-type]
            assert not (d.root / "upgrade.pending").exists()
            events = await api.repo.list_events(device_id=d.id, limit=200)
            assert any(e.type == "upgrade_applied" for e in events), d.id
        audit = [a["action"] for a in await api.repo.audit_log()]
        assert {"upgrade.start", "upgrade.canaries_ok", "upgrade.done"} <= set(audit)
        # The download link was a capability for this rollout only.
        async with api.client.get(f"/upgrades/download/{'x' * 32}/0.1.1.tar") as resp:
            assert resp.status == 404
    finally:
        for d in devices:
            await d.supervisor.stop()


async def test_upgrade_that_crashes_at_start_rolls_back_and_halts_the_rollout(
    api: Api, broker: Broker, tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    wheel = build_agent_wheel(tmp_path / "wheels", "0.1.2", {"edge_agent/cli.py": crash_at_start})
    upgrades.add_artifact(tmp_path / "upgrades", keys[0], "0.1.2", [wheel])
    devices = await commune(broker, tmp_path, keys[1], 2)
    try:
        await all_reporting(api, devices, "0.1.0")
        status, started = await api.call(
            "admin",
            "POST",
            "/api/v1/upgrades/rollouts",
            json={"version": "0.1.2", "commune": "xa-test", "canaries": ["dev-001"]},
        )
        assert status == 202, started
        halted = await rollout_state(api, started["id"], "done", "halted")
        assert halted["state"] == "halted" and "dev-001" in halted["reason"], halted
        assert "rolled back" in halted["devices"]["dev-001"]["error"]
        canary = devices[0]
        # The guard put the old environment back after the crashes; the old agent said so.
        assert current_target(load_config(canary.config).upgrade) == BASE_VENV  # type: ignore[arg-type]
        assert "crashed at start (test wheel)" in canary.supervisor.log_text()
        events = await api.repo.list_events(device_id="dev-001", limit=200)
        rolled = [e for e in events if e.type == "upgrade_rolled_back"]
        assert rolled and "0.1.2 -> 0.1.0" in (rolled[0].detail or "")
        assert (await versions(api))["dev-001"] == "0.1.0"
        # The rest never got it.
        assert not [c for c in await api.repo.list_commands("dev-002") if c.action == "upgrade"]
    finally:
        for d in devices:
            await d.supervisor.stop()


async def test_a_badly_signed_upgrade_is_refused_and_nothing_changes(
    api: Api, broker: Broker, tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    wheel = build_agent_wheel(tmp_path / "wheels", "0.1.3")
    other, _ = upgrades.keygen(tmp_path / "other-keys")  # not the key devices trust
    upgrades.add_artifact(tmp_path / "upgrades", other, "0.1.3", [wheel])
    devices = await commune(broker, tmp_path, keys[1], 1)
    try:
        await all_reporting(api, devices, "0.1.0")
        status, started = await api.call(
            "admin",
            "POST",
            "/api/v1/upgrades/rollouts",
            json={"version": "0.1.3", "device": "dev-001"},
        )
        assert status == 202, started
        halted = await rollout_state(api, started["id"], "done", "halted")
        assert halted["state"] == "halted"
        assert "signature check failed" in halted["devices"]["dev-001"]["error"]
        assert not (devices[0].root / "venvs").exists()
        assert current_target(load_config(devices[0].config).upgrade) == BASE_VENV  # type: ignore[arg-type]
    finally:
        for d in devices:
            await d.supervisor.stop()
    assert time.time() > 0
