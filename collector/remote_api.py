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
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from aiohttp import web

from collector import schemas
from collector.api import device_in_scope, scoped_communes
from collector.auth import Permission, require
from collector.config import RemoteConfig
from collector.keys import CONFIG, REPO
from collector.params import ApiError, bad
from collector.remote import CHANGING_ACTIONS, PLAIN_ACTIONS, CommandService, RemoteError
from collector.store.base import DeviceRow, NotFound
from collector.store.commands import CommandRecord, CommandState

SERVICE = web.AppKey("remote_commands", CommandService)
_TASK = web.AppKey("remote_commands_task", asyncio.Task[None])
#: Arguments of one command, JSON-encoded, at most this long (a Command is <= 64 KiB).
MAX_ARGS_BYTES = 8 * 1024
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


def _offline_queue(offline: schemas.Offline) -> bool:
    return offline is True or offline == "queue"


def _wait(cfg: RemoteConfig, wait_s: float | None) -> float:
    """The wait asked for, capped at ``[remote] max_wait_s`` (never an unbounded hold)."""
    return min(max(wait_s if wait_s is not None else cfg.wait_s, 0.1), cfg.max_wait_s)


def _queue_for(cfg: RemoteConfig, expires_s: float | None) -> float:
    return min(max(expires_s if expires_s is not None else cfg.queue_s, 1.0), cfg.max_queue_s)


def _answer(record: CommandRecord, status: int = 200) -> web.Response:
    value = msgspec.convert(record.to_json(), schemas.CommandOut)
    return web.Response(
        body=msgspec.json.encode(value), status=status, content_type="application/json"
    )


def _status_of(record: CommandRecord) -> int:
    return {
        CommandState.REPLIED: 200,
        CommandState.QUEUED: 202,
        CommandState.REFUSED: 409,
        CommandState.UNREACHABLE: 504,
    }.get(record.state, 200)


async def send_command(
    request: web.Request, p: schemas.DeviceCommandParams, b: schemas.CommandBody
) -> web.Response:
    device = await device_in_scope(request, p.device_id, Permission.REMOTE)
    principal = require(request, Permission.REMOTE, device.commune_code)
    cfg = request.app[CONFIG].remote
    action = b.action
    actions = known_actions()
    if action not in actions:
        raise bad("action", f"must be one of {', '.join(sorted(actions))}")
    if len(msgspec.json.encode(b.args)) > MAX_ARGS_BYTES:
        raise bad("args", f"longer than {MAX_ARGS_BYTES} bytes")
    args = {k: v for k, v in b.args.items() if k != "confirm"}
    if actions[action]:
        if not b.confirm:
            raise bad("confirm", f"{action} changes the device: send confirm=true to run it")
        args["confirm"] = True
    queue = _offline_queue(b.offline)
    wait_s = _wait(cfg, b.wait_s)
    expires_s = _queue_for(cfg, b.expires_s) if queue else wait_s + cfg.grace_s
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
        return _answer(record, 409)
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
    return _answer(record, _status_of(record))


async def list_commands(
    request: web.Request, p: schemas.DeviceCommandsParams, b: None
) -> dict[str, Any]:
    device = await device_in_scope(request, p.device_id, Permission.REMOTE)
    rows = await request.app[SERVICE].store.list_commands(device.device_id, limit=p.limit)
    now = time.time()
    return {"commands": [r.shown(now).to_json() for r in rows]}


async def get_command(request: web.Request, p: schemas.CommandParams, b: None) -> dict[str, Any]:
    require(request, Permission.REMOTE)
    try:
        record = await request.app[SERVICE].store.get_command(p.command_id)
        device = await request.app[REPO].get_device(record.device_id)
    except NotFound:
        raise ApiError(404, "command_id", "not found") from None
    require(request, Permission.REMOTE, device.commune_code)
    return record.shown(time.time()).to_json()


#: A pushed agent.toml (the agent's own limit is the same, edge_agent.remote_config).
MAX_TOML_BYTES = 48 * 1024
#: Devices a config push talks to at once (each waits for its reply).
PUSH_CONCURRENCY = 20


async def push_targets(
    request: web.Request, *, device: str | None, commune: str | None, fleet: bool
) -> list[DeviceRow]:
    """The devices of exactly one of ``device``, ``commune`` or the (caller's) fleet."""
    repo = request.app[REPO]
    chosen = [k for k, v in (("device", device), ("commune", commune), ("fleet", fleet)) if v]
    if len(chosen) != 1:
        raise bad("device", "give exactly one of device, commune or fleet=true")
    if device:
        try:
            row = await repo.get_device(device)
        except NotFound:
            raise ApiError(404, "device", "not found") from None
        require(request, Permission.REMOTE, row.commune_code)
        return [row]
    if commune:
        require(request, Permission.REMOTE, commune)
        communes: frozenset[str] | None = frozenset({commune})
    else:
        principal = require(request, Permission.REMOTE)
        communes = principal.communes  # a scoped technician's fleet is their communes
    return await repo.list_devices(communes=communes, limit=100000)


async def config_push(request: web.Request, p: None, b: schemas.ConfigPushBody) -> dict[str, Any]:
    """Send a ``config`` command (whole agent.toml or changed fields) to the targets."""
    principal = require(request, Permission.REMOTE)
    cfg = request.app[CONFIG].remote
    args: dict[str, Any] = {}
    if b.toml is not None:
        if len(b.toml.encode()) > MAX_TOML_BYTES:
            raise bad("toml", f"longer than {MAX_TOML_BYTES} bytes")
        if not b.device:
            raise bad("toml", "a whole agent.toml goes to one device; use set for many")
        args["toml"] = b.toml
    elif b.set:
        if len(msgspec.json.encode(b.set)) > MAX_ARGS_BYTES:
            raise bad("set", f"at most 50 fields, {MAX_ARGS_BYTES} bytes")
        args["set"] = b.set
    else:
        raise bad("toml", "send toml (a whole agent.toml) or set (changed fields)")
    args["deadline_s"] = b.deadline_s
    queue = _offline_queue(b.offline)
    wait_s = _wait(cfg, b.wait_s)
    expires_s = _queue_for(cfg, b.expires_s) if queue else wait_s + cfg.grace_s
    targets = await push_targets(request, device=b.device, commune=b.commune, fleet=b.fleet)
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
    return {
        "bytes_per_device": size,
        "summary": counts,
        "devices": [r.to_json() for r in records],
    }


async def config_versions(
    request: web.Request, p: schemas.ConfigVersionsParams, b: None
) -> dict[str, Any]:
    """Each device's running agent and config version, from its last full state report."""
    require(request, Permission.READ)
    communes = scoped_communes(request, p.commune)
    rows = await request.app[REPO].list_devices(communes=communes, limit=100000)
    return {
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


def setup(app: web.Application) -> None:
    """Add the command service and the upgrades' rollouts to the app's lifetime (their
    routes are in ``collector.routes.ROUTES``)."""
    from collector import upgrades

    app.cleanup_ctx.append(_service_ctx)
    upgrades.setup(app)


__all__ = ["EXTRA_ACTIONS", "SERVICE", "known_actions", "setup"]
