"""B2 table as JSON: machine-readable, every count keyed by name."""

from __future__ import annotations

import json
from typing import Any

from collector.b2.availability import CommuneAvailability, Evaluation
from collector.b2.table import CAUSES, B2Row, B2Table, text


def _row(row: B2Row) -> dict[str, Any]:
    return {
        "stt": row.stt,
        "unit": row.unit,
        "key": row.key,
        "total": row.total,
        "working": row.working,
        "broken": {
            "total": row.broken,
            "in_repair": row.in_repair,
            "not_repaired": row.not_repaired,
        },
        "causes": {cause.value: n for cause, n in zip(CAUSES, row.causes, strict=True)},
        "causes_text": row.causes_text,
        "never_reported": row.never_reported,
        "offline_long": row.offline_long,
        "notes": row.notes,
        "cause_sources": dict(sorted(row.sources.items())),
    }


def _availability(row: CommuneAvailability, lang: str) -> dict[str, Any]:
    share = row.share
    return {
        "rank": row.rank,
        "unit": row.unit,
        "key": row.key,
        "clusters": row.clusters,
        "cluster_hours": round(row.cluster_hours, 3),
        "working_hours": round(row.working_hours, 3),
        "share": None if share is None else round(share, 6),
        "grade": None if row.grade is None else row.grade.value,
        "grade_label": None if row.grade is None else row.grade.label(lang),
    }


def evaluation_to_dict(ev: Evaluation) -> dict[str, Any]:
    """The monthly evaluation as JSON-ready data (ranking order, then the total)."""
    t = ev.thresholds
    return {
        "title": ev.title(),
        "month": ev.start.strftime("%Y-%m"),
        "start": ev.start.isoformat(),
        "end": ev.end.isoformat(),
        "thresholds_pct": {"good": t.good_pct, "fair": t.fair_pct, "average": t.average_pct},
        "rows": [_availability(r, ev.lang) for r in ev.rows],
        "total": _availability(ev.total, ev.lang),
    }


def table_to_dict(table: B2Table) -> dict[str, Any]:
    """The table as plain JSON-ready data (the API's ``format=json`` body)."""
    lang = table.lang
    return {
        "report": "B2",
        "title": text("title", lang),
        "unit_name": table.unit_name,
        "as_of": table.as_of.isoformat(),
        "as_of_date": table.day.isoformat(),
        "time_zone": str(table.as_of.tzinfo),
        "scope": table.scope.value,
        "lang": lang,
        "offline_days": table.offline_days,
        "causes": [{"key": c.value, "label": c.label(lang)} for c in CAUSES],
        "rows": [_row(r) for r in table.rows],
        "total": _row(table.total),
        "summary": table.summary,
        "no_data": table.no_data,
        "unlisted_devices": list(table.unlisted),
        "evaluation": None if table.evaluation is None else evaluation_to_dict(table.evaluation),
        # Each broken cluster's cause with where it came from (device, SMS, rule, finding).
        "clusters": table.causes_by_device,
        # When this date's B2 was first produced, and what changed since (re-issue if any).
        "first_produced_at": table.first_produced_at,
        "changes_since_first": list(table.changes),
    }


def to_json(table: B2Table) -> bytes:
    """UTF-8 JSON, diacritics written as is, indented for people who open it."""
    return (json.dumps(table_to_dict(table), ensure_ascii=False, indent=2) + "\n").encode()
