"""3GPP parsers, table-driven from data/modem_generic_cases.toml, plus fuzzing."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_shims.modem import generic
from firmware_shims.modem.at import AtResponse, parse_response
from fleet_protocol import AccessTech, ModemState, RegState, SimState

CASES = tomllib.loads((Path(__file__).parent / "data" / "modem_generic_cases.toml").read_text())


def check(result: Any, case: dict[str, Any], keys: tuple[str, ...]) -> None:
    for key in keys:
        if key not in case:
            continue
        want = None if case[key] == "none" else case[key]
        got = getattr(result, key)
        assert (got.value if hasattr(got, "value") else got) == want, f"{key} of {case['raw']!r}"


@pytest.mark.parametrize("case", CASES["cpin"], ids=lambda c: c["raw"])
def test_cpin(case: dict[str, Any]) -> None:
    assert generic.parse_cpin(parse_response("AT+CPIN?", case["raw"])).value == case["sim"]


@pytest.mark.parametrize("case", CASES["csq"], ids=lambda c: c["raw"])
def test_csq(case: dict[str, Any]) -> None:
    check(
        generic.parse_csq(parse_response("AT+CSQ", case["raw"])), case, ("csq", "rssi_dbm", "ber")
    )


@pytest.mark.parametrize("case", CASES["reg"], ids=lambda c: c["raw"])
def test_registration(case: dict[str, Any]) -> None:
    resp = parse_response(f"AT{case['prefix']}?", case["raw"])
    reg = generic.parse_reg(resp, case["prefix"])
    check(reg, case, ("stat", "state", "tac", "cell_id", "act"))


@pytest.mark.parametrize("case", CASES["cops"], ids=lambda c: c["raw"])
def test_cops(case: dict[str, Any]) -> None:
    check(
        generic.parse_cops(parse_response("AT+COPS?", case["raw"])), case, ("name", "mccmnc", "act")
    )


@pytest.mark.parametrize("case", CASES["iccid"], ids=lambda c: c["command"] + " " + c["raw"])
def test_iccid(case: dict[str, Any]) -> None:
    got = generic.parse_iccid(case["command"], parse_response(case["command"], case["raw"]))
    assert got == (None if case["iccid"] == "none" else case["iccid"])


@pytest.mark.parametrize("case", CASES["cimi"], ids=lambda c: c["raw"])
def test_cimi(case: dict[str, Any]) -> None:
    got = generic.parse_cimi(parse_response("AT+CIMI", case["raw"]))
    assert got == (None if case["imsi"] == "none" else case["imsi"])


def test_lte_only_modem_counts_as_registered() -> None:
    reg = generic.combine_registration(
        generic.parse_reg(parse_response("AT+CEREG?", "+CEREG: 0,1\r\nOK"), "+CEREG"),
        generic.parse_reg(parse_response("AT+CREG?", "+CREG: 0,0\r\nOK"), "+CREG"),
    )
    assert reg.state is RegState.HOME


def test_build_state_from_a_full_poll() -> None:
    answers = {
        "AT+CPIN?": "+CPIN: READY\r\nOK",
        "AT+CSQ": "+CSQ: 17,99\r\nOK",
        "AT+CREG?": "+CREG: 0,0\r\nOK",
        "AT+CGREG?": "+CGREG: 0,1\r\nOK",
        "AT+CEREG?": '+CEREG: 2,1,"3A98","01A2D101",7\r\nOK',
        "AT+COPS?": '+COPS: 0,0,"Viettel",7\r\nOK',
        "AT+CCID": "+CCID: 8984040000123456789F\r\nOK",
    }
    state = generic.build_state({c: parse_response(c, raw) for c, raw in answers.items()})
    assert state == ModemState(
        sim=SimState.READY,
        iccid="8984040000123456789",
        operator="Viettel",
        mccmnc="45204",
        access_tech=AccessTech.LTE,
        registration=RegState.HOME,
        csq=17,
        rssi_dbm=-79.0,
        cell_id="1A2D101",
        tac="3A98",
    )


def test_build_state_with_nothing_is_unknown_but_valid() -> None:
    state = generic.build_state({})
    assert state.sim is SimState.UNKNOWN and state.registration is RegState.UNKNOWN
    assert msgspec.json.decode(msgspec.json.encode(state), type=ModemState) == state


COMMANDS = ["AT+CPIN?", "AT+CSQ", "AT+CREG?", "AT+CGREG?", "AT+CEREG?", "AT+COPS?", "AT+CCID"]
lines = st.lists(
    st.one_of(
        st.text(max_size=40),
        st.sampled_from(["+CSQ: ", "+CPIN: ", "+CEREG: ", "+COPS: ", "+CCID: ", "+CREG: "]).flatmap(
            lambda p: st.text(alphabet='0123456789,"ABCDEF -xF', max_size=40).map(lambda s: p + s)
        ),
    ),
    max_size=5,
)


@given(
    st.dictionaries(st.sampled_from(COMMANDS), st.tuples(lines, st.sampled_from(["OK", "ERROR"])))
)
def test_random_answers_give_a_valid_state(answers: dict[str, tuple[list[str], str]]) -> None:
    responses = {
        cmd: AtResponse(command=cmd, lines=tuple(ls), final=final)
        for cmd, (ls, final) in answers.items()
    }
    state = generic.build_state(responses)
    # What we build always passes the wire protocol's own validation.
    assert msgspec.json.decode(msgspec.json.encode(state), type=ModemState) == state
