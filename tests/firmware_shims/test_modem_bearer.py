"""The data bearer: table-driven parsing, and the probe against the simulator's
``data_blocked`` fault (SIM ready, registered, no PDP context)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from firmware_shims.modem.at import parse_response
from firmware_shims.modem.bearer import parse_bearer
from firmware_shims.modem.port import AtPort
from firmware_shims.modem.probe import ModemProbe
from firmware_shims.modem.sim import ModemEngine, SimOptions
from fleet_protocol import SimState

CASES = tomllib.loads((Path(__file__).parent / "data" / "modem_bearer_cases.toml").read_text())


@pytest.mark.parametrize("case", CASES["bearer"], ids=lambda c: c["name"])
def test_parse_bearer(case: dict[str, Any]) -> None:
    responses = {cmd: parse_response(cmd, raw) for cmd, raw in case["raw"].items()}
    got = parse_bearer(responses)
    want = case["expect"]
    assert got.attached == want.get("attached")
    assert got.active == want.get("active")
    assert got.address == want.get("address")
    assert got.ok == want.get("ok")


@pytest.mark.parametrize("dialect", ["generic", "quectel", "simcom"])
async def test_probe_reads_the_bearer(dialect: str) -> None:
    engine = ModemEngine(dialect, options=SimOptions(urc_rate=0.0, seed=1))
    probe = ModemProbe(AtPort.for_engine(engine), dialect)
    good = await probe.read()
    assert good.state.data is True
    assert "AT+CGACT?" not in good.raw  # one extra question per healthy poll
    engine.faults.set("data_blocked")
    bad = await probe.read()
    assert bad.state.sim is SimState.READY and bad.state.registration.registered
    assert bad.state.data is False
    assert "+CGACT: 1,0" in bad.raw["AT+CGACT?"]
    engine.faults.set("no_service")
    lost = await probe.read()
    assert lost.state.data is None  # not registered: the bearer is not the question
