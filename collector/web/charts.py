"""Server-side SVG charts: pure functions from numbers to markup, no scripts, no CDN.

Every chart scales to its container (``viewBox`` with ``width: 100%``) so it
reads on a phone, uses presentation attributes only (the pages' Content
Security Policy forbids inline styles), and carries a ``<title>`` for screen
readers. Times are UNIX seconds; labels are in the given time zone.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from collector.web.markup import Html, esc, html, join

#: Series colours: blue, orange, purple, teal; good and bad for status.
PALETTE: Final = ("#1f6fb2", "#d9730d", "#7b3fa0", "#138a72")
GOOD: Final = "#2e8540"
BAD: Final = "#c62828"
MUTED: Final = "#6b7280"
GRID: Final = "#e5e7eb"


@dataclass(frozen=True, slots=True)
class Series:
    """One line of a time chart: (time, value or None for a gap) points, oldest first."""

    name: str
    points: Sequence[tuple[float, float | None]]


def _num(v: float) -> str:
    """A coordinate or label without float noise."""
    if abs(v - round(v)) < 1e-9:
        return str(round(v))
    return f"{v:.1f}"


def _nice_ticks(lo: float, hi: float, count: int = 4) -> list[float]:
    """About ``count`` round tick values covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    ticks = [round(first, 6)]
    while ticks[-1] < hi - step * 1e-9:
        ticks.append(round(ticks[-1] + step, 6))
    return ticks


def _time_ticks(start: float, end: float, tz: dt.tzinfo, count: int = 5) -> list[tuple[float, str]]:
    fmt = "%H:%M" if end - start <= 2 * 86400 else "%d/%m"
    step = (end - start) / (count - 1)
    return [
        (start + i * step, dt.datetime.fromtimestamp(start + i * step, tz).strftime(fmt))
        for i in range(count)
    ]


_W, _H = 720, 220
_L, _R, _T, _B = 48, 12, 36, 26


def _frame(
    title: str, start: float, end: float, tz: dt.tzinfo, y_ticks: Sequence[tuple[float, str]]
) -> list[Html]:
    parts: list[Html] = [html("<title>{t}</title>", t=title)]
    for y, label in y_ticks:
        parts.append(
            html(
                '<line x1="{x1}" y1="{y}" x2="{x2}" y2="{y}" stroke="{g}"/>'
                '<text x="{tx}" y="{ty}" text-anchor="end" font-size="12" fill="{m}">'
                "{label}</text>",
                x1=_L,
                x2=_W - _R,
                y=_num(y),
                g=GRID,
                tx=_L - 4,
                ty=_num(y + 4),
                m=MUTED,
                label=label,
            )
        )
    span = max(end - start, 1.0)
    for t, label in _time_ticks(start, end, tz):
        x = _L + (t - start) / span * (_W - _L - _R)
        anchor = "start" if t == start else "end" if t == end else "middle"
        parts.append(
            html(
                '<text x="{x}" y="{y}" text-anchor="{a}" font-size="12" fill="{m}">{label}</text>',
                x=_num(x),
                y=_H - 8,
                a=anchor,
                m=MUTED,
                label=label,
            )
        )
    return parts


def _svg(parts: Sequence[Html], *, title: str, height: int = _H, css: str = "chart") -> Html:
    return html(
        '<svg class="{css}" viewBox="0 0 {w} {h}" role="img" aria-label="{title}"'
        ' preserveAspectRatio="xMidYMid meet" xmlns="http://www.w3.org/2000/svg">{body}</svg>',
        css=css,
        w=_W,
        h=height,
        title=title,
        body=join(parts),
    )


def _default_gap(series: Sequence[Series], span: float) -> float:
    """Three times the usual spacing of the points (at least 1/48 of the span): a
    missed heartbeat or two joins up, a device that was silent for hours does not."""
    steps = sorted(
        b[0] - a[0] for s in series for a, b in zip(s.points, s.points[1:], strict=False)
    )
    usual = steps[len(steps) // 2] if steps else 0.0
    return max(3 * usual, span / 48)


def time_series(
    series: Sequence[Series],
    *,
    start: float,
    end: float,
    tz: dt.tzinfo,
    title: str,
    empty_text: str,
    gap_s: float | None = None,
) -> Html:
    """Lines of ``series`` over [start, end]; a gap wider than ``gap_s`` (default: three
    times the usual spacing) breaks a line."""
    values = [v for s in series for t, v in s.points if v is not None and start <= t <= end]
    if not values:
        return _svg(
            [
                html("<title>{t}</title>", t=title),
                html(
                    '<text x="{x}" y="{y}" text-anchor="middle" font-size="14" fill="{m}">'
                    "{text}</text>",
                    x=_W // 2,
                    y=_H // 2,
                    m=MUTED,
                    text=empty_text,
                ),
            ],
            title=title,
        )
    ticks = _nice_ticks(min(values), max(values))
    lo, hi = ticks[0], ticks[-1]
    if hi == lo:
        hi = lo + 1
    span = max(end - start, 1.0)
    gap = gap_s if gap_s is not None else _default_gap(series, span)

    def xy(t: float, v: float) -> str:
        x = _L + (t - start) / span * (_W - _L - _R)
        y = _T + (hi - v) / (hi - lo) * (_H - _T - _B)
        return f"{x:.1f},{y:.1f}"

    def y_of(v: float) -> float:
        return _T + (hi - v) / (hi - lo) * (_H - _T - _B)

    parts = _frame(title, start, end, tz, [(y_of(v), _num(v)) for v in ticks])
    legend_x = _L
    for i, s in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        runs: list[list[str]] = [[]]
        last_t: float | None = None
        for t, v in s.points:
            if not start <= t <= end:
                continue
            broken_line = v is None or (last_t is not None and t - last_t > gap)
            if broken_line and runs[-1]:
                runs.append([])
            if v is not None:
                runs[-1].append(xy(t, v))
                last_t = t
        for run in runs:
            if len(run) == 1:
                x, y = run[0].split(",")
                parts.append(
                    html('<circle cx="{x}" cy="{y}" r="2.5" fill="{c}"/>', x=x, y=y, c=colour)
                )
            elif run:
                parts.append(
                    html(
                        '<polyline points="{p}" fill="none" stroke="{c}" stroke-width="2"'
                        ' stroke-linejoin="round"/>',
                        p=" ".join(run),
                        c=colour,
                    )
                )
        parts.append(
            html(
                '<rect x="{x}" y="8" width="10" height="10" fill="{c}"/>'
                '<text x="{tx}" y="17" font-size="12" fill="#111">{name}</text>',
                x=legend_x,
                tx=legend_x + 14,
                c=colour,
                name=s.name,
            )
        )
        legend_x += 22 + 8 * len(s.name)
    return _svg(parts, title=title)


def online_band(
    intervals: Sequence[tuple[float, float, bool]],
    *,
    start: float,
    end: float,
    tz: dt.tzinfo,
    title: str,
    labels: tuple[str, str],
) -> Html:
    """A strip of online (green) and offline (red) spans over [start, end]; blank = unknown."""
    height = 86
    span = max(end - start, 1.0)
    parts: list[Html] = [html("<title>{t}</title>", t=title)]
    top, band = 26, 30
    for a, b, online in intervals:
        a, b = max(a, start), min(b, end)
        if b <= a:
            continue
        x = _L + (a - start) / span * (_W - _L - _R)
        w = max((b - a) / span * (_W - _L - _R), 1.0)
        parts.append(
            html(
                '<rect x="{x}" y="{y}" width="{w}" height="{h}" fill="{c}"/>',
                x=f"{x:.1f}",
                y=top,
                w=f"{w:.1f}",
                h=band,
                c=GOOD if online else BAD,
            )
        )
    parts.append(
        html(
            '<rect x="{x}" y="{y}" width="{w}" height="{h}" fill="none" stroke="{g}"/>',
            x=_L,
            y=top,
            w=_W - _L - _R,
            h=band,
            g=MUTED,
        )
    )
    for t, label in _time_ticks(start, end, tz):
        x = _L + (t - start) / span * (_W - _L - _R)
        anchor = "start" if t == start else "end" if t == end else "middle"
        parts.append(
            html(
                '<text x="{x}" y="{y}" text-anchor="{a}" font-size="12" fill="{m}">{l}</text>',
                x=_num(x),
                y=height - 8,
                a=anchor,
                m=MUTED,
                l=label,
            )
        )
    parts.append(
        html(
            '<rect x="{x}" y="8" width="10" height="10" fill="{g}"/>'
            '<text x="{x2}" y="17" font-size="12" fill="#111">{on}</text>'
            '<rect x="{x3}" y="8" width="10" height="10" fill="{b}"/>'
            '<text x="{x4}" y="17" font-size="12" fill="#111">{off}</text>',
            x=_L,
            x2=_L + 14,
            x3=_L + 120,
            x4=_L + 134,
            g=GOOD,
            b=BAD,
            on=labels[0],
            off=labels[1],
        )
    )
    return _svg(parts, title=title, height=height)


def trend_bars(
    months: Sequence[tuple[str, int | None, int | None]],
    *,
    title: str,
    labels: tuple[str, str],
    no_data: str = "no data",
) -> Html:
    """Stacked bars per month: working (green, bottom) and broken (red, top); a
    month whose counts are None (no cluster existed yet) shows ``no_data`` in its
    slot instead of a bar."""
    top_value = max(((w or 0) + (b or 0) for _, w, b in months), default=0)
    ticks = _nice_ticks(0, max(top_value, 1))
    hi = ticks[-1] or 1
    plot_h = _H - _T - _B

    def y_of(v: float) -> float:
        return _T + (hi - v) / hi * plot_h

    parts: list[Html] = [html("<title>{t}</title>", t=title)]
    for v in ticks:
        parts.append(
            html(
                '<line x1="{x1}" y1="{y}" x2="{x2}" y2="{y}" stroke="{g}"/>'
                '<text x="{tx}" y="{ty}" text-anchor="end" font-size="12" fill="{m}">{v}</text>',
                x1=_L,
                x2=_W - _R,
                y=f"{y_of(v):.1f}",
                ty=f"{y_of(v) + 4:.1f}",
                tx=_L - 4,
                g=GRID,
                m=MUTED,
                v=_num(v),
            )
        )
    n = max(len(months), 1)
    slot = (_W - _L - _R) / n
    bar = slot * 0.64
    for i, (label, working_or_none, broken_or_none) in enumerate(months):
        x = _L + i * slot + (slot - bar) / 2
        if working_or_none is None or broken_or_none is None:
            parts.append(
                html(
                    '<g class="no-data"><title>{label}: {nd}</title>'
                    '<text x="{tx}" y="{ty}" text-anchor="end" font-size="11" fill="{m}"'
                    ' transform="rotate(-90 {tx} {ty})">{nd}</text></g>'
                    '<text x="{tx}" y="{ly}" text-anchor="middle" font-size="12" fill="{m}">'
                    "{label}</text>",
                    label=label,
                    nd=no_data,
                    tx=f"{x + bar / 2:.1f}",
                    ty=f"{_T + 4:.1f}",
                    ly=_H - 8,
                    m=MUTED,
                )
            )
            continue
        working, broken = working_or_none, broken_or_none
        yw = y_of(working)
        yb = y_of(working + broken)
        parts.append(
            html(
                "<g><title>{label}: {wl} {w}, {bl} {b}</title>"
                '<rect x="{x}" y="{yw}" width="{bw}" height="{hw}" fill="{g}"/>'
                '<rect x="{x}" y="{yb}" width="{bw}" height="{hb}" fill="{r}"/></g>'
                '<text x="{tx}" y="{ty}" text-anchor="middle" font-size="12" fill="{m}">'
                "{label}</text>",
                label=label,
                wl=labels[0],
                bl=labels[1],
                w=working,
                b=broken,
                x=f"{x:.1f}",
                bw=f"{bar:.1f}",
                yw=f"{yw:.1f}",
                hw=f"{_T + plot_h - yw:.1f}",
                yb=f"{yb:.1f}",
                hb=f"{yw - yb:.1f}",
                g=GOOD,
                r=BAD,
                tx=f"{x + bar / 2:.1f}",
                ty=_H - 8,
                m=MUTED,
            )
        )
    parts.append(
        html(
            '<rect x="{x}" y="8" width="10" height="10" fill="{g}"/>'
            '<text x="{x2}" y="17" font-size="12" fill="#111">{w}</text>'
            '<rect x="{x3}" y="8" width="10" height="10" fill="{r}"/>'
            '<text x="{x4}" y="17" font-size="12" fill="#111">{b}</text>',
            x=_L,
            x2=_L + 14,
            x3=_L + 150,
            x4=_L + 164,
            g=GOOD,
            r=BAD,
            w=labels[0],
            b=labels[1],
        )
    )
    return _svg(parts, title=title)


@dataclass(frozen=True, slots=True)
class MapPoint:
    lat: float
    lon: float
    label: str
    working: bool
    href: str


def position_map(points: Sequence[MapPoint], *, title: str) -> Html:
    """Clusters placed by latitude and longitude (equirectangular), green or red, linked."""
    width, height, pad = 720, 420, 30
    lats = [p.lat for p in points]
    lons = [p.lon for p in points]
    mid_lat = (min(lats) + max(lats)) / 2
    k = math.cos(math.radians(mid_lat))
    x_span = max((max(lons) - min(lons)) * k, 1e-6)
    y_span = max(max(lats) - min(lats), 1e-6)
    scale = min((width - 2 * pad) / x_span, (height - 2 * pad) / y_span)
    x0 = (width - x_span * scale) / 2
    y0 = (height - y_span * scale) / 2
    parts: list[Html] = [
        html("<title>{t}</title>", t=title),
        html(
            '<rect x="0" y="0" width="{w}" height="{h}" fill="#f4f6f8" stroke="{g}"/>',
            w=width,
            h=height,
            g=GRID,
        ),
    ]
    for p in points:
        x = x0 + (p.lon - min(lons)) * k * scale
        y = y0 + (max(lats) - p.lat) * scale
        parts.append(
            html(
                '<a href="{href}"><circle cx="{x}" cy="{y}" r="8" fill="{c}" stroke="#fff"'
                ' stroke-width="2"><title>{label}</title></circle>'
                '<text x="{tx}" y="{ty}" font-size="12" fill="#111">{label}</text></a>',
                href=p.href,
                x=f"{x:.1f}",
                y=f"{y:.1f}",
                c=GOOD if p.working else BAD,
                label=p.label,
                tx=f"{x + 11:.1f}",
                ty=f"{y + 4:.1f}",
            )
        )
    return html(
        '<svg class="chart map" viewBox="0 0 {w} {h}" role="img" aria-label="{t}"'
        ' xmlns="http://www.w3.org/2000/svg">{body}</svg>',
        w=width,
        h=height,
        t=title,
        body=join(parts),
    )


__all__ = ["MapPoint", "Series", "esc", "online_band", "position_map", "time_series", "trend_bars"]
