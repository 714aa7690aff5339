"""Settings of the B2 report: the ``[report]`` section of the collector's config.

Kept free of imports beyond the standard library and ``collector.b2.dates`` so
the config module can use it without pulling in the store or openpyxl.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from collector.b2.dates import DEFAULT_TZ, AsOfError, zone


@dataclass(frozen=True, kw_only=True)
class ReportSettings:
    """Defaults of the B2 report."""

    #: IANA time zone in which a report date ends ("tính đến ngày 31/7" = 24:00 there).
    time_zone: str = DEFAULT_TZ
    #: A broken cluster silent for longer than this many days gets a note ("Ghi chú").
    offline_days: float = 7.0
    #: The reporting unit printed in titles ("UBND huyện Lâm Thao"); "" = from the inventory.
    unit_name: str = ""
    #: Language of labels and the summary sentence: "vi" or "en".
    lang: str = "vi"
    #: Monthly evaluation ("xếp loại"): lowest share of cluster-hours working, in
    #: percent, graded Tốt, Khá and Trung bình; below rank_average_pct is Yếu.
    rank_good_pct: float = 90.0
    rank_fair_pct: float = 75.0
    rank_average_pct: float = 50.0

    def problems(self) -> list[str]:
        """What is wrong with these settings, as "[report] field: reason" lines."""
        out: list[str] = []
        try:
            zone(self.time_zone)
        except AsOfError as exc:
            out.append(f"[report] time_zone: {exc}")
        if not self.offline_days > 0:
            out.append("[report] offline_days: must be > 0")
        if self.lang not in ("vi", "en"):
            out.append("[report] lang: must be vi or en")
        if not (0 <= self.rank_average_pct <= self.rank_fair_pct <= self.rank_good_pct <= 100):
            out.append(
                "[report] rank_good_pct, rank_fair_pct, rank_average_pct:"
                " need 0 <= average <= fair <= good <= 100"
            )
        return out

    def tz(self) -> dt.tzinfo:
        """The configured zone (AsOfError naming it if unknown)."""
        return zone(self.time_zone)
