"""The dashboard's pages: overview, commune, cluster, B2, repairs, users, login.

Handlers read through the store and the same role checks as the REST API
(``collector.auth.require``: an out-of-scope commune or device answers 404).
Writes go through the REST API from the page's script (cookie session plus
the ``X-CSRF-Token`` header, checked by the auth middleware), except user
administration, which has no REST route and is served here as JSON
endpoints under the same CSRF rule.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Final
from urllib.parse import quote

from aiohttp import web

from collector import repairs
from collector.api import bad, body, scope, summarize, text
from collector.auth import Permission, hash_password, require
from collector.b2.api import settings_of
from collector.b2.dates import AsOfError, parse_as_of
from collector.b2.service import b2_table
from collector.b2.table import Scope, column_groups
from collector.b2.table import text as b2_text
from collector.keys import CONFIG, REPO
from collector.model import Status
from collector.store.base import DeviceRow, NotFound, Role, Ticket
from collector.web import charts, views
from collector.web.i18n import MESSAGES, Tr, pick_lang
from collector.web.layout import Ctx, bare_page, page
from collector.web.markup import Html, attrs, esc, html, join
from collector.web.remote import remote_panel
from fleet_protocol import B2Cause, fault_info, valid_device_id

RANGES: Final = {"24h": 86400.0, "7d": 7 * 86400.0, "30d": 30 * 86400.0}


# -- small pieces ------------------------------------------------------------------------------


def action_label(tr: Tr, action: str) -> str:
    """A ticket history action ("open", "start", ...) in the page's language."""
    key = f"action_{action}"
    return tr(key) if key in MESSAGES else action


def status_badge(tr: Tr, d: DeviceRow) -> Html:
    if d.status is Status.WORKING:
        return html('<span class="badge ok">{t}</span>', t=tr("working"))
    label = tr("in_repair") if d.in_repair else tr("broken")
    return html('<span class="badge bad">{t}</span>', t=label)


def link_badge(tr: Tr, online: bool, never_reported: bool = False) -> Html:
    if never_reported:
        return html('<span class="badge off">{t}</span>', t=tr("never_reported"))
    return html(
        '<span class="badge {c}">{t}</span>',
        c="ok" if online else "off",
        t=tr("online" if online else "offline"),
    )


def cause_label(tr: Tr, cause: B2Cause | None) -> str:
    return cause.label(tr.lang) if cause else "—"


def fault_title(tr: Tr, code: str) -> str:
    try:
        info = fault_info(code)
    except (ValueError, KeyError):
        return code
    return info.title_en if tr.lang == "en" else info.title_vi


def card(key: str, label: str, value: object, css: str = "") -> Html:
    return html(
        '<div class="card {css}"><div class="num" data-stat="{key}">{v}</div>'
        '<div class="label">{label}</div></div>',
        css=css,
        key=key,
        v=value,
        label=label,
    )


def headline(tr: Tr, s: dict[str, Any]) -> Html:
    offline = s["total"] - s["online"] - s["never_reported"]
    return html(
        '<section class="cards" id="headline" data-live-region>{cards}</section>',
        cards=join(
            [
                card("total", tr("total_clusters"), s["total"]),
                card("working", tr("working"), s["working"], "ok"),
                card("broken", tr("broken"), s["broken"], "bad"),
                card("in_repair", tr("in_repair"), s["in_repair"], "warn"),
                card("not_repaired", tr("not_repaired"), s["not_repaired"], "bad"),
                card("offline", tr("offline_now"), offline, "off"),
                card("never_reported", tr("never_reported"), s["never_reported"], "off"),
            ]
        ),
    )


def cause_table(tr: Tr, causes: list[tuple[str, int]]) -> Html:
    """Broken clusters per cause as rows with a bar (a ``<meter>``: no inline styles)."""
    top = max((n for _, n in causes), default=0) or 1
    return html(
        '<table class="causes"><tbody>{rows}</tbody></table>',
        rows=join(
            html(
                '<tr class="{css}"><td>{label}</td><td class="n">{n}</td>'
                '<td class="bar"><meter min="0" max="{top}" value="{n}">{n}</meter></td></tr>',
                css="zero" if n == 0 else "",
                label=label,
                n=n,
                top=top,
            )
            for label, n in causes
        ),
    )


def ticket_state(tr: Tr, t: Ticket | None) -> str:
    return tr(f"state_{t.state}") if t else "—"


def table(head: list[str], rows: list[Html], *, css: str = "", empty: str = "") -> Html:
    if not rows and empty:
        return html('<p class="empty">{e}</p>', e=empty)
    return html(
        '<div class="scroll"><table class="{css}"><thead><tr>{h}</tr></thead>'
        "<tbody>{rows}</tbody></table></div>",
        css=css,
        h=join(html("<th>{x}</th>", x=x) for x in head),
        rows=join(rows),
    )


async def _labels(request: web.Request, lang: str) -> dict[str, str]:
    return views.commune_labels(await request.app[REPO].list_inventory(), lang)


def _overdue_table(ctx: Ctx, late: list[Ticket], labels: dict[str, str]) -> Html:
    tr = ctx.tr
    rows = [
        html(
            '<tr class="overdue"><td><a href="/devices/{d}">{d}</a></td><td>{c}</td>'
            "<td>{s}</td><td>{who}</td><td>{age}</td></tr>",
            d=t.device_id,
            c=labels.get(t.commune_code, t.commune_code),
            s=ticket_state(tr, t),
            who=t.contractor or "—",
            age=tr.duration(ctx.now - t.last_progress_at),
        )
        for t in late
    ]
    return table(
        [tr("cluster"), tr("commune"), tr("status"), tr("contractor"), tr("age")],
        rows,
        empty=tr("none"),
    )


# -- overview ----------------------------------------------------------------------------------


async def overview(request: web.Request) -> web.Response:
    require(request, Permission.READ)
    ctx = Ctx.of(request)
    tr, repo, allowed = ctx.tr, request.app[REPO], scope(request)
    rows = await repo.list_devices(communes=allowed, limit=10**7)
    s = summarize(rows)
    labels = await _labels(request, ctx.lang)
    stats = views.commune_stats(labels, rows, allowed)
    causes = [(c.label(ctx.lang), int(s["by_cause"][c.value])) for c in B2Cause]
    ends = views.month_ends(dt.datetime.fromtimestamp(ctx.now, ctx.tz))
    months = await views.trend(repo, ends, allowed)
    tickets = await repo.list_tickets(communes=allowed, states=views.ACTIVE_STATES, limit=100000)
    late = repairs.overdue(
        tickets, now=ctx.now, after_s=request.app[CONFIG].repairs.overdue_after_s
    )
    commune_rows = [
        html(
            '<tr><td data-sort="{label}"><a href="/communes/{code}">{label}</a></td>'
            "<td>{total}</td><td>{w}</td><td>{b}</td><td>{ir}</td><td>{nr}</td>"
            '<td data-sort="{ratio_raw}"><span class="ratio">{ratio}</span></td></tr>',
            code=st.code,
            label=st.label,
            total=st.total,
            w=st.working,
            b=st.broken,
            ir=st.in_repair,
            nr=st.not_repaired,
            ratio_raw=f"{st.ratio:.4f}",
            ratio=tr.percent(st.working, st.total),
        )
        for st in stats
    ]
    worst = views.worst_communes(stats)
    worst_html = (
        html(
            '<ol class="worst">{items}</ol>',
            items=join(
                html(
                    '<li><a href="/communes/{c}">{label}</a>: {b}/{t} {broken} ({r})</li>',
                    c=w.code,
                    label=w.label,
                    b=w.broken,
                    t=w.total,
                    broken=tr("broken").lower(),
                    r=tr.percent(w.working, w.total),
                )
                for w in worst
            ),
        )
        if worst
        else html('<p class="empty">{n}</p>', n=tr("none"))
    )
    body = html(
        """{headline}
<div class="grid2">
<section id="causes" data-live-region><h2>{by_cause}</h2>{cause_chart}</section>
<section id="worst" data-live-region><h2>{worst_t}</h2>{worst}</section>
</div>
<section id="communes" data-live-region><h2>{per_commune}</h2>{communes}</section>
<section id="trend" data-live-region><h2>{trend_t}</h2><p class="note">{trend_note}</p>
<div class="scroll chart-box">{trend}</div></section>
<section id="overdue" data-live-region><h2>{overdue_t}</h2>{overdue}</section>""",
        headline=headline(tr, s),
        by_cause=tr("by_cause"),
        cause_chart=cause_table(tr, causes),
        worst_t=tr("worst"),
        worst=worst_html,
        per_commune=tr("per_commune"),
        communes=table(
            [
                tr("commune"),
                tr("total_clusters"),
                tr("working"),
                tr("broken"),
                tr("in_repair"),
                tr("not_repaired"),
                tr("working_ratio"),
            ],
            commune_rows,
            css="sortable",
        ),
        trend_t=tr("trend"),
        trend_note=tr("trend_note"),
        trend=charts.trend_bars(months, title=tr("trend"), labels=(tr("working"), tr("broken"))),
        overdue_t=tr("overdue"),
        overdue=_overdue_table(ctx, late, labels),
    )
    return page(ctx, title=tr("overview"), body=body, active="overview")


# -- commune -----------------------------------------------------------------------------------


async def commune(request: web.Request) -> web.Response:
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
    body_rows = []
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
        inv = d.inventory
        body_rows.append(
            html(
                '<tr class="{css}"><td><a href="/devices/{id}">{id}</a></td><td>{addr}</td>'
                "<td>{status}</td><td>{link}</td><td>{cause}</td><td>{broken_for}</td>"
                '<td>{repair}</td><td class="sig {grade}">{signal}</td><td>{seen}</td></tr>',
                css="row-bad" if d.status is Status.BROKEN else "",
                id=d.device_id,
                addr=inv.address if inv and inv.address else "—",
                status=status_badge(tr, d),
                link=link_badge(tr, d.online, d.never_reported),
                cause=cause_label(tr, d.cause),
                broken_for=broken_for,
                repair=ticket_state(tr, tickets.get(d.device_id)),
                grade=grade,
                signal=signal,
                seen=ctx.when(d.last_seen),
            )
        )
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
    map_html = (
        charts.position_map(points, title=tr("map"))
        if points
        else html('<p class="empty">{t}</p>', t=tr("no_coordinates"))
    )
    title = labels.get(code, code)
    body = html(
        """{headline}
<section id="clusters" data-live-region><h2>{clusters_t}</h2>{clusters}</section>
<section id="map" data-live-region><h2>{map_t}</h2>{map}</section>""",
        headline=headline(tr, summarize(rows)),
        clusters_t=tr("clusters"),
        clusters=table(
            [
                tr("device_id"),
                tr("address"),
                tr("status"),
                tr("online"),
                tr("cause"),
                tr("broken_for"),
                tr("repair_state"),
                tr("signal"),
                tr("last_seen"),
            ],
            body_rows,
            css="sortable",
        ),
        map_t=tr("map"),
        map=map_html,
    )
    return page(ctx, title=title, body=body, active="overview")


# -- cluster (device) --------------------------------------------------------------------------


def _form(action: str, title: str, fields: Html, button: str, *, danger: bool = False) -> Html:
    return html(
        '<form class="api-form" data-api="{action}"><h3>{title}</h3>{fields}'
        '<p class="form-error" role="alert" hidden></p>'
        '<button type="submit" class="{css}">{button}</button></form>',
        action=action,
        title=title,
        fields=fields,
        css="danger" if danger else "primary",
        button=button,
    )


def _field(name: str, label: str, *, value: str = "", required: bool = False) -> Html:
    return html(
        '<label>{label}<input name="{name}" value="{value}" maxlength="200"{req}></label>',
        label=label,
        name=name,
        value=value,
        req=attrs(required=required),
    )


def _note(label: str, *, required: bool = False) -> Html:
    return html(
        '<label>{label}<textarea name="note" rows="2" maxlength="2000"{req}></textarea></label>',
        label=label,
        req=attrs(required=required),
    )


def _actions(ctx: Ctx, d: DeviceRow, active: Ticket | None) -> Html:
    tr, p = ctx.tr, ctx.principal
    forms: list[Html] = []
    if active is None:
        if p.may(Permission.REPAIR_OPEN):
            forms.append(
                _form(
                    "/api/v1/repairs",
                    tr("open_repair"),
                    join(
                        [
                            html(
                                '<input type="hidden" name="device_id" value="{d}">',
                                d=d.device_id,
                            ),
                            _note(tr("note")),
                        ]
                    ),
                    tr("open_repair"),
                )
            )
    else:
        base = f"/api/v1/repairs/{active.id}"
        contractor = d.inventory.contractor if d.inventory else ""
        if p.may(Permission.REPAIR_WORK) and active.state.value == "open":
            forms.append(
                _form(
                    base + "/start",
                    tr("start_repair"),
                    join(
                        [
                            _field("contractor", tr("contractor"), value=contractor, required=True),
                            _field("technician", tr("technician")),
                            _note(tr("note")),
                        ]
                    ),
                    tr("start_repair"),
                )
            )
        if p.may(Permission.REPAIR_WORK):
            forms.append(
                _form(
                    base + "/comment",
                    tr("add_note"),
                    _note(tr("note"), required=True),
                    tr("add_note"),
                )
            )
        if p.may(Permission.REPAIR_CANCEL):
            forms.append(
                _form(
                    base + "/cancel",
                    tr("cancel_repair"),
                    _note(tr("note"), required=True),
                    tr("cancel_repair"),
                    danger=True,
                )
            )
    if not forms:
        return Html("")
    return html(
        '<section id="actions" data-live-region><h2>{t}</h2><div class="forms">{f}</div></section>',
        t=tr("actions"),
        f=join(forms),
    )


def _report_facts(tr: Tr, report: dict[str, Any] | None) -> Html:
    if not report:
        return Html("")
    modem = report.get("modem") or {}
    amp = report.get("amp") or {}
    stream = report.get("stream") or {}
    facts: list[tuple[str, object]] = []
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
    return join(html("<dt>{k}</dt><dd>{v}</dd>", k=k, v=v) for k, v in facts)


async def device(request: web.Request) -> web.Response:
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
    range_key = request.query.get("range", "24h")
    if range_key not in RANGES:
        range_key = "24h"
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

    faults_html = (
        table(
            [tr("active_faults"), tr("severity"), tr("cause"), tr("since"), tr("evidence")],
            [
                html(
                    '<tr class="{css}"><td>{title} <code>{code}</code></td><td>{sev}</td>'
                    "<td>{cause}</td><td>{since}</td><td>{ev}</td></tr>",
                    css="row-bad" if f.severity == "critical" else "",
                    title=fault_title(tr, f.code),
                    code=f.code,
                    sev=tr(f.severity) if f.severity in ("critical", "warning") else f.severity,
                    cause=B2Cause(f.cause).label(ctx.lang)
                    if f.cause in B2Cause.__members__.values()
                    else f.cause,
                    since=ctx.when(f.since),
                    ev=f.evidence or "—",
                )
                for f in active_faults
            ],
        )
        if active_faults
        else html('<p class="empty ok-text">{t}</p>', t=tr("no_faults"))
    )
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
    tabs = join(
        html(
            '<a href="?range={k}"{a}>{label}</a>',
            k=k,
            a=attrs(aria_current="true" if k == range_key else None),
            label=tr(f"range_{k}"),
        )
        for k in RANGES
    )
    timeline = table(
        [tr("fault_timeline"), tr("cause"), tr("since"), tr("cleared"), tr("age")],
        [
            html(
                "<tr><td>{title} <code>{code}</code></td><td>{cause}</td><td>{since}</td>"
                "<td>{cleared}</td><td>{dur}</td></tr>",
                title=fault_title(tr, f.code),
                code=f.code,
                cause=B2Cause(f.cause).label(ctx.lang)
                if f.cause in B2Cause.__members__.values()
                else f.cause,
                since=ctx.when(f.since),
                cleared=ctx.when(f.cleared_at) if f.cleared_at else tr("still_active"),
                dur=tr.duration((f.cleared_at or ctx.now) - f.since),
            )
            for f in all_faults
        ],
        empty=tr("none"),
    )
    repair_html = join(
        html(
            '<article class="ticket"><h3>{ticket} #{id}: {state}</h3>'
            "<p>{opened} {at} ({by}){contractor}</p><ol>{history}</ol></article>",
            ticket=tr("ticket"),
            id=t.id,
            state=ticket_state(tr, t),
            opened=tr("opened"),
            at=ctx.when(t.opened_at),
            by=t.opened_by,
            contractor=html(" · {c}: {n}", c=tr("contractor"), n=t.contractor)
            if t.contractor
            else Html(""),
            history=join(
                html(
                    "<li>{at} · {actor} · {action}{note}</li>",
                    at=ctx.when(h.at),
                    actor=h.actor,
                    action=action_label(tr, h.action),
                    note=html(": {n}", n=h.note) if h.note else Html(""),
                )
                for h in t.history
            ),
        )
        for t in tickets
    ) or html('<p class="empty">{t}</p>', t=tr("none"))
    commune_name = labels.get(d.commune_code, d.commune_code)
    body = html(
        """<p class="crumbs"><a href="/communes/{code}">{commune}</a></p>
<section id="status" data-live-region class="status-panel">
<div class="status-main">{badge} {link} <span class="cause">{cause}</span></div>
<dl class="facts"><dt>{since_t}</dt><dd>{since}</dd><dt>{seen_t}</dt><dd>{seen}</dd>
<dt>{repair_t}</dt><dd>{repair}</dd>{facts}</dl>
<h2>{faults_t}</h2>{faults}
</section>
{actions}
{remote}
<section id="charts" data-live-region><h2>{charts_t}</h2><nav class="tabs">{tabs}</nav>
<h3>{signal_t}</h3><div class="scroll chart-box">{signal}</div>
<h3>{temp_t}</h3><div class="scroll chart-box">{temp}</div>
<h3>{online_t}</h3><div class="scroll chart-box">{band}</div></section>
<section id="timeline" data-live-region><h2>{timeline_t}</h2>{timeline}</section>
<section id="repairs" data-live-region><h2>{repairs_t}</h2>{repairs}</section>""",
        code=d.commune_code,
        commune=commune_name,
        badge=status_badge(tr, d),
        link=link_badge(tr, d.online, d.never_reported),
        cause=cause_label(tr, d.cause) if d.status is Status.BROKEN else "",
        since_t=tr("since"),
        since=ctx.when(d.since),
        seen_t=tr("last_seen"),
        seen=ctx.when(d.last_seen),
        repair_t=tr("repair_state"),
        repair=ticket_state(tr, active) if active else tr("no_ticket"),
        facts=_report_facts(tr, d.last_report),
        faults_t=tr("active_faults"),
        faults=faults_html,
        actions=_actions(ctx, d, active),
        remote=remote_panel(ctx, d),
        charts_t=tr("charts"),
        tabs=tabs,
        signal_t=tr("signal_chart"),
        signal=signal_chart,
        temp_t=tr("temp_chart"),
        temp=temp_chart,
        online_t=tr("online_chart"),
        band=band,
        timeline_t=tr("fault_timeline"),
        timeline=timeline,
        repairs_t=tr("repair_history"),
        repairs=repair_html,
    )
    return page(ctx, title=f"{tr('cluster')} {device_id}", body=body, active="overview")


# -- B2 ----------------------------------------------------------------------------------------


async def b2(request: web.Request) -> web.Response:
    require(request, Permission.READ)
    ctx = Ctx.of(request)
    tr = ctx.tr
    settings = settings_of(request)
    raw = (request.query.get("as_of") or "").strip()
    try:
        as_of = parse_as_of(raw, ctx.tz) if raw else dt.datetime.fromtimestamp(ctx.now, ctx.tz)
    except AsOfError as exc:
        raise bad("as_of", str(exc)) from None
    scope_raw = request.query.get("scope", "commune")
    if scope_raw not in {s.value for s in Scope}:
        raise bad("scope", "must be one of " + ", ".join(s.value for s in Scope))
    table_ = await b2_table(
        request.app[REPO],
        as_of=as_of,
        settings=settings,
        scope=Scope(scope_raw),
        lang=ctx.lang,
        communes=ctx.principal.communes,
    )
    top: list[Html] = []
    bottom: list[Html] = []
    for group, subs in column_groups(ctx.lang):
        if subs:
            top.append(html('<th colspan="{n}" scope="colgroup">{g}</th>', n=len(subs), g=group))
            bottom.extend(html('<th scope="col">{s}</th>', s=s) for s in subs)
        else:
            top.append(html('<th rowspan="2" scope="col">{g}</th>', g=group))
    rows = join(
        html(
            "<tr{css}>{cells}</tr>",
            css=attrs(class_="total" if row.stt is None else None),
            cells=join(
                html('<td class="{c}">{v}</td>', c="text" if isinstance(v, str) else "n", v=v)
                for v in row.cells()
            ),
        )
        for row in table_.all_rows()
    )
    day = table_.day.isoformat()
    query = f"as_of={day}&scope={scope_raw}&lang={ctx.lang}"
    downloads = join(
        html(
            '<a class="button" href="/api/v1/reports/b2?{q}&amp;format={f}" download'
            ' data-format="{f}">{d} {F}</a>',
            q=Html(esc(query)),
            f=f,
            F=f.upper(),
            d=tr("download"),
        )
        for f in ("xlsx", "csv", "json")
    )
    scopes = join(
        html(
            '<option value="{v}"{sel}>{label}</option>',
            v=s.value,
            sel=attrs(selected=s.value == scope_raw),
            label=tr(f"scope_{s.value}"),
        )
        for s in Scope
    )
    body = html(
        """<form class="filters" method="get" action="/b2">
<label>{as_of_t}<input type="date" name="as_of" value="{day}" required></label>
<label>{scope_t}<select name="scope">{scopes}</select></label>
<button type="submit" class="primary">{show}</button>
</form>
<p class="b2-title"><strong>{title}</strong><br>{unit} · {as_of_t} {day_vn}</p>
<div class="scroll"><table class="b2"><thead><tr>{top}</tr><tr>{bottom}</tr></thead>
<tbody>{rows}</tbody></table></div>
<section class="summary"><h2>{summary_t}</h2>
<p id="b2-summary">{summary}</p>
<button type="button" data-copy="#b2-summary" data-done="{copied}">{copy}</button></section>
<section class="downloads">{downloads}</section>""",
        as_of_t=tr("as_of_date"),
        day=day,
        day_vn=table_.day.strftime("%d/%m/%Y"),
        scope_t=tr("scope"),
        scopes=scopes,
        show=tr("show"),
        title=column_title(ctx.lang),
        unit=table_.unit_name,
        top=join(top),
        bottom=join(bottom),
        rows=rows,
        summary_t=tr("summary_sentence"),
        summary=table_.summary,
        copied=tr("copied"),
        copy=tr("copy"),
        downloads=downloads,
    )
    return page(ctx, title=tr("b2"), body=body, active="b2")


def column_title(lang: str) -> str:
    return b2_text("title", lang)


# -- repairs -----------------------------------------------------------------------------------


async def repairs_page(request: web.Request) -> web.Response:
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
    want_commune = request.query.get("commune", "")
    want_contractor = request.query.get("contractor", "")
    try:
        min_days = float(request.query.get("min_age_days") or 0)
    except ValueError:
        raise bad("min_age_days", "expected a number of days") from None
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

    def options(values: list[str], chosen: str, label_of: dict[str, str]) -> Html:
        return join(
            [
                html('<option value="">{a}</option>', a=tr("all")),
                *(
                    html(
                        '<option value="{v}"{s}>{label}</option>',
                        v=v,
                        s=attrs(selected=v == chosen),
                        label=label_of.get(v, v),
                    )
                    for v in values
                ),
            ]
        )

    rows = [
        html(
            '<tr class="{css}"><td>#{id}</td><td><a href="/devices/{d}">{d}</a></td>'
            "<td>{c}</td><td>{state}{flag}</td><td>{cause}</td><td>{opened}</td>"
            "<td>{age}</td><td>{contractor}</td><td>{tech}</td></tr>",
            css="overdue" if t.id in late else "",
            id=t.id,
            d=t.device_id,
            c=labels.get(t.commune_code, t.commune_code),
            state=ticket_state(tr, t),
            flag=html(' <span class="badge bad">{o}</span>', o=tr("is_overdue"))
            if t.id in late
            else Html(""),
            cause=cause_label(tr, t.cause),
            opened=ctx.when(t.opened_at),
            age=tr.duration(ctx.now - t.opened_at),
            contractor=t.contractor or "—",
            tech=t.technician or "—",
        )
        for t in shown
    ]
    body = html(
        """<form class="filters" method="get" action="/repairs">
<label>{commune_t}<select name="commune">{communes}</select></label>
<label>{contractor_t}<select name="contractor">{contractors}</select></label>
<label>{age_t}<input type="number" name="min_age_days" min="0" step="1" value="{min_days}"></label>
<button type="submit" class="primary">{filter}</button>
</form>
<section id="tickets" data-live-region>{table}</section>""",
        commune_t=tr("commune"),
        communes=options(communes, want_commune, labels),
        contractor_t=tr("contractor"),
        contractors=options(contractors, want_contractor, {}),
        age_t=tr("min_age_days"),
        min_days=f"{min_days:g}" if min_days else "",
        filter=tr("filter"),
        table=table(
            [
                tr("ticket"),
                tr("cluster"),
                tr("commune"),
                tr("status"),
                tr("cause"),
                tr("opened"),
                tr("age"),
                tr("contractor"),
                tr("technician"),
            ],
            rows,
            css="sortable",
            empty=tr("none"),
        ),
    )
    return page(ctx, title=tr("open_tickets"), body=body, active="repairs")


# -- users -------------------------------------------------------------------------------------


def _role_options(tr: Tr, chosen: Role | None) -> Html:
    return join(
        html(
            '<option value="{v}"{s}>{label}</option>',
            v=r.value,
            s=attrs(selected=r is chosen),
            label=tr(f"role_{r.value}"),
        )
        for r in Role
    )


def _commune_options(labels: dict[str, str], chosen: frozenset[str]) -> Html:
    return join(
        html(
            '<option value="{c}"{s}>{label}</option>',
            c=code,
            s=attrs(selected=code in chosen),
            label=label,
        )
        for code, label in labels.items()
    )


async def users_page(request: web.Request) -> web.Response:
    require(request, Permission.USERS_ADMIN)
    ctx = Ctx.of(request)
    tr, repo = ctx.tr, request.app[REPO]
    labels = await _labels(request, ctx.lang)
    rows = []
    for u in await repo.list_users():
        rows.append(
            html(
                '<tr><td>{name}<div class="note">{scope_text}</div></td><td colspan="4">'
                '<form class="api-form inline" data-api="/users/{quoted}">'
                '<select name="role" aria-label="{role_t}">{roles}</select>'
                '<select name="communes" multiple size="3" aria-label="{communes_t}">'
                "{communes}</select>"
                '<label class="check"><input type="checkbox" name="disabled"{dis}> {dis_t}</label>'
                '<button type="submit">{save}</button>'
                '<p class="form-error" role="alert" hidden></p></form></td></tr>',
                name=u.name,
                quoted=quote(u.name, safe=""),
                scope_text=", ".join(labels.get(c, c) for c in sorted(u.communes))
                or tr("all_communes"),
                role_t=tr("role"),
                roles=_role_options(tr, u.role),
                communes_t=tr("communes"),
                communes=_commune_options(labels, u.communes),
                dis=attrs(checked=u.disabled),
                dis_t=tr("disabled"),
                save=tr("save"),
            )
        )
    body = html(
        """<section id="users-list"><div class="scroll"><table class="users"><thead><tr>
<th>{name_t}</th><th colspan="4">{role_t} · {communes_t} · {disabled_t}</th></tr></thead>
<tbody>{rows}</tbody></table></div></section>
<section><form class="api-form" data-api="/users" data-reload="1"><h2>{create_t}</h2>
<label>{name_t}<input name="name" required maxlength="128" autocomplete="off"></label>
<label>{password_t}<input name="password" type="password" required minlength="8"
 autocomplete="new-password"></label>
<label>{role_t}<select name="role">{roles}</select></label>
<label>{communes_t}<select name="communes" multiple size="5">{communes}</select></label>
<p class="note">{hint}</p>
<p class="form-error" role="alert" hidden></p>
<button type="submit" class="primary">{create}</button></form></section>""",
        name_t=tr("username"),
        role_t=tr("role"),
        communes_t=tr("communes"),
        disabled_t=tr("disabled"),
        rows=join(rows),
        create_t=tr("create_user"),
        password_t=tr("password"),
        roles=_role_options(tr, Role.COMMUNE_OFFICER),
        communes=_commune_options(labels, frozenset()),
        hint=tr("communes_hint"),
        create=tr("create"),
    )
    return page(ctx, title=tr("users_title"), body=body, active="users")


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
    unknown = sorted(communes - known)
    if unknown:
        raise bad("communes", f"unknown commune {unknown[0][:64]!r}")
    if role is Role.COMMUNE_OFFICER and not communes:
        raise bad("communes", "a commune officer needs at least one commune")
    if role in (Role.ADMIN, Role.DISTRICT_VIEWER) and communes:
        raise bad("communes", f"do not apply to role {role}")
    return role, communes


async def users_create(request: web.Request) -> web.Response:
    principal = require(request, Permission.USERS_ADMIN)
    data = await body(request)
    name = text(data, "name", required=True, max_len=128)
    if not name.isprintable():
        raise bad("name", "must be printable characters")
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


def safe_next(raw: str | None) -> str:
    """A local path to go to after login; anything else (other hosts, schemes) is "/"."""
    if not raw or not raw.startswith("/") or raw.startswith("//") or "\\" in raw:
        return "/"
    return raw[:500]


async def login_page(request: web.Request) -> web.Response:
    tr = Tr(pick_lang(request))
    body_html = html(
        """<form class="login-form" id="login-form" data-next="{next}">
<label>{user_t}<input name="name" required autocomplete="username" autofocus></label>
<label>{pw_t}<input name="password" type="password" required autocomplete="current-password">
</label>
<p class="form-error" role="alert" hidden data-failed="{failed}"></p>
<button type="submit" class="primary">{login}</button>
</form>""",
        next=safe_next(request.query.get("next")),
        user_t=tr("username"),
        pw_t=tr("password"),
        failed=tr("login_failed"),
        login=tr("login"),
    )
    return bare_page(request, title=tr("login_title"), body=body_html)


async def live(request: web.Request) -> web.Response:
    """A fingerprint of what the pages show; the pages poll it and refresh on change."""
    require(request, Permission.READ)
    repo = request.app[REPO]
    allowed = scope(request)
    rows = await repo.list_devices(communes=allowed, limit=10**7)
    tickets = await repo.list_tickets(communes=allowed, states=views.ACTIVE_STATES, limit=100000)
    newest = await repo.list_events(communes=allowed, limit=1)
    s = summarize(rows)
    return web.json_response(
        {"fp": views.fingerprint(rows, tickets, newest[0] if newest else None), "summary": s}
    )


def error_page(request: web.Request, status: int, message: str) -> web.Response:
    tr = Tr(pick_lang(request))
    key = {403: "forbidden", 404: "not_found"}.get(status, "error")
    body_html = html(
        '<p class="error-text">{m}</p><p><a href="/">{home}</a></p>', m=message, home=tr("overview")
    )
    return bare_page(request, title=f"{status} · {tr(key)}", body=body_html, status=status)
