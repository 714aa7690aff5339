"""Inventory import/export: round trips, header spellings, and all-or-nothing rejection."""

from __future__ import annotations

import io
import tomllib
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.b2.demo import demo_inventory
from collector.inventory import (
    InventoryError,
    inventory_to_csv,
    inventory_to_xlsx,
    parse_inventory,
    plan_import,
    read_inventory,
    renumbered,
)
from collector.model import CommuneKind, InventoryDevice

DATA = Path(__file__).parent / "data"
BAD_CASES: list[dict[str, Any]] = tomllib.loads(
    (DATA / "inventory_bad_cases.toml").read_text(encoding="utf-8")
)["case"]


def _xlsx(rows: list[list[Any]]) -> bytes:
    book = openpyxl.Workbook()
    sheet = book.active
    for row in rows:
        sheet.append(row)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def test_demo_inventory_round_trips_through_csv_and_xlsx() -> None:
    devices = demo_inventory()
    assert len(devices) == 200
    for lang in ("vi", "en"):
        assert parse_inventory(inventory_to_csv(devices, lang=lang), source="x.csv") == devices
        assert parse_inventory(inventory_to_xlsx(devices, lang=lang), source="x.xlsx") == devices


def test_csv_export_has_bom_and_vietnamese_header() -> None:
    data = inventory_to_csv(demo_inventory()[:1])
    assert data.startswith(b"\xef\xbb\xbf")
    header = data.decode("utf-8-sig").splitlines()[0]
    assert header.startswith("Mã thiết bị,Mã xã,Tên xã,Loại đơn vị,Huyện,Tỉnh")


def test_csv_with_and_without_bom_unaccented_headers_and_semicolons() -> None:
    body = (
        "STT;Ma thiet bi;MA XA;ten xa;loai don vi;Huyen;Tinh;Vi do;Kinh do;"
        "Nha thau;ICCID;So thue bao;Ngay lap dat;Ghi chu\n"
        "1;lt-tt-01;08410;Lâm Thao;Thị trấn;Huyện Lâm Thao;Tỉnh Phú Thọ;21,3;105,29;"
        "Viettel;8984 0481 2345 6789 012F;+84912345678;15/03/2022;cột điện số 3\n"
    )
    for data in (body.encode(), b"\xef\xbb\xbf" + body.encode()):
        (device,) = parse_inventory(data, source="in.csv")
        assert device == InventoryDevice(
            device_id="lt-tt-01",
            commune_code="08410",
            commune_name="Lâm Thao",
            commune_kind=CommuneKind.THI_TRAN,
            district="Huyện Lâm Thao",
            province="Tỉnh Phú Thọ",
            latitude=21.3,
            longitude=105.29,
            contractor="Viettel",
            sim_iccid="8984048123456789012",
            sim_phone="0912345678",
            install_date="2022-03-15",
            position=0,
        )


def test_xlsx_cells_typed_by_excel_are_accepted() -> None:
    import datetime as dt

    data = _xlsx(
        [
            [None],
            [
                "Mã thiết bị",
                "Mã xã",
                "Tên xã",
                "Vĩ độ",
                "Kinh độ",
                "Số điện thoại SIM",
                "Ngày lắp đặt",
            ],
            ["lt-a-01", 8428, "Sơn Vi", 21.3, 105.2, 912345678, dt.datetime(2022, 3, 15)],
            [None, None, None],
        ]
    )
    (device,) = parse_inventory(data, source="upload")
    assert (device.commune_code, device.sim_phone, device.install_date) == (
        "8428",
        "0912345678",
        "2022-03-15",
    )
    assert (device.latitude, device.longitude) == (21.3, 105.2)


def test_xlsx_numeric_iccid_is_rejected_because_digits_are_lost() -> None:
    data = _xlsx(
        [["device_id", "commune_code", "commune_name", "sim_iccid"], ["lt-a-01", "1", "A", 8.98e18]]
    )
    with pytest.raises(InventoryError) as info:
        parse_inventory(data, source="inv.xlsx")
    (error,) = info.value.errors
    assert (error.row, error.column) == (2, "sim_iccid")
    assert "loses digits" in error.message


def test_communes_keep_file_order_and_positions_number_rows() -> None:
    body = ("device_id,commune_code,commune_name\nb-01,2,Bê\na-01,1,A\nb-02,2,Bê\n").encode()
    devices = parse_inventory(body)
    assert [(d.device_id, d.position) for d in devices] == [("b-01", 0), ("a-01", 1), ("b-02", 2)]


@pytest.mark.parametrize("case", BAD_CASES, ids=[c["name"] for c in BAD_CASES])
def test_bad_files_are_rejected_with_every_row_level_error(case: dict[str, Any]) -> None:
    data = case["csv"].lstrip("\n").encode()
    with pytest.raises(InventoryError) as info:
        parse_inventory(data, source="bad.csv")
    got = [(e.row or 0, e.column or "", e.message) for e in info.value.errors]
    assert len(got) == len(case["errors"]), got
    for (row, column, message), (want_row, want_column, fragment) in zip(
        got, case["errors"], strict=True
    ):
        assert (row, column) == (want_row, want_column), got
        assert fragment in message, got
    assert "nothing imported" in str(info.value)
    assert str(info.value).count("\n") == len(got)


def test_not_utf8_and_not_a_workbook_are_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match="not UTF-8 text"):
        parse_inventory("device_id,Tên xã\n".encode("latin-1"), source="legacy.csv")
    with pytest.raises(InventoryError, match="unreadable XLSX workbook"):
        parse_inventory(b"PK\x03\x04 not really a zip", source="broken.xlsx")
    with pytest.raises(InventoryError, match="cannot read"):
        read_inventory(tmp_path / "missing.csv")


def test_error_message_is_capped_but_errors_are_all_kept() -> None:
    lines = ["device_id,commune_code,commune_name"] + [f"BAD{i},1,A" for i in range(30)]
    with pytest.raises(InventoryError) as info:
        parse_inventory("\n".join(lines).encode())
    assert len(info.value.errors) == 30
    assert "... and 10 more" in str(info.value)


def test_plan_import_counts_added_updated_unchanged_and_missing() -> None:
    current = demo_inventory()[:3]
    moved = InventoryDevice(**{**_fields(current[2]), "contractor": "Bắc Việt"})
    new = InventoryDevice(device_id="lt-new-01", commune_code="x", commune_name="X", position=3)
    incoming = [current[0], moved, new]
    plan = plan_import(current, incoming)
    assert plan.added == ("lt-new-01",)
    assert plan.updated == (current[2].device_id,)
    assert plan.unchanged == (current[0].device_id,)
    assert plan.missing == (current[1].device_id,)
    assert plan.removed == ()
    assert plan.describe() == "1 added, 1 updated, 1 unchanged, 0 removed, 1 kept"
    assert plan_import(current, incoming, remove_missing=True).removed == (current[1].device_id,)


def test_renumbered_closes_gaps_in_order() -> None:
    devices = [
        InventoryDevice(device_id=f"d-{i:02d}", commune_code="1", commune_name="A", position=p)
        for i, p in enumerate((7, 3, 9))
    ]
    assert [(d.device_id, d.position) for d in renumbered(devices)] == [
        ("d-01", 0),
        ("d-00", 1),
        ("d-02", 2),
    ]


def _fields(device: InventoryDevice) -> dict[str, Any]:
    return {name: getattr(device, name) for name in device.__slots__}  # type: ignore[attr-defined]


_text = st.text(
    alphabet=st.characters(
        codec="utf-8", categories=("L", "N", "P", "S", "Zs"), exclude_characters="\x85\xa0"
    ),
    max_size=30,
).map(str.strip)


@st.composite
def inventories(draw: st.DrawFn) -> list[InventoryDevice]:
    communes = draw(
        st.lists(
            st.tuples(
                st.from_regex(r"[0-9A-Za-z]{1,8}", fullmatch=True),
                _text.filter(bool),
                st.sampled_from(list(CommuneKind)),
                _text,
                _text,
            ),
            min_size=1,
            max_size=4,
            unique_by=lambda c: c[0],
        )
    )
    ids = draw(
        st.lists(
            st.from_regex(r"[a-z0-9][a-z0-9-]{2,20}", fullmatch=True), max_size=12, unique=True
        )
    )
    devices = []
    for i, device_id in enumerate(ids):
        code, name, kind, district, province = draw(st.sampled_from(communes))
        located = draw(st.booleans())
        devices.append(
            InventoryDevice(
                device_id=device_id,
                commune_code=code,
                commune_name=name,
                commune_kind=kind,
                district=district,
                province=province,
                address=draw(_text),
                latitude=round(draw(st.floats(-90, 90)), 7) if located else None,
                longitude=round(draw(st.floats(-180, 180)), 7) if located else None,
                contractor=draw(_text),
                sim_iccid=draw(
                    st.one_of(st.just(""), st.from_regex(r"89\d{17,18}", fullmatch=True))
                ),
                sim_phone=draw(st.one_of(st.just(""), st.from_regex(r"0\d{9}", fullmatch=True))),
                install_date=draw(st.one_of(st.just(""), st.dates().map(lambda d: d.isoformat()))),
                position=i,
            )
        )
    return devices


@settings(max_examples=40, deadline=None)
@given(devices=inventories(), lang=st.sampled_from(["vi", "en"]))
def test_any_valid_inventory_round_trips(devices: list[InventoryDevice], lang: str) -> None:
    assert parse_inventory(inventory_to_csv(devices, lang=lang), source="x.csv") == devices
    assert parse_inventory(inventory_to_xlsx(devices, lang=lang), source="x.xlsx") == devices


def test_formula_like_text_stays_text_in_both_formats() -> None:
    device = InventoryDevice(
        device_id="lt-a-01",
        commune_code="1",
        commune_name='=HYPERLINK("http://x")',
        address="-Khu 1",
        contractor="'quoted",
    )
    csv_body = inventory_to_csv([device])
    assert "'=HYPERLINK" in csv_body.decode("utf-8-sig")
    assert parse_inventory(csv_body) == [device]
    xlsx_body = inventory_to_xlsx([device])
    sheet = openpyxl.load_workbook(io.BytesIO(xlsx_body)).active
    assert sheet["C2"].data_type == "s"
    assert parse_inventory(xlsx_body) == [device]
