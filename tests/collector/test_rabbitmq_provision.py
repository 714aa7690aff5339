"""Issue 19: ``loa-collector provision --rabbitmq-ctl`` creates the device's RabbitMQ user.

One real node (tests.support.rabbitmq, from deploy/rabbitmq's config); the
provision command run as an operator runs it, with ``--rabbitmq-ctl`` naming
a wrapper around the node's rabbitmqctl (the test node needs its environment,
as ``ssh mq1 rabbitmqctl`` would on a real cluster), and one ``--broker-url``
per node. The bundle's password logs the device in over MQTT and it publishes
its own state; nothing is written when RabbitMQ refuses; re-provisioning needs
``--force`` and then the old password no longer works.
"""

from __future__ import annotations

import asyncio
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from collector import cli
from collector.broker_rabbitmq import rabbitmq_user_exists
from tests.collector.conftest import COLLECTOR_USER
from tests.support.rabbitmq import RabbitCluster, available

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not available(), reason="rabbitmq-server is not installed"),
]

V311 = aiomqtt.ProtocolVersion.V311


@pytest.fixture(scope="module")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitCluster]:
    cluster = RabbitCluster(tmp_path_factory.mktemp("rabbit-provision"), 1)
    cluster.start()
    try:
        cluster.add_collector()
        yield cluster
    finally:
        cluster.stop()
    assert cluster.leftovers() == []


@pytest.fixture(scope="module")
def ctl(rabbit: RabbitCluster, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A rabbitmqctl command line for the test node: a script with its environment."""
    env = rabbit.env(rabbit.nodes[0])
    script = tmp_path_factory.mktemp("ctl") / "rabbitmqctl"
    assigns = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items() if k != "PATH")
    argv = " ".join(shlex.quote(a) for a in rabbit.ctl_argv())
    script.write_text(f'#!/bin/sh\nexec env {assigns} {argv} "$@"\n')
    script.chmod(0o700)
    return str(script)


def provision(out: Path, device: str, ctl: str, *extra: str) -> int:
    return cli.main(
        [
            "provision", device, "--commune", "19087", "--commune-name", "Sơn Vi",
            "--broker-url", "mqtts://mq1.example:8883", "--broker-url", "mqtts://mq2.example:8883",
            "--out", str(out), "--rabbitmq-ctl", ctl, "--no-inventory", *extra,
        ]
    )  # fmt: skip


async def can_publish(rabbit: RabbitCluster, device: str, password: str) -> bool:
    """Log in as ``device`` with ``password`` and publish its state (PUBACKed)."""
    try:
        async with aiomqtt.Client(
            rabbit.host,
            rabbit.nodes[0].mqtt_port,
            username=device,
            password=password,
            identifier=device,
            protocol=V311,
            timeout=10,
        ) as c:
            await c.publish(f"loa/v1/{device}/state", b"{}", qos=1, timeout=10)
            return True
    except aiomqtt.MqttError:
        return False


async def test_provision_creates_the_rabbitmq_user_and_the_bundle_logs_in(
    rabbit: RabbitCluster, ctl: str, tmp_path: Path
) -> None:
    bundle = tmp_path / "dev-301"
    assert await asyncio.to_thread(provision, bundle, "dev-301", ctl) == 0
    cfg = tomllib.loads((bundle / "agent.toml").read_text())
    assert cfg["broker"]["urls"] == ["mqtts://mq1.example:8883", "mqtts://mq2.example:8883"]
    assert "url" not in cfg["broker"]
    password = (bundle / "mqtt-password").read_text().strip()
    assert await can_publish(rabbit, "dev-301", password)
    # Its per-device permissions: the collector sees its state; another id is refused.
    async with aiomqtt.Client(
        rabbit.host,
        rabbit.nodes[0].mqtt_port,
        username=COLLECTOR_USER,
        password=rabbit.password(COLLECTOR_USER),
        identifier="loa-collector-provision",
        protocol=V311,
        timeout=10,
    ) as col:
        await col.subscribe("loa/v1/+/state", qos=1, timeout=10)
        async with aiomqtt.Client(
            rabbit.host,
            rabbit.nodes[0].mqtt_port,
            username="dev-301",
            password=password,
            identifier="dev-301",
            protocol=V311,
            timeout=10,
        ) as dev:
            await dev.publish("loa/v1/dev-301/state", b"from dev-301", qos=1, timeout=10)
        async for m in col.messages:
            assert str(m.topic) == "loa/v1/dev-301/state"
            break

    # Again without --force: refused, the password unchanged.
    assert await asyncio.to_thread(provision, tmp_path / "again", "dev-301", ctl) == 2
    assert not (tmp_path / "again").exists()
    assert await can_publish(rabbit, "dev-301", password)
    # With --force: a new password; the old one is refused.
    assert await asyncio.to_thread(provision, bundle, "dev-301", ctl, "--force") == 0
    new = (bundle / "mqtt-password").read_text().strip()
    assert new != password
    assert await can_publish(rabbit, "dev-301", new)
    assert not await can_publish(rabbit, "dev-301", password)
    # Deprovisioned: the user is gone, the password logs in no more.
    argv = ["deprovision", "dev-301", "--rabbitmq-ctl", ctl]
    assert await asyncio.to_thread(cli.main, argv) == 0
    assert not rabbitmq_user_exists("dev-301", ctl=[ctl])
    assert not await can_publish(rabbit, "dev-301", new)
    assert await asyncio.to_thread(cli.main, argv) == 2  # nothing left to revoke


async def test_certificate_mode_makes_a_user_without_a_password(
    rabbit: RabbitCluster, ctl: str, tmp_path: Path
) -> None:
    from collector.tls import CertificateAuthority

    ca_dir = tmp_path / "ca"
    CertificateAuthority.create("loa-fleet provision test CA").save(ca_dir)
    bundle = tmp_path / "dev-302"
    assert await asyncio.to_thread(provision, bundle, "dev-302", ctl, "--ca-dir", str(ca_dir)) == 0
    assert (bundle / "client.crt").exists() and not (bundle / "mqtt-password").exists()
    assert rabbitmq_user_exists("dev-302", ctl=[ctl])
    # No password logs in as it: only its certificate does (test_rabbitmq_cert.py).
    assert not await can_publish(rabbit, "dev-302", "")
    assert not await can_publish(rabbit, "dev-302", "anything")


def test_a_refusing_rabbitmq_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """rabbitmqctl that fails (the node down, a wrong cookie): a clear error, no bundle."""
    broken = tmp_path / "rabbitmqctl"
    broken.write_text(
        '#!/bin/sh\necho "Error: unable to perform an operation on node" >&2\nexit 69\n'
    )
    broken.chmod(0o700)
    assert provision(tmp_path / "dev-303", "dev-303", str(broken)) == 2
    err = capsys.readouterr().err
    assert "RabbitMQ" in err and "unable to perform an operation" in err
    assert not (tmp_path / "dev-303").exists()
