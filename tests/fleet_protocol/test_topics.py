from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet_protocol import (
    CAUSE_LABELS,
    FAULTS,
    B2Cause,
    FaultCode,
    Kind,
    ProtocolError,
    fault_info,
    parse_topic,
    subscriptions,
    topic,
)


@pytest.mark.parametrize("kind", list(Kind))
def test_topic_round_trip(kind: Kind) -> None:
    assert parse_topic(topic("lt-xuanhuy-01", kind)) == ("lt-xuanhuy-01", kind)


@pytest.mark.parametrize(
    "name",
    [
        "loa/v2/dev-001/state",
        "loa/v1/DEV/state",
        "loa/v1/dev-001/status",
        "loa/v1/dev-001",
        "loa/v1//state",
        "loa/v1/dev_001/state",
        "x",
        "",
        "loa/v1/dev-001/cmd/reply/extra",
        "loa/v1/+/state",
        "loa/v1/#",
    ],
)
def test_bad_topics_are_rejected(name: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_topic(name)
    assert info.value.kind == "topic"


def test_topic_refuses_bad_device_id() -> None:
    with pytest.raises(ProtocolError):
        topic("../etc", Kind.STATE)


@given(st.text(max_size=80))
def test_parse_topic_never_raises_anything_else(name: str) -> None:
    with contextlib.suppress(ProtocolError):
        parse_topic(name)


def test_subscriptions_cover_every_uplink_kind_and_can_be_shared() -> None:
    subs = subscriptions()
    assert subs == ["loa/v1/+/state", "loa/v1/+/event", "loa/v1/+/presence", "loa/v1/+/cmd/reply"]
    assert subscriptions("collectors")[0] == "$share/collectors/loa/v1/+/state"


def test_every_cause_has_vietnamese_and_english_labels() -> None:
    assert set(CAUSE_LABELS) == set(B2Cause)
    assert B2Cause.UNSTABLE_NETWORK.label() == "Mạng chập chờn"
    assert B2Cause.NO_STATION_SIGNAL.label("en") == "No station signal"
    assert B2Cause.UNKNOWN.label() == "Không rõ nguyên nhân"


def test_every_fault_code_has_info_and_a_cause() -> None:
    assert set(FAULTS) == set(FaultCode)
    assert fault_info("sim_failure").cause is B2Cause.SIM_FAILURE
    with pytest.raises(ValueError):
        fault_info("nope")
