"""The AT modem simulator: a pure engine, a pty transport, and helpers for tests.

Three layers, usable separately:

``ModemEngine`` (pure: state + faults + clock, no I/O)
    ``feed(bytes) -> list[Chunk]`` takes what a client wrote and returns what
    the modem prints, each ``Chunk`` with a delay in seconds; ``tick()``
    returns spontaneous output (``RDY`` at the end of a reset, URCs, noise).
    ``engine.faults`` is a ``firmware_shims.control.FaultSet``. Run it inside
    a process without any pty (``firmware_shims.modem.port.AtPort.for_engine``)
    to simulate a thousand modems cheaply.

``PtyModem`` (async context manager)
    Serves an engine on a pseudo-terminal with ``link`` a symlink to the pty
    slave, plus the fault-control socket. With ``reenumerate=True`` a reset
    removes the link and closes the pty, like a USB modem vanishing, and comes
    back on a new pty.

``loa-sim modem --dialect NAME --link PATH [--fault NAME]...
[--control SOCKET]`` runs a ``PtyModem`` until SIGTERM/SIGINT, then removes
the link and the socket (default socket ``<link>.ctl``). Set and clear faults
at runtime with ``loa-sim ctl --socket PATH set|clear|list [FAULT]``.

For tests, start a real ``loa-sim modem`` subprocess and wait until its link
exists::

    async with running_modem(tmp_path / "m0", dialect="quectel",
                             faults=["sim_failure"]) as modem:
        ser = serial.Serial(str(modem.link), timeout=2)   # or AtPort(modem.link)
        await modem.clear("sim_failure")                   # via the control socket

``modem_process(...)`` is the same as a plain (sync) context manager.

Faults: ``sim_absent``, ``sim_failure``, ``sim_locked``, ``no_service``,
``weak_signal``, ``flapping`` (registered and lost in turn, each for half of
``flap_period``), ``denied``, ``unresponsive`` (answers nothing, not even the
echo), ``garbage`` (noise bytes between and inside replies, and while idle),
``slow`` (echo at once, the answer ``slow_delay`` seconds later),
``data_blocked`` (SIM ready and registered, but the PDP context cannot be
activated: ``+CGACT: 1,0``, no address, ``AT+CGACT=1,1`` fails with ``+CME
ERROR: 148``; SMS still works), ``csq_stuck`` (``+CSQ: 99,99`` on a healthy
radio, as LTE-only modules do; ``+CESQ`` still has the levels).

Dialects (``DIALECT_NAMES``) are those of ``firmware_shims.modem.dialects``;
each prints what its family's manual (or field reports) show: ``quectel-ec200``
and ``quectel-eg800k`` have no ``AT+QCSQ`` and print +QENG's SINR in dB with
``-`` for srxlev; ``quectel-eg21`` prints +QCSQ's LTE RSSI as a positive number
and +QENG's SINR in dB; ``simcom-a7670``/``simcom-a7672`` print +CPSI's levels
as the A76XX manual's report values (RSRP + 140, 2·RSRQ + 40, RSSI + 110),
``simcom`` in tenths of a dB as SIM7600 does. Every dialect answers ``AT+CESQ``.

SMS (``firmware_shims.modem.smsc``): every engine has an ``sms`` side that
answers the TS 27.005 text-mode commands; ``SmsCentre.attach(engine, number)``
links engines so one can text another.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
import tty
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firmware_shims import control
from firmware_shims.modem.at import CME_ERRORS
from firmware_shims.modem.generic import OPERATORS, swap_nibbles
from firmware_shims.modem.smsc import SmsEndpoint

FAULTS = (
    "sim_absent",
    "sim_failure",
    "sim_locked",
    "no_service",
    "weak_signal",
    "flapping",
    "denied",
    "unresponsive",
    "garbage",
    "slow",
    "data_blocked",
    "csq_stuck",
)
DIALECT_NAMES = (
    "generic",
    "quectel",
    "quectel-eg21",
    "quectel-ec200",
    "quectel-eg800k",
    "simcom",
    "simcom-a7670",
    "simcom-a7672",
)


@dataclass(frozen=True, slots=True)
class Chunk:
    """Bytes the modem prints ``delay`` seconds after the input that caused them."""

    delay: float
    data: bytes


_DEFAULT_FLAP_PERIOD = 20.0
_DEFAULT_SLOW_DELAY = 3.0
_DEFAULT_RESET_TIME = 3.0
_DEFAULT_URC_RATE = 0.05


@dataclass(frozen=True, slots=True)
class SimOptions:
    """Timing and randomness of a simulated modem."""

    #: seconds of one full flapping cycle (registered for half, lost for half)
    flap_period: float = _DEFAULT_FLAP_PERIOD
    #: seconds a reply is late under the ``slow`` fault
    slow_delay: float = _DEFAULT_SLOW_DELAY
    #: seconds a reset (AT+CFUN=1,1 / AT+CRESET) keeps the modem silent before RDY
    reset_time: float = _DEFAULT_RESET_TIME
    #: probability that a reply carries an unrelated URC (0 disables)
    urc_rate: float = _DEFAULT_URC_RATE
    #: seed of the engine's random numbers (signal jitter, noise, URCs); None: random
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class _Identity:
    manufacturer: tuple[str, ...]
    cmee_default: int
    boot: tuple[str, ...]


_IDENTITY = {
    "generic": _Identity(
        ("Generic", "LTE Cat-1 Module", "Revision: LTEMOD_1.0.3"), 0, ("RDY", "+CPIN: READY")
    ),
    "quectel": _Identity(
        ("Quectel", "EC25", "Revision: EC25EFAR06A06M4G"),
        1,
        ("RDY", "+CFUN: 1", "+CPIN: READY", "+QUSIM: 1", "+QIND: SMS DONE", "+QIND: PB DONE"),
    ),
    "simcom": _Identity(
        (
            "Manufacturer: SIMCOM INCORPORATED",
            "Model: SIMCOM_SIM7600E-H",
            "Revision: SIM7600M22_V2.0.1",
            "IMEI: 867584030000001",
            "+GCAP: +CGSM",
        ),
        0,
        ("RDY", "+CPIN: READY", "SMS DONE", "PB DONE"),
    ),
    "quectel-eg21": _Identity(
        ("Quectel", "EG21", "Revision: EG21GGBR07A08M1G"),
        1,
        ("RDY", "+CFUN: 1", "+CPIN: READY", "+QUSIM: 1", "+QIND: SMS DONE"),
    ),
    "quectel-ec200": _Identity(
        ("Quectel", "EC200U", "Revision: EC200UCNAAR02A09M08"),
        1,
        ("RDY", "+CFUN: 1", "+CPIN: READY", "+QUSIM: 1", "+QIND: SMS DONE"),
    ),
    "quectel-eg800k": _Identity(
        ("Quectel", "EG800K", "Revision: EG800KEULCR03A01M04"),
        1,
        ("RDY", "+CFUN: 1", "+CPIN: READY", "+QIND: SMS DONE"),
    ),
    "simcom-a7670": _Identity(
        (
            "Manufacturer: SIMCOM INCORPORATED",
            "Model: A7670E-LASE",
            "Revision: A7670M7_V1.11.1",
            "IMEI: 867584030000001",
            "+GCAP: +CGSM,+FCLASS,+DS",
        ),
        0,
        ("RDY", "+CPIN: READY", "SMS DONE", "PB DONE"),
    ),
    "simcom-a7672": _Identity(
        (
            "Manufacturer: SIMCOM INCORPORATED",
            "Model: A7672E-LASE",
            "Revision: A7672M7_V1.11.1",
            "IMEI: 867584030000001",
            "+GCAP: +CGSM,+FCLASS,+DS",
        ),
        0,
        ("RDY", "+CPIN: READY", "SMS DONE", "PB DONE"),
    ),
}


def family(dialect: str) -> str:
    """``generic``, ``quectel`` or ``simcom``: whose commands a dialect speaks."""
    return dialect.split("-", 1)[0]


_URC_POOL = {
    "generic": ('+CTZV: "+28"', "+CGEV: ME PDN ACT 1"),
    "quectel": ('+QIND: "act","LTE"', '+CTZE: "+28",0,"2026/11/26,09:15:02"', "+QUSIM: 1"),
    "simcom": ('+CTZV: "+28"', "DST: 0", "+CGEV: ME PDN ACT 1"),
}
_NOISE = bytes([*range(0x01, 0x09), *range(0x0E, 0x20), *range(0x80, 0x100)])


@dataclass(frozen=True, slots=True)
class _Net:
    """What the radio looks like right now."""

    stat: int  # 3GPP <stat>
    csq: int  # 0..31 or 99
    rsrp: int
    rsrq: int
    rssi: int
    sinr: int  # dB

    @property
    def registered(self) -> bool:
        return self.stat in (1, 5)

    @property
    def service(self) -> bool:
        return self.csq != 99


class ModemEngine:
    """A simulated AT modem: ``feed``/``handle`` answer input, ``tick`` advances time.

    ``clock`` (monotonic seconds) drives flapping, resets and idle noise, so a
    test can step time by hand. The engine holds no I/O and never raises for
    any input bytes.
    """

    def __init__(
        self,
        dialect: str = "generic",
        *,
        faults: Iterable[str] = (),
        options: SimOptions = SimOptions(),
        clock: Callable[[], float] = time.monotonic,
        iccid: str = "8984040000012345678",
        imsi: str = "452040000012345",
        mccmnc: str = "45204",
    ) -> None:
        if dialect not in _IDENTITY:
            raise ValueError(f"unknown modem dialect {dialect!r}; known: {', '.join(_IDENTITY)}")
        self.dialect = dialect
        self.family = family(dialect)
        self.options = options
        self.clock = clock
        self.iccid = iccid
        self.imsi = imsi
        self.mccmnc = mccmnc
        #: The serving cell (hex TAC and cell id) the modem reports while registered.
        self.tac = "3A98"
        self.cell_id = "1A2D101"
        self.rng = random.Random(options.seed)
        self._ident = _IDENTITY[dialect]
        self._buf = bytearray()
        self._pending: list[Chunk] = []
        self._flap_start = clock()
        self._next_noise = clock()
        self.reset_until: float | None = None
        self.resets = 0
        self._reset_state()
        self.sms = SmsEndpoint(self)
        self.faults = control.FaultSet(FAULTS, faults, on_change=self._faults_changed)

    # --- state ------------------------------------------------------------------

    def _reset_state(self) -> None:
        self.echo = True
        self.cmee = self._ident.cmee_default
        self.reg_urc = {"CREG": 0, "CGREG": 0, "CEREG": 0}
        self.cops_format = 0
        self.cfun = 1
        self._last_registered: bool | None = None

    @property
    def resetting(self) -> bool:
        return self.reset_until is not None

    def _faults_changed(self, active: frozenset[str]) -> None:
        if "flapping" in active and not getattr(self, "_flapping", False):
            self._flap_start = self.clock()
        self._flapping = "flapping" in active
        if "sim_absent" in active:
            urc = "+CPIN: SIM REMOVED" if self.family == "simcom" else "+CPIN: NOT READY"
            self._pending.append(Chunk(0.0, _lines([urc])))

    def sim_error(self) -> int | None:
        """The +CME ERROR the SIM currently causes for SIM-reading commands."""
        if "sim_absent" in self.faults:
            return 10
        if "sim_failure" in self.faults:
            return 13
        return None

    def net(self) -> _Net:
        """The radio view the faults and clock give now."""
        j = self.rng.randint(-1, 1)
        normal = _Net(stat=1, csq=20 + j, rsrp=-95 + j, rsrq=-10, rssi=-65 + j, sinr=12 + j)
        weak = _Net(stat=1, csq=4, rsrp=-118 + j, rsrq=-18, rssi=-101 + j, sinr=-4)
        lost = _Net(stat=2, csq=99, rsrp=-140, rsrq=-20, rssi=-113, sinr=-20)
        if self.cfun != 1:
            return _Net(stat=0, csq=99, rsrp=-140, rsrq=-20, rssi=-113, sinr=-20)
        if self.sim_error() is not None or "sim_locked" in self.faults:
            base = weak if "weak_signal" in self.faults else normal
            return _Net(0, base.csq, base.rsrp, base.rsrq, base.rssi, base.sinr)
        if "no_service" in self.faults:
            return lost
        if "flapping" in self.faults:
            period = max(self.options.flap_period, 0.01)
            if (self.clock() - self._flap_start) % period >= period / 2:
                return lost
        base = weak if "weak_signal" in self.faults else normal
        if "denied" in self.faults:
            return _Net(3, base.csq, base.rsrp, base.rsrq, base.rssi, base.sinr)
        return base

    # --- I/O-free interface ---------------------------------------------------------

    def boot(self) -> list[Chunk]:
        """What the modem prints when it powers up (``RDY`` and the dialect's boot URCs)."""
        lines = [self._ident.boot[0]]
        for urc in self._ident.boot[1:]:
            if urc.startswith("+CPIN"):
                if "sim_absent" in self.faults:
                    urc = "+CPIN: NOT INSERTED" if self.family != "simcom" else "+CPIN: SIM REMOVED"
                elif "sim_locked" in self.faults:
                    urc = "+CPIN: SIM PIN"
                elif "sim_failure" in self.faults:
                    continue
            elif self.sim_error() is not None and urc != "+CFUN: 1":
                continue
            lines.append(urc)
        return [Chunk(0.0, _lines(lines))]

    def feed(self, data: bytes) -> list[Chunk]:
        """Take bytes the client wrote; answer every complete command line (CR or LF ended)."""
        self._buf += data
        out: list[Chunk] = []
        while True:
            if self.sms.entering:
                # After AT+CMGS's prompt, bytes are the SMS text until Ctrl-Z / ESC.
                taken = self.sms.take_text(self._buf)
                if taken is None:
                    break
                printed, used = taken
                del self._buf[:used]
                out.append(Chunk(0.0, printed))
                continue
            ends = [i for i in (self._buf.find(b"\r"), self._buf.find(b"\n")) if i >= 0]
            if not ends:
                break
            end = min(ends)
            raw = bytes(self._buf[:end])
            del self._buf[: end + 1]
            out += self.handle(raw.decode("latin-1"))
        if len(self._buf) > 4096:  # a real modem's command buffer is far smaller
            self._buf.clear()
        return out

    def tick(self) -> list[Chunk]:
        """Spontaneous output due now: end of a reset, registration URCs, idle noise."""
        now = self.clock()
        out, self._pending = self._pending, []
        if self.reset_until is not None:
            if now < self.reset_until:
                return []
            self.reset_until = None
            self._reset_state()
            out += self.boot()
        if "unresponsive" in self.faults:
            return []
        self.sms.tick()
        registered = self.net().registered
        if self._last_registered is not None and registered != self._last_registered:
            for name, n in self.reg_urc.items():
                if n:
                    out.append(Chunk(0.0, _lines([f"+{name}: {1 if registered else 2}"])))
        self._last_registered = registered
        if "garbage" in self.faults and now >= self._next_noise:
            self._next_noise = now + 1.0
            out.append(Chunk(0.0, self._noise()))
        return out

    def handle(self, line: str) -> list[Chunk]:
        """Answer one command line (without its terminator)."""
        if self.resetting or "unresponsive" in self.faults:
            return []
        text = "".join(c for c in line if c.isprintable()).strip()
        if not text:
            return []
        out: list[Chunk] = []
        if self.echo:
            out.append(Chunk(0.0, (line.rstrip("\n") + "\r").encode("latin-1", "replace")))
        start = text.upper().find("AT")
        if start < 0:
            # Real modems ignore lines that are not AT commands...
            return out
        # ...and skip whatever noise precedes the "AT" of a command line.
        prompt = self.sms.begin(text[start + 2 :])
        if prompt is not None:
            out.append(Chunk(0.0, prompt))
            return out
        lines, final = self._execute(text[start + 2 :])
        reply = _lines([*lines, final])
        if self.options.urc_rate and self.rng.random() < self.options.urc_rate:
            urc = _lines([self.rng.choice(_URC_POOL[self.family])])
            reply = urc + reply if self.rng.random() < 0.5 else reply + urc
        if "garbage" in self.faults:
            reply = self._noise() + reply + self._noise()
        delay = self.options.slow_delay if "slow" in self.faults else 0.0
        out.append(Chunk(delay, reply))
        if self.resetting:
            self.resets += 1
        return out

    # --- commands -------------------------------------------------------------------

    def _noise(self) -> bytes:
        return bytes(self.rng.choice(_NOISE) for _ in range(self.rng.randint(3, 24)))

    def _error(self, code: int) -> str:
        if self.cmee == 1:
            return f"+CME ERROR: {code}"
        if self.cmee == 2:
            return f"+CME ERROR: {CME_ERRORS.get(code, 'unknown')}"
        return "ERROR"

    def _execute(self, body: str) -> tuple[list[str], str]:
        """Run ``body`` (after ``AT``), possibly several commands chained with ``;``."""
        parts = [p.strip() for p in body.split(";")]
        if len(parts) > 1 and parts[-1] == "":
            parts.pop()
        info: list[str] = []
        for part in parts or [""]:
            lines, final = self._one(part)
            info += lines
            if final != "OK":
                return info, final
        return info, "OK"

    def _one(self, cmd: str) -> tuple[list[str], str]:
        up = cmd.upper().replace(" ", "")
        d = self.family
        sim_err = self.sim_error()
        if up == "":
            return [], "OK"
        if up in ("I", "I0", "+GMI", "+CGMI"):
            return list(
                self._ident.manufacturer if up.startswith("I") else self._ident.manufacturer[:1]
            ), "OK"
        if up in ("E0", "E1"):
            self.echo = up == "E1"
            return [], "OK"
        if up in ("Z", "&F", "&W", "V1", "Q0", "&D2"):
            return [], "OK"
        if up in ("+CGSN", "+GSN"):
            return ["867584030000001"], "OK"
        if up.startswith("+CMEE"):
            if up == "+CMEE?":
                return [f"+CMEE: {self.cmee}"], "OK"
            if up == "+CMEE=?":
                return ["+CMEE: (0-2)"], "OK"
            if up in ("+CMEE=0", "+CMEE=1", "+CMEE=2"):
                self.cmee = int(up[-1])
                return [], "OK"
            return [], self._error(50)
        if up == "+CPIN?":
            if sim_err is not None:
                return [], self._error(sim_err)
            return ["+CPIN: SIM PIN" if "sim_locked" in self.faults else "+CPIN: READY"], "OK"
        if up.startswith("+CFUN"):
            return self._cfun(up)
        if up == "+CRESET" and d == "simcom":
            self._start_reset()
            return [], "OK"
        if up == "+CSQ":
            n = self.net()
            return [f"+CSQ: {99 if 'csq_stuck' in self.faults else n.csq},99"], "OK"
        if up == "+CESQ":
            return [self._cesq()], "OK"
        if up == "+CSQ=?":
            return ["+CSQ: (0-31,99),(0-7,99)"], "OK"
        for name in ("CREG", "CGREG", "CEREG"):
            if up.startswith("+" + name):
                return self._reg(name, up[len(name) + 1 :])
        if up.startswith("+COPS"):
            return self._cops(up[5:])
        if up == "+CIMI":
            if sim_err is not None:
                return [], self._error(sim_err)
            if "sim_locked" in self.faults:
                return [], self._error(11)
            return [self.imsi], "OK"
        iccid_cmd = {"generic": "+CCID", "quectel": "+QCCID", "simcom": "+CICCID"}[d]
        if up == iccid_cmd:
            if sim_err is not None:
                return [], self._error(sim_err)
            prefix = {"generic": "+CCID", "quectel": "+QCCID", "simcom": "+ICCID"}[d]
            shown = self.iccid + ("F" if d == "quectel" and len(self.iccid) % 2 else "")
            return [f"{prefix}: {shown}"], "OK"
        if up.startswith("+CRSM="):
            return self._crsm(up[6:])
        if up == "+QCSQ" and d == "quectel" and not self._cat1:
            return [self._qcsq()], "OK"
        if up == '+QENG="SERVINGCELL"' and d == "quectel":
            return [self._qeng()], "OK"
        if up == "+CPSI?" and d == "simcom":
            return [self._cpsi()], "OK"
        sms = self.sms.command(up)
        if sms is not None:
            return sms
        bearer = self._bearer(up)
        if bearer is not None:
            return bearer
        if up == "+CGDCONT?":
            return ['+CGDCONT: 1,"IP","v-internet","0.0.0.0",0,0'], "OK"
        if up.endswith("=?") and up[:-2] in _KNOWN_TESTS.get(d, frozenset()) | _KNOWN_TESTS["all"]:
            return [], "OK"
        # An unknown command gets a plain ERROR whatever AT+CMEE says.
        return [], "ERROR"

    def _bearer(self, up: str) -> tuple[list[str], str] | None:
        """The packet-data bearer: attached and active with an address when registered,
        unless ``data_blocked`` (attached, but the PDP context is refused)."""
        registered = self.net().registered
        active = registered and "data_blocked" not in self.faults
        if up == "+CGATT?":
            return [f"+CGATT: {int(registered)}"], "OK"
        if up == "+CGACT?":
            return [f"+CGACT: 1,{int(active)}"], "OK"
        if up.startswith("+CGACT="):
            if up.startswith("+CGACT=1") and not active:
                return [], self._error(148 if registered else 30)
            return [], "OK"
        if up in ("+CGPADDR=1", "+CGPADDR"):
            return ['+CGPADDR: 1,"10.64.3.17"' if active else '+CGPADDR: 1,"0.0.0.0"'], "OK"
        if up == "+QIACT?" and self.dialect == "quectel":
            return (['+QIACT: 1,1,1,"10.64.3.17"'] if active else []), "OK"
        return None

    def _start_reset(self) -> None:
        self.reset_until = self.clock() + self.options.reset_time

    def _cfun(self, up: str) -> tuple[list[str], str]:
        if up == "+CFUN?":
            return [f"+CFUN: {self.cfun}"], "OK"
        if up == "+CFUN=?":
            return ["+CFUN: (0,1,4),(0-1)"], "OK"
        args = up[6:].split(",") if up.startswith("+CFUN=") else []
        if not args or args[0] not in ("0", "1", "4") or (len(args) > 1 and args[1] not in "01"):
            return [], self._error(50)
        if len(args) > 1 and args[1] == "1":
            self._start_reset()
            return [], "OK"
        self.cfun = int(args[0])
        return [], "OK"

    def _reg(self, name: str, rest: str) -> tuple[list[str], str]:
        if rest.startswith("=") and rest != "=?":
            mode = rest[1:]
            if mode not in ("0", "1", "2"):
                return [], self._error(50)
            self.reg_urc[name] = int(mode)
            return [], "OK"
        if rest == "=?":
            return [f"+{name}: (0-2)"], "OK"
        if rest != "?":
            return [], "ERROR"
        net = self.net()
        n = self.reg_urc[name]
        stat = net.stat
        if name == "CREG" and self.family != "generic" and stat in (1, 5):
            # LTE-only modules often report CS domain as not registered.
            stat = 0 if self.family == "simcom" else stat
        if n == 2 and stat in (1, 5):
            return [f'+{name}: 2,{stat},"{self.tac}","{self.cell_id}",7'], "OK"
        return [f"+{name}: {n},{stat}"], "OK"

    def _cops(self, rest: str) -> tuple[list[str], str]:
        if rest.startswith("=3,"):
            fmt = rest[3:]
            if fmt not in ("0", "1", "2"):
                return [], self._error(50)
            self.cops_format = int(fmt)
            return [], "OK"
        if rest == "=?":
            return [
                f'+COPS: (2,"{OPERATORS[self.mccmnc]}","VT","{self.mccmnc}",7),,(0-4),(0-2)'
            ], "OK"
        if rest.startswith("="):
            return [], "OK"
        if rest != "?":
            return [], "ERROR"
        net = self.net()
        if not net.registered:
            return ["+COPS: 0"], "OK"
        name = {0: OPERATORS.get(self.mccmnc, self.mccmnc), 1: "VT", 2: self.mccmnc}
        if self.family == "quectel" and self.cops_format == 0:
            name[0] = name[0].upper()
        return [f'+COPS: 0,{self.cops_format},"{name[self.cops_format]}",7'], "OK"

    def _crsm(self, args: str) -> tuple[list[str], str]:
        if args.replace(" ", "") != "176,12258,0,0,10":
            return ['+CRSM: 106,130,""'], "OK"
        if self.sim_error() is not None:
            return [], self._error(self.sim_error() or 13)
        padded = self.iccid + "F" * (20 - len(self.iccid))
        return [f'+CRSM: 144,0,"{swap_nibbles(padded)}"'], "OK"

    @property
    def _cat1(self) -> bool:
        return self.dialect in ("quectel-ec200", "quectel-eg800k")

    def _cesq(self) -> str:
        """``+CESQ: <rxlev>,<ber>,<rscp>,<ecno>,<rsrq>,<rsrp>`` of an LTE cell (TS 27.007)."""
        n = self.net()
        if not n.service:
            return "+CESQ: 99,99,255,255,255,255"
        rsrq = min(34, max(0, round((n.rsrq + 20) * 2)))
        rsrp = min(97, max(0, n.rsrp + 141))
        return f"+CESQ: 99,99,255,255,{rsrq},{rsrp}"

    def _qcsq(self) -> str:
        n = self.net()
        if not n.service:
            return '+QCSQ: "NOSERVICE"'
        # EG21 firmware prints the LTE RSSI's magnitude.
        rssi = -n.rssi if self.dialect == "quectel-eg21" else n.rssi
        return f'+QCSQ: "LTE",{rssi},{n.rsrp},{(n.sinr + 20) * 5},{n.rsrq}'

    def _cell_fields(self) -> tuple[str, str]:
        return self.mccmnc[:3], self.mccmnc[3:]

    def _qeng(self) -> str:
        n = self.net()
        if not n.service:
            return '+QENG: "servingcell","SEARCH"'
        state = "NOCONN" if n.registered else "LIMSRV"
        mcc, mnc = self._cell_fields()
        if self.dialect == "quectel":
            sinr, srxlev = str((n.sinr + 20) * 5), str(max(0, n.rsrp + 140))
        else:  # EG21 builds, EC200, EG800K: SINR in dB; Cat-1 builds print "-" for srxlev
            sinr, srxlev = str(n.sinr), "-" if self._cat1 else str(max(0, n.rsrp + 140))
        return (
            f'+QENG: "servingcell","{state}","LTE","FDD",{mcc},{mnc},{self.cell_id},123,1650,3,5,5,'
            f"{self.tac},{n.rsrp},{n.rsrq},{n.rssi},{sinr},{srxlev}"
        )

    def _cpsi(self) -> str:
        n = self.net()
        if not n.registered:
            return "+CPSI: NO SERVICE,Online"
        mcc, mnc = self._cell_fields()
        if self.dialect in ("simcom-a7670", "simcom-a7672"):
            # A76XX manual V1.09: report values, RSRP-140 dBm, (RSRQ-40)/2 dB, RSSI-110 dBm.
            rsrq = min(34, max(0, round(n.rsrq * 2 + 40)))
            levels = f"{rsrq},{min(97, max(0, n.rsrp + 140))},{min(110, max(0, n.rssi + 110))}"
        else:  # SIM7600: tenths of a dB
            levels = f"{n.rsrq * 10},{n.rsrp * 10},{n.rssi * 10}"
        return (
            f"+CPSI: LTE,Online,{mcc}-{mnc},0x{self.tac},{int(self.cell_id, 16)},123,EUTRAN-BAND3,"
            f"1650,5,5,{levels},{n.sinr}"
        )


_KNOWN_TESTS = {
    "generic": frozenset({"+CCID"}),
    "all": frozenset({"+CPIN", "+CREG", "+CGREG", "+CEREG", "+CIMI", "+CRSM", "+CGDCONT", "+CESQ"}),
    "quectel": frozenset({"+QCCID", "+QCSQ", "+QENG"}),
    "simcom": frozenset({"+CICCID", "+CPSI", "+CRESET"}),
}


def _lines(lines: Sequence[str]) -> bytes:
    return b"".join(b"\r\n" + ln.encode("latin-1", "replace") + b"\r\n" for ln in lines)


# --- the pty transport ------------------------------------------------------------


class PtyModem:
    """Serves a ``ModemEngine`` on a pseudo-terminal; use as an async context manager.

    ``link`` is created (a symlink to the pty slave) only once the control
    socket listens, so "the link exists" means "ready". On exit (or
    ``aclose``) the link and the control socket are removed.
    """

    def __init__(
        self,
        engine: ModemEngine,
        link: Path,
        *,
        control_path: Path | None = None,
        reenumerate: bool = False,
        tick_interval: float = 0.05,
    ) -> None:
        self.engine = engine
        self.link = Path(link)
        self.control_path = control_path or Path(f"{link}.ctl")
        self.reenumerate = reenumerate
        self.tick_interval = tick_interval
        self.dropped_bytes = 0
        self._master: int | None = None
        self._slave: int | None = None
        self._out: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        self._last_due = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._server: asyncio.AbstractServer | None = None
        self._detached = False

    async def __aenter__(self) -> PtyModem:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        self._server = await control.serve(self.control_path, self.engine.faults)
        self._attach()
        self._tasks = [
            asyncio.create_task(self._writer(), name=f"modem-sim-writer[{self.link}]"),
            asyncio.create_task(self._ticker(), name=f"modem-sim-tick[{self.link}]"),
        ]
        self._enqueue(self.engine.boot())

    def _attach(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        tmp = self.link.with_name(self.link.name + ".tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(os.ttyname(slave))
        tmp.replace(self.link)
        asyncio.get_running_loop().add_reader(master, self._readable)
        self._detached = False

    def _detach(self) -> None:
        """The USB device vanishes: link gone, pty closed (clients get EIO)."""
        with contextlib.suppress(FileNotFoundError):
            self.link.unlink()
        if self._master is not None:
            asyncio.get_running_loop().remove_reader(self._master)
            os.close(self._master)
        if self._slave is not None:
            os.close(self._slave)
        self._master = self._slave = None
        self._detached = True

    def _readable(self) -> None:
        assert self._master is not None
        try:
            data = os.read(self._master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        self._enqueue(self.engine.feed(data))
        if self.engine.resetting and self.reenumerate and not self._detached:
            # Let the reset's OK reach the client before the device vanishes.
            self._out.put_nowait((self._last_due + 0.05, b""))

    def _enqueue(self, chunks: Iterable[Chunk]) -> None:
        now = time.monotonic()
        for c in chunks:
            due = max(now + c.delay, self._last_due)
            self._last_due = due
            self._out.put_nowait((due, c.data))

    async def _writer(self) -> None:
        while True:
            due, data = await self._out.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if self.engine.resetting and not self._detached:
                    self._detach()
                continue
            if self._master is None:
                self.dropped_bytes += len(data)
                continue
            try:
                os.write(self._master, data)
            except (BlockingIOError, OSError):
                # Nobody reads the port and its buffer is full: a real UART drops too.
                self.dropped_bytes += len(data)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.tick_interval)
            was_resetting = self.engine.resetting
            chunks = self.engine.tick()
            if was_resetting and not self.engine.resetting and self._detached:
                self._attach()
            self._enqueue(chunks)

    async def aclose(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.control_path.unlink()
        if not self._detached:
            self._detach()


# --- CLI --------------------------------------------------------------------------------


def _positive(text: str) -> float:
    v = float(text)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return v


def add_parser(subparsers: Any) -> None:
    """Register ``loa-sim modem`` on ``loa-sim``'s subparsers."""
    p = subparsers.add_parser("modem", help="an AT modem on a pseudo-terminal, with faults")
    p.add_argument("--dialect", choices=DIALECT_NAMES, default="generic")
    p.add_argument("--link", required=True, type=Path, help="symlink to create to the pty")
    p.add_argument("--fault", action="append", default=[], choices=FAULTS, help="repeatable")
    p.add_argument("--control", type=Path, help="control socket (default <link>.ctl)")
    p.add_argument("--flap-period", type=_positive, default=_DEFAULT_FLAP_PERIOD)
    p.add_argument("--slow-delay", type=_positive, default=_DEFAULT_SLOW_DELAY)
    p.add_argument("--reset-time", type=_positive, default=_DEFAULT_RESET_TIME)
    p.add_argument("--urc-rate", type=float, default=_DEFAULT_URC_RATE)
    p.add_argument("--seed", type=int)
    p.add_argument("--iccid", default="8984040000012345678")
    p.add_argument(
        "--reenumerate",
        action="store_true",
        help="on reset, remove the link and come back on a new pty (a USB modem)",
    )
    p.set_defaults(func=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    engine = ModemEngine(
        args.dialect,
        faults=args.fault,
        iccid=args.iccid,
        options=SimOptions(
            flap_period=args.flap_period,
            slow_delay=args.slow_delay,
            reset_time=args.reset_time,
            urc_rate=args.urc_rate,
            seed=args.seed,
        ),
    )

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with PtyModem(
            engine, args.link, control_path=args.control, reenumerate=args.reenumerate
        ) as pty:
            print(
                f"loa-sim modem: {args.dialect} on {pty.link} -> {os.readlink(pty.link)}",
                flush=True,
            )
            await stop.wait()

    asyncio.run(run())
    return 0


# --- helpers for tests and the demo -----------------------------------------------------


def _argv(
    link: Path,
    dialect: str,
    faults: Iterable[str],
    control_path: Path | None,
    extra_args: Sequence[str],
) -> list[str]:
    argv = [sys.executable, "-m", "firmware_shims.cli", "modem", "--dialect", dialect]
    argv += ["--link", str(link)]
    for f in faults:
        argv += ["--fault", f]
    if control_path is not None:
        argv += ["--control", str(control_path)]
    return [*argv, *extra_args]


@dataclass
class SimProcess:
    """A running ``loa-sim modem`` subprocess: its ``link``, ``control`` socket and faults API."""

    link: Path
    control: Path
    pid: int

    async def set(self, fault: str) -> dict[str, Any]:
        return await control.asend(self.control, "set", fault)

    async def clear(self, fault: str | None = None) -> dict[str, Any]:
        return await control.asend(self.control, "clear", fault)

    async def faults(self) -> list[str]:
        reply = await control.asend(self.control, "list")
        return list(reply["faults"])

    def set_sync(self, fault: str) -> dict[str, Any]:
        return control.send(self.control, "set", fault)

    def clear_sync(self, fault: str | None = None) -> dict[str, Any]:
        return control.send(self.control, "clear", fault)


@contextlib.asynccontextmanager
async def running_modem(
    link: Path,
    *,
    dialect: str = "generic",
    faults: Iterable[str] = (),
    control_path: Path | None = None,
    extra_args: Sequence[str] = ("--urc-rate", "0"),
    timeout: float = 10.0,
) -> AsyncIterator[SimProcess]:
    """Start ``loa-sim modem`` as a subprocess; yield once ``link`` exists; stop it on exit.

    ``extra_args`` go to the command line (``--slow-delay 0.5``, ``--reenumerate``...).
    Raises RuntimeError with the simulator's stderr if it dies or is not ready
    within ``timeout``. On exit it sends SIGTERM and waits (SIGKILL after 5 s).
    """
    link = Path(link)
    ctl = control_path or Path(f"{link}.ctl")
    proc = await asyncio.create_subprocess_exec(
        *_argv(link, dialect, faults, control_path, extra_args),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            while not link.exists():
                if proc.returncode is not None:
                    break
                await asyncio.sleep(0.02)
        if not link.exists():
            err = b""
            if proc.stderr is not None and proc.returncode is not None:
                err = await proc.stderr.read()
            raise RuntimeError(
                f"loa-sim modem on {link} did not start: {err.decode(errors='replace')}"
            )
        yield SimProcess(link=link, control=ctl, pid=proc.pid)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(5.0):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if proc.stderr is not None:
            await proc.stderr.read()


@contextlib.contextmanager
def modem_process(
    link: Path,
    *,
    dialect: str = "generic",
    faults: Iterable[str] = (),
    control_path: Path | None = None,
    extra_args: Sequence[str] = ("--urc-rate", "0"),
    timeout: float = 10.0,
) -> Iterator[SimProcess]:
    """The blocking twin of ``running_modem`` (for sync tests and scripts)."""
    link = Path(link)
    ctl = control_path or Path(f"{link}.ctl")
    proc = subprocess.Popen(
        _argv(link, dialect, faults, control_path, extra_args),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + timeout
        while not link.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if not link.exists():
            proc.kill()
            _, err = proc.communicate(timeout=5)
            raise RuntimeError(
                f"loa-sim modem on {link} did not start: {err.decode(errors='replace')}"
            )
        yield SimProcess(link=link, control=ctl, pid=proc.pid)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate(timeout=5)
        elif proc.stderr is not None:
            proc.communicate(timeout=5)


__all__ = [
    "DIALECT_NAMES",
    "FAULTS",
    "Chunk",
    "ModemEngine",
    "PtyModem",
    "SimOptions",
    "SimProcess",
    "add_parser",
    "family",
    "modem_process",
    "running_modem",
]
