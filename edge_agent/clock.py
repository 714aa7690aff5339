"""Clock truth on the controller: is the wall clock synchronised, and which boot is this.

Raspberry-Pi-class controllers have no real-time clock: after a power cut the
wall clock starts wrong (often at the last saved time, or 1970) and stays
wrong until NTP syncs over 4G. The kernel knows: ``adjtimex(2)`` (read-only,
no privileges needed) keeps the ``STA_UNSYNC`` bit of its status word set
until a time daemon has disciplined the clock, which is what timedatectl
reports as "System clock synchronized".

So every message the agent sends is stamped, besides ``ts``, with the boot it
was made in (``boot_id``: a prefix of the kernel's boot id), the seconds since
that boot (``mono``: CLOCK_BOOTTIME, which no clock step moves) and, while the
clock is not synchronised, ``clock_synced: false``. The collector learns each
boot's wall-clock offset from its first synchronised message and re-dates the
others (``collector.clocktruth``). Once the collector has confirmed a
synchronised stamped message of this boot (``confirmed``), it knows the
offset, so synchronised messages go out without ``boot_id``/``mono`` (37
bytes each, a sixth of a heartbeat); unsynchronised ones are always stamped.

The sync source is injectable (``Stamper(synced=...)``) so tests can simulate
an unsynchronised clock without root.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import msgspec

from fleet_protocol import Message

log = logging.getLogger(__name__)

#: ``status`` bit: clock not synchronised (include/uapi/linux/timex.h).
STA_UNSYNC = 0x0040
#: ``adjtimex`` return value: clock not synchronised.
TIME_ERROR = 5
BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")
#: Hex digits of the boot id sent on the wire: enough to tell one device's boots apart.
BOOT_ID_CHARS = 8


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    """``struct timex`` of <sys/timex.h> (glibc, Linux), padding included."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_pad", ctypes.c_int * 11),
    ]


_adjtimex: Callable[[ctypes._Pointer[_Timex]], int] | None = None
_unavailable_logged = False


def kernel_clock_synced() -> bool | None:
    """Whether the kernel says the wall clock is synchronised; None if it cannot be asked.

    Calls ``adjtimex`` with ``modes = 0`` (a pure read). Synchronised means
    the ``STA_UNSYNC`` status bit is clear.
    """
    global _adjtimex, _unavailable_logged
    try:
        if _adjtimex is None:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            fn = libc.adjtimex
            fn.argtypes = [ctypes.POINTER(_Timex)]
            fn.restype = ctypes.c_int
            _adjtimex = fn
        tx = _Timex()
        rc = _adjtimex(ctypes.byref(tx))  # type: ignore[arg-type]
    except (OSError, AttributeError) as exc:
        if not _unavailable_logged:
            log.warning("cannot read the kernel clock status (adjtimex): %s", exc)
            _unavailable_logged = True
        return None
    if rc < 0:
        if not _unavailable_logged:
            log.warning("adjtimex failed: errno %d", ctypes.get_errno())
            _unavailable_logged = True
        return None
    return not tx.status & STA_UNSYNC


def boot_id(path: Path = BOOT_ID_FILE) -> str | None:
    """The kernel's boot id, shortened to BOOT_ID_CHARS hex digits; None if unreadable."""
    try:
        raw = path.read_text(encoding="ascii").strip().replace("-", "").lower()
    except OSError:
        return None
    short = raw[:BOOT_ID_CHARS]
    return short if len(short) >= 4 and all(c in "0123456789abcdef" for c in short) else None


def boot_seconds() -> float:
    """Seconds since boot (CLOCK_BOOTTIME: counts suspend, never stepped)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


M = TypeVar("M", bound=Message)


class Stamper:
    """Adds ``boot_id``, ``mono`` and (when unsynchronised) ``clock_synced: false``."""

    def __init__(
        self,
        *,
        synced: Callable[[], bool | None] = kernel_clock_synced,
        boot: str | None = None,
        mono: Callable[[], float] = boot_seconds,
    ) -> None:
        self.synced = synced
        self.boot = boot if boot is not None else boot_id()
        self.mono = mono
        self._last: bool | None = None
        #: Seqs of synchronised messages stamped before the collector knew the offset.
        self._teaching: set[int] = set()
        #: The collector has stored a synchronised stamped message of this boot.
        self.taught = False

    def confirmed(self, ranges: list[tuple[int, int]]) -> None:
        """The collector confirmed these seq ranges (from the uplink's acks)."""
        if self.taught or not self._teaching:
            return
        if any(a <= s <= b for s in self._teaching for a, b in ranges):
            self.taught = True
            self._teaching.clear()

    def __call__(self, message: M) -> M:
        synced = self.synced()
        if synced != self._last:
            if synced is False:
                log.warning("system clock not synchronised: reports are stamped as such")
            elif synced and self._last is False:
                log.info("system clock synchronised")
            self._last = synced
        if synced is not False:
            if self.taught:
                return message
            if len(self._teaching) < 64:
                self._teaching.add(message.seq)
        return msgspec.structs.replace(
            message,
            boot_id=self.boot,
            mono=round(self.mono(), 3),
            clock_synced=False if synced is False else None,
        )


__all__ = ["STA_UNSYNC", "Stamper", "boot_id", "boot_seconds", "kernel_clock_synced"]
