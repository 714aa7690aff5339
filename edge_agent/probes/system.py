"""System probe: CPU, memory, disk, SoC temperature, uptime and boot id of the controller.

Read straight from Linux's /proc and /sys, the same sources and formulas as
psutil (``cpu_percent``, ``virtual_memory().percent``, ``disk_usage().percent``),
without importing it: psutil costs 2.7 MiB of resident memory, a twelfth of
the agent's 32 MiB budget on a 512 MB controller, for four file reads. The
parsers are pure functions, tested against psutil's own figures.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from firmware_shims.readings import SystemReading
from fleet_protocol import SystemState

log = logging.getLogger(__name__)

PROC = Path("/proc")
THERMAL = Path("/sys/class/thermal")
#: Thermal zone types that are the SoC/CPU, in order of preference.
_SOC_ZONES = ("cpu-thermal", "soc-thermal", "cpu_thermal", "x86_pkg_temp", "cpu", "soc")


def parse_cpu_times(stat_text: str) -> tuple[int, int]:
    """(busy, total) jiffies from /proc/stat's aggregate ``cpu`` line.

    Idle is ``idle + iowait``; guest time is already inside user/nice, so it is
    not added twice (as psutil does).
    """
    for line in stat_text.splitlines():
        if line.startswith("cpu "):
            fields = [int(x) for x in line.split()[1:]]
            fields += [0] * (8 - len(fields))
            user, nice, system, idle, iowait, irq, softirq, steal = fields[:8]
            total = user + nice + system + idle + iowait + irq + softirq + steal
            return total - idle - iowait, total
    raise ValueError("no aggregate 'cpu' line in /proc/stat")


def cpu_percent(before: tuple[int, int], after: tuple[int, int]) -> float:
    busy = after[0] - before[0]
    total = after[1] - before[1]
    if total <= 0:
        return 0.0
    return max(0.0, min(100.0, 100.0 * busy / total))


def parse_meminfo_percent(meminfo_text: str) -> float:
    """Memory in use as psutil counts it: (MemTotal - MemAvailable) / MemTotal."""
    values: dict[str, int] = {}
    for line in meminfo_text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key] = int(parts[0])
    total = values.get("MemTotal")
    if not total:
        raise ValueError("no MemTotal in /proc/meminfo")
    available = values.get("MemAvailable")
    if available is None:  # kernels before 3.14
        available = values.get("MemFree", 0) + values.get("Buffers", 0) + values.get("Cached", 0)
    return max(0.0, min(100.0, 100.0 * (total - available) / total))


def disk_percent(path: Path) -> float:
    """Filesystem fill as ``df`` and psutil show it (space reserved for root excluded)."""
    st = os.statvfs(path)
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    avail = st.f_bavail * st.f_frsize
    return 0.0 if used + avail == 0 else 100.0 * used / (used + avail)


def _soc_zone(root: Path) -> Path | None:
    """The thermal zone of the SoC, or the first zone; None when there is none."""
    zones = sorted(root.glob("thermal_zone*"))
    by_type: dict[str, Path] = {}
    for z in zones:
        try:
            by_type.setdefault((z / "type").read_text().strip().lower(), z)
        except OSError:
            continue
    for name in _SOC_ZONES:
        if name in by_type:
            return by_type[name] / "temp"
    return zones[0] / "temp" if zones else None


class SystemProbe:
    """``Probe[SystemReading]``. Each read is a handful of small file reads, well
    under a millisecond, so it runs on the event loop with no thread hop."""

    name = "system"

    def __init__(
        self,
        disk_path: Path = Path("/"),
        *,
        proc: Path = PROC,
        thermal_root: Path = THERMAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.disk_path = disk_path
        self.proc = proc
        self.clock = clock
        self._temp_file = _soc_zone(thermal_root)
        self._boot_id: str | None = None
        self._failing: set[str] = set()
        self._cpu_before = self._cpu_times()  # the first reading covers one poll

    def _note(self, what: str, error: Exception | None) -> None:
        if error is not None and what not in self._failing:
            log.warning("system probe: cannot read %s: %s", what, error)
            self._failing.add(what)
        elif error is None and what in self._failing:
            log.info("system probe: %s readable again", what)
            self._failing.discard(what)

    def _read(self, what: str, fn: Callable[[], float | str | None]) -> float | str | None:
        try:
            value = fn()
        except (OSError, ValueError, IndexError) as exc:
            self._note(what, exc)
            return None
        self._note(what, None)
        return value

    def _cpu_times(self) -> tuple[int, int] | None:
        try:
            return parse_cpu_times((self.proc / "stat").read_text())
        except (OSError, ValueError) as exc:
            self._note("CPU times", exc)
            return None

    def _cpu(self) -> float | None:
        after = self._cpu_times()
        before, self._cpu_before = self._cpu_before, after
        if before is None or after is None:
            return None
        return cpu_percent(before, after)

    def _temp(self) -> float | None:
        if self._temp_file is None:
            return None
        value = int(self._temp_file.read_text().strip()) / 1000.0
        return value if -60 <= value <= 200 else None

    def _boot(self) -> str | None:
        if self._boot_id is None:
            text = (self.proc / "sys/kernel/random/boot_id").read_text().strip()
            self._boot_id = text[:64] or None
        return self._boot_id

    async def read(self) -> SystemReading:
        ts = self.clock()

        def num(what: str, fn: Callable[[], float | None], digits: int = 1) -> float | None:
            value = self._read(what, fn)
            # Rounded: more digits are noise, and every digit is sent over a metered SIM.
            return None if not isinstance(value, float | int) else round(float(value), digits)

        boot = self._read("boot id", self._boot)
        cpu = self._cpu()
        state = SystemState(
            cpu_pct=None if cpu is None else round(cpu, 1),
            mem_pct=num(
                "memory", lambda: parse_meminfo_percent((self.proc / "meminfo").read_text())
            ),
            disk_pct=num(f"disk {self.disk_path}", lambda: disk_percent(self.disk_path)),
            soc_temp_c=num("SoC temperature", self._temp),
            uptime_s=num("uptime", lambda: float((self.proc / "uptime").read_text().split()[0]), 0),
            boot_id=boot if isinstance(boot, str) else None,
        )
        return SystemReading(ts=ts, state=state)

    async def aclose(self) -> None:
        return None


__all__ = ["SystemProbe", "cpu_percent", "disk_percent", "parse_cpu_times", "parse_meminfo_percent"]
