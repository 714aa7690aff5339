"""The production Mosquitto config: no anonymous access, devices confined to their own id."""

from __future__ import annotations

import asyncio
import contextlib

import aiomqtt
import pytest

from tests.support.mosquitto import COLLECTOR_USER, Broker

pytestmark = pytest.mark.integration


def client(broker: Broker, user: str | None, password: str | None = None) -> aiomqtt.Client:
    return aiomqtt.Client(
        broker.host,
        broker.port,
        username=user,
        password=password if password is not None else (broker.password(user) if user else None),
        identifier=None,
    )


async def collect(broker: Broker, topic: str, n: int, timeout: float) -> list[str]:
    """Subscribe as the collector; return the topics of up to n messages seen before timeout."""
    got: list[str] = []
    async with client(broker, COLLECTOR_USER) as c:
        await c.subscribe(topic, qos=1)
        ready.set()
        try:
            async with asyncio.timeout(timeout):
                async for m in c.messages:
                    got.append(str(m.topic))
                    if len(got) >= n:
                        break
        except TimeoutError:
            pass
    return got


ready: asyncio.Event


async def test_device_publishes_only_under_its_own_id(broker: Broker) -> None:
    global ready
    ready = asyncio.Event()
    broker.add_user("dev-001", "dev-002")
    sub = asyncio.create_task(collect(broker, "loa/v1/#", 3, timeout=10.0))
    await asyncio.wait_for(ready.wait(), 5)
    for topic in (
        "loa/v1/dev-001/state",
        "loa/v1/dev-002/state",
        "loa/v1/dev-001/cmd",
        "loa/v1/dev-001/event",
        "loa/v1/dev-001/presence",
    ):
        # Mosquitto 2.0 answers a denied QoS 1 publish with a PUBACK carrying
        # reason 135, which a 3.1.1 client takes as a protocol error and drops
        # the link: one connection per attempt.
        with contextlib.suppress(aiomqtt.MqttError):
            async with client(broker, "dev-001") as c:
                await c.publish(topic, b"{}", qos=1)
    got = await sub
    # The allowed presence message comes last: by then the denied ones would have arrived.
    assert got == ["loa/v1/dev-001/state", "loa/v1/dev-001/event", "loa/v1/dev-001/presence"]


async def test_anonymous_and_wrong_password_are_refused(broker: Broker) -> None:
    broker.add_user("dev-001")
    with pytest.raises(aiomqtt.MqttError):
        async with client(broker, None):
            pass
    with pytest.raises(aiomqtt.MqttError):
        async with client(broker, "dev-001", "wrong"):
            pass


async def test_only_the_collector_may_confirm_and_only_to_that_device(broker: Broker) -> None:
    """A device cannot forge store confirmations (its own or another's) nor read another's."""
    global ready
    ready = asyncio.Event()
    broker.add_user("dev-001", "dev-002")
    got: list[str] = []

    async def watch(user: str, topics: list[str]) -> None:
        async with client(broker, user) as c:
            await c.subscribe([(t, 1) for t in topics])
            ready.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(4.0):
                    async for m in c.messages:
                        got.append(f"{user}:{m.topic}:{m.payload!r}")

    sub = asyncio.create_task(
        watch("dev-001", ["loa/v1/dev-001/ack", "loa/v1/dev-002/ack", "loa/v1/+/ack"])
    )
    await asyncio.wait_for(ready.wait(), 5)
    for topic in ("loa/v1/dev-001/ack", "loa/v1/dev-002/ack"):
        with contextlib.suppress(aiomqtt.MqttError):
            async with client(broker, "dev-002") as c:
                await c.publish(topic, b"forged", qos=1)
    async with client(broker, COLLECTOR_USER) as c:
        await c.publish("loa/v1/dev-002/ack", b"for-002", qos=1)
        await c.publish("loa/v1/dev-001/ack", b"for-001", qos=1)
    await sub
    # Only the collector's confirmation for dev-001 reached dev-001 (once per matching
    # subscription it is allowed to hold).
    assert got and set(got) == {"dev-001:loa/v1/dev-001/ack:b'for-001'"}
