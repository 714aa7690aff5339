"""Alert pages: self-service settings for every user, rules and failures for admins.

Through the real app factory, auth (session cookie + CSRF header) and store,
with the dashboard tests' seeded fleet and users (tests/collector/test_web.py).
"""

from __future__ import annotations

import json
import time

from collector.alerts.service import ALERTS
from collector.store.alerts import DeliveryDraft, NotificationDraft
from tests.collector import test_web
from tests.collector.test_web import Site

#: The dashboard tests' seeded site, under another name so it is not shadowed.
web_site = test_web.site

RULE = {
    "name": "xa01-offline",
    "kind": "cluster_offline",
    "after_s": 1800,
    "recipients": {"roles": ["commune_officer"], "communes": ["xa-01"], "contractor": True},
}


async def test_users_manage_their_own_channels_communes_and_quiet_hours(web_site: Site) -> None:
    csrf = await web_site.login("officer1")
    status, page = await web_site.get("/me/alerts")
    assert status == 200 and "Nhận cảnh báo của tôi" in page and 'data-api="/me/alerts"' in page
    good = {
        "email": "can-bo@xa01.test",
        "telegram": "123456789",
        "zalo": "8189000477219660231",
        "webhook_url": "https://hooks.xa01.test/loa",
        "communes": ["xa-01"],
        "quiet_start": "22:00",
        "quiet_end": "06:00",
        "lang": "en",
    }
    assert (await web_site.post("/me/alerts", good, None))[0] == 403  # no CSRF header
    status, saved = await web_site.post("/me/alerts", good, csrf)
    assert status == 200 and saved["saved"] == "user:officer1" and len(saved["webhook_secret"]) > 30
    for field, value in (
        ("email", "not an address"),
        ("telegram", "chat; DROP TABLE"),
        ("zalo", "abc"),
        ("webhook_url", "http://hooks.example.com/x"),  # plain http only to this machine
        ("webhook_url", "https://user:pw@hooks.example.com/x"),
        ("communes", ["xa-02"]),  # outside officer1's communes
        ("quiet_start", "25:00"),
        ("lang", "fr"),
    ):
        status, err = await web_site.post("/me/alerts", {**good, field: value}, csrf)
        assert status == 400 and err["field"] == field, (field, err)
    _, page = await web_site.get("/me/alerts")
    assert 'value="can-bo@xa01.test"' in page and 'value="22:00"' in page
    assert saved["webhook_secret"] in page
    store = web_site.app[ALERTS].store
    row = await store.contact("user:officer1")
    assert row.communes == frozenset({"xa-01"}) and row.lang == "en"
    # Saving again keeps the secret unless a new one is asked for.
    _, again = await web_site.post("/me/alerts", good, csrf)
    assert again["webhook_secret"] == saved["webhook_secret"]
    _, fresh = await web_site.post("/me/alerts", {**good, "new_secret": True}, csrf)
    assert fresh["webhook_secret"] != saved["webhook_secret"]
    # Another user's settings are theirs: the viewer starts empty.
    csrf = await web_site.login("viewer")
    _, page = await web_site.get("/me/alerts")
    assert "can-bo@xa01.test" not in page


async def test_only_admins_manage_rules_contractors_and_deliveries(web_site: Site) -> None:
    csrf = await web_site.login("officer1")
    status, _ = await web_site.get("/alerts")
    assert status == 403
    for path in ("/alerts/rules", "/alerts/contractors", "/alerts/report/send"):
        assert (await web_site.post(path, {"rule": json.dumps(RULE)}, csrf))[0] == 403, path
    csrf = await web_site.login("admin")
    assert (await web_site.post("/alerts/rules", {"rule": json.dumps(RULE)}, None))[0] == 403
    status, stored = await web_site.post("/alerts/rules", {"rule": json.dumps(RULE)}, csrf)
    assert status == 200 and stored["recipients"]["communes"] == ["xa-01"]
    status, err = await web_site.post("/alerts/rules", {"rule": '{"name": "x", "kind": "?"}'}, csrf)
    assert status == 400 and err["field"] == "rule.kind"
    status, err = await web_site.post("/alerts/rules", {"rule": "{not json"}, csrf)
    assert status == 400 and err["field"] == "rule"
    status, _ = await web_site.post(
        "/alerts/contractors",
        {"name": "<b>Bắc Việt</b>", "email": "kt@bacviet.test", "webhook_url": ""},
        csrf,
    )
    assert status == 200
    status, page = await web_site.get("/alerts")
    assert status == 200 and "xa01-offline" in page
    assert "&lt;b&gt;Bắc Việt&lt;/b&gt;" in page and "<b>Bắc Việt</b>" not in page
    assert (await web_site.post("/alerts/rules/xa01-offline/delete", {}, csrf))[0] == 200
    assert (await web_site.post("/alerts/rules/xa01-offline/delete", {}, csrf))[0] == 404
    audit = [a["action"] for a in await web_site.repo.audit_log()]
    assert "alerts.rule.put" in audit and "alerts.rule.delete" in audit


async def test_failed_deliveries_show_on_the_page_and_in_metrics_and_can_be_retried(
    web_site: Site,
) -> None:
    store = web_site.app[ALERTS].store
    now = time.time()
    await store.enqueue(
        [
            NotificationDraft(
                key="offline/xa-01/1/1",
                rule="offline",
                group="xa-01",
                kind="firing",
                critical=False,
                created_at=now,
                data={},
                deliveries=(
                    DeliveryDraft(
                        recipient="user:officer1",
                        channel="telegram",
                        address="42",
                        idem_key="k-1",
                        lang="vi",
                        subject="[Cảnh báo] Xã Sơn Vi: 1 cụm loa mất kết nối",
                        body="...",
                        payload={},
                        not_before=now,
                    ),
                ),
            )
        ]
    )
    (claimed,) = await store.claim("w", now=now, lease_s=60, limit=10)
    await store.mark_failed(
        claimed.id, worker="w", error="telegram chat 42: HTTP 400 chat not found"
    )
    csrf = await web_site.login("admin")
    _, page = await web_site.get("/alerts")
    assert "chat not found" in page and f"/alerts/deliveries/{claimed.id}/retry" in page
    async with web_site.client.get("/metrics") as resp:
        metrics = await resp.text()
    assert 'loa_alert_deliveries{state="failed",channel="telegram"} 1' in metrics
    status, _ = await web_site.post(f"/alerts/deliveries/{claimed.id}/retry", {}, csrf)
    assert status == 200
    assert [d.state for d in await store.deliveries()] == ["pending"]
    assert (await web_site.post(f"/alerts/deliveries/{claimed.id}/retry", {}, csrf))[0] == 404


async def test_report_on_demand_from_the_dashboard_is_queued_and_logged(web_site: Site) -> None:
    csrf = await web_site.login("admin")
    status, err = await web_site.post("/alerts/report/send", {"to": "x@y"}, csrf)
    assert status == 400 and err["field"] == "to"
    status, err = await web_site.post("/alerts/report/send", {"to": ""}, csrf)
    assert status == 400 and "no recipients" in err["error"]
    status, ok = await web_site.post(
        "/alerts/report/send", {"to": "vp@huyen.test, tp@huyen.test", "as_of": "2026-10-31"}, csrf
    )
    assert status == 202 and ok["as_of"] == "2026-10-31"
    assert ok["recipients"] == ["vp@huyen.test", "tp@huyen.test"]
    store = web_site.app[ALERTS].store
    queued = await store.deliveries(notification_key=ok["queued"])
    assert len(queued) == 2 and all(d.attachment and d.attachment[:2] == b"PK" for d in queued)
    assert all(d.attachment_name == "b2-2026-10-31.xlsx" for d in queued)
    _, page = await web_site.get("/alerts")
    assert "vp@huyen.test" in page and "dashboard" in page
