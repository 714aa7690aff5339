"""The collector's repository interface: everything domain code may ask of storage.

Domain code (ingest, fleet state, repairs, B2, the API) talks only to
``Repository``; ``collector.store.sqlite.SQLiteRepository`` is the embedded
implementation and a PostgreSQL one can follow without touching callers.

Rules every implementation keeps:

- Nothing is held only in memory: two collector processes on the same database
  see the same devices, dedupe the same (device, seq) pairs and never open two
  tickets for one device.
- Every method that writes is one transaction: it happens completely or not at
  all.
- Times are UNIX seconds (UTC) as floats.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from collector.fleet import Observation, Transition
from collector.model import DeviceStatus, InventoryDevice, Status
from fleet_protocol import B2Cause


class StoreError(Exception):
    """A storage failure; the message names the database and the operation."""


class NotFound(StoreError):
    """The named row does not exist (or is outside the caller's scope)."""


class Conflict(StoreError):
    """The change is not allowed in the row's current state (e.g. start a closed ticket).

    ``ticket_id`` names the repair ticket in the way, when there is one.
    """

    def __init__(self, message: str, *, ticket_id: int | None = None) -> None:
        super().__init__(message)
        self.ticket_id = ticket_id


@dataclass(frozen=True, slots=True, kw_only=True)
class IncomingMessage:
    """One validated wire message ready to be stored by ``write_batch``.

    ``observation`` is what the message means for the device's status (None for
    messages that do not affect it, such as command replies). ``payload`` is the
    raw JSON as received, kept for the retention period.
    """

    device_id: str
    seq: int
    kind: str
    ts: float
    received_at: float
    payload: bytes
    observation: Observation | None
    #: Set for state reports: the report's commune (when the agent knows it).
    commune: str | None = None
    #: For state reports: active fault codes, with their since, cause, severity, evidence.
    faults: tuple[tuple[str, float, str, str, str], ...] | None = None
    #: For state reports: (rssi_dbm, rsrp_dbm, rsrq_db, sinr_db, csq) for the signal history.
    signal: tuple[float | None, float | None, float | None, float | None, int | None] | None = None
    #: For events: (type, fault code, action, detail).
    event: tuple[str, str | None, str | None, str | None] | None = None
    #: For state reports: a compact heartbeat, whose missing sections mean
    #: "unchanged since the last full report" (its fault list is authoritative).
    heartbeat: bool = False
    #: The clock's provenance as the device stamped it (``collector.clocktruth``):
    #: its own ts, its boot, seconds since that boot, and False when the device
    #: said its clock was not synchronised. ``ts`` above is the caller's choice
    #: before the store applies the boot offsets and install dates it holds.
    device_ts: float | None = None
    boot_id: str | None = None
    mono: float | None = None
    clock_synced: bool | None = None
    #: Content digest; a stored (device, seq) arriving with another digest is a replay conflict.
    digest: bytes | None = None
    #: For state reports with a modem section: its serving cell (``correlation.cell_key``,
    #: "" when it named none); None for messages that say nothing of the cell.
    cell: str | None = None


@dataclass(frozen=True, slots=True)
class CompactionResult:
    """What one ``compact_raw`` pass did (``collector.compaction``)."""

    devices: int
    dropped: int
    spans: int


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What ``write_batch`` did: new messages stored and duplicates dropped."""

    stored: int
    duplicates: int
    #: Devices whose status changed in this batch.
    changed_devices: tuple[str, ...] = ()
    #: Duplicates whose content differs from what is stored: (device, seq).
    conflicts: tuple[tuple[str, int], ...] = ()
    #: New messages by how their time was decided (``clocktruth.Dating`` values),
    #: plus "restamped": stored messages re-dated because their boot's offset became known.
    dating: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusTimeline:
    """A cluster's status over a window (``Repository.status_timelines``).

    ``initial`` is its status at the window's start (None: no transition yet,
    never reported); ``changes`` the (time, status) of every transition inside
    the window, in order; ``counted_from`` when it starts to count (install
    date, else first listing or first report; None: at every moment).
    """

    device_id: str
    commune_code: str
    counted_from: float | None
    initial: Status | None
    changes: tuple[tuple[float, Status], ...] = ()


def counted_seconds(timeline: StatusTimeline, t0: float, t1: float) -> tuple[float, float]:
    """(seconds the cluster counted in [t0, t1], seconds of those it was working).

    Before its first report a counted cluster is not working (never reported).
    """
    start = max(t0, timeline.counted_from) if timeline.counted_from is not None else t0
    if start >= t1:
        return 0.0, 0.0
    status = timeline.initial
    at, working = start, 0.0
    for ts, new in timeline.changes:
        if ts > t1:
            break
        if ts > at:
            if status is Status.WORKING:
                working += ts - at
            at = ts
        status = new
    if status is Status.WORKING:
        working += t1 - at
    return t1 - start, working


def status_at(timeline: StatusTimeline, t: float) -> Status | None:
    """The cluster's status at ``t`` (after every change at or before it)."""
    status = timeline.initial
    for ts, new in timeline.changes:
        if ts > t:
            break
        status = new
    return status


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceRow:
    """A device as the collector knows it now (inventory and/or reports)."""

    device_id: str
    commune_code: str
    in_inventory: bool
    status: Status
    cause: B2Cause | None
    online: bool
    never_reported: bool
    in_repair: bool
    since: float | None
    last_seen: float | None
    last_ts: float | None
    last_seq: int | None
    #: The last state report as plain JSON-ready data (None before any).
    last_report: dict[str, Any] | None = None
    inventory: InventoryDevice | None = None


@dataclass(frozen=True, slots=True)
class SignalPoint:
    ts: float
    rssi_dbm: float | None
    rsrp_dbm: float | None
    rsrq_db: float | None
    sinr_db: float | None
    csq: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class EventRow:
    device_id: str
    commune_code: str
    seq: int
    ts: float
    type: str
    fault_code: str | None
    action: str | None
    detail: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultRow:
    device_id: str
    code: str
    severity: str
    cause: str
    since: float
    cleared_at: float | None
    evidence: str


class TicketState(enum.StrEnum):
    OPEN = "open"  # mở, chưa sửa
    IN_REPAIR = "in_repair"  # đang sửa chữa
    RESOLVED = "resolved"  # đã sửa xong
    CANCELLED = "cancelled"  # huỷ

    @property
    def active(self) -> bool:
        return self in (TicketState.OPEN, TicketState.IN_REPAIR)


@dataclass(frozen=True, slots=True, kw_only=True)
class TicketEntry:
    """One line of a ticket's history."""

    at: float
    actor: str
    action: str
    note: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Ticket:
    id: int
    device_id: str
    commune_code: str
    state: TicketState
    cause: B2Cause | None
    opened_at: float
    opened_by: str
    contractor: str
    technician: str
    started_at: float | None
    closed_at: float | None
    last_progress_at: float
    note: str
    history: tuple[TicketEntry, ...] = ()


@dataclass(frozen=True, slots=True)
class RepairStat:
    """Time-to-repair of resolved tickets for one commune or contractor."""

    key: str
    resolved: int
    mean_hours: float
    median_hours: float
    max_hours: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    """The cause a person found on site, recorded on a repair ticket."""

    id: int
    ticket_id: int
    device_id: str
    cause: B2Cause
    text: str
    at: float
    actor: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DiagEvidence:
    """The message that last set a device's diagnosis at a moment (its cause's evidence)."""

    device_id: str
    #: "state" (MQTT) or "sms".
    kind: str
    #: False for a report that arrived long after its ts (buffered on the device).
    prompt: bool
    broken: bool
    cause: B2Cause | None
    ts: float
    received_at: float
    #: The fault codes it carried.
    faults: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class B2Snapshot:
    """A produced B2, kept to show what changed when the same date is produced again."""

    as_of: float
    scope: str
    produced_at: float
    body: dict[str, Any]


class Role(enum.StrEnum):
    ADMIN = "admin"
    DISTRICT_VIEWER = "district_viewer"
    COMMUNE_OFFICER = "commune_officer"
    TECHNICIAN = "technician"


@dataclass(frozen=True, slots=True, kw_only=True)
class User:
    id: int
    name: str
    role: Role
    #: Communes the user is limited to; empty = all (not allowed for commune officers).
    communes: frozenset[str] = field(default_factory=frozenset)
    disabled: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ThrottleRule:
    """How one login-throttle key counts attempts (``Repository.throttle_attempt``).

    The first ``free`` attempts within ``forget_s`` of each other go ahead at once;
    from then on each attempt must wait ``first_delay_s``, doubling per attempt,
    at most ``max_delay_s``. A key not tried for ``forget_s`` starts over.
    """

    key: str
    #: The user name the key is about (None for address-only keys): unlock finds it by this.
    name: str | None
    free: int
    first_delay_s: float
    max_delay_s: float
    forget_s: float

    def delay_after(self, attempts: int) -> float:
        """Seconds the next attempt must wait once ``attempts`` have been counted."""
        if attempts < self.free:
            return 0.0
        return min(self.max_delay_s, self.first_delay_s * 2.0 ** min(attempts - self.free, 60))


@dataclass(frozen=True, slots=True, kw_only=True)
class Session:
    user: User
    csrf_token: str
    expires_at: float


class StoreLifecycle(Protocol):
    """Open schema and connection."""

    async def migrate(self) -> int:
        """Bring the schema to the latest version; returns the version now in place."""
        ...

    async def schema_version(self) -> int: ...

    async def claim_periodic(self, name: str, holder: str, *, now: float, lease_s: float) -> bool:
        """Whether ``holder`` runs this round of periodic job ``name`` (one instance
        of several on the database does; a lease that expires passes it on)."""
        ...

    async def close(self) -> None: ...


class InventoryStore(Protocol):
    """The district's inventory of clusters (collector.inventory, collector.b2)."""

    async def upsert_inventory(
        self, devices: Sequence[InventoryDevice], *, remove_missing: bool, actor: str = "system"
    ) -> tuple[int, int, int]:
        """Insert or update ``devices`` in one transaction (all or nothing).

        ``position`` of each device is stored as given (callers number the file's
        rows). With ``remove_missing`` the inventory devices not in ``devices``
        are removed from the inventory (their history stays). Returns
        (added, updated, removed) and writes one audit-log entry for ``actor``.
        """
        ...

    async def list_inventory(self) -> list[InventoryDevice]:
        """The inventory in inventory order (``position``, then device id)."""
        ...


class IngestStore(Protocol):
    """Ingest and fleet state: messages in, the fleet's rules applied
    (collector.fleet_step), silence, retention."""

    async def write_batch(
        self,
        messages: Sequence[IncomingMessage],
        *,
        late_after_s: float,
        max_future_s: float = 300.0,
    ) -> BatchResult:
        """Store a batch of validated messages in one transaction.

        Event times follow ``collector.clocktruth`` for messages that carry
        ``device_ts``: boot offsets learned from synchronised messages re-date
        unsynchronised ones (also ones stored earlier), times before the
        install date or ``max_future_s`` ahead become the receive time.
        Duplicates whose content differs from the stored message are reported
        in ``BatchResult.conflicts``.

        Duplicates by (device, seq) -- also against messages stored earlier or by
        another instance -- are dropped and counted. Status transitions are
        derived (``collector.fleet``) in event-time order, re-deriving a device's
        history when messages arrive out of order (a drained backlog).
        """
        ...

    async def mark_silent_offline(self, now: float, grace_s: float) -> list[str]:
        """Mark offline every online device not heard from (receive time) for ``grace_s``.

        The offline transition is stamped at the device's last event time plus
        ``grace_s`` (never after ``now``). Returns the device ids marked.
        """
        ...

    async def purge_raw(self, older_than: float) -> int:
        """Delete raw messages received before ``older_than``; returns how many."""
        ...

    async def compact_raw(self, horizon: float) -> CompactionResult:
        """Drop the heartbeats received before ``horizon`` that history does not
        need one by one (``collector.compaction``); their seqs stay duplicates.
        Resumes where the last pass stopped; safe to repeat or interrupt."""
        ...

    async def stored_seqs(self, device_id: str) -> list[int]:
        """Wire seqs stored for ``device_id``, ascending (within raw retention)."""
        ...

    async def message_count(self) -> int:
        """Wire messages held in raw storage."""
        ...


class HistoryStore(Protocol):
    """History queries: the fleet as of any moment, a device's history, the evidence for
    causes, the B2 snapshots."""

    async def counts_as_of(self, t: float, *, keep_before: float) -> dict[str, tuple[int, int]]:
        """(working, broken) per commune and '*' at ``t``; kept for past moments."""
        ...

    async def fleet_tally(
        self, communes: Iterable[str] | None = None, *, each: bool = False
    ) -> tuple[list[tuple[Any, ...]], int]:
        """The fleet's counts kept as it changes, and their version (see SQLite's)."""
        ...

    async def statuses_as_of(
        self, t: float, *, devices: Collection[str] | None = None
    ) -> list[DeviceStatus]:
        """One DeviceStatus per inventory device, in inventory order, as of moment ``t``.

        Computed from the stored status-transition history and repair-ticket
        history, so any past moment works (within what was recorded): a device
        with no transition at or before ``t`` is ``never_reported`` (broken,
        cause unknown); ``in_repair`` is True when a ticket for it was started at
        or before ``t`` and not closed by ``t``; ``exists`` is False when the
        cluster did not count yet at ``t`` (its install date, else its first
        inventory listing or first report, is later).
        """
        ...

    async def status_timelines(self, t0: float, t1: float) -> list[StatusTimeline]:
        """One StatusTimeline per inventory device (inventory order) over (t0, t1]:
        its status at ``t0`` and every transition after it up to ``t1``."""
        ...

    async def availability_seconds(self, t0: float, t1: float) -> dict[str, tuple[float, float]]:
        """Per inventory device, (seconds counted, seconds working) in [t0, t1]
        (``t0``: a month's start): what ``counted_seconds`` over
        ``status_timelines(t0, t1)`` gives, from the sums kept per month start up
        to a recent whole hour plus only the transitions after it."""
        ...

    async def list_devices(
        self,
        *,
        communes: frozenset[str] | None = None,
        status: Status | None = None,
        cause: B2Cause | None = None,
        limit: int = 1000,
        offset: int = 0,
    ) -> list[DeviceRow]:
        """Devices known now (inventory and reporting), in inventory order then id."""
        ...

    async def get_device(self, device_id: str) -> DeviceRow:
        """One device; raises NotFound."""
        ...

    async def cells_as_of(
        self, t: float, devices: Collection[str]
    ) -> dict[str, tuple[str, str] | None]:
        """Per device of ``devices``, the (TAC, cell id) its latest full report at or
        before ``t`` named (None: it named none); devices with no such report are
        left out. From the kept cell where that report is the newest."""
        ...

    async def correlation_neighbours(self, device_id: str) -> frozenset[str] | None:
        """The clusters whose state can change what correlation infers for
        ``device_id`` now: its commune's, those on its serving cell, itself, and a
        few online on other cells (they tell "other cells stayed up"). None when
        its cell is not known to the store (attribute against the whole fleet)."""
        ...

    async def status_history(
        self, device_id: str, *, since: float | None = None, until: float | None = None
    ) -> list[Transition]: ...

    async def signal_history(
        self,
        device_id: str,
        *,
        since: float | None = None,
        until: float | None = None,
        limit: int = 1000,
    ) -> list[SignalPoint]: ...

    async def list_events(
        self,
        *,
        communes: frozenset[str] | None = None,
        device_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 200,
    ) -> list[EventRow]:
        """Events newest first."""
        ...

    async def list_faults(self, device_id: str, *, active_only: bool = False) -> list[FaultRow]: ...

    async def state_reports(
        self, device_id: str, *, since: float, until: float, limit: int = 10000
    ) -> list[tuple[float, dict[str, Any]]]:
        """Stored state reports of a device as (event time, decoded JSON), oldest first.

        Within raw retention only; the newest ``limit`` when there are more.
        """
        ...

    async def diag_evidence_as_of(
        self, t: float, *, devices: Collection[str] | None = None
    ) -> dict[str, DiagEvidence]:
        """Per device (of ``devices``: all for None), the latest report or SMS with
        event time at or before ``t``."""
        ...

    async def last_reports_as_of(
        self, t: float, *, devices: Collection[str] | None = None
    ) -> dict[str, dict[str, Any]]:
        """Per device (of ``devices``: all for None), the latest full state report
        (with a modem section) at or before ``t``."""
        ...

    async def save_b2_snapshot(self, snapshot: B2Snapshot) -> None: ...

    async def b2_snapshots(self, as_of: float, scope: str) -> list[B2Snapshot]:
        """Snapshots of the B2 for ``as_of``, oldest first."""
        ...


class RepairStore(Protocol):
    """Repair tickets and on-site findings."""

    async def open_ticket(
        self, device_id: str, *, actor: str, at: float, note: str, cause: B2Cause | None
    ) -> Ticket:
        """Open a ticket; raises Conflict if the device already has an active one."""
        ...

    async def start_ticket(
        self,
        ticket_id: int,
        *,
        actor: str,
        at: float,
        contractor: str,
        technician: str,
        note: str,
    ) -> Ticket: ...

    async def comment_ticket(
        self, ticket_id: int, *, actor: str, at: float, note: str
    ) -> Ticket: ...

    async def close_ticket(
        self, ticket_id: int, *, actor: str, at: float, state: TicketState, note: str
    ) -> Ticket:
        """Resolve or cancel an active ticket; raises Conflict if it is closed already."""
        ...

    async def get_ticket(self, ticket_id: int) -> Ticket: ...

    async def list_tickets(
        self,
        *,
        communes: frozenset[str] | None = None,
        device_id: str | None = None,
        states: frozenset[TicketState] | None = None,
        limit: int = 500,
    ) -> list[Ticket]: ...

    async def repair_stats(self, by: str) -> list[RepairStat]:
        """Time-to-repair of resolved tickets grouped ``by`` "commune" or "contractor"."""
        ...

    async def devices_for_repair_sweep(self) -> list[DeviceRow]:
        """Devices that are broken by a critical fault or have an active ticket."""
        ...

    async def diag_broken_since(self, device_id: str) -> float | None:
        """Event time since which the device's diagnosis has been broken (None: it is not)."""
        ...

    async def record_finding(
        self, ticket_id: int, *, actor: str, at: float, cause: B2Cause, text: str
    ) -> Finding:
        """Record the cause found on site on a ticket (history + audit log); NotFound."""
        ...

    async def list_findings(self, device_id: str) -> list[Finding]:
        """A device's findings, oldest first."""
        ...

    async def findings_as_of(
        self, t: float, *, devices: Collection[str] | None = None
    ) -> dict[str, Finding]:
        """Each device's (of ``devices``: all for None) latest finding at or before ``t``."""
        ...


class AccountStore(Protocol):
    """Accounts, tokens, sessions, the login throttle and the audit log."""

    async def add_user(
        self, name: str, *, role: Role, communes: frozenset[str], password_hash: str
    ) -> User: ...

    async def get_user(self, name: str) -> tuple[User, str]:
        """The user and its password hash; raises NotFound."""
        ...

    async def add_token(
        self, user_name: str, *, token_hash: str, label: str, at: float
    ) -> None: ...

    async def user_by_token(self, token_hash: str, *, at: float) -> User | None: ...

    async def add_session(
        self, user_name: str, *, session_hash: str, csrf_token: str, expires_at: float
    ) -> None: ...

    async def session(self, session_hash: str, *, at: float) -> Session | None: ...

    async def drop_session(self, session_hash: str) -> None: ...

    async def audit(self, actor: str, action: str, target: str, detail: dict[str, Any]) -> None: ...

    async def throttle_attempt(self, rules: Sequence[ThrottleRule], *, at: float) -> float:
        """Count one login attempt against every key in one transaction.

        Returns 0.0 when the attempt may go ahead: it is then counted on every key
        *before* the password is checked, so concurrent attempts cannot overtake
        the count. Otherwise returns the seconds until it may, and counts nothing.
        """
        ...

    async def throttle_clear(self, keys: Sequence[str]) -> None:
        """Forget the counts of ``keys`` (a successful login)."""
        ...

    async def throttle_unlock(self, name: str, *, actor: str) -> int:
        """Forget every count about user ``name`` (audited); returns how many keys."""
        ...

    async def audit_log(self, *, limit: int = 200) -> list[dict[str, Any]]: ...

    async def list_users(self) -> list[User]:
        """Every user, by name."""
        ...

    async def update_user(
        self,
        name: str,
        *,
        role: Role,
        communes: frozenset[str],
        disabled: bool,
        actor: str,
    ) -> User:
        """Change a user's role, communes and disabled flag (audited); raises NotFound."""
        ...


class Repository(
    StoreLifecycle, InventoryStore, IngestStore, HistoryStore, RepairStore, AccountStore, Protocol
):
    """Storage of the collector: every role over one connection. See the module
    docstring for the rules; code that needs one role takes that role's type."""
