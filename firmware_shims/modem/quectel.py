"""Quectel extras (EC2x, EG2x, EC200, EG800K, BG96, RM5xx). Pure: no I/O; parsers never raise.

- ``AT+QCCID`` → ``+QCCID: <iccid>`` (sometimes with trailing ``F``).
- ``AT+QCSQ`` → ``+QCSQ: "NOSERVICE"`` or ``"LTE",<rssi>,<rsrp>,<sinr>,<rsrq>``
  (also ``"CAT-M1"``/``"CAT-NB1"`` the same way, ``"WCDMA",<rssi>,<rscp>,<ecio>``,
  ``"GSM",<rssi>``); SINR is 0..250 with dB = v/5 − 20 ("1/5th of a dB").
- ``AT+QENG="servingcell"`` → ``+QENG: "servingcell",<state>,"LTE",<FDD|TDD>,
  <mcc>,<mnc>,<cellid>,<pcid>,<earfcn>,<band>,<ul_bw>,<dl_bw>,<tac>,<rsrp>,
  <rsrq>,<rssi>,<sinr>,...``; state SEARCH (no more fields), LIMSRV, NOCONN or
  CONNECT. Parsed by position; 5G families insert fields after SINR (CQI, TX
  power), and in EN-DC mode print the state alone with the LTE cell on a
  ``+QENG: "LTE",...`` line. Any field may be ``-`` (not known).

Family and firmware differences (``SinrScale``); firmware README.md lists the
sources:

- Quectel's manuals give SINR on the 0..250 scale, but EP06-E/EG06-E firmware
  prints +QENG's SINR in plain dB (``...,-84,-9,-56,21,35``), so the
  ``quectel`` dialect reads it as ``auto``: +QCSQ's SINR (on the 0..250 scale)
  wins when present; otherwise a value above 40 can only be the 0..250 scale
  (LTE SINR tops out near 30-35 dB); 0..40 is dB unless the cell's RSRQ is
  -16 dB or worse, where the 0..250 reading (-20..-12 dB) is taken (an
  inference with no source behind it).
- The LTE Cat-1 modules (EC200T/EC200A reports: +QENG's SINR "requires no
  conversion") and the Cat-1bis EG800K are read as ``db``: plain dB, except a
  value above 40, which only the 0..250 scale explains (an EC200 driver's
  captures ``...,-99,-14,-71,53,30`` read -9.4 dB). Their poll asks +QENG and
  not ``AT+QCSQ`` (no source shows these modules answering it).
- EG21 firmware prints +QCSQ's LTE RSSI as a positive number
  (``+QCSQ: "LTE",65,-95,150,-11``): no received level is above 0 dBm, so a
  positive RSSI is read as its negative (no public source found; kept because
  it cannot misread a real level).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from firmware_shims.modem import generic
from firmware_shims.modem.at import AtResponse, split_fields, to_int, unquote
from fleet_protocol import AccessTech, ModemState, RegState

CMD_QCCID = "AT+QCCID"
CMD_QCSQ = "AT+QCSQ"
CMD_QENG = 'AT+QENG="servingcell"'

POLL = (*generic.POLL, CMD_QCSQ, CMD_QENG)
ICCID_COMMANDS = (CMD_QCCID, generic.CMD_CRSM_ICCID)
#: EC200U/EC200A/EG800K: no AT+QCSQ; +QENG carries the levels.
CAT1_POLL = (*generic.POLL, CMD_QENG)
#: EC200/EG800K: AT+QCCID first (Quectel's command); should a build refuse it
#: (no source shows one that does), the 3GPP-style AT+CCID and then the SIM
#: file itself are asked.
CAT1_ICCID_COMMANDS = (CMD_QCCID, generic.CMD_CCID, generic.CMD_CRSM_ICCID)

#: How a family prints SINR in +QENG: ``fifth_db`` is the 0..250 scale
#: (dB = v/5 − 20, Quectel manuals); ``db`` is plain dB, a value above 40 read
#: on the 0..250 scale (EC200, EG800K, 5G families); ``auto`` tells them apart
#: by value and RSRQ (module doc).
SinrScale = Literal["fifth_db", "db", "auto"]
#: +QENG SINR above this cannot be dB (LTE SINR tops out near 30-35 dB).
_MAX_DB_SINR = 40
#: At this RSRQ or worse a small +QENG SINR value is read on the 0..250 scale.
_POOR_RSRQ_DB = -16


def parse_qccid(resp: AtResponse | None) -> str | None:
    """``AT+QCCID``: the ICCID, trailing ``F`` stripped; None on error or garbage."""
    return generic.parse_ccid(resp, "+QCCID")


def sinr_from_scale(v: int | None) -> float | None:
    """The 0..250 SINR scale to dB (v/5 − 20); None outside the scale."""
    if v is None or not 0 <= v <= 250:
        return None
    return v / 5 - 20


@dataclass(frozen=True, slots=True)
class Qcsq:
    """``+QCSQ``: ``sysmode`` as printed (``NOSERVICE``, ``LTE`` ...), and the levels."""

    sysmode: str | None = None
    rssi_dbm: float | None = None
    rsrp_dbm: float | None = None
    rsrq_db: float | None = None
    sinr_db: float | None = None

    @property
    def service(self) -> bool | None:
        if self.sysmode is None:
            return None
        return self.sysmode.upper() != "NOSERVICE"


_QCSQ_LTE = frozenset({"LTE", "CAT-M1", "CAT-NB1", "EMTC", "NBIOT"})


def parse_qcsq(resp: AtResponse | None) -> Qcsq:
    """``AT+QCSQ`` (see module doc); missing trailing fields give None levels."""
    if resp is None or not resp.ok:
        return Qcsq()
    answers = resp.info("+QCSQ")
    if not answers:
        return Qcsq()
    parts = split_fields(answers[-1])
    mode = unquote(parts[0]).upper()
    if not mode or not mode.isprintable():
        return Qcsq()

    def num(i: int) -> int | None:
        return to_int(parts[i]) if len(parts) > i else None

    if mode in _QCSQ_LTE:
        rssi, rsrp, sinr, rsrq = num(1), num(2), num(3), num(4)
        if rssi is not None and rssi > 0:
            rssi = -rssi  # EG21 firmware prints the magnitude (module doc)
        return Qcsq(
            sysmode=mode,
            rssi_dbm=float(rssi) if rssi is not None else None,
            rsrp_dbm=float(rsrp) if rsrp is not None else None,
            sinr_db=sinr_from_scale(sinr),
            rsrq_db=float(rsrq) if rsrq is not None else None,
        )
    if mode in ("GSM", "WCDMA", "TDSCDMA"):
        rssi = num(1)
        return Qcsq(sysmode=mode, rssi_dbm=float(rssi) if rssi is not None else None)
    return Qcsq(sysmode=mode[:16])


@dataclass(frozen=True, slots=True)
class ServingCell:
    """``+QENG: "servingcell"``: ``state`` is SEARCH / LIMSRV / NOCONN / CONNECT
    (upper case, or None if absent), the rest as far as the modem printed them."""

    state: str | None = None
    rat: AccessTech = AccessTech.UNKNOWN
    mccmnc: str | None = None
    cell_id: str | None = None
    tac: str | None = None
    rsrp_dbm: float | None = None
    rsrq_db: float | None = None
    rssi_dbm: float | None = None
    sinr_db: float | None = None

    @property
    def registration(self) -> RegState:
        """What the state says about registration (home/roaming is not told apart)."""
        return {
            "SEARCH": RegState.SEARCHING,
            "LIMSRV": RegState.NOT_REGISTERED,
            "NOCONN": RegState.HOME,
            "CONNECT": RegState.HOME,
        }.get(self.state or "", RegState.UNKNOWN)


_QENG_RAT = {
    "LTE": AccessTech.LTE,
    "CAT-M": AccessTech.LTE,
    "CAT-M1": AccessTech.LTE,
    "EMTC": AccessTech.LTE,
    "CAT-NB": AccessTech.NBIOT,
    "NBIOT": AccessTech.NBIOT,
    "WCDMA": AccessTech.UMTS,
    "GSM": AccessTech.GSM,
    "NR5G-SA": AccessTech.NR,
    "NR5G-NSA": AccessTech.NR,
}


def _mccmnc(mcc: str | None, mnc: str | None) -> str | None:
    mcc_i, mnc_s = to_int(mcc), unquote(mnc or "")
    if mcc_i is None or not mnc_s.isdigit() or not 1 <= len(mnc_s) <= 3:
        return None
    # MNCs print without their leading zero (452,4); Vietnam and most of the
    # world use two digits, North America three.
    return f"{mcc_i:03d}{int(mnc_s):0{max(2, len(mnc_s))}d}"


def _lte_cell(
    state: str | None, rat: AccessTech, f: list[str], sinr_scale: SinrScale
) -> ServingCell:
    """``f`` starts at <FDD|TDD>: mcc mnc cellid pcid earfcn band ul dl tac rsrp rsrq rssi sinr."""

    def num(i: int) -> int | None:
        return to_int(f[i]) if len(f) > i else None

    sinr, rsrq = num(13), num(11)
    fifth = sinr_scale == "fifth_db" or (sinr is not None and sinr > _MAX_DB_SINR)
    if sinr_scale == "auto" and sinr is not None and rsrq is not None:
        fifth = fifth or rsrq <= _POOR_RSRQ_DB
    sinr_db = sinr_from_scale(sinr) if fifth else sinr
    return ServingCell(
        state=state,
        rat=rat,
        mccmnc=_mccmnc(f[1] if len(f) > 1 else None, f[2] if len(f) > 2 else None),
        cell_id=generic.hex_field(f[3]) if len(f) > 3 else None,
        tac=generic.hex_field(f[9]) if len(f) > 9 else None,
        rsrp_dbm=_float(num(10)),
        rsrq_db=_float(num(11)),
        rssi_dbm=_float(num(12)),
        sinr_db=float(sinr_db) if sinr_db is not None else None,
    )


def _float(v: int | None) -> float | None:
    return float(v) if v is not None else None


def parse_qeng_servingcell(
    resp: AtResponse | None, sinr_scale: SinrScale = "fifth_db"
) -> ServingCell:
    """``AT+QENG="servingcell"`` by position (see module doc)."""
    if resp is None or not resp.ok:
        return ServingCell()
    answers = resp.info("+QENG")
    if not answers:
        return ServingCell()
    state: str | None = None
    for payload in answers:
        f = split_fields(payload)
        head = unquote(f[0]).upper()
        if head == "SERVINGCELL":
            state = unquote(f[1]).upper() if len(f) > 1 else None
            if state is not None and (not state.isalpha() or len(state) > 16):
                state = None
            if len(f) > 3:
                rat_name = unquote(f[2]).upper()
                rat = _QENG_RAT.get(rat_name, AccessTech.UNKNOWN)
                if rat in (AccessTech.LTE, AccessTech.NBIOT):
                    return _lte_cell(state, rat, f[3:], sinr_scale)
                if rat is not AccessTech.UNKNOWN:
                    # GSM/WCDMA: mcc,mnc,lac,cellid,... — keep identity only.
                    return ServingCell(
                        state=state,
                        rat=rat,
                        mccmnc=_mccmnc(f[3], f[4] if len(f) > 4 else None),
                        tac=generic.hex_field(f[5]) if len(f) > 5 else None,
                        cell_id=generic.hex_field(f[6]) if len(f) > 6 else None,
                    )
                return ServingCell(state=state)
        elif head == "LTE" and len(f) > 1:
            # EN-DC layout: the state came alone; the LTE anchor follows.
            return _lte_cell(state, AccessTech.LTE, f[1:], sinr_scale)
    return ServingCell(state=state)


def _first(*values: float | None) -> float | None:
    return next((v for v in values if v is not None), None)


def build_state(
    responses: Mapping[str, AtResponse], sinr_scale: SinrScale = "fifth_db"
) -> ModemState:
    """The ModemState from the Quectel poll's answers, keyed by command.

    +QENG and +QCSQ refine what the 3GPP answers give: RSRP/RSRQ/SINR, cell,
    TAC and MCC-MNC; registration stays with +CxREG (it tells home from roaming)
    unless those gave nothing. ``sinr_scale`` is how this family prints +QENG's
    SINR (``auto``: module doc).
    """
    d = generic.draft_from(responses)
    qcsq = parse_qcsq(responses.get(CMD_QCSQ))
    cell = parse_qeng_servingcell(responses.get(CMD_QENG), sinr_scale)
    d.rsrp_dbm = _first(cell.rsrp_dbm, qcsq.rsrp_dbm, d.rsrp_dbm)
    d.rsrq_db = _first(cell.rsrq_db, qcsq.rsrq_db, d.rsrq_db)
    d.sinr_db = _first(qcsq.sinr_db, cell.sinr_db)
    if d.rssi_dbm is None:
        d.rssi_dbm = qcsq.rssi_dbm if qcsq.rssi_dbm is not None else cell.rssi_dbm
    if d.registration is RegState.UNKNOWN:
        d.registration = cell.registration
    if cell.state in ("NOCONN", "CONNECT"):
        d.cell_id = cell.cell_id or d.cell_id
        d.tac = cell.tac or d.tac
        if cell.mccmnc and d.registration.registered:
            d.mccmnc = cell.mccmnc
            if d.operator is None:
                d.operator = generic.operator_for(cell.mccmnc).name
        if cell.rat is not AccessTech.UNKNOWN:
            d.access_tech = cell.rat
    return d.freeze()


__all__ = [
    "CAT1_ICCID_COMMANDS",
    "CAT1_POLL",
    "CMD_QCCID",
    "CMD_QCSQ",
    "CMD_QENG",
    "ICCID_COMMANDS",
    "POLL",
    "Qcsq",
    "ServingCell",
    "SinrScale",
    "build_state",
    "parse_qccid",
    "parse_qcsq",
    "parse_qeng_servingcell",
    "sinr_from_scale",
]
