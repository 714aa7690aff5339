"""Debian's OpenSSH server for tests: a non-daemon ``sshd -D -e`` on a free loopback
port, with its own config, host key and authorized_keys in a temp dir.

It stands in for the district's jump host (and for a controller's own sshd).
Started by the test, stopped by the test: nothing is left running.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil

from tests.support.mosquitto import free_port, wait_port

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
#: sshd refuses to start as root without its privilege-separation directory
#: (the Debian package creates it at boot through tmpfiles).
PRIVSEP_DIR = Path("/run/sshd")


def keygen(path: Path, comment: str = "") -> str:
    """A new ed25519 key pair at ``path`` (+ ``.pub``); returns the public key line."""
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path.with_suffix(path.suffix + ".pub").read_text().strip()


class Sshd:
    """One sshd. ``authorize(line)`` before ``start()``; ``known_hosts_line`` pins it."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = root / name
        self.root.mkdir(parents=True)
        self.host = "127.0.0.1"
        self.port = free_port()
        self.user = getpass.getuser()
        self.host_key = self.root / "host_ed25519"
        self.host_pub = keygen(self.host_key, f"{name}-host")
        self.authorized = self.root / "authorized_keys"
        self.authorized.write_text("")
        self.log = self.root / "sshd.log"
        self.conf = self.root / "sshd_config"
        self.conf.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    f"ListenAddress {self.host}",
                    f"HostKey {self.host_key}",
                    f"AuthorizedKeysFile {self.authorized}",
                    "PidFile none",
                    "StrictModes no",
                    "UsePAM no",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication yes",
                    "PermitRootLogin prohibit-password",
                    "AllowTcpForwarding yes",
                    "GatewayPorts no",
                    "LogLevel VERBOSE",
                    "",
                ]
            )
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def authorize(self, line: str) -> None:
        with self.authorized.open("a") as f:
            f.write(line + "\n")

    def known_hosts_line(self, port: int | None = None) -> str:
        """The known_hosts entry pinning this server's host key (at ``port``)."""
        key_type, key, *_ = self.host_pub.split()
        return f"[{self.host}]:{port or self.port} {key_type} {key}"

    def start(self) -> None:
        if os.geteuid() == 0:
            PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.conf)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        try:
            wait_port(self.host, self.port)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"sshd did not start: {self.log.read_text()[-2000:]}") from None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            # Sessions are forked children that outlive the listener: end them first.
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(self.proc.pid).children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        child.terminate()
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@contextlib.contextmanager
def running_sshd(sshd: Sshd) -> Iterator[Sshd]:
    sshd.start()
    try:
        yield sshd
    finally:
        sshd.stop()
