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
- The link never gives up. Before retry n it sleeps ``backoff(n)``:
  uniform(0, min(cap, base ** n)) ("full jitter"; 0-2 s, 0-4 s, 0-8 s, ...
  with base 2, and never a window over twice the time the link has been
  down), cap ``backoff_max_s`` (300 s), or ``refused_backoff_max_s``
  when the broker refused us (bad credentials, TLS failure), since retrying
  those fast costs mobile data for nothing. n counts failed attempts since
  the last session that got going (SUBACK and the birth PUBACK): a broker
  that accepts connections and drops them at once does not reset it. A
  failing link is logged once, and its recovery once. See :func:`backoff`
  for why this shape, and :class:`Dialer` for several broker addresses.
- Subscriptions are QoS 1, except on a broker cluster whose node holding
  this device's session is down: RabbitMQ then refuses the QoS 1 SUBSCRIBE on
  the other nodes ("home node ... of durable queue ... is down": the
  session's queue lives on one node) and closes the connection. After such a
  failure the next connection subscribes at QoS 0 (a transient queue on the
  node it reaches), so reports keep flowing at QoS 1 and commands and
  confirmations arrive while connected; ``qos1_retry_s`` later the agent
  reconnects to try QoS 1 again (the session's queue, with what was queued
  for it, is back once its node is). ``subscription_qos`` says which is in use.
- ``stop()`` asks for an orderly end: drain what is stored (bounded by the
  caller's timeout), publish a retained ``offline`` presence, disconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import ssl
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

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
from fleet_protocol.agent_config import broker_endpoint
from fleet_protocol.mqtt_compat import close_half_open as _close_socket
from fleet_protocol.mqtt_compat import consume_disconnect as _consume_disconnect
from fleet_protocol.mqtt_compat import fail_fast_before_connack as _fail_fast_before_connack
from fleet_protocol.mqtt_compat import or_disconnect as _or_disconnect

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
    """Seconds before retry ``attempt`` (1, 2, ...): uniform(0, min(cap, base ** attempt)).

    ``rng()`` is uniform on [0, 1). The window doubles (base 2) from 2 s to
    the cap and the delay is drawn over the *whole* window ("full jitter"):

    - a lone device after a short outage is back fast: its first retry comes
      within 2 s (mean 1 s), its second within 4 s;
    - a fleet that lost its broker at the same instant (a broker restart drops
      everyone at once) does not synchronise. The first retry after a loss is
      jittered too, over 0-2 s, and every failed round doubles each agent's
      window, so the attempts the broker sees thin out as about 2 N / window
      per second: an overloaded broker makes agents fail, which spreads them
      further, until its capacity is enough. At the cap (mean delay cap / 2)
      the rate is 2 N / cap: 100,000 agents still out at 300 s make ~670
      attempts/s, about what one Mosquitto core completes in TLS handshakes
      (more nodes in ``broker.urls`` divide it), instead of ~40,000/s with
      the old 2.5 s cap, which kept a large fleet above any broker's
      capacity for ever: every attempt timed out and was retried in step;
    - nobody gives up: there is no attempt limit, only the cap.

    Drawing within the cap matters: ``min(cap, uniform(0, window))`` (the
    old formula) puts almost every agent exactly at the cap once the window
    outgrows it, which re-synchronises the whole fleet on a cap-period beat.
    The first retry after a loss is not more spread than 2 s: a lone device
    should be back at once, and a fleet's first retries mostly hit a broker
    that is still restarting (refused by the kernel, nearly free), so what
    the broker meets when it is back is the wider later windows.
    """
    if attempt < 1 or cap <= 0:
        return 0.0
    # base ** attempt grows without bound; past the cap only the cap matters.
    window = cap if attempt * math.log(base) >= math.log(cap) else base**attempt
    return rng() * min(cap, window)


def start_index(device: str, count: int) -> int:
    """The address a device tries first: a hash of its id, spread evenly over ``count``.

    A hash rather than a random draw, so an agent that restarts goes back to
    the node that holds its persistent session, while the fleet as a whole
    spreads over all the nodes instead of piling onto the first.
    """
    return zlib.crc32(device.encode()) % count if count > 0 else 0


class Dialer:
    """Which broker address to try next, and how long to wait before it.

    The agent stays on its current address while it works. Any failure there
    (an attempt that fails, a session that is lost) moves it to the next
    address, round-robin from :func:`start_index`. Every attempt but the
    very first is preceded by a jittered delay, also when moving to another
    node (a node's whole share of the fleet moves at once when it dies).

    The delay is ``backoff(rounds, base, cap', rng)`` where:

    - ``rounds`` counts full rounds over the addresses (ceil(failures / len)),
      so trying a dead node in the list does not slow a device down more
      than a single address would;
    - ``cap'`` is the cap, but never more than twice the time since the first
      failure of this outage (and never less than ``base``). Doubling per
      attempt alone lets a device whose first draws were short climb to a
      window far longer than the outage (a 5 s outage could cost it a minute);
      with this bound the wait after the broker is back is under about twice
      the outage, while a fleet still thins out as ~N / t over an outage of
      length t, and reaches the same 2 N / cap once everyone is at the cap.

    ``established()`` (after a session got going) resets both. Pure: no I/O,
    a given rng and monotonic clock.
    """

    def __init__(
        self,
        addresses: Sequence[str],
        device: str,
        *,
        base: float,
        cap: float,
        refused_cap: float,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not addresses:
            raise ValueError("Dialer needs at least one broker address")
        self.addresses = tuple(addresses)
        self.index = start_index(device, len(self.addresses))
        self.base = base
        self.cap = cap
        self.refused_cap = refused_cap
        self.rng = rng
        self.clock = clock
        #: Failed attempts (and lost sessions) since the last established session.
        self.failures = 0
        #: When the first of those failures happened (``clock`` time), or None.
        self.failing_since: float | None = None

    @property
    def url(self) -> str:
        """The address to try now."""
        return self.addresses[self.index]

    @property
    def endpoint(self) -> tuple[str, int]:
        host, port, _ = broker_endpoint(self.url)
        return host, port

    def established(self) -> None:
        """A session on ``url`` got going: the next failure starts the backoff afresh."""
        self.failures = 0
        self.failing_since = None

    def failed(self, *, refused: bool = False) -> float:
        """Record a failure on ``url``; move to the next address; return the delay before it."""
        now = self.clock()
        if self.failing_since is None:
            self.failing_since = now
        self.failures += 1
        self.index = (self.index + 1) % len(self.addresses)
        rounds = -(-self.failures // len(self.addresses))
        down = max(self.base, 2.0 * (now - self.failing_since))
        return backoff(
            rounds, self.base, min(self.refused_cap if refused else self.cap, down), self.rng
        )


class _TryQos1(Exception):
    """A QoS 0 session ends on purpose: reconnect at once and subscribe at QoS 1 again."""


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
        #: QoS of the cmd/ack subscriptions now (0 while the session's node is away).
        self.subscription_qos = 1
        #: QoS 1 subscriptions refused so far (see the module docstring).
        self.qos1_refused = 0
        #: Until when (monotonic) connections subscribe at QoS 0, or None.
        self._qos0_until: float | None = None
        self._distrust_retained = False
        self._waited_s = 0.0
        self._last_ack: float | None = None
        self._stopping = asyncio.Event()
        self._seen_commands: deque[str] = deque(maxlen=64)
        self._password = cfg.password()
        #: Certificate mode without a password sends no username: the broker takes
        #: the certificate's CN (Mosquitto ignores a username there; RabbitMQ
        #: refuses a username without a password). Else the device id.
        self._username: str | None = cfg.username
        if (
            cfg.broker.client_cert is not None
            and self._password is None
            and not cfg.broker.username
        ):
            self._username = None
        self._tls = tls_context(cfg)
        b = cfg.broker
        #: The broker address now in use and the reconnect backoff.
        self.dialer = Dialer(
            b.addresses,
            self.device,
            base=b.backoff_base_s,
            cap=b.backoff_max_s,
            refused_cap=b.refused_backoff_max_s,
            rng=rng,
        )

    @property
    def endpoint(self) -> str:
        """``host:port`` of the broker address in use (or to be tried next)."""
        host, port = self.dialer.endpoint
        return f"{host}:{port}"

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
        host, port = self.dialer.endpoint
        client = self.client_factory(
            host,
            port,
            username=self._username,
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
        while not self._stopping.is_set():
            refused = False
            client: aiomqtt.Client | None = None
            try:
                will_seq = await self.outbox.reserve_seq()
                log.debug("uplink: connecting to %s with last will seq %d", self.endpoint, will_seq)
                client = self._client(will_seq)
                async with asyncio.timeout(self.cfg.broker.connect_timeout_s + _CONNECT_SLACK_S):
                    await client.__aenter__()
            except (aiomqtt.MqttError, TimeoutError, OSError) as exc:
                refused = isinstance(exc, MqttConnectError) or "SSL" in str(exc).upper()
                _close_socket(client)
                self._link_failed(f"cannot connect: {exc or type(exc).__name__}")
            else:
                retry_qos1 = False
                try:
                    await self._session(client)
                except _TryQos1:
                    retry_qos1 = True
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
                if retry_qos1:
                    continue  # the same address, at once: nothing failed
            # A failure on this address (or the loss of its session): the next
            # attempt goes to the next address, after a jittered delay even
            # after a loss, since a broker restart drops every agent at once.
            delay = self.dialer.failed(refused=refused)
            log.debug("uplink: next attempt on %s in %.1f s", self.endpoint, delay)
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
        await self._subscribe(client, timeout)
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
        # The broker serves us (SUBACK, PUBACK), not only accepts sockets.
        self.dialer.established()
        drain = asyncio.create_task(self._drain(client), name="uplink.drain")
        listen = asyncio.create_task(self._listen(client), name="uplink.cmd")
        watch = asyncio.create_task(self._watch_confirmations(), name="uplink.confirm")
        tasks = {drain, listen, watch}
        if self.subscription_qos == 0 and self._qos0_until is not None:
            tasks.add(asyncio.create_task(self._qos1_later(self._qos0_until), name="uplink.qos1"))
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

    async def _subscribe(self, client: aiomqtt.Client, timeout: float) -> None:
        """SUBSCRIBE to our commands and confirmations, at QoS 1 unless that was refused lately.

        One SUBSCRIBE for both (each packet costs mobile data). The retained
        ack, if any, arrives right after SUBACK.
        """
        until = self._qos0_until
        qos = 0 if until is not None and time.monotonic() < until else 1
        try:
            await _or_disconnect(
                client,
                client.subscribe(
                    [(topic(self.device, Kind.CMD), qos), (topic(self.device, Kind.ACK), qos)],
                    timeout=timeout,
                ),
            )
        except (aiomqtt.MqttError, TimeoutError):
            if qos == 1:
                # A broker that takes CONNECT but not this SUBSCRIBE: on a cluster,
                # the node holding our session is down (or the link died just now;
                # then QoS 0 for a while costs little).
                self.qos1_refused += 1
                self._qos0_until = time.monotonic() + self.cfg.broker.qos1_retry_s
                log.warning(
                    "uplink %s: QoS 1 subscription refused (a broker node holding this "
                    "device's session may be down): subscribing at QoS 0 for %.0f s",
                    self.endpoint,
                    self.cfg.broker.qos1_retry_s,
                )
            raise
        if qos == 1 and self.subscription_qos == 0:
            log.info("uplink %s: subscribed at QoS 1 again", self.endpoint)
        if qos == 1:
            self._qos0_until = None
        self.subscription_qos = qos

    async def _qos1_later(self, until: float) -> None:
        """End a QoS 0 session at ``until`` so the next connection tries QoS 1."""
        await asyncio.sleep(max(0.0, until - time.monotonic()))
        log.info("uplink %s: reconnecting to try QoS 1 subscriptions again", self.endpoint)
        raise _TryQos1

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


__all__ = ["Dialer", "Uplink", "backoff", "start_index", "tls_context"]
