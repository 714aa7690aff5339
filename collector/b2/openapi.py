"""OpenAPI 3.1 path items of the B2 and inventory routes (``collector.b2.api``).

Merged into the collector's document by ``collector.openapi``; kept free of
aiohttp and store imports so the document can be built anywhere.
"""

from __future__ import annotations

from typing import Any

from collector.b2.table import Scope


def _q(name: str, desc: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": desc,
        "schema": schema or {"type": "string"},
    }


def _enum(*values: str) -> dict[str, Any]:
    return {"type": "string", "enum": list(values)}


_ERRORS: dict[str, Any] = {
    "400": {
        "description": "invalid input; for an inventory file every row-level error",
        "content": {"application/json": {"schema": {"type": "object"}}},
    },
    "401": {"description": "authentication required"},
    "403": {"description": "not allowed for this role, or CSRF header missing"},
}
_AS_OF = _q(
    "as_of",
    "YYYY-MM-DD or dd/mm/yyyy (end of that day in the [report] time zone), "
    "or an ISO 8601 date-time; default now",
)
_LANG = _q("lang", "label language (default: [report] lang)", _enum("vi", "en"))
_XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def _responses(desc: str, *types: str) -> dict[str, Any]:
    return {
        "200": {"description": desc, "content": {t: {"schema": {}} for t in types}},
        **_ERRORS,
    }


PATHS: dict[str, dict[str, Any]] = {
    "/api/v1/reports/b2": {
        "get": {
            "summary": "The B2 table (biểu B2) as of a date, with the summary sentence",
            "description": (
                "Counts only clusters that existed at the date (install date, else first"
                " listing or first report); before any did, `no_data` is true and there are"
                " no rows. `evaluation` is the month's availability and ranking of communes"
                " (share of cluster-hours working from the 1st to the date, graded"
                " Tốt/Khá/Trung bình/Yếu by the [report] rank_*_pct thresholds)."
            ),
            "parameters": [
                _AS_OF,
                _q("format", "rendering (default json)", _enum("json", "csv", "xlsx", "html")),
                _LANG,
                _q("scope", "what a row stands for", _enum(*(s.value for s in Scope))),
                _q("district", "only this district (as written in the inventory)"),
                _q("province", "only this province (as written in the inventory)"),
                _q("unit", "reporting unit printed in the title"),
            ],
            "responses": _responses(
                "the table", "application/json", "text/csv", _XLSX, "text/html"
            ),
        }
    },
    "/api/v1/reports/b2/summary": {
        "get": {
            "summary": "The summary sentence and total row, optionally month-over-month",
            "parameters": [
                _AS_OF,
                _LANG,
                _q("compare", "add the change since the previous month's end", _enum("0", "1")),
            ],
            "responses": _responses("summary", "application/json"),
        }
    },
    "/api/v1/inventory": {
        "get": {
            "summary": "The inventory in B2 order (the caller's communes)",
            "parameters": [
                _q("format", "rendering (default json)", _enum("json", "csv", "xlsx")),
                _q("lang", "CSV/XLSX header language", _enum("vi", "en")),
            ],
            "responses": _responses("inventory", "application/json", "text/csv", _XLSX),
        }
    },
    "/api/v1/inventory/import": {
        "post": {
            "summary": "Import the inventory from CSV or XLSX: all or nothing",
            "parameters": [
                _q(
                    "remove_missing",
                    "remove devices absent from the file (their history stays)",
                    _enum("0", "1"),
                )
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "text/csv": {"schema": {"type": "string"}},
                    _XLSX: {"schema": {"type": "string", "format": "binary"}},
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "properties": {"file": {"type": "string", "format": "binary"}},
                        }
                    },
                },
            },
            "responses": _responses("what changed", "application/json"),
        }
    },
}
