"""The agent's SMS fallback: the real agent, its modem on a pty (pyserial), the
district's modem on another pty, and the simulated SMS centre between them.

The broker URL points at a port nothing listens on: the data link is down, as
with a barred APN, while the modem stays registered and SMS works.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig, SmsConfig, parse_config
from edge_agent.sms import SmsRecord, should_send
from firmware_shims.modem.sim import ModemEngine, PtyModem, SimOptions
from firmware_shims.modem.smsc import SmsCentre
from fleet_protocol import Fault, FaultCode, ModemState, RegState, SimState
from fleet_protocol.sms import decode_fault_sms, sms_key
from tests.support.mosquitto import free_port

pytestmark = pytest.mark.timeout(90)
AGENT_NO, DISTRICT_NO = "+84961000001", "+84912000000"
SECRET = b"district-secret"


def _cfg(tmp_path: Path, link: Path, **sms: Any) -> AgentConfig:
    key = tmp_path / "sms.key"
    if not key.exists():
        key.write_text(sms_key(SECRET, "dev-sms-01").hex() + "\n")
    return parse_config(
        {
            "device": {"id": "dev-sms-01", "commune": "xa-test"},
            "broker": {
                "url": f"mqtt://127.0.0.1:{free_port()}",
                "connect_timeout_s": 0.5,
                "backoff_max_s": 0.3,
            },
            "modem": {"port": str(link), "dialect": "quectel", "poll_s": 1.0, "timeout_s": 0.25},
            "system": {"poll_s": 0.5, "timeout_s": 0.4, "disk_path": str(tmp_path)},
            "outbox": {"path": str(tmp_path / "outbox.sqlite")},
            "control": {"socket": ""},
            "diagnosis": {"confirm_s": 0.5, "clear_s": 0.5, "weak_signal_confirm_s": 0.5},
            "sms": {
                "number": DISTRICT_NO,
                "key_file": str(key),
                "after_s": 0.8,
                "check_s": 0.1,
                "state_file": str(tmp_path / "sms.json"),
                **sms,
            },
        }
    )


@dataclass
class Site:
    centre: SmsCentre
    agent_modem: PtyModem
    district: ModemEngine

    def received(self) -> list[str]:
        return [s.text for s in self.centre.submitted if s.to == DISTRICT_NO]


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    centre = SmsCentre()
    engine = ModemEngine("quectel", options=SimOptions(urc_rate=0.0, seed=3))
    district = ModemEngine("simcom", options=SimOptions(urc_rate=0.0, seed=4))
    centre.attach(engine, AGENT_NO)
    centre.attach(district, DISTRICT_NO)
    async with PtyModem(engine, tmp_path / "modem") as pty:
        yield Site(centre, pty, district)


@contextlib.asynccontextmanager
async def running(cfg: AgentConfig) -> AsyncIterator[Agent]:
    agent = Agent(cfg, shutdown_timeout=1.0)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        yield agent
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def until(cond: Callable[[], Any], timeout: float = 20.0, what: str = "") -> None:
    """Poll ``cond`` (simulator state has no event to wait on) until true."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what or cond}"
        await asyncio.sleep(0.05)


async def test_one_sms_per_change_of_faults_then_the_daily_cap(tmp_path: Path, site: Site) -> None:
    cfg = _cfg(tmp_path, site.agent_modem.link, max_per_day=2)
    async with running(cfg) as agent:
        await until(lambda: len(site.received()) == 1, what="first SMS")
        first = decode_fault_sms(site.received()[0])
        assert first.device == "dev-sms-01" and first.faults == ()
        assert first.verify(sms_key(SECRET, "dev-sms-01"))
        # Its seq is a real outbox message (the heartbeat the MQTT copy will be).
        assert first.seq in {p.seq for p in await agent.outbox.all()}  # type: ignore[union-attr]
        assert first.outbox is not None and first.outbox[0] <= first.seq <= first.outbox[1]
        # The same faults are not texted again however long the outage lasts.
        polls = agent.pollers[0].polls
        await until(lambda: agent.pollers[0].polls >= polls + 5, what="five more polls")
        assert len(site.received()) == 1
        # A change of the active faults is texted once.
        site.agent_modem.engine.faults.set("weak_signal")
        await until(lambda: len(site.received()) == 2, what="second SMS")
        second = decode_fault_sms(site.received()[1])
        assert [c for c, _ in second.faults] == [FaultCode.WEAK_SIGNAL]
        assert second.seq > first.seq
        # The next change would be a third SMS today: over max_per_day.
        site.agent_modem.engine.faults.clear("weak_signal")
        await until(lambda: not agent.faults, what="weak signal cleared")
        await until(lambda: agent.sms.last_reason == "daily SMS limit reached")
        assert len(site.received()) == 2
        # Polling went on through the sends: the port lock is shared, not held.
        assert agent.pollers[0].failures == 0
    # A restart does not reset the count: still capped.
    async with running(cfg) as agent:
        await until(
            lambda: agent.sms is not None and agent.sms.last_reason == "daily SMS limit reached"
        )
        assert len(site.received()) == 2
    assert len(SmsRecord.load(cfg.sms.state_file).sent) == 2  # type: ignore[union-attr]


async def test_no_sms_when_the_sim_is_dead(tmp_path: Path, site: Site) -> None:
    site.agent_modem.engine.faults.set("sim_failure")
    cfg = _cfg(tmp_path, site.agent_modem.link)
    async with running(cfg) as agent:
        await until(lambda: any(f.code == FaultCode.SIM_FAILURE for f in agent.faults))
        await until(lambda: "SIM" in (agent.sms.last_reason or ""))
    assert site.received() == []


async def test_sms_fails_then_goes_when_the_centre_answers(tmp_path: Path, site: Site) -> None:
    """No SMS centre (+CMS ERROR: 330): not recorded as sent, retried, sent once it works."""
    endpoint = site.agent_modem.engine.sms
    endpoint.centre = None
    cfg = _cfg(tmp_path, site.agent_modem.link)
    async with running(cfg) as agent:
        await until(lambda: agent.sms is not None and agent.sms.failures >= 2, what="failures")
        assert "330" in (agent.sms.last_error or "")
        endpoint.centre = site.centre
        await until(lambda: len(site.received()) == 1, what="SMS after the centre returned")
        assert agent.sms.last_error is None


def _modem(sim: SimState = SimState.READY, reg: RegState = RegState.HOME) -> ModemState:
    return ModemState(sim=sim, registration=reg)


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"down_since": None}, "data link up"),
        ({"down_since": 950.0}, "data link down for less than after_s"),
        ({"modem": None}, "modem not read"),
        (
            {"modem": _modem(SimState.FAILURE)},
            "SIM not ready or not registered: SMS cannot go either",
        ),
        (
            {"modem": _modem(reg=RegState.SEARCHING)},
            "SIM not ready or not registered: SMS cannot go either",
        ),
        ({"modem": _modem(reg=RegState.ROAMING)}, None),
        ({"record": SmsRecord([], "stream_lost")}, "these faults were texted already"),
        ({"record": SmsRecord([500.0, 600.0, 700.0], "x")}, "daily SMS limit reached"),
        ({"record": SmsRecord([-90000.0, 600.0, 700.0], "x")}, None),
        ({}, None),
    ],
)
def test_should_send(kw: dict[str, Any], reason: str | None) -> None:
    cfg = SmsConfig(number=DISTRICT_NO, key_file=Path("/dev/null"), after_s=100.0, max_per_day=3)
    args: dict[str, Any] = {
        "now": 1000.0,
        "down_since": 800.0,
        "modem": _modem(),
        "faults": [Fault.of(FaultCode.STREAM_LOST, 10.0, "x")],
        "record": SmsRecord(),
        "cfg": cfg,
    }
    args.update(kw)
    assert should_send(**args) == reason
