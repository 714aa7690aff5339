"""Who receives what: recipients of a notice, the items each may see, quiet hours. Pure.

A recipient is a user (with the channels, communes and quiet hours they set
on their own settings page) or a contractor contact (kept by admins). For a
notice, each recipient the rule names gets only the items it may see: a
commune officer the clusters of their communes, a contractor its own
clusters and tickets. Outside a recipient's quiet hours a delivery is due at
once; inside them it waits for their end, unless the rule is critical.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from collector.alerts.evaluate import Item, Notice
from collector.alerts.rules import Rule
from collector.store.base import Role

_HHMM: Final = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")


class Channel(enum.StrEnum):
    EMAIL = "email"
    TELEGRAM = "telegram"
    ZALO = "zalo"
    WEBHOOK = "webhook"


@dataclass(frozen=True, slots=True, kw_only=True)
class QuietHours:
    """Local minutes of the day [start, end); wraps midnight when start > end."""

    start_min: int
    end_min: int

    @classmethod
    def parse(cls, start: str, end: str) -> QuietHours | None:
        """From "22:00", "06:30" (None when both are empty); ValueError naming the bad one."""
        if not start and not end:
            return None
        values = []
        for name, text in (("quiet_start", start), ("quiet_end", end)):
            m = _HHMM.fullmatch(text)
            if not m:
                raise ValueError(f"{name}: expected HH:MM (00:00..23:59), got {text[:20]!r}")
            values.append(int(m.group(1)) * 60 + int(m.group(2)))
        if values[0] == values[1]:
            raise ValueError("quiet_end: must differ from quiet_start")
        return cls(start_min=values[0], end_min=values[1])

    def contains(self, minute: int) -> bool:
        if self.start_min < self.end_min:
            return self.start_min <= minute < self.end_min
        return minute >= self.start_min or minute < self.end_min

    def release(self, now: float, tz: dt.tzinfo) -> float:
        """``now`` outside quiet hours; inside them, the moment they end (local time)."""
        local = dt.datetime.fromtimestamp(now, tz)
        minute = local.hour * 60 + local.minute
        if not self.contains(minute):
            return now
        end = local.replace(hour=self.end_min // 60, minute=self.end_min % 60, second=0)
        end = end.replace(microsecond=0)
        if end <= local:
            end += dt.timedelta(days=1)
        # Re-anchor in the zone: a naive "+1 day" keeps wall time across DST changes.
        return dt.datetime(
            end.year, end.month, end.day, end.hour, end.minute, tzinfo=tz
        ).timestamp()


@dataclass(frozen=True, slots=True, kw_only=True)
class Contact:
    """A recipient and where to reach them."""

    #: "user:<name>" or "contractor:<name>": the recipient part of delivery keys.
    key: str
    name: str
    role: Role | None = None  # None for contractors
    #: Communes the user may see (None = all); from their role and account.
    scope: frozenset[str] | None = None
    #: Communes the recipient wants to hear about (empty = all in scope).
    communes: frozenset[str] = frozenset()
    #: Channel -> address (email address, Telegram chat id, Zalo user id, webhook URL).
    channels: dict[Channel, str] = field(default_factory=dict)
    webhook_secret: str = ""
    lang: str = ""
    quiet: QuietHours | None = None
    disabled: bool = False

    @property
    def is_contractor(self) -> bool:
        return self.key.startswith("contractor:")


@dataclass(frozen=True, slots=True, kw_only=True)
class Addressed:
    """One recipient's share of a notice, and when it may be sent."""

    contact: Contact
    firing: tuple[Item, ...]
    resolved: tuple[Item, ...]
    not_before: float


def _visible(item: Item, contact: Contact, rule: Rule, as_contractor: bool) -> bool:
    if rule.recipients.communes and item.commune not in rule.recipients.communes:
        return False
    if as_contractor:
        return bool(item.contractor) and item.contractor == contact.name
    if contact.scope is not None and item.commune not in contact.scope:
        return False
    return not contact.communes or item.commune in contact.communes


def address(
    notice: Notice,
    rule: Rule,
    contacts: Sequence[Contact],
    *,
    tz: dt.tzinfo,
) -> list[Addressed]:
    """The recipients of ``notice`` under ``rule``, each with the items they may see.

    Recipients with no channel, disabled users and recipients left with no
    item get nothing. A user named by the rule and also matching a role is
    one recipient.
    """
    wanted = rule.recipients
    out: list[Addressed] = []
    for c in contacts:
        if c.disabled or not c.channels:
            continue
        if c.is_contractor:
            if not wanted.contractor:
                continue
            as_contractor = True
        else:
            if not (c.role in wanted.roles or c.name in wanted.users):
                continue
            as_contractor = False
        firing = tuple(i for i in notice.firing if _visible(i, c, rule, as_contractor))
        resolved = tuple(i for i in notice.resolved if _visible(i, c, rule, as_contractor))
        if (
            notice.kind == "firing"
            and not resolved
            and not any(i.key in notice.new for i in firing)
        ):
            continue  # nothing new for this recipient: their part did not change
        if not firing and not resolved:
            continue
        release = notice.at
        if c.quiet is not None and not notice.critical:
            release = c.quiet.release(notice.at, tz)
        out.append(Addressed(contact=c, firing=firing, resolved=resolved, not_before=release))
    return out


def channels_of(contact: Contact, enabled: Iterable[Channel]) -> list[tuple[Channel, str]]:
    """The contact's channels that this collector can send on, in a stable order."""
    on = set(enabled)
    return [(ch, contact.channels[ch]) for ch in Channel if ch in contact.channels and ch in on]
