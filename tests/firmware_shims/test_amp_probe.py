"""AmpProbe with the real pymodbus async clients against `loa-sim amp`, over TCP and RTU."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from firmware_shims.amp.probe import AmpProbe, DeviceException, ModbusBus
from firmware_shims.amp.profile import load_profile
from firmware_shims.amp.sim import RunningSim, amp_simulator
from firmware_shims.errors import PortUnavailable, ProbeTimeout
from firmware_shims.readings import AmpReading

pytestmark = pytest.mark.integration

TIMEOUT = 0.5
#: (flag the fault raises on the generic board, quantity check)
FAULTS = {
    "over_temp": "over_temp",
    "output_short": "output_short",
    "line_open": "line_open",
    "mains_fail": "mains_fail",
    "battery_low": "battery_low",
}

Start = Callable[..., AbstractAsyncContextManager[RunningSim]]


@pytest.fixture(params=["tcp", "rtu"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def start(transport: str, tmp_path: Path) -> Start:
    """Starts the simulator on ``transport``; keyword ``port`` reuses a TCP port."""

    def _start(profile: str = "generic", port: int = 0, **kw: Any) -> Any:
        if transport == "tcp":
            return amp_simulator(
                profile=profile,
                tcp=f"127.0.0.1:{port}",
                control_socket=tmp_path / "amp.ctl",
                **kw,
            )
        return amp_simulator(profile=profile, rtu_link=tmp_path / "amp0", **kw)

    return _start


def _probe(sim: RunningSim, profile: str = "generic", **kw: Any) -> AmpProbe:
    p = load_profile(profile)
    kw.setdefault("timeout_s", TIMEOUT)
    if sim.tcp is not None:
        return AmpProbe.tcp(p, *sim.tcp, **kw)
    assert sim.rtu_link is not None
    kw.setdefault("frame_gap_s", 0.005)
    return AmpProbe.rtu(p, str(sim.rtu_link), **kw)


@pytest.fixture
async def closing() -> AsyncIterator[list[AmpProbe]]:
    probes: list[AmpProbe] = []
    yield probes
    for p in probes:
        await p.aclose()


async def test_every_fault_appears_and_clears_at_runtime(
    start: Start, closing: list[AmpProbe]
) -> None:
    async with start() as sim:
        probe = _probe(sim)
        closing.append(probe)
        healthy = await probe.read()
        assert healthy.error is None, healthy.error
        assert healthy.state.responding and healthy.state.power is True
        assert healthy.state.flags == ["playing"]
        assert set(healthy.registers) == set(range(100, 109)) | set(range(4))
        for fault, flag in FAULTS.items():
            assert await sim.set_fault(fault) == [fault]
            r = await probe.read()
            assert r.error is None, r.error
            assert flag in r.state.flags, (fault, r.state)
            assert await sim.clear_fault(fault) == []
            r = await probe.read()
            assert flag not in r.state.flags, (fault, r.state)
        # Values follow the faults too, not only the bits.
        await sim.set_fault("mains_fail")
        assert (await probe.read()).state.mains_v == 0
        await sim.clear_fault()
        assert ((await probe.read()).state.mains_v or 0) > 200


async def test_no_response_is_a_clear_timeout_not_a_hang(
    start: Start, closing: list[AmpProbe]
) -> None:
    async with start() as sim:
        probe = _probe(sim)
        closing.append(probe)
        assert (await probe.read()).state.responding
        await sim.set_fault("no_response")
        t0 = time.monotonic()
        r = await probe.read()
        elapsed = time.monotonic() - t0
        assert r.state.responding is False
        endpoint = f"{sim.tcp[0]}:{sim.tcp[1]}" if sim.tcp else str(sim.rtu_link)
        assert r.error == f"read input 100+9 on unit 1 on {endpoint}: no answer in 0.5 s"
        assert elapsed < 2 * TIMEOUT + 0.5 + 2.0  # bounded by the exchange timeout
        with pytest.raises(ProbeTimeout) as err:
            await probe.read_registers(0, 4, input=False)
        assert err.value.where == f"unit 1 on {endpoint}"
        assert err.value.command == "read holding 0+4"
        await sim.clear_fault("no_response")
        r = await probe.read()
        assert r.state.responding and r.error is None


async def test_exception_reply_is_a_clear_error(start: Start, closing: list[AmpProbe]) -> None:
    async with start(faults=["exception_reply"]) as sim:
        probe = _probe(sim)
        closing.append(probe)
        r = await probe.read()
        assert r.state.responding is True  # it answered, with an exception
        assert r.state.power is None
        assert r.error is not None
        assert r.error.endswith("Modbus exception 4 (device failure)")
        assert "unit 1 on " in r.error
        with pytest.raises(DeviceException) as err:
            await probe.read_registers(100, 2, input=True)
        assert err.value.code == 4
        await sim.clear_fault()
        assert (await probe.read()).error is None


async def test_reconnects_after_the_simulator_restarts(
    start: Start, transport: str, closing: list[AmpProbe]
) -> None:
    async with start() as sim:
        probe = _probe(sim)
        closing.append(probe)
        port = sim.tcp[1] if sim.tcp else 0
        assert (await probe.read()).state.responding
    down = await probe.read()
    assert down.state.responding is False
    assert down.error is not None and "unit 1 on " in down.error
    async with start(port=port):
        up = await probe.read()
        assert up.state.responding is True, up.error
        assert up.error is None


async def test_illegal_address_and_writes(start: Start, closing: list[AmpProbe]) -> None:
    async with start() as sim:
        probe = _probe(sim)
        closing.append(probe)
        with pytest.raises(DeviceException) as err:
            await probe.read_registers(99, 2, input=True)
        assert err.value.code == 2
        assert "illegal data address" in str(err.value)
        await probe.write_registers(1, [35])
        assert (await probe.read()).state.volume == 35
        assert await probe.read_registers(1, 1, input=False) == [35]


async def test_other_units_get_no_answer(start: Start, closing: list[AmpProbe]) -> None:
    async with start(unit=5) as sim:
        assert sim.unit == 5
        wrong = _probe(sim, unit=6)
        right = _probe(sim, unit=5)
        closing += [wrong, right]
        r = await wrong.read()
        assert r.state.responding is False and "unit 6 on " in (r.error or "")
        assert (await right.read()).state.responding


async def test_pa1250d_faults_over_the_wire(start: Start, closing: list[AmpProbe]) -> None:
    async with start(profile="pa1250d", faults=["over_temp", "mains_fail"]) as sim:
        probe = _probe(sim, profile="pa1250d")
        closing.append(probe)
        r = await probe.read()
        assert r.error is None, r.error
        assert set(r.state.flags) == {"over_temp", "thermal_limit", "mains_fail", "battery_mode"}
        assert set(r.registers) == set(range(30000, 30012))


async def test_unreachable_endpoint_is_port_unavailable(tmp_path: Path) -> None:
    profile = load_profile("generic")
    missing = AmpProbe.rtu(profile, str(tmp_path / "no-such-tty"), timeout_s=TIMEOUT)
    r = await missing.read()
    assert r.state.responding is False
    assert r.error is not None and str(tmp_path / "no-such-tty") in r.error
    with pytest.raises(PortUnavailable):
        await missing.read_registers(100, 1, input=True)
    await missing.aclose()


async def test_shared_bus_serialises_users_and_keeps_the_gap(tmp_path: Path) -> None:
    """The poller and a technician's requests share one lock and the inter-frame gap."""
    gap = 0.05
    async with amp_simulator(rtu_link=tmp_path / "amp0") as sim:
        bus = ModbusBus.rtu(str(sim.rtu_link), timeout_s=TIMEOUT, frame_gap_s=gap)
        probe = AmpProbe(load_profile("generic"), bus, unit=1)
        try:
            t0 = time.monotonic()
            results = await asyncio.gather(
                probe.read(),
                *(probe.read_registers(100 + i, 1, input=True) for i in range(6)),
                probe.read(),
            )
            elapsed = time.monotonic() - t0
        finally:
            await bus.aclose()
    readings = [r for r in (results[0], results[-1]) if isinstance(r, AmpReading)]
    assert len(readings) == 2
    assert all(r.error is None and r.state.responding for r in readings)
    assert all(isinstance(w, list) and len(w) == 1 for w in results[1:-1])
    # 10 exchanges (2 reads x 2 spans + 6 single reads): at least 9 gaps between them.
    assert elapsed >= 9 * gap
    with pytest.raises(PortUnavailable, match="bus closed"):
        await bus.read(100, 1, input=True, unit=1)
