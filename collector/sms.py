"""The district's SMS gateway: fault SMS from controllers whose data link is down.

``SmsGateway.poll()`` lists the USB GSM modem's messages (``AT+CMGL``, through
the same ``firmware_shims`` AT code and port lock as everything else), and for
each one:

1. finds the device whose inventory ``sim_phone`` is the sender's number
   (``+84...`` and ``0...`` spellings match);
2. decodes the ``LOA1`` text (``fleet_protocol.sms``) and checks that it
   names that same device, that its tag verifies with the device's key
   (derived from the district secret), and that it is not older than
   ``max_age_s``;
3. stores it through the store's ``write_batch`` as a message of kind
   ``sms`` with the device's own seq: the (device, seq) dedupe drops a replayed
   SMS and, later, the MQTT copy of the same heartbeat. Its observation is a
   *late* report (it sets the diagnosis, never the link: the device is still
   offline for data), so a silent cluster's cause becomes the SMS's faults;
4. deletes it from the modem (``AT+CMGD``), stored or rejected; only a store
   failure leaves it there to be tried again.

A rejected SMS (``unknown_sender``, ``sender_mismatch``, ``bad_tag``,
``stale``, ``replay``, ``sms_format``) is counted in ``stats.rejected`` and
logged once per (sender, reason). ``run()`` is the ``sms-gateway`` task of the
collector app; ``+CMTI`` URCs seen by the port trigger a read before the next
``poll_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from collector.config import SmsGatewayConfig
from collector.fleet import Observation, ObsKind, diagnose, event_time
from collector.store.base import IncomingMessage, Repository, StoreError
from firmware_shims.errors import ShimError
from firmware_shims.modem.port import AtPort
from firmware_shims.modem.sms import SmsMessage, delete_sms, list_sms, parse_cmti
from fleet_protocol import PROTOCOL_VERSION, Fault, ProtocolError, StateReport, encode
from fleet_protocol.sms import FaultSms, decode_fault_sms, sms_key

log = logging.getLogger("loa.collector.sms")

KIND = "sms"


def normalise_number(number: str) -> str:
    """One spelling of a number: ``+84912...``, ``84912...``, ``0912...`` → ``84912...``."""
    digits = re.sub(r"[^0-9]", "", number)
    if digits.startswith("0") and not digits.startswith("00"):
        digits = "84" + digits[1:]
    elif digits.startswith("0084"):
        digits = digits[2:]
    return digits


def read_secret(path: str) -> bytes:
    """The district SMS secret from ``path`` (hex on the first line)."""
    text = Path(path).read_text(encoding="utf-8").split()
    return bytes.fromhex(text[0])


@dataclass
class SmsStats:
    received: int = 0
    stored: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    failures: int = 0

    def prometheus(self) -> str:
        """The gateway's counters in Prometheus text format (appended to /metrics)."""
        lines = [
            "# HELP loa_sms_received_total SMS read off the district modem.",
            "# TYPE loa_sms_received_total counter",
            f"loa_sms_received_total {self.received}",
            "# HELP loa_sms_stored_total Fault SMS stored.",
            "# TYPE loa_sms_stored_total counter",
            f"loa_sms_stored_total {self.stored}",
            "# HELP loa_sms_rejected_total SMS rejected, by reason.",
            "# TYPE loa_sms_rejected_total counter",
        ]
        lines += [
            f'loa_sms_rejected_total{{reason="{r}"}} {n}' for r, n in sorted(self.rejected.items())
        ]
        lines += [
            "# HELP loa_sms_gateway_failures_total Failed polls (modem or store).",
            "# TYPE loa_sms_gateway_failures_total counter",
            f"loa_sms_gateway_failures_total {self.failures}",
        ]
        return "\n".join(lines) + "\n"


def to_message(
    sms: FaultSms, *, received_at: float, max_future_s: float = 300.0
) -> IncomingMessage:
    """The stored form of a verified fault SMS: a late heartbeat with its faults."""
    ts, _ = event_time(float(sms.ts), received_at, max_future_s=max_future_s)
    faults = [
        Fault.of(code, float(min(since, sms.ts)), "reported by SMS") for code, since in sms.faults
    ]
    report = StateReport(
        v=PROTOCOL_VERSION,
        device=sms.device,
        seq=sms.seq,
        ts=ts,
        heartbeat=True,
        faults=faults,
        outbox_depth=0 if sms.outbox is None else sms.outbox[1] - sms.outbox[0] + 1,
    )
    broken, cause = diagnose(faults)
    return IncomingMessage(
        device_id=sms.device,
        seq=sms.seq,
        kind=KIND,
        ts=ts,
        received_at=received_at,
        payload=encode(report),
        observation=Observation(
            ts, sms.seq, ObsKind.REPORT, prompt=False, broken=broken, cause=cause
        ),
    )


class SmsGateway:
    """Reads fault SMS off the district modem into the store (module docstring)."""

    def __init__(
        self,
        repo: Repository,
        cfg: SmsGatewayConfig,
        port: AtPort,
        *,
        secret: bytes,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.repo = repo
        self.cfg = cfg
        self.port = port
        self.secret = secret
        self.clock = clock
        self.stats = SmsStats()
        self._logged: set[tuple[str, str]] = set()
        self._failing = False

    def _reject(self, sender: str, reason: str, detail: str) -> str:
        self.stats.rejected[reason] += 1
        key = (sender, reason)
        if key not in self._logged and len(self._logged) < 10000:
            self._logged.add(key)
            log.warning("rejected SMS from %.20r: %s: %.200s", sender, reason, detail)
        return reason

    async def handle(self, msg: SmsMessage, phones: dict[str, str]) -> str:
        """Check and store one SMS; returns ``stored`` or the rejection reason.

        Raises StoreError when the store fails (the SMS stays on the modem).
        """
        self.stats.received += 1
        sender = normalise_number(msg.sender)
        device = phones.get(sender) if sender else None
        if device is None:
            return self._reject(msg.sender, "unknown_sender", "number not in the inventory")
        try:
            sms = decode_fault_sms(msg.text)
        except ProtocolError as err:
            return self._reject(msg.sender, err.kind, err.reason)
        if sms.device != device:
            return self._reject(
                msg.sender, "sender_mismatch", f"names {sms.device}, SIM of {device}"
            )
        if not sms.verify(sms_key(self.secret, device)):
            return self._reject(msg.sender, "bad_tag", f"tag does not verify for {device}")
        now = self.clock()
        if sms.ts < now - self.cfg.max_age_s:
            return self._reject(msg.sender, "stale", f"device time {sms.ts} is too old")
        result = await self.repo.write_batch([to_message(sms, received_at=now)], late_after_s=0.0)
        if result.duplicates:
            return self._reject(msg.sender, "replay", f"{device} seq {sms.seq} already stored")
        self.stats.stored += 1
        log.info(
            "fault SMS from %s (seq %d): %s", device, sms.seq, [c.value for c, _ in sms.faults]
        )
        return "stored"

    async def poll(self) -> list[str]:
        """Read, check, store and delete every message on the modem; the outcomes in order."""
        inventory = await self.repo.list_inventory()
        phones = {normalise_number(d.sim_phone): d.device_id for d in inventory if d.sim_phone}
        outcomes: list[str] = []
        for msg in await list_sms(self.port, timeout=self.cfg.timeout_s):
            outcomes.append(await self.handle(msg, phones))
            await delete_sms(self.port, msg.index, timeout=self.cfg.timeout_s)
        return outcomes

    async def prepare(self) -> None:
        """Numeric errors and ``+CMTI`` on arrival (``AT+CNMI=2,1``)."""
        for cmd in ("AT+CMEE=1", "AT+CMGF=1", "AT+CNMI=2,1,0,0,0"):
            await self.port.command(cmd, timeout=self.cfg.timeout_s)

    async def run(self) -> None:
        """Poll forever; a failing modem or store is logged once, and its recovery once."""
        try:
            await self._run()
        finally:
            with contextlib.suppress(Exception):
                await self.port.aclose()

    async def _run(self) -> None:
        prepared = False
        while True:
            try:
                if not prepared:
                    await self.prepare()
                    prepared = True
                await self.poll()
            except (ShimError, StoreError) as exc:
                self.stats.failures += 1
                prepared = prepared and not isinstance(exc, ShimError)
                if not self._failing:
                    log.error("SMS gateway on %s failing: %s", self.port.where, exc)
                    self._failing = True
            else:
                if self._failing:
                    log.info("SMS gateway on %s working again", self.port.where)
                    self._failing = False
            await self._wait_for_sms()

    async def _wait_for_sms(self) -> None:
        """Sleep ``poll_s``, or less when a ``+CMTI`` URC came in."""
        deadline = time.monotonic() + self.cfg.poll_s
        while time.monotonic() < deadline:
            arrived = [u for u in self.port.urcs if parse_cmti(u)]
            for u in arrived:
                self.port.urcs.remove(u)
            if arrived:
                return
            await asyncio.sleep(min(1.0, self.cfg.poll_s))
            # An idle port only collects URCs during an exchange.
            try:
                await self.port.command("AT", timeout=self.cfg.timeout_s)
            except ShimError:
                return


def build_gateway(repo: Repository, cfg: SmsGatewayConfig) -> SmsGateway:
    """The gateway on the configured modem port (``[sms]`` of the collector config)."""
    port = AtPort(cfg.port, baudrate=cfg.baud)
    return SmsGateway(repo, cfg, port, secret=read_secret(cfg.secret_file))


__all__ = ["KIND", "SmsGateway", "SmsStats", "build_gateway", "normalise_number", "to_message"]
