"""Configuration from the district: apply a new agent.toml, keep it only if healthy.

The ``config`` command carries either a whole new agent.toml (``{"toml":
"..."}``) or changed fields (``{"set": {"modem.poll_s": 60, ...}}``; ``null``
removes a key), and ``deadline_s`` (default 180 s). The agent:

1. builds the new text (field changes are made with tomlkit, so the file's
   comments survive) and validates it with its own parser
   (``edge_agent.config.parse_config``): an unparseable or invalid config is
   refused, naming the field, and nothing is written;
2. refuses changes to the trust anchors provisioning set (``device.id``, the
   ``[tunnel]`` and ``[upgrade]`` sections);
3. writes it atomically (temp file, fsync, rename) after keeping the running
   one as ``agent.toml.prev``, records a trial (``agent.toml.pending``: new
   and previous version, deadline), answers, and restarts into it;
4. the restarted agent keeps the new config once it is connected to the
   broker, has polled every probe and has had a message acknowledged, before
   the deadline: ``config_applied`` event, trial removed;
5. otherwise (never connected: a broker that refuses it, a wrong URL; or the
   agent crashing at start, restarted by systemd past the deadline) it puts
   ``agent.toml.prev`` back itself and restarts; the old config then reports
   a ``config_rolled_back`` event with the reason.

The config version is the first 12 hex digits of the file's SHA-256
(``edge_agent.remote.config_version``), reported in full state reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import tomllib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.config import AgentConfig, parse_config
from edge_agent.control import ControlRequestError
from edge_agent.errors import ConfigError
from edge_agent.remote import config_version, version_of

log = logging.getLogger(__name__)

#: A pushed agent.toml may be at most this long (a full one is ~5 KB; a Command <= 64 KiB).
MAX_TOML_BYTES = 48 * 1024
DEFAULT_DEADLINE_S = 180.0
MAX_DEADLINE_S = 3600.0
#: Set only by provisioning; a push may not change them. A whole section, or one
#: field of one: the SMS number and key are trust anchors (a push that redirected
#: the fault SMS would spend the SIM's credit on someone else's number), while
#: ``[sms]``'s rate limits are the district's to tune remotely.
PROTECTED = ("device.id", "tunnel", "upgrade", "sms.number", "sms.key_file")


def _paths(path: Path) -> tuple[Path, Path, Path]:
    """(previous, pending trial, rollback note) next to ``path``."""
    return (
        path.with_name(path.name + ".prev"),
        path.with_name(path.name + ".pending"),
        path.with_name(path.name + ".rolledback"),
    )


def write_atomic(path: Path, data: bytes, *, mode: int = 0o640) -> None:
    """Write ``path`` so that a power cut leaves the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _set_fields(text: str, changes: dict[str, Any]) -> str:
    import tomlkit

    doc = tomlkit.parse(text)
    for dotted, value in changes.items():
        parts = dotted.split(".")
        if not all(parts) or len(parts) > 3:
            raise ControlRequestError(f"'set': bad key {dotted!r} (section.key)")
        table: Any = doc
        for part in parts[:-1]:
            if part not in table:
                if value is None:
                    break
                table[part] = tomlkit.table()
            table = table[part]
            if not isinstance(table, dict):
                raise ControlRequestError(f"'set': {dotted!r}: {part} is not a table")
        else:
            if value is None:
                table.pop(parts[-1], None)
            else:
                table[parts[-1]] = value
    return tomlkit.dumps(doc)


def _setting(cfg: AgentConfig, dotted: str) -> object:
    value: object = cfg
    for part in dotted.split("."):
        value = getattr(value, part, None)
    return value


def _protected(old: AgentConfig, new: AgentConfig) -> str | None:
    for dotted in PROTECTED:
        if _setting(old, dotted) != _setting(new, dotted):
            return dotted if "." in dotted else f"[{dotted}]"
    return None


def validate_text(text: str, running: AgentConfig) -> AgentConfig:
    """Parse and validate a candidate agent.toml; raises ControlRequestError naming the field."""
    if len(text.encode()) > MAX_TOML_BYTES:
        raise ControlRequestError(f"config longer than {MAX_TOML_BYTES} bytes")
    try:
        cfg = parse_config(tomllib.loads(text))
    except tomllib.TOMLDecodeError as exc:
        raise ControlRequestError(
            f"config rejected, not valid TOML: {exc}; nothing applied"
        ) from None
    except ConfigError as exc:
        raise ControlRequestError(f"config rejected: {exc}; nothing applied") from None
    field = _protected(running, cfg)
    if field is not None:
        raise ControlRequestError(
            f"config rejected: {field} is set by provisioning and cannot be pushed; nothing applied"
        )
    return cfg


@dataclass(frozen=True)
class Trial:
    """A config on probation (``agent.toml.pending``)."""

    version: str | None
    previous: str | None
    deadline: float
    command: str

    @classmethod
    def load(cls, path: Path) -> Trial | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                version=data.get("version"),
                previous=data.get("previous"),
                deadline=float(data["deadline"]),
                command=str(data.get("command", "")),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None


def rollback(path: Path, reason: str) -> bool:
    """Put the previous config back (atomically) and leave a note; False if there is none."""
    prev, pending, note = _paths(path)
    if not prev.exists():
        with contextlib.suppress(FileNotFoundError):
            pending.unlink()
        return False
    trial = Trial.load(pending)
    write_atomic(
        note,
        json.dumps(
            {
                "reason": reason,
                "from": config_version(path),
                "to": trial.previous if trial else config_version(prev),
                "at": time.time(),
            }
        ).encode(),
    )
    os.replace(prev, path)
    with contextlib.suppress(FileNotFoundError):
        pending.unlink()
    log.error("config rolled back to the previous agent.toml: %s", reason)
    return True


def check_at_start(path: Path, now: float | None = None) -> None:
    """Before loading: roll back a trial whose deadline passed (a crash loop, a hang)."""
    _, pending, _ = _paths(path)
    trial = Trial.load(pending)
    if trial is None:
        if pending.exists():
            pending.unlink()
        return
    if (now or time.time()) > trial.deadline:
        rollback(path, "not healthy before the deadline (restarted after it)")


def take_rollback_note(path: Path) -> dict[str, Any] | None:
    """The note a rollback left (read once, then removed)."""
    _, _, note = _paths(path)
    try:
        data = json.loads(note.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    with contextlib.suppress(FileNotFoundError):
        note.unlink()
    return data if isinstance(data, dict) else None


class ConfigManager:
    """The ``config`` command and the running trial of one agent."""

    def __init__(
        self,
        path: Path,
        running: AgentConfig,
        *,
        restart: Callable[[], None],
        emit: Callable[[str, str], Awaitable[None]],
        healthy: Callable[[], bool],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.running = running
        self.restart = restart
        self.emit = emit
        self.healthy = healthy
        self.clock = clock
        self.trial = Trial.load(_paths(path)[1])

    def info(self) -> dict[str, Any]:
        return {
            "version": config_version(self.path),
            "trial": None
            if self.trial is None
            else {"version": self.trial.version, "deadline": self.trial.deadline},
        }

    async def command(self, args: dict[str, Any]) -> dict[str, Any]:
        """Validate and apply; the agent restarts after the reply is stored."""
        if self.trial is not None:
            raise ControlRequestError("a pushed config is still on trial; try after it settles")
        deadline_s = args.get("deadline_s", DEFAULT_DEADLINE_S)
        if isinstance(deadline_s, bool) or not isinstance(deadline_s, int | float):
            raise ControlRequestError("'deadline_s' must be a number of seconds")
        if not 10 <= deadline_s <= MAX_DEADLINE_S:
            raise ControlRequestError(f"'deadline_s' must be 10..{MAX_DEADLINE_S:g} s")
        current = self.path.read_text(encoding="utf-8")
        if isinstance(args.get("toml"), str):
            text = args["toml"]
        elif isinstance(args.get("set"), dict) and args["set"]:
            text = _set_fields(current, args["set"])
        else:
            raise ControlRequestError("send 'toml' (a whole agent.toml) or 'set' (changed fields)")
        validate_text(text, self.running)
        previous, version = config_version(self.path), version_of(text.encode())
        if version == previous:
            return {"version": version, "changed": False}
        prev, pending, _ = _paths(self.path)
        write_atomic(prev, current.encode())
        deadline = self.clock() + float(deadline_s)
        trial = {"version": version, "previous": previous, "deadline": deadline}
        write_atomic(pending, json.dumps({**trial, "command": str(args.get("_id", ""))}).encode())
        write_atomic(self.path, text.encode())
        log.warning("config %s written (was %s); restarting to try it", version, previous)
        return {**trial, "changed": True, "restarting": True}

    async def after_command(self, result: Any) -> None:
        if isinstance(result, dict) and result.get("restarting"):
            self.restart()

    async def announce(self) -> None:
        """At start: report a rollback that brought this config back."""
        note = take_rollback_note(self.path)
        if note is not None:
            await self.emit(
                "rolled_back",
                f"{note.get('from')} -> {note.get('to')}: {note.get('reason', '')}"[:500],
            )

    async def watch(self, tick_s: float = 0.5) -> None:
        """While on trial: keep the config once healthy, or roll back at the deadline."""
        trial = self.trial
        if trial is None:
            return
        healthy = await healthy_before(self.healthy, trial.deadline, self.clock, tick_s)
        self.trial = None
        if healthy:
            _, pending, _ = _paths(self.path)
            with contextlib.suppress(FileNotFoundError):
                pending.unlink()
            log.info("config %s kept: healthy before its deadline", trial.version)
            await self.emit("applied", f"{trial.previous} -> {trial.version}")
        elif rollback(self.path, "not healthy before the deadline"):
            self.restart()


async def healthy_before(
    healthy: Callable[[], bool], deadline: float, clock: Callable[[], float], tick_s: float
) -> bool:
    """Wait until ``healthy()`` (True) or ``clock()`` passes ``deadline`` (False)."""
    while not healthy():
        if clock() > deadline:
            return False
        await asyncio.sleep(tick_s)
    return True


def register(remote: Any, manager: ConfigManager) -> None:
    """Add the ``config`` action to the remote commands."""
    remote.register("config", manager.command, after=manager.after_command)


__all__ = [
    "MAX_TOML_BYTES",
    "ConfigManager",
    "Trial",
    "check_at_start",
    "healthy_before",
    "register",
    "rollback",
    "validate_text",
    "write_atomic",
]
