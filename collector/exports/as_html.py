"""B2 table as a printable, self-contained HTML page (inline CSS, no scripts, no CDN)."""

from __future__ import annotations

from typing import Final

from markupsafe import Markup

from collector.b2.dates import title_date
from collector.b2.table import B2Table, text
from collector.templating import render

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


def to_html(table: B2Table) -> bytes:
    """The table as a UTF-8 HTML document that prints on A4 landscape.

    Drawn by ``b2_export.html`` with the B2 page's own table template
    (``_b2_table.html``), so the two cannot disagree.
    """
    from collector.web.pages import b2_groups

    lang = table.lang
    return render(
        "b2_export.html",
        lang=lang,
        table=table,
        groups=b2_groups(lang),
        form=text("form", lang),
        title=text("title", lang),
        unit_label=text("unit_label", lang),
        as_of=f"{text('as_of', lang)} {title_date(table.day)}",
        css=Markup(_CSS),
    ).encode()
