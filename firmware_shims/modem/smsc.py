"""SMS in the modem simulator: each engine's SMS side, and a small simulated SMS centre.

There is no SMS centre on a test machine, so this is the documented stand-in
(the brief allows a fake only for what cannot exist here). It speaks the real
protocol where our code meets it: the AT side of TS 27.005 text mode on every
simulated modem (``AT+CMGF``, ``AT+CSCS``, ``AT+CMGS`` with its ``> `` prompt
and Ctrl-Z/ESC, ``+CMTI``, ``AT+CMGR``, ``AT+CMGL``, ``AT+CMGD``, ``AT+CPMS``,
``AT+CNMI``, ``AT+CSCA``). Between modems it is an in-process object:

    centre = SmsCentre()
    centre.attach(agent_engine, "+84961000001")
    centre.attach(district_engine, "+84912000000")

An SMS submitted by one attached engine is stored in the recipient's "SM"
memory at once (``+CMTI`` when ``AT+CNMI=2,1`` is set) if the recipient can
receive it (SIM fine, registered, memory not full); otherwise the centre holds
it and retries whenever any attached engine ticks, as a real SMSC retries. An
unknown recipient is accepted and dropped (counted in ``undeliverable``), as
a real network does not tell the sender either.

What the SIM and the network do to SMS follows the engine's faults: an absent
or failed SIM refuses (``+CMS ERROR: 310/313``), no registration refuses
(``331``), and ``data_blocked`` (data bearer down) leaves SMS working, which is
the point of the agent's SMS fallback.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from firmware_shims.modem.sms import (
    CTRL_Z,
    ESC,
    decode_ucs2,
    encode_ucs2,
    format_scts,
)

if TYPE_CHECKING:
    from firmware_shims.modem.sim import Chunk

#: SIM "SM" memory slots of a simulated modem.
CAPACITY = 30


class _Engine(Protocol):
    echo: bool
    faults: object
    _pending: list[Chunk]

    def sim_error(self) -> int | None: ...

    def net(self) -> object: ...


@dataclass(slots=True)
class Stored:
    status: str
    sender: str
    scts: float
    text: str


@dataclass(slots=True)
class Submitted:
    """One SMS the centre accepted: who sent it, to whom, when, and its text."""

    sender: str
    to: str
    text: str
    at: float
    mr: int
    delivered: bool = False


class SmsEndpoint:
    """The SMS side of one ``ModemEngine`` (created by the engine; attached by a centre)."""

    def __init__(self, engine: _Engine) -> None:
        self.engine = engine
        self.centre: SmsCentre | None = None
        self.number = ""
        self.text_mode = False
        self.ucs2 = False
        self.cnmi_mt = 0
        self.store: dict[int, Stored] = {}
        self._entry_to: str | None = None
        #: Every AT command the endpoint answered, in order (tests check port-lock ordering).
        self.log: list[str] = []

    # --- state checks ----------------------------------------------------------------

    def _refusal(self) -> int | None:
        """The +CMS ERROR code SMS gets now, or None when SMS works."""
        err = self.engine.sim_error()
        if err == 10:
            return 310
        if err is not None:
            return 313
        if "sim_locked" in self.engine.faults:  # type: ignore[operator]
            return 311
        if not getattr(self.engine.net(), "registered", False):
            return 331
        return None

    def can_receive(self) -> bool:
        return self._refusal() is None and len(self.store) < CAPACITY

    # --- AT commands -----------------------------------------------------------------

    def command(self, up: str) -> tuple[list[str], str] | None:
        """Answer an SMS command (``up`` uppercased, spaces removed); None if not one."""
        if not up.startswith(("+CMG", "+CSCS", "+CPMS", "+CNMI", "+CSCA")):
            return None
        self.log.append(up)
        if up == "+CMGF?":
            return [f"+CMGF: {int(self.text_mode)}"], "OK"
        if up in ("+CMGF=0", "+CMGF=1"):
            self.text_mode = up.endswith("1")
            return [], "OK"
        if up.startswith("+CSCS="):
            cs = up[6:].strip('"')
            if cs not in ("GSM", "UCS2", "IRA"):
                return [], "+CMS ERROR: 303"
            self.ucs2 = cs == "UCS2"
            return [], "OK"
        if up == "+CSCS?":
            return [f'+CSCS: "{"UCS2" if self.ucs2 else "GSM"}"'], "OK"
        if up.startswith("+CNMI="):
            parts = up[6:].split(",")
            self.cnmi_mt = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            return [], "OK"
        if up.startswith("+CPMS"):
            n = len(self.store)
            return [f'+CPMS: "SM",{n},{CAPACITY},"SM",{n},{CAPACITY},"SM",{n},{CAPACITY}'], "OK"
        if up == "+CSCA?":
            if self.centre is None:
                return [], "+CMS ERROR: 330"
            return [f'+CSCA: "{self.centre.address}",145'], "OK"
        sim = self.engine.sim_error()
        if sim is not None:
            return [], f"+CMS ERROR: {310 if sim == 10 else 313}"
        if up.startswith("+CMGR="):
            slot = up[6:]
            if not slot.isdigit():
                return [], "+CMS ERROR: 321"
            msg = self.store.get(int(slot))
            if msg is None:
                return [], "OK"
            lines = [f'+CMGR: "{msg.status}","{self._out(msg.sender)}",,"{format_scts(msg.scts)}"']
            lines.append(self._out(msg.text))
            msg.status = "REC READ"
            return lines, "OK"
        if up.startswith("+CMGL"):
            want = up[6:].strip('"') if up.startswith("+CMGL=") else "REC UNREAD"
            want = {"0": "REC UNREAD", "1": "REC READ", "4": "ALL"}.get(want, want)
            lines = []
            for idx in sorted(self.store):
                msg = self.store[idx]
                if want != "ALL" and msg.status != want:
                    continue
                lines.append(
                    f'+CMGL: {idx},"{msg.status}","{self._out(msg.sender)}",,'
                    f'"{format_scts(msg.scts)}"'
                )
                lines.append(self._out(msg.text))
                if msg.status == "REC UNREAD":
                    msg.status = "REC READ"
            return lines, "OK"
        if up.startswith("+CMGD="):
            args = up[6:].split(",")
            if not args[0].isdigit():
                return [], "+CMS ERROR: 321"
            flag = int(args[1]) if len(args) > 1 and args[1].isdigit() else 0
            if flag == 4:
                self.store.clear()
            else:
                self.store.pop(int(args[0]), None)
            return [], "OK"
        return [], "ERROR"

    def _out(self, text: str) -> str:
        return encode_ucs2(text) if self.ucs2 else text

    # --- sending -----------------------------------------------------------------------

    @property
    def entering(self) -> bool:
        return self._entry_to is not None

    def begin(self, body: str) -> bytes | None:
        """``AT+CMGS="<da>"``: the prompt (or the refusal); None for any other command."""
        up = body.strip().upper()
        if not up.startswith("+CMGS="):
            return None
        self.log.append(up)
        if not self.text_mode:
            return b"\r\n+CMS ERROR: 304\r\n"
        refusal = self._refusal()
        if refusal is None and self.centre is None:
            refusal = 330
        if refusal is not None:
            return f"\r\n+CMS ERROR: {refusal}\r\n".encode()
        dest = body.strip()[6:].split(",")[0].strip().strip('"')
        if self.ucs2:
            dest = decode_ucs2(dest) or dest
        self._entry_to = dest
        return b"\r\n> "

    def take_text(self, buf: bytearray) -> tuple[bytes, int] | None:
        """In text entry: (what the modem prints, bytes consumed) once Ctrl-Z or ESC is in."""
        ends = [i for i in (buf.find(CTRL_Z), buf.find(ESC)) if i >= 0]
        if not ends:
            if len(buf) > 1024:  # far past one SMS: the modem gives up
                self._entry_to = None
                return b"\r\n+CMS ERROR: 305\r\n", len(buf)
            return None
        end = min(ends)
        raw = bytes(buf[:end]).decode("latin-1")
        to, self._entry_to = self._entry_to, None
        echo = raw.encode("latin-1") if self.engine.echo else b""
        if buf[end : end + 1] == ESC:
            return echo + b"\r\nOK\r\n", end + 1
        text = decode_ucs2(raw) if self.ucs2 else raw
        if text is None:
            return echo + b"\r\n+CMS ERROR: 305\r\n", end + 1
        assert to is not None and self.centre is not None
        mr = self.centre.submit(self.number, to, text)
        self.log.append(f"SENT {text}")
        return echo + f"\r\n+CMGS: {mr}\r\n\r\nOK\r\n".encode(), end + 1

    # --- receiving ---------------------------------------------------------------------

    def receive(self, sender: str, text: str, scts: float) -> bool:
        """Store an incoming SMS; False (the centre retries) when it cannot be received."""
        if not self.can_receive():
            return False
        idx = next(i for i in range(CAPACITY) if i not in self.store)
        self.store[idx] = Stored("REC UNREAD", sender, scts, text)
        if self.cnmi_mt == 1:
            from firmware_shims.modem.sim import Chunk

            self.engine._pending.append(Chunk(0.0, f'\r\n+CMTI: "SM",{idx}\r\n'.encode()))
        return True

    def tick(self) -> None:
        if self.centre is not None and self.centre.waiting:
            self.centre.pump()


@dataclass
class SmsCentre:
    """Routes SMS between attached simulated modems (module docstring)."""

    clock: Callable[[], float] = time.time
    address: str = "+84980200030"
    endpoints: dict[str, SmsEndpoint] = field(default_factory=dict)
    submitted: list[Submitted] = field(default_factory=list)
    waiting: list[Submitted] = field(default_factory=list)
    undeliverable: int = 0
    _mr: int = 0

    def attach(self, engine: object, number: str) -> SmsEndpoint:
        """Give ``engine`` (a ``ModemEngine``) the phone ``number`` on this centre."""
        endpoint: SmsEndpoint = engine.sms  # type: ignore[attr-defined]
        endpoint.centre, endpoint.number = self, number
        self.endpoints[number] = endpoint
        return endpoint

    def submit(self, sender: str, to: str, text: str) -> int:
        """Accept one SMS; returns its message reference (0..255)."""
        self._mr = (self._mr + 1) % 256
        sub = Submitted(sender, to, text, self.clock(), self._mr)
        self.submitted.append(sub)
        if to not in self.endpoints:
            self.undeliverable += 1
        else:
            self.waiting.append(sub)
            self.pump()
        return sub.mr

    def pump(self) -> None:
        """Deliver what can be delivered now."""
        still: list[Submitted] = []
        for sub in self.waiting:
            target = self.endpoints.get(sub.to)
            if target is not None and target.receive(sub.sender, sub.text, sub.at):
                sub.delivered = True
            else:
                still.append(sub)
        self.waiting = still


__all__ = ["CAPACITY", "SmsCentre", "SmsEndpoint", "Submitted"]
