"""AT response framing, shared by every dialect. Pure: no I/O.

A modem answers a command with, in order and all optional: the echo of the
command (until ``ATE0``), information lines, and one final result code
(``OK``, ``ERROR``, ``+CME ERROR: <err>``, ``+CMS ERROR: <err>``, ``NO
CARRIER`` ...). Unsolicited result codes (URCs: ``RDY``, ``+QIND: ...``,
``+CPIN: NOT READY`` ...) may arrive anywhere in between, as may blank lines.

``Framer`` consumes lines one at a time (the serial port feeds it as bytes
arrive) and yields an ``AtResponse`` when the final code arrives;
``parse_response`` frames a whole captured answer at once. Neither raises for
odd content: a line that is not the echo, a URC or a final code is an
information line. ``parse_response`` raises ``AtFormatError`` (a ``ValueError``)
only when the text has no final result code.

``is_read_only(cmd)`` classifies a technician's AT command line: only what is
known to be a query is read-only; everything else (and anything unknown) is
treated as changing the modem's state.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

#: 3GPP TS 27.007 §9.2 +CME ERROR codes that matter for a field modem, with the
#: verbose text a modem prints after ``AT+CMEE=2`` (vendors vary in case only).
CME_ERRORS: dict[int, str] = {
    0: "phone failure",
    1: "no connection to phone",
    2: "phone-adaptor link reserved",
    3: "operation not allowed",
    4: "operation not supported",
    5: "PH-SIM PIN required",
    6: "PH-FSIM PIN required",
    7: "PH-FSIM PUK required",
    10: "SIM not inserted",
    11: "SIM PIN required",
    12: "SIM PUK required",
    13: "SIM failure",
    14: "SIM busy",
    15: "SIM wrong",
    16: "incorrect password",
    17: "SIM PIN2 required",
    18: "SIM PUK2 required",
    20: "memory full",
    21: "invalid index",
    22: "not found",
    23: "memory failure",
    24: "text string too long",
    25: "invalid characters in text string",
    26: "dial string too long",
    27: "invalid characters in dial string",
    30: "no network service",
    31: "network timeout",
    32: "network not allowed - emergency calls only",
    40: "network personalization PIN required",
    41: "network personalization PUK required",
    50: "incorrect parameters",
    100: "unknown",
    107: "GPRS services not allowed",
    111: "PLMN not allowed",
    112: "location area not allowed",
    113: "roaming not allowed in this location area",
    132: "service option not supported",
    133: "requested service option not subscribed",
    134: "service option temporarily out of order",
    148: "unspecified GPRS error",
    149: "PDP authentication failure",
    150: "invalid mobile class",
}

_CME_BY_TEXT = {text.lower(): code for code, text in CME_ERRORS.items()}
# Vendors' own spellings of the same errors (SIMCom and Quectel manuals).
_CME_BY_TEXT.update(
    {
        "not supported": 4,
        "sim not insert": 10,
        "sim not inserted.": 10,
        "no network service.": 30,
        "invalid parameters": 50,
        "unknown error": 100,
    }
)

#: Final result codes that are neither OK nor an error code with a number.
_OTHER_FINALS = frozenset(
    {"ERROR", "NO CARRIER", "NO DIALTONE", "BUSY", "NO ANSWER", "ABORTED", "COMMAND NOT SUPPORT"}
)

_URC_PREFIXES = (
    "+QIND:",
    "+QUSIM:",
    "+QSIMSTAT:",
    "+CFUN:",
    "+CPIN:",
    "+CREG:",
    "+CGREG:",
    "+CEREG:",
    "+CTZV:",
    "+CTZE:",
    "+QNITZ:",
    "+CGEV:",
    "+CMTI:",
    "+CRING:",
    "+CLIP:",
    "+QSTAT:",
    "+PSUTTZ:",
    "*PSUTTZ:",
    "DST:",
    "+CNMP:",
    "+CGNSINF:",
    "+SIMCARD:",
    "+QCSQ:",
    "+CPSI:",
    "+CSQ:",
    "+QIURC:",
    "+CUSD:",
    "+STIN:",
)
_URC_WORDS = frozenset(
    {
        "RDY",
        "SMS DONE",
        "PB DONE",
        "SMS READY",
        "CALL READY",
        "RING",
        "POWERED DOWN",
        "NORMAL POWER DOWN",
        "START",
        "+CPIN: NOT READY",
        "+CPIN: SIM REMOVED",
        "+CPIN: NOT INSERTED",
        "+CPIN: READY",
        "+STIN: 25",
    }
)

# SIMCom answers AT+CICCID with +ICCID:, and a few vendors answer ATI-style
# commands with their own prefix; everything else answers +NAME: for AT+NAME.
_ANSWER_PREFIX_ALIASES = {"+CICCID:": ("+ICCID:",), "+CCID:": ("+CCID:", "+ICCID:")}

_CMD_NAME_RE = re.compile(r"^AT([+*$^%#][A-Z0-9]+)", re.IGNORECASE)


class AtFormatError(ValueError):
    """A captured AT answer that cannot be framed (no final result code)."""


@dataclass(frozen=True, slots=True)
class CmeError:
    """A ``+CME ERROR`` / ``+CMS ERROR`` final code.

    ``code`` is the number whether the modem printed the number (``AT+CMEE=1``)
    or the text (``AT+CMEE=2``, resolved through ``CME_ERRORS``); ``None`` when
    the text is not one we know. ``text`` is the verbose text, or the table's
    text for a numeric code (``None`` when unknown). ``kind`` is ``CME`` or ``CMS``.
    """

    kind: str
    code: int | None
    text: str | None


@dataclass(frozen=True, slots=True)
class AtResponse:
    """One framed answer to one command.

    ``lines`` are the information lines in order (echo, URCs and blank lines
    removed, whitespace stripped); ``final`` is the final result code as the
    modem printed it; ``urcs`` are the unsolicited lines seen meanwhile.
    """

    command: str
    lines: tuple[str, ...]
    final: str
    urcs: tuple[str, ...] = ()
    echoed: bool = False
    raw: tuple[str, ...] = field(default=(), compare=False)

    @property
    def ok(self) -> bool:
        return self.final == "OK"

    @property
    def error(self) -> CmeError | None:
        """The ``+CME/+CMS ERROR`` detail, or None (also None for a bare ``ERROR``)."""
        return parse_cme_error(self.final)

    def info(self, prefix: str) -> list[str]:
        """The payloads (after ``prefix`` and the colon) of lines starting with ``prefix``.

        ``prefix`` is given without colon, e.g. ``"+CSQ"``; matching ignores case.
        """
        want = prefix.upper().rstrip(":") + ":"
        return [ln[len(want) :].strip() for ln in self.lines if ln.upper().startswith(want)]


def parse_cme_error(line: str) -> CmeError | None:
    """``+CME ERROR: 13`` / ``+CME ERROR: SIM failure`` / ``+CMS ERROR: 500``; else None."""
    m = re.match(r"^\+(CME|CMS) ERROR:\s*(.*)$", line.strip(), re.IGNORECASE)
    if not m:
        return None
    kind = m.group(1).upper()
    arg = m.group(2).strip().strip('"').strip()
    if arg.isdigit() and len(arg) <= 6:
        code = int(arg)
        text = CME_ERRORS.get(code) if kind == "CME" else None
        return CmeError(kind, code, text)
    code_for_text = _CME_BY_TEXT.get(arg.lower()) if kind == "CME" else None
    return CmeError(kind, code_for_text, arg or None)


def is_final(line: str) -> bool:
    """Whether ``line`` ends a command's answer."""
    s = line.strip()
    up = s.upper()
    return up == "OK" or up in _OTHER_FINALS or parse_cme_error(s) is not None


def answer_prefixes(command: str) -> tuple[str, ...]:
    """The information-line prefixes ``command`` answers with (``AT+CPIN?`` → ``+CPIN:``)."""
    m = _CMD_NAME_RE.match(command.strip())
    if not m:
        return ()
    prefix = m.group(1).upper() + ":"
    return _ANSWER_PREFIX_ALIASES.get(prefix, (prefix,))


def is_urc(line: str, command: str = "") -> bool:
    """Whether ``line`` is an unsolicited result code rather than part of ``command``'s answer.

    A line with the prefix ``command`` answers with is never a URC (``+CPIN: NOT
    READY`` is the answer to ``AT+CPIN?`` but a URC during ``AT+CSQ``).
    """
    s = line.strip()
    up = s.upper()
    if any(up.startswith(p) for p in answer_prefixes(command)):
        return False
    return up in _URC_WORDS or any(up.startswith(p) for p in _URC_PREFIXES)


def _is_echo(line: str, command: str) -> bool:
    return bool(command) and line.strip().upper() == command.strip().upper()


class Framer:
    """Incremental framing of one command's answer.

    Feed each received line (without line terminators) to ``feed``; it returns
    the ``AtResponse`` once the final result code has arrived, else None. If
    ``expect_echo`` is set, result codes before the echo are stale (the tail of
    an earlier, timed-out exchange) and are dropped along with their lines.
    """

    def __init__(self, command: str, *, expect_echo: bool = False) -> None:
        self.command = command.strip()
        self.expect_echo = expect_echo
        self._echoed = False
        self._lines: list[str] = []
        self._urcs: list[str] = []
        self._raw: list[str] = []
        self.stale: list[str] = []

    def feed(self, line: str) -> AtResponse | None:
        s = line.strip()
        self._raw.append(s)
        if not s:
            return None
        if not self._echoed and _is_echo(s, self.command):
            self._echoed = True
            # Anything before our own echo belongs to an earlier exchange.
            self.stale.extend(self._lines)
            self._lines.clear()
            return None
        if is_final(s):
            if self.expect_echo and not self._echoed:
                self.stale.extend([*self._lines, s])
                self._lines.clear()
                return None
            return AtResponse(
                command=self.command,
                lines=tuple(self._lines),
                final=s,
                urcs=tuple(self._urcs),
                echoed=self._echoed,
                raw=tuple(self._raw),
            )
        if is_urc(s, self.command):
            self._urcs.append(s)
        else:
            self._lines.append(s)
        return None


def split_lines(data: str | bytes) -> list[str]:
    """Split raw modem output on CR and/or LF, dropping blank lines."""
    text = data.decode("latin-1") if isinstance(data, bytes) else data
    return [ln.strip() for ln in re.split(r"[\r\n]+", text) if ln.strip()]


def parse_response(command: str, data: str | bytes | Iterable[str]) -> AtResponse:
    """Frame a whole captured answer to ``command``.

    Raises AtFormatError when no final result code is present. Lines after the
    first final code are ignored.
    """
    lines = split_lines(data) if isinstance(data, str | bytes) else list(data)
    framer = Framer(command)
    for ln in lines:
        resp = framer.feed(ln)
        if resp is not None:
            return resp
    raise AtFormatError(f"answer to {command!r} has no final result code")


def error_text(resp: AtResponse) -> str | None:
    """The final code when it is not OK (for ``ModemReading.errors``), else None."""
    return None if resp.ok else resp.final


def split_fields(payload: str) -> list[str]:
    """Split an information-line payload on commas outside double quotes.

    Fields are whitespace-stripped; quotes are kept so callers can tell a
    quoted hex field from a number (``unquote`` removes them).
    """
    out: list[str] = []
    cur: list[str] = []
    quoted = False
    for ch in payload:
        if ch == '"':
            quoted = not quoted
            cur.append(ch)
        elif ch == "," and not quoted:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur).strip())
    return out


def unquote(field_text: str) -> str:
    s = field_text.strip()
    if len(s) >= 2 and s[0] == '"' and s[-1] == '"':
        return s[1:-1].strip()
    return s.strip('"').strip()


def to_int(field_text: str | None) -> int | None:
    """A decimal integer field (quotes and whitespace allowed), else None."""
    if field_text is None:
        return None
    s = unquote(field_text)
    if re.fullmatch(r"[+-]?[0-9]{1,9}", s):
        return int(s)
    return None


# --- technician command classification -------------------------------------

#: Execute-form commands (``AT+NAME`` with no ``?`` or ``=``) that only report.
_READ_EXECUTE = frozenset(
    {
        "+CSQ",
        "+CESQ",
        "+CIMI",
        "+CGSN",
        "+GSN",
        "+CGMI",
        "+GMI",
        "+CGMM",
        "+GMM",
        "+CGMR",
        "+GMR",
        "+CCID",
        "+QCCID",
        "+CICCID",
        "+ICCID",
        "+CNUM",
        "+CEER",
        "+QCSQ",
        "+QNWINFO",
        "+QSPN",
        "+CBC",
        "+QTEMP",
        "+CPMUTEMP",
        "+CSUB",
        "+CVERSION",
        "+QGMR",
        "+CGPADDR",
        "+QINISTAT",
        "+CLCC",
        "+SIMEI",
        "+CSPN",
        "+CNSMOD",
    }
)
#: Set-form commands whose arguments only select what to report.
_READ_SET = {
    "+QENG": re.compile(r'^"(SERVINGCELL|NEIGHBOURCELL)"$'),
    # READ BINARY (176), READ RECORD (178), GET RESPONSE (192), STATUS (242)
    "+CRSM": re.compile(r"^(176|178|192|242)(,|$)"),
    "+CGPADDR": re.compile(r"^[0-9,]*$"),
}
#: Basic (non-extended) commands that only report.
_READ_BASIC = re.compile(r"^(|I[0-9]?|&V|\+?GCAP|S[0-9]{1,3}\?)$")


def _single_read_only(cmd: str) -> bool:
    body = cmd.strip()
    if not body:
        return False
    up = body.upper()
    m = re.match(r"^([+*$^%#][A-Z0-9]+)(.*)$", up)
    if not m:
        return bool(_READ_BASIC.match(up))
    name, rest = m.group(1), m.group(2).strip()
    if rest in ("?", "=?"):
        return True
    if rest == "":
        return name in _READ_EXECUTE
    if rest.startswith("="):
        pattern = _READ_SET.get(name)
        return bool(pattern and pattern.match(rest[1:].strip()))
    return False


def is_read_only(command: str) -> bool:
    """Whether a technician's AT command line only reads the modem's state.

    Read-only: queries (``AT+X?``), tests (``AT+X=?``), ``AT``, ``ATI``,
    ``AT&V``, and a list of known reporting commands (``AT+CSQ``, ``AT+CIMI``,
    ``AT+QCCID``, ``AT+CICCID``, ``AT+QENG="servingcell"``,
    ``AT+CRSM=176,...`` ...). Everything else is state-changing: ``AT+CFUN=``,
    ``AT+COPS=``, ``AT+CGDCONT=``, ``AT+QCFG=``, ``ATE0``, ``ATZ``, ``AT&W``,
    ``AT+CRESET``, dialling, and anything unknown or malformed. A line that
    chains commands with ``;`` is read-only only if every part is.
    """
    s = command.strip()
    if not s.upper().startswith("AT") or any(ord(c) < 0x20 or ord(c) > 0x7E for c in s):
        return False
    body = s[2:]
    if not body.strip():
        return True
    # A chained line: ATI;+CSQ;+CPIN? (later parts omit the AT prefix).
    parts = [p.strip() for p in body.split(";")]
    if len(parts) > 1 and parts[-1] == "":
        parts = parts[:-1]
    return all(_single_read_only(p) for p in parts)


__all__ = [
    "CME_ERRORS",
    "AtFormatError",
    "AtResponse",
    "CmeError",
    "Framer",
    "answer_prefixes",
    "error_text",
    "is_final",
    "is_read_only",
    "is_urc",
    "parse_cme_error",
    "parse_response",
    "split_fields",
    "split_lines",
    "to_int",
    "unquote",
]
