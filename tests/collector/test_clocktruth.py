"""The clock-truth rules: which time the collector stores for a device message."""

from __future__ import annotations

import datetime as dt

import pytest

from collector.clocktruth import Dating, date_message, install_floor, learned_offset

NOW = 1_790_000_000.0  # receive time
TRUE_OFFSET = 1_789_000_000.0  # wall = mono + offset for the boot
THREE_YEARS = 3 * 365 * 86400.0


@pytest.mark.parametrize(
    ("ts", "synced", "mono", "offset", "floor", "want_ts", "how"),
    [
        # An old agent (no clock fields) and a synchronised one keep their ts.
        (NOW - 50, None, None, None, None, NOW - 50, Dating.DEVICE),
        (NOW - 50, None, 950_000.0, None, None, NOW - 50, Dating.DEVICE),
        # Unsynchronised, boot offset known: re-dated to mono + offset, whatever ts said.
        (
            NOW - THREE_YEARS,
            False,
            900_000.0,
            TRUE_OFFSET,
            None,
            TRUE_OFFSET + 900_000,
            Dating.REDATED,
        ),
        # Unsynchronised, offset not known yet: the receive time, estimated.
        (NOW - THREE_YEARS, False, 900_000.0, None, None, NOW, Dating.UNSYNCED),
        (NOW - THREE_YEARS, False, None, TRUE_OFFSET, None, NOW, Dating.UNSYNCED),
        # Before the install date (an old agent with a clock in 2000): receive time.
        (946_700_000.0, None, None, None, NOW - 86400, NOW, Dating.BEFORE_INSTALL),
        # Re-dated but still before install: receive time.
        (NOW, False, 1.0, NOW - 10 * 86400, NOW - 86400, NOW, Dating.BEFORE_INSTALL),
        # Ahead of our clock by more than the skew allowed: receive time.
        (NOW + 3600, None, None, None, None, NOW, Dating.FUTURE),
        (NOW + 100, None, None, None, None, NOW + 100, Dating.DEVICE),
    ],
)
def test_date_message(
    ts: float,
    synced: bool | None,
    mono: float | None,
    offset: float | None,
    floor: float | None,
    want_ts: float,
    how: Dating,
) -> None:
    dated = date_message(
        ts=ts,
        received_at=NOW,
        clock_synced=synced,
        mono=mono,
        offset=offset,
        floor=floor,
        max_future_s=300.0,
    )
    assert (dated.ts, dated.how) == (pytest.approx(want_ts), how)
    assert dated.how.estimated == (how in (Dating.UNSYNCED, Dating.BEFORE_INSTALL, Dating.FUTURE))


def test_only_a_trusted_synchronised_message_teaches_an_offset() -> None:
    def teach(ts: float, synced: bool | None, boot: str | None, mono: float | None) -> float | None:
        dated = date_message(
            ts=ts,
            received_at=NOW,
            clock_synced=synced,
            mono=mono,
            offset=None,
            floor=None,
            max_future_s=300.0,
        )
        return learned_offset(ts=ts, clock_synced=synced, boot_id=boot, mono=mono, dated=dated)

    assert teach(NOW - 5, None, "ab12cd34", 1000.0) == pytest.approx(NOW - 1005)
    assert teach(NOW - 5, False, "ab12cd34", 1000.0) is None  # unsynchronised
    assert teach(NOW - 5, None, None, 1000.0) is None  # no boot
    assert teach(NOW + 9999, None, "ab12cd34", 1000.0) is None  # clamped: not trusted


def test_install_floor_never_clamps_the_install_day_anywhere() -> None:
    floor = install_floor("2024-03-05")
    assert floor is not None
    # Midnight of 5 March in UTC+14, the earliest local midnight there is.
    assert floor == dt.datetime(2024, 3, 4, 10, tzinfo=dt.UTC).timestamp()
    assert install_floor("") is None
    assert install_floor("05/03/2024") is None
