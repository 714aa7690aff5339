"""``loa-collector finding add|list``: on-site findings from the command line.

``finding add TICKET --cause CAUSE [--text TEXT] [--by NAME]`` records the
cause found on site on a repair ticket (as the API does: ticket history and
audit log with who and when; ``--by`` defaults to the login name);
``finding list DEVICE`` prints a cluster's findings and its cause now, with
the cause's source and any conflict.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import time
from typing import Any

from fleet_protocol import B2Cause


def _add(args: argparse.Namespace) -> int:
    from collector.cli import CliError, load, repository

    cfg = load(args)
    text = (args.text or "").strip()
    if len(text) > 1000 or any(ord(c) < 32 and c not in "\n\t" for c in text):
        raise CliError("--text: at most 1000 characters, no control characters")
    actor = args.by or getpass.getuser()

    async def go() -> int:
        async with repository(cfg) as repo:
            f = await repo.record_finding(
                args.ticket, actor=actor, at=time.time(), cause=B2Cause(args.cause), text=text
            )
        print(f"ticket {f.ticket_id} ({f.device_id}): {f.cause.label()} — recorded by {f.actor}")
        return 0

    return asyncio.run(go())


def _list(args: argparse.Namespace) -> int:
    from collector.causes import cause_now
    from collector.cli import load, repository

    cfg = load(args)

    async def go() -> int:
        async with repository(cfg) as repo:
            await repo.get_device(args.device)  # NotFound names the device
            findings = await repo.list_findings(args.device)
            a = await cause_now(repo, args.device, time.time(), cfg.correlation)
        if a is None:
            print(f"{args.device}: hoạt động tốt (working)")
        else:
            print(f"{args.device}: {a.cause.label()} — {a.source.label()}")
            if a.rule:
                print(f"  rule: {a.rule}")
            if a.evidence:
                print(f"  evidence: {a.evidence}")
            if a.conflict:
                print(f"  CONFLICT: {a.conflict}")
        for f in findings:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(f.at))
            print(f"  {when} ticket {f.ticket_id} {f.actor}: {f.cause.label()} {f.text}".rstrip())
        return 0

    return asyncio.run(go())


def register(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser("finding", help="causes found on site, on repair tickets")
    fsub = p.add_subparsers(dest="finding_command", required=True)
    a = fsub.add_parser("add", parents=[parent], help="record the cause found on a ticket")
    a.add_argument("ticket", type=int)
    a.add_argument("--cause", required=True, choices=[c.value for c in B2Cause])
    a.add_argument("--text", default="", help="what was found")
    a.add_argument("--by", default="", help="who found it (default: your login name)")
    a.set_defaults(func=_add)
    ls = fsub.add_parser("list", parents=[parent], help="a cluster's findings and cause now")
    ls.add_argument("device")
    ls.set_defaults(func=_list)
