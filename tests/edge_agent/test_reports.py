"""Report decisions: hysteresis against jitter, and compact heartbeats."""

from __future__ import annotations

import time

import pytest

from edge_agent.config import ReportsConfig
from edge_agent.reports import Snapshot, change_reason, full_report, heartbeat
from fleet_protocol import (
    AccessTech,
    AmpState,
    Fault,
    FaultCode,
    Kind,
    ModemState,
    RegState,
    SimState,
    StreamState,
    SystemState,
    decode,
    encode,
)

CFG = ReportsConfig()
MODEM = ModemState(
    sim=SimState.READY,
    iccid="8984040000012345678",
    operator="Viettel",
    mccmnc="45204",
    access_tech=AccessTech.LTE,
    registration=RegState.HOME,
    csq=20,
    rssi_dbm=-73.0,
    rsrp_dbm=-95.0,
    rsrq_db=-10.0,
    sinr_db=12.0,
    cell_id="1A2B3C4",
    tac="2F1",
)
AMP = AmpState(
    power=True,
    volume=70,
    output_level=70.0,
    temperature_c=45.0,
    mains_v=225.0,
    battery_v=13.4,
    flags=["on", "playing"],
)
SYSTEM = SystemState(
    cpu_pct=3.0, mem_pct=40.0, disk_pct=30.0, soc_temp_c=52.0, uptime_s=86400.0, boot_id="b" * 36
)
STREAM = StreamState(receiving=True, since=1.78e9, source="http://stream.example.vn:8000/x")
BASE = Snapshot(modem=MODEM, amp=AMP, stream=STREAM, system=SYSTEM)


def _with(**changes: object) -> Snapshot:
    import msgspec

    parts = {"modem": MODEM, "amp": AMP, "stream": STREAM, "system": SYSTEM}
    for key, value in changes.items():
        section, field = key.split("__")
        parts[section] = msgspec.structs.replace(parts[section], **{field: value})  # type: ignore[type-var]
    return Snapshot(**parts)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"modem__rssi_dbm": -76.0}, None),  # 3 dB jitter
        ({"modem__rsrp_dbm": -100.0}, None),
        ({"modem__rsrp_dbm": -102.0}, "modem.rsrp_dbm"),
        ({"modem__registration": RegState.SEARCHING}, "modem.registration"),
        ({"modem__cell_id": "1A2B3C5"}, None),  # handover is not news
        ({"amp__temperature_c": 48.0}, None),
        ({"amp__temperature_c": 51.0}, "amp.temperature_c"),
        ({"amp__flags": ["on"]}, "amp.flags"),
        ({"amp__mains_v": 215.0}, None),
        ({"amp__mains_v": 180.0}, "amp.mains_v"),
        ({"stream__receiving": False}, "stream.receiving"),
        ({"system__cpu_pct": 95.0}, None),  # load spikes never trigger a report
        ({"system__uptime_s": 90000.0}, None),
        ({"system__disk_pct": 45.0}, "system.disk_pct"),
        ({"system__boot_id": "c" * 36}, "system.boot_id"),
    ],
)
def test_change_reason(changes: dict[str, object], reason: str | None) -> None:
    assert change_reason(BASE, _with(**changes), CFG) == reason


def test_first_report_and_fault_changes_always_count() -> None:
    assert change_reason(None, BASE, CFG) == "first report"
    f = Fault.of(FaultCode.WEAK_SIGNAL, time.time(), "RSRP -118 dBm for 12 min")
    with_fault = Snapshot(modem=MODEM, amp=AMP, stream=STREAM, system=SYSTEM, faults=(f,))
    assert change_reason(BASE, with_fault, CFG) == "faults"
    later = Fault.of(FaultCode.WEAK_SIGNAL, f.since, "RSRP -118 dBm for 13 min")
    again = Snapshot(modem=MODEM, amp=AMP, stream=STREAM, system=SYSTEM, faults=(later,))
    assert change_reason(with_fault, again, CFG) is None  # evidence text ticking is not news


def test_heartbeat_is_compact_and_valid_on_the_wire() -> None:
    now = time.time()
    full = encode(full_report("lt-xuanhuy-01", "xuan-huy", 1_780_000_000_000, BASE, outbox_depth=0))
    hb = encode(heartbeat("lt-xuanhuy-01", 1_780_000_000_001, (), outbox_depth=0, ts=now))
    assert len(hb) < 110 < 500 < len(full) < 1000, (len(hb), len(full))
    msg = decode(Kind.STATE, hb)
    assert msg.heartbeat and msg.modem is None  # type: ignore[union-attr]
    assert decode(Kind.STATE, full).modem == MODEM  # type: ignore[union-attr]
