"""Handlers of the collector's REST API ``/api/v1``: JSON in, JSON out.

The route table ``collector.routes.ROUTES`` registers them with the Structs
(``collector.schemas``) their parameters and bodies are decoded by and their
answers encoded through; a handler receives the decoded ``(params, body)``.
Every 4xx is ``{"error": "FIELD: reason", "field": FIELD}``; store errors map
to 404/409 (a 409 names the ticket in the way) and 503. Scope rules
(``collector.auth``) are applied in every handler that touches a commune.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web

from collector import auth, findings, metrics, repairs, schemas
from collector.auth import PRINCIPAL, Permission, Principal, require
from collector.keys import CONFIG, METRIC_SOURCES, REPO, STATS
from collector.model import DeviceStatus, Status
from collector.params import ApiError, bad, json_object, optional_time
from collector.store.base import (
    Conflict,
    DeviceRow,
    NotFound,
    StoreError,
    Ticket,
    TicketState,
)
from fleet_protocol import B2Cause

log = logging.getLogger("loa.collector.api")


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Project errors become JSON 4xx naming a field; anything else is a logged 500."""
    try:
        return await handler(request)
    except NotFound as exc:
        return _json({"error": f"$: {exc}", "field": "$"}, status=404)
    except Conflict as exc:
        field = "ticket_id" if exc.ticket_id is not None else "$"
        return _json(
            {"error": f"{field}: {exc}", "field": field, "ticket_id": exc.ticket_id}, status=409
        )
    except StoreError as exc:
        request.app.logger.error("store error on %s %s: %s", request.method, request.path, exc)
        return _json({"error": "$: storage unavailable", "field": "$"}, status=503)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda o: json.dumps(o, ensure_ascii=False))


async def body(request: web.Request) -> dict[str, Any]:
    """A JSON object body (size, type and nesting checked) for handlers without a Struct."""
    return await json_object(request)


def text(data: dict[str, Any], name: str, *, required: bool = False, max_len: int = 2000) -> str:
    """A string field of a plain JSON object (dashboard forms without a Struct)."""
    value = data.get(name)
    if value is None:
        if required:
            raise bad(name, "is required")
        return ""
    if not isinstance(value, str):
        raise bad(name, "expected a string")
    value = value.strip()
    if required and not value:
        raise bad(name, "must not be empty")
    if len(value) > max_len:
        raise bad(name, f"longer than {max_len} characters")
    if any(ord(c) < 32 and c not in "\n\t" for c in value):
        raise bad(name, "contains control characters")
    return value


def tz_of(request: web.Request) -> dt.tzinfo:
    """The configured ``[report]`` time zone: dates in parameters are days there."""
    return request.app[CONFIG].report.tz()


def scope(request: web.Request) -> frozenset[str] | None:
    principal: Principal = request[PRINCIPAL]
    return principal.communes


def scoped_communes(request: web.Request, wanted: str | None) -> frozenset[str] | None:
    """The caller's scope narrowed by an optional ``commune`` parameter."""
    allowed = scope(request)
    if wanted is None:
        return allowed
    if allowed is not None and wanted not in allowed:
        return frozenset()
    return frozenset({wanted})


# -- views ---------------------------------------------------------------------------------


def device_json(d: DeviceRow) -> dict[str, Any]:
    inv = d.inventory
    return {
        "device_id": d.device_id,
        "commune_code": d.commune_code,
        "commune_name": inv.commune_name if inv else None,
        "address": inv.address if inv else None,
        "in_inventory": d.in_inventory,
        "status": d.status.value,
        "cause": d.cause.value if d.cause else None,
        "cause_label": d.cause.label() if d.cause else None,
        "in_repair": d.in_repair,
        "online": d.online,
        "never_reported": d.never_reported,
        "since": d.since,
        "last_seen": d.last_seen,
        "last_ts": d.last_ts,
    }


def ticket_json(t: Ticket) -> dict[str, Any]:
    return {
        "id": t.id,
        "device_id": t.device_id,
        "commune_code": t.commune_code,
        "state": t.state.value,
        "cause": t.cause.value if t.cause else None,
        "opened_at": t.opened_at,
        "opened_by": t.opened_by,
        "contractor": t.contractor,
        "technician": t.technician,
        "started_at": t.started_at,
        "closed_at": t.closed_at,
        "last_progress_at": t.last_progress_at,
        "note": t.note,
        "history": [
            {"at": h.at, "actor": h.actor, "action": h.action, "note": h.note} for h in t.history
        ],
    }


def summarize(statuses: list[DeviceStatus] | list[DeviceRow]) -> dict[str, Any]:
    by_cause: Counter[str] = Counter()
    out = {"total": 0, "working": 0, "broken": 0, "in_repair": 0, "not_repaired": 0}
    out["never_reported"] = out["online"] = 0
    for s in statuses:
        out["total"] += 1
        out["never_reported"] += int(s.never_reported)
        out["online"] += int(s.online)
        if s.status is Status.WORKING:
            out["working"] += 1
            continue
        out["broken"] += 1
        out["in_repair" if s.in_repair else "not_repaired"] += 1
        by_cause[(s.cause or B2Cause.UNKNOWN).value] += 1
    return {**out, "by_cause": {c.value: by_cause[c.value] for c in B2Cause}}


def summarize_tally(rows: Iterable[tuple[Any, ...]]) -> dict[str, Any]:
    """``summarize`` from the store's kept counts (``fleet_tally``): the same
    figures without reading every cluster."""
    by_cause: Counter[str] = Counter()
    out = {"total": 0, "working": 0, "broken": 0, "in_repair": 0, "not_repaired": 0}
    out["never_reported"] = out["online"] = 0
    for _commune, status, cause, in_repair, online, never_reported, n in rows:
        out["total"] += n
        out["never_reported"] += n if never_reported else 0
        out["online"] += n if online else 0
        if status == Status.WORKING:
            out["working"] += n
            continue
        out["broken"] += n
        out["in_repair" if in_repair else "not_repaired"] += n
        by_cause[cause or B2Cause.UNKNOWN.value] += n
    return {**out, "by_cause": {c.value: by_cause[c.value] for c in B2Cause}}


# -- handlers ------------------------------------------------------------------------------
# Each takes (request, parameters, body) as declared by its route in collector.routes and
# returns JSON-ready data (encoded through the route's response Struct) or a response.


async def healthz(request: web.Request, p: None, b: None) -> web.Response:
    stats = request.app[STATS]
    try:
        await request.app[REPO].schema_version()
        db_ok = True
    except StoreError:
        db_ok = False
    ingest = request.app[CONFIG].ingest_enabled
    ok = db_ok and (not ingest or (stats.connected and stats.task_running))
    body = {
        "ok": ok,
        "db": db_ok,
        "broker_connected": stats.connected,
        "ingest": {
            "enabled": ingest,
            "running": stats.task_running,
            "restarts": stats.task_restarts,
            "last_error": stats.task_last_error,
        },
    }
    return _json(body, status=200 if ok else 503)


async def metrics_view(request: web.Request, p: None, b: None) -> web.Response:
    """Fleet-wide counts: an admin, or the configured metrics token (a scraper)."""
    token = request.app[CONFIG].http.metrics_token()
    sent = request.headers.get("Authorization", "")
    if not (
        token
        and sent.lower().startswith("bearer ")
        and hmac.compare_digest(sent[7:].strip().encode(), token.encode())
    ):
        principal = await auth.authenticate(request, request.app[REPO])
        if principal is None:
            raise auth.unauthorized()
        request[PRINCIPAL] = principal
        require(request, Permission.METRICS)
    rows = await request.app[REPO].list_devices(limit=10**7)
    counts: Counter[tuple[str, str]] = Counter(
        (d.status.value, d.cause.value if d.cause else "") for d in rows
    )
    text_out = metrics.render(
        request.app[STATS], ((s, c, n) for (s, c), n in sorted(counts.items()))
    )
    for source in request.app.get(METRIC_SOURCES, []):
        text_out += await source()
    return web.Response(text=text_out, content_type="text/plain", charset="utf-8")


async def login_view(request: web.Request, p: None, b: schemas.LoginBody) -> web.Response:
    cfg = request.app[CONFIG]
    address = auth.client_address(request, cfg.http.proxy_networks())
    result = await auth.throttled_login(
        request.app[REPO],
        b.name,
        b.password,
        address=address,
        cfg=cfg.login,
        ttl_s=cfg.http.session_ttl_s,
    )
    if isinstance(result, float):
        raise ApiError(
            429,
            "name",
            f"too many failed logins; try again in {int(result) + 1} s",
            headers={"Retry-After": str(int(result) + 1)},
        )
    if result is None:
        raise ApiError(401, "password", "wrong name or password")
    user, session_id, csrf = result
    resp = _json({"name": user.name, "role": user.role.value, "csrf_token": csrf})
    resp.set_cookie(
        auth.SESSION_COOKIE,
        session_id,
        httponly=True,
        samesite="Strict",
        secure=cfg.http.secure_cookies,
        max_age=int(cfg.http.session_ttl_s),
        path="/",
    )
    return resp


async def logout_view(request: web.Request, p: None, b: None) -> web.Response:
    cookie = request.cookies.get(auth.SESSION_COOKIE)
    if cookie:
        await request.app[REPO].drop_session(auth.secret_hash(cookie))
    resp = _json({"ok": True})
    resp.del_cookie(auth.SESSION_COOKIE, path="/")
    return resp


async def me_view(request: web.Request, p: None, b: None) -> dict[str, Any]:
    principal: Principal = request[PRINCIPAL]
    communes = principal.communes
    return {
        "name": principal.name,
        "role": principal.user.role.value,
        "communes": None if communes is None else sorted(communes),
        "via": principal.via,
        "csrf_token": principal.csrf_token,
        "permissions": sorted(x.value for x in Permission if principal.may(x)),
    }


async def unlock_view(request: web.Request, p: schemas.UserParams, b: None) -> dict[str, Any]:
    """Clear a user's login delays at once (an admin helping a locked-out officer)."""
    principal = require(request, Permission.USERS_ADMIN)
    repo = request.app[REPO]
    try:
        await repo.get_user(p.name)
    except NotFound:
        raise auth.not_found("name") from None
    cleared = await repo.throttle_unlock(p.name, actor=principal.name)
    log.info("login delays of %s cleared by %s (%d keys)", p.name, principal.name, cleared)
    return {"name": p.name, "cleared": cleared}


async def summary_view(request: web.Request, p: schemas.SummaryParams, b: None) -> dict[str, Any]:
    require(request, Permission.READ)
    at = optional_time(p.at, tz_of(request))
    communes = scoped_communes(request, p.commune)
    repo = request.app[REPO]
    if at is None:  # now: the counts kept as the fleet changes
        tally, _version = await repo.fleet_tally(communes)
        return {"at": time.time(), **summarize_tally(tally)}
    rows = [
        s for s in await repo.statuses_as_of(at) if communes is None or s.commune_code in communes
    ]
    return {"at": at, **summarize(rows)}


async def communes_view(request: web.Request, p: None, b: None) -> dict[str, Any]:
    require(request, Permission.READ)
    repo = request.app[REPO]
    allowed = scope(request)
    names: dict[str, tuple[str, str]] = {}
    for d in await repo.list_inventory():
        if allowed is None or d.commune_code in allowed:
            names.setdefault(d.commune_code, (d.commune_name, d.commune_kind.value))
    groups: dict[str, list[tuple[Any, ...]]] = {}
    for row in (await repo.fleet_tally(allowed, each=True))[0]:
        groups.setdefault(row[0], []).append(row)
    out = []
    for code in [*names, *(c for c in groups if c not in names)]:
        rows = groups.get(code, [])
        name, kind = names.get(code, (code, ""))
        out.append({"code": code, "name": name, "kind": kind, **summarize_tally(rows)})
    return {"communes": out}


async def devices_view(request: web.Request, p: schemas.DevicesParams, b: None) -> dict[str, Any]:
    require(request, Permission.READ)
    rows = await request.app[REPO].list_devices(
        communes=scoped_communes(request, p.commune),
        status=p.status,
        cause=p.cause,
        limit=p.limit,
        offset=p.offset,
    )
    return {"devices": [device_json(d) for d in rows]}


async def device_in_scope(
    request: web.Request, device_id: str, permission: Permission
) -> DeviceRow:
    """The device, if the caller may ``permission`` on its commune; else the same 404
    whether it exists elsewhere or not at all."""
    try:
        device = await request.app[REPO].get_device(device_id)
    except NotFound:
        raise auth.not_found("device_id") from None
    require(request, permission, device.commune_code, field="device_id")
    return device


async def device_view(request: web.Request, p: schemas.DeviceParams, b: None) -> dict[str, Any]:
    device = await device_in_scope(request, p.device_id, Permission.READ)
    repo = request.app[REPO]
    tz = tz_of(request)
    since, until = optional_time(p.since, tz), optional_time(p.until, tz)
    history = await repo.status_history(device.device_id, since=since, until=until)
    signal = await repo.signal_history(device.device_id, since=since, until=until, limit=p.limit)
    faults = await repo.list_faults(device.device_id)
    tickets = await repo.list_tickets(device_id=device.device_id, limit=50)
    return {
        **device_json(device),
        "last_report": device.last_report,
        "status_history": [
            {
                "ts": h.ts,
                "status": h.status.value,
                "cause": h.cause.value if h.cause else None,
                "online": h.state.online,
                "via": h.via.value if h.via else None,
            }
            for h in history
        ],
        "signal_history": [
            {
                "ts": s.ts,
                "rssi_dbm": s.rssi_dbm,
                "rsrp_dbm": s.rsrp_dbm,
                "rsrq_db": s.rsrq_db,
                "sinr_db": s.sinr_db,
                "csq": s.csq,
            }
            for s in signal
        ],
        "faults": [
            {
                "code": f.code,
                "severity": f.severity,
                "cause": f.cause,
                "since": f.since,
                "cleared_at": f.cleared_at,
                "evidence": f.evidence,
            }
            for f in faults
        ],
        "repairs": [ticket_json(t) for t in tickets],
    }


async def events_view(request: web.Request, p: schemas.EventsParams, b: None) -> dict[str, Any]:
    require(request, Permission.READ)
    tz = tz_of(request)
    rows = await request.app[REPO].list_events(
        communes=scoped_communes(request, p.commune),
        device_id=p.device,
        since=optional_time(p.since, tz),
        until=optional_time(p.until, tz),
        limit=p.limit,
    )
    return {
        "events": [
            {
                "device_id": e.device_id,
                "commune_code": e.commune_code,
                "seq": e.seq,
                "ts": e.ts,
                "type": e.type,
                "fault_code": e.fault_code,
                "action": e.action,
                "detail": e.detail,
            }
            for e in rows
        ]
    }


async def repairs_view(request: web.Request, p: schemas.RepairsParams, b: None) -> dict[str, Any]:
    require(request, Permission.READ)
    tickets = await request.app[REPO].list_tickets(
        communes=scoped_communes(request, p.commune),
        device_id=p.device,
        states=None if p.state is None else frozenset({p.state}),
        limit=p.limit,
    )
    return {"repairs": [ticket_json(t) for t in tickets]}


async def overdue_view(request: web.Request, p: schemas.OverdueParams, b: None) -> dict[str, Any]:
    require(request, Permission.READ)
    cfg = request.app[CONFIG]
    after_s = cfg.repairs.overdue_after_s if p.after_hours is None else p.after_hours * 3600.0
    tickets = await request.app[REPO].list_tickets(
        communes=scoped_communes(request, p.commune),
        states=frozenset({TicketState.OPEN, TicketState.IN_REPAIR}),
        limit=100000,
    )
    late = repairs.overdue(tickets, now=time.time(), after_s=after_s)
    return {"after_s": after_s, "repairs": [ticket_json(t) for t in late]}


async def repair_stats_view(
    request: web.Request, p: schemas.RepairStatsParams, b: None
) -> dict[str, Any]:
    require(request, Permission.READ)
    allowed = scope(request)
    if p.by == "contractor" and allowed is not None:
        raise auth.forbidden("statistics across communes need district-wide access", field="by")
    stats = await request.app[REPO].repair_stats(p.by)
    if allowed is not None:
        stats = [s for s in stats if s.key in allowed]
    return {
        "by": p.by,
        "stats": [
            {
                "key": s.key,
                "resolved": s.resolved,
                "mean_hours": s.mean_hours,
                "median_hours": s.median_hours,
                "max_hours": s.max_hours,
            }
            for s in stats
        ],
    }


#: How far ahead of the collector's clock a recorded ``at`` may be (clock skew).
AT_MAX_AHEAD_S = 60.0


def when(at: float | None, principal: Principal) -> float:
    """When a repair step happened: now, or the body's ``at`` (Unix seconds).

    ``at`` records work done earlier (a crew's paper log, the demo's simulated
    clock). It moves repair figures in the B2 report, so only a role with
    every permission (admin) may set it, and never into the future.
    """
    now = time.time()
    if at is None:
        return now
    if not principal.may(Permission.REPAIR_BACKDATE):
        raise ApiError(403, "at", "recording a past time needs the admin role")
    if at > now + AT_MAX_AHEAD_S:
        raise bad("at", "must not be in the future")
    return at


async def repair_create(request: web.Request, p: None, b: schemas.RepairOpenBody) -> dict[str, Any]:
    """Open a ticket; with ``contractor`` it is started in the same call (already assigned)."""
    principal = require(request, Permission.REPAIR_OPEN)
    if b.technician and not b.contractor:
        raise bad("contractor", "is required with technician")
    found = findings.finding_of(b.cause, b.finding)
    device = await device_in_scope(request, b.device_id, Permission.REPAIR_OPEN)
    if b.contractor:
        require(request, Permission.REPAIR_WORK, device.commune_code)
    ticket = await repairs.open_ticket(
        request.app[REPO],
        device.device_id,
        actor=principal.name,
        at=when(b.at, principal),
        note=b.note,
        contractor=b.contractor,
        technician=b.technician,
        start_note=b.start_note,
    )
    if found is not None:
        await findings.record(request, ticket, principal, found)
        ticket = await request.app[REPO].get_ticket(ticket.id)
    return ticket_json(ticket)


async def _ticket_in_scope(
    request: web.Request, ticket_id: int, permission: Permission
) -> tuple[Ticket, Principal]:
    try:
        ticket = await request.app[REPO].get_ticket(ticket_id)
    except NotFound:
        raise auth.not_found("ticket_id") from None
    return ticket, require(request, permission, ticket.commune_code, field="ticket_id")


async def repair_get(request: web.Request, p: schemas.TicketParams, b: None) -> dict[str, Any]:
    ticket, _ = await _ticket_in_scope(request, p.ticket_id, Permission.READ)
    return ticket_json(ticket)


async def repair_start(
    request: web.Request, p: schemas.TicketParams, b: schemas.RepairStartBody
) -> dict[str, Any]:
    ticket, principal = await _ticket_in_scope(request, p.ticket_id, Permission.REPAIR_WORK)
    found = findings.finding_of(b.cause, b.finding)
    updated = await request.app[REPO].start_ticket(
        ticket.id,
        actor=principal.name,
        at=when(b.at, principal),
        contractor=b.contractor,
        technician=b.technician,
        note=b.note,
    )
    if found is not None:
        await findings.record(request, updated, principal, found)
        updated = await request.app[REPO].get_ticket(ticket.id)
    return ticket_json(updated)


async def repair_comment(
    request: web.Request, p: schemas.TicketParams, b: schemas.NoteBody
) -> dict[str, Any]:
    ticket, principal = await _ticket_in_scope(request, p.ticket_id, Permission.REPAIR_WORK)
    updated = await request.app[REPO].comment_ticket(
        ticket.id, actor=principal.name, at=when(b.at, principal), note=b.note
    )
    return ticket_json(updated)


async def _close(
    request: web.Request,
    ticket_id: int,
    permission: Permission,
    state: TicketState,
    note: str,
    at: float | None,
) -> dict[str, Any]:
    ticket, principal = await _ticket_in_scope(request, ticket_id, permission)
    updated = await request.app[REPO].close_ticket(
        ticket.id, actor=principal.name, at=when(at, principal), state=state, note=note
    )
    return ticket_json(updated)


async def repair_cancel(
    request: web.Request, p: schemas.TicketParams, b: schemas.NoteBody
) -> dict[str, Any]:
    return await _close(
        request, p.ticket_id, Permission.REPAIR_CANCEL, TicketState.CANCELLED, b.note, b.at
    )


async def repair_resolve(
    request: web.Request, p: schemas.TicketParams, b: schemas.ResolveBody
) -> dict[str, Any]:
    """The repair is done: close the ticket as resolved (the technician's word),
    recording the cause found on site first when the body gives one."""
    found = findings.finding_of(b.cause, b.finding)
    if found is not None:
        ticket, principal = await _ticket_in_scope(request, p.ticket_id, Permission.REPAIR_WORK)
        if not ticket.state.active:
            raise ApiError(409, "ticket_id", f"ticket is {ticket.state.value}")
        await findings.record(request, ticket, principal, found)
    return await _close(
        request, p.ticket_id, Permission.REPAIR_WORK, TicketState.RESOLVED, b.note, b.at
    )


async def repair_finding(
    request: web.Request, p: schemas.TicketParams, b: schemas.FindingBody
) -> dict[str, Any]:
    """Record the cause found on site on an active ticket (``collector.findings``)."""
    ticket, principal = await _ticket_in_scope(request, p.ticket_id, Permission.REPAIR_WORK)
    if not ticket.state.active:
        raise ApiError(409, "ticket_id", f"ticket is {ticket.state.value}")
    await findings.record(request, ticket, principal, (b.cause, b.text.strip()))
    return ticket_json(await request.app[REPO].get_ticket(ticket.id))


async def device_cause_view(
    request: web.Request, p: schemas.DeviceIdParams, b: None
) -> dict[str, Any]:
    device = await device_in_scope(request, p.device_id, Permission.READ)
    return await findings.device_cause(request, device.device_id)


__all__ = ["ApiError", "bad", "body", "error_middleware", "summarize", "text"]
