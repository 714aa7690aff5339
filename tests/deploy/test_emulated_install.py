"""The offline install on the controllers we will meet, under emulation.

For each of arm64 and armhf: the wheelhouse is built by deploy/build-wheelhouse.sh
in a bookworm chroot of that architecture (qemu-user), then deploy/install-agent.sh
runs in a fresh minbase + python3 chroot (no compiler, no python3-venv) from
that wheelhouse alone, in a network namespace with no interface but loopback:
the test first shows the chroot cannot reach PyPI or Debian. Then the installed
``loa-agent run`` (as the ``loa`` user, emulated) polls ``loa-sim modem`` on a
pty and ``loa-sim amp`` over Modbus TCP, publishes to a Mosquitto started from
deploy/'s config on the host's loopback, and ``loa-agent status`` in the chroot
shows it connected with both readings.

The chroots are kept in build/emu of this tree: the first run debootstraps
(minutes per architecture), later runs only rebuild the wheels and copy the
controller chroot. Marked ``emulated``; needs root, debootstrap and
qemu-user-static (scripts/test.sh installs them).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from firmware_shims.amp.sim import amp_simulator
from firmware_shims.modem.sim import running_modem
from tests.support import emulated
from tests.support.mosquitto import COLLECTOR_USER, Broker, running_broker

pytestmark = [pytest.mark.integration, pytest.mark.emulated, pytest.mark.timeout(3600)]

#: The platform tag pip gives a wheel compiled for the architecture.
PLATFORM_TAG = {"arm64": "aarch64", "armhf": "armv7l"}


def _bundle(device: str, broker_port: int, password: str, modem: str, amp: str) -> dict[str, str]:
    agent = f"""\
log_level = "INFO"
[device]
id = "{device}"
commune = "emu"
[broker]
url = "mqtt://127.0.0.1:{broker_port}"
password_file = "/etc/loa-agent/mqtt-password"
[modem]
port = "{modem}"
dialect = "quectel"
poll_s = 5.0
[amp]
transport = "tcp"
address = "{amp}"
poll_s = 5.0
[system]
poll_s = 10.0
"""
    return {"agent.toml": agent, "mqtt-password": password + "\n"}


def _wait(predicate, timeout: float, what: str, log: Path) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise AssertionError(f"{what} within {timeout:.0f} s; agent log:\n{tail}")
        time.sleep(1.0)


@pytest.mark.parametrize("arch", emulated.CI_ARCHES)
async def test_offline_install_and_run_on_emulated_controller(arch: str, tmp_path: Path) -> None:
    why = emulated.missing(arch)
    if why:
        pytest.skip(why)
    built = await asyncio.to_thread(emulated.wheelhouse, arch)
    wheels = sorted(p.name for p in built.path.glob("*.whl"))
    assert any(w.startswith("loa_fleet-") for w in wheels), wheels
    assert any(w.startswith("pip-") for w in wheels), wheels
    for compiled in ("msgspec", "psutil"):
        tagged = [w for w in wheels if w.startswith(f"{compiled}-")]
        assert len(tagged) == 1 and PLATFORM_TAG[arch] in tagged[0], (compiled, wheels)
    assert not any(w.startswith(("aiohttp", "cryptography")) for w in wheels), wheels

    root = await asyncio.to_thread(emulated.controller, arch)
    probe = await asyncio.to_thread(emulated.offline_probe, arch, root)
    assert "REACHED" not in probe and probe.count("unreachable") == 3, probe

    device = f"emu-{arch}"
    (root / "run/loa-sim").mkdir(parents=True)
    with running_broker(tmp_path / "broker") as broker:
        broker.add_user(device)
        async with (
            running_modem(root / "run/loa-sim/modem", dialect="quectel") as modem,
            amp_simulator(tcp="127.0.0.1:0", control_socket=tmp_path / "amp.ctl") as amp,
        ):
            assert amp.tcp is not None
            # What the udev rule does on a controller: the AT port is dialout's.
            os.chmod(os.path.realpath(modem.link), 0o666)
            emulated.stick(
                root,
                built.path,
                _bundle(
                    device,
                    broker.port,
                    broker.password(device),
                    "/run/loa-sim/modem",
                    f"{amp.tcp[0]}:{amp.tcp[1]}",
                ),
            )
            # Blocking from here on (chroot processes): off the event loop the
            # simulators' helpers live on.
            await asyncio.to_thread(
                _install_and_run, arch, root, built, broker, device, tmp_path / "agent.log"
            )


def _install_and_run(
    arch: str, root: Path, built: emulated.Built, broker: Broker, device: str, log: Path
) -> None:
    """install-agent.sh offline in the chroot, then the agent's first report and status."""
    inst = emulated.install(arch, root)
    print(
        f"\n{arch}: wheelhouse {built.seconds:.0f} s, install {inst.seconds:.0f} s, "
        f"/opt/loa-fleet {inst.size_bytes / 2**20:.1f} MiB"
    )
    assert "installing loa-fleet from the wheelhouse" in inst.output
    assert (root / "etc/systemd/system/loa-agent.service").exists()
    assert not (root / "opt/loa-fleet/venv/lib/python3.11/site-packages/aiohttp").exists()

    # The collector's view: the device's messages arrive at the broker.
    sub = subprocess.Popen(
        [
            "mosquitto_sub",
            "-h", broker.host, "-p", str(broker.port),
            "-u", COLLECTOR_USER, "-P", broker.password(COLLECTOR_USER),
            "-t", f"loa/v1/{device}/state", "-C", "1", "-W", "600",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    t0 = time.monotonic()
    with emulated.run_agent(arch, root, log) as agent:
        try:
            out, err = sub.communicate(timeout=600)
        finally:
            if sub.poll() is None:
                sub.kill()
                sub.wait()
        assert sub.returncode == 0, (err, log.read_text(errors="replace")[-3000:])
        first_report = time.monotonic() - t0
        report = json.loads(out)
        assert report["device"] == device and report["seq"] > 0

        def connected_with_readings() -> bool:
            code, st, _ = emulated.status(arch, root)
            if code != 0 or not isinstance(st, dict):
                return False
            link, readings = st.get("link"), st.get("readings")
            return (
                isinstance(link, dict)
                and bool(link.get("connected"))
                and isinstance(readings, dict)
                and {"modem", "amp"} <= set(readings)
            )

        _wait(connected_with_readings, 300, "status never showed link and readings", log)
        code, st, text = emulated.status(arch, root)
        assert code == 0 and st is not None, text
        readings = st["readings"]
        assert isinstance(readings, dict)
        assert readings["modem"].get("responding", True) is True, readings["modem"]
        assert readings["modem"]["csq"] is not None, readings["modem"]
        assert readings["amp"].get("responding", True) is True, readings["amp"]
        assert readings["amp"]["power"] is not None, readings["amp"]
        human = emulated.status_text(arch, root)
        assert device in human, human
        rss = emulated.guest_rss_kib(agent.pid)
        print(
            f"{arch}: first state report {first_report:.0f} s after start; "
            f"qemu+agent RSS {rss / 1024 if rss else float('nan'):.1f} MiB"
        )
        assert agent.poll() is None, log.read_text(errors="replace")[-3000:]
    assert agent.returncode == 0, log.read_text(errors="replace")[-3000:]
