"""SIMCom extras (SIM7600, A7670, SIM7000/7080). Pure: no I/O; parsers never raise.

- ``AT+CICCID`` → ``+ICCID: <iccid>`` (A76XX manual V1.09 §6.2.1).
- ``AT+CPSI?`` → ``+CPSI: <sysmode>,<opmode>[,<mcc>-<mnc>,<tac>,<cellid>,...]``:
  for LTE ``...,<pcid>,EUTRAN-BAND<n>,<earfcn>,<dlbw>,<ulbw>,<rsrq>,<rsrp>,
  <rssi>,<rssnr>``; ``+CPSI: NO SERVICE,Online`` without service. SIM7600
  prints RSRQ/RSRP/RSSI in tenths of a dB (SIM7500/SIM7600 manual example
  ``-168,-1126,-773,7``); SIM7000/7080 in whole dB (``LTE CAT-M1`` field
  captures such as ``-16,-83,-53,10``). ``family`` picks the unit; ``None``
  infers it from RSRP's magnitude (no real RSRP is below −200 dBm, no tenths
  value above it). RSSNR is whole dB in every family.
- The A76xx Cat-1 modules (A7670, A7672; ``family="a76xx"``) print 3GPP-style
  report values, not levels (A76XX manual V1.09 §4.2.9: RSRP = value − 140
  dBm, RSRQ = (value − 40)/2 dB, RSSI = value − 110 dBm; example
  ``...,EUTRAN-BAND3,1650,5,0,21,67,255,19``; an A7670G capture prints
  ``...,5,5,8,53,60,-4``). So a value of 0 or more is a report value (RSRP
  0..97, RSRQ 0..34, RSSI 0..110; anything else, such as the example's RSSI
  255, is unknown). A negative value cannot be a report value: it is read as
  whole dB within RSRQ −34..3, RSRP −160..−30, RSSI −130..−10 and as tenths
  past those limits, in case a build prints levels (the SIM767XX manual's
  example does, in whole dB); no A76xx source shows that form.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from firmware_shims.modem import generic
from firmware_shims.modem.at import AtResponse, split_fields, to_int, unquote
from fleet_protocol import AccessTech, ModemState, RegState

CMD_CICCID = "AT+CICCID"
CMD_CPSI = "AT+CPSI?"

POLL = (*generic.POLL, CMD_CPSI)
ICCID_COMMANDS = (CMD_CICCID, generic.CMD_CRSM_ICCID)

#: ``sim7600``: tenths of a dB; ``sim7000`` (also SIM7080): whole dB; ``a76xx``
#: (A7670, A7672): report values, levels tolerated (module doc).
Family = Literal["sim7600", "sim7000", "a76xx"]
#: Per field, the most negative value a whole-dB reading can take (A76xx).
_WHOLE_DB_FLOOR = {"rsrq": -34, "rsrp": -160, "rssi": -130}
#: Per field, the largest report value and its conversion (A76XX manual V1.09).
_REPORT: dict[str, tuple[int, Callable[[int], float]]] = {
    "rsrq": (34, lambda v: (v - 40) / 2),
    "rsrp": (97, lambda v: float(v - 140)),
    "rssi": (110, lambda v: float(v - 110)),
}


def _a76xx_level(v: int | None, name: str) -> float | None:
    """An A76xx +CPSI level field: a report value when 0 or more, else dB or tenths."""
    if v is None:
        return None
    if v >= 0:
        top, convert = _REPORT[name]
        return convert(v) if v <= top else None
    return v / 10.0 if v < _WHOLE_DB_FLOOR[name] else float(v)


def parse_ciccid(resp: AtResponse | None) -> str | None:
    """``AT+CICCID``: ``+ICCID: <iccid>``, trailing ``F`` stripped; None on error."""
    return generic.parse_ccid(resp, "+ICCID")


@dataclass(frozen=True, slots=True)
class Cpsi:
    """``+CPSI``: ``sysmode`` upper-cased (``LTE``, ``LTE CAT-M1``, ``GSM``,
    ``NO SERVICE`` ...), ``opmode`` as printed, and what the sysmode carries."""

    sysmode: str | None = None
    opmode: str | None = None
    rat: AccessTech = AccessTech.UNKNOWN
    mccmnc: str | None = None
    tac: str | None = None
    cell_id: str | None = None
    rsrp_dbm: float | None = None
    rsrq_db: float | None = None
    rssi_dbm: float | None = None
    sinr_db: float | None = None

    @property
    def service(self) -> bool | None:
        if self.sysmode is None:
            return None
        return self.sysmode != "NO SERVICE"


def _rat(sysmode: str) -> AccessTech:
    if "NB" in sysmode:
        return AccessTech.NBIOT
    if sysmode.startswith("LTE"):
        return AccessTech.LTE
    if sysmode.startswith(("NR5G", "NR")):
        return AccessTech.NR
    if sysmode.startswith(("WCDMA", "HSPA", "TDS")):
        return AccessTech.UMTS
    if sysmode.startswith("EDGE"):
        return AccessTech.EDGE
    if sysmode.startswith(("GSM", "GPRS")):
        return AccessTech.GSM
    return AccessTech.UNKNOWN


def _mccmnc(text: str) -> str | None:
    parts = unquote(text).split("-")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        return None
    mcc, mnc = parts
    if len(mcc) != 3 or not 2 <= len(mnc) <= 3:
        return None
    return mcc + mnc


def parse_cpsi(resp: AtResponse | None, family: Family | None = None) -> Cpsi:
    """``AT+CPSI?`` (see module doc); missing trailing fields give None."""
    if resp is None or not resp.ok:
        return Cpsi()
    answers = resp.info("+CPSI")
    if not answers:
        return Cpsi()
    f = split_fields(answers[-1])
    sysmode = unquote(f[0]).upper()
    if not sysmode or not sysmode.isprintable() or len(sysmode) > 24:
        return Cpsi()
    opmode = unquote(f[1])[:24] if len(f) > 1 and f[1].isprintable() else None
    rat = _rat(sysmode)
    if sysmode == "NO SERVICE" or len(f) < 3:
        return Cpsi(sysmode=sysmode, opmode=opmode)
    base = Cpsi(
        sysmode=sysmode,
        opmode=opmode,
        rat=rat,
        mccmnc=_mccmnc(f[2]),
        tac=generic.hex_field(f[3]) if len(f) > 3 else None,
        cell_id=generic.dec_as_hex(f[4]) if len(f) > 4 else None,
    )
    if rat not in (AccessTech.LTE, AccessTech.NBIOT):
        return base

    def num(i: int) -> int | None:
        return to_int(f[i]) if len(f) > i else None

    rsrq, rsrp, rssi, snr = num(10), num(11), num(12), num(13)
    levels: tuple[float | None, ...]
    if family == "a76xx":
        levels = (
            _a76xx_level(rsrq, "rsrq"),
            _a76xx_level(rsrp, "rsrp"),
            _a76xx_level(rssi, "rssi"),
        )
    else:
        tenths = family == "sim7600" or (family is None and rsrp is not None and rsrp < -200)
        scale = 10.0 if tenths else 1.0
        levels = tuple(v / scale if v is not None else None for v in (rsrq, rsrp, rssi))
    return Cpsi(
        sysmode=base.sysmode,
        opmode=base.opmode,
        rat=rat,
        mccmnc=base.mccmnc,
        tac=base.tac,
        cell_id=base.cell_id,
        rsrq_db=levels[0],
        rsrp_dbm=levels[1],
        rssi_dbm=levels[2],
        # RSSNR is printed in whole dB by every family.
        sinr_db=float(snr) if snr is not None else None,
    )


def build_state(responses: Mapping[str, AtResponse], family: Family | None = None) -> ModemState:
    """The ModemState from the SIMCom poll's answers, keyed by command."""
    d = generic.draft_from(responses)
    cpsi = parse_cpsi(responses.get(CMD_CPSI), family)
    if cpsi.rsrp_dbm is not None or cpsi.rsrq_db is not None:
        d.rsrp_dbm, d.rsrq_db = cpsi.rsrp_dbm, cpsi.rsrq_db
    d.sinr_db = cpsi.sinr_db
    if d.rssi_dbm is None:
        d.rssi_dbm = cpsi.rssi_dbm
    if d.registration is RegState.UNKNOWN and cpsi.service is False:
        d.registration = RegState.SEARCHING
    if cpsi.service and d.registration.registered:
        d.cell_id = cpsi.cell_id or d.cell_id
        d.tac = cpsi.tac or d.tac
        if cpsi.mccmnc:
            d.mccmnc = cpsi.mccmnc
            if d.operator is None:
                d.operator = generic.operator_for(cpsi.mccmnc).name
        if cpsi.rat is not AccessTech.UNKNOWN:
            d.access_tech = cpsi.rat
    return d.freeze()


__all__ = [
    "CMD_CICCID",
    "CMD_CPSI",
    "ICCID_COMMANDS",
    "POLL",
    "Cpsi",
    "Family",
    "build_state",
    "parse_ciccid",
    "parse_cpsi",
]
