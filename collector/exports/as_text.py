"""B2 table as plain text for a terminal: title, an aligned table, the summary.

Numbers are right-aligned, names left-aligned; widths count what a terminal
shows (combining marks take no column), so Vietnamese names line up. The
cause columns are folded into their "as text" column to fit 100 columns.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

from collector.b2.dates import title_date
from collector.b2.table import B2Row, B2Table, text


def _width(s: str) -> int:
    """Terminal columns of ``s``: combining marks take none, wide letters two."""
    n = 0
    for ch in s:
        if unicodedata.combining(ch):
            continue
        n += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return n


def _pad(s: str, width: int, *, right: bool) -> str:
    gap = " " * max(0, width - _width(s))
    return gap + s if right else s + gap


def _cells(row: B2Row) -> list[str]:
    return [
        "" if row.stt is None else str(row.stt),
        row.unit,
        str(row.total),
        str(row.working),
        str(row.broken),
        str(row.in_repair),
        str(row.not_repaired),
        str(row.never_reported),
        row.causes_text,
    ]


def _headers(lang: str) -> list[str]:
    never = "Chưa từng báo về" if lang != "en" else "Never reported"
    return [
        text("stt", lang),
        text("unit", lang),
        text("total_clusters", lang),
        text("working", lang),
        f"{text('broken_group', lang).split(',')[0]}: {text('broken', lang).lower()}",
        text("in_repair", lang),
        text("not_repaired", lang),
        never,
        text("cause_group", lang),
    ]


def table_lines(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    right: Sequence[bool] | None = None,
    total_row: bool = False,
) -> list[str]:
    """Aligned columns under a rule; ``right`` says which are right-aligned (numbers).

    With ``total_row`` the last row is set off by a second rule.
    """
    widths = [max(_width(r[i]) for r in (headers, *rows)) for i in range(len(headers))]
    align = right if right is not None else [False] * len(headers)

    def line(cells: Sequence[str]) -> str:
        return "  ".join(_pad(c, widths[i], right=align[i]) for i, c in enumerate(cells)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    if total_row and rows:
        return [line(headers), rule, *(line(r) for r in rows[:-1]), rule, line(rows[-1])]
    return [line(headers), rule, *(line(r) for r in rows)]


def to_text(table: B2Table) -> str:
    """The whole report as text, ending in a newline."""
    lang = table.lang
    title = f"{text('form', lang)} — {text('title', lang)}"
    sub = f"{table.unit_name}, {text('as_of', lang)} {title_date(table.day)}"
    rows = [_cells(r) for r in table.all_rows()]
    right = [False, False, *([True] * 6), False]
    lines = [title, sub, "", *table_lines(_headers(lang), rows, right=right, total_row=True), ""]
    lines.append(f"{text('summary', lang)}: {table.summary}")
    if table.unlisted:
        label = "Not in the inventory" if lang == "en" else "Ngoài danh mục, không tính"
        shown = ", ".join(table.unlisted[:10]) + (", …" if len(table.unlisted) > 10 else "")
        lines.append(f"{label} ({len(table.unlisted)}): {shown}")
    return "\n".join(lines) + "\n"


__all__ = ["table_lines", "to_text"]
