"""The uplink over TLS (password and client certificate) against the production broker
config, refusal handling, commands and replies, and the backoff formula."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from collector.tls import CertificateAuthority, install_broker_files
from edge_agent import control
from edge_agent.uplink import backoff
from fleet_protocol import PROTOCOL_VERSION, Command, Kind, Reply, encode, topic
from tests.edge_agent.agent_support import AgentProcess, collecting, write_config
from tests.support.mosquitto import COLLECTOR_USER, Broker, free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("loa-fleet edge test CA")


@pytest.fixture
def tls_broker(tmp_path: Path, ca: CertificateAuthority) -> Iterator[Broker]:
    broker = Broker(tmp_path / "broker", tls_port=free_port(), cert_port=free_port())
    install_broker_files(ca, broker.layout.config_dir, ["127.0.0.1", "localhost"])
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def _ca_file(tmp_path: Path, ca: CertificateAuthority) -> str:
    path = tmp_path / "ca.crt"
    path.write_bytes(ca.cert_pem)
    return str(path)


async def test_mqtts_with_password(
    tls_broker: Broker, tmp_path: Path, ca: CertificateAuthority
) -> None:
    url = f"mqtts://127.0.0.1:{tls_broker.tls_port}"
    cfg = write_config(tmp_path, tls_broker, broker={"url": url, "ca_file": _ca_file(tmp_path, ca)})
    async with collecting(tls_broker) as seen:
        with AgentProcess(cfg, tmp_path / "agent.log") as agent:
            await seen.wait_for(lambda s: s.states, what="a state report over TLS")
            assert await asyncio.to_thread(agent.stop) == 0


async def test_mqtts_with_client_certificate(
    tls_broker: Broker, tmp_path: Path, ca: CertificateAuthority
) -> None:
    cert, key = tmp_path / "dev.crt", tmp_path / "dev.key"
    ca.issue_device("dev-001").write(cert, key)
    url = f"mqtts://127.0.0.1:{tls_broker.cert_port}"
    cfg = write_config(
        tmp_path,
        tls_broker,
        broker={
            "url": url,
            "ca_file": _ca_file(tmp_path, ca),
            "client_cert": str(cert),
            "client_key": str(key),
            "password_file": "",
        },
    )
    async with collecting(tls_broker) as seen:
        with AgentProcess(cfg, tmp_path / "agent.log") as agent:
            await seen.wait_for(lambda s: s.states, what="a state report with a client cert")
            assert await asyncio.to_thread(agent.stop) == 0


async def test_refused_credentials_keep_the_agent_running_and_logged_once(
    broker: Broker, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path, broker)
    (tmp_path / "mqtt-password").write_text("wrong\n")
    with AgentProcess(cfg, tmp_path / "agent.log") as agent:
        for _ in range(100):
            try:
                reply = await control.request(tmp_path / "control.sock", "status")
            except OSError:
                reply = {}
            if reply.get("ok") and reply["result"]["link"]["last_error"]:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"no refusal seen:\n{agent.log()}")
        link = reply["result"]["link"]
        assert link["connected"] is False and "cannot connect" in link["last_error"]
        assert reply["result"]["outbox"]["depth"] >= 1  # kept for when the credentials are fixed
        await asyncio.sleep(3)  # several refused attempts (refused_backoff_max_s = 2 s here)
        assert agent.log().count("retrying with backoff") == 1, agent.log()
        assert await asyncio.to_thread(agent.stop) == 0


async def test_remote_command_is_answered_with_a_reply(broker: Broker, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, broker)
    async with collecting(broker) as seen:
        with AgentProcess(cfg, tmp_path / "agent.log") as agent:
            await seen.wait_for(lambda s: s.states, what="agent up")
            async with aiomqtt.Client(
                broker.host,
                broker.port,
                username=COLLECTOR_USER,
                password=broker.password(COLLECTOR_USER),
            ) as c:
                cmd_topic = topic("dev-001", Kind.CMD)
                for i, action in enumerate(["status", "diag", "reboot"]):
                    cmd = Command(
                        v=PROTOCOL_VERSION,
                        device="dev-001",
                        seq=i + 1,
                        ts=time.time(),
                        id=f"c{i}",
                        action=action,
                        expires=time.time() + 60,
                    )
                    await c.publish(cmd_topic, encode(cmd), qos=1)
                await c.publish(cmd_topic, b'{"not": "a command"}', qos=1)
            replies = await seen.wait_for(
                lambda s: (r := s.of(Reply)) and len(r) >= 3 and r, what="three replies"
            )
            by_id = {r.id: r for r in replies}
            assert by_id["c0"].ok and by_id["c0"].result["device"] == "dev-001"
            assert by_id["c1"].ok and "faults" in by_id["c1"].result
            assert not by_id["c2"].ok and "unknown action" in (by_id["c2"].error or "")
            assert "rejected command" in agent.log()
            assert await asyncio.to_thread(agent.stop) == 0


def test_backoff_is_jittered_exponential_and_capped() -> None:
    rng = random.Random(1).random
    for attempt in range(1, 30):
        for _ in range(50):
            d = backoff(attempt, 2.0, 2.5, rng)
            assert 0 <= d <= min(2.5, 2.0 ** min(10, attempt))
    assert backoff(30, 2.0, 600.0, lambda: 1.0) == 600.0
    assert backoff(3, 2.0, 600.0, lambda: 0.5) == 4.0
