"""Provision a speaker cluster: credentials, broker entries, inventory row and agent.toml.

``provision(...)`` (and ``loa-collector provision DEVICE_ID ...``) does, for one
device:

1. credentials: a random MQTT password (password mode) or, with a fleet CA, a
   client certificate whose CN is the device id (certificate mode);
2. the broker: the password's hash in Mosquitto's password file (or, in
   certificate mode, the removal of any old password, so a device is never
   reachable by a forgotten credential), and a check that the ACL confines the
   device to ``loa/v1/<id>/...``;
3. the inventory row in the collector's store (``upsert_inventory``), keeping
   what the inventory already says about the device;
4. a bundle directory for the controller: ``agent.toml``, ``ca.crt`` and
   ``mqtt-password`` or ``client.crt``/``client.key``. install-agent.sh copies
   it to ``/etc/loa-agent``.

Secrets (the password, the device key) are only ever written to files created
with mode 0600; they are never logged or printed.

The password file is written here rather than with ``mosquitto_passwd``:
``mosquitto_passwd -b`` takes the password on its command line, where every
local user can read it in ``/proc/<pid>/cmdline``; and the collector host need
not have the Mosquitto tools. The format is Mosquitto 2's
``user:$7$<iterations>$<salt b64>$<PBKDF2-HMAC-SHA512 b64>``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import secrets
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import tomli_w

from collector.broker_config import DEPLOY_DIR, PRODUCTION_ACL
from collector.config import DbConfig
from collector.model import CommuneKind, InventoryDevice
from collector.provision_remote import (
    RemoteProvisionError,
    TunnelPlan,
    parse_host,
    tunnel_files,
    upgrade_files,
)
from collector.store.base import Repository
from collector.tls import (
    CA_CERT,
    CRL,
    CertificateAuthority,
    TlsError,
    issued_serials,
    record_issued,
    revoke,
    revoked_serials,
    write_file,
)
from fleet_protocol.sms import sms_key
from fleet_protocol.topics import valid_device_id

log = logging.getLogger(__name__)

#: The agent's documented example config: the template of every agent.toml.
AGENT_TEMPLATE = DEPLOY_DIR / "agent.example.toml"
#: Where install-agent.sh puts the bundle on the controller.
AGENT_CONFIG_DIR = Path("/etc/loa-agent")
#: The broker's files in production (see deploy/mosquitto/mosquitto.conf).
BROKER_DIR = Path("/etc/mosquitto/loa")
#: Mosquitto 2's default iteration count. The passwords are 32 random bytes,
#: so stretching adds nothing against guessing, while every count costs broker
#: CPU when a whole district reconnects after an outage.
PBKDF2_ITERATIONS = 101
PASSWORD_FILE = "mqtt-password"
SMS_KEY_FILE = "sms.key"
#: The lines of the ACL that give a device its own topics and nothing else.
DEVICE_ACL = (
    "pattern write loa/v1/%u/state",
    "pattern write loa/v1/%u/event",
    "pattern write loa/v1/%u/presence",
    "pattern write loa/v1/%u/cmd/reply",
    "pattern read loa/v1/%u/cmd",
    "pattern read loa/v1/%u/ack",
)
#: The collector's lines: it reads everything and writes commands and store confirmations.
COLLECTOR_ACL = (
    "topic read loa/v1/#",
    "topic write loa/v1/+/cmd",
    "topic write loa/v1/+/ack",
)

Auth = Literal["password", "cert"]


class ProvisionError(Exception):
    """Provisioning refused or failed; the message names the device, file or option."""


# --- Mosquitto password file ------------------------------------------------------------


def hash_password(password: str, *, iterations: int = PBKDF2_ITERATIONS) -> str:
    """The password as Mosquitto 2 stores it (``$7$...``), with a fresh random salt."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_password(password: str, hashed: str) -> bool:
    """True if ``password`` matches a ``$7$`` (or ``$6$``, Mosquitto 1.x) hash."""
    parts = hashed.split("$")
    try:
        if len(parts) == 5 and parts[1] == "7":
            iterations, salt, digest = int(parts[2]), parts[3], parts[4]
            got = hashlib.pbkdf2_hmac(
                "sha512", password.encode(), base64.b64decode(salt), iterations, 64
            )
        elif len(parts) == 4 and parts[1] == "6":
            salt, digest = parts[2], parts[3]
            got = hashlib.sha512(password.encode() + base64.b64decode(salt)).digest()
        else:
            return False
        return secrets.compare_digest(got, base64.b64decode(digest))
    except ValueError:
        return False


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock next to ``path`` so concurrent provisioning runs serialize."""
    lock = path.with_name(f".{path.name}.lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _rewrite_keeping_owner(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically; an existing file keeps its owner, group and mode."""
    try:
        st = path.stat()
    except FileNotFoundError:
        write_file(path, data, mode=0o600)
        return
    write_file(path, data, mode=st.st_mode & 0o7777)
    if os.geteuid() == 0 and (st.st_uid, st.st_gid) != (os.getuid(), os.getgid()):
        os.chown(path, st.st_uid, st.st_gid)


def set_password_entry(passwd: Path, user: str, hashed: str | None) -> bool:
    """Put ``user:hashed`` in Mosquitto's password file, or remove the user (``hashed`` None).

    Other lines are kept as they are. Returns True if the file changed.
    """
    with _locked(passwd):
        try:
            lines = passwd.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            lines = []
        except OSError as exc:
            raise ProvisionError(f"{passwd}: cannot read: {exc.strerror}") from exc
        kept = [line for line in lines if line.partition(":")[0] != user]
        if hashed is not None:
            kept.append(f"{user}:{hashed}")
        if kept == lines:
            return False
        try:
            _rewrite_keeping_owner(passwd, ("\n".join(kept) + "\n").encode() if kept else b"")
        except OSError as exc:
            raise ProvisionError(f"{passwd}: cannot write: {exc.strerror}") from exc
        return True


#: Lines an ACL written before store confirmations lacks: added in place, after
#: the line named (the broker applies ``topic`` lines to the ``user`` above them).
_ACL_UPGRADES = (
    ("pattern read loa/v1/%u/ack", "pattern read loa/v1/%u/cmd"),
    ("topic write loa/v1/+/ack", "topic write loa/v1/+/cmd"),
)


def ensure_device_acl(acl: Path) -> bool:
    """Make sure the broker ACL confines devices to their own topics.

    The production ACL grants topics by pattern on the username (``%u``), so a
    new device needs no line of its own: this installs the production ACL if
    there is none, adds the store-confirmation lines (``ack``) to an ACL from
    before them, and refuses an ACL that lacks one of the other device
    patterns (someone edited it by hand). Returns True if the file was
    created or changed (the broker must reload it).
    """
    if not acl.exists():
        _rewrite_keeping_owner(acl, PRODUCTION_ACL.read_bytes())
        return True
    try:
        lines = acl.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ProvisionError(f"{acl}: cannot read: {exc.strerror}") from exc
    present = {" ".join(line.split()) for line in lines}
    upgraded = {new for new, _after in _ACL_UPGRADES}
    missing = [line for line in DEVICE_ACL if line not in present and line not in upgraded]
    if missing:
        raise ProvisionError(
            f"{acl}: lacks {missing[0]!r}; devices would not get their topics "
            f"(compare with {PRODUCTION_ACL})"
        )
    changed = False
    for new, after in _ACL_UPGRADES:
        if new in present:
            continue
        at = [i for i, line in enumerate(lines) if " ".join(line.split()) == after]
        if not at:
            raise ProvisionError(
                f"{acl}: lacks {new!r} and {after!r} to put it after "
                f"(compare with {PRODUCTION_ACL})"
            )
        lines.insert(at[0] + 1, new)
        changed = True
    if changed:
        _rewrite_keeping_owner(acl, ("\n".join(lines) + "\n").encode("utf-8"))
    return changed


# --- agent.toml ---------------------------------------------------------------------------


def dump_toml(data: Mapping[str, Any]) -> str:
    """TOML text for nested tables of strings, numbers, booleans and lists (``tomli-w``).

    A value TOML cannot express (None, an object) raises ProvisionError
    naming the file instead of producing a different config.
    """
    try:
        return tomli_w.dumps(_plain(data), multiline_strings=False)
    except (TypeError, ValueError) as exc:
        raise ProvisionError(f"agent.toml: cannot write {exc}") from None


def _plain(data: Any) -> Any:
    if isinstance(data, Mapping):
        return {k: _plain(v) for k, v in data.items()}
    if isinstance(data, tuple | list):
        return [_plain(v) for v in data]
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    """``section.key=value`` from the command line; the value is TOML, else a bare string."""
    key, sep, raw = item.partition("=")
    path = key.strip().split(".")
    if not sep or not all(path):
        raise ProvisionError(f"--set {item!r}: expected section.key=value")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return path, value


@dataclass(frozen=True, kw_only=True)
class AgentFiles:
    """Where the agent finds its credentials on the controller."""

    ca_file: Path | None = None
    password_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None


def agent_config(
    template: Mapping[str, Any],
    *,
    device_id: str,
    commune: str,
    broker_url: str | Sequence[str],
    files: AgentFiles,
    overrides: Sequence[tuple[list[str], Any]] = (),
) -> dict[str, Any]:
    """The device's agent config: ``template`` with identity, broker and credentials filled in.

    Several broker URLs (the nodes of a cluster) go to ``[broker] urls``.
    """
    cfg: dict[str, Any] = json.loads(json.dumps(template))  # deep copy of plain TOML data
    cfg.setdefault("device", {}).update(id=device_id, commune=commune)
    broker = cfg.setdefault("broker", {})
    for name in (
        "ca_file",
        "password_file",
        "client_cert",
        "client_key",
        "username",
        "url",
        "urls",
    ):
        broker.pop(name, None)
    urls = [broker_url] if isinstance(broker_url, str) else list(broker_url)
    if len(urls) == 1:
        broker["url"] = urls[0]
    else:
        broker["urls"] = urls
    for name, path in dataclasses.asdict(files).items():
        if path is not None:
            broker[name] = str(path)
    for path, value in overrides:
        node = cfg
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ProvisionError(f"--set {'.'.join(path)}: {part} is not a table")
        node[path[-1]] = value
    return cfg


def _load_template(path: Path) -> dict[str, Any]:
    if not path.exists() and path == AGENT_TEMPLATE:
        log.warning("%s not found: agent.toml gets the device and broker sections only", path)
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProvisionError(f"{path}: cannot read the agent template: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ProvisionError(f"{path}: the agent template is not valid TOML: {exc}") from exc


def _check_agent_config(cfg: Mapping[str, Any]) -> None:
    """Validate with the agent's own loader, so a bad template fails here, not in the field.

    The credential files do not exist yet when this runs (nothing is written
    before every check passed), and they are ours anyway: their paths are
    pointed at a file that exists for the loader's readability checks.
    """
    from firmware_shims.hardware import check_agent_hardware
    from fleet_protocol.agent_config import ConfigError, parse_config

    local: dict[str, Any] = json.loads(json.dumps(cfg))
    broker = local.get("broker", {})
    for name in ("ca_file", "password_file", "client_cert", "client_key"):
        if broker.get(name):
            broker[name] = __file__
    if isinstance(local.get("sms"), dict) and local["sms"].get("key_file"):
        local["sms"]["key_file"] = __file__
    for section, names in (
        ("tunnel", ("key_file", "known_hosts_file")),
        ("upgrade", ("public_key",)),
    ):
        for name in names:
            if local.get(section, {}).get(name):
                local[section][name] = __file__
    try:
        parse_config(local, hardware=check_agent_hardware)
    except ConfigError as exc:
        raise ProvisionError(f"agent.toml would not load on the controller: {exc}") from exc


# --- inventory ----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class InventoryFields:
    """What the command line says about the device; None keeps the inventory's value."""

    commune_code: str
    commune_name: str | None = None
    commune_kind: CommuneKind | None = None
    district: str | None = None
    province: str | None = None
    address: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    contractor: str | None = None
    sim_iccid: str | None = None
    sim_phone: str | None = None
    install_date: str | None = None


def merge_inventory(
    device_id: str, fields: InventoryFields, existing: Sequence[InventoryDevice]
) -> InventoryDevice:
    """The device's inventory row after provisioning.

    A device already in the inventory keeps its position and every field the
    command line does not set. A new device goes last; its commune's name and
    kind come from another device of the same commune when not given.
    """
    current = next((d for d in existing if d.device_id == device_id), None)
    same_commune = next((d for d in existing if d.commune_code == fields.commune_code), None)
    given = {
        k: v for k, v in dataclasses.asdict(fields).items() if v is not None and k != "commune_code"
    }
    if current is not None:
        if current.commune_code != fields.commune_code and "commune_name" not in given:
            if same_commune is None:
                raise ProvisionError(
                    f"{device_id}: moving to new commune {fields.commune_code!r} needs "
                    "--commune-name"
                )
            given.setdefault("commune_name", same_commune.commune_name)
            given.setdefault("commune_kind", same_commune.commune_kind)
        return dataclasses.replace(current, commune_code=fields.commune_code, **given)
    if "commune_name" not in given:
        if same_commune is None:
            raise ProvisionError(
                f"{device_id}: commune {fields.commune_code!r} is not in the inventory yet; "
                "give --commune-name"
            )
        given["commune_name"] = same_commune.commune_name
        given.setdefault("commune_kind", same_commune.commune_kind)
        given.setdefault("district", same_commune.district)
        given.setdefault("province", same_commune.province)
    position = max((d.position for d in existing), default=-1) + 1
    return InventoryDevice(
        device_id=device_id, commune_code=fields.commune_code, position=position, **given
    )


# --- the whole job ------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Provisioned:
    """What provisioning produced. Holds no secret."""

    device_id: str
    auth: Auth
    bundle: Path
    agent_toml: Path
    #: The first of ``broker_urls``.
    broker_url: str
    #: Every broker address the device dials (the nodes of a cluster).
    broker_urls: tuple[str, ...]
    #: The device's RabbitMQ user was created or updated (``rabbitmq_ctl``).
    rabbitmq_user: bool
    #: The inventory row as stored (None when no store was given).
    inventory: InventoryDevice | None
    #: Files of the bundle, by name.
    files: tuple[str, ...]


def _broker_url(url: str, auth: Auth, *, cert_port: int = 8884) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ProvisionError(f"--broker-url {url!r}: must be mqtts://host[:port]")
    if auth == "cert" and parts.scheme != "mqtts":
        raise ProvisionError(f"--broker-url {url!r}: certificate mode needs mqtts://")
    try:
        port = parts.port
    except ValueError:
        raise ProvisionError(f"--broker-url {url!r}: bad port") from None
    if port is None and auth == "cert":
        # The client-certificate listener (deploy/mosquitto/mosquitto.conf: 8884;
        # RabbitMQ takes both modes on 8883, deploy/rabbitmq/rabbitmq.conf).
        return f"mqtts://{parts.netloc}:{cert_port}"
    return url


async def provision(
    device_id: str,
    inventory: InventoryFields,
    *,
    out_dir: Path,
    broker_url: str | Sequence[str],
    broker_dir: Path | None = BROKER_DIR,
    rabbitmq_ctl: Sequence[str] | None = None,
    ca_dir: Path | None = None,
    auth: Auth | None = None,
    store: Repository | None = None,
    template: Path = AGENT_TEMPLATE,
    install_dir: Path = AGENT_CONFIG_DIR,
    overrides: Sequence[tuple[list[str], Any]] = (),
    force: bool = False,
    reload_broker: Callable[[], None] | None = None,
    actor: str = "provision",
    sms: tuple[bytes, str] | None = None,
    tunnel: TunnelPlan | None = None,
    upgrade_key: Path | None = None,
    dry_run: bool = False,
) -> Provisioned | None:
    """Provision ``device_id``; see the module docstring. Raises ProvisionError.

    ``dry_run`` runs every check and writes nothing (returns None): a whole
    district is checked device by device before the first bundle is written.

    ``auth`` defaults to "cert" when ``ca_dir`` is given, else "password".
    ``broker_dir`` holds Mosquitto's ``passwd`` and ``acl`` (None leaves the
    broker alone, for a broker on another host). ``reload_broker`` is called
    after the password file changed (Mosquitto rereads it on SIGHUP).
    ``rabbitmq_ctl`` (a rabbitmqctl command line, e.g. ``["rabbitmqctl"]`` or
    ``["ssh", "mq1", "rabbitmqctl"]``) creates or updates the device's user on
    a RabbitMQ cluster instead (collector.broker_rabbitmq: its password, or
    none in certificate mode, and its per-device permissions).
    ``broker_url`` may list every node of a cluster (``[broker] urls``).
    Everything that can be checked is checked before anything is written, so a
    refused request leaves no partial bundle, broker entry or inventory row.
    """
    if not valid_device_id(device_id):
        raise ProvisionError(
            f"device id {device_id!r}: must match [a-z0-9][a-z0-9-]{{2,62}} "
            "(lower case letters, digits, '-')"
        )
    mode: Auth = auth or ("cert" if ca_dir is not None else "password")
    if mode == "cert" and ca_dir is None:
        raise ProvisionError("certificate mode needs --ca-dir (the fleet CA)")
    given = [broker_url] if isinstance(broker_url, str) else list(broker_url)
    if not given:
        raise ProvisionError("--broker-url: give the broker's address (once per cluster node)")
    cert_port = 8883 if rabbitmq_ctl is not None else 8884
    urls = [_broker_url(u, mode, cert_port=cert_port) for u in given]
    if len(set(urls)) != len(urls):
        raise ProvisionError(f"--broker-url: the same address twice in {urls}")
    url = urls[0]
    ca = None
    if ca_dir is not None:
        try:
            ca = CertificateAuthority.load(ca_dir)
        except TlsError as exc:
            raise ProvisionError(str(exc)) from exc
    agent_toml = out_dir / "agent.toml"
    if agent_toml.exists() and not force:
        raise ProvisionError(
            f"{agent_toml} exists: {device_id} was provisioned there already "
            "(--force issues new credentials and replaces it)"
        )
    # Credentials still valid elsewhere: replacing them cuts off a working device.
    active_certs = _active_certs(ca_dir, device_id) if ca_dir is not None else []
    has_password = broker_dir is not None and _has_password(broker_dir / "passwd", device_id)
    has_user = rabbitmq_ctl is not None and _rabbitmq_user_exists(device_id, rabbitmq_ctl)
    if (active_certs or has_password or has_user) and not force:
        what = (
            "a certificate"
            if active_certs
            else ("a broker password" if has_password else "a RabbitMQ user")
        )
        raise ProvisionError(
            f"{device_id} already has {what}: --force issues new credentials "
            "and revokes the old ones"
        )
    if broker_dir is not None:
        ensure_device_acl(broker_dir / "acl")

    files = AgentFiles(
        ca_file=install_dir / CA_CERT if ca is not None else None,
        password_file=install_dir / PASSWORD_FILE if mode == "password" else None,
        client_cert=install_dir / "client.crt" if mode == "cert" else None,
        client_key=install_dir / "client.key" if mode == "cert" else None,
    )
    cfg = agent_config(
        _load_template(template),
        device_id=device_id,
        commune=inventory.commune_code,
        broker_url=urls,
        files=files,
        overrides=overrides,
    )
    if sms is not None:
        if "modem" not in cfg:
            raise ProvisionError("the SMS fallback needs a [modem] section in agent.toml")
        cfg = {
            **cfg,
            "sms": {
                **cfg.get("sms", {}),
                "number": sms[1],
                "key_file": str(install_dir / SMS_KEY_FILE),
            },
        }
    # The tunnel key and the upgrade key (collector.provision_remote): trust anchors.
    extra_files: dict[str, tuple[bytes, int]] = {}
    try:
        if tunnel is not None:
            cfg["tunnel"], more = tunnel_files(device_id, tunnel, install_dir)
            extra_files.update(more)
        if upgrade_key is not None:
            cfg["upgrade"], more = upgrade_files(upgrade_key, install_dir)
            extra_files.update(more)
    except RemoteProvisionError as exc:
        raise ProvisionError(str(exc)) from None
    text = dump_toml(cfg)
    _check_agent_config(cfg)
    row = None
    if store is not None:
        row = merge_inventory(device_id, inventory, await store.list_inventory())
    if dry_run:
        return None

    # Checks done: write. The RabbitMQ user first (a refusal there leaves nothing
    # written; a bundle failure after it leaves a user nobody has the password
    # of, replaced by the next --force), then the bundle.
    password = secrets.token_urlsafe(32) if mode == "password" else None
    if rabbitmq_ctl is not None:
        from collector.broker_rabbitmq import RabbitProvisionError, provision_rabbitmq_device

        try:
            provision_rabbitmq_device(device_id, password, ctl=rabbitmq_ctl)
        except RabbitProvisionError as exc:
            raise ProvisionError(f"RabbitMQ: {exc}") from None
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    written: list[str] = []
    if ca is not None:
        write_file(out_dir / CA_CERT, ca.cert_pem, mode=0o644)
        written.append(CA_CERT)
    if mode == "password":
        assert password is not None
        write_file(out_dir / PASSWORD_FILE, f"{password}\n".encode(), mode=0o600)
        written.append(PASSWORD_FILE)
        (out_dir / "client.crt").unlink(missing_ok=True)
        (out_dir / "client.key").unlink(missing_ok=True)
    else:
        assert ca is not None
        issued = ca.issue_device(device_id)
        issued.write(out_dir / "client.crt", out_dir / "client.key")
        assert ca_dir is not None
        record_issued(ca_dir, device_id, issued)
        written += ["client.crt", "client.key"]
        (out_dir / PASSWORD_FILE).unlink(missing_ok=True)
    if sms is not None:
        # The device's own SMS key, derived from the district secret the gateway holds.
        write_file(
            out_dir / SMS_KEY_FILE, (sms_key(sms[0], device_id).hex() + "\n").encode(), mode=0o600
        )
        written.append(SMS_KEY_FILE)
    header = (
        f"# agent.toml of {device_id}, written by `loa-collector provision`.\n"
        f"# Every setting is documented in deploy/agent.example.toml.\n"
    )
    write_file(agent_toml, (header + text).encode(), mode=0o600)
    written.append("agent.toml")
    for name, (data, file_mode) in extra_files.items():
        write_file(out_dir / name, data, mode=file_mode)
        written.append(name)

    changed = False
    if active_certs and ca is not None and ca_dir is not None:
        crl = revoke(ca, ca_dir, active_certs)
        if broker_dir is not None:
            write_file(broker_dir / CRL, crl, mode=0o644)
            changed = True
    if broker_dir is not None:
        changed |= set_password_entry(
            broker_dir / "passwd", device_id, hash_password(password) if password else None
        )
    if changed and reload_broker is not None:
        reload_broker()
    if store is not None and row is not None:
        await store.upsert_inventory([row], remove_missing=False, actor=actor)
    log.info("provisioned %s (%s mode) into %s", device_id, mode, out_dir)
    return Provisioned(
        device_id=device_id,
        auth=mode,
        bundle=out_dir,
        agent_toml=agent_toml,
        broker_url=url,
        broker_urls=tuple(urls),
        rabbitmq_user=rabbitmq_ctl is not None,
        inventory=row,
        files=tuple(written),
    )


def fields_of(device: InventoryDevice) -> InventoryFields:
    """What an inventory row says about its device, as provisioning takes it."""
    return InventoryFields(
        commune_code=device.commune_code,
        commune_name=device.commune_name,
        commune_kind=device.commune_kind,
        district=device.district,
        province=device.province,
        address=device.address,
        latitude=device.latitude,
        longitude=device.longitude,
        contractor=device.contractor,
        sim_iccid=device.sim_iccid,
        sim_phone=device.sim_phone,
        install_date=device.install_date,
    )


async def provision_inventory(
    devices: Sequence[InventoryDevice],
    *,
    out_dir: Path,
    store: Repository | None = None,
    reload_broker: Callable[[], None] | None = None,
    actor: str = "provision",
    **options: Any,
) -> list[Provisioned]:
    """Provision every device of an inventory: one bundle each in ``out_dir/<id>/``.

    Every device is checked first (``dry_run``), so a refused device leaves
    no bundle, broker entry or inventory row for any of them. The broker is
    reloaded once at the end and the inventory rows are stored in one import,
    as the file gives them. ``options`` are ``provision``'s.
    """
    if not devices:
        raise ProvisionError("the inventory has no devices")
    for d in devices:
        try:
            await provision(
                d.device_id, fields_of(d), out_dir=out_dir / d.device_id, dry_run=True, **options
            )
        except ProvisionError as exc:
            raise ProvisionError(
                f"{d.device_id}: {exc}" if d.device_id not in str(exc) else str(exc)
            ) from exc
    done: list[Provisioned] = []
    for d in devices:
        result = await provision(
            d.device_id, fields_of(d), out_dir=out_dir / d.device_id, **options
        )
        assert result is not None
        done.append(result)
    if reload_broker is not None:
        reload_broker()
    if store is not None:
        await store.upsert_inventory(list(devices), remove_missing=False, actor=actor)
        done = [dataclasses.replace(p, inventory=d) for p, d in zip(done, devices, strict=True)]
    log.info("provisioned %d devices into %s", len(done), out_dir)
    return done


def _active_certs(ca_dir: Path, device_id: str) -> list[int]:
    try:
        revoked = set(revoked_serials(ca_dir))
    except TlsError as exc:
        raise ProvisionError(str(exc)) from exc
    return [n for n in issued_serials(ca_dir, device_id) if n not in revoked]


def _rabbitmq_user_exists(device_id: str, ctl: Sequence[str]) -> bool:
    from collector.broker_rabbitmq import RabbitProvisionError, rabbitmq_user_exists

    try:
        return rabbitmq_user_exists(device_id, ctl=ctl)
    except RabbitProvisionError as exc:
        raise ProvisionError(f"RabbitMQ: {exc}") from None


def _has_password(passwd: Path, device_id: str) -> bool:
    try:
        lines = passwd.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise ProvisionError(f"{passwd}: cannot read: {exc.strerror}") from exc
    return any(line.partition(":")[0] == device_id for line in lines)


@dataclass(frozen=True, kw_only=True)
class Deprovisioned:
    device_id: str
    password_removed: bool
    #: Serial numbers of the device certificates revoked now.
    revoked: tuple[int, ...]
    #: Its RabbitMQ user was deleted (``rabbitmq_ctl``).
    rabbitmq_user_removed: bool = False


def deprovision(
    device_id: str,
    *,
    broker_dir: Path | None = BROKER_DIR,
    ca_dir: Path | None = None,
    reload_broker: Callable[[], None] | None = None,
    rabbitmq_ctl: Sequence[str] | None = None,
) -> Deprovisioned:
    """Cut a device off the broker: remove its password, revoke its certificates.

    The inventory and the device's history are left alone (the cluster still
    counts in the B2 table until the inventory says otherwise). Mosquitto
    disconnects a client whose password went away when it reloads; a client
    whose certificate was revoked stays connected until it reconnects, so
    ``reload_broker`` should restart the broker when certificates were revoked
    (``loa-collector deprovision`` does). ``rabbitmq_ctl`` (a rabbitmqctl
    command line) deletes the device's RabbitMQ user instead of touching
    Mosquitto's files: RabbitMQ closes its connections at once, and neither
    its password nor its certificate logs in again.
    """
    if not valid_device_id(device_id):
        raise ProvisionError(f"device id {device_id!r}: not a valid device id")
    removed = False
    user_removed = False
    if rabbitmq_ctl is not None:
        from collector.broker_rabbitmq import RabbitProvisionError, deprovision_rabbitmq_device

        if _rabbitmq_user_exists(device_id, rabbitmq_ctl):
            try:
                deprovision_rabbitmq_device(device_id, ctl=rabbitmq_ctl)
            except RabbitProvisionError as exc:
                raise ProvisionError(f"RabbitMQ: {exc}") from None
            user_removed = True
        broker_dir = None
    elif broker_dir is not None:
        removed = set_password_entry(broker_dir / "passwd", device_id, None)
    serials: list[int] = []
    if ca_dir is not None:
        serials = _active_certs(ca_dir, device_id)
        if serials:
            try:
                crl = revoke(CertificateAuthority.load(ca_dir), ca_dir, serials)
            except TlsError as exc:
                raise ProvisionError(str(exc)) from exc
            if broker_dir is not None:
                write_file(broker_dir / CRL, crl, mode=0o644)
    if not removed and not serials and not user_removed:
        what = "RabbitMQ user, " if rabbitmq_ctl is not None else ""
        raise ProvisionError(f"{device_id}: no {what}password or certificate to revoke")
    if reload_broker is not None:
        reload_broker()
    log.info("deprovisioned %s (%d certificate(s) revoked)", device_id, len(serials))
    return Deprovisioned(
        device_id=device_id,
        password_removed=removed,
        revoked=tuple(serials),
        rabbitmq_user_removed=user_removed,
    )


# --- command line -------------------------------------------------------------------------


def configure_parser(p: argparse.ArgumentParser, *, standalone: bool = True) -> None:
    """Add provisioning's arguments to ``p``.

    ``standalone=False`` when ``p`` inherits ``--config`` from ``loa-collector``'s
    common options (with its default path).
    """
    p.add_argument(
        "device_id", metavar="DEVICE_ID", nargs="?", help="one device (or --from-inventory)"
    )
    p.add_argument(
        "--from-inventory",
        type=Path,
        metavar="FILE",
        help="every device of this inventory (CSV or XLSX, as `inventory import` reads): "
        "a bundle each in --out/<device id>/, their broker entries and inventory rows",
    )
    p.add_argument("--commune", help="commune code (mã xã) from the inventory")
    p.add_argument("--commune-name", help="commune name; needed for a commune not yet listed")
    p.add_argument("--commune-kind", choices=[k.value for k in CommuneKind])
    for name in ("district", "province", "address", "contractor", "install-date"):
        p.add_argument(f"--{name}")
    p.add_argument("--iccid", dest="sim_iccid")
    p.add_argument("--phone", dest="sim_phone")
    p.add_argument("--lat", type=float, dest="latitude")
    p.add_argument("--lon", type=float, dest="longitude")
    p.add_argument(
        "--broker-url",
        required=True,
        action="append",
        help="what the device dials: mqtts://host[:port]; once per node of a broker cluster",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="bundle directory to create (with --from-inventory: their parent)",
    )
    p.add_argument(
        "--ca-dir", type=Path, help="fleet CA (ca.crt, ca.key); enables certificate mode"
    )
    p.add_argument(
        "--auth", choices=["password", "cert"], help="default: cert with --ca-dir, else password"
    )
    p.add_argument(
        "--broker-dir",
        type=Path,
        default=BROKER_DIR,
        help=f"Mosquitto's passwd and acl (default {BROKER_DIR})",
    )
    p.add_argument(
        "--no-broker", action="store_true", help="leave the broker's files alone (remote broker)"
    )
    p.add_argument(
        "--rabbitmq-ctl",
        metavar="COMMAND",
        help="a RabbitMQ broker cluster: create the device's user and permissions with this "
        "rabbitmqctl (e.g. 'rabbitmqctl' or 'ssh mq1 rabbitmqctl'); Mosquitto's files are "
        "left alone",
    )
    p.add_argument(
        "--reload-command",
        default="systemctl reload mosquitto",
        help="run after the password file changed (default: %(default)s)",
    )
    p.add_argument("--no-reload", action="store_true", help="do not reload the broker")
    if standalone:
        p.add_argument("--config", type=Path, help="collector.toml: its [db] store gets the row")
    p.add_argument(
        "--db",
        metavar="FILE|URL",
        help="the collector's store: a SQLite file, sqlite:///path or postgresql://... "
        "(wins over --config's [db])",
    )
    p.add_argument(
        "--no-inventory", action="store_true", help="do not touch the collector's inventory"
    )
    p.add_argument("--template", type=Path, default=AGENT_TEMPLATE, help="agent.toml template")
    p.add_argument(
        "--install-dir",
        type=Path,
        default=AGENT_CONFIG_DIR,
        help=f"where the bundle lands on the controller (default {AGENT_CONFIG_DIR})",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help='agent.toml override, value in TOML (e.g. modem.dialect="quectel")',
    )
    p.add_argument("--force", action="store_true", help="re-provision: new credentials")
    p.add_argument(
        "--tunnel-host", help="district jump host for the reverse SSH tunnel (HOST[:PORT])"
    )
    p.add_argument("--tunnel-user", default="loa-tunnel", help="its account for devices")
    p.add_argument("--tunnel-port", type=int, help="this device's port on the jump host")
    p.add_argument(
        "--tunnel-known-hosts", type=Path, help="the jump host's known_hosts line (pinned)"
    )
    p.add_argument("--upgrade-key", type=Path, help="the district's upgrade.pub (Ed25519)")
    p.add_argument(
        "--sms-number", help="turn on the SMS fallback: the district SMS gateway's number (+84...)"
    )
    p.add_argument(
        "--sms-secret-file",
        type=Path,
        help="the district's SMS secret (hex; the collector's [sms] secret_file)",
    )


def _sms_args(args: argparse.Namespace) -> tuple[bytes, str] | None:
    number, secret_file = getattr(args, "sms_number", None), getattr(args, "sms_secret_file", None)
    if number is None and secret_file is None:
        return None
    if number is None or secret_file is None:
        raise ProvisionError("--sms-number and --sms-secret-file go together")
    try:
        return bytes.fromhex(secret_file.read_text(encoding="utf-8").split()[0]), number
    except (OSError, ValueError, IndexError) as exc:
        raise ProvisionError(f"{secret_file}: not a hex SMS secret: {exc}") from None


def _db(args: argparse.Namespace) -> DbConfig | None:
    """The store that gets the inventory rows: ``--db``, else ``--config``'s ``[db]``."""
    if args.no_inventory:
        return None
    if args.db is not None:
        from collector.store.engines import StoreOptionError, db_option

        try:
            return db_option(str(args.db))
        except StoreOptionError as exc:
            raise ProvisionError(str(exc)) from None
    if args.config is not None:
        from collector.config import ConfigError, load_config

        try:
            return load_config(Path(args.config)).db
        except ConfigError as exc:
            raise ProvisionError(str(exc)) from exc
    return None


def _chown_like(db: Path) -> None:
    """Give SQLite side files created by a root run back to the database's owner."""
    if os.geteuid() != 0:
        return
    st = db.stat()
    for side in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            os.chown(side, st.st_uid, st.st_gid)


def _tunnel_plan(args: argparse.Namespace) -> TunnelPlan | None:
    if not args.tunnel_host:
        return None
    if args.tunnel_port is None or args.tunnel_known_hosts is None:
        raise ProvisionError("--tunnel-host needs --tunnel-port and --tunnel-known-hosts")
    try:
        host, port = parse_host(args.tunnel_host)
        known = args.tunnel_known_hosts.read_text(encoding="utf-8")
    except RemoteProvisionError as exc:
        raise ProvisionError(str(exc)) from None
    except OSError as exc:
        raise ProvisionError(f"--tunnel-known-hosts: {exc.strerror}") from None
    return TunnelPlan(
        host=host,
        port=port,
        user=args.tunnel_user,
        remote_port=args.tunnel_port,
        known_hosts=known,
    )


def _fields(args: argparse.Namespace) -> InventoryFields:
    return InventoryFields(
        commune_code=args.commune,
        commune_name=args.commune_name,
        commune_kind=CommuneKind(args.commune_kind) if args.commune_kind else None,
        district=args.district,
        province=args.province,
        address=args.address,
        latitude=args.latitude,
        longitude=args.longitude,
        contractor=args.contractor,
        sim_iccid=args.sim_iccid,
        sim_phone=args.sim_phone,
        install_date=args.install_date,
    )


_ROW_OPTIONS = (
    "commune", "commune_name", "commune_kind", "district", "province", "address",
    "contractor", "install_date", "sim_iccid", "sim_phone", "latitude", "longitude",
)  # fmt: skip


def _inventory_devices(args: argparse.Namespace) -> list[InventoryDevice]:
    given = [f"--{o.replace('_', '-')}" for o in _ROW_OPTIONS if getattr(args, o) is not None]
    if args.device_id is not None or given:
        what = args.device_id or given[0]
        raise ProvisionError(f"--from-inventory takes every device from the file: drop {what}")
    from collector.inventory import InventoryError, read_inventory

    try:
        return read_inventory(args.from_inventory)
    except InventoryError as exc:
        raise ProvisionError(str(exc)) from exc
    except OSError as exc:
        raise ProvisionError(f"{args.from_inventory}: cannot read: {exc.strerror}") from exc


async def _run(args: argparse.Namespace) -> list[Provisioned]:
    if args.from_inventory is not None:
        devices = _inventory_devices(args)
    elif args.device_id is None or args.commune is None:
        raise ProvisionError("give DEVICE_ID and --commune CODE, or --from-inventory FILE")
    else:
        devices = []
    reload_broker = None
    if not args.no_reload and args.reload_command and not args.rabbitmq_ctl:
        reload_broker = _command(args.reload_command, "broker reload")

    common: dict[str, Any] = {
        "out_dir": args.out,
        "broker_url": args.broker_url,
        "broker_dir": None if args.no_broker or args.rabbitmq_ctl else args.broker_dir,
        "rabbitmq_ctl": shlex.split(args.rabbitmq_ctl) if args.rabbitmq_ctl else None,
        "ca_dir": args.ca_dir,
        "auth": args.auth,
        "template": args.template,
        "install_dir": args.install_dir,
        "overrides": [parse_override(item) for item in args.set],
        "force": args.force,
        "reload_broker": reload_broker,
        "sms": _sms_args(args),
        "tunnel": _tunnel_plan(args),
        "upgrade_key": args.upgrade_key,
    }
    if devices and common["tunnel"] is not None:
        # One jump-host port per device: a whole inventory cannot share --tunnel-port.
        raise ProvisionError(
            "--tunnel-host provisions one device at a time (its own --tunnel-port)"
        )

    async def go(store: Repository | None) -> list[Provisioned]:
        if devices:
            return await provision_inventory(devices, store=store, **common)
        one = await provision(args.device_id, _fields(args), store=store, **common)
        assert one is not None
        return [one]

    db = _db(args)
    if db is None:
        if not args.no_inventory:
            what = args.device_id or f"{len(devices)} devices"
            log.warning("no --config or --db: %s not added to the inventory", what)
        return await go(None)
    from collector.store.base import StoreError
    from collector.store.engines import describe, open_store, sqlite_file

    file = sqlite_file(db)
    if file is not None and not file.exists():
        raise ProvisionError(f"{describe(db)}: no such database (start the collector once first)")
    try:
        repo = await open_store(db)  # SQLite or PostgreSQL, as `serve` opens it
    except StoreError as exc:
        raise ProvisionError(str(exc)) from exc
    try:
        await repo.require_schema()
        return await go(repo)
    except StoreError as exc:
        raise ProvisionError(str(exc)) from exc
    finally:
        await repo.close()
        if file is not None:
            _chown_like(file)


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``provision`` command; prints what was made (never a secret)."""
    try:
        results = asyncio.run(_run(args))
    except ProvisionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for done in results:
        brokers = ", ".join(done.broker_urls)
        user = "; its RabbitMQ user is set" if done.rabbitmq_user else ""
        print(f"{done.device_id}: {done.auth} mode, broker {brokers}{user}")
        print(f"bundle {done.bundle}: {', '.join(done.files)} (copy it to the controller)")
        if done.inventory is not None:
            print(f"inventory: {done.inventory.commune_name} ({done.inventory.commune_code})")
    if len(results) > 1:
        print(f"{len(results)} devices provisioned into {args.out}")
    return 0


def _command(command_line: str, what: str) -> Callable[[], None]:
    command = shlex.split(command_line)

    def run_it() -> None:
        try:
            subprocess.run(command, check=True, capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as exc:
            # The credentials are in place; only the broker's reload is missing.
            log.warning("%s %r failed (%s): do it by hand", what, command, exc)

    return run_it


def run_deprovision(args: argparse.Namespace) -> int:
    """Run a parsed ``deprovision`` command."""
    reload_broker = None
    if not args.no_reload and args.reload_command and not args.rabbitmq_ctl:
        reload_broker = _command(args.reload_command, "broker restart")
    try:
        done = deprovision(
            args.device_id,
            broker_dir=args.broker_dir,
            ca_dir=args.ca_dir,
            reload_broker=reload_broker,
            rabbitmq_ctl=shlex.split(args.rabbitmq_ctl) if args.rabbitmq_ctl else None,
        )
    except ProvisionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    serials = ", ".join(f"{n:x}" for n in done.revoked) or "none"
    user = "; RabbitMQ user deleted" if done.rabbitmq_user_removed else ""
    print(
        f"{done.device_id}: password {'removed' if done.password_removed else 'none'}, "
        f"certificates revoked: {serials}{user}"
    )
    return 0


def register(sub: Any, parent: argparse.ArgumentParser) -> None:
    """Add ``provision`` and ``deprovision`` to ``loa-collector`` (cli.py's SUBCOMMANDS)."""
    p = sub.add_parser(
        "provision",
        parents=[parent],
        help="create a cluster's credentials, broker entry, inventory row and agent.toml",
    )
    configure_parser(p, standalone=False)
    p.set_defaults(func=run)
    d = sub.add_parser(
        "deprovision",
        help="cut a cluster off the broker: remove its password, revoke its certificates",
    )
    d.add_argument("device_id", metavar="DEVICE_ID")
    d.add_argument("--ca-dir", type=Path, help="fleet CA: revoke the device's certificates")
    d.add_argument("--broker-dir", type=Path, default=BROKER_DIR)
    d.add_argument(
        "--reload-command",
        default="systemctl restart mosquitto",
        help="a restart also drops a revoked certificate's live connection (default: %(default)s)",
    )
    d.add_argument("--no-reload", action="store_true")
    d.add_argument(
        "--rabbitmq-ctl",
        metavar="COMMAND",
        help="a RabbitMQ broker cluster: delete the device's user with this rabbitmqctl "
        "(it is disconnected at once); Mosquitto's files are left alone",
    )
    d.set_defaults(func=run_deprovision)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m collector.provision DEVICE_ID --commune CODE --broker-url URL --out DIR``."""
    parser = argparse.ArgumentParser(
        prog="loa-collector provision",
        description="Create a speaker cluster's credentials, broker entry, inventory row "
        "and agent.toml bundle.",
    )
    configure_parser(parser)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
