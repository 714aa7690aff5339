"""SIMCom parsers, table-driven from data/modem_simcom_cases.toml."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_shims.modem import simcom
from firmware_shims.modem.at import AtResponse, parse_response
from fleet_protocol import AccessTech, ModemState, RegState

CASES = tomllib.loads((Path(__file__).parent / "data" / "modem_simcom_cases.toml").read_text())


@pytest.mark.parametrize("case", CASES["ciccid"], ids=lambda c: c["raw"])
def test_ciccid(case: dict[str, Any]) -> None:
    got = simcom.parse_ciccid(parse_response("AT+CICCID", case["raw"]))
    assert got == (None if case["iccid"] == "none" else case["iccid"])


@pytest.mark.parametrize("case", CASES["cpsi"], ids=lambda c: c["raw"][:70])
def test_cpsi(case: dict[str, Any]) -> None:
    got = simcom.parse_cpsi(parse_response("AT+CPSI?", case["raw"]), case.get("family"))
    for key in (
        "sysmode",
        "opmode",
        "rat",
        "mccmnc",
        "tac",
        "cell_id",
        "rsrq_db",
        "rsrp_dbm",
        "rssi_dbm",
        "sinr_db",
    ):
        if key in case:
            want = None if case[key] == "none" else case[key]
            value = getattr(got, key)
            value = value.value if isinstance(value, AccessTech) else value
            assert value == (pytest.approx(want) if isinstance(want, float) else want), key


def test_build_state_sim7600() -> None:
    answers = {
        "AT+CPIN?": "+CPIN: READY\r\nOK",
        "AT+CSQ": "+CSQ: 14,99\r\nOK",
        "AT+CREG?": "+CREG: 0,0\r\nOK",
        "AT+CEREG?": "+CEREG: 0,1\r\nOK",
        "AT+COPS?": '+COPS: 0,0,"Viettel",7\r\nOK',
        "AT+CPSI?": (
            "+CPSI: LTE,Online,452-04,0x3A98,27447553,123,EUTRAN-BAND3,1650,5,5,"
            "-147,-1143,-764,7\r\nOK"
        ),
        "AT+CICCID": "+ICCID: 89840400001234567890\r\nOK",
    }
    state = simcom.build_state({c: parse_response(c, r) for c, r in answers.items()})
    assert state.registration is RegState.HOME
    assert state.rsrp_dbm == pytest.approx(-114.3)
    assert state.rsrq_db == pytest.approx(-14.7)
    assert (state.cell_id, state.tac, state.mccmnc) == ("1A2D101", "3A98", "45204")
    assert state.iccid == "89840400001234567890"


def test_no_service_without_registration_answers_is_searching() -> None:
    resp = parse_response("AT+CPSI?", "+CPSI: NO SERVICE,Online\r\nOK")
    assert simcom.build_state({"AT+CPSI?": resp}).registration is RegState.SEARCHING


@given(st.lists(st.text(alphabet="0123456789,-xABCDEFLTNOSRVIB ", max_size=90), max_size=3))
def test_random_cpsi_gives_a_valid_state(payloads: list[str]) -> None:
    resp = AtResponse("AT+CPSI?", tuple("+CPSI: " + p for p in payloads), "OK")
    state = simcom.build_state(
        {"AT+CPSI?": resp, "AT+CEREG?": AtResponse("AT+CEREG?", ("+CEREG: 0,1",), "OK")}
    )
    assert msgspec.json.decode(msgspec.json.encode(state), type=ModemState) == state
