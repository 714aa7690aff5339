"""Certificate mode on RabbitMQ: devices log in with a fleet-CA client certificate, no password.

A real rabbitmq-server node (tests.support.rabbitmq, ``client_certs=True``)
from deploy/rabbitmq/'s config: one TLS listener with ``verify_peer`` and
``fail_if_no_peer_cert = false``, ``mqtt.ssl_cert_login`` with the CN as the
username, and the CRL checked at every handshake through the generated
advanced.config. Real MQTT 3.1.1 clients over real TLS (aiomqtt), certificates
from collector.tls's CertificateAuthority, users from collector.broker_rabbitmq.

What RabbitMQ 3.10.8 does, as pinned here:
- certificate + no username + no password: logged in as the certificate's CN
  (the user must exist; it has no password);
- a certificate from another CA: the handshake fails ("unknown ca");
- a revoked certificate: the handshake fails ("certificate revoked");
- no certificate and no credentials, or a username without a password (even
  with a certificate): CONNACK "bad user name or password";
- username + password win over a certificate: the certificate's CN is ignored;
- a deleted user: its live connection is closed and its certificate no longer
  logs in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shlex
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiomqtt
import pytest
from cryptography import x509

from collector import cli
from collector.broker_rabbitmq import (
    COLLECTOR_USER,
    deprovision_rabbitmq_device,
    render_advanced_config,
)
from collector.tls import CRL, CertificateAuthority, install_broker_files, write_file
from tests.support.rabbitmq import RabbitCluster, available

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not available(), reason="rabbitmq-server is not installed"),
]

V311 = aiomqtt.ProtocolVersion.V311
README = Path(__file__).parents[2] / "deploy" / "rabbitmq" / "README.md"
#: What RabbitMQ's CONNACK 4 (v3.1.1) reads as in aiomqtt.
BAD_LOGIN = "Bad user name or password"


@pytest.fixture(scope="module")
def fleet_ca() -> CertificateAuthority:
    return CertificateAuthority.create("loa-fleet test CA")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory, fleet_ca: CertificateAuthority) -> Path:
    """``<name>.crt``/``<name>.key``: fleet-CA certificates for dev-201..206, and
    ``other-dev-201``, a certificate for dev-201 from a CA the broker does not know."""
    out = tmp_path_factory.mktemp("device-certs")
    for device in ("dev-201", "dev-202", "dev-203", "dev-204", "dev-205", "dev-206"):
        fleet_ca.issue_device(device).write(out / f"{device}.crt", out / f"{device}.key")
    other = CertificateAuthority.create("someone else's CA")
    other.issue_device("dev-201").write(out / "other-dev-201.crt", out / "other-dev-201.key")
    return out


@pytest.fixture(scope="module")
def rabbit(
    tmp_path_factory: pytest.TempPathFactory, fleet_ca: CertificateAuthority
) -> Iterator[RabbitCluster]:
    """One node verifying client certificates; certificate-mode devices dev-201,
    dev-202, dev-204, dev-205, password-mode dev-203, and the collector."""
    tls = tmp_path_factory.mktemp("rabbit-cert-tls")
    install_broker_files(fleet_ca, tls, ["127.0.0.1", "localhost"])  # with an empty CRL
    cluster = RabbitCluster(
        tmp_path_factory.mktemp("rabbit-cert"), 1, tls_dir=tls, client_certs=True
    )
    cluster.start()
    try:
        print(f"\nRabbitMQ 1 node (client certificates): serving {cluster.started_in:.1f} s")
        cluster.add_collector()
        cluster.add_cert_device("dev-201", "dev-202", "dev-204", "dev-205")
        cluster.add_device("dev-203")
        yield cluster
    finally:
        cluster.stop()
    assert cluster.leftovers() == []


def tls_context(cluster: RabbitCluster, certs: Path, cert: str | None) -> ssl.SSLContext:
    assert cluster.tls_dir is not None
    ctx = ssl.create_default_context(cafile=str(cluster.tls_dir / "ca.crt"))
    if cert is not None:
        ctx.load_cert_chain(str(certs / f"{cert}.crt"), str(certs / f"{cert}.key"))
    return ctx


def tls_client(
    cluster: RabbitCluster,
    certs: Path,
    cert: str | None,
    *,
    identifier: str,
    username: str | None = None,
    password: str | None = None,
    **kw: object,
) -> aiomqtt.Client:
    """An MQTT client on the TLS listener: a client certificate (``cert``), credentials, or both."""
    port = cluster.nodes[0].tls_port
    assert port is not None
    return aiomqtt.Client(
        cluster.host,
        port,
        username=username,
        password=password,
        identifier=identifier,
        protocol=V311,
        tls_context=tls_context(cluster, certs, cert),
        timeout=5,
        clean_session=True,
        **kw,  # type: ignore[arg-type]
    )


def handshake_refusal(cluster: RabbitCluster, ctx: ssl.SSLContext) -> str:
    """The TLS alert with which the broker ends the handshake.

    In TLS 1.3 the client's side of the handshake completes before the server
    has checked the client's certificate; the server's alert then arrives on
    the first read. A broker accepting the certificate would instead wait for
    an MQTT CONNECT: the read times out and the test fails.
    """
    port = cluster.nodes[0].tls_port
    assert port is not None
    with socket.create_connection((cluster.host, port), timeout=10) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname=cluster.host) as tls:
                data = tls.recv(1)
        except ssl.SSLError as exc:
            return str(exc.reason)
    raise AssertionError(f"the broker took the handshake (then read {data!r})")


class Watch:
    """What the collector received, in order; ``wait`` blocks until enough has come."""

    def __init__(self) -> None:
        self.got: list[tuple[str, bytes]] = []
        self._changed = asyncio.Condition()

    async def add(self, topic: str, payload: bytes) -> None:
        async with self._changed:
            self.got.append((topic, payload))
            self._changed.notify_all()

    async def wait(self, n: int, what: str, timeout: float = 10.0) -> None:
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: len(self.got) >= n)
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}") from None


@contextlib.asynccontextmanager
async def watching(cluster: RabbitCluster, topic_filter: str) -> AsyncIterator[Watch]:
    """The collector (password, loopback MQTT listener) subscribed to ``topic_filter``."""
    watch = Watch()
    async with aiomqtt.Client(
        cluster.host,
        cluster.nodes[0].mqtt_port,
        username=COLLECTOR_USER,
        password=cluster.password(COLLECTOR_USER),
        identifier="loa-collector-1",
        protocol=V311,
        clean_session=True,
        timeout=5,
    ) as c:
        await c.subscribe(topic_filter, qos=1)

        async def pump() -> None:
            async for m in c.messages:
                await watch.add(str(m.topic), bytes(m.payload))

        task = asyncio.create_task(pump(), name="watch")
        try:
            yield watch
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def publish_is_refused(client: aiomqtt.Client, topic: str) -> None:
    """RabbitMQ closes the connection on a forbidden publish (test_rabbitmq_acl.py):
    the message stream ends with MqttError. Were it allowed, the link would stay
    up and this would end in TimeoutError instead (failing the test)."""
    with pytest.raises(aiomqtt.MqttError):
        async with client as c:
            task = asyncio.create_task(c.publish(topic, b'{"forged":true}', qos=1, timeout=10))
            try:
                async with asyncio.timeout(10):
                    async for _m in c.messages:
                        break
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await task


async def test_certificate_device_publishes_its_state_without_a_password(
    rabbit: RabbitCluster, certs: Path
) -> None:
    async with watching(rabbit, "loa/v1/+/state") as watch:
        async with tls_client(rabbit, certs, "dev-201", identifier="dev-201") as dev:
            await dev.publish("loa/v1/dev-201/state", b'{"seq":1}', qos=1)
            # The broker took the certificate's CN as the username.
            out = await asyncio.to_thread(
                rabbit.ctl, "list_mqtt_connections", "user", "client_id", "--formatter", "json"
            )
            assert {"user": "dev-201", "client_id": "dev-201"} in json.loads(out)
        await watch.wait(1, what="state of the certificate-mode device")
    assert watch.got == [("loa/v1/dev-201/state", b'{"seq":1}')]


async def test_certificate_device_cannot_publish_under_another_id(
    rabbit: RabbitCluster, certs: Path
) -> None:
    async with watching(rabbit, "loa/v1/#") as watch:
        for topic in (
            "loa/v1/dev-202/state",  # another device's id
            "loa/v1/dev-202/presence",
            "loa/v1/dev-201/cmd",  # its own commands: only the collector writes them
        ):
            await publish_is_refused(
                tls_client(rabbit, certs, "dev-201", identifier="dev-201"), topic
            )
        # The allowed message goes last: the forged ones would have arrived before it.
        async with tls_client(rabbit, certs, "dev-201", identifier="dev-201") as dev:
            await dev.publish("loa/v1/dev-201/event", b"{}", qos=1)
        await watch.wait(1, what="own event at the collector")
    assert [t for t, _ in watch.got] == ["loa/v1/dev-201/event"]


async def test_certificate_device_cannot_use_another_devices_client_id(
    rabbit: RabbitCluster, certs: Path
) -> None:
    """Its queues are named after its client id; dev-202's are not dev-201's to declare."""
    with pytest.raises(aiomqtt.MqttError):
        async with tls_client(rabbit, certs, "dev-201", identifier="dev-202") as c:
            await c.subscribe("loa/v1/dev-201/cmd", qos=1, timeout=10)
            async with asyncio.timeout(10):
                async for _m in c.messages:
                    break


async def test_certificate_from_another_ca_is_refused_at_the_handshake(
    rabbit: RabbitCluster, certs: Path
) -> None:
    ctx = tls_context(rabbit, certs, "other-dev-201")
    assert await asyncio.to_thread(handshake_refusal, rabbit, ctx) == "TLSV1_ALERT_UNKNOWN_CA"


async def test_no_certificate_and_no_password_is_refused(
    rabbit: RabbitCluster, certs: Path
) -> None:
    with pytest.raises(aiomqtt.MqttCodeError, match=BAD_LOGIN):
        async with tls_client(rabbit, certs, None, identifier="dev-201"):
            pass
    # A certificate-mode user has no password: no password logs it in.
    for password in ("", "pw-dev-201"):
        with pytest.raises(aiomqtt.MqttCodeError, match=BAD_LOGIN):
            async with tls_client(
                rabbit, certs, None, identifier="dev-201", username="dev-201", password=password
            ):
                pass


async def test_a_username_without_a_password_is_refused_even_with_a_certificate(
    rabbit: RabbitCluster, certs: Path
) -> None:
    """3.10 uses the certificate only when the client sends *no* username: a
    certificate-mode device must leave the username out (Mosquitto's
    use_identity_as_username ignores it instead)."""
    with pytest.raises(aiomqtt.MqttCodeError, match=BAD_LOGIN):
        async with tls_client(rabbit, certs, "dev-201", identifier="dev-201", username="dev-201"):
            pass


async def test_username_and_password_win_over_the_certificate(
    rabbit: RabbitCluster, certs: Path
) -> None:
    """A client sending a certificate *and* credentials is the credentials' user:
    the certificate's CN does not have to match (it is not looked at)."""
    with pytest.raises(aiomqtt.MqttCodeError, match=BAD_LOGIN):
        async with tls_client(
            rabbit, certs, "dev-201", identifier="dev-201", username="dev-201", password="bogus"
        ):
            pass
    async with watching(rabbit, "loa/v1/#") as watch:
        # dev-201's certificate, dev-203's password: this connection is dev-203 ...
        def as_203() -> aiomqtt.Client:
            return tls_client(
                rabbit,
                certs,
                "dev-201",
                identifier="dev-203",
                username="dev-203",
                password=rabbit.password("dev-203"),
            )

        await publish_is_refused(as_203(), "loa/v1/dev-201/state")  # ... not dev-201
        async with as_203() as dev:
            await dev.publish("loa/v1/dev-203/state", b"{}", qos=1)
        await watch.wait(1, what="dev-203's state")
    assert watch.got == [("loa/v1/dev-203/state", b"{}")]


async def test_password_devices_log_in_on_the_same_listener(
    rabbit: RabbitCluster, certs: Path
) -> None:
    async with watching(rabbit, "loa/v1/+/state") as watch:
        async with tls_client(
            rabbit,
            certs,
            None,
            identifier="dev-203",
            username="dev-203",
            password=rabbit.password("dev-203"),
        ) as dev:
            await dev.publish("loa/v1/dev-203/state", b'{"pw":1}', qos=1)
        await watch.wait(1, what="password-mode state over TLS")
    assert watch.got == [("loa/v1/dev-203/state", b'{"pw":1}')]


async def test_revoked_certificate_is_refused_at_the_handshake(
    rabbit: RabbitCluster, certs: Path, fleet_ca: CertificateAuthority
) -> None:
    assert rabbit.tls_dir is not None
    crl_file = rabbit.tls_dir / CRL
    empty = crl_file.read_bytes()
    serial = x509.load_pem_x509_certificate((certs / "dev-204.crt").read_bytes()).serial_number
    try:
        async with tls_client(rabbit, certs, "dev-204", identifier="dev-204") as live:
            await live.publish("loa/v1/dev-204/state", b"before", qos=1)
            # What `loa-collector deprovision` / `provision --force` do to the CA's CRL.
            write_file(crl_file, fleet_ca.crl([serial]), mode=0o644)
            # The CRL is read at every handshake: no restart, no reload.
            ctx = tls_context(rabbit, certs, "dev-204")
            refusal = await asyncio.to_thread(handshake_refusal, rabbit, ctx)
            assert refusal == "SSLV3_ALERT_CERTIFICATE_REVOKED"
            # Other devices' certificates still log in.
            async with tls_client(rabbit, certs, "dev-202", identifier="dev-202") as other:
                await other.publish("loa/v1/dev-202/state", b"{}", qos=1)
            # A connection made before the revocation is not checked again: it
            # stays up until it reconnects (README: delete the user to cut it off).
            await live.publish("loa/v1/dev-204/state", b"after", qos=1, timeout=5)
    finally:
        write_file(crl_file, empty, mode=0o644)


async def test_deleted_user_is_cut_off_and_its_certificate_refused(
    rabbit: RabbitCluster, certs: Path
) -> None:
    async with tls_client(rabbit, certs, "dev-205", identifier="dev-205") as live:
        await live.subscribe("loa/v1/dev-205/cmd", qos=1)
        await asyncio.to_thread(
            deprovision_rabbitmq_device,
            "dev-205",
            ctl=rabbit.ctl_argv(),
            env=rabbit.env(rabbit.nodes[0]),
        )
        with pytest.raises(aiomqtt.MqttError):
            async with asyncio.timeout(10):
                async for _m in live.messages:
                    pass
    # The certificate is still valid (the handshake passes); the login is refused.
    with pytest.raises(aiomqtt.MqttCodeError, match=BAD_LOGIN):
        async with tls_client(rabbit, certs, "dev-205", identifier="dev-205"):
            pass


def _ctl_option(rabbit: RabbitCluster) -> list[str]:
    """``--node``/``--ctl`` for ``loa-collector rabbitmq-user`` against this test node."""
    node = rabbit.nodes[0]
    env = rabbit.env(node)
    pre = "env " + " ".join(
        shlex.quote(f"{k}={env[k]}") for k in ("HOME", "ERL_EPMD_PORT", "RABBITMQ_CONF_ENV_FILE")
    )
    return ["--node", node.name, "--ctl", f"{pre} {rabbit.ctl_argv(node)[0]}"]


async def test_rabbitmq_user_cert_switches_a_device_to_certificate_login(
    rabbit: RabbitCluster, certs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`rabbitmq-user DEVICE --cert`: a user without a password; an existing
    password-mode device loses its password (as `provision --auth cert` does)."""
    rabbit.add_device("dev-206")
    pw = {"username": "dev-206", "password": rabbit.password("dev-206")}
    async with tls_client(rabbit, certs, None, identifier="dev-206", **pw):
        pass
    argv = ["rabbitmq-user", "dev-206", "--cert", *_ctl_option(rabbit)]
    assert await asyncio.to_thread(cli.main, argv) == 0
    assert "dev-206: RabbitMQ user (certificate login, no password)" in capsys.readouterr().out
    with pytest.raises(aiomqtt.MqttCodeError, match=BAD_LOGIN):
        async with tls_client(rabbit, certs, None, identifier="dev-206", **pw):
            pass
    async with watching(rabbit, "loa/v1/+/state") as watch:
        async with tls_client(rabbit, certs, "dev-206", identifier="dev-206") as dev:
            await dev.publish("loa/v1/dev-206/state", b"{}", qos=1)
        await watch.wait(1, what="dev-206's state by certificate")
    # Idempotent, and the collector keeps its password.
    assert await asyncio.to_thread(cli.main, argv) == 0
    assert cli.main(["rabbitmq-user", "--collector", "--cert", *_ctl_option(rabbit)]) == 2
    assert "logs in with a password" in capsys.readouterr().err


def test_readme_advanced_config_is_the_generated_one() -> None:
    """deploy/rabbitmq/README.md shows the production advanced.config; it must be
    what render_advanced_config makes of rabbitmq.conf (what the tests run)."""
    blocks = re.findall(r"```erlang\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    generated = render_advanced_config()
    assert blocks == [generated]
    # The file deploy/rabbitmq/ ships (installed as /etc/rabbitmq/advanced.config).
    shipped = README.with_name("advanced.config").read_text(encoding="utf-8")
    assert shipped == generated, "regenerate deploy/rabbitmq/advanced.config"
    assert "{verify, verify_peer}" in generated and "{crl_check, true}" in generated
    assert "{fail_if_no_peer_cert, false}" in generated
