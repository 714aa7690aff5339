"""The collector's one route table: routing, parameter parsing and the OpenAPI document.

Each :class:`Route` names its handler, the Struct of its path and query
parameters, the Struct of its JSON body, the Struct of its answer and the other
answers it can give. :func:`add_routes` registers every route with aiohttp
behind one wrapper that decodes the parameters and body with those Structs
(``collector.params``) and encodes the answer through the response Struct;
``collector.openapi`` documents the same table. A route cannot be served
without being documented, nor documented differently from how it is served.

Handlers are ``async def h(request, params, body)``; ``params``/``body`` are
None for a route without them. A handler returns JSON-ready data (a dict or a
Struct) or, for other media types, a ``web.StreamResponse``.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
from aiohttp import web

from collector import api, remote_api, schemas, upgrades
from collector.b2 import api as b2_api
from collector.params import bad, decode_body, decode_params, query_of, read_json

Handler = Callable[[web.Request, Any, Any], Awaitable[Any]]

XLSX: Final = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    #: Path and query parameters (a ``schemas.Params``); fields named in ``path``
    #: are path parameters, the others query parameters.
    params: type[schemas.Params] | None = None
    #: The JSON request body.
    body: type[schemas.Body] | None = None
    #: The JSON answer on success.
    response: type[schemas.Out] | None = None
    status: int = 200
    #: Other media types of the success answer (the body is then a file).
    media: tuple[str, ...] = ()
    #: Answers beyond the usual errors: status -> description.
    errors: dict[int, str] = field(default_factory=dict)
    #: Other statuses whose body is the success answer's (a queued or unanswered
    #: command is still a command record): status -> description.
    same_body: dict[int, str] = field(default_factory=dict)
    #: Served without a session or token (the handler checks what it needs).
    public: bool = False
    #: A non-JSON request body, as an OpenAPI ``content`` map (file uploads).
    upload: dict[str, Any] | None = None
    #: OpenAPI links of the success answer: name -> (operationId, parameters,
    #: requestBody), with runtime expressions such as ``$response.body#/id``.
    links: dict[str, tuple[str, dict[str, str], Any]] = field(default_factory=dict)


def _wrap(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        query = query_of(request)
        params = None
        if route.params is not None:
            for name in query:
                if name in request.match_info:
                    raise bad(name, "is a path parameter, not a query parameter")
            params = decode_params({**query, **request.match_info}, route.params)
        elif query:
            raise bad(next(iter(query)), "unknown query parameter")
        body = None
        if route.body is not None:
            body = decode_body(await read_json(request), route.body)
        result = await route.handler(request, params, body)
        if isinstance(result, web.StreamResponse):
            return result
        assert route.response is not None, f"{route.path}: no response type"
        return encode(result, route.response, status=route.status)

    handler.__name__ = route.handler.__name__
    return handler


def encode(data: Any, cls: type[msgspec.Struct], *, status: int = 200) -> web.Response:
    """``data`` as JSON through ``cls``: the answer has exactly the documented shape."""
    value = data if isinstance(data, cls) else msgspec.convert(data, cls)
    return web.Response(
        body=msgspec.json.encode(value), status=status, content_type="application/json"
    )


async def openapi_view(request: web.Request, p: None, b: None) -> web.Response:
    return web.Response(body=_document_bytes(), content_type="application/json")


@functools.cache
def _document_bytes() -> bytes:
    from collector.openapi import openapi_document

    return msgspec.json.encode(openapi_document(ROUTES))


_NO_TICKET: Final = "no such ticket, or outside the caller's communes"


def _ticket_action(
    action: str,
    handler: Handler,
    summary: str,
    body: type[schemas.Body],
    conflict: str = "the ticket is closed",
) -> Route:
    """``POST /api/v1/repairs/{ticket_id}/<action>``: a change to one ticket."""
    return Route(
        method="POST",
        path=f"/api/v1/repairs/{{ticket_id}}/{action}",
        handler=handler,
        summary=summary,
        params=schemas.TicketParams,
        body=body,
        response=schemas.Ticket,
        errors={404: _NO_TICKET, 409: conflict},
    )


_FILE = {"schema": {"type": "string", "format": "binary", "minLength": 1}}

ROUTES: Final[Sequence[Route]] = (
    Route(
        method="GET",
        path="/healthz",
        handler=api.healthz,
        summary="Liveness: database reachable, broker connected",
        response=schemas.Health,
        errors={503: "database unreachable or broker disconnected (same body)"},
        public=True,
    ),
    Route(
        method="GET",
        path="/metrics",
        handler=api.metrics_view,
        summary="Prometheus metrics (text); an admin or the [http] metrics token",
        media=("text/plain",),
    ),
    Route(
        method="GET",
        path="/api/v1/openapi.json",
        handler=openapi_view,
        summary="This document",
        media=("application/json",),
    ),
    Route(
        method="POST",
        path="/api/v1/auth/login",
        handler=api.login_view,
        summary="Log in; sets the session cookie, returns the CSRF token",
        body=schemas.LoginBody,
        response=schemas.LoggedIn,
        errors={
            401: "wrong name or password",
            429: "too many failed attempts for this name or address: wait Retry-After seconds",
        },
        public=True,
    ),
    Route(
        method="POST",
        path="/api/v1/auth/logout",
        handler=api.logout_view,
        summary="Log out (drop the session)",
        response=schemas.Ok,
    ),
    Route(
        method="GET",
        path="/api/v1/auth/me",
        handler=api.me_view,
        summary="The caller, role, communes, permissions",
        response=schemas.Me,
    ),
    Route(
        method="POST",
        path="/api/v1/users/{name}/unlock",
        handler=api.unlock_view,
        summary="Clear a user's login delays (admin)",
        params=schemas.UserParams,
        response=schemas.Unlocked,
        errors={404: "no such user"},
    ),
    Route(
        method="GET",
        path="/api/v1/fleet/summary",
        handler=api.summary_view,
        summary="Fleet counts: working, broken (in repair / not), by cause",
        params=schemas.SummaryParams,
        response=schemas.Summary,
    ),
    Route(
        method="GET",
        path="/api/v1/communes",
        handler=api.communes_view,
        summary="Communes with their counts",
        response=schemas.Communes,
    ),
    Route(
        method="GET",
        path="/api/v1/devices",
        handler=api.devices_view,
        summary="Devices, filtered",
        params=schemas.DevicesParams,
        response=schemas.Devices,
        links={
            "OpenRepair": (
                "repair_create",
                {},
                {"device_id": "$response.body#/devices/0/device_id", "note": "opened by a link"},
            ),
            "GetDevice": (
                "device_view",
                {"device_id": "$response.body#/devices/0/device_id"},
                None,
            ),
        },
    ),
    Route(
        method="GET",
        path="/api/v1/devices/{device_id}",
        handler=api.device_view,
        summary="One device with status history, signal history, faults and repairs",
        params=schemas.DeviceParams,
        response=schemas.DeviceDetail,
        errors={404: "no such device, or outside the caller's communes"},
    ),
    Route(
        method="GET",
        path="/api/v1/devices/{device_id}/cause",
        handler=api.device_cause_view,
        summary="The cluster's cause now: its source, evidence, any conflict, and findings",
        params=schemas.DeviceIdParams,
        response=schemas.DeviceCause,
        errors={404: "no such device, or outside the caller's communes"},
    ),
    Route(
        method="GET",
        path="/api/v1/events",
        handler=api.events_view,
        summary="Device events, newest first",
        params=schemas.EventsParams,
        response=schemas.Events,
    ),
    Route(
        method="GET",
        path="/api/v1/repairs",
        handler=api.repairs_view,
        summary="Repair tickets",
        params=schemas.RepairsParams,
        response=schemas.Tickets,
    ),
    Route(
        method="POST",
        path="/api/v1/repairs",
        handler=api.repair_create,
        summary="Open a repair ticket",
        body=schemas.RepairOpenBody,
        response=schemas.Ticket,
        status=201,
        links={
            f"{name.title()}Ticket": (op, {"ticket_id": "$response.body#/id"}, None)
            for name, op in (
                ("get", "repair_get"),
                ("start", "repair_start"),
                ("comment", "repair_comment"),
                ("cancel", "repair_cancel"),
                ("resolve", "repair_resolve"),
                ("finding", "repair_finding"),
            )
        },
        errors={
            404: "no such device, or outside the caller's communes",
            409: "the device already has an active ticket (ticket_id names it)",
        },
    ),
    Route(
        method="GET",
        path="/api/v1/repairs/overdue",
        handler=api.overdue_view,
        summary="Active tickets without progress for longer than the threshold",
        params=schemas.OverdueParams,
        response=schemas.Overdue,
    ),
    Route(
        method="GET",
        path="/api/v1/repairs/stats",
        handler=api.repair_stats_view,
        summary="Time to repair per commune or contractor",
        params=schemas.RepairStatsParams,
        response=schemas.RepairStats,
    ),
    Route(
        method="GET",
        path="/api/v1/repairs/{ticket_id}",
        handler=api.repair_get,
        summary="One ticket with history",
        params=schemas.TicketParams,
        response=schemas.Ticket,
        errors={404: _NO_TICKET},
    ),
    _ticket_action(
        "start",
        api.repair_start,
        "Start the repair (đang sửa chữa)",
        schemas.RepairStartBody,
        "the ticket is closed or already in repair",
    ),
    _ticket_action("comment", api.repair_comment, "Add progress", schemas.NoteBody),
    _ticket_action("cancel", api.repair_cancel, "Cancel the ticket", schemas.NoteBody),
    _ticket_action(
        "resolve", api.repair_resolve, "Resolve the ticket: the repair is done", schemas.ResolveBody
    ),
    Route(
        method="POST",
        path="/api/v1/repairs/{ticket_id}/finding",
        handler=api.repair_finding,
        summary="Record the cause found on site (audited; overrides inferred causes)",
        params=schemas.TicketParams,
        body=schemas.FindingBody,
        response=schemas.Ticket,
        status=201,
        errors={404: _NO_TICKET, 409: "the ticket is closed"},
    ),
    Route(
        method="GET",
        path="/api/v1/reports/b2",
        handler=b2_api.b2_view,
        summary="The B2 table (biểu B2) as of a date, with the summary sentence",
        params=schemas.B2Params,
        response=schemas.B2Table,
        media=("text/csv", XLSX, "text/html"),
    ),
    Route(
        method="GET",
        path="/api/v1/reports/b2/summary",
        handler=b2_api.b2_summary_view,
        summary="The summary sentence and total row, optionally month-over-month",
        params=schemas.B2SummaryParams,
        response=schemas.B2Summary,
    ),
    Route(
        method="GET",
        path="/api/v1/inventory",
        handler=b2_api.inventory_view,
        summary="The inventory in B2 order (the caller's communes)",
        params=schemas.InventoryParams,
        response=schemas.Inventory,
        media=("text/csv", XLSX),
    ),
    Route(
        method="POST",
        path="/api/v1/inventory/import",
        handler=b2_api.inventory_import,
        summary="Import the inventory from CSV or XLSX: all or nothing",
        params=schemas.ImportParams,
        response=schemas.Imported,
        errors={413: "file larger than 8 MiB"},
        upload={
            "text/csv": {"schema": {"type": "string", "minLength": 1}},
            XLSX: _FILE,
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary", "minLength": 1}},
                    "required": ["file"],
                }
            },
        },
    ),
    Route(
        method="POST",
        path="/api/v1/devices/{device_id}/commands",
        handler=remote_api.send_command,
        summary="Send a remote command (technician, admin) and wait for the reply",
        params=schemas.DeviceCommandParams,
        body=schemas.CommandBody,
        response=schemas.CommandOut,
        same_body={
            202: "queued for an offline device (state queued); the result comes later",
            409: "the device is offline and offline is refuse: nothing sent (state refused)",
            504: "the device did not answer within wait_s (state unreachable)",
        },
        errors={404: "no such device, or outside the caller's communes"},
    ),
    Route(
        method="GET",
        path="/api/v1/devices/{device_id}/commands",
        handler=remote_api.list_commands,
        summary="A device's latest remote commands",
        params=schemas.DeviceCommandsParams,
        response=schemas.CommandList,
        errors={404: "no such device, or outside the caller's communes"},
    ),
    Route(
        method="GET",
        path="/api/v1/commands/{command_id}",
        handler=remote_api.get_command,
        summary="One remote command and its result",
        params=schemas.CommandParams,
        response=schemas.CommandOut,
        errors={404: "no such command, or outside the caller's communes"},
    ),
    Route(
        method="POST",
        path="/api/v1/config/push",
        handler=remote_api.config_push,
        summary=(
            "Push an agent.toml (one device) or changed fields (device, commune or fleet); "
            "each device keeps it only if healthy within deadline_s, else rolls back"
        ),
        body=schemas.ConfigPushBody,
        response=schemas.ConfigPushed,
        errors={404: "no such device"},
    ),
    Route(
        method="GET",
        path="/api/v1/config/versions",
        handler=remote_api.config_versions,
        summary="Each device's agent and config version (from its last full report)",
        params=schemas.ConfigVersionsParams,
        response=schemas.ConfigVersions,
    ),
    Route(
        method="GET",
        path="/api/v1/upgrades",
        handler=upgrades.list_view,
        summary="Signed agent upgrades available (admin)",
        response=schemas.UpgradeList,
    ),
    Route(
        method="GET",
        path="/api/v1/upgrades/{version}/plan",
        handler=upgrades.plan_view,
        summary="What a rollout would cost before it starts: bytes, devices, canaries, the rest",
        params=schemas.UpgradePlanParams,
        response=schemas.UpgradePlan,
        errors={404: "no such upgrade or device"},
    ),
    Route(
        method="POST",
        path="/api/v1/upgrades/rollouts",
        handler=upgrades.start_view,
        summary="Start a staged rollout (canaries, then the rest; halts when a canary fails)",
        body=schemas.RolloutBody,
        response=schemas.RolloutOut,
        status=202,
        errors={404: "no such upgrade or device"},
    ),
    Route(
        method="GET",
        path="/api/v1/upgrades/rollouts/{rollout_id}",
        handler=upgrades.rollout_view,
        summary="A rollout's progress per device",
        params=schemas.RolloutParams,
        response=schemas.RolloutOut,
        errors={404: "no such rollout"},
    ),
    Route(
        method="GET",
        path="/upgrades/download/{token}/{version}.tar",
        handler=upgrades.download_view,
        summary="An upgrade artifact for devices: the path is a per-rollout capability",
        params=schemas.DownloadParams,
        media=("application/x-tar",),
        errors={404: "no such download"},
        public=True,
    ),
)


def add_routes(app: web.Application) -> None:
    """Register every route of the table (HEAD comes with GET)."""
    for route in ROUTES:
        if route.method == "GET":
            app.router.add_get(route.path, _wrap(route))
        else:
            app.router.add_route(route.method, route.path, _wrap(route))


__all__ = ["ROUTES", "Route", "add_routes", "encode"]
