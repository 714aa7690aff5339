"""Collector configuration: frozen dataclasses loaded once from TOML.

``load_config(path)`` fails at start with ``ConfigError`` naming the field
(``[mqtt] port: expected an integer, got 'abc'``); unknown keys are errors too,
so a typo is never silently ignored.
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from collector.alerts.settings import AlertsSettings
from collector.b2.settings import ReportSettings
from collector.correlation import CorrelationConfig
from fleet_protocol.config_schema import ConfigFieldError, build


class ConfigError(ValueError):
    """A bad configuration file; the message names the file and the field."""


def _password(password: str, password_file: str, section: str) -> str:
    """``password``, or the first line of ``password_file`` when one is given."""
    if not password_file:
        return password
    try:
        return Path(password_file).read_text(encoding="utf-8").splitlines()[0]
    except (OSError, IndexError) as exc:
        raise ConfigError(
            f"[{section}] password_file: cannot read {password_file}: {exc}"
        ) from None


@dataclass(frozen=True, kw_only=True)
class MqttConfig:
    #: Broker host name or address.
    host: str = "127.0.0.1"
    #: Broker port (1883 plain on localhost, 8883 TLS).
    port: int = 1883
    #: MQTT user of the collector (the broker ACL grants it loa/v1/#).
    username: str = "loa_collector"
    #: Password inline (tests, demos); prefer ``password_file`` in production.
    password: str = ""
    #: File holding the password (first line); wins over ``password``.
    password_file: str = ""
    #: Client id. Must be stable across restarts (the broker keeps this session's
    #: queued messages while the collector is down) and unique per instance.
    client_id: str = "loa-collector-1"
    #: Shared-subscription group when several instances split the load ("" = none).
    shared_group: str = ""
    #: Use TLS to the broker.
    tls: bool = False
    #: CA bundle for TLS ("" = system store).
    ca_file: str = ""
    #: MQTT keepalive, seconds.
    keepalive_s: int = 30
    #: How many unacknowledged messages the broker may have in flight to us
    #: (MQTT 5 receive maximum). Keep it a few times [ingest] batch_size: a batch
    #: is acknowledged only after its commit, and the broker keeps sending the
    #: next ones meanwhile only while this window has room.
    receive_maximum: int = 4000
    #: How long the broker keeps our session (and queues for us) while we are away.
    session_expiry_s: int = 7 * 24 * 3600
    #: Seconds to wait for the broker's CONNACK/SUBACK.
    timeout_s: float = 10.0
    #: Upper bound of the reconnect backoff, seconds.
    max_backoff_s: float = 30.0

    def resolved_password(self) -> str:
        return _password(self.password, self.password_file, "mqtt")


@dataclass(frozen=True, kw_only=True)
class AmqpConfig:
    """The AMQP 0-9-1 ingest source (``[ingest] source = "amqp"``, RabbitMQ only)."""

    #: Broker URL without the password: ``amqp://user@host:5672/vhost`` (``%2F``
    #: is the default vhost ``/``); ``amqps://`` for TLS.
    url: str = "amqp://loa_collector@127.0.0.1:5672/%2F"
    #: Every node of a RabbitMQ cluster, in the form of ``url``: each connection
    #: tries the next one, so a collector whose node dies consumes from another
    #: (the quorum queue lives on all of them). Empty: ``url`` alone.
    urls: tuple[str, ...] = ()
    #: Password inline (tests, demos); prefer ``password_file`` in production.
    password: str = ""
    #: File holding the password (first line); wins over ``password``.
    password_file: str = ""
    #: The durable quorum queue every collector instance consumes (competing
    #: consumers: each message goes to one of them).
    queue: str = "loa.ingest"
    #: Most messages the broker hands us ahead of acknowledgements (0 = twice
    #: [ingest] batch_size: the next batch arrives while one is written).
    prefetch: int = 0
    #: Most messages the queue holds; beyond it a device's publish is refused
    #: (it keeps the message in its outbox), never dropped.
    max_length: int = 1_000_000
    #: CA bundle for ``amqps://`` ("" = system store).
    ca_file: str = ""
    #: Seconds to wait for the connection and each broker exchange.
    timeout_s: float = 10.0
    #: Upper bound of the reconnect backoff, seconds.
    max_backoff_s: float = 30.0

    def resolved_password(self) -> str:
        return _password(self.password, self.password_file, "amqp")

    @property
    def nodes(self) -> tuple[str, ...]:
        """The broker URLs to connect to, in turn."""
        return self.urls or (self.url,)

    def problems(self) -> list[str]:
        """What is wrong with this section, each naming its field."""
        out = []
        field_name = "urls" if self.urls else "url"
        for url in self.nodes:
            scheme, sep, rest = url.partition("://")
            host = rest.partition("/")[0].rpartition("@")[2]
            if scheme not in ("amqp", "amqps") or not sep or not host:
                out.append(
                    f"[amqp] {field_name}: expected amqp://user@host:port/vhost or amqps://..."
                )
            elif ":" in rest.partition("/")[0].rpartition("@")[0]:
                out.append(
                    f"[amqp] {field_name}: put the password in password_file, not in the url"
                )
        if not self.queue or len(self.queue.encode()) > 255:
            out.append("[amqp] queue: must be 1..255 bytes")
        if not 0 <= self.prefetch <= 65535:
            out.append("[amqp] prefetch: must be 0..65535")
        if self.max_length < 1:
            out.append("[amqp] max_length: must be >= 1")
        if self.timeout_s <= 0:
            out.append("[amqp] timeout_s: must be > 0")
        if self.max_backoff_s <= 0:
            out.append("[amqp] max_backoff_s: must be > 0")
        return out


_DB_SCHEMES = ("postgresql://", "postgres://", "sqlite:///")


@dataclass(frozen=True, kw_only=True)
class DbConfig:
    #: SQLite database file (the embedded default; used when ``url`` is empty).
    path: str = "/var/lib/loa-collector/collector.db"
    #: A server database instead: "postgresql://user@host/dbname" (libpq's URL;
    #: keep the password out of it with ``?passfile=/etc/loa-collector/pgpass``),
    #: or "sqlite:///path/to/collector.db". Several collector instances may share
    #: one PostgreSQL database.
    url: str = ""
    #: "full" survives power loss; "normal" survives process crashes only.
    synchronous: str = "full"
    #: Raw messages (and the signal history) are kept this many days.
    raw_retention_days: float = 90.0
    #: Heartbeats are kept one by one this many hours after receipt; after that
    #: a run of them that changed nothing is kept as its first and last report,
    #: with the dropped seqs as ranges (still duplicates) (collector.compaction).
    raw_detail_hours: float = 48.0
    #: How often the compaction pass runs (once across instances).
    compact_interval_s: float = 3600.0


@dataclass(frozen=True, kw_only=True)
class IngestConfig:
    #: Where messages come from: "mqtt" (subscribe as an MQTT client, any
    #: broker) or "amqp" (consume RabbitMQ's quorum queue, [amqp]). Everything
    #: after decoding -- validation, batches, dedupe, confirmations -- is shared.
    source: str = "mqtt"
    #: Most messages written (and acknowledged) in one transaction.
    batch_size: int = 1000
    #: A report received more than this long after its ``ts`` was buffered on the
    #: device: it corrects the diagnosis of that time but does not mark the
    #: device online.
    late_after_s: float = 120.0
    #: A device ``ts`` further ahead of the receive time than this is replaced by
    #: the receive time (and counted as clock skew).
    max_future_skew_s: float = 300.0
    #: Devices whose rejections are logged individually before going quiet.
    max_logged_devices: int = 10000
    #: Store confirmations are collected per device and published this often
    #: (seconds): one Ack covers everything a device had stored in the window,
    #: which is what keeps them inside the SIM's data budget (at 1800 s a
    #: stable device gets 48 a day, one per three heartbeats). Agents hold
    #: messages until confirmed; a longer interval costs them a little outbox
    #: space, never safety.
    ack_interval_s: float = 1800.0


@dataclass(frozen=True, kw_only=True)
class FleetConfig:
    #: A device not heard from (receive time) for this long is offline. Well above
    #: the agent's compact heartbeat (600 s by default): four may go missing.
    heartbeat_grace_s: float = 2700.0
    #: How often to look for silent devices and purge old raw messages.
    sweep_interval_s: float = 60.0


@dataclass(frozen=True, kw_only=True)
class RepairConfig:
    #: Open a ticket automatically when a critical fault has lasted this long (0 = never).
    auto_open_after_s: float = 24 * 3600.0
    #: Resolve an active ticket once the cluster has been working this long.
    auto_resolve_after_s: float = 2 * 3600.0
    #: Tickets without progress (start, comment) for this long are overdue.
    overdue_after_s: float = 7 * 24 * 3600.0
    #: How often the repair sweep runs.
    sweep_interval_s: float = 300.0


@dataclass(frozen=True, kw_only=True)
class HttpConfig:
    #: Address to listen on.
    host: str = "127.0.0.1"
    #: Port to listen on.
    port: int = 8080
    #: Browser sessions expire after this many seconds.
    session_ttl_s: float = 12 * 3600.0
    #: Mark the session cookie Secure (off only for plain-HTTP local testing).
    secure_cookies: bool = True
    #: Largest request body accepted, bytes.
    max_body_bytes: int = 64 * 1024
    #: Reverse proxies whose X-Forwarded-For header is believed: addresses or
    #: networks ("127.0.0.1", "10.0.0.0/8"). The client address used by the login
    #: throttle is then the right-most X-Forwarded-For entry that is not one of
    #: them. Empty (the default): the header is ignored and the peer address is
    #: the client, so nobody can pose as another address by sending the header.
    trusted_proxies: tuple[str, ...] = ()
    #: File holding a bearer token that may read ``/metrics`` (first line), for a
    #: Prometheus scraper (its ``bearer_token_file``). "" = only admins may.
    metrics_token_file: str = ""

    def proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """``trusted_proxies`` parsed; ConfigError naming a bad entry."""
        out = []
        for entry in self.trusted_proxies:
            try:
                out.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                raise ConfigError(
                    f"[http] trusted_proxies: {entry!r:.60} is not an address or network"
                ) from None
        return tuple(out)

    def metrics_token(self) -> str:
        """The ``/metrics`` token ("" when none is configured)."""
        if not self.metrics_token_file:
            return ""
        try:
            lines = Path(self.metrics_token_file).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ConfigError(
                f"[http] metrics_token_file: cannot read {self.metrics_token_file}: {exc}"
            ) from None
        token = lines[0].strip() if lines else ""
        if len(token) < 16:
            raise ConfigError("[http] metrics_token_file: the token needs at least 16 characters")
        return token


@dataclass(frozen=True, kw_only=True)
class LoginConfig:
    """Login throttling: delays that grow with failures, never a lock-out.

    Each attempt counts against three keys: the (client address, name) pair, the
    name alone (a guess spread over many addresses) and the address alone (one
    address trying many names). A key's first ``*_free`` attempts go ahead at
    once; after that each waits ``first_delay_s``, doubling up to
    ``max_delay_s``. A successful login clears its pair and name keys; an admin
    clears a name's keys with ``loa-collector users unlock NAME``. Counts live in
    the database, so every collector instance on it shares them.
    """

    #: Attempts per (address, name) before delays start.
    pair_free: int = 5
    #: Attempts per name, from all addresses together, before delays start.
    name_free: int = 50
    #: Attempts per address, over all names, before delays start.
    address_free: int = 30
    #: The first delay, seconds; it doubles with every further attempt.
    first_delay_s: float = 1.0
    #: The longest delay, seconds.
    max_delay_s: float = 900.0
    #: A key without attempts for this long starts over.
    forget_after_s: float = 3600.0


@dataclass(frozen=True, kw_only=True)
class SmsGatewayConfig:
    #: AT port of the district's USB GSM modem (use /dev/serial/by-id/...); "" = no gateway.
    port: str = ""
    #: AT dialect of that modem ("generic", "quectel", "simcom").
    dialect: str = "generic"
    baud: int = 115200
    #: File holding the district's SMS secret (hex, first line; mode 0600). Each device's
    #: key is derived from it (fleet_protocol.sms.sms_key), as provisioning gives it.
    secret_file: str = ""
    #: How often the modem's storage is listed (a +CMTI seen meanwhile is read at once).
    poll_s: float = 10.0
    #: Timeout of one AT exchange with the modem.
    timeout_s: float = 5.0
    #: An SMS whose device time is older than this is refused as stale (a replay).
    max_age_s: float = 7 * 86400.0


@dataclass(frozen=True, kw_only=True)
class RemoteConfig:
    #: How long a command waits for the device's reply by default, and at most.
    wait_s: float = 20.0
    max_wait_s: float = 120.0
    #: A command sent to an online device expires this long after its wait, so
    #: one delayed in the broker never runs long after the operator gave up.
    grace_s: float = 60.0
    #: A command queued for an offline device expires after this by default, and
    #: at most after max_queue_s (the agent refuses anything later than 7 days).
    queue_s: float = 3600.0
    max_queue_s: float = 24 * 3600.0


@dataclass(frozen=True, kw_only=True)
class UpgradesConfig:
    #: Signed upgrade artifacts (``loa-collector upgrade add``): <version>.tar + .json.
    dir: str = "/var/lib/loa-collector/upgrades"
    #: Ed25519 private key (PEM, mode 0600) that signs them (``loa-collector upgrade keygen``).
    signing_key: str = "/etc/loa-collector/upgrade-signing.pem"
    #: Base URL devices download from (their TLS trust is the broker's CA); "" = the
    #: URL the rollout was started through.
    public_url: str = ""


@dataclass(frozen=True, kw_only=True)
class CollectorConfig:
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    #: The AMQP ingest source (used when [ingest] source = "amqp").
    amqp: AmqpConfig = field(default_factory=AmqpConfig)
    db: DbConfig = field(default_factory=DbConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)
    repairs: RepairConfig = field(default_factory=RepairConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    login: LoginConfig = field(default_factory=LoginConfig)
    #: Remote commands to devices (collector.remote).
    remote: RemoteConfig = field(default_factory=RemoteConfig)
    #: Agent upgrades (collector.upgrades).
    upgrades: UpgradesConfig = field(default_factory=UpgradesConfig)
    #: The B2 report's time zone, offline note, unit name and language.
    report: ReportSettings = field(default_factory=ReportSettings)
    #: Alert rules' engine, channels and the monthly report's delivery.
    alerts: AlertsSettings = field(default_factory=AlertsSettings)
    #: Run the MQTT ingest in this process (off for API-only instances).
    ingest_enabled: bool = True
    #: The SMS gateway (fault SMS from controllers whose data link is down).
    sms: SmsGatewayConfig = field(default_factory=SmsGatewayConfig)
    #: Thresholds of the rules that infer a silent cluster's cause from the fleet.
    correlation: CorrelationConfig = field(default_factory=CorrelationConfig)

    def __post_init__(self) -> None:
        checks: list[tuple[bool, str]] = [
            (1 <= self.mqtt.port <= 65535, "[mqtt] port: must be 1..65535"),
            (1 <= self.http.port <= 65535 or self.http.port == 0, "[http] port: must be 0..65535"),
            (bool(self.mqtt.client_id), "[mqtt] client_id: must not be empty"),
            (self.mqtt.receive_maximum >= 1, "[mqtt] receive_maximum: must be >= 1"),
            (self.mqtt.timeout_s > 0, "[mqtt] timeout_s: must be > 0"),
            (
                self.db.synchronous in ("normal", "full", "extra"),
                "[db] synchronous: must be normal, full or extra",
            ),
            (self.db.raw_retention_days > 0, "[db] raw_retention_days: must be > 0"),
            (self.db.raw_detail_hours > 0, "[db] raw_detail_hours: must be > 0"),
            (self.db.compact_interval_s > 0, "[db] compact_interval_s: must be > 0"),
            (
                self.db.url == "" or self.db.url.startswith(_DB_SCHEMES),
                "[db] url: must start with postgresql://, postgres:// or sqlite:///",
            ),
            (1 <= self.ingest.batch_size <= 10000, "[ingest] batch_size: must be 1..10000"),
            (self.ingest.source in ("mqtt", "amqp"), '[ingest] source: must be "mqtt" or "amqp"'),
            *((False, problem) for problem in self.amqp.problems()),
            (self.ingest.late_after_s > 0, "[ingest] late_after_s: must be > 0"),
            (self.ingest.max_future_skew_s >= 0, "[ingest] max_future_skew_s: must be >= 0"),
            (
                0 < self.ingest.ack_interval_s <= 3600,
                "[ingest] ack_interval_s: must be > 0 and at most 3600",
            ),
            (
                self.fleet.heartbeat_grace_s > self.ingest.late_after_s,
                "[fleet] heartbeat_grace_s: must exceed [ingest] late_after_s",
            ),
            (self.fleet.sweep_interval_s > 0, "[fleet] sweep_interval_s: must be > 0"),
            (self.repairs.auto_open_after_s >= 0, "[repairs] auto_open_after_s: must be >= 0"),
            (
                self.repairs.auto_resolve_after_s >= 0,
                "[repairs] auto_resolve_after_s: must be >= 0",
            ),
            (self.repairs.overdue_after_s > 0, "[repairs] overdue_after_s: must be > 0"),
            (self.repairs.sweep_interval_s > 0, "[repairs] sweep_interval_s: must be > 0"),
            (self.http.session_ttl_s > 0, "[http] session_ttl_s: must be > 0"),
            (
                min(self.login.pair_free, self.login.name_free, self.login.address_free) >= 1,
                "[login] pair_free, name_free, address_free: must be >= 1",
            ),
            (self.login.first_delay_s > 0, "[login] first_delay_s: must be > 0"),
            (
                self.login.max_delay_s >= self.login.first_delay_s,
                "[login] max_delay_s: must be >= first_delay_s",
            ),
            (
                self.login.forget_after_s > self.login.max_delay_s,
                "[login] forget_after_s: must exceed max_delay_s",
            ),
            (
                0 < self.remote.wait_s <= self.remote.max_wait_s,
                "[remote] wait_s: must be > 0 and <= max_wait_s",
            ),
            (self.remote.grace_s >= 0, "[remote] grace_s: must be >= 0"),
            (
                0 < self.remote.queue_s <= self.remote.max_queue_s <= 7 * 86400,
                "[remote] queue_s: must be > 0 and <= max_queue_s <= 7 days",
            ),
            *((False, problem) for problem in self.report.problems()),
            *((False, problem) for problem in self.alerts.problems()),
            (
                not self.sms.port or bool(self.sms.secret_file),
                "[sms] secret_file: required when port is set",
            ),
            (self.sms.poll_s > 0, "[sms] poll_s: must be > 0"),
            (0 < self.sms.timeout_s < self.sms.poll_s, "[sms] timeout_s: must be 0 < t < poll_s"),
            (self.sms.max_age_s > 0, "[sms] max_age_s: must be > 0"),
            *((False, problem) for problem in self.correlation.problems()),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        self.http.proxy_networks()


def config_from_dict(data: dict[str, Any]) -> CollectorConfig:
    """Build and validate a config from parsed TOML; raises ConfigError."""
    try:
        return build(CollectorConfig, data)
    except ConfigFieldError as exc:
        section, _, name = exc.field.rpartition(".")
        where = f"[{section}] {name}" if section else name
        raise ConfigError(f"{where}: {exc.reason}") from None


def load_config(path: Path | str) -> CollectorConfig:
    """Read and validate ``path``; raises ConfigError naming the file and field."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
