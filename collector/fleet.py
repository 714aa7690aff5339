"""Fleet state: pure functions from a device's observations to its status history.

A device's status at a moment comes from two things the collector observes:

- its *link*: online after a birth message or a promptly delivered report;
  offline after its last will (or a graceful offline message), or when no
  heartbeat arrived within the grace period (``ObsKind.SILENT``);
- its *diagnosis*: the critical faults in its last state report (by event time).

A cluster is BROKEN when it is offline or has a critical fault. The cause is
the diagnosis' cause; an offline cluster keeps the cause of its last diagnosis
before the silence (``unknown`` when that diagnosis was healthy or there was
none). Reports that arrive late (buffered on the device while its link was
down) change the diagnosis at their own event time but never the link, so they
correct the cause of an offline spell without pretending the device was heard.

Observations are folded in event-time order (ts, then seq); when late ones
arrive, the store re-folds the device from the earliest of them. Every change
of the fold state is a ``Transition``, which is what "the fleet as of 31/7" is
computed from.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from collector.model import Status
from fleet_protocol import B2Cause, Fault, Severity, StateReport

#: When several critical faults are active, the cause counted is the most
#: upstream one: without mains nothing works, a dead modem or SIM takes the
#: network with it, and without a network there is no stream.
CAUSE_PRIORITY: tuple[B2Cause, ...] = (
    B2Cause.POWER,
    B2Cause.RECEIVER_DEVICE,
    B2Cause.SIM_FAILURE,
    B2Cause.UNSTABLE_NETWORK,
    B2Cause.NO_STATION_SIGNAL,
    B2Cause.AMPLIFIER_SPEAKER,
    B2Cause.UNKNOWN,
)


class ObsKind(enum.StrEnum):
    REPORT = "state"  # a state report (carries a diagnosis)
    ONLINE = "online"  # birth presence
    OFFLINE = "offline"  # last will or graceful offline presence
    SILENT = "silent"  # no heartbeat within the grace period (derived by the collector)


@dataclass(frozen=True, slots=True)
class Observation:
    """One fact about a device at event time ``ts``.

    ``prompt`` is False for a report delivered long after its ``ts`` (buffered
    on the device): it updates the diagnosis but not the link. ``broken`` and
    ``cause`` are the diagnosis of a REPORT (unused for other kinds).
    """

    ts: float
    seq: int
    kind: ObsKind
    prompt: bool = True
    broken: bool = False
    cause: B2Cause | None = None

    @property
    def key(self) -> tuple[float, int]:
        return (self.ts, self.seq)


@dataclass(frozen=True, slots=True)
class FleetState:
    """What the fold knows about a device after some observations."""

    online: bool = False
    #: False until the first report: a device with no diagnosis counts as unknown.
    has_diag: bool = False
    diag_broken: bool = False
    diag_cause: B2Cause | None = None
    #: Event time at which ``status`` took its current value (None: never observed).
    status_since: float | None = None

    @property
    def status(self) -> Status:
        if self.online and self.has_diag and not self.diag_broken:
            return Status.WORKING
        return Status.BROKEN

    @property
    def cause(self) -> B2Cause | None:
        """The B2 cause; None exactly when working."""
        if self.status is Status.WORKING:
            return None
        if self.has_diag and self.diag_broken and self.diag_cause is not None:
            return self.diag_cause
        return B2Cause.UNKNOWN


INITIAL = FleetState()


@dataclass(frozen=True, slots=True)
class Transition:
    """The fold state from event time ``ts`` (observation ``seq``) on."""

    ts: float
    seq: int
    state: FleetState
    #: What brought the change: a report, the birth presence, an offline presence
    #: (last will or orderly stop), or the collector's silence rule (a device whose
    #: broker node died with its connection sends no will). None: not recorded.
    via: ObsKind | None = None

    @property
    def status(self) -> Status:
        return self.state.status

    @property
    def cause(self) -> B2Cause | None:
        return self.state.cause


def diagnose(faults: Iterable[Fault]) -> tuple[bool, B2Cause | None]:
    """(broken, cause) from a report's active faults: broken iff any is critical."""
    causes = {f.cause for f in faults if f.severity is Severity.CRITICAL}
    if not causes:
        return False, None
    return True, min(causes, key=CAUSE_PRIORITY.index)


def report_observation(report: StateReport, *, ts: float, prompt: bool) -> Observation:
    broken, cause = diagnose(report.faults)
    return Observation(ts, report.seq, ObsKind.REPORT, prompt=prompt, broken=broken, cause=cause)


def event_time(ts: float, received_at: float, *, max_future_s: float) -> tuple[float, bool]:
    """The event time to store for a device timestamp, and whether it was clamped.

    A device clock ahead of the collector by more than ``max_future_s`` would
    put events in the future and reorder history, so such a ``ts`` is replaced
    by the receive time. Timestamps in the past are legitimate (buffered
    reports) and kept.
    """
    if ts > received_at + max_future_s:
        return received_at, True
    return ts, False


def step(state: FleetState, obs: Observation) -> FleetState:
    """The state after one observation (pure)."""
    new = state
    if obs.kind is ObsKind.REPORT:
        new = replace(new, has_diag=True, diag_broken=obs.broken, diag_cause=obs.cause)
        if obs.prompt:
            new = replace(new, online=True)
    elif obs.kind is ObsKind.ONLINE:
        new = replace(new, online=True)
    else:
        new = replace(new, online=False)
    if new.status is not state.status or state.status_since is None:
        new = replace(new, status_since=obs.ts)
    return new


def fold(
    state: FleetState, observations: Sequence[Observation]
) -> tuple[FleetState, list[Transition]]:
    """Apply ``observations`` (in event-time order) and list every change of state."""
    out: list[Transition] = []
    for obs in observations:
        new = step(state, obs)
        if new != state:
            out.append(Transition(obs.ts, obs.seq, new, obs.kind))
        state = new
    return state, out
