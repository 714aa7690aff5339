"""Throwaway RabbitMQ nodes (1 or 3, clustered) for tests, from deploy/rabbitmq/'s config.

Everything lives in one temporary directory and on loopback: per node its
own node name (``loa<random>n1@localhost``), AMQP, distribution and MQTT ports,
Mnesia and log folders; the nodes share an Erlang cookie (``$HOME/.erlang.cookie``
with ``HOME`` the cluster's folder) and an epmd on a port of their own
(``ERL_EPMD_PORT``), so nothing touches a system rabbitmq-server, its node
``rabbit@<host>``, its ports or the epmd on 4369.

The scripts in /usr/lib/rabbitmq/bin are run directly: Debian's /usr/sbin
wrappers switch to the rabbitmq user, which cannot read the test's files.
Nodes are started detached (``setsid -f``), so they are not children of the
test process (the per-test leak check would count a module-scoped node);
every process they start carries ``LOA_TEST_RABBITMQ=<folder>`` in its
environment, which is how ``stop()`` finds (and the tests check) whatever is
left, epmd included.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from collector.broker_rabbitmq import (
    COLLECTOR_PERMISSIONS,
    COLLECTOR_USER,
    PRODUCTION_DEFINITIONS,
    PRODUCTION_PLUGINS,
    Permissions,
    provision_rabbitmq_device,
    provision_rabbitmq_user,
    render_advanced_config,
    render_conf,
)
from tests.support.mosquitto import wait_port

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
SERVER = RABBITMQ_BIN / "rabbitmq-server"
CTL = RABBITMQ_BIN / "rabbitmqctl"
MARKER = "LOA_TEST_RABBITMQ"


#: Listening ports come from below Linux's ephemeral range (32768-60999 by
#: default): a port free_port() saw free can meanwhile be taken as the local
#: port of any outgoing connection (rabbitmqctl, epmd, the MQTT clients), and
#: a node that cannot bind one of its listeners does not start.
_PORTS = range(20000, 32000)
_taken: set[int] = set()


def free_port() -> int:
    """A loopback port below the ephemeral range, not handed out before in this process."""
    for _ in range(1000):
        port = secrets.choice(_PORTS)
        if port in _taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _taken.add(port)
        return port
    raise RuntimeError("no free port in 20000-32000")


def available() -> bool:
    return SERVER.exists() and CTL.exists()


@dataclass
class Node:
    name: str
    dir: Path
    amqp_port: int
    dist_port: int
    mqtt_port: int
    tls_port: int | None = None
    pid: int | None = None
    #: Seconds from launch until the MQTT listener answered and await_startup returned.
    started_in: float | None = field(default=None)

    @property
    def pid_file(self) -> Path:
        return self.dir / "pid"

    def log_tail(self, n: int = 30) -> str:
        log = self.dir / "log" / f"{self.name}.log"
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        out = (self.dir / "stdout.log").read_text(errors="replace").splitlines()[-5:]
        return "\n".join([*lines[-n:], *out])


class RabbitCluster:
    """``n`` RabbitMQ nodes on loopback; nodes 2.. joined to node 1 once started.

    Users are added with ``add_device``/``add_user``; every user's password is
    ``pw-<user>`` (``password(user)``), as in tests.support.mosquitto.
    ``tls_dir`` (ca.crt, server.crt, server.key) adds the TLS MQTT listener,
    password mode only (``verify_none``). ``client_certs=True`` keeps
    rabbitmq.conf's TLS settings instead: client certificates verified against
    ca.crt, certificate login, and ``tls_dir/crl.pem`` checked at every
    handshake (through ``crls/<hash>.r0`` and the generated advanced.config).
    """

    def __init__(
        self, root: Path, n: int = 1, *, tls_dir: Path | None = None, client_certs: bool = False
    ) -> None:
        if client_certs and tls_dir is None:
            raise ValueError("client_certs needs tls_dir")
        self.client_certs = client_certs
        self.root = root
        self.host = "127.0.0.1"
        root.mkdir(parents=True, exist_ok=True)
        self.epmd_port = free_port()
        self.tls_dir = tls_dir
        self.started_in: float | None = None
        prefix = f"loa{secrets.token_hex(3)}"
        self.nodes = [
            Node(
                name=f"{prefix}n{i}@localhost",
                dir=root / f"n{i}",
                amqp_port=free_port(),
                dist_port=free_port(),
                mqtt_port=free_port(),
                tls_port=free_port() if tls_dir else None,
            )
            for i in range(1, n + 1)
        ]
        cookie = root / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16))
        cookie.chmod(0o400)
        for node in self.nodes:
            self._write_config(node)

    # --- files and environment --------------------------------------------------------

    def _write_config(self, node: Node) -> None:
        node.dir.mkdir(parents=True, exist_ok=True)
        overrides = {
            "listeners.tcp.default": f"127.0.0.1:{node.amqp_port}",
            "mqtt.listeners.tcp.default": f"127.0.0.1:{node.mqtt_port}",
            "disk_free_limit.absolute": "50MB",
            "definitions.local.path": str(PRODUCTION_DEFINITIONS),
        }
        drop = ["cluster_formation."]  # the tests join nodes with rabbitmqctl join_cluster
        if self.tls_dir is not None and node.tls_port is not None:
            overrides |= {
                "mqtt.listeners.ssl.default": f"127.0.0.1:{node.tls_port}",
                "ssl_options.cacertfile": str(self.tls_dir / "ca.crt"),
                "ssl_options.certfile": str(self.tls_dir / "server.crt"),
                "ssl_options.keyfile": str(self.tls_dir / "server.key"),
            }
            if not self.client_certs:  # password mode only, as before certificate mode
                overrides |= {"ssl_options.verify": "verify_none", "mqtt.ssl_cert_login": "false"}
                drop += ["ssl_options.crl_check"]
        else:
            drop += ["mqtt.listeners.ssl", "ssl_options."]
        conf = render_conf(overrides, drop=drop)
        (node.dir / "rabbitmq.conf").write_text(conf)
        if self.client_certs and self.tls_dir is not None:
            crls = node.dir / "crls"
            crls.mkdir(exist_ok=True)
            crl = self.tls_dir / "crl.pem"
            issuer_hash = subprocess.run(
                ["openssl", "crl", "-hash", "-noout", "-in", str(crl)],
                capture_output=True,
                text=True,
                check=True,
                timeout=10,
            ).stdout.strip()
            # A link, so a CRL rewritten in tls_dir is the one the next handshake reads.
            (crls / f"{issuer_hash}.r0").symlink_to(crl)
            (node.dir / "advanced.config").write_text(
                render_advanced_config(conf, crl_dir=str(crls))
            )
        (node.dir / "enabled_plugins").write_text(PRODUCTION_PLUGINS.read_text())
        (node.dir / "rabbitmq-env.conf").touch()

    def env(self, node: Node) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env = keep | {
            MARKER: str(self.root),
            "HOME": str(self.root),  # the shared .erlang.cookie, for nodes and CLI alike
            "RABBITMQ_CONF_ENV_FILE": str(node.dir / "rabbitmq-env.conf"),
            "RABBITMQ_NODENAME": node.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(node.amqp_port),
            "RABBITMQ_DIST_PORT": str(node.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_MNESIA_BASE": str(node.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(node.dir / "log"),
            "RABBITMQ_CONFIG_FILE": str(node.dir / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(node.dir / "enabled_plugins"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(node.dir / "plugins-expand"),
            "RABBITMQ_PID_FILE": str(node.pid_file),
        }
        if self.client_certs:
            env["RABBITMQ_ADVANCED_CONFIG_FILE"] = str(node.dir / "advanced.config")
        return env

    # --- rabbitmqctl ----------------------------------------------------------------

    def ctl_argv(self, node: Node | None = None) -> list[str]:
        """rabbitmqctl for ``node`` (default node 1); run it with ``env(node)``."""
        return [str(CTL), "--node", (node or self.nodes[0]).name]

    def ctl(self, *args: str, node: Node | None = None, timeout: float = 60.0) -> str:
        node = node or self.nodes[0]
        done = subprocess.run(
            [*self.ctl_argv(node), *args],
            env=self.env(node),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"rabbitmqctl {' '.join(args)} on {node.name}: exit {done.returncode}: "
                f"{(done.stderr or done.stdout).strip()[-800:]}"
            )
        return done.stdout

    # --- lifecycle -----------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> None:
        """Start every node, wait until each serves MQTT, then cluster nodes 2.. with node 1.

        ``started_in`` is then the seconds all of it took.
        """
        t0 = time.monotonic()
        for node in self.nodes:
            self.launch(node)
        try:
            for node in self.nodes:
                self.await_ready(node, timeout)
            for node in self.nodes[1:]:
                self.join(node)
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - t0

    def launch(self, node: Node) -> None:
        with contextlib.suppress(FileNotFoundError):
            node.pid_file.unlink()
        node.pid = None
        node.started_in = None
        node._launched = time.monotonic()  # type: ignore[attr-defined]
        with open(node.dir / "stdout.log", "ab") as out:
            subprocess.run(
                ["setsid", "-f", str(SERVER)],
                env=self.env(node),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                check=True,
                timeout=10,
            )

    def await_ready(self, node: Node, timeout: float = 90.0) -> None:
        """Wait for the node's pid file and MQTT listener, then ``rabbitmqctl await_startup``."""
        deadline = time.monotonic() + timeout
        while node.pid is None:
            with contextlib.suppress(FileNotFoundError, ValueError):
                node.pid = int(node.pid_file.read_text().strip())
            if node.pid is None:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{node.name}: no pid file after {timeout} s\n{node.log_tail()}"
                    )
                time.sleep(0.05)
        try:
            # The MQTT listener opens last in the boot; polling it costs nothing,
            # while every rabbitmqctl call starts an Erlang VM (~0.8 s).
            wait_port(self.host, node.mqtt_port, timeout=max(1.0, deadline - time.monotonic()))
        except TimeoutError:
            raise RuntimeError(f"{node.name}: MQTT never listened\n{node.log_tail()}") from None
        self.ctl(
            "await_startup", "--timeout", str(max(1, int(deadline - time.monotonic()))), node=node
        )
        node.started_in = time.monotonic() - node._launched  # type: ignore[attr-defined]

    def join(self, node: Node) -> None:
        self.ctl("stop_app", node=node)
        self.ctl("join_cluster", self.nodes[0].name, node=node)
        self.ctl("start_app", node=node)
        wait_port(self.host, node.mqtt_port, timeout=60)

    def kill9(self, node: Node) -> None:
        """SIGKILL the node's Erlang VM: a power cut at that server."""
        assert node.pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(node.pid, signal.SIGKILL)
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(node.pid).wait(10)
        node.pid = None

    def restart(self, node: Node, timeout: float = 90.0) -> None:
        """Start a stopped or killed node again (same name, data and ports): it rejoins."""
        self.launch(node)
        self.await_ready(node, timeout)

    def leftovers(self) -> list[psutil.Process]:
        """Live processes started for this cluster (nodes, their helpers, epmd)."""
        found = []
        for proc in psutil.process_iter(["pid"]):
            try:
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
                if proc.environ().get(MARKER) == str(self.root):
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return found

    def stop(self) -> None:
        """SIGTERM every node (RabbitMQ shuts down cleanly on it), then SIGKILL what is left."""
        for node in self.nodes:
            if node.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(node.pid, signal.SIGTERM)
        procs = [psutil.Process(n.pid) for n in self.nodes if n.pid and psutil.pid_exists(n.pid)]
        _gone, alive = psutil.wait_procs(procs, timeout=15)
        for proc in alive + self.leftovers():  # epmd, a node whose pid file never came
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(self.leftovers(), timeout=5)
        for node in self.nodes:
            node.pid = None

    # --- users ---------------------------------------------------------------------

    @staticmethod
    def password(user: str) -> str:
        return f"pw-{user}"

    def add_device(self, *devices: str) -> None:
        for device in devices:
            provision_rabbitmq_device(
                device, self.password(device), ctl=self.ctl_argv(), env=self.env(self.nodes[0])
            )

    def add_cert_device(self, *devices: str) -> None:
        """Certificate-mode devices: users without a password (log in by certificate CN)."""
        for device in devices:
            provision_rabbitmq_device(
                device, None, ctl=self.ctl_argv(), env=self.env(self.nodes[0])
            )

    def add_user(self, user: str, perms: Permissions) -> None:
        provision_rabbitmq_user(
            user, self.password(user), perms, ctl=self.ctl_argv(), env=self.env(self.nodes[0])
        )

    def add_collector(self) -> None:
        self.add_user(COLLECTOR_USER, COLLECTOR_PERMISSIONS)


__all__ = ["Node", "RabbitCluster", "available", "running_cluster"]


@contextlib.contextmanager
def running_cluster(
    root: Path, n: int = 1, *, tls_dir: Path | None = None, client_certs: bool = False
) -> Iterator[RabbitCluster]:
    cluster = RabbitCluster(root, n, tls_dir=tls_dir, client_certs=client_certs)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
