"""``loa-collector repairs``: repair tickets from the server's shell.

    loa-collector repairs list [--state open] [--device D] [--commune C] [--format text|json]
    loa-collector repairs open DEVICE [--note N] [--contractor C [--technician T]]
    loa-collector repairs open --csv FILE          # many at once; all or nothing
    loa-collector repairs start TICKET --contractor C [--technician T] [--note N]
    loa-collector repairs comment TICKET --note N
    loa-collector repairs resolve TICKET [--note N]
    loa-collector repairs cancel TICKET --note N

The same store calls and rules as the REST API (``collector.repairs.open_ticket``
opens a ticket already assigned to a contractor in one step). Steps are
recorded as ``--actor`` (default ``cli``) in the ticket history and the audit
log. The CSV has a header row with ``device_id`` and optionally ``note``,
``contractor``, ``technician`` (UTF-8, with or without BOM; Excel's ``;`` too);
every row is checked before any ticket is opened, and a bad row is named with
its line number.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime as dt
import io
import json
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from collector import repairs
from collector.exports.as_text import table_lines
from collector.store.base import NotFound, Repository, StoreError, Ticket, TicketState
from fleet_protocol import valid_device_id

T = TypeVar("T")

#: Longest note, contractor or technician text (as the API).
MAX_TEXT: Final = 2000
MAX_NAME: Final = 200
CSV_COLUMNS: Final = ("device_id", "note", "contractor", "technician")


class RepairsCliError(Exception):
    """A problem to report on stderr with exit status 1."""


@dataclass(frozen=True, slots=True)
class OpenRow:
    """One ticket to open: a command line, or a CSV row (``line`` for messages)."""

    device_id: str
    note: str = ""
    contractor: str = ""
    technician: str = ""
    line: int = 0


def _clean(value: str, what: str, max_len: int) -> str:
    value = value.strip()
    if len(value) > max_len:
        raise RepairsCliError(f"{what}: longer than {max_len} characters")
    if any(ord(c) < 32 and c not in "\n\t" for c in value):
        raise RepairsCliError(f"{what}: contains control characters")
    return value


def _row(
    device_id: str, note: str, contractor: str, technician: str, where: str, line: int = 0
) -> OpenRow:
    device_id = device_id.strip()
    if not valid_device_id(device_id):
        raise RepairsCliError(f"{where}device_id: {device_id!r:.70} is not a valid device id")
    contractor = _clean(contractor, f"{where}contractor", MAX_NAME)
    technician = _clean(technician, f"{where}technician", MAX_NAME)
    if technician and not contractor:
        raise RepairsCliError(f"{where}contractor: is required with technician")
    return OpenRow(device_id, _clean(note, f"{where}note", MAX_TEXT), contractor, technician, line)


def read_open_csv(data: bytes, source: str) -> list[OpenRow]:
    """The rows of a bulk-open CSV; RepairsCliError naming the line and column."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RepairsCliError(f"{source}: not UTF-8 (byte {exc.start})") from None
    first = text.split("\n", 1)[0]
    delimiter = ";" if first.count(";") > first.count(",") else ","
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = [h.strip() for h in reader.fieldnames or ()]
    if "device_id" not in header:
        raise RepairsCliError(f"{source}: line 1: no device_id column (have: {', '.join(header)})")
    unknown = [h for h in header if h not in CSV_COLUMNS]
    if unknown:
        raise RepairsCliError(
            f"{source}: line 1: unknown column {unknown[0]!r} (known: {', '.join(CSV_COLUMNS)})"
        )
    rows: list[OpenRow] = []
    seen: dict[str, int] = {}
    for raw in reader:
        line = reader.line_num
        cells = {(k or "").strip(): (v or "") for k, v in raw.items() if k is not None}
        if None in raw:
            raise RepairsCliError(f"{source}: line {line}: more cells than columns")
        if not any(v.strip() for v in cells.values()):
            continue  # a blank line
        row = _row(
            cells.get("device_id", ""),
            cells.get("note", ""),
            cells.get("contractor", ""),
            cells.get("technician", ""),
            f"{source}: line {line}: ",
            line,
        )
        if row.device_id in seen:
            raise RepairsCliError(
                f"{source}: line {line}: device_id: {row.device_id} already on line "
                f"{seen[row.device_id]}"
            )
        seen[row.device_id] = line
        rows.append(row)
    if not rows:
        raise RepairsCliError(f"{source}: no rows")
    return rows


async def open_many(
    repo: Repository, rows: Sequence[OpenRow], *, actor: str, at: float, source: str = ""
) -> list[Ticket]:
    """Open every row's ticket, after checking that each can be opened (all or nothing)."""
    where = f"{source}: " if source else ""
    active = {t.device_id for t in await repo.list_tickets(states=_ACTIVE, limit=1_000_000)}
    for r in rows:
        at_line = f"{where}line {r.line}: " if r.line else where
        try:
            await repo.get_device(r.device_id)
        except NotFound:
            raise RepairsCliError(f"{at_line}{r.device_id}: not in the inventory") from None
        if r.device_id in active:
            raise RepairsCliError(f"{at_line}{r.device_id}: has an active ticket already")
    return [
        await repairs.open_ticket(
            repo,
            r.device_id,
            actor=actor,
            at=at,
            note=r.note,
            contractor=r.contractor,
            technician=r.technician,
        )
        for r in rows
    ]


_ACTIVE: Final = frozenset({TicketState.OPEN, TicketState.IN_REPAIR})


def _when(t: float | None) -> str:
    if t is None:
        return ""
    return dt.datetime.fromtimestamp(t).astimezone().strftime("%d/%m/%Y %H:%M")


def tickets_text(tickets: Sequence[Ticket]) -> str:
    """Tickets as an aligned table for a terminal."""
    if not tickets:
        return "(no tickets)\n"
    headers = ["#", "device", "commune", "state", "opened", "contractor", "technician", "note"]
    rows = [
        [
            str(t.id),
            t.device_id,
            t.commune_code,
            t.state.value,
            _when(t.opened_at),
            t.contractor,
            t.technician,
            t.note.replace("\n", " ")[:60],
        ]
        for t in tickets
    ]
    right = [True, *([False] * 7)]
    return "\n".join(table_lines(headers, rows, right=right)) + "\n"


def _describe(t: Ticket) -> str:
    who = f" ({t.contractor}{', ' + t.technician if t.technician else ''})" if t.contractor else ""
    return f"ticket {t.id} {t.device_id}: {t.state.value}{who}"


# --- commands --------------------------------------------------------------------------------


def _with_repo(args: argparse.Namespace, work: Callable[[Repository], Awaitable[T]]) -> T:
    from collector.cli import load, repository

    cfg = load(args)

    async def go() -> T:
        async with repository(cfg) as repo:
            return await work(repo)

    return asyncio.run(go())


def _list(args: argparse.Namespace) -> int:
    async def work(repo: Repository) -> list[Ticket]:
        return await repo.list_tickets(
            communes=frozenset(args.commune) if args.commune else None,
            device_id=args.device,
            states=frozenset({TicketState(args.state)}) if args.state else None,
            limit=args.limit,
        )

    tickets = _with_repo(args, work)
    if args.format == "json":
        from collector.api import ticket_json  # the API's JSON: scripts read one shape

        print(json.dumps([ticket_json(t) for t in tickets], ensure_ascii=False, indent=1))
    else:
        sys.stdout.write(tickets_text(tickets))
    return 0


def _open(args: argparse.Namespace) -> int:
    if args.csv is not None:
        if args.device or args.contractor or args.technician or args.note:
            raise RepairsCliError("--csv takes every field from the file: give no DEVICE or --note")
        try:
            data = Path(args.csv).read_bytes()
        except OSError as exc:
            raise RepairsCliError(f"{args.csv}: cannot read: {exc.strerror}") from None
        rows = read_open_csv(data, str(args.csv))
        source = str(args.csv)
    elif args.device:
        rows = [
            _row(args.device, args.note or "", args.contractor or "", args.technician or "", "")
        ]
        source = ""
    else:
        raise RepairsCliError("give a DEVICE or --csv FILE")
    tickets = _with_repo(
        args, lambda repo: open_many(repo, rows, actor=args.actor, at=time.time(), source=source)
    )
    for t in tickets:
        print(_describe(t))
    if len(tickets) > 1:
        started = sum(t.state is TicketState.IN_REPAIR for t in tickets)
        print(f"{len(tickets)} tickets opened, {started} of them started")
    return 0


def _step(args: argparse.Namespace) -> int:
    action = args.repairs_command
    note = _clean(args.note or "", "--note", MAX_TEXT)
    if action in ("comment", "cancel") and not note:
        raise RepairsCliError(f"repairs {action}: --note is required")

    async def work(repo: Repository) -> Ticket:
        await repo.get_ticket(args.ticket)  # NotFound names the ticket
        at = time.time()
        if action == "start":
            return await repo.start_ticket(
                args.ticket,
                actor=args.actor,
                at=at,
                contractor=_clean(args.contractor, "--contractor", MAX_NAME),
                technician=_clean(args.technician or "", "--technician", MAX_NAME),
                note=note,
            )
        if action == "comment":
            return await repo.comment_ticket(args.ticket, actor=args.actor, at=at, note=note)
        state = TicketState.RESOLVED if action == "resolve" else TicketState.CANCELLED
        return await repo.close_ticket(args.ticket, actor=args.actor, at=at, state=state, note=note)

    print(_describe(_with_repo(args, work)))
    return 0


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``repairs`` command: 0, or 1 with one line on stderr."""
    try:
        func: Callable[[argparse.Namespace], int] = {
            "list": _list,
            "open": _open,
        }.get(args.repairs_command, _step)
        return func(args)
    except (RepairsCliError, StoreError) as exc:
        print(f"loa-collector repairs: {exc}", file=sys.stderr)
        return 1


def _ticket_id(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a ticket number") from None
    if not 0 < n < 2**63:
        raise argparse.ArgumentTypeError(f"{n} is not a ticket number")
    return n


def register(sub: Any, parent: argparse.ArgumentParser) -> None:
    """Add ``repairs`` to ``loa-collector``."""
    p = sub.add_parser("repairs", help="repair tickets: list, open, start, comment, resolve")
    rsub = p.add_subparsers(dest="repairs_command", required=True)
    actor = argparse.ArgumentParser(add_help=False)
    actor.add_argument("--actor", default="cli", help="name in the ticket history and audit log")

    ls = rsub.add_parser("list", parents=[parent], help="list tickets, newest first")
    ls.add_argument("--state", choices=[s.value for s in TicketState])
    ls.add_argument("--device")
    ls.add_argument("--commune", action="append", metavar="CODE", help="repeatable")
    ls.add_argument("--limit", type=int, default=500)
    ls.add_argument("--format", choices=["text", "json"], default="text")

    op = rsub.add_parser(
        "open", parents=[parent, actor], help="open a ticket (with --contractor: started too)"
    )
    op.add_argument("device", nargs="?", help="device id")
    op.add_argument("--note", help="what was reported")
    op.add_argument("--contractor", help="already assigned to this contractor: start it too")
    op.add_argument("--technician", help="the contractor's technician")
    op.add_argument("--csv", type=Path, help="open one ticket per row of this CSV")

    st = rsub.add_parser("start", parents=[parent, actor], help="a contractor takes the ticket")
    st.add_argument("ticket", type=_ticket_id)
    st.add_argument("--contractor", required=True)
    st.add_argument("--technician")
    st.add_argument("--note")
    for name, help_ in (
        ("comment", "add progress"),
        ("resolve", "the repair is done"),
        ("cancel", "cancel the ticket (needs --note)"),
    ):
        c = rsub.add_parser(name, parents=[parent, actor], help=help_)
        c.add_argument("ticket", type=_ticket_id)
        c.add_argument("--note")
    for parser in rsub.choices.values():
        parser.set_defaults(func=run)


__all__ = ["OpenRow", "open_many", "read_open_csv", "register", "run", "tickets_text"]
