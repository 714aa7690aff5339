"""Pure parts of the dashboard: month ends, online spans, signal grades, markup, charts."""

from __future__ import annotations

import datetime as dt
import re
from zoneinfo import ZoneInfo

import pytest

from collector.fleet import FleetState, Transition
from collector.model import Status
from collector.store.base import DeviceRow
from collector.web import charts, views
from collector.web.i18n import MESSAGES, Tr
from collector.web.markup import Html, attrs, esc, html, join
from fleet_protocol import B2Cause

TZ = ZoneInfo("Asia/Ho_Chi_Minh")


def test_month_ends_are_the_last_moments_of_each_month_then_now() -> None:
    now = dt.datetime(2023, 8, 15, 10, 0, tzinfo=TZ)
    ends = views.month_ends(now)
    assert len(ends) == 12 and ends[-1] == now
    assert ends[-2] == dt.datetime(2023, 7, 31, 23, 59, 59, 999999, tzinfo=TZ)
    assert ends[0].date() == dt.date(2022, 9, 30)
    assert ends == sorted(ends)
    # February in a leap year, and across a year boundary.
    ends = views.month_ends(dt.datetime(2024, 3, 1, 0, 0, 1, tzinfo=TZ), n=3)
    assert [e.date() for e in ends[:2]] == [dt.date(2024, 1, 31), dt.date(2024, 2, 29)]


def _tr(ts: float, online: bool) -> Transition:
    return Transition(ts, 1, FleetState(online=online))


def test_online_intervals_cover_the_window_from_the_state_at_its_start() -> None:
    history = [_tr(50, True), _tr(120, False), _tr(150, True), _tr(400, False)]
    assert views.online_intervals(history, start=100, end=300) == [
        (100, 120, True),
        (120, 150, False),
        (150, 300, True),
    ]
    # Nothing known before the first transition: that span stays blank.
    assert views.online_intervals([_tr(200, True)], start=100, end=300) == [(200, 300, True)]
    assert views.online_intervals([], start=100, end=300) == []
    # Repeated states (a report after a report) do not split a span.
    assert views.online_intervals([_tr(110, True), _tr(120, True)], start=100, end=300) == [
        (110, 300, True)
    ]


@pytest.mark.parametrize(
    ("modem", "grade", "value"),
    [
        ({"rsrp_dbm": -75.0, "rssi_dbm": -60.0}, "grade_excellent", -75.0),
        ({"rsrp_dbm": -80.0}, "grade_excellent", -80.0),
        ({"rsrp_dbm": -85.0}, "grade_good", -85.0),
        ({"rsrp_dbm": -99.9}, "grade_fair", -99.9),
        ({"rsrp_dbm": -101.0}, "grade_poor", -101.0),
        ({"rssi_dbm": -65.0}, "grade_excellent", -65.0),
        ({"rssi_dbm": -90.0}, "grade_fair", -90.0),
        ({"rssi_dbm": -105.0}, "grade_poor", -105.0),
        ({}, "grade_none", None),
        ({"rsrp_dbm": "garbage"}, "grade_none", None),
    ],
)
def test_signal_grade_on_the_field_scale(
    modem: dict[str, object], grade: str, value: float | None
) -> None:
    got = views.signal_grade({"modem": modem})
    assert got[:2] == (grade, value)
    assert views.signal_grade(None)[0] == "grade_none"


def _row(device: str, commune: str, status: Status, **kw: object) -> DeviceRow:
    base: dict[str, object] = {
        "device_id": device,
        "commune_code": commune,
        "in_inventory": True,
        "status": status,
        "cause": B2Cause.UNKNOWN if status is Status.BROKEN else None,
        "online": True,
        "never_reported": False,
        "in_repair": False,
        "since": 0.0,
        "last_seen": 0.0,
        "last_ts": 0.0,
        "last_seq": 1,
    }
    base.update(kw)
    return DeviceRow(**base)  # type: ignore[arg-type]


def test_commune_stats_and_worst_communes() -> None:
    labels = {"a": "Xã A", "b": "Xã B", "c": "Xã C"}
    rows = [
        _row("d1", "a", Status.WORKING),
        _row("d2", "a", Status.BROKEN, in_repair=True),
        _row("d3", "b", Status.BROKEN),
        _row("d4", "x", Status.WORKING),  # reporting, not in the inventory
    ]
    stats = views.commune_stats(labels, rows, None)
    assert [s.code for s in stats] == ["a", "b", "c", "x"]
    a = stats[0]
    assert (a.total, a.working, a.broken, a.in_repair, a.not_repaired) == (2, 1, 1, 1, 0)
    assert stats[2].total == 0 and stats[2].ratio == 1.0
    assert stats[3].label == "x"
    assert [s.code for s in views.worst_communes(stats)] == ["b", "a"]
    scoped = views.commune_stats(labels, rows[:2], frozenset({"a"}))
    assert [s.code for s in scoped] == ["a"]


def test_fingerprint_changes_only_with_what_pages_show() -> None:
    rows = [_row("d1", "a", Status.WORKING)]
    fp = views.fingerprint(rows, [], None)
    assert fp == views.fingerprint(list(rows), [], None)
    assert fp != views.fingerprint([_row("d1", "a", Status.BROKEN)], [], None)
    assert fp != views.fingerprint([_row("d1", "a", Status.WORKING, online=False)], [], None)
    # A heartbeat (new seq, same status) does not make every page refresh.
    assert fp == views.fingerprint([_row("d1", "a", Status.WORKING, last_seq=9)], [], None)


def test_markup_escapes_everything_not_marked_trusted() -> None:
    hostile = '<script>alert("x")</script>'
    assert esc(hostile) == "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"
    assert html("<p>{v}</p>", v=hostile) == f"<p>{esc(hostile)}</p>"
    assert html("<p>{v}</p>", v=Html("<b>ok</b>")) == "<p><b>ok</b></p>"
    assert join(["<a>", Html("<b>")], "|") == "&lt;a&gt;|<b>"
    assert attrs(class_="x", data_api='/u/"q"', hidden=True, gone=None, off=False) == (
        ' class="x" data-api="/u/&quot;q&quot;" hidden'
    )
    assert esc(None) == ""


def test_every_label_has_both_languages_and_formatting_follows_the_language() -> None:
    for key, (vi, en) in MESSAGES.items():
        assert vi and en, key
    vi, en = Tr("vi"), Tr("en")
    assert vi("working") == "Hoạt động tốt" and en("working") == "Working"
    assert vi.percent(1, 3) == "33,3%" and en.percent(1, 3) == "33.3%"
    assert vi.percent(0, 0) == "—"
    assert vi.duration(3 * 86400 + 4 * 3600) == "3 ngày 4 giờ"
    assert en.duration(3 * 86400 + 4 * 3600) == "3 d 4 h"
    assert vi.duration(90 * 60) == "1 giờ 30 phút" and vi.duration(59) == "0 phút"
    assert Tr("fr").lang == "vi"
    assert vi.datetime(1690822800, TZ) == "01/08/2023 00:00"  # 17:00 UTC, UTC+7


def _points(svg: str) -> list[tuple[float, float]]:
    out = []
    for line in re.findall(r'points="([^"]+)"', svg):
        for pair in line.split():
            x, y = pair.split(",")
            out.append((float(x), float(y)))
    return out


def test_time_series_stays_inside_its_frame_and_breaks_at_gaps() -> None:
    start, end = 0.0, 86400.0
    pts: list[tuple[float, float | None]] = [
        (t, 38 + (t // 3600) % 9) for t in range(0, 86401, 3600)
    ]
    svg = charts.time_series(
        [charts.Series("T", pts)], start=start, end=end, tz=TZ, title="t", empty_text="-"
    )
    assert svg.count("<polyline") == 1
    for x, y in _points(svg):
        assert 48 <= x <= 720 - 12 and 36 <= y <= 220 - 26, (x, y)
    # A silent afternoon splits the line in two.
    gappy = [p for p in pts if not 10 * 3600 < p[0] < 16 * 3600]
    svg = charts.time_series(
        [charts.Series("T", gappy)], start=start, end=end, tz=TZ, title="t", empty_text="-"
    )
    assert svg.count("<polyline") == 2
    empty = charts.time_series(
        [charts.Series("T", [])], start=start, end=end, tz=TZ, title="t", empty_text="Không có"
    )
    assert "Không có" in empty and "<polyline" not in empty


def test_trend_bars_and_map_draw_one_mark_per_item() -> None:
    svg = charts.trend_bars([("07/23", 148, 52), ("08/23", 150, 50)], title="t", labels=("W", "B"))
    assert svg.count("<rect") == 2 * 2 + 2  # two bars each, plus the legend
    assert "<title>07/23: W 148, B 52</title>" in svg
    points = [
        charts.MapPoint(lat=21.3, lon=105.2, label="a", working=True, href="/devices/a"),
        charts.MapPoint(lat=21.4, lon=105.3, label="<b>", working=False, href="/devices/b"),
    ]
    svg = charts.position_map(points, title="m")
    assert svg.count("<circle") == 2 and "&lt;b&gt;" in svg and "<b>" not in svg
    # A single point (or identical coordinates) still lands inside the frame.
    one = charts.position_map(points[:1], title="m")
    cx, cy = (float(v) for v in re.search(r'cx="([\d.]+)" cy="([\d.]+)"', one).groups())  # type: ignore[union-attr]
    assert 0 < cx < 720 and 0 < cy < 420
