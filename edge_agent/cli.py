"""``loa-agent``: the edge agent's command line.

``loa-agent run --config /etc/loa-agent/agent.toml`` runs the daemon (under
systemd: ``Type=notify``, ``WatchdogSec=``; SIGTERM stops it in order).

Subcommands register themselves in ``SUBCOMMANDS``: a module path whose
``add_parser(subparsers)`` adds its parser and sets ``func`` (taking the
parsed ``argparse.Namespace``, returning the exit code). The technician
commands (``status``, ``diag``, ``at``, ``modbus``, ``outbox``, ``events``)
plug in the same way and talk to the daemon through
``edge_agent.control.request``.

Exit codes: 0 clean stop, 2 bad config or usage, 1 any other failure.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from edge_agent.config import AgentConfig, load_config
from edge_agent.errors import AgentError, ConfigError

DEFAULT_CONFIG = Path("/etc/loa-agent/agent.toml")
#: Modules implementing ``add_parser(subparsers) -> None``; a missing one is skipped.
SUBCOMMANDS: tuple[str, ...] = ("edge_agent.tech.cli",)

log = logging.getLogger("edge_agent")


def _setup_logging(level: str) -> None:
    # journald adds its own timestamps; keep the line short.
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Their DEBUG is one line per SQL statement / MQTT packet: useful only when asked for.
    logging.getLogger("aiosqlite").setLevel(logging.WARNING)
    logging.getLogger("edge_agent.uplink.mqtt").setLevel(max(logging.INFO, logging.root.level))


def _load(path: Path) -> AgentConfig:
    """The config, after settling a pushed one on trial (``edge_agent.remote_config``)."""
    from edge_agent import remote_config

    remote_config.check_at_start(path)
    try:
        return load_config(path)
    except ConfigError as exc:
        if not remote_config.rollback(path, f"does not load: {exc}"):
            raise
        return load_config(path)


def _run(args: argparse.Namespace) -> int:
    try:
        cfg = _load(args.config)
    except ConfigError as exc:
        print(f"loa-agent: bad config: {exc}", file=sys.stderr)
        return 2
    _setup_logging(cfg.log_level)

    from edge_agent.agent import Agent
    from edge_agent.sdnotify import Notifier

    agent = Agent(cfg, notifier=Notifier.from_env(), config_path=Path(args.config))

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await agent.run(stop)

    try:
        asyncio.run(main())
    except ConfigError as exc:
        log.error("bad config: %s", exc)
        return 2
    except AgentError as exc:
        log.error("%s", exc)
        return 1
    if agent.restart_requested:
        _reexec(agent.restart_into, Path(args.config))
    return 0


def _reexec(into: Path | None, config: Path) -> None:
    """Start again in this process (same PID for systemd): this same command, or
    ``into`` (another environment's loa-agent, after an upgrade or its rollback)."""
    argv = (
        [str(into), "run", "--config", str(config)]
        if into is not None
        else [sys.executable, *sys.orig_argv[1:]]
    )
    log.warning("restarting: %s", " ".join(argv))
    logging.shutdown()
    sys.stderr.flush()
    os.execv(argv[0], argv)


def _upgrade_guard(args: argparse.Namespace) -> int:
    from edge_agent.upgrade import guard_main

    return guard_main(args.config)


def build_parser(*, subcommands: bool = True) -> argparse.ArgumentParser:
    """The parser; ``subcommands=False`` leaves out the technician commands' modules."""
    parser = argparse.ArgumentParser(
        prog="loa-agent", description="loa-fleet edge agent for a speaker cluster's controller"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the agent daemon")
    run.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help=f"agent.toml (default {DEFAULT_CONFIG})"
    )
    run.set_defaults(func=_run)
    guard = sub.add_parser(
        "upgrade-guard", help="before a start: undo an upgrade that does not start (systemd)"
    )
    guard.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    guard.set_defaults(func=_upgrade_guard)
    for name in SUBCOMMANDS if subcommands else ():
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue  # not built yet
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The daemon does not load the technician commands: their imports would sit
    # in its resident memory for nothing (32 MiB budget on a 512 MB controller).
    daemon = bool(argv) and argv[0] == "run"
    args = build_parser(subcommands=not daemon).parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
