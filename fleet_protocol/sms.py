"""The fault SMS: what a controller texts the district when its data link is down.

One SMS of at most 160 GSM 7-bit characters, ASCII only, space-separated::

    LOA1 <device> <seq> <ts> <faults> <outbox> <tag>

- ``LOA1``: format and version;
- ``device``: the device id (as in MQTT);
- ``seq``: a seq from the device's own seq space: the agent stores the same
  faults as a compact heartbeat in its outbox and texts that message's seq, so
  when the link returns and the heartbeat arrives over MQTT the collector's
  (device, seq) dedupe drops it; a replayed SMS is a duplicate too;
- ``ts``: device clock, integer UNIX seconds;
- ``faults``: ``-`` for none, else ``code:age`` joined by ``,`` where ``age`` is
  ``ts - since`` in whole seconds, most important first; a trailing ``,+`` says
  that faults were left out to fit one SMS;
- ``outbox``: ``lo-hi``, the seq range still waiting in the outbox (``-`` when empty);
- ``tag``: the first 16 hex digits of HMAC-SHA256(key, everything before
  `` <tag>``) with the device's SMS key.

The device's key is ``sms_key(secret, device)``: the district keeps one
secret, provisioning gives each controller its own derived key, so a leaked
controller key forges only its own messages. Pure; no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass

from fleet_protocol.errors import ProtocolError
from fleet_protocol.faults import FaultCode
from fleet_protocol.topics import valid_device_id

PREFIX = "LOA1"
MAX_CHARS = 160
TAG_HEX = 16

_FAULT_RE = re.compile(r"^([a-z_]{2,40}):([0-9]{1,10})$")
_RANGE_RE = re.compile(r"^([0-9]{1,16})-([0-9]{1,16})$")


def sms_key(secret: bytes, device: str) -> bytes:
    """The per-device SMS key derived from the district's secret."""
    return hmac.new(secret, b"loa-sms-v1:" + device.encode("ascii"), hashlib.sha256).digest()


def _tag(key: bytes, body: str) -> str:
    return hmac.new(key, body.encode("ascii"), hashlib.sha256).hexdigest()[:TAG_HEX]


@dataclass(frozen=True, slots=True)
class FaultSms:
    """A decoded fault SMS (its tag not yet checked: ``verify``)."""

    device: str
    seq: int
    ts: int
    #: (code, since) most important first.
    faults: tuple[tuple[FaultCode, int], ...]
    truncated: bool
    outbox: tuple[int, int] | None
    tag: str
    body: str

    def verify(self, key: bytes) -> bool:
        """Whether the tag was made with ``key`` (constant-time comparison)."""
        return hmac.compare_digest(_tag(key, self.body), self.tag)


def encode_fault_sms(
    device: str,
    seq: int,
    ts: float,
    faults: Sequence[tuple[FaultCode | str, float]],
    outbox: tuple[int, int] | None,
    key: bytes,
) -> str:
    """The SMS text; faults that do not fit in 160 characters are left out (``,+``)."""
    t = int(ts)
    head = f"{PREFIX} {device} {seq} {t} "
    tail = f" {'-' if outbox is None else f'{outbox[0]}-{outbox[1]}'}"
    room = MAX_CHARS - len(head) - len(tail) - 1 - TAG_HEX
    items = [f"{FaultCode(code).value}:{max(0, t - int(since))}" for code, since in faults]
    kept: list[str] = []
    for i, item in enumerate(items):
        more = i < len(items) - 1
        if len(",".join([*kept, item])) + (2 if more else 0) > room:
            break
        kept.append(item)
    text = ",".join(kept) if kept else "-"
    if len(kept) < len(items):
        text = (text + ",+") if kept else "+"
    body = head + text + tail
    if len(body) + 1 + TAG_HEX > MAX_CHARS:
        raise ValueError(f"device id {device!r} leaves no room for a fault SMS")
    return f"{body} {_tag(key, body)}"


def decode_fault_sms(text: str) -> FaultSms:
    """Parse a fault SMS; raises ProtocolError (kind ``sms``) naming what is wrong."""
    s = text.strip()
    if len(s) > MAX_CHARS:
        raise ProtocolError("sms", f"{len(s)} characters: longer than one SMS", kind="sms_format")
    parts = s.split(" ")
    if len(parts) != 7 or parts[0] != PREFIX:
        raise ProtocolError("sms", f"not a {PREFIX} fault SMS", kind="sms_format")
    _, device, seq_s, ts_s, faults_s, range_s, tag = parts
    if not valid_device_id(device):
        raise ProtocolError("sms", "bad device id", kind="sms_format")
    if not seq_s.isdigit() or len(seq_s) > 16 or not ts_s.isdigit() or len(ts_s) > 10:
        raise ProtocolError("sms", "bad seq or ts", kind="sms_format")
    if not re.fullmatch(f"[0-9a-f]{{{TAG_HEX}}}", tag):
        raise ProtocolError("sms", "bad tag", kind="sms_format")
    ts = int(ts_s)
    faults: list[tuple[FaultCode, int]] = []
    truncated = False
    if faults_s not in ("-", "+"):
        items = faults_s.split(",")
        if items[-1] == "+":
            truncated = True
            items = items[:-1]
        for item in items:
            m = _FAULT_RE.match(item)
            if not m:
                raise ProtocolError("sms", f"bad fault item {item[:40]!r}", kind="sms_format")
            try:
                code = FaultCode(m.group(1))
            except ValueError:
                raise ProtocolError(
                    "sms", f"unknown fault code {m.group(1)!r}", kind="sms_format"
                ) from None
            faults.append((code, ts - int(m.group(2))))
    elif faults_s == "+":
        truncated = True
    outbox: tuple[int, int] | None = None
    if range_s != "-":
        rm = _RANGE_RE.match(range_s)
        if not rm or int(rm.group(1)) > int(rm.group(2)):
            raise ProtocolError("sms", "bad outbox range", kind="sms_format")
        outbox = (int(rm.group(1)), int(rm.group(2)))
    return FaultSms(
        device=device,
        seq=int(seq_s),
        ts=ts,
        faults=tuple(faults),
        truncated=truncated,
        outbox=outbox,
        tag=tag,
        body=s[: -(TAG_HEX + 1)],
    )


__all__ = [
    "MAX_CHARS",
    "PREFIX",
    "FaultSms",
    "decode_fault_sms",
    "encode_fault_sms",
    "sms_key",
]
