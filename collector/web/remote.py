"""The cluster page's remote-command panel (technicians and admins).

The template ``_remote.html`` (included by ``device.html``) draws one form
posting to ``POST /api/v1/devices/{id}/commands`` through the
dashboard's JSON form handler (``app.js``, with the CSRF header); the answer,
or the error saying the device is unreachable/offline, is shown in the panel
as soon as it arrives (``data-result``). The recovery actions need the
confirmation box ticked; the API refuses them otherwise.
"""

from __future__ import annotations

from typing import Any, Final

from collector.auth import Permission
from collector.store.base import DeviceRow
from collector.web.layout import Ctx

#: key -> (Vietnamese, English).
LABELS: Final[dict[str, tuple[str, str]]] = {
    "remote": ("Lệnh từ xa", "Remote command"),
    "action": ("Lệnh", "Command"),
    "status": ("Trạng thái thiết bị", "Device status"),
    "diag": ("Chẩn đoán (đọc mới)", "Diagnose (fresh readings)"),
    "outbox": ("Hàng đợi gửi", "Outbox"),
    "events": ("Sự kiện gần đây", "Recent events"),
    "soft_reset": ("Khởi động lại modem", "Modem soft reset"),
    "power_cycle": ("Ngắt nguồn modem", "Modem power cycle"),
    "queue": (
        "Nếu mất kết nối: xếp hàng chờ thiết bị kết nối lại",
        "If offline: queue until the device reconnects",
    ),
    "confirm": (
        "Tôi xác nhận lệnh thay đổi thiết bị (khởi động lại, ngắt nguồn)",
        "I confirm a command that changes the device (reset, power cycle)",
    ),
    "send": ("Gửi lệnh", "Send"),
    "result": ("Kết quả", "Result"),
    "versions": ("Phiên bản phần mềm / cấu hình", "Agent / config version"),
}
ACTIONS: Final = ("status", "diag", "outbox", "events", "soft_reset", "power_cycle")


def remote_panel(ctx: Ctx, d: DeviceRow) -> dict[str, Any] | None:
    """The panel's template context, or None for roles that may not send commands."""
    if not ctx.principal.may(Permission.REMOTE):
        return None
    report = d.last_report or {}
    lang = 1 if ctx.lang == "en" else 0
    return {
        "label": {key: pair[lang] for key, pair in LABELS.items()},
        "actions": ACTIONS,
        "agent_version": report.get("agent_version") or "—",
        "config_version": report.get("config_version") or "—",
    }


__all__ = ["ACTIONS", "LABELS", "remote_panel"]
