"""Words for a person: labels in Vietnamese (default) or English, aligned tables, colour.

Colour only when the output is a terminal and ``NO_COLOR`` is unset (and
``TERM`` is not ``dumb``). Widths count what a terminal shows, so Vietnamese
letters with combining marks still line up. ``--json`` output never goes
through here.
"""

from __future__ import annotations

import datetime as dt
import os
import unicodedata
from collections.abc import Sequence
from typing import ClassVar, TextIO

LABELS: dict[str, tuple[str, str]] = {
    "device": ("Thiết bị", "Device"),
    "commune": ("Xã", "Commune"),
    "uptime": ("Agent chạy được", "Agent uptime"),
    "broker": ("Máy chủ MQTT", "Broker"),
    "connected_since": ("đã kết nối từ", "connected since"),
    "disconnected": ("mất kết nối", "disconnected"),
    "last_error": ("lỗi gần nhất", "last error"),
    "qos0_subscription": (
        "nhận lệnh ở QoS 0 (nút máy chủ giữ phiên của thiết bị đang hỏng)",
        "commands at QoS 0 (the broker node holding this device's session is down)",
    ),
    "modem": ("Modem", "Modem"),
    "sim": ("SIM", "SIM"),
    "operator": ("Nhà mạng", "Operator"),
    "registration": ("Đăng ký mạng", "Registration"),
    "signal": ("Sóng", "Signal"),
    "amp": ("Amply", "Amplifier"),
    "stream": ("Luồng phát", "Stream"),
    "system": ("Bộ điều khiển", "Controller"),
    "network": ("Mạng", "Network"),
    "faults": ("Lỗi đang có", "Active faults"),
    "no_faults": ("Không có lỗi", "No faults"),
    "outbox": ("Hàng đợi gửi", "Outbox"),
    "recovery": ("Khắc phục gần đây", "Recent recovery"),
    "none": ("không có", "none"),
    "messages": ("tin", "messages"),
    "oldest": ("cũ nhất", "oldest"),
    "oldest_h": ("Cũ nhất", "Oldest"),
    "ago": ("trước", "ago"),
    "not_configured": ("không cấu hình", "not configured"),
    "not_responding": ("không phản hồi", "not responding"),
    "responding": ("đang phản hồi", "responding"),
    "receiving": ("đang nhận", "receiving"),
    "not_receiving": ("không nhận được", "not received"),
    "on": ("bật", "on"),
    "off": ("tắt", "off"),
    "source": ("Nguồn dữ liệu", "Source"),
    "from_agent": ("agent đang chạy", "running agent"),
    "direct": ("đọc trực tiếp phần cứng", "hardware, read directly"),
    "from_file": ("tệp hàng đợi (agent không chạy)", "outbox file (agent not running)"),
    "remedy": ("Cách xử lý", "Remedy"),
    "ok": ("tốt", "ok"),
    "kind": ("Loại", "Kind"),
    "count": ("Số tin", "Count"),
    "bytes": ("Byte", "Bytes"),
    "depth": ("Số tin chờ", "Pending"),
    "time": ("Thời gian", "Time"),
    "event": ("Sự kiện", "Event"),
    "detail": ("Chi tiết", "Detail"),
    "address": ("Địa chỉ", "Address"),
    "value": ("Giá trị", "Value"),
    "check": ("Kiểm tra", "Check"),
    "result": ("Kết quả", "Result"),
    "temperature": ("nhiệt độ", "temperature"),
    "mains": ("điện lưới", "mains"),
    "battery": ("ắc quy", "battery"),
    "volume": ("âm lượng", "volume"),
    "flags": ("cờ", "flags"),
    "cpu": ("CPU", "CPU"),
    "memory": ("bộ nhớ", "memory"),
    "disk": ("thẻ nhớ", "disk"),
    "soc_temp": ("nhiệt độ SoC", "SoC temperature"),
    "boot_uptime": ("máy chạy được", "up"),
    "reachable": ("kết nối được", "reachable"),
    "unreachable": ("không kết nối được", "unreachable"),
    # SIM states, registration states and severities, as the wire protocol names them.
    "sim.ready": ("sẵn sàng", "ready"),
    "sim.absent": ("không có SIM", "absent"),
    "sim.failure": ("hỏng", "failure"),
    "sim.locked": ("bị khoá PIN/PUK", "locked"),
    "sim.unknown": ("không rõ", "unknown"),
    "reg.home": ("đã đăng ký (mạng nhà)", "home"),
    "reg.roaming": ("đã đăng ký (chuyển vùng)", "roaming"),
    "reg.searching": ("đang tìm mạng", "searching"),
    "reg.denied": ("bị từ chối", "denied"),
    "reg.not_registered": ("chưa đăng ký", "not registered"),
    "reg.unknown": ("không rõ", "unknown"),
    "severity.critical": ("nghiêm trọng", "critical"),
    "severity.warning": ("cảnh báo", "warning"),
}


def label(key: str, lang: str) -> str:
    vi, en = LABELS[key]
    return en if lang == "en" else vi


def use_colour(stream: TextIO) -> bool:
    """Colour only on a terminal, and never when NO_COLOR is set (no-color.org)."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class Painter:
    """ANSI styles, or plain text when ``colour`` is False."""

    _CODES: ClassVar[dict[str, str]] = {
        "red": "31",
        "green": "32",
        "yellow": "33",
        "bold": "1",
        "dim": "2",
    }

    def __init__(self, colour: bool) -> None:
        self.colour = colour

    def __call__(self, text: str, style: str) -> str:
        if not self.colour or not text:
            return text
        return f"\x1b[{self._CODES[style]}m{text}\x1b[0m"

    def severity(self, text: str, severity: str | None) -> str:
        style = {"critical": "red", "warning": "yellow", "ok": "green"}.get(severity or "", "")
        return self(text, style) if style else text


def width(text: str) -> int:
    """Columns a terminal uses for ``text`` (ANSI codes and combining marks take none)."""
    n = 0
    skipping = False
    for ch in unicodedata.normalize("NFC", text):
        if skipping:
            skipping = ch != "m"
            continue
        if ch == "\x1b":
            skipping = True
            continue
        if unicodedata.combining(ch):
            continue
        n += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return n


def table(rows: Sequence[Sequence[str]], *, indent: int = 0, gap: int = 2) -> str:
    """Rows aligned in columns; the last column is left ragged."""
    if not rows:
        return ""
    cols = max(len(r) for r in rows)
    widths = [max((width(r[i]) for r in rows if i < len(r)), default=0) for i in range(cols)]
    lines = []
    for r in rows:
        cells = []
        for i, cell in enumerate(r):
            pad = "" if i == len(r) - 1 else " " * (widths[i] - width(cell) + gap)
            cells.append(cell + pad)
        lines.append(" " * indent + "".join(cells).rstrip())
    return "\n".join(lines)


def duration(seconds: float | None, lang: str) -> str:
    if seconds is None:
        return "-"
    s = max(0.0, seconds)
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} {'phút' if lang != 'en' else 'min'}"
    if s < 172800:
        return f"{s / 3600:.1f} {'giờ' if lang != 'en' else 'h'}"
    return f"{s / 86400:.1f} {'ngày' if lang != 'en' else 'days'}"


def when(ts: float | None) -> str:
    """A local date and time, as a technician's watch shows it."""
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def ago(ts: float | None, now: float, lang: str) -> str:
    if ts is None:
        return "-"
    return f"{when(ts)} ({duration(now - ts, lang)} {label('ago', lang)})"


__all__ = ["LABELS", "Painter", "ago", "duration", "label", "table", "use_colour", "when", "width"]
