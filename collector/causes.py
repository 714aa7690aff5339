"""Where a broken cluster's cause came from, and the best cause the evidence supports.

The fold (``collector.fleet``) gives each broken cluster the cause of its last
diagnosis; a cluster that went silent while healthy is ``unknown`` there. This
module lays every other source over it, in this order of authority:

1. ``finding``: a person's on-site finding on a repair ticket, recorded during
   the cluster's current broken spell (or before it ever reported). It
   overrides everything; a later device diagnosis that disagrees is kept as a
   ``conflict`` to show, never applied silently;
2. the device's own diagnosis: ``device_live`` (a prompt report),
   ``device_late`` (a buffered report that arrived late) or ``sms`` (a fault
   SMS through the district's gateway);
3. ``inferred``: fleet correlation (``collector.correlation``) for a silent
   cluster whose own last diagnosis was healthy, with the rule that made it;
4. ``unknown``: none of these (never reported, or a lone silence).

``attribute_all`` is pure (statuses, evidence, last reports, findings, config
→ statuses with causes and an ``Attribution`` per broken device);
``statuses_with_causes(repo, t, cfg)`` is the thin shell that reads the store.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from collector.correlation import CorrelationConfig, Inference, LastKnown, infer
from collector.model import DeviceStatus, Status
from collector.store.base import DiagEvidence, Finding, Repository
from fleet_protocol import B2Cause


class CauseSource(enum.StrEnum):
    DEVICE_LIVE = "device_live"
    DEVICE_LATE = "device_late"
    SMS = "sms"
    INFERRED = "inferred"
    FINDING = "finding"
    UNKNOWN = "unknown"

    def label(self, lang: str = "vi") -> str:
        return SOURCE_LABELS[self][1 if lang == "en" else 0]


#: (Vietnamese, English): how the report names each source ("nguyên nhân <label>").
SOURCE_LABELS: dict[CauseSource, tuple[str, str]] = {
    CauseSource.DEVICE_LIVE: ("do thiết bị tự báo", "reported by the device"),
    CauseSource.DEVICE_LATE: ("do thiết bị báo muộn", "reported late by the device"),
    CauseSource.SMS: ("do thiết bị báo qua SMS", "reported by the device over SMS"),
    CauseSource.INFERRED: ("suy ra từ các cụm lân cận", "inferred from neighbouring clusters"),
    CauseSource.FINDING: ("do kỹ thuật viên xác định", "found on site by a technician"),
    CauseSource.UNKNOWN: ("chưa xác định được", "not determined"),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Attribution:
    """A broken cluster's cause, its source and the evidence behind it."""

    device_id: str
    cause: B2Cause
    source: CauseSource
    #: The correlation rule for ``inferred`` (and ``lone_silence`` for unknown silences).
    rule: str = ""
    #: A sentence of evidence for people (the cluster page, the B2 JSON).
    evidence: str = ""
    #: When the evidence was produced (event time), if known.
    at: float | None = None
    #: Device evidence that disagrees with an on-site finding, shown, not applied.
    conflict: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "cause": self.cause.value,
            "source": self.source.value,
            "rule": self.rule or None,
            "evidence": self.evidence,
            "at": self.at,
            "conflict": self.conflict or None,
        }


def _device_source(ev: DiagEvidence | None) -> CauseSource:
    if ev is None:
        return CauseSource.DEVICE_LIVE
    if ev.kind == "sms":
        return CauseSource.SMS
    return CauseSource.DEVICE_LIVE if ev.prompt else CauseSource.DEVICE_LATE


def attribute(
    status: DeviceStatus,
    evidence: DiagEvidence | None,
    inference: Inference | None,
    finding: Finding | None,
) -> Attribution | None:
    """The attribution of one device's status; None when it is working. Pure."""
    if status.status is not Status.BROKEN:
        return None
    own = status.cause if status.cause not in (None, B2Cause.UNKNOWN) else None
    if finding is not None and (status.since is None or finding.at >= status.since):
        conflict = ""
        if (
            evidence is not None
            and evidence.ts > finding.at
            and evidence.broken
            and evidence.cause not in (None, B2Cause.UNKNOWN, finding.cause)
        ):
            assert evidence.cause is not None
            conflict = (
                f"{'SMS' if evidence.kind == 'sms' else 'device'} reported "
                f"{evidence.cause.label('en')} ({', '.join(evidence.faults) or 'faults'}) "
                f"after the finding"
            )
        return Attribution(
            device_id=status.device_id,
            cause=finding.cause,
            source=CauseSource.FINDING,
            evidence=f"{finding.actor}: {finding.text}".rstrip(": "),
            at=finding.at,
            conflict=conflict,
        )
    if own is not None:
        source = _device_source(evidence)
        faults = ", ".join(evidence.faults) if evidence is not None else ""
        return Attribution(
            device_id=status.device_id,
            cause=own,
            source=source,
            evidence=faults,
            at=evidence.ts if evidence is not None else None,
        )
    if status.never_reported:
        return Attribution(
            device_id=status.device_id,
            cause=B2Cause.UNKNOWN,
            source=CauseSource.UNKNOWN,
            rule="never_reported",
            evidence="never reported",
        )
    if inference is not None and inference.cause is not B2Cause.UNKNOWN:
        return Attribution(
            device_id=status.device_id,
            cause=inference.cause,
            source=CauseSource.INFERRED,
            rule=inference.rule,
            evidence=inference.detail,
            at=status.last_seen,
        )
    return Attribution(
        device_id=status.device_id,
        cause=B2Cause.UNKNOWN,
        source=CauseSource.UNKNOWN,
        rule=inference.rule if inference is not None else "",
        evidence=inference.detail if inference is not None else "",
    )


def last_known(
    status: DeviceStatus,
    evidence: DiagEvidence | None,
    report: Mapping[str, Any] | None,
) -> LastKnown:
    """What correlation needs of one device, from its status and its last reports."""
    modem = report.get("modem") if report else None
    amp = report.get("amp") if report else None
    modem = modem if isinstance(modem, dict) else {}
    amp = amp if isinstance(amp, dict) else {}
    tac, ci = modem.get("tac"), modem.get("cell_id")
    faults: set[str] = set(evidence.faults) if evidence is not None else set()
    for f in (report or {}).get("faults", ()) or ():
        if isinstance(f, dict) and isinstance(f.get("code"), str):
            faults.add(f["code"])
    report_ts = max(
        [t for t in (evidence.ts if evidence else None, (report or {}).get("ts")) if t is not None],
        default=None,
    )
    flags = amp.get("flags") or []
    mains = amp.get("mains_v")
    return LastKnown(
        device_id=status.device_id,
        commune=status.commune_code,
        online=status.online,
        last_seen=status.last_seen,
        cell=(str(tac), str(ci)) if tac and ci else None,
        report_ts=float(report_ts) if report_ts is not None else None,
        sim=str(modem["sim"]) if "sim" in modem else None,
        faults=tuple(sorted(faults)),
        amp_flags=tuple(str(f) for f in flags if isinstance(f, str)),
        mains_v=float(mains) if isinstance(mains, int | float) else None,
    )


def attribute_all(
    statuses: Sequence[DeviceStatus],
    evidence: Mapping[str, DiagEvidence],
    reports: Mapping[str, Mapping[str, Any]],
    findings: Mapping[str, Finding],
    cfg: CorrelationConfig,
    cells: Mapping[str, tuple[str, str] | None] | None = None,
) -> tuple[list[DeviceStatus], dict[str, Attribution]]:
    """Statuses with the best-supported cause and its source, and the attributions. Pure.

    A cluster that did not exist yet at the moment (``DeviceStatus.exists``) is
    left as it is: the B2 does not count it (its table says "no data" when no
    cluster existed), so it gets no cause, and correlation does not count it
    among the clusters of its cell or commune that stayed up or went silent.
    """
    existing = [s for s in statuses if s.exists]
    known = [
        last_known(s, evidence.get(s.device_id), reports.get(s.device_id))
        if cells is None or (not s.online and s.last_seen is not None)
        # Not silent: correlation asks it only where it is and whether it is up.
        else LastKnown(
            device_id=s.device_id,
            commune=s.commune_code,
            online=s.online,
            last_seen=s.last_seen,
            cell=cells.get(s.device_id),
        )
        for s in existing
    ]
    inferred = infer(known, cfg)
    out: list[DeviceStatus] = []
    attributions: dict[str, Attribution] = {}
    for s in statuses:
        if not s.exists:
            out.append(s)
            continue
        a = attribute(
            s, evidence.get(s.device_id), inferred.get(s.device_id), findings.get(s.device_id)
        )
        if a is None:
            out.append(s)
            continue
        attributions[s.device_id] = a
        out.append(replace(s, cause=a.cause, cause_source=a.source.value))
    return out, attributions


async def statuses_with_causes(
    repo: Repository,
    t: float,
    cfg: CorrelationConfig = CorrelationConfig(),  # noqa: B008
) -> tuple[list[DeviceStatus], dict[str, Attribution]]:
    """``statuses_as_of(t)`` with every source of causes laid over (module docstring).

    Reads what each cluster's part needs and no more: the evidence and findings
    of the broken, the last full report of the silent (the precursor rules), and
    of the rest only their cell (kept per device), so a fleet of which a few
    per cent are broken is not decoded report by report."""
    statuses = await repo.statuses_as_of(t)
    existing = [s for s in statuses if s.exists]
    broken = {s.device_id for s in existing if s.status is Status.BROKEN}
    silent = {s.device_id for s in existing if not s.online and s.last_seen is not None}
    return attribute_all(
        statuses,
        await repo.diag_evidence_as_of(t, devices=broken | silent),
        await repo.last_reports_as_of(t, devices=silent),
        await repo.findings_as_of(t, devices=broken),
        cfg,
        await repo.cells_as_of(t, {s.device_id for s in existing} - silent),
    )


#: Past this many neighbours the whole fleet's attribution is as cheap.
MAX_NEIGHBOURS = 5000


async def cause_now(
    repo: Repository,
    device_id: str,
    t: float,
    cfg: CorrelationConfig = CorrelationConfig(),  # noqa: B008
) -> Attribution | None:
    """One cluster's attribution at ``t`` (now: its neighbours are those of its
    current cell), equal to ``statuses_with_causes(repo, t, cfg)``'s for it but read
    over its correlation neighbours only (``correlation_neighbours``), so a cluster
    page does not read every cluster of a province."""
    peers = await repo.correlation_neighbours(device_id)
    if peers is None or len(peers) > MAX_NEIGHBOURS:
        _, everyone = await statuses_with_causes(repo, t, cfg)
        return everyone.get(device_id)
    _, attributions = attribute_all(
        await repo.statuses_as_of(t, devices=peers),
        await repo.diag_evidence_as_of(t, devices=peers),
        await repo.last_reports_as_of(t, devices=peers),
        await repo.findings_as_of(t, devices=peers),
        cfg,
    )
    return attributions.get(device_id)


__all__ = [
    "MAX_NEIGHBOURS",
    "SOURCE_LABELS",
    "Attribution",
    "CauseSource",
    "attribute",
    "attribute_all",
    "cause_now",
    "last_known",
    "statuses_with_causes",
]
