"""The reverse SSH tunnel through a real OpenSSH jump host on loopback.

Two Debian ``sshd`` processes run in temp dirs: the district jump host, and a
stand-in for the controller's own sshd. The agent (a real process) opens
``ssh -R`` to the jump host on a ``tunnel`` command; the technician connects
through the jump host to the forwarded port, logs in to the "controller" and
runs ``loa-agent status`` there, which answers from the running agent's
control socket as on site. At its deadline the tunnel closes by itself.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from collector.provision_remote import JUMP_AUTHORIZED_KEYS, TunnelPlan, tunnel_files
from edge_agent.tunnel import ssh_argv
from fleet_protocol import EventType
from tests.edge_agent.agent_support import (
    AgentProcess,
    collecting,
    reply_to,
    send_command,
    write_config,
)
from tests.support.mosquitto import Broker, free_port
from tests.support.sshd import SSHD, Sshd, keygen, running_sshd

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path(SSHD).exists(), reason="openssh-server is not installed"),
]

DEVICE = "dev-001"
LOA_AGENT = Path(sys.executable).parent / "loa-agent"


class Site:
    """Keys, known_hosts and the two sshds of one test."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.jump = Sshd(tmp_path, "jump")
        self.controller = Sshd(tmp_path, "controller")
        self.remote_port = free_port()
        # Provisioning makes the device's key, pins the jump host's host key and
        # gives the operator the authorized_keys line for the jump host: the key
        # may only listen on its one port there (collector.provision_remote).
        bundle = tmp_path / "bundle"
        bundle.mkdir()
        plan = TunnelPlan(
            host=self.jump.host,
            port=self.jump.port,
            user=self.jump.user,
            remote_port=self.remote_port,
            known_hosts=self.jump.known_hosts_line() + "\n",
        )
        self.section, files = tunnel_files(DEVICE, plan, bundle)
        for name, (data, mode) in files.items():
            (bundle / name).write_bytes(data)
            (bundle / name).chmod(mode)
        self.jump.authorize((bundle / JUMP_AUTHORIZED_KEYS).read_text().strip())
        # The technician may only reach forwarded ports through the jump host.
        self.tech_key = tmp_path / "tech_ed25519"
        tech_pub = keygen(self.tech_key, "technician")
        self.jump.authorize(
            f'restrict,port-forwarding,permitopen="127.0.0.1:{self.remote_port}" {tech_pub}'
        )
        self.controller.authorize(tech_pub)
        self.device_known_hosts = Path(self.section["known_hosts_file"])
        self.tech_known_hosts = tmp_path / "tech_known_hosts"
        self.tech_known_hosts.write_text(
            self.jump.known_hosts_line()
            + "\n"
            + self.controller.known_hosts_line(self.remote_port)
            + "\n"
        )

    def tunnel_section(self, **over: Any) -> dict[str, Any]:
        return {
            **self.section,
            "local_host": "127.0.0.1",
            "local_port": self.controller.port,
            "connect_timeout_s": 10.0,
            "ssh": "/usr/bin/ssh",
            **over,
        }

    def technician(self, *command: str) -> subprocess.CompletedProcess[str]:
        """ssh through the jump host to the forwarded port and run ``command`` there."""
        common = [
            "-F",
            "/dev/null",
            "-i",
            str(self.tech_key),
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={self.tech_known_hosts}",
            "-o",
            "ConnectTimeout=10",
        ]
        proxy = " ".join(
            [
                "/usr/bin/ssh",
                *common,
                "-p",
                str(self.jump.port),
                "-W",
                "%h:%p",
                f"{self.jump.user}@{self.jump.host}",
            ]
        )
        argv = [
            "/usr/bin/ssh",
            *common,
            "-o",
            f"ProxyCommand={proxy}",
            "-p",
            str(self.remote_port),
            f"{self.controller.user}@127.0.0.1",
            *command,
        ]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)


async def test_technician_reaches_the_agent_through_the_tunnel_until_its_deadline(
    broker: Broker, tmp_path: Path
) -> None:
    site = Site(tmp_path)
    cfg = write_config(tmp_path, broker, DEVICE, tunnel=site.tunnel_section())
    with running_sshd(site.jump), running_sshd(site.controller):
        async with collecting(broker) as seen:
            with AgentProcess(cfg, tmp_path / "agent.log") as agent:
                await seen.wait_for(lambda s: s.states, what="agent up")
                # Before the tunnel, nothing listens on the jump host's port.
                before = await asyncio.to_thread(site.technician, "true")
                assert before.returncode != 0

                await send_command(broker, DEVICE, "t1", "tunnel", duration_s=8)
                opened = await reply_to(seen, "t1")
                assert opened.ok, (opened.error, agent.log()[-3000:], site.jump.log_text())
                assert opened.result["open"] and opened.result["remote_port"] == site.remote_port
                closes_at = opened.result["closes_at"]

                # The technician, through the jump host, runs loa-agent status as on site.
                sock = tmp_path / "control.sock"
                run = await asyncio.to_thread(
                    site.technician, str(LOA_AGENT), "status", "--socket", str(sock)
                )
                assert run.returncode == 0, (run.stderr, site.controller.log_text()[-2000:])
                assert DEVICE in run.stdout

                # Asking again while it is open answers with the same tunnel.
                await send_command(broker, DEVICE, "t2", "tunnel", duration_s=600)
                again = await reply_to(seen, "t2")
                assert again.ok and again.result["already_open"]
                assert again.result["closes_at"] == closes_at

                # At its deadline the tunnel closes by itself, and says so.
                closed = await seen.wait_for(
                    lambda s: [e for e in s.events if e.type == EventType.TUNNEL_CLOSED],
                    timeout=30,
                    what="tunnel_closed event",
                )
                assert closed[0].detail == "deadline"
                assert closed[0].ts >= closes_at - 0.5
                opened_events = [e for e in seen.events if e.type == EventType.TUNNEL_OPENED]
                assert len(opened_events) == 1 and str(site.remote_port) in (
                    opened_events[0].detail or ""
                )
                after = await asyncio.to_thread(site.technician, "true")
                assert after.returncode != 0
                assert await asyncio.to_thread(agent.stop) == 0


async def test_tunnel_refuses_a_jump_host_with_another_host_key(
    broker: Broker, tmp_path: Path
) -> None:
    site = Site(tmp_path)
    # The device pins a key the jump host does not have (a man in the middle).
    impostor = Sshd(tmp_path, "impostor")
    site.device_known_hosts.write_text(impostor.known_hosts_line(site.jump.port) + "\n")
    cfg = write_config(tmp_path, broker, DEVICE, tunnel=site.tunnel_section())
    with running_sshd(site.jump):
        async with collecting(broker) as seen:
            with AgentProcess(cfg, tmp_path / "agent.log") as agent:
                await seen.wait_for(lambda s: s.states, what="agent up")
                await send_command(broker, DEVICE, "t1", "tunnel", duration_s=30)
                reply = await reply_to(seen, "t1")
                assert not reply.ok
                assert "Host key verification failed" in (reply.error or ""), reply.error
                assert not [e for e in seen.events if e.type == EventType.TUNNEL_OPENED]
                # Closing on command when nothing is open is harmless.
                await send_command(broker, DEVICE, "t2", "tunnel_close")
                assert (await reply_to(seen, "t2")).result["was_open"] is False
                assert await asyncio.to_thread(agent.stop) == 0


def test_ssh_argv_pins_the_host_key_and_uses_no_config(tmp_path: Path) -> None:
    from edge_agent.config import TunnelConfig

    cfg = TunnelConfig(
        host="jump.example",
        key_file=tmp_path / "k",
        known_hosts_file=tmp_path / "kh",
        remote_port=20001,
    )
    argv = ssh_argv(cfg)
    assert argv[:3] == ["/usr/bin/ssh", "-F", "/dev/null"]
    assert "StrictHostKeyChecking=yes" in argv
    assert f"UserKnownHostsFile={tmp_path / 'kh'}" in argv
    assert "GlobalKnownHostsFile=/dev/null" in argv
    assert argv[-3:] == ["-R", "127.0.0.1:20001:127.0.0.1:22", "loa-tunnel@jump.example"]
