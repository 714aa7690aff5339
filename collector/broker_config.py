"""Render deploy/mosquitto/mosquitto.conf for a given host layout.

The demo, the tests and provisioning all start Mosquitto from the one
production config in ``deploy/``, with only paths and ports changed, so that
what is tested is what is deployed (queue limits, ACLs, no anonymous access).

``loa-collector broker-config`` writes it for this host::

    loa-collector broker-config -o /etc/mosquitto/loa/mosquitto.conf
    loa-collector broker-config --tls-port 0 --cert-port 0 --plain-port 1884   # no TLS

It refuses (exit 1, naming the file) to write a config Mosquitto could not
start with: a TLS listener whose certificate files are missing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: deploy/: ``collector/deploy`` is a link to the checkout's deploy/ folder, and a
#: copy of its configs in an installed wheel (pyproject's package-data).
DEPLOY_DIR = Path(__file__).resolve().parent / "deploy"
PRODUCTION_CONF = DEPLOY_DIR / "mosquitto" / "mosquitto.conf"
PRODUCTION_ACL = DEPLOY_DIR / "mosquitto" / "acl"


@dataclass(frozen=True, kw_only=True)
class BrokerLayout:
    """Where a broker instance keeps its files and which ports it listens on."""

    #: Folder holding passwd, acl and (with TLS) ca.crt, server.crt, server.key, crl.pem.
    config_dir: Path
    #: Folder for the persistence database.
    data_dir: Path
    #: Plain listener port (bound to ``plain_host``).
    plain_port: int = 1883
    plain_host: str = "127.0.0.1"
    #: TLS listener port; None drops the TLS listener (tests without TLS).
    tls_port: int | None = 8883
    tls_host: str | None = None
    #: Client-certificate (mutual TLS) listener port; None drops that listener.
    #: None by default so that a layout without a CA's files still starts.
    cert_port: int | None = None
    cert_host: str | None = None
    #: Log to this file instead of syslog.
    log_file: Path | None = None
    #: Run as this OS user (Mosquitto started as root otherwise drops to "mosquitto",
    #: which cannot read files a test or the demo created).
    run_as: str | None = None


def render(layout: BrokerLayout, base: str | None = None) -> str:
    """The production config with paths and ports replaced for ``layout``."""
    text = base if base is not None else PRODUCTION_CONF.read_text(encoding="utf-8")
    cfg = layout.config_dir
    replace = {
        "password_file": str(cfg / "passwd"),
        "acl_file": str(cfg / "acl"),
        "persistence_location": f"{layout.data_dir}/",
        "cafile": str(cfg / "ca.crt"),
        "certfile": str(cfg / "server.crt"),
        "keyfile": str(cfg / "server.key"),
        "crlfile": str(cfg / "crl.pem"),
    }
    out: list[str] = [f"user {layout.run_as}"] if layout.run_as else []
    # The production file's listeners, told apart by their port there.
    listeners = {
        "8883": (layout.tls_port, layout.tls_host),
        "8884": (layout.cert_port, layout.cert_host),
    }
    section = "global"
    dropped = False
    for line in text.splitlines():
        key, _, _value = line.strip().partition(" ")
        if key == "listener":
            port = line.split()[1]
            section = port if port in listeners else "plain"
            if section == "plain":
                dropped = False
                line = f"listener {layout.plain_port} {layout.plain_host}"
            else:
                new_port, new_host = listeners[section]
                dropped = new_port is None
                if dropped:
                    continue
                host = f" {new_host}" if new_host else ""
                line = f"listener {new_port}{host}"
        elif dropped and key and not key.startswith("#"):
            continue
        elif key == "log_dest" and layout.log_file is not None:
            line = f"log_dest file {layout.log_file}"
        elif key in replace:
            line = f"{key} {replace[key]}"
        out.append(line)
    return "\n".join(out) + "\n"


# -- loa-collector broker-config ---------------------------------------------------------

#: Production paths (deploy/install-server.sh).
BROKER_DIR = Path("/etc/mosquitto/loa")
DATA_DIR = Path("/var/lib/mosquitto")


class BrokerConfigError(Exception):
    """The config cannot be written as asked; the message names the file or option."""


def check_layout(layout: BrokerLayout) -> None:
    """Raise BrokerConfigError naming what a TLS listener of ``layout`` lacks."""
    needs: list[str] = []
    if layout.tls_port is not None or layout.cert_port is not None:
        needs += ["ca.crt", "server.crt", "server.key"]
    if layout.cert_port is not None:
        needs.append("crl.pem")
    missing = [str(layout.config_dir / n) for n in needs if not (layout.config_dir / n).is_file()]
    if missing:
        raise BrokerConfigError(
            f"missing {', '.join(missing)}: issue the broker certificate first "
            "(python -m collector.tls server ...) or drop TLS with --tls-port 0 --cert-port 0"
        )
    for name in ("passwd", "acl"):
        if not (layout.config_dir / name).is_file():
            raise BrokerConfigError(
                f"missing {layout.config_dir / name}: Mosquitto refuses to start without it"
            )


def write_config(path: Path, text: str) -> None:
    """Replace ``path`` atomically (mode 0640, the broker's group keeps reading it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o640)
        if path.exists():
            st = path.stat()
            with contextlib.suppress(PermissionError):  # not root: the file stays ours
                os.chown(tmp, st.st_uid, st.st_gid)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _port(value: str) -> int | None:
    """A port number; 0 drops the listener."""
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (0 drops the listener)")
    return port or None


def run(args: argparse.Namespace) -> int:
    layout = BrokerLayout(
        config_dir=args.config_dir,
        data_dir=args.data_dir,
        plain_port=args.plain_port or 1883,
        plain_host=args.plain_host,
        tls_port=args.tls_port,
        tls_host=args.tls_host,
        cert_port=args.cert_port,
        cert_host=args.cert_host,
        log_file=args.log_file,
        run_as=args.user,
    )
    try:
        check_layout(layout)
        text = render(layout)
        if args.output in (None, "-"):
            sys.stdout.write(text)
        else:
            write_config(Path(args.output), text)
            print(f"{args.output}: written; reload Mosquitto to apply", file=sys.stderr)
    except (BrokerConfigError, OSError) as exc:
        print(f"loa-collector broker-config: {exc}", file=sys.stderr)
        return 1
    return 0


def register(sub: Any, parent: argparse.ArgumentParser) -> None:
    """Add ``broker-config`` to ``loa-collector`` (it needs no collector config)."""
    p = sub.add_parser(
        "broker-config",
        help="write the Mosquitto config for this host (deploy/mosquitto/mosquitto.conf)",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    p.add_argument("--config-dir", type=Path, default=BROKER_DIR,
                   help=f"passwd, acl and the TLS files (default {BROKER_DIR})")  # fmt: skip
    p.add_argument("--data-dir", type=Path, default=DATA_DIR,
                   help=f"persistence folder (default {DATA_DIR})")  # fmt: skip
    p.add_argument("--plain-port", type=_port, default=1883,
                   help="loopback listener for the collector (default 1883)")  # fmt: skip
    p.add_argument("--plain-host", default="127.0.0.1")
    p.add_argument("--tls-port", type=_port, default=8883,
                   help="password TLS listener for devices (default 8883; 0: none)")  # fmt: skip
    p.add_argument("--tls-host", help="address to bind the TLS listener to (default all)")
    p.add_argument("--cert-port", type=_port, default=8884,
                   help="client-certificate TLS listener (default 8884; 0: none)")  # fmt: skip
    p.add_argument("--cert-host")
    p.add_argument("--log-file", type=Path, help="log to this file (default syslog)")
    p.add_argument("--user", help="OS user Mosquitto runs as (default: its own)")
    p.add_argument("-o", "--output", help="file to write atomically (default: standard output)")
    p.set_defaults(func=run)
