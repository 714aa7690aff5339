"""SMS fallback: text the district the active faults when data is down but SMS works.

A dead SIM or cell silences MQTT, but data can fail while SMS still goes
through the control plane (a prepaid SIM out of data, a barred APN, a congested
cell). ``SmsFallback.run()`` (the agent's ``sms`` task) checks every
``check_s``:

- the data link has been down (uplink not connected) for ``after_s`` on the
  agent's clock;
- the last modem reading says SIM ready and registered (stat 1 or 5): with a
  dead SIM or no cell nothing would go out anyway;
- the active faults differ from the ones last texted during this outage (one
  SMS per change; a link that came back in between starts afresh);
- fewer than ``max_per_day`` SMS went out in the last 24 hours.

Then it stores the faults as a compact heartbeat in the outbox (taking a seq
from the device's seq space), texts ``fleet_protocol.sms`` of that seq through
the modem's ``AtPort`` (its lock, shared with the poller), and records the send
in ``state_file`` (atomically) so a restart neither resets the daily count nor
texts the same faults again. ``should_send`` is the pure decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent import reports
from edge_agent.config import SmsConfig
from edge_agent.outbox import Priority
from firmware_shims.errors import ShimError
from fleet_protocol import Fault, Kind, ModemState, SimState
from fleet_protocol.sms import encode_fault_sms

log = logging.getLogger(__name__)

DAY = 86400.0


@dataclass(slots=True)
class SmsRecord:
    """What has been texted: send times (last 24 h) and the faults of the last one."""

    sent: list[float] = field(default_factory=list)
    last_key: str | None = None

    @classmethod
    def load(cls, path: Path) -> SmsRecord:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            sent = [float(t) for t in data.get("sent", [])]
            key = data.get("last_key")
            return cls(sent, key if isinstance(key, str) else None)
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            # A torn or hand-edited file: start afresh, but never above the cap by
            # more than one day's worth.
            log.warning("SMS record %s unreadable (%s): starting a new one", path, exc)
            return cls()

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"sent": self.sent, "last_key": self.last_key}))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        tmp.replace(path)


def fault_key(faults: Sequence[Fault]) -> str:
    """The identity of a set of active faults (codes, sorted)."""
    return ",".join(sorted(f.code.value for f in faults))


def should_send(
    *,
    now: float,
    down_since: float | None,
    modem: ModemState | None,
    faults: Sequence[Fault],
    record: SmsRecord,
    cfg: SmsConfig,
) -> str | None:
    """Why an SMS is not due now (a reason), or None when it is. Pure."""
    if down_since is None:
        return "data link up"
    if now - down_since < cfg.after_s:
        return "data link down for less than after_s"
    if modem is None or not modem.responding:
        return "modem not read"
    if modem.sim != SimState.READY or not modem.registration.registered:
        return "SIM not ready or not registered: SMS cannot go either"
    if record.last_key == fault_key(faults):
        return "these faults were texted already"
    if len([t for t in record.sent if now - t < DAY]) >= cfg.max_per_day:
        return "daily SMS limit reached"
    return None


class SmsFallback:
    """The agent's SMS task (module docstring). ``agent`` is the running ``Agent``."""

    def __init__(self, cfg: SmsConfig, agent: Any) -> None:
        self.cfg = cfg
        self.agent = agent
        self.key = bytes.fromhex(cfg.key_file.read_text(encoding="utf-8").split()[0])
        self.record = SmsRecord.load(cfg.state_file)
        self.down_since: float | None = None
        self.sent = 0
        self.failures = 0
        self.last_error: str | None = None
        self.last_reason: str | None = None

    def _modem_state(self) -> ModemState | None:
        hist = self.agent.history["modem"]
        return hist[-1].state if hist else None

    async def check(self) -> bool:
        """One check; True when an SMS went out."""
        now = self.agent.clock()
        up = self.agent.uplink
        if up is not None and up.connected:
            if self.down_since is not None and self.record.last_key is not None:
                self.record.last_key = None  # the collector heard everything: start afresh
                self._save()
            self.down_since = None
            self.last_reason = "data link up"
            return False
        if self.down_since is None:
            self.down_since = now
        faults = list(self.agent.faults)
        self.record.sent = [t for t in self.record.sent if now - t < DAY]
        reason = should_send(
            now=now,
            down_since=self.down_since,
            modem=self._modem_state(),
            faults=faults,
            record=self.record,
            cfg=self.cfg,
        )
        self.last_reason = reason
        if reason is not None:
            return False
        return await self._send(now, faults)

    async def _send(self, now: float, faults: list[Fault]) -> bool:
        agent = self.agent
        outbox = agent.outbox
        ts = agent._now()
        item = await outbox.put(
            Kind.STATE,
            lambda seq: reports.heartbeat(
                agent.device, seq, faults, outbox_depth=outbox.depth, ts=ts
            ),
            Priority.FAULT,
        )
        if item is None:
            return False
        text = encode_fault_sms(
            agent.device,
            item.seq,
            ts,
            [(f.code, f.since) for f in faults],
            await outbox.seq_range(),
            self.key,
        )
        try:
            await _send_through(agent.modem.port, self.cfg, text)
        except ShimError as exc:
            self.failures += 1
            if self.last_error is None:
                log.warning("fault SMS to %s not sent: %s", self.cfg.number, exc)
            self.last_error = str(exc)
            return False
        if self.last_error is not None:
            log.info("fault SMS sent again after %d failures", self.failures)
        self.last_error = None
        self.sent += 1
        self.record.sent.append(now)
        self.record.last_key = fault_key(faults)
        self._save()
        log.warning(
            "data link down: fault SMS sent to %s (%d chars, seq %d)",
            self.cfg.number,
            len(text),
            item.seq,
        )
        return True

    def _save(self) -> None:
        try:
            self.record.save(self.cfg.state_file)
        except OSError as exc:
            log.warning("cannot save the SMS record %s: %s", self.cfg.state_file, exc)

    def status(self) -> dict[str, Any]:
        return {
            "number": self.cfg.number,
            "sent": self.sent,
            "sent_24h": len(self.record.sent),
            "failures": self.failures,
            "last_error": self.last_error,
            "waiting_because": self.last_reason,
        }

    async def run(self) -> None:
        while True:
            with contextlib.suppress(ShimError):
                await self.check()
            await asyncio.sleep(self.cfg.check_s)


async def _send_through(port: Any, cfg: SmsConfig, text: str) -> int:
    from firmware_shims.modem.sms import send_sms

    return await send_sms(
        port, cfg.number, text, timeout=cfg.timeout_s, send_timeout=cfg.send_timeout_s
    )


__all__ = ["SmsFallback", "SmsRecord", "fault_key", "should_send"]
