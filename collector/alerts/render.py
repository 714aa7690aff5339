"""The text of notifications, in Vietnamese (default) or English. Pure.

Every message names the clusters, their commune, the cause (the B2 label),
since when, and links to the dashboard page of each cluster and of the group
(``[alerts] public_url``). Plain text: the same words go by email, Telegram and
Zalo, none of which then needs markup escaping.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote

from collector.alerts.evaluate import Item, Notice, NoticeKind
from collector.alerts.rules import RuleKind
from fleet_protocol import B2Cause

#: Zalo's text limit is 2000 characters, Telegram's 4096: longer lists are cut there.
ZALO_MAX: Final = 2000
TELEGRAM_MAX: Final = 4096

_T: Final[dict[str, tuple[str, str]]] = {
    "alert": ("Cảnh báo", "Alert"),
    "urgent": ("Khẩn", "Urgent"),
    "repeat": ("Nhắc lại", "Reminder"),
    "resolved": ("Đã khắc phục", "Resolved"),
    "repaired": ("Đã sửa xong", "Repaired"),
    "overdue": ("Quá hạn sửa chữa", "Repair overdue"),
    "offline_n": ("{n} cụm loa mất kết nối", "{n} clusters offline"),
    "broken_n": ("{n} cụm loa hỏng, không hoạt động", "{n} clusters broken"),
    "commune_n": ("{b}/{t} cụm loa hỏng, không hoạt động", "{b} of {t} clusters broken"),
    "overdue_n": ("{n} phiếu sửa chữa quá hạn", "{n} repair tickets overdue"),
    "repaired_n": ("{n} cụm loa đã được sửa chữa", "{n} clusters repaired"),
    "back_n": ("{n} cụm loa hoạt động trở lại", "{n} clusters working again"),
    "commune_back": ("hết tình trạng hỏng hàng loạt", "no longer mostly broken"),
    "overdue_back": ("{n} phiếu không còn quá hạn", "{n} tickets no longer overdue"),
    "firing_list": ("Đang có sự cố ({n}):", "Still affected ({n}):"),
    "resolved_list": ("Đã khắc phục ({n}):", "Resolved ({n}):"),
    "new": ("mới", "new"),
    "since": ("từ", "since"),
    "no_update": ("không cập nhật từ", "no progress since"),
    "repaired_at": ("sửa xong lúc", "repaired at"),
    "ticket": ("Phiếu", "Ticket"),
    "contractor": ("Nhà thầu", "Contractor"),
    "more": ("... và {n} mục khác", "... and {n} more"),
    "see": ("Xem trên hệ thống giám sát:", "Open the dashboard:"),
    "footer": (
        "Tin nhắn tự động của hệ thống giám sát cụm loa.",
        "Automatic message from the loudspeaker fleet monitor.",
    ),
    "clusters_of": ("Các cụm loa hỏng", "Broken clusters"),
}


def t(key: str, lang: str, **values: object) -> str:
    vi, en = _T[key]
    return (en if lang == "en" else vi).format(**values)


@dataclass(frozen=True, slots=True)
class Message:
    subject: str
    text: str


def _when(ts: float | None, tz: dt.tzinfo) -> str:
    if ts is None:
        return "—"
    return dt.datetime.fromtimestamp(ts, tz).strftime("%H:%M %d/%m/%Y")


def _cause(item: Item, lang: str) -> str:
    if not item.cause:
        return ""
    try:
        return B2Cause(item.cause).label(lang)
    except ValueError:
        return item.cause


def url(base: str, path: str) -> str:
    return base.rstrip("/") + path


def device_url(base: str, device_id: str) -> str:
    return url(base, "/devices/" + quote(device_id, safe=""))


def commune_url(base: str, commune: str) -> str:
    return url(base, "/communes/" + quote(commune, safe=""))


def _line(item: Item, kind: RuleKind, lang: str, tz: dt.tzinfo, base: str, new: bool) -> str:
    flag = f" [{t('new', lang)}]" if new else ""
    if kind is RuleKind.COMMUNE_BROKEN:
        head = (
            f"• {item.commune_label}: {t('commune_n', lang, b=item.broken, t=item.total)}"
            f" {t('since', lang)} {_when(item.since, tz)}{flag}"
        )
        ids = ", ".join(item.clusters[:30]) + (" ..." if len(item.clusters) > 30 else "")
        return f"{head}\n  {t('clusters_of', lang)}: {ids}\n  {commune_url(base, item.commune)}"
    where = f"{item.device_id} ({item.commune_label}" + (
        f", {item.address})" if item.address else ")"
    )
    if kind is RuleKind.TICKET_OVERDUE:
        text = (
            f"• {t('ticket', lang)} #{item.ticket_id} — {where}"
            f" — {t('no_update', lang)} {_when(item.since, tz)}"
        )
    elif kind is RuleKind.CLUSTER_REPAIRED:
        text = f"• {where} — {t('repaired_at', lang)} {_when(item.since, tz)}"
    else:
        cause = _cause(item, lang)
        text = f"• {where}" + (f" — {cause}" if cause else "")
        text += f" — {t('since', lang)} {_when(item.since, tz)}"
    if item.contractor and kind is not RuleKind.TICKET_OVERDUE:
        text += f" — {t('contractor', lang)}: {item.contractor}"
    return f"{text}{flag}\n  {device_url(base, item.device_id)}"


def _headline(kind: RuleKind, notice: Notice, firing: int, resolved: int, lang: str) -> str:
    if notice.kind is NoticeKind.RESOLVED:
        if kind is RuleKind.COMMUNE_BROKEN:
            return t("commune_back", lang)
        if kind is RuleKind.TICKET_OVERDUE:
            return t("overdue_back", lang, n=resolved)
        return t("back_n", lang, n=resolved)
    return {
        RuleKind.CLUSTER_OFFLINE: lambda: t("offline_n", lang, n=firing),
        RuleKind.CLUSTER_BROKEN: lambda: t("broken_n", lang, n=firing),
        RuleKind.COMMUNE_BROKEN: lambda: t("broken_n", lang, n=firing),
        RuleKind.TICKET_OVERDUE: lambda: t("overdue_n", lang, n=firing),
        RuleKind.CLUSTER_REPAIRED: lambda: t("repaired_n", lang, n=firing),
    }[kind]()


def render(
    notice: Notice,
    kind: RuleKind,
    firing: tuple[Item, ...],
    resolved: tuple[Item, ...],
    *,
    lang: str,
    tz: dt.tzinfo,
    public_url: str,
) -> Message:
    """Subject and text of one recipient's share of ``notice``."""
    if notice.kind is NoticeKind.RESOLVED:
        tag = t("resolved", lang)
    elif notice.kind is NoticeKind.REPEAT:
        tag = t("repeat", lang)
    elif kind is RuleKind.CLUSTER_REPAIRED:
        tag = t("repaired", lang)
    elif kind is RuleKind.TICKET_OVERDUE:
        tag = t("overdue", lang)
    else:
        tag = t("urgent" if notice.critical else "alert", lang)
    items = firing or resolved
    if kind is RuleKind.COMMUNE_BROKEN and items:
        head = f"{items[0].commune_label}: " + (
            t("commune_n", lang, b=items[0].broken, t=items[0].total)
            if notice.kind is not NoticeKind.RESOLVED
            else t("commune_back", lang)
        )
    else:
        label = ""
        if kind is RuleKind.TICKET_OVERDUE and items and items[0].contractor:
            label = f"{t('contractor', lang)} {items[0].contractor}: "
        elif items and len({i.commune for i in items}) == 1:
            label = f"{items[0].commune_label}: "
        head = label + _headline(kind, notice, len(firing), len(resolved), lang)
    subject = f"[{tag}] {head}"
    lines = [subject, ""]
    if firing and notice.kind is not NoticeKind.RESOLVED:
        if resolved:
            lines.append(t("firing_list", lang, n=len(firing)))
        keys = {i.key for i in firing}
        # Flag the new ones only when the message also lists older ones.
        flag = notice.kind is NoticeKind.FIRING and 0 < len(notice.new & keys) < len(firing)
        lines += [
            _line(i, kind, lang, tz, public_url, flag and i.key in notice.new) for i in firing
        ]
    if resolved:
        if firing and notice.kind is not NoticeKind.RESOLVED:
            lines.append("")
        lines.append(t("resolved_list", lang, n=len(resolved)))
        lines += [_line(i, kind, lang, tz, public_url, False) for i in resolved]
    communes = sorted({i.commune for i in items if i.commune})
    see = commune_url(public_url, communes[0]) if len(communes) == 1 else url(public_url, "/")
    if kind is RuleKind.TICKET_OVERDUE:
        see = url(public_url, "/repairs")
    tail = ["", f"{t('see', lang)} {see}", t("footer", lang)]
    body = "\n".join(lines)
    return Message(subject=subject, text=body + "\n" + "\n".join(tail))


def shorten(text: str, limit: int, lang: str) -> str:
    """``text`` within ``limit`` characters: whole list items dropped from the end of the
    list, "... and N more" instead, the links and footer after the list kept."""
    if len(text) <= limit:
        return text
    head, sep, tail = text.rpartition("\n\n")
    if not sep or len(tail) > limit // 3:
        head, tail = text, ""
    budget = limit - len(tail) - 60
    cut = head[:budget].rsplit("\n•", 1)[0]
    left = head[len(cut) :].count("\n•") + head[len(cut) :].startswith("•")
    out = cut + "\n" + t("more", lang, n=max(left, 1))
    return (out + "\n\n" + tail if tail else out)[:limit]
