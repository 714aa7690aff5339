"""B2 table as an XLSX workbook laid out like an official Vietnamese table.

Layout (row numbers are fixed so readers and tests can rely on them):

- row 1: the reporting unit (left, bold) and "Biểu B2" (right);
- row 2: the title; row 3: "Đơn vị: ... (tính đến ngày dd/mm/yyyy)";
- rows 5-6: the two-level header, single columns merged down, groups merged
  across ("Hỏng, không hoạt động", "Nguyên nhân");
- row 7 on: one row per commune, then the bold total row;
- after an empty row: the summary sentence, merged across the table.

With a monthly evaluation, a second sheet "Xếp loại" ("Ranking" in English):
row 1 its title, row 2 the period, row 4 the header, then one row per commune
in ranking order, the bold total row, and the grading thresholds.

Printing: A4 landscape, fit to one page wide, header rows repeated.
"""

from __future__ import annotations

import io
from typing import Final

from openpyxl import Workbook
from openpyxl.styles import Alignment, Border, Font, PatternFill, Side
from openpyxl.utils import get_column_letter
from openpyxl.worksheet.worksheet import Worksheet

from collector.b2.dates import title_date
from collector.b2.table import CAUSES, B2Table, column_groups, text

HEADER_ROW: Final = 5
FIRST_DATA_ROW: Final = 7
FONT: Final = "Times New Roman"

_THIN = Side(style="thin", color="000000")
_BOX = Border(left=_THIN, right=_THIN, top=_THIN, bottom=_THIN)
_CENTER = Alignment(horizontal="center", vertical="center", wrap_text=True)
_LEFT = Alignment(horizontal="left", vertical="center", wrap_text=True)
_HEAD_FILL = PatternFill("solid", fgColor="E7E6E6")


def _widths(n_causes: int) -> list[float]:
    return [5, 22, 9, 9, 8, 9, 9, *([9.5] * n_causes), 40, 30]


def _header(sheet: Worksheet, lang: str) -> int:
    """Write the two header rows; returns the number of columns."""
    column = 1
    top, sub_row = HEADER_ROW, HEADER_ROW + 1
    for group, subs in column_groups(lang):
        if not subs:
            sheet.cell(top, column, group)
            sheet.merge_cells(
                start_row=top, start_column=column, end_row=sub_row, end_column=column
            )
            column += 1
            continue
        sheet.cell(top, column, group)
        sheet.merge_cells(
            start_row=top, start_column=column, end_row=top, end_column=column + len(subs) - 1
        )
        for offset, label in enumerate(subs):
            sheet.cell(sub_row, column + offset, label)
        column += len(subs)
    width = column - 1
    for row in sheet.iter_rows(min_row=top, max_row=sub_row, max_col=width):
        for cell in row:
            cell.font = Font(name=FONT, bold=True, size=11)
            cell.alignment = _CENTER
            cell.border = _BOX
            cell.fill = _HEAD_FILL
    sheet.row_dimensions[sub_row].height = 48
    return width


def to_xlsx(table: B2Table) -> bytes:
    """The table as XLSX bytes (one sheet named "B2")."""
    lang = table.lang
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = "B2"
    width = _header(sheet, lang)
    last = get_column_letter(width)

    sheet["A1"] = table.unit_name.upper()
    sheet["A1"].data_type = "s"  # never a formula, whatever the configured name
    sheet["A1"].font = Font(name=FONT, bold=True, size=12)
    sheet.merge_cells(f"A1:{get_column_letter(6)}1")
    form = sheet.cell(1, width - 1, text("form", lang))
    form.font = Font(name=FONT, bold=True, italic=True, size=12)
    form.alignment = Alignment(horizontal="right")
    sheet.merge_cells(start_row=1, start_column=width - 1, end_row=1, end_column=width)

    sheet["A2"] = text("title", lang)
    sheet["A2"].font = Font(name=FONT, bold=True, size=14)
    sheet["A3"] = (
        f"{text('unit_label', lang)}: {table.unit_name} "
        f"({text('as_of', lang)} {title_date(table.day)})"
    )
    sheet["A3"].font = Font(name=FONT, italic=True, size=12)
    for title_row in (2, 3):
        sheet.merge_cells(f"A{title_row}:{last}{title_row}")
        sheet[f"A{title_row}"].alignment = Alignment(horizontal="center", vertical="center")
    sheet.row_dimensions[2].height = 22

    text_columns = {2, width - 1, width}
    for r, row in enumerate(table.all_rows(), start=FIRST_DATA_ROW):
        bold = row.stt is None
        for c, value in enumerate(row.cells(), start=1):
            cell = sheet.cell(r, c, value)
            if isinstance(value, str) and value.startswith("="):
                cell.data_type = "s"  # a unit named "=..." stays text, never a formula
            cell.font = Font(name=FONT, bold=bold, size=11)
            cell.border = _BOX
            cell.alignment = _LEFT if c in text_columns else _CENTER
    total_row = FIRST_DATA_ROW + len(table.rows)
    summary_row = total_row + 2
    sheet.cell(summary_row, 1, table.summary).font = Font(name=FONT, size=12)
    sheet.merge_cells(start_row=summary_row, start_column=1, end_row=summary_row, end_column=width)
    sheet.cell(summary_row, 1).alignment = Alignment(
        wrap_text=True, vertical="top", horizontal="justify"
    )
    line_chars = sum(_widths(len(CAUSES))) * 1.1
    sheet.row_dimensions[summary_row].height = 16 * (len(table.summary) // line_chars + 2)

    for index, w in enumerate(_widths(len(CAUSES)), start=1):
        sheet.column_dimensions[get_column_letter(index)].width = w
    sheet.freeze_panes = sheet.cell(FIRST_DATA_ROW, 3)

    setup = sheet.page_setup
    setup.orientation = "landscape"
    setup.paperSize = sheet.PAPERSIZE_A4
    setup.fitToWidth = 1
    setup.fitToHeight = 0
    sheet.sheet_properties.pageSetUpPr.fitToPage = True
    sheet.print_title_rows = f"{HEADER_ROW}:{HEADER_ROW + 1}"
    sheet.print_area = f"A1:{last}{summary_row}"
    sheet.print_options.horizontalCentered = True
    sheet.page_margins.left = sheet.page_margins.right = 0.4
    sheet.page_margins.top = sheet.page_margins.bottom = 0.5

    _evaluation_sheet(book, table)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def _evaluation_sheet(book: Workbook, table: B2Table) -> None:
    ev = table.evaluation
    if ev is None:
        return
    sheet = book.create_sheet("Ranking" if table.lang == "en" else "Xếp loại")
    columns = ev.columns()
    last = get_column_letter(len(columns))
    sheet["A1"] = ev.title()
    sheet["A1"].font = Font(name=FONT, bold=True, size=14)
    sheet["A2"] = ev.period()
    sheet["A2"].font = Font(name=FONT, italic=True, size=12)
    for title_row in (1, 2):
        sheet.merge_cells(f"A{title_row}:{last}{title_row}")
        sheet[f"A{title_row}"].alignment = Alignment(horizontal="center", vertical="center")
    for c, label in enumerate(columns, start=1):
        cell = sheet.cell(4, c, label)
        cell.font = Font(name=FONT, bold=True, size=11)
        cell.alignment = _CENTER
        cell.border = _BOX
        cell.fill = _HEAD_FILL
    row = 5
    for r in ev.all_rows():
        for c, value in enumerate(ev.cells(r), start=1):
            cell = sheet.cell(row, c, value)
            if isinstance(value, str):
                cell.data_type = "s"  # never a formula
            cell.font = Font(name=FONT, bold=r is ev.total, size=11)
            cell.border = _BOX
            cell.alignment = _LEFT if c == 2 else _CENTER
        row += 1
    sheet.cell(row + 1, 1, ev.thresholds_note()).font = Font(name=FONT, italic=True, size=11)
    for index, w in enumerate((9, 24, 11, 14, 14, 14, 12), start=1):
        sheet.column_dimensions[get_column_letter(index)].width = w
    sheet.page_setup.orientation = "portrait"
    sheet.page_setup.paperSize = sheet.PAPERSIZE_A4
