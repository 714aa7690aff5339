"""Wire protocol v1: round trips, validation errors naming the field, hostile bytes."""

from __future__ import annotations

import contextlib
import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet_protocol import (
    MAX_DEPTH,
    MAX_PAYLOAD_BYTES,
    PROTOCOL_VERSION,
    AccessTech,
    Ack,
    AmpState,
    B2Cause,
    Command,
    Event,
    EventType,
    Fault,
    FaultCode,
    Kind,
    ModemState,
    Presence,
    PresenceStatus,
    ProtocolError,
    RegState,
    Reply,
    Severity,
    SimState,
    StateReport,
    StreamState,
    SystemState,
    decode,
    decode_ack,
    decode_as,
    encode,
    nesting_depth,
    peek_seq,
    seq_ranges,
    to_builtins,
)

TS = 1690761600.25  # 2023-07-31 00:00:00.25 UTC


def full_state() -> StateReport:
    return StateReport(
        v=PROTOCOL_VERSION,
        device="lt-xuanhuy-01",
        seq=42,
        ts=TS,
        commune="xuan-huy",
        modem=ModemState(
            sim=SimState.READY,
            iccid="8984048000001234567",
            operator="Viettel",
            mccmnc="45204",
            access_tech=AccessTech.LTE,
            registration=RegState.HOME,
            csq=21,
            rssi_dbm=-71,
            rsrp_dbm=-95.5,
            rsrq_db=-10.5,
            sinr_db=12.4,
            cell_id="0A1B2C3",
            tac="2F01",
        ),
        amp=AmpState(
            power=True,
            volume=70,
            temperature_c=41.5,
            mains_v=226.0,
            battery_v=13.1,
            flags=["playing"],
        ),
        stream=StreamState(receiving=True, since=TS - 3600, source="http://radio.local/live"),
        system=SystemState(
            cpu_pct=3.1,
            mem_pct=41.2,
            disk_pct=22.0,
            soc_temp_c=48.3,
            uptime_s=123456,
            boot_id="5f1c9a3e",
        ),
        outbox_depth=3,
        faults=[Fault.of(FaultCode.WEAK_SIGNAL, TS - 720, "RSRP -118 dBm for 12 min")],
    )


ALL_MESSAGES: list[tuple[Kind, Any]] = [
    (Kind.STATE, full_state()),
    (Kind.STATE, StateReport(v=1, device="dev-001", seq=0, ts=TS, heartbeat=True)),
    (
        Kind.EVENT,
        Event(
            v=1,
            device="dev-001",
            seq=7,
            ts=TS,
            type=EventType.FAULT_RAISED,
            fault=Fault.of(FaultCode.SIM_FAILURE, TS, "+CME ERROR: 13 on AT+CPIN?"),
        ),
    ),
    (
        Kind.EVENT,
        Event(
            v=1,
            device="dev-001",
            seq=8,
            ts=TS,
            type=EventType.RECOVERY,
            action="soft_reset",
            detail="AT+CFUN=1,1",
        ),
    ),
    (Kind.PRESENCE, Presence(v=1, device="dev-001", seq=9, ts=TS, status=PresenceStatus.OFFLINE)),
    (
        Kind.CMD,
        Command(
            v=1, device="dev-001", seq=1, ts=TS, id="c1", action="diag", args={"target": "modem"}
        ),
    ),
    (
        Kind.REPLY,
        Reply(v=1, device="dev-001", seq=10, ts=TS, id="c1", ok=True, result={"sim": "ready"}),
    ),
]


@pytest.mark.parametrize(("kind", "msg"), ALL_MESSAGES)
def test_round_trip(kind: Kind, msg: Any) -> None:
    wire = encode(msg)
    assert decode(kind, wire) == msg
    assert decode(kind, wire.decode()) == msg
    assert decode_as(type(msg), wire) == msg
    # Every message carries the envelope, even with defaults omitted.
    obj = json.loads(wire)
    assert {"v", "device", "seq", "ts"} <= obj.keys()


def test_none_fields_are_left_off_the_wire() -> None:
    wire = encode(StateReport(v=1, device="dev-001", seq=0, ts=TS, modem=ModemState()))
    assert json.loads(wire) == {"v": 1, "device": "dev-001", "seq": 0, "ts": TS, "modem": {}}


def test_fault_of_takes_severity_and_cause_from_the_taxonomy() -> None:
    f = Fault.of(FaultCode.SIM_FAILURE, TS, "x")
    assert (f.severity, f.cause) == (Severity.CRITICAL, B2Cause.SIM_FAILURE)
    assert Fault.of(FaultCode.WEAK_SIGNAL, TS, "x").severity is Severity.WARNING
    assert Fault.of(FaultCode.STREAM_LOST, TS, "x").cause is B2Cause.NO_STATION_SIGNAL


def test_a_full_state_report_is_small() -> None:
    # The SIM has a data cap: a full report must stay well under 1 KiB.
    assert len(encode(full_state())) < 900
    assert to_builtins(full_state())["modem"]["sim"] == "ready"


def mutate(path: list[str], value: Any) -> bytes:
    obj = json.loads(encode(full_state()))
    target = obj
    for key in path[:-1]:
        target = target[int(key)] if isinstance(target, list) else target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return json.dumps(obj).encode()


BAD_FIELDS = [
    (["seq"], -1, "seq", "schema"),
    (["seq"], "1", "seq", "schema"),
    (["seq"], KeyError, "$", "schema"),
    (["device"], "Dev_01", "device", "schema"),
    (["device"], "ab", "device", "schema"),
    (["device"], "x" * 64, "device", "schema"),
    (["ts"], 0, "ts", "schema"),
    (["ts"], 1e12, "ts", "schema"),
    (["v"], 2, "v", "version"),
    (["v"], KeyError, "$", "schema"),
    (["modem", "sim"], "burnt", "modem.sim", "schema"),
    (["modem", "rssi_dbm"], "strong", "modem.rssi_dbm", "schema"),
    (["modem", "rssi_dbm"], 20, "modem.rssi_dbm", "schema"),
    (["modem", "iccid"], "89'; DROP TABLE x;--", "modem.iccid", "schema"),
    (["modem", "operator"], "V" * 65, "modem.operator", "schema"),
    (["amp", "flags"], ["x"] * 33, "amp.flags", "schema"),
    (["faults", "0", "code"], "cosmic_ray", "faults[0].code", "schema"),
    (["faults", "0", "evidence"], "e" * 513, "faults[0].evidence", "schema"),
    (["outbox_depth"], -5, "outbox_depth", "schema"),
]


@pytest.mark.parametrize(("path", "value", "field", "kind"), BAD_FIELDS)
def test_bad_field_is_named(path: list[str], value: Any, field: str, kind: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(Kind.STATE, mutate(path, value))
    assert info.value.kind == kind
    assert info.value.field == field
    assert field in str(info.value)


def test_missing_required_field_is_named_in_the_message() -> None:
    with pytest.raises(ProtocolError, match="seq"):
        decode(Kind.STATE, mutate(["seq"], KeyError))


def test_malformed_json_and_wrong_shapes() -> None:
    for payload, kind in [
        (b"", "json"),
        (b"{", "json"),
        (b"\xff\xfe", "json"),
        (b"[]", "schema"),
        (b"null", "schema"),
        (b'"state"', "schema"),
        (b"NaN", "json"),
    ]:
        with pytest.raises(ProtocolError) as info:
            decode(Kind.STATE, payload)
        assert info.value.kind == kind, payload


def test_oversize_is_rejected_before_parsing() -> None:
    huge = (
        b'{"v":1,"device":"dev-001","seq":1,"ts":1690761600,"commune":"' + b"x" * MAX_PAYLOAD_BYTES
    )
    with pytest.raises(ProtocolError) as info:
        decode(Kind.STATE, huge)
    assert info.value.kind == "oversize"


def test_device_in_payload_must_match_topic() -> None:
    wire = encode(full_state())
    assert decode(Kind.STATE, wire, topic_device="lt-xuanhuy-01").device == "lt-xuanhuy-01"
    with pytest.raises(ProtocolError) as info:
        decode(Kind.STATE, wire, topic_device="lt-xuanhuy-02")
    assert info.value.kind == "mismatch"


def test_odd_unicode_in_strings_is_kept_verbatim() -> None:
    odd = "Xã Tiên Kiên \u202e\u0000 🔊 ' OR 1=1 --"
    wire = mutate(["commune"], odd[:64])
    assert decode(Kind.STATE, wire).commune == odd[:64]  # type: ignore[union-attr]


def test_nan_and_infinity_are_rejected() -> None:
    for bad in (b"NaN", b"Infinity", b"-Infinity", b"1e999"):
        payload = encode(full_state()).replace(b'"rssi_dbm":-71', b'"rssi_dbm":' + bad)
        with pytest.raises(ProtocolError):
            msg = decode(Kind.STATE, payload)
            # 1e999 parses to inf in some decoders: it must not get through as a reading.
            assert msg.modem is not None and math.isfinite(msg.modem.rssi_dbm or 0)  # type: ignore[union-attr]


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2048), st.sampled_from(list(Kind)))
def test_random_bytes_never_escape_as_anything_but_protocol_error(data: bytes, kind: Kind) -> None:
    with contextlib.suppress(ProtocolError):
        decode(kind, data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=30,
)


@settings(max_examples=500, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "v",
                "device",
                "seq",
                "ts",
                "modem",
                "amp",
                "stream",
                "system",
                "faults",
                "outbox_depth",
                "type",
                "status",
                "fault",
                "id",
                "ok",
                "args",
                "result",
                "heartbeat",
            ]
        ),
        json_values,
        max_size=10,
    ),
    st.sampled_from(list(Kind)),
)
def test_hostile_json_objects_never_escape(obj: dict[str, Any], kind: Kind) -> None:
    try:
        msg = decode(kind, json.dumps(obj).encode())
    except ProtocolError as exc:
        assert exc.field and exc.reason
    else:
        assert msg.v == PROTOCOL_VERSION


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=0, max_value=2**53), st.floats(min_value=946684800, max_value=4102444800)
)
def test_envelope_round_trips(seq: int, ts: float) -> None:
    msg = Presence(v=1, device="dev-001", seq=seq, ts=ts, status=PresenceStatus.ONLINE)
    assert decode(Kind.PRESENCE, encode(msg)) == msg


# --- nesting depth, store confirmations, clock provenance (issue 11) ---------------------


@pytest.mark.parametrize("kind", [Kind.STATE, Kind.PRESENCE, Kind.EVENT, Kind.REPLY, Kind.CMD])
@pytest.mark.parametrize(
    "payload",
    [
        b'{"a":' * 1500 + b"1" + b"}" * 1500,  # the 3 KB message that killed ingest
        b"[" * 100_000,  # unterminated
        b'{"v":1,"x":' + b"[" * 40 + b"]" * 40 + b"}",  # just past the limit
    ],
)
def test_deep_nesting_is_rejected_before_decoding(kind: Kind, payload: bytes) -> None:
    if len(payload) > MAX_PAYLOAD_BYTES:
        payload = payload[: MAX_PAYLOAD_BYTES - 1]
    with pytest.raises(ProtocolError) as info:
        decode(kind, payload)
    assert info.value.kind == "depth"
    assert "32 levels" in info.value.reason


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    tricky = '[[[{{{ \\" ' * 200
    msg = msgspec_replace_commune(tricky[:64])
    assert decode(Kind.STATE, encode(msg)) == msg
    assert nesting_depth(b'{"a":"' + b"[" * 500 + b'"}') == 1
    assert nesting_depth(b'{"a":"\\"' + b"[" * 500 + b'"}') == 1
    assert nesting_depth(b"[" * 10 + b"]" * 10) == 0  # too few brackets to scan
    assert nesting_depth(b"[" * 20 + b"]" * 20 + b"[]" * 20) == 20
    assert nesting_depth(b"[" * 500) == MAX_DEPTH + 1


def msgspec_replace_commune(commune: str) -> StateReport:
    import msgspec

    return msgspec.structs.replace(full_state(), commune=commune)


def test_old_agents_without_clock_fields_still_validate_and_new_ones_round_trip() -> None:
    old = b'{"v":1,"device":"dev-001","seq":7,"ts":1700000000.5,"status":"online"}'
    msg = decode(Kind.PRESENCE, old)
    assert (msg.boot_id, msg.mono, msg.clock_synced) == (None, None, None)
    new = Presence(
        v=1,
        device="dev-001",
        seq=8,
        ts=1700000000.5,
        boot_id="5f3ca2f0",
        mono=1234.5,
        clock_synced=False,
        status=PresenceStatus.ONLINE,
    )
    assert decode(Kind.PRESENCE, encode(new)) == new
    # A synchronised clock is the default and costs nothing on the wire.
    synced = Presence(v=1, device="dev-001", seq=9, ts=1700000000.5, status=PresenceStatus.ONLINE)
    assert b"clock_synced" not in encode(synced)
    for bad in ('"boot_id":"../../etc"', '"mono":-1', '"clock_synced":"no"'):
        with pytest.raises(ProtocolError) as info:
            decode(Kind.PRESENCE, old[:-1] + b"," + bad.encode() + b"}")
        assert info.value.field in ("boot_id", "mono", "clock_synced")


def test_ack_round_trip_ranges_and_validation() -> None:
    assert seq_ranges([5, 1, 2, 3, 9, 8, 3]) == [[1, 3], 5, [8, 9]]
    assert seq_ranges([]) == []
    ack = Ack(v=1, device="dev-001", stored=seq_ranges([1, 2, 3, 7]), rejected=[11])
    wire = encode(ack)
    assert wire == b'{"v":1,"device":"dev-001","stored":[[1,3],7],"rejected":[11]}'
    back = decode_ack(wire, topic_device="dev-001")
    assert back.seqs() == [(1, 3), (7, 7), (11, 11)]
    with pytest.raises(ProtocolError) as info:
        decode_ack(wire, topic_device="dev-002")
    assert info.value.kind == "mismatch"
    for bad in (
        b'{"v":1,"device":"dev-001","stored":[[1,2,3]]}',
        b'{"v":1,"device":"dev-001","stored":[-1]}',
        b'{"v":1,"device":"dev-001","stored":"all"}',
        b'{"v":1,"device":"dev-001","stored":' + b"[" * 100 + b"]" * 100 + b"}",
        b'{"v":2,"device":"dev-001"}',
        b"garbage",
    ):
        with pytest.raises(ProtocolError):
            decode_ack(bad)


def test_peek_seq_finds_the_seq_of_an_invalid_message_of_that_device_only() -> None:
    assert peek_seq(b'{"v":9,"device":"dev-001","seq":12,"ts":"x"}', "dev-001") == 12
    assert peek_seq(b'{"v":9,"device":"dev-002","seq":12}', "dev-001") is None
    assert peek_seq(b'{"device":"dev-001","seq":-4}', "dev-001") is None
    assert peek_seq(b"[" * 5000, "dev-001") is None
    assert peek_seq(b"\xff\xfe", "dev-001") is None
