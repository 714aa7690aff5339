"""On-site findings: the cause a person found at the cluster, recorded on its repair ticket.

A finding overrides what the collector inferred or the device last said
(``collector.causes``); device evidence that later disagrees is shown as a
conflict, never applied silently. Every finding goes to the ticket's history
and the audit log with who recorded it and when.

The routes (``collector.routes``): ``POST /api/v1/repairs/{ticket_id}/finding``
records one; opening, starting and resolving a ticket accept the same optional
``cause`` and ``finding`` (text) fields; ``GET /api/v1/devices/{device_id}/cause``
gives the cluster's cause now with its source, evidence, conflict and findings.
This module holds what those handlers (``collector.api``) share.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from collector.auth import Principal
from collector.causes import cause_now
from collector.keys import CONFIG, REPO
from collector.params import bad
from collector.store.base import Finding, Ticket
from fleet_protocol import B2Cause

#: Longest finding text, characters.
MAX_FINDING = 1000


def finding_of(cause: B2Cause | None, text: str) -> tuple[B2Cause, str] | None:
    """A body's optional ``cause`` + ``finding`` text; a text without a cause is a 400."""
    if cause is None:
        if text.strip():
            raise bad("cause", "a finding needs the cause found")
        return None
    return cause, text.strip()


def finding_json(f: Finding) -> dict[str, Any]:
    return {
        "id": f.id,
        "ticket_id": f.ticket_id,
        "device_id": f.device_id,
        "cause": f.cause.value,
        "cause_label": f.cause.label(),
        "text": f.text,
        "at": f.at,
        "by": f.actor,
    }


async def record(
    request: web.Request, ticket: Ticket, principal: Principal, found: tuple[B2Cause, str] | None
) -> None:
    """Record ``found`` on ``ticket`` (no-op for None), as ``principal``, now."""
    if found is None:
        return
    cause, text_ = found
    await request.app[REPO].record_finding(
        ticket.id, actor=principal.name, at=time.time(), cause=cause, text=text_
    )


async def device_cause(request: web.Request, device_id: str) -> dict[str, Any]:
    """The cluster's cause now, with source, evidence, conflict and findings."""
    repo = request.app[REPO]
    a = await cause_now(repo, device_id, time.time(), request.app[CONFIG].correlation)
    return {
        "device_id": device_id,
        "cause": a.to_json() if a is not None else None,
        "findings": [finding_json(f) for f in await repo.list_findings(device_id)],
    }


__all__ = ["MAX_FINDING", "device_cause", "finding_json", "finding_of", "record"]
