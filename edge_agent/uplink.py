"""The uplink: drains the outbox to the broker over MQTT, and takes commands.

- One persistent session: client id = device id, ``clean_session=False``,
  QoS 1 for everything, TLS (``mqtts://``) with a CA file and either a client
  certificate or username + password.
- Presence: a retained last will ``offline`` is registered at connect; its
  seq is reserved from the outbox at that moment (the will is fixed then).
  After CONNACK a retained ``online`` birth message is published, then the
  outbox drains in seq order while new messages keep arriving behind it.
- Store confirmations (``loa/v1/{device}/ack``, see docs/protocol.md): a
  PUBACK only means the broker holds a message, and a broker killed before it
  persists loses it. Once the collector has shown it confirms (any ack,
  retained or live; remembered in the outbox), a PUBACKed message is only
  marked handed, and deleted when an ack names it. What stays unconfirmed is
  sent again after every reconnect, and when the collector has confirmed
  later messages for ``resend_after_s`` but not it. Before any ack, and after
  ``confirm_fallback_s`` of connected time without one (an older collector),
  a PUBACK deletes the message as it always did; after such a fallback only a
  live (not retained) ack switches confirmations back on.
- The link never gives up: after a failure it sleeps
  ``uniform(0, base ** min(10, n))`` capped at ``backoff_max_s`` (n = failed
  attempts in a row), or at ``refused_backoff_max_s`` when the broker refused
  us (bad credentials, TLS failure), since retrying those fast costs mobile
  data for nothing. A failing link is logged once, and its recovery once.
- ``stop()`` asks for an orderly end: drain what is stored (bounded by the
  caller's timeout), publish a retained ``offline`` presence, disconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable

import aiomqtt
from aiomqtt.exceptions import MqttConnectError

from edge_agent.clock import Stamper
from edge_agent.config import AgentConfig
from edge_agent.outbox import Outbox, Pending
from fleet_protocol import (
    PROTOCOL_VERSION,
    Command,
    Kind,
    Presence,
    PresenceStatus,
    ProtocolError,
    decode,
    decode_ack,
    encode,
    topic,
)
from fleet_protocol.mqtt_compat import close_half_open as _close_socket
from fleet_protocol.mqtt_compat import consume_disconnect as _consume_disconnect
from fleet_protocol.mqtt_compat import fail_fast_before_connack as _fail_fast_before_connack

log = logging.getLogger(__name__)

#: How long one attempt may take end to end (TCP, TLS, CONNACK) beyond the configured timeout.
_CONNECT_SLACK_S = 2.0
#: Outbox meta keys: the collector confirms (1/0); after a fallback, only a live
#: ack counts as proof (1); connected seconds waited for an ack so far.
_META_CONFIRMS = "collector_confirms"
_META_DISTRUST = "distrust_retained_ack"
_META_WAITED = "ack_wait_s"


def tls_context(cfg: AgentConfig) -> ssl.SSLContext | None:
    """The TLS context for ``mqtts://`` (None for ``mqtt://``)."""
    b = cfg.broker
    if not b.tls:
        return None
    ctx = ssl.create_default_context(cafile=str(b.ca_file) if b.ca_file else None)
    if b.client_cert is not None and b.client_key is not None:
        ctx.load_cert_chain(str(b.client_cert), str(b.client_key))
    return ctx


def backoff(attempt: int, base: float, cap: float, rng: Callable[[], float]) -> float:
    """Seconds before the next attempt: uniform(0, base ** min(10, attempt)), capped."""
    return min(cap, rng() * base ** min(10, attempt))


class Uplink:
    """Owns the MQTT connection. Run ``run()`` as the ``uplink`` task."""

    def __init__(
        self,
        cfg: AgentConfig,
        outbox: Outbox,
        on_command: Callable[[Command], Awaitable[None]],
        *,
        batch: int | None = None,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.time,
        stamper: Stamper | None = None,
        client_factory: Callable[..., aiomqtt.Client] = aiomqtt.Client,
    ) -> None:
        self.cfg = cfg
        #: Makes each connection attempt's client from ``aiomqtt.Client``'s arguments
        #: (the fleet simulator's switchable data link wraps it).
        self.client_factory = client_factory
        #: The device clock that stamps presence messages (the agent's clock).
        self.clock = clock
        self.stamper = stamper
        self.outbox = outbox
        self.on_command = on_command
        self.batch = batch or cfg.outbox.batch
        self.rng = rng
        self.device = cfg.device.id
        self.connected = False
        self.connected_since: float | None = None
        self.disconnected_since: float | None = time.time()
        self.last_error: str | None = None
        self.connects = 0
        self.published = 0
        self.bad_commands = 0
        self.bad_acks = 0
        #: The collector confirms what it stores (loaded from the outbox in ``run``).
        self.confirming = False
        self.confirmed = 0
        self.resent = 0
        self._distrust_retained = False
        self._waited_s = 0.0
        self._last_ack: float | None = None
        self._stopping = asyncio.Event()
        self._seen_commands: deque[str] = deque(maxlen=64)
        self._password = cfg.password()
        self._tls = tls_context(cfg)

    @property
    def endpoint(self) -> str:
        return f"{self.cfg.broker.host}:{self.cfg.broker.port}"

    def stop(self) -> None:
        """Ask ``run`` to flush, publish ``offline`` and return."""
        self._stopping.set()

    def _presence(self, seq: int, status: PresenceStatus) -> bytes:
        msg = Presence(
            v=PROTOCOL_VERSION,
            device=self.device,
            seq=seq,
            ts=round(self.clock(), 3),
            status=status,
        )
        return encode(msg if self.stamper is None else self.stamper(msg))

    def _client(self, will_seq: int) -> aiomqtt.Client:
        b = self.cfg.broker
        client = self.client_factory(
            b.host,
            b.port,
            username=self.cfg.username,
            password=self._password,
            identifier=self.device,
            clean_session=False,
            keepalive=b.keepalive_s,
            timeout=b.connect_timeout_s,
            tls_context=self._tls,
            will=aiomqtt.Will(
                topic(self.device, Kind.PRESENCE),
                self._presence(will_seq, PresenceStatus.OFFLINE),
                qos=1,
                retain=True,
            ),
            logger=logging.getLogger("edge_agent.uplink.mqtt"),
        )
        _fail_fast_before_connack(client)
        return client

    async def run(self) -> None:
        """Connect, drain and listen, reconnecting forever; returns only after ``stop()``."""
        self.confirming = bool(await self.outbox.get_meta(_META_CONFIRMS))
        self._distrust_retained = bool(await self.outbox.get_meta(_META_DISTRUST))
        self._waited_s = float(await self.outbox.get_meta(_META_WAITED))
        failures = 0
        while not self._stopping.is_set():
            refused = False
            client: aiomqtt.Client | None = None
            try:
                will_seq = await self.outbox.reserve_seq()
                log.debug("uplink: connecting with last will seq %d", will_seq)
                client = self._client(will_seq)
                async with asyncio.timeout(self.cfg.broker.connect_timeout_s + _CONNECT_SLACK_S):
                    await client.__aenter__()
            except (aiomqtt.MqttError, TimeoutError, OSError) as exc:
                refused = isinstance(exc, MqttConnectError) or "SSL" in str(exc).upper()
                _close_socket(client)
                self._link_failed(f"cannot connect: {exc or type(exc).__name__}")
            else:
                failures = 0
                try:
                    await self._session(client)
                except (aiomqtt.MqttError, TimeoutError, OSError) as exc:
                    self._link_failed(f"connection lost: {exc or type(exc).__name__}")
                finally:
                    self.connected = False
                    with contextlib.suppress(aiomqtt.MqttError, TimeoutError, OSError):
                        async with asyncio.timeout(2.0):
                            await client.__aexit__(None, None, None)
                    _consume_disconnect(client)
                if self._stopping.is_set():
                    return
            failures += 1
            cap = (
                self.cfg.broker.refused_backoff_max_s if refused else self.cfg.broker.backoff_max_s
            )
            delay = backoff(failures, self.cfg.broker.backoff_base_s, cap, self.rng)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stopping.wait()

    def _link_failed(self, message: str) -> None:
        if self.last_error is None:
            log.warning("uplink %s: %s; retrying with backoff", self.endpoint, message)
        self.last_error = message
        if self.disconnected_since is None:
            self.disconnected_since = time.time()

    async def _session(self, client: aiomqtt.Client) -> None:
        self.connected = True
        self.connects += 1
        self.connected_since = time.time()
        if self.last_error is not None or self.connects == 1:
            down = (
                f" after {self.connected_since - self.disconnected_since:.0f} s"
                if self.disconnected_since and self.connects > 1
                else ""
            )
            log.info("uplink %s: connected%s", self.endpoint, down)
        self.last_error = None
        self.disconnected_since = None
        timeout = self.cfg.broker.publish_timeout_s
        # One SUBSCRIBE for both (each packet costs mobile data). The retained ack,
        # if any, arrives right after SUBACK.
        await client.subscribe(
            [(topic(self.device, Kind.CMD), 1), (topic(self.device, Kind.ACK), 1)], timeout=timeout
        )
        # Whatever the broker took before may be lost with it (a crash before
        # it persisted): send everything unconfirmed again.
        resend = await self.outbox.unhand()
        if resend:
            self.resent += resend
            log.info("uplink: sending %d unconfirmed message(s) again", resend)
        birth = self._presence(await self.outbox.reserve_seq(), PresenceStatus.ONLINE)
        await client.publish(
            topic(self.device, Kind.PRESENCE), birth, qos=1, retain=True, timeout=timeout
        )
        drain = asyncio.create_task(self._drain(client), name="uplink.drain")
        listen = asyncio.create_task(self._listen(client), name="uplink.cmd")
        watch = asyncio.create_task(self._watch_confirmations(), name="uplink.confirm")
        tasks = {drain, listen, watch}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for t in done:
            t.result()  # re-raise the link failure, if that is why we stopped
        if self._stopping.is_set():
            offline = self._presence(await self.outbox.reserve_seq(), PresenceStatus.OFFLINE)
            await client.publish(
                topic(self.device, Kind.PRESENCE), offline, qos=1, retain=True, timeout=timeout
            )

    async def _drain(self, client: aiomqtt.Client) -> None:
        """Publish stored messages in seq order; returns once stopping and empty."""
        timeout = self.cfg.broker.publish_timeout_s
        while True:
            items = await self.outbox.batch(self.batch)
            if not items:
                if self._stopping.is_set():
                    return
                changed = asyncio.create_task(self.outbox.changed.wait())
                stopping = asyncio.create_task(self._stopping.wait())
                try:
                    await asyncio.wait({changed, stopping}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    changed.cancel()
                    stopping.cancel()
                continue
            results = await asyncio.gather(
                *(self._publish(client, p, timeout) for p in items), return_exceptions=True
            )
            acked = [p.seq for p, r in zip(items, results, strict=True) if r is None]
            if self.confirming:
                await self.outbox.handed(acked)
            else:
                await self.outbox.ack(acked)
            self.published += len(acked)
            for r in results:
                if isinstance(r, BaseException):
                    raise r

    @staticmethod
    async def _publish(client: aiomqtt.Client, p: Pending, timeout: float) -> None:
        await client.publish(p.topic, p.payload, qos=1, retain=p.retain, timeout=timeout)

    async def _watch_confirmations(self) -> None:
        """Re-send what the collector skipped; fall back when it stops confirming."""
        o = self.cfg.outbox
        tick = max(0.5, min(60.0, o.resend_after_s / 4))
        unsaved = 0.0
        while True:
            await asyncio.sleep(tick)
            if not self.confirming or not self.outbox.handed_count:
                continue
            now = time.monotonic()
            if self._last_ack is not None and now - self._last_ack < o.resend_after_s:
                # The collector is confirming: what it has not confirmed although
                # handed resend_after_s before its latest ack was lost on the way.
                n = await self.outbox.unhand(handed_before=self._last_ack - o.resend_after_s)
                if n:
                    self.resent += n
                    log.info(
                        "uplink: %d message(s) unconfirmed for %.0f s: sending again",
                        n,
                        o.resend_after_s,
                    )
                continue
            self._waited_s += tick
            unsaved += tick
            if self._waited_s >= o.confirm_fallback_s:
                await self._fall_back()
                unsaved = 0.0
            elif unsaved >= min(600.0, o.confirm_fallback_s / 10):
                await self.outbox.set_meta(_META_WAITED, int(self._waited_s))
                unsaved = 0.0

    async def _fall_back(self) -> None:
        dropped = await self.outbox.drop_handed()
        log.warning(
            "uplink: no store confirmation from the collector for %.0f s of connected time: "
            "taking broker acknowledgements as delivery again (%d handed message(s) deleted); "
            "a live confirmation switches back",
            self._waited_s,
            dropped,
        )
        self.confirming = False
        self._distrust_retained = True
        self._waited_s = 0.0
        await self.outbox.set_meta(_META_CONFIRMS, 0)
        await self.outbox.set_meta(_META_DISTRUST, 1)
        await self.outbox.set_meta(_META_WAITED, 0)

    async def _on_ack(self, payload: bytes, retained: bool) -> None:
        try:
            ack = decode_ack(payload, topic_device=self.device)
        except ProtocolError as exc:
            self.bad_acks += 1
            if self.bad_acks == 1 or self.bad_acks % 100 == 0:
                log.warning("uplink: rejected ack (%d so far): %s", self.bad_acks, exc)
            return
        ranges = ack.seqs()
        self.confirmed += await self.outbox.confirm(ranges)
        if self.stamper is not None:
            self.stamper.confirmed(ranges)
        if retained and self._distrust_retained:
            return  # proof of a collector that confirmed once, not of one that does now
        self._last_ack = time.monotonic()
        if self._waited_s >= 1.0:
            await self.outbox.set_meta(_META_WAITED, 0)
        self._waited_s = 0.0
        if not self.confirming or (self._distrust_retained and not retained):
            log.info("uplink: the collector confirms what it stores: keeping messages until then")
            self.confirming = True
            self._distrust_retained = False
            await self.outbox.set_meta(_META_CONFIRMS, 1)
            await self.outbox.set_meta(_META_DISTRUST, 0)
            await self.outbox.set_meta(_META_WAITED, 0)

    async def _listen(self, client: aiomqtt.Client) -> None:
        ack_topic = topic(self.device, Kind.ACK)
        async for message in client.messages:
            payload = message.payload
            if not isinstance(payload, bytes | bytearray):
                payload = str(payload).encode()
            if message.topic.matches(ack_topic):
                await self._on_ack(bytes(payload), bool(message.retain))
                continue
            try:
                cmd = decode(Kind.CMD, payload, topic_device=self.device)
            except ProtocolError as exc:
                self.bad_commands += 1
                if self.bad_commands == 1 or self.bad_commands % 100 == 0:
                    log.warning(
                        "uplink: rejected command on %s (%d so far): %s",
                        message.topic,
                        self.bad_commands,
                        exc,
                    )
                continue
            assert isinstance(cmd, Command)
            if cmd.id in self._seen_commands:
                continue  # a QoS 1 redelivery: answered already
            self._seen_commands.append(cmd.id)
            await self.on_command(cmd)


__all__ = ["Uplink", "backoff", "tls_context"]
