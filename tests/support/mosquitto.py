"""A real Mosquitto for tests, started from deploy/'s production config."""

from __future__ import annotations

import contextlib
import getpass
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from collector.broker_config import PRODUCTION_ACL, BrokerLayout, render

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
COLLECTOR_USER = "loa_collector"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"nothing listening on {host}:{port} after {timeout} s"
                ) from None
            time.sleep(0.02)


def _mqtt_str(value: str) -> bytes:
    data = value.encode()
    return len(data).to_bytes(2, "big") + data


def connack_code(host: str, port: int, user: str, password: str) -> int | None:
    """Send one MQTT 3.1.1 CONNECT as ``user`` and return the CONNACK return code
    (0 accepted, 5 not authorised), or None when the broker does not answer."""
    body = (
        _mqtt_str("MQTT")
        + bytes([4, 0xC2])  # protocol level 4; username, password, clean session
        + (10).to_bytes(2, "big")
        + _mqtt_str(f"probe-{user}"[:23])
        + _mqtt_str(user)
        + _mqtt_str(password)
    )
    assert len(body) < 128  # one-byte remaining length
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=2) as s:
        s.sendall(bytes([0x10, len(body)]) + body)
        ack = s.recv(4)
        if len(ack) == 4 and ack[0] == 0x20:
            if ack[3] == 0:
                s.sendall(b"\xe0\x00")  # DISCONNECT
            return ack[3]
    return None


class Broker:
    """One Mosquitto process with password auth and the production ACL.

    ``password(user)`` is the password of a user added with ``add_user``; every
    user is added with the password ``pw-<user>``. ``stop()``/``start()`` keep
    the port and persistence, for outage tests.
    """

    def __init__(
        self, root: Path, *, tls_port: int | None = None, cert_port: int | None = None
    ) -> None:
        self.root = root
        self.host = "127.0.0.1"
        self.port = free_port()
        self.tls_port = tls_port
        self.cert_port = cert_port
        cfg = root / "etc"
        cfg.mkdir(parents=True, exist_ok=True)
        (root / "data").mkdir(exist_ok=True)
        self.layout = BrokerLayout(
            config_dir=cfg,
            data_dir=root / "data",
            plain_port=self.port,
            tls_port=tls_port,
            tls_host="127.0.0.1",
            cert_port=cert_port,
            cert_host="127.0.0.1",
            log_file=root / "mosquitto.log",
            run_as=getpass.getuser(),
        )
        shutil.copy(PRODUCTION_ACL, cfg / "acl")
        (cfg / "passwd").touch()
        self.conf = root / "mosquitto.conf"
        self.conf.write_text(render(self.layout))
        self.proc: subprocess.Popen[bytes] | None = None
        self.users: dict[str, str] = {}
        self.add_user(COLLECTOR_USER)

    @staticmethod
    def password(user: str) -> str:
        return f"pw-{user}"

    def add_user(self, *users: str) -> None:
        for user in users:
            if user in self.users:
                continue
            subprocess.run(
                [
                    MOSQUITTO_PASSWD,
                    "-b",
                    str(self.layout.config_dir / "passwd"),
                    user,
                    self.password(user),
                ],
                check=True,
                capture_output=True,
            )
            self.users[user] = self.password(user)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGHUP)  # reload passwd
            # The reload is asynchronous: wait until the newest user is accepted, so
            # a client connecting right after this call is not refused.
            newest: str | None = users[-1] if users else None
            deadline = time.monotonic() + 10.0
            while newest is not None and connack_code(
                self.host, self.port, newest, self.password(newest)
            ) not in (0, None):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"mosquitto did not reload its password file for {newest}")
                time.sleep(0.02)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            wait_port(self.host, self.port)
            for port in (self.tls_port, self.cert_port):
                if port:
                    wait_port(self.host, port)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"mosquitto did not start: {self.log_tail()}") from None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def kill9(self) -> None:
        """SIGKILL: a power cut at the server. Whatever Mosquitto had not saved
        (it persists every ``autosave_interval``) is gone."""
        if self.proc is None:
            return
        self.proc.kill()
        self.proc.wait(10)
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def log_tail(self, n: int = 20) -> str:
        log = self.root / "mosquitto.log"
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        return "\n".join(lines[-n:])

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


@contextlib.contextmanager
def running_broker(root: Path, **kw: int | None) -> Iterator[Broker]:
    broker = Broker(root, **kw)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
