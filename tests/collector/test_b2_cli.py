"""The inventory and report commands against a real SQLite database."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import openpyxl
import pytest

from collector.b2.demo import demo_inventory
from collector.cli import main
from collector.inventory import inventory_to_csv
from collector.store.sqlite import SQLiteRepository


def _migrated(path: Path) -> Path:
    async def go() -> None:
        repo = await SQLiteRepository.open(path, synchronous="normal")
        try:
            await repo.migrate()
        finally:
            await repo.close()

    asyncio.run(go())
    return path


def _count(path: Path) -> int:
    async def go() -> int:
        repo = await SQLiteRepository.open(path, synchronous="normal")
        try:
            return len(await repo.list_inventory())
        finally:
            await repo.close()

    return asyncio.run(go())


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return _migrated(tmp_path / "collector.db")


def test_import_export_round_trip_and_bad_file_imports_nothing(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "lam-thao.csv"
    good.write_bytes(inventory_to_csv(demo_inventory()))
    assert main(["inventory", "import", str(good), "--db", str(db)]) == 0
    assert "200 devices; 200 added, 0 updated, 0 unchanged, 0 removed" in capsys.readouterr().out

    bad = tmp_path / "bad.csv"
    original = good.read_text(encoding="utf-8-sig").splitlines()
    rows = list(original)
    rows[5] = rows[5].replace("lt-lamthao-05", "LT-05")
    rows[9] = rows[9].replace(",21.", ",121.")
    bad.write_text("\n".join(rows[:20]) + "\n", encoding="utf-8")
    assert main(["inventory", "import", str(bad), "--remove-missing", "--db", str(db)]) == 1
    err = capsys.readouterr().err
    assert "2 problems, nothing imported" in err
    assert "row 6, column 'Mã thiết bị': 'LT-05' is not a device id" in err
    assert "row 10, column 'Vĩ độ': 121." in err
    assert _count(db) == 200  # --remove-missing did not half-happen

    out = tmp_path / "out.csv"
    assert main(["inventory", "export", "--db", str(db), "-o", str(out)]) == 0
    assert out.read_bytes() == good.read_bytes()

    head = tmp_path / "head.csv"
    head.write_text("\n".join(original[:11]) + "\n", encoding="utf-8")
    assert main(["inventory", "import", str(head), "--db", str(db)]) == 0
    assert "10 devices; 0 added, 0 updated, 10 unchanged, 0 removed, 190 kept" in (
        capsys.readouterr().out
    )
    assert main(["inventory", "import", str(head), "--remove-missing", "--db", str(db)]) == 0
    assert "190 removed" in capsys.readouterr().out
    assert _count(db) == 10


def test_report_b2_formats(db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inv = tmp_path / "inv.csv"
    inv.write_bytes(inventory_to_csv(demo_inventory()))
    assert main(["inventory", "import", str(inv), "--db", str(db)]) == 0
    capsys.readouterr()

    xlsx = tmp_path / "b2.xlsx"
    args = ["report", "b2", "--as-of", "2023-07-31", "--db", str(db)]
    assert main([*args, "--format", "xlsx", "-o", str(xlsx)]) == 0
    sheet = openpyxl.load_workbook(io.BytesIO(xlsx.read_bytes()))["B2"]
    assert sheet["A3"].value == "Đơn vị: Huyện Lâm Thao, Tỉnh Phú Thọ (tính đến ngày 31/07/2023)"
    assert sheet.cell(21, 2).value == "Tổng cộng"
    assert sheet.cell(21, 3).value == 200

    assert main([*args, "--format", "json", "--unit", "UBND huyện Lâm Thao"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["unit_name"] == "UBND huyện Lâm Thao"
    assert data["total"]["never_reported"] == 200
    assert data["as_of"] == "2023-07-31T23:59:59.999999+07:00"

    assert main([*args, "--format", "summary", "--compare", "--lang", "en"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("Status of the commune radio system as of 31 July 2023:")
    assert lines[1] == "Compared with 30/6/2023: 0 newly broken, 0 repaired, 200 still broken."

    assert main([*args, "--format", "csv", "--scope", "district"]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("1,Huyện Lâm Thao,200,0,200")


def test_report_b2_prints_a_table_by_default_and_html_only_when_asked(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = tmp_path / "inv.csv"
    inv.write_bytes(inventory_to_csv(demo_inventory()))
    assert main(["inventory", "import", str(inv), "--db", str(db)]) == 0
    capsys.readouterr()
    args = ["report", "b2", "--as-of", "2023-07-31", "--db", str(db)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "<" not in out
    lines = out.splitlines()
    assert lines[0].startswith("Biểu B2 — TÌNH HÌNH HOẠT ĐỘNG")
    assert lines[1].endswith("tính đến ngày 31/07/2023")
    header = next(i for i, line in enumerate(lines) if line.startswith("STT"))
    rules = [i for i, line in enumerate(lines) if line.startswith("---")]
    assert rules[0] == header + 1
    body = lines[rules[0] + 1 : rules[1]]
    assert len(body) == 14 and body[0].startswith("1  ")
    total = lines[rules[1] + 1]
    assert total.split()[:3] == ["Tổng", "cộng", "200"]
    # Columns line up: every row's "total clusters" ends in the same column.
    end = lines[header].index("Tổng số cụm loa") + len("Tổng số cụm loa")
    assert all(line[:end].rstrip()[-1].isdigit() for line in [*body, total])
    assert lines[-1].startswith("Tóm tắt: ")

    html = tmp_path / "b2.html"
    assert main([*args, "-o", str(html)]) == 0
    assert html.read_text(encoding="utf-8").lstrip().lower().startswith("<!doctype html")
    assert main([*args, "--format", "html"]) == 0
    assert "<table" in capsys.readouterr().out
    assert main([*args, "--lang", "en"]) == 0
    assert "Total clusters" in capsys.readouterr().out


def test_report_errors_are_named(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", "b2", "--as-of", "31/02/2023", "--db", str(db)]) == 1
    assert "as_of '31/02/2023'" in capsys.readouterr().err
    assert main(["report", "b2", "--tz", "Mars/Olympus", "--db", str(db)]) == 1
    assert "Mars/Olympus" in capsys.readouterr().err
    assert main(["report", "b2", "--db", str(tmp_path / "none.db")]) == 1
    assert "no such database" in capsys.readouterr().err
    assert main(["inventory", "import", str(tmp_path / "nofile.csv"), "--db", str(db)]) == 1
    assert "cannot read" in capsys.readouterr().err
