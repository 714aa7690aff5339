"""The shell around the pure alert code: read the store, evaluate, queue, deliver, schedule.

``AlertService`` is built by :func:`alerts_ctx` in the app's ``cleanup_ctx``
(after the database) and kept under ``ALERTS``; with ``[alerts] enabled`` it
runs three named tasks: ``alerts-evaluate`` (every ``evaluate_interval_s``),
``alerts-deliver`` (the outbox worker) and ``alerts-report`` (the monthly
report's scheduler). Every time comes from one injectable clock
(``app[CLOCK]``, default ``time.time``), so tests drive rules, quiet hours and
the schedule on a test or fleet-simulator clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import aiohttp
from aiohttp import web

from collector.alerts import evaluate as ev
from collector.alerts import report as monthly
from collector.alerts.channels import (
    EmailSender,
    Sender,
    TelegramSender,
    WebhookSender,
    ZaloSender,
)
from collector.alerts.recipients import Channel, Contact, QuietHours, address, channels_of
from collector.alerts.render import commune_url, render, url
from collector.alerts.rules import DEFAULT_RULES, Rule, RuleError, rule_from_dict
from collector.alerts.worker import DeliveryStats, DeliveryWorker
from collector.b2.dates import parse_as_of, previous_month_end
from collector.config import CollectorConfig
from collector.keys import CONFIG, METRIC_SOURCES, REPO
from collector.model import Status
from collector.store.alerts import (
    ContactRow,
    DeliveryDraft,
    GroupChanges,
    GroupRows,
    NotificationDraft,
    SQLiteAlertStore,
)
from collector.store.base import NotFound, Role, StoreError, TicketState
from collector.store.sqlite import SQLiteRepository

log = logging.getLogger("loa.collector.alerts")

Clock = Callable[[], float]


def _label(d: Any, code: str) -> str:
    from collector.b2.table import commune_label

    inv = d.inventory
    return commune_label(inv.commune_kind, inv.commune_name, "vi") if inv else code


def contact_of(row: ContactRow) -> Contact:
    """The recipient a stored contact row describes (bad stored quiet hours are ignored)."""
    channels: dict[Channel, str] = {}
    for ch, value in (
        (Channel.EMAIL, row.email),
        (Channel.TELEGRAM, row.telegram),
        (Channel.ZALO, row.zalo),
        (Channel.WEBHOOK, row.webhook_url),
    ):
        if value:
            channels[ch] = value
    try:
        quiet = QuietHours.parse(row.quiet_start, row.quiet_end)
    except ValueError:
        quiet = None
    scope: frozenset[str] | None = None
    if row.role is Role.COMMUNE_OFFICER or (row.role is Role.TECHNICIAN and row.user_communes):
        scope = row.user_communes  # as collector.auth.Principal.communes
    return Contact(
        key=row.key,
        name=row.name,
        role=row.role,
        scope=scope,
        communes=row.communes,
        channels=channels,
        webhook_secret=row.webhook_secret,
        lang=row.lang,
        quiet=quiet,
        disabled=row.disabled,
    )


def delivery_key(notice_key: str, recipient: str, channel: str) -> str:
    """The idempotency key of one delivery: stable, so a re-sent delivery repeats it."""
    return hashlib.sha256(f"{notice_key}|{recipient}|{channel}".encode()).hexdigest()[:32]


def _state(
    rule: str, group: str, row: tuple[dict[str, Any], float | None, float | None, int]
) -> ev.GroupState:
    members, pending, last, seq = row
    return ev.GroupState(
        rule=rule,
        group=group,
        members={k: ev.Item.from_json(v) for k, v in members.items()},
        pending_since=pending,
        last_sent_at=last,
        seq=seq,
    )


class AlertService:
    """Alerts of one collector process. See the module docstring."""

    def __init__(
        self,
        repo: SQLiteRepository,
        cfg: CollectorConfig,
        *,
        clock: Clock = time.time,
        worker_id: str | None = None,
    ) -> None:
        self.repo = repo
        self.cfg = cfg
        self.settings = cfg.alerts
        self.store = SQLiteAlertStore(repo)
        self.clock = clock
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.stats = DeliveryStats()
        self.tz = cfg.report.tz()
        self.worker: DeliveryWorker | None = None
        self._bad_rules: set[str] = set()

    # -- what the rules see ------------------------------------------------------------------

    async def rules(self) -> list[Rule]:
        """The stored rules that are valid (an invalid one is logged once and skipped)."""
        out: list[Rule] = []
        for data in await self.store.rules():
            try:
                out.append(rule_from_dict(data))
            except RuleError as exc:
                name = str(data.get("name", "?"))
                if name not in self._bad_rules:
                    log.error("alert rule %r skipped: %s", name, exc)
                    self._bad_rules.add(name)
        return out

    async def fleet_view(self, now: float) -> ev.FleetView:
        repo = self.repo
        devices = await repo.list_devices(limit=10**7)
        active = await repo.list_tickets(
            states=frozenset({TicketState.OPEN, TicketState.IN_REPAIR}), limit=100000
        )
        resolved = [
            t
            for t in await repo.list_tickets(states=frozenset({TicketState.RESOLVED}), limit=2000)
            if t.closed_at is not None and now - t.closed_at <= 31 * 86400
        ]
        tickets = {t.device_id: t for t in active}
        clusters = []
        for d in devices:
            t = tickets.get(d.device_id)
            inv = d.inventory
            broken = d.status is Status.BROKEN
            clusters.append(
                ev.ClusterView(
                    device_id=d.device_id,
                    commune=d.commune_code,
                    commune_label=_label(d, d.commune_code),
                    address=inv.address if inv else "",
                    broken=broken,
                    online=d.online,
                    cause=d.cause if broken else None,
                    broken_since=d.since if broken else None,
                    offline_since=None if d.online else (d.last_seen or d.since),
                    never_reported=d.never_reported,
                    contractor=(t.contractor if t and t.contractor else "")
                    or (inv.contractor if inv else ""),
                    ticket_id=t.id if t else None,
                )
            )
        return ev.FleetView(
            clusters=tuple(clusters), active_tickets=tuple(active), resolved_tickets=tuple(resolved)
        )

    async def contacts(self) -> list[Contact]:
        return [contact_of(r) for r in await self.store.contacts()]

    def enabled_channels(self) -> set[Channel]:
        s = self.settings
        out = {Channel.WEBHOOK}
        if s.email.host:
            out.add(Channel.EMAIL)
        if s.telegram.token or s.telegram.token_file:
            out.add(Channel.TELEGRAM)
        if s.zalo.access_token or s.zalo.access_token_file:
            out.add(Channel.ZALO)
        return out

    # -- evaluation --------------------------------------------------------------------------

    def drafts(
        self, notices: Sequence[ev.Notice], rules: Sequence[Rule], contacts: Sequence[Contact]
    ) -> list[NotificationDraft]:
        """Each notice with one rendered delivery per (recipient, channel)."""
        by_name = {r.name: r for r in rules}
        channels = self.enabled_channels()
        out: list[NotificationDraft] = []
        for n in notices:
            rule = by_name[n.rule]
            deliveries: list[DeliveryDraft] = []
            for a in address(n, rule, contacts, tz=self.tz):
                lang = a.contact.lang or self.settings.lang
                msg = render(
                    n,
                    rule.kind,
                    a.firing,
                    a.resolved,
                    lang=lang,
                    tz=self.tz,
                    public_url=self.settings.public_url,
                )
                communes = sorted({i.commune for i in (*a.firing, *a.resolved)})
                dashboard = (
                    commune_url(self.settings.public_url, communes[0])
                    if len(communes) == 1
                    else url(self.settings.public_url, "/")
                )
                for ch, addr in channels_of(a.contact, channels):
                    key = delivery_key(n.key, a.contact.key, ch.value)
                    deliveries.append(
                        DeliveryDraft(
                            recipient=a.contact.key,
                            channel=ch.value,
                            address=addr,
                            idem_key=key,
                            lang=lang,
                            subject=msg.subject,
                            body=msg.text,
                            payload={
                                "id": key,
                                "notification": n.key,
                                "rule": n.rule,
                                "rule_kind": rule.kind.value,
                                "kind": n.kind.value,
                                "critical": n.critical,
                                "at": n.at,
                                "lang": lang,
                                "subject": msg.subject,
                                "text": msg.text,
                                "firing": [i.to_json() for i in a.firing],
                                "resolved": [i.to_json() for i in a.resolved],
                                "dashboard": dashboard,
                            },
                            not_before=a.not_before,
                        )
                    )
            out.append(
                NotificationDraft(
                    key=n.key,
                    rule=n.rule,
                    group=n.group,
                    kind=n.kind.value,
                    critical=n.critical,
                    created_at=n.at,
                    data={
                        "firing": [i.to_json() for i in n.firing],
                        "resolved": [i.to_json() for i in n.resolved],
                        "new": sorted(n.new),
                    },
                    deliveries=tuple(deliveries),
                )
            )
        return out

    async def evaluate_once(self, now: float | None = None) -> list[NotificationDraft]:
        """Evaluate every rule now, store group changes and queue the notifications."""
        now = self.clock() if now is None else now
        rules = await self.rules()
        fleet = await self.fleet_view(now)
        contacts = await self.contacts()
        alerts = ev.inhibit(ev.firing(rules, fleet, now), rules, fleet, now)

        def step(rows: GroupRows) -> tuple[GroupChanges, list[NotificationDraft]]:
            states = {k: _state(k[0], k[1], v) for k, v in rows.items()}
            changes, notices = ev.plan(rules, alerts, states, now)
            stored: GroupChanges = {
                k: None
                if s is None
                else (
                    {m: i.to_json() for m, i in s.members.items()},
                    s.pending_since,
                    s.last_sent_at,
                    s.seq,
                )
                for k, s in changes.items()
            }
            return stored, self.drafts(notices, rules, contacts)

        queued = await self.store.evaluate(step)
        if queued:
            n = sum(len(q.deliveries) for q in queued)
            log.info("alerts: %d notification(s), %d deliveries queued", len(queued), n)
            if self.worker is not None:
                self.worker.wake.set()
        return queued

    # -- the monthly report ------------------------------------------------------------------

    async def report_addresses(self, extra: Sequence[str] = ()) -> list[tuple[str, str]]:
        """(recipient key, address): the configured addresses and users' email, and ``extra``."""
        mr = self.settings.monthly_report
        out = [(f"email:{a}", a) for a in (*mr.recipients, *extra)]
        for name in mr.users:
            try:
                row = await self.store.contact(f"user:{name}")
            except NotFound:
                log.warning("monthly report: user %r does not exist", name)
                continue
            if row.email and not row.disabled:
                out.append((row.key, row.email))
        return out

    async def send_report(
        self,
        *,
        as_of: dt.datetime | None = None,
        to: Sequence[str] = (),
        trigger: str,
        actor: str,
        scheduled_period: str | None = None,
    ) -> NotificationDraft | None:
        """Build the B2 as of ``as_of`` (default: end of last month) and queue it by email.

        ``to`` replaces the configured recipients when given. Returns the queued
        notification, or None when a scheduled period was sent already.
        """
        now = self.clock()
        if as_of is None:
            as_of = previous_month_end(dt.datetime.fromtimestamp(now, self.tz))
        lang = self.settings.monthly_report.lang or self.cfg.report.lang
        built = await monthly.build(
            self.repo,
            as_of=as_of,
            settings=self.cfg.report,
            lang=lang,
            correlation=self.cfg.correlation,
        )
        period = monthly.period_of(as_of)
        addresses = [(f"email:{a}", a) for a in to] if to else await self.report_addresses()
        key = (
            f"report/{scheduled_period}/schedule"
            if scheduled_period
            else f"report/{period}/{trigger}/{int(now * 1000)}"
        )
        notification = monthly.draft(
            built,
            key=key,
            addresses=addresses,
            lang=lang,
            public_url=self.settings.public_url,
            now=now,
        )
        queued = await self.store.enqueue_report(
            notification,
            period=scheduled_period or period,
            scheduled=scheduled_period is not None,
            worker=self.worker_id,
            as_of=as_of.isoformat(),
            trigger=trigger,
            actor=actor,
            summary=built.table.summary,
        )
        if not queued:
            return None
        log.info(
            "B2 report as of %s queued for %d recipient(s) (%s by %s)",
            built.table.day.isoformat(),
            len(notification.deliveries),
            trigger,
            actor,
        )
        if self.worker is not None:
            self.worker.wake.set()
        return notification

    async def scheduler_tick(self) -> NotificationDraft | None:
        """Queue last month's report if it is due now and not sent yet."""
        mr = self.settings.monthly_report
        period = monthly.due_period(self.clock(), self.tz, day=mr.day, hour=mr.hour)
        if period is None:
            return None
        return await self.send_report(
            as_of=monthly.period_end(period, self.tz),
            trigger="schedule",
            actor="system",
            scheduled_period=period,
        )

    # -- delivery ----------------------------------------------------------------------------

    def senders(self, session: aiohttp.ClientSession) -> dict[str, Sender]:
        s = self.settings
        channels = self.enabled_channels()

        async def secret_of(recipient: str) -> str:
            try:
                return (await self.store.contact(recipient)).webhook_secret
            except NotFound:
                return ""

        out: dict[str, Sender] = {
            Channel.WEBHOOK.value: WebhookSender(session, s.webhook, secret_of)
        }
        if Channel.EMAIL in channels:
            out[Channel.EMAIL.value] = EmailSender(s.email)
        if Channel.TELEGRAM in channels:
            out[Channel.TELEGRAM.value] = TelegramSender(session, s.telegram)
        if Channel.ZALO in channels:
            out[Channel.ZALO.value] = ZaloSender(session, s.zalo)
        return out

    @contextlib.asynccontextmanager
    async def delivering(self) -> AsyncIterator[DeliveryWorker]:
        """A delivery worker with its HTTP session (closed at exit)."""
        async with aiohttp.ClientSession() as session:
            worker = DeliveryWorker(
                self.store,
                self.senders(session),
                self.settings,
                worker_id=self.worker_id,
                clock=self.clock,
                stats=self.stats,
            )
            self.worker = worker
            try:
                yield worker
            finally:
                self.worker = None

    async def metrics_text(self) -> str:
        """Prometheus lines: the outbox by state and channel, this process's send counters."""
        lines = [
            "# HELP loa_alert_deliveries Alert and report deliveries in the outbox, by state.",
            "# TYPE loa_alert_deliveries gauge",
        ]
        for state, channel, n in await self.store.delivery_counts():
            lines.append(f'loa_alert_deliveries{{state="{state}",channel="{channel}"}} {n}')
        for name, help_text, counter in (
            ("sent", "Deliveries sent by this process.", self.stats.sent),
            ("retries", "Failed attempts that will be retried.", self.stats.retried),
            ("failures", "Deliveries given up (permanent error or too many).", self.stats.failed),
        ):
            metric = f"loa_alert_delivery_{name}_total"
            lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} counter"]
            for channel in sorted(counter):
                lines.append(f'{metric}{{channel="{channel}"}} {counter[channel]}')
        return "\n".join(lines) + "\n"


async def _every(
    name: str, interval: Callable[[], float], job: Callable[[], Awaitable[object]]
) -> None:
    """Run ``job`` forever; a failure is logged once, and its recovery once."""
    failing = False
    while True:
        try:
            await job()
        except (StoreError, TimeoutError, ValueError) as exc:
            if not failing:
                log.error("%s failing: %s", name, exc)
                failing = True
        else:
            if failing:
                log.info("%s recovered", name)
                failing = False
        await asyncio.sleep(interval())


ALERTS = web.AppKey("alerts", AlertService)
#: The clock of rules, quiet hours, retries and the report's schedule (tests replace it).
CLOCK: web.AppKey[Clock] = web.AppKey("alerts_clock")


async def alerts_ctx(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx`` entry: the service always (pages use it), its tasks when enabled."""
    cfg: CollectorConfig = app[CONFIG]
    repo = app[REPO]
    assert isinstance(repo, SQLiteRepository)
    service = AlertService(repo, cfg, clock=app.get(CLOCK, time.time))
    app[ALERTS] = service
    sources = app.get(METRIC_SOURCES)
    if sources is not None:
        sources.append(service.metrics_text)
    if not cfg.alerts.enabled:
        yield
        return
    if await service.store.seed_rules(list(DEFAULT_RULES)):
        log.info("alerts: default rules stored")
    async with service.delivering() as worker:
        s = cfg.alerts
        tasks = [
            asyncio.create_task(
                _every("alerts evaluation", lambda: s.evaluate_interval_s, service.evaluate_once),
                name="alerts-evaluate",
            ),
            asyncio.create_task(worker.run(), name="alerts-deliver"),
        ]
        if s.monthly_report.enabled:
            tasks.append(
                asyncio.create_task(
                    _every(
                        "monthly report",
                        lambda: s.monthly_report.tick_s,
                        service.scheduler_tick,
                    ),
                    name="alerts-report",
                )
            )
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t


def parse_report_as_of(text: str | None, tz: dt.tzinfo, now: float) -> dt.datetime:
    """``--as-of`` / the dashboard's date, or the end of last month (AsOfError when bad)."""
    if text:
        return parse_as_of(text, tz)
    return previous_month_end(dt.datetime.fromtimestamp(now, tz))
