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
        return out

    def tz(self) -> dt.tzinfo:
        """The configured zone (AsOfError naming it if unknown)."""
        return zone(self.time_zone)
