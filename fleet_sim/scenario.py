"""Fleet scenarios: which clusters exist, what they run, and what happens to them.

``load_scenario(path)`` reads a TOML file (format in ``docs/scenarios.md`` and
the package docstring) into a frozen ``Scenario`` or raises ``ScenarioError``
naming the dotted field that was wrong (``faults[2].fault: 'modem.burnt' is not
a fault; known: ...``). Unknown keys are refused, so a typo never becomes a
silent default. ``bundled(name)`` is the path of a scenario shipped in
``fleet_sim/scenarios/`` (``lam-thao``, ``phu-tho``, ``stress``).

Times in a scenario are durations (``"90s"``, ``"15m"``, ``"6h"``, ``"2d"``,
``"1d12h"`` or a number of seconds) or moments: a duration relative to the
moment the fleet starts (``"-40d"`` is forty days before, ``"10m"`` ten
minutes after) or an ISO 8601 date-time with its offset
(``"2023-07-15T08:00:00+07:00"``).
"""

from __future__ import annotations

import datetime as dt
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from firmware_shims.amp.engine import FAULTS as AMP_FAULTS
from firmware_shims.amp.profile import ProfileError, load_profile
from firmware_shims.modem.sim import DIALECT_NAMES
from firmware_shims.modem.sim import FAULTS as MODEM_FAULTS
from fleet_protocol import valid_device_id
from fleet_protocol.config_schema import ConfigFieldError, build

SCENARIO_DIR: Final = Path(__file__).resolve().parent / "scenarios"

#: Faults of the controller and the stream, besides the engines' own.
OTHER_FAULTS: Final = (
    "stream.lost",
    "controller.off",
    "controller.disk_full",
    "controller.overheat",
)
#: Every fault name a scenario may use: ``modem.<engine fault>``, ``amp.<engine fault>``, others.
FAULT_NAMES: Final[tuple[str, ...]] = (
    *(f"modem.{f}" for f in MODEM_FAULTS),
    *(f"amp.{f}" for f in AMP_FAULTS),
    *OTHER_FAULTS,
)
#: Modem faults that take the cluster's data link down with them: without a
#: usable SIM, a registration or a data bearer there is no 4G data, so the
#: agent buffers (with data_blocked SMS still works).
LINK_CUTTING: Final = frozenset(
    {
        "modem.sim_absent",
        "modem.sim_failure",
        "modem.sim_locked",
        "modem.no_service",
        "modem.denied",
        "modem.unresponsive",
        "modem.data_blocked",
        "controller.off",
    }
)
COMMUNE_KINDS: Final = ("xã", "phường", "thị trấn")
PHASES: Final = ("all", "backfill", "live")

_UNITS: Final = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_DURATION_RE: Final = re.compile(r"^(-?)((?:\d+(?:\.\d+)?[smhdw])+)$")
_PART_RE: Final = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_SLUG_RE: Final = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")


class ScenarioError(ValueError):
    """A scenario file is unusable; ``field`` is the dotted key, ``reason`` what was wrong."""

    def __init__(self, field: str, reason: str, *, path: str | None = None) -> None:
        self.field = field
        self.reason = reason
        self.path = path
        where = f"{path}: " if path else ""
        super().__init__(f"{where}{field}: {reason}")


# --- the model -----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class TimeSettings:
    #: Days of history produced before the fleet's start (0: live only).
    backfill_days: float = 0.0
    #: Simulated seconds per real second while backfilling; the clock runs at
    #: real speed once it has caught up with the wall clock.
    acceleration: float = 1.0
    #: Simulated seconds between two polls of a probe while backfilling: the
    #: resolution of the history (a fault shorter than this may go unseen).
    backfill_step_s: float = 3600.0
    #: How far past the start random faults are drawn (the schedule's horizon).
    horizon_days: float = 30.0


@dataclass(frozen=True, kw_only=True)
class AgentSettings:
    """Agent settings applied to every cluster (the agent's own config keys)."""

    #: Live poll interval of the modem and the amplifier (seconds).
    poll_s: float = 30.0
    #: Live poll interval of the controller and the stream.
    system_poll_s: float = 60.0
    stream_poll_s: float = 60.0
    #: Heartbeat and full-report periods (real seconds).
    heartbeat_s: float = 300.0
    full_report_s: float = 21600.0
    #: Diagnosis debounce windows (simulated seconds).
    confirm_s: float = 120.0
    clear_s: float = 300.0
    #: Seconds of one modem flapping cycle (registered half, lost half).
    flap_period_s: float = 600.0
    #: Outbox cap per cluster (bytes).
    outbox_max_bytes: int = 1024 * 1024
    #: MQTT keepalive (the broker publishes the last will after 1.5 times this).
    keepalive_s: int = 120


@dataclass(frozen=True, kw_only=True)
class Commune:
    #: Commune code from the inventory (the B2 row key).
    code: str
    #: Name with its diacritics, e.g. "Xuân Lũng".
    name: str
    #: "xã", "phường" or "thị trấn".
    kind: str
    #: Device ids are ``<prefix>-<slug>-<NN>``.
    slug: str
    #: Clusters in the inventory.
    clusters: int
    #: Of those, how many never report (listed in the inventory, never started).
    never_reporting: int
    #: Weights of the modem dialects and amplifier profiles drawn for its clusters.
    dialects: Mapping[str, float]
    amp_profiles: Mapping[str, float]
    #: Repair contractor (inventory column).
    contractor: str
    #: District it belongs to (inventory column; a province scenario spans several).
    district: str
    #: Serving cells (hex cell ids) its clusters are on, taken in turn; empty: one
    #: cell of its own. A cell outage is a fault on the clusters of one cell.
    cells: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class FaultRule:
    """An explicit fault: ``fault`` on ``targets`` from ``start`` for ``duration``."""

    fault: str
    #: Device ids it hits (resolved from ``clusters``, ``commune``/``count``).
    targets: tuple[str, ...]
    #: Seconds relative to the fleet's start (negative: in the past), or an absolute
    #: UNIX time when ``absolute``.
    start: float
    absolute: bool
    #: Seconds; None lasts until the fleet stops.
    duration: float | None


@dataclass(frozen=True, kw_only=True)
class RandomRule:
    """Episodes of ``fault`` drawn per cluster: mean ``mtbf`` apart, lasting ``duration``."""

    fault: str
    #: Mean seconds between the starts of two episodes on one cluster.
    mtbf: float
    #: Episode length in seconds, drawn log-uniformly between the two.
    duration: tuple[float, float]
    #: Commune codes it applies to (empty: all).
    communes: tuple[str, ...]
    #: "all", "backfill" (episodes starting before the fleet's start) or "live".
    phase: str


@dataclass(frozen=True, kw_only=True)
class OutageRule:
    """A network outage (no data link) of ``targets`` from ``start`` for ``duration``."""

    targets: tuple[str, ...]
    start: float
    absolute: bool
    duration: float | None
    #: What the scenario said it hits (commune code or device id), for messages.
    label: str


@dataclass(frozen=True, kw_only=True)
class ClusterSpec:
    device_id: str
    commune: str
    dialect: str
    amp_profile: str
    #: Listed in the inventory but never started.
    silent: bool


@dataclass(frozen=True, kw_only=True)
class Scenario:
    name: str
    district: str
    province: str
    #: Prefix of every device id.
    prefix: str
    #: Seed of every random draw (assignments, random faults, engine jitter).
    seed: int
    #: URL pattern of the broadcast stream; ``{commune}`` is the commune's slug.
    stream_url: str
    time: TimeSettings
    agent: AgentSettings
    communes: tuple[Commune, ...]
    clusters: tuple[ClusterSpec, ...]
    faults: tuple[FaultRule, ...]
    random_faults: tuple[RandomRule, ...]
    outages: tuple[OutageRule, ...]

    def commune(self, code: str) -> Commune:
        for c in self.communes:
            if c.code == code:
                return c
        raise KeyError(code)


# --- parsing helpers -------------------------------------------------------------------


def parse_duration(value: object, field: str, *, signed: bool = False) -> float:
    """Seconds from ``"1d12h"``, ``"90s"`` or a number; ScenarioError naming ``field``."""
    if isinstance(value, bool):
        raise ScenarioError(field, f"expected a duration like '6h', got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        m = _DURATION_RE.match(value.strip().replace(" ", ""))
        if m is None:
            raise ScenarioError(
                field, f"{value!r} is not a duration (e.g. '90s', '15m', '6h', '2d', '1d12h')"
            )
        seconds = sum(float(n) * _UNITS[u] for n, u in _PART_RE.findall(m.group(2)))
        if m.group(1):
            seconds = -seconds
    else:
        raise ScenarioError(field, f"expected a duration like '6h', got {type(value).__name__}")
    if not math.isfinite(seconds):
        raise ScenarioError(field, f"{value!r} is not finite")
    if seconds < 0 and not signed:
        raise ScenarioError(field, f"{value!r} must not be negative")
    return seconds


def parse_moment(value: object, field: str) -> tuple[float, bool]:
    """(seconds, absolute): a relative duration or an ISO date-time with an offset."""
    if isinstance(value, dt.datetime):  # TOML offset date-time literal
        if value.tzinfo is None:
            raise ScenarioError(field, f"{value.isoformat()} needs a UTC offset (+07:00)")
        return value.timestamp(), True
    if isinstance(value, str) and "T" in value:
        try:
            moment = dt.datetime.fromisoformat(value)
        except ValueError:
            raise ScenarioError(field, f"{value!r} is not an ISO 8601 date-time") from None
        if moment.tzinfo is None:
            raise ScenarioError(field, f"{value!r} needs a UTC offset (+07:00)")
        return moment.timestamp(), True
    return parse_duration(value, field, signed=True), False


# --- the file as written: read by the shared typed-config builder --------------------
#
# These mirror the TOML tables key for key; ``fleet_protocol.config_schema.build``
# checks each type and refuses unknown keys, naming the dotted field
# (``communes[0].colour``). ``Any`` fields have their own syntax (durations,
# moments, weights, targets) and are read by the parsers below.


@dataclass(frozen=True, kw_only=True)
class _MetaToml:
    name: str = "loa-fleet scenario"
    district: str = ""
    province: str = ""
    prefix: str = ""
    seed: int = 0
    stream_url: str = "http://stream.example/{commune}"


@dataclass(frozen=True, kw_only=True)
class _DefaultsToml:
    dialects: Any = "generic"
    amp_profiles: Any = "generic"
    contractor: str = ""


@dataclass(frozen=True, kw_only=True)
class _CommuneToml:
    code: str
    name: str
    kind: str = "xã"
    slug: str
    clusters: int
    never_reporting: int = 0
    dialects: Any = None
    amp_profiles: Any = None
    contractor: Any = None
    district: Any = None
    #: Serving cells (hex cell ids) of its clusters, taken in turn.
    cells: Any = ()


@dataclass(frozen=True, kw_only=True)
class _TargetsToml:
    """``cluster = "..."``, ``clusters = [...]`` or ``commune`` (+ ``count``)."""

    cluster: Any = None
    clusters: Any = None
    commune: Any = None


@dataclass(frozen=True, kw_only=True)
class _FaultToml(_TargetsToml):
    fault: str
    count: Any = None
    start: Any = 0
    duration: Any = None


@dataclass(frozen=True, kw_only=True)
class _RandomToml:
    fault: str
    mtbf: Any = None
    duration: Any = None
    communes: tuple[str, ...] = ()
    phase: str = "all"


@dataclass(frozen=True, kw_only=True)
class _OutageToml(_TargetsToml):
    start: Any = 0
    duration: Any = None


@dataclass(frozen=True, kw_only=True)
class _ScenarioToml:
    scenario: _MetaToml = field(default_factory=_MetaToml)
    time: TimeSettings = field(default_factory=TimeSettings)
    agent: AgentSettings = field(default_factory=AgentSettings)
    defaults: _DefaultsToml = field(default_factory=_DefaultsToml)
    communes: tuple[_CommuneToml, ...] = ()
    faults: tuple[_FaultToml, ...] = ()
    random_faults: tuple[_RandomToml, ...] = ()
    outages: tuple[_OutageToml, ...] = ()


def _minimums(settings: object, where: str, minimums: Mapping[str, float]) -> None:
    for name, minimum in minimums.items():
        value = getattr(settings, name)
        if value < minimum:
            raise ScenarioError(f"{where}.{name}", f"{value} is below the minimum {minimum}")


def _weights(
    value: object, field: str, known: tuple[str, ...], check: Any = None
) -> dict[str, float]:
    if isinstance(value, str):
        value = {value: 1.0}
    if not isinstance(value, dict) or not value:
        raise ScenarioError(field, "expected a name or a table of name = weight")
    out: dict[str, float] = {}
    for name, w in value.items():
        if known and name not in known:
            raise ScenarioError(f"{field}.{name}", f"unknown; known: {', '.join(known)}")
        if check is not None:
            check(name, f"{field}.{name}")
        if isinstance(w, bool) or not isinstance(w, int | float) or w < 0 or not math.isfinite(w):
            raise ScenarioError(f"{field}.{name}", f"weight must be a number >= 0, got {w!r}")
        out[name] = float(w)
    if sum(out.values()) <= 0:
        raise ScenarioError(field, "the weights add up to 0")
    return out


def _check_profile(name: str, field: str) -> None:
    try:
        load_profile(name)
    except (ProfileError, OSError) as exc:
        raise ScenarioError(field, f"no amplifier profile {name!r}: {exc}") from None


def _cells(value: object, field: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(
        isinstance(c, str) and re.fullmatch(r"[0-9A-F]{1,8}", c) for c in value
    ):
        raise ScenarioError(field, 'must be a list of hex cell ids (e.g. ["1A2D101"])')
    return tuple(value)


def _fault_name(value: object, field: str) -> str:
    if not isinstance(value, str) or value not in FAULT_NAMES:
        raise ScenarioError(field, f"{value!r} is not a fault; known: {', '.join(FAULT_NAMES)}")
    return value


# --- building ------------------------------------------------------------------------


def _draw(weights: Mapping[str, float], u: float) -> str:
    """The name whose cumulative weight interval holds ``u`` in [0, 1)."""
    total = sum(weights.values())
    acc = 0.0
    for name, w in weights.items():
        acc += w / total
        if u < acc:
            return name
    return next(reversed(list(weights)))


def _clusters(prefix: str, communes: tuple[Commune, ...], seed: int) -> tuple[ClusterSpec, ...]:
    import random

    rng = random.Random(f"{seed}:clusters")
    out: list[ClusterSpec] = []
    for c in communes:
        for n in range(1, c.clusters + 1):
            out.append(
                ClusterSpec(
                    device_id=f"{prefix}-{c.slug}-{n:02d}" if prefix else f"{c.slug}-{n:02d}",
                    commune=c.code,
                    dialect=_draw(c.dialects, rng.random()),
                    amp_profile=_draw(c.amp_profiles, rng.random()),
                    # The last ones of a commune stay silent: easy to find in the inventory.
                    silent=n > c.clusters - c.never_reporting,
                )
            )
    return tuple(out)


def _targets(
    t: _TargetsToml,
    where: str,
    scenario_clusters: tuple[ClusterSpec, ...],
    communes: set[str],
    count: Any = None,
) -> tuple[str, ...]:
    """Device ids from ``clusters = [...]``, ``cluster = "..."`` or ``commune`` (+ ``count``)."""
    by_id = {c.device_id: c for c in scenario_clusters}
    ways = [k for k in ("cluster", "clusters", "commune") if getattr(t, k) is not None]
    if len(ways) != 1:
        raise ScenarioError(where, "give exactly one of cluster, clusters or commune")
    way = ways[0]
    key = f"{where}.{way}"
    if way in ("cluster", "clusters"):
        raw = [t.cluster] if way == "cluster" else t.clusters
        if not isinstance(raw, list):
            raise ScenarioError(key, f"expected a list, got {type(raw).__name__}")
        if not raw:
            raise ScenarioError(key, "is empty")
        for i, d in enumerate(raw):
            if not isinstance(d, str) or d not in by_id:
                raise ScenarioError(
                    key + ("" if way == "cluster" else f"[{i}]"),
                    f"{d!r} is not a cluster of this scenario",
                )
        return tuple(raw)
    code = t.commune
    if not isinstance(code, str):
        raise ScenarioError(key, f"expected a string, got {code!r}")
    if code not in communes:
        raise ScenarioError(key, f"{code!r} is not a commune code of this scenario")
    members = [c.device_id for c in scenario_clusters if c.commune == code and not c.silent]
    if count is None:
        return tuple(members)
    if isinstance(count, bool) or not isinstance(count, int):
        raise ScenarioError(f"{where}.count", f"expected an integer, got {count!r}")
    if count < 1:
        raise ScenarioError(f"{where}.count", f"{count} is below the minimum 1")
    if count > len(members):
        raise ScenarioError(
            f"{where}.count",
            f"{count} is more than the {len(members)} reporting clusters of {code}",
        )
    return tuple(members[:count])


def _optional_text(value: Any, where: str, default: str) -> str:
    if value is None:
        return default
    if not isinstance(value, str):
        raise ScenarioError(where, f"expected a string, got {value!r}")
    return value


def parse_scenario(data: dict[str, Any]) -> Scenario:
    """Build and validate a Scenario from parsed TOML; ScenarioError names the field."""
    if not isinstance(data, dict):
        raise ScenarioError("$", f"expected a table, got {type(data).__name__}")
    try:
        raw = build(_ScenarioToml, data)
    except ConfigFieldError as exc:
        raise ScenarioError(exc.field or "$", exc.reason) from None
    meta = raw.scenario
    prefix = meta.prefix
    if prefix and not _SLUG_RE.match(prefix):
        raise ScenarioError("scenario.prefix", f"{prefix!r} must match [a-z0-9][a-z0-9-]*")
    stream_url = meta.stream_url
    try:
        stream_url.format(commune="x")
    except (KeyError, IndexError, ValueError) as exc:
        raise ScenarioError("scenario.stream_url", f"bad placeholder: {exc}") from None

    time_settings = raw.time
    _minimums(
        time_settings,
        "time",
        {"backfill_days": 0.0, "acceleration": 1.0, "backfill_step_s": 1.0, "horizon_days": 0.0},
    )
    if time_settings.acceleration > 1 and time_settings.backfill_days == 0:
        raise ScenarioError(
            "time.acceleration",
            "an accelerated clock needs time.backfill_days > 0: it would otherwise run into "
            "the future, and the collector replaces future timestamps by the receive time",
        )
    if time_settings.backfill_days > 0 and time_settings.acceleration <= 1:
        raise ScenarioError("time.acceleration", "backfilling needs an acceleration above 1")

    agent = raw.agent
    _minimums(
        agent,
        "agent",
        {
            **dict.fromkeys(
                ("poll_s", "system_poll_s", "stream_poll_s", "heartbeat_s", "full_report_s"), 0.1
            ),
            "confirm_s": 0.0,
            "clear_s": 0.0,
            "flap_period_s": 0.1,
            "outbox_max_bytes": 65536,
            "keepalive_s": 5,
        },
    )
    if agent.full_report_s < agent.heartbeat_s:
        raise ScenarioError("agent.full_report_s", "must not be shorter than agent.heartbeat_s")

    defaults = raw.defaults
    default_dialects = _weights(defaults.dialects, "defaults.dialects", DIALECT_NAMES)
    default_profiles = _weights(defaults.amp_profiles, "defaults.amp_profiles", (), _check_profile)

    if not raw.communes:
        raise ScenarioError("communes", "a scenario needs at least one [[communes]] entry")
    communes: list[Commune] = []
    seen_codes: set[str] = set()
    seen_slugs: set[str] = set()
    for i, ct in enumerate(raw.communes):
        where = f"communes[{i}]"
        code = ct.code
        if not code or len(code) > 32 or code in seen_codes:
            raise ScenarioError(f"{where}.code", f"{code!r} is empty, too long or repeated")
        if not ct.name.strip():
            raise ScenarioError(f"{where}.name", "is empty")
        if ct.kind not in COMMUNE_KINDS:
            raise ScenarioError(
                f"{where}.kind", f"{ct.kind!r} is not one of {', '.join(COMMUNE_KINDS)}"
            )
        if not _SLUG_RE.match(ct.slug) or ct.slug in seen_slugs:
            raise ScenarioError(
                f"{where}.slug", f"{ct.slug!r} must match [a-z0-9][a-z0-9-]* and be unique"
            )
        if ct.clusters < 1:
            raise ScenarioError(f"{where}.clusters", f"{ct.clusters} is below the minimum 1")
        if ct.never_reporting < 0:
            raise ScenarioError(
                f"{where}.never_reporting", f"{ct.never_reporting} is below the minimum 0"
            )
        if ct.never_reporting > ct.clusters:
            raise ScenarioError(
                f"{where}.never_reporting",
                f"{ct.never_reporting} is more than clusters ({ct.clusters})",
            )
        communes.append(
            Commune(
                code=code,
                name=ct.name,
                kind=ct.kind,
                slug=ct.slug,
                clusters=ct.clusters,
                never_reporting=ct.never_reporting,
                dialects=(
                    _weights(ct.dialects, f"{where}.dialects", DIALECT_NAMES)
                    if ct.dialects is not None
                    else default_dialects
                ),
                amp_profiles=(
                    _weights(ct.amp_profiles, f"{where}.amp_profiles", (), _check_profile)
                    if ct.amp_profiles is not None
                    else default_profiles
                ),
                contractor=_optional_text(
                    ct.contractor, f"{where}.contractor", defaults.contractor
                ),
                district=_optional_text(ct.district, f"{where}.district", meta.district),
                cells=_cells(ct.cells, f"{where}.cells"),
            )
        )
        seen_codes.add(code)
        seen_slugs.add(ct.slug)
    seed = meta.seed
    if seed < 0:
        raise ScenarioError("scenario.seed", f"{seed} is below the minimum 0")
    clusters_t = _clusters(prefix, tuple(communes), seed)
    for c in clusters_t:
        if not valid_device_id(c.device_id):
            raise ScenarioError("scenario.prefix", f"device id {c.device_id!r} is not valid")

    faults: list[FaultRule] = []
    for i, ft in enumerate(raw.faults):
        where = f"faults[{i}]"
        start, absolute = parse_moment(ft.start, f"{where}.start")
        faults.append(
            FaultRule(
                fault=_fault_name(ft.fault, f"{where}.fault"),
                targets=_targets(ft, where, clusters_t, seen_codes, ft.count),
                start=start,
                absolute=absolute,
                duration=parse_duration(ft.duration, f"{where}.duration")
                if ft.duration is not None
                else None,
            )
        )

    randoms: list[RandomRule] = []
    for i, rt in enumerate(raw.random_faults):
        where = f"random_faults[{i}]"
        span = rt.duration
        if not isinstance(span, list) or len(span) != 2:
            raise ScenarioError(
                f"{where}.duration", "expected [shortest, longest], e.g. ['6h', '5d']"
            )
        lo = parse_duration(span[0], f"{where}.duration[0]")
        hi = parse_duration(span[1], f"{where}.duration[1]")
        if not 0 < lo <= hi:
            raise ScenarioError(f"{where}.duration", "needs 0 < shortest <= longest")
        mtbf = parse_duration(rt.mtbf, f"{where}.mtbf") if rt.mtbf is not None else None
        if mtbf is None or mtbf <= 0:
            raise ScenarioError(f"{where}.mtbf", "required: mean time between episodes, e.g. '90d'")
        for j, code in enumerate(rt.communes):
            if code not in seen_codes:
                raise ScenarioError(f"{where}.communes[{j}]", f"{code!r} is not a commune code")
        if rt.phase not in PHASES:
            raise ScenarioError(f"{where}.phase", f"{rt.phase!r} is not one of {', '.join(PHASES)}")
        randoms.append(
            RandomRule(
                fault=_fault_name(rt.fault, f"{where}.fault"),
                mtbf=mtbf,
                duration=(lo, hi),
                communes=rt.communes,
                phase=rt.phase,
            )
        )

    outages: list[OutageRule] = []
    for i, ot in enumerate(raw.outages):
        where = f"outages[{i}]"
        start, absolute = parse_moment(ot.start, f"{where}.start")
        targets = _targets(ot, where, clusters_t, seen_codes)
        outages.append(
            OutageRule(
                targets=targets,
                start=start,
                absolute=absolute,
                duration=parse_duration(ot.duration, f"{where}.duration")
                if ot.duration is not None
                else None,
                label=str(ot.commune or ot.cluster or ", ".join(targets)),
            )
        )

    return Scenario(
        name=meta.name,
        district=meta.district,
        province=meta.province,
        prefix=prefix,
        seed=seed,
        stream_url=stream_url,
        time=time_settings,
        agent=agent,
        communes=tuple(communes),
        clusters=clusters_t,
        faults=tuple(faults),
        random_faults=tuple(randoms),
        outages=tuple(outages),
    )


def load_scenario(path: Path | str) -> Scenario:
    """Load ``path`` (or a bundled scenario's name); ScenarioError names file and field."""
    p = Path(path)
    if not p.exists() and not p.suffix and (SCENARIO_DIR / f"{p}.toml").exists():
        p = SCENARIO_DIR / f"{p}.toml"
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError("$", f"cannot read: {exc.strerror or exc}", path=str(p)) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ScenarioError("$", f"not valid TOML: {exc}", path=str(p)) from None
    try:
        return parse_scenario(data)
    except ScenarioError as exc:
        raise ScenarioError(exc.field, exc.reason, path=str(p)) from None


def bundled(name: str) -> Path:
    """Path of a scenario shipped with loa-fleet (``lam-thao``, ``phu-tho``, ``stress``)."""
    return SCENARIO_DIR / f"{name}.toml"


__all__ = [
    "FAULT_NAMES",
    "LINK_CUTTING",
    "SCENARIO_DIR",
    "AgentSettings",
    "ClusterSpec",
    "Commune",
    "FaultRule",
    "OutageRule",
    "RandomRule",
    "Scenario",
    "ScenarioError",
    "TimeSettings",
    "bundled",
    "load_scenario",
    "parse_duration",
    "parse_moment",
    "parse_scenario",
]
