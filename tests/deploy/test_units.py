"""deploy/'s systemd units, udev rules, journald and logrotate files, and install scripts.

systemd-analyze verify checks the units the way systemd would load them; the
structured checks pin what the deployment relies on (watchdog, restart policy,
hardening, paths that other files name).
"""

from __future__ import annotations

import configparser
import grp
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from collector.broker_config import DEPLOY_DIR

SYSTEMD = DEPLOY_DIR / "systemd"
SCRIPTS = sorted(DEPLOY_DIR.glob("*.sh"))
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
SHELLCHECK = shutil.which("shellcheck")


def unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values...]}} (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}: {line!r} outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: {line!r} is not key=value"
        current.setdefault(key, []).append(value)
    return sections


def one(u: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = u[section][key]
    assert len(values) == 1, f"{section}.{key} set {len(values)} times"
    return values[0]


def _stub_exec(text: str, stub: Path) -> str:
    """Point Exec*= lines at an existing executable: verify checks the binary exists."""
    return re.sub(
        r"^(Exec[A-Za-z]*=)[-+!@:]*(/opt/loa-fleet/\S+|/var/lib/loa-agent/\S+|/usr/sbin/mosquitto)",
        rf"\g<1>{stub}",
        text,
        flags=re.MULTILINE,
    )


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed")
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    stub = tmp_path / "bin" / "stub"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    units = [*SYSTEMD.glob("*.service"), *SYSTEMD.glob("*.timer")]
    for src in units:
        (tmp_path / src.name).write_text(_stub_exec(src.read_text(), stub))
    # The drop-ins, each applied to the unit it extends.
    debian_mosquitto = Path("/lib/systemd/system/mosquitto.service")
    if debian_mosquitto.exists():
        (tmp_path / "mosquitto.service").write_text(_stub_exec(debian_mosquitto.read_text(), stub))
        units.append(tmp_path / "mosquitto.service")
    for dropin_dir in SYSTEMD.glob("*.service.d"):
        target = tmp_path / dropin_dir.name
        target.mkdir()
        for conf in dropin_dir.glob("*.conf"):
            (target / conf.name).write_text(_stub_exec(conf.read_text(), stub))
    names = [u.name for u in units]
    result = subprocess.run(
        [str(SYSTEMD_ANALYZE), "verify", "--man=no", *names],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # systemd 252 does not know the backoff keys of the drop-in meant for >= 254.
    noise = re.compile(r"restart-backoff.conf:\d+: Unknown key '(RestartSteps|RestartMaxDelaySec)'")
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line.strip() and not noise.search(line)
    ]
    assert result.returncode == 0 and not problems, "\n".join(problems)


def test_agent_unit_has_watchdog_restart_and_hardening() -> None:
    u = unit(SYSTEMD / "loa-agent.service")
    s = u["Service"]
    assert one(u, "Service", "Type") == "notify"
    assert one(u, "Service", "NotifyAccess") == "main"
    assert one(u, "Service", "WatchdogSec").endswith("s")
    assert one(u, "Service", "Restart") == "always"
    assert one(u, "Unit", "StartLimitIntervalSec") == "0"
    assert one(u, "Service", "User") == "loa"
    assert "dialout" in one(u, "Service", "SupplementaryGroups").split()
    for key, value in {
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        # Serial ports are in /dev: a private /dev would hide the modem.
        "PrivateDevices": "no",
    }.items():
        assert one(u, "Service", key) == value, key
    assert s["CapabilityBoundingSet"] == [""]
    # The outbox directory and the config directory are the only writable places (the
    # latter sticky, so only the agent's own agent.toml can be replaced there), and
    # agent.toml puts the outbox in the former.
    assert one(u, "Service", "ReadWritePaths").split() == ["/var/lib/loa-agent", "/etc/loa-agent"]
    assert one(u, "Service", "ConfigurationDirectoryMode") == "1770"
    example = DEPLOY_DIR / "agent.example.toml"
    if example.exists():
        import tomllib

        cfg = tomllib.loads(example.read_text())
        assert cfg["outbox"]["path"].startswith("/var/lib/loa-agent/")
        assert cfg["control"]["socket"].startswith("/run/loa-agent/")
    exec_start = one(u, "Service", "ExecStart").split()
    assert exec_start[1:] == ["run", "--config", "/etc/loa-agent/agent.toml"]
    # Upgrades: the running environment is the `current` link in the state directory
    # (the agent may move it), the guard runs from the installed one (it may not).
    assert exec_start[0] == "/var/lib/loa-agent/current/bin/loa-agent"
    guard = one(u, "Service", "ExecStartPre").split()
    assert guard[0] == "-/opt/loa-fleet/venv/bin/loa-agent" and guard[1] == "upgrade-guard"
    backoff = unit(SYSTEMD / "loa-agent.service.d" / "restart-backoff.conf")
    assert {"RestartSteps", "RestartMaxDelaySec"} <= set(backoff["Service"])


def test_server_units_agree_with_the_other_deploy_files() -> None:
    collector = unit(SYSTEMD / "loa-collector.service")
    assert one(collector, "Service", "User") == "loa-collector"
    assert "mosquitto.service" in one(collector, "Unit", "After").split()
    assert one(collector, "Service", "ProtectSystem") == "strict"
    assert one(collector, "Service", "ExecStart").split()[1] == "serve"
    dropin = unit(SYSTEMD / "mosquitto.service.d" / "loa-fleet.conf")
    # An empty ExecStart= first clears Debian's, then ours runs the loa-fleet config alone.
    assert dropin["Service"]["ExecStart"] == [
        "",
        "/usr/sbin/mosquitto -c /etc/mosquitto/loa/mosquitto.conf",
    ]
    backup = unit(SYSTEMD / "loa-collector-backup.service")
    argv = one(backup, "Service", "ExecStart").split()
    assert argv[0] == "/opt/loa-fleet/deploy/backup.sh"
    assert argv[argv.index("--db") + 1] == "/var/lib/loa-collector/collector.db"
    timer = unit(SYSTEMD / "loa-collector-backup.timer")
    assert one(timer, "Timer", "Persistent") == "true"


UDEV_KEY = re.compile(
    r'^(?P<key>[A-Z_]+)(\{(?P<attr>[^}]+)\})?(?P<op>==|!=|\+=|:=|=)"(?P<value>[^"]*)"$'
)
UDEV_MATCH = {"ACTION", "SUBSYSTEM", "SUBSYSTEMS", "ATTRS", "ENV", "KERNEL"}
UDEV_ASSIGN = {"SYMLINK", "ENV", "GOTO", "LABEL"}


def test_udev_rules_are_well_formed_and_name_the_links_agent_toml_uses() -> None:
    rules = (DEPLOY_DIR / "udev" / "99-loa-fleet.rules").read_text()
    symlinks: set[str] = set()
    labels, gotos = set(), set()
    for n, line in enumerate(rules.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        for pair in (p.strip() for p in line.split(",")):
            m = UDEV_KEY.match(pair)
            assert m, f'line {n}: {pair!r} is not KEY op "value"'
            key, op = m["key"], m["op"]
            if op in ("==", "!="):
                assert key in UDEV_MATCH, f"line {n}: cannot match on {key}"
            else:
                assert key in UDEV_ASSIGN, f"line {n}: cannot assign {key}"
            if key == "SYMLINK":
                symlinks.add(m["value"])
            if key == "LABEL":
                labels.add(m["value"])
            if key == "GOTO":
                gotos.add(m["value"])
            if key == "ENV" and op == "=":
                assert m["attr"] in {"ID_MM_PORT_IGNORE", "ID_MM_DEVICE_IGNORE"}
    assert symlinks == {"loa-modem-at", "loa-rs485"}
    assert gotos <= labels
    assert 'ENV{ID_MM_PORT_IGNORE}="1"' in rules


def test_journald_and_logrotate_bound_what_the_sd_card_holds(tmp_path: Path) -> None:
    journald = configparser.ConfigParser()
    journald.optionxform = str  # type: ignore[assignment,method-assign]
    journald.read(DEPLOY_DIR / "journald" / "loa-fleet.conf")
    j = journald["Journal"]
    assert j["SystemMaxUse"].endswith("M") and int(j["SystemMaxUse"][:-1]) <= 128
    assert "RuntimeMaxUse" in j and "MaxRetentionSec" in j
    rotate = (DEPLOY_DIR / "logrotate" / "loa-agent").read_text()
    for directive in ("rotate 7", "maxsize", "compress", "missingok"):
        assert directive in rotate
    logrotate = shutil.which("logrotate") or "/usr/sbin/logrotate"
    if os.path.exists(logrotate):
        # The `loa` group exists on a controller (install-agent.sh creates it),
        # not necessarily here: check the file with this machine's own group.
        group = grp.getgrgid(os.getgid()).gr_name
        assert "su root loa" in rotate
        checked = tmp_path / "loa-agent"
        checked.write_text(rotate.replace("su root loa", f"su root {group}"))
        result = subprocess.run(
            [logrotate, "--debug", "--state", str(tmp_path / "status"), str(checked)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert "error" not in result.stderr.lower(), result.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse_and_pass_shellcheck(script: Path) -> None:
    assert os.access(script, os.X_OK), f"{script.name} is not executable"
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    if SHELLCHECK is None:
        if os.environ.get("CI"):
            pytest.fail("shellcheck missing in CI: scripts/test.sh should have installed it")
        pytest.skip("shellcheck not installed (scripts/test.sh installs it)")
    result = subprocess.run(
        [SHELLCHECK, "--severity=style", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout
    usage = subprocess.run(
        ["bash", str(script), "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    assert usage.returncode == 0 and "--" in usage.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="the installers refuse to run without root first")
def test_installers_refuse_bad_input_before_changing_anything(tmp_path: Path) -> None:
    def install(script: str, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(DEPLOY_DIR / script), *argv],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    result = install("install-agent.sh", "--bundle", str(tmp_path))
    assert result.returncode == 1 and "not a provisioning bundle" in result.stderr
    (tmp_path / "agent.toml").write_text("")
    result = install("install-agent.sh", "--bundle", str(tmp_path), "--wheelhouse", str(tmp_path))
    assert result.returncode == 1 and "no loa_fleet-*.whl" in result.stderr
    result = install("install-server.sh")
    assert result.returncode == 1 and "--host" in result.stderr
    result = install("install-agent.sh", "--frobnicate")
    assert result.returncode == 2 and "unknown argument" in result.stderr


def test_agent_unit_caps_memory_for_a_512_mb_controller() -> None:
    """MemoryHigh throttles before MemoryMax kills; both far below the board's 512 MB."""
    svc = unit(SYSTEMD / "loa-agent.service")["Service"]
    mib = {"K": 1 / 1024, "M": 1, "G": 1024}

    def size(key: str) -> float:
        (value,) = svc[key]
        return float(value[:-1]) * mib[value[-1]]

    high, max_ = size("MemoryHigh"), size("MemoryMax")
    # bench/agent_soak.py: ~45 MiB RSS steady with a full outbox and a technician.
    assert 64 <= high < max_ <= 192, (high, max_)
