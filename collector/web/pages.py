"""The dashboard's pages: overview, commune, cluster, B2, repairs, users, login.

Handlers read through the store and the same role checks as the REST API
(``collector.auth.require``: an out-of-scope commune or device answers 404),
and return a template's context; the markup is in ``collector/web/templates/``
(Jinja2, autoescaped). Writes go through the REST API from the page's script
(cookie session plus the ``X-CSRF-Token`` header, checked by the auth
middleware), except user administration, which has no REST route and is
served here as JSON endpoints under the same CSRF rule.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Final
from urllib.parse import quote

import aiohttp_jinja2
from aiohttp import web

from collector import repairs, schemas, users
from collector.api import bad, body, scope, summarize, summarize_tally, text
from collector.auth import Permission, hash_password, require
from collector.b2.api import as_of_param, settings_of
from collector.b2.service import b2_table, monthly_evaluation
from collector.b2.table import Scope, column_groups
from collector.b2.table import text as b2_text
from collector.causes import cause_now
from collector.keys import CONFIG, REPO
from collector.model import Status
from collector.params import page_params, safe_next
from collector.store.base import FaultRow, NotFound, Role
from collector.web import charts, views
from collector.web.i18n import MESSAGES, Tr
from collector.web.layout import Ctx, bare_context, page_context
from collector.web.remote import remote_panel
from fleet_protocol import B2Cause, fault_info, valid_device_id

#: Seconds per chart range; typed by the query's Literal, so mypy refuses a key
#: the page's parameters would not accept.
RANGES: Final[dict[schemas.DeviceRange, float]] = {
    "24h": 86400.0,
    "7d": 7 * 86400.0,
    "30d": 30 * 86400.0,
}

Context = dict[str, Any]


# -- small pieces ------------------------------------------------------------------------------


def action_label(tr: Tr, action: str) -> str:
    """A ticket history action ("open", "start", ...) in the page's language."""
    key = f"action_{action}"
    return tr(key) if key in MESSAGES else action


def fault_title(tr: Tr, code: str) -> str:
    try:
        info = fault_info(code)
    except (ValueError, KeyError):
        return code
    return info.title_en if tr.lang == "en" else info.title_vi


def b2_groups(lang: str) -> list[dict[str, Any]]:
    """The B2 table's two-level header for ``_b2_table.html``: label, sub-labels, width."""
    return [
        {"label": group, "subs": subs, "width": len(subs) or 1}
        for group, subs in column_groups(lang)
    ]


async def _labels(request: web.Request, lang: str) -> dict[str, str]:
    return views.commune_labels(await request.app[REPO].list_inventory(), lang)


# -- overview ----------------------------------------------------------------------------------


@aiohttp_jinja2.template("overview.html")
async def overview(request: web.Request) -> Context:
    require(request, Permission.READ)
    ctx = Ctx.of(request)
    tr, repo, allowed = ctx.tr, request.app[REPO], scope(request)
    # The counts kept as the fleet changes: no pass over every cluster.
    tally, _ = await repo.fleet_tally(allowed, each=True)
    s = summarize_tally(tally)
    labels = await _labels(request, ctx.lang)
    stats = views.commune_stats_kept(labels, tally, allowed)
    causes = [(c.label(ctx.lang), int(s["by_cause"][c.value])) for c in B2Cause]
    ends = views.month_ends(dt.datetime.fromtimestamp(ctx.now, ctx.tz))
    months = await views.trend(repo, ends, allowed)
    evaluation = await monthly_evaluation(
        repo,
        [d for d in await repo.list_inventory() if allowed is None or d.commune_code in allowed],
        as_of=ends[-1],
        settings=settings_of(request),
        lang=ctx.lang,
    )
    tickets = await repo.list_tickets(communes=allowed, states=views.ACTIVE_STATES, limit=100000)
    late = repairs.overdue(
        tickets, now=ctx.now, after_s=request.app[CONFIG].repairs.overdue_after_s
    )
    return page_context(ctx, title=tr("overview"), active="overview") | {
        "s": s,
        "causes": causes,
        "cause_top": max((n for _, n in causes), default=0) or 1,
        "worst": views.worst_communes(stats),
        "stats": stats,
        "trend": charts.trend_bars(
            months,
            title=tr("trend"),
            labels=(tr("working"), tr("broken")),
            no_data=tr("trend_no_data"),
        ),
        "evaluation": evaluation,
        "late": late,
        "labels": labels,
    }


# -- commune -----------------------------------------------------------------------------------


@aiohttp_jinja2.template("commune.html")
async def commune(request: web.Request) -> Context:
    code = request.match_info["code"]
    if len(code) > 64:
        raise web.HTTPNotFound()
    require(request, Permission.READ, code)
    ctx = Ctx.of(request)
    tr, repo = ctx.tr, request.app[REPO]
    labels = await _labels(request, ctx.lang)
    rows = await repo.list_devices(communes=frozenset({code}), limit=10**7)
    if not rows and code not in labels:
        raise web.HTTPNotFound()
    tickets = {
        t.device_id: t
        for t in await repo.list_tickets(
            communes=frozenset({code}), states=views.ACTIVE_STATES, limit=100000
        )
    }
    clusters = []
    points = []
    for d in rows:
        grade, value, unit = views.signal_grade(d.last_report)
        signal = (
            "—"
            if d.last_report is None
            else tr(grade) + (f" ({unit} {value:.0f})" if value is not None else "")
        )
        broken_for = (
            tr.duration(ctx.now - d.since)
            if d.status is Status.BROKEN and d.since is not None
            else "—"
        )
        clusters.append(
            {
                "device": d,
                "grade": grade,
                "signal": signal,
                "broken_for": broken_for,
                "ticket": tickets.get(d.device_id),
            }
        )
        inv = d.inventory
        if inv and inv.latitude is not None and inv.longitude is not None:
            points.append(
                charts.MapPoint(
                    lat=inv.latitude,
                    lon=inv.longitude,
                    label=d.device_id,
                    working=d.status is Status.WORKING,
                    href=f"/devices/{d.device_id}",
                )
            )
    return page_context(ctx, title=labels.get(code, code), active="overview") | {
        "s": summarize(rows),
        "clusters": clusters,
        "map": charts.position_map(points, title=tr("map")) if points else None,
    }


# -- cluster (device) --------------------------------------------------------------------------


def _forms(ctx: Ctx, contractor: str, active: Any) -> list[dict[str, str]]:
    """The repair forms the caller may use on this cluster, in page order."""
    p = ctx.principal
    if active is None:
        return [{"kind": "open"}] if p.may(Permission.REPAIR_OPEN) else []
    base = f"/api/v1/repairs/{active.id}"
    forms: list[dict[str, str]] = []
    if p.may(Permission.REPAIR_WORK) and active.state.value == "open":
        forms.append({"kind": "start", "base": base, "contractor": contractor})
    if p.may(Permission.REPAIR_WORK):
        forms.append({"kind": "finding", "base": base})
        forms.append({"kind": "comment", "base": base})
    if p.may(Permission.REPAIR_CANCEL):
        forms.append({"kind": "cancel", "base": base})
    return forms


def _report_facts(tr: Tr, report: dict[str, Any] | None) -> list[tuple[str, str]]:
    if not report:
        return []
    modem = report.get("modem") or {}
    amp = report.get("amp") or {}
    stream = report.get("stream") or {}
    facts: list[tuple[str, str]] = []
    if modem:
        parts = [
            f"{name} {modem[key]:.0f} {unit}"
            for key, name, unit in (
                ("rssi_dbm", "RSSI", "dBm"),
                ("rsrp_dbm", "RSRP", "dBm"),
                ("sinr_db", "SINR", "dB"),
            )
            if isinstance(modem.get(key), int | float)
        ]
        facts.append((tr("modem"), ", ".join([str(modem.get("operator") or "—"), *parts])))
    if isinstance(amp.get("temperature_c"), int | float):
        facts.append((tr("temp_chart"), f"{amp['temperature_c']:.1f}"))
    if "receiving" in stream:
        facts.append(
            (tr("stream"), tr("receiving") if stream["receiving"] else tr("not_receiving"))
        )
    return facts


def _fault_view(ctx: Ctx, f: FaultRow) -> dict[str, Any]:
    tr = ctx.tr
    return {
        "code": f.code,
        "title": fault_title(tr, f.code),
        "severity": f.severity,
        "severity_label": tr(f.severity) if f.severity in ("critical", "warning") else f.severity,
        "cause_label": B2Cause(f.cause).label(ctx.lang)
        if f.cause in B2Cause.__members__.values()
        else f.cause,
        "since": f.since,
        "cleared_at": f.cleared_at,
        "evidence": f.evidence,
    }


@aiohttp_jinja2.template("device.html")
async def device(request: web.Request) -> Context:
    device_id = request.match_info["device_id"]
    if not valid_device_id(device_id):
        raise web.HTTPNotFound()
    repo = request.app[REPO]
    try:
        d = await repo.get_device(device_id)
    except NotFound:
        raise web.HTTPNotFound() from None
    require(request, Permission.READ, d.commune_code)
    ctx = Ctx.of(request)
    tr = ctx.tr
    range_key = page_params(request, schemas.DevicePageParams).range
    end = ctx.now
    start = end - RANGES[range_key]
    labels = await _labels(request, ctx.lang)
    active_faults = await repo.list_faults(device_id, active_only=True)
    all_faults = await repo.list_faults(device_id)
    tickets = await repo.list_tickets(device_id=device_id, limit=50)
    active = next((t for t in tickets if t.state.active), None)
    signal = await repo.signal_history(device_id, since=start, until=end, limit=5000)
    reports = await repo.state_reports(device_id, since=start, until=end, limit=5000)
    history = await repo.status_history(device_id, until=end)
    cause = await cause_now(repo, device_id, ctx.now, request.app[CONFIG].correlation)
    signal_chart = charts.time_series(
        [
            charts.Series("RSSI", [(p.ts, p.rssi_dbm) for p in signal]),
            charts.Series("RSRP", [(p.ts, p.rsrp_dbm) for p in signal]),
            charts.Series("SINR", [(p.ts, p.sinr_db) for p in signal]),
        ],
        start=start,
        end=end,
        tz=ctx.tz,
        title=tr("signal_chart"),
        empty_text=tr("no_data"),
    )
    temp_chart = charts.time_series(
        [charts.Series(tr("temperature"), views.amp_temperatures(reports))],
        start=start,
        end=end,
        tz=ctx.tz,
        title=tr("temp_chart"),
        empty_text=tr("no_data"),
    )
    band = charts.online_band(
        views.online_intervals(history, start=start, end=end),
        start=start,
        end=end,
        tz=ctx.tz,
        title=tr("online_chart"),
        labels=(tr("online"), tr("offline")),
    )
    contractor = d.inventory.contractor if d.inventory else ""
    return page_context(ctx, title=f"{tr('cluster')} {device_id}", active="overview") | {
        "d": d,
        "commune_name": labels.get(d.commune_code, d.commune_code),
        "active_ticket": active,
        "facts": _report_facts(tr, d.last_report),
        "active_faults": [_fault_view(ctx, f) for f in active_faults],
        "all_faults": [_fault_view(ctx, f) for f in all_faults],
        "forms": _forms(ctx, contractor, active),
        "ranges": list(RANGES),
        "range_key": range_key,
        "signal_chart": signal_chart,
        "temp_chart": temp_chart,
        "band": band,
        "tickets": tickets,
        #: The latest status changes, newest first, each with what brought it.
        "status_changes": history[::-1][:20],
        "remote": remote_panel(ctx, d),
        "action_label": lambda action: action_label(tr, action),
        "cause": cause,
        "findings": await repo.list_findings(device_id),
        "causes": [(c.value, c.label(ctx.lang)) for c in B2Cause],
    }


# -- B2 ----------------------------------------------------------------------------------------


#: The query parameters the B2 page reads (``lang`` is the language switch's).


@aiohttp_jinja2.template("b2.html")
async def b2(request: web.Request) -> Context:
    require(request, Permission.READ)
    ctx = Ctx.of(request)
    tr = ctx.tr
    settings = settings_of(request)
    # The API's parameters and rules (collector.schemas.B2Params); an empty
    # field of the page's form means "not given".
    p = page_params(request, schemas.B2PageParams)
    as_of = as_of_param(p.as_of, settings)
    scope_raw = p.scope.value
    table_ = await b2_table(
        request.app[REPO],
        as_of=as_of,
        settings=settings,
        scope=Scope(scope_raw),
        lang=ctx.lang,
        communes=ctx.principal.communes,
        correlation=request.app[CONFIG].correlation,
    )
    day = table_.day.isoformat()
    return page_context(ctx, title=tr("b2"), active="b2") | {
        "table": table_,
        "groups": b2_groups(ctx.lang),
        "day": day,
        "scope": scope_raw,
        "scopes": [s.value for s in Scope],
        "b2_title": column_title(ctx.lang),
        "query": f"as_of={day}&scope={scope_raw}&lang={ctx.lang}",
    }


def column_title(lang: str) -> str:
    return b2_text("title", lang)


# -- repairs -----------------------------------------------------------------------------------


@aiohttp_jinja2.template("repairs.html")
async def repairs_page(request: web.Request) -> Context:
    require(request, Permission.READ)
    ctx = Ctx.of(request)
    tr, repo = ctx.tr, request.app[REPO]
    allowed = scope(request)
    labels = await _labels(request, ctx.lang)
    tickets = await repo.list_tickets(communes=allowed, states=views.ACTIVE_STATES, limit=100000)
    late = {
        t.id
        for t in repairs.overdue(
            tickets, now=ctx.now, after_s=request.app[CONFIG].repairs.overdue_after_s
        )
    }
    q = page_params(request, schemas.RepairsPageParams)
    want_commune, want_contractor = q.commune or "", q.contractor or ""
    min_days = q.min_age_days
    contractors = sorted({t.contractor for t in tickets if t.contractor})
    communes = sorted({t.commune_code for t in tickets}, key=lambda c: labels.get(c, c))
    shown = [
        t
        for t in tickets
        if (not want_commune or t.commune_code == want_commune)
        and (not want_contractor or t.contractor == want_contractor)
        and ctx.now - t.opened_at >= min_days * 86400
    ]
    shown.sort(key=lambda t: (t.id not in late, t.opened_at))
    return page_context(ctx, title=tr("open_tickets"), active="repairs") | {
        "communes": [(c, labels.get(c, c)) for c in communes],
        "want_commune": want_commune,
        "contractors": [(c, c) for c in contractors],
        "want_contractor": want_contractor,
        "min_days": f"{min_days:g}" if min_days else "",
        "shown": shown,
        "late": late,
        "labels": labels,
    }


# -- users -------------------------------------------------------------------------------------


@aiohttp_jinja2.template("users.html")
async def users_page(request: web.Request) -> Context:
    require(request, Permission.USERS_ADMIN)
    ctx = Ctx.of(request)
    tr, repo = ctx.tr, request.app[REPO]
    labels = await _labels(request, ctx.lang)
    accounts = [
        {
            "name": u.name,
            "quoted": quote(u.name, safe=""),
            "scope_text": ", ".join(labels.get(c, c) for c in sorted(u.communes))
            or tr("all_communes"),
            "role": u.role.value,
            "communes": u.communes,
            "disabled": u.disabled,
        }
        for u in await repo.list_users()
    ]
    return page_context(ctx, title=tr("users_title"), active="users") | {
        "users": accounts,
        "roles": [(r.value, tr(f"role_{r.value}")) for r in Role],
        "communes": list(labels.items()),
    }


def _user_fields(data: dict[str, Any], known: set[str]) -> tuple[Role, frozenset[str]]:
    """Role and communes from a user form; the rules of ``loa-collector users add``."""
    try:
        role = Role(text(data, "role", required=True, max_len=32))
    except ValueError:
        raise bad("role", "must be one of " + ", ".join(r.value for r in Role)) from None
    raw = data.get("communes", [])
    if not isinstance(raw, list) or not all(isinstance(c, str) for c in raw):
        raise bad("communes", "expected a list of commune codes")
    communes = frozenset(c.strip() for c in raw if c.strip())
    try:
        users.check_scope(role, communes, known)
    except users.UserRuleError as exc:
        raise bad(exc.field, exc.message) from None
    return role, communes


async def users_create(request: web.Request) -> web.Response:
    principal = require(request, Permission.USERS_ADMIN)
    data = await body(request)
    name = text(data, "name", required=True, max_len=users.MAX_NAME)
    try:
        users.check_name(name)
    except users.UserRuleError as exc:
        raise bad(exc.field, exc.message) from None
    password = data.get("password")
    if not isinstance(password, str) or not 8 <= len(password) <= 1024:
        raise bad("password", "must be 8 to 1024 characters")
    repo = request.app[REPO]
    role, communes = _user_fields(data, set(await _labels(request, "vi")))
    user = await repo.add_user(
        name, role=role, communes=communes, password_hash=hash_password(password)
    )
    await repo.audit(
        principal.name, "user.add", f"user:{name}", {"role": role, "communes": sorted(communes)}
    )
    return web.json_response(
        {"name": user.name, "role": user.role.value, "communes": sorted(user.communes)}, status=201
    )


async def users_update(request: web.Request) -> web.Response:
    principal = require(request, Permission.USERS_ADMIN)
    name = request.match_info["name"]
    data = await body(request)
    role, communes = _user_fields(data, set(await _labels(request, "vi")))
    disabled = data.get("disabled", False)
    if not isinstance(disabled, bool):
        raise bad("disabled", "expected true or false")
    if name == principal.name and (role is not Role.ADMIN or disabled):
        raise bad("role", "you cannot remove your own administrator access")
    user = await request.app[REPO].update_user(
        name, role=role, communes=communes, disabled=disabled, actor=principal.name
    )
    return web.json_response(
        {
            "name": user.name,
            "role": user.role.value,
            "communes": sorted(user.communes),
            "disabled": user.disabled,
        }
    )


# -- login and live ----------------------------------------------------------------------------


@aiohttp_jinja2.template("login.html")
async def login_page(request: web.Request) -> Context:
    context = bare_context(request, title="")
    return context | {
        "title": context["tr"]("login_title"),
        "next": safe_next(request.query.get("next")),
    }


async def live(request: web.Request) -> web.Response:
    """A fingerprint of what the pages show; the pages poll it and refresh on change."""
    require(request, Permission.READ)
    repo = request.app[REPO]
    allowed = scope(request)
    # The kept counts and their version: a poll reads a few rows at any fleet size.
    tally, version = await repo.fleet_tally(allowed)
    return web.json_response({"fp": f"v{version}", "summary": summarize_tally(tally)})


def error_page(request: web.Request, status: int, message: str) -> web.Response:
    context = bare_context(request, title="")
    key = {403: "forbidden", 404: "not_found"}.get(status, "error")
    context |= {"title": f"{status} · {context['tr'](key)}", "message": message}
    return aiohttp_jinja2.render_template("error.html", request, context, status=status)
