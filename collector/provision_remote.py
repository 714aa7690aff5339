"""Provisioning's part for reaching a controller: its tunnel key and the upgrade key.

For the reverse SSH tunnel (``edge_agent.tunnel``) provisioning makes the
device its own Ed25519 key (OpenSSH format, 0600), pins the jump host's host
key in ``tunnel_known_hosts`` (from the operator's known_hosts line of the
jump host, never learnt on first use), and writes ``jump_authorized_keys``:
the line the operator appends to the jump host's tunnel account, which lets
this key do nothing but listen on its own loopback port there. For upgrades
(``edge_agent.upgrade``) it copies the district's Ed25519 public key
(``loa-collector upgrade keygen``) into the bundle.

``[tunnel]`` and ``[upgrade]`` go into agent.toml pointing at the installed
copies; they are trust anchors a remote configuration push cannot change.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

TUNNEL_KEY = "tunnel_ed25519"
TUNNEL_KNOWN_HOSTS = "tunnel_known_hosts"
JUMP_AUTHORIZED_KEYS = "jump_authorized_keys"
UPGRADE_KEY = "upgrade.pub"


class RemoteProvisionError(ValueError):
    """A bad tunnel or upgrade-key argument; the message names it."""


@dataclass(frozen=True, kw_only=True)
class TunnelPlan:
    #: The jump host and its sshd port.
    host: str
    port: int = 22
    #: Account on the jump host that devices log in to.
    user: str = "loa-tunnel"
    #: This device's port on the jump host's loopback.
    remote_port: int
    #: known_hosts line(s) of the jump host (``ssh-keyscan`` output checked by the operator).
    known_hosts: str


def parse_host(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "22")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RemoteProvisionError(f"--tunnel-host {value!r}: expected HOST or HOST:PORT")
    return host, int(port)


def _host_pattern(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


def tunnel_files(
    device_id: str, plan: TunnelPlan, install_dir: Path
) -> tuple[dict[str, Any], dict[str, tuple[bytes, int]]]:
    """([tunnel] section, bundle files name -> (content, mode)) for ``device_id``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if not 0 < plan.remote_port < 65536:
        raise RemoteProvisionError(f"--tunnel-port {plan.remote_port}: not a TCP port")
    pattern = _host_pattern(plan.host, plan.port)
    lines = [
        line.strip()
        for line in plan.known_hosts.splitlines()
        if line.strip() and not line.startswith("#")
    ]
    pinned = [line for line in lines if line.split()[0] in (pattern, plan.host)]
    if not pinned:
        raise RemoteProvisionError(
            f"--tunnel-known-hosts has no key for {pattern} (ssh-keyscan -p {plan.port} "
            f"{plan.host}, checked against the jump host's own fingerprint)"
        )
    known = "".join(
        f"{pattern} {' '.join(line.split()[1:3])}\n" for line in pinned if len(line.split()) >= 3
    )
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    authorized = (
        f'restrict,port-forwarding,permitlisten="127.0.0.1:{plan.remote_port}",'
        f'permitopen="127.0.0.1:9",command="/bin/false" {public.decode()} {device_id}\n'
    )
    section = {
        "host": plan.host,
        "port": plan.port,
        "user": plan.user,
        "key_file": str(install_dir / TUNNEL_KEY),
        "known_hosts_file": str(install_dir / TUNNEL_KNOWN_HOSTS),
        "remote_port": plan.remote_port,
    }
    files = {
        TUNNEL_KEY: (private, 0o600),
        TUNNEL_KNOWN_HOSTS: (known.encode(), 0o644),
        JUMP_AUTHORIZED_KEYS: (authorized.encode(), 0o644),
    }
    return section, files


def upgrade_files(
    public_key: Path, install_dir: Path
) -> tuple[dict[str, Any], dict[str, tuple[bytes, int]]]:
    """([upgrade] section, bundle files) from the district's upgrade public key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        data = public_key.read_bytes()
        key = serialization.load_pem_public_key(data)
    except (OSError, ValueError) as exc:
        raise RemoteProvisionError(f"--upgrade-key {public_key}: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise RemoteProvisionError(f"--upgrade-key {public_key}: not an Ed25519 public key")
    return {"public_key": str(install_dir / UPGRADE_KEY)}, {UPGRADE_KEY: (data, 0o644)}


__all__ = [
    "JUMP_AUTHORIZED_KEYS",
    "TUNNEL_KEY",
    "TUNNEL_KNOWN_HOSTS",
    "UPGRADE_KEY",
    "RemoteProvisionError",
    "TunnelPlan",
    "parse_host",
    "tunnel_files",
    "upgrade_files",
]
