"""System probe: CPU, memory, disk, SoC temperature, uptime and boot id of the controller."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from firmware_shims.readings import SystemReading
from fleet_protocol import SystemState

log = logging.getLogger(__name__)

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
THERMAL = Path("/sys/class/thermal")
#: Thermal zone types that are the SoC/CPU, in order of preference.
_SOC_ZONES = ("cpu-thermal", "soc-thermal", "cpu_thermal", "x86_pkg_temp", "cpu", "soc")


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
    """``Probe[SystemReading]``. Reads /proc and /sys directly: each read is well
    under a millisecond, so it runs on the event loop with no thread hop."""

    name = "system"

    def __init__(
        self,
        disk_path: Path = Path("/"),
        *,
        thermal_root: Path = THERMAL,
        boot_id_file: Path = BOOT_ID,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.disk_path = disk_path
        self.clock = clock
        self._temp_file = _soc_zone(thermal_root)
        self._boot_id_file = boot_id_file
        self._boot_id: str | None = None
        self._failing: set[str] = set()
        psutil.cpu_percent(interval=None)  # primes the counter: the next call covers one poll

    def _note(self, what: str, error: Exception | None) -> None:
        if error is not None and what not in self._failing:
            log.warning("system probe: cannot read %s: %s", what, error)
            self._failing.add(what)
        elif error is None and what in self._failing:
            log.info("system probe: %s readable again", what)
            self._failing.discard(what)

    def _read_temp(self) -> float | None:
        if self._temp_file is None:
            return None
        try:
            value = int(self._temp_file.read_text().strip()) / 1000.0
        except (OSError, ValueError) as exc:
            self._note("SoC temperature", exc)
            return None
        self._note("SoC temperature", None)
        return value if -60 <= value <= 200 else None

    def _read_boot_id(self) -> str | None:
        if self._boot_id is None:
            try:
                self._boot_id = self._boot_id_file.read_text().strip()[:64] or None
            except OSError as exc:
                self._note("boot id", exc)
        return self._boot_id

    async def read(self) -> SystemReading:
        ts = self.clock()
        disk: float | None
        try:
            disk = psutil.disk_usage(str(self.disk_path)).percent
            self._note(f"disk {self.disk_path}", None)
        except OSError as exc:
            self._note(f"disk {self.disk_path}", exc)
            disk = None
        temp = self._read_temp()
        # Rounded: more digits are noise, and every digit is sent over a metered SIM.
        state = SystemState(
            cpu_pct=round(min(100.0, psutil.cpu_percent(interval=None)), 1),
            mem_pct=round(psutil.virtual_memory().percent, 1),
            disk_pct=None if disk is None else round(disk, 1),
            soc_temp_c=None if temp is None else round(temp, 1),
            uptime_s=float(round(max(0.0, time.time() - psutil.boot_time()))),
            boot_id=self._read_boot_id(),
        )
        return SystemReading(ts=ts, state=state)

    async def aclose(self) -> None:
        return None
