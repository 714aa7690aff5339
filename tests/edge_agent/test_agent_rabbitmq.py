"""Issue 19: the real agent on a three-node RabbitMQ cluster, and its node killed.

The agent process (``loa-agent run``) connects unchanged -- MQTT 3.1.1 over TLS,
its own user with its password or its client certificate, its last will -- to
the first of three clustered nodes (tests.support.rabbitmq, from
deploy/rabbitmq's config) with all three in ``[broker] urls``; a collector
in this process consumes the ``loa.ingest`` quorum queue over AMQP into
SQLite and confirms what it stores.

When the node holding the agent's persistent session is killed, the other
nodes take its CONNECT but refuse its QoS 1 SUBSCRIBE (the session's queue
lives on the dead node) and close the connection. The agent then subscribes at
QoS 0 there: its reports keep flowing and being confirmed, a command reaches it
and is answered. Once the node is back, the agent reconnects after
``qos1_retry_s`` and holds QoS 1 subscriptions again. Every seq the agent
assigned is stored once (the gaps are only last-will seqs it reserved and never
needed), and its outbox ends empty: everything was confirmed by the collector.

And a device that knows only the node that dies: no last will comes (the node
took the connection with it), so the collector's silence rule marks it
offline, and its status history says so.

The three nodes are started once for the module (20-30 s); each test leaves
them all running.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from collector.broker_rabbitmq import COLLECTOR_USER, amqp_collector_permissions
from collector.fleet import ObsKind
from collector.ingest import Ingestor
from collector.model import InventoryDevice
from collector.store.sqlite import SQLiteRepository
from collector.tls import CertificateAuthority, install_broker_files
from edge_agent import control
from edge_agent.outbox import Outbox
from edge_agent.uplink import start_index
from fleet_protocol import (
    PROTOCOL_VERSION,
    Command,
    Kind,
    Presence,
    PresenceStatus,
    Reply,
    decode,
    encode,
    topic,
)
from fleet_protocol.mqtt_compat import consume_disconnect
from tests.collector.conftest import wait_for
from tests.collector.test_ingest_amqp import amqp_ingest
from tests.collector.test_rabbitmq_failover import Device, node_config
from tests.edge_agent.agent_support import FAST, REPO, AgentProcess, write_agent_toml
from tests.support.rabbitmq import Node, RabbitCluster, available

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not available(), reason="rabbitmq-server is not installed"),
    pytest.mark.timeout(300),
]

QUEUE = "loa.ingest"
V311 = aiomqtt.ProtocolVersion.V311
#: How long the agent stays on QoS 0 subscriptions before trying QoS 1 again.
QOS1_RETRY_S = 3.0


#: A device per login mode, each one whose first address (start_index) is node 1's.
DEVICES: dict[str, str] = dict(
    zip(
        ("password", "cert"),
        (d for d in (f"dev-rq{i}" for i in range(100)) if start_index(d, 3) == 0),
        strict=False,
    )
)
#: The silence test's devices (password mode): one on the node that dies, one elsewhere.
SILENT, SURVIVOR = "dev-191", "dev-192"


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The broker's TLS files, the fleet CA, and client.crt/key for the cert device."""
    out = tmp_path_factory.mktemp("rabbit-agent-tls")
    ca = CertificateAuthority.create("loa-fleet rabbitmq agent test CA")
    install_broker_files(ca, out, ["127.0.0.1", "localhost"])
    ca.issue_device(DEVICES["cert"]).write(out / "client.crt", out / "client.key")
    return out


@pytest.fixture(scope="module")
def cluster_module(
    tmp_path_factory: pytest.TempPathFactory, tls_files: Path
) -> Iterator[RabbitCluster]:
    """Three clustered nodes with the production TLS listener (password and client
    certificate, deploy/rabbitmq), shared by this module's tests (each leaves all
    three running); the collector and the devices."""
    c = RabbitCluster(tmp_path_factory.mktemp("rabbit3"), 3, tls_dir=tls_files, client_certs=True)
    try:
        c.start()
        c.add_user(COLLECTOR_USER, amqp_collector_permissions(QUEUE))
        c.add_cert_device(DEVICES["cert"])
        c.add_device(DEVICES["password"], SILENT, SURVIVOR)
        yield c
    finally:
        c.stop()
    assert c.leftovers() == []


@pytest.fixture
def cluster(cluster_module: RabbitCluster) -> Iterator[RabbitCluster]:
    """The module's cluster, every node running before and after the test."""
    for node in cluster_module.nodes:
        if node.pid is None:
            cluster_module.restart(node)
    yield cluster_module
    for node in cluster_module.nodes:
        if node.pid is None:
            cluster_module.restart(node)


def agent_config(cluster: RabbitCluster, tmp_path: Path, auth: str, tls: Path) -> Path:
    """agent.toml: TLS to all three nodes (node 1 first for this device), FAST times,
    a password file or a client certificate (what provisioning writes)."""
    data: dict[str, dict[str, Any]] = {k: dict(v) for k, v in FAST.items()}
    dev = DEVICES[auth]
    data["device"] = {"id": dev, "commune": "xa-01"}
    if auth == "cert":
        login = {"client_cert": str(tls / "client.crt"), "client_key": str(tls / "client.key")}
    else:
        pw = tmp_path / "mqtt-password"
        pw.write_text(cluster.password(dev) + "\n")
        pw.chmod(0o600)
        login = {"password_file": str(pw)}
    data["broker"] |= login | {
        "urls": [f"mqtts://127.0.0.1:{n.tls_port}" for n in cluster.nodes],
        "ca_file": str(tls / "ca.crt"),
        # RabbitMQ closes a refused SUBSCRIBE's connection without an answer:
        # the agent notices when the SUBACK does not come.
        "publish_timeout_s": 3.0,
        "qos1_retry_s": QOS1_RETRY_S,
    }
    data["outbox"] = {"path": str(tmp_path / "outbox.sqlite"), "resend_after_s": 30.0}
    data["control"] = {"socket": str(tmp_path / "control.sock")}
    return write_agent_toml(tmp_path / "agent.toml", data)


@contextlib.asynccontextmanager
async def collector(
    cluster: RabbitCluster, tmp_path: Path, repo: SQLiteRepository
) -> AsyncIterator[Ingestor]:
    """The AMQP ingest, through node 2 first (the queue's leader), every node in urls."""
    async with amqp_ingest(node_config(cluster, cluster.nodes[1], tmp_path, None), repo) as ing:
        yield ing


async def until(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = await check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.1)


async def status(tmp_path: Path) -> dict[str, Any]:
    try:
        reply = await control.request(tmp_path / "control.sock", "status")
    except OSError:
        return {}
    return dict(reply["result"]) if reply.get("ok") else {}


async def stored(repo: SQLiteRepository, dev: str) -> list[int]:
    rows = await repo._all("SELECT seq FROM messages WHERE device_id = ?", (dev,))
    return [int(r[0]) for r in rows]


async def command_and_reply(cluster: RabbitCluster, via: Node, cid: str, dev: str) -> Reply:
    """Send ``status`` to the device as the collector user through ``via``; its Reply."""
    cmd = Command(
        v=PROTOCOL_VERSION,
        device=dev,
        seq=int(time.time() * 1000),
        ts=time.time(),
        id=cid,
        action="status",
        expires=time.time() + 60,
    )
    async with aiomqtt.Client(
        cluster.host,
        via.mqtt_port,
        username=COLLECTOR_USER,
        password=cluster.password(COLLECTOR_USER),
        identifier=f"loa-collector-cmd-{cid}",
        protocol=V311,
        timeout=10,
    ) as c:
        await c.subscribe(topic(dev, Kind.REPLY), qos=0, timeout=10)
        await c.publish(topic(dev, Kind.CMD), encode(cmd), qos=1, timeout=10)
        async with asyncio.timeout(30):
            async for m in c.messages:
                reply = decode(Kind.REPLY, bytes(m.payload), topic_device=dev)  # type: ignore[arg-type]
                if isinstance(reply, Reply) and reply.id == cid:
                    return reply
    raise AssertionError("no reply")  # pragma: no cover - the timeout raises first


@pytest.mark.parametrize("auth", ["password", "cert"])
async def test_agent_keeps_reporting_when_its_sessions_node_dies(
    cluster: RabbitCluster, tls_files: Path, tmp_path: Path, auth: str
) -> None:
    dev = DEVICES[auth]
    n1, n2, n3 = cluster.nodes
    repo = await SQLiteRepository.open(tmp_path / "collector.db", synchronous="normal")
    await repo.migrate()
    agent = AgentProcess(agent_config(cluster, tmp_path, auth, tls_files), tmp_path / "agent.log")
    try:
        async with collector(cluster, tmp_path, repo):
            with agent:
                # On node 1, QoS 1, and the collector confirming what it stores.
                async def on_node1() -> bool:
                    st = await status(tmp_path)
                    link, ob = st.get("link") or {}, st.get("outbox") or {}
                    return bool(
                        link.get("connected")
                        and link["endpoint"] == f"127.0.0.1:{n1.tls_port}"
                        and link["subscription_qos"] == 1
                        and ob.get("collector_confirms")
                    )

                await until(on_node1, "the agent on node 1, its reports confirmed")
                before = len(await stored(repo, dev))
                assert before > 0

                cluster.kill9(n1)

                async def moved() -> dict[str, Any]:
                    link = (await status(tmp_path)).get("link") or {}
                    elsewhere = link.get("endpoint") != f"127.0.0.1:{n1.tls_port}"
                    ok = link.get("connected") and elsewhere and link["subscription_qos"] == 0
                    return link if ok else {}

                link = await until(moved, "the agent on another node at QoS 0", 90)
                assert link["endpoint"] in {f"127.0.0.1:{n.tls_port}" for n in (n2, n3)}
                assert "QoS 1 subscription refused" in agent.log()
                # The technician's view over SSH says so, in Vietnamese by default.
                shown = await asyncio.to_thread(
                    subprocess.run,
                    [
                        sys.executable,
                        "-m",
                        "edge_agent.cli",
                        "status",
                        "--config",
                        str(agent.config),
                    ],
                    capture_output=True,
                    text=True,
                    timeout=30,
                    env={**os.environ, "NO_COLOR": "1"},
                    cwd=REPO,
                )
                assert "nhận lệnh ở QoS 0" in shown.stdout, shown

                # Reports flow and are confirmed while the session's node is away.
                async def more_stored() -> bool:
                    return len(await stored(repo, dev)) >= before + 5

                await until(more_stored, "reports stored from the other node")

                async def all_confirmed() -> bool:
                    ob = (await status(tmp_path)).get("outbox") or {}
                    return ob.get("depth") == 0 and ob.get("handed") == 0

                await until(all_confirmed, "the outbox confirmed empty at QoS 0")
                # A command reaches it there (a live QoS 0 delivery) and is answered.
                reply = await command_and_reply(cluster, n3, f"on-qos0-{auth}", dev)
                assert reply.ok and reply.result["device"] == dev

                # Node 1 back: after qos1_retry_s the agent holds QoS 1 again.
                await asyncio.to_thread(cluster.restart, n1)

                async def qos1_again() -> bool:
                    link = (await status(tmp_path)).get("link") or {}
                    return bool(link.get("connected") and link.get("subscription_qos") == 1)

                await until(qos1_again, "QoS 1 subscriptions once node 1 is back", 90)
                assert "subscribed at QoS 1 again" in agent.log()
                reply = await command_and_reply(cluster, n2, f"on-qos1-{auth}", dev)
                assert reply.ok
                await until(all_confirmed, "the outbox confirmed empty at the end")
                final = await status(tmp_path)
                assert await asyncio.to_thread(agent.stop) == 0

            # Everything the agent assigned is stored, exactly once (the table's key
            # forbids duplicates; count them anyway). The only gaps allowed are
            # the last-will seqs it reserved at each attempt (logged) and never
            # needed: no will fires when a node dies with the connection.
            box = await Outbox.open(tmp_path / "outbox.sqlite", device=dev, max_bytes=1 << 24)
            try:
                # What it handed last may wait for a confirmation the agent left
                # too soon to see; it stays in the outbox (sent again next time).
                last = box.next_seq - 1
            finally:
                await box.aclose()
            wills = {int(m) for m in re.findall(r"with last will seq (\d+)", agent.log())}
            assert wills

            # The outbox numbers from the clock of its creation; the first
            # reports are queued before the first connection attempt.
            first = min(min(wills), min(await stored(repo, dev)))

            async def all_stored() -> bool:
                seqs = set(await stored(repo, dev))
                return set(range(first, last + 1)) - wills <= seqs

            await until(all_stored, "every seq the agent assigned stored")
            seqs = await stored(repo, dev)
            assert len(seqs) == len(set(seqs))
            assert set(seqs) <= set(range(first, last + 1))
            assert final["link"]["connects"] >= 3  # node 1, another at QoS 0, QoS 1 again
    finally:
        await repo.close()


SILENCE_INVENTORY = [
    InventoryDevice(device_id=d, commune_code="xa-01", commune_name="Sơn Vi", position=i)
    for i, d in enumerate((SILENT, SURVIVOR))
]


async def _close_dead(client: aiomqtt.Client) -> None:
    """Close what is left of a client whose broker node died, as the agent does."""
    with contextlib.suppress(aiomqtt.MqttError, TimeoutError, OSError):
        async with asyncio.timeout(5):
            await client.__aexit__(None, None, None)
    consume_disconnect(client)


async def test_a_device_whose_node_dies_goes_offline_by_the_silence_rule(
    cluster: RabbitCluster, tmp_path: Path
) -> None:
    """A node that dies takes its connections with it and publishes no last will:
    the collector's silence rule marks the device offline, and its status
    history says so (``via`` = silent, not a will). A device on another node
    stays online."""
    n1, _n2, n3 = cluster.nodes
    cfg = node_config(cluster, n3, tmp_path, None)
    repo = await SQLiteRepository.open(tmp_path / "silence.db", synchronous="normal")
    grace_s = 2.0
    try:
        await repo.migrate()
        await repo.upsert_inventory(SILENCE_INVENTORY, remove_missing=False)
        doomed, survivor = Device(cluster, SILENT, [n1]), Device(cluster, SURVIVOR, [n3])

        def presence(dev: str, seq: int, status: PresenceStatus) -> bytes:
            return encode(
                Presence(v=PROTOCOL_VERSION, device=dev, seq=seq, ts=time.time(), status=status)
            )

        async with amqp_ingest(cfg, repo), contextlib.AsyncExitStack() as stack:
            clients = {}
            for d, node in ((doomed, n1), (survivor, n3)):
                c = aiomqtt.Client(
                    cluster.host,
                    node.mqtt_port,
                    username=d.dev,
                    password=cluster.password(d.dev),
                    identifier=d.dev,
                    protocol=V311,
                    clean_session=True,
                    timeout=5,
                    will=aiomqtt.Will(
                        topic(d.dev, Kind.PRESENCE),
                        presence(d.dev, 10**9, PresenceStatus.OFFLINE),
                        qos=1,
                        retain=True,
                    ),
                )
                if d is survivor:
                    clients[d.dev] = await stack.enter_async_context(c)
                else:  # closed by hand after its node dies
                    clients[d.dev] = await c.__aenter__()
                    stack.push_async_callback(_close_dead, c)
                await c.publish(
                    topic(d.dev, Kind.PRESENCE),
                    presence(d.dev, 1, PresenceStatus.ONLINE),
                    qos=1,
                    retain=True,
                )
                await c.publish(topic(d.dev, Kind.STATE), d.payload(2), qos=1)

            async def both_online() -> bool:
                rows = [await repo.get_device(d) for d in (SILENT, SURVIVOR)]
                return all(r.online for r in rows)

            await wait_for(both_online, 30, "both devices online")
            cluster.kill9(n1)  # dev-191's link dies with it

            # dev-192 keeps reporting; the sweep runs as the collector's does.
            seq = 2
            marked: list[str] = []
            deadline = time.monotonic() + 60
            while SILENT not in marked:
                seq += 1
                await clients[SURVIVOR].publish(
                    topic(SURVIVOR, Kind.STATE), survivor.payload(seq), qos=1, timeout=5
                )

                async def stored(s: int = seq) -> bool:
                    return s in await repo.stored_seqs(SURVIVOR)

                await wait_for(stored, 10, f"dev-192 seq {seq} stored")
                marked += await repo.mark_silent_offline(time.time(), grace_s)
                assert time.monotonic() < deadline, "dev-191 never marked silent"
                await asyncio.sleep(0.2)
            assert marked == [SILENT]
            assert not (await repo.get_device(SILENT)).online
            assert (await repo.get_device(SURVIVOR)).online
            # No will came: the device's offline is the silence rule's, in its history.
            assert 10**9 not in await repo.stored_seqs(SILENT)
            last = (await repo.status_history(SILENT))[-1]
            assert not last.state.online and last.via is ObsKind.SILENT
    finally:
        await repo.close()
