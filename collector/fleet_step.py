"""One device's batch of messages through the fleet's rules. Pure: no I/O.

The store loads a device's current record, calls these functions, and saves
what they return; it decides nothing itself (DESIGN: a pure core behind
storage). Any backend (SQLite, PostgreSQL) therefore applies the same rules:

- ``refold_start``: whether a batch can be folded onto the device's current
  state, or whether its history must be re-derived from an earlier moment
  (late arrivals, or messages re-dated by clock truth);
- ``step_device``: the new device record, its status transitions, the fault
  reports to reconcile and the events, from the current record and the batch
  (and, when ``refold_start`` asked for it, the stored history from then on);
- ``reconcile_faults``: fault episodes opened and closed by in-order reports;
- ``merged_report``: a compact heartbeat keeps the sections of the last full
  report it leaves out;
- ``silence``: the derived observation that takes a silent device offline.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import msgspec

from collector.fleet import INITIAL, FleetState, Observation, ObsKind, Transition, fold
from collector.store.base import IncomingMessage

Key = tuple[float, int]

#: State-report sections a compact heartbeat may leave out (unchanged).
REPORT_SECTIONS = (
    "commune",
    "modem",
    "amp",
    "stream",
    "system",
    "agent_version",
    "config_version",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceRecord:
    """What the store keeps of one device between batches (the ``devices`` row)."""

    device_id: str
    commune_code: str = ""
    state: FleetState = INITIAL
    #: The newest observation folded into ``state`` (event time, seq).
    obs_key: Key | None = None
    #: The newest message of any kind (event time, seq).
    last_key: Key | None = None
    #: Receive time of the newest message.
    last_seen: float | None = None
    #: Event time of the state report kept as the device's last report.
    report_ts: float | None = None
    first_seen: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceStep:
    """What one batch does to one device."""

    record: DeviceRecord
    #: New transitions; with ``replace_from``, they replace every stored one from that key on.
    transitions: tuple[Transition, ...] = ()
    replace_from: Key | None = None
    #: The state report to keep as the last report (``merged_report`` first), if any.
    report: IncomingMessage | None = None
    #: The batch's state reports newer than the kept one, in order: for ``reconcile_faults``.
    fault_reports: tuple[IncomingMessage, ...] = ()
    #: (seq, ts, type, fault code, action, detail) of the batch's events.
    events: tuple[tuple[Any, ...], ...] = ()

    @property
    def changed(self) -> bool:
        """The device's status history changed."""
        return bool(self.transitions)


def refold_start(
    current: DeviceRecord | None, msgs: Sequence[IncomingMessage], redo: Key | None = None
) -> Key | None:
    """The key from which the device's history must be re-derived from the stored
    observations (the batch's included), or None when the batch folds onto the
    current state. ``redo``: stored messages of the device were re-dated from there."""
    if current is None or current.obs_key is None:
        return None
    keys = [m.observation.key for m in msgs if m.observation is not None]
    if redo is not None:
        keys.append(redo)
    if not keys:
        return None
    first = min(keys)
    return first if redo is not None or first < current.obs_key else None


def _newer(a: Key | None, b: Key | None) -> Key | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def step_device(
    device_id: str,
    current: DeviceRecord | None,
    msgs: Sequence[IncomingMessage],
    *,
    history: tuple[FleetState, Sequence[Observation]] | None = None,
    replace_from: Key | None = None,
) -> DeviceStep:
    """The device after ``msgs`` (its new messages of one batch, any order).

    ``history`` is (state before ``replace_from``, stored observations from it
    on), given when ``refold_start`` returned ``replace_from``.
    """
    if not msgs:
        raise ValueError("step_device: no messages")
    cur = current or DeviceRecord(device_id=device_id)
    obs = sorted((m.observation for m in msgs if m.observation), key=lambda o: o.key)
    state, obs_key = cur.state, cur.obs_key
    transitions: list[Transition] = []
    if history is not None:
        state, transitions = fold(*history)
    elif obs:
        state, transitions = fold(state, obs)
    if obs:
        obs_key = _newer(obs_key, obs[-1].key)
    newest = max(msgs, key=lambda m: (m.ts, m.seq))
    last_key = _newer(cur.last_key, (newest.ts, newest.seq))
    seen = [m.received_at for m in msgs]
    last_seen = max(seen if cur.last_seen is None else [*seen, cur.last_seen])
    reports = sorted((m for m in msgs if m.kind == "state"), key=lambda m: (m.ts, m.seq))
    report = reports[-1] if reports else None
    take = report is not None and (cur.report_ts is None or report.ts >= cur.report_ts)
    commune = cur.commune_code
    if take and report is not None and report.commune:
        commune = report.commune
    record = replace(
        cur,
        commune_code=commune,
        state=state,
        obs_key=obs_key,
        last_key=last_key,
        last_seen=last_seen,
        report_ts=report.ts if take and report is not None else cur.report_ts,
        first_seen=(cur.first_seen if current is not None else min(m.received_at for m in msgs)),
    )
    return DeviceStep(
        record=record,
        transitions=tuple(transitions),
        replace_from=replace_from if history is not None else None,
        report=report if take else None,
        fault_reports=tuple(m for m in reports if cur.report_ts is None or m.ts >= cur.report_ts),
        events=tuple((m.seq, m.ts, *m.event) for m in msgs if m.event is not None),
    )


@dataclass(frozen=True, slots=True)
class FaultOpened:
    """A fault episode a report opened (and, within the same batch, maybe closed)."""

    code: str
    since: float
    cause: str
    severity: str
    evidence: str
    opened_seq: int
    cleared_at: float | None = None
    cleared_seq: int | None = None


@dataclass(frozen=True, slots=True)
class FaultCleared:
    """A stored open episode of ``code`` that a report closed."""

    code: str
    at: float
    seq: int


@dataclass(slots=True)
class FaultChanges:
    opened: list[FaultOpened] = field(default_factory=list)
    cleared: list[FaultCleared] = field(default_factory=list)


def reconcile_faults(
    open_codes: Collection[str], reports: Iterable[IncomingMessage]
) -> FaultChanges:
    """Fault episodes from in-order state reports: open new codes, clear vanished ones.

    Each report's fault list is compared with the one before it, so a fault
    raised and cleared within one batch still leaves its episode.
    """
    out = FaultChanges()
    active = set(open_codes)
    opened_here: dict[str, int] = {}  # code -> index in out.opened
    for report in reports:
        faults = {f[0]: f for f in report.faults or ()}
        for code in sorted(active - set(faults)):
            if code in opened_here:
                i = opened_here.pop(code)
                out.opened[i] = replace(out.opened[i], cleared_at=report.ts, cleared_seq=report.seq)
            else:
                out.cleared.append(FaultCleared(code, report.ts, report.seq))
        for code in sorted(set(faults) - active):
            _, since, cause, severity, evidence = faults[code]
            opened_here[code] = len(out.opened)
            out.opened.append(FaultOpened(code, since, cause, severity, evidence, report.seq))
        active = set(faults)
    return out


def fuller_report(report: IncomingMessage, batch: Sequence[IncomingMessage]) -> bytes | None:
    """For a compact heartbeat, the newest full report of the same batch before it."""
    fuller = [m for m in batch if not m.heartbeat and (m.ts, m.seq) < (report.ts, report.seq)]
    return max(fuller, key=lambda m: (m.ts, m.seq)).payload if fuller else None


def merged_report(report: IncomingMessage, base: bytes | None) -> bytes:
    """The device's latest report: a heartbeat keeps the sections it leaves out.

    A compact heartbeat carries only the envelope, outbox depth and faults; its
    modem, amplifier, stream and system sections are those of ``base``, the
    last full report (``fuller_report``, else the stored one), so the
    dashboard does not go blank between full reports.
    """
    if not report.heartbeat or not base:
        return report.payload
    old = msgspec.json.decode(base)
    new = msgspec.json.decode(report.payload)
    if not isinstance(old, dict) or not isinstance(new, dict):
        return report.payload
    for section in REPORT_SECTIONS:
        if section not in new and section in old:
            new[section] = old[section]
    return msgspec.json.encode(new)


def silence(last_ts: float, obs_key: Key | None, *, now: float, grace_s: float) -> Observation:
    """The derived observation that takes a device silent since ``last_ts`` offline.

    It is dated ``grace_s`` after the last message (at most now), after every
    observation already folded; derived rows get a negative seq (wire seqs are
    >= 0, so no clash).
    """
    ts = min(last_ts + grace_s, now)
    seq = -int(ts * 1000)
    if obs_key is not None and (ts, seq) <= obs_key:
        ts, seq = float(obs_key[0]), obs_key[1] + 1 if obs_key[1] < -1 else -1
    return Observation(ts, seq, ObsKind.SILENT)


__all__ = [
    "REPORT_SECTIONS",
    "DeviceRecord",
    "DeviceStep",
    "FaultChanges",
    "FaultCleared",
    "FaultOpened",
    "fuller_report",
    "merged_report",
    "reconcile_faults",
    "refold_start",
    "silence",
    "step_device",
]
