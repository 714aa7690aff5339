"""The modem simulator: the pure engine with a hand-driven clock, then the real
``loa-sim modem`` process on a pty driven by pyserial, with faults set and
cleared at runtime through the control socket."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import serial

from firmware_shims import control
from firmware_shims.modem.at import AtResponse, parse_response
from firmware_shims.modem.sim import FAULTS, ModemEngine, SimOptions, modem_process, running_modem

pytestmark = pytest.mark.timeout(60)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def engine(dialect: str = "quectel", *faults: str, **opts: float) -> tuple[ModemEngine, Clock]:
    clock = Clock()
    options = SimOptions(urc_rate=0.0, seed=7, **opts)  # type: ignore[arg-type]
    return ModemEngine(dialect, faults=faults, options=options, clock=clock), clock


def say(e: ModemEngine, cmd: str) -> str:
    return b"".join(c.data for c in e.feed(cmd.encode() + b"\r")).decode("latin-1")


def ask(e: ModemEngine, cmd: str) -> AtResponse:
    return parse_response(cmd, say(e, cmd))


# --- engine -------------------------------------------------------------------


def test_echo_until_ate0() -> None:
    e, _ = engine()
    assert say(e, "AT").startswith("AT\r")
    assert ask(e, "ATE0").ok
    assert say(e, "AT+CSQ").startswith("\r\n+CSQ:")


@pytest.mark.parametrize(
    ("dialect", "cmee", "final"),
    [
        ("quectel", None, "+CME ERROR: 13"),  # Quectel ships with AT+CMEE=1
        ("quectel", 2, "+CME ERROR: SIM failure"),
        ("quectel", 0, "ERROR"),
        ("simcom", None, "ERROR"),
        ("simcom", 1, "+CME ERROR: 13"),
        ("generic", 2, "+CME ERROR: SIM failure"),
    ],
)
def test_cmee_modes(dialect: str, cmee: int | None, final: str) -> None:
    e, _ = engine(dialect, "sim_failure")
    if cmee is not None:
        assert ask(e, f"AT+CMEE={cmee}").ok
    assert ask(e, "AT+CPIN?").final == final


FAULT_EFFECTS = [
    ("sim_absent", "AT+CPIN?", "+CME ERROR: 10"),
    ("sim_absent", "AT+QCCID", "+CME ERROR: 10"),
    ("sim_absent", "AT+CEREG?", "+CEREG: 0,0"),
    ("sim_failure", "AT+CIMI", "+CME ERROR: 13"),
    ("sim_locked", "AT+CPIN?", "+CPIN: SIM PIN"),
    ("sim_locked", "AT+CIMI", "+CME ERROR: 11"),
    ("no_service", "AT+CSQ", "+CSQ: 99,99"),
    ("no_service", "AT+CEREG?", "+CEREG: 0,2"),
    ("no_service", "AT+QCSQ", '+QCSQ: "NOSERVICE"'),
    ("no_service", 'AT+QENG="servingcell"', '+QENG: "servingcell","SEARCH"'),
    ("no_service", "AT+COPS?", "+COPS: 0"),
    ("weak_signal", "AT+CSQ", "+CSQ: 4,99"),
    ("denied", "AT+CEREG?", "+CEREG: 0,3"),
    (None, "AT+CPIN?", "+CPIN: READY"),
    (None, "AT+CEREG?", "+CEREG: 0,1"),
    (None, "AT+QCCID", "+QCCID: 8984040000012345678F"),
    (None, "AT+CRSM=176,12258,0,0,10", '+CRSM: 144,0,"984840000010325476F8"'),
    (None, "AT+CPIN?;+CSQ", "+CPIN: READY"),
    (None, "AT+NOSUCH", "ERROR"),
]


@pytest.mark.parametrize(("fault", "cmd", "expect"), FAULT_EFFECTS)
def test_fault_effects(fault: str | None, cmd: str, expect: str) -> None:
    e, _ = engine("quectel", *([fault] if fault else []))
    assert expect in say(e, cmd)


def test_simcom_answers() -> None:
    e, _ = engine("simcom")
    assert ask(e, "AT+CICCID").lines == ("+ICCID: 8984040000012345678",)
    assert ask(e, "AT+CPSI?").lines[0].startswith("+CPSI: LTE,Online,452-04,0x3A98,")
    e.faults.set("no_service")
    assert ask(e, "AT+CPSI?").lines == ("+CPSI: NO SERVICE,Online",)


@pytest.mark.parametrize(
    ("dialect", "levels"),
    [
        ("simcom", (-100, -950, -650)),  # SIM7600: tenths of a dB
        ("simcom-a7670", (20, 45, 45)),  # A76XX manual: report values
        ("simcom-a7672", (20, 45, 45)),
    ],
)
def test_cpsi_levels_as_each_family_prints_them(dialect: str, levels: tuple[int, ...]) -> None:
    """The normal cell (RSRQ -10 dB, RSRP -95 dBm, RSSI -65 dBm) in each family's encoding."""
    e, _ = engine(dialect)
    fields = ask(e, "AT+CPSI?").lines[0].split(",")
    assert tuple(int(v) for v in fields[10:13]) == levels


def test_reset_goes_silent_then_prints_rdy() -> None:
    e, clock = engine("quectel", reset_time=5.0)
    assert ask(e, "ATE0").ok
    assert ask(e, "AT+CFUN=1,1").ok
    assert e.resetting
    assert e.feed(b"AT\r") == []
    clock.t += 4.9
    assert e.tick() == []
    clock.t += 0.2
    out = b"".join(c.data for c in e.tick()).decode()
    assert out.startswith("\r\nRDY\r\n") and "+QIND: PB DONE" in out
    assert say(e, "AT").startswith("AT\r")  # echo is back on after a reset


def test_simcom_creset() -> None:
    e, clock = engine("simcom", reset_time=1.0)
    assert ask(e, "AT+CRESET").ok and e.resetting
    clock.t += 1.5
    assert b"RDY" in b"".join(c.data for c in e.tick())


def test_flapping_follows_the_period() -> None:
    e, clock = engine("quectel", "flapping", flap_period=10.0)
    states = []
    for _ in range(4):
        states.append(ask(e, "AT+CEREG?").lines[0])
        clock.t += 5.0
    assert states == ["+CEREG: 0,1", "+CEREG: 0,2", "+CEREG: 0,1", "+CEREG: 0,2"]


def test_flapping_urcs_when_enabled() -> None:
    e, clock = engine("generic", "flapping", flap_period=10.0)
    assert ask(e, "AT+CEREG=1").ok
    e.tick()
    clock.t += 5.0
    assert b"+CEREG: 2" in b"".join(c.data for c in e.tick())


def test_unresponsive_slow_garbage() -> None:
    e, _ = engine("generic", "unresponsive")
    assert e.feed(b"AT+CSQ\r") == []
    e.faults.clear()
    e.faults.set("slow")
    chunks = e.feed(b"AT+CSQ\r")
    assert chunks[0].delay == 0 and chunks[-1].delay == SimOptions().slow_delay
    e.faults.clear()
    e.faults.set("garbage")
    data = b"".join(c.data for c in e.feed(b"AT+CSQ\r"))
    assert any(b >= 0x80 or (b < 0x20 and b not in b"\r\n") for b in data)
    # Noise never hides the answer from a tolerant reader.
    assert parse_response("AT+CSQ", bytes(b for b in data if 0x20 <= b < 0x7F or b in b"\r\n")).ok


def test_any_bytes_never_break_the_engine() -> None:
    e, _ = engine("quectel")
    import random

    rng = random.Random(3)
    for _ in range(300):
        e.feed(bytes(rng.randrange(256) for _ in range(rng.randrange(40))))
    e.feed(b"\r")  # a client starts with a fresh line, as after any noise
    assert say(e, "AT").endswith("\r\nOK\r\n")


# --- the real process on a pty, through pyserial --------------------------------


def pyserial_ask(ser: serial.Serial, cmd: str, timeout: float = 3.0) -> AtResponse:
    ser.reset_input_buffer()
    ser.write(cmd.encode() + b"\r")
    buf = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        buf += ser.read(ser.in_waiting or 1)
        try:
            text = bytes(b for b in buf if 0x20 <= b < 0x7F or b in b"\r\n")
            return parse_response(cmd, text)
        except ValueError:
            continue
    raise AssertionError(f"no answer to {cmd} within {timeout} s: {buf!r}")


@pytest.mark.integration
def test_every_fault_set_and_cleared_at_runtime_over_pyserial(tmp_path: Path) -> None:
    with (
        modem_process(tmp_path / "m0", dialect="quectel", extra_args=["--slow-delay", "0.5"]) as m,
        serial.Serial(str(m.link), 115200, timeout=0.1) as ser,
    ):
        assert pyserial_ask(ser, "AT+CPIN?").lines == ("+CPIN: READY",)
        for fault, cmd, expect in FAULT_EFFECTS:
            if fault is None:
                continue
            assert m.set_sync(fault)["faults"] == [fault]
            assert any(
                expect in ln for ln in (*pyserial_ask(ser, cmd).lines, pyserial_ask(ser, cmd).final)
            )
            assert m.clear_sync(fault)["faults"] == []
        m.set_sync("unresponsive")
        ser.reset_input_buffer()
        ser.write(b"AT\r")
        time.sleep(0.3)  # proving silence needs a window of time
        assert ser.read(100) == b""
        m.clear_sync()
        t0 = time.monotonic()
        m.set_sync("slow")
        assert pyserial_ask(ser, "AT+CSQ").ok
        assert time.monotonic() - t0 >= 0.5
        m.clear_sync()
        m.set_sync("garbage")
        assert pyserial_ask(ser, "AT+CSQ").lines[0].startswith("+CSQ: ")
        assert sorted(control.send(m.control, "list")["known"]) == sorted(FAULTS)


def _loa_sim() -> list[str]:
    exe = Path(sys.executable).with_name("loa-sim")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "fleet_sim.cli"]


@pytest.mark.integration
def test_acceptance_quectel_sim_failure_then_cleared(tmp_path: Path) -> None:
    """The issue's check: a failed SIM answers like a real Quectel; clearing heals it."""
    link = tmp_path / "m0"
    proc = subprocess.Popen(
        [
            *_loa_sim(),
            "modem",
            "--dialect",
            "quectel",
            "--link",
            str(link),
            "--fault",
            "sim_failure",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        while not link.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "loa-sim modem never created its link"
            time.sleep(0.05)
        with serial.Serial(str(link), 115200, timeout=0.1) as ser:
            assert pyserial_ask(ser, "AT+CPIN?").final == "+CME ERROR: 13"
            assert pyserial_ask(ser, "AT+CMEE=2").ok
            assert pyserial_ask(ser, "AT+CPIN?").final == "+CME ERROR: SIM failure"
            ctl = subprocess.run(
                [*_loa_sim(), "ctl", "--socket", f"{link}.ctl", "clear", "sim_failure"],
                capture_output=True,
                text=True,
                timeout=15,
            )
            assert ctl.returncode == 0, ctl.stderr
            resp = pyserial_ask(ser, "AT+CPIN?")
            assert resp.ok and resp.lines == ("+CPIN: READY",)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert not link.exists() and not os.path.exists(f"{link}.ctl")


@pytest.mark.integration
def test_sigint_removes_link(tmp_path: Path) -> None:
    with modem_process(tmp_path / "m1", dialect="simcom") as m:
        os.kill(m.pid, signal.SIGINT)
        deadline = time.monotonic() + 10
        while m.link.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not m.link.exists()


@pytest.mark.integration
async def test_running_modem_helper_with_atport(tmp_path: Path) -> None:
    from firmware_shims.modem.port import AtPort

    async with running_modem(tmp_path / "m2", dialect="generic", faults=["sim_locked"]) as m:
        port = AtPort(m.link)
        try:
            assert (await port.command("AT+CPIN?", timeout=2)).lines == ("+CPIN: SIM PIN",)
            assert await m.faults() == ["sim_locked"]
            await m.clear("sim_locked")
            await m.set("weak_signal")
            assert (await port.command("AT+CPIN?", timeout=2)).lines == ("+CPIN: READY",)
            assert (await port.command("AT+CSQ", timeout=2)).lines == ("+CSQ: 4,99",)
        finally:
            await port.aclose()
    assert not m.link.exists()
