"""REST API ``/api/v1`` of the collector: JSON in, JSON out.

Every handler validates its inputs and answers 4xx with ``{"error": ...,
"field": ...}`` naming the bad field; store errors map to 404/409. Scope rules
(``collector.auth``) are applied in every handler that touches a commune.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web

from collector import auth, metrics, repairs
from collector.auth import PRINCIPAL, Permission, Principal, require
from collector.b2.dates import AsOfError, parse_as_of
from collector.config import CollectorConfig
from collector.keys import CONFIG, REPO, STATS, THROTTLE
from collector.model import DeviceStatus, Status
from collector.openapi import openapi_document
from collector.store.base import (
    Conflict,
    DeviceRow,
    NotFound,
    StoreError,
    Ticket,
    TicketState,
)
from fleet_protocol import B2Cause, valid_device_id

MAX_TEXT = 2000


class ApiError(web.HTTPException):
    """A 4xx answer naming the offending field."""

    def __init__(self, status: int, field: str, message: str) -> None:
        self.status_code = status
        super().__init__(
            text=json.dumps({"error": f"{field}: {message}", "field": field}, ensure_ascii=False),
            content_type="application/json",
        )


def bad(field: str, message: str) -> ApiError:
    return ApiError(400, field, message)


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Project errors become JSON 4xx; anything else is a logged 500 without details."""
    try:
        return await handler(request)
    except NotFound as exc:
        return web.json_response({"error": str(exc)}, status=404)
    except Conflict as exc:
        return web.json_response({"error": str(exc)}, status=409)
    except StoreError as exc:
        request.app.logger.error("store error on %s %s: %s", request.method, request.path, exc)
        return web.json_response({"error": "storage unavailable"}, status=503)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda o: json.dumps(o, ensure_ascii=False))


# -- input parsing -------------------------------------------------------------------------


def q_time(request: web.Request, name: str) -> float | None:
    """A time query parameter: UNIX seconds, or what ``as_of`` takes everywhere.

    A date (``2023-07-31`` or ``31/7/2023``) means the end of that day and a
    naive date-time is local time, both in the configured ``[report]
    time_zone`` (``collector.b2.dates.parse_as_of``, as the B2 report and the
    pages read it).
    """
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        try:
            return parse_as_of(raw, request.app[CONFIG].report.tz()).timestamp()
        except AsOfError:
            raise bad(
                name,
                "expected UNIX seconds, a date (YYYY-MM-DD or dd/mm/yyyy) or an ISO 8601 date-time",
            ) from None
    if not math.isfinite(value) or not 0 <= value <= 4102444800:
        raise bad(name, "time out of range")
    return value


def q_int(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad(name, "expected an integer") from None
    if not lo <= value <= hi:
        raise bad(name, f"must be between {lo} and {hi}")
    return value


E = TypeVar("E", Status, B2Cause, TicketState)


def q_choice(request: web.Request, name: str, enum_cls: type[E]) -> E | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        return enum_cls(raw)
    except ValueError:
        choices = ", ".join(e.value for e in enum_cls)
        raise bad(name, f"must be one of {choices}") from None


def q_device(request: web.Request, name: str = "device") -> str | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    if not valid_device_id(raw):
        raise bad(name, "not a valid device id")
    return raw


def path_device(request: web.Request) -> str:
    raw = request.match_info["device_id"]
    if not valid_device_id(raw):
        raise bad("device_id", "not a valid device id")
    return raw


def path_ticket(request: web.Request) -> int:
    raw = request.match_info["ticket_id"]
    try:
        value = int(raw)
    except ValueError:
        raise bad("ticket_id", "expected an integer") from None
    if not 1 <= value <= 2**62:
        raise bad("ticket_id", "out of range")
    return value


async def body(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise ApiError(415, "$", "send application/json")
    try:
        data = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise bad("$", "malformed JSON") from None
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "$", "request body too large") from None
    if not isinstance(data, dict):
        raise bad("$", "expected a JSON object")
    return data


def text(
    data: dict[str, Any], name: str, *, required: bool = False, max_len: int = MAX_TEXT
) -> str:
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


#: How far ahead of the collector's clock a recorded ``at`` may be (clock skew).
AT_MAX_AHEAD_S = 60.0


def when(data: dict[str, Any], principal: Principal) -> float:
    """When a repair step happened: now, or the body's ``at`` (Unix seconds).

    ``at`` records work done earlier (a crew's paper log, the demo's simulated
    clock). It moves repair figures in the B2 report, so only a role with
    every permission (admin) may set it, and never into the future.
    """
    now = time.time()
    at = data.get("at")
    if at is None:
        return now
    if not principal.may(Permission.REPAIR_BACKDATE):
        raise ApiError(403, "at", "recording a past time needs the admin role")
    if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
        raise bad("at", "expected Unix seconds")
    if not 946684800 <= at <= now + AT_MAX_AHEAD_S:
        raise bad("at", "must be between 2000-01-01 and now")
    return float(at)


def scope(request: web.Request) -> frozenset[str] | None:
    principal: Principal = request[PRINCIPAL]
    return principal.communes


def scoped_communes(request: web.Request) -> frozenset[str] | None:
    """The caller's scope narrowed by an optional ``commune`` query parameter."""
    allowed = scope(request)
    wanted = request.query.get("commune")
    if wanted is None or wanted == "":
        return allowed
    if len(wanted) > 64:
        raise bad("commune", "longer than 64 characters")
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


# -- handlers ------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    stats = request.app[STATS]
    try:
        await request.app[REPO].schema_version()
        db_ok = True
    except StoreError:
        db_ok = False
    ingest = request.app[CONFIG].ingest_enabled
    ok = db_ok and (stats.connected or not ingest)
    return _json(
        {"ok": ok, "db": db_ok, "broker_connected": stats.connected}, status=200 if ok else 503
    )


async def metrics_view(request: web.Request) -> web.Response:
    require(request, Permission.READ)
    rows = await request.app[REPO].list_devices(limit=10**7)
    counts: Counter[tuple[str, str]] = Counter(
        (d.status.value, d.cause.value if d.cause else "") for d in rows
    )
    text_out = metrics.render(
        request.app[STATS], ((s, c, n) for (s, c), n in sorted(counts.items()))
    )
    return web.Response(text=text_out, content_type="text/plain", charset="utf-8")


async def openapi_view(request: web.Request) -> web.Response:
    return _json(openapi_document())


async def login_view(request: web.Request) -> web.Response:
    data = await body(request)
    name = text(data, "name", required=True, max_len=128)
    password = data.get("password")
    if not isinstance(password, str) or not password or len(password) > 1024:
        raise bad("password", "is required (a string of at most 1024 characters)")
    cfg = request.app[CONFIG]
    throttle = request.app[THROTTLE]
    keys = (f"name:{name}", f"addr:{request.remote}")
    now = time.time()
    wait = throttle.retry_after(keys, now)
    if wait > 0:
        raise web.HTTPTooManyRequests(
            text='{"error": "too many failed logins; try again later"}',
            content_type="application/json",
            headers={"Retry-After": str(int(wait) + 1)},
        )
    result = await auth.login(request.app[REPO], name, password, ttl_s=cfg.http.session_ttl_s)
    if result is None:
        throttle.failed(keys, now)
        raise ApiError(401, "password", "wrong name or password")
    throttle.succeeded(keys)
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


async def logout_view(request: web.Request) -> web.Response:
    cookie = request.cookies.get(auth.SESSION_COOKIE)
    if cookie:
        await request.app[REPO].drop_session(auth.secret_hash(cookie))
    resp = _json({"ok": True})
    resp.del_cookie(auth.SESSION_COOKIE, path="/")
    return resp


async def me_view(request: web.Request) -> web.Response:
    p: Principal = request[PRINCIPAL]
    communes = p.communes
    return _json(
        {
            "name": p.name,
            "role": p.user.role.value,
            "communes": None if communes is None else sorted(communes),
            "via": p.via,
            "csrf_token": p.csrf_token,
            "permissions": sorted(x.value for x in Permission if p.may(x)),
        }
    )


async def summary_view(request: web.Request) -> web.Response:
    require(request, Permission.READ)
    at = q_time(request, "at")
    communes = scoped_communes(request)
    repo = request.app[REPO]
    if at is None:
        rows: list[DeviceStatus] | list[DeviceRow] = await repo.list_devices(
            communes=communes, limit=10**7
        )
    else:
        rows = [
            s
            for s in await repo.statuses_as_of(at)
            if communes is None or s.commune_code in communes
        ]
    return _json({"at": at if at is not None else time.time(), **summarize(rows)})


async def communes_view(request: web.Request) -> web.Response:
    require(request, Permission.READ)
    repo = request.app[REPO]
    allowed = scope(request)
    names: dict[str, tuple[str, str]] = {}
    for d in await repo.list_inventory():
        names.setdefault(d.commune_code, (d.commune_name, d.commune_kind.value))
    groups: dict[str, list[DeviceRow]] = {}
    for row in await repo.list_devices(communes=allowed, limit=10**7):
        groups.setdefault(row.commune_code, []).append(row)
    for code in names:
        if allowed is None or code in allowed:
            groups.setdefault(code, [])
    out = []
    for code, rows in groups.items():
        name, kind = names.get(code, (code, ""))
        out.append({"code": code, "name": name, "kind": kind, **summarize(rows)})
    return _json({"communes": out})


async def devices_view(request: web.Request) -> web.Response:
    require(request, Permission.READ)
    rows = await request.app[REPO].list_devices(
        communes=scoped_communes(request),
        status=q_choice(request, "status", Status),
        cause=q_choice(request, "cause", B2Cause),
        limit=q_int(request, "limit", 500, 1, 10000),
        offset=q_int(request, "offset", 0, 0, 10**9),
    )
    return _json({"devices": [device_json(d) for d in rows]})


async def _device_in_scope(request: web.Request, permission: Permission) -> DeviceRow:
    device_id = path_device(request)
    try:
        device = await request.app[REPO].get_device(device_id)
    except NotFound:
        raise ApiError(404, "device_id", "not found") from None
    require(request, permission, device.commune_code)
    return device


async def device_view(request: web.Request) -> web.Response:
    device = await _device_in_scope(request, Permission.READ)
    repo = request.app[REPO]
    since, until = q_time(request, "since"), q_time(request, "until")
    history = await repo.status_history(device.device_id, since=since, until=until)
    signal = await repo.signal_history(
        device.device_id, since=since, until=until, limit=q_int(request, "limit", 500, 1, 10000)
    )
    faults = await repo.list_faults(device.device_id)
    tickets = await repo.list_tickets(device_id=device.device_id, limit=50)
    return _json(
        {
            **device_json(device),
            "last_report": device.last_report,
            "status_history": [
                {
                    "ts": h.ts,
                    "status": h.status.value,
                    "cause": h.cause.value if h.cause else None,
                    "online": h.state.online,
                }
                for h in history
            ],
            "signal_history": [
                {
                    "ts": p.ts,
                    "rssi_dbm": p.rssi_dbm,
                    "rsrp_dbm": p.rsrp_dbm,
                    "rsrq_db": p.rsrq_db,
                    "sinr_db": p.sinr_db,
                    "csq": p.csq,
                }
                for p in signal
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
    )


async def events_view(request: web.Request) -> web.Response:
    require(request, Permission.READ)
    rows = await request.app[REPO].list_events(
        communes=scoped_communes(request),
        device_id=q_device(request),
        since=q_time(request, "since"),
        until=q_time(request, "until"),
        limit=q_int(request, "limit", 200, 1, 5000),
    )
    return _json(
        {
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
    )


async def repairs_view(request: web.Request) -> web.Response:
    require(request, Permission.READ)
    state = q_choice(request, "state", TicketState)
    tickets = await request.app[REPO].list_tickets(
        communes=scoped_communes(request),
        device_id=q_device(request),
        states=None if state is None else frozenset({state}),
        limit=q_int(request, "limit", 500, 1, 10000),
    )
    return _json({"repairs": [ticket_json(t) for t in tickets]})


async def overdue_view(request: web.Request) -> web.Response:
    require(request, Permission.READ)
    cfg = request.app[CONFIG]
    hours = request.query.get("after_hours")
    after_s = cfg.repairs.overdue_after_s
    if hours not in (None, ""):
        after_s = q_int(request, "after_hours", 0, 1, 24 * 365) * 3600.0
    tickets = await request.app[REPO].list_tickets(
        communes=scoped_communes(request),
        states=frozenset({TicketState.OPEN, TicketState.IN_REPAIR}),
        limit=100000,
    )
    late = repairs.overdue(tickets, now=time.time(), after_s=after_s)
    return _json({"after_s": after_s, "repairs": [ticket_json(t) for t in late]})


async def repair_stats_view(request: web.Request) -> web.Response:
    require(request, Permission.READ)
    by = request.query.get("by", "commune")
    if by not in ("commune", "contractor"):
        raise bad("by", "must be commune or contractor")
    stats = await request.app[REPO].repair_stats(by)
    allowed = scope(request)
    if by == "commune" and allowed is not None:
        stats = [s for s in stats if s.key in allowed]
    elif allowed is not None:
        raise forbidden_scope()
    return _json(
        {
            "by": by,
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
    )


def forbidden_scope() -> web.HTTPException:
    return auth.forbidden("statistics across communes need district-wide access")


async def repair_create(request: web.Request) -> web.Response:
    """Open a ticket; with ``contractor`` it is started in the same call (already assigned)."""
    require(request, Permission.REPAIR_OPEN)
    data = await body(request)
    device_id = text(data, "device_id", required=True, max_len=63)
    if not valid_device_id(device_id):
        raise bad("device_id", "not a valid device id")
    note = text(data, "note")
    contractor = text(data, "contractor", max_len=200)
    technician = text(data, "technician", max_len=200)
    if technician and not contractor:
        raise bad("contractor", "is required with technician")
    repo = request.app[REPO]
    try:
        device = await repo.get_device(device_id)
    except NotFound:
        raise ApiError(404, "device_id", "not found") from None
    principal = require(request, Permission.REPAIR_OPEN, device.commune_code)
    if contractor:
        require(request, Permission.REPAIR_WORK, device.commune_code)
    ticket = await repairs.open_ticket(
        repo,
        device_id,
        actor=principal.name,
        at=when(data, principal),
        note=note,
        contractor=contractor,
        technician=technician,
        start_note=text(data, "start_note"),
    )
    return _json(ticket_json(ticket), status=201)


async def _ticket_in_scope(
    request: web.Request, permission: Permission
) -> tuple[Ticket, Principal]:
    ticket_id = path_ticket(request)
    try:
        ticket = await request.app[REPO].get_ticket(ticket_id)
    except NotFound:
        raise ApiError(404, "ticket_id", "not found") from None
    return ticket, require(request, permission, ticket.commune_code)


async def repair_get(request: web.Request) -> web.Response:
    ticket, _ = await _ticket_in_scope(request, Permission.READ)
    return _json(ticket_json(ticket))


async def repair_start(request: web.Request) -> web.Response:
    ticket, principal = await _ticket_in_scope(request, Permission.REPAIR_WORK)
    data = await body(request)
    updated = await request.app[REPO].start_ticket(
        ticket.id,
        actor=principal.name,
        at=when(data, principal),
        contractor=text(data, "contractor", required=True, max_len=200),
        technician=text(data, "technician", max_len=200),
        note=text(data, "note"),
    )
    return _json(ticket_json(updated))


async def repair_comment(request: web.Request) -> web.Response:
    ticket, principal = await _ticket_in_scope(request, Permission.REPAIR_WORK)
    data = await body(request)
    updated = await request.app[REPO].comment_ticket(
        ticket.id,
        actor=principal.name,
        at=when(data, principal),
        note=text(data, "note", required=True),
    )
    return _json(ticket_json(updated))


async def _close(
    request: web.Request, permission: Permission, state: TicketState, *, note_required: bool
) -> web.Response:
    ticket, principal = await _ticket_in_scope(request, permission)
    data = await body(request)
    updated = await request.app[REPO].close_ticket(
        ticket.id,
        actor=principal.name,
        at=when(data, principal),
        state=state,
        note=text(data, "note", required=note_required),
    )
    return _json(ticket_json(updated))


async def repair_cancel(request: web.Request) -> web.Response:
    """Cancel the ticket (officers and admins; a note saying why)."""
    return await _close(
        request, Permission.REPAIR_CANCEL, TicketState.CANCELLED, note_required=True
    )


async def repair_resolve(request: web.Request) -> web.Response:
    """The repair is done: close the ticket as resolved (the technician's word)."""
    return await _close(request, Permission.REPAIR_WORK, TicketState.RESOLVED, note_required=False)


def add_routes(app: web.Application) -> None:
    """Register every route; ``collector.openapi`` documents exactly these."""
    r = app.router
    r.add_get("/healthz", healthz)
    r.add_get("/metrics", metrics_view)
    r.add_get("/api/v1/openapi.json", openapi_view)
    r.add_post("/api/v1/auth/login", login_view)
    r.add_post("/api/v1/auth/logout", logout_view)
    r.add_get("/api/v1/auth/me", me_view)
    r.add_get("/api/v1/fleet/summary", summary_view)
    r.add_get("/api/v1/communes", communes_view)
    r.add_get("/api/v1/devices", devices_view)
    r.add_get("/api/v1/devices/{device_id}", device_view)
    r.add_get("/api/v1/events", events_view)
    r.add_get("/api/v1/repairs", repairs_view)
    r.add_post("/api/v1/repairs", repair_create)
    r.add_get("/api/v1/repairs/overdue", overdue_view)
    r.add_get("/api/v1/repairs/stats", repair_stats_view)
    r.add_get("/api/v1/repairs/{ticket_id}", repair_get)
    r.add_post("/api/v1/repairs/{ticket_id}/start", repair_start)
    r.add_post("/api/v1/repairs/{ticket_id}/comment", repair_comment)
    r.add_post("/api/v1/repairs/{ticket_id}/cancel", repair_cancel)
    r.add_post("/api/v1/repairs/{ticket_id}/resolve", repair_resolve)


__all__ = ["ApiError", "CollectorConfig", "add_routes", "error_middleware"]
