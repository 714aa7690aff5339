"""Monthly availability and ranking of communes ("đánh giá, xếp loại"). Pure.

Per commune, the share of cluster-hours working in a month: each cluster
contributes the hours from the start of the month (or from when it started to
count: install date, first listing or first report) to the end of the window,
split into working and not working by its status transitions. The work is one
pass over each cluster's transitions in the window (``StatusTimeline``), never
a per-hour recomputation.

Communes are then graded as the district's monthly evaluation does, by
thresholds from ``[report]`` (default: Tốt >= 90 %, Khá >= 75 %, Trung bình
>= 50 %, else Yếu) and ranked by share (ties share a rank: 1, 2, 2, 4).
A commune with no cluster-hours in the window has no share and no grade
("không có dữ liệu"), and is listed last.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from collector.model import InventoryDevice
from collector.store.base import StatusTimeline, counted_seconds


class Grade(enum.StrEnum):
    GOOD = "good"
    FAIR = "fair"
    AVERAGE = "average"
    POOR = "poor"

    def label(self, lang: str = "vi") -> str:
        return GRADE_LABELS[self][1 if lang == "en" else 0]


GRADE_LABELS: Final[dict[Grade, tuple[str, str]]] = {
    Grade.GOOD: ("Tốt", "Good"),
    Grade.FAIR: ("Khá", "Fair"),
    Grade.AVERAGE: ("Trung bình", "Average"),
    Grade.POOR: ("Yếu", "Poor"),
}

#: Labels of the evaluation table: (Vietnamese, English).
TEXT: Final[dict[str, tuple[str, str]]] = {
    "title": ("ĐÁNH GIÁ, XẾP LOẠI HOẠT ĐỘNG THÁNG {month}", "MONTHLY EVALUATION, {month}"),
    "period": ("từ {start} đến {end}", "from {start} to {end}"),
    "rank": ("Xếp hạng", "Rank"),
    "unit": ("Đơn vị", "Unit"),
    "clusters": ("Số cụm loa", "Clusters"),
    "hours": ("Số giờ cụm loa", "Cluster-hours"),
    "working_hours": ("Số giờ hoạt động tốt", "Working hours"),
    "share": ("Tỷ lệ hoạt động (%)", "Availability (%)"),
    "grade": ("Xếp loại", "Grade"),
    "total": ("Tổng cộng", "Total"),
    "no_data": ("Không có dữ liệu", "No data"),
    "thresholds": (
        "Xếp loại: Tốt từ {good}%, Khá từ {fair}%, Trung bình từ {average}%, dưới đó Yếu.",
        "Grades: Good from {good}%, Fair from {fair}%, Average from {average}%, below that Poor.",
    ),
}


def text(key: str, lang: str = "vi", **values: object) -> str:
    """A label of the evaluation table in ``lang``, with ``values`` filled in."""
    return TEXT[key][1 if lang == "en" else 0].format(**values)


@dataclass(frozen=True, slots=True, kw_only=True)
class Thresholds:
    """Lowest availability (percent) of each grade; below ``average_pct`` is Yếu."""

    good_pct: float = 90.0
    fair_pct: float = 75.0
    average_pct: float = 50.0

    def grade(self, share: float) -> Grade:
        pct = share * 100
        if pct >= self.good_pct:
            return Grade.GOOD
        if pct >= self.fair_pct:
            return Grade.FAIR
        if pct >= self.average_pct:
            return Grade.AVERAGE
        return Grade.POOR


@dataclass(frozen=True, slots=True, kw_only=True)
class CommuneAvailability:
    """One commune's month (or the total): hours counted, hours working, share, grade."""

    key: str
    unit: str
    #: Clusters that counted at some time in the window.
    clusters: int
    cluster_hours: float
    working_hours: float
    #: 1-based rank by share (None: no data, or the total row).
    rank: int | None = None
    grade: Grade | None = None

    @property
    def share(self) -> float | None:
        """Working cluster-hours / counted cluster-hours (None: nothing counted)."""
        return self.working_hours / self.cluster_hours if self.cluster_hours > 0 else None

    def percent(self) -> str:
        """``"93,4"`` style (comma decimal, as Vietnamese tables print), or ""."""
        s = self.share
        return "" if s is None else f"{s * 100:.1f}".replace(".", ",")


@dataclass(frozen=True, slots=True, kw_only=True)
class Evaluation:
    """The month's availability per commune, in ranking order, and the total."""

    start: dt.datetime
    end: dt.datetime
    lang: str
    thresholds: Thresholds
    rows: tuple[CommuneAvailability, ...]
    total: CommuneAvailability

    @property
    def month(self) -> str:
        return f"{self.start.month}/{self.start.year}"

    def title(self) -> str:
        return text("title", self.lang, month=self.month)

    def period(self) -> str:
        fmt = "%d/%m/%Y %H:%M"
        return text("period", self.lang, start=self.start.strftime(fmt), end=self.end.strftime(fmt))

    def thresholds_note(self) -> str:
        t = self.thresholds
        return text(
            "thresholds", self.lang, good=f"{t.good_pct:g}", fair=f"{t.fair_pct:g}",
            average=f"{t.average_pct:g}",
        )  # fmt: skip

    def columns(self) -> list[str]:
        keys = ("rank", "unit", "clusters", "hours", "working_hours", "share", "grade")
        return [text(k, self.lang) for k in keys]

    def cells(self, row: CommuneAvailability) -> list[int | float | str]:
        """A row as printed, one value per :meth:`columns` entry."""
        no_data = row.share is None
        return [
            "" if row.rank is None else row.rank,
            row.unit,
            row.clusters,
            round(row.cluster_hours),
            round(row.working_hours),
            text("no_data", self.lang) if no_data else row.percent(),
            "" if row.grade is None else row.grade.label(self.lang),
        ]

    def all_rows(self) -> tuple[CommuneAvailability, ...]:
        return (*self.rows, self.total)


def _ranked(rows: Iterable[CommuneAvailability], th: Thresholds) -> list[CommuneAvailability]:
    with_data = sorted(
        (r for r in rows if r.share is not None),
        key=lambda r: (-(r.share or 0.0), -r.clusters, r.unit),
    )
    out: list[CommuneAvailability] = []
    for i, r in enumerate(with_data):
        rank = i + 1
        if out and out[-1].share == r.share:
            rank = out[-1].rank or rank
        share = r.share if r.share is not None else 0.0
        out.append(_with(r, rank=rank, grade=th.grade(share)))
    return out + [r for r in rows if r.share is None]


def _with(r: CommuneAvailability, *, rank: int | None, grade: Grade | None) -> CommuneAvailability:
    return CommuneAvailability(
        key=r.key,
        unit=r.unit,
        clusters=r.clusters,
        cluster_hours=r.cluster_hours,
        working_hours=r.working_hours,
        rank=rank,
        grade=grade,
    )


def evaluate(
    devices: Sequence[InventoryDevice],
    timelines: Iterable[StatusTimeline],
    *,
    start: dt.datetime,
    end: dt.datetime,
    label: Callable[[InventoryDevice], str],
    lang: str = "vi",
    thresholds: Thresholds = Thresholds(),
) -> Evaluation:
    """The evaluation of ``devices``' communes over [start, end] (aware datetimes).

    ``timelines`` must cover at least ``devices`` over that window
    (``Repository.status_timelines(start, end)``); others are ignored.
    ``label`` names a commune from one of its devices ("Xã Sơn Vi").
    """
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end must be timezone-aware")
    t0, t1 = start.timestamp(), end.timestamp()
    listed = {d.device_id for d in devices}
    seconds = {t.device_id: counted_seconds(t, t0, t1) for t in timelines if t.device_id in listed}
    return evaluate_seconds(
        devices, seconds, start=start, end=end, label=label, lang=lang, thresholds=thresholds
    )


def evaluate_seconds(
    devices: Sequence[InventoryDevice],
    seconds_by_device: Mapping[str, tuple[float, float]],
    *,
    start: dt.datetime,
    end: dt.datetime,
    label: Callable[[InventoryDevice], str],
    lang: str = "vi",
    thresholds: Thresholds = Thresholds(),
) -> Evaluation:
    """:func:`evaluate` from each device's (seconds counted, seconds working) over
    [start, end] (``Repository.availability_seconds``) instead of its timeline; a
    device not in ``seconds_by_device`` counted no time."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end must be timezone-aware")
    acc: dict[str, list[float]] = {}
    names: dict[str, str] = {}
    for d in sorted(devices, key=lambda d: d.position):
        seconds, working = seconds_by_device.get(d.device_id, (0.0, 0.0))
        if d.commune_code not in names:
            names[d.commune_code] = label(d)
        row = acc.setdefault(d.commune_code, [0.0, 0.0, 0.0])
        row[0] += 1 if seconds > 0 else 0
        row[1] += seconds / 3600
        row[2] += working / 3600
    rows = [
        CommuneAvailability(
            key=k, unit=names[k], clusters=int(v[0]), cluster_hours=v[1], working_hours=v[2]
        )
        for k, v in acc.items()
    ]
    total = CommuneAvailability(
        key="",
        unit=text("total", lang),
        clusters=sum(r.clusters for r in rows),
        cluster_hours=sum(r.cluster_hours for r in rows),
        working_hours=sum(r.working_hours for r in rows),
    )
    if total.share is not None:
        total = _with(total, rank=None, grade=thresholds.grade(total.share))
    return Evaluation(
        start=start,
        end=end,
        lang=lang,
        thresholds=thresholds,
        rows=tuple(_ranked(rows, thresholds)),
        total=total,
    )


def month_start(moment: dt.datetime) -> dt.datetime:
    """00:00 of the first day of ``moment``'s month, in its zone."""
    return dt.datetime.combine(moment.date().replace(day=1), dt.time(0), tzinfo=moment.tzinfo)


__all__ = [
    "GRADE_LABELS",
    "CommuneAvailability",
    "Evaluation",
    "Grade",
    "Thresholds",
    "counted_seconds",
    "evaluate",
    "evaluate_seconds",
    "month_start",
    "text",
]
