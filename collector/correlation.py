"""Fleet correlation: the cause of silent clusters inferred from their last reports. Pure.

A cluster that goes silent cannot say why. Its neighbours and its own last
words often can. ``infer(devices, cfg)`` takes what the collector last knew of
every cluster (``LastKnown``: online or not at the moment, when it was last
heard, the serving cell and SIM state of its last report, its last faults and
amplifier readings) and returns, for each silent one, an ``Inference``: the
B2 cause and the name of the rule that gave it, with a sentence of evidence.

Rules, first match wins (thresholds are ``CorrelationConfig``, in the
collector config's ``[correlation]``):

``sim_precursor`` → ``sim_failure``
    its last report showed the SIM failing (SIM state absent/failure/locked,
    or an active SIM fault) within ``precursor_s`` of the silence;
``power_precursor`` → ``power``
    its last report showed mains failure or a low battery (amplifier flags,
    power faults, or mains below ``mains_min_v``) within ``precursor_s``;
``commune_outage`` → ``power``
    at least ``commune_fraction`` of the commune's clusters went silent within
    ``window_s`` of each other, on at least two serving cells: one cell
    failing does not silence other cells, a power cut does;
``cell_outage`` → ``unstable_network``
    at least ``min_group`` clusters last served by the same cell (TAC + cell
    id), and at least ``cell_fraction`` of those on it, went silent within
    ``window_s`` of each other, while clusters on other cells are still online;
``lone_silence`` → ``unknown``
    none of the above: a lone cluster with no precursor stays unknown.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fleet_protocol import B2Cause

SIM_STATES = frozenset({"absent", "failure", "locked"})
SIM_FAULTS = frozenset({"sim_absent", "sim_failure", "sim_locked"})
POWER_FAULTS = frozenset({"mains_fail", "battery_low"})
POWER_FLAGS = frozenset({"mains_fail", "ac_low", "ac_low_voltage", "battery_low", "battery_mode"})


@dataclass(frozen=True, slots=True, kw_only=True)
class CorrelationConfig:
    #: Clusters going silent within this many seconds of each other went silent together.
    window_s: float = 600.0
    #: A cell outage needs at least this many clusters on the cell.
    min_group: int = 2
    #: ...and at least this fraction of the clusters last seen on it.
    cell_fraction: float = 0.8
    #: A commune outage needs this fraction of the commune's reporting clusters.
    commune_fraction: float = 0.8
    #: A precursor (SIM errors, mains failure) counts if seen this long before the silence.
    precursor_s: float = 3600.0
    #: Mains below this voltage in the last report is a power precursor.
    mains_min_v: float = 170.0

    def problems(self) -> list[str]:
        out = []
        if self.window_s <= 0:
            out.append("[correlation] window_s: must be > 0")
        if self.min_group < 2:
            out.append("[correlation] min_group: must be >= 2")
        for name in ("cell_fraction", "commune_fraction"):
            if not 0 < getattr(self, name) <= 1:
                out.append(f"[correlation] {name}: must be in (0, 1]")
        if self.precursor_s < 0:
            out.append("[correlation] precursor_s: must be >= 0")
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class LastKnown:
    """What the collector last knew of one cluster, at the moment being judged."""

    device_id: str
    commune: str
    online: bool
    #: Event time of the last message heard (None: never).
    last_seen: float | None
    #: (TAC, cell id) of the last report that named one.
    cell: tuple[str, str] | None = None
    #: Event time of the last report (the one ``sim``/``faults``/``amp_flags`` come from).
    report_ts: float | None = None
    sim: str | None = None
    faults: tuple[str, ...] = ()
    amp_flags: tuple[str, ...] = ()
    mains_v: float | None = None


@dataclass(frozen=True, slots=True)
class Inference:
    cause: B2Cause
    rule: str
    detail: str


def cell_key(modem: Mapping[str, Any] | None) -> str:
    """A modem section's serving cell as one string ("" when it names none): the
    ``LastKnown.cell`` of a report with that section, kept per device by the store."""
    if not modem:
        return ""
    tac, ci = modem.get("tac"), modem.get("cell_id")
    return f"{tac}/{ci}" if tac and ci else ""


def _precursor(d: LastKnown, cfg: CorrelationConfig) -> Inference | None:
    if d.report_ts is None or d.last_seen is None:
        return None
    if d.last_seen - d.report_ts > cfg.precursor_s:
        return None
    sim_faults = sorted(SIM_FAULTS.intersection(d.faults))
    if (d.sim or "") in SIM_STATES or sim_faults:
        what = ", ".join(sim_faults) or f"SIM {d.sim}"
        return Inference(
            B2Cause.SIM_FAILURE, "sim_precursor", f"last report before silence: {what}"
        )
    power = sorted(POWER_FAULTS.intersection(d.faults) | POWER_FLAGS.intersection(d.amp_flags))
    if d.mains_v is not None and cfg.mains_min_v > 0 and d.mains_v < cfg.mains_min_v:
        power.append(f"mains {d.mains_v:.0f} V")
    if power:
        return Inference(B2Cause.POWER, "power_precursor", "last report: " + ", ".join(power))
    return None


def _together(d: LastKnown, others: Iterable[LastKnown], window_s: float) -> list[LastKnown]:
    assert d.last_seen is not None
    t = d.last_seen
    return [o for o in others if o.last_seen is not None and abs(o.last_seen - t) <= window_s]


def infer(devices: Sequence[LastKnown], cfg: CorrelationConfig) -> dict[str, Inference]:
    """An inference for every silent device that was heard from at least once (see module)."""
    silent = [d for d in devices if not d.online and d.last_seen is not None]
    by_commune: dict[str, list[LastKnown]] = defaultdict(list)
    by_cell: dict[tuple[str, str], list[LastKnown]] = defaultdict(list)
    for d in devices:
        if d.last_seen is None:
            continue
        by_commune[d.commune].append(d)
        if d.cell is not None:
            by_cell[d.cell].append(d)
    silent_commune: Mapping[str, list[LastKnown]] = {
        c: [d for d in ds if not d.online] for c, ds in by_commune.items()
    }
    silent_cell: Mapping[tuple[str, str], list[LastKnown]] = {
        c: [d for d in ds if not d.online] for c, ds in by_cell.items()
    }
    online_cells = {d.cell for d in devices if d.online and d.cell is not None}
    out: dict[str, Inference] = {}
    for d in silent:
        found = _precursor(d, cfg)
        if found is None:
            peers = _together(d, silent_commune.get(d.commune, ()), cfg.window_s)
            members = by_commune.get(d.commune, ())
            cells = {p.cell for p in peers if p.cell is not None}
            if (
                len(peers) >= cfg.min_group
                and len(cells) >= 2
                and len(peers) >= cfg.commune_fraction * len(members)
            ):
                found = Inference(
                    B2Cause.POWER,
                    "commune_outage",
                    f"{len(peers)} of {len(members)} clusters of the commune went silent "
                    f"within {cfg.window_s / 60:g} min, on {len(cells)} cells",
                )
        if found is None and d.cell is not None:
            peers = _together(d, silent_cell.get(d.cell, ()), cfg.window_s)
            members = by_cell.get(d.cell, ())
            other_up = bool(online_cells - {d.cell})
            if (
                len(peers) >= cfg.min_group
                and len(peers) >= cfg.cell_fraction * len(members)
                and other_up
            ):
                found = Inference(
                    B2Cause.UNSTABLE_NETWORK,
                    "cell_outage",
                    f"{len(peers)} of {len(members)} clusters on cell {d.cell[1]} "
                    f"(TAC {d.cell[0]}) went silent within {cfg.window_s / 60:g} min "
                    "while other cells stayed up",
                )
        out[d.device_id] = found or Inference(
            B2Cause.UNKNOWN, "lone_silence", "silent with no precursor and no neighbours silent"
        )
    return out


__all__ = ["CorrelationConfig", "Inference", "LastKnown", "cell_key", "infer"]
