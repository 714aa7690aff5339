"""``loa-collector``: serve the collector, manage users and tokens, migrate the database.

Subcommands register themselves: a module exports ``register(subparsers,
parent)`` that adds its parser and sets ``func`` to a ``(args) -> int``
callable, and is listed in ``SUBCOMMANDS``. Every subcommand gets ``--config``
from ``parent``; ``load(args)`` and ``repository(cfg)`` give it the validated
config and a migrated store. ``inventory import``, ``report b2`` and
``provision`` plug in the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from collector import (
    broker_config,
    broker_rabbitmq,
    findings_cli,
    provision,
    remote_cli,
    repairs_cli,
    users,
)
from collector.alerts import cli as alerts_cli
from collector.auth import hash_password, new_secret, secret_hash
from collector.b2.cli import register as _b2_register
from collector.config import CollectorConfig, ConfigError, load_config
from collector.store.base import Conflict, NotFound, Role, StoreError
from collector.store.engines import describe, open_store
from collector.store.sqlite import SQLiteRepository

DEFAULT_CONFIG = "/etc/loa-collector/collector.toml"

Register = Callable[[Any, argparse.ArgumentParser], None]


class CliError(Exception):
    """A failure to report to the user as one line, with exit status 1."""


def load(args: argparse.Namespace) -> CollectorConfig:
    return load_config(Path(args.config))


@asynccontextmanager
async def repository(
    cfg: CollectorConfig, *, migrated: bool = True
) -> AsyncIterator[SQLiteRepository]:
    """The configured store, checked to be at the current schema (unless ``migrated=False``)."""
    repo = await open_store(cfg.db)
    try:
        if migrated:
            await repo.require_schema()
        yield repo
    finally:
        await repo.close()


# -- serve ---------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from collector.app import create_app

    cfg = load(args)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    web.run_app(
        create_app(cfg),
        host=cfg.http.host,
        port=cfg.http.port,
        print=lambda s: logging.getLogger("loa.collector").info("%s", s.strip()),
        handle_signals=True,
    )
    return 0


def _register_serve(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser("serve", parents=[parent], help="run the collector (ingest, API)")
    p.set_defaults(func=_serve)


# -- db ------------------------------------------------------------------------------------


def _db_migrate(args: argparse.Namespace) -> int:
    cfg = load(args)

    async def go() -> int:
        async with repository(cfg, migrated=False) as repo:
            before = await repo.schema_version()
            after = await repo.migrate()
        print(f"{describe(cfg.db)}: schema version {before} -> {after}")
        return 0

    return asyncio.run(go())


def _db_copy(args: argparse.Namespace) -> int:
    from collector.store.copy import copy_store, describe_url
    from collector.store.migrations import LATEST

    log = logging.getLogger("loa.collector.copy")

    def progress(table: str, done: int, total: int) -> None:
        if done == total:
            log.info("%s: %d rows copied", table, done)

    report = asyncio.run(copy_store(args.from_url, args.to_url, progress=progress))
    if report.migrated:
        print(f"{describe_url(args.to_url)}: schema version 0 -> {LATEST}")
    print(report.format())
    rate = report.rows / report.seconds if report.seconds > 0 else 0.0
    print(
        f"copied {report.rows} rows from {report.source} to {report.destination}"
        f" in {report.seconds:.1f} s ({rate:.0f} rows/s); row counts verified"
    )
    return 0


def _register_db(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser("db", help="database maintenance")
    dsub = p.add_subparsers(dest="db_command", required=True)
    m = dsub.add_parser("migrate", parents=[parent], help="bring the schema to this version")
    m.set_defaults(func=_db_migrate)
    c = dsub.add_parser(
        "copy",
        help="copy a whole store into an empty one (SQLite <-> PostgreSQL), in one transaction",
    )
    c.add_argument(
        "--from",
        dest="from_url",
        required=True,
        metavar="URL",
        help="sqlite:///path or postgresql://...",
    )
    c.add_argument(
        "--to", dest="to_url", required=True, metavar="URL", help="an empty store (migrated if new)"
    )
    c.set_defaults(func=_db_copy)


# -- users ---------------------------------------------------------------------------------


def _read_password(args: argparse.Namespace) -> str:
    if args.password_file:
        try:
            lines = Path(args.password_file).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise CliError(f"--password-file {args.password_file}: {exc.strerror}") from None
        password = lines[0] if lines else ""
    elif args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            raise CliError("passwords do not match")
    if len(password) < 8:
        raise CliError("password: at least 8 characters")
    return password


def _users_add(args: argparse.Namespace) -> int:
    cfg = load(args)
    role = Role(args.role)
    communes = frozenset(args.commune or ())
    try:
        users.check_scope(role, communes)
        users.check_name(args.name)
    except users.UserRuleError as exc:
        option = {"communes": "--commune", "name": "NAME"}.get(exc.field, exc.field)
        raise CliError(f"{option}: {exc.message}") from None
    password_hash = hash_password(_read_password(args))

    async def go() -> int:
        async with repository(cfg) as repo:
            await repo.add_user(
                args.name, role=role, communes=communes, password_hash=password_hash
            )
        print(
            f"user {args.name} added as {role}"
            + (f" for {', '.join(sorted(communes))}" if communes else "")
        )
        return 0

    return asyncio.run(go())


def _users_token(args: argparse.Namespace) -> int:
    cfg = load(args)
    token = new_secret()

    async def go() -> int:
        import time

        async with repository(cfg) as repo:
            await repo.add_token(
                args.name, token_hash=secret_hash(token), label=args.label, at=time.time()
            )
        # The token is shown once, on stdout only; the store keeps its hash.
        print(token)
        return 0

    return asyncio.run(go())


def _users_unlock(args: argparse.Namespace) -> int:
    cfg = load(args)

    async def go() -> int:
        async with repository(cfg) as repo:
            await repo.get_user(args.name)  # NotFound: "user 'x' does not exist"
            cleared = await repo.throttle_unlock(args.name, actor="cli")
        print(f"login delays of {args.name} cleared ({cleared} key(s))")
        return 0

    return asyncio.run(go())


def _register_users(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser("users", help="manage users and API tokens")
    usub = p.add_subparsers(dest="users_command", required=True)
    a = usub.add_parser("add", parents=[parent], help="add a user")
    a.add_argument("name")
    a.add_argument("--role", required=True, choices=[r.value for r in Role])
    a.add_argument("--commune", action="append", metavar="CODE", help="repeatable")
    src = a.add_mutually_exclusive_group()
    src.add_argument("--password-file", help="read the password from this file's first line")
    src.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    a.set_defaults(func=_users_add)
    t = usub.add_parser("token", parents=[parent], help="create an API token (printed once)")
    t.add_argument("name")
    t.add_argument("--label", default="", help="what the token is for")
    t.set_defaults(func=_users_token)
    u = usub.add_parser(
        "unlock", parents=[parent], help="clear a user's login delays after failed sign-ins"
    )
    u.add_argument("name")
    u.set_defaults(func=_users_unlock)


def _register_b2(sub: Any, parent: argparse.ArgumentParser) -> None:
    _b2_register(sub, parent, report_commands=[alerts_cli.register_report_send])


#: Subcommand registrars, in help order. Add yours here.
SUBCOMMANDS: list[Register] = [
    _register_serve,
    _register_users,
    _register_db,
    _register_b2,
    alerts_cli.register,
    provision.register,
    broker_config.register,
    broker_rabbitmq.register,
    repairs_cli.register,
    findings_cli.register,
    remote_cli.register,
]


def build_parser() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--config", default=DEFAULT_CONFIG, help=f"collector TOML config (default {DEFAULT_CONFIG})"
    )
    parser = argparse.ArgumentParser(prog="loa-collector", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for register in SUBCOMMANDS:
        register(sub, parent)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except (ConfigError, StoreError, CliError) as exc:
        # Conflict and NotFound are StoreErrors: "user x exists already", etc.
        print(f"loa-collector: {exc}", file=sys.stderr)
        return 1


__all__ = ["Conflict", "NotFound", "build_parser", "load", "main", "repository"]

if __name__ == "__main__":
    sys.exit(main())
