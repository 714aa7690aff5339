"""Pure judgement for the technician commands: readings in, findings and JSON out.

Nothing here does I/O. ``diagnose_now`` runs the agent's own pure diagnosis
(``edge_agent.diagnosis.diagnose``) with every debounce window at zero, so one
fresh reading gives the faults it shows right now, with the same codes,
severities, B2 causes and evidence the daemon would report after its confirm
window. ``modem_result`` builds the stable ``diag modem --json`` contract.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edge_agent.config import DiagnosisConfig
from edge_agent.diagnosis import History, diagnose
from firmware_shims.readings import AmpReading, ModemReading, StreamReading, SystemReading
from fleet_protocol import FAULTS, Fault, FaultCode, FaultInfo, Severity

#: Which fault codes each diag target looks at. ``modem`` covers everything the
#: modem's answers can show (SIM and cellular network); ``network`` the cellular
#: network only (plus the broker link, which is not a fault code).
TARGET_CODES: Mapping[str, frozenset[FaultCode]] = {
    "modem": frozenset(
        {
            FaultCode.MODEM_UNRESPONSIVE,
            FaultCode.SIM_ABSENT,
            FaultCode.SIM_FAILURE,
            FaultCode.SIM_LOCKED,
            FaultCode.NOT_REGISTERED,
            FaultCode.REGISTRATION_DENIED,
            FaultCode.NO_SERVICE,
            FaultCode.WEAK_SIGNAL,
            FaultCode.NETWORK_UNSTABLE,
            FaultCode.NO_BEARER,
        }
    ),
    "network": frozenset(
        {
            FaultCode.NOT_REGISTERED,
            FaultCode.REGISTRATION_DENIED,
            FaultCode.NO_SERVICE,
            FaultCode.WEAK_SIGNAL,
            FaultCode.NETWORK_UNSTABLE,
            FaultCode.NO_BEARER,
        }
    ),
    "amp": frozenset(
        {
            FaultCode.AMP_NO_RESPONSE,
            FaultCode.AMP_OVER_TEMP,
            FaultCode.AMP_OUTPUT_SHORT,
            FaultCode.AMP_LINE_OPEN,
            FaultCode.AMP_FAULT,
            FaultCode.MAINS_FAIL,
            FaultCode.BATTERY_LOW,
        }
    ),
    "system": frozenset(
        {
            FaultCode.CONTROLLER_DISK_FULL,
            FaultCode.CONTROLLER_OVERHEAT,
            FaultCode.CONTROLLER_MEMORY_LOW,
        }
    ),
    "stream": frozenset({FaultCode.STREAM_LOST}),
}
TARGETS = ("modem", "amp", "system", "stream", "network")

#: Remedies in Vietnamese (fleet_protocol.FAULTS carries the English ones).
REMEDY_VI: Mapping[FaultCode, str] = {
    FaultCode.SIM_ABSENT: "lắp thẻ SIM, kiểm tra tiếp xúc của khay SIM",
    FaultCode.SIM_FAILURE: "thay thẻ SIM",
    FaultCode.SIM_LOCKED: "mở khoá SIM (PIN/PUK) hoặc thay SIM không khoá",
    FaultCode.NOT_REGISTERED: "kiểm tra ăng-ten và vùng phủ sóng; agent sẽ tự khởi động lại modem",
    FaultCode.REGISTRATION_DENIED: "hỏi nhà mạng xem SIM có bị chặn hoặc hết tiền không",
    FaultCode.NO_SERVICE: "kiểm tra ăng-ten, cáp ăng-ten và vùng phủ sóng tại chỗ",
    FaultCode.WEAK_SIGNAL: "nâng cao hoặc chỉnh hướng ăng-ten, hoặc lắp ăng-ten ngoài",
    FaultCode.NETWORK_UNSTABLE: "kiểm tra ăng-ten; hỏi nhà mạng về trạm phát",
    FaultCode.NO_BEARER: "kiểm tra gói cước dữ liệu, tài khoản và APN của SIM; hỏi nhà mạng"
    " xem SIM có bị chặn dữ liệu hoặc trạm phát có bị nghẽn không",
    FaultCode.STREAM_LOST: "kiểm tra địa chỉ luồng phát và máy chủ phát của đài",
    FaultCode.AMP_NO_RESPONSE: "kiểm tra nguồn amply, dây RS-485 và địa chỉ Modbus",
    FaultCode.AMP_OVER_TEMP: "kiểm tra thông gió và quạt của amply",
    FaultCode.AMP_OUTPUT_SHORT: "kiểm tra đường dây loa có bị chập không",
    FaultCode.AMP_LINE_OPEN: "kiểm tra đường dây loa và đầu nối loa có bị đứt không",
    FaultCode.AMP_FAULT: "sửa chữa hoặc thay amply",
    FaultCode.MAINS_FAIL: "kiểm tra nguồn 220 V, aptomat và cầu chì",
    FaultCode.BATTERY_LOW: "kiểm tra bộ sạc; thay ắc quy nếu không còn giữ điện",
    FaultCode.MODEM_UNRESPONSIVE: "tắt bật lại nguồn modem; kiểm tra cáp USB; thay nếu vẫn im",
    FaultCode.CONTROLLER_DISK_FULL: "giải phóng dung lượng thẻ nhớ; kiểm tra xoay vòng nhật ký",
    FaultCode.CONTROLLER_OVERHEAT: "cải thiện thông gió của tủ thiết bị",
    FaultCode.CONTROLLER_MEMORY_LOW: "khởi động lại agent; báo cáo nếu lặp lại",
}

#: Every debounce window at zero: one reading judges itself.
_NOW = DiagnosisConfig(confirm_s=0.0, clear_s=0.0, weak_signal_confirm_s=0.0)
_FOR_ZERO = re.compile(r" for 0 s$")


class Grade(enum.StrEnum):
    """Signal quality in words (REFERENCE.md's field scale)."""

    EXCELLENT = "excellent"
    GOOD = "good"
    FAIR = "fair"
    POOR = "poor"
    NONE = "none"
    UNKNOWN = "unknown"

    def label(self, lang: str = "vi") -> str:
        return _GRADE_LABELS[self][1 if lang == "en" else 0]


_GRADE_LABELS = {
    Grade.EXCELLENT: ("rất tốt", "excellent"),
    Grade.GOOD: ("tốt", "good"),
    Grade.FAIR: ("trung bình", "fair"),
    Grade.POOR: ("yếu", "poor"),
    Grade.NONE: ("không có sóng", "none"),
    Grade.UNKNOWN: ("chưa rõ", "unknown"),
}
_ORDER = [Grade.NONE, Grade.POOR, Grade.FAIR, Grade.GOOD, Grade.EXCELLENT]


def grade_signal(
    *, rsrp_dbm: float | None, rsrq_db: float | None = None, rssi_dbm: float | None = None
) -> Grade:
    """Grade a signal.

    LTE (RSRP given), after REFERENCE.md: RSRP >= -80 dBm excellent, -80..-90
    good, -90..-95 fair, -95..-100 poor, -100 or worse none. RSRQ lowers the
    grade: below -10 dB caps it at good, below -15 at fair, -20 or worse is none.
    Without RSRP, RSSI on the usual CSQ bands (inferred, common field practice):
    >= -73 dBm excellent (CSQ >= 20), >= -83 good, >= -93 fair, > -111 poor,
    else none. No value at all: unknown.
    """
    if rsrp_dbm is not None:
        if rsrp_dbm >= -80:
            g = Grade.EXCELLENT
        elif rsrp_dbm > -90:
            g = Grade.GOOD
        elif rsrp_dbm > -95:
            g = Grade.FAIR
        elif rsrp_dbm > -100:
            g = Grade.POOR
        else:
            g = Grade.NONE
        if rsrq_db is not None:
            cap = (
                Grade.NONE
                if rsrq_db <= -20
                else Grade.FAIR
                if rsrq_db < -15
                else Grade.GOOD
                if rsrq_db < -10
                else Grade.EXCELLENT
            )
            g = min(g, cap, key=_ORDER.index)
        return g
    if rssi_dbm is not None:
        if rssi_dbm >= -73:
            return Grade.EXCELLENT
        if rssi_dbm >= -83:
            return Grade.GOOD
        if rssi_dbm >= -93:
            return Grade.FAIR
        if rssi_dbm > -111:
            return Grade.POOR
        return Grade.NONE
    return Grade.UNKNOWN


def diagnose_now(
    *,
    modem: ModemReading | None = None,
    amp: AmpReading | None = None,
    system: SystemReading | None = None,
    stream: StreamReading | None = None,
    params: DiagnosisConfig | None = None,
) -> list[Fault]:
    """The faults these single readings show now (no debounce); critical first.

    ``params`` supplies the thresholds (weak signal, temperatures, disk...);
    its windows are ignored. Flapping needs history and is never found here.
    """
    p = _NOW
    if params is not None:
        p = DiagnosisConfig(
            **{
                **{k: getattr(params, k) for k in params.__dataclass_fields__},
                "confirm_s": 0.0,
                "clear_s": 0.0,
                "weak_signal_confirm_s": 0.0,
            }
        )
    history = History(
        modem=[modem] if modem else [],
        amp=[amp] if amp else [],
        system=[system] if system else [],
        stream=[stream] if stream else [],
    )
    now = max((r.ts for r in (modem, amp, system, stream) if r is not None), default=0.0)
    out = []
    for f in diagnose(history, now, p):
        # A single reading has lasted no time: "for 0 s" says nothing.
        out.append(Fault.of(f.code, f.since, _FOR_ZERO.sub("", f.evidence)))
    return out


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem to show: a fault code (or a check like ``broker_unreachable``)."""

    code: str
    severity: str
    cause: str | None
    evidence: str
    since: float | None = None
    #: "now" (a fresh check) or "agent" (active in the daemon, debounced over time)
    source: str = "now"

    @classmethod
    def of(cls, f: Fault, source: str = "now") -> Finding:
        return cls(f.code.value, f.severity.value, f.cause.value, f.evidence, f.since, source)

    def title(self, lang: str = "vi") -> str:
        info = _info(self.code)
        if info is not None:
            return info.title_en if lang == "en" else info.title_vi
        return _EXTRA_TITLES.get(self.code, (self.code, self.code))[1 if lang == "en" else 0]

    def remedy(self, lang: str = "vi") -> str:
        info = _info(self.code)
        if info is not None:
            return info.remedy_en if lang == "en" else REMEDY_VI[info.code]
        return _EXTRA_REMEDIES.get(self.code, ("", ""))[1 if lang == "en" else 0]

    def explain(self, lang: str = "vi") -> str:
        """``"SIM failure (+CME ERROR: 13 on AT+CPIN?): replace the SIM card"``."""
        ev = f" ({self.evidence})" if self.evidence else ""
        remedy = self.remedy(lang)
        return f"{self.title(lang)}{ev}" + (f": {remedy}" if remedy else "")

    def to_json(self, lang: str = "vi") -> dict[str, Any]:
        return {
            "code": self.code,
            "cause": self.cause,
            "severity": self.severity,
            "evidence": self.evidence,
            "since": self.since,
            "source": self.source,
            "title": self.title(lang),
            "remedy": self.remedy(lang),
        }


_EXTRA_TITLES = {
    "broker_unreachable": ("Không kết nối được máy chủ MQTT", "Broker not reachable"),
}
_EXTRA_REMEDIES = {
    "broker_unreachable": (
        "kiểm tra dữ liệu di động (APN), tường lửa và địa chỉ máy chủ trong cấu hình",
        "check mobile data (APN), firewall and the broker address in the config",
    ),
}


def _info(code: str) -> FaultInfo | None:
    try:
        return FAULTS[FaultCode(code)]
    except ValueError:
        return None


def findings(
    fresh: Iterable[Fault], active: Iterable[Fault] = (), *, target: str | None = None
) -> list[Finding]:
    """Fresh faults, then the daemon's active ones not seen fresh; limited to ``target``.

    Critical first, then in the order given.
    """
    codes = TARGET_CODES.get(target) if target else None
    out: list[Finding] = []
    seen: set[str] = set()
    for source, faults in (("now", fresh), ("agent", active)):
        for f in faults:
            if (codes is not None and f.code not in codes) or f.code.value in seen:
                continue
            seen.add(f.code.value)
            out.append(Finding.of(f, source))
    return sorted(out, key=lambda x: x.severity != Severity.CRITICAL.value)


def modem_result(
    reading: ModemReading | None, found: Sequence[Finding], lang: str = "en"
) -> dict[str, Any]:
    """The ``diag modem --json`` contract (stable; scripts rely on it).

    Keys: ``sim`` (ready|absent|failure|locked|unknown), ``registration``
    (home|roaming|searching|denied|not_registered|unknown), ``rssi_dbm``,
    ``rsrp_dbm``, ``rsrq_db``, ``sinr_db`` (null where not given), ``operator``,
    ``access_tech``, ``iccid``, ``faults`` (list of ``{code, cause, severity,
    evidence}`` plus descriptive keys). Extra keys: ``responding``, ``csq``,
    ``mccmnc``, ``signal`` (grade word), ``errors`` (command → error).
    """
    s = reading.state if reading is not None else None
    return {
        "responding": bool(s and s.responding),
        "sim": s.sim.value if s else "unknown",
        "registration": s.registration.value if s else "unknown",
        "rssi_dbm": s.rssi_dbm if s else None,
        "rsrp_dbm": s.rsrp_dbm if s else None,
        "rsrq_db": s.rsrq_db if s else None,
        "sinr_db": s.sinr_db if s else None,
        "csq": s.csq if s else None,
        "signal": grade_signal(rsrp_dbm=s.rsrp_dbm, rsrq_db=s.rsrq_db, rssi_dbm=s.rssi_dbm).value
        if s
        else Grade.UNKNOWN.value,
        "operator": s.operator if s else None,
        "mccmnc": s.mccmnc if s else None,
        "access_tech": s.access_tech.value if s else "unknown",
        "iccid": s.iccid if s else None,
        "errors": dict(reading.errors) if reading is not None else {},
        "faults": [f.to_json(lang) for f in found],
    }


__all__ = [
    "REMEDY_VI",
    "TARGETS",
    "TARGET_CODES",
    "Finding",
    "Grade",
    "diagnose_now",
    "findings",
    "grade_signal",
    "modem_result",
]
