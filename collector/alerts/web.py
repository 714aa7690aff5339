"""Dashboard pages of alerts: each user's own notification settings, and the admins' page.

Routes (HTML pages are named ``web-page-*`` so the dashboard middleware gives
them its login redirect and HTML errors; writes are JSON under the auth
middleware's CSRF rule, posted by the page script's ``api-form``)::

    GET  /me/alerts                        my channels, communes, quiet hours (any user)
    POST /me/alerts                        save them
    GET  /alerts                           rules, contractors, failed deliveries, report (admin)
    POST /alerts/rules                     create or replace a rule ({"rule": JSON text})
    POST /alerts/rules/{name}/delete
    POST /alerts/contractors               create or replace a contractor's contact
    POST /alerts/contractors/{name}/delete
    POST /alerts/deliveries/{id}/retry     queue a failed delivery again
    POST /alerts/report/send               send the B2 report now ({"as_of", "to"})

Views gather data into plain values and render them with the dashboard's
escaping helpers (``collector.web.markup``), one function per view, so they
move to templates as they are.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any, Final
from urllib.parse import quote

from aiohttp import web

from collector.alerts.channels import email_address_problem, webhook_url_problem
from collector.alerts.recipients import QuietHours
from collector.alerts.rules import NAME_RE, RuleError, rule_from_dict, rule_to_dict
from collector.alerts.service import ALERTS, parse_report_as_of
from collector.api import bad, body
from collector.auth import Permission, require
from collector.b2.dates import AsOfError
from collector.keys import REPO
from collector.store.alerts import ContactRow
from collector.store.base import NotFound
from collector.web import views
from collector.web.layout import Ctx, page
from collector.web.markup import Html, attrs, html, join

_TELEGRAM_RE: Final = re.compile(r"-?\d{1,20}|@[A-Za-z][A-Za-z0-9_]{4,31}")
_ZALO_RE: Final = re.compile(r"\d{1,30}")
_CONTRACTOR_MAX: Final = 128

#: Page texts: key -> (Vietnamese, English).
TEXT: Final[dict[str, tuple[str, str]]] = {
    "my_title": ("Nhận cảnh báo của tôi", "My notifications"),
    "my_intro": (
        "Chọn nơi nhận cảnh báo về các cụm loa, các xã muốn theo dõi và giờ yên lặng.",
        "Choose where alerts about the clusters reach you, which communes, and quiet hours.",
    ),
    "email": ("Thư điện tử", "Email"),
    "telegram": ("Telegram (chat id)", "Telegram (chat id)"),
    "zalo": ("Zalo (user id của Official Account)", "Zalo (Official Account user id)"),
    "webhook": ("Webhook (URL)", "Webhook (URL)"),
    "webhook_secret": ("Khoá ký webhook (HMAC-SHA256)", "Webhook signing key (HMAC-SHA256)"),
    "new_secret": ("Tạo khoá mới", "Make a new key"),
    "communes": ("Chỉ các xã (để trống = tất cả)", "Only these communes (empty = all)"),
    "quiet": ("Giờ yên lặng (cảnh báo khẩn vẫn gửi)", "Quiet hours (urgent alerts still go)"),
    "from": ("từ", "from"),
    "to": ("đến", "to"),
    "lang": ("Ngôn ngữ tin nhắn", "Message language"),
    "default": ("Mặc định", "Default"),
    "save": ("Lưu", "Save"),
    "admin_title": ("Cảnh báo và báo cáo", "Alerts and reports"),
    "rules": ("Quy tắc cảnh báo", "Alert rules"),
    "rules_help": (
        "Mỗi quy tắc là một đối tượng JSON: name, kind (cluster_broken, cluster_offline, "
        "commune_broken, ticket_overdue, cluster_repaired), after_s, causes, cause_after_s, "
        "more_than, more_than_percent, repeat_s, send_resolved, group_wait_s, critical, "
        "inhibits, recipients {roles, communes, contractor, users}.",
        "Each rule is a JSON object: name, kind (cluster_broken, cluster_offline, "
        "commune_broken, ticket_overdue, cluster_repaired), after_s, causes, cause_after_s, "
        "more_than, more_than_percent, repeat_s, send_resolved, group_wait_s, critical, "
        "inhibits, recipients {roles, communes, contractor, users}.",
    ),
    "new_rule": ("Thêm hoặc thay quy tắc", "Add or replace a rule"),
    "delete": ("Xoá", "Delete"),
    "contractors": ("Liên hệ nhà thầu", "Contractor contacts"),
    "contractor_help": (
        "Tên đúng như trong danh mục và phiếu sửa chữa.",
        "The name as the inventory and repair tickets write it.",
    ),
    "name": ("Tên", "Name"),
    "deliveries": ("Gửi tin", "Deliveries"),
    "problems": ("Gửi lỗi hoặc đang thử lại", "Failed or being retried"),
    "state": ("Trạng thái", "State"),
    "channel": ("Kênh", "Channel"),
    "recipient": ("Người nhận", "Recipient"),
    "attempts": ("Số lần", "Attempts"),
    "error": ("Lỗi", "Error"),
    "next": ("Thử lại lúc", "Next attempt"),
    "retry": ("Gửi lại", "Retry"),
    "report": ("Báo cáo B2 hằng tháng", "Monthly B2 report"),
    "report_help": (
        "Gửi biểu B2 (tệp XLSX) qua thư điện tử. Để trống ngày = cuối tháng trước; "
        "để trống người nhận = danh sách đã cấu hình.",
        "Email the B2 table (XLSX). No date = end of last month; no addresses = the "
        "configured list.",
    ),
    "as_of": ("Tính đến ngày", "As of"),
    "recipients": ("Người nhận (cách nhau bởi dấu phẩy)", "Recipients (comma separated)"),
    "send_now": ("Gửi ngay", "Send now"),
    "report_log": ("Nhật ký gửi báo cáo", "Report sending log"),
    "at": ("Lúc", "At"),
    "trigger": ("Cách gửi", "Trigger"),
    "by": ("Người gửi", "By"),
    "none": ("Không có", "None"),
    "st_pending": ("chờ gửi", "pending"),
    "st_sending": ("đang gửi", "sending"),
    "st_sent": ("đã gửi", "sent"),
    "st_failed": ("lỗi", "failed"),
}


def _t(ctx: Ctx, key: str) -> str:
    vi, en = TEXT[key]
    return en if ctx.lang == "en" else vi


def _input(name: str, label: str, value: str = "", *, type_: str = "text", **extra: Any) -> Html:
    return html(
        '<label>{label}<input name="{name}" type="{type}" value="{value}"{extra}></label>',
        label=label,
        name=name,
        type=type_,
        value=value,
        extra=attrs(**extra),
    )


def _lang_select(ctx: Ctx, chosen: str) -> Html:
    options = [("", _t(ctx, "default")), ("vi", "Tiếng Việt"), ("en", "English")]
    return html(
        '<label>{label}<select name="lang">{opts}</select></label>',
        label=_t(ctx, "lang"),
        opts=join(
            html('<option value="{v}"{s}>{t}</option>', v=v, s=attrs(selected=v == chosen), t=t)
            for v, t in options
        ),
    )


def _form(api: str, fields: Html, button: str, *, css: str = "", reload: bool = True) -> Html:
    return html(
        '<form class="api-form {css}" data-api="{api}"{r}>{fields}'
        '<p class="form-error" role="alert" hidden></p>'
        '<button type="submit" class="primary">{button}</button></form>',
        css=css,
        api=api,
        r=attrs(data_reload="1" if reload else None),
        fields=fields,
        button=button,
    )


# -- self-service --------------------------------------------------------------------------


async def my_alerts_page(request: web.Request) -> web.Response:
    principal = require(request, Permission.READ)
    ctx = Ctx.of(request)
    service = request.app[ALERTS]
    row = await service.store.contact(f"user:{principal.name}")
    labels = views.commune_labels(await request.app[REPO].list_inventory(), ctx.lang)
    visible = {c: lbl for c, lbl in labels.items() if principal.sees(c)}
    communes = join(
        html(
            '<option value="{c}"{s}>{label}</option>',
            c=code,
            s=attrs(selected=code in row.communes),
            label=label,
        )
        for code, label in visible.items()
    )
    secret = (
        html(
            '<p class="note">{label}: <code id="webhook-secret">{s}</code></p>',
            label=_t(ctx, "webhook_secret"),
            s=row.webhook_secret,
        )
        if row.webhook_secret
        else Html("")
    )
    fields = join(
        [
            _input("email", _t(ctx, "email"), row.email, type_="email", maxlength=254),
            _input("telegram", _t(ctx, "telegram"), row.telegram, maxlength=40),
            _input("zalo", _t(ctx, "zalo"), row.zalo, maxlength=30),
            _input("webhook_url", _t(ctx, "webhook"), row.webhook_url, type_="url", maxlength=500),
            secret,
            html(
                '<label class="check"><input type="checkbox" name="new_secret"> {t}</label>',
                t=_t(ctx, "new_secret"),
            ),
            html(
                '<label>{t}<select name="communes" multiple size="5">{o}</select></label>',
                t=_t(ctx, "communes"),
                o=communes,
            ),
            html(
                "<fieldset><legend>{q}</legend>{a}{b}</fieldset>",
                q=_t(ctx, "quiet"),
                a=_input("quiet_start", _t(ctx, "from"), row.quiet_start, type_="time"),
                b=_input("quiet_end", _t(ctx, "to"), row.quiet_end, type_="time"),
            ),
            _lang_select(ctx, row.lang),
        ]
    )
    body_html = html(
        '<p class="note">{intro}</p><section id="my-alerts">{form}</section>',
        intro=_t(ctx, "my_intro"),
        form=_form("/me/alerts", fields, _t(ctx, "save")),
    )
    return page(ctx, title=_t(ctx, "my_title"), body=body_html, active="my_alerts")


def _text(data: dict[str, Any], name: str, max_len: int) -> str:
    value = data.get(name, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise bad(name, "expected a string")
    value = value.strip()
    if len(value) > max_len or not value.isprintable():
        raise bad(name, f"at most {max_len} printable characters")
    return value


def contact_fields(data: dict[str, Any], *, require_https: bool) -> dict[str, Any]:
    """Validated channel fields of a contact form (email, telegram, zalo, webhook_url, lang)."""
    email = _text(data, "email", 254)
    if email and (problem := email_address_problem(email)):
        raise bad("email", problem)
    telegram = _text(data, "telegram", 40)
    if telegram and not _TELEGRAM_RE.fullmatch(telegram):
        raise bad("telegram", "a numeric chat id (e.g. 123456789 or -100123) or @channel")
    zalo = _text(data, "zalo", 30)
    if zalo and not _ZALO_RE.fullmatch(zalo):
        raise bad("zalo", "the numeric user id the Official Account sees")
    hook = _text(data, "webhook_url", 500)
    if hook and (problem := webhook_url_problem(hook, require_https=require_https)):
        raise bad("webhook_url", problem)
    lang = _text(data, "lang", 2)
    if lang not in ("", "vi", "en"):
        raise bad("lang", "vi, en or empty")
    return {"email": email, "telegram": telegram, "zalo": zalo, "webhook_url": hook, "lang": lang}


async def my_alerts_save(request: web.Request) -> web.Response:
    principal = require(request, Permission.READ)
    service = request.app[ALERTS]
    data = await body(request)
    fields = contact_fields(data, require_https=service.settings.webhook.require_https)
    raw = data.get("communes", [])
    if not isinstance(raw, list) or not all(isinstance(c, str) for c in raw) or len(raw) > 500:
        raise bad("communes", "expected a list of commune codes")
    known = {d.commune_code for d in await request.app[REPO].list_inventory()}
    communes = frozenset(c for c in raw if c)
    outside = sorted(c for c in communes if c not in known or not principal.sees(c))
    if outside:
        raise bad("communes", f"unknown commune {outside[0][:64]!r}")
    start, end = _text(data, "quiet_start", 5), _text(data, "quiet_end", 5)
    try:
        QuietHours.parse(start, end)
    except ValueError as exc:
        raise bad(str(exc).split(":")[0], str(exc)) from None
    key = f"user:{principal.name}"
    old = await service.store.contact(key)
    secret = old.webhook_secret
    if fields["webhook_url"] and (not secret or data.get("new_secret") is True):
        secret = secrets.token_urlsafe(32)
    if not fields["webhook_url"]:
        secret = ""
    await service.store.put_contact(
        ContactRow(
            key=key,
            name=principal.name,
            communes=communes,
            quiet_start=start,
            quiet_end=end,
            webhook_secret=secret,
            **fields,
        ),
        actor=principal.name,
    )
    return web.json_response({"saved": key, "webhook_secret": secret or None})


# -- the admins' page ----------------------------------------------------------------------


def _table(head: list[str], rows: list[Html], empty: str) -> Html:
    if not rows:
        return html('<p class="empty">{e}</p>', e=empty)
    return html(
        '<div class="scroll"><table><thead><tr>{h}</tr></thead><tbody>{r}</tbody></table></div>',
        h=join(html("<th>{x}</th>", x=x) for x in head),
        r=join(rows),
    )


async def admin_page(request: web.Request) -> web.Response:
    require(request, Permission.USERS_ADMIN)
    ctx = Ctx.of(request)
    service = request.app[ALERTS]
    store = service.store
    rules = await store.rules()
    rule_rows = [
        html(
            "<tr><td><strong>{name}</strong><br>{kind}</td><td>{form}{delete}</td></tr>",
            name=r.get("name", "?"),
            kind=r.get("kind", "?"),
            form=_form(
                "/alerts/rules",
                html(
                    '<textarea name="rule" rows="6" cols="70" spellcheck="false">{j}</textarea>',
                    j=json.dumps(r, ensure_ascii=False, indent=1),
                ),
                _t(ctx, "save"),
                css="rule",
            ),
            delete=_form(
                f"/alerts/rules/{quote(str(r.get('name', '')), safe='')}/delete",
                Html(""),
                _t(ctx, "delete"),
                css="inline",
            ),
        )
        for r in rules
    ]
    template = json.dumps(
        {
            "name": "ten-quy-tac",
            "kind": "cluster_offline",
            "after_s": 3600,
            "repeat_s": 86400,
            "recipients": {"roles": ["commune_officer"], "contractor": True},
        },
        indent=1,
    )
    contractors = [c for c in await store.contacts() if c.key.startswith("contractor:")]
    contractor_rows = [
        html(
            "<tr><td>{name}</td><td>{email}</td><td>{tg}</td><td>{zalo}</td><td>{hook}</td>"
            "<td>{delete}</td></tr>",
            name=c.name,
            email=c.email or "—",
            tg=c.telegram or "—",
            zalo=c.zalo or "—",
            hook=c.webhook_url or "—",
            delete=_form(
                f"/alerts/contractors/{quote(c.name, safe='')}/delete",
                Html(""),
                _t(ctx, "delete"),
                css="inline",
            ),
        )
        for c in contractors
    ]
    counts = await store.delivery_counts()
    count_text = join(
        html(
            '<span class="badge {css}" data-count="{s}-{c}">{c}: {label} {n}</span> ',
            css="bad" if s == "failed" else ("ok" if s == "sent" else "warn"),
            s=s,
            c=ch,
            label=_t(ctx, f"st_{s}") if f"st_{s}" in TEXT else s,
            n=n,
        )
        for s, ch, n in counts
    )
    problems = [
        d
        for d in await store.deliveries(states=frozenset({"failed", "pending", "sending"}))
        if d.state == "failed" or d.last_error
    ]
    problem_rows = [
        html(
            '<tr class="{css}"><td>#{id}</td><td>{state}</td><td>{ch}</td><td>{who}</td>'
            "<td>{subject}</td><td>{n}</td><td>{err}</td><td>{next}</td><td>{retry}</td></tr>",
            css="row-bad" if d.state == "failed" else "",
            id=d.id,
            state=_t(ctx, f"st_{d.state}"),
            ch=d.channel,
            who=f"{d.recipient} ({d.address})",
            subject=d.subject,
            n=d.attempts,
            err=d.last_error or "—",
            next=ctx.when(d.not_before) if d.state == "pending" else "—",
            retry=_form(
                f"/alerts/deliveries/{d.id}/retry", Html(""), _t(ctx, "retry"), css="inline"
            )
            if d.state == "failed"
            else Html(""),
        )
        for d in problems
    ]
    log_rows = [
        html(
            "<tr><td>{at}</td><td>{as_of}</td><td>{trigger}</td><td>{by}</td><td>{to}</td>"
            "<td>{deliveries}</td></tr>",
            at=ctx.when(e["at"]),
            as_of=e["as_of"][:10],
            trigger=e["trigger"],
            by=e["actor"],
            to=", ".join(e["recipients"]) or "—",
            deliveries=e["deliveries"] or "—",
        )
        for e in await store.report_log()
    ]
    body_html = html(
        """<section id="alert-rules"><h2>{rules_t}</h2><p class="note">{rules_help}</p>
{rules}
<h3>{new_rule}</h3>{new_form}</section>
<section id="alert-contractors"><h2>{contractors_t}</h2><p class="note">{c_help}</p>{contractors}
{c_form}</section>
<section id="alert-deliveries" data-live-region><h2>{deliveries_t}</h2><p>{counts}</p>
<h3>{problems_t}</h3>{problems}</section>
<section id="alert-report"><h2>{report_t}</h2><p class="note">{report_help}</p>{report_form}
<h3>{log_t}</h3>{log}</section>""",
        rules_t=_t(ctx, "rules"),
        rules_help=_t(ctx, "rules_help"),
        rules=_table([_t(ctx, "name"), ""], rule_rows, _t(ctx, "none")),
        new_rule=_t(ctx, "new_rule"),
        new_form=_form(
            "/alerts/rules",
            html(
                '<textarea name="rule" rows="8" cols="70" spellcheck="false">{j}</textarea>',
                j=template,
            ),
            _t(ctx, "save"),
        ),
        contractors_t=_t(ctx, "contractors"),
        c_help=_t(ctx, "contractor_help"),
        contractors=_table(
            [_t(ctx, "name"), _t(ctx, "email"), "Telegram", "Zalo", "Webhook", ""],
            contractor_rows,
            _t(ctx, "none"),
        ),
        c_form=_form(
            "/alerts/contractors",
            join(
                [
                    _input("name", _t(ctx, "name"), required=True, maxlength=_CONTRACTOR_MAX),
                    _input("email", _t(ctx, "email"), type_="email"),
                    _input("telegram", _t(ctx, "telegram")),
                    _input("zalo", _t(ctx, "zalo")),
                    _input("webhook_url", _t(ctx, "webhook"), type_="url"),
                    _lang_select(ctx, ""),
                ]
            ),
            _t(ctx, "save"),
        ),
        deliveries_t=_t(ctx, "deliveries"),
        counts=count_text or _t(ctx, "none"),
        problems_t=_t(ctx, "problems"),
        problems=_table(
            [
                "#",
                _t(ctx, "state"),
                _t(ctx, "channel"),
                _t(ctx, "recipient"),
                "",
                _t(ctx, "attempts"),
                _t(ctx, "error"),
                _t(ctx, "next"),
                "",
            ],
            problem_rows,
            _t(ctx, "none"),
        ),
        report_t=_t(ctx, "report"),
        report_help=_t(ctx, "report_help"),
        report_form=_form(
            "/alerts/report/send",
            join(
                [
                    _input("as_of", _t(ctx, "as_of"), type_="date"),
                    _input("to", _t(ctx, "recipients"), maxlength=2000),
                ]
            ),
            _t(ctx, "send_now"),
        ),
        log_t=_t(ctx, "report_log"),
        log=_table(
            [
                _t(ctx, "at"),
                _t(ctx, "as_of"),
                _t(ctx, "trigger"),
                _t(ctx, "by"),
                _t(ctx, "recipients"),
                _t(ctx, "deliveries"),
            ],
            log_rows,
            _t(ctx, "none"),
        ),
    )
    return page(ctx, title=_t(ctx, "admin_title"), body=body_html, active="alerts")


async def rule_save(request: web.Request) -> web.Response:
    principal = require(request, Permission.USERS_ADMIN)
    data = await body(request)
    raw = data.get("rule", data)
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise bad("rule", f"not valid JSON: {exc}") from None
    try:
        rule = rule_from_dict(raw)
    except RuleError as exc:
        raise bad(f"rule.{exc.field}", str(exc).split(": ", 1)[-1]) from None
    stored = rule_to_dict(rule)
    await request.app[ALERTS].store.put_rule(stored, actor=principal.name)
    return web.json_response(stored)


async def rule_delete(request: web.Request) -> web.Response:
    principal = require(request, Permission.USERS_ADMIN)
    name = request.match_info["name"]
    if not NAME_RE.fullmatch(name):
        raise web.HTTPNotFound()
    await request.app[ALERTS].store.delete_rule(name, actor=principal.name)
    return web.json_response({"deleted": name})


def _contractor_name(raw: object) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise bad("name", "is required")
    name = raw.strip()
    if len(name) > _CONTRACTOR_MAX or not name.isprintable():
        raise bad("name", f"1..{_CONTRACTOR_MAX} printable characters")
    return name


async def contractor_save(request: web.Request) -> web.Response:
    principal = require(request, Permission.USERS_ADMIN)
    service = request.app[ALERTS]
    data = await body(request)
    name = _contractor_name(data.get("name"))
    fields = contact_fields(data, require_https=service.settings.webhook.require_https)
    key = f"contractor:{name}"
    try:
        secret = (await service.store.contact(key)).webhook_secret
    except NotFound:
        secret = ""
    if fields["webhook_url"] and not secret:
        secret = secrets.token_urlsafe(32)
    await service.store.put_contact(
        ContactRow(
            key=key, name=name, webhook_secret=secret if fields["webhook_url"] else "", **fields
        ),
        actor=principal.name,
    )
    return web.json_response({"saved": key, "webhook_secret": secret or None})


async def contractor_delete(request: web.Request) -> web.Response:
    principal = require(request, Permission.USERS_ADMIN)
    name = _contractor_name(request.match_info["name"])
    await request.app[ALERTS].store.delete_contact(f"contractor:{name}", actor=principal.name)
    return web.json_response({"deleted": name})


async def delivery_retry(request: web.Request) -> web.Response:
    principal = require(request, Permission.USERS_ADMIN)
    try:
        delivery_id = int(request.match_info["id"])
    except ValueError:
        raise bad("id", "expected an integer") from None
    service = request.app[ALERTS]
    await service.store.retry(delivery_id, actor=principal.name, now=service.clock())
    if service.worker is not None:
        service.worker.wake.set()
    return web.json_response({"queued": delivery_id})


async def report_send(request: web.Request) -> web.Response:
    principal = require(request, Permission.USERS_ADMIN)
    service = request.app[ALERTS]
    data = await body(request)
    raw_to = data.get("to", [])
    if isinstance(raw_to, str):
        raw_to = [a for a in re.split(r"[,;\s]+", raw_to) if a]
    if not isinstance(raw_to, list) or not all(isinstance(a, str) for a in raw_to):
        raise bad("to", "expected email addresses")
    if len(raw_to) > 100:
        raise bad("to", "at most 100 addresses")
    for a in raw_to:
        if problem := email_address_problem(a):
            raise bad("to", f"{a[:60]!r}: {problem}")
    as_of_raw = data.get("as_of") or None
    if as_of_raw is not None and not isinstance(as_of_raw, str):
        raise bad("as_of", "expected a date")
    try:
        as_of = parse_report_as_of(as_of_raw, service.tz, service.clock())
    except AsOfError as exc:
        raise bad("as_of", str(exc)) from None
    queued = await service.send_report(
        as_of=as_of, to=raw_to, trigger="dashboard", actor=principal.name
    )
    if queued is None or not queued.deliveries:
        raise bad("to", "no recipients: give addresses or configure [alerts.monthly_report]")
    return web.json_response(
        {
            "queued": queued.key,
            "as_of": queued.data["as_of"],
            "recipients": [d.address for d in queued.deliveries],
        },
        status=202,
    )


def add_routes(app: web.Application) -> None:
    """Add the alert pages and their JSON endpoints to the collector ``app``."""
    r = app.router
    r.add_get("/me/alerts", my_alerts_page, name="web-page-my-alerts")
    r.add_post("/me/alerts", my_alerts_save, name="web-my-alerts-save")
    r.add_get("/alerts", admin_page, name="web-page-alerts")
    r.add_post("/alerts/rules", rule_save, name="web-alerts-rule-save")
    r.add_post("/alerts/rules/{name}/delete", rule_delete, name="web-alerts-rule-delete")
    r.add_post("/alerts/contractors", contractor_save, name="web-alerts-contractor-save")
    r.add_post(
        "/alerts/contractors/{name}/delete", contractor_delete, name="web-alerts-contractor-delete"
    )
    r.add_post("/alerts/deliveries/{id}/retry", delivery_retry, name="web-alerts-retry")
    r.add_post("/alerts/report/send", report_send, name="web-alerts-report-send")
