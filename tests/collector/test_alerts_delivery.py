"""Alerts end to end on the real store: wire messages in, real SMTP and local HTTP receivers out.

The fleet is stored through the real ingest path (``Ingestor.prepare`` +
``write_batch``); rules are evaluated by ``AlertService`` on a test clock;
deliveries go through the real outbox and worker to aiosmtpd (STARTTLS + AUTH)
and to local stand-ins speaking the webhook, Telegram Bot API and Zalo OA
request shapes (tests/support/receivers.py).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from collector.alerts.service import AlertService
from collector.auth import hash_password
from collector.config import CollectorConfig
from collector.ingest import Ingestor
from collector.metrics import IngestStats
from collector.model import InventoryDevice
from collector.store.alerts import ContactRow
from collector.store.base import Role
from collector.store.sqlite import SQLiteRepository
from fleet_protocol import FaultCode, Kind, Message, encode, topic
from tests.collector.conftest import make_config, presence, state
from tests.support.receivers import (
    TELEGRAM_TOKEN,
    ZALO_TOKEN,
    HttpReceivers,
    SmtpReceiver,
    delivery_ids,
    http_receivers,
    smtp_receiver,
)

XA1 = [f"dev-a{i:02d}" for i in range(14)]
XA2 = ["dev-b01", "dev-b02"]


@dataclass
class Clock:
    t: float

    def __call__(self) -> float:
        return self.t


@dataclass
class World:
    repo: SQLiteRepository
    cfg: CollectorConfig
    service: AlertService
    clock: Clock
    smtp: SmtpReceiver
    http: HttpReceivers
    seqs: dict[str, int]
    ingestor: Ingestor

    async def send(self, device: str, make: Any, *, ts: float) -> None:
        self.seqs[device] = self.seqs.get(device, 0) + 1
        msg: Message = make(device, self.seqs[device], ts)
        kind = Kind.STATE if type(msg).__name__ == "StateReport" else Kind.PRESENCE
        incoming = self.ingestor.prepare(topic(device, kind), encode(msg), received_at=ts)
        assert incoming is not None
        await self.repo.write_batch([incoming], late_after_s=self.cfg.ingest.late_after_s)

    async def evaluate_and_deliver(self, at: float) -> int:
        self.clock.t = at
        queued = await self.service.evaluate_once()
        async with self.service.delivering() as worker:
            await worker.drain()
        return len(queued)


RULES: list[dict[str, Any]] = [
    {
        "name": "offline",
        "kind": "cluster_offline",
        "after_s": 600,
        "group_wait_s": 30,
        "inhibits": ["stream-net"],
        "recipients": {"roles": ["commune_officer", "district_viewer"], "contractor": True},
    },
    {
        "name": "stream-net",
        "kind": "cluster_broken",
        "causes": ["no_station_signal", "unstable_network"],
        "after_s": 300,
        "group_wait_s": 0,
        "recipients": {"roles": ["commune_officer"]},
    },
    {
        "name": "overdue",
        "kind": "ticket_overdue",
        "after_s": 7 * 86400,
        "group_wait_s": 0,
        "send_resolved": False,
        "recipients": {"roles": ["admin"], "contractor": True},
    },
]


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with smtp_receiver(tmp_path / "smtp") as smtp, http_receivers() as http:
        cfg = make_config(
            None,
            tmp_path,
            alerts={
                "enabled": True,
                "public_url": "https://loa.huyen.test",
                "backoff_base_s": 5.0,
                "backoff_max_s": 60.0,
                "max_attempts": 4,
                "email": smtp.settings(),
                "telegram": {"base_url": http.base_url, "token": TELEGRAM_TOKEN},
                "zalo": {"base_url": http.base_url, "access_token": ZALO_TOKEN},
                "webhook": {"require_https": True},
            },
        )
        repo = await SQLiteRepository.open(cfg.db.path, synchronous="normal")
        await repo.migrate()
        base = time.time() - 3 * 86400
        clock = Clock(base)
        service = AlertService(repo, cfg, clock=clock)
        w = World(
            repo, cfg, service, clock, smtp, http, {}, Ingestor(repo, cfg.ingest, IngestStats())
        )
        await repo.upsert_inventory(
            [
                InventoryDevice(
                    device_id=d,
                    commune_code="xa-01" if d in XA1 else "xa-02",
                    commune_name="Sơn Vi" if d in XA1 else "Cao Xá",
                    address=f"Thôn {i + 1}",
                    contractor="Viettel Phú Thọ" if d in XA1 else "Bắc Việt",
                    position=i,
                )
                for i, d in enumerate(XA1 + XA2)
            ],
            remove_missing=False,
        )
        for name, role, communes in (
            ("officer1", Role.COMMUNE_OFFICER, {"xa-01"}),
            ("officer2", Role.COMMUNE_OFFICER, {"xa-02"}),
            ("viewer", Role.DISTRICT_VIEWER, set()),
            ("admin", Role.ADMIN, set()),
        ):
            await repo.add_user(
                name, role=role, communes=frozenset(communes), password_hash=hash_password("x" * 9)
            )
        store = service.store
        http.secrets = {"viewer": "viewer-secret", "bacviet": "bv-secret"}
        for row in (
            ContactRow(key="user:officer1", name="officer1", email="o1@xa01.test", telegram="1001"),
            ContactRow(key="user:officer2", name="officer2", zalo="2002"),
            ContactRow(
                key="user:viewer",
                name="viewer",
                webhook_url=f"{http.base_url}/hook/viewer",
                webhook_secret="viewer-secret",
                lang="en",
            ),
            ContactRow(key="user:admin", name="admin", email="admin@huyen.test"),
            ContactRow(
                key="contractor:Viettel Phú Thọ", name="Viettel Phú Thọ", email="kt@vt.test"
            ),
            ContactRow(
                key="contractor:Bắc Việt",
                name="Bắc Việt",
                webhook_url=f"{http.base_url}/hook/bacviet",
                webhook_secret="bv-secret",
            ),
        ):
            await store.put_contact(row, actor="test")
        for r in RULES:
            await store.put_rule(r, actor="test")
        for d in XA1 + XA2:
            await w.send(d, lambda dev, seq, ts: presence(dev, seq, True, ts), ts=base)
            await w.send(d, lambda dev, seq, ts: state(dev, seq, ts, commune=None), ts=base + 1)
        try:
            yield w
        finally:
            await repo.close()


def emails_to(smtp: SmtpReceiver, addr: str) -> list[Any]:
    return [m for m in smtp.messages if m["To"] == addr]


async def test_commune_outage_one_grouped_message_per_recipient_then_one_resolved(
    world: World,
) -> None:
    w, t = world, world.clock.t
    assert await w.evaluate_and_deliver(t + 60) == 0  # all healthy
    for d in XA1:  # the commune goes dark: fourteen last wills within a few seconds
        await w.send(
            d, lambda dev, seq, ts: presence(dev, seq, False, ts), ts=t + 100 + XA1.index(d)
        )
    for step in (200, 650, 700, 720, 760, 900, 1800):
        await w.evaluate_and_deliver(t + step)
    # One message per recipient and channel, each listing all fourteen clusters.
    assert Counter(m["To"] for m in w.smtp.messages) == {"o1@xa01.test": 1, "kt@vt.test": 1}
    assert all(w.smtp.tls), "every message went over STARTTLS"
    mail = emails_to(w.smtp, "o1@xa01.test")[0]
    assert mail["Subject"] == "[Cảnh báo] Xã Sơn Vi: 14 cụm loa mất kết nối"
    text = mail.get_content()
    assert all(d in text for d in XA1) and "https://loa.huyen.test/devices/dev-a00" in text
    assert "Thôn 1" in text and "https://loa.huyen.test/communes/xa-01" in text
    tg = w.http.of("telegram")
    assert len(tg) == 1 and tg[0].body["chat_id"] == "1001" and "dev-a13" in tg[0].body["text"]
    hooks = w.http.of("webhook")
    assert len(hooks) == 1 and hooks[0].signature_ok
    assert (
        hooks[0].body["subject"] == "[Alert] Xã Sơn Vi: 14 clusters offline"
    )  # viewer reads English
    assert len(hooks[0].body["firing"]) == 14 and hooks[0].body["kind"] == "firing"
    assert w.http.of("zalo") == []  # officer2's commune is fine
    # The commune comes back.
    for d in XA1:
        await w.send(d, lambda dev, seq, ts: presence(dev, seq, True, ts), ts=t + 2000)
        await w.send(d, lambda dev, seq, ts: state(dev, seq, ts, commune=None), ts=t + 2001)
    for step in (2010, 2030, 2045, 2100, 3000, 9000):
        await w.evaluate_and_deliver(t + step)
    assert Counter(m["To"] for m in w.smtp.messages) == {"o1@xa01.test": 2, "kt@vt.test": 2}
    resolved = emails_to(w.smtp, "o1@xa01.test")[1]
    assert resolved["Subject"] == "[Đã khắc phục] Xã Sơn Vi: 14 cụm loa hoạt động trở lại"
    assert len(w.http.of("telegram")) == 2 and len(w.http.of("webhook")) == 2
    assert w.http.of("webhook")[1].body["kind"] == "resolved"
    # Every delivery has its own idempotency key (webhook header, email Message-ID).
    keys = delivery_ids(w.http.of("webhook")) + [m["X-Loa-Delivery"] for m in w.smtp.messages]
    assert len(keys) == len(set(keys)) == 6 and all(keys)
    assert all(m["Message-ID"] == f"<{m['X-Loa-Delivery']}@loa-fleet>" for m in w.smtp.messages)
    counts = await w.service.store.delivery_counts()
    assert {(s, n) for s, _, n in counts} <= {("sent", 4), ("sent", 2)}
    assert sum(n for s, _, n in counts if s == "sent") == 8


async def test_offline_inhibits_stream_and_network_alerts(world: World) -> None:
    w, t = world, world.clock.t
    # dev-b01 loses the stream while online: a real stream alert to officer2 (Zalo).
    await w.send(
        "dev-b01",
        lambda d, s, ts: state(d, s, ts, commune=None, faults=(FaultCode.STREAM_LOST,)),
        ts=t + 10,
    )
    # dev-b02 loses the stream and then its link: only the offline alert, no stream alert.
    await w.send(
        "dev-b02",
        lambda d, s, ts: state(d, s, ts, commune=None, faults=(FaultCode.STREAM_LOST,)),
        ts=t + 10,
    )
    await w.send("dev-b02", lambda d, s, ts: presence(d, s, False, ts), ts=t + 20)
    for step in (400, 700, 660, 800):
        await w.evaluate_and_deliver(t + step)
    zalo = w.http.of("zalo")
    first = [z.body["message"]["text"].splitlines()[0] for z in zalo]
    stream = [z for z, line in zip(zalo, first, strict=True) if "cụm loa hỏng" in line]
    offline = [z for z, line in zip(zalo, first, strict=True) if "mất kết nối" in line]
    assert len(zalo) == 2
    assert len(stream) == 1 and "dev-b01" in stream[0].body["message"]["text"]
    assert "dev-b02" not in stream[0].body["message"]["text"]
    assert len(offline) == 1 and "dev-b02" in offline[0].body["message"]["text"]
    # The offline message still says why: the stream was lost before the silence.
    assert "Không tiếp được sóng của đài" in offline[0].body["message"]["text"]
    assert zalo[0].headers["access_token"] == ZALO_TOKEN
    assert zalo[0].body["recipient"] == {"user_id": "2002"}


async def test_quiet_hours_hold_ordinary_alerts_but_not_critical_ones(world: World) -> None:
    w, t = world, world.clock.t
    store = w.service.store
    local = time.localtime  # not used: quiet hours are in [report] time_zone
    del local
    tz = w.service.tz
    import datetime as dt

    now_local = dt.datetime.fromtimestamp(t + 700, tz)
    start = (now_local - dt.timedelta(hours=1)).strftime("%H:%M")
    end = (now_local + dt.timedelta(hours=2)).strftime("%H:%M")
    await store.put_contact(
        ContactRow(
            key="user:officer1",
            name="officer1",
            email="o1@xa01.test",
            quiet_start=start,
            quiet_end=end,
        ),
        actor="test",
    )
    await w.send("dev-a01", lambda d, s, ts: presence(d, s, False, ts), ts=t + 10)
    await w.evaluate_and_deliver(t + 650)
    await w.evaluate_and_deliver(t + 700)
    assert emails_to(w.smtp, "o1@xa01.test") == []  # held: officer1 sleeps
    assert len(emails_to(w.smtp, "kt@vt.test")) == 1  # the contractor has no quiet hours
    pending = await store.deliveries(states=frozenset({"pending"}))
    assert [d.address for d in pending] == ["o1@xa01.test"]
    assert pending[0].not_before > t + 700
    # A critical rule goes through quiet hours.
    critical = dict(
        RULES[0], name="offline-critical", critical=True, recipients={"users": ["officer1"]}
    )
    await store.put_rule(critical, actor="test")
    await w.evaluate_and_deliver(t + 710)
    await w.evaluate_and_deliver(t + 750)
    got = emails_to(w.smtp, "o1@xa01.test")
    assert len(got) == 1 and got[0]["Subject"].startswith("[Khẩn]")
    # When quiet hours end, the held one is delivered.
    await w.evaluate_and_deliver(pending[0].not_before + 1)
    assert len(emails_to(w.smtp, "o1@xa01.test")) == 2


async def test_overdue_ticket_reaches_its_contractor(world: World) -> None:
    w, t = world, world.clock.t
    await w.send(
        "dev-b02",
        lambda d, s, ts: state(d, s, ts, commune=None, faults=(FaultCode.SIM_ABSENT,)),
        ts=t + 10,
    )
    ticket = await w.repo.open_ticket("dev-b02", actor="officer2", at=t + 20, note="", cause=None)
    await w.repo.start_ticket(
        ticket.id, actor="officer2", at=t + 30, contractor="Bắc Việt", technician="An", note=""
    )
    await w.evaluate_and_deliver(t + 6 * 86400)
    assert w.http.of("webhook") == []  # not overdue yet
    await w.evaluate_and_deliver(t + 30 + 7 * 86400 + 60)
    hooks = [h for h in w.http.of("webhook") if h.path == "/hook/bacviet"]
    assert len(hooks) == 1 and hooks[0].signature_ok
    body = hooks[0].body
    assert body["rule"] == "overdue" and [i["ticket_id"] for i in body["firing"]] == [ticket.id]
    assert "Quá hạn sửa chữa" in body["subject"] and "Bắc Việt" in body["subject"]
    admin = emails_to(w.smtp, "admin@huyen.test")
    assert len(admin) == 1 and f"#{ticket.id}" in admin[0].get_content()
    assert emails_to(w.smtp, "kt@vt.test") == []  # Viettel's tickets are not late


async def test_failures_are_retried_with_backoff_and_permanent_ones_shown(world: World) -> None:
    w, t = world, world.clock.t
    await w.service.store.put_contact(
        ContactRow(key="user:officer1", name="officer1", telegram="1001", zalo="1"), actor="test"
    )
    w.http.fail_next, w.http.fail_status = 2, 503
    await w.send("dev-a03", lambda d, s, ts: presence(d, s, False, ts), ts=t + 10)
    await w.evaluate_and_deliver(t + 650)
    await w.evaluate_and_deliver(t + 700)  # telegram and zalo both get a 503 first
    pending = await w.service.store.deliveries(states=frozenset({"pending"}))
    assert {d.channel for d in pending} == {"telegram", "zalo"}
    assert all(d.attempts == 1 and "503" in d.last_error for d in pending)
    assert all(t + 700 + 2.5 <= d.not_before <= t + 700 + 5 for d in pending)  # base 5 s, jitter
    await w.evaluate_and_deliver(t + 706)
    assert len(w.http.of("telegram")) == 1 and len(w.http.of("zalo")) == 1
    metrics = await w.service.metrics_text()
    assert 'loa_alert_delivery_retries_total{channel="telegram"} 1' in metrics
    assert 'loa_alert_deliveries{state="sent",channel="telegram"} 1' in metrics
    # A permanent refusal (Zalo: invalid user) is not retried: it fails, visibly.
    await w.service.store.put_contact(
        ContactRow(key="user:officer1", name="officer1", zalo="999"), actor="test"
    )
    w.service.settings.zalo  # noqa: B018 - same settings; the receiver refuses the token below
    w.service._bad_rules.clear()
    import dataclasses

    w.service.settings = dataclasses.replace(
        w.service.settings,
        zalo=dataclasses.replace(w.service.settings.zalo, access_token="wrong-token"),
    )
    await w.send("dev-a04", lambda d, s, ts: presence(d, s, False, ts), ts=t + 800)
    await w.evaluate_and_deliver(t + 1450)
    await w.evaluate_and_deliver(t + 1500)
    failed = await w.service.store.deliveries(states=frozenset({"failed"}))
    assert len(failed) == 1 and failed[0].attempts == 1 and "-216" in failed[0].last_error
    metrics = await w.service.metrics_text()
    assert 'loa_alert_deliveries{state="failed",channel="zalo"} 1' in metrics
    assert 'loa_alert_delivery_failures_total{channel="zalo"} 1' in metrics
    assert json.dumps(failed[0].payload)  # the payload stays for inspection and retry
