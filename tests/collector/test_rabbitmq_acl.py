"""RabbitMQ's MQTT plugin as the fleet's broker: per-device permissions and a three-node cluster.

Real rabbitmq-server nodes (tests.support.rabbitmq) from deploy/rabbitmq/'s
config, real MQTT 3.1.1 clients (aiomqtt, as the agent speaks), users and
permissions made by collector.broker_rabbitmq's provisioning.

What RabbitMQ 3.10 does with a forbidden operation (its log says so too):
- a publish to a topic the device may not write: "access to topic ... refused",
  and the broker *closes the connection* (no PUBACK); nothing is routed;
- a subscription to a topic it may not read: the broker closes the connection
  instead of answering SUBACK 0x80; nothing is delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shlex
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiomqtt
import pytest

from collector import cli
from collector.broker_rabbitmq import (
    COLLECTOR_USER,
    RabbitProvisionError,
    device_permissions,
    provision_rabbitmq_device,
    routing_key,
)
from collector.tls import CertificateAuthority, install_broker_files
from tests.support.rabbitmq import Node, RabbitCluster, available

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not available(), reason="rabbitmq-server is not installed"),
]

V311 = aiomqtt.ProtocolVersion.V311


@pytest.fixture(scope="module")
def fleet_ca() -> CertificateAuthority:
    return CertificateAuthority.create("loa-fleet test CA")


@pytest.fixture(scope="module")
def rabbit(
    tmp_path_factory: pytest.TempPathFactory, fleet_ca: CertificateAuthority
) -> Iterator[RabbitCluster]:
    """One node with the TLS listener, the collector and three devices provisioned."""
    tls = tmp_path_factory.mktemp("rabbit-tls")
    install_broker_files(fleet_ca, tls, ["127.0.0.1", "localhost"])
    cluster = RabbitCluster(tmp_path_factory.mktemp("rabbit1"), 1, tls_dir=tls)
    cluster.start()
    try:
        print(f"\nRabbitMQ 1 node: serving MQTT {cluster.started_in:.1f} s after launch")
        cluster.add_collector()
        cluster.add_device("dev-001", "dev-002", "dev-003")
        yield cluster
    finally:
        cluster.stop()
    assert cluster.leftovers() == []


def client(
    cluster: RabbitCluster,
    user: str,
    *,
    node: Node | None = None,
    identifier: str | None = None,
    password: str | None = None,
    **kw: object,
) -> aiomqtt.Client:
    return aiomqtt.Client(
        cluster.host,
        (node or cluster.nodes[0]).mqtt_port,
        username=user,
        password=password if password is not None else cluster.password(user),
        # The agent's client id is its device id; the collector's starts with loa-collector.
        identifier=identifier or (user if user != COLLECTOR_USER else "loa-collector-1"),
        protocol=V311,
        timeout=5,
        **kw,  # type: ignore[arg-type]
    )


class Watch:
    """What the collector received, in order; ``wait`` blocks until enough has come."""

    def __init__(self) -> None:
        self.got: list[tuple[str, bytes]] = []
        self._changed = asyncio.Condition()

    async def add(self, topic: str, payload: bytes) -> None:
        async with self._changed:
            self.got.append((topic, payload))
            self._changed.notify_all()

    async def wait(self, n: int, what: str, timeout: float = 10.0) -> list[tuple[str, bytes]]:
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: len(self.got) >= n)
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}") from None
        return self.got


@contextlib.asynccontextmanager
async def watching(
    cluster: RabbitCluster, topic_filter: str, *, node: Node | None = None
) -> AsyncIterator[Watch]:
    """The collector subscribed to ``topic_filter``, recording what arrives."""
    watch = Watch()
    async with client(cluster, COLLECTOR_USER, node=node, clean_session=True) as c:
        await c.subscribe(topic_filter, qos=1)

        async def pump() -> None:
            async for m in c.messages:
                await watch.add(str(m.topic), bytes(m.payload))  # type: ignore[arg-type]

        task = asyncio.create_task(pump(), name="watch")
        try:
            yield watch
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def refused(
    cluster: RabbitCluster, user: str, action: str, topic: str, *, identifier: str | None = None
) -> None:
    """``user`` tries to publish or subscribe to ``topic``: RabbitMQ must close the link.

    The message stream ends with MqttError as soon as the broker closes the
    connection. Were the operation allowed, the link would stay up and this
    would end in TimeoutError instead (failing the test).
    """
    with pytest.raises(aiomqtt.MqttError):
        async with client(cluster, user, identifier=identifier, clean_session=True) as c:
            if action == "publish":
                op = c.publish(topic, b'{"forged":true}', qos=1, timeout=10)
            else:
                op = c.subscribe(topic, qos=1, timeout=10)
            task = asyncio.create_task(op, name=f"{action} {topic}")
            try:
                async with asyncio.timeout(10):
                    async for _m in c.messages:
                        break
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await task


def test_patterns_are_regexes_on_the_dotted_routing_key() -> None:
    perms = device_permissions("dev-001")
    assert routing_key("loa/v1/dev-001/cmd/reply") == "loa.v1.dev-001.cmd.reply"
    assert routing_key("loa/v1/+/state") == "loa.v1.*.state"
    # The queue patterns name the device itself (3.10 does not expand them).
    assert "dev\\-001" in perms.configure and "{username}" not in perms.configure
    assert "{username}" in perms.topic_write and "{username}" in perms.topic_read
    with pytest.raises(RabbitProvisionError, match="collector"):
        provision_rabbitmq_device("loa-collector-2", "x", ctl=["false"])
    with pytest.raises(RabbitProvisionError, match="not a valid"):
        provision_rabbitmq_device("Dev_1", "x", ctl=["false"])


async def test_device_state_reaches_the_collector(rabbit: RabbitCluster) -> None:
    async with watching(rabbit, "loa/v1/+/state") as watch:
        async with client(rabbit, "dev-001", clean_session=False) as dev:
            await dev.publish("loa/v1/dev-001/state", b'{"seq":1}', qos=1)
        await watch.wait(1, what="state at the collector")
    assert watch.got == [("loa/v1/dev-001/state", b'{"seq":1}')]


async def test_device_cannot_publish_under_another_id(rabbit: RabbitCluster) -> None:
    async with watching(rabbit, "loa/v1/#") as watch:
        for topic in (
            "loa/v1/dev-002/state",  # another device's id
            "loa/v1/dev-002/presence",
            "loa/v1/dev-001/cmd",  # its own commands: only the collector writes them
            "loa/v1/dev-001/ack",  # its own confirmations: ditto
            "loa/v1/dev-001",  # not a topic of ours
        ):
            await refused(rabbit, "dev-001", "publish", topic)
        # The allowed message goes last: the forged ones would have arrived before it.
        async with client(rabbit, "dev-001", clean_session=True) as dev:
            await dev.publish("loa/v1/dev-001/event", b"{}", qos=1)
        await watch.wait(1, what="own event at the collector")
    assert [t for t, _ in watch.got] == ["loa/v1/dev-001/event"]


async def test_device_cannot_read_another_devices_commands(rabbit: RabbitCluster) -> None:
    for topic in ("loa/v1/dev-003/cmd", "loa/v1/dev-003/ack", "loa/v1/+/cmd", "loa/v1/#"):
        await refused(rabbit, "dev-001", "subscribe", topic)
    # The owner subscribes (a persistent session, as the agent's) and gets its
    # command; the collector may write it.
    async with client(rabbit, "dev-003", clean_session=False) as owner:
        await owner.subscribe("loa/v1/dev-003/cmd", qos=1)
        await owner.subscribe("loa/v1/dev-003/ack", qos=1)
        async with client(rabbit, COLLECTOR_USER, identifier="loa-collector-1-cmd") as col:
            await col.publish("loa/v1/dev-003/cmd", b'{"op":"diag"}', qos=1)
        async with asyncio.timeout(10):
            m = await anext(aiter(owner.messages))
        assert (str(m.topic), m.payload) == ("loa/v1/dev-003/cmd", b'{"op":"diag"}')


async def test_device_cannot_take_the_collectors_client_id(rabbit: RabbitCluster) -> None:
    """MQTT lets a client id take over a session; the collector's queue is not the device's."""
    await refused(
        rabbit, "dev-001", "subscribe", "loa/v1/dev-001/cmd", identifier="loa-collector-1"
    )


async def test_last_will_is_published_when_the_link_drops(rabbit: RabbitCluster) -> None:
    will = aiomqtt.Will("loa/v1/dev-002/presence", b'{"status":"offline"}', qos=1, retain=True)
    async with watching(rabbit, "loa/v1/+/presence") as watch:
        dev = client(rabbit, "dev-002", will=will, keepalive=5)
        await dev.__aenter__()
        await dev.publish("loa/v1/dev-002/presence", b'{"status":"online"}', qos=1, retain=True)
        await watch.wait(1, what="birth message")
        # Drop the TCP link without DISCONNECT (a power cut at the controller).
        sock = dev._client.socket()
        assert isinstance(sock, socket.socket)
        sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(aiomqtt.MqttError):
            await dev.__aexit__(None, None, None)
        await watch.wait(2, what="last will at the collector")
    assert watch.got == [
        ("loa/v1/dev-002/presence", b'{"status":"online"}'),
        ("loa/v1/dev-002/presence", b'{"status":"offline"}'),
    ]


async def test_reprovisioning_changes_the_password(rabbit: RabbitCluster, tmp_path: Path) -> None:
    rabbit.add_device("dev-004")
    provision_rabbitmq_device(
        "dev-004", "second-password", ctl=rabbit.ctl_argv(), env=rabbit.env(rabbit.nodes[0])
    )
    with pytest.raises(aiomqtt.MqttError):
        async with client(rabbit, "dev-004"):
            pass
    async with client(rabbit, "dev-004", password="second-password") as dev:
        await dev.publish("loa/v1/dev-004/state", b"{}", qos=1)


async def test_provisioned_device_connects_over_tls(
    rabbit: RabbitCluster,
    fleet_ca: CertificateAuthority,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The documented flow: `provision --no-broker` writes the bundle, `rabbitmq-user`
    gives its password to RabbitMQ; the device connects over TLS with the bundle's CA."""
    node = rabbit.nodes[0]
    assert node.tls_port is not None
    bundle = tmp_path / "bundle"
    provision_argv = [
        "provision", "dev-005", "--commune", "19087", "--commune-name", "Thạch Sơn",
        "--broker-url", f"mqtts://127.0.0.1:{node.tls_port}", "--out", str(bundle),
        "--install-dir", str(bundle), "--no-broker", "--no-inventory",
        "--ca-dir", str(tmp_path / "ca"), "--auth", "password",
    ]  # fmt: skip
    (tmp_path / "ca").mkdir()
    fleet_ca.save(tmp_path / "ca")  # the CA that issued the broker's certificate
    assert await asyncio.to_thread(cli.main, provision_argv) == 0
    # rabbitmqctl for this test cluster: its cookie (HOME) and epmd port.
    env = rabbit.env(node)
    ctl = "env " + " ".join(
        shlex.quote(f"{k}={env[k]}") for k in ("HOME", "ERL_EPMD_PORT", "RABBITMQ_CONF_ENV_FILE")
    )
    user_argv = [
        "rabbitmq-user", "dev-005", "--password-file", str(bundle / "mqtt-password"),
        "--node", node.name, "--ctl", f"{ctl} {rabbit.ctl_argv(node)[0]}",
    ]  # fmt: skip
    assert await asyncio.to_thread(cli.main, user_argv) == 0
    password = (bundle / "mqtt-password").read_text().strip()
    out = capsys.readouterr()
    assert password not in out.out + out.err
    assert "dev-005: RabbitMQ user and permissions set" in out.out

    tls = ssl.create_default_context(cafile=str(bundle / "ca.crt"))
    async with watching(rabbit, "loa/v1/+/state") as watch:
        async with aiomqtt.Client(
            "127.0.0.1",
            node.tls_port,
            username="dev-005",
            password=password,
            identifier="dev-005",
            protocol=V311,
            tls_context=tls,
            clean_session=False,
            timeout=5,
        ) as dev:
            await dev.publish("loa/v1/dev-005/state", b"{}", qos=1)
        await watch.wait(1, what="state over TLS")
    assert watch.got == [("loa/v1/dev-005/state", b"{}")]


def queue_depths(cluster: RabbitCluster) -> dict[str, int]:
    out = cluster.ctl("list_queues", "name", "messages", "--formatter", "json")
    return {q["name"]: int(q["messages"]) for q in json.loads(out)}


async def test_definitions_limit_queues_without_dropping_silently(rabbit: RabbitCluster) -> None:
    """deploy/rabbitmq/definitions.json is loaded at boot. A full ingest queue
    refuses the publish (the device gets no PUBACK and keeps the message); a full
    device session drops its oldest into the loa.dropped queue, where it is counted."""
    policies = {p["name"] for p in json.loads(rabbit.ctl("list_policies", "--formatter", "json"))}
    assert {"loa-ingest", "loa-device-sessions"} <= policies
    queues = json.loads(rabbit.ctl("list_queues", "name", "type", "--formatter", "json"))
    assert {"name": "loa.dropped", "type": "quorum"} in queues
    # Definitions at boot replace the default user: there is no guest to log in as.
    users = {u["user"] for u in json.loads(rabbit.ctl("list_users", "--formatter", "json"))}
    assert "guest" not in users and COLLECTOR_USER in users
    # The production limits (10^6, 1000) scaled down for this test's queues, same overflow.
    rabbit.ctl("set_policy", "--apply-to", "queues", "--priority", "20", "t-ingest",
               "^mqtt-subscription-loa-collector-fullqos1$",
               '{"max-length": 3, "overflow": "reject-publish"}')  # fmt: skip
    rabbit.ctl("set_policy", "--apply-to", "queues", "--priority", "20", "t-device",
               "^mqtt-subscription-dev-006qos1$",
               '{"max-length": 2, "overflow": "drop-head", '
               '"dead-letter-exchange": "loa.dropped"}')  # fmt: skip
    rabbit.add_device("dev-006")
    try:
        # The ingest queue: the collector's session, offline, holds three at most.
        async with client(
            rabbit, COLLECTOR_USER, identifier="loa-collector-full", clean_session=False
        ) as col:
            await col.subscribe("loa/v1/dev-006/state", qos=1)
        async with client(rabbit, "dev-006", clean_session=True) as dev:
            for i in range(3):
                await dev.publish("loa/v1/dev-006/state", f"{i}".encode(), qos=1)
        # The fourth: 3.10 ends the device's connection on the broker's nack, no PUBACK.
        await refused(rabbit, "dev-006", "publish", "loa/v1/dev-006/state")
        assert (await asyncio.to_thread(queue_depths, rabbit))[
            "mqtt-subscription-loa-collector-fullqos1"
        ] == 3
        async with client(
            rabbit, COLLECTOR_USER, identifier="loa-collector-full", clean_session=False
        ) as col:
            got = []
            async with asyncio.timeout(10):
                async for m in col.messages:
                    got.append(bytes(m.payload))  # type: ignore[arg-type]
                    if len(got) == 3:
                        break
        assert got == [b"0", b"1", b"2"]

        # A device's session: four commands while it is away, room for two.
        before = (await asyncio.to_thread(queue_depths, rabbit))["loa.dropped"]
        async with client(rabbit, "dev-006", clean_session=False) as dev:
            await dev.subscribe("loa/v1/dev-006/cmd", qos=1)
        async with client(rabbit, COLLECTOR_USER, identifier="loa-collector-1-cmd") as col:
            for i in range(4):
                await col.publish("loa/v1/dev-006/cmd", f"cmd{i}".encode(), qos=1)
        deadline = asyncio.get_running_loop().time() + 20
        while (await asyncio.to_thread(queue_depths, rabbit))["loa.dropped"] < before + 2:
            assert asyncio.get_running_loop().time() < deadline, "nothing dead-lettered"
        async with client(rabbit, "dev-006", clean_session=False) as dev:
            got = []
            async with asyncio.timeout(10):
                async for m in dev.messages:
                    got.append(bytes(m.payload))  # type: ignore[arg-type]
                    if len(got) == 2:
                        break
        assert got == [b"cmd2", b"cmd3"]
    finally:
        rabbit.ctl("clear_policy", "t-ingest")
        rabbit.ctl("clear_policy", "t-device")
        # Clean sessions end both persistent sessions (their queues are deleted).
        async with client(
            rabbit, COLLECTOR_USER, identifier="loa-collector-full", clean_session=True
        ):
            pass
        async with client(rabbit, "dev-006", clean_session=True):
            pass


def test_three_nodes_cluster_and_survive_a_kill(tmp_path: Path) -> None:
    cluster = RabbitCluster(tmp_path / "rabbit3", 3)
    try:
        cluster.start()
        took = ", ".join(f"{n.started_in:.1f} s" for n in cluster.nodes)
        print(
            f"\nRabbitMQ 3 nodes: launched together, each ready in {took}; "
            f"clustered {cluster.started_in:.1f} s after launch"
        )
        status = cluster.ctl("cluster_status", "--formatter", "json")
        for node in cluster.nodes:
            assert node.name in status
        running = cluster.ctl("eval", "rabbit_nodes:all_running().")
        assert all(n.name in running for n in cluster.nodes), running
        cluster.add_collector()
        cluster.add_device("dev-001")  # users are cluster-wide: added on node 1 only

        asyncio.run(_retained_is_node_local_and_exact_only(cluster))

        victim, *rest = cluster.nodes[::-1]  # kill node 3
        pid = victim.pid
        cluster.kill9(victim)
        assert pid not in {p.pid for p in cluster.leftovers()}
        asyncio.run(_serves(cluster, rest))
        cluster.restart(victim)
        asyncio.run(_serves(cluster, [victim, rest[0]]))
    finally:
        cluster.stop()
    assert cluster.leftovers() == []


async def _serves(cluster: RabbitCluster, nodes: list[Node]) -> None:
    """A device on one node publishes; the collector on another receives."""
    a, b = nodes[0], nodes[-1]
    async with watching(cluster, "loa/v1/+/state", node=b) as watch:
        async with client(cluster, "dev-001", node=a, clean_session=True) as dev:
            await dev.publish("loa/v1/dev-001/state", a.name.encode(), qos=1)
        await watch.wait(1, what=f"state via {a.name} at {b.name}")
    assert watch.got == [("loa/v1/dev-001/state", a.name.encode())]


async def _retained_first(cluster: RabbitCluster, node: Node, topic_filter: str) -> bytes | None:
    """The retained message a fresh collector session gets on subscribing, if any in 3 s."""
    async with client(cluster, COLLECTOR_USER, node=node, clean_session=True) as col:
        await col.subscribe(topic_filter, qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(3):
                async for m in col.messages:
                    return bytes(m.payload)  # type: ignore[arg-type]
    return None


async def _retained_is_node_local_and_exact_only(cluster: RabbitCluster) -> None:
    """RabbitMQ 3.10: a retained message is kept by the node that took it, and
    delivered on subscription to an exact topic only (deploy/rabbitmq/README.md).
    This pins the behaviour the deployment notes rely on; an upgrade that
    changes it fails here."""
    n1, n2, _ = cluster.nodes
    async with client(cluster, "dev-001", node=n1, clean_session=True) as dev:
        await dev.publish("loa/v1/dev-001/presence", b"online", qos=1, retain=True)
    assert await _retained_first(cluster, n1, "loa/v1/dev-001/presence") == b"online"
    assert await _retained_first(cluster, n1, "loa/v1/+/presence") is None
    assert await _retained_first(cluster, n2, "loa/v1/dev-001/presence") is None
