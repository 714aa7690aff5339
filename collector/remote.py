"""Remote commands from the district: publish a ``Command``, correlate its ``Reply``.

``CommandService(cfg, store)`` owns one MQTT connection of its own (client id
``<mqtt.client_id>-cmd``, MQTT 5, a persistent session so replies that arrive
while the collector restarts are queued for it), subscribed to every device's
``cmd/reply``. ``send(...)`` records the command (and audits it), publishes it
on ``loa/v1/{device}/cmd`` and waits up to ``wait_s`` for the reply with the
same id:

- a reply in time: the command is ``replied`` (``ok`` true or false);
- none in time, ``queue=False``: ``unreachable``, with a message saying so;
  the command still expires soon after (``expires_at``), so it never runs late;
- none in time, ``queue=True``: ``queued``: it waits in the device's broker
  session until ``expires_at`` (an MQTT 5 message expiry as well as the
  ``expires`` field the agent checks) and the reply, if it comes, is recorded
  whenever it arrives.

Every command and its result is written to the audit log. Replies are matched
by id *and* device: a device cannot complete another device's command.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from collector.config import CollectorConfig
from collector.store.commands import CommandRecord, CommandState
from fleet_protocol import (
    PROTOCOL_VERSION,
    Command,
    Kind,
    ProtocolError,
    Reply,
    decode,
    encode,
    parse_topic,
    topic,
)
from fleet_protocol.topics import PREFIX

log = logging.getLogger("loa.collector.remote")

#: Actions the agent knows (``edge_agent.remote``, ``edge_agent.tunnel``), and those
#: that change the device (sent only with ``confirm``).
PLAIN_ACTIONS = (
    "status",
    "diag",
    "read",
    "at",
    "modbus",
    "outbox",
    "events",
    "tunnel",
    "tunnel_close",
)
CHANGING_ACTIONS = ("soft_reset", "power_cycle")


class CommandStore(Protocol):
    """What the service needs of the store (``SQLiteRepository`` implements it)."""

    async def add_command(self, record: CommandRecord) -> None:
        """Store a new command and audit it as ``remote.<action>``."""
        ...

    async def finish_command(
        self,
        command_id: str,
        *,
        device_id: str,
        state: CommandState,
        at: float,
        ok: bool | None = None,
        result: Any = None,
        error: str | None = None,
    ) -> CommandRecord | None:
        """Record the outcome (audited); None if no such command for ``device_id``.

        A reply always wins over ``unreachable``/``queued``; nothing overwrites a reply.
        """
        ...

    async def get_command(self, command_id: str) -> CommandRecord:
        """One command; raises NotFound."""
        ...

    async def list_commands(self, device_id: str, *, limit: int = 50) -> list[CommandRecord]:
        """A device's latest commands, newest first."""
        ...


class RemoteError(Exception):
    """A command that could not be sent; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, *, status: int = 503) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class CommandService:
    """See the module docstring. Run ``run()`` as a task; ``send()`` from handlers."""

    cfg: CollectorConfig
    store: CommandStore
    clock: Callable[[], float] = time.time
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    _client: aiomqtt.Client | None = None
    _waiters: dict[str, asyncio.Future[CommandRecord]] = field(default_factory=dict)
    replies: int = 0
    bad_replies: int = 0

    # --- MQTT ------------------------------------------------------------------------

    def _mqtt(self) -> aiomqtt.Client:
        m = self.cfg.mqtt
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = m.session_expiry_s
        tls: ssl.SSLContext | None = None
        if m.tls:
            tls = ssl.create_default_context(cafile=m.ca_file or None)
        return aiomqtt.Client(
            m.host,
            m.port,
            username=m.username,
            password=m.resolved_password(),
            identifier=f"{m.client_id}-cmd",
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=props,
            keepalive=m.keepalive_s,
            timeout=m.timeout_s,
            tls_context=tls,
        )

    async def run(self) -> None:
        """Stay connected and take replies, reconnecting with jittered backoff; cancel to stop."""
        attempt = 0
        failing = False
        endpoint = f"mqtt://{self.cfg.mqtt.host}:{self.cfg.mqtt.port}"
        while True:
            client = self._mqtt()
            try:
                async with client:
                    await client.subscribe(f"{PREFIX}/+/{Kind.REPLY.value}", qos=1)
                    self._client = client
                    self.connected.set()
                    if failing:
                        log.info("commands: broker %s connected again", endpoint)
                    failing, attempt = False, 0
                    async for message in client.messages:
                        payload = message.payload
                        if isinstance(payload, bytes | bytearray):
                            await self._on_reply(str(message.topic), bytes(payload))
            except aiomqtt.MqttError as exc:
                if not failing:
                    log.warning("commands: broker %s: %s; reconnecting", endpoint, exc)
                    failing = True
                attempt += 1
            finally:
                self._client = None
                self.connected.clear()
            await asyncio.sleep(
                random.uniform(0, min(self.cfg.mqtt.max_backoff_s, 0.5 * 2**attempt))
            )

    async def _on_reply(self, topic_name: str, payload: bytes) -> None:
        try:
            device, kind = parse_topic(topic_name)
            reply = decode(kind, payload, topic_device=device)
        except ProtocolError as exc:
            self.bad_replies += 1
            if self.bad_replies == 1 or self.bad_replies % 100 == 0:
                log.warning(
                    "commands: bad reply on %.120r (%d so far): %s",
                    topic_name,
                    self.bad_replies,
                    exc,
                )
            return
        if not isinstance(reply, Reply):
            return
        self.replies += 1
        record = await self.store.finish_command(
            reply.id,
            device_id=device,
            state=CommandState.REPLIED,
            at=self.clock(),
            ok=reply.ok,
            result=reply.result,
            error=reply.error,
        )
        if record is None:
            return  # not ours (another collector's, or a forged id): nothing to complete
        waiter = self._waiters.get(reply.id)
        if waiter is not None and not waiter.done():
            waiter.set_result(record)

    # --- sending ---------------------------------------------------------------------

    async def send(
        self,
        *,
        device_id: str,
        action: str,
        args: dict[str, Any],
        actor: str,
        wait_s: float,
        expires_s: float,
        queue: bool,
    ) -> CommandRecord:
        """Send one command and wait for its outcome (see the module docstring)."""
        client = self._client
        if client is None:
            raise RemoteError("the collector is not connected to the broker; try again shortly")
        now = self.clock()
        record = CommandRecord(
            id=secrets.token_hex(8),
            device_id=device_id,
            action=action,
            args=args,
            actor=actor,
            mode="queue" if queue else "wait",
            created_at=now,
            expires_at=round(now + expires_s, 3),
            state=CommandState.SENT,
        )
        cmd = Command(
            v=PROTOCOL_VERSION,
            device=device_id,
            seq=time.time_ns() // 1_000_000,
            ts=round(now, 3),
            id=record.id,
            action=action,
            args=args,
            expires=record.expires_at,
        )
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        # The broker drops it from the device's queue at its expiry, too.
        props.MessageExpiryInterval = max(1, int(expires_s))
        await self.store.add_command(record)
        waiter: asyncio.Future[CommandRecord] = asyncio.get_running_loop().create_future()
        self._waiters[record.id] = waiter
        try:
            try:
                await client.publish(
                    topic(device_id, Kind.CMD),
                    encode(cmd),
                    qos=1,
                    properties=props,
                    timeout=self.cfg.mqtt.timeout_s,
                )
            except aiomqtt.MqttError as exc:
                failed = await self.store.finish_command(
                    record.id,
                    device_id=device_id,
                    state=CommandState.UNREACHABLE,
                    at=self.clock(),
                    error=f"not published: {exc}",
                )
                raise RemoteError(f"the broker did not take the command: {exc}") from None
            try:
                async with asyncio.timeout(wait_s):
                    return await waiter
            except TimeoutError:
                state = CommandState.QUEUED if queue else CommandState.UNREACHABLE
                when = time.strftime("%H:%M:%S", time.localtime(record.expires_at))
                error = f"{device_id} did not answer within {wait_s:g} s: " + (
                    f"queued in its broker session until {when}"
                    if queue
                    else f"unreachable (the command expires at {when} and will not run after)"
                )
                failed = await self.store.finish_command(
                    record.id, device_id=device_id, state=state, at=self.clock(), error=error
                )
                # A reply may have raced the timeout: the store keeps the reply.
                return failed or await self.store.get_command(record.id)
        finally:
            self._waiters.pop(record.id, None)

    async def refuse(
        self, *, device_id: str, action: str, args: dict[str, Any], actor: str, reason: str
    ) -> CommandRecord:
        """Record (and audit) a command refused before sending, e.g. to an offline device."""
        now = self.clock()
        record = CommandRecord(
            id=secrets.token_hex(8),
            device_id=device_id,
            action=action,
            args=args,
            actor=actor,
            mode="wait",
            created_at=now,
            expires_at=now,
            state=CommandState.REFUSED,
            error=reason,
        )
        await self.store.add_command(record)
        done = await self.store.finish_command(
            record.id, device_id=device_id, state=CommandState.REFUSED, at=now, error=reason
        )
        return done or record

    async def aclose(self) -> None:
        for w in self._waiters.values():
            if not w.done():
                w.cancel()
        with contextlib.suppress(Exception):
            self._waiters.clear()


__all__ = [
    "CHANGING_ACTIONS",
    "PLAIN_ACTIONS",
    "CommandRecord",
    "CommandService",
    "CommandState",
    "CommandStore",
    "RemoteError",
]
