"""AtPort with pyserial-asyncio-fast against the simulator on a real pty, and
the in-process engine variant with the same interface."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from firmware_shims.errors import PortUnavailable, ProbeTimeout
from firmware_shims.modem.port import AtPort
from firmware_shims.modem.sim import ModemEngine, PtyModem, SimOptions

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def pty(tmp_path: Path) -> AsyncIterator[PtyModem]:
    engine = ModemEngine(
        "quectel", options=SimOptions(urc_rate=0.3, seed=1, slow_delay=1.0, reset_time=0.5)
    )
    async with PtyModem(engine, tmp_path / "m0", reenumerate=True) as p:
        yield p


@pytest.fixture
async def port(pty: PtyModem) -> AsyncIterator[AtPort]:
    p = AtPort(pty.link)
    yield p
    await p.aclose()


async def test_commands_and_urcs(port: AtPort) -> None:
    for _ in range(10):
        resp = await port.command("AT+CSQ", timeout=2)
        assert resp.ok and resp.lines[0].startswith("+CSQ: ")
    assert (await port.command("AT+CPIN?", timeout=2)).lines == ("+CPIN: READY",)


async def test_concurrent_callers_are_serialised(port: AtPort) -> None:
    cmds = ["AT+CSQ", "AT+CPIN?", "AT+QCCID", "AT+CEREG?", "AT+COPS?"] * 4
    answers = await asyncio.gather(*(port.command(c, timeout=3) for c in cmds))
    for cmd, resp in zip(cmds, answers, strict=True):
        prefix = "+" + cmd[3:].rstrip("?") + ":"
        assert resp.lines[0].startswith(prefix), (cmd, resp)


async def test_garbage_is_dropped_and_counted(pty: PtyModem, port: AtPort) -> None:
    pty.engine.faults.set("garbage")
    for _ in range(5):
        resp = await port.command("AT+QCCID", timeout=2)
        assert resp.lines == ("+QCCID: 8984040000012345678F",)
    assert port.garbage_bytes > 0


async def test_slow_modem_times_out_then_resyncs(pty: PtyModem, port: AtPort) -> None:
    assert (await port.command("AT", timeout=2)).ok  # learns that the modem echoes
    pty.engine.faults.set("slow")
    t0 = time.monotonic()
    with pytest.raises(ProbeTimeout, match=r"AT\+CIMI on .*m0: no answer in 0.3 s"):
        await port.command("AT+CIMI", timeout=0.3)
    assert time.monotonic() - t0 < 1.0
    pty.engine.faults.clear("slow")
    # The late IMSI+OK lands during this exchange; it must not be taken as ours.
    await asyncio.sleep(0.8)
    resp = await port.command("AT+CSQ", timeout=2)
    assert resp.lines[0].startswith("+CSQ: ")
    assert port.stale_lines >= 1


async def test_hung_modem_gives_clear_timeout(pty: PtyModem, port: AtPort) -> None:
    pty.engine.faults.set("unresponsive")
    t0 = time.monotonic()
    with pytest.raises(ProbeTimeout) as info:
        await port.command("AT+CSQ", timeout=0.5)
    assert time.monotonic() - t0 < 1.5
    assert info.value.command == "AT+CSQ" and info.value.where == str(pty.link)
    pty.engine.faults.clear()
    assert (await port.command("AT+CSQ", timeout=2)).ok


async def test_reopens_after_usb_reenumeration(pty: PtyModem, port: AtPort) -> None:
    assert (await port.command("AT+CFUN=1,1", timeout=2)).ok
    for _ in range(250):  # the device vanishes within 5 s
        if not pty.link.exists():
            break
        await asyncio.sleep(0.02)
    assert not pty.link.exists()
    with pytest.raises(PortUnavailable, match=r"AT\+CSQ on .*m0"):
        await port.command("AT+CSQ", timeout=1)
    async with asyncio.timeout(5):
        while True:
            try:
                resp = await port.command("AT+CSQ", timeout=1)
                break
            except (PortUnavailable, ProbeTimeout):
                await asyncio.sleep(0.05)
    assert resp.ok and port.reopens == 1
    assert pty.link.exists()


async def test_missing_device_names_the_path(tmp_path: Path) -> None:
    port = AtPort(tmp_path / "ttyUSB9")
    with pytest.raises(PortUnavailable, match=r"ATI on .*ttyUSB9: device path does not exist"):
        await port.command("ATI", timeout=1)


async def test_in_process_engine_port() -> None:
    engine = ModemEngine("simcom", faults=["garbage"], options=SimOptions(seed=2, slow_delay=0.5))
    port = AtPort.for_engine(engine, name="sim-0001")
    assert (await port.command("AT+CICCID", timeout=1)).lines == ("+ICCID: 8984040000012345678",)
    engine.faults.set("slow")
    with pytest.raises(ProbeTimeout, match="AT\\+CSQ on sim-0001"):
        await port.command("AT+CSQ", timeout=0.2)
    assert (await port.command("AT+CSQ", timeout=1)).ok
    await port.aclose()


async def test_thousand_in_process_modems_poll_concurrently() -> None:
    engines = [ModemEngine("quectel", options=SimOptions(seed=i)) for i in range(1000)]
    ports = [AtPort.for_engine(e, name=f"sim-{i}") for i, e in enumerate(engines)]
    answers = await asyncio.gather(*(p.command("AT+CSQ", timeout=10) for p in ports))
    assert all(a.ok for a in answers)
