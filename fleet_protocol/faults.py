"""Fault codes: each has a severity and the B2 cause it counts under.

Critical faults make a cluster count as broken ("hỏng, không hoạt động");
warnings do not.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from fleet_protocol.causes import B2Cause


class Severity(enum.StrEnum):
    CRITICAL = "critical"
    WARNING = "warning"


class FaultCode(enum.StrEnum):
    # SIM
    SIM_ABSENT = "sim_absent"
    SIM_FAILURE = "sim_failure"
    SIM_LOCKED = "sim_locked"
    # cellular network
    NOT_REGISTERED = "not_registered"
    REGISTRATION_DENIED = "registration_denied"
    NO_SERVICE = "no_service"
    WEAK_SIGNAL = "weak_signal"
    NETWORK_UNSTABLE = "network_unstable"
    #: SIM ready and registered, but no packet data (PDP context refused, no IP).
    NO_BEARER = "no_bearer"
    # broadcast stream
    STREAM_LOST = "stream_lost"
    # amplifier and speakers
    AMP_NO_RESPONSE = "amp_no_response"
    AMP_OVER_TEMP = "amp_over_temp"
    AMP_OUTPUT_SHORT = "amp_output_short"
    AMP_LINE_OPEN = "amp_line_open"
    AMP_FAULT = "amp_fault"
    # power
    MAINS_FAIL = "mains_fail"
    BATTERY_LOW = "battery_low"
    # receiver device (modem, controller)
    MODEM_UNRESPONSIVE = "modem_unresponsive"
    CONTROLLER_DISK_FULL = "controller_disk_full"
    CONTROLLER_OVERHEAT = "controller_overheat"
    CONTROLLER_MEMORY_LOW = "controller_memory_low"


@dataclass(frozen=True, slots=True)
class FaultInfo:
    """What a fault code means: severity, B2 cause, and words for people."""

    code: FaultCode
    severity: Severity
    cause: B2Cause
    title_vi: str
    title_en: str
    remedy_en: str


_C, _W = Severity.CRITICAL, Severity.WARNING

FAULTS: dict[FaultCode, FaultInfo] = {
    f.code: f
    for f in (
        FaultInfo(
            FaultCode.SIM_ABSENT,
            _C,
            B2Cause.SIM_FAILURE,
            "Không có SIM",
            "SIM absent",
            "insert a SIM card, check the SIM tray contacts",
        ),
        FaultInfo(
            FaultCode.SIM_FAILURE,
            _C,
            B2Cause.SIM_FAILURE,
            "Cháy SIM, lỗi SIM",
            "SIM failure",
            "replace the SIM card",
        ),
        FaultInfo(
            FaultCode.SIM_LOCKED,
            _C,
            B2Cause.SIM_FAILURE,
            "SIM bị khoá PIN/PUK",
            "SIM locked",
            "unlock the SIM (PIN/PUK) or replace it with an unlocked one",
        ),
        FaultInfo(
            FaultCode.NOT_REGISTERED,
            _C,
            B2Cause.UNSTABLE_NETWORK,
            "Không đăng ký được mạng",
            "Not registered on the network",
            "check the antenna and coverage; the recovery ladder resets the modem",
        ),
        FaultInfo(
            FaultCode.REGISTRATION_DENIED,
            _C,
            B2Cause.UNSTABLE_NETWORK,
            "Mạng từ chối đăng ký",
            "Registration denied",
            "ask the operator whether the SIM is barred or out of credit",
        ),
        FaultInfo(
            FaultCode.NO_SERVICE,
            _C,
            B2Cause.UNSTABLE_NETWORK,
            "Mất sóng di động",
            "No mobile service",
            "check the antenna, cable and coverage at the site",
        ),
        FaultInfo(
            FaultCode.WEAK_SIGNAL,
            _W,
            B2Cause.UNSTABLE_NETWORK,
            "Sóng di động yếu",
            "Weak signal",
            "raise or re-aim the antenna, or fit an external one",
        ),
        FaultInfo(
            FaultCode.NETWORK_UNSTABLE,
            _C,
            B2Cause.UNSTABLE_NETWORK,
            "Mạng chập chờn",
            "Unstable network",
            "check the antenna; ask the operator about the cell",
        ),
        # Counted as unstable_network: the SIM works and the cluster is sound; it is
        # the operator's data service that fails (plan out of data, barred APN,
        # congested cell), which is what the district calls "mạng chập chờn".
        FaultInfo(
            FaultCode.NO_BEARER,
            _C,
            B2Cause.UNSTABLE_NETWORK,
            "Có sóng nhưng mất kết nối dữ liệu (3G/4G)",
            "Registered but no mobile data",
            "check the SIM's data plan and credit and the APN; ask the operator "
            "whether data is barred on the SIM or the cell is congested",
        ),
        FaultInfo(
            FaultCode.STREAM_LOST,
            _C,
            B2Cause.NO_STATION_SIGNAL,
            "Không tiếp được sóng của đài",
            "Broadcast stream not received",
            "check the stream URL and the station's streaming server",
        ),
        FaultInfo(
            FaultCode.AMP_NO_RESPONSE,
            _C,
            B2Cause.AMPLIFIER_SPEAKER,
            "Amply không phản hồi",
            "Amplifier not answering",
            "check the amplifier's power and the RS-485 wiring and address",
        ),
        FaultInfo(
            FaultCode.AMP_OVER_TEMP,
            _C,
            B2Cause.AMPLIFIER_SPEAKER,
            "Amply quá nhiệt",
            "Amplifier over temperature",
            "check ventilation and the amplifier's fan",
        ),
        FaultInfo(
            FaultCode.AMP_OUTPUT_SHORT,
            _C,
            B2Cause.AMPLIFIER_SPEAKER,
            "Chập đường loa",
            "Amplifier output short",
            "inspect the speaker line for a short circuit",
        ),
        FaultInfo(
            FaultCode.AMP_LINE_OPEN,
            _C,
            B2Cause.AMPLIFIER_SPEAKER,
            "Đứt đường dây loa",
            "Speaker line open",
            "inspect the speaker line and horn connections for a break",
        ),
        FaultInfo(
            FaultCode.AMP_FAULT,
            _C,
            B2Cause.AMPLIFIER_SPEAKER,
            "Hỏng amply",
            "Amplifier fault",
            "service or replace the amplifier",
        ),
        FaultInfo(
            FaultCode.MAINS_FAIL,
            _C,
            B2Cause.POWER,
            "Mất điện lưới",
            "Mains failure",
            "check the 220 V supply, breaker and fuse",
        ),
        FaultInfo(
            FaultCode.BATTERY_LOW,
            _W,
            B2Cause.POWER,
            "Ắc quy yếu",
            "Battery low",
            "check the charger; replace the battery if it no longer holds charge",
        ),
        FaultInfo(
            FaultCode.MODEM_UNRESPONSIVE,
            _C,
            B2Cause.RECEIVER_DEVICE,
            "Modem không phản hồi",
            "Modem not answering",
            "power-cycle the modem; check its USB cable; replace if it stays silent",
        ),
        FaultInfo(
            FaultCode.CONTROLLER_DISK_FULL,
            _W,
            B2Cause.RECEIVER_DEVICE,
            "Thẻ nhớ đầy",
            "Controller storage almost full",
            "free space on the SD card; check log rotation",
        ),
        FaultInfo(
            FaultCode.CONTROLLER_OVERHEAT,
            _W,
            B2Cause.RECEIVER_DEVICE,
            "Bộ điều khiển quá nhiệt",
            "Controller overheating",
            "improve ventilation of the cabinet",
        ),
        FaultInfo(
            FaultCode.CONTROLLER_MEMORY_LOW,
            _W,
            B2Cause.RECEIVER_DEVICE,
            "Bộ điều khiển thiếu bộ nhớ",
            "Controller memory low",
            "restart the agent; report if it recurs",
        ),
    )
}

assert set(FAULTS) == set(FaultCode), "every fault code needs a FaultInfo"


def fault_info(code: FaultCode | str) -> FaultInfo:
    """The FaultInfo of a code; raises ValueError for an unknown code."""
    return FAULTS[FaultCode(code)]
