"""Repair tickets: the automatic part (open on a lasting fault, resolve once healthy).

``plan`` is pure: given the devices, their active tickets and the clock, it
says which tickets to open and which to resolve. ``sweep`` applies a plan
through the store; running it on several instances at once is safe because the
store allows one active ticket per device and refuses to close a closed one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from collector.config import RepairConfig
from collector.model import Status
from collector.store.base import Conflict, DeviceRow, NotFound, Repository, Ticket, TicketState
from fleet_protocol import B2Cause

log = logging.getLogger("loa.collector.repairs")

SYSTEM_ACTOR = "system"


async def open_ticket(
    repo: Repository,
    device_id: str,
    *,
    actor: str,
    at: float,
    note: str = "",
    contractor: str = "",
    technician: str = "",
    start_note: str = "",
) -> Ticket:
    """Open a device's ticket with its current B2 cause; with ``contractor``, start it too.

    The one rule behind ``POST /api/v1/repairs`` and ``loa-collector repairs
    open``: a ticket already assigned to a contractor is opened and started in
    one call, both steps at ``at``. Raises NotFound (no such device) or
    Conflict (it has an active ticket).
    """
    device = await repo.get_device(device_id)
    ticket = await repo.open_ticket(device_id, actor=actor, at=at, note=note, cause=device.cause)
    if contractor:
        ticket = await repo.start_ticket(
            ticket.id,
            actor=actor,
            at=at,
            contractor=contractor,
            technician=technician,
            note=start_note,
        )
    return ticket


@dataclass(frozen=True, slots=True)
class Open:
    device_id: str
    cause: B2Cause | None
    fault_since: float


@dataclass(frozen=True, slots=True)
class Resolve:
    ticket_id: int
    device_id: str
    healthy_since: float


def plan(
    devices: Iterable[DeviceRow],
    active: Mapping[str, Ticket],
    fault_since: Mapping[str, float | None],
    *,
    now: float,
    cfg: RepairConfig,
) -> list[Open | Resolve]:
    """What the repair sweep should do now.

    Open a ticket for a device whose critical fault has lasted
    ``auto_open_after_s`` (offline alone does not count: that may be the link,
    not the cluster) and that has no active ticket. Resolve an active ticket
    once the device has been WORKING for ``auto_resolve_after_s`` since the later
    of the ticket's opening and its recovery.
    """
    out: list[Open | Resolve] = []
    for d in devices:
        ticket = active.get(d.device_id)
        since = fault_since.get(d.device_id)
        if (
            ticket is None
            and cfg.auto_open_after_s > 0
            and since is not None
            and now - since >= cfg.auto_open_after_s
        ):
            out.append(Open(d.device_id, d.cause, since))
        elif ticket is not None and d.status is Status.WORKING and d.since is not None:
            healthy_since = max(d.since, ticket.opened_at)
            if now - healthy_since >= cfg.auto_resolve_after_s:
                out.append(Resolve(ticket.id, d.device_id, healthy_since))
    return out


def overdue(tickets: Iterable[Ticket], *, now: float, after_s: float) -> list[Ticket]:
    """Active tickets with no progress (open, start, comment) for ``after_s``, oldest first."""
    late = [t for t in tickets if t.state.active and now - t.last_progress_at > after_s]
    return sorted(late, key=lambda t: t.last_progress_at)


async def sweep(repo: Repository, cfg: RepairConfig, *, now: float) -> list[Open | Resolve]:
    """Apply ``plan`` to the store; returns what was done."""
    devices = await repo.devices_for_repair_sweep()
    tickets = await repo.list_tickets(
        states=frozenset({TicketState.OPEN, TicketState.IN_REPAIR}), limit=100000
    )
    active = {t.device_id: t for t in tickets}
    since = {d.device_id: await repo.diag_broken_since(d.device_id) for d in devices}
    done: list[Open | Resolve] = []
    for action in plan(devices, active, since, now=now, cfg=cfg):
        try:
            if isinstance(action, Open):
                hours = (now - action.fault_since) / 3600
                await repo.open_ticket(
                    action.device_id,
                    actor=SYSTEM_ACTOR,
                    at=now,
                    note=f"opened automatically: critical fault for {hours:.1f} h",
                    cause=action.cause,
                )
            else:
                await repo.close_ticket(
                    action.ticket_id,
                    actor=SYSTEM_ACTOR,
                    at=now,
                    state=TicketState.RESOLVED,
                    note="resolved automatically: cluster working again",
                )
        except (Conflict, NotFound) as exc:
            # Another instance (or a person) got there first.
            log.info("repair sweep: skipped %s: %s", action, exc)
            continue
        done.append(action)
    return done
