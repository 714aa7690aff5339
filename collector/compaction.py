"""Which stored heartbeats history no longer needs one by one (pure).

A controller sends a compact heartbeat every ``[reports] heartbeat_s`` (600 s by
default) and a full report every few hours; at the default intervals nearly all
of a cluster's messages are heartbeats that say "nothing changed". Kept raw for
the retention period they are most of the database (issue 20: about 73 KB per
cluster per day). Once a heartbeat is older than ``[db] raw_detail_hours`` (by
receive time) it is dropped when it is *redundant*: between two state reports
that say the same thing as it does. What is kept instead:

- **the first and last report of every unchanged run** -- so the folded history
  (``collector.fleet.fold``) is the same with or without the run's middle: every
  dropped report had the same observation (kind, prompt, broken, cause) and the
  same fault list as the report before it, which it would only have repeated;
  the last report before a silence, an offline presence or a change is never
  dropped, so "last heard before it went silent" is exact;
- **``run_until`` on the run's first report**: the event time of the last report
  dropped after it, so "heard at t" and the evidence of a diagnosis at a moment
  inside the run are known to within one heartbeat interval;
- **the dropped seqs as ranges** (``seq_spans``) -- the exactly-once dedupe by
  (device, seq) holds for them as for stored messages (a replay of one is a
  duplicate; its content can no longer be compared, so it is not a conflict).

Not dropped: full reports (they carry the modem's signal and everything the
B2's evidence reads), reports with a signal, reports delivered late (a drained
backlog: the cluster was offline while they were made, and the last of them
before a moment is that silent cluster's "last heard", which the correlation of
silences reads), messages whose time is still an estimate (their boot's clock
offset may yet re-date them), events, presences, replies and the collector's
own silences.

One known limit: a report arriving more than ``raw_detail_hours`` after its
neighbours, with a time inside a run that was already compacted, folds against
the run's ends (the dropped reports cannot restore the state after it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from collector.fleet import ObsKind


@dataclass(frozen=True, slots=True)
class StoredReport:
    """One stored message of a device as the planner sees it."""

    seq: int
    ts: float
    received_at: float
    obs_kind: str | None
    prompt: bool
    broken: bool
    cause: str | None
    #: A compact heartbeat, delivered promptly, without a signal, its time not an estimate.
    droppable: bool
    #: Its fault codes (sorted), part of what it says.
    faults: tuple[str, ...] = ()
    run_until: float | None = None

    @property
    def says(self) -> tuple[object, ...] | None:
        """What this report tells the fold and the B2; None for non-reports."""
        if self.obs_kind != ObsKind.REPORT or self.seq < 0:
            return None
        return (self.prompt, self.broken, self.cause, self.faults)


@dataclass(slots=True)
class Plan:
    """What to do with one device's rows."""

    drop: list[int] = field(default_factory=list)
    #: seq of a kept run start -> its new ``run_until``.
    run_until: dict[int, float] = field(default_factory=dict)
    #: Ranges of dropped seqs, (lo, hi) inclusive, ascending, over ``drop`` only.
    spans: list[tuple[int, int]] = field(default_factory=list)
    #: Where the next pass starts (a kept row's (ts, seq)), None: nothing to move.
    mark: tuple[float, int] | None = None


def plan(rows: Sequence[StoredReport], *, horizon: float) -> Plan:
    """Drop the redundant heartbeats among ``rows`` received before ``horizon``.

    ``rows``: the device's stored messages from the previous pass's mark on, in
    (ts, seq) order (the first is never dropped: it is the run start the pass
    continues from). The new mark is the last kept row before the newest
    eligible one, so a run that goes on past this pass keeps growing next time
    instead of leaving a row behind at every pass.
    """
    out = Plan()
    if len(rows) < 3:
        return out
    anchor = rows[0]
    anchor_says = anchor.says
    until = anchor.run_until
    kept: list[StoredReport] = [anchor]
    for i in range(1, len(rows) - 1):
        r, nxt = rows[i], rows[i + 1]
        says = r.says
        if (
            r.droppable
            and r.received_at < horizon
            and says is not None
            and says == anchor_says
            and nxt.says == says
        ):
            out.drop.append(r.seq)
            until = max(until or anchor.ts, r.run_until or r.ts)
            continue
        if until is not None and until != anchor.run_until:
            out.run_until[anchor.seq] = until
        anchor, anchor_says, until = r, says, r.run_until
        kept.append(r)
    if until is not None and until != anchor.run_until:
        out.run_until[anchor.seq] = until
    kept.append(rows[-1])
    out.spans = _ranges(sorted(out.drop))
    eligible = [r for r in rows if r.received_at < horizon]
    if eligible:
        newest = (eligible[-1].ts, eligible[-1].seq)
        before = [k for k in kept if (k.ts, k.seq) < newest]
        if before:
            out.mark = (before[-1].ts, before[-1].seq)
    return out


def _ranges(seqs: Sequence[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s in seqs:
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


__all__ = ["Plan", "StoredReport", "plan"]
