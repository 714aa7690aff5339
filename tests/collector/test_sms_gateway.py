"""The district's SMS gateway against two simulated modems on real ptys (pyserial)
linked by the simulated SMS centre, storing into the real SQLite store."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from collector.config import IngestConfig, SmsGatewayConfig
from collector.ingest import Ingestor
from collector.metrics import IngestStats
from collector.model import InventoryDevice, Status
from collector.sms import SmsGateway, normalise_number
from collector.store.base import IncomingMessage
from collector.store.sqlite import SQLiteRepository
from firmware_shims.modem.port import AtPort
from firmware_shims.modem.sim import ModemEngine, PtyModem, SimOptions
from firmware_shims.modem.sms import send_sms
from firmware_shims.modem.smsc import SmsCentre
from fleet_protocol import B2Cause, FaultCode, StateReport, encode
from fleet_protocol.sms import encode_fault_sms, sms_key
from tests.collector.conftest import state

pytestmark = pytest.mark.timeout(60)
SECRET = bytes.fromhex("00112233445566778899aabbccddeeff")
DEVICE, PHONE = "lt-sonvi-01", "0961000001"  # the inventory writes it the local way
DISTRICT = "+84912000000"


@dataclass
class Site:
    centre: SmsCentre
    device_port: AtPort
    stranger_port: AtPort
    district: PtyModem
    gateway: SmsGateway
    repo: SQLiteRepository


@pytest.fixture
async def site(tmp_path: Path, repo: SQLiteRepository) -> AsyncIterator[Site]:
    await repo.upsert_inventory(
        [
            InventoryDevice(
                device_id=DEVICE, commune_code="xa-01", commune_name="Sơn Vi", sim_phone=PHONE
            ),
            InventoryDevice(device_id="lt-sonvi-02", commune_code="xa-01", commune_name="Sơn Vi"),
        ],
        remove_missing=False,
    )
    centre = SmsCentre()
    engines = [
        ModemEngine(d, options=SimOptions(urc_rate=0.0, seed=i))
        for i, d in enumerate(("quectel", "generic", "simcom"))
    ]
    centre.attach(engines[0], "+84961000001")
    centre.attach(engines[1], "+84969999999")
    centre.attach(engines[2], DISTRICT)
    async with (
        PtyModem(engines[0], tmp_path / "dev") as dev,
        PtyModem(engines[1], tmp_path / "stranger") as stranger,
        PtyModem(engines[2], tmp_path / "district") as district,
    ):
        ports = [AtPort(dev.link), AtPort(stranger.link), AtPort(district.link)]
        cfg = SmsGatewayConfig(port=str(district.link), secret_file="x", poll_s=0.5, timeout_s=0.4)
        gw = SmsGateway(repo, cfg, ports[2], secret=SECRET)
        try:
            yield Site(centre, ports[0], ports[1], district, gw, repo)
        finally:
            for p in ports:
                await p.aclose()


def _sms(seq: int, ts: float, key: bytes = sms_key(SECRET, DEVICE), device: str = DEVICE) -> str:
    return encode_fault_sms(
        device, seq, ts, [(FaultCode.SIM_FAILURE, ts - 600)], (seq - 3, seq), key
    )


async def _arrived(site: Site, n: int) -> None:
    deadline = time.monotonic() + 10
    while len(site.district.engine.sms.store) < n:
        assert time.monotonic() < deadline, "SMS did not reach the district modem"
        await asyncio.sleep(0.02)


def test_numbers() -> None:
    assert normalise_number("+84961000001") == normalise_number("0961000001") == "84961000001"
    assert normalise_number("0084 961 000 001") == "84961000001"


async def test_stored_deduped_and_deleted(site: Site) -> None:
    now = time.time()
    await site.repo.write_batch([_incoming(state(DEVICE, 1, now - 900))], late_after_s=120)
    await send_sms(site.device_port, DISTRICT, _sms(40, now))
    await _arrived(site, 1)
    assert await site.gateway.poll() == ["stored"]
    assert site.district.engine.sms.store == {}  # deleted from the modem
    assert 40 in await site.repo.stored_seqs(DEVICE)
    (status,) = [s for s in await site.repo.statuses_as_of(time.time()) if s.device_id == DEVICE]
    # The SMS is a late report: the cause is set, the device is not heard online.
    assert status.status is Status.BROKEN and status.cause is B2Cause.SIM_FAILURE
    # The MQTT copy of the same heartbeat (same seq) arrives later: a duplicate.
    result = await site.repo.write_batch(
        [_incoming(state(DEVICE, 40, now, faults=(FaultCode.SIM_FAILURE,)))], late_after_s=120
    )
    assert (result.stored, result.duplicates) == (0, 1)


async def test_forged_replayed_and_garbled_are_rejected_counted_logged_once(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    now = time.time()
    good = _sms(50, now)
    texts = [
        (site.device_port, good),
        (site.device_port, good),  # replay of the same SMS
        (site.device_port, _sms(51, now, key=sms_key(b"guess", DEVICE))),  # bad tag
        (site.device_port, _sms(52, now, key=sms_key(SECRET, "lt-sonvi-02"), device="lt-sonvi-02")),
        (site.stranger_port, _sms(53, now)),  # valid text, unknown number
        (site.stranger_port, _sms(54, now)),
        (site.device_port, "hello, is this the district?"),
        (site.device_port, _sms(55, now - 30 * 86400)),  # stale
    ]
    for port, text in texts:
        await send_sms(port, DISTRICT, text)
    await _arrived(site, len(texts))
    with caplog.at_level(logging.WARNING, logger="loa.collector.sms"):
        outcomes = await site.gateway.poll()
    assert outcomes == [
        "stored",
        "replay",
        "bad_tag",
        "sender_mismatch",
        "unknown_sender",
        "unknown_sender",
        "sms_format",
        "stale",
    ]
    assert site.gateway.stats.rejected["unknown_sender"] == 2
    assert site.gateway.stats.stored == 1
    # Logged once per (sender, reason): the second stranger SMS is counted, not logged.
    assert sum("unknown_sender" in r.getMessage() for r in caplog.records) == 1
    assert site.district.engine.sms.store == {}
    assert await site.repo.stored_seqs(DEVICE) == [50]


async def test_run_prepares_the_modem_and_reads_what_arrives(site: Site) -> None:
    task = asyncio.create_task(site.gateway.run())
    try:
        await send_sms(site.device_port, DISTRICT, _sms(60, time.time()))
        deadline = time.monotonic() + 10
        while site.gateway.stats.stored < 1:
            assert time.monotonic() < deadline, "gateway did not store the SMS"
            await asyncio.sleep(0.05)
        assert site.district.engine.sms.cnmi_mt == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _incoming(report: StateReport) -> IncomingMessage:
    """A report as MQTT ingest prepares it."""
    ing = Ingestor(None, IngestConfig(), IngestStats())  # type: ignore[arg-type]
    msg = ing.prepare(f"loa/v1/{report.device}/state", encode(report), received_at=time.time())
    assert msg is not None
    return msg


async def test_started_by_the_app_when_configured(tmp_path: Path) -> None:
    """``create_app`` runs the gateway on the configured port; /metrics counts it."""
    from aiohttp.test_utils import TestClient, TestServer

    from collector.app import create_app
    from collector.auth import hash_password, secret_hash
    from collector.store.base import Role
    from tests.collector.conftest import make_config

    secret_file = tmp_path / "sms.secret"
    secret_file.write_text(SECRET.hex() + "\n")
    centre = SmsCentre()
    device = ModemEngine("quectel", options=SimOptions(urc_rate=0.0, seed=1))
    district = ModemEngine("generic", options=SimOptions(urc_rate=0.0, seed=2))
    centre.attach(device, "+84961000001")
    centre.attach(district, DISTRICT)
    async with PtyModem(district, tmp_path / "district") as pty:
        cfg = make_config(
            None,
            tmp_path,
            sms={
                "port": str(pty.link),
                "secret_file": str(secret_file),
                "poll_s": 0.5,
                "timeout_s": 0.4,
            },
        )
        cfg = replace(cfg, ingest_enabled=False)
        repo = await SQLiteRepository.open(tmp_path / "collector.db")
        await repo.migrate()
        await repo.upsert_inventory(
            [
                InventoryDevice(
                    device_id=DEVICE, commune_code="x", commune_name="X", sim_phone=PHONE
                )
            ],
            remove_missing=False,
        )
        await repo.add_user(
            "v",
            role=Role.ADMIN,
            communes=frozenset(),
            password_hash=hash_password("pw-long-enough"),
        )
        await repo.add_token("v", token_hash=secret_hash("tok"), label="t", at=time.time())
        await repo.close()
        port = AtPort.for_engine(device)
        async with TestClient(TestServer(create_app(cfg))) as client:
            await send_sms(port, DISTRICT, _sms(70, time.time()))
            deadline = time.monotonic() + 15
            while True:
                async with client.get("/metrics", headers={"Authorization": "Bearer tok"}) as r:
                    text = await r.text()
                # Stored is counted before the SMS is deleted off the modem: wait for both.
                if "loa_sms_stored_total 1" in text and district.sms.store == {}:
                    break
                assert time.monotonic() < deadline, (text[-500:], district.sms.store)
                await asyncio.sleep(0.1)
        assert district.sms.cnmi_mt == 1
