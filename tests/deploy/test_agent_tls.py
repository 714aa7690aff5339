"""The real agent (``loa-agent run``), provisioned by ``provision``, connects to the TLS broker.

Both device modes: password over TLS (port 8883 in production) and client
certificate (8884). The agent's config is the provisioned agent.toml, with
only times scaled down and the hardware sections left out (no modem here).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from collector.provision import InventoryFields, Provisioned, dump_toml, provision
from collector.tls import CertificateAuthority
from fleet_protocol import EventType, PresenceStatus
from tests.deploy.conftest import reloader
from tests.edge_agent.agent_support import FAST, AgentProcess, collecting
from tests.support.mosquitto import Broker

pytestmark = pytest.mark.integration


async def provisioned(
    tmp_path: Path, broker: Broker, ca: CertificateAuthority, *, auth: str
) -> Provisioned:
    ca_dir = tmp_path / "ca"
    if not ca_dir.exists():
        ca.save(ca_dir)
    template = tmp_path / "agent-template.toml"
    template.write_text(
        dump_toml(
            {
                **FAST,
                "outbox": {"path": str(tmp_path / "outbox.sqlite")},
                "control": {"socket": str(tmp_path / "control.sock")},
            }
        )
    )
    port = broker.tls_port if auth == "password" else broker.cert_port
    return await provision(
        "dev-001",
        InventoryFields(commune_code="xa-test", commune_name="Xã Thử"),
        out_dir=tmp_path / "bundle",
        broker_url=f"mqtts://127.0.0.1:{port}",
        broker_dir=broker.layout.config_dir,
        ca_dir=ca_dir,
        auth=auth,  # type: ignore[arg-type]
        template=template,
        install_dir=tmp_path / "bundle",
        reload_broker=reloader(broker),
    )


@pytest.mark.parametrize("auth", ["password", "cert"])
async def test_provisioned_agent_reports_over_tls(
    tls_broker: Broker, fleet_ca: CertificateAuthority, tmp_path: Path, auth: str
) -> None:
    done = await provisioned(tmp_path, tls_broker, fleet_ca, auth=auth)
    assert done.auth == auth
    async with collecting(tls_broker) as seen:
        with AgentProcess(done.agent_toml, tmp_path / "agent.log") as agent:
            await seen.wait_for(
                lambda s: any(p.status == PresenceStatus.ONLINE for p in s.presence),
                what=f"birth over TLS ({auth})",
            )
            states = await seen.wait_for(lambda s: s.states, what="state report")
            assert states[0].device == "dev-001" and states[0].commune == "xa-test"
            rc = await asyncio.to_thread(agent.stop)
            assert rc == 0, agent.log()
        await seen.wait_for(
            lambda s: any(e.type == EventType.AGENT_STOP for e in s.events), what="stop event"
        )
    log = tls_broker.log_tail(200)
    port = tls_broker.tls_port if auth == "password" else tls_broker.cert_port
    assert f"on port {port}" in log
    assert "u'dev-001'" in log
