"""as_of parsing: a date means the end of that day in the configured zone."""

from __future__ import annotations

import datetime as dt

import pytest

from collector.b2 import AsOfError, end_of_day, parse_as_of, previous_month_end, zone

TZ = zone("Asia/Ho_Chi_Minh")


def test_a_date_is_the_end_of_that_day_in_vietnam() -> None:
    moment = parse_as_of("2023-07-31", TZ)
    assert moment.date() == dt.date(2023, 7, 31)
    # 24:00 on 31/7 in UTC+7 is 17:00 UTC.
    assert moment.timestamp() == pytest.approx(
        dt.datetime(2023, 7, 31, 17, tzinfo=dt.UTC).timestamp(), abs=1e-5
    )
    assert parse_as_of("31/7/2023", TZ) == moment == end_of_day(dt.date(2023, 7, 31), TZ)


def test_date_times_are_taken_as_given() -> None:
    assert parse_as_of("2023-07-31T12:00", TZ) == dt.datetime(2023, 7, 31, 12, tzinfo=TZ)
    assert parse_as_of("2023-07-31T12:00+00:00", TZ).utcoffset() == dt.timedelta(0)


@pytest.mark.parametrize("bad", ["31/13/2023", "2023-02-30", "yesterday", ""])
def test_bad_as_of_names_the_value(bad: str) -> None:
    with pytest.raises(AsOfError, match="as_of"):
        parse_as_of(bad, TZ)


def test_unknown_zone_is_named() -> None:
    with pytest.raises(AsOfError, match="Mars/Olympus"):
        zone("Mars/Olympus")


def test_previous_month_end() -> None:
    assert previous_month_end(parse_as_of("2023-08-15", TZ)) == end_of_day(dt.date(2023, 7, 31), TZ)
    assert previous_month_end(parse_as_of("2023-03-01", TZ)).date() == dt.date(2023, 2, 28)
