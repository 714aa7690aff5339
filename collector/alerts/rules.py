"""Alert rules as data: what to notify about, and whom.

A rule is stored as JSON in the store (``alert_rules``), edited by admins on
the dashboard; :func:`rule_from_dict` validates one and raises ``RuleError``
naming the field. :data:`DEFAULT_RULES` are stored when a database has none.

Kinds:

- ``cluster_broken``: a cluster broken for longer than ``after_s`` (or the
  per-cause ``cause_after_s``), optionally only for ``causes``;
- ``cluster_offline``: a cluster offline (not heard from) for longer than ``after_s``;
- ``commune_broken``: a commune with more than ``more_than`` broken clusters or
  more than ``more_than_percent`` % of its clusters broken;
- ``ticket_overdue``: an active repair ticket without progress for ``after_s``;
- ``cluster_repaired``: a repair ticket resolved within the last ``after_s``.

Recipients: users by ``roles`` or by name (``users``), limited to ``communes``
when given (and always to what each user may see), and with ``contractor``
the contractor of each cluster's ticket (or the inventory's contractor).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from collector.store.base import Role
from fleet_protocol import B2Cause

NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_MAX_LIST: Final = 200


class RuleError(ValueError):
    """A bad rule; ``field`` names the offending key."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class RuleKind(enum.StrEnum):
    CLUSTER_BROKEN = "cluster_broken"
    CLUSTER_OFFLINE = "cluster_offline"
    COMMUNE_BROKEN = "commune_broken"
    TICKET_OVERDUE = "ticket_overdue"
    CLUSTER_REPAIRED = "cluster_repaired"


@dataclass(frozen=True, slots=True, kw_only=True)
class Recipients:
    roles: tuple[Role, ...] = ()
    #: Only clusters of these communes ("" = all the recipient may see).
    communes: tuple[str, ...] = ()
    #: The contractor of each cluster (ticket's, else the inventory's).
    contractor: bool = False
    #: Named users (whatever their role).
    users: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    name: str
    kind: RuleKind
    enabled: bool = True
    #: Critical rules pass through recipients' quiet hours.
    critical: bool = False
    #: How long the condition must hold (broken, offline, no progress; for
    #: ``cluster_repaired``: how recent the repair must be).
    after_s: float = 0.0
    #: cluster_broken: only these causes (empty = any).
    causes: tuple[B2Cause, ...] = ()
    #: cluster_broken: a threshold per cause, overriding ``after_s``.
    cause_after_s: Mapping[B2Cause, float] = field(default_factory=dict)
    #: commune_broken: more than this many broken clusters (None = not used).
    more_than: int | None = None
    #: commune_broken: more than this share of clusters broken, percent (None = not used).
    more_than_percent: float | None = None
    #: Re-notify a still-firing group this often (0 = never).
    repeat_s: float = 0.0
    #: Say once when the group's alerts resolve.
    send_resolved: bool = True
    #: Collect alerts joining (or leaving) a group this long before one message.
    group_wait_s: float = 30.0
    #: Rules whose alerts this rule's firing alerts suppress on the same cluster
    #: (or, for a commune-level rule, in the same commune).
    inhibits: tuple[str, ...] = ()
    recipients: Recipients = field(default_factory=Recipients)

    def threshold(self, cause: B2Cause | None) -> float:
        if cause is not None and cause in self.cause_after_s:
            return self.cause_after_s[cause]
        return self.after_s


def _num(data: Mapping[str, Any], key: str, default: float, *, lo: float = 0.0) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RuleError(key, "expected a number")
    if not lo <= float(value) <= 10 * 365 * 86400:
        raise RuleError(key, f"must be between {lo:g} and ten years")
    return float(value)


def _bool(data: Mapping[str, Any], key: str, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise RuleError(key, "expected true or false")
    return value


def _strings(data: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = data.get(key, [])
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise RuleError(key, "expected a list of strings")
    if len(value) > _MAX_LIST:
        raise RuleError(key, f"at most {_MAX_LIST} entries")
    out = tuple(dict.fromkeys(v.strip() for v in value if v.strip()))
    if any(len(v) > 128 or not v.isprintable() for v in out):
        raise RuleError(key, "entries are 1..128 printable characters")
    return out


def _cause(value: str, key: str) -> B2Cause:
    try:
        return B2Cause(value)
    except ValueError:
        raise RuleError(key, f"unknown cause {value[:40]!r}") from None


def rule_from_dict(data: Mapping[str, Any]) -> Rule:
    """A validated Rule from JSON-like data (dashboard form, stored row); RuleError otherwise."""
    if not isinstance(data, Mapping):
        raise RuleError("$", "expected an object")
    known = {
        "name", "kind", "enabled", "critical", "after_s", "causes", "cause_after_s",
        "more_than", "more_than_percent", "repeat_s", "send_resolved", "group_wait_s",
        "inhibits", "recipients",
    }  # fmt: skip
    unknown = sorted(set(data) - known)
    if unknown:
        raise RuleError(unknown[0][:40], "unknown field")
    name = data.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise RuleError("name", "1..64 of a-z, 0-9, _ and -, starting with a letter or digit")
    try:
        kind = RuleKind(str(data.get("kind")))
    except ValueError:
        raise RuleError("kind", "must be one of " + ", ".join(k.value for k in RuleKind)) from None
    causes = tuple(_cause(c, "causes") for c in _strings(data, "causes"))
    raw_after = data.get("cause_after_s", {})
    if not isinstance(raw_after, Mapping):
        raise RuleError("cause_after_s", "expected an object of cause: seconds")
    cause_after = {_cause(str(k), "cause_after_s"): _num(raw_after, str(k), 0.0) for k in raw_after}
    more_than = data.get("more_than")
    if more_than is not None and (
        isinstance(more_than, bool) or not isinstance(more_than, int) or more_than < 0
    ):
        raise RuleError("more_than", "expected a whole number >= 0")
    pct = data.get("more_than_percent")
    if pct is not None:
        pct = _num(data, "more_than_percent", 0.0)
        if pct >= 100:
            raise RuleError("more_than_percent", "must be below 100")
    if kind is RuleKind.COMMUNE_BROKEN and more_than is None and pct is None:
        raise RuleError("more_than", "a commune rule needs more_than or more_than_percent")
    rec = data.get("recipients", {})
    if not isinstance(rec, Mapping):
        raise RuleError("recipients", "expected an object")
    unknown = sorted(set(rec) - {"roles", "communes", "contractor", "users"})
    if unknown:
        raise RuleError(f"recipients.{unknown[0][:40]}", "unknown field")
    roles: list[Role] = []
    for r in _strings(rec, "roles"):
        try:
            roles.append(Role(r))
        except ValueError:
            raise RuleError("recipients.roles", f"unknown role {r[:40]!r}") from None
    recipients = Recipients(
        roles=tuple(roles),
        communes=_strings(rec, "communes"),
        contractor=_bool(rec, "contractor", False),
        users=_strings(rec, "users"),
    )
    inhibits = _strings(data, "inhibits")
    if name in inhibits:
        raise RuleError("inhibits", "a rule cannot inhibit itself")
    return Rule(
        name=name,
        kind=kind,
        enabled=_bool(data, "enabled", True),
        critical=_bool(data, "critical", False),
        after_s=_num(data, "after_s", 0.0),
        causes=causes,
        cause_after_s=cause_after,
        more_than=more_than,
        more_than_percent=pct,
        repeat_s=_num(data, "repeat_s", 0.0),
        send_resolved=_bool(data, "send_resolved", kind is not RuleKind.CLUSTER_REPAIRED),
        group_wait_s=_num(data, "group_wait_s", 30.0),
        inhibits=inhibits,
        recipients=recipients,
    )


def rule_to_dict(rule: Rule) -> dict[str, Any]:
    """The JSON form of a rule (round-trips through :func:`rule_from_dict`)."""
    return {
        "name": rule.name,
        "kind": rule.kind.value,
        "enabled": rule.enabled,
        "critical": rule.critical,
        "after_s": rule.after_s,
        "causes": [c.value for c in rule.causes],
        "cause_after_s": {c.value: s for c, s in rule.cause_after_s.items()},
        "more_than": rule.more_than,
        "more_than_percent": rule.more_than_percent,
        "repeat_s": rule.repeat_s,
        "send_resolved": rule.send_resolved,
        "group_wait_s": rule.group_wait_s,
        "inhibits": list(rule.inhibits),
        "recipients": {
            "roles": [r.value for r in rule.recipients.roles],
            "communes": list(rule.recipients.communes),
            "contractor": rule.recipients.contractor,
            "users": list(rule.recipients.users),
        },
    }


_DISTRICT = [Role.ADMIN.value, Role.DISTRICT_VIEWER.value]
_LOCAL = [Role.COMMUNE_OFFICER.value, Role.TECHNICIAN.value]

#: Stored when a database has no rules yet; admins change them on the dashboard.
DEFAULT_RULES: Final[tuple[dict[str, Any], ...]] = (
    {
        "name": "commune-dark",
        "kind": "commune_broken",
        "critical": True,
        "more_than_percent": 50.0,
        "repeat_s": 24 * 3600.0,
        "inhibits": ["cluster-offline", "cluster-broken"],
        "recipients": {"roles": [*_DISTRICT, *_LOCAL]},
    },
    {
        "name": "cluster-offline",
        "kind": "cluster_offline",
        "after_s": 3600.0,
        "repeat_s": 24 * 3600.0,
        "inhibits": ["cluster-broken"],
        "recipients": {"roles": _LOCAL, "contractor": True},
    },
    {
        "name": "cluster-broken",
        "kind": "cluster_broken",
        "after_s": 6 * 3600.0,
        "cause_after_s": {"power": 3600.0, "sim_failure": 3600.0},
        "repeat_s": 24 * 3600.0,
        "recipients": {"roles": _LOCAL, "contractor": True},
    },
    {
        "name": "ticket-overdue",
        "kind": "ticket_overdue",
        "after_s": 7 * 86400.0,
        "repeat_s": 3 * 86400.0,
        "send_resolved": False,
        "recipients": {"roles": [Role.ADMIN.value], "contractor": True},
    },
    {
        "name": "cluster-repaired",
        "kind": "cluster_repaired",
        "after_s": 86400.0,
        "group_wait_s": 300.0,
        "recipients": {"roles": [Role.COMMUNE_OFFICER.value]},
    },
)
