"""AMQP ingest: collectors as competing consumers of one RabbitMQ quorum queue.

``[ingest] source = "amqp"``. Devices still speak MQTT to RabbitMQ's MQTT
plugin, which routes topic ``loa/v1/dev-1/state`` to ``amq.topic`` with routing
key ``loa.v1.dev-1.state``. Instead of an MQTT session (one per collector, on
one node, and no shared subscriptions in 3.10), every collector instance
consumes the same durable **quorum** queue (``[amqp] queue``, default
``loa.ingest``) bound to the fleet's routing keys: the queue is replicated on
a majority of nodes and each message goes to one consumer, so instances split
the load and survive each other.

Everything after decoding is the MQTT source's (``collector.ingest``): the
routing key is turned back into the MQTT topic and handed to
``Ingestor.prepare``; batches are written with the same retry
(``store_prepared``) and confirmed with the same loop
(``publish_confirmations``).

Acknowledgement only after the commit: a batch is acked (``multiple``, up to
the highest delivery tag whose predecessors are all handled) once its
transaction committed, rejected messages included (counted, as MQTT does). A
collector killed mid-batch leaves its unacked messages to the broker, which
delivers them to another consumer; the (device, seq) dedupe drops whatever
had already been written.

Client: aio-pika, the maintained asyncio AMQP 0-9-1 client (on aiormq), with
publisher confirms and typed queue/exchange objects. Its ``connect_robust``
re-declares and re-consumes by itself after a drop; we use a plain connection
and reconnect here instead, with the same jittered backoff and log-once as
the MQTT source, so one connection's delivery tags never mix with the next
one's and a broken link ends every task of that connection together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Iterable

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
)
from pamqp.common import FieldTable
from yarl import URL

from collector.broker_rabbitmq import EXCHANGE
from collector.config import AmqpConfig, CollectorConfig
from collector.ingest import Ingestor, publish_confirmations, reconnect_delay, store_prepared
from fleet_protocol import Ack, Kind, encode, subscriptions

log = logging.getLogger("loa.collector.ingest")


class AmqpLinkLost(ConnectionError):
    """The broker closed our connection or channel; the message names the endpoint."""


def routing_keys() -> list[str]:
    """The routing keys the ingest queue is bound with: the MQTT source's filters, dotted."""
    return [f.replace("/", ".").replace("+", "*") for f in subscriptions()]


def mqtt_topic(routing_key: str) -> str:
    """The MQTT topic of a routing key (``loa.v1.dev-1.cmd.reply`` -> ``loa/v1/dev-1/cmd/reply``).

    Device ids never contain dots (``fleet_protocol.DEVICE_ID_RE``), so every
    dot was a slash; anything else fails ``parse_topic`` and is rejected.
    """
    return routing_key.replace(".", "/")


def queue_arguments(cfg: AmqpConfig) -> FieldTable:
    """The ingest queue's arguments. A queue's arguments are fixed at declaration:
    every instance declares it with these, so changing them needs the queue
    deleted (and drained) first, or the broker refuses the declaration.

    Length limit with ``reject-publish``, as the ``loa-ingest`` policy sets for
    the MQTT collector's queue (deploy/rabbitmq/definitions.json): when full, a
    device's publish is refused and stays in its outbox; nothing is dropped.
    """
    return {
        "x-queue-type": "quorum",
        "x-max-length": cfg.max_length,
        "x-overflow": "reject-publish",
    }


class _AckWindow:
    """Which deliveries may be acked with one ``multiple`` ack.

    Delivery tags on a channel count 1, 2, 3 ... in delivery order. A tag is
    acked only once it and every tag before it were handled, so a multiple
    ack never covers a message still waiting in the inbox.
    """

    def __init__(self) -> None:
        self._next = 1
        self._done: set[int] = set()

    def handled(self, tags: Iterable[int]) -> int | None:
        """Mark ``tags`` handled; the highest tag now safe to ack (None: nothing new)."""
        self._done.update(tags)
        top = None
        while self._next in self._done:
            self._done.discard(self._next)
            top = self._next
            self._next += 1
        return top


def _url(cfg: AmqpConfig, node: str) -> URL:
    url = URL(node)
    password = cfg.resolved_password()
    return url.with_password(password) if password else url


def endpoint(node: str) -> str:
    """A broker URL as logged: never with a password."""
    return str(URL(node).with_password(None))


async def declare(channel: AbstractChannel, cfg: AmqpConfig) -> AbstractQueue:
    """Declare the durable quorum ingest queue and bind it to the fleet's routing keys."""
    queue = await channel.declare_queue(
        cfg.queue, durable=True, arguments=queue_arguments(cfg), timeout=cfg.timeout_s
    )
    for key in routing_keys():
        await queue.bind(EXCHANGE, routing_key=key, timeout=cfg.timeout_s)
    return queue


async def run_ingest_amqp(
    cfg: CollectorConfig,
    ingestor: Ingestor,
    *,
    connected: asyncio.Event | None = None,
) -> None:
    """Consume the ingest queue forever, reconnecting with jittered backoff; cancel to stop."""
    attempt = 0
    failing = False
    nodes = cfg.amqp.nodes
    turn = 0  # the node of this connection: the next one after each loss
    where = endpoint(nodes[0])

    def up() -> None:
        nonlocal attempt, failing
        ingestor.stats.connected = True
        ingestor.stats.connects += 1
        log.info(
            "broker %s: %s, consuming %s bound to %s",
            where,
            "connected again" if failing else "connected",
            cfg.amqp.queue,
            routing_keys(),
        )
        attempt, failing = 0, False
        if connected is not None:
            connected.set()

    while True:
        node = nodes[turn % len(nodes)]
        where = endpoint(node)
        try:
            await _session(cfg, ingestor, up, node)
        # ChannelInvalidStateError: an ack or publish raced the link's loss.
        except* (
            aiormq.exceptions.AMQPError,
            aiormq.exceptions.ChannelInvalidStateError,
            OSError,
            TimeoutError,
        ) as group:
            exc = group.exceptions[0]
            ingestor.stats.connected = False
            if connected is not None:
                connected.clear()
            if not failing:
                log.warning("broker %s: %r; reconnecting with backoff", where, exc)
                failing = True
            attempt += 1
            turn += 1
            await asyncio.sleep(reconnect_delay(attempt, cfg.amqp.max_backoff_s))
        finally:
            ingestor.stats.connected = False


async def _session(
    cfg: CollectorConfig, ingestor: Ingestor, up: Callable[[], None], node: str
) -> None:
    """One connection to ``node``: declare, consume and confirm until the link breaks."""
    a = cfg.amqp
    tls = None
    if node.startswith("amqps://"):
        tls = ssl.create_default_context(cafile=a.ca_file or None)
    connection = await aio_pika.connect(
        _url(a, node),
        ssl_context=tls,
        timeout=a.timeout_s,
        client_properties={"connection_name": f"loa-collector ingest ({cfg.mqtt.client_id})"},
    )
    async with connection:
        # Publisher confirms: an Ack counts as sent only once the broker has it.
        channel = await connection.channel(publisher_confirms=True)
        batch_size = cfg.ingest.batch_size
        await channel.set_qos(prefetch_count=a.prefetch or 2 * batch_size, timeout=a.timeout_s)
        queue = await declare(channel, a)
        exchange = await channel.get_exchange(EXCHANGE, ensure=False)
        # Bounded by the prefetch: the broker sends no more than that unacked.
        inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()

        async def deliver(message: AbstractIncomingMessage) -> None:
            inbox.put_nowait(message)

        tag = await queue.consume(deliver, no_ack=False, timeout=a.timeout_s)
        up()

        async def publish(ack: Ack) -> None:
            await exchange.publish(
                aio_pika.Message(encode(ack), delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                # The MQTT plugin delivers it to the device's loa/v1/<id>/ack
                # subscription. Not mandatory: an agent without a session simply
                # gets none, as with MQTT (it re-sends, docs/protocol.md).
                routing_key=f"loa.v1.{ack.device}.{Kind.ACK.value}",
                mandatory=False,
                timeout=a.timeout_s,
            )

        async with asyncio.TaskGroup() as tg:
            underlay = await channel.get_underlay_channel()

            async def ack(delivery_tag: int) -> None:
                await underlay.basic_ack(delivery_tag, multiple=True)

            tg.create_task(_consume(inbox, ingestor, batch_size, ack), name="ingest.consume")
            tg.create_task(
                publish_confirmations(
                    publish, ingestor.confirmations, cfg.ingest.ack_interval_s, ingestor.stats
                ),
                name="ingest.confirm",
            )
            tg.create_task(
                _watch(connection, channel, tag, endpoint(node), min(5.0, a.timeout_s)),
                name="ingest.link",
            )


async def _watch(
    connection: AbstractConnection,
    channel: AbstractChannel,
    consumer_tag: str,
    where: str,
    every_s: float,
) -> None:
    """Raise AmqpLinkLost once the connection or channel closes, or our consumer is gone.

    The broker cancels a consumer (basic.cancel) when its queue is deleted;
    aiormq then just forgets it, and nothing more would ever be delivered.
    So the consumer is looked for every ``every_s``: once gone, the session
    ends and the next one declares the queue again.
    """
    lost = asyncio.Event()
    why: list[BaseException | None] = []

    def closed(_sender: object, exc: BaseException | None = None) -> None:
        why.append(exc)
        lost.set()

    connection.close_callbacks.add(closed)
    channel.close_callbacks.add(closed)
    underlay = await channel.get_underlay_channel()
    while not (connection.is_closed or channel.is_closed):
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(every_s):
                await lost.wait()
        # aiormq.Channel.consumers: the consumers it still dispatches to.
        consumers = getattr(underlay, "consumers", None)
        if consumers is not None and consumer_tag not in consumers and not lost.is_set():
            raise AmqpLinkLost(f"broker {where}: the broker cancelled our consumer")
        if lost.is_set():
            break
    cause = f": {why[0]!r}" if why and why[0] is not None else ""
    raise AmqpLinkLost(f"broker {where}: connection closed{cause}")


async def _consume(
    inbox: asyncio.Queue[AbstractIncomingMessage],
    ingestor: Ingestor,
    batch_size: int,
    ack: Callable[[int], Awaitable[None]],
) -> None:
    """Take what was delivered (at least one, at most ``batch_size``), store it, then ack it."""
    window = _AckWindow()
    while True:
        raw = [await inbox.get()]
        while len(raw) < batch_size:
            try:
                raw.append(inbox.get_nowait())
            except asyncio.QueueEmpty:
                break
        prepared = [
            ingestor.prepare(
                mqtt_topic(m.routing_key or ""),
                m.body,
                received_at=ingestor.clock(),
                retained=False,
            )
            for m in raw
        ]
        await store_prepared(ingestor, prepared)
        top = window.handled(m.delivery_tag for m in raw if m.delivery_tag is not None)
        if top is not None:
            await ack(top)
        ingestor.stats.handled += len(raw)
        del raw, prepared
