"""AT framing and command classification, table-driven from data/modem_at_cases.toml."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_shims.modem.at import (
    AtFormatError,
    Framer,
    is_read_only,
    parse_cme_error,
    parse_response,
    split_fields,
)

CASES = tomllib.loads((Path(__file__).parent / "data" / "modem_at_cases.toml").read_text())


@pytest.mark.parametrize("case", CASES["frame"], ids=lambda c: c["name"])
def test_frame(case: dict[str, Any]) -> None:
    resp = parse_response(case["command"], case["raw"])
    assert list(resp.lines) == case.get("lines", [])
    assert resp.final == case["final"]
    assert list(resp.urcs) == case.get("urcs", [])
    assert resp.echoed == case.get("echoed", False)
    assert resp.ok == (case["final"] == "OK")
    err = resp.error
    if "error_code" in case or "error_text" in case:
        assert err is not None
        assert err.code == case.get("error_code")
        if "error_text" in case:
            assert err.text == case["error_text"]
    elif case["final"] != "OK":
        assert err is None


@pytest.mark.parametrize("cmd", CASES["read_only"]["yes"])
def test_read_only(cmd: str) -> None:
    assert is_read_only(cmd)


@pytest.mark.parametrize("cmd", CASES["read_only"]["no"])
def test_state_changing(cmd: str) -> None:
    assert not is_read_only(cmd)


def test_no_final_code_is_a_format_error() -> None:
    with pytest.raises(AtFormatError, match="AT\\+CSQ"):
        parse_response("AT+CSQ", "AT+CSQ\r\r\n+CSQ: 20,99\r\n")


def test_stale_final_before_echo_is_skipped_when_echo_expected() -> None:
    framer = Framer("AT+CSQ", expect_echo=True)
    # The tail of an earlier, timed-out AT+CIMI arrives first.
    for line in ["452040000012345", "OK", "AT+CSQ", "+CSQ: 5,99"]:
        assert framer.feed(line) is None
    resp = framer.feed("OK")
    assert resp is not None and resp.lines == ("+CSQ: 5,99",)
    assert framer.stale == ["452040000012345", "OK"]


def test_split_fields_keeps_commas_inside_quotes() -> None:
    assert split_fields('0,0,"Viet, tel",7') == ["0", "0", '"Viet, tel"', "7"]


@given(st.binary(max_size=400), st.sampled_from(["AT+CSQ", "AT+CPIN?", "ATI", 'AT+QENG="x"']))
def test_random_bytes_frame_or_format_error(data: bytes, cmd: str) -> None:
    try:
        resp = parse_response(cmd, data)
    except AtFormatError:
        return
    assert resp.final
    _ = resp.error


@given(st.text(max_size=80))
def test_random_text_never_breaks_classifiers(text: str) -> None:
    assert isinstance(is_read_only(text), bool)
    err = parse_cme_error(text)
    assert err is None or err.kind in ("CME", "CMS")
