"""deploy/backup.sh and restore.sh on a real SQLite database in WAL mode being written."""

from __future__ import annotations

import gzip
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.broker_config import DEPLOY_DIR

BACKUP = DEPLOY_DIR / "backup.sh"
RESTORE = DEPLOY_DIR / "restore.sh"


class Writer:
    """Inserts numbered rows, one transaction each, until stopped (like the ingest does)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        db = sqlite3.connect(path)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE msg (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
        # A database of a few MB, so that the backup takes more than an instant.
        db.executemany("INSERT INTO msg (payload) VALUES (?)", [(b"x" * 1024,)] * 4000)
        db.commit()
        db.close()
        self.count = 4000
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="sqlite-writer")

    def _run(self) -> None:
        db = sqlite3.connect(self.path, timeout=30)
        try:
            while not self.stop.is_set():
                with db:
                    db.execute("INSERT INTO msg (payload) VALUES (?)", (b"y" * 512,))
                self.count += 1
        finally:
            db.close()

    def wait_for(self, n: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.count < n:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise TimeoutError(f"writer reached {self.count} rows, not {n}")
            time.sleep(0.01)


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[Writer]:
    w = Writer(tmp_path / "collector.db")
    w.thread.start()
    try:
        yield w
    finally:
        w.stop.set()
        w.thread.join(30)


def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=120, check=False
    )


def rows(path: Path) -> list[int]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return [r[0] for r in db.execute("SELECT id FROM msg ORDER BY id")]
    finally:
        db.close()


def test_backup_while_written_then_restore_round_trip(writer: Writer, tmp_path: Path) -> None:
    dest = tmp_path / "backups"
    writer.wait_for(4100)
    before = writer.count
    result = run(BACKUP, "--db", writer.path, "--dest", dest, "--keep", "5")
    after_backup = writer.count
    assert result.returncode == 0, result.stderr
    backup = Path(result.stdout.strip())
    assert backup.parent == dest and backup.name.endswith(".db.gz")
    assert backup.stat().st_mode & 0o077 == 0
    # The writer kept committing while the backup ran.
    writer.wait_for(after_backup + 50)
    writer.stop.set()
    writer.thread.join(30)

    plain = tmp_path / "copy.db"
    plain.write_bytes(gzip.decompress(backup.read_bytes()))
    ids = rows(plain)
    # One consistent snapshot: every row up to some point, none missing, nothing torn.
    assert ids == list(range(1, len(ids) + 1))
    assert before <= len(ids) <= after_backup < writer.count
    assert after_backup > before, "the writer did not commit while the backup ran"

    # Restore into a fresh path, then over the live database.
    fresh = tmp_path / "restored" / "collector.db"
    fresh.parent.mkdir()
    result = run(RESTORE, backup, "--db", fresh, "--service", "none", "--yes")
    assert result.returncode == 0, result.stderr
    assert rows(fresh) == ids
    result = run(RESTORE, backup, "--db", writer.path, "--service", "none", "--yes")
    assert result.returncode == 0, result.stderr
    assert rows(writer.path) == ids
    [saved] = tmp_path.glob("collector.db.before-restore-*")
    assert len(rows(saved)) == writer.count
    db = sqlite3.connect(writer.path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()


def test_backups_are_pruned_to_keep(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    sqlite3.connect(db).close()
    made = [run(BACKUP, "--db", db, "--dest", tmp_path / "b", "--keep", "2") for _ in range(3)]
    assert all(r.returncode == 0 for r in made), [r.stderr for r in made]
    kept = sorted(p.name for p in (tmp_path / "b").glob("collector-*.db.gz"))
    assert kept == sorted(Path(r.stdout.strip()).name for r in made[1:])


def test_restore_refuses_a_damaged_backup_and_leaves_the_database(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    live = sqlite3.connect(db)
    live.execute("CREATE TABLE msg (id INTEGER PRIMARY KEY, payload BLOB)")
    live.execute("INSERT INTO msg (payload) VALUES (x'00')")
    live.commit()
    live.close()
    bad = tmp_path / "collector-bad.db.gz"
    bad.write_bytes(gzip.compress(b"SQLite format 3\x00" + b"\xff" * 4000))
    result = run(RESTORE, bad, "--db", db, "--service", "none", "--yes")
    assert result.returncode != 0
    assert "restore.sh: the backup" in result.stderr
    assert rows(db) == [1]
    assert not list(tmp_path.glob("*.before-restore-*"))


def test_bad_arguments_are_named(tmp_path: Path) -> None:
    result = run(BACKUP, "--db", tmp_path / "missing.db", "--dest", tmp_path)
    assert result.returncode == 1 and "no database at" in result.stderr
    result = run(BACKUP, "--keep", "many")
    assert result.returncode == 2 and "--keep" in result.stderr
    result = run(RESTORE, tmp_path / "nope.db.gz", "--yes")
    assert result.returncode == 1 and "no backup file" in result.stderr
