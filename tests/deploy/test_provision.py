"""Provisioning: loadable bundles, private file modes, a real store, a broker accepting it."""

from __future__ import annotations

import asyncio
import os
import ssl
import stat
import subprocess
import time
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest

from collector import cli
from collector.inventory import inventory_to_csv
from collector.model import CommuneKind, InventoryDevice
from collector.provision import (
    DEVICE_ACL,
    InventoryFields,
    ProvisionError,
    check_password,
    dump_toml,
    hash_password,
    merge_inventory,
    parse_override,
    provision,
    set_password_entry,
)
from collector.store.sqlite import SQLiteRepository
from collector.tls import CertificateAuthority
from edge_agent.config import load_config
from tests.deploy.conftest import reloader, watching
from tests.support.mosquitto import MOSQUITTO_PASSWD, Broker

pytestmark = pytest.mark.integration

COMMUNE = InventoryFields(commune_code="19087", commune_name="Thạch Sơn", district="Lâm Thao")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
async def repo(tmp_path: Path) -> AsyncIterator[SQLiteRepository]:
    r = await SQLiteRepository.open(tmp_path / "collector.db")
    await r.migrate()
    try:
        yield r
    finally:
        await r.close()


@pytest.fixture
def ca_dir(tmp_path: Path, fleet_ca: CertificateAuthority) -> Path:
    d = tmp_path / "ca"
    fleet_ca.save(d)
    return d


async def connect_until_accepted(
    make: object, device: str = "dev-001", timeout: float = 10.0
) -> None:
    """Connect and publish a state report, retrying until the broker (reloading) accepts."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            async with make() as c:  # type: ignore[operator]
                await c.publish(f"loa/v1/{device}/state", b"{}", qos=1)
                return
        except aiomqtt.MqttError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def refused_after_reload(make: object, timeout: float = 10.0) -> None:
    """Connect until the broker (rereading its files after SIGHUP) refuses, or fail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            async with make():  # type: ignore[operator]
                pass
        except aiomqtt.MqttError:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"still accepted after {timeout} s")


def tls_context(bundle: Path, *, cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(bundle / "ca.crt"))
    if cert:
        ctx.load_cert_chain(bundle / "client.crt", bundle / "client.key")
    return ctx


# --- pure parts -----------------------------------------------------------------------------


def test_password_hash_matches_mosquitto_passwd_both_ways(tmp_path: Path) -> None:
    assert check_password("s3cret", hash_password("s3cret"))
    assert not check_password("other", hash_password("s3cret"))
    passwd = tmp_path / "passwd"
    passwd.touch()
    subprocess.run([MOSQUITTO_PASSWD, "-b", str(passwd), "u1", "s3cret"], check=True)
    hashed = passwd.read_text().strip().partition(":")[2]
    assert hashed.startswith("$7$")
    assert check_password("s3cret", hashed)
    assert not check_password("s3cret", "garbage")


def test_password_entries_are_replaced_not_duplicated(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    passwd.write_text("loa_collector:$7$x\n")
    assert set_password_entry(passwd, "dev-001", "$7$a")
    assert set_password_entry(passwd, "dev-001", "$7$b")
    assert passwd.read_text() == "loa_collector:$7$x\ndev-001:$7$b\n"
    assert set_password_entry(passwd, "dev-001", None)
    assert not set_password_entry(passwd, "dev-001", None)
    assert passwd.read_text() == "loa_collector:$7$x\n"


def test_toml_writer_round_trips() -> None:
    data = {
        "log_level": "INFO",
        "device": {"id": "dev-001", "commune": 'Thạch Sơn "quoted" \\ \n'},
        "recovery": {"hook_command": ["/usr/bin/x", "--y"], "enabled": True},
        "broker": {"keepalive_s": 660, "publish_timeout_s": 20.5},
        "a": {"b": {"c": 1}},
    }
    assert tomllib.loads(dump_toml(data)) == data
    with pytest.raises(ProvisionError, match="cannot write"):
        dump_toml({"x": {"y": None}})


def test_overrides_take_toml_or_bare_strings() -> None:
    assert parse_override('modem.dialect="quectel"') == (["modem", "dialect"], "quectel")
    assert parse_override("modem.baud=9600") == (["modem", "baud"], 9600)
    assert parse_override("modem.port=/dev/loa-modem-at") == (
        ["modem", "port"],
        "/dev/loa-modem-at",
    )
    with pytest.raises(ProvisionError, match=r"section\.key=value"):
        parse_override("nonsense")


def test_inventory_merge_keeps_what_the_inventory_says() -> None:
    existing = [
        InventoryDevice(
            device_id="dev-001",
            commune_code="19087",
            commune_name="Thạch Sơn",
            commune_kind=CommuneKind.XA,
            contractor="Viettel",
            position=4,
        )
    ]
    again = merge_inventory("dev-001", InventoryFields(commune_code="19087"), existing)
    assert again == existing[0]
    new = merge_inventory("dev-002", InventoryFields(commune_code="19087"), existing)
    assert (new.commune_name, new.position, new.contractor) == ("Thạch Sơn", 5, "")
    with pytest.raises(ProvisionError, match="--commune-name"):
        merge_inventory("dev-003", InventoryFields(commune_code="19999"), existing)


# --- against a real store and broker -------------------------------------------------------


async def test_password_mode_bundle_loads_and_the_broker_accepts_the_device(
    tls_broker: Broker, repo: SQLiteRepository, ca_dir: Path, tmp_path: Path
) -> None:
    assert tls_broker.tls_port is not None
    bundle = tmp_path / "bundle"
    done = await provision(
        "dev-001",
        COMMUNE,
        out_dir=bundle,
        broker_url=f"mqtts://127.0.0.1:{tls_broker.tls_port}",
        broker_dir=tls_broker.layout.config_dir,
        auth="password",
        store=repo,
        install_dir=bundle,
        reload_broker=reloader(tls_broker),
        ca_dir=ca_dir,  # in password mode only for ca.crt: the device must trust the broker
    )
    assert done.files == ("ca.crt", "mqtt-password", "agent.toml")
    assert mode(bundle / "mqtt-password") == 0o600
    assert mode(bundle / "agent.toml") == 0o600
    assert mode(bundle) == 0o700
    cfg = load_config(bundle / "agent.toml")
    assert (cfg.device.id, cfg.device.commune) == ("dev-001", "19087")
    password = cfg.password()
    assert password and len(password) >= 40
    assert [d.device_id for d in await repo.list_inventory()] == ["dev-001"]

    assert cfg.broker.tls and cfg.broker.ca_file == bundle / "ca.crt"
    ctx = tls_context(bundle, cert=False)
    async with watching(tls_broker) as seen:
        await connect_until_accepted(
            lambda: aiomqtt.Client(
                cfg.broker.host,
                cfg.broker.port,
                username=cfg.username,
                password=password,
                tls_context=ctx,
                timeout=5,
            )
        )
        assert "loa/v1/dev-001/state" in await seen.wait_for("loa/v1/dev-001/state")


async def test_cert_mode_bundle_connects_with_its_certificate(
    tls_broker: Broker, repo: SQLiteRepository, ca_dir: Path, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle"
    passwd = tls_broker.layout.config_dir / "passwd"
    before = passwd.read_text()
    done = await provision(
        "dev-001",
        COMMUNE,
        out_dir=bundle,
        broker_url="mqtts://127.0.0.1",
        broker_dir=tls_broker.layout.config_dir,
        ca_dir=ca_dir,
        store=repo,
        install_dir=bundle,
    )
    assert done.auth == "cert"
    assert done.broker_url == "mqtts://127.0.0.1:8884"
    assert mode(bundle / "client.key") == 0o600
    assert not (bundle / "mqtt-password").exists()
    assert passwd.read_text() == before  # no password: the certificate is the credential
    cfg = load_config(bundle / "agent.toml")
    assert cfg.broker.client_cert == bundle / "client.crt"
    assert cfg.password() is None

    ctx = tls_context(bundle, cert=True)
    async with watching(tls_broker) as seen:
        await connect_until_accepted(
            lambda: aiomqtt.Client(
                "127.0.0.1", tls_broker.cert_port or 0, tls_context=ctx, timeout=5
            )
        )
        assert "loa/v1/dev-001/state" in await seen.wait_for("loa/v1/dev-001/state")


async def test_refusals_write_nothing(
    tls_broker: Broker, repo: SQLiteRepository, tmp_path: Path
) -> None:
    cfg_dir = tls_broker.layout.config_dir
    passwd_before = (cfg_dir / "passwd").read_text()
    common = {
        "broker_url": "mqtts://broker.example",
        "broker_dir": cfg_dir,
        "store": repo,
    }
    cases: list[tuple[str, InventoryFields, dict[str, object], str]] = [
        ("Dev_1", COMMUNE, {}, "must match"),
        ("loa_collector", COMMUNE, {}, "must match"),
        ("dev-001", InventoryFields(commune_code="1"), {}, "--commune-name"),
        ("dev-001", COMMUNE, {"auth": "cert"}, "--ca-dir"),
        ("dev-001", COMMUNE, {"broker_url": "http://x"}, "mqtts://"),
        ("dev-001", COMMUNE, {"overrides": [(["broker", "keepalive_s"], 1)]}, "keepalive_s"),
        ("dev-001", COMMUNE, {"ca_dir": tmp_path / "nope"}, "ca.crt"),
    ]
    for device, fields, extra, message in cases:
        out = tmp_path / "out"
        with pytest.raises(ProvisionError, match=message):
            await provision(device, fields, out_dir=out, **{**common, **extra})  # type: ignore[arg-type]
        assert not out.exists(), message
    assert (cfg_dir / "passwd").read_text() == passwd_before
    assert await repo.list_inventory() == []

    # An ACL edited by hand so that devices lose a topic is refused.
    acl = cfg_dir / "acl"
    acl.write_text(acl.read_text().replace(DEVICE_ACL[3], ""))
    with pytest.raises(ProvisionError, match="cmd/reply"):
        await provision("dev-001", COMMUNE, out_dir=tmp_path / "out", **common)  # type: ignore[arg-type]


async def test_reprovisioning_needs_force_and_revokes_the_old_password(
    tls_broker: Broker, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle"
    common = {
        "out_dir": bundle,
        "broker_url": "mqtt://127.0.0.1",
        "broker_dir": tls_broker.layout.config_dir,
        "install_dir": bundle,
        "reload_broker": reloader(tls_broker),
    }
    await provision("dev-001", COMMUNE, **common)  # type: ignore[arg-type]
    old = (bundle / "mqtt-password").read_text().strip()
    with pytest.raises(ProvisionError, match="--force"):
        await provision("dev-001", COMMUNE, **common)  # type: ignore[arg-type]
    await provision("dev-001", COMMUNE, force=True, **common)  # type: ignore[arg-type]
    new = (bundle / "mqtt-password").read_text().strip()
    assert new != old

    def plain(password: str) -> aiomqtt.Client:
        return aiomqtt.Client(
            tls_broker.host, tls_broker.port, username="dev-001", password=password, timeout=5
        )

    await connect_until_accepted(lambda: plain(new))
    with pytest.raises(aiomqtt.MqttError):
        async with plain(old):
            pass


async def collector_db(tmp_path: Path) -> tuple[Path, Path]:
    """A migrated collector database and a collector.toml naming it."""
    db = tmp_path / "collector.db"
    collector_toml = tmp_path / "collector.toml"
    collector_toml.write_text(f'[db]\npath = "{db}"\n')
    r = await SQLiteRepository.open(db)
    await r.migrate()
    await r.close()
    return db, collector_toml


async def test_cli_provisions_into_the_database_and_prints_no_secret(
    tls_broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, collector_toml = await collector_db(tmp_path)
    bundle = tmp_path / "bundle"
    assert tls_broker.proc is not None
    argv = [
        "provision",
        "dev-007",
        "--commune",
        "19087",
        "--commune-name",
        "Thạch Sơn",
        "--contractor",
        "Bắc Việt",
        "--broker-url",
        f"mqtt://127.0.0.1:{tls_broker.port}",
        "--out",
        str(bundle),
        "--broker-dir",
        str(tls_broker.layout.config_dir),
        "--config",
        str(collector_toml),
        "--install-dir",
        str(bundle),
        "--reload-command",
        f"kill -HUP {tls_broker.proc.pid}",
        "--set",
        'modem.port="/dev/loa-modem-at"',
        "--set",
        'modem.dialect="quectel"',
    ]
    # The documented command, `loa-collector provision ...`. main() is synchronous
    # (asyncio.run): run it off the test's event loop.
    assert await asyncio.to_thread(cli.main, argv) == 0
    out = capsys.readouterr()
    password = (bundle / "mqtt-password").read_text().strip()
    assert password not in out.out + out.err
    cfg = load_config(bundle / "agent.toml")
    assert cfg.modem is not None and cfg.modem.dialect == "quectel"
    r = await SQLiteRepository.open(db)
    try:
        [row] = await r.list_inventory()
    finally:
        await r.close()
    assert (row.device_id, row.commune_name, row.contractor) == ("dev-007", "Thạch Sơn", "Bắc Việt")
    await connect_until_accepted(
        lambda: aiomqtt.Client(
            tls_broker.host, tls_broker.port, username="dev-007", password=password, timeout=5
        ),
        "dev-007",
    )
    # A second run without --force is refused with exit status 2, naming the file.
    assert await asyncio.to_thread(cli.main, argv) == 2
    assert "agent.toml exists" in capsys.readouterr().err
    assert os.stat(bundle / "agent.toml").st_mode & 0o077 == 0


async def test_reissuing_a_certificate_revokes_the_old_one(
    tls_broker: Broker, ca_dir: Path, tmp_path: Path
) -> None:
    common = {
        "broker_url": "mqtts://127.0.0.1",
        "broker_dir": tls_broker.layout.config_dir,
        "ca_dir": ca_dir,
        "reload_broker": reloader(tls_broker),
    }
    first = tmp_path / "first"
    await provision("dev-001", COMMUNE, out_dir=first, install_dir=first, **common)  # type: ignore[arg-type]
    second = tmp_path / "second"
    with pytest.raises(ProvisionError, match="already has a certificate"):
        await provision("dev-001", COMMUNE, out_dir=second, install_dir=second, **common)  # type: ignore[arg-type]
    assert not second.exists()
    await provision(
        "dev-001",
        COMMUNE,
        out_dir=second,
        install_dir=second,
        force=True,
        **common,  # type: ignore[arg-type]
    )

    def with_cert(bundle: Path) -> aiomqtt.Client:
        return aiomqtt.Client(
            "127.0.0.1",
            tls_broker.cert_port or 0,
            tls_context=tls_context(bundle, cert=True),
            timeout=5,
        )

    await connect_until_accepted(lambda: with_cert(second))
    await refused_after_reload(lambda: with_cert(first))


async def test_deprovision_cuts_the_device_off(
    tls_broker: Broker, ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert tls_broker.proc is not None
    cfg_dir = tls_broker.layout.config_dir
    for device, auth in (("dev-001", "cert"), ("dev-002", "password")):
        out = tmp_path / device
        await provision(
            device,
            COMMUNE,
            out_dir=out,
            install_dir=out,
            broker_url="mqtts://127.0.0.1",
            broker_dir=cfg_dir,
            ca_dir=ca_dir,
            auth=auth,  # type: ignore[arg-type]
            reload_broker=reloader(tls_broker),
        )
    password = (tmp_path / "dev-002" / "mqtt-password").read_text().strip()

    def by_password() -> aiomqtt.Client:
        return aiomqtt.Client(
            tls_broker.host, tls_broker.port, username="dev-002", password=password, timeout=5
        )

    ctx = tls_context(tmp_path / "dev-001", cert=True)

    def by_cert() -> aiomqtt.Client:
        return aiomqtt.Client("127.0.0.1", tls_broker.cert_port or 0, tls_context=ctx, timeout=5)

    await connect_until_accepted(by_cert, "dev-001")
    await connect_until_accepted(by_password, "dev-002")
    hup = f"kill -HUP {tls_broker.proc.pid}"
    for device in ("dev-001", "dev-002"):
        argv = ["deprovision", device, "--ca-dir", str(ca_dir), "--broker-dir", str(cfg_dir)]
        assert await asyncio.to_thread(cli.main, [*argv, "--reload-command", hup]) == 0
    out = capsys.readouterr().out
    assert "dev-001: password none, certificates revoked: " in out
    assert "dev-002: password removed" in out
    for make in (by_cert, by_password):
        await refused_after_reload(make)
    # Nothing left to revoke: said so, exit status 2.
    assert await asyncio.to_thread(cli.main, [*argv, "--no-reload"]) == 2


async def test_bundle_carries_the_tunnel_key_pinned_jump_host_and_upgrade_key(
    tmp_path: Path,
) -> None:
    from collector import upgrades
    from collector.provision_remote import TunnelPlan

    _, upgrade_pub = upgrades.keygen(tmp_path / "keys")
    bundle = tmp_path / "bundle"
    jump_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKq9kFuEUV6bQ0dD6Lh8cWm7yPmfPmvLkWr8xg3jU0yZ"
    done = await provision(
        "dev-001",
        COMMUNE,
        out_dir=bundle,
        broker_url="mqtts://broker.example:8883",
        broker_dir=None,
        auth="password",
        install_dir=bundle,
        tunnel=TunnelPlan(
            host="jump.example",
            port=2222,
            remote_port=20001,
            known_hosts=f"# the jump host\n[jump.example]:2222 {jump_key} root@jump\n",
        ),
        upgrade_key=upgrade_pub,
    )
    assert {"tunnel_ed25519", "tunnel_known_hosts", "jump_authorized_keys", "upgrade.pub"} <= set(
        done.files
    )
    assert mode(bundle / "tunnel_ed25519") == 0o600
    assert (bundle / "tunnel_ed25519").read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY")
    assert (bundle / "tunnel_known_hosts").read_text() == f"[jump.example]:2222 {jump_key}\n"
    line = (bundle / "jump_authorized_keys").read_text()
    assert line.startswith('restrict,port-forwarding,permitlisten="127.0.0.1:20001"')
    assert line.strip().endswith("dev-001")
    cfg = load_config(bundle / "agent.toml")
    assert cfg.tunnel is not None and cfg.upgrade is not None
    assert (cfg.tunnel.host, cfg.tunnel.port, cfg.tunnel.remote_port) == (
        "jump.example",
        2222,
        20001,
    )
    assert cfg.tunnel.key_file == bundle / "tunnel_ed25519"
    assert cfg.upgrade.public_key.read_bytes() == upgrade_pub.read_bytes()
    # A jump host the known_hosts does not pin is refused, and nothing is written.
    with pytest.raises(ProvisionError, match="no key for"):
        await provision(
            "dev-002",
            COMMUNE,
            out_dir=tmp_path / "bundle2",
            broker_url="mqtts://broker.example:8883",
            broker_dir=None,
            auth="password",
            install_dir=tmp_path / "bundle2",
            tunnel=TunnelPlan(host="other.example", remote_port=20002, known_hosts=jump_key),
        )
    assert not (tmp_path / "bundle2").exists()


def test_an_acl_from_before_store_confirmations_is_upgraded_in_place(tmp_path: Path) -> None:
    from collector.broker_config import PRODUCTION_ACL
    from collector.provision import ensure_device_acl

    acl = tmp_path / "acl"
    old = "\n".join(
        line for line in PRODUCTION_ACL.read_text().splitlines() if not line.endswith("/ack")
    )
    acl.write_text(old + "\n")
    assert ensure_device_acl(acl) is True
    text = acl.read_text()
    lines = text.splitlines()
    # Each new line sits right after its sibling: the collector's stays in its user section.
    assert lines[lines.index("pattern read loa/v1/%u/cmd") + 1] == "pattern read loa/v1/%u/ack"
    assert lines[lines.index("topic write loa/v1/+/cmd") + 1] == "topic write loa/v1/+/ack"
    assert lines.index("user loa_collector") < lines.index("topic write loa/v1/+/ack")
    assert ensure_device_acl(acl) is False  # already current: untouched
    assert acl.read_text() == text


async def test_cli_provisions_a_whole_inventory_in_one_run(
    tls_broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, collector_toml = await collector_db(tmp_path)
    devices = [
        InventoryDevice(device_id="lt-sonvi-01", commune_code="08431", commune_name="Sơn Vi"),
        InventoryDevice(device_id="lt-sonvi-02", commune_code="08431", commune_name="Sơn Vi"),
        InventoryDevice(
            device_id="lt-caoxa-01",
            commune_code="08440",
            commune_name="Cao Xá",
            contractor="Viettel Phú Thọ",
            position=2,
        ),
    ]
    inventory = tmp_path / "district.csv"
    inventory.write_bytes(inventory_to_csv(devices))
    out = tmp_path / "bundles"
    assert tls_broker.proc is not None
    argv = [
        "provision", "--from-inventory", str(inventory), "--out", str(out),
        "--broker-url", f"mqtt://127.0.0.1:{tls_broker.port}",
        "--broker-dir", str(tls_broker.layout.config_dir), "--config", str(collector_toml),
        "--install-dir", "/etc/loa-agent", "--reload-command", f"kill -HUP {tls_broker.proc.pid}",
    ]  # fmt: skip
    assert await asyncio.to_thread(cli.main, argv) == 0
    printed = capsys.readouterr().out
    assert f"3 devices provisioned into {out}" in printed
    passwords = {}
    for d in devices:
        cfg = tomllib.loads((out / d.device_id / "agent.toml").read_text(encoding="utf-8"))
        assert (cfg["device"]["id"], cfg["device"]["commune"]) == (d.device_id, d.commune_code)
        passwords[d.device_id] = (out / d.device_id / "mqtt-password").read_text().strip()
        assert passwords[d.device_id] not in printed
    assert len(set(passwords.values())) == 3
    r = await SQLiteRepository.open(db)
    try:
        rows = {row.device_id: row for row in await r.list_inventory()}
    finally:
        await r.close()
    assert set(rows) == set(passwords) and rows["lt-caoxa-01"].contractor == "Viettel Phú Thọ"
    for device, password in passwords.items():
        await connect_until_accepted(
            lambda d=device, p=password: aiomqtt.Client(  # type: ignore[misc]
                tls_broker.host, tls_broker.port, username=d, password=p, timeout=5
            ),
            device,
        )

    # A new device next to provisioned ones: refused as a whole, naming the first
    # device that exists; the new one gets nothing.
    more = [*devices, InventoryDevice(device_id="lt-caoxa-02", commune_code="08440",
                                      commune_name="Cao Xá", position=3)]  # fmt: skip
    inventory.write_bytes(inventory_to_csv(more))
    assert await asyncio.to_thread(cli.main, argv) == 2
    assert "lt-sonvi-01" in capsys.readouterr().err
    assert not (out / "lt-caoxa-02").exists()
    passwd = (tls_broker.layout.config_dir / "passwd").read_text()
    assert "lt-caoxa-02:" not in passwd
    # One device or a file, not both.
    assert await asyncio.to_thread(cli.main, [*argv, "--commune", "08431"]) == 2
    assert "drop --commune" in capsys.readouterr().err


async def test_sms_fallback_gets_the_device_key_the_gateway_derives(tmp_path: Path) -> None:
    """Provisioning gives the controller its own SMS key (derived from the district
    secret): the agent loads it, and a fault SMS it signs verifies at the gateway."""
    from edge_agent.config import load_config
    from fleet_protocol.sms import decode_fault_sms, encode_fault_sms, sms_key

    secret = bytes.fromhex("ab" * 32)
    bundle = tmp_path / "bundle"
    done = await provision(
        "dev-001",
        COMMUNE,
        out_dir=bundle,
        broker_url="mqtts://127.0.0.1",
        broker_dir=None,
        auth="password",
        install_dir=bundle,
        sms=(secret, "+84912000000"),
    )
    assert "sms.key" in done.files and mode(bundle / "sms.key") == 0o600
    cfg = load_config(bundle / "agent.toml")
    assert cfg.sms is not None and cfg.sms.number == "+84912000000"
    key = bytes.fromhex(cfg.sms.key_file.read_text().split()[0])
    assert key == sms_key(secret, "dev-001") and key != secret
    text = encode_fault_sms("dev-001", 5, 1.7e9, [], None, key)
    assert decode_fault_sms(text).verify(sms_key(secret, "dev-001"))
