"""Message types of wire protocol v1, and their validating encode/decode.

Every message carries ``v`` (protocol version), ``device``, ``seq`` (per device,
strictly increasing across restarts) and ``ts`` (device clock, UTC, seconds
since the epoch). Newer agents add the clock's provenance: ``boot_id`` and
``mono`` (seconds since that boot, which no clock step moves) and
``clock_synced: false`` while the kernel says the wall clock is not
synchronised; all three are optional, so older agents still validate. Fields
that are ``None`` are left out on the wire to save the SIM's data allowance;
unknown fields are ignored so that v1 can grow.

The collector's store confirmations (``Ack``, topic kind ``ack``) are not a
device message: they carry no ``seq`` and are decoded with ``decode_ack``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from typing import Annotated, Any, Final, TypeVar

import msgspec
from msgspec import Meta

from fleet_protocol.causes import B2Cause
from fleet_protocol.errors import ProtocolError
from fleet_protocol.faults import FaultCode, Severity, fault_info
from fleet_protocol.topics import (
    DEVICE_ID_RE,
    MAX_DEPTH,
    MAX_PAYLOAD_BYTES,
    PROTOCOL_VERSION,
    Kind,
    check_device_id,
)

DeviceId = Annotated[str, Meta(pattern=f"^{DEVICE_ID_RE.pattern}$")]
Seq = Annotated[int, Meta(ge=0, le=2**53)]
#: UNIX seconds, 2000-01-01 .. 2100-01-01: rejects a controller clock stuck at 1970.
Timestamp = Annotated[float, Meta(ge=946684800.0, le=4102444800.0)]
Short = Annotated[str, Meta(max_length=64)]
Text = Annotated[str, Meta(max_length=512)]
Percent = Annotated[float, Meta(ge=0, le=100)]


class SimState(enum.StrEnum):
    READY = "ready"
    ABSENT = "absent"
    FAILURE = "failure"
    LOCKED = "locked"
    UNKNOWN = "unknown"


class RegState(enum.StrEnum):
    HOME = "home"
    ROAMING = "roaming"
    SEARCHING = "searching"
    DENIED = "denied"
    NOT_REGISTERED = "not_registered"
    UNKNOWN = "unknown"

    @property
    def registered(self) -> bool:
        return self in (RegState.HOME, RegState.ROAMING)


class AccessTech(enum.StrEnum):
    GSM = "gsm"
    EDGE = "edge"
    UMTS = "umts"
    HSPA = "hspa"
    LTE = "lte"
    NBIOT = "nbiot"
    NR = "nr"
    UNKNOWN = "unknown"


class PresenceStatus(enum.StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


class EventType(enum.StrEnum):
    FAULT_RAISED = "fault_raised"
    FAULT_CLEARED = "fault_cleared"
    RECOVERY = "recovery"
    AGENT_START = "agent_start"
    AGENT_STOP = "agent_stop"
    #: A remote command that changed something (soft reset, power cycle), or
    #: one refused as stale/unsafe: ``action`` is the command, ``detail`` its outcome.
    REMOTE_COMMAND = "remote_command"
    #: The reverse SSH tunnel to the district jump host opened / closed.
    TUNNEL_OPENED = "tunnel_opened"
    TUNNEL_CLOSED = "tunnel_closed"
    #: A configuration pushed from the district was kept / rolled back.
    CONFIG_APPLIED = "config_applied"
    CONFIG_ROLLED_BACK = "config_rolled_back"
    #: An agent upgrade was kept / rolled back.
    UPGRADE_APPLIED = "upgrade_applied"
    UPGRADE_ROLLED_BACK = "upgrade_rolled_back"


class _Section(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    pass


class ModemState(_Section, frozen=True):
    """The 4G modem as last read. ``responding`` is False when it gave no answer."""

    responding: bool = True
    sim: SimState = SimState.UNKNOWN
    iccid: Annotated[str, Meta(pattern=r"^[0-9]{10,22}$")] | None = None
    operator: Short | None = None
    mccmnc: Annotated[str, Meta(pattern=r"^[0-9]{5,6}$")] | None = None
    access_tech: AccessTech = AccessTech.UNKNOWN
    registration: RegState = RegState.UNKNOWN
    csq: Annotated[int, Meta(ge=0, le=99)] | None = None
    rssi_dbm: Annotated[float, Meta(ge=-150, le=0)] | None = None
    rsrp_dbm: Annotated[float, Meta(ge=-160, le=0)] | None = None
    rsrq_db: Annotated[float, Meta(ge=-40, le=10)] | None = None
    sinr_db: Annotated[float, Meta(ge=-30, le=60)] | None = None
    cell_id: Short | None = None
    tac: Short | None = None
    #: Packet data bearer usable (context active with an IP); False: registered but no data.
    data: bool | None = None


class AmpState(_Section, frozen=True):
    """The amplifier as last read over Modbus; ``flags`` are the fault/status bits set."""

    responding: bool = True
    power: bool | None = None
    volume: Annotated[int, Meta(ge=0, le=255)] | None = None
    output_level: Annotated[float, Meta(ge=0, le=100000)] | None = None
    temperature_c: Annotated[float, Meta(ge=-60, le=250)] | None = None
    mains_v: Annotated[float, Meta(ge=0, le=1000)] | None = None
    battery_v: Annotated[float, Meta(ge=0, le=100)] | None = None
    flags: Annotated[list[Short], Meta(max_length=32)] = []


class StreamState(_Section, frozen=True):
    """Whether the broadcast stream is being received, since when, and from where."""

    receiving: bool
    since: Timestamp | None = None
    source: Text | None = None
    detail: Text | None = None


class SystemState(_Section, frozen=True):
    """The controller itself."""

    cpu_pct: Percent | None = None
    mem_pct: Percent | None = None
    disk_pct: Percent | None = None
    soc_temp_c: Annotated[float, Meta(ge=-60, le=200)] | None = None
    uptime_s: Annotated[float, Meta(ge=0, le=1e10)] | None = None
    boot_id: Short | None = None


class Fault(_Section, frozen=True):
    """An active fault: its code, severity, B2 cause, start time and evidence."""

    code: FaultCode
    severity: Severity
    cause: B2Cause
    since: Timestamp
    evidence: Text = ""

    @classmethod
    def of(cls, code: FaultCode, since: float, evidence: str) -> Fault:
        """A fault with the severity and cause the taxonomy gives ``code``."""
        info = fault_info(code)
        return cls(
            code=code,
            severity=info.severity,
            cause=info.cause,
            since=since,
            evidence=evidence[:512],
        )


BootId = Annotated[str, Meta(pattern=r"^[0-9a-f-]{4,36}$")]
#: Seconds since the device booted (CLOCK_BOOTTIME): immune to wall-clock steps.
Mono = Annotated[float, Meta(ge=0, le=1e10)]


class _Message(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    #: Always PROTOCOL_VERSION when sent; required on the wire.
    v: Annotated[int, Meta(ge=1, le=1000)]
    device: DeviceId
    seq: Seq
    ts: Timestamp
    #: The boot that stamped ``mono`` (a prefix of the kernel's boot id).
    boot_id: BootId | None = None
    #: Seconds since that boot when the message was made.
    mono: Mono | None = None
    #: False while the device's kernel said its wall clock was not synchronised
    #: (``ts`` is then untrustworthy); left out when synchronised or unknown.
    clock_synced: bool | None = None


class StateReport(_Message, frozen=True):
    """Full state of one cluster: sent on change and as heartbeat."""

    commune: Short | None = None
    heartbeat: bool = False
    modem: ModemState | None = None
    amp: AmpState | None = None
    stream: StreamState | None = None
    system: SystemState | None = None
    outbox_depth: Annotated[int, Meta(ge=0)] = 0
    faults: Annotated[list[Fault], Meta(max_length=64)] = []
    #: Full reports only: the running agent's version and a short hash of its
    #: agent.toml (``edge_agent.remote.config_version``), so the district sees
    #: which configuration each device runs.
    agent_version: Short | None = None
    config_version: Short | None = None


class Event(_Message, frozen=True):
    """A fault raised or cleared, a recovery action, or the agent starting/stopping."""

    type: EventType
    fault: Fault | None = None
    action: Short | None = None
    detail: Text | None = None


class Presence(_Message, frozen=True):
    """Birth (``online``) or last will (``offline``), retained on the presence topic."""

    status: PresenceStatus


class Command(_Message, frozen=True):
    """A remote request, collector → agent. ``device`` is the target.

    ``expires`` (device clock, UNIX seconds) bounds how long the command may
    wait in the broker's session: the agent refuses a command without one or
    past it, so a command queued for days is never executed late.
    """

    id: Short
    action: Short
    args: Annotated[dict[Short, Any], Meta(max_length=16)] = {}
    expires: Timestamp | None = None


class Reply(_Message, frozen=True):
    """The agent's answer to a Command with the same ``id``."""

    id: Short
    ok: bool
    result: Any = None
    error: Text | None = None


#: A seq range ``[first, last]``, or a single seq.
SeqRange = Annotated[list[Seq], Meta(min_length=1, max_length=2)] | Seq


class Ack(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    """The collector's store confirmation for one device (topic ``loa/v1/{device}/ack``).

    ``stored`` lists seqs the collector has committed (duplicates included);
    ``rejected`` seqs it will never store (invalid): the agent may delete both.
    """

    v: Annotated[int, Meta(ge=1, le=1000)]
    device: DeviceId
    stored: Annotated[list[SeqRange], Meta(max_length=4096)] = []
    rejected: Annotated[list[SeqRange], Meta(max_length=4096)] = []

    def seqs(self) -> list[tuple[int, int]]:
        """Every range confirmed (stored or rejected) as ``(first, last)``, first <= last."""
        out: list[tuple[int, int]] = []
        for r in (*self.stored, *self.rejected):
            a, b = (r, r) if isinstance(r, int) else (r[0], r[-1])
            out.append((min(a, b), max(a, b)))
        return out


def seq_ranges(seqs: Iterable[int]) -> list[int | list[int]]:
    """Consecutive seqs folded into ``[first, last]`` ranges (single seqs stay bare)."""
    out: list[int | list[int]] = []
    start = prev = None
    for s in sorted(set(seqs)):
        if prev is not None and s == prev + 1:
            prev = s
            continue
        if start is not None and prev is not None:
            out.append(start if start == prev else [start, prev])
        start = prev = s
    if start is not None and prev is not None:
        out.append(start if start == prev else [start, prev])
    return out


Message = StateReport | Event | Presence | Command | Reply
M = TypeVar("M", StateReport, Event, Presence, Command, Reply)

MESSAGE_TYPES: Final[dict[Kind, type[Message]]] = {
    Kind.STATE: StateReport,
    Kind.EVENT: Event,
    Kind.PRESENCE: Presence,
    Kind.CMD: Command,
    Kind.REPLY: Reply,
}

_DECODERS: Final = {k: msgspec.json.Decoder(t) for k, t in MESSAGE_TYPES.items()}
_ACK_DECODER: Final = msgspec.json.Decoder(Ack)
_ENCODER: Final = msgspec.json.Encoder()
_PATH_RE = re.compile(r" - at `\$(?P<path>[^`]*)`$")
#: Strings (skipped whole, escapes included) and brackets: what nesting depth is made of.
_OPEN: Final = frozenset(b"[{")
_CLOSE: Final = frozenset(b"]}")
_NESTING_RE = re.compile(rb'"(?:[^"\\]|\\.)*"?|[\[\]{}]')


def nesting_depth(payload: bytes | bytearray | memoryview, limit: int = MAX_DEPTH) -> int:
    """How deeply ``payload``'s JSON nests, scanning bytes (no parsing, no recursion).

    Stops counting once past ``limit`` (the answer is then ``limit + 1``), and
    answers 0 without scanning when the payload has too few brackets to nest
    past ``limit`` (every ordinary message). Brackets inside strings do not count.
    """
    data = bytes(payload)
    if data.count(b"[") + data.count(b"{") <= limit:
        return 0
    depth = deepest = 0
    for m in _NESTING_RE.finditer(data):
        c = m.group()[0]
        if c in _OPEN:
            depth += 1
            if depth > limit:
                return depth
            deepest = max(deepest, depth)
        elif c in _CLOSE:
            depth -= 1
    return deepest


def _check_size_and_depth(payload: bytes | bytearray | memoryview) -> None:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ProtocolError(
            "$", f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}", kind="oversize"
        )
    if nesting_depth(payload) > MAX_DEPTH:
        raise ProtocolError("$", f"JSON nested deeper than {MAX_DEPTH} levels", kind="depth")


def encode(message: Message | Ack) -> bytes:
    """Compact UTF-8 JSON for the wire."""
    return _ENCODER.encode(message)


def _field_of(error_text: str) -> tuple[str, str]:
    m = _PATH_RE.search(error_text)
    if not m:
        return "$", error_text
    path = m.group("path").lstrip(".") or "$"
    return path, error_text[: m.start()]


def _decode_with(decoder: msgspec.json.Decoder[Any], payload: Any) -> Any:
    """Decode with ``decoder``; schema, JSON and version failures as ProtocolError."""
    try:
        msg = decoder.decode(payload)
    except msgspec.ValidationError as exc:
        field, reason = _field_of(str(exc))
        raise ProtocolError(field, reason, kind="schema") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError("$", f"malformed JSON: {exc}", kind="json") from None
    if msg.v != PROTOCOL_VERSION:
        raise ProtocolError("v", f"unsupported protocol version {msg.v}", kind="version")
    return msg


def decode(
    kind: Kind, payload: bytes | bytearray | memoryview | str, *, topic_device: str | None = None
) -> Message:
    """Decode and validate one payload of topic ``kind``.

    Raises ProtocolError (never anything else) naming the bad field: ``oversize``
    for payloads over MAX_PAYLOAD_BYTES, ``depth`` for JSON nested deeper than
    MAX_DEPTH (checked before parsing), ``json`` for malformed JSON, ``schema``
    for a wrong or missing field, ``version`` for an unsupported ``v``, and
    ``mismatch`` when ``topic_device`` is given and the payload names another device.
    """
    if isinstance(payload, str):
        payload = payload.encode("utf-8", "surrogatepass")
    _check_size_and_depth(payload)
    decoder = _DECODERS.get(kind)
    if decoder is None:
        raise ProtocolError("topic", f"unknown message kind {kind!r}", kind="topic")
    msg: Message = _decode_with(decoder, payload)
    if topic_device is not None and msg.device != topic_device:
        raise ProtocolError(
            "device",
            f"payload device {msg.device!r} does not match topic device {topic_device!r}",
            kind="mismatch",
        )
    return msg


def decode_ack(payload: bytes | bytearray | memoryview, *, topic_device: str | None = None) -> Ack:
    """Decode and validate a store confirmation; raises ProtocolError like ``decode``."""
    _check_size_and_depth(payload)
    ack: Ack = _decode_with(_ACK_DECODER, payload)
    if topic_device is not None and ack.device != topic_device:
        raise ProtocolError(
            "device",
            f"ack for {ack.device!r} on the topic of {topic_device!r}",
            kind="mismatch",
        )
    return ack


class _Envelope(msgspec.Struct):
    device: str
    seq: int


_ENVELOPE_DECODER: Final = msgspec.json.Decoder(_Envelope)


def peek_seq(payload: bytes, device: str) -> int | None:
    """The seq of a payload that failed validation, if it plainly names ``device`` and one.

    Lets the collector confirm a device's invalid messages as rejected, so the
    agent stops re-sending them. Never raises.
    """
    try:
        if len(payload) > MAX_PAYLOAD_BYTES or nesting_depth(payload) > MAX_DEPTH:
            return None
        env = _ENVELOPE_DECODER.decode(payload)
    except Exception:
        return None
    if env.device != device or not 0 <= env.seq <= 2**53:
        return None
    return env.seq


def decode_as(cls: type[M], payload: bytes | str) -> M:
    """Decode a payload known to be of message class ``cls``."""
    kind = next(k for k, t in MESSAGE_TYPES.items() if t is cls)
    msg = decode(kind, payload)
    assert isinstance(msg, cls)
    return msg


def to_builtins(message: Message | _Section) -> dict[str, Any]:
    """The message as plain JSON-ready dicts (for APIs and storage)."""
    out = msgspec.to_builtins(message)
    assert isinstance(out, dict)
    return out


__all__ = [
    "AccessTech",
    "Ack",
    "AmpState",
    "Command",
    "Event",
    "EventType",
    "Fault",
    "Message",
    "ModemState",
    "Presence",
    "PresenceStatus",
    "RegState",
    "Reply",
    "SimState",
    "StateReport",
    "StreamState",
    "SystemState",
    "check_device_id",
    "decode",
    "decode_ack",
    "decode_as",
    "encode",
    "nesting_depth",
    "peek_seq",
    "seq_ranges",
    "to_builtins",
]
