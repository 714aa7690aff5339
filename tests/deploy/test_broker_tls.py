"""The production Mosquitto config over TLS, with a CA made in the test.

Both device modes: username/password over TLS (port 8883 in production) and
client certificates whose CN becomes the username (port 8884). A denial is
shown by publishing the forbidden message first and an allowed one after it:
a publish returns once the broker has handled it, so once the allowed message
reached the collector the forbidden one would have too. Mosquitto 2.0 drops
the link after a denied QoS 1 publish, so each attempt has its own connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import pytest

from collector.tls import CertificateAuthority
from tests.deploy.conftest import client_context, watching
from tests.support.mosquitto import COLLECTOR_USER, Broker

pytestmark = pytest.mark.integration


def device_cert(ca: CertificateAuthority, device: str, where: Path) -> tuple[Path, Path]:
    issued = ca.issue_device(device)
    cert, key = where / f"{device}.crt", where / f"{device}.key"
    issued.write(cert, key)
    return cert, key


def tls_client(
    broker: Broker,
    port: int | None,
    ctx: ssl.SSLContext,
    *,
    user: str | None = None,
    password: str | None = None,
    identifier: str | None = None,
) -> aiomqtt.Client:
    assert port is not None
    return aiomqtt.Client(
        broker.host,
        port,
        username=user,
        password=password,
        identifier=identifier,
        tls_context=ctx,
        timeout=5.0,
    )


async def publish_each(connect: Callable[[], aiomqtt.Client], *topics: str) -> None:
    """Publish to each topic in turn, one connection each; denied ones fail silently."""
    for topic in topics:
        with contextlib.suppress(aiomqtt.MqttError):
            async with connect() as c:
                await c.publish(topic, b"{}", qos=1)


async def test_password_mode_device_publishes_only_under_its_own_id(
    tls_broker: Broker, fleet_ca: CertificateAuthority
) -> None:
    tls_broker.add_user("dev-001", "dev-002")
    async with watching(tls_broker) as seen:
        await publish_each(
            lambda: tls_client(
                tls_broker,
                tls_broker.tls_port,
                client_context(fleet_ca),
                user="dev-001",
                password=tls_broker.password("dev-001"),
            ),
            "loa/v1/dev-002/state",
            "loa/v1/dev-001/cmd",
            "loa/v1/dev-001/state",
        )
        assert await seen.wait_for("loa/v1/dev-001/state") == ["loa/v1/dev-001/state"]


async def test_password_mode_refuses_missing_or_wrong_credentials(
    tls_broker: Broker, fleet_ca: CertificateAuthority
) -> None:
    tls_broker.add_user("dev-001")
    ctx = client_context(fleet_ca)
    for user, password in ((None, None), ("dev-001", None), ("dev-001", "wrong")):
        with pytest.raises(aiomqtt.MqttError):
            async with tls_client(
                tls_broker, tls_broker.tls_port, ctx, user=user, password=password
            ):
                pass


async def test_plain_mqtt_on_the_tls_port_is_refused(tls_broker: Broker) -> None:
    tls_broker.add_user("dev-001")
    assert tls_broker.tls_port is not None
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(
            tls_broker.host,
            tls_broker.tls_port,
            username="dev-001",
            password=tls_broker.password("dev-001"),
            timeout=5.0,
        ):
            pass


async def test_device_refuses_a_broker_signed_by_another_ca(
    tls_broker: Broker, tmp_path: Path
) -> None:
    tls_broker.add_user("dev-001")
    stranger = CertificateAuthority.create("not our CA")
    with pytest.raises(aiomqtt.MqttError):
        async with tls_client(
            tls_broker,
            tls_broker.tls_port,
            client_context(stranger),
            user="dev-001",
            password=tls_broker.password("dev-001"),
        ):
            pass


async def test_cert_mode_device_id_is_the_certificate_cn(
    tls_broker: Broker, fleet_ca: CertificateAuthority, tmp_path: Path
) -> None:
    ctx = client_context(fleet_ca, device_cert(fleet_ca, "dev-001", tmp_path))
    async with watching(tls_broker) as seen:
        # No password file entry and no password: the certificate is the credential.
        await publish_each(
            lambda: tls_client(tls_broker, tls_broker.cert_port, ctx),
            "loa/v1/dev-002/event",
            "loa/v1/dev-001/event",
        )
        # A username in CONNECT does not override the certificate's identity.
        await publish_each(
            lambda: tls_client(tls_broker, tls_broker.cert_port, ctx, user="dev-002", password="x"),
            "loa/v1/dev-002/state",
            "loa/v1/dev-001/presence",
        )
        assert await seen.wait_for("loa/v1/dev-001/presence") == [
            "loa/v1/dev-001/event",
            "loa/v1/dev-001/presence",
        ]


async def test_cert_mode_device_reads_only_its_own_cmd(
    tls_broker: Broker, fleet_ca: CertificateAuthority, tmp_path: Path
) -> None:
    ctx = client_context(fleet_ca, device_cert(fleet_ca, "dev-001", tmp_path))
    async with tls_client(tls_broker, tls_broker.cert_port, ctx) as dev:
        await dev.subscribe("loa/v1/+/cmd", qos=1)
        async with aiomqtt.Client(
            tls_broker.host,
            tls_broker.port,
            username=COLLECTOR_USER,
            password=tls_broker.password(COLLECTOR_USER),
        ) as collector:
            await collector.publish("loa/v1/dev-002/cmd", b"other", qos=1)
            await collector.publish("loa/v1/dev-001/cmd", b"mine", qos=1)
        async with asyncio.timeout(10):
            message = await anext(aiter(dev.messages))
        assert (str(message.topic), message.payload) == ("loa/v1/dev-001/cmd", b"mine")


async def test_cert_mode_refuses_no_certificate_and_a_foreign_ca(
    tls_broker: Broker, fleet_ca: CertificateAuthority, tmp_path: Path
) -> None:
    tls_broker.add_user("dev-001")
    stranger = CertificateAuthority.create("not our CA")
    foreign = device_cert(stranger, "dev-001", tmp_path)
    for ctx in (client_context(fleet_ca), client_context(fleet_ca, foreign)):
        with pytest.raises(aiomqtt.MqttError):
            # A valid password does not stand in for the certificate on this listener.
            async with tls_client(
                tls_broker,
                tls_broker.cert_port,
                ctx,
                user="dev-001",
                password=tls_broker.password("dev-001"),
            ) as dev:
                await dev.publish("loa/v1/dev-001/state", b"{}", qos=1)


async def test_a_device_cannot_take_over_another_devices_client_id(
    tls_broker: Broker, fleet_ca: CertificateAuthority
) -> None:
    tls_broker.add_user("dev-001", "dev-002")
    ctx = client_context(fleet_ca)
    async with watching(tls_broker) as seen:
        async with (
            tls_client(
                tls_broker,
                tls_broker.tls_port,
                ctx,
                user="dev-001",
                password=tls_broker.password("dev-001"),
                identifier="dev-001",
            ) as victim,
            tls_client(
                tls_broker,
                tls_broker.tls_port,
                ctx,
                user="dev-002",
                password=tls_broker.password("dev-002"),
                identifier="dev-001",
            ) as intruder,
        ):
            await intruder.publish("loa/v1/dev-002/state", b"{}", qos=1)
            # Had the intruder taken the client id, the victim would be disconnected.
            await victim.publish("loa/v1/dev-001/state", b"{}", qos=1)
        assert set(await seen.wait_for("loa/v1/dev-001/state")) == {
            "loa/v1/dev-002/state",
            "loa/v1/dev-001/state",
        }
