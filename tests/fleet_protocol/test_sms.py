"""The fault SMS format: round trip, the 160-character budget, forgery and malformed text."""

from __future__ import annotations

import pytest

from fleet_protocol import FaultCode, ProtocolError
from fleet_protocol.sms import MAX_CHARS, decode_fault_sms, encode_fault_sms, sms_key

KEY = sms_key(b"district-secret", "lt-sonvi-01")


def test_round_trip() -> None:
    text = encode_fault_sms(
        "lt-sonvi-01",
        1234,
        1690766100.7,
        [(FaultCode.SIM_FAILURE, 1690762500), (FaultCode.STREAM_LOST, 1690766000)],
        (1200, 1234),
        KEY,
    )
    assert text.isascii() and len(text) <= MAX_CHARS
    sms = decode_fault_sms(text)
    assert (sms.device, sms.seq, sms.ts, sms.outbox) == (
        "lt-sonvi-01",
        1234,
        1690766100,
        (1200, 1234),
    )
    assert sms.faults == ((FaultCode.SIM_FAILURE, 1690762500), (FaultCode.STREAM_LOST, 1690766000))
    assert sms.verify(KEY) and not sms.truncated


def test_many_faults_are_cut_to_one_sms_and_marked() -> None:
    faults = [(code, 1690766000) for code in list(FaultCode)[:12]]
    text = encode_fault_sms("lt-sonvi-01", 1, 1690766100, faults, None, KEY)
    assert len(text) <= MAX_CHARS
    sms = decode_fault_sms(text)
    assert sms.truncated and 0 < len(sms.faults) < 12
    assert [c for c, _ in sms.faults] == [c for c, _ in faults[: len(sms.faults)]]
    assert sms.verify(KEY)


def test_no_faults_and_empty_outbox() -> None:
    sms = decode_fault_sms(encode_fault_sms("lt-sonvi-01", 9, 1690766100, [], None, KEY))
    assert sms.faults == () and sms.outbox is None and sms.verify(KEY)


def test_forged_and_altered_messages_fail_verification() -> None:
    text = encode_fault_sms("lt-sonvi-01", 9, 1690766100, [], None, KEY)
    assert not decode_fault_sms(text).verify(sms_key(b"other-secret", "lt-sonvi-01"))
    # Another device's key (a leaked controller) cannot sign for this one.
    assert not decode_fault_sms(text).verify(sms_key(b"district-secret", "lt-sonvi-02"))
    altered = text.replace(" 9 ", " 10 ")
    assert not decode_fault_sms(altered).verify(KEY)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello",
        "LOA2 lt-sonvi-01 1 1690766100 - - 0123456789abcdef",
        "LOA1 LT 1 1690766100 - - 0123456789abcdef",
        "LOA1 lt-sonvi-01 x 1690766100 - - 0123456789abcdef",
        "LOA1 lt-sonvi-01 1 1690766100 bogus_code:5 - 0123456789abcdef",
        "LOA1 lt-sonvi-01 1 1690766100 sim_failure:5 9-3 0123456789abcdef",
        "LOA1 lt-sonvi-01 1 1690766100 - - 0123456789ABCDEF",
        "LOA1 lt-sonvi-01 1 1690766100 - -  0123456789abcdef",
        "LOA1 lt-sonvi-01 1 1690766100 - - 0123456789abcdef" + "x" * 200,
    ],
)
def test_malformed_is_a_protocol_error(text: str) -> None:
    with pytest.raises(ProtocolError) as err:
        decode_fault_sms(text)
    assert err.value.kind == "sms_format"
