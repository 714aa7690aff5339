"""What the agent reports, and when: pure decisions over snapshots of its state.

- ``change_reason(last, now, cfg)`` says why ``now`` differs meaningfully from
  the last full report ``last`` (or None): a different set of fault codes, a
  state that flipped (SIM, registration, amplifier power or flags, stream,
  boot id), or a measurement that moved past its hysteresis band since it was
  last *reported* (signal 6 dB, temperature 5 °C, percentages 10 points,
  voltages 10 %). CPU load and uptime never trigger a report on their own.
- ``full_report`` carries every section; ``heartbeat`` is compact: the header,
  ``heartbeat: true``, the outbox depth and the active faults, with the
  sections left out to mean "unchanged since the last full report". A full
  report is still sent every ``full_report_s`` so a collector that lost one
  resynchronises. This keeps a stable device far under 100 KB/day of MQTT
  traffic (see bench/edge_footprint.py).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from edge_agent.config import ReportsConfig
from fleet_protocol import (
    PROTOCOL_VERSION,
    AmpState,
    Event,
    EventType,
    Fault,
    ModemState,
    StateReport,
    StreamState,
    SystemState,
)


def _now() -> float:
    # Milliseconds are plenty for a report, and the digits cost mobile data.
    return round(time.time(), 3)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The latest reading of every role and the active faults."""

    modem: ModemState | None = None
    amp: AmpState | None = None
    stream: StreamState | None = None
    system: SystemState | None = None
    faults: Sequence[Fault] = field(default_factory=tuple)


def _moved(a: float | None, b: float | None, band: float) -> bool:
    if (a is None) != (b is None):
        return True
    return a is not None and b is not None and abs(a - b) >= band


def _moved_rel(a: float | None, b: float | None, frac: float) -> bool:
    if (a is None) != (b is None):
        return True
    if a is None or b is None:
        return False
    return abs(a - b) >= frac * max(abs(a), abs(b), 1.0)


def _modem_reason(a: ModemState | None, b: ModemState | None, cfg: ReportsConfig) -> str | None:
    if a is None or b is None:
        return None if a is b else "modem appeared/disappeared"
    for name in ("responding", "sim", "iccid", "operator", "mccmnc", "access_tech", "registration"):
        if getattr(a, name) != getattr(b, name):
            return f"modem.{name}"
    for name in ("rssi_dbm", "rsrp_dbm", "rsrq_db", "sinr_db"):
        if _moved(getattr(a, name), getattr(b, name), cfg.signal_hysteresis_db):
            return f"modem.{name}"
    return None


def _amp_reason(a: AmpState | None, b: AmpState | None, cfg: ReportsConfig) -> str | None:
    if a is None or b is None:
        return None if a is b else "amp appeared/disappeared"
    for name in ("responding", "power", "volume"):
        if getattr(a, name) != getattr(b, name):
            return f"amp.{name}"
    if set(a.flags) != set(b.flags):
        return "amp.flags"
    if _moved(a.temperature_c, b.temperature_c, cfg.temperature_hysteresis_c):
        return "amp.temperature_c"
    for name in ("mains_v", "battery_v", "output_level"):
        if _moved_rel(getattr(a, name), getattr(b, name), cfg.voltage_hysteresis):
            return f"amp.{name}"
    return None


def _stream_reason(a: StreamState | None, b: StreamState | None) -> str | None:
    if a is None or b is None:
        return None if a is b else "stream appeared/disappeared"
    if a.receiving != b.receiving or a.source != b.source:
        return "stream.receiving"
    return None


def _system_reason(a: SystemState | None, b: SystemState | None, cfg: ReportsConfig) -> str | None:
    if a is None or b is None:
        return None if a is b else "system appeared/disappeared"
    if a.boot_id != b.boot_id:
        return "system.boot_id"
    for name in ("mem_pct", "disk_pct"):
        if _moved(getattr(a, name), getattr(b, name), cfg.percent_hysteresis):
            return f"system.{name}"
    if _moved(a.soc_temp_c, b.soc_temp_c, cfg.temperature_hysteresis_c):
        return "system.soc_temp_c"
    return None


def change_reason(last: Snapshot | None, now: Snapshot, cfg: ReportsConfig) -> str | None:
    """Why ``now`` deserves a state report compared to the last one sent, or None."""
    if last is None:
        return "first report"
    if {f.code for f in last.faults} != {f.code for f in now.faults}:
        return "faults"
    return (
        _modem_reason(last.modem, now.modem, cfg)
        or _amp_reason(last.amp, now.amp, cfg)
        or _stream_reason(last.stream, now.stream)
        or _system_reason(last.system, now.system, cfg)
    )


def full_report(
    device: str,
    commune: str,
    seq: int,
    snap: Snapshot,
    *,
    outbox_depth: int,
    heartbeat: bool = False,
    ts: float | None = None,
    agent_version: str | None = None,
    config_version: str | None = None,
) -> StateReport:
    return StateReport(
        v=PROTOCOL_VERSION,
        device=device,
        seq=seq,
        ts=_now() if ts is None else ts,
        commune=commune[:64] or None,
        heartbeat=heartbeat,
        modem=snap.modem,
        amp=snap.amp,
        stream=snap.stream,
        system=snap.system,
        outbox_depth=outbox_depth,
        faults=list(snap.faults),
        agent_version=agent_version,
        config_version=config_version,
    )


def heartbeat(
    device: str, seq: int, faults: Sequence[Fault], *, outbox_depth: int, ts: float | None = None
) -> StateReport:
    """The compact heartbeat: alive, these faults, this backlog; sections unchanged."""
    return StateReport(
        v=PROTOCOL_VERSION,
        device=device,
        seq=seq,
        ts=_now() if ts is None else ts,
        heartbeat=True,
        outbox_depth=outbox_depth,
        faults=list(faults),
    )


def event(
    device: str,
    seq: int,
    type: EventType,
    *,
    fault: Fault | None = None,
    action: str | None = None,
    detail: str | None = None,
    ts: float | None = None,
) -> Event:
    return Event(
        v=PROTOCOL_VERSION,
        device=device,
        seq=seq,
        ts=_now() if ts is None else ts,
        type=type,
        fault=fault,
        action=action[:64] if action else None,
        detail=detail[:512] if detail else None,
    )


__all__ = ["Snapshot", "change_reason", "event", "full_report", "heartbeat"]
