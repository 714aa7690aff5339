"""The one place that reaches into aiomqtt's and paho's private attributes.

aiomqtt 2.x has no public way for what the agent, the collector and the fleet
simulator need from the MQTT session underneath; each function here names
the private attribute it uses and why. ``tests/fleet_protocol/test_mqtt_compat.py``
pins them to the installed aiomqtt and paho versions (``TESTED``): upgrading
either fails that test until every attribute below is checked again, which is
also why ``pyproject.toml`` pins aiomqtt to one minor version.

- ``client._client``: the ``paho.mqtt.client.Client`` aiomqtt wraps;
- ``client._connected`` / ``client._disconnected``: aiomqtt's futures for
  CONNACK and for the link's end;
- ``paho._sock``, ``paho._sock_close()``: paho's socket and its only close;
- ``client._loop``: the event loop aiomqtt registered the socket's reader on
  (``pause_reading``/``resume_reading``).

Nothing here sends or receives on its own; callers decide when.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import aiomqtt

T = TypeVar("T")

#: (aiomqtt, paho-mqtt) minor versions whose internals this module was checked against.
TESTED: Final = {"aiomqtt": ("2.5",), "paho-mqtt": ("2.1", "2.2")}


def paho_of(client: aiomqtt.Client | None) -> Any:
    """The paho client under ``client`` (None for None)."""
    return getattr(client, "_client", None)


def socket_of(client: aiomqtt.Client | None) -> Any:
    """The session's socket (a TLS socket with TLS), or None when not connected."""
    paho = paho_of(client)
    return paho.socket() if paho is not None else None


def close_half_open(client: aiomqtt.Client | None) -> None:
    """Close the socket a failed connect attempt may leave open (aiomqtt does not)."""
    paho = paho_of(client)
    if paho is None:
        return
    with contextlib.suppress(Exception):
        if paho.socket() is not None:
            paho._sock_close()  # paho has no public close for a half-open socket


def consume_disconnect(client: aiomqtt.Client) -> None:
    """Read the link-loss exception aiomqtt leaves on its private "disconnected" future.

    aiomqtt sets it when the link drops and its ``__aexit__`` returns early
    without reading it, so asyncio would log "Future exception was never
    retrieved" at every link loss; the caller has already handled the loss.
    """
    fut = getattr(client, "_disconnected", None)
    if isinstance(fut, asyncio.Future) and fut.done() and not fut.cancelled():
        fut.exception()


async def or_disconnect(client: aiomqtt.Client, aw: Awaitable[T]) -> T:
    """Await ``aw`` (a SUBSCRIBE or PUBLISH waiting for the broker's answer), but
    raise ``MqttError`` as soon as the link drops.

    aiomqtt leaves a pending call waiting out its whole timeout when the
    connection closes under it. RabbitMQ answers a SUBSCRIBE it refuses by
    closing the connection, with no SUBACK: without this, each refusal would
    cost the agent its publish timeout before it reconnects.
    """
    task = asyncio.ensure_future(aw)
    lost = getattr(client, "_disconnected", None)
    if not isinstance(lost, asyncio.Future):
        return await task
    try:
        await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task
    if task.cancelled() or not task.done():
        cause = lost.exception() if lost.done() and not lost.cancelled() else None
        raise aiomqtt.MqttError("connection lost before the broker answered") from cause
    return task.result()


def fail_fast_before_connack(client: aiomqtt.Client) -> None:
    """End a connect attempt as soon as the link closes before CONNACK.

    aiomqtt ignores a disconnect before CONNACK and waits out its whole timeout;
    a TLS terminator or load balancer in front of a broker that is down accepts
    the TCP connection and closes it, which would cost the whole connect
    timeout per attempt instead of the few seconds a reconnect may take.
    """
    paho = paho_of(client)
    connected = getattr(client, "_connected", None)
    if paho is None or not isinstance(connected, asyncio.Future):
        return
    aiomqtt_handler = paho.on_disconnect

    def on_disconnect(*args: Any) -> None:
        fut = getattr(client, "_connected", None)
        if isinstance(fut, asyncio.Future) and not fut.done():
            fut.set_exception(aiomqtt.MqttError("connection closed before CONNACK"))
        aiomqtt_handler(*args)

    paho.on_disconnect = on_disconnect


def drop(client: aiomqtt.Client | None) -> None:
    """Shut the session's socket without a DISCONNECT (a lost bearer: the will is sent)."""
    sock = socket_of(client)
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def hang_up(client: aiomqtt.Client | None) -> None:
    """End the session with a DISCONNECT from paho directly (the broker drops the will)."""
    paho = paho_of(client)
    if paho is not None:
        paho.disconnect()


def manual_acks(client: aiomqtt.Client) -> None:
    """Acknowledge QoS 1/2 messages only when ``ack`` is called (before connecting).

    paho's ``manual_ack_set`` is its documented API; aiomqtt does not expose it.
    """
    paho_of(client).manual_ack_set(True)


def ack(client: aiomqtt.Client, mid: int, qos: int) -> None:
    """Send the PUBACK/PUBREC of message ``mid`` (with ``manual_acks``)."""
    paho_of(client).ack(mid, qos)


def wrap_socket(client: aiomqtt.Client, wrap: Callable[[Any], Any], kind: type) -> None:
    """Replace paho's socket by ``wrap(socket)`` unless it is a ``kind`` already."""
    paho = paho_of(client)
    sock = paho._sock
    if sock is not None and not isinstance(sock, kind):
        paho._sock = wrap(sock)


def pause_reading(client: aiomqtt.Client) -> bool:
    """Stop reading the session's socket (flow control); False when not connected.

    aiomqtt reads whenever the socket is readable and queues every message
    without bound; a consumer slower than the broker (a flood at QoS 0, which
    no receive maximum limits) then holds the whole flood in memory. With the
    reader removed, TCP's window fills and the broker holds what is left, under
    its own per-client limits. ``resume_reading`` registers it again.
    """
    sock = socket_of(client)
    if sock is None or sock.fileno() < 0:
        return False
    client._loop.remove_reader(sock.fileno())
    return True


def resume_reading(client: aiomqtt.Client) -> None:
    """Read the socket again after ``pause_reading``: the same loop aiomqtt's reader runs."""
    paho = paho_of(client)
    sock = socket_of(client)
    if sock is None or sock.fileno() < 0:
        return

    def read() -> None:
        try:
            while True:
                paho.loop_read()
                if hasattr(paho._sock, "pending") and paho._sock.pending() > 0:
                    continue
                break
        except Exception as exc:  # as aiomqtt's reader: the link broke
            fut = getattr(client, "_disconnected", None)
            if isinstance(fut, asyncio.Future) and not fut.done():
                fut.set_exception(exc)

    client._loop.add_reader(sock.fileno(), read)
    if hasattr(paho._sock, "pending") and paho._sock.pending() > 0:
        # Bytes already read off the socket (TLS records) make it readable no more.
        client._loop.call_soon(read)


__all__ = [
    "TESTED",
    "ack",
    "close_half_open",
    "consume_disconnect",
    "drop",
    "fail_fast_before_connack",
    "hang_up",
    "manual_acks",
    "or_disconnect",
    "paho_of",
    "pause_reading",
    "resume_reading",
    "socket_of",
    "wrap_socket",
]
