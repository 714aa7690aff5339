"""B2 table as a printable, self-contained HTML page (inline CSS, no scripts, no CDN)."""

from __future__ import annotations

from html import escape
from typing import Final

from collector.b2.dates import title_date
from collector.b2.table import B2Table, column_groups, text

_CSS: Final = """
@page { size: A4 landscape; margin: 12mm; }
* { box-sizing: border-box; }
body { font-family: "Times New Roman", "Liberation Serif", "DejaVu Serif", serif;
       font-size: 12pt; color: #000; margin: 16px; }
.top { display: flex; justify-content: space-between; font-weight: bold; }
.form { font-style: italic; }
h1 { font-size: 15pt; text-align: center; margin: 14px 0 2px; }
h2 { font-size: 13pt; text-align: center; margin: 22px 0 2px; page-break-before: auto; }
.sub { text-align: center; font-style: italic; margin: 0 0 12px; }
table { border-collapse: collapse; width: 100%; font-size: 10pt; line-height: 1.2; }
th, td { border: 1px solid #000; padding: 2px 4px; text-align: center; vertical-align: middle; }
th { background: #e7e6e6; font-weight: bold; }
td.text { text-align: left; }
td.unit { white-space: nowrap; }
body { font-size: 11.5pt; }
tr.total td { font-weight: bold; }
thead { display: table-header-group; }
tr { page-break-inside: avoid; }
.summary { margin-top: 14px; text-align: justify; line-height: 1.45; }
@media print { body { margin: 0; } th { -webkit-print-color-adjust: exact;
  print-color-adjust: exact; } }
"""


def _head(lang: str) -> str:
    top: list[str] = []
    bottom: list[str] = []
    for group, subs in column_groups(lang):
        if subs:
            top.append(f'<th colspan="{len(subs)}" scope="colgroup">{escape(group)}</th>')
            bottom.extend(f'<th scope="col">{escape(s)}</th>' for s in subs)
        else:
            top.append(f'<th rowspan="2" scope="col">{escape(group)}</th>')
    return f"<tr>{''.join(top)}</tr>\n<tr>{''.join(bottom)}</tr>"


def _evaluation(table: B2Table) -> str:
    """The monthly evaluation as a second table ("" without one)."""
    ev = table.evaluation
    if ev is None:
        return ""
    head = "".join(f'<th scope="col">{escape(c)}</th>' for c in ev.columns())
    rows = []
    for r in ev.all_rows():
        cells = "".join(
            f'<td class="text unit">{escape(str(v))}</td>'
            if i == 1
            else f"<td>{escape(str(v))}</td>"
            for i, v in enumerate(ev.cells(r))
        )
        css = ' class="total"' if r is ev.total else ""
        rows.append(f"<tr{css}>{cells}</tr>")
    body = "\n".join(rows)
    return f"""<h2>{escape(ev.title())}</h2>
<p class="sub">{escape(ev.period())}</p>
<table class="evaluation">
<thead><tr>{head}</tr></thead>
<tbody>
{body}
</tbody>
</table>
<p class="summary">{escape(ev.thresholds_note())}</p>
"""


def to_html(table: B2Table) -> bytes:
    """The table as a UTF-8 HTML document that prints on A4 landscape."""
    lang = table.lang
    width = sum(len(subs) or 1 for _, subs in column_groups(lang))
    text_columns = {1, width - 2, width - 1}
    body: list[str] = []
    for row in table.all_rows():
        cells = "".join(
            f'<td class="text{" unit" if i == 1 else ""}">{escape(str(v))}</td>'
            if i in text_columns
            else f"<td>{v}</td>"
            for i, v in enumerate(row.cells())
        )
        css = ' class="total"' if row.stt is None else ""
        body.append(f"<tr{css}>{cells}</tr>")
    rows = "\n".join(body)
    title = text("title", lang)
    as_of = f"{text('as_of', lang)} {title_date(table.day)}"
    doc = f"""<!DOCTYPE html>
<html lang="{lang}">
<head>
<meta charset="utf-8">
<title>{escape(text("form", lang))} - {escape(table.unit_name)} - {escape(as_of)}</title>
<style>{_CSS}</style>
</head>
<body>
<div class="top"><span>{escape(table.unit_name.upper())}</span>\
<span class="form">{escape(text("form", lang))}</span></div>
<h1>{escape(title)}</h1>
<p class="sub">{escape(text("unit_label", lang))}: {escape(table.unit_name)} ({escape(as_of)})</p>
<table>
<thead>
{_head(lang)}
</thead>
<tbody>
{rows}
</tbody>
</table>
<p class="summary">{escape(table.summary)}</p>
{_evaluation(table)}</body>
</html>
"""
    return doc.encode()
