"""What the dashboard's pages show, computed from the store: no HTML here.

Counting reuses the API's ``summarize`` (so the overview and
``/api/v1/fleet/summary`` cannot disagree), the status history comes from the
store's ``statuses_as_of``, overdue tickets from ``collector.repairs.overdue``
and commune names from ``collector.b2.table.commune_label``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from collector.api import summarize, summarize_tally
from collector.b2.dates import end_of_day
from collector.b2.table import commune_label
from collector.fleet import Transition
from collector.model import InventoryDevice, Status
from collector.store.base import DeviceRow, Repository, TicketState

ACTIVE_STATES = frozenset({TicketState.OPEN, TicketState.IN_REPAIR})


@dataclass(frozen=True, slots=True, kw_only=True)
class CommuneStat:
    """One commune's counts now (the API's ``summarize`` of its devices)."""

    code: str
    label: str
    total: int
    working: int
    broken: int
    in_repair: int
    not_repaired: int
    online: int
    never_reported: int

    @property
    def ratio(self) -> float:
        """Working share, 0..1 (1.0 for a commune without clusters)."""
        return self.working / self.total if self.total else 1.0


def commune_labels(inventory: Iterable[InventoryDevice], lang: str) -> dict[str, str]:
    """Commune code -> display label ("Xã Sơn Vi"), in inventory order."""
    out: dict[str, str] = {}
    for d in inventory:
        out.setdefault(d.commune_code, commune_label(d.commune_kind, d.commune_name, lang))
    return out


def _commune_stats(
    labels: dict[str, str],
    scope: frozenset[str] | None,
    groups: Iterable[tuple[str, dict[str, Any]]],
) -> list[CommuneStat]:
    """Per commune in scope: inventory communes in inventory order, then any
    others; ``groups`` gives each commune's ``summarize`` figures."""
    by_code = dict(groups)
    codes = [c for c in labels if scope is None or c in scope]
    codes += [c for c in by_code if c not in codes]
    empty = summarize([])
    out = []
    for code in codes:
        s = by_code.get(code, empty)
        out.append(
            CommuneStat(
                code=code,
                label=labels.get(code, code or "—"),
                total=s["total"],
                working=s["working"],
                broken=s["broken"],
                in_repair=s["in_repair"],
                not_repaired=s["not_repaired"],
                online=s["online"],
                never_reported=s["never_reported"],
            )
        )
    return out


def commune_stats(
    labels: dict[str, str], rows: Sequence[DeviceRow], scope: frozenset[str] | None
) -> list[CommuneStat]:
    """Per commune in scope: inventory communes in inventory order, then any others."""
    groups: dict[str, list[DeviceRow]] = {}
    for row in rows:
        groups.setdefault(row.commune_code, []).append(row)
    return _commune_stats(labels, scope, ((c, summarize(m)) for c, m in groups.items()))


def commune_stats_kept(
    labels: dict[str, str], tally: Iterable[tuple[Any, ...]], scope: frozenset[str] | None
) -> list[CommuneStat]:
    """``commune_stats`` from the store's kept counts (``fleet_tally(each=True)``)."""
    groups: dict[str, list[tuple[Any, ...]]] = {}
    for row in tally:
        groups.setdefault(row[0], []).append(row)
    return _commune_stats(labels, scope, ((c, summarize_tally(m)) for c, m in groups.items()))


def worst_communes(stats: Sequence[CommuneStat], n: int = 5) -> list[CommuneStat]:
    """Communes with broken clusters, lowest working ratio first (then most broken)."""
    broken = [s for s in stats if s.broken]
    return sorted(broken, key=lambda s: (s.ratio, -s.broken, s.label))[:n]


def month_ends(now: dt.datetime, n: int = 12) -> list[dt.datetime]:
    """The ends of the ``n - 1`` months before ``now``'s month, then ``now``; oldest first."""
    assert now.tzinfo is not None, "aware datetimes only"
    ends = [now]
    first = now.date().replace(day=1)
    for _ in range(n - 1):
        last_day = first - dt.timedelta(days=1)
        ends.append(end_of_day(last_day, now.tzinfo))
        first = last_day.replace(day=1)
    return list(reversed(ends))


#: One month of the trend: (``mm/yy`` label, working, broken); counts are None
#: when no cluster existed yet at that month's end ("no data").
TrendMonth = tuple[str, int | None, int | None]


async def trend(
    repo: Repository, ends: Sequence[dt.datetime], scope: frozenset[str] | None
) -> list[TrendMonth]:
    """(``mm/yy`` label, working, broken) as of each moment in ``ends``, counting
    only the clusters that existed then (installed, listed or heard from)."""
    out: list[TrendMonth] = []
    now = time.time()
    for end in ends:
        if end.timestamp() >= now - 300:  # now: the counts kept as the fleet changes
            tally, _ = await repo.fleet_tally(scope)
            working = sum(r[-1] for r in tally if r[1] == Status.WORKING)
            broken = sum(r[-1] for r in tally if r[1] != Status.WORKING)
            label = end.strftime("%m/%y")
            out.append((label, None, None) if not working + broken else (label, working, broken))
            continue
        # Past month ends are computed once and kept (until late history changes them).
        counts = await repo.counts_as_of(end.timestamp(), keep_before=now - 300)
        if scope is None:
            working, broken = counts.get("*", (0, 0))
        else:
            working = sum(counts.get(c, (0, 0))[0] for c in scope)
            broken = sum(counts.get(c, (0, 0))[1] for c in scope)
        label = end.strftime("%m/%y")
        out.append((label, None, None) if not working + broken else (label, working, broken))
    return out


def signal_grade(report: dict[str, Any] | None) -> tuple[str, float | None, str]:
    """(grade key, value, unit) from a state report's modem, on the field's RSRP scale.

    RSRP -80 dBm or better is excellent, to -90 good, to -100 fair, below that
    poor; without RSRP, RSSI on the CSQ scale (-70/-85/-100). "grade_none" when
    the modem reports no value.
    """
    modem = (report or {}).get("modem") or {}
    rsrp = modem.get("rsrp_dbm")
    if isinstance(rsrp, int | float):
        bands = ((-80, "grade_excellent"), (-90, "grade_good"), (-100, "grade_fair"))
        value, unit = float(rsrp), "RSRP"
    else:
        rssi = modem.get("rssi_dbm")
        if not isinstance(rssi, int | float):
            return "grade_none", None, ""
        bands = ((-70, "grade_excellent"), (-85, "grade_good"), (-100, "grade_fair"))
        value, unit = float(rssi), "RSSI"
    for threshold, key in bands:
        if value >= threshold:
            return key, value, unit
    return "grade_poor", value, unit


def amp_temperatures(
    reports: Iterable[tuple[float, dict[str, Any]]],
) -> list[tuple[float, float | None]]:
    """(time, amplifier °C or None) from state reports."""
    out: list[tuple[float, float | None]] = []
    for ts, report in reports:
        amp = report.get("amp") or {}
        value = amp.get("temperature_c") if isinstance(amp, dict) else None
        out.append((ts, float(value) if isinstance(value, int | float) else None))
    return out


def online_intervals(
    history: Sequence[Transition], *, start: float, end: float
) -> list[tuple[float, float, bool]]:
    """(from, to, online) spans covering [start, end] from the status transitions.

    Before the first transition nothing is known, so that span is left out.
    """
    spans: list[tuple[float, float, bool]] = []
    current: bool | None = None
    since = start
    for tr in history:
        ts = tr.ts
        if ts > end:
            break
        online = tr.state.online
        if ts <= start:
            current = online
            continue
        if current is not None and online != current:
            spans.append((since, ts, current))
            since = ts
        elif current is None:
            since = ts
        current = online
    if current is not None:
        spans.append((since, end, current))
    return spans


def fingerprint(rows: Sequence[DeviceRow], tickets: Iterable[Any], newest_event: Any) -> str:
    """A short hash of what the pages show: changes whenever a status, cause,
    link, repair state or the newest event changes."""
    h = hashlib.sha256()
    for r in rows:
        h.update(
            f"{r.device_id}|{r.status}|{r.cause}|{r.online}|{r.in_repair}|{r.since}\n".encode()
        )
    for t in tickets:
        h.update(f"t{t.id}|{t.state}|{t.last_progress_at}\n".encode())
    if newest_event is not None:
        h.update(f"e{newest_event.device_id}|{newest_event.seq}".encode())
    return h.hexdigest()[:20]
