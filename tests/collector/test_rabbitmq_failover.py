"""Issue 19: the AMQP ingest survives a collector and the quorum queue's leader killed together.

Three clustered RabbitMQ nodes (tests.support.rabbitmq), two collectors on one
PostgreSQL consuming the ``loa.ingest`` quorum queue over AMQP as competing
consumers -- a ``loa-collector serve`` subprocess connected to a node that
is not the queue's leader, and one in this process connected to the leader's
node, with every node in ``[amqp] urls`` -- and
devices spread over the three nodes publishing real state reports over MQTT
3.1.1 (QoS 1). Mid-stream the subprocess and the leader's node are both
killed with SIGKILL: the in-process collector and the devices on that node
reconnect to another one, the devices
re-publish what was not PUBACKed, the queue elects a new leader among the
two members left, the messages the dead collector held unacknowledged go back
to the survivor. Every seq PUBACKed is stored exactly once, and the B2 equals
that of a single SQLite collector fed the same wire messages.

"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import aiomqtt
import pytest
from aio_pika.abc import AbstractConnection
from yarl import URL

from collector.broker_rabbitmq import COLLECTOR_USER, amqp_collector_permissions
from collector.config import CollectorConfig
from collector.ingest_amqp import declare
from collector.model import InventoryDevice
from collector.store.postgres import PostgresRepository
from collector.store.sqlite import SQLiteRepository
from fleet_protocol import (
    FaultCode,
    Kind,
    encode,
    topic,
)
from fleet_protocol.mqtt_compat import or_disconnect
from tests.collector.conftest import make_config, state, wait_for
from tests.collector.test_ingest_amqp import amqp_ingest
from tests.collector.test_pg_instances import assert_same_b2, replay_into
from tests.support.rabbitmq import Node, RabbitCluster, available, free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not available(), reason="rabbitmq-server is not installed"),
    # Three nodes take ~10-30 s to start and cluster; the leader election and
    # the reconnects a few more.
    pytest.mark.timeout(360),
]

V311 = aiomqtt.ProtocolVersion.V311
QUEUE = "loa.ingest"
DEVICES = ("dev-191", "dev-192", "dev-193", "dev-194")
PER_DEVICE = 600
#: dev-192's SIM fails from this seq on: a broken cluster in the B2.
SIM_FAILS_AT = 100
#: Kill once this many messages are stored: mid-stream, both collectors storing.
KILL_AFTER = 400
METRICS_TOKEN = "failover-metrics-token-0123456789"

INVENTORY = [
    InventoryDevice(device_id=d, commune_code="xa-01", commune_name="Sơn Vi", position=i)
    for i, d in enumerate(DEVICES)
]


@pytest.fixture
def cluster3(tmp_path: Path) -> Iterator[RabbitCluster]:
    """Three clustered nodes; the collector may use the ingest queue; the devices."""
    cluster = RabbitCluster(tmp_path / "rabbit3", 3)
    try:
        t0 = time.monotonic()
        cluster.start()
        took = time.monotonic() - t0
        each = ", ".join(f"{n.started_in:.1f} s" for n in cluster.nodes)
        print(f"\n3 nodes started in {took:.1f} s (each ready in {each})")
        cluster.add_user(COLLECTOR_USER, amqp_collector_permissions(QUEUE))
        cluster.add_device(*DEVICES)  # users are cluster-wide
        yield cluster
    finally:
        cluster.stop()
    assert cluster.leftovers() == []


# --- per-node helpers -------------------------------------------------------------------


def amqp_url(cluster: RabbitCluster, node: Node) -> str:
    return f"amqp://{COLLECTOR_USER}@{cluster.host}:{node.amqp_port}/%2F"


async def collector_connection(cluster: RabbitCluster, node: Node) -> AbstractConnection:
    url = URL(amqp_url(cluster, node)).with_password(cluster.password(COLLECTOR_USER))
    return await aio_pika.connect(url, timeout=10)


def node_config(
    cluster: RabbitCluster, node: Node, tmp_path: Path, pg_url: str | None
) -> CollectorConfig:
    """The in-process collector: PostgreSQL (or the test's SQLite with None), the
    ingest queue through ``node`` first, then the cluster's other nodes (``[amqp] urls``)."""
    return make_config(
        None,
        tmp_path,
        db={"url": pg_url} if pg_url else {},
        ingest={"source": "amqp", "batch_size": 50, "ack_interval_s": 0.2},
        amqp={
            "urls": [
                amqp_url(cluster, n) for n in [node, *(m for m in cluster.nodes if m is not node)]
            ],
            "password": cluster.password(COLLECTOR_USER),
            "queue": QUEUE,
            "prefetch": 100,
            "max_backoff_s": 1.0,
        },
    )


def serve_config(cluster: RabbitCluster, node: Node, pg_url: str, path: Path, port: int) -> Path:
    """The ``loa-collector serve`` subprocess: the same database, the queue through
    ``node``; its /metrics on ``port`` with the token ``METRICS_TOKEN``."""
    token = path.with_name("metrics.token")
    token.write_text(METRICS_TOKEN + "\n", encoding="utf-8")
    path.write_text(
        f'[db]\nurl = "{pg_url}"\n'
        f'[http]\nhost = "127.0.0.1"\nport = {port}\nsecure_cookies = false\n'
        f'metrics_token_file = "{token}"\n'
        '[mqtt]\nclient_id = "loa-collector-failover"\n'
        '[ingest]\nsource = "amqp"\nbatch_size = 50\nack_interval_s = 0.2\n'
        f'[amqp]\nurl = "{amqp_url(cluster, node)}"\n'
        f'password = "{cluster.password(COLLECTOR_USER)}"\nqueue = "{QUEUE}"\n'
        "prefetch = 100\nmax_backoff_s = 1.0\n",
        encoding="utf-8",
    )
    return path


def queue_info(cluster: RabbitCluster, via: Node) -> dict[str, Any]:
    """The ingest queue's leader, members and consumers, as ``via`` reports them."""
    out = cluster.ctl(
        "list_queues", "name", "leader", "members", "consumers", "messages",
        "--formatter", "json", node=via,
    )  # fmt: skip
    for q in json.loads(out):
        if q["name"] == QUEUE:
            return dict(q)
    raise AssertionError(f"no queue {QUEUE} on {via.name}: {out}")


async def queue_state(cluster: RabbitCluster, via: Node) -> tuple[int, int]:
    """(ready messages, consumers) of the ingest queue, asked over AMQP through ``via``."""
    conn = await collector_connection(cluster, via)
    async with conn:
        channel = await conn.channel()
        q = await channel.declare_queue(QUEUE, passive=True, timeout=10)
        res = q.declaration_result
        return res.message_count or 0, res.consumer_count or 0


async def ingest_metrics(port: int) -> dict[str, float]:
    """The collector's ``loa_ingest_*`` counters from its /metrics ({} if it does not answer)."""
    url = f"http://127.0.0.1:{port}/metrics"
    headers = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    try:
        async with aiohttp.ClientSession() as s, s.get(url, headers=headers) as r:
            text = await r.text()
    except (aiohttp.ClientError, OSError):
        return {}
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith("loa_ingest_") and value:
            with contextlib.suppress(ValueError):
                out[name.removeprefix("loa_ingest_")] = float(value)
    return out


async def stored_pairs(repo: SQLiteRepository) -> list[tuple[str, int]]:
    rows = await repo._all("SELECT device_id, seq FROM messages WHERE seq >= 0")
    return [(str(r[0]), int(r[1])) for r in rows]


# --- devices ----------------------------------------------------------------------------


class Device:
    """A device publishing seqs 1..n over MQTT QoS 1, one at a time.

    ``sent`` holds every seq the broker PUBACKed, in order. When its node goes
    away (or a PUBACK does not come), the device connects to the next node of
    ``nodes`` and publishes the seq it was waiting for again, with the same
    payload: its outbox keeps a report until it is acknowledged. A seq the
    broker took but whose PUBACK was lost is thus sent twice; the collector's
    (device, seq) dedupe drops the second.
    """

    def __init__(self, cluster: RabbitCluster, dev: str, nodes: list[Node]) -> None:
        self.cluster, self.dev, self.nodes = cluster, dev, nodes
        self.sent: list[int] = []
        self.reconnects = 0
        self.republished = 0
        self.on: Node | None = None
        self.visited: list[str] = []
        self._payloads: dict[int, bytes] = {}

    def payload(self, seq: int) -> bytes:
        if seq not in self._payloads:
            faults = (
                (FaultCode.SIM_FAILURE,) if self.dev == "dev-192" and seq >= SIM_FAILS_AT else ()
            )
            self._payloads[seq] = encode(state(self.dev, seq, commune="xa-01", faults=faults))
        return self._payloads[seq]

    def client(self, node: Node) -> aiomqtt.Client:
        return aiomqtt.Client(
            self.cluster.host,
            node.mqtt_port,
            username=self.dev,
            password=self.cluster.password(self.dev),
            identifier=self.dev,  # the agent's client id is its device id
            protocol=V311,
            clean_session=True,
            timeout=5,
        )

    async def run(self, n: int, pause_s: float) -> None:
        t = topic(self.dev, Kind.STATE)
        seq, attempt = 1, 0
        while seq <= n:
            node = self.nodes[attempt % len(self.nodes)]
            try:
                async with self.client(node) as c:
                    self.on = node
                    self.visited.append(node.name)
                    while seq <= n:
                        await or_disconnect(c, c.publish(t, self.payload(seq), qos=1, timeout=5))
                        self.sent.append(seq)  # PUBACKed: the broker has it
                        seq += 1
                        await asyncio.sleep(pause_s)
            except aiomqtt.MqttError:
                self.on = None
                attempt += 1
                self.reconnects += 1
                if seq <= n:
                    self.republished += 1
                await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def publishing(
    devices: list[Device], n: int, pause_s: float
) -> AsyncIterator[asyncio.Task[None]]:
    async def all_devices() -> None:
        async with asyncio.TaskGroup() as tg:
            for d in devices:
                tg.create_task(d.run(n, pause_s), name=f"device {d.dev}")

    task = asyncio.create_task(all_devices(), name="devices")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# --- the test ---------------------------------------------------------------------------


async def test_three_nodes_two_collectors_on_postgres_survive_a_collector_and_the_queue_leader_killed(  # noqa: E501
    cluster3: RabbitCluster, tmp_path: Path, pg_url: str
) -> None:
    t_test = time.monotonic()
    cluster = cluster3
    # The queue is declared as the collectors declare it; a quorum queue's
    # members are every node, its first leader normally the declaring one's.
    conn = await collector_connection(cluster, cluster.nodes[0])
    async with conn:
        cfg0 = node_config(cluster, cluster.nodes[0], tmp_path, pg_url)
        await declare(await conn.channel(), cfg0.amqp)
    info = await asyncio.to_thread(queue_info, cluster, cluster.nodes[0])
    by_name = {n.name: n for n in cluster.nodes}
    assert sorted(info["members"]) == sorted(by_name), info
    leader = by_name[str(info["leader"])]
    survivor_node = next(n for n in cluster.nodes if n is not leader)
    print(f"queue leader {leader.name}; survivor collector on {survivor_node.name}")

    pg = await PostgresRepository.open(pg_url)
    single = await SQLiteRepository.open(tmp_path / "single.db", synchronous="normal")
    proc: asyncio.subprocess.Process | None = None
    try:
        await single.migrate()
        for r in (pg, single):
            await r.upsert_inventory(INVENTORY, remove_missing=False)

        port = free_port()
        conf = serve_config(cluster, survivor_node, pg_url, tmp_path / "serve.toml", port)
        with (tmp_path / "serve.log").open("ab") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "collector.cli", "serve", "--config", str(conf),
                stdout=asyncio.subprocess.DEVNULL, stderr=err,
            )  # fmt: skip
        # The survivor sits on the node about to die: it must move to another.
        cfg = node_config(cluster, leader, tmp_path, pg_url)
        async with amqp_ingest(cfg, pg) as ing:

            async def two_consumers() -> bool:
                return (await queue_state(cluster, survivor_node))[1] == 2

            await wait_for(two_consumers, 60, "both collectors consuming")
            # Device i's home is node i mod 3; on losing it, the next ones.
            devices = [
                Device(cluster, d, [*cluster.nodes[i % 3 :], *cluster.nodes[: i % 3]])
                for i, d in enumerate(DEVICES)
            ]
            on_leader = [d.dev for d in devices if d.nodes[0] is leader]
            t_stream = time.monotonic()
            async with publishing(devices, PER_DEVICE, 0.003) as stream:

                async def some_stored() -> bool:
                    return await pg.message_count() >= KILL_AFTER

                await wait_for(some_stored, 60, f"{KILL_AFTER} messages stored")
                sent_at_kill = sum(len(d.sent) for d in devices)
                stored_at_kill = await pg.message_count()
                # What the doomed collector has taken and how much of it handled
                # (stored and acked): the rest goes back to the queue, to the survivor.
                doomed = await ingest_metrics(port)
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
                await asyncio.to_thread(cluster.kill9, leader)
                t_kill = time.monotonic()
                await asyncio.wait_for(asyncio.shield(stream), 180)
            t_sent = time.monotonic()
            sent = {(d.dev, s) for d in devices for s in d.sent}

            async def all_stored() -> bool:
                return set(await stored_pairs(pg)) >= sent

            await wait_for(all_stored, 120, f"all {len(sent)} sent seqs stored")
            t_stored = time.monotonic()
            new_info = await asyncio.to_thread(queue_info, cluster, survivor_node)
            stats = ing.stats
        pairs = await stored_pairs(pg)

        total = len(DEVICES) * PER_DEVICE
        print(
            f"killed the collector and {leader.name} (devices homed there: {on_leader}) "
            f"with {sent_at_kill} of {total} sent, {stored_at_kill} stored; "
            f"new leader {new_info['leader']}; the killed collector had received "
            f"{doomed.get('received_total', 0):.0f}, handled {doomed.get('handled_total', 0):.0f} "
            f"(its last /metrics, a moment before the kill), stored "
            f"{len(pairs) - stats.stored} in all\n"
            f"sent {len(sent)}, stored {len(pairs)}; survivor stored {stats.stored}, "
            f"dropped {stats.duplicates} duplicates (redeliveries and re-publishes), "
            f"{stats.connects} AMQP session(s); device reconnects "
            f"{ {d.dev: d.reconnects for d in devices} }, re-published "
            f"{sum(d.republished for d in devices)}\n"
            f"stream {t_kill - t_stream:.1f} s to the kill, {t_sent - t_kill:.1f} s more to "
            f"the last PUBACK, all stored {t_stored - t_sent:.1f} s later"
        )
        assert sent_at_kill < total, "the kill must land mid-stream"
        for d in devices:
            assert d.sent == list(range(1, PER_DEVICE + 1)), d.dev
        # Devices that were on the killed node carried on elsewhere.
        for d in devices:
            if d.dev in on_leader:
                assert d.reconnects >= 1 and d.visited[-1] != leader.name, d.visited
        # Every PUBACKed seq stored, exactly once, nothing else (the key forbids
        # duplicates; the count shows none slipped past it).
        assert len(pairs) == len(set(pairs))
        assert set(pairs) == sent
        # Both collectors stored some: the dead one before the kill, the
        # survivor the rest, what the dead one held unacknowledged included.
        assert 0 < stats.stored < len(sent)
        # The survivor lost its node with the leader and consumed on through another.
        assert stats.connects >= 2, stats.connects
        # The queue lives on with the two members left, under a new leader.
        assert new_info["leader"] != leader.name and new_info["leader"] in by_name, new_info

        async def drained() -> bool:
            # Nothing left to deliver. (The consumer count is not checked: a quorum
            # queue keeps a consumer whose node died as "suspected down" until that
            # node is back or forgotten, and the survivor's first one was there.)
            return (await queue_state(cluster, survivor_node))[0] == 0

        await wait_for(drained, 20, "the queue empty")

        # The same wire messages into one SQLite collector: the same B2.
        replayed = await replay_into(single, pg)
        assert replayed == len(sent)
        await assert_same_b2(pg, single, "dev-192")
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        await pg.close()
        await single.close()
    print(f"test body {time.monotonic() - t_test:.1f} s")
