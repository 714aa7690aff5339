"""Request and response definitions of the collector's HTTP API, as msgspec Structs.

The handlers decode their parameters and bodies into these (``collector.params``),
their answers are encoded through them (``collector.routes``), and the OpenAPI
document is generated from them (``msgspec.json.schema_components``). A
constraint written here is enforced and documented at once.

Query/path parameter Structs end in ``Params``, request bodies in ``Body``.
Bodies refuse unknown fields; so do parameters (a misspelt ``limt=`` is an error,
not a silently ignored filter).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from collector.b2.table import Scope
from collector.causes import CauseSource
from collector.model import Status
from collector.params import (
    TEXT_PATTERN,
    Commune,
    DeviceId,
    Limit5k,
    Limit10k,
    Line200,
    OptLine200,
    RequiredText,
    Text,
    TimeParam,
    UserName,
)
from collector.store.base import Role, TicketState
from fleet_protocol import B2Cause

TicketId = Annotated[int, msgspec.Meta(ge=1, le=2**62, description="ticket id")]
Lang = Literal["vi", "en"]
Flag = Annotated[Literal["0", "1"], msgspec.Meta(description="1 = yes, 0 = no (default)")]


class Params(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of parameter Structs."""


class Body(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of request bodies."""


class Out(msgspec.Struct, kw_only=True):
    """Base of response bodies."""


# -- parameters ------------------------------------------------------------------------------


class SummaryParams(Params):
    at: TimeParam | None = None
    commune: Commune | None = None


class DevicesParams(Params):
    commune: Commune | None = None
    status: Status | None = None
    cause: B2Cause | None = None
    limit: Limit10k = 500
    offset: Annotated[int, msgspec.Meta(ge=0, le=10**9)] = 0


class DeviceIdParams(Params):
    device_id: DeviceId


class DeviceParams(Params):
    device_id: DeviceId
    since: TimeParam | None = None
    until: TimeParam | None = None
    limit: Limit10k = 500


class EventsParams(Params):
    commune: Commune | None = None
    device: DeviceId | None = None
    since: TimeParam | None = None
    until: TimeParam | None = None
    limit: Limit5k = 200


class RepairsParams(Params):
    commune: Commune | None = None
    device: DeviceId | None = None
    state: TicketState | None = None
    limit: Limit10k = 500


class OverdueParams(Params):
    commune: Commune | None = None
    after_hours: (
        Annotated[int, msgspec.Meta(ge=1, le=24 * 365, description="default from [repairs]")] | None
    ) = None


class RepairStatsParams(Params):
    by: Literal["commune", "contractor"] = "commune"


class TicketParams(Params):
    ticket_id: TicketId


class UserParams(Params):
    name: UserName


class B2Params(Params):
    as_of: TimeParam | None = None
    format: Literal["json", "csv", "xlsx", "html"] = "json"
    lang: Lang | None = None
    scope: Scope = Scope.COMMUNE
    district: Line200 | None = None
    province: Line200 | None = None
    unit: Line200 | None = None


# -- page queries (the dashboard's forms; empty fields mean "not given") --------------------


#: The device page's chart ranges (their lengths: ``collector.web.pages.RANGES``).
DeviceRange = Literal["24h", "7d", "30d"]


class DevicePageParams(Params):
    range: DeviceRange = "24h"
    lang: Lang | None = None


class B2PageParams(Params):
    as_of: TimeParam | None = None
    scope: Scope = Scope.COMMUNE
    lang: Lang | None = None


class RepairsPageParams(Params):
    commune: Commune | None = None
    contractor: Line200 | None = None
    min_age_days: Annotated[
        float, msgspec.Meta(ge=0, le=36500, description="open for at least this many days")
    ] = 0.0
    lang: Lang | None = None


class B2SummaryParams(Params):
    as_of: TimeParam | None = None
    lang: Lang | None = None
    compare: Flag = "0"


class InventoryParams(Params):
    format: Literal["json", "csv", "xlsx"] = "json"
    lang: Lang = "vi"


class ImportParams(Params):
    remove_missing: Flag = "0"


# -- request bodies ------------------------------------------------------------------------


class LoginBody(Body):
    name: UserName
    password: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]


#: When a repair step happened, for work recorded afterwards (a crew's paper log,
#: the demo's simulated clock). It moves repair figures in the B2, so only the
#: admin role may send it, and never into the future.
At = Annotated[
    float,
    msgspec.Meta(
        ge=946684800,
        le=4102444800,
        description="when the step happened (Unix seconds; admin only; default now)",
    ),
]


#: What was found on site (``collector.findings``), with the ``cause`` it names.
FindingText = Annotated[
    str,
    msgspec.Meta(
        max_length=1000, pattern=TEXT_PATTERN, description="what was found on site (with cause)"
    ),
]
#: The B2 cause found on site; it overrides what the collector inferred.
FoundCause = Annotated[B2Cause, msgspec.Meta(description="the cause found on site")]


class RepairOpenBody(Body):
    """With ``contractor`` the ticket is started in the same call (already assigned).
    With ``cause`` the on-site finding is recorded on the new ticket."""

    device_id: DeviceId
    note: Text = ""
    contractor: OptLine200 = ""
    technician: OptLine200 = ""
    start_note: Text = ""
    at: At | None = None
    cause: FoundCause | None = None
    finding: FindingText = ""


class RepairStartBody(Body):
    contractor: Line200
    technician: OptLine200 = ""
    note: Text = ""
    at: At | None = None
    cause: FoundCause | None = None
    finding: FindingText = ""


class NoteBody(Body):
    note: RequiredText
    at: At | None = None


class ResolveBody(Body):
    note: Text = ""
    at: At | None = None
    cause: FoundCause | None = None
    finding: FindingText = ""


class FindingBody(Body):
    cause: FoundCause
    text: FindingText = ""


# -- responses -------------------------------------------------------------------------------


class Error(Out, omit_defaults=True):
    error: str
    field: str
    errors: list[RowError] | None = None


class RowError(Out):
    """One problem of an uploaded inventory file (no row/column: the whole file)."""

    row: int | None
    column: str | None
    message: str


class Health(Out):
    ok: bool
    db: bool
    broker_connected: bool


class LoggedIn(Out):
    name: str
    role: Role
    csrf_token: str


class Ok(Out):
    ok: bool


class Me(Out):
    name: str
    role: Role
    communes: list[str] | None
    via: Literal["session", "token"]
    #: Only for browser sessions; scripts with a token need none.
    csrf_token: str | None
    permissions: list[str]


class Unlocked(Out):
    name: str
    cleared: int


class Counts(Out):
    total: int
    working: int
    broken: int
    in_repair: int
    not_repaired: int
    never_reported: int
    online: int
    by_cause: dict[str, int]


class Summary(Counts):
    at: float


class CommuneCounts(Counts):
    code: str
    name: str
    kind: str


class Communes(Out):
    communes: list[CommuneCounts]


class Device(Out):
    device_id: str
    commune_code: str
    commune_name: str | None
    address: str | None
    in_inventory: bool
    status: Status
    cause: B2Cause | None
    cause_label: str | None
    in_repair: bool
    online: bool
    never_reported: bool
    since: float | None
    last_seen: float | None
    last_ts: float | None


class Devices(Out):
    devices: list[Device]


class HistoryEntry(Out):
    at: float
    actor: str
    action: str
    note: str


class Ticket(Out):
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
    history: list[HistoryEntry]


class StatusPoint(Out):
    ts: float
    status: Status
    cause: B2Cause | None
    online: bool
    #: What brought the change: "state" (a report), "online", "offline" (an
    #: offline presence: orderly stop or last will), "silent" (the collector's
    #: silence rule: no message and no will, e.g. a broker node died); null if
    #: not recorded (history from before schema 9).
    via: Literal["state", "online", "offline", "silent"] | None = None


class SignalPoint(Out):
    ts: float
    rssi_dbm: float | None
    rsrp_dbm: float | None
    rsrq_db: float | None
    sinr_db: float | None
    csq: int | None


class FaultOut(Out):
    code: str
    severity: str
    cause: str
    since: float
    cleared_at: float | None
    evidence: str


class DeviceDetail(Device):
    last_report: dict[str, Any] | None
    status_history: list[StatusPoint]
    signal_history: list[SignalPoint]
    faults: list[FaultOut]
    repairs: list[Ticket]


class EventOut(Out):
    device_id: str
    commune_code: str
    seq: int
    ts: float
    type: str
    fault_code: str | None
    action: str | None
    detail: str | None


class Events(Out):
    events: list[EventOut]


class Tickets(Out):
    repairs: list[Ticket]


class Overdue(Tickets):
    after_s: float


class RepairStat(Out):
    key: str
    resolved: int
    mean_hours: float
    median_hours: float
    max_hours: float


class RepairStats(Out):
    by: Literal["commune", "contractor"]
    stats: list[RepairStat]


class Trend(Out):
    commune_code: str
    unit: str
    delta: int


class Comparison(Out):
    since: str
    newly_broken: list[str]
    repaired: list[str]
    still_broken: list[str]
    improving: list[Trend]
    worsening: list[Trend]
    sentence: str


class B2Summary(Out, omit_defaults=True):
    as_of: str
    as_of_date: str
    unit_name: str
    summary: str
    total: dict[str, Any]
    comparison: Comparison | None = None


class B2Table(Out):
    report: Literal["B2"]
    title: str
    unit_name: str
    as_of: str
    as_of_date: str
    time_zone: str
    scope: Scope
    lang: Lang
    offline_days: float
    causes: list[dict[str, str]]
    rows: list[dict[str, Any]]
    total: dict[str, Any]
    summary: str
    unlisted_devices: list[str]
    # Only clusters that existed at the date count (install date, else first
    # listing or first report); before any did, no_data is true and rows are empty.
    no_data: bool = False
    # The month's availability and ranking of communes (share of cluster-hours
    # working from the 1st to the date, graded Tốt/Khá/Trung bình/Yếu).
    evaluation: dict[str, Any] | None = None
    # Each broken cluster's cause with its source (device, SMS, rule, finding, unknown).
    clusters: dict[str, ClusterCause] = {}
    # When the B2 for this date was first produced (Unix seconds; null: this is the
    # first time), and what changed since: re-issue the report when not empty.
    first_produced_at: float | None = None
    changes_since_first: list[str] = []


class ClusterCause(Out):
    """A broken cluster's cause and where it came from (``collector.causes``)."""

    cause: B2Cause
    source: CauseSource
    #: The correlation rule that inferred it (or why it stays unknown).
    rule: str | None
    evidence: str
    at: float | None
    #: Device evidence that disagrees with an on-site finding: shown, not applied.
    conflict: str | None


class FindingOut(Out):
    id: int
    ticket_id: int
    device_id: str
    cause: B2Cause
    cause_label: str
    text: str
    at: float
    by: str


class DeviceCause(Out):
    device_id: str
    #: None while the cluster works.
    cause: ClusterCause | None
    findings: list[FindingOut]


class InventoryItem(Out):
    device_id: str
    commune_code: str
    commune_name: str
    commune_kind: str
    district: str
    province: str
    address: str
    latitude: float | None
    longitude: float | None
    contractor: str
    sim_iccid: str
    sim_phone: str
    install_date: str
    position: int


class Inventory(Out):
    devices: list[InventoryItem]


class Imported(Out):
    devices: int
    added: int
    updated: int
    unchanged: int
    removed: list[str]
    kept: list[str]


# -- remote operations (collector.remote_api, collector.upgrades) ----------------------------

#: Actions a remote command may name (``collector.remote``: PLAIN_ACTIONS, CHANGING_ACTIONS).
RemoteAction = Literal[
    "status",
    "diag",
    "read",
    "at",
    "modbus",
    "outbox",
    "events",
    "tunnel",
    "tunnel_close",
    "soft_reset",
    "power_cycle",
]
#: An offline device: refuse the command (default) or queue it in its broker session;
#: the dashboard's checkbox sends a boolean (true = queue).
Offline = Literal["refuse", "queue"] | bool
Seconds = Annotated[float, msgspec.Meta(gt=0, le=7 * 86400, description="seconds")]
Args = Annotated[dict[str, Any], msgspec.Meta(max_length=15, description="the action's arguments")]
Version = Annotated[str, msgspec.Meta(pattern="^[0-9a-z.+_-]{1,64}$", description="agent version")]
Hex16 = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{16}$")]


class DeviceCommandParams(Params):
    device_id: DeviceId


class DeviceCommandsParams(Params):
    device_id: DeviceId
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 50


class CommandParams(Params):
    command_id: Hex16


class ConfigVersionsParams(Params):
    commune: Commune | None = None


class UpgradePlanParams(Params):
    version: Version
    device: DeviceId | None = None
    commune: Commune | None = None
    #: Comma-separated device ids.
    canaries: Annotated[str, msgspec.Meta(max_length=4000, pattern="^[A-Za-z0-9_.,-]*$")] | None = (
        None
    )
    canary_count: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 1


class RolloutParams(Params):
    rollout_id: Hex16


class DownloadParams(Params):
    token: Annotated[str, msgspec.Meta(pattern="^[A-Za-z0-9_-]{1,64}$")]
    version: Version


class CommandBody(Body):
    action: RemoteAction
    args: Args = msgspec.field(default_factory=dict)
    #: Wait this long for the reply (default and cap: [remote] wait_s, max_wait_s).
    wait_s: Seconds | None = None
    offline: Offline = "refuse"
    #: A queued command expires after this (default and cap: [remote] queue_s, max_queue_s).
    expires_s: Seconds | None = None
    #: Required (true) for the actions that change the device.
    confirm: bool = False


class ConfigPushBody(Body):
    device: DeviceId | None = None
    commune: Commune | None = None
    fleet: bool = False
    #: A whole agent.toml (one device only).
    toml: Annotated[str, msgspec.Meta(max_length=48 * 1024)] | None = None
    #: Changed fields: ``{"section.key": value}``, null removes.
    set: Annotated[dict[str, Any], msgspec.Meta(max_length=50)] | None = None
    deadline_s: Annotated[float, msgspec.Meta(ge=10, le=3600)] = 180.0
    offline: Offline = "queue"
    wait_s: Seconds | None = None
    expires_s: Seconds | None = None


class RolloutBody(Body):
    version: Version
    device: DeviceId | None = None
    commune: Commune | None = None
    fleet: bool = False
    canaries: Annotated[list[DeviceId], msgspec.Meta(max_length=1000)] | None = None
    canary_count: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 1
    deadline_s: Annotated[float, msgspec.Meta(ge=30, le=86400)] = 900.0


class CommandOut(Out):
    id: str
    device_id: str
    action: str
    args: dict[str, Any]
    actor: str
    mode: str
    created_at: float
    expires_at: float
    state: Literal["sent", "replied", "unreachable", "queued", "refused", "expired"]
    replied_at: float | None
    ok: bool | None
    result: Any
    error: str | None


class CommandList(Out):
    commands: list[CommandOut]


class ConfigPushed(Out):
    bytes_per_device: int
    summary: dict[str, int]
    devices: list[CommandOut]


class ConfigVersion(Out):
    device_id: str
    commune_code: str | None
    online: bool
    agent_version: str | None
    config_version: str | None


class ConfigVersions(Out):
    devices: list[ConfigVersion]


class UpgradeArtifact(Out):
    version: str
    size: int
    sha256: str
    signature: str
    wheels: list[str]


class UpgradeList(Out):
    upgrades: list[UpgradeArtifact]


class UpgradePlan(Out):
    version: str
    bytes_per_device: int
    devices: int
    total_bytes: int
    canaries: list[str]
    rest: list[str]


class RolloutOut(Out):
    id: str
    version: str
    actor: str
    state: Literal["canaries", "rest", "done", "halted"]
    reason: str
    canaries: list[str]
    rest: list[str]
    bytes_per_device: int
    total_bytes: int
    started_at: float
    devices: dict[str, dict[str, Any]]
