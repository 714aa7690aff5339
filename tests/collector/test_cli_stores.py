"""``provision`` and ``inventory``/``report b2`` open the store as ``serve`` does.

Both take the config's ``[db]`` (a SQLite ``path`` or a ``url``) and a ``--db``
that is a SQLite file path (as before) or a URL: ``sqlite:///abs/path`` or
``postgresql://...``. Every case registers or reads devices and checks them by
reading the store back on its own engine.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from collector.b2.demo import demo_inventory
from collector.cli import main
from collector.inventory import inventory_to_csv
from collector.model import InventoryDevice
from collector.store.engines import open_url
from collector.store.sqlite import SQLiteRepository


def _migrated_sqlite(path: Path) -> Path:
    async def go() -> None:
        repo = await SQLiteRepository.open(path, synchronous="normal")
        try:
            await repo.migrate()
        finally:
            await repo.close()

    asyncio.run(go())
    return path


def _inventory(url: str) -> list[InventoryDevice]:
    """The inventory as the store at ``url`` holds it (read on its own engine)."""

    async def go() -> list[InventoryDevice]:
        repo = await open_url(url)
        try:
            return await repo.list_inventory()
        finally:
            await repo.close()

    return asyncio.run(go())


def _provision(tmp_path: Path, *store: str, device: str = "dev-007") -> int:
    bundle = tmp_path / f"bundle-{device}"
    return main(
        [
            "provision", device, "--commune", "19087", "--commune-name", "Thạch Sơn",
            "--contractor", "Bắc Việt", "--broker-url", "mqtts://127.0.0.1",
            "--out", str(bundle), "--install-dir", str(bundle),
            "--no-broker", "--no-reload", *store,
        ]
    )  # fmt: skip


@pytest.fixture(params=["sqlite-path", "sqlite-url", "postgres-url"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(what ``--db`` is given, the URL to read the store back from), per engine."""
    if request.param == "postgres-url":
        url: str = request.getfixturevalue("pg_url")
        return url, url
    db = _migrated_sqlite(tmp_path / "collector.db")
    return (str(db) if request.param == "sqlite-path" else f"sqlite://{db}"), f"sqlite://{db}"


# --- provision ------------------------------------------------------------------------------


def test_provision_registers_the_device_in_the_store_db_names(
    store: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    option, url = store
    assert _provision(tmp_path, "--db", option) == 0
    assert "inventory: Thạch Sơn (19087)" in capsys.readouterr().out
    [row] = _inventory(url)
    assert (row.device_id, row.commune_name, row.contractor) == ("dev-007", "Thạch Sơn", "Bắc Việt")
    # A second device of the same commune gets its name from the stored inventory.
    bundle = tmp_path / "bundle-dev-008"
    argv = ["provision", "dev-008", "--commune", "19087", "--broker-url", "mqtts://127.0.0.1"]
    assert main([*argv, "--out", str(bundle), "--no-broker", "--no-reload", "--db", option]) == 0
    rows = {d.device_id: d.commune_name for d in _inventory(url)}
    assert rows == {"dev-007": "Thạch Sơn", "dev-008": "Thạch Sơn"}


def test_provision_uses_the_config_db_url_on_postgres(pg_url: str, tmp_path: Path) -> None:
    collector_toml = tmp_path / "collector.toml"
    # No SQLite file anywhere: the row can only go to PostgreSQL.
    collector_toml.write_text(f'[db]\nurl = "{pg_url}"\npath = "{tmp_path / "none.db"}"\n')
    assert _provision(tmp_path, "--config", str(collector_toml)) == 0
    [row] = _inventory(pg_url)
    assert (row.device_id, row.commune_code) == ("dev-007", "19087")
    assert not (tmp_path / "none.db").exists()


def test_provision_keeps_the_config_db_path_on_sqlite(tmp_path: Path) -> None:
    db = _migrated_sqlite(tmp_path / "collector.db")
    collector_toml = tmp_path / "collector.toml"
    collector_toml.write_text(f'[db]\npath = "{db}"\n')
    assert _provision(tmp_path, "--config", str(collector_toml)) == 0
    assert [d.device_id for d in _inventory(f"sqlite://{db}")] == ["dev-007"]


def test_provision_names_a_bad_store_and_hides_its_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _provision(tmp_path, "--db", "mysql://loa:s3cret@db.example/loa") == 2
    err = capsys.readouterr().err
    assert "unsupported URL scheme 'mysql'" in err and "s3cret" not in err
    assert not (tmp_path / "bundle-dev-007").exists()
    assert _provision(tmp_path, "--db", "sqlite://collector.db") == 2
    assert "sqlite:// needs an absolute path" in capsys.readouterr().err
    # A server that is not there: the URL is named, its password is not.
    for url in (
        "postgresql://loa:s3cret@127.0.0.1:1/loa?connect_timeout=2",
        "postgresql://loa@127.0.0.1:1/loa?password=s3cret&connect_timeout=2",
    ):
        assert _provision(tmp_path, "--db", url) == 2
        err = capsys.readouterr().err
        assert "127.0.0.1:1/loa" in err and "cannot connect" in err and "s3cret" not in err
    # A SQLite file that does not exist is not created (as before URLs).
    missing = tmp_path / "none.db"
    for option in (str(missing), f"sqlite://{missing}"):
        assert _provision(tmp_path, "--db", option) == 2
        assert "no such database" in capsys.readouterr().err
        assert not missing.exists()


# --- inventory and report b2 ----------------------------------------------------------------


def _b2_json(*store: str, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    assert main(["report", "b2", "--as-of", "2023-07-31", "--format", "json", *store]) == 0
    data: dict[str, Any] = json.loads(capsys.readouterr().out)
    return data


def test_inventory_and_report_b2_on_the_store_db_names(
    store: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    option, url = store
    inv = tmp_path / "inv.csv"
    inv.write_bytes(inventory_to_csv(demo_inventory()))
    assert main(["inventory", "import", str(inv), "--db", option]) == 0
    assert "200 devices; 200 added" in capsys.readouterr().out
    assert len(_inventory(url)) == 200
    out = tmp_path / "out.csv"
    assert main(["inventory", "export", "--db", option, "-o", str(out)]) == 0
    assert out.read_bytes() == inv.read_bytes()
    data = _b2_json("--db", option, capsys=capsys)
    assert data["total"]["never_reported"] == 200
    assert main(["report", "b2", "--as-of", "2023-07-31", "--format", "summary", "--compare",
                 "--lang", "en", "--db", option]) == 0  # fmt: skip
    assert "200 still broken" in capsys.readouterr().out


def test_report_b2_reads_the_config_db_url_on_postgres_as_on_sqlite(
    pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = tmp_path / "inv.csv"
    inv.write_bytes(inventory_to_csv(demo_inventory()))
    db = _migrated_sqlite(tmp_path / "collector.db")
    on_sqlite = tmp_path / "sqlite.toml"
    on_sqlite.write_text(f'[db]\npath = "{db}"\n[report]\nunit_name = "UBND huyện Lâm Thao"\n')
    on_pg = tmp_path / "pg.toml"
    on_pg.write_text(f'[db]\nurl = "{pg_url}"\n[report]\nunit_name = "UBND huyện Lâm Thao"\n')
    for config in (on_sqlite, on_pg):
        assert main(["inventory", "import", str(inv), "--config", str(config)]) == 0
    assert len(_inventory(pg_url)) == 200
    pg = _b2_json("--config", str(on_pg), capsys=capsys)
    assert pg["unit_name"] == "UBND huyện Lâm Thao"  # [report] came from the config
    assert pg == _b2_json("--config", str(on_sqlite), capsys=capsys)


def test_report_b2_names_a_bad_store_and_hides_its_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", "b2", "--db", "mysql://loa:s3cret@db.example/loa"]) == 1
    err = capsys.readouterr().err
    assert "unsupported URL scheme 'mysql'" in err and "s3cret" not in err
    url = "postgresql://loa:s3cret@127.0.0.1:1/loa?connect_timeout=2"
    assert main(["inventory", "export", "--db", url]) == 1
    err = capsys.readouterr().err
    assert "cannot connect" in err and "loa:***@127.0.0.1:1/loa" in err and "s3cret" not in err
    missing = tmp_path / "none.db"
    assert main(["report", "b2", "--db", f"sqlite://{missing}"]) == 1
    assert "no such database" in capsys.readouterr().err
    assert not missing.exists()
