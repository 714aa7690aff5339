"""The OpenAPI 3.1 document of ``/api/v1``, maintained by hand next to the routes.

Why by hand: the API is small, the aiohttp OpenAPI generators (aiohttp-apispec,
aiohttp-swagger) are unmaintained or pin old aiohttp versions, and a dict keeps
the document reviewable in diffs. ``tests/collector/test_openapi.py`` fails
when a route is added without documenting it (or documented without a route).
"""

from __future__ import annotations

from typing import Any

from collector.b2.openapi import PATHS as B2_PATHS
from collector.remote_openapi import PATHS as REMOTE_PATHS
from fleet_protocol import B2Cause


def _q(name: str, desc: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": desc,
        "schema": schema or {"type": "string"},
    }


def _p(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


_TIME = {"type": "string", "description": "UNIX seconds or ISO 8601 (a date means its end)"}
_DEVICE = {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{2,62}$"}
_COMMUNE = _q("commune", "limit to one commune code")
_STATUS = {"type": "string", "enum": ["working", "broken"]}
_CAUSE = {"type": "string", "enum": [c.value for c in B2Cause]}
_TSTATE = {"type": "string", "enum": ["open", "in_repair", "resolved", "cancelled"]}


def _ok(desc: str, ref: str | None = None) -> dict[str, Any]:
    content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}
    return {"description": desc, **({"content": content} if ref else {})}


_ERRORS = {
    "400": {
        "description": "invalid input",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    },
    "401": {"description": "authentication required"},
    "403": {"description": "not allowed for this role, or CSRF header missing"},
    "404": {"description": "not found, or outside the caller's communes"},
}


def _op(
    summary: str,
    ok: dict[str, Any],
    *,
    params: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    code: str = "200",
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {code: ok, **_ERRORS}}
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body}},
        }
    return op


def _obj(required: list[str], **props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props}


_S = {"type": "string"}
_N = {"type": "number"}
_TICKET_ID = _p("ticket_id", {"type": "integer", "minimum": 1})

PATHS: dict[str, dict[str, Any]] = {
    "/healthz": {
        "get": {**_op("Liveness: database reachable, broker connected", _ok("ok")), "security": []}
    },
    "/metrics": {"get": _op("Prometheus metrics (text)", {"description": "text/plain exposition"})},
    "/api/v1/openapi.json": {"get": _op("This document", _ok("OpenAPI 3.1 document"))},
    "/api/v1/auth/login": {
        "post": {
            **_op(
                "Log in; sets the session cookie, returns the CSRF token",
                _ok("logged in", "Me"),
                body=_obj(["name", "password"], name=_S, password=_S),
            ),
            "security": [],
        }
    },
    "/api/v1/auth/logout": {"post": _op("Log out (drop the session)", _ok("logged out"))},
    "/api/v1/auth/me": {"get": _op("The caller, role, communes, permissions", _ok("caller", "Me"))},
    "/api/v1/fleet/summary": {
        "get": _op(
            "Fleet counts: working, broken (in repair / not), by cause",
            _ok("summary", "Summary"),
            params=[_q("at", "as of this moment (default now)", _TIME), _COMMUNE],
        )
    },
    "/api/v1/communes": {"get": _op("Communes with their counts", _ok("communes"))},
    "/api/v1/devices": {
        "get": _op(
            "Devices, filtered",
            _ok("devices"),
            params=[
                _COMMUNE,
                _q("status", "working or broken", _STATUS),
                _q("cause", "B2 cause of broken devices", _CAUSE),
                _q("limit", "page size (1..10000)", {"type": "integer"}),
                _q("offset", "page start", {"type": "integer"}),
            ],
        )
    },
    "/api/v1/devices/{device_id}": {
        "get": _op(
            "One device with status history, signal history, faults and repairs",
            _ok("device", "Device"),
            params=[
                _p("device_id", _DEVICE),
                _q("since", "history from", _TIME),
                _q("until", "history until", _TIME),
                _q("limit", "signal points (1..10000)", {"type": "integer"}),
            ],
        )
    },
    "/api/v1/events": {
        "get": _op(
            "Device events, newest first",
            _ok("events"),
            params=[
                _COMMUNE,
                _q("device", "one device", _DEVICE),
                _q("since", "from", _TIME),
                _q("until", "until", _TIME),
                _q("limit", "most events (1..5000)", {"type": "integer"}),
            ],
        )
    },
    "/api/v1/repairs": {
        "get": _op(
            "Repair tickets",
            _ok("tickets"),
            params=[
                _COMMUNE,
                _q("device", "one device", _DEVICE),
                _q("state", "ticket state", _TSTATE),
                _q("limit", "most tickets", {"type": "integer"}),
            ],
        ),
        "post": _op(
            "Open a repair ticket",
            _ok("created", "Ticket"),
            body=_obj(["device_id"], device_id=_DEVICE, note=_S),
            code="201",
        ),
    },
    "/api/v1/repairs/overdue": {
        "get": _op(
            "Active tickets without progress for longer than the threshold",
            _ok("tickets"),
            params=[
                _COMMUNE,
                _q("after_hours", "threshold (default from config)", {"type": "integer"}),
            ],
        )
    },
    "/api/v1/repairs/stats": {
        "get": _op(
            "Time to repair per commune or contractor",
            _ok("stats"),
            params=[
                _q(
                    "by",
                    "commune or contractor",
                    {"type": "string", "enum": ["commune", "contractor"]},
                )
            ],
        )
    },
    "/api/v1/repairs/{ticket_id}": {
        "get": _op("One ticket with history", _ok("ticket", "Ticket"), params=[_TICKET_ID])
    },
    "/api/v1/repairs/{ticket_id}/start": {
        "post": _op(
            "Start the repair (đang sửa chữa)",
            _ok("started", "Ticket"),
            params=[_TICKET_ID],
            body=_obj(["contractor"], contractor=_S, technician=_S, note=_S),
        )
    },
    "/api/v1/repairs/{ticket_id}/comment": {
        "post": _op(
            "Add progress",
            _ok("commented", "Ticket"),
            params=[_TICKET_ID],
            body=_obj(["note"], note=_S),
        )
    },
    "/api/v1/repairs/{ticket_id}/cancel": {
        "post": _op(
            "Cancel the ticket",
            _ok("cancelled", "Ticket"),
            params=[_TICKET_ID],
            body=_obj(["note"], note=_S),
        )
    },
}

SCHEMAS: dict[str, Any] = {
    "Error": _obj(["error"], error=_S, field=_S),
    "Me": _obj(["name", "role"], name=_S, role=_S, csrf_token=_S),
    "Summary": _obj(
        ["total", "working", "broken", "in_repair", "not_repaired", "by_cause"],
        at=_N,
        total=_N,
        working=_N,
        broken=_N,
        in_repair=_N,
        not_repaired=_N,
        never_reported=_N,
        online=_N,
        by_cause={"type": "object", "additionalProperties": {"type": "integer"}},
    ),
    "Device": _obj(
        ["device_id", "status"], device_id=_DEVICE, commune_code=_S, status=_STATUS, cause=_CAUSE
    ),
    "Ticket": _obj(
        ["id", "device_id", "state"], id={"type": "integer"}, device_id=_DEVICE, state=_TSTATE
    ),
}


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "loa-fleet collector", "version": "1"},
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "loa_session"},
            },
        },
        "security": [{"bearer": []}, {"session": []}],
        "paths": {**PATHS, **B2_PATHS, **REMOTE_PATHS},
    }
