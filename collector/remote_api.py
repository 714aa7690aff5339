"""HTTP routes of the remote commands (``collector.remote``), for technicians and admins.

``setup(app)`` adds the command service to the app's lifetime and these routes:

    POST /api/v1/devices/{device_id}/commands   send one, wait for the reply
    GET  /api/v1/devices/{device_id}/commands   the device's latest commands
    GET  /api/v1/commands/{command_id}          one command and its result
    POST /api/v1/config/push                    a config to a device, a commune or the fleet
    GET  /api/v1/config/versions                each device's agent and config version

The POST body: ``{"action": "diag", "args": {...}, "wait_s": 20, "offline":
"refuse"|"queue", "expires_s": 3600, "confirm": false}``. Answers:

- 200 with the command record when the device replied (``ok`` says whether
  the action succeeded; ``result`` or ``error`` is its answer);
- 202 when it was queued for an offline device (``state: queued``): the
  result appears on ``GET /api/v1/commands/{id}`` when the device returns;
- 409 when the device is offline and ``offline`` is ``refuse`` (the default);
- 504 when an online device did not answer in time (``state: unreachable``);
- 400 for a bad body, an unknown action, or a changing action without
  ``confirm: true``; 503 while the collector has no broker connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from aiohttp import web

from collector.api import _json, body, device_in_scope, scoped_communes
from collector.auth import Permission, require
from collector.keys import CONFIG, REPO
from collector.params import ApiError, bad
from collector.remote import CHANGING_ACTIONS, PLAIN_ACTIONS, CommandService, RemoteError
from collector.store.base import DeviceRow, NotFound
from collector.store.commands import CommandRecord, CommandState
from fleet_protocol import valid_device_id

SERVICE = web.AppKey("remote_commands", CommandService)
_TASK = web.AppKey("remote_commands_task", asyncio.Task[None])
#: Arguments of one command, JSON-encoded, at most this long (a Command is <= 64 KiB).
MAX_ARGS_BYTES = 8 * 1024
_COMMAND_ID = re.compile(r"[0-9a-f]{16}")
#: Actions other modules add (tunnel, config, upgrade), with whether they change the device.
EXTRA_ACTIONS: dict[str, bool] = {}


def known_actions() -> dict[str, bool]:
    """Action name -> whether it changes the device (and so needs ``confirm``)."""
    return {
        **{a: False for a in PLAIN_ACTIONS},
        **{a: True for a in CHANGING_ACTIONS},
        **EXTRA_ACTIONS,
    }


async def _service_ctx(app: web.Application) -> AsyncIterator[None]:
    service = CommandService(app[CONFIG], app[REPO])  # type: ignore[arg-type]
    app[SERVICE] = service
    task = asyncio.create_task(service.run(), name="remote-commands")
    app[_TASK] = task
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await service.aclose()


def _number(data: dict[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise bad(name, "expected a number of seconds")
    if not lo <= value <= hi:
        raise bad(name, f"must be between {lo:g} and {hi:g}")
    return float(value)


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", "50")
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise bad("limit", "must be 1..1000")
    return int(raw)


def _status_of(record: CommandRecord) -> int:
    return {
        CommandState.REPLIED: 200,
        CommandState.QUEUED: 202,
        CommandState.REFUSED: 409,
        CommandState.UNREACHABLE: 504,
    }.get(record.state, 200)


async def send_command(request: web.Request) -> web.Response:
    device = await device_in_scope(request, request.match_info["device_id"], Permission.REMOTE)
    principal = require(request, Permission.REMOTE, device.commune_code)
    cfg = request.app[CONFIG].remote
    data = await body(request)
    action = data.get("action")
    actions = known_actions()
    if not isinstance(action, str) or action not in actions:
        raise bad("action", f"must be one of {', '.join(sorted(actions))}")
    args = data.get("args", {})
    if not isinstance(args, dict) or len(args) > 15:
        raise bad("args", "expected an object of at most 15 arguments")
    if len(msgspec.json.encode(args)) > MAX_ARGS_BYTES:
        raise bad("args", f"longer than {MAX_ARGS_BYTES} bytes")
    args = {k: v for k, v in args.items() if k != "confirm"}
    if actions[action]:
        if data.get("confirm") is not True:
            raise bad("confirm", f"{action} changes the device: send confirm=true to run it")
        args["confirm"] = True
    offline = data.get("offline", "refuse")
    if isinstance(offline, bool):  # the dashboard's checkbox
        offline = "queue" if offline else "refuse"
    if offline not in ("refuse", "queue"):
        raise bad("offline", "must be refuse or queue")
    queue = offline == "queue"
    wait_s = _number(data, "wait_s", cfg.wait_s, 0.1, cfg.max_wait_s)
    if queue:
        expires_s = _number(data, "expires_s", cfg.queue_s, 1.0, cfg.max_queue_s)
    else:
        expires_s = wait_s + cfg.grace_s
    service = request.app[SERVICE]
    if not device.online and not queue:
        seen = (
            time.strftime("%Y-%m-%d %H:%M", time.localtime(device.last_seen))
            if device.last_seen
            else "never"
        )
        record = await service.refuse(
            device_id=device.device_id,
            action=action,
            args=args,
            actor=principal.name,
            reason=(
                f"{device.device_id} is offline (last seen {seen}): not sent; "
                'send offline="queue" to queue it in its broker session until it returns'
            ),
        )
        return _json(record.to_json(), status=409)
    try:
        record = await service.send(
            device_id=device.device_id,
            action=action,
            args=args,
            actor=principal.name,
            wait_s=wait_s,
            expires_s=expires_s,
            queue=queue,
        )
    except RemoteError as exc:
        raise ApiError(exc.status, "$", str(exc)) from None
    return _json(record.to_json(), status=_status_of(record))


async def list_commands(request: web.Request) -> web.Response:
    device = await device_in_scope(request, request.match_info["device_id"], Permission.REMOTE)
    rows = await request.app[SERVICE].store.list_commands(device.device_id, limit=_limit(request))
    now = time.time()
    return _json({"commands": [r.shown(now).to_json() for r in rows]})


async def get_command(request: web.Request) -> web.Response:
    require(request, Permission.REMOTE)
    raw = request.match_info["command_id"]
    if not _COMMAND_ID.fullmatch(raw):
        raise bad("command_id", "not a command id")
    try:
        record = await request.app[SERVICE].store.get_command(raw)
    except NotFound:
        raise ApiError(404, "command_id", "not found") from None
    try:
        device = await request.app[REPO].get_device(record.device_id)
    except NotFound:
        raise ApiError(404, "command_id", "not found") from None
    require(request, Permission.REMOTE, device.commune_code)
    return _json(record.shown(time.time()).to_json())


#: A pushed agent.toml (the agent's own limit is the same, edge_agent.remote_config).
MAX_TOML_BYTES = 48 * 1024
#: Devices a config push talks to at once (each waits for its reply).
PUSH_CONCURRENCY = 20


async def _push_targets(request: web.Request, data: dict[str, Any]) -> list[DeviceRow]:
    repo = request.app[REPO]
    chosen = [k for k in ("device", "commune", "fleet") if data.get(k) not in (None, "", False)]
    if len(chosen) != 1:
        raise bad("device", "give exactly one of device, commune or fleet=true")
    if chosen[0] == "device":
        device_id = data["device"]
        if not isinstance(device_id, str) or not valid_device_id(device_id):
            raise bad("device", "not a valid device id")
        try:
            device = await repo.get_device(device_id)
        except NotFound:
            raise ApiError(404, "device", "not found") from None
        require(request, Permission.REMOTE, device.commune_code)
        return [device]
    if chosen[0] == "commune":
        commune = data["commune"]
        if not isinstance(commune, str) or len(commune) > 64:
            raise bad("commune", "expected a commune code")
        require(request, Permission.REMOTE, commune)
        communes: frozenset[str] | None = frozenset({commune})
    else:
        if data["fleet"] is not True:
            raise bad("fleet", "expected true")
        principal = require(request, Permission.REMOTE)
        communes = principal.communes  # a scoped technician's fleet is their communes
    return await repo.list_devices(communes=communes, limit=100000)


async def config_push(request: web.Request) -> web.Response:
    """Send a ``config`` command (whole agent.toml or changed fields) to the targets."""
    principal = require(request, Permission.REMOTE)
    cfg = request.app[CONFIG].remote
    data = await body(request)
    args: dict[str, Any] = {}
    if isinstance(data.get("toml"), str):
        if len(data["toml"].encode()) > MAX_TOML_BYTES:
            raise bad("toml", f"longer than {MAX_TOML_BYTES} bytes")
        if data.get("device") in (None, ""):
            raise bad("toml", "a whole agent.toml goes to one device; use set for many")
        args["toml"] = data["toml"]
    elif isinstance(data.get("set"), dict) and data["set"]:
        changes = data["set"]
        if len(changes) > 50 or len(msgspec.json.encode(changes)) > MAX_ARGS_BYTES:
            raise bad("set", f"at most 50 fields, {MAX_ARGS_BYTES} bytes")
        args["set"] = changes
    else:
        raise bad("toml", "send toml (a whole agent.toml) or set (changed fields)")
    args["deadline_s"] = _number(data, "deadline_s", 180.0, 10.0, 3600.0)
    queue = data.get("offline", "queue") in ("queue", True)
    wait_s = _number(data, "wait_s", cfg.wait_s, 0.1, cfg.max_wait_s)
    expires_s = (
        _number(data, "expires_s", cfg.queue_s, 1.0, cfg.max_queue_s)
        if queue
        else wait_s + cfg.grace_s
    )
    targets = await _push_targets(request, data)
    service = request.app[SERVICE]
    gate = asyncio.Semaphore(PUSH_CONCURRENCY)

    async def one(device: DeviceRow) -> CommandRecord:
        async with gate:
            if not device.online and not queue:
                return await service.refuse(
                    device_id=device.device_id,
                    action="config",
                    args=args,
                    actor=principal.name,
                    reason=f"{device.device_id} is offline: not sent",
                )
            return await service.send(
                device_id=device.device_id,
                action="config",
                args=args,
                actor=principal.name,
                wait_s=wait_s,
                expires_s=expires_s,
                queue=queue,
            )

    try:
        records = await asyncio.gather(*(one(d) for d in targets))
    except RemoteError as exc:
        raise ApiError(exc.status, "$", str(exc)) from None
    size = len(msgspec.json.encode(args))
    counts: dict[str, int] = {}
    for r in records:
        key = "accepted" if r.ok else r.state.value if r.ok is None else "rejected"
        counts[key] = counts.get(key, 0) + 1
    return _json(
        {
            "bytes_per_device": size,
            "summary": counts,
            "devices": [r.to_json() for r in records],
        }
    )


async def config_versions(request: web.Request) -> web.Response:
    """Each device's running agent and config version, from its last full state report."""
    require(request, Permission.READ)
    rows = await request.app[REPO].list_devices(
        communes=scoped_communes(request, None), limit=100000
    )
    return _json(
        {
            "devices": [
                {
                    "device_id": d.device_id,
                    "commune_code": d.commune_code,
                    "online": d.online,
                    "agent_version": (d.last_report or {}).get("agent_version"),
                    "config_version": (d.last_report or {}).get("config_version"),
                }
                for d in rows
            ]
        }
    )


def setup(app: web.Application) -> None:
    """Add the command service and the routes (and the upgrades') to the collector app."""
    from collector import upgrades

    app.cleanup_ctx.append(_service_ctx)
    upgrades.setup(app)
    r = app.router
    r.add_post("/api/v1/devices/{device_id}/commands", send_command)
    r.add_get("/api/v1/devices/{device_id}/commands", list_commands)
    r.add_get("/api/v1/commands/{command_id}", get_command)
    r.add_post("/api/v1/config/push", config_push)
    r.add_get("/api/v1/config/versions", config_versions)


__all__ = ["EXTRA_ACTIONS", "SERVICE", "known_actions", "setup"]
