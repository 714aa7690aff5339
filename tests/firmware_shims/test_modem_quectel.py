"""Quectel parsers, table-driven from data/modem_quectel_cases.toml."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_shims.modem import quectel
from firmware_shims.modem.at import AtResponse, parse_response
from fleet_protocol import AccessTech, ModemState, RegState
from tests.firmware_shims.test_modem_generic import check

CASES = tomllib.loads((Path(__file__).parent / "data" / "modem_quectel_cases.toml").read_text())


@pytest.mark.parametrize("case", CASES["qccid"], ids=lambda c: c["raw"])
def test_qccid(case: dict[str, Any]) -> None:
    got = quectel.parse_qccid(parse_response("AT+QCCID", case["raw"]))
    assert got == (None if case["iccid"] == "none" else case["iccid"])


@pytest.mark.parametrize("case", CASES["qcsq"], ids=lambda c: c["raw"])
def test_qcsq(case: dict[str, Any]) -> None:
    got = quectel.parse_qcsq(parse_response("AT+QCSQ", case["raw"]))
    check(got, case, ("sysmode", "rssi_dbm", "rsrp_dbm", "sinr_db", "rsrq_db"))


@pytest.mark.parametrize("case", CASES["qeng"], ids=lambda c: c["raw"][:70])
def test_qeng_servingcell(case: dict[str, Any]) -> None:
    got = quectel.parse_qeng_servingcell(parse_response(quectel.CMD_QENG, case["raw"]))
    keys = ("state", "rat", "mccmnc", "cell_id", "tac", "rsrp_dbm", "rsrq_db", "rssi_dbm")
    check(got, case, (*keys, "registration"))
    if "sinr_db" in case:
        want = None if case["sinr_db"] == "none" else case["sinr_db"]
        assert got.sinr_db == pytest.approx(want)


def test_five_g_family_sinr_in_db() -> None:
    raw = (
        '+QENG: "servingcell","NOCONN","LTE","FDD",452,04,1A2D101,123,1650,3,5,5,3A98,'
        "-95,-11,-65,14,40\r\nOK"
    )
    cell = quectel.parse_qeng_servingcell(parse_response(quectel.CMD_QENG, raw), sinr_scale="db")
    assert cell.sinr_db == 14.0


def test_build_state_prefers_qeng_cell_and_keeps_roaming_from_cereg() -> None:
    answers = {
        "AT+CPIN?": "+CPIN: READY\r\nOK",
        "AT+CSQ": "+CSQ: 99,99\r\nOK",
        "AT+CEREG?": "+CEREG: 0,5\r\nOK",
        "AT+COPS?": '+COPS: 0,0,"VIETTEL",7\r\nOK',
        "AT+QCSQ": '+QCSQ: "LTE",-65,-95,150,-11\r\nOK',
        quectel.CMD_QENG: (
            '+QENG: "servingcell","NOCONN","LTE","FDD",452,04,1A2D101,123,1650,3,5,5,3A98,'
            "-95,-11,-65,150,40\r\nOK"
        ),
        "AT+QCCID": "+QCCID: 8984048000012345678F\r\nOK",
    }
    state = quectel.build_state({c: parse_response(c, r) for c, r in answers.items()})
    assert state.registration is RegState.ROAMING
    assert state.access_tech is AccessTech.LTE
    assert (state.rsrp_dbm, state.rsrq_db, state.sinr_db) == (-95.0, -11.0, 10.0)
    assert state.rssi_dbm == -65.0  # +CSQ said unknown; +QCSQ knew
    assert (state.cell_id, state.tac, state.mccmnc) == ("1A2D101", "3A98", "45204")
    assert state.iccid == "8984048000012345678"


payload = st.text(alphabet='0123456789,"-ABCDEFLTNOSRVCHIPQ ', max_size=90)


@given(st.lists(payload, max_size=3), st.lists(payload, max_size=2))
def test_random_answers_give_a_valid_state(qeng: list[str], qcsq: list[str]) -> None:
    responses = {
        quectel.CMD_QENG: AtResponse(quectel.CMD_QENG, tuple("+QENG: " + p for p in qeng), "OK"),
        quectel.CMD_QCSQ: AtResponse(quectel.CMD_QCSQ, tuple("+QCSQ: " + p for p in qcsq), "OK"),
        "AT+CEREG?": AtResponse("AT+CEREG?", ("+CEREG: 0,1",), "OK"),
    }
    state = quectel.build_state(responses)
    assert msgspec.json.decode(msgspec.json.encode(state), type=ModemState) == state
