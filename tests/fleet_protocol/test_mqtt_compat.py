"""fleet_protocol.mqtt_compat against the installed aiomqtt and paho, and a real Mosquitto.

The first test fails on any aiomqtt or paho-mqtt minor version the module was
not checked against: upgrading means re-reading the private attributes it
names, then adding the version to ``TESTED``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import socket

import aiomqtt
import paho.mqtt.client as paho_client
import pytest

from fleet_protocol import mqtt_compat
from tests.collector.conftest import COLLECTOR_USER
from tests.support.mosquitto import Broker


@pytest.mark.parametrize("dist", sorted(mqtt_compat.TESTED))
def test_installed_versions_are_the_tested_ones(dist: str) -> None:
    minor = ".".join(importlib.metadata.version(dist).split(".")[:2])
    assert minor in mqtt_compat.TESTED[dist], (
        f"{dist} {minor} is installed; mqtt_compat was checked against "
        f"{mqtt_compat.TESTED[dist]}: re-check its private attributes"
    )


async def test_the_private_attributes_it_reaches_exist() -> None:
    client = aiomqtt.Client("127.0.0.1", 1)
    paho = mqtt_compat.paho_of(client)
    assert isinstance(paho, paho_client.Client)
    assert isinstance(client._connected, asyncio.Future)
    assert isinstance(client._disconnected, asyncio.Future)
    assert client._loop is asyncio.get_running_loop()  # where aiomqtt adds the reader
    assert hasattr(paho, "_sock") and paho._sock is None
    for name in ("_sock_close", "socket", "disconnect", "manual_ack_set", "ack"):
        assert callable(getattr(paho, name)), name
    assert callable(paho.on_disconnect)  # aiomqtt's handler, which we wrap
    assert mqtt_compat.socket_of(client) is None and mqtt_compat.socket_of(None) is None
    mqtt_compat.close_half_open(client)  # nothing open: a no-op
    mqtt_compat.drop(None)
    mqtt_compat.hang_up(None)
    assert mqtt_compat.pause_reading(client) is False  # not connected
    mqtt_compat.resume_reading(client)


async def test_a_link_closed_before_connack_fails_the_attempt_at_once() -> None:
    """A listener that accepts and closes (a TLS terminator with the broker down)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.setblocking(False)
    port = server.getsockname()[1]
    loop = asyncio.get_running_loop()

    async def accept_and_close() -> None:
        conn, _ = await loop.sock_accept(server)
        conn.close()

    acceptor = asyncio.create_task(accept_and_close())
    client = aiomqtt.Client("127.0.0.1", port, timeout=60)
    mqtt_compat.fail_fast_before_connack(client)
    try:
        with pytest.raises(aiomqtt.MqttError):
            async with asyncio.timeout(20):  # far below the client's own 60 s
                await client.__aenter__()
    finally:
        mqtt_compat.close_half_open(client)
        mqtt_compat.consume_disconnect(client)
        acceptor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await acceptor
        server.close()


async def test_or_disconnect_ends_a_subscribe_the_broker_answers_by_closing() -> None:
    """RabbitMQ refuses a SUBSCRIBE by closing the connection, without a SUBACK.

    A listener speaking just enough MQTT 3.1.1 for that: CONNACK (0x20 0x02
    0x00 0x00) after CONNECT, then close at the SUBSCRIBE (packet type 8).
    """
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.setblocking(False)
    port = server.getsockname()[1]
    loop = asyncio.get_running_loop()

    async def connack_then_close_at_subscribe() -> None:
        conn, _ = await loop.sock_accept(server)
        try:
            await loop.sock_recv(conn, 1024)  # CONNECT
            await loop.sock_sendall(conn, b"\x20\x02\x00\x00")
            while True:
                data = await loop.sock_recv(conn, 1024)
                if not data or data[0] >> 4 == 8:
                    return
        finally:
            conn.close()

    server_task = asyncio.create_task(connack_then_close_at_subscribe())
    client = aiomqtt.Client("127.0.0.1", port, timeout=10)
    try:
        await client.__aenter__()
        t0 = loop.time()
        with pytest.raises(aiomqtt.MqttError):
            await mqtt_compat.or_disconnect(client, client.subscribe("a/b", qos=1, timeout=60))
        assert loop.time() - t0 < 30  # the link's end, not the 60 s timeout
    finally:
        with contextlib.suppress(aiomqtt.MqttError):
            await client.__aexit__(None, None, None)
        mqtt_compat.consume_disconnect(client)
        server_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server_task
        server.close()


@pytest.mark.integration
async def test_or_disconnect_returns_what_the_call_returns(broker: Broker) -> None:
    broker.add_user("dev-compat-sub")
    async with aiomqtt.Client(
        broker.host,
        broker.port,
        username="dev-compat-sub",
        password=broker.password("dev-compat-sub"),
        identifier="dev-compat-sub",
    ) as client:
        got = await mqtt_compat.or_disconnect(
            client, client.subscribe("loa/v1/dev-compat-sub/cmd", qos=1, timeout=10)
        )
        assert [int(rc.value) for rc in got] == [1]  # type: ignore[union-attr]


@pytest.mark.integration
@pytest.mark.parametrize(("cut", "will_sent"), [("drop", True), ("hang_up", False)])
async def test_drop_sends_the_will_and_hang_up_does_not(
    broker: Broker, cut: str, will_sent: bool
) -> None:
    broker.add_user("dev-compat")
    will_topic = "loa/v1/dev-compat/presence"
    async with aiomqtt.Client(
        broker.host,
        broker.port,
        username=COLLECTOR_USER,
        password=Broker.password(COLLECTOR_USER),
        identifier="compat-watcher",
    ) as watcher:
        await watcher.subscribe(will_topic, qos=1)
        device = aiomqtt.Client(
            broker.host,
            broker.port,
            username="dev-compat",
            password=Broker.password("dev-compat"),
            identifier="dev-compat",
            will=aiomqtt.Will(will_topic, b"offline", qos=1),
        )
        await device.__aenter__()
        assert isinstance(mqtt_compat.socket_of(device), socket.socket)
        getattr(mqtt_compat, cut)(device)
        got: list[bytes] = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5 if will_sent else 2):
                async for m in watcher.messages:
                    got.append(bytes(m.payload))  # type: ignore[arg-type]
                    break
        with contextlib.suppress(aiomqtt.MqttError):
            await device.__aexit__(None, None, None)
        mqtt_compat.consume_disconnect(device)
    assert got == ([b"offline"] if will_sent else [])
