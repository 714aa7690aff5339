"""The monthly B2 report by email: build last month's table, queue it, on schedule or on demand.

:func:`due_period` is pure: given the clock, the zone and the configured day
and hour, which month's report is due now ("2026-11" from 08:00 on 2 December).
The scheduler asks it every ``tick_s`` on the app's clock (injectable: the
fleet simulator's accelerated clock in tests), so a collector that was down on
the 2nd sends the report when it comes back. Once per period across instances
(``report_runs``); every sending, scheduled or not, lands in ``report_log``
and the audit log. Delivery goes through the same outbox as alerts.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from collector.alerts.evaluate import NoticeKind
from collector.alerts.render import url
from collector.b2.dates import end_of_day, short_date
from collector.b2.service import b2_table
from collector.b2.settings import ReportSettings
from collector.b2.table import B2Table
from collector.correlation import CorrelationConfig
from collector.exports import Format, file_name, render
from collector.store.alerts import DeliveryDraft, NotificationDraft
from collector.store.base import Repository


def due_period(now: float, tz: dt.tzinfo, *, day: int, hour: int) -> str | None:
    """The month ("YYYY-MM") whose report is due at ``now``: last month's, from ``day``
    at ``hour`` local time on; None before that moment in the month."""
    local = dt.datetime.fromtimestamp(now, tz)
    if (local.day, local.hour) < (day, hour):
        return None
    last = local.date().replace(day=1) - dt.timedelta(days=1)
    return f"{last.year:04d}-{last.month:02d}"


def period_end(period: str, tz: dt.tzinfo) -> dt.datetime:
    """End of the last day of ``period`` ("2026-11" -> 30/11/2026 24:00 local); ValueError."""
    try:
        year, month = (int(p) for p in period.split("-"))
        if not 1 <= month <= 12 or not 2000 <= year <= 2100:
            raise ValueError(period)
        first_next = dt.date(year + month // 12, month % 12 + 1, 1)
    except ValueError:
        raise ValueError(f"period {period[:20]!r}: expected YYYY-MM") from None
    return end_of_day(first_next - dt.timedelta(days=1), tz)


def period_of(as_of: dt.datetime) -> str:
    return f"{as_of.year:04d}-{as_of.month:02d}"


@dataclass(frozen=True, slots=True)
class BuiltReport:
    table: B2Table
    xlsx: bytes
    file_name: str


async def build(
    repo: Repository,
    *,
    as_of: dt.datetime,
    settings: ReportSettings,
    lang: str,
    correlation: CorrelationConfig,
) -> BuiltReport:
    """Last month's B2 (or as of any moment) with the existing B2 service and XLSX export,
    its silent clusters' causes inferred with the collector's ``[correlation]`` rules."""
    table = await b2_table(repo, as_of=as_of, settings=settings, lang=lang, correlation=correlation)
    return BuiltReport(table, render(table, Format.XLSX).body, file_name(table, Format.XLSX))


def message(report: BuiltReport, *, lang: str, public_url: str) -> tuple[str, str]:
    """Subject and body of the report email (the summary sentence is the body's heart)."""
    day = report.table.day
    unit = report.table.unit_name
    link = url(public_url, f"/b2?as_of={day.isoformat()}")
    if lang == "en":
        subject = f"B2 report as of {short_date(day)}" + (f" — {unit}" if unit else "")
        body = (
            f"{report.table.summary}\n\n"
            f"The B2 table is attached ({report.file_name}).\n"
            f"On the dashboard: {link}\n\n"
            "Automatic message from the loudspeaker fleet monitor."
        )
    else:
        subject = f"Báo cáo biểu B2 tính đến ngày {short_date(day)}" + (
            f" — {unit}" if unit else ""
        )
        body = (
            f"{report.table.summary}\n\n"
            f"Biểu B2 đính kèm ({report.file_name}).\n"
            f"Xem trên hệ thống giám sát: {link}\n\n"
            "Tin nhắn tự động của hệ thống giám sát cụm loa."
        )
    return subject, body


def draft(
    report: BuiltReport,
    *,
    key: str,
    addresses: Sequence[tuple[str, str]],
    lang: str,
    public_url: str,
    now: float,
) -> NotificationDraft:
    """The report as a notification with one email delivery per (recipient key, address)."""
    subject, body = message(report, lang=lang, public_url=public_url)
    deliveries = tuple(
        DeliveryDraft(
            recipient=recipient,
            channel="email",
            address=address,
            idem_key=hashlib.sha256(f"{key}|{recipient}|email".encode()).hexdigest()[:32],
            lang=lang,
            subject=subject,
            body=body,
            payload={},
            not_before=now,
            attachment=report.xlsx,
            attachment_name=report.file_name,
        )
        for recipient, address in dict.fromkeys(addresses)
    )
    return NotificationDraft(
        key=key,
        rule="report.b2",
        group=report.table.day.isoformat(),
        kind=NoticeKind.REPORT.value,
        critical=True,
        created_at=now,
        data={"as_of": report.table.day.isoformat(), "summary": report.table.summary},
        deliveries=deliveries,
    )
