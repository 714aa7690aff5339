"""kill -9 of the collector while it sends notifications: nothing lost, nothing recorded twice.

A real ``loa-collector serve`` process evaluates one outage into 40 webhook
deliveries and sends them to a slow local receiver; it is killed with SIGKILL
mid-way and started again. From the receiver's own record and the store:
every delivery arrives at least once (the few in flight at the kill may
arrive twice, with the same idempotency key, so a receiver can drop them),
every row is recorded sent exactly once, and no row that was recorded sent
before the kill is sent again.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import sys
import time
from pathlib import Path

import pytest

from collector.auth import hash_password
from collector.ingest import Ingestor
from collector.metrics import IngestStats
from collector.model import InventoryDevice
from collector.store.alerts import ContactRow, SQLiteAlertStore
from collector.store.base import Role
from collector.store.sqlite import SQLiteRepository
from fleet_protocol import Kind, encode, topic
from tests.collector.conftest import make_config, presence
from tests.support.receivers import DELIVERY_HEADER, http_receivers

pytestmark = pytest.mark.integration

USERS = 40
DEVICES = [f"dev-k{i:02d}" for i in range(14)]


def rows(db: Path) -> dict[str, tuple[str, str]]:
    """idem_key -> (state, sent_at) straight from the file (no collector code)."""
    with sqlite3.connect(db) as conn:
        return {
            k: (s, str(t))
            for k, s, t in conn.execute("SELECT idem_key, state, sent_at FROM deliveries")
        }


async def wait(check, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


async def test_kill_9_while_sending_loses_nothing_and_records_once(tmp_path: Path) -> None:
    async with http_receivers() as http:
        cfg = make_config(None, tmp_path)
        db = Path(cfg.db.path)
        repo = await SQLiteRepository.open(db, synchronous="normal")
        await repo.migrate()
        await repo.upsert_inventory(
            [
                InventoryDevice(
                    device_id=d, commune_code="xa-01", commune_name="Sơn Vi", position=i
                )
                for i, d in enumerate(DEVICES)
            ],
            remove_missing=False,
        )
        ingestor = Ingestor(repo, cfg.ingest, IngestStats())
        past = time.time() - 7200
        for d in DEVICES:
            for seq, online in ((1, True), (2, False)):
                msg = presence(d, seq, online, past + seq)
                incoming = ingestor.prepare(
                    topic(d, Kind.PRESENCE), encode(msg), received_at=past + seq
                )
                assert incoming is not None
                await repo.write_batch([incoming], late_after_s=120)
        store = SQLiteAlertStore(repo)
        password_hash = hash_password("x" * 10)  # argon2 is slow on purpose: once
        for i in range(USERS):
            name = f"u{i:02d}"
            await repo.add_user(
                name,
                role=Role.COMMUNE_OFFICER,
                communes=frozenset({"xa-01"}),
                password_hash=password_hash,
            )
            http.secrets[name] = f"secret-{i}"
            await store.put_contact(
                ContactRow(
                    key=f"user:{name}",
                    name=name,
                    webhook_url=f"{http.base_url}/hook/{name}",
                    webhook_secret=f"secret-{i}",
                ),
                actor="test",
            )
        await store.put_rule(
            {
                "name": "offline",
                "kind": "cluster_offline",
                "after_s": 60,
                "group_wait_s": 0,
                "recipients": {"roles": ["commune_officer"]},
            },
            actor="test",
        )
        await repo.close()
        conf = tmp_path / "collector.toml"
        conf.write_text(
            "ingest_enabled = false\n"
            f'[db]\npath = "{db}"\nsynchronous = "normal"\n'
            '[http]\nhost = "127.0.0.1"\nport = 0\n'
            "[alerts]\nenabled = true\nevaluate_interval_s = 0.5\ndeliver_interval_s = 0.1\n"
            "batch_size = 4\nlease_s = 3.0\nbackoff_base_s = 0.5\n"
            "[alerts.email]\ntimeout_s = 1.0\n[alerts.webhook]\ntimeout_s = 1.0\n",
            encoding="utf-8",
        )
        http.delay_s = 0.15

        async def start() -> asyncio.subprocess.Process:
            return await asyncio.create_subprocess_exec(
                sys.executable, "-m", "collector.cli", "serve", "--config", str(conf),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip

        proc = await start()
        try:
            await wait(lambda: len(http.received) >= 12, 60, "a dozen deliveries")
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        at_kill = len(http.received)
        before = rows(db)
        assert len(before) == USERS  # all queued in the one transaction that evaluated them
        sent_before = {k for k, (s, _) in before.items() if s == "sent"}
        assert 0 < len(sent_before) < USERS, "the kill must land mid-way"
        http.delay_s = 0.0
        proc = await start()
        try:
            await wait(
                lambda: all(s == "sent" for s, _ in rows(db).values()), 60, "all deliveries sent"
            )
            await asyncio.sleep(1.5)  # three more evaluations: the outage is not notified again
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        after = rows(db)
        keys = [r.headers[DELIVERY_HEADER] for r in http.received]
        # Each delivery arrived at least once, correctly signed, and is recorded sent once.
        assert set(keys) == set(after) and len(after) == USERS
        assert all(r.signature_ok for r in http.received)
        # Rows recorded sent before the kill were never sent again.
        assert not sent_before & set(keys[at_kill:])
        for k in sent_before:
            assert after[k] == before[k]  # same sent_at: recorded once
        # Only deliveries in flight at the kill (at most one claimed batch) repeat.
        repeats = len(keys) - len(set(keys))
        assert repeats <= 4
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT count(*) FROM notifications").fetchone()[0] == 1
