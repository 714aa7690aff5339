"""Month-over-month: what changed between two B2 moments. Pure.

The material for the notice's commentary: clusters newly broken, repaired and
still broken, and the communes that improved or worsened (fewer or more broken
clusters). Devices are those of the inventory; one with no status at a moment
counts as broken there (never reported), as in the B2 table.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from collector.b2.dates import short_date
from collector.b2.table import commune_label
from collector.model import DeviceStatus, InventoryDevice, Status


@dataclass(frozen=True, slots=True, kw_only=True)
class CommuneTrend:
    """Broken clusters of one commune at both moments."""

    commune_code: str
    unit: str
    broken_before: int
    broken_after: int

    @property
    def delta(self) -> int:
        """Change in broken clusters: negative is better."""
        return self.broken_after - self.broken_before


@dataclass(frozen=True, slots=True, kw_only=True)
class Comparison:
    """Changes from ``before`` to ``after``; device ids in inventory order."""

    before: dt.datetime
    after: dt.datetime
    newly_broken: tuple[str, ...]
    repaired: tuple[str, ...]
    still_broken: tuple[str, ...]
    #: Communes with fewer broken clusters, most improved first.
    improving: tuple[CommuneTrend, ...]
    #: Communes with more broken clusters, most worsened first.
    worsening: tuple[CommuneTrend, ...]
    sentence: str


def _broken(status: DeviceStatus | None) -> bool:
    return status is None or status.never_reported or status.status is Status.BROKEN


def compare_statuses(
    inventory: Iterable[InventoryDevice],
    before: Iterable[DeviceStatus],
    after: Iterable[DeviceStatus],
    *,
    before_at: dt.datetime,
    after_at: dt.datetime,
    lang: str = "vi",
) -> Comparison:
    """Compare the fleet's statuses at ``before_at`` and ``after_at``."""
    devices = sorted(inventory, key=lambda d: d.position)
    old = {s.device_id: s for s in before}
    new = {s.device_id: s for s in after}
    newly: list[str] = []
    repaired: list[str] = []
    still: list[str] = []
    communes: dict[str, list[int]] = {}
    labels: dict[str, str] = {}
    for device in devices:
        was, now = _broken(old.get(device.device_id)), _broken(new.get(device.device_id))
        counts = communes.setdefault(device.commune_code, [0, 0])
        labels.setdefault(
            device.commune_code, commune_label(device.commune_kind, device.commune_name, lang)
        )
        counts[0] += was
        counts[1] += now
        if now and not was:
            newly.append(device.device_id)
        elif was and not now:
            repaired.append(device.device_id)
        elif was and now:
            still.append(device.device_id)
    trends = [
        CommuneTrend(commune_code=code, unit=labels[code], broken_before=b, broken_after=a)
        for code, (b, a) in communes.items()
    ]
    improving = tuple(sorted((t for t in trends if t.delta < 0), key=lambda t: t.delta))
    worsening = tuple(sorted((t for t in trends if t.delta > 0), key=lambda t: -t.delta))
    return Comparison(
        before=before_at,
        after=after_at,
        newly_broken=tuple(newly),
        repaired=tuple(repaired),
        still_broken=tuple(still),
        improving=improving,
        worsening=worsening,
        sentence=_sentence(
            before_at.date(), len(newly), len(repaired), len(still), improving, worsening, lang
        ),
    )


def _sentence(
    since: dt.date,
    newly: int,
    repaired: int,
    still: int,
    improving: tuple[CommuneTrend, ...],
    worsening: tuple[CommuneTrend, ...],
    lang: str,
) -> str:
    if lang == "en":
        parts = [
            f"{newly} newly broken",
            f"{repaired} repaired",
            f"{still} still broken",
        ]
        text = f"Compared with {short_date(since)}: " + ", ".join(parts)
        if improving:
            text += "; improving: " + ", ".join(f"{t.unit} ({t.delta:+d})" for t in improving)
        if worsening:
            text += "; worsening: " + ", ".join(f"{t.unit} ({t.delta:+d})" for t in worsening)
        return text + "."
    parts = [
        f"{newly} cụm loa mới hỏng" if newly else "không có cụm loa nào mới hỏng",
        f"{repaired} cụm loa đã được khắc phục"
        if repaired
        else "không có cụm loa nào được khắc phục",
        f"{still} cụm loa vẫn còn hỏng" if still else "không còn cụm loa nào hỏng từ trước",
    ]
    text = f"So với ngày {short_date(since)}: " + ", ".join(parts)
    if improving:
        text += "; các đơn vị có chuyển biến tốt: " + ", ".join(
            f"{t.unit} (giảm {-t.delta})" for t in improving
        )
    if worsening:
        text += "; các đơn vị có thêm cụm loa hỏng: " + ", ".join(
            f"{t.unit} (tăng {t.delta})" for t in worsening
        )
    return text + "."
