"""Pure alert evaluation: thresholds, grouping, inhibition, repeats, resolution, recipients."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest

from collector.alerts import evaluate as ev
from collector.alerts.recipients import Channel, Contact, QuietHours, address
from collector.alerts.render import render, shorten
from collector.alerts.rules import DEFAULT_RULES, RuleError, rule_from_dict, rule_to_dict
from collector.store.base import Role, Ticket, TicketState
from fleet_protocol import B2Cause

T0 = 1_780_000_000.0
TZ = dt.timezone(dt.timedelta(hours=7))


def cluster(i: int, commune: str = "xa-01", **kw: object) -> ev.ClusterView:
    base = {
        "device_id": f"dev-{commune[-2:]}-{i:02d}",
        "commune": commune,
        "commune_label": "Xã Sơn Vi" if commune == "xa-01" else "Thị trấn Lâm Thao",
        "broken": False,
        "online": True,
        "contractor": "Viettel Phú Thọ",
    }
    base.update(kw)
    return ev.ClusterView(**base)  # type: ignore[arg-type]


def dark(c: ev.ClusterView, since: float, cause: B2Cause = B2Cause.UNKNOWN) -> ev.ClusterView:
    return replace(
        c, broken=True, online=False, cause=cause, broken_since=since, offline_since=since
    )


OFFLINE = rule_from_dict(
    {
        "name": "offline",
        "kind": "cluster_offline",
        "after_s": 600,
        "group_wait_s": 30,
        "repeat_s": 3600,
        "inhibits": ["stream-net"],
        "recipients": {"roles": ["commune_officer"]},
    }
)
STREAM_NET = rule_from_dict(
    {
        "name": "stream-net",
        "kind": "cluster_broken",
        "causes": ["no_station_signal", "unstable_network"],
        "after_s": 0,
        "group_wait_s": 0,
        "recipients": {"roles": ["commune_officer"]},
    }
)


def run(rules, fleet, states, now):  # type: ignore[no-untyped-def]
    alerts = ev.inhibit(ev.firing(rules, fleet, now), rules, fleet, now)
    changes, notices = ev.plan(rules, alerts, states, now)
    new = dict(states)
    for k, v in changes.items():
        if v is None:
            new.pop(k, None)
        else:
            new[k] = v
    return new, notices


def test_commune_outage_is_one_grouped_message_then_one_resolved() -> None:
    rules = [OFFLINE]
    healthy = [cluster(i) for i in range(14)] + [cluster(1, "xa-02")]
    states: dict = {}
    outage = [dark(c, T0) if c.commune == "xa-01" else c for c in healthy]
    fleet = ev.FleetView(clusters=tuple(outage))
    sent = []
    # Every 10 s for 20 minutes of outage: below the threshold, then group_wait, then one.
    for step in range(0, 1200, 10):
        states, notices = run(rules, fleet, states, T0 + step)
        sent += notices
    assert [n.kind for n in sent] == [ev.NoticeKind.FIRING]
    assert len(sent[0].firing) == 14 and sent[0].group == "xa-01"
    assert sent[0].at == pytest.approx(T0 + 630)  # 600 s threshold + 30 s group wait
    back = ev.FleetView(clusters=tuple(healthy))
    sent = []
    for step in range(1200, 2400, 10):
        states, notices = run(rules, back, states, T0 + step)
        sent += notices
    assert [n.kind for n in sent] == [ev.NoticeKind.RESOLVED]
    assert len(sent[0].resolved) == 14
    assert states == {}  # nothing firing: the group is forgotten


def test_repeat_while_still_broken_and_partial_resolution_said_once() -> None:
    rules = [OFFLINE]
    clusters = [dark(cluster(i), T0) for i in range(3)]
    states: dict = {}
    sent = []
    for step in range(0, 2 * 3600 + 700, 60):
        states, notices = run(rules, ev.FleetView(clusters=tuple(clusters)), states, T0 + step)
        sent += notices
    assert [n.kind for n in sent] == [
        ev.NoticeKind.FIRING,
        ev.NoticeKind.REPEAT,
        ev.NoticeKind.REPEAT,
    ]
    clusters[0] = cluster(0)  # one comes back
    sent = []
    for step in range(8000, 8200, 10):
        states, notices = run(rules, ev.FleetView(clusters=tuple(clusters)), states, T0 + step)
        sent += notices
    assert len(sent) == 1 and [i.key for i in sent[0].resolved] == ["dev-01-00"]
    assert len(sent[0].firing) == 2 and not sent[0].new


def test_offline_inhibits_the_stream_and_network_alerts_it_causes() -> None:
    rules = [OFFLINE, STREAM_NET]
    offline_stream = dark(cluster(1), T0, B2Cause.NO_STATION_SIGNAL)
    online_stream = replace(
        cluster(2), broken=True, cause=B2Cause.NO_STATION_SIGNAL, broken_since=T0
    )
    fleet = ev.FleetView(clusters=(offline_stream, online_stream))
    # Early in the outage (offline below its threshold) the inhibition already holds.
    alerts = ev.inhibit(ev.firing(rules, fleet, T0 + 60), rules, fleet, T0 + 60)
    assert [(a.rule, a.item.device_id) for a in alerts] == [("stream-net", "dev-01-02")]
    alerts = ev.inhibit(ev.firing(rules, fleet, T0 + 900), rules, fleet, T0 + 900)
    assert sorted((a.rule, a.item.device_id) for a in alerts) == [
        ("offline", "dev-01-01"),
        ("stream-net", "dev-01-02"),
    ]
    # Without the inhibition the offline cluster would get both.
    plain = [replace(OFFLINE, inhibits=()), STREAM_NET]
    assert len(ev.inhibit(ev.firing(plain, fleet, T0 + 900), plain, fleet, T0 + 900)) == 3


def test_per_cause_threshold_and_commune_rule() -> None:
    rule = rule_from_dict(
        {
            "name": "broken",
            "kind": "cluster_broken",
            "after_s": 6 * 3600,
            "cause_after_s": {"power": 3600},
        }
    )
    power = replace(cluster(1), broken=True, cause=B2Cause.POWER, broken_since=T0)
    amp = replace(cluster(2), broken=True, cause=B2Cause.AMPLIFIER_SPEAKER, broken_since=T0)
    fleet = ev.FleetView(clusters=(power, amp))
    assert [a.item.device_id for a in ev.firing([rule], fleet, T0 + 3700)] == ["dev-01-01"]
    assert len(ev.firing([rule], fleet, T0 + 6 * 3600)) == 2
    commune = rule_from_dict(
        {"name": "commune", "kind": "commune_broken", "more_than": 1, "more_than_percent": 90}
    )
    alerts = ev.firing([commune], ev.FleetView(clusters=(power, amp, cluster(3))), T0)
    assert len(alerts) == 1 and alerts[0].item.broken == 2 and alerts[0].item.total == 3
    pct = replace(commune, more_than=None, more_than_percent=70.0)
    assert ev.firing([pct], ev.FleetView(clusters=(power, amp, cluster(3))), T0) == []


def _ticket(tid: int, device: str, contractor: str, progress: float) -> Ticket:
    return Ticket(
        id=tid,
        device_id=device,
        commune_code="xa-01",
        state=TicketState.IN_REPAIR,
        cause=B2Cause.POWER,
        opened_at=progress,
        opened_by="officer",
        contractor=contractor,
        technician="",
        started_at=progress,
        closed_at=None,
        last_progress_at=progress,
        note="",
    )


def test_overdue_tickets_group_by_contractor_and_reach_only_their_contractor() -> None:
    rule = rule_from_dict(
        {
            "name": "overdue",
            "kind": "ticket_overdue",
            "after_s": 7 * 86400,
            "group_wait_s": 0,
            "recipients": {"contractor": True, "roles": ["admin"]},
        }
    )
    fleet = ev.FleetView(
        clusters=(cluster(1), cluster(2)),
        active_tickets=(
            _ticket(1, "dev-01-01", "Viettel Phú Thọ", T0),
            _ticket(2, "dev-01-02", "Bắc Việt", T0),
            _ticket(3, "dev-01-03", "Bắc Việt", T0 + 6 * 86400),
        ),
    )
    _, notices = run([rule], fleet, {}, T0 + 8 * 86400)
    assert sorted(n.group for n in notices) == ["Bắc Việt", "Viettel Phú Thọ"]
    contacts = [
        Contact(key="contractor:Bắc Việt", name="Bắc Việt", channels={Channel.EMAIL: "bv@x.vn"}),
        Contact(key="contractor:Other", name="Other", channels={Channel.EMAIL: "o@x.vn"}),
        Contact(key="user:boss", name="boss", role=Role.ADMIN, channels={Channel.EMAIL: "b@x.vn"}),
    ]
    bac = next(n for n in notices if n.group == "Bắc Việt")
    got = {
        a.contact.key: [i.ticket_id for i in a.firing] for a in address(bac, rule, contacts, tz=TZ)
    }
    assert got == {"contractor:Bắc Việt": [2], "user:boss": [2]}
    msg = render(bac, rule.kind, bac.firing, (), lang="vi", tz=TZ, public_url="https://loa.test")
    assert "Quá hạn sửa chữa" in msg.subject and "Bắc Việt" in msg.subject
    assert "#2" in msg.text and "https://loa.test/devices/dev-01-02" in msg.text


def test_recipients_scope_subscription_and_quiet_hours() -> None:
    notice = ev.Notice(
        key="k",
        rule="offline",
        group="xa-01",
        kind=ev.NoticeKind.FIRING,
        at=dt.datetime(2026, 12, 2, 23, 30, tzinfo=TZ).timestamp(),
        firing=(ev.Item(key="a", device_id="a", commune="xa-01", commune_label="Xã Sơn Vi"),),
        new=frozenset({"a"}),
    )
    quiet = QuietHours.parse("22:00", "06:30")
    contacts = [
        Contact(key="user:o1", name="o1", role=Role.COMMUNE_OFFICER, scope=frozenset({"xa-01"}),
                channels={Channel.TELEGRAM: "1"}, quiet=quiet),
        Contact(key="user:o2", name="o2", role=Role.COMMUNE_OFFICER, scope=frozenset({"xa-02"}),
                channels={Channel.TELEGRAM: "2"}),
        Contact(key="user:t", name="t", role=Role.TECHNICIAN, communes=frozenset({"xa-03"}),
                channels={Channel.ZALO: "3"}),
        Contact(key="user:nochan", name="nochan", role=Role.COMMUNE_OFFICER),
    ]  # fmt: skip
    got = address(notice, OFFLINE, contacts, tz=TZ)
    assert [a.contact.key for a in got] == ["user:o1"]
    release = dt.datetime.fromtimestamp(got[0].not_before, TZ)
    assert (release.day, release.hour, release.minute) == (3, 6, 30)
    critical = replace(notice, critical=True)
    assert address(critical, OFFLINE, contacts, tz=TZ)[0].not_before == notice.at


def test_rules_validate_and_round_trip() -> None:
    for data in DEFAULT_RULES:
        rule = rule_from_dict(data)
        assert rule_from_dict(rule_to_dict(rule)) == rule
    bad = [
        ({"name": "X", "kind": "cluster_offline"}, "name"),
        ({"name": "x", "kind": "nope"}, "kind"),
        ({"name": "x", "kind": "commune_broken"}, "more_than"),
        ({"name": "x", "kind": "cluster_broken", "causes": ["fire"]}, "causes"),
        ({"name": "x", "kind": "cluster_broken", "after_s": -1}, "after_s"),
        ({"name": "x", "kind": "cluster_broken", "recipients": {"roles": ["king"]}},
         "recipients.roles"),
        ({"name": "x", "kind": "cluster_broken", "inhibits": ["x"]}, "inhibits"),
        ({"name": "x", "kind": "cluster_broken", "extra": 1}, "extra"),
    ]  # fmt: skip
    for data, field in bad:
        with pytest.raises(RuleError) as info:
            rule_from_dict(data)
        assert info.value.field == field


def test_vietnamese_message_names_cluster_commune_cause_since_and_links() -> None:
    item = ev.Item(
        key="dev-01",
        device_id="dev-01",
        commune="xa-01",
        commune_label="Xã Sơn Vi",
        cause="sim_failure",
        since=dt.datetime(2026, 12, 1, 8, 5, tzinfo=TZ).timestamp(),
        contractor="Viettel Phú Thọ",
    )
    notice = ev.Notice(key="k", rule="r", group="xa-01", kind=ev.NoticeKind.FIRING, at=T0,
                       firing=(item,), new=frozenset({"dev-01"}))  # fmt: skip
    vi = render(notice, OFFLINE.kind, (item,), (), lang="vi", tz=TZ, public_url="https://l.vn/")
    assert vi.subject == "[Cảnh báo] Xã Sơn Vi: 1 cụm loa mất kết nối"
    assert "Cháy SIM" in vi.text and "08:05 01/12/2026" in vi.text
    assert "https://l.vn/devices/dev-01" in vi.text and "https://l.vn/communes/xa-01" in vi.text
    en = render(notice, OFFLINE.kind, (item,), (), lang="en", tz=TZ, public_url="https://l.vn")
    assert en.subject == "[Alert] Xã Sơn Vi: 1 clusters offline"
    many = tuple(replace(item, key=f"d{i}", device_id=f"dev-{i:03d}") for i in range(200))
    long = render(replace(notice, firing=many), OFFLINE.kind, many, (), lang="vi", tz=TZ,
                  public_url="https://l.vn")  # fmt: skip
    assert all(f"dev-{i:03d}" in long.text for i in range(200))  # email: the whole list
    short = shorten(long.text, 2000, "vi")
    assert len(short) <= 2000 and "mục khác" in short and "dev-000" in short
    assert short.endswith(long.text.rsplit("\n\n", 1)[1])  # links and footer kept
