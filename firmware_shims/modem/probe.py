"""``ModemProbe``: the ``Probe[ModemReading]`` for an AT modem.

``await probe.read()`` runs the dialect's poll through the port (holding the
port's lock for the whole poll, so a technician's command never lands in the
middle) and returns a ``ModemReading``:

- ``state``: the dialect's ModemState; ``responding=False`` (and nothing else
  known) when the modem did not answer at all or the port is unavailable;
- ``errors``: command → what went wrong (``{"AT+CPIN?": "+CME ERROR: 13"}``,
  or the ProbeTimeout/PortUnavailable message);
- ``raw``: command → the raw lines received (echo, URCs and all).

``read`` never raises for hardware failure (only for cancellation and bugs).
A modem that stops answering is logged once, and its recovery once.
``soft_reset()`` and ``command()`` serve the agent's recovery ladder and the
technician's passthrough through the same lock.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence

import msgspec

from firmware_shims.errors import PortUnavailable, ProbeTimeout, ShimError
from firmware_shims.modem import generic
from firmware_shims.modem.at import AtResponse, error_text
from firmware_shims.modem.bearer import BEARER_DETAIL, BEARER_FIRST, parse_bearer
from firmware_shims.modem.dialects import Dialect, get_dialect
from firmware_shims.modem.port import AtPort
from firmware_shims.readings import ModemReading
from fleet_protocol import ModemState, SimState

log = logging.getLogger(__name__)

#: Two timeouts in a row mean the modem is gone; do not spend the rest of the
#: poll waiting on it.
_MAX_TIMEOUTS = 2


class ModemProbe:
    """Reads one modem through an ``AtPort`` with a ``Dialect``."""

    name: str

    def __init__(
        self,
        port: AtPort,
        dialect: Dialect | str,
        *,
        name: str = "modem",
        timeout: float = 2.0,
        init_commands: Sequence[str] = ("AT+CMEE=1",),
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``timeout`` applies to each command. ``init_commands`` run before the
        first poll and again after the port was reopened (a reset modem forgets
        its settings); numeric +CME errors make readings diagnosable."""
        self.name = name
        self.port = port
        self.dialect = get_dialect(dialect) if isinstance(dialect, str) else dialect
        self.timeout = timeout
        self.init_commands = tuple(init_commands)
        self.clock = clock
        self._initialised_at: int | None = None
        self._failing = False

    async def _init(self) -> None:
        if self._initialised_at == self.port.reopens:
            return
        for cmd in self.init_commands:
            # Best effort: a modem that refuses still gets polled.
            with contextlib.suppress(ProbeTimeout):
                await self.port.exchange(cmd, timeout=self.timeout)
        self._initialised_at = self.port.reopens

    async def read(self) -> ModemReading:
        """One poll (see the module docstring)."""
        responses: dict[str, AtResponse] = {}
        errors: dict[str, str] = {}
        raw: dict[str, tuple[str, ...]] = {}
        answered = False
        timeouts = 0
        failure: ShimError | None = None

        async def ask(cmd: str) -> AtResponse | None:
            nonlocal answered, timeouts, failure
            try:
                resp = await self.port.exchange(cmd, timeout=self.timeout)
            except ProbeTimeout as exc:
                errors[cmd] = str(exc)
                timeouts += 1
                if timeouts >= _MAX_TIMEOUTS or not answered:
                    failure = exc
                return None
            except PortUnavailable as exc:
                errors[cmd] = str(exc)
                failure = exc
                return None
            answered, timeouts = True, 0
            responses[cmd] = resp
            raw[cmd] = resp.raw
            err = error_text(resp)
            if err is not None:
                errors[cmd] = err
            return resp

        async with self.port.lock:
            try:
                await self._init()
            except PortUnavailable as exc:
                errors[self.init_commands[0] if self.init_commands else "open"] = str(exc)
                failure = exc
            for cmd in self.dialect.poll_commands:
                if failure is not None:
                    break
                await ask(cmd)
            if failure is None:
                for cmd in self.dialect.followups(responses):
                    if failure is not None:
                        break
                    await ask(cmd)
            sim = generic.parse_cpin(responses.get(generic.CMD_CPIN))
            if failure is None and sim not in (SimState.ABSENT, SimState.FAILURE):
                for cmd in self.dialect.iccid_commands:
                    resp = await ask(cmd)
                    if failure is not None or generic.parse_iccid(cmd, resp):
                        break
                # Registered is not connected: read the data bearer too.
                for cmd in BEARER_FIRST:
                    if failure is None:
                        await ask(cmd)
                if failure is None and parse_bearer(responses).address is None:
                    for cmd in BEARER_DETAIL.get(self.dialect.name, BEARER_DETAIL["generic"]):
                        if failure is None:
                            await ask(cmd)
        ts = self.clock()
        if failure is not None and not answered:
            if not self._failing:
                log.warning("modem %s not responding: %s", self.port.where, failure)
            self._failing = True
            return ModemReading(ts=ts, state=ModemState(responding=False), errors=errors, raw=raw)
        if self._failing:
            log.info("modem %s responding again", self.port.where)
        self._failing = False
        state = self.dialect.parse(responses)
        data = parse_bearer(responses).ok
        if data is not None and state.registration.registered:
            state = msgspec.structs.replace(state, data=data)
        return ModemReading(ts=ts, state=state, errors=errors, raw=raw)

    async def soft_reset(self, *, timeout: float = 5.0) -> AtResponse:
        """Send the dialect's reset (``AT+CFUN=1,1`` / ``AT+CRESET``) and return its answer.

        The modem then goes silent for seconds (a USB one re-enumerates); reads
        meanwhile report ``responding=False`` and the port reopens when the
        device is back. Raises ProbeTimeout/PortUnavailable if the reset was
        not acknowledged.
        """
        resp = await self.port.command(self.dialect.reset_command, timeout=timeout)
        # The reset modem forgets AT+CMEE and echo: redo init on the next poll.
        self._initialised_at = None
        return resp

    async def command(self, cmd: str, timeout: float = 2.0) -> AtResponse:
        """A technician's command, through the port's lock. Checking that it is
        allowed (``firmware_shims.modem.at.is_read_only``) is the caller's job."""
        return await self.port.command(cmd, timeout=timeout)

    async def aclose(self) -> None:
        await self.port.aclose()


__all__ = ["ModemProbe"]
