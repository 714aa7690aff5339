"""The agent installed and run in an emulated controller: a Debian bookworm
chroot of arm64 or armhf run through qemu-user (deploy/emu-lib.bash).

``wheelhouse(arch)`` builds the architecture's wheelhouse with
deploy/build-wheelhouse.sh (its chroots are kept in build/emu of this tree, so
a second run only rebuilds the wheels). ``controller(arch)`` makes a fresh
copy of the minbase + python3 chroot (what Raspberry Pi OS Lite has: no
compiler, no python3-venv, no internet). ``install()`` copies a bundle, the
wheelhouse and deploy/ in as a technician's USB stick would and runs
deploy/install-agent.sh in the chroot with no network at all; ``run_agent()``
starts ``loa-agent run`` in it as the ``loa`` user, as the unit does.
Used by tests/deploy/test_emulated_install.py and bench/emulated_install.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
WORK = ROOT / "build" / "emu"
ARCHES = ("arm64", "armhf")
#: What the test runs: arm64 by default (a fresh clone's first run debootstraps
#: about 10 min per architecture; CI's budget holds one); LOA_EMU_ARCHES="arm64 armhf" for both.
CI_ARCHES = tuple(os.environ.get("LOA_EMU_ARCHES", "arm64").split())
QEMU = {"arm64": "qemu-aarch64-static", "armhf": "qemu-arm-static"}
#: Where the stick's contents go inside the chroot.
USB = "/media/usb"


def missing(arch: str) -> str | None:
    """Why this machine cannot run the emulated install, or None."""
    if os.geteuid() != 0:
        return "needs root (debootstrap, chroot, mount namespaces)"
    for tool in ("debootstrap", "unshare", "chroot", QEMU[arch]):
        if not shutil.which(tool) and not Path("/usr/sbin", tool).exists():
            return f"{tool} not installed (scripts/test.sh installs it)"
    return None


def emu_argv(
    arch: str, root: Path, cmd: Sequence[str], *, nonet: bool = False, binds: Sequence[str] = ()
) -> tuple[list[str], dict[str, str]]:
    """argv and env running ``cmd`` in the chroot ``root`` through deploy/emu-lib.bash."""
    script = (
        '. "$1"; shift; EMU_BINDS=(); '
        'while [ "$1" != -- ]; do EMU_BINDS+=("$1"); shift; done; shift; emu_run "$@"'
    )
    argv = ["bash", "-c", script, "_", str(DEPLOY / "emu-lib.bash"), *binds, "--", arch, str(root)]
    env = {k: v for k, v in os.environ.items() if k != "EMU_NONET"}
    if nonet:
        env["EMU_NONET"] = "1"
    return [*argv, *cmd], env


def emu(
    arch: str, root: Path, *cmd: str, nonet: bool = False, timeout: float = 1800.0
) -> subprocess.CompletedProcess[str]:
    argv, env = emu_argv(arch, root, cmd, nonet=nonet)
    return subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@dataclass
class Built:
    path: Path
    seconds: float
    output: str


def wheelhouse(arch: str) -> Built:
    """deploy/build-wheelhouse.sh ARCH build/wheelhouse-ARCH (chroots reused from build/emu)."""
    out = ROOT / "build" / f"wheelhouse-{arch}"
    t0 = time.monotonic()
    proc = subprocess.run(
        ["nice", "-n", "19", "bash", str(DEPLOY / "build-wheelhouse.sh"), arch, str(out)],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    text = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(
            f"build-wheelhouse.sh {arch} failed ({proc.returncode}):\n{text[-4000:]}"
        )
    return Built(out, time.monotonic() - t0, text)


def controller(arch: str) -> Path:
    """A fresh controller chroot: a copy of build/emu/bookworm-ARCH-base."""
    base = WORK / f"bookworm-{arch}-base"
    if not (base / ".loa-ready").exists():
        raise RuntimeError(f"{base} not built: run wheelhouse({arch!r}) first")
    root = WORK / f"controller-{arch}"
    if root.exists():
        shutil.rmtree(root)
    subprocess.run(["cp", "-a", str(base), str(root)], check=True)
    return root


def passwd_ids(root: Path, user: str) -> tuple[int, int]:
    for line in (root / "etc/passwd").read_text().splitlines():
        f = line.split(":")
        if f[0] == user:
            return int(f[2]), int(f[3])
    raise KeyError(user)


def offline_probe(arch: str, root: Path) -> str:
    """What the chroot sees of the network under EMU_NONET: must be nothing."""
    code = (
        "import socket\n"
        "for host, port in (('pypi.org', 443), ('151.101.0.223', 443), ('deb.debian.org', 80)):\n"
        "    try:\n"
        "        socket.create_connection((host, port), timeout=5).close()\n"
        "        print('REACHED', host)\n"
        "    except OSError as exc:\n"
        "        print('unreachable', host, type(exc).__name__, exc.errno)\n"
    )
    return emu(arch, root, "/usr/bin/python3", "-c", code, nonet=True).stdout


@dataclass
class Installed:
    root: Path
    seconds: float
    size_bytes: int
    output: str


def stick(root: Path, wheels: Path, bundle: dict[str, str]) -> None:
    """The technician's USB stick inside the chroot: bundle, wheelhouse, deploy/ and docs."""
    usb = root / USB.lstrip("/")
    (usb / "bundle").mkdir(parents=True)
    for name, text in bundle.items():
        (usb / "bundle" / name).write_text(text)
    shutil.copytree(wheels, usb / "wheelhouse")
    shutil.copytree(DEPLOY, usb / "loa-fleet" / "deploy")
    (usb / "loa-fleet" / "docs").mkdir()
    shutil.copy(ROOT / "docs" / "deploy.md", usb / "loa-fleet" / "docs")


def install(arch: str, root: Path) -> Installed:
    """deploy/install-agent.sh from the stick, offline (no network namespace at all)."""
    t0 = time.monotonic()
    proc = emu(
        arch,
        root,
        "/bin/bash",
        f"{USB}/loa-fleet/deploy/install-agent.sh",
        "--bundle",
        f"{USB}/bundle",
        "--wheelhouse",
        f"{USB}/wheelhouse",
        nonet=True,
    )
    seconds = time.monotonic() - t0
    text = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"install-agent.sh in {arch} failed ({proc.returncode}):\n{text}")
    size = int(
        subprocess.run(
            ["du", "-sb", str(root / "opt/loa-fleet")], capture_output=True, text=True, check=True
        ).stdout.split()[0]
    )
    return Installed(root, seconds, size, text)


@contextlib.contextmanager
def run_agent(arch: str, root: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``loa-agent run`` in the chroot as ``loa``, with the directories the unit makes."""
    uid, gid = passwd_ids(root, "loa")
    run_dir = root / "run/loa-agent"
    run_dir.mkdir(parents=True, exist_ok=True)  # RuntimeDirectory=loa-agent, 0750
    os.chown(run_dir, uid, gid)
    run_dir.chmod(0o750)
    argv, env = emu_argv(
        arch,
        root,
        [
            "/usr/sbin/runuser",
            "-u",
            "loa",
            "--",
            "/usr/bin/env",
            "PYTHONDONTWRITEBYTECODE=1",
            "/opt/loa-fleet/venv/bin/loa-agent",
            "run",
            "--config",
            "/etc/loa-agent/agent.toml",
        ],
    )
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc
    finally:
        stop(proc)


def agent_pid(session: int) -> int | None:
    """The (qemu-user) process running loa-agent in the chroot session ``session``."""
    import psutil

    with contextlib.suppress(psutil.Error):
        for p in psutil.Process(session).children(recursive=True):
            if any("loa-agent" in part for part in p.cmdline()) and "runuser" not in p.name():
                return int(p.pid)
    return None


def stop(proc: subprocess.Popen[bytes], timeout: float = 90.0) -> None:
    """SIGTERM to the agent (it flushes and exits, and runuser with it), then SIGKILL all."""
    if proc.poll() is not None:
        return
    pid = agent_pid(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def status(arch: str, root: Path) -> tuple[int, dict[str, object] | None, str]:
    """``loa-agent status --json`` inside the chroot, as the technician runs it."""
    proc = emu(
        arch,
        root,
        "/opt/loa-fleet/venv/bin/loa-agent",
        "status",
        "--json",
        "--config",
        "/etc/loa-agent/agent.toml",
        timeout=300,
    )
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        data = None
    return proc.returncode, data, proc.stdout + proc.stderr


def status_text(arch: str, root: Path) -> str:
    proc = emu(arch, root, "/opt/loa-fleet/venv/bin/loa-agent", "status", "--lang", "en")
    return proc.stdout + proc.stderr


def guest_rss_kib(session: int) -> int | None:
    """RSS of the qemu-user process running loa-agent: the guest's memory plus qemu's own."""
    import psutil

    pid = agent_pid(session)
    with contextlib.suppress(psutil.Error):
        return None if pid is None else int(psutil.Process(pid).memory_info().rss // 1024)
    return None
