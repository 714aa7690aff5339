"""``loa-collector repairs``: list, open (one, already started, or a CSV), start, comment,
resolve, cancel, against a real SQLite store."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from collector.cli import main
from collector.model import InventoryDevice
from collector.store.base import TicketState
from collector.store.sqlite import SQLiteRepository
from tests.collector.test_cli import write_config

DEVICES = [f"dev-{n:02d}" for n in range(1, 6)]


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    cfg = write_config(tmp_path / "c.toml", None)
    assert main(["db", "migrate", "--config", str(cfg)]) == 0

    async def seed() -> None:
        repo = await SQLiteRepository.open(tmp_path / "collector.db")
        try:
            await repo.upsert_inventory(
                [
                    InventoryDevice(device_id=d, commune_code="xa-01", commune_name="Xã Sơn Vi")
                    for d in DEVICES
                ],
                remove_missing=False,
                actor="test",
            )
        finally:
            await repo.close()

    asyncio.run(seed())
    return cfg


def _tickets(tmp_path: Path) -> dict[str, list[dict[str, object]]]:
    async def go() -> dict[str, list[dict[str, object]]]:
        repo = await SQLiteRepository.open(tmp_path / "collector.db")
        try:
            out: dict[str, list[dict[str, object]]] = {}
            for t in await repo.list_tickets():
                full = await repo.get_ticket(t.id)
                out.setdefault(t.device_id, []).append(
                    {
                        "id": t.id,
                        "state": t.state,
                        "contractor": t.contractor,
                        "history": [(h.action, h.actor) for h in full.history],
                    }
                )
            return out
        finally:
            await repo.close()

    return asyncio.run(go())


def test_a_ticket_through_its_life(
    cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c = ["--config", str(cfg)]
    assert main(["repairs", "open", "dev-01", "--note", "xã báo mất tiếng", *c]) == 0
    assert "ticket 1 dev-01: open" in capsys.readouterr().out
    assert main(["repairs", "open", "dev-01", *c]) == 1
    assert "active ticket" in capsys.readouterr().err
    assert main(["repairs", "start", "1", "--contractor", "Viettel", "--technician", "Hà", *c]) == 0
    assert "in_repair (Viettel, Hà)" in capsys.readouterr().out
    assert main(["repairs", "comment", "1", *c]) == 1
    assert "--note is required" in capsys.readouterr().err
    assert main(["repairs", "comment", "1", "--note", "chờ linh kiện", "--actor", "hà", *c]) == 0
    assert main(["repairs", "resolve", "1", "--note", "thay loa", *c]) == 0
    assert "resolved" in capsys.readouterr().out
    assert main(["repairs", "resolve", "1", *c]) == 1  # closed already
    assert main(["repairs", "cancel", "99", "--note", "x", *c]) == 1
    assert "99" in capsys.readouterr().err
    t = _tickets(tmp_path)["dev-01"][0]
    assert t["state"] is TicketState.RESOLVED
    assert t["history"] == [
        ("open", "cli"),
        ("start", "cli"),
        ("comment", "hà"),
        ("resolve", "cli"),
    ]


def test_open_already_started_in_one_call_and_list(
    cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c = ["--config", str(cfg)]
    assert (
        main(["repairs", "open", "dev-02", "--contractor", "VNPT", "--technician", "Lê", *c]) == 0
    )
    assert main(["repairs", "open", "dev-03", "--technician", "Lê", *c]) == 1
    assert "contractor: is required with technician" in capsys.readouterr().err
    assert main(["repairs", "open", "dev-03", *c]) == 0
    assert main(["repairs", "cancel", "2", "--note", "báo nhầm", *c]) == 0
    capsys.readouterr()
    assert main(["repairs", "list", *c]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["#", "device", "commune", "state"]
    assert {line.split()[1]: line.split()[3] for line in lines[2:]} == {
        "dev-02": "in_repair",
        "dev-03": "cancelled",
    }
    assert main(["repairs", "list", "--state", "in_repair", "--format", "json", *c]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(d["device_id"], d["contractor"]) for d in data] == [("dev-02", "VNPT")]
    assert _tickets(tmp_path)["dev-02"][0]["history"] == [("open", "cli"), ("start", "cli")]


def test_open_in_bulk_from_a_csv_all_or_nothing(
    cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c = ["--config", str(cfg)]
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "device_id,note,contractor\ndev-01,mất tiếng,\ndev-02,,Viettel\nnope-99,,\n",
        encoding="utf-8-sig",
    )
    assert main(["repairs", "open", "--csv", str(bad), *c]) == 1
    assert "line 4: nope-99: not in the inventory" in capsys.readouterr().err
    assert _tickets(tmp_path) == {}  # nothing opened
    dup = tmp_path / "dup.csv"
    dup.write_text("device_id\ndev-01\ndev-01\n", encoding="utf-8")
    assert main(["repairs", "open", "--csv", str(dup), *c]) == 1
    assert "line 3: device_id: dev-01 already on line 2" in capsys.readouterr().err
    odd = tmp_path / "odd.csv"
    odd.write_text("device_id,colour\ndev-01,red\n", encoding="utf-8")
    assert main(["repairs", "open", "--csv", str(odd), *c]) == 1
    assert "unknown column 'colour'" in capsys.readouterr().err

    good = tmp_path / "good.csv"  # Excel in Vietnamese locale: ';' separators, a BOM
    good.write_text(
        "device_id;note;contractor;technician\n"
        "dev-01;mất tiếng;;\n"
        "dev-02;;Viettel;Nguyễn Văn Hùng\n"
        "\n"
        "dev-04;cháy loa;VNPT;\n",
        encoding="utf-8-sig",
    )
    assert main(["repairs", "open", "--csv", str(good), *c]) == 0
    assert "3 tickets opened, 2 of them started" in capsys.readouterr().out
    t = _tickets(tmp_path)
    assert {d: v[0]["state"] for d, v in t.items()} == {
        "dev-01": TicketState.OPEN,
        "dev-02": TicketState.IN_REPAIR,
        "dev-04": TicketState.IN_REPAIR,
    }
    # Again: every row now has an active ticket; refused before anything is written.
    assert main(["repairs", "open", "--csv", str(good), *c]) == 1
    assert "line 2: dev-01: has an active ticket already" in capsys.readouterr().err
    assert sum(len(v) for v in _tickets(tmp_path).values()) == 3
