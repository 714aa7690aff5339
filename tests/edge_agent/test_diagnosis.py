"""Diagnosis: table-driven cases from data/diagnosis_cases.toml, plus properties."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest

from edge_agent.config import DiagnosisConfig
from edge_agent.diagnosis import History, LinkSample, diagnose, horizon, retain
from firmware_shims.readings import AmpReading, ModemReading, StreamReading, SystemReading
from fleet_protocol import (
    AmpState,
    Fault,
    FaultCode,
    ModemState,
    RegState,
    SimState,
    StreamState,
    SystemState,
    fault_info,
)

T0 = 1_780_000_000.0
CASES = tomllib.loads((Path(__file__).parent / "data" / "diagnosis_cases.toml").read_text())["case"]


def _history(blocks: list[dict[str, Any]]) -> History:
    roles: dict[str, list[Any]] = {"modem": [], "amp": [], "system": [], "stream": [], "link": []}
    for b in blocks:
        t = b["from"]
        while t <= b["to"]:
            ts = T0 + t
            role = b["role"]
            state = b.get("state", {})
            if role == "modem":
                r: Any = ModemReading(
                    ts=ts,
                    state=msgspec.convert(state, ModemState),
                    errors=b.get("errors", {}),
                    raw={k: tuple(v) for k, v in b.get("raw", {}).items()},
                )
            elif role == "amp":
                r = AmpReading(ts=ts, state=msgspec.convert(state, AmpState), error=b.get("error"))
            elif role == "link":
                r = LinkSample(ts=ts, up=b["up"])
            elif role == "system":
                r = SystemReading(ts=ts, state=msgspec.convert(state, SystemState))
            else:
                r = StreamReading(ts=ts, state=msgspec.convert(state, StreamState))
            roles[role].append(r)
            t += b["every"]
    for readings in roles.values():
        readings.sort(key=lambda r: r.ts)  # stable: blocks keep their order at equal times
    return History(**roles)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_case(case: dict[str, Any]) -> None:
    params = dataclasses.replace(DiagnosisConfig(), **case.get("params", {}))
    previous = [
        Fault.of(FaultCode(p["code"]), T0 + p["since"], p.get("evidence", ""))
        for p in case.get("previous", [])
    ]
    faults = diagnose(_history(case.get("readings", [])), T0 + case["now"], params, previous)
    expected = case["expect"]
    assert [f.code.value for f in faults] == [e["code"] for e in expected], faults
    for f, e in zip(faults, expected, strict=True):
        info = fault_info(f.code)
        assert (f.severity, f.cause) == (info.severity, info.cause)
        if "since" in e:
            assert f.since == T0 + e["since"], f
        if "cause" in e:
            assert f.cause.value == e["cause"]
        if "severity" in e:
            assert f.severity.value == e["severity"]
        if "evidence" in e:
            assert e["evidence"] in f.evidence, f.evidence


def _modem(ts: float, reg: RegState) -> ModemReading:
    return ModemReading(
        ts=ts, state=ModemState(sim=SimState.READY, registration=reg, rssi_dbm=-80.0)
    )


def test_pure_same_inputs_same_output() -> None:
    hist = History(modem=[_modem(T0 + t, RegState.SEARCHING) for t in range(0, 600, 30)])
    a = diagnose(hist, T0 + 600, DiagnosisConfig())
    b = diagnose(hist, T0 + 600, DiagnosisConfig())
    assert a == b and [f.code for f in a] == [FaultCode.NOT_REGISTERED]


def test_stepwise_calls_agree_with_one_call_and_keep_since() -> None:
    """Feeding readings one poll at a time (as the agent does) gives the same faults."""
    cfg = DiagnosisConfig()
    readings = [
        _modem(T0 + t, RegState.HOME if t < 300 or t > 2000 else RegState.SEARCHING)
        for t in range(0, 3000, 30)
    ]
    previous: list[Fault] = []
    raised_at: dict[FaultCode, float] = {}
    cleared_at: dict[FaultCode, float] = {}
    keep = horizon(cfg)
    for i, r in enumerate(readings):
        window = [x for x in readings[: i + 1] if x.ts >= r.ts - keep]
        now = diagnose(History(modem=window), r.ts, cfg, previous)
        for f in now:
            raised_at.setdefault(f.code, r.ts)
        for f in previous:
            if f.code not in {g.code for g in now}:
                cleared_at[f.code] = r.ts
        previous = now
    assert raised_at == {FaultCode.NOT_REGISTERED: T0 + 300 + cfg.confirm_s}
    # Healthy again at 2010; cleared once a clear window of good readings has passed.
    assert cleared_at == {FaultCode.NOT_REGISTERED: T0 + 2010 + cfg.clear_s}


def test_evidence_fits_the_wire_limit() -> None:
    long_error = "+CME ERROR: " + "x" * 2000
    hist = History(
        modem=[
            ModemReading(
                ts=T0 + t,
                state=ModemState(sim=SimState.FAILURE),
                errors={"AT+CPIN?": long_error},
            )
            for t in range(0, 600, 30)
        ]
    )
    (fault,) = diagnose(hist, T0 + 600, DiagnosisConfig())
    assert len(fault.evidence) <= 512


@pytest.mark.parametrize("spacing", [1.0, 30.0, 600.0, 3600.0, 14400.0, 43200.0])
def test_same_verdicts_whatever_the_poll_spacing(spacing: float) -> None:
    """The agent's way (one reading at a time, history kept by ``retain``): a fault
    is raised at the first reading at least confirm_s after the failure's first
    reading and cleared at the first one at least clear_s after recovery's first,
    for readings a second apart or half a day apart."""
    cfg = DiagnosisConfig()
    n = int(max(4, (cfg.confirm_s + cfg.clear_s) / spacing + 4))
    bad_from, good_from = 2, 2 + n
    times = [T0 + i * spacing for i in range(2 + 2 * n)]
    readings = [
        _modem(t, RegState.SEARCHING if bad_from <= i < good_from else RegState.HOME)
        for i, t in enumerate(times)
    ]
    kept: list[ModemReading] = []
    previous: list[Fault] = []
    raised: list[tuple[float, float]] = []
    cleared: list[float] = []
    longest = 0
    for r in readings:
        kept.append(r)
        del kept[: retain(kept, cfg)]
        longest = max(longest, len(kept))
        now = diagnose(History(modem=kept), r.ts, cfg, previous)
        was, is_ = {f.code for f in previous}, {f.code: f for f in now}
        if FaultCode.NOT_REGISTERED in is_ and FaultCode.NOT_REGISTERED not in was:
            raised.append((r.ts, is_[FaultCode.NOT_REGISTERED].since))
        if FaultCode.NOT_REGISTERED in was and FaultCode.NOT_REGISTERED not in is_:
            cleared.append(r.ts)
        previous = now
    first_bad, first_good = times[bad_from], times[good_from]
    expect_raise = next(t for t in times if t >= first_bad and t - first_bad >= cfg.confirm_s)
    expect_clear = next(t for t in times if t >= first_good and t - first_good >= cfg.clear_s)
    assert raised == [(expect_raise, first_bad)]
    assert cleared == [expect_clear]
    # History is kept by time span: about horizon/spacing readings, at least two.
    assert longest <= max(2, horizon(cfg) / spacing + 2)


def test_retain_keeps_the_horizon_and_one_reading_before_it() -> None:
    cfg = DiagnosisConfig()
    h = horizon(cfg)
    readings = [_modem(T0 + t, RegState.HOME) for t in (0.0, 10.0, 20.0 + h, 30.0 + h, 40.0 + h)]
    # Cutoff is 40: the readings at 0 and 10 are older; 10 anchors the span.
    assert retain(readings, cfg) == 1
    assert retain(readings[:1], cfg) == 0 and retain([], cfg) == 0
    sparse = [_modem(T0 + t, RegState.HOME) for t in (0.0, 14400.0, 28800.0)]
    assert retain(sparse, cfg) == 1  # two readings 4 h apart stay
