"""Cause attribution counts what the B2 counts: a cluster that did not exist yet
gets no cause and does not weigh in the fleet correlation."""

from __future__ import annotations

from collector.causes import CauseSource, attribute_all
from collector.correlation import CorrelationConfig
from collector.model import DeviceStatus, Status
from fleet_protocol import B2Cause


def _silent(device: str, *, exists: bool = True) -> DeviceStatus:
    return DeviceStatus(
        device_id=device,
        commune_code="xa-01",
        status=Status.BROKEN,
        cause=B2Cause.UNKNOWN,
        since=1000.0,
        last_seen=1000.0,
        exists=exists,
    )


def test_a_cluster_that_did_not_exist_gets_no_cause_and_no_vote() -> None:
    statuses = [_silent("dev-01"), _silent("dev-02", exists=False)]
    out, attributions = attribute_all(statuses, {}, {}, {}, CorrelationConfig())
    assert set(attributions) == {"dev-01"}
    assert attributions["dev-01"].source is CauseSource.UNKNOWN
    assert out[1] == statuses[1] and out[1].cause_source is None
