"""MQTT topic names of wire protocol v1: ``loa/v1/{device}/{kind}``."""

from __future__ import annotations

import enum
import re

from fleet_protocol.errors import ProtocolError

PROTOCOL_VERSION = 1
PREFIX = "loa/v1"
DEVICE_ID_RE = re.compile(r"[a-z0-9][a-z0-9-]{2,62}")
#: Largest payload the collector accepts; larger ones are rejected as ``oversize``.
MAX_PAYLOAD_BYTES = 64 * 1024
#: Deepest JSON nesting accepted (ours is at most 6); checked before parsing, so a
#: payload nested thousands deep is rejected as ``depth`` instead of recursing.
MAX_DEPTH = 32


class Kind(enum.StrEnum):
    """What a topic carries; its value is the topic suffix."""

    STATE = "state"
    EVENT = "event"
    PRESENCE = "presence"
    CMD = "cmd"
    REPLY = "cmd/reply"
    #: Store confirmations, collector → agent (retained, QoS 1).
    ACK = "ack"


#: Kinds the agent sends from its outbox, which the collector confirms on ``ACK``.
CONFIRMED_KINDS: frozenset[Kind] = frozenset({Kind.STATE, Kind.EVENT, Kind.REPLY})


def valid_device_id(device: str) -> bool:
    return DEVICE_ID_RE.fullmatch(device) is not None


def check_device_id(device: str, field: str = "device") -> str:
    """Return ``device`` if it is a valid device id, else raise ProtocolError."""
    if not isinstance(device, str) or not valid_device_id(device):
        raise ProtocolError(
            field, f"invalid device id {device!r:.80}: must match {DEVICE_ID_RE.pattern}"
        )
    return device


def topic(device: str, kind: Kind) -> str:
    """The topic a device publishes (or receives) ``kind`` on."""
    check_device_id(device)
    return f"{PREFIX}/{device}/{kind.value}"


def parse_topic(name: str) -> tuple[str, Kind]:
    """Split a v1 topic into (device, kind); raises ProtocolError(kind="topic")."""
    parts = name.split("/")
    if len(parts) < 4 or f"{parts[0]}/{parts[1]}" != PREFIX:
        raise ProtocolError("topic", f"not a {PREFIX} topic: {name!r:.120}", kind="topic")
    device, suffix = parts[2], "/".join(parts[3:])
    if not valid_device_id(device):
        raise ProtocolError("topic", f"invalid device id in topic: {device!r:.80}", kind="topic")
    try:
        return device, Kind(suffix)
    except ValueError:
        raise ProtocolError("topic", f"unknown topic kind {suffix!r:.40}", kind="topic") from None


def subscriptions(shared_group: str | None = None) -> list[str]:
    """Topic filters the collector subscribes to, optionally as a shared subscription."""
    filters = [f"{PREFIX}/+/{k.value}" for k in (Kind.STATE, Kind.EVENT, Kind.PRESENCE, Kind.REPLY)]
    if shared_group:
        return [f"$share/{shared_group}/{f}" for f in filters]
    return filters
