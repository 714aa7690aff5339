"""Renderings of the B2 table: JSON, CSV (UTF-8 with BOM), XLSX and printable HTML.

Every rendering carries the summary sentence. :func:`render` picks one by name.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from collector.b2.table import B2Table
from collector.exports.as_csv import to_csv
from collector.exports.as_html import to_html
from collector.exports.as_json import table_to_dict, to_json


class Format(enum.StrEnum):
    JSON = "json"
    CSV = "csv"
    XLSX = "xlsx"
    HTML = "html"


@dataclass(frozen=True, slots=True)
class Rendered:
    """One export: its bytes, HTTP content type and file extension."""

    body: bytes
    content_type: str
    extension: str


def _xlsx(table: B2Table) -> bytes:
    from collector.exports.as_xlsx import to_xlsx  # openpyxl loads only when asked

    return to_xlsx(table)


_RENDERERS: dict[Format, tuple[Callable[[B2Table], bytes], str]] = {
    Format.JSON: (to_json, "application/json; charset=utf-8"),
    Format.CSV: (to_csv, "text/csv; charset=utf-8"),
    Format.XLSX: (_xlsx, "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
    Format.HTML: (to_html, "text/html; charset=utf-8"),
}


def parse_format(name: str) -> Format:
    """A Format from its name; ValueError naming the accepted ones otherwise."""
    try:
        return Format(name.strip().lower())
    except ValueError:
        accepted = ", ".join(f.value for f in Format)
        raise ValueError(f"format {name!r:.20}: expected one of {accepted}") from None


def render(table: B2Table, fmt: Format | str) -> Rendered:
    """The table in format ``fmt`` ("json", "csv", "xlsx" or "html")."""
    chosen = fmt if isinstance(fmt, Format) else parse_format(fmt)
    renderer, content_type = _RENDERERS[chosen]
    return Rendered(renderer(table), content_type, chosen.value)


def file_name(table: B2Table, fmt: Format | str) -> str:
    """A download name such as ``b2-2023-07-31.xlsx``."""
    return f"b2-{table.day.isoformat()}.{Format(fmt).value}"


__all__ = ["Format", "Rendered", "file_name", "parse_format", "render", "table_to_dict"]
