"""Labels of the dashboard in Vietnamese (default) and English, and local formatting.

The language comes from ``?lang=vi|en`` (which also sets the ``loa_lang``
cookie), then the cookie, then Vietnamese. Cause labels come from
``fleet_protocol`` and B2 labels from ``collector.b2.table`` so every view of
the fleet uses the same words.
"""

from __future__ import annotations

import datetime as dt
from typing import Final

from aiohttp import web

LANGS: Final = ("vi", "en")
LANG_COOKIE: Final = "loa_lang"

#: key -> (Vietnamese, English).
MESSAGES: Final[dict[str, tuple[str, str]]] = {
    "app_name": ("Giám sát cụm loa", "Loudspeaker fleet"),
    "overview": ("Tổng quan", "Overview"),
    "b2": ("Báo cáo B2", "B2 report"),
    "repairs": ("Sửa chữa", "Repairs"),
    "users": ("Người dùng", "Users"),
    "alerts": ("Cảnh báo", "Alerts"),
    "my_alerts": ("Nhận cảnh báo", "My alerts"),
    "logout": ("Đăng xuất", "Log out"),
    "login": ("Đăng nhập", "Log in"),
    "login_title": ("Đăng nhập hệ thống giám sát", "Sign in to the fleet monitor"),
    "username": ("Tên đăng nhập", "User name"),
    "password": ("Mật khẩu", "Password"),
    "login_failed": ("Sai tên đăng nhập hoặc mật khẩu", "Wrong user name or password"),
    "total_clusters": ("Tổng số cụm loa", "Total clusters"),
    "working": ("Hoạt động tốt", "Working"),
    "broken": ("Hỏng, không hoạt động", "Broken"),
    "in_repair": ("Đang sửa chữa", "Under repair"),
    "not_repaired": ("Chưa sửa chữa", "Not repaired"),
    "offline_now": ("Mất kết nối", "Offline now"),
    "never_reported": ("Chưa từng báo cáo", "Never reported"),
    "by_cause": ("Cụm loa hỏng theo nguyên nhân", "Broken clusters by cause"),
    "per_commune": ("Theo xã, thị trấn", "Per commune"),
    "commune": ("Xã, thị trấn", "Commune"),
    "working_ratio": ("Tỷ lệ hoạt động", "Working ratio"),
    "trend": ("Diễn biến 12 tháng", "Last 12 months"),
    "trend_note": (
        "Số cụm loa hoạt động tốt và hỏng tính đến cuối mỗi tháng",
        "Working and broken clusters at the end of each month",
    ),
    "worst": ("Xã có tỷ lệ hỏng cao nhất", "Worst communes"),
    "overdue": ("Sửa chữa quá hạn", "Overdue repairs"),
    "none": ("Không có", "None"),
    "trend_no_data": ("Không có dữ liệu", "No data"),
    "evaluation": ("Đánh giá, xếp loại tháng này", "This month's evaluation"),
    "cluster": ("Cụm loa", "Cluster"),
    "clusters": ("Các cụm loa", "Clusters"),
    "status": ("Trạng thái", "Status"),
    "cause": ("Nguyên nhân", "Cause"),
    "broken_for": ("Thời gian hỏng", "Broken for"),
    "repair_state": ("Sửa chữa", "Repair"),
    "signal": ("Sóng", "Signal"),
    "address": ("Địa chỉ", "Address"),
    "map": ("Vị trí các cụm loa", "Cluster positions"),
    "no_coordinates": (
        "Danh mục chưa có toạ độ của các cụm loa này.",
        "The inventory has no coordinates for these clusters.",
    ),
    "online": ("Trực tuyến", "Online"),
    "offline": ("Mất kết nối", "Offline"),
    "last_seen": ("Liên lạc lần cuối", "Last heard"),
    "active_faults": ("Lỗi đang có", "Active faults"),
    "no_faults": ("Không có lỗi.", "No active faults."),
    "evidence": ("Căn cứ", "Evidence"),
    "since": ("Từ lúc", "Since"),
    "severity": ("Mức độ", "Severity"),
    "critical": ("Nghiêm trọng", "Critical"),
    "warning": ("Cảnh báo", "Warning"),
    "charts": ("Biểu đồ", "Charts"),
    "range_24h": ("24 giờ", "24 h"),
    "range_7d": ("7 ngày", "7 days"),
    "range_30d": ("30 ngày", "30 days"),
    "signal_chart": ("Cường độ sóng (dBm / dB)", "Signal (dBm / dB)"),
    "temp_chart": ("Nhiệt độ amply (°C)", "Amplifier temperature (°C)"),
    "online_chart": ("Trực tuyến / mất kết nối", "Online / offline"),
    "no_data": ("Chưa có số liệu trong khoảng này.", "No data in this range."),
    "fault_timeline": ("Lịch sử lỗi", "Fault timeline"),
    "cleared": ("Hết lỗi lúc", "Cleared"),
    "still_active": ("còn lỗi", "still active"),
    "repair_history": ("Lịch sử sửa chữa", "Repair history"),
    "status_changes": ("Lịch sử trạng thái", "Status history"),
    "via": ("Do", "Because of"),
    "via_state": ("báo cáo của thiết bị", "the device's report"),
    "via_online": ("thiết bị kết nối lại", "the device connected"),
    "via_offline": (
        "thiết bị báo ngắt kết nối (tắt máy hoặc di chúc MQTT)",
        "the device went offline (orderly stop or MQTT last will)",
    ),
    "via_silent": (
        "im lặng quá thời gian chờ, không có di chúc (mất điện, mất mạng hoặc máy chủ MQTT"
        " ngừng đột ngột)",
        "silent past the grace period, no last will (power or link lost, or the broker node died)",
    ),
    "actions": ("Thao tác", "Actions"),
    "open_repair": ("Mở phiếu sửa chữa", "Open a repair"),
    "start_repair": ("Bắt đầu sửa chữa", "Start the repair"),
    "add_note": ("Thêm ghi chú", "Add a note"),
    "cancel_repair": ("Huỷ phiếu", "Cancel the repair"),
    "contractor": ("Đơn vị sửa chữa", "Contractor"),
    "technician": ("Kỹ thuật viên", "Technician"),
    "note": ("Ghi chú", "Note"),
    "opened": ("Mở lúc", "Opened"),
    "opened_by": ("Người mở", "Opened by"),
    "started": ("Bắt đầu", "Started"),
    "age": ("Thời gian", "Age"),
    "ticket": ("Phiếu", "Ticket"),
    "state_open": ("Chưa sửa", "Open"),
    "state_in_repair": ("Đang sửa chữa", "In repair"),
    "state_resolved": ("Đã sửa xong", "Resolved"),
    "state_cancelled": ("Đã huỷ", "Cancelled"),
    "no_ticket": ("Chưa có phiếu", "No ticket"),
    "open_tickets": ("Phiếu sửa chữa đang mở", "Open repair tickets"),
    "filter": ("Lọc", "Filter"),
    "all": ("Tất cả", "All"),
    "min_age_days": ("Mở ít nhất (ngày)", "Open at least (days)"),
    "is_overdue": ("Quá hạn", "Overdue"),
    "as_of_date": ("Tính đến ngày", "As of"),
    "scope": ("Phạm vi", "Scope"),
    "scope_commune": ("Theo xã", "By commune"),
    "scope_district": ("Theo huyện", "By district"),
    "scope_province": ("Theo tỉnh", "By province"),
    "show": ("Xem", "Show"),
    "summary_sentence": ("Câu tóm tắt", "Summary"),
    "copy": ("Sao chép", "Copy"),
    "copied": ("Đã sao chép", "Copied"),
    "download": ("Tải về", "Download"),
    "users_title": ("Người dùng và phân quyền", "Users and roles"),
    "role": ("Vai trò", "Role"),
    "communes": ("Xã được giao", "Communes"),
    "all_communes": ("Toàn huyện", "All"),
    "disabled": ("Khoá", "Disabled"),
    "create_user": ("Tạo người dùng", "Create a user"),
    "save": ("Lưu", "Save"),
    "create": ("Tạo", "Create"),
    "role_admin": ("Quản trị", "Administrator"),
    "role_district_viewer": ("Cán bộ huyện (xem)", "District viewer"),
    "role_commune_officer": ("Cán bộ xã", "Commune officer"),
    "role_technician": ("Kỹ thuật viên", "Technician"),
    "communes_hint": (
        "Giữ Ctrl để chọn nhiều xã. Cán bộ xã phải được giao ít nhất một xã.",
        "Hold Ctrl to pick several. A commune officer needs at least one.",
    ),
    "error": ("Lỗi", "Error"),
    "not_found": ("Không tìm thấy", "Not found"),
    "forbidden": ("Không có quyền truy cập", "Not allowed"),
    "live": ("Tự động cập nhật", "Live"),
    "updated": ("Đã cập nhật", "Updated"),
    "live_lost": ("Mất kết nối tới máy chủ", "Lost contact with the server"),
    "grade_excellent": ("Rất tốt", "Excellent"),
    "grade_good": ("Tốt", "Good"),
    "grade_fair": ("Trung bình", "Fair"),
    "grade_poor": ("Yếu", "Poor"),
    "grade_none": ("Không có sóng", "No signal"),
    "unknown": ("Chưa rõ", "Unknown"),
    "device_id": ("Mã cụm loa", "Cluster id"),
    "temperature": ("Nhiệt độ", "Temperature"),
    "amplifier": ("Amply", "Amplifier"),
    "modem": ("Modem 4G", "4G modem"),
    "stream": ("Luồng phát thanh", "Broadcast stream"),
    "receiving": ("Đang nhận", "Receiving"),
    "not_receiving": ("Không nhận được", "Not received"),
    "operator": ("Nhà mạng", "Operator"),
    "back_to_commune": ("Về trang xã", "Back to the commune"),
    "count": ("Số lượng", "Count"),
    "done": ("Đã lưu", "Saved"),
    "month": ("Tháng", "Month"),
    "phone_menu": ("Trình đơn", "Menu"),
    "action_open": ("mở phiếu", "opened"),
    "action_start": ("bắt đầu sửa", "started"),
    "action_comment": ("ghi chú", "note"),
    "action_cancel": ("huỷ phiếu", "cancelled"),
    "action_cancelled": ("huỷ phiếu", "cancelled"),
    "action_resolve": ("đã sửa xong", "resolved"),
    "action_resolved": ("đã sửa xong", "resolved"),
    "action_finding": ("ghi nhận nguyên nhân tại hiện trường", "cause found on site"),
    "cause_evidence_t": ("Nguyên nhân và căn cứ", "Cause and evidence"),
    "cause_source": ("Nguồn", "Source"),
    "cause_rule": ("Quy tắc suy luận", "Inference rule"),
    "cause_evidence": ("Căn cứ", "Evidence"),
    "cause_conflict": (
        "Thiết bị báo khác với kết quả kiểm tra (chưa áp dụng)",
        "The device reports otherwise than the finding (not applied)",
    ),
    "findings_t": ("Kết quả kiểm tra tại hiện trường", "Findings on site"),
    "record_finding": ("Ghi nhận nguyên nhân tại hiện trường", "Record the cause found on site"),
    "cause_found": ("Nguyên nhân tìm thấy", "Cause found"),
    "finding_text": ("Mô tả kết quả kiểm tra", "What was found"),
    "no_finding": ("— chưa kiểm tra —", "— not inspected —"),
}


def pick_lang(request: web.Request) -> str:
    """The request's language: ``?lang=``, then the cookie, then Vietnamese."""
    wanted = request.query.get("lang") or request.cookies.get(LANG_COOKIE) or "vi"
    return wanted if wanted in LANGS else "vi"


class Tr:
    """Labels in one language: ``tr("overview")``; unknown keys fail loudly in tests."""

    def __init__(self, lang: str) -> None:
        self.lang = lang if lang in LANGS else "vi"

    def __call__(self, key: str) -> str:
        return MESSAGES[key][1 if self.lang == "en" else 0]

    def datetime(self, ts: float | None, tz: dt.tzinfo) -> str:
        """``31/07/2023 14:05`` in ``tz``; an em dash for None."""
        if ts is None:
            return "—"
        return dt.datetime.fromtimestamp(ts, tz).strftime("%d/%m/%Y %H:%M")

    def duration(self, seconds: float | None) -> str:
        """``3 ngày 4 giờ`` / ``3 d 4 h``: two largest units, minutes below an hour."""
        if seconds is None:
            return "—"
        s = max(0, int(seconds))
        days, rest = divmod(s, 86400)
        hours, rest = divmod(rest, 3600)
        minutes = rest // 60
        vi = self.lang != "en"
        d, h, m = ("ngày", "giờ", "phút") if vi else ("d", "h", "min")
        if days:
            return f"{days} {d} {hours} {h}" if hours else f"{days} {d}"
        if hours:
            return f"{hours} {h} {minutes} {m}" if minutes else f"{hours} {h}"
        return f"{minutes} {m}"

    def percent(self, part: int, whole: int) -> str:
        """``92,5%`` (Vietnamese decimal comma) / ``92.5%``; an em dash for 0/0."""
        if whole == 0:
            return "—"
        value = f"{100.0 * part / whole:.1f}"
        return (value if self.lang == "en" else value.replace(".", ",")) + "%"
