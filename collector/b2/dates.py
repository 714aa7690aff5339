"""The B2 report's notion of time: "tính đến ngày 31/7/2023" means the end of that day.

A date names the end of that day in the configured time zone (Asia/Ho_Chi_Minh
by default); a date and time is taken as given (a naive one in that zone).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_TZ: Final = "Asia/Ho_Chi_Minh"

_DMY_RE: Final = re.compile(r"(\d{1,2})/(\d{1,2})/(\d{4})")


class AsOfError(ValueError):
    """An ``as_of`` value or time zone that cannot be understood; the message names it."""


def zone(name: str = DEFAULT_TZ) -> ZoneInfo:
    """The named IANA time zone, or AsOfError naming it."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise AsOfError(f"time zone {name!r}: unknown (expected an IANA name)") from exc


def end_of_day(day: dt.date, tz: dt.tzinfo) -> dt.datetime:
    """The last microsecond of ``day`` in ``tz``: its date is still ``day``."""
    midnight = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), tzinfo=tz)
    return midnight - dt.timedelta(microseconds=1)


def parse_as_of(text: str, tz: dt.tzinfo) -> dt.datetime:
    """An aware datetime from ``YYYY-MM-DD``, ``d/m/yyyy`` (end of that day in ``tz``)
    or an ISO date-time (naive ones are in ``tz``)."""
    value = text.strip()
    try:
        match = _DMY_RE.fullmatch(value)
        if match:
            day, month, year = (int(g) for g in match.groups())
            return end_of_day(dt.date(year, month, day), tz)
        if len(value) == 10:
            return end_of_day(dt.date.fromisoformat(value), tz)
        moment = dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise AsOfError(
            f"as_of {text!r:.40}: not a date (YYYY-MM-DD or dd/mm/yyyy) or ISO date-time"
        ) from exc
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=tz)


def at(timestamp: float, tz: dt.tzinfo) -> dt.datetime:
    """A UNIX time as an aware datetime in ``tz``."""
    return dt.datetime.fromtimestamp(timestamp, tz)


def previous_month_end(moment: dt.datetime) -> dt.datetime:
    """End of the last day of the month before ``moment``'s month, in its zone."""
    assert moment.tzinfo is not None, "as_of datetimes are aware"
    first = moment.date().replace(day=1)
    return end_of_day(first - dt.timedelta(days=1), moment.tzinfo)


def short_date(day: dt.date) -> str:
    """``31/7/2023``: the date as the district's notices write it in running text."""
    return f"{day.day}/{day.month}/{day.year}"


def title_date(day: dt.date) -> str:
    """``31/07/2023``: the date as table titles print it."""
    return day.strftime("%d/%m/%Y")
