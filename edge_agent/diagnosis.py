"""Diagnosis: readings history and a clock in, active faults out. Pure; no I/O.

``diagnose(history, now, params, previous)`` returns the faults active at
``now`` following the taxonomy of ``fleet_protocol.faults``:

- every reading is turned into one *condition sample* per fault code it can
  judge (bad with evidence text, or good); a reading that cannot judge a code
  (the modem did not answer, so its SIM state is unknown) gives no sample;
- a fault is raised once its condition has held for the confirm window
  (``confirm_s``; ``weak_signal_confirm_s`` for weak signal) and cleared once
  it has been absent for the clear window (``clear_s``): debounce, so a value
  wobbling around a threshold raises one fault, not a storm. Windows are
  judged by the time span the readings themselves cover, whatever their
  spacing: a condition seen at t0 and still at t1 with t1 − t0 >= confirm
  raises (since t0), whether readings come every second or every four hours
  (a backfilling simulator, a controller that slept, a starved poller); a
  single reading, however long after the one before, only starts a span.
  Nothing is concluded from the mere passing of time since the last reading;
- registration lost and regained ``flap_count`` times within
  ``flap_window_s`` raises one ``network_unstable`` fault, which then stands
  in for the ``not_registered`` / ``no_service`` faults of the same episode;
- the broadcast stream only counts as lost (``no_station_signal``) when the
  modem and network were fine at that moment: otherwise the cause is theirs.
  A stream lost while the data bearer was down (``History.link``: the uplink
  not connected) although the modem was registered is the network's fault:
  ``network_unstable`` (``unstable_network``), with the stream's failure as
  evidence, not ``stream_lost``.

``previous`` is what the last call returned. Passing it keeps the start time
(``since``) of faults older than the history the caller retains; the result
depends only on the arguments. ``retain(readings, params)`` is how much of a
role's history a caller must keep: everything within ``horizon(params)`` of
the newest reading *and* the newest reading before that, so a span that began
before the horizon (sparse readings) is still anchored.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from edge_agent.config import DiagnosisConfig
from firmware_shims.readings import AmpReading, ModemReading, StreamReading, SystemReading
from fleet_protocol import Fault, FaultCode, RegState, Severity, SimState

#: Amplifier flag names (as the amplifier profiles name their status bits) that are faults.
#: Bits not listed (on, playing, clip, mute, battery_mode, ...) are status, not faults.
AMP_FLAG_FAULTS: Mapping[str, FaultCode] = {
    "over_temp": FaultCode.AMP_OVER_TEMP,
    "over_temperature": FaultCode.AMP_OVER_TEMP,
    "over_temp_limit": FaultCode.AMP_OVER_TEMP,
    "over_temp_mute": FaultCode.AMP_OVER_TEMP,
    "thermal_limit": FaultCode.AMP_OVER_TEMP,
    "short": FaultCode.AMP_OUTPUT_SHORT,
    "output_short": FaultCode.AMP_OUTPUT_SHORT,
    "short_circuit": FaultCode.AMP_OUTPUT_SHORT,
    "short_circuit_mute": FaultCode.AMP_OUTPUT_SHORT,
    "open_line": FaultCode.AMP_LINE_OPEN,
    "line_open": FaultCode.AMP_LINE_OPEN,
    "mains_fail": FaultCode.MAINS_FAIL,
    "ac_low": FaultCode.MAINS_FAIL,
    "ac_low_voltage": FaultCode.MAINS_FAIL,
    "battery_low": FaultCode.BATTERY_LOW,
    "fault": FaultCode.AMP_FAULT,
    "amp_fault": FaultCode.AMP_FAULT,
    "overload": FaultCode.AMP_FAULT,
    "over_current": FaultCode.AMP_OUTPUT_SHORT,
    "amp_check_error": FaultCode.AMP_FAULT,
}

_FLAG_CODES = frozenset(AMP_FLAG_FAULTS.values())
#: Faults whose evidence gains "for N min": how long matters for these.
_TIMED = frozenset(
    {
        FaultCode.WEAK_SIGNAL,
        FaultCode.NOT_REGISTERED,
        FaultCode.NO_SERVICE,
        FaultCode.REGISTRATION_DENIED,
        FaultCode.NO_BEARER,
        FaultCode.STREAM_LOST,
        FaultCode.MODEM_UNRESPONSIVE,
        FaultCode.AMP_NO_RESPONSE,
    }
)
#: The data-bearer check's samples, folded on their own and reported as network_unstable.
_BEARER = "bearer"
#: Faults that network_unstable stands in for while it is active.
_FLAP_COVERED = frozenset({FaultCode.NOT_REGISTERED, FaultCode.NO_SERVICE})


@dataclass(frozen=True, slots=True)
class LinkSample:
    """The data link at ``ts``: ``up`` when the uplink was connected to the broker."""

    ts: float
    up: bool


@dataclass(frozen=True, slots=True)
class History:
    """Readings per role, each sequence in time order (oldest first); ``link``
    is the data link's state sampled alongside the stream readings."""

    modem: Sequence[ModemReading] = ()
    amp: Sequence[AmpReading] = ()
    system: Sequence[SystemReading] = ()
    stream: Sequence[StreamReading] = ()
    link: Sequence[LinkSample] = ()


Sample = tuple[float, str | None]  # (time, evidence when bad, None when good)


def horizon(params: DiagnosisConfig) -> float:
    """Seconds of history a caller must retain for every window to be judged."""
    return (
        max(params.confirm_s, params.weak_signal_confirm_s, params.clear_s, params.flap_window_s)
        + params.clear_s
    )


class _Timed(Protocol):
    @property
    def ts(self) -> float: ...


def retain(readings: Sequence[_Timed], params: DiagnosisConfig) -> int:
    """How many of the oldest ``readings`` (time order) a caller may drop.

    Kept: every reading within ``horizon(params)`` of the newest, and the
    newest one older than that, so the retained history spans the horizon
    whatever the spacing of readings (module doc).
    """
    if not readings:
        return 0
    cutoff = readings[-1].ts - horizon(params)
    older = 0  # readings before the cutoff; amortised O(1) when called per reading
    while older < len(readings) and readings[older].ts < cutoff:
        older += 1
    return max(0, older - 1)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _error_on(r: ModemReading, needle: str) -> str | None:
    """``"+CME ERROR: 13 on AT+CPIN?"`` for the first errored command containing ``needle``."""
    for cmd, err in r.errors.items():
        if needle in cmd.upper():
            return f"{err} on {cmd}"
    return None


def _raw_line(r: ModemReading, needle: str, prefix: str) -> str | None:
    for cmd, lines in r.raw.items():
        if needle in cmd.upper():
            for line in lines:
                if line.startswith(prefix):
                    return line
    return None


def _signal_text(r: ModemReading) -> str:
    s = r.state
    if s.rsrp_dbm is not None:
        return f"RSRP {s.rsrp_dbm:.0f} dBm"
    if s.rssi_dbm is not None:
        return f"RSSI {s.rssi_dbm:.0f} dBm"
    return f"+CSQ: {s.csq},99" if s.csq is not None else "no signal reading"


def _has_signal(r: ModemReading) -> bool:
    s = r.state
    if s.rsrp_dbm is not None or s.rssi_dbm is not None:
        return True
    return s.csq is not None and s.csq != 99


def _network_ok(r: ModemReading) -> bool:
    s = r.state
    # Registered without a data bearer is the network's failure too, not the station's.
    return (
        s.responding
        and s.sim == SimState.READY
        and s.registration.registered
        and s.data is not False
    )


def _no_bearer_text(r: ModemReading) -> str:
    """Evidence for no_bearer: the bearer answers as the modem gave them."""
    lines = [
        ln
        for cmd in ("AT+CGATT?", "AT+CGACT?", "AT+CGPADDR=1", "AT+QIACT?")
        for ln in r.raw.get(cmd, ())
        if ln.startswith(("+CGATT", "+CGACT", "+CGPADDR", "+QIACT"))
    ]
    where = "; ".join(lines) or "no active PDP context"
    return f"registered ({r.state.registration.value}) but no data bearer: {where}"


def _modem_samples(
    readings: Sequence[ModemReading], p: DiagnosisConfig
) -> dict[FaultCode, list[Sample]]:
    out: dict[FaultCode, list[Sample]] = {}

    def add(code: FaultCode, ts: float, evidence: str | None) -> None:
        out.setdefault(code, []).append((ts, evidence))

    sim_codes = {
        SimState.ABSENT: FaultCode.SIM_ABSENT,
        SimState.FAILURE: FaultCode.SIM_FAILURE,
        SimState.LOCKED: FaultCode.SIM_LOCKED,
    }
    for r in readings:
        s, ts = r.state, r.ts
        if not s.responding:
            ev = next(iter(r.errors.values()), None) if r.errors else None
            add(FaultCode.MODEM_UNRESPONSIVE, ts, ev or "no answer from the modem")
            continue
        add(FaultCode.MODEM_UNRESPONSIVE, ts, None)
        if s.sim == SimState.UNKNOWN:
            continue
        for sim_state, code in sim_codes.items():
            if s.sim != sim_state:
                add(code, ts, None)
                continue
            ev = (
                _error_on(r, "CPIN")
                or _raw_line(r, "CPIN", "+CPIN:")
                or f"SIM {sim_state.value} (AT+CPIN?)"
            )
            add(code, ts, ev)
        if s.sim != SimState.READY or s.registration == RegState.UNKNOWN:
            continue
        reg = s.registration
        denied = reg == RegState.DENIED
        lost = not reg.registered and not denied
        reg_line = _raw_line(r, "REG", "+C") or f"registration {reg.value}"
        add(
            FaultCode.REGISTRATION_DENIED,
            ts,
            f"registration denied ({reg_line})" if denied else None,
        )
        no_cell = lost and not _has_signal(r)
        add(
            FaultCode.NO_SERVICE,
            ts,
            f"no cell found ({reg_line}, {_signal_text(r)})" if no_cell else None,
        )
        add(
            FaultCode.NOT_REGISTERED,
            ts,
            f"not registered: {reg.value} ({reg_line}), {_signal_text(r)}"
            if lost and not no_cell
            else None,
        )
        weak = reg.registered and (
            (s.rsrp_dbm is not None and s.rsrp_dbm <= p.weak_rsrp_dbm)
            or (s.rsrp_dbm is None and s.rssi_dbm is not None and s.rssi_dbm <= p.weak_rssi_dbm)
        )
        add(FaultCode.WEAK_SIGNAL, ts, _signal_text(r) if weak else None)
        if reg.registered and s.data is not None:
            add(FaultCode.NO_BEARER, ts, _no_bearer_text(r) if s.data is False else None)
    out[FaultCode.NETWORK_UNSTABLE] = _flap_samples(readings, p)
    return out


def _flap_samples(readings: Sequence[ModemReading], p: DiagnosisConfig) -> list[Sample]:
    """Bad at a sample when registration was regained >= flap_count times in the window."""
    regains: list[float] = []
    samples: list[Sample] = []
    was_registered: bool | None = None
    for r in readings:
        s = r.state
        if not s.responding or s.sim != SimState.READY or s.registration == RegState.UNKNOWN:
            continue
        now_registered = s.registration.registered
        if was_registered is False and now_registered:
            regains.append(r.ts)
        was_registered = now_registered
        lo = bisect.bisect_right(regains, r.ts - p.flap_window_s)
        n = len(regains) - lo
        ev = (
            f"registration lost and regained {n} times in {_duration(p.flap_window_s)}"
            if n >= p.flap_count
            else None
        )
        samples.append((r.ts, ev))
    return samples


def _amp_samples(
    readings: Sequence[AmpReading], p: DiagnosisConfig
) -> dict[FaultCode, list[Sample]]:
    out: dict[FaultCode, list[Sample]] = {}
    for a in readings:
        s, ts = a.state, a.ts
        if not s.responding:
            out.setdefault(FaultCode.AMP_NO_RESPONSE, []).append(
                (ts, a.error or "no answer from the amplifier")
            )
            continue
        out.setdefault(FaultCode.AMP_NO_RESPONSE, []).append((ts, None))
        bad: dict[FaultCode, list[str]] = {}
        if a.error is not None:
            # It answered, but with a Modbus exception: wrong profile or a failing board.
            bad.setdefault(FaultCode.AMP_FAULT, []).append(a.error)
        for flag in s.flags:
            code = AMP_FLAG_FAULTS.get(flag.lower())
            if code is not None:
                bad.setdefault(code, []).append(f"flag {flag}")
        if s.temperature_c is not None and s.temperature_c >= p.amp_over_temp_c:
            bad.setdefault(FaultCode.AMP_OVER_TEMP, []).append(
                f"temperature {s.temperature_c:.0f} °C >= {p.amp_over_temp_c:.0f} °C"
            )
        if s.mains_v is not None and p.mains_min_v > 0 and s.mains_v < p.mains_min_v:
            bad.setdefault(FaultCode.MAINS_FAIL, []).append(
                f"mains {s.mains_v:.0f} V < {p.mains_min_v:.0f} V"
            )
        for code in _FLAG_CODES:
            reasons = bad.get(code)
            out.setdefault(code, []).append((ts, "; ".join(reasons) if reasons else None))
    return out


def _system_samples(
    readings: Sequence[SystemReading], p: DiagnosisConfig
) -> dict[FaultCode, list[Sample]]:
    out: dict[FaultCode, list[Sample]] = {}
    checks = (
        (FaultCode.CONTROLLER_DISK_FULL, "disk_pct", p.disk_full_pct, "disk {:.0f} % full"),
        (FaultCode.CONTROLLER_MEMORY_LOW, "mem_pct", p.memory_low_pct, "memory {:.0f} % used"),
        (FaultCode.CONTROLLER_OVERHEAT, "soc_temp_c", p.soc_overheat_c, "SoC {:.0f} °C"),
    )
    for r in readings:
        for code, attr, limit, text in checks:
            value = getattr(r.state, attr)
            if value is None:
                continue
            out.setdefault(code, []).append((r.ts, text.format(value) if value >= limit else None))
    return out


def _at(samples_ts: list[float], ts: float) -> int:
    """Index of the last entry at or before ``ts`` (-1: none)."""
    return bisect.bisect_right(samples_ts, ts) - 1


def _stream_samples(history: History) -> tuple[list[Sample], list[Sample]]:
    """(stream_lost samples, data-bearer samples) from the stream readings.

    Each stream reading is judged against the latest modem reading and link
    sample at or before it: network down → no sample (the modem's faults say
    why); registered but the link down → a bearer sample (bad if the stream
    was not received); otherwise a stream sample.
    """
    modem, link = history.modem, history.link
    modem_ts = [m.ts for m in modem]
    link_ts = [x.ts for x in link]
    stream: list[Sample] = []
    bearer: list[Sample] = []
    for r in history.stream:
        if modem:
            i = _at(modem_ts, r.ts)
            if i < 0 or not _network_ok(modem[i]):
                continue  # no network: the stream's loss is the network's fault, not the station's
        s = r.state
        lost = None if s.receiving else (s.detail or "stream not received")
        j = _at(link_ts, r.ts)
        if j >= 0 and not link[j].up:
            ev = f"no data connection while registered (stream: {lost})" if lost else None
            bearer.append((r.ts, ev))
            continue
        bearer.append((r.ts, None))
        stream.append((r.ts, lost))
    return stream, bearer


@dataclass(slots=True)
class _Run:
    raised: bool
    since: float | None
    evidence: str
    bad_start: float | None = None


def _fold(samples: Sequence[Sample], confirm: float, clear: float, prev: Fault | None) -> _Run:
    run = _Run(
        raised=prev is not None,
        since=prev.since if prev else None,
        evidence=prev.evidence if prev else "",
    )
    good_start: float | None = None
    for ts, ev in samples:
        if ev is not None:
            good_start = None
            run.evidence = ev
            if run.bad_start is None:
                run.bad_start = ts
            if not run.raised and ts - run.bad_start >= confirm:
                run.raised, run.since = True, run.bad_start
        else:
            run.bad_start = None
            if run.raised:
                if good_start is None:
                    good_start = ts
                if ts - good_start >= clear:
                    run.raised, run.since = False, None
    return run


def _all_samples(
    history: History, p: DiagnosisConfig
) -> Iterator[tuple[FaultCode | str, list[Sample]]]:
    yield from _modem_samples(history.modem, p).items()
    yield from _amp_samples(history.amp, p).items()
    yield from _system_samples(history.system, p).items()
    stream, bearer = _stream_samples(history)
    yield FaultCode.STREAM_LOST, stream
    yield _BEARER, bearer


def diagnose(
    history: History,
    now: float,
    params: DiagnosisConfig,
    previous: Iterable[Fault] = (),
) -> list[Fault]:
    """The faults active at ``now``; critical first, then by start time and code."""
    prev = {f.code: f for f in previous}
    samples_by_code = dict(_all_samples(history, params))
    active: dict[FaultCode, Fault] = {}
    for key, samples in samples_by_code.items():
        if not samples:
            continue  # nothing judged this code: the previous state stands (below)
        code = FaultCode.NETWORK_UNSTABLE if key == _BEARER else FaultCode(key)
        confirm = {
            FaultCode.WEAK_SIGNAL: params.weak_signal_confirm_s,
            FaultCode.NETWORK_UNSTABLE: 0.0,
        }.get(code, params.confirm_s)
        if key == _BEARER:
            confirm = params.confirm_s
        run = _fold(samples, confirm, params.clear_s, prev.get(code))
        if not run.raised or run.since is None:
            continue
        evidence = run.evidence
        if (code in _TIMED or key == _BEARER) and run.bad_start is not None:
            evidence = f"{evidence} for {_duration(now - run.bad_start)}"
        other = active.get(code)
        if other is None or (other.since > run.since):
            # Flapping and a dead bearer both stand for network_unstable: the older wins.
            active[code] = Fault.of(code, run.since, evidence)
    # A code no reading could judge this time (modem silent, so SIM unknown) keeps its state.
    judged = {
        FaultCode.NETWORK_UNSTABLE if k == _BEARER else FaultCode(k)
        for k, v in samples_by_code.items()
        if v
    }
    for code, fault in prev.items():
        if code not in judged:
            active.setdefault(code, fault)
    if FaultCode.NETWORK_UNSTABLE in active:
        for code in _FLAP_COVERED:
            active.pop(code, None)
    return sorted(
        active.values(),
        key=lambda f: (f.severity != Severity.CRITICAL, f.since, f.code.value),
    )


__all__ = ["AMP_FLAG_FAULTS", "History", "LinkSample", "diagnose", "horizon", "retain"]
