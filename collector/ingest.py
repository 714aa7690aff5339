"""MQTT ingest: subscribe, validate, dedupe and store in batches, acknowledge what is stored.

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
import logging
import random
import ssl
import time
from collections.abc import Callable
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from collector.config import CollectorConfig, IngestConfig
from collector.fleet import Observation, ObsKind, event_time, report_observation
from collector.metrics import IngestStats
from collector.store.base import BatchResult, IncomingMessage, Repository, StoreError
from fleet_protocol import (
    Event,
    Presence,
    PresenceStatus,
    ProtocolError,
    Reply,
    StateReport,
    decode,
    mqtt_compat,
    parse_topic,
    subscriptions,
)

log = logging.getLogger("loa.collector.ingest")


class Ingestor:
    """Turns raw MQTT messages into stored rows; counts and logs what it rejects.

    ``prepare`` is pure apart from counting and logging; ``write`` stores one
    batch. The MQTT loop (``run``) only feeds them.
    """

    def __init__(
        self,
        repo: Repository,
        cfg: IngestConfig,
        stats: IngestStats,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.repo = repo
        self.cfg = cfg
        self.stats = stats
        self.clock = clock
        self._logged: set[tuple[str, str]] = set()
        self._quiet_announced = False

    def _reject(self, source: str, err: ProtocolError) -> None:
        self.stats.rejected[err.kind] += 1
        key = (source, err.kind)
        if key in self._logged:
            return
        if len(self._logged) >= self.cfg.max_logged_devices:
            if not self._quiet_announced:
                self._quiet_announced = True
                log.warning(
                    "rejections from more than %d sources: no longer logging new ones "
                    "(see loa_ingest_rejected_total)",
                    self.cfg.max_logged_devices,
                )
            return
        self._logged.add(key)
        # %r with a cap: hostile strings are logged escaped and bounded.
        log.warning("rejected %s message from %.80r: %.300s", err.kind, source, str(err))

    def prepare(
        self, topic: str, payload: bytes, *, received_at: float, retained: bool = False
    ) -> IncomingMessage | None:
        """Validate one message; None (counted and logged once per source) if rejected."""
        self.stats.received += 1
        try:
            device, kind = parse_topic(topic)
        except ProtocolError as err:
            self._reject(topic[:120], err)
            return None
        try:
            msg = decode(kind, payload, topic_device=device)
        except ProtocolError as err:
            self._reject(device, err)
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
        return IncomingMessage(
            device_id=device,
            seq=msg.seq,
            kind=str(kind),
            ts=ts,
            received_at=received_at,
            payload=bytes(payload),
            observation=obs,
            **extra,
        )

    async def write(self, batch: list[IncomingMessage]) -> BatchResult:
        result = await self.repo.write_batch(batch, late_after_s=self.cfg.late_after_s)
        self.stats.stored += result.stored
        self.stats.duplicates += result.duplicates
        self.stats.batches += 1
        return result


class _Queue(asyncio.Queue[aiomqtt.Message]):
    """aiomqtt's incoming queue, kept reachable so a batch can be drained without waiting."""

    instances: list[_Queue]

    def __init__(self, maxsize: int = 0) -> None:
        super().__init__(maxsize)
        type(self).instances.append(self)


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

    def recv(self, n: int) -> bytes:
        if self._pos >= len(self._data):
            data = self._sock.recv(max(n, self._READ))
            if len(data) <= n:
                return bytes(data)
            self._data, self._pos = data, 0
        out = self._data[self._pos : self._pos + n]
        self._pos += len(out)
        return out

    def pending(self) -> int:
        inner = self._sock.pending() if hasattr(self._sock, "pending") else 0
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
        queue_cls: type[_Queue] = type("_ConnQueue", (_Queue,), {"instances": []})
        client = _client(cfg, queue_cls)
        try:
            async with client:
                _buffer_reads(client)
                await client.subscribe([(f, 1) for f in filters])
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
                await _consume(client, queue_cls.instances[0], ingestor, cfg.ingest.batch_size)
        except aiomqtt.MqttError as exc:
            ingestor.stats.connected = False
            if connected is not None:
                connected.clear()
            if not failing:
                log.warning("broker %s: %s; reconnecting with backoff", endpoint, exc)
                failing = True
            attempt += 1
            await asyncio.sleep(random.uniform(0, min(cfg.mqtt.max_backoff_s, 0.5 * 2**attempt)))
        finally:
            ingestor.stats.connected = False


async def _write_until_stored(ingestor: Ingestor, batch: list[IncomingMessage]) -> None:
    """Write a batch, retrying with backoff while the store fails.

    Nothing is acknowledged meanwhile, so the broker keeps holding the batch
    (and stops sending once the receive window is full): a full disk or a
    locked database delays ingest but loses nothing.
    """
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


async def _consume(
    client: aiomqtt.Client, queue: _Queue, ingestor: Ingestor, batch_size: int
) -> None:
    """Take whatever is queued (at least one message), store it, then acknowledge it."""
    messages = client.messages
    while True:
        first = await anext(messages)
        raw = [first]
        while len(raw) < batch_size:
            try:
                raw.append(queue.get_nowait())
            except asyncio.QueueEmpty:
                break
        now = ingestor.clock()
        batch: list[IncomingMessage] = []
        for m in raw:
            payload = m.payload if isinstance(m.payload, bytes | bytearray) else b""
            prepared = ingestor.prepare(
                m.topic.value, bytes(payload), received_at=now, retained=m.retain
            )
            if prepared is not None:
                batch.append(prepared)
        if batch:
            await _write_until_stored(ingestor, batch)
        ingestor.stats.sample()
        # PUBACKs go out in the order the messages came in (MQTT 4.6), rejected
        # ones included: they are counted, and redelivery would not fix them.
        for m in raw:
            if m.qos > 0:
                mqtt_compat.ack(client, m.mid, m.qos)
