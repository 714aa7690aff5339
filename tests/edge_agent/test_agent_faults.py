"""Faults end to end: simulator fault → agent (real process) → MQTT → collector side.

``loa-sim modem`` runs on a pty, ``loa-sim amp`` over Modbus TCP and RTU; each
injected fault must arrive as a ``fault_raised`` event and in the state
reports with the right code and B2 cause, and clear (``fault_cleared``, empty
fault list) once healed. Times are scaled down through the config.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge_agent import control
from firmware_shims.amp.sim import amp_simulator
from firmware_shims.modem.sim import running_modem
from fleet_protocol import B2Cause, EventType, FaultCode
from tests.edge_agent.agent_support import AgentProcess, Seen, collecting, write_config
from tests.support.mosquitto import Broker

pytestmark = pytest.mark.integration

MODEM = {"poll_s": 0.5, "timeout_s": 0.4}
AMP = {"poll_s": 0.5, "timeout_s": 0.4, "profile": "generic"}


async def _raised(seen: Seen, code: FaultCode, cause: B2Cause, after: int) -> None:
    def found(s: Seen) -> bool:
        return any(
            e.type == EventType.FAULT_RAISED
            and e.fault is not None
            and e.fault.code == code
            and e.fault.cause == cause
            and e.fault.evidence
            for e in s.events[after:]
        )

    await seen.wait_for(found, what=f"{code} raised")
    await seen.wait_for(
        lambda s: any(code in {f.code for f in r.faults} for r in s.states[after:]),
        what=f"{code} in a state report",
    )


async def _cleared(seen: Seen, code: FaultCode) -> None:
    await seen.wait_for(
        lambda s: any(
            e.type == EventType.FAULT_CLEARED and e.fault and e.fault.code == code for e in s.events
        ),
        what=f"{code} cleared",
    )
    await seen.wait_for(
        lambda s: s.states and not s.states[-1].faults, what="no faults left after clearing"
    )


@contextlib.asynccontextmanager
async def _healthy(seen: Seen, agent: AgentProcess) -> AsyncIterator[None]:
    """Wait for a first fault-free report with every probe; on failure, show the agent log."""
    try:
        await seen.wait_for(
            lambda s: any(r.modem or r.amp for r in s.states) and not s.states[-1].faults,
            timeout=20,
            what="healthy start",
        )
        yield
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- agent log ---\n{agent.log()[-4000:]}") from None


MODEM_FAULTS = [
    ("sim_failure", FaultCode.SIM_FAILURE, B2Cause.SIM_FAILURE),
    ("sim_absent", FaultCode.SIM_ABSENT, B2Cause.SIM_FAILURE),
    ("sim_locked", FaultCode.SIM_LOCKED, B2Cause.SIM_FAILURE),
    ("denied", FaultCode.REGISTRATION_DENIED, B2Cause.UNSTABLE_NETWORK),
    ("no_service", FaultCode.NO_SERVICE, B2Cause.UNSTABLE_NETWORK),
    ("weak_signal", FaultCode.WEAK_SIGNAL, B2Cause.UNSTABLE_NETWORK),
    ("flapping", FaultCode.NETWORK_UNSTABLE, B2Cause.UNSTABLE_NETWORK),
    ("unresponsive", FaultCode.MODEM_UNRESPONSIVE, B2Cause.RECEIVER_DEVICE),
]


@pytest.mark.timeout(240)
async def test_modem_faults_raise_and_clear_end_to_end(broker: Broker, tmp_path: Path) -> None:
    async with running_modem(
        tmp_path / "modem",
        dialect="quectel",
        extra_args=("--urc-rate", "0", "--flap-period", "1.2", "--reset-time", "0.5"),
    ) as modem:
        cfg = write_config(
            tmp_path,
            broker,
            modem={"port": str(modem.link), "dialect": "quectel", **MODEM},
            diagnosis={"flap_window_s": 6.0},
        )
        async with collecting(broker) as seen:
            with AgentProcess(cfg, tmp_path / "agent.log") as agent:
                async with _healthy(seen, agent):
                    first = next(r for r in seen.states if r.modem)
                    assert first.modem and first.modem.iccid == "8984040000012345678"
                    for fault, code, cause in MODEM_FAULTS:
                        mark = len(seen.events)
                        await modem.set(fault)
                        await _raised(seen, code, cause, mark)
                        await modem.clear(fault)
                        await _cleared(seen, code)
                    # A technician's AT command goes through the daemon's port lock.
                    at = await control.request(
                        tmp_path / "control.sock", "at", command="AT+CSQ", timeout=2.0
                    )
                    assert at["ok"] and at["result"]["final"] == "OK", at
                    refused = await control.request(
                        tmp_path / "control.sock", "at", command="AT+CFUN=1,1"
                    )
                    assert not refused["ok"] and refused["code"] == "bad_request"
                assert await asyncio.to_thread(agent.stop) == 0


AMP_FAULTS = [
    ("over_temp", FaultCode.AMP_OVER_TEMP, B2Cause.AMPLIFIER_SPEAKER),
    ("output_short", FaultCode.AMP_OUTPUT_SHORT, B2Cause.AMPLIFIER_SPEAKER),
    ("line_open", FaultCode.AMP_LINE_OPEN, B2Cause.AMPLIFIER_SPEAKER),
    ("mains_fail", FaultCode.MAINS_FAIL, B2Cause.POWER),
    ("battery_low", FaultCode.BATTERY_LOW, B2Cause.POWER),
    ("no_response", FaultCode.AMP_NO_RESPONSE, B2Cause.AMPLIFIER_SPEAKER),
    ("exception_reply", FaultCode.AMP_FAULT, B2Cause.AMPLIFIER_SPEAKER),
]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("transport", ["tcp", "rtu"])
async def test_amplifier_faults_raise_and_clear_end_to_end(
    broker: Broker, tmp_path: Path, transport: str
) -> None:
    where = (
        {"tcp": "127.0.0.1:0", "control_socket": tmp_path / "amp.ctl"}
        if transport == "tcp"
        else {"rtu_link": tmp_path / "amp0"}
    )
    async with amp_simulator(profile="generic", **where) as sim:  # type: ignore[arg-type]
        if transport == "tcp":
            assert sim.tcp is not None
            amp = {"transport": "tcp", "address": f"{sim.tcp[0]}:{sim.tcp[1]}", **AMP}
        else:
            amp = {"transport": "rtu", "port": str(sim.rtu_link), "baud": 9600, **AMP}
        cfg = write_config(tmp_path, broker, amp=amp)
        async with collecting(broker) as seen:
            with AgentProcess(cfg, tmp_path / "agent.log") as agent:
                async with _healthy(seen, agent):
                    for fault, code, cause in AMP_FAULTS:
                        mark = len(seen.events)
                        await sim.set_fault(fault)
                        await _raised(seen, code, cause, mark)
                        await sim.clear_fault(fault)
                        await _cleared(seen, code)
                    regs = await control.request(
                        tmp_path / "control.sock", "modbus", address=100, count=2, input=True
                    )
                    assert regs["ok"] and len(regs["result"]["words"]) == 2, regs
                assert await asyncio.to_thread(agent.stop) == 0


@contextlib.asynccontextmanager
async def _station() -> AsyncIterator[tuple[str, list[bool]]]:
    """A broadcast stream server; set ``on[0] = False`` and it answers 404."""
    on = [True]

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            if on[0]:
                writer.write(
                    b"HTTP/1.0 200 OK\r\nContent-Type: audio/mpeg\r\n\r\n" + b"\xff" * 2048
                )
            else:
                writer.write(b"HTTP/1.0 404 Not Found\r\n\r\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(client, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/live", on
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.timeout(120)
async def test_stream_lost_is_no_station_signal_and_clears(broker: Broker, tmp_path: Path) -> None:
    async with _station() as (url, on):
        stream = {"url": url, "poll_s": 0.5, "timeout_s": 0.4, "min_bytes": 512}
        cfg = write_config(tmp_path, broker, stream=stream)
        async with collecting(broker) as seen:
            with AgentProcess(cfg, tmp_path / "agent.log") as agent:
                await seen.wait_for(
                    lambda s: any(r.stream and r.stream.receiving for r in s.states),
                    what="stream received",
                )
                mark = len(seen.events)
                on[0] = False
                await _raised(seen, FaultCode.STREAM_LOST, B2Cause.NO_STATION_SIGNAL, mark)
                lost = next(r for r in reversed(seen.states) if r.stream)
                assert lost.stream and not lost.stream.receiving
                assert lost.stream.detail and "HTTP 404" in lost.stream.detail
                on[0] = True
                await _cleared(seen, FaultCode.STREAM_LOST)
                assert await asyncio.to_thread(agent.stop) == 0


@pytest.mark.timeout(120)
async def test_recovery_ladder_resets_the_modem_then_runs_the_hook(
    broker: Broker, tmp_path: Path
) -> None:
    marker = tmp_path / "power-cycled"
    hook = tmp_path / "power-cycle.sh"
    hook.write_text(f"#!/bin/sh\necho cycled >> {marker}\n")
    hook.chmod(0o755)
    async with running_modem(
        tmp_path / "modem",
        dialect="simcom",
        faults=["no_service"],
        extra_args=("--urc-rate", "0", "--reset-time", "0.3"),
    ) as modem:
        cfg = write_config(
            tmp_path,
            broker,
            modem={"port": str(modem.link), "dialect": "simcom", **MODEM},
            recovery={
                "soft_reset_after_s": 2.0,
                "soft_reset_min_interval_s": 60.0,
                "hook_after_s": 4.0,
                "hook_min_interval_s": 60.0,
                "hook_command": [str(hook)],
                "hook_timeout_s": 5.0,
            },
        )
        async with collecting(broker) as seen:
            with AgentProcess(cfg, tmp_path / "agent.log") as agent:

                def recoveries(s: Seen) -> list[str]:
                    return [e.action or "" for e in s.events if e.type == EventType.RECOVERY]

                await seen.wait_for(
                    lambda s: len(recoveries(s)) >= 2, timeout=30, what="two recovery steps"
                )
                assert recoveries(seen)[:2] == ["modem_soft_reset", "power_cycle_hook"]
                soft = next(e for e in seen.events if e.action == "modem_soft_reset")
                assert soft.detail and "AT+CRESET" in soft.detail
                assert marker.read_text().strip() == "cycled"
                # Rate-limited: no third step within the minimum intervals.
                await asyncio.sleep(2)
                assert len(recoveries(seen)) == 2
                status = await control.request(tmp_path / "control.sock", "status")
                assert [a["action"] for a in status["result"]["recovery"]] == [
                    "modem_soft_reset",
                    "power_cycle_hook",
                ]
                assert await asyncio.to_thread(agent.stop) == 0
