"""Render deploy/mosquitto/mosquitto.conf for a given host layout.

The demo, the tests and provisioning all start Mosquitto from the one
production config in ``deploy/``, with only paths and ports changed, so that
what is tested is what is deployed (queue limits, ACLs, no anonymous access).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: deploy/ next to the packages in a source checkout.
DEPLOY_DIR = Path(__file__).resolve().parent.parent / "deploy"
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
