"""Rule evaluation: pure functions of the fleet, the rules, the groups' state and the clock.

Alertmanager's lessons, in three steps:

1. :func:`firing` -- which alerts hold now (one per cluster, commune or ticket
   and rule), each past its rule's threshold;
2. :func:`inhibit` -- drop the alerts another rule's alert explains (a cluster
   that is offline does not also get a "stream lost" or "network" alert: its
   offline message carries the cause). The source needs only its condition,
   not its threshold: the first minutes of an outage are still an outage;
3. :func:`plan` -- per (rule, group) compare the firing alerts with those last
   notified: after ``group_wait_s`` of change send one message listing the
   group (a commune going dark is one message, not fourteen), repeat it every
   ``repeat_s`` while it fires, and say once when its alerts resolve.

Groups: cluster rules group by commune, ``ticket_overdue`` by contractor (each
contractor hears about its own tickets in one message), ``commune_broken`` by
commune. Nothing here does I/O; ``collector.alerts.service`` feeds it from the
store and stores what it returns, in one transaction.
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from collector.alerts.rules import Rule, RuleKind
from collector.store.base import Ticket
from fleet_protocol import B2Cause


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterView:
    """What the rules need to know about one cluster now."""

    device_id: str
    commune: str
    commune_label: str
    address: str = ""
    broken: bool
    online: bool
    cause: B2Cause | None = None
    #: Event time since which the cluster has been broken (None: working or unknown).
    broken_since: float | None = None
    #: Time since which it has not been heard from (None: online).
    offline_since: float | None = None
    #: In the inventory but never reported: counted broken, never alerted as offline.
    never_reported: bool = False
    #: Contractor of the active ticket, else the inventory's.
    contractor: str = ""
    ticket_id: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetView:
    clusters: tuple[ClusterView, ...]
    active_tickets: tuple[Ticket, ...] = ()
    #: Tickets resolved recently (for ``cluster_repaired``).
    resolved_tickets: tuple[Ticket, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Item:
    """One line of a message: a cluster, a commune or a ticket (JSON-safe)."""

    key: str
    device_id: str = ""
    commune: str = ""
    commune_label: str = ""
    address: str = ""
    cause: str = ""
    since: float | None = None
    contractor: str = ""
    ticket_id: int | None = None
    #: commune_broken: broken and total counts and the broken clusters' ids.
    broken: int = 0
    total: int = 0
    clusters: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "device_id": self.device_id,
            "commune": self.commune,
            "commune_label": self.commune_label,
            "address": self.address,
            "cause": self.cause,
            "since": self.since,
            "contractor": self.contractor,
            "ticket_id": self.ticket_id,
            "broken": self.broken,
            "total": self.total,
            "clusters": list(self.clusters),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Item:
        return cls(
            key=str(d["key"]),
            device_id=str(d.get("device_id", "")),
            commune=str(d.get("commune", "")),
            commune_label=str(d.get("commune_label", "")),
            address=str(d.get("address", "")),
            cause=str(d.get("cause", "")),
            since=d.get("since"),
            contractor=str(d.get("contractor", "")),
            ticket_id=d.get("ticket_id"),
            broken=int(d.get("broken", 0)),
            total=int(d.get("total", 0)),
            clusters=tuple(d.get("clusters", ())),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Alert:
    rule: str
    group: str
    item: Item


def _cluster_item(c: ClusterView, since: float | None) -> Item:
    return Item(
        key=c.device_id,
        device_id=c.device_id,
        commune=c.commune,
        commune_label=c.commune_label,
        address=c.address,
        cause=c.cause.value if c.cause else "",
        since=since,
        contractor=c.contractor,
        ticket_id=c.ticket_id,
    )


def _ticket_item(t: Ticket, labels: Mapping[str, ClusterView], since: float) -> Item:
    c = labels.get(t.device_id)
    return Item(
        key=f"ticket:{t.id}",
        device_id=t.device_id,
        commune=t.commune_code,
        commune_label=c.commune_label if c else t.commune_code,
        address=c.address if c else "",
        cause=t.cause.value if t.cause else "",
        since=since,
        contractor=t.contractor or (c.contractor if c else ""),
        ticket_id=t.id,
    )


def _condition(rule: Rule, fleet: FleetView, now: float) -> list[tuple[Alert, float]]:
    """Alerts whose condition holds, each with how long it has held (seconds)."""
    out: list[tuple[Alert, float]] = []
    kind = rule.kind
    if kind is RuleKind.CLUSTER_BROKEN:
        for c in fleet.clusters:
            if not c.broken or c.broken_since is None or c.never_reported:
                continue
            if rule.causes and c.cause not in rule.causes:
                continue
            out.append(
                (
                    Alert(rule=rule.name, group=c.commune, item=_cluster_item(c, c.broken_since)),
                    now - c.broken_since,
                )
            )
    elif kind is RuleKind.CLUSTER_OFFLINE:
        for c in fleet.clusters:
            if c.online or c.offline_since is None or c.never_reported:
                continue
            out.append(
                (
                    Alert(rule=rule.name, group=c.commune, item=_cluster_item(c, c.offline_since)),
                    now - c.offline_since,
                )
            )
    elif kind is RuleKind.COMMUNE_BROKEN:
        by_commune: dict[str, list[ClusterView]] = defaultdict(list)
        for c in fleet.clusters:
            by_commune[c.commune].append(c)
        for commune, members in by_commune.items():
            broken = [c for c in members if c.broken]
            n, total = len(broken), len(members)
            over_n = rule.more_than is not None and n > rule.more_than
            over_pct = rule.more_than_percent is not None and 100.0 * n / total > (
                rule.more_than_percent
            )
            if not broken or not (over_n or over_pct):
                continue
            sinces = [c.broken_since for c in broken if c.broken_since is not None]
            since = max(sinces) if sinces else now  # it crossed the line when the last one broke
            item = Item(
                key=f"commune:{commune}",
                commune=commune,
                commune_label=members[0].commune_label,
                since=since,
                broken=n,
                total=total,
                clusters=tuple(c.device_id for c in broken),
            )
            out.append((Alert(rule=rule.name, group=commune, item=item), now - since))
    elif kind is RuleKind.TICKET_OVERDUE:
        clusters = {c.device_id: c for c in fleet.clusters}
        for t in fleet.active_tickets:
            if not t.state.active:
                continue
            item = _ticket_item(t, clusters, t.last_progress_at)
            group = item.contractor or f"commune:{t.commune_code}"
            out.append((Alert(rule=rule.name, group=group, item=item), now - t.last_progress_at))
    elif kind is RuleKind.CLUSTER_REPAIRED:
        clusters = {c.device_id: c for c in fleet.clusters}
        for t in fleet.resolved_tickets:
            if t.closed_at is None or now - t.closed_at > rule.after_s:
                continue
            item = _ticket_item(t, clusters, t.closed_at)
            # Held "for" the whole window at once: a repair is news immediately.
            out.append((Alert(rule=rule.name, group=t.commune_code, item=item), rule.after_s))
    return out


def firing(rules: Iterable[Rule], fleet: FleetView, now: float) -> list[Alert]:
    """Alerts of enabled rules whose condition has held at least the rule's threshold."""
    out: list[Alert] = []
    for rule in rules:
        if not rule.enabled:
            continue
        for alert, held in _condition(rule, fleet, now):
            cause = B2Cause(alert.item.cause) if alert.item.cause else None
            if held >= rule.threshold(cause):
                out.append(alert)
    return out


def inhibit(
    alerts: Sequence[Alert], rules: Iterable[Rule], fleet: FleetView, now: float
) -> list[Alert]:
    """``alerts`` without those suppressed by a source rule's alert on the same subject.

    A source alert on a cluster suppresses the target rule's alerts on that
    cluster; a commune-level source (``commune_broken``) suppresses them in
    its commune. Sources count as soon as their condition holds.
    """
    by_name = {r.name: r for r in rules if r.enabled}
    devices: dict[str, set[str]] = defaultdict(set)  # target rule -> inhibited devices
    communes: dict[str, set[str]] = defaultdict(set)  # target rule -> inhibited communes
    for source in by_name.values():
        if not source.inhibits:
            continue
        for alert, _ in _condition(source, fleet, now):
            for target in source.inhibits:
                if alert.item.device_id:
                    devices[target].add(alert.item.device_id)
                else:
                    communes[target].add(alert.item.commune)
    return [
        a
        for a in alerts
        if not (a.item.device_id and a.item.device_id in devices[a.rule])
        and a.item.commune not in communes[a.rule]
    ]


class NoticeKind(enum.StrEnum):
    FIRING = "firing"  # new alerts in the group (the message lists all still firing)
    REPEAT = "repeat"  # still firing, re-notified on schedule
    RESOLVED = "resolved"  # every alert of the group resolved
    REPORT = "report"  # the monthly B2 report (not produced by rules)


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupState:
    """What was last said about one (rule, group): stored between evaluations."""

    rule: str
    group: str
    #: Items last notified as firing, by key.
    members: Mapping[str, Item] = field(default_factory=dict)
    #: Since when the firing set differs from ``members`` (None: it does not).
    pending_since: float | None = None
    last_sent_at: float | None = None
    #: Messages sent for this group so far (part of each message's key).
    seq: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Notice:
    """One message to send about a group; ``recipients.address`` splits it per recipient."""

    key: str
    rule: str
    group: str
    kind: NoticeKind
    at: float
    #: Firing now (FIRING, REPEAT) -- all of the group's, new ones flagged in ``new``.
    firing: tuple[Item, ...] = ()
    new: frozenset[str] = frozenset()
    #: Resolved since the last message (RESOLVED, and FIRING updates when send_resolved).
    resolved: tuple[Item, ...] = ()
    critical: bool = False


def notice_key(group: tuple[str, str], now: float, seq: int) -> str:
    """A notice's unique key: a group forgotten after resolving starts its seq again,
    so the time is part of it."""
    return f"{group[0]}/{group[1]}/{int(now * 1000)}/{seq}"


def plan(
    rules: Iterable[Rule],
    alerts: Sequence[Alert],
    states: Mapping[tuple[str, str], GroupState],
    now: float,
) -> tuple[dict[tuple[str, str], GroupState | None], list[Notice]]:
    """New group states (None = forget the group) and the notices to send now."""
    by_name = {r.name: r for r in rules}
    current: dict[tuple[str, str], dict[str, Item]] = defaultdict(dict)
    for a in alerts:
        current[(a.rule, a.group)][a.item.key] = a.item
    changes: dict[tuple[str, str], GroupState | None] = {}
    notices: list[Notice] = []
    for gk in sorted(set(current) | set(states)):
        rule = by_name.get(gk[0])
        state = states.get(gk) or GroupState(rule=gk[0], group=gk[1])
        if rule is None or not rule.enabled:
            changes[gk] = None  # a deleted or disabled rule says nothing more
            continue
        now_items = current.get(gk, {})
        added = set(now_items) - set(state.members)
        gone = set(state.members) - set(now_items)
        # Items still firing keep their latest facts (a cause may be corrected).
        new_state = state
        if added or gone:
            pending = state.pending_since if state.pending_since is not None else now
            if now - pending >= rule.group_wait_s:
                seq = state.seq + 1
                if now_items and (added or rule.send_resolved):
                    # New alerts, or some resolved while others still fire: one
                    # update listing both, so each resolution is said once.
                    kind: NoticeKind | None = NoticeKind.FIRING
                elif not now_items and rule.send_resolved:
                    kind = NoticeKind.RESOLVED
                else:
                    kind = None  # resolutions nobody wants to hear
                if kind is not None:
                    notices.append(
                        Notice(
                            key=notice_key(gk, now, seq),
                            rule=gk[0],
                            group=gk[1],
                            kind=kind,
                            at=now,
                            firing=tuple(now_items[k] for k in sorted(now_items)),
                            new=frozenset(added),
                            resolved=tuple(state.members[k] for k in sorted(gone))
                            if rule.send_resolved
                            else (),
                            critical=rule.critical,
                        )
                    )
                new_state = replace(
                    state,
                    members=dict(now_items),
                    pending_since=None,
                    last_sent_at=now if kind is not None else state.last_sent_at,
                    seq=seq if kind is not None else state.seq,
                )
            elif state.pending_since is None:
                new_state = replace(state, pending_since=now)
        elif state.pending_since is not None:
            new_state = replace(state, pending_since=None)  # the change undid itself
        elif (
            now_items
            and rule.repeat_s > 0
            and state.last_sent_at is not None
            and now - state.last_sent_at >= rule.repeat_s
        ):
            seq = state.seq + 1
            notices.append(
                Notice(
                    key=notice_key(gk, now, seq),
                    rule=gk[0],
                    group=gk[1],
                    kind=NoticeKind.REPEAT,
                    at=now,
                    firing=tuple(now_items[k] for k in sorted(now_items)),
                    critical=rule.critical,
                )
            )
            new_state = replace(state, last_sent_at=now, seq=seq, members=dict(now_items))
        if not new_state.members and new_state.pending_since is None and not now_items:
            if gk in states:
                changes[gk] = None  # nothing firing, nothing pending: forget the group
            continue
        if new_state != state or gk not in states:
            changes[gk] = new_state
    return changes, notices
