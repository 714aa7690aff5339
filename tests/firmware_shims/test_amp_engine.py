"""The simulator engine, read in-process through AmpProbe.in_process (no sockets)."""

from __future__ import annotations

import pytest

from firmware_shims.amp.engine import (
    DEVICE_FAILURE,
    ILLEGAL_ADDRESS,
    AmpEngine,
    ExceptionReply,
    NoAnswer,
)
from firmware_shims.amp.probe import AmpProbe, DeviceException
from firmware_shims.amp.profile import Function, load_profile
from firmware_shims.errors import ProbeTimeout


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _engine(profile: str = "generic", *faults: str) -> tuple[AmpEngine, FakeClock]:
    clock = FakeClock()
    return AmpEngine(load_profile(profile), faults=faults, clock=clock, seed=1), clock


async def test_healthy_generic_amplifier() -> None:
    engine, clock = _engine()
    probe = AmpProbe.in_process(engine)
    r = await probe.read()
    assert r.error is None
    s = r.state
    assert s.responding and s.power is True and s.volume == 80
    assert s.flags == ["playing"]
    assert 200 <= (s.mains_v or 0) <= 240
    assert 13.0 <= (s.battery_v or 0) <= 14.0
    assert (s.output_level or 0) > 60
    cold = s.temperature_c or 0
    clock.now += 3600
    warm = (await probe.read()).state.temperature_c or 0
    assert warm > cold + 5  # heats up towards its working point
    words = await probe.read_registers(106, 2, input=True)
    assert (words[0] << 16 | words[1]) == 3600
    await probe.aclose()


@pytest.mark.parametrize(
    ("fault", "flags", "check"),
    [
        ("over_temp", {"over_temp"}, lambda s: s.temperature_c > 80 and s.output_level == 0),
        ("output_short", {"output_short"}, lambda s: s.output_level == 0),
        ("line_open", {"line_open", "playing"}, lambda s: s.output_level > 0),
        ("mains_fail", {"mains_fail", "playing"}, lambda s: s.mains_v == 0 and s.battery_v < 13),
        ("battery_low", {"battery_low", "playing"}, lambda s: s.battery_v < 11.5),
    ],
)
async def test_generic_faults_show_in_bits_and_values(fault: str, flags: set[str], check) -> None:  # type: ignore[no-untyped-def]
    engine, _ = _engine()
    probe = AmpProbe.in_process(engine)
    engine.faults.set(fault)
    r = await probe.read()
    assert set(r.state.flags) == flags
    assert check(r.state)
    engine.faults.clear(fault)
    assert (await probe.read()).state.flags == ["playing"]


@pytest.mark.parametrize(
    ("fault", "flags"),
    [
        ("over_temp", {"over_temp", "thermal_limit"}),
        ("output_short", {"output_short", "over_current"}),
        ("mains_fail", {"mains_fail", "battery_mode"}),
        ("battery_low", {"battery_low"}),
        # The PA-1250D has no open-line bit: the fault is invisible to it.
        ("line_open", set()),
    ],
)
async def test_pa1250d_faults_raise_its_bits(fault: str, flags: set[str]) -> None:
    engine, _ = _engine("pa1250d", fault)
    r = await AmpProbe.in_process(engine).read()
    assert r.error is None
    assert set(r.state.flags) == flags
    assert r.state.power is True


async def test_no_response_gives_responding_false_naming_the_unit() -> None:
    engine, _ = _engine("generic", "no_response")
    probe = AmpProbe.in_process(engine, unit=7)
    r = await probe.read()
    assert r.state.responding is False
    assert r.error == "read input 100+9 on unit 7 on simulator generic: no answer"
    with pytest.raises(ProbeTimeout) as err:
        await probe.read_registers(0, 1, input=False)
    assert err.value.where == "unit 7 on simulator generic"
    engine.faults.clear()
    assert (await probe.read()).state.responding is True


async def test_exception_reply_answers_but_gives_no_values() -> None:
    engine, _ = _engine("generic", "exception_reply")
    probe = AmpProbe.in_process(engine)
    r = await probe.read()
    assert r.state.responding is True
    assert r.state.power is None
    assert r.error is not None and "Modbus exception 4 (device failure)" in r.error
    with pytest.raises(DeviceException) as err:
        await probe.read_registers(100, 1, input=True)
    assert err.value.code == DEVICE_FAILURE


async def test_writes_change_settings() -> None:
    engine, _ = _engine()
    probe = AmpProbe.in_process(engine)
    await probe.write_registers(1, [40])
    assert (await probe.read()).state.volume == 40
    await probe.write_registers(2, [1])  # mute
    s = (await probe.read()).state
    assert s.flags == ["mute"] and s.output_level == 0
    await probe.write_registers(0, [0, 40, 0, 2])  # power off, unmute, source 2
    r = await probe.read()
    assert r.state.power is False and r.registers[3] == 2
    with pytest.raises(DeviceException) as err:
        await probe.write_registers(100, [1])  # an input register
    assert err.value.code == ILLEGAL_ADDRESS


def test_engine_refuses_undefined_addresses() -> None:
    engine, _ = _engine()
    with pytest.raises(ExceptionReply) as err:
        engine.read(Function.INPUT, 99, 2)
    assert err.value.code == ILLEGAL_ADDRESS
    with pytest.raises(ExceptionReply):
        engine.read(Function.HOLDING, 100, 1)  # input address, holding table
    engine.faults.set("no_response")
    with pytest.raises(NoAnswer):
        engine.read(Function.INPUT, 100, 1)


async def test_pa1250d_write_sets_module_volume() -> None:
    engine, _ = _engine("pa1250d")
    probe = AmpProbe.in_process(engine)
    await probe.write_registers(40000, [0x6400])
    assert (await probe.read()).state.volume == 100


def test_seed_varies_the_drift() -> None:
    clock = FakeClock()
    profile = load_profile("generic")
    a = AmpEngine(profile, clock=clock, seed=1).state()[0]["mains_v"]
    b = AmpEngine(profile, clock=clock, seed=2).state()[0]["mains_v"]
    assert a != b


async def test_failure_logged_once_and_recovery_once(caplog: pytest.LogCaptureFixture) -> None:
    engine, _ = _engine("generic", "no_response")
    probe = AmpProbe.in_process(engine, name="amp")
    with caplog.at_level("INFO", logger="firmware_shims.amp.probe"):
        for _ in range(3):
            assert (await probe.read()).state.responding is False
        engine.faults.clear()
        for _ in range(3):
            assert (await probe.read()).state.responding is True
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert messages == [
        ("WARNING", "amp: read input 100+9 on unit 1 on simulator generic: no answer"),
        ("INFO", "amp: amplifier answering again (unit 1 on simulator generic)"),
    ]
