"""The recovery ladder: a real soft reset through ModemProbe on the modem simulator,
then the hook command; each step rate-limited and reported."""

from __future__ import annotations

import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge_agent.config import RecoveryConfig
from edge_agent.recovery import HOOK, SOFT_RESET, Action, RecoveryLadder, run_hook
from firmware_shims.modem.port import AtPort
from firmware_shims.modem.probe import ModemProbe
from firmware_shims.modem.sim import SimProcess, running_modem
from fleet_protocol import Fault, FaultCode


class Clock:
    def __init__(self) -> None:
        self.now = 1_780_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def modem(tmp_path: Path) -> AsyncIterator[SimProcess]:
    async with running_modem(
        tmp_path / "modem", dialect="quectel", extra_args=("--urc-rate", "0", "--reset-time", "0.3")
    ) as m:
        yield m


def _hook(tmp_path: Path, body: str) -> str:
    script = tmp_path / "power-cycle.sh"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


async def test_ladder_soft_resets_then_runs_the_hook_rate_limited(
    modem: SimProcess, tmp_path: Path
) -> None:
    marker = tmp_path / "cycled"
    cfg = RecoveryConfig(
        soft_reset_after_s=600,
        soft_reset_min_interval_s=1800,
        hook_after_s=1800,
        hook_min_interval_s=3600,
        hook_command=(_hook(tmp_path, f"echo cycled > {marker}; echo done"),),
        hook_timeout_s=10,
    )
    probe = ModemProbe(AtPort(modem.link), "quectel", timeout=1.0)
    actions: list[Action] = []

    async def emit(a: Action) -> None:
        actions.append(a)

    async def soft_reset() -> str:
        resp = await probe.soft_reset()
        return f"{resp.command}: {resp.final}"

    clock = Clock()
    ladder = RecoveryLadder(cfg, soft_reset=soft_reset, emit=emit, clock=clock)
    lost = [Fault.of(FaultCode.NOT_REGISTERED, clock.now, "not registered: searching")]
    try:
        clock.now += 300
        assert await ladder.step(lost) is None  # not lost long enough
        clock.now += 300
        first = await ladder.step(lost)
        assert first and first.action == SOFT_RESET and first.ok, first
        assert "AT+CFUN=1,1: OK" in first.detail
        clock.now += 60
        assert await ladder.step(lost) is None  # rate-limited
        clock.now += 1200  # lost for 1860 s: past hook_after_s
        second = await ladder.step(lost)
        assert second and second.action == HOOK and second.ok, second
        assert marker.read_text().strip() == "cycled"
        assert "exited 0: done" in second.detail
        clock.now += 600
        third = await ladder.step(lost)  # soft reset allowed again; hook still rate-limited
        assert third and third.action == SOFT_RESET
        assert await ladder.step([]) is None  # healed: the ladder starts over
        assert [a.action for a in actions] == [SOFT_RESET, HOOK, SOFT_RESET]
    finally:
        await probe.aclose()


async def test_disabled_ladder_does_nothing() -> None:
    async def emit(a: Action) -> None:
        raise AssertionError(a)

    ladder = RecoveryLadder(
        RecoveryConfig(enabled=False), soft_reset=None, emit=emit, clock=lambda: time.time() + 1e6
    )
    lost = [Fault.of(FaultCode.STREAM_LOST, time.time(), "HTTP 404")]
    assert await ladder.step(lost) is None


async def test_hook_failures_are_reported_not_raised(tmp_path: Path) -> None:
    ok, detail = await run_hook([_hook(tmp_path, "echo no gpio >&2; exit 3")], 5)
    assert not ok and "exited 3: no gpio" in detail
    ok, detail = await run_hook([str(tmp_path / "missing")], 5)
    assert not ok and "cannot run" in detail
    ok, detail = await run_hook([_hook(tmp_path, "sleep 30")], 0.3)
    assert not ok and "killed after 0.3 s" in detail
