"""The B2 report: per-commune fleet status as of any date, and its summary sentence.

The core is pure (inventory + statuses at a moment → :class:`B2Table`); the
store supplies ``list_inventory()`` and ``statuses_as_of(t)``, and
``collector.exports`` renders the table as JSON, CSV, XLSX or HTML.
"""

from collector.b2.compare import CommuneTrend, Comparison, compare_statuses
from collector.b2.dates import (
    DEFAULT_TZ,
    AsOfError,
    end_of_day,
    parse_as_of,
    previous_month_end,
    zone,
)
from collector.b2.summary import ranked_causes, summary_sentence
from collector.b2.table import (
    CAUSES,
    B2Row,
    B2Table,
    Scope,
    column_groups,
    commune_label,
    compute_b2,
    flat_columns,
    text,
)

__all__ = [
    "CAUSES",
    "DEFAULT_TZ",
    "AsOfError",
    "B2Row",
    "B2Table",
    "CommuneTrend",
    "Comparison",
    "Scope",
    "column_groups",
    "commune_label",
    "compare_statuses",
    "compute_b2",
    "end_of_day",
    "flat_columns",
    "parse_as_of",
    "previous_month_end",
    "ranked_causes",
    "summary_sentence",
    "text",
    "zone",
]
