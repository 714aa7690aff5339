"""B2 exports: every format carries the same figures and the summary sentence."""

from __future__ import annotations

import csv
import io
import json
import re

import openpyxl
import pytest

from collector.b2 import B2Table, compute_b2, end_of_day, zone
from collector.b2.demo import DEMO_DAY, demo_inventory, demo_statuses, demo_table
from collector.exports import Format, file_name, parse_format, render
from collector.exports.as_xlsx import FIRST_DATA_ROW, HEADER_ROW
from collector.model import InventoryDevice


@pytest.fixture(scope="module")
def table() -> B2Table:
    return demo_table()


def test_json_holds_rows_total_and_summary(table: B2Table) -> None:
    out = render(table, "json")
    assert out.content_type.startswith("application/json")
    data = json.loads(out.body)
    assert data["as_of_date"] == "2023-07-31"
    assert data["time_zone"] == "Asia/Ho_Chi_Minh"
    assert data["unit_name"] == "Huyện Lâm Thao, Tỉnh Phú Thọ"
    assert len(data["rows"]) == 14
    assert data["rows"][4]["unit"] == "Xã Thạch Sơn"
    assert data["total"]["broken"] == {"total": 52, "in_repair": 28, "not_repaired": 24}
    assert data["total"]["causes"]["no_station_signal"] == 20
    assert data["summary"] == table.summary
    assert "Thạch Sơn".encode() in out.body  # diacritics written as is, not \\u escapes


def test_csv_has_bom_header_rows_total_and_summary(table: B2Table) -> None:
    out = render(table, Format.CSV)
    assert out.body.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(out.body.decode("utf-8-sig"))))
    assert rows[0][:4] == ["STT", "Đơn vị", "Tổng số cụm loa", "Hoạt động tốt"]
    assert rows[0][4] == "Hỏng, không hoạt động - Tổng"
    assert rows[1][:7] == ["1", "Thị trấn Lâm Thao", "18", "16", "2", "2", "0"]
    assert rows[15][:7] == ["", "Tổng cộng", "200", "148", "52", "28", "24"]
    assert rows[16] == []
    assert rows[17] == [f"Tóm tắt: {table.summary}"]


def test_xlsx_opens_with_expected_cells_merges_and_print_setup(table: B2Table) -> None:
    out = render(table, "xlsx")
    book = openpyxl.load_workbook(io.BytesIO(out.body))
    sheet = book["B2"]
    assert sheet["A1"].value == "HUYỆN LÂM THAO, TỈNH PHÚ THỌ"
    assert sheet["O1"].value == "Biểu B2"
    assert sheet["A2"].value == "TÌNH HÌNH HOẠT ĐỘNG CỦA HỆ THỐNG TRUYỀN THANH CƠ SỞ"
    assert sheet["A3"].value == "Đơn vị: Huyện Lâm Thao, Tỉnh Phú Thọ (tính đến ngày 31/07/2023)"
    merged = {str(r) for r in sheet.merged_cells.ranges}
    assert {
        "A1:F1", "O1:P1", "A2:P2", "A3:P3",
        "A5:A6", "B5:B6", "C5:C6", "D5:D6", "E5:G5", "H5:O5", "P5:P6",
        "A23:P23",
    } == merged  # fmt: skip
    assert [sheet.cell(HEADER_ROW, c).value for c in (1, 2, 3, 4, 5, 8, 16)] == [
        "STT", "Đơn vị", "Tổng số cụm loa", "Hoạt động tốt",
        "Hỏng, không hoạt động", "Nguyên nhân", "Ghi chú",
    ]  # fmt: skip
    assert [sheet.cell(HEADER_ROW + 1, c).value for c in range(5, 16)] == [
        "Tổng", "Đang sửa chữa", "Chưa sửa chữa",
        "Không tiếp được sóng của đài", "Mạng chập chờn", "Cháy SIM, lỗi SIM",
        "Hỏng amply, loa", "Mất nguồn điện", "Hỏng thiết bị thu", "Không rõ nguyên nhân",
        "Diễn giải",
    ]  # fmt: skip
    first = [sheet.cell(FIRST_DATA_ROW, c).value for c in range(1, 8)]
    assert first == [1, "Thị trấn Lâm Thao", 18, 16, 2, 2, 0]
    total_row = FIRST_DATA_ROW + 14
    total = [sheet.cell(total_row, c).value for c in range(2, 15)]
    assert total == ["Tổng cộng", 200, 148, 52, 28, 24, 20, 10, 8, 0, 0, 0, 14]
    assert sheet.cell(total_row, 2).font.b and sheet.cell(total_row, 3).font.b
    assert not sheet.cell(FIRST_DATA_ROW, 3).font.b
    assert sheet.cell(total_row + 2, 1).value == table.summary
    assert sheet.page_setup.orientation == "landscape"
    assert str(sheet.page_setup.paperSize) == str(sheet.PAPERSIZE_A4)
    assert sheet.sheet_properties.pageSetUpPr.fitToPage
    assert sheet.print_title_rows == "$5:$6"
    assert sheet.column_dimensions["B"].width >= 20


def test_html_is_self_contained_printable_and_escaped() -> None:
    as_of = end_of_day(DEMO_DAY, zone())
    inventory = demo_inventory()
    hostile = InventoryDevice(
        device_id="evil-01",
        commune_code="999",
        commune_name="<script>alert(1)</script>",
        position=999,
    )
    table = compute_b2(
        [*inventory, hostile], demo_statuses(as_of.timestamp()), as_of=as_of, unit_name="A & B"
    )
    out = render(table, "html")
    page = out.body.decode()
    assert out.content_type.startswith("text/html")
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "A &amp; B" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "@import" not in page
    assert "size: A4 landscape" in page
    assert '<th colspan="3" scope="colgroup">Hỏng, không hoạt động</th>' in page
    assert '<th colspan="8" scope="colgroup">Nguyên nhân</th>' in page
    assert 'rowspan="2"' in page
    assert '<tr class="total">' in page
    assert table.summary in page
    assert "tính đến ngày 31/07/2023" in page


def test_format_names() -> None:
    assert parse_format(" XLSX ") is Format.XLSX
    with pytest.raises(ValueError, match="expected one of json, csv, xlsx, html"):
        parse_format("pdf")
    assert file_name(demo_table(), "csv") == "b2-2023-07-31.csv"


def test_english_exports_use_english_labels() -> None:
    table = demo_table("en")
    rows = list(csv.reader(io.StringIO(render(table, "csv").body.decode("utf-8-sig"))))
    assert rows[0][:4] == ["No.", "Unit", "Total clusters", "Working"]
    assert rows[15][1] == "Total"
    sheet = openpyxl.load_workbook(io.BytesIO(render(table, "xlsx").body))["B2"]
    assert sheet["A3"].value == "Unit: Huyện Lâm Thao, Tỉnh Phú Thọ (as of 31/07/2023)"
