"""Pure judgement of the technician commands: grades, instant diagnosis, the
``diag modem --json`` contract, reading round trips.

The contract is pinned on readings from the real modem simulator engine read
by the real ``ModemProbe`` (in-process, no pty), for every dialect.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from edge_agent.tech import checks
from edge_agent.tech.checks import Finding, Grade, diagnose_now, grade_signal, modem_result
from edge_agent.tech.wire import reading_from_json, reading_to_json
from firmware_shims.modem.port import AtPort
from firmware_shims.modem.probe import ModemProbe
from firmware_shims.modem.sim import ModemEngine, SimOptions
from firmware_shims.readings import AmpReading, ModemReading, SystemReading
from fleet_protocol import AmpState, FaultCode, ModemState, SystemState

DATA = Path(__file__).parent / "data"
GRADES = tomllib.loads((DATA / "tech_signal_grades.toml").read_text())["case"]

#: The stable contract of ``loa-agent diag modem --json``: key -> allowed types/values.
CONTRACT: dict[str, Any] = {
    "sim": {"ready", "absent", "failure", "locked", "unknown"},
    "registration": {"home", "roaming", "searching", "denied", "not_registered", "unknown"},
    "rssi_dbm": (float, type(None)),
    "rsrp_dbm": (float, type(None)),
    "rsrq_db": (float, type(None)),
    "sinr_db": (float, type(None)),
    "operator": (str, type(None)),
    "access_tech": (str,),
    "iccid": (str, type(None)),
    "faults": (list,),
}
FAULT_KEYS = {"code", "cause", "severity", "evidence"}


def check_contract(result: dict[str, Any]) -> None:
    """Assert ``result`` honours the diag modem contract (used by the CLI tests too)."""
    missing = set(CONTRACT) - set(result)
    assert not missing, f"contract keys missing: {missing}"
    for key, allowed in CONTRACT.items():
        value = result[key]
        if isinstance(allowed, set):
            assert value in allowed, (key, value)
        else:
            assert isinstance(value, allowed), (key, value)
    for f in result["faults"]:
        assert set(f) >= FAULT_KEYS, f
        assert FaultCode(f["code"]) and f["severity"] in ("critical", "warning")


@pytest.mark.parametrize("case", GRADES, ids=lambda c: f"{c}")
def test_signal_grades(case: dict[str, Any]) -> None:
    got = grade_signal(
        rsrp_dbm=case.get("rsrp_dbm"), rsrq_db=case.get("rsrq_db"), rssi_dbm=case.get("rssi_dbm")
    )
    assert got == Grade(case["grade"])


def test_every_grade_and_fault_has_words_in_both_languages() -> None:
    for g in Grade:
        assert g.label("vi") and g.label("en") == g.value
    assert set(checks.REMEDY_VI) == set(FaultCode)
    for code in FaultCode:
        f = Finding(code.value, "critical", "x", "")
        assert f.remedy("vi") and f.remedy("en") and f.title("vi") and f.title("en")
        assert f.remedy("vi") != f.remedy("en"), code


async def _read(dialect: str, faults: tuple[str, ...] = ()) -> ModemReading:
    engine = ModemEngine(dialect, faults=faults, options=SimOptions(urc_rate=0, seed=1))
    probe = ModemProbe(AtPort.for_engine(engine), dialect, timeout=0.5)
    try:
        return await probe.read()
    finally:
        await probe.aclose()


@pytest.mark.parametrize("dialect", ["generic", "quectel", "simcom"])
async def test_contract_of_a_healthy_modem(dialect: str) -> None:
    reading = await _read(dialect)
    found = checks.findings(diagnose_now(modem=reading))
    result = modem_result(reading, found)
    check_contract(result)
    assert result["sim"] == "ready" and result["registration"] == "home"
    assert result["operator"] and result["iccid"] and result["iccid"].startswith("8984")
    assert result["rssi_dbm"] is not None
    if dialect == "generic":
        # 3GPP alone gives no RSRP/RSRQ/SINR: null, not missing.
        assert result["rsrp_dbm"] is None and result["sinr_db"] is None
    else:
        assert result["rsrp_dbm"] is not None and result["rsrq_db"] is not None
    assert result["faults"] == []


@pytest.mark.parametrize(
    ("fault", "sim", "registration", "code"),
    [
        ("sim_failure", "failure", None, "sim_failure"),
        ("sim_absent", "absent", None, "sim_absent"),
        ("sim_locked", "locked", None, "sim_locked"),
        ("denied", "ready", "denied", "registration_denied"),
        ("no_service", "ready", "searching", "no_service"),
        ("weak_signal", "ready", "home", "weak_signal"),
    ],
)
async def test_contract_names_the_fault_with_cause_and_evidence(
    fault: str, sim: str, registration: str | None, code: str
) -> None:
    reading = await _read("quectel", (fault,))
    result = modem_result(reading, checks.findings(diagnose_now(modem=reading)))
    check_contract(result)
    assert result["sim"] == sim
    if registration is not None:
        assert result["registration"] == registration
    by_code = {f["code"]: f for f in result["faults"]}
    assert code in by_code, result["faults"]
    assert by_code[code]["evidence"] and by_code[code]["cause"]
    assert not by_code[code]["evidence"].endswith("for 0 s")


async def test_sim_failure_explained_with_the_modems_own_words() -> None:
    reading = await _read("generic", ("sim_failure",))
    [f] = [f for f in checks.findings(diagnose_now(modem=reading)) if f.code == "sim_failure"]
    assert f.explain("en") == "SIM failure (+CME ERROR: 13 on AT+CPIN?): replace the SIM card"
    assert f.explain("vi") == "Cháy SIM, lỗi SIM (+CME ERROR: 13 on AT+CPIN?): thay thẻ SIM"


def test_contract_without_a_reading_is_all_unknown() -> None:
    result = modem_result(None, [])
    check_contract(result)
    assert result["sim"] == "unknown" and result["rssi_dbm"] is None


def test_diagnose_now_uses_the_configured_thresholds() -> None:
    from edge_agent.config import DiagnosisConfig

    amp = AmpReading(ts=1.8e9, state=AmpState(temperature_c=70.0, mains_v=220.0))
    assert diagnose_now(amp=amp) == []
    hot = diagnose_now(amp=amp, params=DiagnosisConfig(amp_over_temp_c=60.0, confirm_s=999))
    assert [f.code for f in hot] == [FaultCode.AMP_OVER_TEMP]
    assert "70 °C" in hot[0].evidence


def test_findings_merge_fresh_and_active_and_keep_to_the_target() -> None:
    from fleet_protocol import Fault

    fresh = [Fault.of(FaultCode.WEAK_SIGNAL, 1.8e9, "RSRP -118 dBm")]
    active = [
        Fault.of(FaultCode.WEAK_SIGNAL, 1.7e9, "old evidence"),
        Fault.of(FaultCode.NETWORK_UNSTABLE, 1.7e9, "lost and regained 3 times"),
        Fault.of(FaultCode.AMP_OVER_TEMP, 1.7e9, "90 °C"),
    ]
    got = checks.findings(fresh, active, target="network")
    assert [(f.code, f.source) for f in got] == [
        ("network_unstable", "agent"),
        ("weak_signal", "now"),
    ]
    assert got[1].evidence == "RSRP -118 dBm"


@pytest.mark.parametrize(
    ("role", "reading"),
    [
        (
            "modem",
            ModemReading(
                ts=1.8e9,
                state=ModemState(),
                errors={"AT+CPIN?": "+CME ERROR: 13"},
                raw={"AT+CPIN?": ("AT+CPIN?", "+CME ERROR: 13")},
            ),
        ),
        (
            "amp",
            AmpReading(ts=1.8e9, state=AmpState(power=True, flags=["short"]), registers={100: 3}),
        ),
        ("system", SystemReading(ts=1.8e9, state=SystemState(cpu_pct=5.0, boot_id="b"))),
    ],
)
def test_readings_round_trip_through_json(role: str, reading: Any) -> None:
    import json

    data = json.loads(json.dumps(reading_to_json(reading)))
    assert reading_from_json(role, data) == reading


def test_a_malformed_reading_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="modem reading"):
        reading_from_json("modem", {"state": {}})
    with pytest.raises(ValueError, match="amp reading"):
        reading_from_json("amp", {"ts": 1.8e9, "state": {"volume": 999}})
