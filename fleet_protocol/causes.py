"""B2 cause categories: why a cluster counts as broken in the district's report."""

from __future__ import annotations

import enum


class B2Cause(enum.StrEnum):
    """Cause keys of the B2 table, in the order the table prints them."""

    NO_STATION_SIGNAL = "no_station_signal"
    UNSTABLE_NETWORK = "unstable_network"
    SIM_FAILURE = "sim_failure"
    AMPLIFIER_SPEAKER = "amplifier_speaker"
    POWER = "power"
    RECEIVER_DEVICE = "receiver_device"
    UNKNOWN = "unknown"

    def label(self, lang: str = "vi") -> str:
        """The cause as printed in the report, Vietnamese by default."""
        return CAUSE_LABELS[self][1 if lang == "en" else 0]


#: (Vietnamese label, English label) per cause.
CAUSE_LABELS: dict[B2Cause, tuple[str, str]] = {
    B2Cause.NO_STATION_SIGNAL: ("Không tiếp được sóng của đài", "No station signal"),
    B2Cause.UNSTABLE_NETWORK: ("Mạng chập chờn", "Unstable network"),
    B2Cause.SIM_FAILURE: ("Cháy SIM, lỗi SIM", "Burnt or failed SIM"),
    B2Cause.AMPLIFIER_SPEAKER: ("Hỏng amply, loa", "Amplifier or speaker fault"),
    B2Cause.POWER: ("Mất nguồn điện", "Power failure"),
    B2Cause.RECEIVER_DEVICE: ("Hỏng thiết bị thu", "Receiver device fault"),
    B2Cause.UNKNOWN: ("Không rõ nguyên nhân", "Unknown cause"),
}
