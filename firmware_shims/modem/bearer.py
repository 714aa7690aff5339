"""The packet-data bearer: is there a data connection, not just a registration. Pure.

A modem can be registered (``+CEREG: 0,1``) with a working SIM and still carry
no data: the PDP context is refused (a prepaid SIM out of data, a barred or
wrong APN, a congested cell), so MQTT and the stream fail while SMS works.
A poll adds ``BEARER_FIRST`` (``AT+CGPADDR=1``) and, only when that shows no
address, ``BEARER_DETAIL[dialect]`` (``AT+CGATT?``, ``AT+CGACT?``; Quectel also
``AT+QIACT?``) as evidence; ``parse_bearer(responses)`` reads them into a
``BearerState``:

- ``attached``: ``+CGATT: 1`` (packet domain attach);
- ``active``: some context is active (``+CGACT: <cid>,1`` or a ``+QIACT`` line);
- ``address``: the first non-zero IP of ``+CGPADDR`` / ``+QIACT``.

``ok`` is True with an active context and an address, False when the modem
says otherwise, None when nothing was answered.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from firmware_shims.modem.at import AtResponse, split_fields, to_int, unquote

CMD_CGATT = "AT+CGATT?"
CMD_CGACT = "AT+CGACT?"
CMD_CGPADDR = "AT+CGPADDR=1"
CMD_QIACT = "AT+QIACT?"

#: Asked in every poll: one command, so a poll stays short.
BEARER_FIRST = (CMD_CGPADDR,)
#: Asked only when the first shows no address, as evidence of what failed.
BEARER_DETAIL: dict[str, tuple[str, ...]] = {
    "generic": (CMD_CGATT, CMD_CGACT),
    "simcom": (CMD_CGATT, CMD_CGACT),
    "quectel": (CMD_CGATT, CMD_CGACT, CMD_QIACT),
}


@dataclass(frozen=True, slots=True)
class BearerState:
    attached: bool | None = None
    active: bool | None = None
    address: str | None = None

    @property
    def ok(self) -> bool | None:
        if self.active is None and self.attached is None and self.address is None:
            return None
        return self.active is not False and self.address is not None

    def describe(self) -> str:
        parts = []
        if self.attached is not None:
            parts.append(f"CGATT {int(self.attached)}")
        if self.active is not None:
            parts.append("context active" if self.active else "no active PDP context")
        parts.append(f"IP {self.address}" if self.address else "no IP address")
        return ", ".join(parts)


def _address(text: str) -> str | None:
    ip = unquote(text)
    if not ip or ip in ("0.0.0.0", "0:0:0:0:0:0:0:0", "::"):
        return None
    if all(ch in "0123456789abcdefABCDEF.:" for ch in ip) and len(ip) <= 45:
        return ip
    return None


def parse_bearer(responses: Mapping[str, AtResponse]) -> BearerState:
    """The bearer from whatever of ``BEARER_COMMANDS`` was answered (never raises)."""
    attached: bool | None = None
    active: bool | None = None
    address: str | None = None
    r = responses.get(CMD_CGATT)
    if r is not None and r.ok:
        for p in r.info("+CGATT"):
            v = to_int(p)
            if v in (0, 1):
                attached = v == 1
    r = responses.get(CMD_CGACT)
    if r is not None and r.ok:
        states = [to_int(split_fields(p)[1]) for p in r.info("+CGACT") if len(split_fields(p)) > 1]
        active = any(s == 1 for s in states)
    r = responses.get(CMD_CGPADDR)
    if r is not None and r.ok:
        for p in r.info("+CGPADDR"):
            fields = split_fields(p)
            if len(fields) > 1 and address is None:
                address = _address(fields[1])
    r = responses.get(CMD_QIACT)
    if r is not None and r.ok:
        lines = r.info("+QIACT")
        qi_active = False
        for p in lines:
            fields = split_fields(p)
            if len(fields) >= 4 and to_int(fields[1]) == 1:
                qi_active = True
                address = address or _address(fields[3])
        active = bool(active) or qi_active
    return BearerState(attached, active, address)


__all__ = ["BEARER_DETAIL", "BEARER_FIRST", "BearerState", "parse_bearer"]
