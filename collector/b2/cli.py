"""``loa-collector inventory ...`` and ``loa-collector report b2 ...``.

    loa-collector inventory import FILE [--remove-missing]
    loa-collector inventory export [--format csv|xlsx] [-o FILE]
    loa-collector report b2 [--as-of 2023-07-31] [--format text|summary|json|csv|xlsx|html]
                            [--lang vi|en] [--scope commune|district|province] [-o FILE]

Each takes ``--config collector.toml`` (its [db] and [report] sections: a
SQLite ``path`` or a ``url``, PostgreSQL included), or ``--db FILE|URL`` to
name the store directly (a SQLite file, ``sqlite:///path`` or
``postgresql://...``). :func:`register` plugs them into ``loa-collector``
(``collector.cli.SUBCOMMANDS``); ``run_*`` run a parsed command and return the
exit status (0 ok, 1 bad input or unusable database, with a message on stderr
naming the file, row and column or the setting).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Final, TypeVar

from collector.b2.dates import AsOfError, parse_as_of
from collector.b2.service import b2_table, export_inventory, import_inventory, month_over_month
from collector.b2.settings import ReportSettings
from collector.b2.table import Scope
from collector.config import DbConfig
from collector.correlation import CorrelationConfig
from collector.exports import Format, render
from collector.exports.as_text import to_text
from collector.inventory import InventoryError
from collector.store.base import Repository, StoreError

T = TypeVar("T")

#: Same default as ``loa-collector --config``.
DEFAULT_CONFIG: Final = "/etc/loa-collector/collector.toml"


class CliError(Exception):
    """A problem to report on stderr with exit status 2."""


def _db_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        metavar="FILE|URL",
        help="the collector's store: a SQLite file, sqlite:///path or postgresql://... "
        "(overrides --config's [db])",
    )


def _settings_and_db(
    args: argparse.Namespace,
) -> tuple[ReportSettings, DbConfig, CorrelationConfig]:
    """``[report]``, the store and ``[correlation]`` (defaults with ``--db``)."""
    from collector.store.engines import StoreOptionError, db_option

    if args.db is not None:
        try:
            db = db_option(str(args.db))
        except StoreOptionError as exc:
            raise CliError(str(exc)) from None
        return ReportSettings(), db, CorrelationConfig()
    from collector.config import ConfigError, load_config

    path = Path(args.config or DEFAULT_CONFIG)
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        raise CliError(str(exc)) from exc
    return cfg.report, cfg.db, cfg.correlation


def _with_repo(db: DbConfig, work: Callable[[Repository], Awaitable[T]]) -> T:
    """Run ``work`` on the store ``db`` names (``open_store``, as ``serve`` does)."""
    from collector.store.engines import describe, open_store, sqlite_file

    file = sqlite_file(db)
    if file is not None and not file.exists():
        # Opening would create an empty file; a mistyped path should not.
        raise CliError(f"{describe(db)}: no such database (start the collector once first)")

    async def go() -> T:
        repo = await open_store(db)
        try:
            await repo.require_schema()
            return await work(repo)
        finally:
            await repo.close()

    try:
        return asyncio.run(go())
    except StoreError as exc:
        raise CliError(str(exc)) from exc


def _write(out: str | None, body: bytes) -> None:
    if out is None or out == "-":
        sys.stdout.buffer.write(body)
        sys.stdout.buffer.flush()
        return
    try:
        Path(out).write_bytes(body)
    except OSError as exc:
        raise CliError(f"{out}: cannot write: {exc.strerror}") from exc


# --- inventory ------------------------------------------------------------------------------


def _configure_inventory(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser("inventory", help="the district's inventory of speaker clusters")
    isub = p.add_subparsers(dest="inventory_command", required=True)
    imp = isub.add_parser(
        "import", parents=[parent], help="import the inventory from CSV or XLSX (all or nothing)"
    )
    imp.add_argument("file", type=Path, help="CSV (UTF-8, with or without BOM) or XLSX")
    imp.add_argument(
        "--remove-missing",
        action="store_true",
        help="remove inventory devices that are not in the file (their history stays)",
    )
    imp.add_argument("--actor", default="cli", help="name written to the audit log")
    _db_argument(imp)
    imp.set_defaults(func=run_inventory)
    exp = isub.add_parser(
        "export", parents=[parent], help="export the inventory (re-imports unchanged)"
    )
    exp.add_argument("--format", choices=["csv", "xlsx"], default="csv")
    exp.add_argument("--lang", choices=["vi", "en"], default="vi", help="header language")
    exp.add_argument("-o", "--output", help="file to write (default: standard output)")
    _db_argument(exp)
    exp.set_defaults(func=run_inventory)


def run_inventory(args: argparse.Namespace) -> int:
    """Run a parsed ``inventory`` command."""
    try:
        _, db, _ = _settings_and_db(args)
        if args.inventory_command == "import":
            try:
                data = args.file.read_bytes()
            except OSError as exc:
                raise CliError(f"{args.file}: cannot read: {exc.strerror}") from exc
            outcome = _with_repo(
                db,
                lambda repo: import_inventory(
                    repo,
                    data,
                    source=str(args.file),
                    remove_missing=args.remove_missing,
                    actor=args.actor,
                ),
            )
            print(f"{args.file}: {outcome.devices} devices; {outcome.plan.describe()}")
            return 0
        if args.output is None and args.format == "xlsx" and sys.stdout.isatty():
            raise CliError("XLSX is binary: give -o FILE")
        body = _with_repo(db, lambda repo: export_inventory(repo, fmt=args.format, lang=args.lang))
        _write(args.output, body)
        return 0
    except InventoryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


# --- report ---------------------------------------------------------------------------------


def _configure_report(sub: Any, parent: argparse.ArgumentParser) -> Any:
    p = sub.add_parser("report", help="reports")
    rsub = p.add_subparsers(dest="report_command", required=True)
    b2 = rsub.add_parser("b2", parents=[parent], help="the B2 table as of a date (default: now)")
    b2.add_argument(
        "--as-of",
        help="YYYY-MM-DD or dd/mm/yyyy (end of that day) or an ISO date-time; default now",
    )
    b2.add_argument(
        "--format",
        choices=["text", "summary", *(f.value for f in Format)],
        help="text: the table for a terminal (the default, unless -o names a .html, .csv, "
        ".xlsx or .json file); summary: only the summary sentence (and --compare's)",
    )
    b2.add_argument("--lang", choices=["vi", "en"], help="default: [report] lang")
    b2.add_argument("--scope", choices=[s.value for s in Scope], default=Scope.COMMUNE.value)
    b2.add_argument("--district", help="only this district (as written in the inventory)")
    b2.add_argument("--province", help="only this province (as written in the inventory)")
    b2.add_argument("--unit", help="reporting unit for the title; default: [report] unit_name")
    b2.add_argument("--tz", help="time zone; default: [report] time_zone")
    b2.add_argument(
        "--compare",
        action="store_true",
        help="with --format summary: add the change since the end of the previous month",
    )
    b2.add_argument("-o", "--output", help="file to write (default: standard output)")
    _db_argument(b2)
    b2.set_defaults(func=run_report)
    return rsub


def register(
    sub: Any,
    parent: argparse.ArgumentParser,
    *,
    report_commands: Sequence[Callable[[Any, argparse.ArgumentParser], None]] = (),
) -> None:
    """Add ``inventory`` and ``report`` to ``loa-collector``'s subcommands.

    ``parent`` carries the shared ``--config`` option; each leaf command gets
    ``func(args) -> int`` (0 ok, 1 with a message on stderr). ``report_commands``
    add more ``report ...`` commands (``report send`` of collector.alerts.cli).
    """
    _configure_inventory(sub, parent)
    rsub = _configure_report(sub, parent)
    for add in report_commands:
        add(rsub, parent)


def _format_for(output: str | None) -> str:
    """The format a file name asks for (``b2.html``); text for a terminal or anything else."""
    suffix = Path(output).suffix.lower().lstrip(".") if output and output != "-" else ""
    return suffix if suffix in {f.value for f in Format} else "text"


def run_report(args: argparse.Namespace) -> int:
    """Run a parsed ``report`` command."""
    try:
        settings, db, correlation = _settings_and_db(args)
        if args.tz:
            settings = replace(settings, time_zone=args.tz)
        if args.unit is not None:
            settings = replace(settings, unit_name=args.unit)
        try:
            tz = settings.tz()
            as_of = parse_as_of(args.as_of, tz) if args.as_of else dt.datetime.now(tz)
        except AsOfError as exc:
            raise CliError(str(exc)) from exc
        lang = args.lang or settings.lang
        fmt = args.format or _format_for(args.output)
        if args.output is None and fmt == "xlsx" and sys.stdout.isatty():
            raise CliError("XLSX is binary: give -o FILE")

        async def work(repo: Repository) -> bytes:
            table = await b2_table(
                repo,
                as_of=as_of,
                settings=settings,
                scope=Scope(args.scope),
                lang=lang,
                district=args.district,
                province=args.province,
                correlation=correlation,
            )
            if fmt == "text":
                return to_text(table).encode()
            if fmt != "summary":
                return render(table, Format(fmt)).body
            text = table.summary
            if args.compare:
                text += "\n" + (await month_over_month(repo, as_of=as_of, lang=lang)).sentence
            return (text + "\n").encode()

        _write(args.output, _with_repo(db, work))
        return 0
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m collector.b2.cli inventory|report ...`` (same as ``loa-collector``)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--config", default=DEFAULT_CONFIG, help="collector TOML config")
    parser = argparse.ArgumentParser(prog="loa-collector", description=__doc__.splitlines()[0])
    register(parser.add_subparsers(dest="command", required=True), parent)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
