"""loa-collector CLI: db migrate, users add/token, and serve as a real process (kill -9 safety)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.auth import secret_hash
from collector.cli import main
from collector.store.base import Role
from collector.store.migrations import LATEST
from collector.store.sqlite import SQLiteRepository
from fleet_protocol import Kind, encode, topic
from tests.collector.conftest import device_client, state, wait_for
from tests.support.mosquitto import COLLECTOR_USER, Broker, free_port


def write_config(path: Path, broker: Broker | None, http_port: int = 0) -> Path:
    path.write_text(
        f"""
[mqtt]
host = "127.0.0.1"
port = {broker.port if broker else 1883}
username = "{COLLECTOR_USER}"
password = "{Broker.password(COLLECTOR_USER)}"
client_id = "loa-collector-cli-test"
max_backoff_s = 1.0

[db]
path = "{path.parent / "collector.db"}"

[http]
port = {http_port}
secure_cookies = false
""",
        encoding="utf-8",
    )
    return path


async def test_migrate_users_and_tokens(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path / "c.toml", None)
    pw = tmp_path / "pw"
    pw.write_text("a-long-password\n")
    assert await asyncio.to_thread(main, ["db", "migrate", "--config", str(cfg)]) == 0
    assert f"schema version 0 -> {LATEST}" in capsys.readouterr().out
    assert await asyncio.to_thread(main, ["db", "migrate", "--config", str(cfg)]) == 0
    args = [
        "users",
        "add",
        "chi",
        "--role",
        "commune_officer",
        "--commune",
        "xa-01",
        "--commune",
        "xa-02",
        "--password-file",
        str(pw),
        "--config",
        str(cfg),
    ]
    assert await asyncio.to_thread(main, args) == 0
    assert await asyncio.to_thread(main, args) == 1
    assert "exists already" in capsys.readouterr().err
    bad = [
        "users",
        "add",
        "x",
        "--role",
        "commune_officer",
        "--password-file",
        str(pw),
        "--config",
        str(cfg),
    ]
    assert await asyncio.to_thread(main, bad) == 1
    assert "--commune" in capsys.readouterr().err
    assert await asyncio.to_thread(main, ["users", "token", "chi", "--config", str(cfg)]) == 0
    token = capsys.readouterr().out.strip()
    repo = await SQLiteRepository.open(tmp_path / "collector.db")
    try:
        user = await repo.user_by_token(secret_hash(token), at=time.time())
        assert user is not None and user.role is Role.COMMUNE_OFFICER
        assert user.communes == {"xa-01", "xa-02"}
        # The token itself is nowhere in the database.
        assert token.encode() not in (tmp_path / "collector.db").read_bytes()
    finally:
        await repo.close()
    assert await asyncio.to_thread(main, ["users", "token", "nobody", "--config", str(cfg)]) == 1


def test_serve_refuses_unmigrated_db_and_bad_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[mqtt]\nport = 'x'\n")
    assert main(["serve", "--config", str(bad)]) == 1
    assert "[mqtt] port" in capsys.readouterr().err
    cfg = write_config(tmp_path / "c.toml", None)
    assert main(["serve", "--config", str(cfg)]) == 1
    assert "run `loa-collector db migrate`" in capsys.readouterr().err


@contextlib.contextmanager
def collector_process(cfg: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "collector.cli", "serve", "--config", str(cfg)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
            return bool(json.loads(r.read())["broker_connected"])
    except OSError:
        return False


@pytest.mark.integration
async def test_kill_9_during_ingest_loses_nothing_the_broker_holds(
    broker: Broker, tmp_path: Path
) -> None:
    port = free_port()
    cfg = write_config(tmp_path / "c.toml", broker, port)
    assert await asyncio.to_thread(main, ["db", "migrate", "--config", str(cfg)]) == 0
    devices = [f"dev-k{i:02d}" for i in range(5)]
    per_device = 600
    db = tmp_path / "collector.db"
    repo = await SQLiteRepository.open(db, synchronous="normal")

    async def count() -> int:
        return await repo.message_count()

    async def publish_all(device: str) -> None:
        async with device_client(broker, device) as c:
            t0 = time.time() - per_device
            for seq in range(1, per_device + 1):
                await c.publish(
                    topic(device, Kind.STATE), encode(state(device, seq, t0 + seq)), qos=1
                )

    log = tmp_path / "collector.log"
    try:
        with collector_process(cfg, log) as proc:
            await wait_for(
                lambda: asyncio.to_thread(healthy, port), timeout=20, what="collector up"
            )
            publishers = [asyncio.create_task(publish_all(d)) for d in devices]

            async def some() -> bool:
                return await count() >= 300

            await wait_for(some, what="some messages stored")
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            at_kill = await count()
            await asyncio.gather(*publishers)
        assert at_kill < len(devices) * per_device, "killed too late to prove anything"
        with collector_process(cfg, log):

            async def all_stored() -> bool:
                return await count() == len(devices) * per_device

            await wait_for(all_stored, timeout=60, what="every published message stored")
        for d in devices:
            assert await repo.stored_seqs(d) == list(range(1, per_device + 1))
            row = await repo.get_device(d)
            assert row.last_seq == per_device
    finally:
        await repo.close()
