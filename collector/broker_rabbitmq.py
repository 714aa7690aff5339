"""RabbitMQ as the fleet's MQTT broker: permissions, provisioning and the config file.

RabbitMQ's MQTT plugin routes MQTT topic ``loa/v1/dev-001/state`` to the
``amq.topic`` exchange with routing key ``loa.v1.dev-001.state``. A user needs
two kinds of permission (see deploy/rabbitmq/README.md):

- vhost permissions (configure, write, read regexes on queue and exchange
  names): publishing writes to ``amq.topic``; subscribing declares the
  client's queue ``mqtt-subscription-<client id>qos0|qos1``, binds it to
  ``amq.topic`` and consumes from it;
- topic permissions on ``amq.topic`` (write, read regexes on the dotted
  routing key): which topics a user may publish to and subscribe to.

The internal backend expands ``{username}`` in topic permissions, so one
topic pattern serves every device, as ``%u`` does in Mosquitto's ACL; vhost
permissions are not expanded in 3.10, so they name the device. A device's
client id is its device id (the agent connects with ``identifier=device``);
the vhost patterns give a device only the queues of that client id, so it
cannot connect with the collector's client id and read the collector's queue.

``provision_rabbitmq_device(device_id, password)`` creates the user with
``rabbitmqctl``; the password goes on rabbitmqctl's standard input (``add_user``
without a password argument reads it there), never on a command line that
``ps`` shows. ``password=None`` is certificate mode: the user has no password
(``clear_password``) and logs in only with a fleet-CA client certificate whose
CN is the device id (``mqtt.ssl_cert_login`` in rabbitmq.conf).

Certificate revocation needs ``ssl_options.crl_cache``, which rabbitmq.conf
cannot express in 3.10: ``render_advanced_config`` writes the node's
advanced.config from rabbitmq.conf's ``ssl_options.*`` (deploy/rabbitmq/README.md).
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collector.broker_config import DEPLOY_DIR
from fleet_protocol.topics import valid_device_id

PRODUCTION_CONF = DEPLOY_DIR / "rabbitmq" / "rabbitmq.conf"
PRODUCTION_PLUGINS = DEPLOY_DIR / "rabbitmq" / "enabled_plugins"
PRODUCTION_DEFINITIONS = DEPLOY_DIR / "rabbitmq" / "definitions.json"
#: Debian's rabbitmqctl (a wrapper that runs the real one as the rabbitmq user).
RABBITMQCTL = "rabbitmqctl"
VHOST = "/"
EXCHANGE = "amq.topic"
COLLECTOR_USER = "loa_collector"
#: The collector's MQTT client ids start with this (``[mqtt] client_id``,
#: default ``loa-collector-1``, and its ``-cmd`` sibling). Device ids are from
#: the same alphabet, so provisioning refuses a device id with this prefix:
#: its queues would be the collector's.
COLLECTOR_CLIENT_PREFIX = "loa-collector"
#: The CRL directory of advanced.config's ``crl_cache`` (``ssl_crl_hash_dir``):
#: ``<issuer hash>.r0`` there is the fleet CA's CRL (README.md, "Certificate mode").
PRODUCTION_CRL_DIR = "/etc/rabbitmq/loa/crls"

#: The subscription queues of one client id (client id == username for devices).
_QUEUE = "mqtt-subscription-{}qos[01]"
_COLLECTOR_QUEUE = _QUEUE.format(r"loa-collector[a-z0-9-]*")


class RabbitProvisionError(Exception):
    """A rabbitmqctl step failed or was refused; the message names the device and step."""


@dataclass(frozen=True, kw_only=True)
class Permissions:
    """What one user may do in the vhost and on the MQTT exchange (regexes)."""

    #: vhost permissions: declare/delete, write to, read from these queues/exchanges.
    configure: str
    write: str
    read: str
    #: topic permissions on ``EXCHANGE``: routing keys it may publish / subscribe to.
    topic_write: str
    topic_read: str


def device_permissions(device_id: str) -> Permissions:
    """A device's permissions: it writes its own state, event, presence and
    command replies, and reads only its own commands and store confirmations
    (docs/protocol.md), through the queues of its own client id.

    The topic patterns use ``{username}``, which the broker expands. The vhost
    patterns name the device itself: RabbitMQ 3.10 expands variables in topic
    permissions only (a vhost pattern ``{username}`` is taken literally; the
    queue declaration is then refused), so they are written per device.
    """
    queue = _QUEUE.format(re.escape(device_id))
    return Permissions(
        configure=rf"^{queue}$",
        write=rf"^(amq\.topic|{queue})$",
        read=rf"^(amq\.topic|{queue})$",
        topic_write=r"^loa\.v1\.{username}\.(state|event|presence|cmd\.reply)$",
        topic_read=r"^loa\.v1\.{username}\.(cmd|ack)$",
    )


#: The collector: reads every device's topics; writes commands and confirmations.
COLLECTOR_PERMISSIONS = Permissions(
    configure=rf"^{_COLLECTOR_QUEUE}$",
    write=rf"^(amq\.topic|{_COLLECTOR_QUEUE})$",
    read=rf"^(amq\.topic|{_COLLECTOR_QUEUE})$",
    topic_write=r"^loa\.v1\.[a-z0-9][a-z0-9-]*\.(cmd|ack)$",
    topic_read=r"^loa\.v1\.",
)


def amqp_collector_permissions(queue: str = "loa.ingest") -> Permissions:
    """``loa_collector``'s permissions plus declaring, binding and consuming ``queue``
    (the AMQP ingest source's quorum queue, ``[amqp] queue``)."""
    q = queue.replace(".", r"\.")
    p = COLLECTOR_PERMISSIONS

    def add(pattern: str) -> str:
        return f"^({pattern.removeprefix('^').removesuffix('$')}|{q})$"

    return Permissions(
        configure=add(p.configure),
        write=add(p.write),
        read=add(p.read),
        topic_write=p.topic_write,
        topic_read=p.topic_read,
    )


def routing_key(mqtt_topic: str) -> str:
    """The AMQP routing key RabbitMQ's MQTT plugin uses for an MQTT topic or filter."""
    return mqtt_topic.replace("/", ".").replace("+", "*")


def expand(pattern: str, username: str) -> str:
    """A permission pattern as the internal backend applies it for ``username``."""
    return pattern.replace("{username}", username)


def allows(pattern: str, username: str, name: str) -> bool:
    """True if ``pattern`` (unexpanded) matches ``name`` for ``username``: for tests and checks."""
    return re.search(expand(pattern, username), name) is not None


def ctl_commands(user: str, perms: Permissions, *, vhost: str = VHOST) -> list[list[str]]:
    """The rabbitmqctl arguments (after the program and node) that grant ``perms``."""
    return [
        ["set_permissions", "--vhost", vhost, user, perms.configure, perms.write, perms.read],
        [
            "set_topic_permissions",
            "--vhost",
            vhost,
            user,
            EXCHANGE,
            perms.topic_write,
            perms.topic_read,
        ],
    ]


def _ctl(
    ctl: Sequence[str],
    args: Sequence[str],
    what: str,
    *,
    stdin: str | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """Run ``ctl args``; its standard output, or RabbitProvisionError naming ``what``."""
    try:
        done = subprocess.run(
            [*ctl, *args],
            input=stdin,
            env=env,
            text=True,
            check=True,
            capture_output=True,
            timeout=60,
        )
    except subprocess.CalledProcessError as exc:
        out = (exc.stderr or exc.stdout or "").strip().splitlines()
        raise RabbitProvisionError(
            f"{what}: {out[-1] if out else f'exit {exc.returncode}'}"
        ) from None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RabbitProvisionError(f"{what}: {ctl[0]}: {exc}") from None
    return done.stdout


def rabbitmq_user_exists(
    user: str, *, ctl: Sequence[str] = (RABBITMQCTL,), env: Mapping[str, str] | None = None
) -> bool:
    """Whether the cluster has a user named ``user`` (``rabbitmqctl list_users``)."""
    out = _ctl(ctl, ["list_users", "--formatter", "json", "--silent"], "list_users", env=env)
    try:
        users = json.loads(out)
    except ValueError:
        raise RabbitProvisionError(f"list_users: not JSON: {out[:200]!r}") from None
    return any(isinstance(u, dict) and u.get("user") == user for u in users)


def provision_rabbitmq_user(
    user: str,
    password: str | None,
    perms: Permissions,
    *,
    ctl: Sequence[str] = (RABBITMQCTL,),
    vhost: str = VHOST,
    env: Mapping[str, str] | None = None,
) -> None:
    """Create (or re-password) ``user`` and set its permissions; idempotent.

    ``password=None``: certificate mode. The user is created with a random
    password that is cleared at once (``add_user`` wants one), and an existing
    user's password is cleared: with no password, RabbitMQ lets it log in only
    by a client certificate whose CN is ``user`` (a password login as ``user``
    is refused), as Mosquitto's 8884 with ``use_identity_as_username``.

    ``ctl`` is the rabbitmqctl command with any node options, e.g.
    ``["rabbitmqctl", "-n", "rabbit@mq1"]``; ``env`` its environment (default
    this process's). Users are cluster-wide: one node suffices.
    """
    if password is not None and ("\n" in password or not password):
        raise RabbitProvisionError(f"{user}: the password must be one non-empty line")
    # add_user fails on an existing user; change_password then makes re-provisioning
    # (--force) give the device its new password. Both read it from stdin.
    secret = password if password is not None else secrets.token_urlsafe(32)
    try:
        _ctl(ctl, ["add_user", user], f"{user}: add_user", stdin=secret + "\n", env=env)
    except RabbitProvisionError as exc:
        if "already exists" not in str(exc):
            raise
        if password is not None:
            _ctl(
                ctl,
                ["change_password", user],
                f"{user}: change_password",
                stdin=password + "\n",
                env=env,
            )
    if password is None:
        # Also what turns a password-mode device into a certificate-only one.
        _ctl(ctl, ["clear_password", user], f"{user}: clear_password", env=env)
    for args in ctl_commands(user, perms, vhost=vhost):
        _ctl(ctl, args, f"{user}: {args[0]}", env=env)


def provision_rabbitmq_device(
    device_id: str,
    password: str | None,
    *,
    ctl: Sequence[str] = (RABBITMQCTL,),
    vhost: str = VHOST,
    env: Mapping[str, str] | None = None,
) -> None:
    """Give ``device_id`` its RabbitMQ user, with ``device_permissions``; idempotent.

    ``password=None``: certificate mode, a user without a password (see
    ``provision_rabbitmq_user``); the device logs in with its certificate only.
    """
    if not valid_device_id(device_id):
        raise RabbitProvisionError(f"device id {device_id!r}: not a valid device id")
    if device_id.startswith(COLLECTOR_CLIENT_PREFIX):
        raise RabbitProvisionError(
            f"device id {device_id!r}: {COLLECTOR_CLIENT_PREFIX}* names the collector's queues"
        )
    perms = device_permissions(device_id)
    provision_rabbitmq_user(device_id, password, perms, ctl=ctl, vhost=vhost, env=env)


def deprovision_rabbitmq_device(
    device_id: str,
    *,
    ctl: Sequence[str] = (RABBITMQCTL,),
    env: Mapping[str, str] | None = None,
) -> None:
    """Delete the device's user: RabbitMQ closes its open connections, and a
    certificate for it no longer logs in (certificate mode needs the user)."""
    _ctl(ctl, ["delete_user", device_id], f"{device_id}: delete_user", env=env)


# --- rabbitmq.conf ------------------------------------------------------------------------


def render_conf(
    overrides: Mapping[str, str], *, drop: Sequence[str] = (), base: str | None = None
) -> str:
    """deploy/rabbitmq/rabbitmq.conf with keys replaced, added or dropped.

    ``rabbitmq.conf`` is one ``key = value`` per line. A key in ``overrides``
    replaces the value where the key is (or is appended); a line whose key
    starts with one of ``drop`` is left out (``"mqtt.listeners.ssl"`` drops the
    TLS listener).
    """
    text = PRODUCTION_CONF.read_text(encoding="utf-8") if base is None else base
    out: list[str] = []
    seen: set[str] = set()
    for line in text.splitlines():
        key, sep, _value = line.partition("=")
        key = key.strip()
        if not sep or line.lstrip().startswith("#"):
            out.append(line)
            continue
        if any(key.startswith(prefix) for prefix in drop):
            continue
        if key in overrides:
            out.append(f"{key} = {overrides[key]}")
            seen.add(key)
        else:
            out.append(line)
    out.extend(f"{k} = {v}" for k, v in overrides.items() if k not in seen)
    return "\n".join(out) + "\n"


#: ssl_options.* keys whose value is an Erlang string (a path); the others are
#: atoms (verify_peer, true, false, ...) or integers.
_SSL_STRINGS = {"cacertfile", "certfile", "keyfile", "password", "dhfile"}


def _erl_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _erl_atom(value: str) -> str:
    return value if re.fullmatch(r"[a-z][a-z0-9_]*", value) else "'" + value + "'"


def render_advanced_config(conf: str | None = None, *, crl_dir: str = PRODUCTION_CRL_DIR) -> str:
    """advanced.config for a node running ``conf`` (default deploy/rabbitmq/rabbitmq.conf):
    its ``ssl_options.*`` as an Erlang term, plus the CRL cache.

    3.10's rabbitmq.conf has ``ssl_options.crl_check`` but no key for
    ``crl_cache``, and without one Erlang's TLS finds no CRL for a client
    certificate (it refuses every certificate: ``{bad_crls,no_relevant_crls}``).
    advanced.config can set it, but it *replaces* rabbitmq.conf's whole
    ``ssl_options`` (cuttlefish overlays per application key), so every option
    is repeated here. ``crl_cache`` is ``ssl_crl_hash_dir`` on ``crl_dir``: the
    CRL is read from ``<dir>/<issuer hash>.r0`` at every handshake, so a new
    CRL file takes effect for the next connection without a restart.
    """
    text = PRODUCTION_CONF.read_text(encoding="utf-8") if conf is None else conf
    opts: list[str] = []
    versions: list[str] = []
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or line.lstrip().startswith("#") or not key.startswith("ssl_options."):
            continue
        name = key.removeprefix("ssl_options.")
        if name.startswith("versions."):
            versions.append(_erl_atom(value))
        elif name in _SSL_STRINGS:
            opts.append(f"{{{name}, {_erl_string(value)}}}")
        elif re.fullmatch(r"[a-z_]+", name) and re.fullmatch(r"[0-9]+|[a-z][a-z0-9_]*", value):
            opts.append(f"{{{name}, {value}}}")
        else:
            raise ValueError(f"{key} = {value}: not translated to advanced.config")
    if versions:
        opts.append(f"{{versions, [{', '.join(versions)}]}}")
    opts.append(
        f"{{crl_cache, {{ssl_crl_hash_dir, {{internal, [{{dir, {_erl_string(crl_dir)}}}]}}}}}}"
    )
    body = ",\n".join(f"    {o}" for o in opts)
    return (
        "%% Generated by collector.broker_rabbitmq.render_advanced_config from rabbitmq.conf's\n"
        "%% ssl_options.* (this replaces them all), plus the CRL cache rabbitmq.conf cannot set.\n"
        f"[{{rabbit, [{{ssl_options, [\n{body}\n]}}]}}].\n"
    )


# --- command line -------------------------------------------------------------------------


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("user", metavar="DEVICE_ID", nargs="?", help="the device (or --collector)")
    p.add_argument("--collector", action="store_true", help=f"provision {COLLECTOR_USER}")
    auth = p.add_mutually_exclusive_group(required=True)
    auth.add_argument(
        "--password-file",
        type=Path,
        help="the password, one line: the bundle's mqtt-password that "
        "`loa-collector provision --no-broker` wrote",
    )
    auth.add_argument(
        "--cert",
        action="store_true",
        help="certificate mode: a user without a password, logging in with a client "
        "certificate whose CN is DEVICE_ID (clears an existing password)",
    )
    p.add_argument(
        "--queue",
        default="loa.ingest",
        help="with --collector: the AMQP ingest queue it may declare and consume"
        " ([amqp] queue; default loa.ingest)",
    )
    p.add_argument("--node", help="rabbitmqctl --node (default: the local node)")
    p.add_argument(
        "--ctl",
        default=RABBITMQCTL,
        help="rabbitmqctl command line, e.g. 'ssh mq1 rabbitmqctl' (default %(default)s)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``rabbitmq-user`` command; prints what was done (never the password)."""
    ctl = [*shlex.split(args.ctl), *(["--node", args.node] if args.node else [])]
    if not args.collector and not args.user:
        print("error: give DEVICE_ID or --collector", file=sys.stderr)
        return 2
    if args.collector and args.cert:
        print(f"error: {COLLECTOR_USER} logs in with a password, not --cert", file=sys.stderr)
        return 2
    try:
        password = None if args.cert else args.password_file.read_text(encoding="utf-8").strip()
        if args.collector:
            # Both ingest sources: the MQTT session queue and the AMQP quorum queue.
            perms = amqp_collector_permissions(args.queue)
            provision_rabbitmq_user(COLLECTOR_USER, password, perms, ctl=ctl)
        else:
            provision_rabbitmq_device(args.user, password, ctl=ctl)
    except OSError as exc:
        print(f"error: {args.password_file}: {exc.strerror}", file=sys.stderr)
        return 2
    except RabbitProvisionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    how = " (certificate login, no password)" if args.cert else ""
    print(
        f"{COLLECTOR_USER if args.collector else args.user}: RabbitMQ user{how} and permissions set"
    )
    return 0


def register(sub: Any, parent: argparse.ArgumentParser) -> None:
    """Add ``rabbitmq-user`` to ``loa-collector`` (it needs no collector config)."""
    p = sub.add_parser(
        "rabbitmq-user",
        help="create a device's (or the collector's) RabbitMQ user and topic permissions",
        description="Create a device's RabbitMQ user and per-device topic permissions "
        "(deploy/rabbitmq/README.md).",
    )
    configure_parser(p)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m collector.broker_rabbitmq DEVICE_ID --password-file FILE|--cert [--node N]``."""
    p = argparse.ArgumentParser(
        prog="python -m collector.broker_rabbitmq",
        description="Create a device's RabbitMQ user and per-device topic permissions.",
    )
    configure_parser(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
