"""The modem recovery ladder.

When registration or the broadcast stream has been lost (an active
``not_registered``, ``no_service``, ``registration_denied``,
``network_unstable``, ``stream_lost`` or ``modem_unresponsive`` fault) for
``soft_reset_after_s``, the modem is soft-reset through its dialect
(``ModemProbe.soft_reset``, e.g. ``AT+CFUN=1,1``). If the loss lasts
``hook_after_s``, the configured hook command runs (a USB or GPIO power
cycle). Each step is rate-limited by its own minimum interval, and every
attempt, successful or not, is reported through ``emit(action, detail)`` as a
recovery event. The ladder starts again from the bottom once the loss clears.

Some modems need 20-50 minutes or a power cycle after a loss of service
(REFERENCE.md): hence a ladder rather than a retry loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from edge_agent.config import RecoveryConfig
from fleet_protocol import Fault, FaultCode

log = logging.getLogger(__name__)

TRIGGERS = frozenset(
    {
        FaultCode.NOT_REGISTERED,
        FaultCode.NO_SERVICE,
        FaultCode.REGISTRATION_DENIED,
        FaultCode.NETWORK_UNSTABLE,
        FaultCode.STREAM_LOST,
        FaultCode.MODEM_UNRESPONSIVE,
    }
)
SOFT_RESET = "modem_soft_reset"
HOOK = "power_cycle_hook"


@dataclass(frozen=True, slots=True)
class Action:
    """One recovery attempt, as kept for ``status`` and sent as an event."""

    ts: float
    action: str
    ok: bool
    detail: str


async def run_hook(argv: Sequence[str], timeout_s: float) -> tuple[bool, str]:
    """Run the hook; (succeeded, detail). Killed after ``timeout_s``; never raises."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    except OSError as exc:
        return False, f"{argv[0]}: cannot run: {exc.strerror or exc}"
    try:
        async with asyncio.timeout(timeout_s):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return False, f"{argv[0]}: killed after {timeout_s:g} s"
    tail = out.decode("utf-8", "replace").strip().splitlines()[-1:] if out else []
    detail = f"{argv[0]} exited {proc.returncode}" + (f": {tail[0][:200]}" if tail else "")
    return proc.returncode == 0, detail


class RecoveryLadder:
    """Decides and runs recovery steps; ``check(faults)`` after every diagnosis."""

    def __init__(
        self,
        cfg: RecoveryConfig,
        *,
        soft_reset: Callable[[], Awaitable[str]] | None,
        emit: Callable[[Action], Awaitable[None]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.soft_reset = soft_reset
        self.emit = emit
        self.clock = clock
        self.history: deque[Action] = deque(maxlen=20)
        self._last: dict[str, float] = {}
        self._tried_soft = False
        self._faults: Sequence[Fault] = ()
        self._changed = asyncio.Event()

    def update(self, faults: Sequence[Fault]) -> None:
        """Give the ladder the current faults (cheap; the work happens in ``run``)."""
        self._faults = faults
        self._changed.set()

    def lost_since(self, faults: Sequence[Fault]) -> float | None:
        starts = [f.since for f in faults if f.code in TRIGGERS]
        return min(starts) if starts else None

    def _allowed(self, action: str, min_interval: float, now: float) -> bool:
        last = self._last.get(action)
        return last is None or now - last >= min_interval

    async def step(self, faults: Sequence[Fault]) -> Action | None:
        """Run at most one due step for ``faults``; returns what was done."""
        if not self.cfg.enabled:
            return None
        since = self.lost_since(faults)
        if since is None:
            self._tried_soft = False
            return None
        now = self.clock()
        lost_for = now - since
        cfg = self.cfg
        if (
            cfg.hook_command
            and lost_for >= cfg.hook_after_s
            and (self._tried_soft or self.soft_reset is None)
            and self._allowed(HOOK, cfg.hook_min_interval_s, now)
        ):
            self._last[HOOK] = now
            ok, detail = await run_hook(cfg.hook_command, cfg.hook_timeout_s)
            return await self._done(HOOK, ok, f"lost for {lost_for:.0f} s; {detail}")
        if (
            self.soft_reset is not None
            and lost_for >= cfg.soft_reset_after_s
            and self._allowed(SOFT_RESET, cfg.soft_reset_min_interval_s, now)
        ):
            self._last[SOFT_RESET] = now
            self._tried_soft = True
            try:
                detail = await self.soft_reset()
                ok = True
            except Exception as exc:
                ok, detail = False, str(exc)
            return await self._done(SOFT_RESET, ok, f"lost for {lost_for:.0f} s; {detail}")
        return None

    async def _done(self, action: str, ok: bool, detail: str) -> Action:
        a = Action(self.clock(), action, ok, detail[:500])
        self.history.append(a)
        (log.warning if ok else log.error)(
            "recovery: %s %s: %s", action, "done" if ok else "failed", detail
        )
        await self.emit(a)
        return a

    async def run(self, tick_s: float = 5.0) -> None:
        """Forever: after every update (or every ``tick_s``), run the due step if any."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(tick_s):
                    await self._changed.wait()
            self._changed.clear()
            await self.step(self._faults)


__all__ = ["HOOK", "SOFT_RESET", "TRIGGERS", "Action", "RecoveryLadder", "run_hook"]
