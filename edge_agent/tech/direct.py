"""The hardware opened directly, for when no agent daemon is running.

A technician checking a freshly installed controller (or one whose agent is
stopped) gets the same probes the daemon uses (``firmware_shims`` modem and
amplifier probes, the agent's system and stream probes), opened for one call
and closed again. Every call has an overall deadline on top of the probes'
own per-exchange timeouts, so a hung device gives an answer, never a hang.

Only call these when ``edge_agent.tech.client`` says no daemon listens: a
running daemon holds the ports, and two processes on one serial port garble
each other's answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from edge_agent.config import AmpConfig, ModemConfig, StreamConfig, SystemConfig
from firmware_shims.errors import ProbeTimeout, ShimError
from firmware_shims.modem.at import AtResponse
from firmware_shims.readings import AmpReading, ModemReading, StreamReading, SystemReading
from fleet_protocol import AmpState, ModemState


async def _close(probe: object) -> None:
    aclose = getattr(probe, "aclose", None)
    if aclose is None:
        return
    with contextlib.suppress(Exception):
        async with asyncio.timeout(3.0):
            await aclose()


@contextlib.asynccontextmanager
async def modem_probe(mc: ModemConfig) -> AsyncIterator[object]:
    """A ``ModemProbe`` on ``mc.port`` with ``mc.dialect``, closed on exit."""
    from firmware_shims.modem.port import AtPort
    from firmware_shims.modem.probe import ModemProbe

    probe = ModemProbe(AtPort(mc.port, baudrate=mc.baud), mc.dialect, timeout=mc.timeout_s)
    try:
        yield probe
    finally:
        await _close(probe)


async def read_modem(mc: ModemConfig, *, deadline_s: float) -> ModemReading:
    """One full poll of the modem; a poll that does not finish in ``deadline_s``
    gives ``responding=False`` with the reason (never raises for hardware)."""
    from firmware_shims.modem.probe import ModemProbe

    async with modem_probe(mc) as probe:
        assert isinstance(probe, ModemProbe)
        try:
            async with asyncio.timeout(deadline_s):
                return await probe.read()
        except TimeoutError:
            return ModemReading(
                ts=time.time(),
                state=ModemState(responding=False),
                errors={"poll": f"{mc.port}: no complete poll in {deadline_s:g} s"},
            )


async def at_command(mc: ModemConfig, command: str, *, timeout_s: float) -> AtResponse:
    """Send one AT command line; raises ShimError (ProbeTimeout names port and command)."""
    from firmware_shims.modem.probe import ModemProbe

    async with modem_probe(mc) as probe:
        assert isinstance(probe, ModemProbe)
        try:
            # The port's own timeout covers the answer; this covers opening the port.
            async with asyncio.timeout(timeout_s + 2.0):
                return await probe.command(command, timeout=timeout_s)
        except TimeoutError:
            raise ProbeTimeout(mc.port, f"no answer in {timeout_s:g} s", command=command) from None


def amp_probe(ac: AmpConfig) -> object:
    """An ``AmpProbe`` for ``ac`` (TCP or RTU), owning its bus."""
    from firmware_shims.amp.probe import AmpProbe
    from firmware_shims.amp.profile import load_profile

    profile = load_profile(ac.profile)
    if ac.transport == "tcp":
        host, _, port = ac.address.rpartition(":")
        return AmpProbe.tcp(profile, host, int(port), unit=ac.unit, timeout_s=ac.timeout_s)
    return AmpProbe.rtu(profile, ac.port, unit=ac.unit, baudrate=ac.baud, timeout_s=ac.timeout_s)


async def read_amp(ac: AmpConfig, *, deadline_s: float) -> AmpReading:
    """One full read of the amplifier (never raises for hardware)."""
    from firmware_shims.amp.probe import AmpProbe

    probe = amp_probe(ac)
    assert isinstance(probe, AmpProbe)
    try:
        async with asyncio.timeout(deadline_s):
            return await probe.read()
    except TimeoutError:
        where = ac.address if ac.transport == "tcp" else ac.port
        return AmpReading(
            ts=time.time(),
            state=AmpState(responding=False),
            error=f"unit {ac.unit} on {where}: no complete read in {deadline_s:g} s",
        )
    finally:
        await _close(probe)


async def modbus_read(
    ac: AmpConfig, address: int, count: int, *, input: bool, deadline_s: float
) -> list[int]:
    """Raw registers; raises ShimError (DeviceException for a Modbus exception reply)."""
    from firmware_shims.amp.probe import AmpProbe

    probe = amp_probe(ac)
    assert isinstance(probe, AmpProbe)
    where = ac.address if ac.transport == "tcp" else ac.port
    try:
        async with asyncio.timeout(deadline_s):
            return await probe.read_registers(address, count, input=input)
    except TimeoutError:
        raise ProbeTimeout(
            f"unit {ac.unit} on {where}",
            f"no answer in {deadline_s:g} s",
            command=f"read {'input' if input else 'holding'} {address}+{count}",
        ) from None
    finally:
        await _close(probe)


async def read_system(sc: SystemConfig) -> SystemReading:
    from edge_agent.probes import SystemProbe

    probe = SystemProbe(sc.disk_path)
    try:
        async with asyncio.timeout(sc.timeout_s):
            return await probe.read()
    finally:
        await _close(probe)


async def read_stream(sc: StreamConfig, *, deadline_s: float) -> StreamReading:
    from edge_agent.probes import StreamProbe
    from fleet_protocol import StreamState

    probe = StreamProbe(
        url=sc.url,
        min_bytes=sc.min_bytes,
        timeout_s=min(sc.timeout_s, deadline_s),
        player_state_file=sc.player_state_file,
        player_state_max_age_s=sc.player_state_max_age_s,
    )
    try:
        async with asyncio.timeout(deadline_s + 1.0):
            return await probe.read()
    except TimeoutError:
        return StreamReading(
            ts=time.time(),
            state=StreamState(receiving=False, detail=f"no answer in {deadline_s:g} s"),
        )
    finally:
        await _close(probe)


async def broker_reachable(host: str, port: int, *, timeout_s: float) -> tuple[bool, str]:
    """Whether a TCP connection to the broker opens (DNS, route, firewall); never raises."""
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return False, f"{host}:{port}: no TCP connection in {timeout_s:g} s"
    except OSError as exc:
        return False, f"{host}:{port}: {exc.strerror or exc}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True, f"{host}:{port}: TCP connection opened"


__all__ = [
    "ShimError",
    "amp_probe",
    "at_command",
    "broker_reachable",
    "modbus_read",
    "modem_probe",
    "read_amp",
    "read_modem",
    "read_stream",
    "read_system",
]
