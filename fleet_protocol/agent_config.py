"""The agent's configuration schema: frozen dataclasses loaded once from TOML.

It lives in ``fleet_protocol`` because both sides read it: the agent
(``edge_agent.config`` adds the hardware checks) and the collector's
provisioning, which validates every ``agent.toml`` it writes.

``load_config(path)`` returns an ``AgentConfig`` or raises ``ConfigError``
naming the dotted key that was wrong (``modem.timeout_s: 40.0 s is longer than
modem.poll_s (30.0 s)``). Unknown keys are refused too, so a typo never turns
silently into a default. Sections ``[modem]``, ``[amp]`` and ``[stream]`` are
optional: a controller without that hardware simply has no such probe.

Times are seconds (``*_s``), sizes bytes. ``deploy/agent.example.toml`` is the
documented example and is loaded by a test.
"""

from __future__ import annotations

import logging
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from fleet_protocol.config_schema import ConfigFieldError, build
from fleet_protocol.topics import valid_device_id


class ConfigError(ValueError):
    """A config file that cannot be used; ``field`` is the dotted TOML key (``modem.baud``)."""

    def __init__(self, field: str, reason: str, *, path: str | None = None) -> None:
        self.field = field
        self.reason = reason
        self.path = path
        where = f"{path}: " if path else ""
        super().__init__(f"{where}{field}: {reason}")


@dataclass(frozen=True, kw_only=True)
class DeviceConfig:
    #: Device id: the MQTT username and client id; ``[a-z0-9][a-z0-9-]{2,62}``.
    id: str
    #: Commune code from the district inventory; sent in state reports.
    commune: str = ""


@dataclass(frozen=True, kw_only=True)
class BrokerConfig:
    #: ``mqtts://host[:8883]`` (TLS) or ``mqtt://host[:1883]`` (plain, local tests only).
    #: Set this or ``urls``, not both.
    url: str = ""
    #: Several broker nodes, e.g. ``["mqtts://a:8883", "mqtts://b:8883"]`` (all mqtts://
    #: or all mqtt://). The agent stays on one node while it works and moves to the
    #: next after a failure there; each device starts at its own place in the list
    #: (a hash of its id), so a fleet spreads over the nodes. See edge_agent.uplink.
    urls: tuple[str, ...] = ()
    #: CA bundle that signed the broker's certificate (mqtts); "" uses the system store.
    ca_file: Path | None = None
    #: Client certificate and key (PEM) when the device authenticates by certificate.
    client_cert: Path | None = None
    client_key: Path | None = None
    #: MQTT username; "" means the device id (the broker ACL keys on it).
    username: str = ""
    #: File holding the MQTT password on its first line (kept out of this file, mode 0600).
    password_file: Path | None = None
    #: MQTT keepalive. Heartbeats reset it, so with keepalive > heartbeat no PINGs are sent.
    keepalive_s: int = 660
    #: Give up one connection attempt (TCP + TLS + CONNACK) after this long.
    connect_timeout_s: float = 10.0
    #: Wait for one PUBACK at most this long before treating the link as dead.
    publish_timeout_s: float = 20.0
    #: Reconnect backoff (full jitter): before retry n the agent sleeps
    #: uniform(0, min(cap, base ** n)), n counting failed rounds over ``urls``:
    #: the first retry within 2 s, then 4, 8, ... s, but never a window over
    #: twice the time the link has been down (back within ~2x a short outage).
    backoff_base_s: float = 2.0
    #: The cap. N agents that lost the broker together retry at about 2 N / cap
    #: per second once at the cap (mean delay cap / 2): 100,000 / 300 s x 2 =
    #: ~670/s, about what one Mosquitto core takes in TLS handshakes (more
    #: nodes in urls divide it); a lone device waits at most this long (mean
    #: half) after a long outage ends. No attempt limit: the agent never gives up.
    backoff_max_s: float = 300.0
    #: Cap when the broker refused us (bad credentials, TLS failure): each such
    #: attempt costs a TLS handshake of mobile data, so back off much further.
    refused_backoff_max_s: float = 600.0
    #: A broker cluster whose node holding this device's session is down refuses
    #: a QoS 1 subscription on the other nodes (RabbitMQ: "home node ... of
    #: durable queue ... is down") and closes the connection. The agent then
    #: subscribes at QoS 0 there (publishing stays QoS 1: reports flow; commands
    #: and confirmations arrive while connected) and reconnects to try QoS 1
    #: again after this long. See edge_agent.uplink.
    qos1_retry_s: float = 900.0

    @property
    def addresses(self) -> tuple[str, ...]:
        """Every broker URL, in the configured order (``urls``, or ``url`` alone)."""
        return self.urls or (self.url,)

    @property
    def tls(self) -> bool:
        return broker_endpoint(self.addresses[0])[2]

    @property
    def host(self) -> str:
        """The first address's host (tools that check one broker)."""
        return broker_endpoint(self.addresses[0])[0]

    @property
    def port(self) -> int:
        return broker_endpoint(self.addresses[0])[1]


def broker_endpoint(url: str) -> tuple[str, int, bool]:
    """``(host, port, tls)`` of a validated ``mqtt://`` or ``mqtts://`` URL."""
    parts = urlsplit(url)
    tls = parts.scheme == "mqtts"
    return parts.hostname or "", parts.port or (8883 if tls else 1883), tls


@dataclass(frozen=True, kw_only=True)
class ModemConfig:
    #: AT port. Use the stable /dev/serial/by-id/usb-<vendor>_<model>-if02-port0 link,
    #: not /dev/ttyUSBn: the numbers move when the modem re-enumerates after a reset.
    port: str
    #: AT dialect in firmware_shims.modem.dialects: "generic" (3GPP), "quectel",
    #: "quectel-eg21", "quectel-ec200", "quectel-eg800k", "simcom", "simcom-a7670",
    #: "simcom-a7672".
    dialect: str = "generic"
    #: Baud rate (USB modems ignore it; UART-attached modules need it right).
    baud: int = 115200
    #: Seconds between polls of the modem.
    poll_s: float = 30.0
    #: Timeout of one AT exchange; must be shorter than poll_s.
    timeout_s: float = 2.0


@dataclass(frozen=True, kw_only=True)
class AmpConfig:
    #: "rtu" (RS-485 serial) or "tcp" (Modbus TCP).
    transport: Literal["rtu", "tcp"] = "rtu"
    #: RTU: serial port (use /dev/serial/by-id/... for USB RS-485 adapters).
    port: str = ""
    #: RTU line settings: baud, parity ("N", "E", "O").
    baud: int = 9600
    parity: Literal["N", "E", "O"] = "N"
    #: TCP: "host:port" of the amplifier's Modbus TCP server.
    address: str = ""
    #: Modbus unit (slave) id of the amplifier.
    unit: int = 1
    #: Register map in firmware_shims/profiles (e.g. "generic", "monacor-pa1250d").
    profile: str = "generic"
    #: Seconds between polls of the amplifier.
    poll_s: float = 30.0
    #: Timeout of one Modbus request; must be shorter than poll_s.
    timeout_s: float = 1.0


@dataclass(frozen=True, kw_only=True)
class StreamConfig:
    #: Broadcast stream URL (http:// or https://) checked for reachability; "" to skip.
    url: str = ""
    #: Bytes of audio that must arrive for the stream to count as received. Each
    #: check costs this plus ~0.5 KB of HTTP/TCP over the SIM (~0.2 MB/day at the
    #: defaults, more than all MQTT traffic): prefer player_state_file when the
    #: local player reports its state, which costs nothing.
    min_bytes: int = 256
    #: JSON or text file where the local player writes its state; "" to skip.
    player_state_file: Path | None = None
    #: The player state counts only if the file changed within this many seconds.
    player_state_max_age_s: float = 180.0
    #: Seconds between stream checks.
    poll_s: float = 300.0
    #: Timeout of one check; must be shorter than poll_s.
    timeout_s: float = 15.0


@dataclass(frozen=True, kw_only=True)
class SystemConfig:
    #: Seconds between readings of CPU, memory, disk and SoC temperature.
    poll_s: float = 60.0
    #: Filesystem whose fill level is reported (the SD card).
    disk_path: Path = Path("/")
    #: Seconds allowed for one reading; must be shorter than poll_s.
    timeout_s: float = 5.0
    #: Whether the wall clock can be trusted: "kernel" asks the kernel
    #: (adjtimex: synchronised once NTP, e.g. systemd-timesyncd, disciplines
    #: it) and marks messages made before that; "trust" never marks them
    #: (a controller with a battery-backed RTC and no time daemon).
    clock_sync: str = "kernel"


@dataclass(frozen=True, kw_only=True)
class ReportsConfig:
    #: A compact heartbeat (faults and outbox depth only) every this many seconds.
    heartbeat_s: float = 600.0
    #: A full state report at least this often even when nothing changed.
    full_report_s: float = 21600.0
    #: A signal change smaller than this (dB) since the last report is jitter.
    signal_hysteresis_db: float = 6.0
    #: A temperature change smaller than this (°C) since the last report is jitter.
    temperature_hysteresis_c: float = 5.0
    #: A CPU/memory/disk change smaller than this (percentage points) is jitter.
    percent_hysteresis: float = 10.0
    #: A mains/battery voltage change smaller than this fraction is jitter.
    voltage_hysteresis: float = 0.1


@dataclass(frozen=True, kw_only=True)
class OutboxConfig:
    #: SQLite database of unsent messages and the persisted seq counter.
    path: Path = Path("/var/lib/loa-agent/outbox.sqlite")
    #: Cap on the payload bytes held; past it heartbeats are thinned first,
    #: then the oldest reports; fault events are never evicted.
    max_bytes: int = 8 * 1024 * 1024
    #: Messages handed to the uplink per batch (published with up to this many in flight).
    batch: int = 20
    #: A message the broker acknowledged but the collector has not confirmed is
    #: sent again once the collector has gone on confirming others for this
    #: long (it was lost, e.g. by a broker crash); everything unconfirmed is
    #: sent again after a reconnect anyway.
    resend_after_s: float = 300.0
    #: A collector that showed it confirms (a retained ack) but has confirmed
    #: nothing for this long while the link was up is taken for one that does
    #: not: broker acknowledgements count as delivery again until a live ack
    #: arrives (an older collector must not make the agent hold messages forever).
    confirm_fallback_s: float = 3 * 86400.0


@dataclass(frozen=True, kw_only=True)
class DiagnosisConfig:
    #: A condition must hold this long before its fault is raised (debounce).
    confirm_s: float = 120.0
    #: A raised fault's condition must be absent this long before it clears.
    clear_s: float = 300.0
    #: Weak signal is noisy: it must persist this long before it is raised.
    weak_signal_confirm_s: float = 600.0
    #: Registration lost and regained flap_count times within flap_window_s
    #: raises one network_unstable fault.
    flap_window_s: float = 1800.0
    flap_count: int = 3
    #: Weak signal thresholds (RSRP when the dialect gives it, else RSSI).
    weak_rsrp_dbm: float = -110.0
    weak_rssi_dbm: float = -99.0
    #: Amplifier heat sink temperature that counts as over-temperature.
    amp_over_temp_c: float = 85.0
    #: Mains below this voltage counts as a mains failure (0 disables; flags still count).
    mains_min_v: float = 170.0
    #: Controller thresholds.
    disk_full_pct: float = 95.0
    memory_low_pct: float = 95.0
    soc_overheat_c: float = 80.0


@dataclass(frozen=True, kw_only=True)
class RecoveryConfig:
    #: Run the recovery ladder at all.
    enabled: bool = True
    #: Soft-reset the modem (the dialect's AT+CFUN=1,1) once registration or the
    #: stream has been lost this long.
    soft_reset_after_s: float = 600.0
    #: Never soft-reset more often than this.
    soft_reset_min_interval_s: float = 1800.0
    #: Then run hook_command (USB/GPIO power cycle) if still lost this long.
    hook_after_s: float = 1800.0
    #: Never run the hook more often than this.
    hook_min_interval_s: float = 3600.0
    #: argv of the power-cycle hook, e.g. ["/usr/local/sbin/modem-power-cycle"]; [] disables.
    hook_command: tuple[str, ...] = ()
    #: Kill the hook if it runs longer than this.
    hook_timeout_s: float = 60.0


@dataclass(frozen=True, kw_only=True)
class ControlConfig:
    #: Unix socket of the local control server (technician CLI); "" disables it.
    socket: Path | None = Path("/run/loa-agent/control.sock")


@dataclass(frozen=True, kw_only=True)
class SmsConfig:
    #: The district's SMS gateway number (+84 and 9 digits) the fault SMS goes to.
    number: str
    #: File holding this device's SMS key as hex on its first line (provisioning writes it, 0600).
    key_file: Path
    #: Send only once the data link has been down this long (SIM ready and registered).
    after_s: float = 900.0
    #: At most this many SMS in any 24 hours (an SMS costs money); 0 disables sending.
    max_per_day: int = 3
    #: Where the sent-SMS record lives, so a restart does not reset the daily count.
    state_file: Path = Path("/var/lib/loa-agent/sms.json")
    #: Seconds between checks of the link, the modem and the faults.
    check_s: float = 60.0
    #: Timeout of each AT exchange of a send; the network's answer gets send_timeout_s.
    timeout_s: float = 2.0
    send_timeout_s: float = 60.0


@dataclass(frozen=True, kw_only=True)
class TunnelConfig:
    """The reverse SSH tunnel a technician reaches the controller through (``tunnel`` command).

    Everything here comes from provisioning and is a trust anchor: a remote
    configuration push may not change it.
    """

    #: The district jump host's address and sshd port.
    host: str
    port: int = 22
    #: Account on the jump host; its authorized_keys restricts this device's key to
    #: forwarding its one port (``restrict,port-forwarding,permitlisten=...``).
    user: str = "loa-tunnel"
    #: This device's private key (ed25519, mode 0600), made at provisioning.
    key_file: Path
    #: known_hosts holding the jump host's pinned host key (StrictHostKeyChecking=yes).
    known_hosts_file: Path
    #: Port on the jump host's loopback the tunnel listens on (one per device).
    remote_port: int
    #: What the tunnel leads to on the controller: its own sshd.
    local_host: str = "127.0.0.1"
    local_port: int = 22
    #: The longest a tunnel stays open; a command may ask for less, never more.
    max_s: float = 3600.0
    #: Give up opening after this long (TCP, SSH handshake, the remote forward).
    connect_timeout_s: float = 20.0
    #: The OpenSSH client (Debian's openssh-client).
    ssh: str = "/usr/bin/ssh"


@dataclass(frozen=True, kw_only=True)
class UpgradeConfig:
    """Agent upgrades from the district (``upgrade`` command, ``edge_agent.upgrade``).

    A trust anchor like [tunnel]: set by provisioning, never by a config push.
    """

    #: Ed25519 public key (PEM) whose signature an upgrade must carry.
    public_key: Path
    #: Where upgrades are downloaded and their environments made; ``current`` links
    #: the running one (systemd starts ``<root>/current/bin/loa-agent``).
    root: Path = Path("/var/lib/loa-agent")
    #: The installed environment (read-only, from install-agent.sh): the first
    #: ``current``, the fallback, and where an upgrade's unchanged dependencies come from.
    base_venv: Path = Path("/opt/loa-fleet/venv")
    #: Interpreter new environments are made with.
    python: str = "/usr/bin/python3"
    #: The new version must be connected and healthy this long after its start.
    health_deadline_s: float = 300.0
    #: Starts of a new version (crashes) before the guard goes back to the old one.
    max_attempts: int = 3
    #: Largest upgrade accepted (bytes); also bounds what is downloaded.
    max_bytes: int = 64 * 1024 * 1024
    #: Give up a download after this long.
    download_timeout_s: float = 600.0
    #: The openssl binary that checks the signature (no crypto library on the agent).
    openssl: str = "/usr/bin/openssl"


@dataclass(frozen=True, kw_only=True)
class AgentConfig:
    device: DeviceConfig
    broker: BrokerConfig
    modem: ModemConfig | None = None
    amp: AmpConfig | None = None
    stream: StreamConfig | None = None
    system: SystemConfig = field(default_factory=SystemConfig)
    reports: ReportsConfig = field(default_factory=ReportsConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    diagnosis: DiagnosisConfig = field(default_factory=DiagnosisConfig)
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    #: SMS fallback when the data link is down but SMS works (needs [modem]); off when absent.
    sms: SmsConfig | None = None
    #: The reverse SSH tunnel; absent: the ``tunnel`` command is unavailable.
    tunnel: TunnelConfig | None = None
    #: Signed agent upgrades; absent: the ``upgrade`` command is unavailable.
    upgrade: UpgradeConfig | None = None
    #: Python logging level name.
    log_level: str = "INFO"

    @property
    def username(self) -> str:
        return self.broker.username or self.device.id

    def password(self) -> str | None:
        """The MQTT password from ``broker.password_file`` (first line), or None."""
        if self.broker.password_file is None:
            return None
        try:
            return self.broker.password_file.read_text(encoding="utf-8").splitlines()[0]
        except (OSError, IndexError) as exc:
            raise ConfigError("broker.password_file", f"cannot read a password: {exc}") from None


# --- loading -------------------------------------------------------------------------


def _positive(key: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(key, f"must be positive, got {value}")


def _poll(section: str, poll_s: float, timeout_s: float) -> None:
    _positive(f"{section}.poll_s", poll_s)
    _positive(f"{section}.timeout_s", timeout_s)
    if timeout_s >= poll_s:
        raise ConfigError(
            f"{section}.timeout_s",
            f"{timeout_s} s is not shorter than {section}.poll_s ({poll_s} s): "
            "a poll would still be running when the next is due",
        )


def _readable(key: str, path: Path | None) -> None:
    if path is not None and not path.is_file():
        raise ConfigError(key, f"no such file: {path}")


#: Checks what only the hardware layer knows (dialect names, amplifier profiles);
#: raises ConfigError naming the field. ``firmware_shims.hardware.check_agent_hardware``.
HardwareCheck = Callable[["AgentConfig"], None]


def validate(cfg: AgentConfig, *, hardware: HardwareCheck | None = None) -> AgentConfig:
    """Check cross-field rules (and ``hardware``'s); raises ConfigError naming the field."""
    if not valid_device_id(cfg.device.id):
        raise ConfigError("device.id", f"{cfg.device.id!r} must match [a-z0-9][a-z0-9-]{{2,62}}")
    b = cfg.broker
    _validate_broker_urls(b)
    _readable("broker.ca_file", b.ca_file)
    _readable("broker.client_cert", b.client_cert)
    _readable("broker.client_key", b.client_key)
    _readable("broker.password_file", b.password_file)
    if (b.client_cert is None) != (b.client_key is None):
        raise ConfigError("broker.client_key", "client_cert and client_key go together")
    if (b.client_cert is not None or b.ca_file is not None) and not b.tls:
        raise ConfigError(
            "broker.urls" if b.urls else "broker.url",
            "certificates are configured but the URL is not mqtts://",
        )
    if b.keepalive_s < 5:
        raise ConfigError("broker.keepalive_s", f"{b.keepalive_s} s is too short (>= 5)")
    for name in (
        "connect_timeout_s",
        "publish_timeout_s",
        "backoff_max_s",
        "refused_backoff_max_s",
        "qos1_retry_s",
    ):
        _positive(f"broker.{name}", getattr(b, name))
    if b.backoff_base_s <= 1:
        raise ConfigError("broker.backoff_base_s", "must be > 1 so the backoff grows")
    if cfg.modem is not None:
        _poll("modem", cfg.modem.poll_s, cfg.modem.timeout_s)
        if not cfg.modem.port:
            raise ConfigError("modem.port", "required (e.g. /dev/serial/by-id/usb-...-if02-port0)")
    if hardware is not None:
        hardware(cfg)
    if cfg.amp is not None:
        a = cfg.amp
        _poll("amp", a.poll_s, a.timeout_s)
        if a.transport == "rtu" and not a.port:
            raise ConfigError("amp.port", "required for transport 'rtu'")
        if a.transport == "tcp":
            host, _, port = a.address.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError("amp.address", f"{a.address!r} must be host:port")
        if not 0 <= a.unit <= 247:
            raise ConfigError("amp.unit", f"{a.unit} is not a Modbus unit id (0..247)")
    if cfg.stream is not None:
        s = cfg.stream
        _poll("stream", s.poll_s, s.timeout_s)
        if not s.url and s.player_state_file is None:
            raise ConfigError("stream", "set url and/or player_state_file")
        if s.url and urlsplit(s.url).scheme not in ("http", "https"):
            raise ConfigError("stream.url", f"{s.url!r} must be http:// or https://")
    _poll("system", cfg.system.poll_s, cfg.system.timeout_s)
    r = cfg.reports
    _positive("reports.heartbeat_s", r.heartbeat_s)
    if r.full_report_s < r.heartbeat_s:
        raise ConfigError("reports.full_report_s", "must not be shorter than heartbeat_s")
    if cfg.outbox.max_bytes < 64 * 1024:
        raise ConfigError("outbox.max_bytes", "must be at least 65536")
    if not 1 <= cfg.outbox.batch <= 100:
        raise ConfigError("outbox.batch", "must be 1..100")
    if cfg.system.clock_sync not in ("kernel", "trust"):
        raise ConfigError("system.clock_sync", f"{cfg.system.clock_sync!r}: use kernel or trust")
    if cfg.outbox.resend_after_s < 1:
        raise ConfigError("outbox.resend_after_s", "must be at least 1 s")
    if cfg.outbox.confirm_fallback_s < cfg.outbox.resend_after_s:
        raise ConfigError("outbox.confirm_fallback_s", "must not be shorter than resend_after_s")
    d = cfg.diagnosis
    for name in ("confirm_s", "clear_s", "weak_signal_confirm_s", "flap_window_s"):
        if getattr(d, name) < 0:
            raise ConfigError(f"diagnosis.{name}", "must not be negative")
    if d.flap_count < 2:
        raise ConfigError("diagnosis.flap_count", "must be at least 2")
    rc = cfg.recovery
    if rc.hook_after_s < rc.soft_reset_after_s:
        raise ConfigError("recovery.hook_after_s", "must not be shorter than soft_reset_after_s")
    _positive("recovery.hook_timeout_s", rc.hook_timeout_s)
    if cfg.sms is not None:
        _validate_sms(cfg)
    if cfg.tunnel is not None:
        t = cfg.tunnel
        if not t.host:
            raise ConfigError("tunnel.host", "required")
        for name in ("port", "remote_port", "local_port"):
            if not 0 < getattr(t, name) < 65536:
                raise ConfigError(f"tunnel.{name}", f"{getattr(t, name)} is not a TCP port")
        _readable("tunnel.key_file", t.key_file)
        _readable("tunnel.known_hosts_file", t.known_hosts_file)
        _positive("tunnel.max_s", t.max_s)
        _positive("tunnel.connect_timeout_s", t.connect_timeout_s)
    if cfg.upgrade is not None:
        u = cfg.upgrade
        _readable("upgrade.public_key", u.public_key)
        _positive("upgrade.health_deadline_s", u.health_deadline_s)
        _positive("upgrade.download_timeout_s", u.download_timeout_s)
        if u.max_attempts < 1:
            raise ConfigError("upgrade.max_attempts", "must be at least 1")
        if u.max_bytes < 1024:
            raise ConfigError("upgrade.max_bytes", "must be at least 1024")
    if not isinstance(logging.getLevelName(cfg.log_level.upper()), int):
        raise ConfigError("log_level", f"{cfg.log_level!r} is not a logging level")
    return cfg


def _validate_broker_urls(b: BrokerConfig) -> None:
    if b.url and b.urls:
        raise ConfigError("broker.urls", "set broker.url or broker.urls, not both")
    if not b.url and not b.urls:
        raise ConfigError("broker.url", "required (or broker.urls, a list of addresses)")
    keys = [f"broker.urls[{i}]" for i in range(len(b.urls))] if b.urls else ["broker.url"]
    seen: dict[tuple[str, int], str] = {}
    for key, url in zip(keys, b.addresses, strict=True):
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ConfigError(key, f"{url!r} must be mqtt://host[:port] or mqtts://host")
        try:
            _ = parts.port
        except ValueError:
            raise ConfigError(key, f"{url!r} has a bad port") from None
        host, port, tls = broker_endpoint(url)
        if (host, port) in seen:
            raise ConfigError(key, f"{url!r} is the same broker as {seen[(host, port)]}")
        seen[(host, port)] = key
        if tls != b.tls:
            # One TLS context (CA, client certificate) serves every address.
            raise ConfigError(key, f"{url!r}: every address must be mqtts:// or every one mqtt://")


def _validate_sms(cfg: AgentConfig) -> None:
    s = cfg.sms
    assert s is not None
    if cfg.modem is None:
        raise ConfigError("sms", "needs a [modem] to send through")
    if not re.fullmatch(r"\+?[0-9]{6,15}", s.number):
        raise ConfigError("sms.number", f"{s.number!r} is not a phone number (+84...)")
    _readable("sms.key_file", s.key_file)
    _positive("sms.after_s", s.after_s)
    _positive("sms.check_s", s.check_s)
    _positive("sms.timeout_s", s.timeout_s)
    _positive("sms.send_timeout_s", s.send_timeout_s)
    if s.max_per_day < 0:
        raise ConfigError("sms.max_per_day", "must not be negative")


def parse_config(data: dict[str, Any], *, hardware: HardwareCheck | None = None) -> AgentConfig:
    """Build and validate an AgentConfig from parsed TOML."""
    try:
        cfg = build(AgentConfig, data)
    except ConfigFieldError as exc:
        raise ConfigError(exc.field or "$", exc.reason) from None
    return validate(cfg, hardware=hardware)


def load_config(path: Path | str, *, hardware: HardwareCheck | None = None) -> AgentConfig:
    """Load ``path``; raises ConfigError (with ``path`` set) naming the bad field."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError("$", f"cannot read: {exc.strerror or exc}", path=str(p)) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("$", f"not valid TOML: {exc}", path=str(p)) from None
    try:
        return parse_config(data, hardware=hardware)
    except ConfigError as exc:
        raise ConfigError(exc.field, exc.reason, path=str(p)) from None


__all__ = [
    "AgentConfig",
    "AmpConfig",
    "BrokerConfig",
    "ConfigError",
    "ControlConfig",
    "DeviceConfig",
    "DiagnosisConfig",
    "HardwareCheck",
    "ModemConfig",
    "OutboxConfig",
    "RecoveryConfig",
    "ReportsConfig",
    "SmsConfig",
    "StreamConfig",
    "SystemConfig",
    "TunnelConfig",
    "UpgradeConfig",
    "broker_endpoint",
    "load_config",
    "parse_config",
    "validate",
]
