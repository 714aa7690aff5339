"""ModemProbe over the in-process engine (every fault, every dialect) and over a
real pty with pyserial-asyncio-fast (soft reset and recovery)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from firmware_shims.modem.port import AtPort
from firmware_shims.modem.probe import ModemProbe
from firmware_shims.modem.sim import ModemEngine, PtyModem, SimOptions
from firmware_shims.readings import ModemReading, Probe
from fleet_protocol import ModemState, RegState, SimState

pytestmark = pytest.mark.timeout(60)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def probe_for(
    dialect: str, *faults: str, clock: Clock | None = None
) -> tuple[ModemProbe, ModemEngine]:
    engine = ModemEngine(
        dialect,
        faults=faults,
        options=SimOptions(seed=3, flap_period=10.0, slow_delay=1.0),
        clock=clock or Clock(),
    )
    return ModemProbe(AtPort.for_engine(engine), dialect, timeout=0.3), engine


@pytest.mark.parametrize("dialect", ["generic", "quectel", "simcom"])
async def test_healthy_modem(dialect: str) -> None:
    probe, _ = probe_for(dialect)
    _: Probe[ModemReading] = probe  # satisfies the contract
    reading = await probe.read()
    s = reading.state
    assert reading.errors == {}
    assert (s.responding, s.sim, s.registration) == (True, SimState.READY, RegState.HOME)
    assert s.iccid == "8984040000012345678" and s.operator == "Viettel" and s.mccmnc == "45204"
    assert s.rssi_dbm is not None and -80 < s.rssi_dbm < -60
    if dialect != "generic":
        assert s.rsrp_dbm is not None and s.cell_id == "1A2D101"
    assert set(reading.raw) >= set(probe.dialect.poll_commands)


@pytest.mark.parametrize("dialect", ["generic", "quectel", "simcom"])
@pytest.mark.parametrize(
    ("fault", "sim", "registration", "error"),
    [
        ("sim_failure", SimState.FAILURE, RegState.NOT_REGISTERED, "+CME ERROR: 13"),
        ("sim_absent", SimState.ABSENT, RegState.NOT_REGISTERED, "+CME ERROR: 10"),
        ("sim_locked", SimState.LOCKED, RegState.NOT_REGISTERED, None),
        ("no_service", SimState.READY, RegState.SEARCHING, None),
        ("denied", SimState.READY, RegState.DENIED, None),
    ],
)
async def test_faults_reach_the_reading(
    dialect: str, fault: str, sim: SimState, registration: RegState, error: str | None
) -> None:
    probe, _ = probe_for(dialect, fault)
    reading = await probe.read()
    assert reading.state.sim is sim
    assert reading.state.registration is registration
    if error:
        assert reading.errors["AT+CPIN?"] == error
        assert reading.state.iccid is None
        # No ICCID command is sent to a SIM that is absent or failed.
        assert not any("CCID" in c for c in reading.raw)


async def test_weak_signal() -> None:
    probe, _ = probe_for("quectel", "weak_signal")
    s = (await probe.read()).state
    assert s.rsrp_dbm is not None and s.rsrp_dbm < -110 and s.csq == 4


async def test_flapping_alternates() -> None:
    clock = Clock()
    probe, _ = probe_for("simcom", "flapping", clock=clock)
    seen = []
    for _ in range(4):
        seen.append((await probe.read()).state.registration)
        clock.t += 5.0
    assert seen == [RegState.HOME, RegState.SEARCHING, RegState.HOME, RegState.SEARCHING]


async def test_unresponsive_modem_is_a_reading_not_an_exception(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="firmware_shims.modem.probe")
    probe, engine = probe_for("quectel", "unresponsive")
    reading = await probe.read()
    assert reading.state == ModemState(responding=False)
    assert "no answer in 0.3 s" in reading.errors["AT+CPIN?"]
    await probe.read()
    assert sum("not responding" in r.message for r in caplog.records) == 1
    engine.faults.clear()
    assert (await probe.read()).state.responding
    assert sum("responding again" in r.message for r in caplog.records) == 1


async def test_slow_modem_times_out_within_budget() -> None:
    probe, _ = probe_for("generic", "slow")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    reading = await probe.read()
    assert not reading.state.responding
    # Stops after the first timeout instead of waiting on every command.
    assert loop.time() - t0 < 1.0


async def test_soft_reset_and_recovery_over_a_pty(tmp_path: Path) -> None:
    engine = ModemEngine("simcom", options=SimOptions(urc_rate=0.2, seed=5, reset_time=0.5))
    async with PtyModem(engine, tmp_path / "m0", reenumerate=True) as pty:
        probe = ModemProbe(AtPort(pty.link), "simcom", timeout=1.0)
        try:
            assert (await probe.read()).state.registration is RegState.HOME
            assert engine.cmee == 1  # the probe asked for numeric +CME errors
            assert (await probe.soft_reset()).ok
            down = await probe.read()
            assert not down.state.responding
            for _ in range(50):  # back within ~10 s
                reading = await probe.read()
                if reading.state.responding:
                    break
                await asyncio.sleep(0.1)
            assert reading.state.sim is SimState.READY
            assert engine.cmee == 1  # re-initialised after the reset
            technician = await probe.command("AT+CPSI?", timeout=1.0)
            assert technician.lines[0].startswith("+CPSI: LTE,Online")
        finally:
            await probe.aclose()
