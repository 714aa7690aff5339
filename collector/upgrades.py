"""Agent upgrades: signed artifacts, their download, and staged rollouts.

An artifact is a tar of wheels (the loa-fleet wheel and any dependency that
changed) signed with the district's Ed25519 key; devices hold the public key
from provisioning and check it with openssl (``edge_agent.upgrade``).

    loa-collector upgrade keygen --out DIR     signing key (0600) + upgrade.pub
    loa-collector upgrade add VERSION WHEEL... signs and stores <dir>/<VERSION>.tar

Routes (admin only, but the download, which is a per-rollout capability):

    GET  /api/v1/upgrades                         the artifacts
    GET  /api/v1/upgrades/{version}/plan          bytes, devices, canaries — before starting
    POST /api/v1/upgrades/rollouts                start: canaries first, then the rest
    GET  /api/v1/upgrades/rollouts/{rollout_id}   progress per device
    GET  /upgrades/download/{token}/{version}.tar the artifact, for devices

A rollout sends the ``upgrade`` command to the canaries, waits until each
reports the new ``agent_version`` (healthy) or an ``upgrade_rolled_back``
event or the deadline passes; if any canary failed it stops (``halted``) and
the rest never receive it; otherwise the rest get it, ``PUSH_CONCURRENCY`` at
a time. Rollouts live in the collector process (a restart forgets progress;
the devices' own trials are unaffected); every step is in the audit log.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import io
import json
import os
import secrets
import tarfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from collector import schemas
from collector.auth import Permission, require
from collector.keys import CONFIG, REPO
from collector.params import ApiError, bad
from collector.remote import RemoteError
from collector.remote_api import SERVICE, push_targets
from collector.store.base import DeviceRow, NotFound

PUSH_CONCURRENCY = 20
_VERSION_OK = set("0123456789abcdefghijklmnopqrstuvwxyz.+-_")


class UpgradeError(Exception):
    """A bad artifact, key or request; the message names it."""


# --- keys and artifacts ---------------------------------------------------------------


def keygen(out: Path) -> tuple[Path, Path]:
    """A new Ed25519 signing key (``upgrade-signing.pem``, 0600) and ``upgrade.pub``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    out.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private = out / "upgrade-signing.pem"
    public = out / "upgrade.pub"
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def sign(key_pem: bytes, data: bytes) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise UpgradeError("the signing key is not an Ed25519 key")
    return key.sign(data)


@dataclass(frozen=True)
class Artifact:
    version: str
    size: int
    sha256: str
    signature: str  # base64
    wheels: list[str]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def add_artifact(directory: Path, key_file: Path, version: str, wheels: list[Path]) -> Artifact:
    """Tar ``wheels``, sign the tar, store ``<version>.tar`` and ``<version>.json``."""
    if not version or not set(version) <= _VERSION_OK:
        raise UpgradeError(f"version {version!r}: letters, digits and .+-_ only")
    if not wheels or any(w.suffix != ".whl" or not w.is_file() for w in wheels):
        raise UpgradeError("give one or more .whl files")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for w in wheels:
            tar.add(w, arcname=w.name)
    data = buf.getvalue()
    try:
        signature = sign(key_file.read_bytes(), data)
    except OSError as exc:
        raise UpgradeError(f"signing key {key_file}: {exc.strerror}") from None
    art = Artifact(
        version=version,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        signature=base64.b64encode(signature).decode(),
        wheels=[w.name for w in wheels],
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{version}.tar").write_bytes(data)
    (directory / f"{version}.json").write_text(json.dumps(art.to_json()))
    return art


def load_artifact(directory: Path, version: str) -> Artifact:
    if not version or not set(version) <= _VERSION_OK:
        raise NotFound(f"upgrade {version!r} not found")
    try:
        data = json.loads((directory / f"{version}.json").read_text())
        return Artifact(**data)
    except (OSError, ValueError, TypeError):
        raise NotFound(f"upgrade {version!r} not found") from None


# --- rollouts ---------------------------------------------------------------------------


@dataclass
class Rollout:
    id: str
    version: str
    actor: str
    token: str
    canaries: list[str]
    rest: list[str]
    bytes_per_device: int
    deadline_s: float
    started_at: float
    state: str = "canaries"  # canaries, rest, done, halted
    reason: str = ""
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "version": self.version,
            "actor": self.actor,
            "state": self.state,
            "reason": self.reason,
            "canaries": self.canaries,
            "rest": self.rest,
            "bytes_per_device": self.bytes_per_device,
            "total_bytes": self.bytes_per_device * (len(self.canaries) + len(self.rest)),
            "started_at": self.started_at,
            "devices": self.devices,
        }


ROLLOUTS = web.AppKey("upgrade_rollouts", dict[str, Rollout])
TASKS = web.AppKey("upgrade_tasks", set[asyncio.Task[None]])


def plan(
    devices: list[DeviceRow], art: Artifact, *, canaries: list[str] | None, canary_count: int
) -> tuple[list[str], list[str]]:
    """(canaries, rest): the named ones, else the first ``canary_count`` online devices."""
    ids = [d.device_id for d in devices]
    if canaries:
        unknown = [c for c in canaries if c not in ids]
        if unknown:
            raise UpgradeError(f"canaries not in the target: {', '.join(unknown[:5])}")
        chosen = list(dict.fromkeys(canaries))
    else:
        online = [d.device_id for d in devices if d.online] or ids
        chosen = online[: max(1, canary_count)]
    return chosen, [i for i in ids if i not in chosen]


async def _outcome(
    app: web.Application, device: str, version: str, since: float, until: float
) -> str:
    """ "upgraded", "rolled back: ..." or "no healthy report before the deadline"."""
    repo = app[REPO]
    while True:
        with_report = await repo.get_device(device)
        if (with_report.last_report or {}).get("agent_version") == version:
            return "upgraded"
        events = await repo.list_events(device_id=device, since=since, limit=50)
        for e in events:
            if e.type == "upgrade_rolled_back":
                return f"rolled back: {e.detail}"
        if time.time() > until:
            return "no healthy report before the deadline"
        await asyncio.sleep(1.0)


async def _phase(app: web.Application, r: Rollout, devices: list[str], base_url: str) -> bool:
    """Upgrade ``devices``; True if every one came back healthy on the new version."""
    service = app[SERVICE]
    art = load_artifact(Path(app[CONFIG].upgrades.dir), r.version)
    args = {
        "url": f"{base_url}/upgrades/download/{r.token}/{r.version}.tar",
        "version": r.version,
        "size": art.size,
        "sha256": art.sha256,
        "signature": art.signature,
    }
    gate = asyncio.Semaphore(PUSH_CONCURRENCY)

    async def one(device: str) -> bool:
        async with gate:
            since = time.time()
            r.devices[device] = {"state": "sent", "at": since}
            try:
                record = await service.send(
                    device_id=device,
                    action="upgrade",
                    args=args,
                    actor=r.actor,
                    wait_s=app[CONFIG].remote.max_wait_s,
                    expires_s=r.deadline_s,
                    queue=True,
                )
            except RemoteError as exc:
                r.devices[device] = {"state": "failed", "error": str(exc), "at": time.time()}
                return False
            if not record.ok:
                r.devices[device] = {
                    "state": "failed",
                    "error": record.error or record.state.value,
                    "at": time.time(),
                }
                return False
            if not (record.result or {}).get("restarting"):
                r.devices[device] = {"state": "upgraded", "at": time.time(), "note": "already"}
                return True
            r.devices[device] = {"state": "installing", "at": time.time()}
            outcome = await _outcome(app, device, r.version, since, since + r.deadline_s)
            ok = outcome == "upgraded"
            r.devices[device] = {
                "state": "upgraded" if ok else "failed",
                "at": time.time(),
                **({} if ok else {"error": outcome}),
            }
            return ok

    results = await asyncio.gather(*(one(d) for d in devices))
    return all(results)


async def run_rollout(app: web.Application, r: Rollout, base_url: str) -> None:
    repo = app[REPO]
    target = f"upgrade:{r.version}"
    if not await _phase(app, r, r.canaries, base_url):
        failed = [d for d in r.canaries if r.devices.get(d, {}).get("state") != "upgraded"]
        r.state, r.reason = "halted", f"canaries failed: {', '.join(failed)}"
        await repo.audit(r.actor, "upgrade.halted", target, {"id": r.id, "reason": r.reason})
        return
    await repo.audit(r.actor, "upgrade.canaries_ok", target, {"id": r.id})
    r.state = "rest"
    ok = await _phase(app, r, r.rest, base_url)
    r.state = "done"
    failed = [d for d in r.rest if r.devices.get(d, {}).get("state") != "upgraded"]
    r.reason = "" if ok else f"failed: {', '.join(failed)}"
    await repo.audit(r.actor, "upgrade.done", target, {"id": r.id, "failed": failed})


# --- routes -------------------------------------------------------------------------------


def _artifact(request: web.Request, version: str) -> Artifact:
    try:
        return load_artifact(Path(request.app[CONFIG].upgrades.dir), version)
    except NotFound:
        raise ApiError(404, "version", "no such upgrade") from None


async def list_view(request: web.Request, p: None, b: None) -> dict[str, Any]:
    require(request, Permission.UPGRADE)
    directory = Path(request.app[CONFIG].upgrades.dir)
    arts = []
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        arts.append(load_artifact(directory, path.stem).to_json())
    return {"upgrades": arts}


async def plan_view(request: web.Request, p: schemas.UpgradePlanParams, b: None) -> dict[str, Any]:
    require(request, Permission.UPGRADE)
    art = _artifact(request, p.version)
    devices = await push_targets(
        request, device=p.device, commune=p.commune, fleet=not (p.device or p.commune)
    )
    wanted = [c for c in p.canaries.split(",") if c] if p.canaries else None
    try:
        canaries, rest = plan(devices, art, canaries=wanted, canary_count=p.canary_count)
    except UpgradeError as exc:
        raise bad("canaries", str(exc)) from None
    return {
        "version": art.version,
        "bytes_per_device": art.size,
        "devices": len(devices),
        "total_bytes": art.size * len(devices),
        "canaries": canaries,
        "rest": rest,
    }


async def start_view(request: web.Request, p: None, b: schemas.RolloutBody) -> web.Response:
    principal = require(request, Permission.UPGRADE)
    art = _artifact(request, b.version)
    devices = await push_targets(request, device=b.device, commune=b.commune, fleet=b.fleet)
    try:
        canaries, rest = plan(devices, art, canaries=b.canaries, canary_count=b.canary_count)
    except UpgradeError as exc:
        raise bad("canaries", str(exc)) from None
    r = Rollout(
        id=secrets.token_hex(8),
        version=art.version,
        actor=principal.name,
        token=secrets.token_urlsafe(24),
        canaries=canaries,
        rest=rest,
        bytes_per_device=art.size,
        deadline_s=b.deadline_s,
        started_at=time.time(),
    )
    base = request.app[CONFIG].upgrades.public_url or str(request.url.origin())
    request.app[ROLLOUTS][r.id] = r
    await request.app[REPO].audit(
        principal.name,
        "upgrade.start",
        f"upgrade:{art.version}",
        {
            "id": r.id,
            "canaries": canaries,
            "rest": len(rest),
            "total_bytes": r.to_json()["total_bytes"],
        },
    )
    task = asyncio.create_task(
        run_rollout(request.app, r, base.rstrip("/")), name=f"rollout-{r.id}"
    )
    request.app[TASKS].add(task)
    task.add_done_callback(request.app[TASKS].discard)
    value = msgspec.convert(r.to_json(), schemas.RolloutOut)
    return web.Response(
        body=msgspec.json.encode(value), status=202, content_type="application/json"
    )


async def rollout_view(request: web.Request, p: schemas.RolloutParams, b: None) -> dict[str, Any]:
    require(request, Permission.UPGRADE)
    r = request.app[ROLLOUTS].get(p.rollout_id)
    if r is None:
        raise ApiError(404, "rollout_id", "not found")
    return r.to_json()


async def download_view(
    request: web.Request, p: schemas.DownloadParams, b: None
) -> web.StreamResponse:
    token, version = p.token, p.version
    rollout = next(
        (r for r in request.app[ROLLOUTS].values() if secrets.compare_digest(r.token, token)), None
    )
    # One answer for a wrong token and a wrong version: nothing to learn by probing.
    if rollout is None or rollout.version != version or rollout.state in ("done", "halted"):
        raise ApiError(404, "token", "no such download")
    path = Path(request.app[CONFIG].upgrades.dir) / f"{version}.tar"
    if not path.is_file():
        raise ApiError(404, "token", "no such download")
    return web.FileResponse(path, headers={"Content-Type": "application/x-tar"})


async def _ctx(app: web.Application) -> AsyncIterator[None]:
    app[ROLLOUTS] = {}
    app[TASKS] = set()
    yield
    running: set[asyncio.Task[None]] = app[TASKS]
    tasks = list(running)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def setup(app: web.Application) -> None:
    """The rollouts' lifetime (the routes are in ``collector.routes.ROUTES``)."""
    app.cleanup_ctx.append(_ctx)


__all__ = [
    "Artifact",
    "Rollout",
    "add_artifact",
    "keygen",
    "load_artifact",
    "plan",
    "setup",
    "sign",
]
