"""The B2 table: fleet status per commune as of a moment. Pure.

Inputs are the inventory and every device's status at the moment (the store's
``statuses_as_of(t)``); output is a :class:`B2Table` that every export renders
the same way. The table guarantees, for every row and for the total row:

- ``total == working + broken``;
- ``broken == in_repair + not_repaired``;
- ``sum(causes) == broken``;
- the total row is the sum of the rows.

Inventory devices with no status count as broken with cause ``unknown`` and
"never reported" (as does a status flagged ``never_reported``); a broken status
without a cause counts as ``unknown``. Statuses of devices that are not in the
inventory are left out of the table and listed in ``unlisted``. A cluster whose
status says it did not exist yet (``exists=False``: installed, listed and first
heard from only later) is not counted at all; when no cluster of the table's
scope existed, the table has no rows and ``no_data`` is set: a B2 for a month
before the fleet existed says "no data" instead of counting it broken.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Final

from collector.b2.availability import Evaluation
from collector.b2.summary import ranked_causes, summary_sentence
from collector.model import CommuneKind, DeviceStatus, InventoryDevice, Status
from fleet_protocol import B2Cause

CAUSES: Final[tuple[B2Cause, ...]] = tuple(B2Cause)


class Scope(enum.StrEnum):
    """What one row of the table stands for."""

    COMMUNE = "commune"
    DISTRICT = "district"
    PROVINCE = "province"


_KIND_EN: Final[dict[CommuneKind, str]] = {
    CommuneKind.XA: "commune",
    CommuneKind.PHUONG: "ward",
    CommuneKind.THI_TRAN: "township",
}

#: UI text per language: (Vietnamese, English).
TEXT: Final[dict[str, tuple[str, str]]] = {
    "form": ("Biểu B2", "Form B2"),
    "title": (
        "TÌNH HÌNH HOẠT ĐỘNG CỦA HỆ THỐNG TRUYỀN THANH CƠ SỞ",
        "STATUS OF THE COMMUNE RADIO SYSTEM",
    ),
    "as_of": ("tính đến ngày", "as of"),
    "unit_label": ("Đơn vị", "Unit"),
    "stt": ("STT", "No."),
    "unit": ("Đơn vị", "Unit"),
    "total_clusters": ("Tổng số cụm loa", "Total clusters"),
    "working": ("Hoạt động tốt", "Working"),
    "broken_group": ("Hỏng, không hoạt động", "Broken, not working"),
    "broken": ("Tổng", "Total"),
    "in_repair": ("Đang sửa chữa", "Under repair"),
    "not_repaired": ("Chưa sửa chữa", "Not repaired"),
    "cause_group": ("Nguyên nhân", "Causes"),
    "causes_text": ("Diễn giải", "As text"),
    "notes": ("Ghi chú", "Notes"),
    "total_row": ("Tổng cộng", "Total"),
    "summary": ("Tóm tắt", "Summary"),
    "unknown_district": ("(chưa rõ huyện)", "(district not set)"),
    "unknown_province": ("(chưa rõ tỉnh)", "(province not set)"),
    "all_units": ("Toàn bộ danh mục", "Whole inventory"),
    "no_data": ("Không có dữ liệu", "No data"),
}


def text(key: str, lang: str = "vi") -> str:
    """A fixed label of the B2 report in ``lang`` ("vi" by default, or "en")."""
    return TEXT[key][1 if lang == "en" else 0]


def column_groups(lang: str = "vi") -> list[tuple[str, tuple[str, ...]]]:
    """The two-level header: (group label, sub-labels); no sub-labels = one column
    spanning both header rows. Flattened, it matches :meth:`B2Row.cells`."""
    return [
        (text("stt", lang), ()),
        (text("unit", lang), ()),
        (text("total_clusters", lang), ()),
        (text("working", lang), ()),
        (
            text("broken_group", lang),
            (text("broken", lang), text("in_repair", lang), text("not_repaired", lang)),
        ),
        (
            text("cause_group", lang),
            (*(c.label(lang) for c in CAUSES), text("causes_text", lang)),
        ),
        (text("notes", lang), ()),
    ]


def flat_columns(lang: str = "vi") -> list[str]:
    """One label per cell of :meth:`B2Row.cells`: "group - sub" for grouped columns."""
    return [
        f"{group} - {sub}" if subs else group
        for group, subs in column_groups(lang)
        for sub in (subs or ("",))
    ]


def commune_label(kind: CommuneKind, name: str, lang: str = "vi") -> str:
    """ "Xã Sơn Vi" / "Thị trấn Lâm Thao" ("Sơn Vi commune" in English); a name that
    already starts with its kind is kept as is."""
    if lang == "en":
        return f"{name} {_KIND_EN[kind]}"
    if name.lower().startswith(kind.value + " "):
        return name[:1].upper() + name[1:]
    return f"{kind.value.capitalize()} {name}"


@dataclass(frozen=True, slots=True, kw_only=True)
class B2Row:
    """One row of the table (a commune, district or province), or the total row."""

    #: 1-based row number; None on the total row.
    stt: int | None
    #: Display name ("Xã Sơn Vi"; "Tổng cộng" on the total row).
    unit: str
    #: Commune code, district or province name the row groups by; "" on the total row.
    key: str
    total: int
    working: int
    broken: int
    in_repair: int
    not_repaired: int
    #: Count per cause, in :data:`CAUSES` order.
    causes: tuple[int, ...]
    #: The non-zero causes with counts, most frequent first.
    causes_text: str
    never_reported: int
    #: Clusters offline (heard from before) for longer than the table's offline_days.
    offline_long: int
    notes: str
    #: Broken clusters per source of their cause (``collector.causes.CauseSource`` values).
    sources: dict[str, int] = field(default_factory=dict)

    def cause(self, cause: B2Cause) -> int:
        return self.causes[CAUSES.index(cause)]

    def cause_counts(self) -> dict[B2Cause, int]:
        return dict(zip(CAUSES, self.causes, strict=True))

    def cells(self) -> list[int | str]:
        """The row as printed: one value per column of :func:`flat_columns`."""
        return [
            "" if self.stt is None else self.stt,
            self.unit,
            self.total,
            self.working,
            self.broken,
            self.in_repair,
            self.not_repaired,
            *self.causes,
            self.causes_text,
            self.notes,
        ]


@dataclass(frozen=True, slots=True, kw_only=True)
class B2Table:
    """The B2 report as of one moment, ready for every export."""

    as_of: dt.datetime
    scope: Scope
    lang: str
    #: The reporting unit's name for the title ("Huyện Lâm Thao, Tỉnh Phú Thọ").
    unit_name: str
    offline_days: float
    rows: tuple[B2Row, ...]
    total: B2Row
    summary: str
    #: Devices that have a status but are not in the inventory (not counted).
    unlisted: tuple[str, ...] = field(default=())
    #: Per broken device: its cause, the cause's source and evidence (JSON-ready).
    causes_by_device: dict[str, dict[str, object]] = field(default_factory=dict)
    #: When the B2 for this date was first produced (None: this is the first time).
    first_produced_at: float | None = None
    #: What changed since then, one line per changed cluster or row (empty: nothing).
    changes: tuple[str, ...] = field(default=())
    #: No cluster of the scope existed at ``as_of``: no rows, "no data".
    no_data: bool = False
    #: Monthly availability and ranking of the rows' communes (``collector.b2.availability``).
    evaluation: Evaluation | None = None

    @property
    def day(self) -> dt.date:
        return self.as_of.date()

    def all_rows(self) -> tuple[B2Row, ...]:
        """The rows, then the total row."""
        return (*self.rows, self.total)


class _Tally:
    """Counts accumulated for one row."""

    def __init__(self) -> None:
        self.working = 0
        self.in_repair = 0
        self.not_repaired = 0
        self.causes = dict.fromkeys(CAUSES, 0)
        self.never_reported = 0
        self.offline_long = 0
        #: Broken clusters per cause source (``DeviceStatus.cause_source``).
        self.sources: dict[str, int] = {}

    def add(self, status: DeviceStatus | None, offline_before: float) -> None:
        if status is None or status.never_reported:
            # Never heard from: broken, cause unknown (DESIGN "B2 table").
            self.never_reported += 1
            if status is not None and status.in_repair:
                self.in_repair += 1
            else:
                self.not_repaired += 1
            self.causes[B2Cause.UNKNOWN] += 1
            return
        if not status.online and status.last_seen is not None and status.last_seen < offline_before:
            self.offline_long += 1
        if status.status is Status.WORKING:
            self.working += 1
            return
        if status.in_repair:
            self.in_repair += 1
        else:
            self.not_repaired += 1
        self.causes[status.cause or B2Cause.UNKNOWN] += 1
        if status.cause_source:
            self.sources[status.cause_source] = self.sources.get(status.cause_source, 0) + 1

    def merge(self, other: _Tally) -> None:
        self.working += other.working
        self.in_repair += other.in_repair
        self.not_repaired += other.not_repaired
        for cause, n in other.causes.items():
            self.causes[cause] += n
        self.never_reported += other.never_reported
        self.offline_long += other.offline_long
        for source, n in other.sources.items():
            self.sources[source] = self.sources.get(source, 0) + n

    def row(self, *, stt: int | None, unit: str, key: str, lang: str, offline_days: float) -> B2Row:
        broken = self.in_repair + self.not_repaired
        return B2Row(
            stt=stt,
            unit=unit,
            key=key,
            total=self.working + broken,
            working=self.working,
            broken=broken,
            in_repair=self.in_repair,
            not_repaired=self.not_repaired,
            causes=tuple(self.causes[c] for c in CAUSES),
            causes_text="; ".join(f"{c.label(lang)} ({n})" for c, n in ranked_causes(self.causes)),
            never_reported=self.never_reported,
            offline_long=self.offline_long,
            notes="; ".join(
                p
                for p in (
                    _notes(self.never_reported, self.offline_long, offline_days, lang),
                    source_notes(self.sources, lang),
                )
                if p
            ),
            sources=dict(self.sources),
        )


def _days(value: float) -> str:
    return f"{value:g}"


def _notes(never: int, offline: int, offline_days: float, lang: str) -> str:
    parts: list[str] = []
    if lang == "en":
        if never:
            parts.append(f"{never} cluster{'s' if never != 1 else ''} never reported")
        if offline:
            parts.append(
                f"{offline} cluster{'s' if offline != 1 else ''} offline for over "
                f"{_days(offline_days)} days"
            )
    else:
        if never:
            parts.append(f"{never} cụm loa chưa từng báo cáo")
        if offline:
            parts.append(f"{offline} cụm loa mất kết nối quá {_days(offline_days)} ngày")
    return "; ".join(parts)


#: Sources the note names, in this order; a cause the device reported live is the norm.
_NOTED_SOURCES: Final = ("finding", "sms", "device_late", "inferred")


def source_notes(sources: dict[str, int], lang: str = "vi") -> str:
    """ "3 cụm: nguyên nhân do kỹ thuật viên xác định; ..." for the sources worth saying."""
    from collector.causes import CauseSource

    parts = []
    for key in _NOTED_SOURCES:
        n = sources.get(key, 0)
        if not n:
            continue
        label = CauseSource(key).label(lang)
        if lang == "en":
            parts.append(f"{n} cluster{'s' if n != 1 else ''}: cause {label}")
        else:
            parts.append(f"{n} cụm: nguyên nhân {label}")
    return "; ".join(parts)


def _group_key(device: InventoryDevice, scope: Scope) -> str:
    if scope is Scope.DISTRICT:
        return device.district
    if scope is Scope.PROVINCE:
        return device.province
    return device.commune_code


def _group_label(device: InventoryDevice, scope: Scope, lang: str) -> str:
    if scope is Scope.DISTRICT:
        return device.district or text("unknown_district", lang)
    if scope is Scope.PROVINCE:
        return device.province or text("unknown_province", lang)
    return commune_label(device.commune_kind, device.commune_name, lang)


def default_unit_name(devices: Sequence[InventoryDevice], scope: Scope, lang: str = "vi") -> str:
    """The reporting unit for the title: the one level above the rows, when it is unique.

    Commune rows of one district give "Huyện Lâm Thao, Tỉnh Phú Thọ"; several
    districts of one province give "Tỉnh Phú Thọ"; otherwise "Toàn bộ danh mục".
    """
    districts = list(dict.fromkeys(d.district for d in devices))
    provinces = list(dict.fromkeys(d.province for d in devices))
    if scope is Scope.COMMUNE and len(districts) == 1 and districts[0]:
        parts = [districts[0]] + ([provinces[0]] if len(provinces) == 1 and provinces[0] else [])
        return ", ".join(parts)
    if scope is not Scope.PROVINCE and len(provinces) == 1 and provinces[0]:
        return provinces[0]
    return text("all_units", lang)


def select_devices(
    inventory: Iterable[InventoryDevice],
    *,
    district: str | None = None,
    province: str | None = None,
    communes: Collection[str] | None = None,
) -> list[InventoryDevice]:
    """The part of the inventory a table covers, in inventory order."""
    return sorted(
        (
            d
            for d in inventory
            if (district is None or d.district == district)
            and (province is None or d.province == province)
            and (communes is None or d.commune_code in communes)
        ),
        key=lambda d: d.position,
    )


def compute_b2(
    inventory: Iterable[InventoryDevice],
    statuses: Iterable[DeviceStatus],
    *,
    as_of: dt.datetime,
    scope: Scope = Scope.COMMUNE,
    lang: str = "vi",
    offline_days: float = 7.0,
    unit_name: str | None = None,
    district: str | None = None,
    province: str | None = None,
    communes: Collection[str] | None = None,
) -> B2Table:
    """The B2 table of ``inventory`` given every device's status at ``as_of``.

    Rows come in inventory order (``position``): a commune (district,
    province) takes the place where its first device appears. ``district`` /
    ``province`` / ``communes`` (commune codes, e.g. a commune officer's
    scope) restrict the table to that part of the inventory. ``as_of``
    must be aware; its date in its own zone is the date the report names.
    """
    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware")
    if lang not in ("vi", "en"):
        raise ValueError(f"lang {lang!r}: expected 'vi' or 'en'")
    inventory = list(inventory)
    scoped = select_devices(inventory, district=district, province=province, communes=communes)
    devices = scoped
    by_id: dict[str, DeviceStatus] = {}
    for status in statuses:
        if status.device_id in by_id:
            raise ValueError(f"two statuses for device {status.device_id!r}")
        by_id[status.device_id] = status
    listed = {d.device_id for d in devices}
    filtered = district is not None or province is not None or communes is not None
    all_listed = {d.device_id for d in inventory} if filtered else listed

    offline_before = as_of.timestamp() - offline_days * 86400.0
    tallies: dict[str, tuple[str, _Tally]] = {}
    devices = [d for d in scoped if d.device_id not in by_id or by_id[d.device_id].exists]
    for device in devices:
        key = _group_key(device, scope)
        if key not in tallies:
            tallies[key] = (_group_label(device, scope, lang), _Tally())
        tallies[key][1].add(by_id.get(device.device_id), offline_before)

    rows: list[B2Row] = []
    grand = _Tally()
    for stt, (key, (label, tally)) in enumerate(tallies.items(), start=1):
        rows.append(tally.row(stt=stt, unit=label, key=key, lang=lang, offline_days=offline_days))
        grand.merge(tally)
    total = grand.row(
        stt=None, unit=text("total_row", lang), key="", lang=lang, offline_days=offline_days
    )
    no_data = bool(scoped) and not devices
    if no_data:
        total = replace(total, notes=text("no_data", lang))
    return B2Table(
        as_of=as_of,
        scope=scope,
        lang=lang,
        unit_name=unit_name if unit_name is not None else default_unit_name(scoped, scope, lang),
        offline_days=offline_days,
        rows=tuple(rows),
        total=total,
        summary=summary_sentence(
            day=as_of.date(),
            working=total.working,
            in_repair=total.in_repair,
            not_repaired=total.not_repaired,
            causes=total.cause_counts(),
            lang=lang,
            no_data=no_data,
        ),
        unlisted=tuple(sorted(d for d in by_id if d not in all_listed)),
        no_data=no_data,
    )
