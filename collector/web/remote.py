"""The cluster page's remote-command panel (technicians and admins).

One form posting to ``POST /api/v1/devices/{id}/commands`` through the
dashboard's JSON form handler (``app.js``, with the CSRF header); the answer,
or the error saying the device is unreachable/offline, is shown in the panel
as soon as it arrives (``data-result``). The recovery actions need the
confirmation box ticked; the API refuses them otherwise.
"""

from __future__ import annotations

from typing import Final

from collector.auth import Permission
from collector.store.base import DeviceRow
from collector.web.layout import Ctx
from collector.web.markup import Html, attrs, html, join

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


def _t(ctx: Ctx, key: str) -> str:
    return LABELS[key][1 if ctx.lang == "en" else 0]


def remote_panel(ctx: Ctx, d: DeviceRow) -> Html:
    """The panel, or nothing for roles that may not send commands."""
    if not ctx.principal.may(Permission.REMOTE):
        return Html("")
    options = join(
        html('<option value="{a}">{label}</option>', a=a, label=_t(ctx, a)) for a in ACTIONS
    )
    report = d.last_report or {}
    return html(
        '<section id="remote"><h2>{title}</h2>'
        '<p class="versions">{versions_t}: <code>{agent}</code> / <code>{config}</code></p>'
        '<form class="api-form" data-api="/api/v1/devices/{device}/commands" '
        'data-result="#remote-result">'
        '<label>{action_t}<select name="action">{options}</select></label>'
        '<label class="check"><input type="checkbox" name="offline"> {queue}</label>'
        '<label class="check"><input type="checkbox" name="confirm"> {confirm}</label>'
        '<p class="form-error" role="alert" hidden></p>'
        '<button type="submit" class="primary">{send}</button></form>'
        '<h3>{result_t}</h3><pre id="remote-result" class="scroll"{live}></pre></section>',
        title=_t(ctx, "remote"),
        versions_t=_t(ctx, "versions"),
        agent=report.get("agent_version") or "—",
        config=report.get("config_version") or "—",
        device=d.device_id,
        action_t=_t(ctx, "action"),
        options=options,
        queue=_t(ctx, "queue"),
        confirm=_t(ctx, "confirm"),
        send=_t(ctx, "send"),
        result_t=_t(ctx, "result"),
        live=attrs(aria_live="polite"),
    )


__all__ = ["ACTIONS", "LABELS", "remote_panel"]
