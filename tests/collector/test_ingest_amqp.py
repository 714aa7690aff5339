"""The AMQP ingest source against a real RabbitMQ node, devices speaking MQTT 3.1.1.

A throwaway node from deploy/rabbitmq's config (tests.support.rabbitmq),
devices with their own users and permissions publishing through the MQTT
plugin (aiomqtt, as the agent does), the collector consuming the quorum queue
over AMQP (aio-pika) into a real SQLite store -- in this process, and as a
``loa-collector serve`` subprocess that is killed with SIGKILL mid-stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import aiomqtt
import pytest
from aio_pika.abc import AbstractConnection
from yarl import URL

from collector.broker_rabbitmq import COLLECTOR_USER, amqp_collector_permissions
from collector.config import CollectorConfig, ConfigError, DbConfig, config_from_dict
from collector.ingest import Ingestor
from collector.ingest_amqp import (
    _AckWindow,
    declare,
    mqtt_topic,
    routing_keys,
    run_ingest_amqp,
)
from collector.metrics import IngestStats
from collector.store.sqlite import SQLiteRepository
from fleet_protocol import Kind, encode, topic
from tests.collector.conftest import make_config, state, wait_for
from tests.support.rabbitmq import RabbitCluster, available

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not available(), reason="rabbitmq-server is not installed"),
]

V311 = aiomqtt.ProtocolVersion.V311
QUEUE = "loa.ingest"
DEVICES = ("dev-1", "dev-2", "dev-3")


@pytest.fixture(scope="module")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitCluster]:
    """One node; the collector may use the ingest queue; three devices."""
    cluster = RabbitCluster(tmp_path_factory.mktemp("rabbit-amqp"), 1)
    cluster.start()
    try:
        cluster.add_user(COLLECTOR_USER, amqp_collector_permissions(QUEUE))
        cluster.add_device(*DEVICES)
        yield cluster
    finally:
        cluster.stop()
    assert cluster.leftovers() == []


def amqp_url(rabbit: RabbitCluster) -> str:
    return f"amqp://{COLLECTOR_USER}@{rabbit.host}:{rabbit.nodes[0].amqp_port}/%2F"


async def collector_connection(rabbit: RabbitCluster) -> AbstractConnection:
    url = URL(amqp_url(rabbit)).with_password(rabbit.password(COLLECTOR_USER))
    return await aio_pika.connect(url, timeout=10)


@pytest.fixture
async def fresh_queue(rabbit: RabbitCluster) -> AsyncIterator[None]:
    """Each test starts without the ingest queue and leaves none behind."""
    yield
    conn = await collector_connection(rabbit)
    async with conn:
        channel = await conn.channel()
        await channel.queue_delete(QUEUE, timeout=10)


def amqp_config(
    rabbit: RabbitCluster, tmp_path: Path, *, prefetch: int = 0, **ingest: Any
) -> CollectorConfig:
    return make_config(
        None,
        tmp_path,
        ingest={"source": "amqp", "batch_size": 50, "ack_interval_s": 0.2, **ingest},
        amqp={
            "url": amqp_url(rabbit),
            "password": rabbit.password(COLLECTOR_USER),
            "queue": QUEUE,
            "prefetch": prefetch,
            "max_backoff_s": 1.0,
        },
    )


@contextlib.asynccontextmanager
async def amqp_ingest(cfg: CollectorConfig, repo: SQLiteRepository) -> AsyncIterator[Ingestor]:
    """The real AMQP ingest loop in a task, consuming; cancelled at exit."""
    ingestor = Ingestor(repo, cfg.ingest, IngestStats())
    connected = asyncio.Event()
    task = asyncio.create_task(run_ingest_amqp(cfg, ingestor, connected=connected), name="ingest")
    try:
        await asyncio.wait_for(connected.wait(), 20)
        yield ingestor
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def device(rabbit: RabbitCluster, dev: str, **kw: Any) -> aiomqtt.Client:
    return aiomqtt.Client(
        rabbit.host,
        rabbit.nodes[0].mqtt_port,
        username=dev,
        password=rabbit.password(dev),
        identifier=dev,  # the agent's client id is its device id (its permissions say so)
        protocol=V311,
        timeout=10,
        **kw,
    )


async def stored_seqs(repo: SQLiteRepository, dev: str) -> list[int]:
    """Every stored seq of ``dev``, duplicates included (the key forbids them)."""
    rows = await repo._all("SELECT seq FROM messages WHERE device_id = ?", (dev,))
    return [int(r[0]) for r in rows]


async def queue_state(rabbit: RabbitCluster) -> tuple[int, int]:
    """(ready messages, consumers) of the ingest queue."""
    conn = await collector_connection(rabbit)
    async with conn:
        channel = await conn.channel()
        q = await channel.declare_queue(QUEUE, passive=True, timeout=10)
        res = q.declaration_result
        return res.message_count or 0, res.consumer_count or 0


def queue_drained(rabbit: RabbitCluster) -> Callable[[], Awaitable[bool]]:
    """A check: nothing left in the queue and nobody consuming it.

    Polled, not asserted once: a quorum queue settles acks through its Raft
    log, so another connection may briefly still count an acked message.
    """

    async def check() -> bool:
        return await queue_state(rabbit) == (0, 0)

    return check


# --- pure parts ---------------------------------------------------------------------------


def test_routing_keys_are_the_mqtt_filters_dotted() -> None:
    assert routing_keys() == [
        "loa.v1.*.state",
        "loa.v1.*.event",
        "loa.v1.*.presence",
        "loa.v1.*.cmd.reply",
    ]
    assert mqtt_topic("loa.v1.dev-1.cmd.reply") == "loa/v1/dev-1/cmd/reply"


def test_ack_window_never_covers_a_gap() -> None:
    w = _AckWindow()
    assert w.handled([2, 3]) is None  # 1 is still pending
    assert w.handled([1]) == 3
    assert w.handled([4]) == 4
    assert w.handled([]) is None


def test_amqp_config_is_validated_naming_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[ingest\] source"):
        config_from_dict({"ingest": {"source": "kafka"}})
    with pytest.raises(ConfigError, match=r"\[amqp\] url"):
        config_from_dict({"amqp": {"url": "http://x"}})
    with pytest.raises(ConfigError, match=r"\[amqp\] url: put the password"):
        config_from_dict({"amqp": {"url": "amqp://u:secret@h/%2F"}})
    with pytest.raises(ConfigError, match=r"\[amqp\] prefetch"):
        config_from_dict({"amqp": {"prefetch": -1}})
    cfg = config_from_dict({"ingest": {"source": "amqp"}})
    assert cfg.amqp.queue == "loa.ingest" and cfg.ingest.source == "amqp"


# --- against RabbitMQ ---------------------------------------------------------------------


@pytest.mark.usefixtures("fresh_queue")
async def test_messages_stored_duplicates_dropped_hostile_rejected(
    rabbit: RabbitCluster, tmp_path: Path, repo: SQLiteRepository
) -> None:
    cfg = amqp_config(rabbit, tmp_path)
    t = topic("dev-1", Kind.STATE)
    async with amqp_ingest(cfg, repo) as ing:
        async with device(rabbit, "dev-1", clean_session=True) as dev:
            first = [encode(state("dev-1", seq)) for seq in (1, 2, 3)]
            for payload in first:
                await dev.publish(t, payload, qos=1)
            await dev.publish(t, first[1], qos=1)  # a duplicate: seq 2 re-sent
            await dev.publish(t, b"{not json", qos=1)
            await dev.publish(t, b"[" * 5000 + b"]" * 5000, qos=1)  # nested deep
            await dev.publish(t, encode(state("dev-2", 9)), qos=1)  # another device's
            for seq in (4, 5):  # ingest goes on after them
                await dev.publish(t, encode(state("dev-1", seq)), qos=1)

        async def all_handled() -> bool:
            return ing.stats.handled >= 9

        await wait_for(all_handled, 20, "nine messages handled")
        assert ing.stats.stored == 5
        assert ing.stats.duplicates == 1
        assert sum(ing.stats.rejected.values()) == 3
    assert sorted(await stored_seqs(repo, "dev-1")) == [1, 2, 3, 4, 5]
    # Everything acked, rejected ones included.
    await wait_for(queue_drained(rabbit), 10, "the queue empty, no consumer left")


@pytest.mark.usefixtures("fresh_queue")
async def test_device_receives_its_store_confirmation_over_mqtt(
    rabbit: RabbitCluster, tmp_path: Path, repo: SQLiteRepository
) -> None:
    cfg = amqp_config(rabbit, tmp_path)
    async with amqp_ingest(cfg, repo), device(rabbit, "dev-2", clean_session=True) as dev:
        await dev.subscribe(topic("dev-2", Kind.ACK), qos=1)
        for seq in (1, 2, 3):
            await dev.publish(topic("dev-2", Kind.STATE), encode(state("dev-2", seq)), qos=1)
        stored: set[int] = set()
        async with asyncio.timeout(20):
            async for m in dev.messages:
                assert str(m.topic) == "loa/v1/dev-2/ack"
                ack = json.loads(bytes(m.payload))  # type: ignore[arg-type]
                assert ack["device"] == "dev-2"
                for r in ack["stored"]:
                    stored.update(range(r[0], r[1] + 1) if isinstance(r, list) else [r])
                if stored >= {1, 2, 3}:
                    break
    assert stored == {1, 2, 3}


@pytest.mark.usefixtures("fresh_queue")
async def test_ingest_comes_back_after_the_queue_or_connection_is_lost(
    rabbit: RabbitCluster, tmp_path: Path, repo: SQLiteRepository
) -> None:
    cfg = amqp_config(rabbit, tmp_path)

    async def send_and_wait(seq: int) -> None:
        async with device(rabbit, "dev-1", clean_session=True) as dev:
            await dev.publish(topic("dev-1", Kind.STATE), encode(state("dev-1", seq)), qos=1)

        async def stored() -> bool:
            return seq in await stored_seqs(repo, "dev-1")

        await wait_for(stored, 20, f"seq {seq} stored")

    async with amqp_ingest(cfg, repo) as ing:
        await send_and_wait(1)
        # Deleting the queue cancels our consumer: the session ends, the next
        # one declares and binds the queue again.
        conn = await collector_connection(rabbit)
        async with conn:
            await (await conn.channel()).queue_delete(QUEUE, timeout=10)

        def reconnected(n: int) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                return ing.stats.connects >= n and ing.stats.connected

            return check

        await wait_for(reconnected(2), 30, "a new session after the queue was deleted")
        await send_and_wait(2)
        await asyncio.to_thread(rabbit.ctl, "close_all_connections", "test")
        await wait_for(reconnected(3), 30, "reconnected after the broker closed us")
        await send_and_wait(3)
    assert sorted(await stored_seqs(repo, "dev-1")) == [1, 2, 3]


def _serve_config(rabbit: RabbitCluster, db: DbConfig, path: Path) -> None:
    path.write_text(
        f'[db]\npath = "{db.path}"\nurl = "{db.url}"\nsynchronous = "normal"\n'
        '[http]\nhost = "127.0.0.1"\nport = 0\nsecure_cookies = false\n'
        '[mqtt]\nclient_id = "loa-collector-killed"\n'
        '[ingest]\nsource = "amqp"\nbatch_size = 50\n'
        f'[amqp]\nurl = "{amqp_url(rabbit)}"\n'
        f'password = "{rabbit.password(COLLECTOR_USER)}"\nqueue = "{QUEUE}"\n'
        "prefetch = 100\nmax_backoff_s = 1.0\n",
        encoding="utf-8",
    )


@pytest.mark.usefixtures("fresh_queue")
async def test_competing_consumers_one_killed_every_seq_stored_once(
    rabbit: RabbitCluster, tmp_path: Path, repo: SQLiteRepository
) -> None:
    n = 2000
    conf = tmp_path / "serve.toml"
    cfg = amqp_config(rabbit, tmp_path, ack_interval_s=1800.0, prefetch=100)
    _serve_config(rabbit, cfg.db, conf)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "collector.cli", "serve", "--config", str(conf),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with amqp_ingest(cfg, repo) as ing:

            async def two_consumers() -> bool:
                return (await queue_state(rabbit))[1] == 2

            await wait_for(two_consumers, 60, "both collectors consuming")
            sent: list[int] = []

            async def publish_all() -> None:
                async with device(rabbit, "dev-3", clean_session=True) as dev:
                    for seq in range(1, n + 1):
                        await dev.publish(
                            topic("dev-3", Kind.STATE), encode(state("dev-3", seq)), qos=1
                        )
                        sent.append(seq)  # PUBACKed: the broker has it

            publisher = asyncio.create_task(publish_all(), name="publisher")
            try:

                async def both_stored() -> bool:
                    # Kill only once the other process has committed some of its
                    # share too (what is stored beyond what this one stored):
                    # the queue's round robin does not promise when it starts.
                    stored = len(await stored_seqs(repo, "dev-3"))
                    return stored >= 300 and stored > ing.stats.stored

                await wait_for(both_stored, 60, "300 seqs stored, some by each collector")
                killed_at = len(sent)
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
                await asyncio.wait_for(publisher, 120)
            finally:
                publisher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await publisher

            async def all_stored() -> bool:
                return len(await stored_seqs(repo, "dev-3")) >= len(sent)

            await wait_for(all_stored, 60, f"all {n} seqs stored")
            in_process = ing.stats.stored
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    print(f"\nkilled after {killed_at} of {n} published; survivor stored {in_process}")
    assert killed_at < n, "the kill must land mid-stream"
    seqs = await stored_seqs(repo, "dev-3")
    assert sent == list(range(1, n + 1))
    assert sorted(seqs) == sent  # every seq, exactly once
    # The killed collector had stored some; the survivor stored the rest,
    # including what the killed one had been handed but not acknowledged.
    assert 0 < in_process < n
    await wait_for(queue_drained(rabbit), 10, "the queue empty, no consumer left")


def _depths(rabbit: RabbitCluster) -> dict[str, int]:
    out = rabbit.ctl("list_queues", "name", "messages", "--formatter", "json")
    return {q["name"]: int(q["messages"]) for q in json.loads(out)}


@pytest.mark.usefixtures("fresh_queue")
async def test_a_message_no_collector_survives_is_parked_after_the_delivery_limit(
    rabbit: RabbitCluster, tmp_path: Path, repo: SQLiteRepository
) -> None:
    """deploy/rabbitmq/definitions.json's ``loa-ingest-amqp`` policy: a message
    handed back to the queue 20 times (each time a collector died holding it, or
    gave it back) is moved to ``loa.dropped``, where it is counted and kept,
    instead of taking every collector down in turn forever. The rest flows."""
    cfg = amqp_config(rabbit, tmp_path)
    dropped_before = (await asyncio.to_thread(_depths, rabbit)).get("loa.dropped", 0)
    conn = await collector_connection(rabbit)
    async with conn:
        channel = await conn.channel()
        queue = await declare(channel, cfg.amqp)  # what every collector declares
        async with device(rabbit, "dev-2", clean_session=True) as dev:
            await dev.publish(topic("dev-2", Kind.STATE), encode(state("dev-2", 1)), qos=1)
        deliveries = 0
        while deliveries < 100:
            msg = await queue.get(no_ack=False, fail=False, timeout=10)
            if msg is None:
                break
            deliveries += 1
            await msg.nack(requeue=True)  # as a collector dying with it unacknowledged
    assert 20 <= deliveries <= 21, deliveries

    async def parked() -> bool:
        d = await asyncio.to_thread(_depths, rabbit)
        return d.get("loa.dropped", 0) == dropped_before + 1 and d.get(QUEUE) == 0

    await wait_for(parked, 20, "the message in loa.dropped, the ingest queue empty")
    # The next message from the same device is stored as usual.
    async with amqp_ingest(cfg, repo):
        async with device(rabbit, "dev-2", clean_session=True) as dev:
            await dev.publish(topic("dev-2", Kind.STATE), encode(state("dev-2", 2)), qos=1)

        async def stored() -> bool:
            return await stored_seqs(repo, "dev-2") == [2]

        await wait_for(stored, 20, "the next message stored")


def test_the_collector_user_may_use_both_ingest_queues() -> None:
    """``rabbitmq-user --collector`` grants the AMQP ingest queue besides the MQTT
    session queue, and nothing else."""
    import re

    from collector.broker_rabbitmq import COLLECTOR_PERMISSIONS

    p = amqp_collector_permissions("loa.ingest")
    for pattern in (p.configure, p.read):
        assert re.fullmatch(pattern, "loa.ingest")
        assert not re.fullmatch(pattern, "loa.ingestX") and not re.fullmatch(pattern, "other")
    for queue in ("loa.ingest", "amq.topic"):
        assert re.fullmatch(p.write, queue)
    assert re.fullmatch(COLLECTOR_PERMISSIONS.configure, "loa.ingest") is None
    assert (p.topic_read, p.topic_write) == (
        COLLECTOR_PERMISSIONS.topic_read,
        COLLECTOR_PERMISSIONS.topic_write,
    )
