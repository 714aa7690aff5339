"""``loa-collector finding add|list`` against a real store: the finding changes the
cluster's cause and source, is in the ticket history and the audit log."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from collector.cli import main
from collector.model import InventoryDevice
from collector.store.sqlite import SQLiteRepository
from tests.collector.test_cli import write_config


async def test_add_and_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path / "c.toml", None)
    assert await asyncio.to_thread(main, ["db", "migrate", "--config", str(cfg)]) == 0
    repo = await SQLiteRepository.open(tmp_path / "collector.db")
    try:
        await repo.upsert_inventory(
            [InventoryDevice(device_id="lt-01", commune_code="xa-01", commune_name="Sơn Vi")],
            remove_missing=False,
        )
        ticket = await repo.open_ticket("lt-01", actor="op", at=time.time(), note="", cause=None)
    finally:
        await repo.close()
    capsys.readouterr()
    args = ["finding", "add", str(ticket.id), "--cause", "power", "--text", "mất điện lưới"]
    assert (
        await asyncio.to_thread(main, [*args, "--by", "kỹ thuật viên A", "--config", str(cfg)]) == 0
    )
    assert "Mất nguồn điện" in capsys.readouterr().out
    assert await asyncio.to_thread(main, ["finding", "list", "lt-01", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "lt-01: Mất nguồn điện — do kỹ thuật viên xác định" in out
    assert "kỹ thuật viên A: Mất nguồn điện mất điện lưới" in out
    # Bad input: a clear error, exit 1, nothing stored.
    rc = await asyncio.to_thread(
        main, ["finding", "add", "999", "--cause", "power", "--config", str(cfg)]
    )
    assert rc == 1 and "999" in capsys.readouterr().err
    repo = await SQLiteRepository.open(tmp_path / "collector.db")
    try:
        audit = [e for e in await repo.audit_log() if e["action"] == "repair.finding"]
        assert [(e["actor"], e["detail"]["cause"]) for e in audit] == [("kỹ thuật viên A", "power")]
        hist = (await repo.get_ticket(ticket.id)).history
        assert [h.action for h in hist] == ["open", "finding"]
    finally:
        await repo.close()
