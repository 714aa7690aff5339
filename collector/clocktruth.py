"""Which time to store for a device message: pure rules, no I/O.

Controllers without a real-time clock boot with a wrong wall clock and keep it
until NTP syncs over 4G. A newer agent says so on every message
(``clock_synced: false``) and stamps the boot (``boot_id``) and the seconds
since it (``mono``), which no clock step moves. So:

- a message from a synchronised clock (or an old agent, which says nothing)
  keeps its ``ts``; if it names its boot and ``mono``, it teaches the collector
  that boot's offset ``ts - mono``;
- an unsynchronised message of a boot whose offset is known is re-dated to
  ``mono + offset`` (its true time);
- an unsynchronised message of a boot not (yet) known is dated at its receive
  time and marked *estimated*; once the boot reports a synchronised time, the
  store re-dates it;
- a time before the cluster's install date, or further ahead than the allowed
  skew, is replaced by the receive time (estimated) and counted.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

#: The install date is a calendar date in some time zone; its earliest possible
#: local midnight is 14 h before midnight UTC (UTC+14), so no genuine report of
#: the install day is ever clamped.
_EARLIEST_ZONE_S = 14 * 3600


class Dating(enum.StrEnum):
    """How a stored time was arrived at."""

    DEVICE = "device"  # the device's own ts, from a clock it says is synchronised (or old agent)
    REDATED = "redated"  # mono + the boot's learned offset
    UNSYNCED = "unsynced"  # receive time: clock not synchronised, boot offset not known yet
    BEFORE_INSTALL = "before_install"  # receive time: ts before the cluster's install date
    FUTURE = "future"  # receive time: ts too far ahead of ours

    @property
    def estimated(self) -> bool:
        """The stored time is the receive time, not the event's own time."""
        return self in (Dating.UNSYNCED, Dating.BEFORE_INSTALL, Dating.FUTURE)


@dataclass(frozen=True, slots=True)
class Dated:
    ts: float
    how: Dating


def install_floor(install_date: str) -> float | None:
    """The earliest UNIX time a report of a cluster installed on ``install_date`` may carry.

    ``install_date`` is ISO ``YYYY-MM-DD`` (the inventory's form); "" or a
    malformed date gives None (no floor).
    """
    try:
        day = dt.date.fromisoformat(install_date)
    except ValueError:
        return None
    midnight = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()
    return midnight - _EARLIEST_ZONE_S


def date_message(
    *,
    ts: float,
    received_at: float,
    clock_synced: bool | None,
    mono: float | None,
    offset: float | None,
    floor: float | None,
    max_future_s: float,
) -> Dated:
    """The time to store for one message (see the module docstring)."""
    how = Dating.DEVICE
    if clock_synced is False:
        if mono is None or offset is None:
            return Dated(received_at, Dating.UNSYNCED)
        ts, how = mono + offset, Dating.REDATED
    if ts > received_at + max_future_s:
        return Dated(received_at, Dating.FUTURE)
    if floor is not None and ts < floor:
        return Dated(received_at, Dating.BEFORE_INSTALL)
    return Dated(ts, how)


def learned_offset(
    *, ts: float, clock_synced: bool | None, boot_id: str | None, mono: float | None, dated: Dated
) -> float | None:
    """The boot offset (wall - mono) a message teaches, or None.

    Only a message whose clock was synchronised and whose time passed every
    check teaches anything.
    """
    if clock_synced is False or boot_id is None or mono is None or dated.how is not Dating.DEVICE:
        return None
    return ts - mono


__all__ = ["Dated", "Dating", "date_message", "install_floor", "learned_offset"]
