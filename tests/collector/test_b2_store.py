"""B2 through the real store: inventory file → SQLite, wire messages → status history → table.

The Lâm Thao demo district is driven into its 31/7/2023 state with real wire
messages (validated by the real ingest path) and real repair tickets; the table
computed from ``statuses_as_of`` must match the pure expectation exactly, and
stay the same after August's events.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

from collector.b2 import compare_statuses, compute_b2, end_of_day, zone
from collector.b2.demo import DEMO_DAY, demo_inventory, demo_statuses
from collector.config import IngestConfig
from collector.ingest import Ingestor
from collector.inventory import inventory_to_xlsx, parse_inventory
from collector.metrics import IngestStats
from collector.model import DeviceStatus, Status
from collector.store.base import TicketState
from collector.store.sqlite import SQLiteRepository
from fleet_protocol import (
    PROTOCOL_VERSION,
    B2Cause,
    Fault,
    FaultCode,
    Kind,
    Message,
    ModemState,
    Presence,
    PresenceStatus,
    RegState,
    SimState,
    StateReport,
    StreamState,
    encode,
    topic,
)
from tests.collector.test_b2_table import EXPECTED, EXPECTED_SENTENCE, EXPECTED_TOTAL, _figures

TZ = zone()
JULY_END = end_of_day(DEMO_DAY, TZ)
AUG_END = end_of_day(dt.date(2023, 8, 31), TZ)
DAY = 86400.0
FAULT_FOR = {
    B2Cause.NO_STATION_SIGNAL: FaultCode.STREAM_LOST,
    B2Cause.UNSTABLE_NETWORK: FaultCode.NETWORK_UNSTABLE,
    B2Cause.SIM_FAILURE: FaultCode.SIM_FAILURE,
}


def report(device: str, seq: int, ts: float, fault: FaultCode | None = None) -> StateReport:
    return StateReport(
        v=PROTOCOL_VERSION,
        device=device,
        seq=seq,
        ts=ts,
        heartbeat=fault is None,
        modem=ModemState(sim=SimState.READY, registration=RegState.HOME, rssi_dbm=-71.0),
        stream=StreamState(receiving=fault is not FaultCode.STREAM_LOST),
        faults=[] if fault is None else [Fault.of(fault, ts - 600, f"demo {fault}")],
    )


def offline(device: str, seq: int, ts: float) -> Presence:
    return Presence(
        v=PROTOCOL_VERSION, device=device, seq=seq, ts=ts, status=PresenceStatus.OFFLINE
    )


class Fleet:
    """Sends wire messages through the real ingest validation into the store."""

    def __init__(self, repo: SQLiteRepository) -> None:
        self.ingestor = Ingestor(repo, IngestConfig(), IngestStats())
        self.seq: dict[str, int] = {}
        self.batch: list[object] = []

    def next_seq(self, device: str) -> int:
        self.seq[device] = self.seq.get(device, 0) + 1
        return self.seq[device]

    def send(self, message: Message, kind: Kind) -> None:
        # Delivered promptly: received one second after the device stamped it.
        prepared = self.ingestor.prepare(
            topic(message.device, kind), encode(message), received_at=message.ts + 1.0
        )
        assert prepared is not None, f"ingest rejected {message!r:.200}"
        self.batch.append(prepared)

    def healthy(self, device: str, ts: float) -> None:
        self.send(report(device, self.next_seq(device), ts), Kind.STATE)

    def fault(self, device: str, ts: float, code: FaultCode) -> None:
        self.send(report(device, self.next_seq(device), ts, code), Kind.STATE)

    def gone(self, device: str, ts: float) -> None:
        self.send(offline(device, self.next_seq(device), ts), Kind.PRESENCE)

    async def flush(self) -> None:
        batch, self.batch = self.batch, []
        batch.sort(key=lambda m: m.ts)  # type: ignore[attr-defined]
        result = await self.ingestor.write(batch)  # type: ignore[arg-type]
        assert result.stored == len(batch)


async def drive_to_july_state(repo: SQLiteRepository, fleet: Fleet) -> dict[str, int]:
    """Send July's history so the fleet is in the demo state at the end of 31/7.

    Returns the ticket id of each device being repaired.
    """
    end = JULY_END.timestamp()
    target = demo_statuses(end)
    start = dt.datetime(2023, 7, 1, 7, tzinfo=TZ).timestamp()
    broken_at = end - 3 * DAY
    for status in target:
        if status.never_reported:
            continue
        fleet.healthy(status.device_id, start)
        if status.status is Status.WORKING:
            fleet.healthy(status.device_id, end - 3600)
        elif status.cause is B2Cause.UNKNOWN:
            fleet.gone(status.device_id, end - 10 * DAY)
        else:
            assert status.cause is not None
            fleet.fault(status.device_id, broken_at, FAULT_FOR[status.cause])
    await fleet.flush()
    tickets: dict[str, int] = {}
    for status in target:
        if status.in_repair:
            ticket = await repo.open_ticket(
                status.device_id, actor="xa", at=end - 2 * DAY, note="báo hỏng", cause=None
            )
            await repo.start_ticket(
                ticket.id,
                actor="huyen",
                at=end - DAY,
                contractor="Viettel Phú Thọ",
                technician="Nguyễn Văn A",
                note="",
            )
            tickets[status.device_id] = ticket.id
    return tickets


async def test_demo_district_through_sqlite_and_status_history(repo: SQLiteRepository) -> None:
    # The inventory goes in the way a district sends it: a spreadsheet.
    inventory = parse_inventory(inventory_to_xlsx(demo_inventory()), source="lam-thao.xlsx")
    assert await repo.upsert_inventory(inventory, remove_missing=False) == (200, 0, 0)
    assert await repo.list_inventory() == inventory

    fleet = Fleet(repo)
    tickets = await drive_to_july_state(repo, fleet)
    assert len(tickets) == 28

    july_statuses = await repo.statuses_as_of(JULY_END.timestamp())
    july = compute_b2(await repo.list_inventory(), july_statuses, as_of=JULY_END)
    assert _figures(july) == [*EXPECTED, EXPECTED_TOTAL]
    assert july.summary == EXPECTED_SENTENCE

    # August: three repaired clusters come back and their tickets close, two
    # working ones lose the stream, a never-reported one finally reports, and a
    # working one goes silent.
    repaired = list(tickets)[:3]
    for device in repaired:
        fleet.healthy(device, JULY_END.timestamp() + 5 * DAY)
    fleet.fault("lt-lamthao-01", JULY_END.timestamp() + 10 * DAY, FaultCode.STREAM_LOST)
    fleet.fault("lt-sonvi-01", JULY_END.timestamp() + 12 * DAY, FaultCode.STREAM_LOST)
    fleet.healthy("lt-xuanhuy-15", JULY_END.timestamp() + 3 * DAY)  # never reported in July
    fleet.gone("lt-caoxa-01", JULY_END.timestamp() + 20 * DAY)
    await fleet.flush()
    for device in repaired:
        await repo.close_ticket(
            tickets[device],
            actor="huyen",
            at=JULY_END.timestamp() + 6 * DAY,
            state=TicketState.RESOLVED,
            note="đã thay",
        )

    # The July table is the same, to the last field, after August's events.
    again = compute_b2(
        await repo.list_inventory(),
        await repo.statuses_as_of(JULY_END.timestamp()),
        as_of=JULY_END,
    )
    assert again == july

    august_statuses = await repo.statuses_as_of(AUG_END.timestamp())
    august = compute_b2(await repo.list_inventory(), august_statuses, as_of=AUG_END)
    total = august.total
    assert (total.working, total.broken, total.in_repair) == (148 + 3 + 1 - 3, 52 - 4 + 3, 25)
    # Repaired: two no-signal clusters and one on an unstable network; two lost the stream.
    assert repaired == ["lt-lamthao-17", "lt-lamthao-18", "lt-hungson-13"]
    assert total.cause(B2Cause.NO_STATION_SIGNAL) == 20 - 2 + 2
    assert total.cause(B2Cause.UNSTABLE_NETWORK) == 10 - 1
    assert total.cause(B2Cause.UNKNOWN) == 14 - 1 + 1
    assert (total.never_reported, total.offline_long) == (4, 9 + 1)
    # Thị trấn Lâm Thao: both July clusters repaired, lt-lamthao-01 lost the stream.
    assert (august.rows[0].broken, august.rows[0].in_repair) == (1, 0)

    change = compare_statuses(
        inventory, july_statuses, august_statuses, before_at=JULY_END, after_at=AUG_END
    )
    assert set(change.newly_broken) == {"lt-lamthao-01", "lt-sonvi-01", "lt-caoxa-01"}
    assert set(change.repaired) == {*repaired, "lt-xuanhuy-15"}
    assert len(change.still_broken) == 52 - 4


async def test_reimport_updates_and_removes_only_when_asked(repo: SQLiteRepository) -> None:
    inventory = demo_inventory()
    await repo.upsert_inventory(inventory, remove_missing=False)
    edited = [replace(d, contractor="Bắc Việt") for d in inventory[:150]]
    assert await repo.upsert_inventory(edited, remove_missing=False) == (0, 150, 0)
    assert len(await repo.list_inventory()) == 200
    assert await repo.upsert_inventory(edited, remove_missing=True) == (0, 150, 50)
    stored = await repo.list_inventory()
    assert stored == edited
    statuses = await repo.statuses_as_of(JULY_END.timestamp())
    assert all(isinstance(s, DeviceStatus) and s.never_reported for s in statuses)
    table = compute_b2(stored, statuses, as_of=JULY_END)
    assert table.total.total == 150
    assert table.total.never_reported == 150


async def test_import_keeps_missing_devices_after_the_file_and_renames_their_commune(
    repo: SQLiteRepository,
) -> None:
    from collector.b2.service import import_inventory
    from collector.inventory import inventory_to_csv

    inventory = demo_inventory()
    await import_inventory(repo, inventory_to_csv(inventory), source="all.csv")
    # A short file: five Sơn Vi clusters first, the commune renamed.
    son_vi = [replace(d, commune_name="Sơn Vi mới") for d in inventory if d.commune_code == "08428"]
    outcome = await import_inventory(repo, inventory_to_csv(son_vi[:5]), source="part.csv")
    assert outcome.plan.describe() == "0 added, 5 updated, 0 unchanged, 0 removed, 195 kept"
    stored = await repo.list_inventory()
    assert [d.device_id for d in stored[:6]] == [
        *(d.device_id for d in son_vi[:5]),
        "lt-lamthao-01",
    ]
    assert {d.commune_name for d in stored if d.commune_code == "08428"} == {"Sơn Vi mới"}
    table = compute_b2(stored, await repo.statuses_as_of(JULY_END.timestamp()), as_of=JULY_END)
    assert [(r.unit, r.total) for r in table.rows[:2]] == [
        ("Xã Sơn Vi mới", 14),
        ("Thị trấn Lâm Thao", 18),
    ]
