"""System probe: pure /proc parsers (table cases) and agreement with psutil on this machine."""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest

from edge_agent.probes.system import (
    SystemProbe,
    cpu_percent,
    disk_percent,
    parse_cpu_times,
    parse_meminfo_percent,
)

STAT = "cpu  100 5 50 800 40 3 2 0 0 0\ncpu0 50 2 25 400 20 1 1 0 0 0\nintr 1 2 3\n"


def test_parse_cpu_times() -> None:
    busy, total = parse_cpu_times(STAT)
    assert (busy, total) == (160, 1000)
    assert cpu_percent((160, 1000), (220, 1100)) == 60.0
    assert cpu_percent((160, 1000), (160, 1000)) == 0.0  # no time passed
    with pytest.raises(ValueError):
        parse_cpu_times("intr 1 2 3\n")
    assert parse_cpu_times("cpu  1 2 3 4\n") == (6, 10)  # old kernels: fewer columns


@pytest.mark.parametrize(
    ("text", "pct"),
    [
        ("MemTotal: 1000 kB\nMemFree: 100 kB\nMemAvailable: 250 kB\n", 75.0),
        ("MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 100 kB\nCached: 300 kB\n", 50.0),
    ],
)
def test_parse_meminfo(text: str, pct: float) -> None:
    assert parse_meminfo_percent(text) == pct


def test_meminfo_without_total_is_an_error() -> None:
    with pytest.raises(ValueError, match="MemTotal"):
        parse_meminfo_percent("garbage\n")


def test_agrees_with_psutil_on_this_machine(tmp_path: Path) -> None:
    assert abs(disk_percent(tmp_path) - psutil.disk_usage(str(tmp_path)).percent) < 1.0
    mem = parse_meminfo_percent(Path("/proc/meminfo").read_text())
    assert abs(mem - psutil.virtual_memory().percent) < 5.0


async def test_reading_has_every_field_linux_gives(tmp_path: Path) -> None:
    probe = SystemProbe(tmp_path)
    r = await probe.read()
    s = r.state
    assert s.boot_id == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert s.mem_pct is not None and 0 <= s.mem_pct <= 100
    assert s.disk_pct is not None and s.cpu_pct is not None
    assert s.uptime_s is not None and abs(s.uptime_s - (time.time() - psutil.boot_time())) < 5


async def test_missing_sources_give_none_and_are_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    probe = SystemProbe(tmp_path / "gone", proc=tmp_path / "noproc", thermal_root=tmp_path)
    for _ in range(3):
        r = await probe.read()
    assert r.state.mem_pct is None and r.state.disk_pct is None and r.state.boot_id is None
    assert sum("disk" in rec.getMessage() for rec in caplog.records) == 1
