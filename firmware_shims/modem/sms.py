"""SMS over AT (3GPP TS 27.005, text mode): pure parsers and the exchanges through an AtPort.

Pure (table-tested in ``tests/firmware_shims/data/modem_sms_cases.toml``):

- ``parse_cmti(line)`` → ``(storage, index)`` of a ``+CMTI: "SM",3`` URC;
- ``parse_cmgr(resp, index)`` / ``parse_cmgl(resp)`` → ``SmsMessage`` from the
  answer to ``AT+CMGR=<i>`` / ``AT+CMGL="ALL"`` (text mode; a text in UCS2
  hex is decoded when the character set was ``"UCS2"``);
- ``parse_cmgs(resp)`` → the message reference of a sent SMS;
- ``parse_scts("23/07/31,08:15:00+28")`` → UNIX seconds (the zone is in quarter hours);
- ``is_gsm7(text)`` / ``encode_ucs2`` / ``decode_ucs2``: which alphabet a text needs.

Exchanges (each takes ``port.lock`` for the whole sequence, so a poll never
lands between ``AT+CMGS`` and its ``> `` prompt):

- ``send_sms(port, number, text)``: ``AT+CMGF=1``, ``AT+CSCS``, ``AT+CMGS`` →
  the prompt → the text and Ctrl-Z → ``+CMGS: <mr>``. GSM 7-bit text goes as
  is; anything else (Vietnamese with diacritics) as UCS2 hex. Raises
  ``SmsError`` naming the port and the ``+CMS ERROR`` for a refused send.
- ``list_sms(port)`` / ``delete_sms(port, index)`` for a receiving modem.
"""

from __future__ import annotations

import calendar
import re
import time
from dataclasses import dataclass

from firmware_shims.errors import ShimError
from firmware_shims.modem.at import AtResponse, split_fields, to_int, unquote
from firmware_shims.modem.port import AtPort

#: 3GPP TS 27.005 §3.2.5 +CMS ERROR codes a field modem gives.
CMS_ERRORS: dict[int, str] = {
    300: "ME failure",
    301: "SMS service of ME reserved",
    302: "operation not allowed",
    303: "operation not supported",
    304: "invalid PDU mode parameter",
    305: "invalid text mode parameter",
    310: "SIM not inserted",
    311: "SIM PIN required",
    313: "SIM failure",
    314: "SIM busy",
    315: "SIM wrong",
    320: "memory failure",
    321: "invalid memory index",
    322: "memory full",
    330: "SMSC address unknown",
    331: "no network service",
    332: "network timeout",
    500: "unknown error",
}

#: Characters of the GSM 03.38 basic alphabet (7-bit default, no extension table).
_GSM7 = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
#: One SMS holds 160 GSM 7-bit characters or 70 UCS2 ones (longer needs concatenation).
MAX_GSM7 = 160
MAX_UCS2 = 70

CTRL_Z = b"\x1a"
ESC = b"\x1b"

_CMTI_RE = re.compile(r'^\+CMTI:\s*"?([A-Z]{2})"?\s*,\s*(\d{1,5})\s*$', re.IGNORECASE)
_SCTS_RE = re.compile(r"^(\d{2})/(\d{2})/(\d{2}),(\d{2}):(\d{2}):(\d{2})([+-]\d{1,2})$")
_HEX_RE = re.compile(r"^(?:[0-9A-Fa-f]{4})+$")


class SmsError(ShimError):
    """A send or read the modem refused (``+CMS ERROR``), naming the port and command."""


@dataclass(frozen=True, slots=True)
class SmsMessage:
    """One stored SMS as the modem lists it."""

    index: int
    status: str  # REC UNREAD, REC READ, STO UNSENT, STO SENT
    sender: str
    #: Service-centre time stamp as UNIX seconds (None when missing or malformed).
    scts: float | None
    text: str


def is_gsm7(text: str) -> bool:
    """Whether ``text`` fits the GSM 7-bit basic alphabet."""
    return all(c in _GSM7 for c in text)


def encode_ucs2(text: str) -> str:
    """``text`` as the hex of its UTF-16BE bytes (what ``AT+CSCS="UCS2"`` expects)."""
    return text.encode("utf-16-be").hex().upper()


def decode_ucs2(hex_text: str) -> str | None:
    """The text behind UCS2 hex; None if ``hex_text`` is not whole UCS2 hex."""
    s = hex_text.strip()
    if not _HEX_RE.match(s):
        return None
    try:
        return bytes.fromhex(s).decode("utf-16-be")
    except UnicodeDecodeError:
        return None


def format_scts(ts: float, zone_quarters: int = 28) -> str:
    """UNIX seconds as a TS 27.005 time stamp in the zone (default UTC+7, ``+28``)."""
    local = ts + zone_quarters * 900
    t = time.gmtime(local)
    sign = "+" if zone_quarters >= 0 else "-"
    return (
        f"{t.tm_year % 100:02d}/{t.tm_mon:02d}/{t.tm_mday:02d},"
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}{sign}{abs(zone_quarters):02d}"
    )


def parse_scts(text: str) -> float | None:
    """``"23/07/31,08:15:00+28"`` → UNIX seconds; None when malformed."""
    m = _SCTS_RE.match(unquote(text))
    if not m:
        return None
    yy, mo, dd, hh, mi, ss = (int(g) for g in m.groups()[:6])
    zone = int(m.group(7))
    if not (1 <= mo <= 12 and 1 <= dd <= 31 and hh < 24 and mi < 60 and ss < 62):
        return None
    if abs(zone) > 56:
        return None
    try:
        local = calendar.timegm((2000 + yy, mo, dd, hh, mi, ss, 0, 0, 0))
    except (ValueError, OverflowError):
        return None
    return float(local - zone * 900)


def parse_cmti(line: str) -> tuple[str, int] | None:
    """``+CMTI: "SM",3`` → ``("SM", 3)``; None for any other line."""
    m = _CMTI_RE.match(line.strip())
    if not m:
        return None
    return m.group(1).upper(), int(m.group(2))


def parse_cmgs(resp: AtResponse) -> int | None:
    """The message reference of ``+CMGS: <mr>`` in a successful answer, else None."""
    if not resp.ok:
        return None
    for payload in resp.info("+CMGS"):
        return to_int(split_fields(payload)[0])
    return None


def _text(raw: str, ucs2: bool) -> str:
    if ucs2:
        decoded = decode_ucs2(raw)
        if decoded is not None:
            return decoded
    return raw


def _header(payload: str, *, with_index: bool) -> tuple[int | None, str, str, float | None]:
    """(index, status, sender, scts) of a +CMGR/+CMGL header payload."""
    fields = split_fields(payload)
    index: int | None = None
    if with_index:
        index = to_int(fields[0]) if fields else None
        fields = fields[1:]
    status = unquote(fields[0]).upper() if fields else ""
    sender = unquote(fields[1]) if len(fields) > 1 else ""
    # <stat>,<oa>,[<alpha>],<scts>: the time stamp is the first field after alpha
    # that looks like one (some firmwares leave alpha out altogether).
    scts: float | None = None
    for f in fields[2:]:
        scts = parse_scts(f)
        if scts is not None:
            break
    if sender and decode_ucs2(sender) and not sender.startswith("+"):
        sender = decode_ucs2(sender) or sender
    return index, status, sender, scts


def parse_cmgr(resp: AtResponse, index: int, *, ucs2: bool = False) -> SmsMessage | None:
    """The message in the answer to ``AT+CMGR=<index>``; None when empty or refused."""
    if not resp.ok:
        return None
    lines = list(resp.lines)
    for i, line in enumerate(lines):
        if line.upper().startswith("+CMGR:"):
            _, status, sender, scts = _header(line[6:].strip(), with_index=False)
            body = "\n".join(lines[i + 1 :])
            return SmsMessage(index, status, sender, scts, _text(body, ucs2))
    return None


def parse_cmgl(resp: AtResponse, *, ucs2: bool = False) -> list[SmsMessage]:
    """Every message in the answer to ``AT+CMGL="ALL"`` (text mode), in listed order."""
    out: list[SmsMessage] = []
    if not resp.ok:
        return out
    current: tuple[int, str, str, float | None] | None = None
    body: list[str] = []

    def flush() -> None:
        if current is not None:
            idx, status, sender, scts = current
            out.append(SmsMessage(idx, status, sender, scts, _text("\n".join(body), ucs2)))

    for line in resp.lines:
        if line.upper().startswith("+CMGL:"):
            flush()
            idx, status, sender, scts = _header(line[6:].strip(), with_index=True)
            current = None if idx is None else (idx, status, sender, scts)
            body = []
        elif current is not None:
            body.append(line)
    flush()
    return out


def cms_detail(resp: AtResponse) -> str:
    """``+CMS ERROR: 331 (no network service)`` for a refused answer."""
    err = resp.error
    if err is not None and err.kind == "CMS" and err.code is not None:
        return f"{resp.final} ({CMS_ERRORS.get(err.code, 'unknown')})"
    return resp.final


# --- exchanges through an AtPort ---------------------------------------------------------


async def send_sms(
    port: AtPort,
    number: str,
    text: str,
    *,
    timeout: float = 2.0,
    send_timeout: float = 60.0,
) -> int:
    """Send ``text`` to ``number`` in text mode; returns the message reference.

    Takes ``port.lock`` for the whole exchange. ``send_timeout`` bounds the
    wait for ``+CMGS`` (the network's answer takes seconds). Raises SmsError
    (a ``+CMS ERROR``, or a text too long for one SMS), ProbeTimeout or
    PortUnavailable.
    """
    gsm = is_gsm7(text)
    if len(text) > (MAX_GSM7 if gsm else MAX_UCS2):
        raise SmsError(port.where, f"text of {len(text)} chars does not fit one SMS")
    if not re.fullmatch(r"\+?[0-9]{3,20}", number):
        raise SmsError(port.where, f"{number!r:.30} is not a phone number")
    async with port.lock:
        for cmd in ("AT+CMGF=1", 'AT+CSCS="GSM"' if gsm else 'AT+CSCS="UCS2"'):
            resp = await port.exchange(cmd, timeout=timeout)
            if not resp.ok:
                raise SmsError(port.where, cms_detail(resp), command=cmd)
        dest = number if gsm else encode_ucs2(number)
        body = text if gsm else encode_ucs2(text)
        cmd = f'AT+CMGS="{dest}"'
        resp = await port.exchange_text(
            cmd, body.encode("latin-1"), timeout=timeout, result_timeout=send_timeout
        )
        mr = parse_cmgs(resp)
        if mr is None:
            raise SmsError(port.where, cms_detail(resp), command=cmd)
        return mr


async def list_sms(port: AtPort, *, timeout: float = 5.0) -> list[SmsMessage]:
    """Every message in the modem's storage (text mode, GSM character set)."""
    async with port.lock:
        for cmd in ("AT+CMGF=1", 'AT+CSCS="GSM"'):
            resp = await port.exchange(cmd, timeout=timeout)
            if not resp.ok:
                raise SmsError(port.where, cms_detail(resp), command=cmd)
        cmd = 'AT+CMGL="ALL"'
        resp = await port.exchange(cmd, timeout=timeout)
        if not resp.ok:
            raise SmsError(port.where, cms_detail(resp), command=cmd)
        return parse_cmgl(resp)


async def read_sms(port: AtPort, index: int, *, timeout: float = 5.0) -> SmsMessage | None:
    """The message at ``index`` (``AT+CMGR``); None when the slot is empty."""
    async with port.lock:
        resp = await port.exchange("AT+CMGF=1", timeout=timeout)
        resp = await port.exchange(f"AT+CMGR={int(index)}", timeout=timeout)
        return parse_cmgr(resp, index)


async def delete_sms(port: AtPort, index: int, *, timeout: float = 5.0) -> None:
    """Delete the message at ``index`` (``AT+CMGD``); SmsError if refused."""
    cmd = f"AT+CMGD={int(index)}"
    resp = await port.command(cmd, timeout=timeout)
    if not resp.ok:
        raise SmsError(port.where, cms_detail(resp), command=cmd)


__all__ = [
    "CMS_ERRORS",
    "MAX_GSM7",
    "MAX_UCS2",
    "SmsError",
    "SmsMessage",
    "cms_detail",
    "decode_ucs2",
    "delete_sms",
    "encode_ucs2",
    "format_scts",
    "is_gsm7",
    "list_sms",
    "parse_cmgl",
    "parse_cmgr",
    "parse_cmgs",
    "parse_cmti",
    "parse_scts",
    "read_sms",
    "send_sms",
]
