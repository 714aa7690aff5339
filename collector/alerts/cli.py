"""``loa-collector report send`` and ``loa-collector alerts ...``.

    loa-collector report send [--as-of 2026-11-30] [--to ADDR ...] [--queue-only]
    loa-collector alerts status            deliveries by state and channel, failures
    loa-collector alerts retry ID          queue a failed delivery again

``report send`` builds the B2 as of the date (default: the end of last month),
queues it by email to ``--to`` (default: ``[alerts.monthly_report]``'s
recipients), logs the sending and, unless ``--queue-only``, delivers it right
away (safe next to a running collector: deliveries are claimed atomically).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from collector.alerts.channels import email_address_problem
from collector.alerts.service import AlertService, parse_report_as_of
from collector.b2.dates import AsOfError
from collector.store.base import StoreError


def _report_send(args: argparse.Namespace) -> int:
    from collector.cli import load, repository

    cfg = load(args)
    for addr in args.to or ():
        if problem := email_address_problem(addr):
            print(f"error: --to {addr!r}: {problem}", file=sys.stderr)
            return 1

    async def go() -> int:
        async with repository(cfg) as repo:
            service = AlertService(repo, cfg, worker_id=f"cli:{args.actor}")
            try:
                as_of = parse_report_as_of(args.as_of, service.tz, service.clock())
            except AsOfError as exc:
                print(f"error: --as-of: {exc}", file=sys.stderr)
                return 1
            queued = await service.send_report(
                as_of=as_of, to=args.to or (), trigger="cli", actor=args.actor
            )
            if queued is None or not queued.deliveries:
                print(
                    "error: no recipients: give --to or set [alerts.monthly_report] recipients",
                    file=sys.stderr,
                )
                return 1
            print(f"B2 as of {queued.data['as_of']}: {queued.data['summary']}")
            if args.queue_only:
                print(f"queued for {len(queued.deliveries)} recipient(s): {queued.key}")
                return 0
            async with service.delivering() as worker:
                await worker.drain(timeout_s=args.timeout)
            rows = await service.store.deliveries(notification_key=queued.key)
            for d in sorted(rows, key=lambda r: r.id):
                print(f"{d.address}: {d.state}" + (f" ({d.last_error})" if d.last_error else ""))
            return 0 if all(d.state == "sent" for d in rows) else 1

    return asyncio.run(go())


def register_report_send(rsub: Any, parent: argparse.ArgumentParser) -> None:
    """``report send`` under ``loa-collector report`` (collector.b2.cli's ``report``)."""
    p = rsub.add_parser("send", parents=[parent], help="email the B2 report (XLSX) now, and log it")
    p.add_argument("--as-of", help="YYYY-MM-DD or dd/mm/yyyy; default: the end of last month")
    p.add_argument("--to", action="append", metavar="ADDR", help="recipient (repeatable)")
    p.add_argument("--queue-only", action="store_true", help="queue for the running collector")
    p.add_argument("--actor", default="cli", help="name written to the sending log")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for delivery")
    p.set_defaults(func=_report_send)


def _status(args: argparse.Namespace) -> int:
    from collector.cli import load, repository

    cfg = load(args)

    async def go() -> int:
        async with repository(cfg) as repo:
            service = AlertService(repo, cfg)
            for state, channel, n in await service.store.delivery_counts():
                print(f"{state:8} {channel:9} {n}")
            for d in await service.store.deliveries(states=frozenset({"failed"}), limit=50):
                print(f"failed #{d.id} {d.channel} {d.recipient}: {d.last_error}")
        return 0

    return asyncio.run(go())


def _retry(args: argparse.Namespace) -> int:
    from collector.cli import load, repository

    cfg = load(args)

    async def go() -> int:
        async with repository(cfg) as repo:
            service = AlertService(repo, cfg)
            try:
                await service.store.retry(args.id, actor="cli", now=service.clock())
            except StoreError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
        print(f"delivery {args.id} queued again")
        return 0

    return asyncio.run(go())


def register(sub: Any, parent: argparse.ArgumentParser) -> None:
    """``loa-collector alerts status|retry``."""
    p = sub.add_parser("alerts", help="alert deliveries")
    asub = p.add_subparsers(dest="alerts_command", required=True)
    s = asub.add_parser("status", parents=[parent], help="deliveries by state; failures")
    s.set_defaults(func=_status)
    r = asub.add_parser("retry", parents=[parent], help="queue a failed delivery again")
    r.add_argument("id", type=int)
    r.set_defaults(func=_retry)
