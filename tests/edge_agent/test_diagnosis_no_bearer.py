"""Registered but no data: the probe against the simulator's data_blocked fault,
diagnosed by the real diagnosis into no_data (B2 cause unstable_network)."""

from __future__ import annotations

from edge_agent.config import DiagnosisConfig
from edge_agent.diagnosis import History, diagnose
from firmware_shims.modem.port import AtPort
from firmware_shims.modem.probe import ModemProbe
from firmware_shims.modem.sim import ModemEngine, SimOptions
from firmware_shims.readings import ModemReading, StreamReading
from fleet_protocol import B2Cause, FaultCode, StreamState, fault_info

P = DiagnosisConfig(confirm_s=60.0, clear_s=60.0)


async def _readings(engine: ModemEngine, t0: float, n: int) -> list[ModemReading]:
    t = [t0]
    probe = ModemProbe(AtPort.for_engine(engine), engine.dialect, clock=lambda: t[0])
    out = []
    for i in range(n):
        t[0] = t0 + 30 * i
        out.append(await probe.read())
    return out


async def test_data_blocked_is_no_data_and_the_stream_loss_is_not_the_station() -> None:
    engine = ModemEngine("quectel", options=SimOptions(urc_rate=0.0, seed=2))
    engine.faults.set("data_blocked")
    modem = await _readings(engine, 1_700_000_000.0, 5)
    stream = [
        StreamReading(ts=r.ts, state=StreamState(receiving=False, detail="cannot connect"))
        for r in modem
    ]
    faults = diagnose(History(modem=modem, stream=stream), modem[-1].ts, P)
    assert [f.code for f in faults] == [FaultCode.NO_BEARER]
    (f,) = faults
    assert f.cause is B2Cause.UNSTABLE_NETWORK
    assert "+CGACT: 1,0" in f.evidence and "registered" in f.evidence
    info = fault_info(FaultCode.NO_BEARER)
    assert info.title_vi and info.title_en and info.remedy_en


async def test_healthy_bearer_raises_nothing() -> None:
    engine = ModemEngine("simcom", options=SimOptions(urc_rate=0.0, seed=3))
    modem = await _readings(engine, 1_700_000_000.0, 5)
    assert diagnose(History(modem=modem), modem[-1].ts, P) == []
