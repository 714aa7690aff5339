"""The fleet's rules on one device's batch, without a store (collector.fleet_step)."""

from __future__ import annotations

import msgspec
import pytest

from collector.fleet import INITIAL, FleetState, Observation, ObsKind
from collector.fleet_step import (
    DeviceRecord,
    fuller_report,
    merged_report,
    reconcile_faults,
    refold_start,
    silence,
    step_device,
)
from collector.model import Status
from collector.store.base import IncomingMessage
from fleet_protocol import B2Cause

DEV = "dev-001"


def report(
    seq: int,
    ts: float,
    *,
    broken: bool = False,
    faults: tuple[str, ...] = (),
    heartbeat: bool = False,
    prompt: bool = True,
    received_at: float | None = None,
    body: dict[str, object] | None = None,
) -> IncomingMessage:
    cause = B2Cause.NO_STATION_SIGNAL if broken else None
    return IncomingMessage(
        device_id=DEV,
        seq=seq,
        kind="state",
        ts=ts,
        received_at=ts if received_at is None else received_at,
        payload=msgspec.json.encode(body or {"seq": seq}),
        observation=Observation(ts, seq, ObsKind.REPORT, prompt=prompt, broken=broken, cause=cause),
        commune="xa-01",
        faults=tuple((c, ts - 10, "no_station_signal", "critical", "") for c in faults),
        heartbeat=heartbeat,
    )


def test_a_first_batch_folds_from_nothing() -> None:
    msgs = [report(2, 120.0, broken=True, faults=("stream_lost",)), report(1, 60.0)]
    assert refold_start(None, msgs) is None
    st = step_device(DEV, None, msgs)
    rec = st.record
    assert rec.state.status is Status.BROKEN and rec.state.cause is B2Cause.NO_STATION_SIGNAL
    assert [t.seq for t in st.transitions] == [1, 2]  # working, then broken
    assert rec.obs_key == (120.0, 2) and rec.last_key == (120.0, 2)
    assert rec.first_seen == 60.0 and rec.last_seen == 120.0 and rec.commune_code == "xa-01"
    assert st.report is not None and st.report.seq == 2 and rec.report_ts == 120.0
    assert [m.seq for m in st.fault_reports] == [1, 2]


def test_a_late_message_or_a_re_dating_asks_for_a_refold() -> None:
    cur = DeviceRecord(
        device_id=DEV,
        state=FleetState(online=True, has_diag=True, status_since=100.0),
        obs_key=(200.0, 5),
        last_key=(200.0, 5),
        last_seen=200.0,
        report_ts=200.0,
        first_seen=50.0,
    )
    assert refold_start(cur, [report(6, 260.0)]) is None  # in order: fold on
    assert refold_start(cur, [report(4, 150.0)]) == (150.0, 4)  # late
    assert refold_start(cur, [report(6, 260.0)], redo=(90.0, 2)) == (90.0, 2)
    # A refold replaces the stored transitions from its start with the history's.
    history = (INITIAL, [Observation(150.0, 4, ObsKind.REPORT, broken=True)])
    st = step_device(
        DEV, cur, [report(4, 150.0, broken=True)], history=history, replace_from=(150.0, 4)
    )
    assert st.replace_from == (150.0, 4) and st.transitions
    # The late report is older than the kept one: it is not the last report, its
    # faults are not reconciled, and the newest keys stay.
    assert st.report is None and st.fault_reports == ()
    assert st.record.last_key == (200.0, 5) and st.record.obs_key == (200.0, 5)
    assert st.record.first_seen == 50.0


def test_fault_episodes_open_close_and_survive_a_batch() -> None:
    reports = [
        report(1, 10.0, faults=("stream_lost",)),
        report(2, 20.0, faults=("stream_lost", "amp_fault")),
        report(3, 30.0, faults=("amp_fault",)),
    ]
    changes = reconcile_faults({"sim_absent"}, reports)
    assert [(c.code, c.at, c.seq) for c in changes.cleared] == [("sim_absent", 10.0, 1)]
    opened = {o.code: o for o in changes.opened}
    assert opened["stream_lost"].opened_seq == 1
    assert (opened["stream_lost"].cleared_at, opened["stream_lost"].cleared_seq) == (30.0, 3)
    assert opened["amp_fault"].cleared_at is None and opened["amp_fault"].opened_seq == 2


def test_a_heartbeat_keeps_the_sections_of_the_last_full_report() -> None:
    full = report(1, 10.0, body={"seq": 1, "modem": {"rssi_dbm": -70}, "amp": {"on": True}})
    beat = report(2, 20.0, heartbeat=True, body={"seq": 2, "faults": []})
    assert fuller_report(beat, [beat, full]) == full.payload
    assert fuller_report(full, [beat, full]) is None
    merged = msgspec.json.decode(merged_report(beat, full.payload))
    assert merged == {"seq": 2, "faults": [], "modem": {"rssi_dbm": -70}, "amp": {"on": True}}
    assert merged_report(full, b'{"modem": 1}') == full.payload  # a full report stands alone
    assert merged_report(beat, None) == beat.payload


@pytest.mark.parametrize(
    ("last_ts", "obs_key", "expect_ts"),
    [(100.0, (100.0, 7), 190.0), (100.0, None, 190.0), (950.0, None, 1000.0)],
)
def test_silence_comes_after_everything_folded(
    last_ts: float, obs_key: tuple[float, int] | None, expect_ts: float
) -> None:
    obs = silence(last_ts, obs_key, now=1000.0, grace_s=90.0)
    assert obs.kind is ObsKind.SILENT and obs.ts == expect_ts and obs.seq < 0
    if obs_key is not None:
        assert (obs.ts, obs.seq) > obs_key or obs.ts > obs_key[0]
    # A silence at the very key already folded goes just after it.
    again = silence(10.0, (100.0, -100000), now=1000.0, grace_s=90.0)
    assert (again.ts, again.seq) > (100.0, -100000)
