"""Every dialect and firmware quirk, table-driven from data/modem_dialect_cases.toml,
and each dialect read whole from the simulator by the real probe."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_shims.modem import generic
from firmware_shims.modem.at import parse_response
from firmware_shims.modem.dialects import DIALECTS, get_dialect
from firmware_shims.modem.sim import DIALECT_NAMES
from fleet_protocol import ModemState
from tests.edge_agent.test_tech_checks import _read
from tests.firmware_shims.test_modem_generic import check

CASES = tomllib.loads((Path(__file__).parent / "data" / "modem_dialect_cases.toml").read_text())
STATE_KEYS = (
    "sim",
    "registration",
    "csq",
    "rssi_dbm",
    "rsrp_dbm",
    "rsrq_db",
    "sinr_db",
    "operator",
    "mccmnc",
    "cell_id",
    "tac",
    "iccid",
)


@pytest.mark.parametrize("case", CASES["cesq"], ids=lambda c: c["raw"])
def test_cesq(case: dict[str, Any]) -> None:
    got = generic.parse_cesq(parse_response("AT+CESQ", case["raw"]))
    check(got, case, ("rssi_dbm", "rscp_dbm", "rsrq_db", "rsrp_dbm"))


@pytest.mark.parametrize("case", CASES["followups"], ids=lambda c: c["csq"])
def test_generic_asks_cesq_only_when_csq_knows_nothing(case: dict[str, Any]) -> None:
    answers = {generic.CMD_CSQ: parse_response(generic.CMD_CSQ, case["csq"])}
    assert list(get_dialect("generic").followups(answers)) == case["then"]


@pytest.mark.parametrize("case", CASES["poll"], ids=lambda c: c["name"])
def test_poll(case: dict[str, Any]) -> None:
    dialect = get_dialect(case["dialect"])
    answers = {cmd: parse_response(cmd, raw) for cmd, raw in case["answers"].items()}
    state = dialect.parse(answers)
    for key in ("rssi_dbm", "rsrp_dbm", "rsrq_db", "sinr_db"):
        if isinstance(case.get(key), float):
            assert getattr(state, key) == pytest.approx(case[key]), key
    check(state, {**case, "raw": case["name"]}, STATE_KEYS)


def test_every_dialect_is_simulated() -> None:
    assert set(DIALECT_NAMES) == set(DIALECTS)
    for d in DIALECTS.values():
        assert d.models, d.name


@pytest.mark.parametrize("dialect", DIALECT_NAMES)
async def test_simulated_modem_reads_whole(dialect: str) -> None:
    reading = await _read(dialect)
    s = reading.state
    assert (s.sim.value, s.registration.value) == ("ready", "home"), reading.raw
    assert s.iccid == "8984040000012345678" and s.operator == "Viettel"
    if dialect != "generic":
        assert s.rsrp_dbm is not None and -100 <= s.rsrp_dbm <= -90, reading.raw
        assert s.sinr_db is not None and 10 <= s.sinr_db <= 14, reading.raw
    if dialect in ("quectel-ec200", "quectel-eg800k"):
        assert "AT+QCSQ" not in reading.raw


@pytest.mark.parametrize("dialect", DIALECT_NAMES)
async def test_stuck_csq_still_gives_a_level(dialect: str) -> None:
    reading = await _read(dialect, ("csq_stuck",))
    s = reading.state
    assert s.csq == 99
    assert s.rsrp_dbm is not None and -100 <= s.rsrp_dbm <= -90, reading.raw
    if dialect == "generic":
        assert "AT+CESQ" in reading.raw
    if dialect == "quectel-eg21":
        # Its +QCSQ prints the magnitude; the reading is still a negative dBm.
        assert s.rssi_dbm is not None and s.rssi_dbm < 0


_FIELD = st.one_of(
    st.integers(-100000, 100000).map(str),
    st.sampled_from(["", "-", "255", "99", '"LTE"', "NOCONN", "0x3A98", "EUTRAN-BAND3"]),
    st.text(max_size=12),
)
_LINE = st.builds(
    lambda prefix, fields: f"{prefix}: {','.join(fields)}",
    st.sampled_from(["+CESQ", "+CPSI", "+QENG", "+QCSQ", "+CSQ", "+CEREG", "+QCCID", "+ICCID"]),
    st.lists(_FIELD, max_size=20),
)


@given(st.lists(_LINE, max_size=4), st.sampled_from(sorted(DIALECTS)))
def test_hostile_answers_never_break_a_dialect(lines: list[str], name: str) -> None:
    """Whatever a broken or malicious modem prints, every dialect gives a valid state."""
    dialect = get_dialect(name)
    raw = "\r\n".join([*lines, "OK"])
    answers = {cmd: parse_response(cmd, raw) for cmd in dialect.poll_commands}
    state = dialect.parse(answers)
    msgspec.json.decode(msgspec.json.encode(state), type=ModemState)  # within wire ranges
    assert isinstance(dialect.followups(answers), tuple)
    generic.parse_cesq(parse_response(generic.CMD_CESQ, raw))
