"""B2 and inventory routes through the real app factory, auth and SQLite store."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import openpyxl
import pytest
from aiohttp.test_utils import TestClient, TestServer

from collector.app import create_app
from collector.auth import hash_password, secret_hash
from collector.b2 import api as b2_api
from collector.b2.demo import demo_inventory
from collector.config import config_from_dict
from collector.inventory import inventory_to_csv, inventory_to_xlsx
from collector.store.base import Role
from collector.store.sqlite import SQLiteRepository
from tests.collector.test_b2_store import Fleet, drive_to_july_state
from tests.collector.test_b2_table import EXPECTED_SENTENCE, EXPECTED_TOTAL

ADMIN = {"Authorization": "Bearer admin-token"}
OFFICER = {"Authorization": "Bearer officer-token"}  # Sơn Vi only
SON_VI = "08428"


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[aiohttp.web.Request, object]]:
    db = tmp_path / "collector.db"
    repo = await SQLiteRepository.open(db, synchronous="normal")
    try:
        await repo.migrate()
        for name, role, communes in (
            ("admin", Role.ADMIN, frozenset[str]()),
            ("officer", Role.COMMUNE_OFFICER, frozenset({SON_VI})),
        ):
            await repo.add_user(
                name, role=role, communes=communes, password_hash=hash_password("x")
            )
            await repo.add_token(name, token_hash=secret_hash(f"{name}-token"), label="t", at=0)
    finally:
        await repo.close()
    cfg = config_from_dict(
        {
            "db": {"path": str(db), "synchronous": "normal"},
            "http": {"port": 0, "secure_cookies": False},
            "ingest_enabled": False,
        }
    )
    async with TestClient(TestServer(create_app(cfg))) as c:
        yield c


async def _drive(client: TestClient[aiohttp.web.Request, object]) -> None:
    """Bring the demo district to its 31/7/2023 state in the app's database."""
    from collector.keys import REPO

    repo = client.server.app[REPO]
    assert isinstance(repo, SQLiteRepository)
    await drive_to_july_state(repo, Fleet(repo))


async def test_import_then_b2_in_every_format(
    client: TestClient[aiohttp.web.Request, object],
) -> None:
    body = inventory_to_csv(demo_inventory())
    resp = await client.post(
        "/api/v1/inventory/import", data=body, headers={**ADMIN, "Content-Type": "text/csv"}
    )
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {
        "devices": 200,
        "added": 200,
        "updated": 0,
        "unchanged": 0,
        "removed": [],
        "kept": [],
    }
    await _drive(client)

    resp = await client.get("/api/v1/reports/b2?as_of=2023-07-31&format=json", headers=ADMIN)
    assert resp.status == 200
    data = await resp.json()
    t = data["total"]
    assert (t["unit"], t["total"], t["working"]) == EXPECTED_TOTAL[:3]
    assert t["broken"] == {"total": 52, "in_repair": 28, "not_repaired": 24}
    assert data["summary"] == EXPECTED_SENTENCE
    assert [r["unit"] for r in data["rows"]][:2] == ["Thị trấn Lâm Thao", "Thị trấn Hùng Sơn"]

    resp = await client.get("/api/v1/reports/b2?as_of=31/7/2023&format=xlsx", headers=ADMIN)
    assert resp.status == 200
    assert resp.headers["Content-Disposition"] == 'attachment; filename="b2-2023-07-31.xlsx"'
    sheet = openpyxl.load_workbook(io.BytesIO(await resp.read()))["B2"]
    assert [sheet.cell(21, c).value for c in (2, 3, 4, 5, 6, 7)] == [
        "Tổng cộng", 200, 148, 52, 28, 24,
    ]  # fmt: skip

    resp = await client.get("/api/v1/reports/b2?as_of=2023-07-31&format=csv", headers=ADMIN)
    assert resp.content_type == "text/csv"
    assert (await resp.read()).startswith(b"\xef\xbb\xbf")

    resp = await client.get(
        "/api/v1/reports/b2?as_of=2023-07-31&format=html&lang=en&unit=Lam%20Thao", headers=ADMIN
    )
    page = await resp.text()
    assert resp.content_type == "text/html"
    assert "148 speaker clusters working" in page and "Unit: Lam Thao" in page

    resp = await client.get("/api/v1/reports/b2/summary?as_of=2023-07-31&compare=1", headers=ADMIN)
    summary = await resp.json()
    assert summary["summary"] == EXPECTED_SENTENCE
    assert summary["comparison"]["sentence"].startswith("So với ngày 30/6/2023:")
    # On 30/6 nothing had reported yet: every working cluster counts as repaired since.
    assert len(summary["comparison"]["repaired"]) == 148
    assert len(summary["comparison"]["still_broken"]) == 52

    # A commune officer sees their commune only, in the table and the inventory.
    resp = await client.get("/api/v1/reports/b2?as_of=2023-07-31", headers=OFFICER)
    data = await resp.json()
    assert [r["unit"] for r in data["rows"]] == ["Xã Sơn Vi"]
    assert (data["total"]["total"], data["total"]["broken"]["total"]) == (14, 3)
    resp = await client.get("/api/v1/inventory", headers=OFFICER)
    assert {d["commune_code"] for d in (await resp.json())["devices"]} == {SON_VI}


async def test_bad_inventory_file_gets_row_errors_and_changes_nothing(
    client: TestClient[aiohttp.web.Request, object],
) -> None:
    good = inventory_to_xlsx(demo_inventory())
    form = aiohttp.FormData()
    form.add_field("file", good, filename="lam-thao.xlsx")
    resp = await client.post("/api/v1/inventory/import", data=form, headers=ADMIN)
    assert resp.status == 200, await resp.text()

    bad = "Mã thiết bị,Mã xã,Tên xã,Vĩ độ,Kinh độ\nlt-new-01,1,A,95,105\nBAD,1,A,,\n"
    resp = await client.post(
        "/api/v1/inventory/import?remove_missing=1",
        data=bad.encode(),
        headers={**ADMIN, "Content-Type": "text/csv"},
    )
    assert resp.status == 400
    answer = await resp.json()
    assert answer["field"] == "file"
    assert [(e["row"], e["column"]) for e in answer["errors"]] == [
        (2, "Vĩ độ"),
        (3, "Mã thiết bị"),
    ]
    resp = await client.get("/api/v1/inventory?format=csv", headers=ADMIN)
    assert await resp.read() == inventory_to_csv(demo_inventory())


async def test_permissions_and_bad_parameters(
    client: TestClient[aiohttp.web.Request, object],
) -> None:
    resp = await client.post("/api/v1/inventory/import", data=b"x", headers=OFFICER)
    assert resp.status == 403
    assert (await client.get("/api/v1/reports/b2")).status == 401
    for query, field in (
        ("as_of=2023-02-30", "as_of"),
        ("format=pdf", "format"),
        ("lang=fr", "lang"),
        ("scope=country", "scope"),
    ):
        resp = await client.get(f"/api/v1/reports/b2?{query}", headers=ADMIN)
        assert resp.status == 400, query
        assert (await resp.json())["field"] == field
    resp = await client.post(
        "/api/v1/inventory/import", data=b"", headers={**ADMIN, "Content-Type": "text/csv"}
    )
    assert resp.status == 400
    too_big = b"x" * (b2_api.MAX_INVENTORY_BYTES + 1)
    resp = await client.post(
        "/api/v1/inventory/import", data=too_big, headers={**ADMIN, "Content-Type": "text/csv"}
    )
    assert resp.status == 413
