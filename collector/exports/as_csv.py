"""B2 table as CSV: UTF-8 with BOM so Excel shows the diacritics.

One header row ("Hỏng, không hoạt động - Đang sửa chữa" for grouped
columns), the rows, the total row; then an empty line and the summary sentence
in the first column, so the file opens in Excel as the whole report. With a
monthly evaluation: an empty line, its title, its header, one row per commune
in ranking order, the total, and the grading thresholds.
"""

from __future__ import annotations

import csv
import io

from collector.b2.table import B2Table, flat_columns, text
from collector.inventory import csv_text


def to_csv(table: B2Table) -> bytes:
    """The table as CSV bytes (UTF-8 with BOM, CRLF line ends as Excel writes)."""
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(flat_columns(table.lang))
    for row in table.all_rows():
        writer.writerow([csv_text(v) if isinstance(v, str) else v for v in row.cells()])
    writer.writerow([])
    writer.writerow([f"{text('summary', table.lang)}: {table.summary}"])
    ev = table.evaluation
    if ev is not None:
        writer.writerow([])
        writer.writerow([f"{ev.title()} ({ev.period()})"])
        writer.writerow(ev.columns())
        for r in ev.all_rows():
            writer.writerow([csv_text(v) if isinstance(v, str) else v for v in ev.cells(r)])
        writer.writerow([ev.thresholds_note()])
    return out.getvalue().encode("utf-8-sig")
