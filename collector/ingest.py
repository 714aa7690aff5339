"""MQTT ingest: subscribe, validate, dedupe and store in batches, acknowledge what is stored.

Validation (``Ingestor``), batch writes (``store_prepared``) and the
confirmation loop (``publish_confirmations``) are shared with the AMQP source
(``collector.ingest_amqp``).

No message can stop it: any failure while decoding or handling one message
(malformed, nested thousands deep, a bug of ours) rejects that message --
counted by kind, logged once per source, acknowledged -- and a batch whose
write fails with anything but a storage error is written again one message at
a time, so only the message that fails is rejected. The task itself is
supervised by the app (``collector.app``), which restarts it with backoff.

What is stored is confirmed to the device end to end: per device, the seqs
committed (and the seqs rejected for good) are collected and published as an
``Ack`` on ``loa/v1/{device}/ack`` every ``[ingest] ack_interval_s`` (batched,
so the SIM's data budget holds), retained so a reconnecting agent learns that
this collector confirms. The agent keeps each message until then.

The broker session is persistent (fixed client id, clean start off, a session
expiry), so messages published while the collector is down are queued by the
broker and delivered when it returns. Acknowledgements are manual: a batch is
PUBACKed only after its transaction committed, so a collector killed mid-batch
gets the unacknowledged messages again from the broker, and the (device, seq)
dedupe in the store drops what it had already written. aiomqtt 2.x has no
public switch for this; paho's ``manual_ack_set``/``ack`` on the client aiomqtt
wraps is the documented paho API for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from collector.config import CollectorConfig, IngestConfig
from collector.correlation import cell_key
from collector.fleet import Observation, ObsKind, event_time, report_observation
from collector.metrics import IngestStats
from collector.store.base import BatchResult, IncomingMessage, IngestStore, StoreError
from collector.store.sqlite import payload_digest
from fleet_protocol import (
    CONFIRMED_KINDS,
    PROTOCOL_VERSION,
    Ack,
    Event,
    Kind,
    Presence,
    PresenceStatus,
    ProtocolError,
    Reply,
    StateReport,
    decode,
    encode,
    mqtt_compat,
    parse_topic,
    peek_seq,
    seq_ranges,
    subscriptions,
    topic,
)

log = logging.getLogger("loa.collector.ingest")


class LogOnce:
    """Remembers which (source, kind) pairs were logged, in bounded memory.

    Past ``limit`` pairs it goes quiet for new ones (announced once) instead of
    growing: a flood from many sources costs a counter, not a log line or a set
    entry per message.
    """

    def __init__(self, limit: int, what: str) -> None:
        self.limit = limit
        self.what = what
        self._seen: set[tuple[str, str]] = set()
        self._quiet_announced = False

    def __len__(self) -> int:
        return len(self._seen)

    def first(self, source: str, kind: str) -> bool:
        """True the first time ``(source, kind)`` is seen, while under the limit."""
        key = (source[:120], kind)
        if key in self._seen:
            return False
        if len(self._seen) >= self.limit:
            if not self._quiet_announced:
                self._quiet_announced = True
                log.warning(
                    "%s from more than %d sources: no longer logging new ones",
                    self.what,
                    self.limit,
                )
            return False
        self._seen.add(key)
        return True


class Confirmations:
    """Seqs stored (or rejected for good) per device, waiting to be confirmed in an Ack.

    Bounded: ``add`` answers True when a flush is due now (too many devices or
    seqs pending), so a flood cannot grow it without limit.
    """

    def __init__(self, *, max_devices: int = 10000, max_seqs: int = 20000) -> None:
        self.max_devices = max_devices
        self.max_seqs = max_seqs
        self._stored: dict[str, set[int]] = {}
        self._rejected: dict[str, set[int]] = {}
        self._count = 0
        #: Set when a flush is due before the next tick (the set is near its bound).
        self.due = asyncio.Event()

    def __len__(self) -> int:
        return self._count

    def add(self, device: str, seq: int, *, stored: bool) -> bool:
        target = self._stored if stored else self._rejected
        seqs = target.setdefault(device, set())
        if seq not in seqs:
            seqs.add(seq)
            self._count += 1
        full = self._count >= self.max_seqs or len(self._stored) + len(self._rejected) > (
            self.max_devices
        )
        if full:
            self.due.set()
        return full

    def take(self) -> list[Ack]:
        """Every pending confirmation as Acks (at most 1000 ranges each); empties the set."""
        acks: list[Ack] = []
        for device in sorted(self._stored.keys() | self._rejected.keys()):
            stored = seq_ranges(self._stored.get(device, ()))
            rejected = seq_ranges(self._rejected.get(device, ()))
            while stored or rejected:
                acks.append(
                    Ack(
                        v=PROTOCOL_VERSION,
                        device=device,
                        stored=stored[:_ACK_RANGES],
                        rejected=rejected[:_ACK_RANGES],
                    )
                )
                stored, rejected = stored[_ACK_RANGES:], rejected[_ACK_RANGES:]
        self._stored.clear()
        self._rejected.clear()
        self._count = 0
        self.due.clear()
        return acks


#: Ranges per Ack message: keeps one Ack far below the agent's packet limits.
_ACK_RANGES = 1000


def _reject_kind(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "depth"
    if isinstance(exc, MemoryError):
        return "memory"
    return "internal"


class Ingestor:
    """Turns raw MQTT messages into stored rows; counts and logs what it rejects.

    ``prepare`` is pure apart from counting and logging, and never raises;
    ``write`` stores one batch. The MQTT loop (``run``) only feeds them.
    """

    def __init__(
        self,
        repo: IngestStore,
        cfg: IngestConfig,
        stats: IngestStats,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.repo = repo
        self.cfg = cfg
        self.stats = stats
        self.clock = clock
        self._logged = LogOnce(cfg.max_logged_devices, "rejections")
        self._conflicts_logged = LogOnce(cfg.max_logged_devices, "replay conflicts")
        #: What to confirm to devices (the MQTT loop publishes it).
        self.confirmations = Confirmations(max_devices=cfg.max_logged_devices)

    def _reject(self, source: str, err: ProtocolError) -> None:
        self.stats.rejected[err.kind] += 1
        if self._logged.first(source, err.kind):
            # %r with a cap: hostile strings are logged escaped and bounded.
            log.warning("rejected %s message from %.80r: %.300s", err.kind, source, str(err))

    def reject_unexpected(self, source: str, exc: BaseException) -> None:
        """Count and log (once per source) a message whose handling raised ``exc``."""
        kind = _reject_kind(exc)
        self.stats.rejected[kind] += 1
        if self._logged.first(source, kind):
            log.error(
                "rejected a message from %.80r: handling it raised %s: %.200s",
                source,
                type(exc).__name__,
                str(exc),
                exc_info=not isinstance(exc, RecursionError | MemoryError),
            )

    def prepare(
        self, topic: str, payload: bytes, *, received_at: float, retained: bool = False
    ) -> IncomingMessage | None:
        """Validate one message; None (counted and logged once per source) if rejected.

        Never raises: a failure of any kind rejects the message.
        """
        self.stats.received += 1
        try:
            return self._prepare(topic, payload, received_at=received_at, retained=retained)
        except Exception as exc:  # RecursionError, MemoryError, a bug: never fatal
            self.reject_unexpected(topic[:120], exc)
            return None

    def _prepare(
        self, topic: str, payload: bytes, *, received_at: float, retained: bool
    ) -> IncomingMessage | None:
        try:
            device, kind = parse_topic(topic)
        except ProtocolError as err:
            self._reject(topic[:120], err)
            return None
        try:
            msg = decode(kind, payload, topic_device=device)
        except ProtocolError as err:
            self._reject(device, err)
            if kind in CONFIRMED_KINDS:
                # A device's own message that can never be stored: confirm it as
                # rejected so the agent stops re-sending it.
                seq = peek_seq(payload, device)
                if seq is not None:
                    self.confirmations.add(device, seq, stored=False)
            return None
        ts, clamped = event_time(msg.ts, received_at, max_future_s=self.cfg.max_future_skew_s)
        if clamped:
            self.stats.clock_skew += 1
        obs: Observation | None = None
        extra: dict[str, Any] = {}
        if isinstance(msg, StateReport):
            prompt = received_at - ts <= self.cfg.late_after_s
            obs = report_observation(msg, ts=ts, prompt=prompt)
            extra["commune"] = msg.commune
            extra["heartbeat"] = msg.heartbeat
            extra["faults"] = tuple(
                (str(f.code), f.since, str(f.cause), str(f.severity), f.evidence)
                for f in msg.faults
            )
            m = msg.modem
            if m is not None:
                extra["signal"] = (m.rssi_dbm, m.rsrp_dbm, m.rsrq_db, m.sinr_db, m.csq)
                extra["cell"] = cell_key({"tac": m.tac, "cell_id": m.cell_id})
        elif isinstance(msg, Presence):
            if msg.status is PresenceStatus.ONLINE:
                obs = Observation(ts, msg.seq, ObsKind.ONLINE)
            else:
                # A last will is composed at connect time, so its ts is stale: the
                # receive time is when the broker noticed the loss. A retained copy
                # (seen on resubscribe) is old news and keeps its own ts.
                if not retained:
                    ts = max(ts, received_at)
                obs = Observation(ts, msg.seq, ObsKind.OFFLINE)
        elif isinstance(msg, Event):
            extra["event"] = (
                str(msg.type),
                None if msg.fault is None else str(msg.fault.code),
                msg.action,
                msg.detail,
            )
        elif not isinstance(msg, Reply):  # pragma: no cover - we do not subscribe to cmd
            return None
        device_ts = msg.ts
        if isinstance(msg, Presence) and msg.status is PresenceStatus.OFFLINE and not retained:
            device_ts = ts  # the will's receive time, decided above, is the event time
        return IncomingMessage(
            device_id=device,
            seq=msg.seq,
            kind=str(kind),
            ts=ts,
            received_at=received_at,
            payload=bytes(payload),
            observation=obs,
            device_ts=device_ts,
            boot_id=msg.boot_id,
            mono=msg.mono,
            clock_synced=msg.clock_synced,
            digest=payload_digest(bytes(payload)),
            **extra,
        )

    async def write(self, batch: list[IncomingMessage]) -> BatchResult:
        result = await self.repo.write_batch(
            batch, late_after_s=self.cfg.late_after_s, max_future_s=self.cfg.max_future_skew_s
        )
        self.stats.stored += result.stored
        self.stats.duplicates += result.duplicates
        self.stats.batches += 1
        for how, n in result.dating:
            self.stats.dating[how] += n
        for device, seq in result.conflicts:
            self.stats.replay_conflict += 1
            if self._conflicts_logged.first(device, "replay_conflict"):
                log.warning(
                    "replay conflict from %.80r: seq %d arrived again with other content "
                    "(the stored message is kept; see loa_ingest_replay_conflict_total)",
                    device,
                    seq,
                )
        for m in batch:
            if Kind(m.kind) in CONFIRMED_KINDS:
                self.confirmations.add(m.device_id, m.seq, stored=True)
        return result


#: Messages larger than this are validated as they arrive (ours are < 2 KiB).
_EAGER_BYTES = 4096


@dataclass(frozen=True, slots=True)
class _Received:
    """One message as queued: validated on arrival, so a rejected one keeps no payload."""

    mid: int
    qos: int
    prepared: IncomingMessage | None


class _Queue(asyncio.Queue[Any]):
    """aiomqtt's incoming queue, kept reachable so a batch can be drained without waiting.

    A message larger than ``_EAGER_BYTES`` is validated (``Ingestor.prepare``)
    the moment paho hands it over, and only the result is queued: the broker
    may have thousands of messages in flight to us (the receive maximum), and
    a flood of large bad ones would otherwise sit in memory as raw payloads
    until their batch came up -- the 160-380 MiB a 50,000-message flood used to
    cost. Ordinary small messages are validated when their batch is taken, so
    paho's read loop stays as short as before.

    Flow control: QoS 0 has no receive maximum, so a device flooding at QoS 0
    could fill this queue without bound (150 MiB more after a 50,000-message
    flood, never returned). Once ``pause_at`` messages are queued the socket is
    no longer read (``mqtt_compat.pause_reading``; ``_BufferedSocket`` stops
    refilling) until the consumer has taken the queue down to ``resume_at``:
    TCP's window fills and the broker holds the rest, under its own per-client
    limits (deploy/mosquitto: ``max_queued_bytes``).
    """

    instances: list[_Queue]
    ingestor: Ingestor
    #: With this many messages queued, the socket is no longer read until the
    #: consumer has taken the queue down to ``resume_at`` (flow control: a
    #: QoS 0 flood, which no receive maximum limits, stays at the broker).
    pause_at: int
    resume_at: int

    def __init__(self, maxsize: int = 0) -> None:
        super().__init__(maxsize)
        type(self).instances.append(self)
        self.client: aiomqtt.Client | None = None
        self.paused = False

    def _flow(self) -> None:
        """Pause or resume reading the socket by how full the queue is."""
        client = self.client
        sock = mqtt_compat.socket_of(client)
        if client is None or not isinstance(sock, _BufferedSocket):
            return
        n = self.qsize()
        stats = self.ingestor.stats
        stats.queued_peak = max(stats.queued_peak, n)
        if not self.paused and n >= self.pause_at:
            self.paused = sock.paused = mqtt_compat.pause_reading(client)
            stats.read_pauses += self.paused
        elif self.paused and n <= self.resume_at:
            self.paused = sock.paused = False
            mqtt_compat.resume_reading(client)

    def put_nowait(self, item: Any) -> None:
        if isinstance(item, aiomqtt.Message):
            payload = item.payload if isinstance(item.payload, bytes | bytearray) else b""
            if len(payload) > _EAGER_BYTES:
                ing = self.ingestor
                prepared = ing.prepare(
                    item.topic.value, bytes(payload), received_at=ing.clock(), retained=item.retain
                )
                item = _Received(item.mid, item.qos, prepared)
        super().put_nowait(item)
        self._flow()


class _BufferedSocket:
    """Serve paho's small ``recv`` calls from one large read.

    paho reads every packet with three or more ``recv`` system calls (type byte,
    each length byte, body); under a backlog that, not our work, caps the rate.
    aiomqtt keeps calling ``loop_read`` while the socket reports ``pending()``
    bytes (the path it has for TLS sockets), so nothing buffered here is left
    unread. Everything but ``recv``/``pending`` is the wrapped socket's.
    """

    _READ = 256 * 1024

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._data = b""
        self._pos = 0
        #: Flow control (``_Queue``): once what is buffered here is served, reading
        #: stops -- ``recv`` says "would block" instead of reading the socket again
        #: -- so one readable event cannot drain the whole kernel buffer into the
        #: queue. paho keeps a packet cut short and goes on with it when resumed.
        self.paused = False

    def recv(self, n: int) -> bytes:
        if self._pos >= len(self._data):
            if self.paused:
                raise BlockingIOError
            data = self._sock.recv(max(n, self._READ))
            if len(data) <= n:
                return bytes(data)
            self._data, self._pos = data, 0
        out = self._data[self._pos : self._pos + n]
        self._pos += len(out)
        return out

    def pending(self) -> int:
        inner = self._sock.pending() if hasattr(self._sock, "pending") and not self.paused else 0
        return len(self._data) - self._pos + int(inner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _buffer_reads(client: aiomqtt.Client) -> None:
    mqtt_compat.wrap_socket(client, _BufferedSocket, _BufferedSocket)


def _client(cfg: CollectorConfig, queue_cls: type[_Queue]) -> aiomqtt.Client:
    m = cfg.mqtt
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = m.session_expiry_s
    props.ReceiveMaximum = m.receive_maximum
    tls: ssl.SSLContext | None = None
    if m.tls:
        tls = ssl.create_default_context(cafile=m.ca_file or None)
    client = aiomqtt.Client(
        m.host,
        m.port,
        username=m.username,
        password=m.resolved_password(),
        identifier=m.client_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=False,
        properties=props,
        keepalive=m.keepalive_s,
        timeout=m.timeout_s,
        tls_context=tls,
        queue_type=queue_cls,
    )
    # Before connecting: messages the broker queued for our session arrive right
    # after CONNACK and must not be acknowledged before they are stored.
    mqtt_compat.manual_acks(client)
    return client


async def run_ingest(
    cfg: CollectorConfig,
    ingestor: Ingestor,
    *,
    connected: asyncio.Event | None = None,
) -> None:
    """Consume the broker forever, reconnecting with jittered backoff; cancel to stop."""
    attempt = 0
    failing = False
    endpoint = f"mqtt://{cfg.mqtt.host}:{cfg.mqtt.port} as {cfg.mqtt.username}"
    filters = subscriptions(cfg.mqtt.shared_group or None)
    while True:
        # A fresh subclass per connection, so its instance list holds this client's queue.
        batch = cfg.ingest.batch_size
        queue_cls: type[_Queue] = type(
            "_ConnQueue",
            (_Queue,),
            {"instances": [], "ingestor": ingestor, "pause_at": 2 * batch, "resume_at": batch},
        )
        client = _client(cfg, queue_cls)
        try:
            async with client:
                _buffer_reads(client)
                await client.subscribe([(f, 1) for f in filters])
                # Flow control only from now on: the SUBACK may come behind a
                # backlog the broker sends as soon as the session resumes, and
                # pausing before the consumer runs would never read it.
                queue_cls.instances[0].client = client
                ingestor.stats.connected = True
                ingestor.stats.connects += 1
                if failing:
                    log.info("broker %s: connected again", endpoint)
                else:
                    log.info("broker %s: connected, subscribed to %s", endpoint, filters)
                failing = False
                attempt = 0
                if connected is not None:
                    connected.set()
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(
                        _consume(client, queue_cls.instances[0], ingestor, cfg.ingest.batch_size),
                        name="ingest.consume",
                    )
                    tg.create_task(
                        _publish_confirmations(
                            client,
                            ingestor.confirmations,
                            cfg.ingest.ack_interval_s,
                            cfg.mqtt.timeout_s,
                            ingestor.stats,
                        ),
                        name="ingest.confirm",
                    )
        except* aiomqtt.MqttError as group:
            exc = group.exceptions[0]
            ingestor.stats.connected = False
            if connected is not None:
                connected.clear()
            if not failing:
                cause = f" ({exc.__cause__!r})" if exc.__cause__ is not None else ""
                log.warning("broker %s: %s%s; reconnecting with backoff", endpoint, exc, cause)
                failing = True
            attempt += 1
            await asyncio.sleep(reconnect_delay(attempt, cfg.mqtt.max_backoff_s))
        finally:
            ingestor.stats.connected = False


async def _write_until_stored(ingestor: Ingestor, batch: list[IncomingMessage]) -> None:
    """Write a batch, retrying with backoff while the store fails.

    Nothing is acknowledged meanwhile, so the broker keeps holding the batch
    (and stops sending once the receive window is full): a full disk or a
    locked database delays ingest but loses nothing. Any other failure is a
    message the code cannot handle: the batch is written again one message at
    a time and only the messages that fail are rejected, so one poisonous
    message never blocks the rest, now or after a restart.
    """
    try:
        await _retry_store(ingestor, batch)
    except Exception as exc:
        if len(batch) == 1:
            ingestor.reject_unexpected(batch[0].device_id, exc)
            return
        for m in batch:
            try:
                await _retry_store(ingestor, [m])
            except Exception as exc1:
                ingestor.reject_unexpected(m.device_id, exc1)


async def _retry_store(ingestor: Ingestor, batch: list[IncomingMessage]) -> None:
    attempt = 0
    while True:
        try:
            await ingestor.write(batch)
        except StoreError as exc:
            if attempt == 0:
                log.error("cannot store a batch of %d messages: %s; retrying", len(batch), exc)
            attempt += 1
            await asyncio.sleep(random.uniform(0.5, min(30.0, 0.5 * 2**attempt)))
            continue
        if attempt:
            log.info("storing messages again after %d failed attempts", attempt)
        return


#: Publishes one Ack to its device (MQTT publish or AMQP publish); raises if it failed.
PublishAck = Callable[[Ack], Awaitable[object]]


async def publish_confirmations(
    publish: PublishAck,
    confirmations: Confirmations,
    interval_s: float,
    stats: IngestStats,
) -> None:
    """Publish pending confirmations every ``interval_s`` (sooner when the set fills up).

    The loop every ingest source shares; ``publish`` is the source's way to
    send one Ack. A failure ends the loop (the source reconnects); the Acks
    taken then are lost, which the agent heals by re-sending (docs/protocol.md).
    """
    while True:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval_s):
                await confirmations.due.wait()
        acks = confirmations.take()
        if acks:
            await asyncio.gather(*(publish(a) for a in acks))
            stats.confirmations += len(acks)


async def _publish_confirmations(
    client: aiomqtt.Client,
    confirmations: Confirmations,
    interval_s: float,
    timeout_s: float,
    stats: IngestStats,
) -> None:
    """The MQTT confirmations: retained, so an agent that reconnects learns at
    once that this collector confirms; QoS 1, so the broker queues it for an
    agent that is offline.
    """

    async def publish(a: Ack) -> None:
        await client.publish(
            topic(a.device, Kind.ACK), encode(a), qos=1, retain=True, timeout=timeout_s
        )

    await publish_confirmations(publish, confirmations, interval_s, stats)


async def store_prepared(ingestor: Ingestor, prepared: Sequence[IncomingMessage | None]) -> None:
    """Store one batch as prepared (None: rejected, already counted), then sample stats.

    Shared by every ingest source: returns once what could be stored is
    committed (``_write_until_stored``), so the caller may acknowledge the
    whole batch to its broker, rejected messages included.
    """
    batch = [m for m in prepared if m is not None]
    if batch:
        await _write_until_stored(ingestor, batch)
    ingestor.stats.sample()


def reconnect_delay(attempt: int, max_backoff_s: float) -> float:
    """Seconds before reconnect ``attempt`` (1, 2, ...): full jitter, capped."""
    return random.uniform(0, min(max_backoff_s, 0.5 * 2**attempt))


async def _consume(
    client: aiomqtt.Client, queue: _Queue, ingestor: Ingestor, batch_size: int
) -> None:
    """Take whatever is queued (at least one message), store it, then acknowledge it."""
    # Through aiomqtt's iterator, not queue.get(): it also ends (MqttError) when
    # the link drops, which a bare get() would wait through forever.
    messages: Any = client.messages
    while True:
        raw: list[_Received] = []
        item = await anext(messages)
        while True:
            if isinstance(item, aiomqtt.Message):
                payload = item.payload if isinstance(item.payload, bytes | bytearray) else b""
                item = _Received(
                    item.mid,
                    item.qos,
                    ingestor.prepare(
                        item.topic.value,
                        bytes(payload),
                        received_at=ingestor.clock(),
                        retained=item.retain,
                    ),
                )
            raw.append(item)
            if len(raw) >= batch_size:
                break
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                break
        queue._flow()
        await store_prepared(ingestor, [r.prepared for r in raw])
        # PUBACKs go out in the order the messages came in (MQTT 4.6), rejected
        # ones included: they are counted, and redelivery would not fix them.
        for r in raw:
            if r.qos > 0:
                mqtt_compat.ack(client, r.mid, r.qos)
        ingestor.stats.handled += len(raw)
        del raw
