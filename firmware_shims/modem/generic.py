"""3GPP TS 27.007 parsers (every modem speaks these). Pure: no I/O.

Each ``parse_*`` takes a framed ``AtResponse`` and never raises: a missing,
malformed or error answer gives unknown values (``None``, ``SimState.UNKNOWN``,
``RegState.UNKNOWN``) so a half-broken modem still yields a reading.
``build_state`` turns the answers to the generic poll into a ``ModemState``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from firmware_shims.modem.at import (
    AtResponse,
    CmeError,
    split_fields,
    to_int,
    unquote,
)
from fleet_protocol import AccessTech, ModemState, RegState, SimState

# --- SIM --------------------------------------------------------------------

_CPIN_LOCKED = frozenset(
    {
        "SIM PIN",
        "SIM PUK",
        "PH-SIM PIN",
        "PH-SIM PUK",
        "PH-FSIM PIN",
        "PH-FSIM PUK",
        "PH-NET PIN",
        "PH-NET PUK",
        "PH-NETSUB PIN",
        "PH-NETSUB PUK",
        "PH-SP PIN",
        "PH-SP PUK",
        "PH-CORP PIN",
        "PH-CORP PUK",
    }
)
# SIM PIN2/PUK2 only mean a PIN2-protected operation failed; the SIM works.
_CPIN_READY = frozenset({"READY", "SIM PIN2", "SIM PUK2"})
_CPIN_ABSENT = frozenset({"NOT INSERTED", "SIM REMOVED", "NO SIM", "ABSENT"})
_CME_SIM: dict[int, SimState] = {
    10: SimState.ABSENT,
    5: SimState.LOCKED,
    11: SimState.LOCKED,
    12: SimState.LOCKED,
    13: SimState.FAILURE,
    15: SimState.FAILURE,
}


def sim_state_from_text(text: str) -> SimState:
    """The SIM state a ``+CPIN: <code>`` payload names (case and quotes ignored)."""
    code = unquote(text).upper()
    if code in _CPIN_READY:
        return SimState.READY
    if code in _CPIN_LOCKED:
        return SimState.LOCKED
    if code in _CPIN_ABSENT:
        return SimState.ABSENT
    # NOT READY is the SIM still initialising (boot, hot-swap): not a verdict.
    return SimState.UNKNOWN


def sim_state_from_error(err: CmeError | None) -> SimState:
    """The SIM state a ``+CME ERROR`` implies (10 absent, 13/15 failure, 5/11/12 locked)."""
    if err is None or err.code is None:
        return SimState.UNKNOWN
    return _CME_SIM.get(err.code, SimState.UNKNOWN)


def parse_cpin(resp: AtResponse | None) -> SimState:
    """``AT+CPIN?``: ``+CPIN: READY`` / a lock / ``+CME ERROR: 10|13|...``."""
    if resp is None:
        return SimState.UNKNOWN
    if not resp.ok:
        return sim_state_from_error(resp.error)
    answers = resp.info("+CPIN")
    return sim_state_from_text(answers[-1]) if answers else SimState.UNKNOWN


# --- signal -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Signal:
    """``+CSQ``: ``csq`` is the raw 0..31/99 index (None if out of range or
    TD-SCDMA), ``rssi_dbm`` the level (None when unknown), ``ber`` 0..7 or None."""

    csq: int | None = None
    rssi_dbm: float | None = None
    ber: int | None = None


def csq_to_dbm(rssi: int) -> float | None:
    """3GPP RSSI index to dBm: 0 → −113 (or less), 2..30 → 2n−113, 31 → −51 (or more),
    99 → unknown; 100..191 is the TD-SCDMA extension (n−216 dBm), 199 unknown."""
    if 0 <= rssi <= 31:
        return float(2 * rssi - 113)
    if 100 <= rssi <= 191:
        return float(rssi - 216)
    return None


def parse_csq(resp: AtResponse | None) -> Signal:
    """``AT+CSQ``: ``+CSQ: <rssi>,<ber>``; ``99,99`` gives an unknown level."""
    if resp is None or not resp.ok:
        return Signal()
    answers = resp.info("+CSQ")
    if not answers:
        return Signal()
    parts = split_fields(answers[-1])
    rssi = to_int(parts[0])
    ber = to_int(parts[1]) if len(parts) > 1 else None
    if rssi is None:
        return Signal()
    dbm = csq_to_dbm(rssi)
    csq = rssi if 0 <= rssi <= 31 or rssi == 99 else None
    return Signal(csq=csq, rssi_dbm=dbm, ber=ber if ber is not None and 0 <= ber <= 7 else None)


@dataclass(frozen=True, slots=True)
class ExtSignal:
    """``+CESQ`` (3GPP TS 27.007 §8.69): the levels of whichever radio serves.

    ``rssi_dbm`` from GSM ``<rxlev>`` (−111 + n for 0..63, i.e. "−110 dBm or
    less" at 0), ``rscp_dbm`` from UTRA ``<rscp>`` (−121 + n for 0..96),
    ``rsrq_db`` from E-UTRA ``<rsrq>`` (−20 + n/2 for 0..34) and ``rsrp_dbm``
    from ``<rsrp>`` (−141 + n for 0..97). 99 (rxlev, ber) and 255 (the
    others) mean not known or not this radio: None.
    """

    rssi_dbm: float | None = None
    rscp_dbm: float | None = None
    rsrq_db: float | None = None
    rsrp_dbm: float | None = None

    @property
    def any(self) -> bool:
        return any(
            v is not None for v in (self.rssi_dbm, self.rscp_dbm, self.rsrq_db, self.rsrp_dbm)
        )


def _scaled(v: int | None, top: int, base: float, step: float = 1.0) -> float | None:
    return base + v * step if v is not None and 0 <= v <= top else None


def parse_cesq(resp: AtResponse | None) -> ExtSignal:
    """``AT+CESQ``: ``+CESQ: <rxlev>,<ber>,<rscp>,<ecno>,<rsrq>,<rsrp>`` (see ExtSignal)."""
    if resp is None or not resp.ok:
        return ExtSignal()
    answers = resp.info("+CESQ")
    if not answers:
        return ExtSignal()
    parts = [to_int(p) for p in split_fields(answers[-1])]
    if len(parts) < 6:
        return ExtSignal()
    rxlev, _ber, rscp, _ecno, rsrq, rsrp = parts[:6]
    return ExtSignal(
        rssi_dbm=_scaled(rxlev, 63, -111.0),
        rscp_dbm=_scaled(rscp, 96, -121.0),
        rsrq_db=_scaled(rsrq, 34, -20.0, 0.5),
        rsrp_dbm=_scaled(rsrp, 97, -141.0),
    )


# --- registration -----------------------------------------------------------

_STAT: dict[int, RegState] = {
    0: RegState.NOT_REGISTERED,
    1: RegState.HOME,
    2: RegState.SEARCHING,
    3: RegState.DENIED,
    4: RegState.UNKNOWN,
    5: RegState.ROAMING,
    # 6/7: registered for SMS only; 9/10: registered, CSFB not preferred. The
    # modem is on the network (home/roaming); data may still be restricted.
    6: RegState.HOME,
    7: RegState.ROAMING,
    # 8: attached for emergency bearer services only: not usable.
    8: RegState.NOT_REGISTERED,
    9: RegState.HOME,
    10: RegState.ROAMING,
}

_ACT: dict[int, AccessTech] = {
    0: AccessTech.GSM,
    1: AccessTech.GSM,  # GSM compact
    2: AccessTech.UMTS,
    3: AccessTech.EDGE,
    4: AccessTech.HSPA,  # HSDPA
    5: AccessTech.HSPA,  # HSUPA
    6: AccessTech.HSPA,  # HSDPA + HSUPA
    7: AccessTech.LTE,
    8: AccessTech.GSM,  # EC-GSM-IoT
    9: AccessTech.NBIOT,  # E-UTRAN NB-S1
    10: AccessTech.LTE,  # E-UTRA connected to a 5G core
    11: AccessTech.NR,
    12: AccessTech.NR,  # NG-RAN
    13: AccessTech.NR,  # E-UTRA-NR dual connectivity (EN-DC)
}


def reg_state(stat: int | None) -> RegState:
    """The ``RegState`` of a 3GPP ``<stat>`` value (0..10); unknown for anything else."""
    return _STAT.get(stat, RegState.UNKNOWN) if stat is not None else RegState.UNKNOWN


def access_tech(act: int | None) -> AccessTech:
    """The ``AccessTech`` of a 3GPP ``<AcT>`` value."""
    return _ACT.get(act, AccessTech.UNKNOWN) if act is not None else AccessTech.UNKNOWN


@dataclass(frozen=True, slots=True)
class Registration:
    """``+CREG/+CGREG/+CEREG``: ``stat`` as printed, its ``state``, and location
    fields when the modem gave them (hex strings upper-cased, without quotes)."""

    stat: int | None = None
    state: RegState = RegState.UNKNOWN
    tac: str | None = None
    cell_id: str | None = None
    act: AccessTech = AccessTech.UNKNOWN


_HEX_RE = re.compile(r"^(0X)?[0-9A-F]{1,10}$")


def hex_field(text: str | None) -> str | None:
    """A quoted or bare hex location field (``"1A2B"``, ``0x1a2b``, ``"01A2D101"``) as
    upper-case hex without leading zeros, so every dialect names a cell the same way;
    None when not hex."""
    if text is None:
        return None
    s = unquote(text).upper()
    if not _HEX_RE.match(s):
        return None
    return s.removeprefix("0X").lstrip("0") or "0"


def dec_as_hex(text: str | None) -> str | None:
    """A decimal cell id (SIMCom's +CPSI) as ``hex_field`` would print it; hex with
    ``0x`` is accepted as is."""
    if text is None:
        return None
    s = unquote(text)
    if s.upper().startswith("0X"):
        return hex_field(s)
    return f"{int(s):X}" if s.isdigit() and len(s) <= 12 else None


def parse_reg(resp: AtResponse | None, prefix: str) -> Registration:
    """``AT+CREG?`` / ``AT+CGREG?`` / ``AT+CEREG?`` (``prefix`` ``+CREG`` etc.).

    Reads the query form ``<n>,<stat>[,<lac|tac>,<ci>[,<AcT>[,...]]]`` and the
    URC form ``<stat>[,<lac|tac>,<ci>[,<AcT>]]`` (told apart by the quoted
    location field's position); extra fields (RAC, reject causes, PSM timers)
    are ignored.
    """
    if resp is None or not resp.ok:
        return Registration()
    answers = resp.info(prefix)
    if not answers:
        return Registration()
    parts = split_fields(answers[-1])
    urc_form = len(parts) == 1 or (len(parts) > 1 and parts[1].startswith('"'))
    rest = parts if urc_form else parts[1:]
    if not rest:
        return Registration()
    stat = to_int(rest[0])
    tac = hex_field(rest[1]) if len(rest) > 2 else None
    ci = hex_field(rest[2]) if len(rest) > 2 else None
    act = access_tech(to_int(rest[3])) if len(rest) > 3 else AccessTech.UNKNOWN
    return Registration(stat=stat, state=reg_state(stat), tac=tac, cell_id=ci, act=act)


_REG_RANK = (
    RegState.HOME,
    RegState.ROAMING,
    RegState.DENIED,
    RegState.SEARCHING,
    RegState.NOT_REGISTERED,
    RegState.UNKNOWN,
)


def combine_registration(*regs: Registration) -> Registration:
    """The most telling of several domains' registrations.

    Registered on any domain wins (an LTE-only modem shows ``+CREG: 0,0`` while
    ``+CEREG: 0,1``), then denied, searching, not registered, unknown; among
    equals the first given (callers pass EPS first).
    """
    best = Registration()
    for reg in regs:
        if _REG_RANK.index(reg.state) < _REG_RANK.index(best.state):
            best = reg
    return best


# --- operator ---------------------------------------------------------------

#: Vietnamese networks (REFERENCE.md); other MCC-MNCs keep their numeric name.
OPERATORS: dict[str, str] = {
    "45201": "MobiFone",
    "45202": "Vinaphone",
    "45204": "Viettel",
    "45205": "Vietnamobile",
    "45207": "Gmobile",
    "45208": "Viettel",  # Viettel's former EVN Telecom network code
}
_OPERATOR_ALIASES = {
    "MOBIFONE": "45201",
    "VN MOBIFONE": "45201",
    "VMS": "45201",
    "VINAPHONE": "45202",
    "VN VINAPHONE": "45202",
    "GPC": "45202",
    "VIETTEL": "45204",
    "VN VIETTEL": "45204",
    "VIETTEL MOBILE": "45204",
    "VIETNAMOBILE": "45205",
    "VNMOBILE": "45205",
    "VN MOBILE": "45205",
    "GMOBILE": "45207",
}


@dataclass(frozen=True, slots=True)
class Operator:
    """``+COPS?``: ``name`` as printed (or from the MCC-MNC table for numeric
    format), ``mccmnc`` when known, ``act`` the access technology."""

    name: str | None = None
    mccmnc: str | None = None
    act: AccessTech = AccessTech.UNKNOWN


def operator_for(mccmnc: str | None, alpha: str | None = None) -> Operator:
    """Fill in the name from an MCC-MNC, or the MCC-MNC from a known name."""
    if mccmnc and not alpha:
        return Operator(name=OPERATORS.get(mccmnc, mccmnc), mccmnc=mccmnc)
    if alpha and not mccmnc:
        # Known networks get one spelling whatever the modem prints ("VIETTEL",
        # "VN VIETTEL"), so the collector can group by operator.
        code = _OPERATOR_ALIASES.get(alpha.upper())
        return Operator(name=OPERATORS[code] if code else alpha, mccmnc=code)
    return Operator(name=alpha, mccmnc=mccmnc)


def parse_cops(resp: AtResponse | None) -> Operator:
    """``AT+COPS?``: ``<mode>[,<format>,"<oper>"[,<AcT>]]`` (format 0/1 alphanumeric,
    2 numeric); ``+COPS: 0`` alone means not registered (no operator)."""
    if resp is None or not resp.ok:
        return Operator()
    answers = resp.info("+COPS")
    if not answers:
        return Operator()
    parts = split_fields(answers[-1])
    if len(parts) < 3:
        return Operator()
    fmt = to_int(parts[1])
    oper = unquote(parts[2])
    act = access_tech(to_int(parts[3])) if len(parts) > 3 else AccessTech.UNKNOWN
    if not oper or not oper.isprintable():
        return Operator(act=act)
    if fmt == 2 or (fmt is None and oper.isdigit()):
        mccmnc = oper if re.fullmatch(r"[0-9]{5,6}", oper) else None
        op = operator_for(mccmnc) if mccmnc else Operator(name=oper[:64])
    else:
        op = operator_for(None, oper[:64])
    return replace(op, act=act)


# --- SIM identity ------------------------------------------------------------

_ICCID_RE = re.compile(r"^89[0-9]{16,20}$")


def normalize_iccid(text: str | None) -> str | None:
    """An ICCID from a field: quotes, spaces and trailing ``F`` padding removed.

    Returns the digits when they form an ICCID (89 + 16..20 digits), else None.
    """
    if text is None:
        return None
    s = unquote(text).replace(" ", "").upper().rstrip("F")
    return s if _ICCID_RE.match(s) else None


def parse_ccid(resp: AtResponse | None, prefix: str = "+CCID") -> str | None:
    """``AT+CCID`` (and its vendor twins): ``+CCID: <iccid>``, ``+ICCID: ...`` or bare digits."""
    if resp is None or not resp.ok:
        return None
    for ln in resp.lines:
        payload = ln.split(":", 1)[1] if ":" in ln else ln
        if ":" in ln and not ln.upper().startswith(
            (prefix.upper() + ":", "+CCID:", "+ICCID:", "+QCCID:")
        ):
            continue
        iccid = normalize_iccid(split_fields(payload)[0])
        if iccid:
            return iccid
    return None


def swap_nibbles(hexstr: str) -> str:
    """``"98841040"`` → ``"89480104"``: each byte's two hex digits swapped (SIM BCD order)."""
    return "".join(hexstr[i + 1] + hexstr[i] for i in range(0, len(hexstr) - 1, 2))


def parse_crsm_iccid(resp: AtResponse | None) -> str | None:
    """``AT+CRSM=176,12258,0,0,10``: ``+CRSM: 144,0,"<20 hex digits>"`` with the ICCID's
    digits nibble-swapped; status words other than 144/145 (success) give None."""
    if resp is None or not resp.ok:
        return None
    answers = resp.info("+CRSM")
    if not answers:
        return None
    parts = split_fields(answers[-1])
    if len(parts) < 3 or to_int(parts[0]) not in (144, 145):
        return None
    data = unquote(parts[2]).upper()
    if not re.fullmatch(r"[0-9A-F]{2,40}", data) or len(data) % 2:
        return None
    return normalize_iccid(swap_nibbles(data))


def parse_cimi(resp: AtResponse | None) -> str | None:
    """``AT+CIMI``: the IMSI as bare digits or ``+CIMI: <imsi>`` (quotes allowed); else None."""
    if resp is None or not resp.ok:
        return None
    for ln in resp.lines:
        payload = ln.split(":", 1)[1] if ln.upper().startswith("+CIMI:") else ln
        s = unquote(payload)
        if re.fullmatch(r"[0-9]{6,15}", s):
            return s
    return None


# --- assembling a ModemState ----------------------------------------------------


@dataclass(slots=True)
class StateDraft:
    """A ModemState being assembled from several answers; ``freeze`` validates ranges."""

    responding: bool = True
    sim: SimState = SimState.UNKNOWN
    iccid: str | None = None
    operator: str | None = None
    mccmnc: str | None = None
    access_tech: AccessTech = AccessTech.UNKNOWN
    registration: RegState = RegState.UNKNOWN
    csq: int | None = None
    rssi_dbm: float | None = None
    rsrp_dbm: float | None = None
    rsrq_db: float | None = None
    sinr_db: float | None = None
    cell_id: str | None = None
    tac: str | None = None

    def freeze(self) -> ModemState:
        """The ModemState, with values outside the wire protocol's ranges dropped
        (a collector would reject the whole report for one wild number)."""
        values: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, lo, hi in _RANGES:
            v = values[name]
            if v is not None and not lo <= v <= hi:
                values[name] = None
        if values["iccid"] is not None and not re.fullmatch(r"[0-9]{10,22}", values["iccid"]):
            values["iccid"] = None
        if values["mccmnc"] is not None and not re.fullmatch(r"[0-9]{5,6}", values["mccmnc"]):
            values["mccmnc"] = None
        for name in ("operator", "cell_id", "tac"):
            if values[name] is not None:
                values[name] = values[name][:64]
        return ModemState(**values)


_RANGES = (
    ("csq", 0, 99),
    ("rssi_dbm", -150, 0),
    ("rsrp_dbm", -160, 0),
    ("rsrq_db", -40, 10),
    ("sinr_db", -30, 60),
)

#: The commands of the generic poll, and the ICCID commands tried in order.
CMD_CPIN = "AT+CPIN?"
CMD_CSQ = "AT+CSQ"
CMD_CREG = "AT+CREG?"
CMD_CGREG = "AT+CGREG?"
CMD_CEREG = "AT+CEREG?"
CMD_COPS = "AT+COPS?"
CMD_CCID = "AT+CCID"
CMD_CRSM_ICCID = "AT+CRSM=176,12258,0,0,10"
CMD_CIMI = "AT+CIMI"
CMD_CESQ = "AT+CESQ"

POLL = (CMD_CPIN, CMD_CSQ, CMD_CREG, CMD_CGREG, CMD_CEREG, CMD_COPS)
ICCID_COMMANDS = (CMD_CCID, CMD_CRSM_ICCID)


def csq_unknown(responses: Mapping[str, AtResponse]) -> bool:
    """Whether ``+CSQ`` gave no level (``99``, an error, no answer)."""
    return parse_csq(responses.get(CMD_CSQ)).rssi_dbm is None


def followups(responses: Mapping[str, AtResponse]) -> tuple[str, ...]:
    """What the generic poll asks next: ``AT+CESQ`` when ``+CSQ`` knew no level
    (an LTE-only module often keeps ``+CSQ: 99,99`` while ``+CESQ`` has RSRP)."""
    return (CMD_CESQ,) if csq_unknown(responses) else ()


def parse_iccid(command: str, resp: AtResponse | None) -> str | None:
    """The ICCID from the answer to any ICCID command (``+CCID``, ``+QCCID``,
    ``+CICCID``, ``+CRSM=176,12258,...``)."""
    if command.upper().startswith("AT+CRSM"):
        return parse_crsm_iccid(resp)
    return parse_ccid(resp)


def draft_from(responses: Mapping[str, AtResponse]) -> StateDraft:
    """The 3GPP part of a state, from whichever generic answers are present."""
    d = StateDraft()
    d.sim = parse_cpin(responses.get(CMD_CPIN))
    sig = parse_csq(responses.get(CMD_CSQ))
    d.csq, d.rssi_dbm = sig.csq, sig.rssi_dbm
    ext = parse_cesq(responses.get(CMD_CESQ))
    if ext.any:
        d.rsrp_dbm, d.rsrq_db = ext.rsrp_dbm, ext.rsrq_db
        if d.rssi_dbm is None:
            d.rssi_dbm = ext.rssi_dbm if ext.rssi_dbm is not None else ext.rscp_dbm
    reg = combine_registration(
        parse_reg(responses.get(CMD_CEREG), "+CEREG"),
        parse_reg(responses.get(CMD_CGREG), "+CGREG"),
        parse_reg(responses.get(CMD_CREG), "+CREG"),
    )
    d.registration = reg.state
    d.tac, d.cell_id = reg.tac, reg.cell_id
    op = parse_cops(responses.get(CMD_COPS))
    if reg.state.registered:
        d.operator, d.mccmnc = op.name, op.mccmnc
    d.access_tech = op.act if op.act is not AccessTech.UNKNOWN else reg.act
    for cmd, resp in responses.items():
        if d.iccid is None and ("CCID" in cmd.upper() or cmd.upper().startswith("AT+CRSM")):
            d.iccid = parse_iccid(cmd, resp)
    return d


def build_state(responses: Mapping[str, AtResponse]) -> ModemState:
    """The ModemState from the generic poll's answers, keyed by command."""
    return draft_from(responses).freeze()


__all__ = [
    "ICCID_COMMANDS",
    "OPERATORS",
    "POLL",
    "ExtSignal",
    "Operator",
    "Registration",
    "Signal",
    "StateDraft",
    "access_tech",
    "build_state",
    "combine_registration",
    "csq_to_dbm",
    "csq_unknown",
    "dec_as_hex",
    "draft_from",
    "followups",
    "hex_field",
    "normalize_iccid",
    "operator_for",
    "parse_ccid",
    "parse_cesq",
    "parse_cimi",
    "parse_cops",
    "parse_cpin",
    "parse_crsm_iccid",
    "parse_csq",
    "parse_iccid",
    "parse_reg",
    "reg_state",
    "sim_state_from_error",
    "sim_state_from_text",
    "swap_nibbles",
]
