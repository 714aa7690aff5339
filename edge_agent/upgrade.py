"""Agent upgrades: signed wheelhouse → new environment beside the old → trial → kept or undone.

The ``upgrade`` command's args: ``url`` (the collector's download link, a
capability valid for the rollout), ``version``, ``size``, ``sha256`` and
``signature`` (base64 Ed25519 over the artifact's bytes). The agent:

1. downloads it (urllib over the broker's TLS trust: the same CA file; plain
   http only when the broker link itself is plain, i.e. local tests), never
   more than ``size`` or ``upgrade.max_bytes`` bytes;
2. checks SHA-256 and the Ed25519 signature with ``openssl pkeyutl -verify``
   against the public key provisioning installed (the agent carries no crypto
   library); a bad signature is refused and nothing is installed;
3. unpacks the wheelhouse (a tar of wheels) and makes a new environment
   ``<root>/venvs/<version>`` that layers over the read-only base environment
   (so unchanged dependencies are not downloaded again), installing the
   wheels with the base's pip, offline;
4. records a trial (``<root>/upgrade.pending``: version, previous target,
   deadline, attempts), points ``<root>/current`` at the new environment
   (symlink swapped atomically), answers, and restarts into it.

The new version keeps itself once healthy (connected, probes polled, a
message acknowledged) before the deadline: ``upgrade_applied``. It goes back
by itself when it is not: its own trial watch (a hang, no connection), or,
when it cannot even start, ``loa-agent upgrade-guard`` from the base
environment (systemd's ``ExecStartPre``), which counts starts and points
``current`` back once ``max_attempts`` starts or the deadline have passed.
The old version then reports ``upgrade_rolled_back`` with the reason.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import shutil
import ssl
import sys
import sysconfig
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edge_agent.config import AgentConfig, UpgradeConfig
from edge_agent.control import ControlRequestError
from edge_agent.remote_config import healthy_before, write_atomic

log = logging.getLogger(__name__)

PACKAGE = "loa-fleet"
_VERSION_OK = set("0123456789abcdefghijklmnopqrstuvwxyz.+-_")


class UpgradeError(Exception):
    """An upgrade that cannot go ahead; the message names the step."""


def _paths(root: Path) -> tuple[Path, Path, Path]:
    """(current link, pending trial, rollback note) under ``root``."""
    return root / "current", root / "upgrade.pending", root / "upgrade.rolledback"


def current_target(cfg: UpgradeConfig) -> Path:
    """The environment ``current`` points at (the base one before any upgrade)."""
    link, _, _ = _paths(cfg.root)
    try:
        return Path(os.readlink(link))
    except OSError:
        return cfg.base_venv


def point_current(cfg: UpgradeConfig, target: Path) -> None:
    """Swap ``<root>/current`` to ``target`` atomically (a new link renamed over the old)."""
    link, _, _ = _paths(cfg.root)
    tmp = link.with_name(".current.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


@dataclass(frozen=True)
class Trial:
    version: str
    previous: str
    target: str
    deadline: float
    attempts: int
    max_attempts: int

    @classmethod
    def load(cls, path: Path) -> Trial | None:
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                version=str(d["version"]),
                previous=str(d["previous"]),
                target=str(d["target"]),
                deadline=float(d["deadline"]),
                attempts=int(d.get("attempts", 0)),
                max_attempts=int(d.get("max_attempts", 3)),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, path: Path) -> None:
        write_atomic(path, json.dumps(self.__dict__).encode())


def rollback(cfg: UpgradeConfig, reason: str) -> bool:
    """Point ``current`` back at the previous environment and leave a note."""
    _, pending, note = _paths(cfg.root)
    trial = Trial.load(pending)
    if trial is None:
        return False
    point_current(cfg, Path(trial.previous))
    write_atomic(
        note,
        json.dumps({"from": trial.version, "reason": reason, "at": time.time()}).encode(),
    )
    with contextlib.suppress(FileNotFoundError):
        pending.unlink()
    log.error("upgrade to %s rolled back: %s", trial.version, reason)
    return True


def guard(cfg: UpgradeConfig, now: float | None = None) -> str | None:
    """Before every start (systemd ExecStartPre, from the base environment).

    Counts the starts of a version on trial; past ``max_attempts`` or its
    deadline, rolls back. Returns what it did, for the log.
    """
    _, pending, _ = _paths(cfg.root)
    trial = Trial.load(pending)
    if trial is None:
        return None
    attempts = trial.attempts + 1
    if attempts > trial.max_attempts:
        rollback(cfg, f"did not start healthy in {trial.max_attempts} attempts")
        return "rolled back (attempts)"
    if (now or time.time()) > trial.deadline:
        rollback(cfg, "not healthy before the deadline")
        return "rolled back (deadline)"
    Trial(**{**trial.__dict__, "attempts": attempts}).save(pending)
    return f"trial of {trial.version}: start {attempts} of {trial.max_attempts}"


def _ssl_context(agent: AgentConfig) -> ssl.SSLContext:
    ca = agent.broker.ca_file
    return ssl.create_default_context(cafile=str(ca) if ca else None)


def download(url: str, dest: Path, *, agent: AgentConfig, limit: int, timeout: float) -> int:
    """Fetch ``url`` into ``dest`` (at most ``limit`` bytes); returns the size. Blocking."""
    scheme = urlsplit(url).scheme
    if scheme != "https" and not (scheme == "http" and not agent.broker.tls):
        raise UpgradeError(f"download: {scheme}:// refused; upgrades come over https")
    ctx = _ssl_context(agent) if scheme == "https" else None
    req = urllib.request.Request(url, headers={"User-Agent": f"loa-agent/{agent.device.id}"})
    size = 0
    try:
        with (
            urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp,
            dest.open("wb") as out,
        ):
            while chunk := resp.read(64 * 1024):
                size += len(chunk)
                if size > limit:
                    raise UpgradeError(f"download: more than {limit} bytes")
                out.write(chunk)
    except OSError as exc:  # URLError, HTTPError, timeouts, TLS failures
        raise UpgradeError(f"download {url}: {exc}") from None
    return size


def verify(cfg: UpgradeConfig, artifact: Path, signature: bytes) -> None:
    """Ed25519 signature check with the openssl CLI; raises UpgradeError when it fails."""
    with tempfile.NamedTemporaryFile(dir=artifact.parent, suffix=".sig") as sig:
        sig.write(signature)
        sig.flush()
        argv = [
            cfg.openssl,
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            str(cfg.public_key),
            "-rawin",
            "-in",
            str(artifact),
            "-sigfile",
            sig.name,
        ]
        import subprocess

        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise UpgradeError(f"signature check: cannot run openssl: {exc}") from None
    if proc.returncode != 0 or "Signature Verified Successfully" not in proc.stdout:
        raise UpgradeError("signature check failed: not signed by the district's upgrade key")


def _site_packages(venv: Path) -> Path:
    rel = Path(sysconfig.get_path("purelib", vars={"base": "", "platbase": ""}).lstrip("/"))
    return venv / rel


def install(cfg: UpgradeConfig, wheelhouse: Path, version: str) -> Path:
    """A new environment for ``version`` over the base one; returns its path. Blocking."""
    import subprocess

    venv = cfg.root / "venvs" / version
    if venv.exists():
        shutil.rmtree(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)

    def run(argv: list[str], what: str) -> None:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["failed"]
            raise UpgradeError(f"{what}: {tail[0][:300]}")

    run([cfg.python, "-m", "venv", "--without-pip", str(venv)], "making the environment")
    site = _site_packages(venv)
    # The base's packages come after the new environment's own: an upgrade ships
    # only what changed, and its wheels win over the base's.
    (site / "_loa_base.pth").write_text(
        f"import site; site.addsitedir({str(_site_packages(cfg.base_venv))!r})\n"
    )
    run(
        [
            str(cfg.base_venv / "bin" / "python"),
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--quiet",
            "--no-index",
            "--no-input",
            "--disable-pip-version-check",
            "--find-links",
            str(wheelhouse),
            f"{PACKAGE}=={version}",
        ],
        "installing",
    )
    if not (venv / "bin" / "loa-agent").exists():
        raise UpgradeError(f"installing: no loa-agent in {venv}")
    return venv


def _unpack(artifact: Path, into: Path) -> None:
    if into.exists():
        shutil.rmtree(into)
    into.mkdir(parents=True)
    try:
        with tarfile.open(artifact) as tar:
            tar.extractall(into, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise UpgradeError(f"unpacking: {exc}") from None


class UpgradeManager:
    """The ``upgrade`` command and the trial watch of the running version."""

    def __init__(
        self,
        cfg: UpgradeConfig,
        agent: AgentConfig,
        *,
        version: str,
        restart: Callable[[Path | None], None],
        emit: Callable[[str, str], Awaitable[None]],
        healthy: Callable[[], bool],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.agent = agent
        self.version = version
        self.restart = restart
        self.emit = emit
        self.healthy = healthy
        self.clock = clock
        self._lock = asyncio.Lock()
        trial = Trial.load(_paths(cfg.root)[1])
        #: A trial of this very version: this process must prove itself.
        self.trial = trial if trial is not None and trial.version == version else None

    def info(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "current": str(current_target(self.cfg)),
            "trial": None if self.trial is None else self.trial.__dict__,
        }

    async def command(self, args: dict[str, Any]) -> dict[str, Any]:
        url, version, digest = args.get("url"), args.get("version"), args.get("sha256")
        size, signature = args.get("size"), args.get("signature")
        if not isinstance(url, str) or not url:
            raise ControlRequestError("'url' is required")
        if not isinstance(version, str) or not version or not set(version) <= _VERSION_OK:
            raise ControlRequestError("'version' must be a version string")
        if not isinstance(digest, str) or len(digest) != 64:
            raise ControlRequestError("'sha256' must be 64 hex digits")
        if isinstance(size, bool) or not isinstance(size, int) or not size > 0:
            raise ControlRequestError("'size' must be the artifact's size in bytes")
        if size > self.cfg.max_bytes:
            raise ControlRequestError(f"{size} bytes exceeds upgrade.max_bytes", code="failed")
        try:
            sig = base64.b64decode(str(signature), validate=True)
        except ValueError:
            raise ControlRequestError("'signature' must be base64") from None
        if version == self.version:
            return {"version": version, "changed": False}
        if self.trial is not None or self._lock.locked():
            raise ControlRequestError("an upgrade is already in progress", code="failed")
        async with self._lock:
            try:
                venv = await asyncio.to_thread(self._prepare, url, version, digest, size, sig)
            except UpgradeError as exc:
                log.error("upgrade to %s refused: %s", version, exc)
                raise ControlRequestError(str(exc), code="failed") from None
        previous = current_target(self.cfg)
        _, pending, _ = _paths(self.cfg.root)
        trial = Trial(
            version=version,
            previous=str(previous),
            target=str(venv),
            deadline=self.clock() + self.cfg.health_deadline_s,
            attempts=1,  # the start this process execs into; the guard counts the next
            max_attempts=self.cfg.max_attempts,
        )
        trial.save(pending)
        point_current(self.cfg, venv)
        log.warning(
            "upgrade %s -> %s installed in %s; restarting into it", self.version, version, venv
        )
        return {"version": version, "previous": self.version, "restarting": True}

    def _prepare(self, url: str, version: str, digest: str, size: int, sig: bytes) -> Path:
        downloads = self.cfg.root / "downloads"
        downloads.mkdir(parents=True, exist_ok=True)
        artifact = downloads / f"{version}.tar"
        got = download(
            url,
            artifact,
            agent=self.agent,
            limit=min(size, self.cfg.max_bytes),
            timeout=self.cfg.download_timeout_s,
        )
        try:
            if got != size:
                raise UpgradeError(f"download: {got} bytes, expected {size}")
            if hashlib.sha256(artifact.read_bytes()).hexdigest() != digest.lower():
                raise UpgradeError("download: SHA-256 does not match")
            verify(self.cfg, artifact, sig)
            wheels = downloads / version
            _unpack(artifact, wheels)
            return install(self.cfg, wheels, version)
        finally:
            with contextlib.suppress(FileNotFoundError):
                artifact.unlink()

    async def after_command(self, result: Any) -> None:
        if isinstance(result, dict) and result.get("restarting"):
            self.restart(self.cfg.root / "current" / "bin" / "loa-agent")

    async def announce(self) -> None:
        """At start: report a rollback that brought this version back."""
        _, _, note = _paths(self.cfg.root)
        try:
            data = json.loads(note.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        note.unlink()
        await self.emit(
            "rolled_back", f"{data.get('from')} -> {self.version}: {data.get('reason', '')}"[:500]
        )

    async def watch(self, tick_s: float = 0.5) -> None:
        """On trial: keep this version once healthy; at the deadline, go back."""
        trial = self.trial
        if trial is None:
            return
        healthy = await healthy_before(self.healthy, trial.deadline, self.clock, tick_s)
        self.trial = None
        if healthy:
            with contextlib.suppress(FileNotFoundError):
                _paths(self.cfg.root)[1].unlink()
            log.info("upgrade to %s kept: healthy before its deadline", trial.version)
            await self.emit("applied", f"{Path(trial.previous).name} -> {trial.version}")
        elif rollback(self.cfg, "not healthy before the deadline"):
            self.restart(self.cfg.root / "current" / "bin" / "loa-agent")


def register(remote: Any, manager: UpgradeManager) -> None:
    remote.register("upgrade", manager.command, after=manager.after_command)


def guard_main(config: Path) -> int:
    """``loa-agent upgrade-guard --config PATH`` (ExecStartPre): never fails the start."""
    from edge_agent.config import load_config
    from edge_agent.errors import ConfigError

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        print(f"loa-agent upgrade-guard: {exc}", file=sys.stderr)
        return 0
    if cfg.upgrade is None:
        return 0
    done = guard(cfg.upgrade)
    if done:
        print(f"loa-agent upgrade-guard: {done}", file=sys.stderr)
    return 0


__all__ = [
    "UpgradeError",
    "UpgradeManager",
    "download",
    "guard",
    "guard_main",
    "install",
    "point_current",
    "register",
    "rollback",
    "verify",
]
