"""A throwaway PostgreSQL server for tests, from Debian's ``postgresql`` package.

``initdb`` and ``pg_ctl`` in a temporary folder, listening on a Unix socket in
that folder only (no TCP), trust authentication for the local socket. The
server is started detached by ``pg_ctl`` (the postmaster is not a child of the
test process); ``stop()`` stops it with ``pg_ctl stop -m immediate`` and
removes the folder.

PostgreSQL refuses to run as root: when the tests run as root the folder is
given to the ``postgres`` user (the Debian package creates it) and the server
programs run through ``runuser``.

Per test, ``fresh_database()`` clones a migrated template database
(``CREATE DATABASE ... TEMPLATE``), which takes milliseconds instead of the
migration's second.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

PG_ROOT = Path("/usr/lib/postgresql")


def pg_bin() -> Path | None:
    """The newest installed server's bin folder, or None when none is installed."""
    versions = sorted(
        (p for p in PG_ROOT.glob("*/bin") if (p / "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    return versions[-1] if versions else None


def available() -> bool:
    return pg_bin() is not None


@dataclass
class PgServer:
    folder: Path
    bin: Path
    run_as: str | None
    pid: int = 0

    @property
    def socket_dir(self) -> Path:
        return self.folder / "sock"

    def url(self, dbname: str = "postgres") -> str:
        """A libpq URL to ``dbname`` over the Unix socket (the server's superuser)."""
        return f"postgresql:///{dbname}?host={self.socket_dir}&user=postgres"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self.run_as:
            cmd = ["runuser", "-u", self.run_as, "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        data = self.folder / "data"
        self._run(
            "initdb",
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        opts = (
            f"-k {self.socket_dir} -c listen_addresses='' -c fsync=off"
            " -c full_page_writes=off -c max_connections=200 -c shared_buffers=64MB"
        )
        self._run(
            "pg_ctl", "-D", str(data), "-l", str(self.folder / "log"), "-w", "-o", opts, "start"
        )
        self.pid = int((data / "postmaster.pid").read_text().split()[0])

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        out = self._run(
            "psql",
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(self.socket_dir),
            "-U",
            "postgres",
            "-d",
            dbname,
            "-c",
            sql,
        )
        return out.stdout.strip()

    def fresh_database(self, template: str | None = None) -> str:
        """A new empty database (a copy of ``template`` if given); returns its URL."""
        name = "t_" + secrets.token_hex(6)
        tpl = f' TEMPLATE "{template}"' if template else " TEMPLATE template0"
        self.psql(f'CREATE DATABASE "{name}"{tpl}')
        return self.url(name)

    def kill(self) -> None:
        """kill -9 the postmaster (its backends exit when they notice)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    def restart(self) -> None:
        """Start again after ``kill`` (crash recovery replays the WAL)."""
        data = self.folder / "data"
        _wait_gone(self.folder)
        with contextlib.suppress(FileNotFoundError):
            (data / "postmaster.pid").unlink()
        opts = f"-k {self.socket_dir} -c listen_addresses='' -c fsync=off -c max_connections=200"
        self._run(
            "pg_ctl", "-D", str(data), "-l", str(self.folder / "log"), "-w", "-o", opts, "start"
        )
        self.pid = int((data / "postmaster.pid").read_text().split()[0])

    def stop(self) -> None:
        data = self.folder / "data"
        if (data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop", check=False)
        _wait_gone(self.folder)
        shutil.rmtree(self.folder, ignore_errors=True)


def _left(folder: Path) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(str(folder) in a for a in p.info["cmdline"] or ()):
                out.append(p)
    return out


def _wait_gone(folder: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs = _left(folder)
        if not procs:
            return
        if time.monotonic() > deadline - timeout / 2:
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    p.kill()
        time.sleep(0.05)


@contextlib.contextmanager
def running_postgres() -> Iterator[PgServer]:
    """A started throwaway server; stopped and removed on exit."""
    b = pg_bin()
    if b is None:
        raise RuntimeError("PostgreSQL is not installed (apt install postgresql)")
    run_as = None
    if os.geteuid() == 0:
        run_as = "postgres"
        pwd.getpwnam(run_as)  # KeyError: the package's user is missing
    folder = Path(tempfile.mkdtemp(prefix="loa-pg-"))
    folder.chmod(0o755)
    (folder / "sock").mkdir()
    if run_as:
        uid = pwd.getpwnam(run_as).pw_uid
        gid = pwd.getpwnam(run_as).pw_gid
        for p in (folder, folder / "sock"):
            os.chown(p, uid, gid)
    server = PgServer(folder, b, run_as)
    try:
        server.start()
        yield server
    finally:
        server.stop()
