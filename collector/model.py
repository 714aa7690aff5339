"""Domain types shared by the collector's parts (store, fleet state, repairs, B2).

Times are UNIX seconds (UTC) as floats everywhere inside the collector; only
the edges (API, B2 dates, dashboard) convert to and from local dates in the
configured time zone (Asia/Ho_Chi_Minh by default).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from fleet_protocol import B2Cause


class Status(enum.StrEnum):
    """A cluster's status at a moment, as the B2 table counts it."""

    WORKING = "working"  # hoạt động tốt
    BROKEN = "broken"  # hỏng, không hoạt động


class CommuneKind(enum.StrEnum):
    XA = "xã"
    PHUONG = "phường"
    THI_TRAN = "thị trấn"


@dataclass(frozen=True, slots=True, kw_only=True)
class InventoryDevice:
    """One speaker cluster as the district's inventory lists it."""

    device_id: str
    commune_code: str
    commune_name: str
    commune_kind: CommuneKind = CommuneKind.XA
    district: str = ""
    province: str = ""
    address: str = ""
    latitude: float | None = None
    longitude: float | None = None
    contractor: str = ""
    sim_iccid: str = ""
    sim_phone: str = ""
    install_date: str = ""  # ISO date, "" when unknown
    #: Order of the device in the inventory file; communes keep the order in
    #: which they first appear, and that is the order of the B2 rows.
    position: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceStatus:
    """A cluster's status at one moment: what the B2 table and the dashboard count.

    ``cause`` is set when (and only when) ``status`` is BROKEN. ``in_repair`` is
    True when a repair ticket was open and started at that moment (then the
    cluster counts as "đang sửa chữa"). ``never_reported`` marks inventory
    devices with no report before the moment (broken, cause unknown).
    """

    device_id: str
    commune_code: str
    status: Status
    cause: B2Cause | None = None
    in_repair: bool = False
    online: bool = False
    never_reported: bool = False
    #: When the current status began (None when never reported).
    since: float | None = None
    #: Last time anything was heard from the device before the moment.
    last_seen: float | None = None
    #: Whether the cluster existed at the moment: installed (inventory install
    #: date), listed in the inventory or heard from by then. Tables count only
    #: clusters that existed; a month before any did says "no data".
    exists: bool = True
    #: Where ``cause`` came from (``collector.causes.CauseSource`` value); None when
    #: not attributed (the plain fold: the device's own last diagnosis).
    cause_source: str | None = None
