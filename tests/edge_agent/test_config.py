"""Config loading: the deploy example loads, and bad files name the bad field."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config import AgentConfig, load_config, parse_config
from edge_agent.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "agent.example.toml"


def _example(tmp_path: Path) -> dict[str, Any]:
    """The example with its credential paths pointed at real files."""
    data = tomllib.loads(EXAMPLE.read_text())
    for key in ("ca_file", "password_file"):
        f = tmp_path / key
        f.write_text("secret\n")
        data["broker"][key] = str(f)
    return data


def test_deploy_example_loads_with_every_section(tmp_path: Path) -> None:
    cfg = parse_config(_example(tmp_path))
    assert isinstance(cfg, AgentConfig)
    assert cfg.device.id == "lt-xuanhuy-01"
    assert cfg.broker.tls and cfg.broker.port == 8883
    assert cfg.modem and cfg.modem.port.startswith("/dev/serial/by-id/")
    assert cfg.amp and cfg.amp.transport == "rtu"
    assert cfg.stream and cfg.stream.player_state_file is None
    assert cfg.recovery.hook_command == ("/usr/local/sbin/modem-power-cycle",)
    assert cfg.username == "lt-xuanhuy-01"
    assert cfg.password() == "secret"


def test_deploy_example_values_are_the_defaults(tmp_path: Path) -> None:
    """The example documents the defaults: drop the optional keys and nothing changes."""
    data = _example(tmp_path)
    full = parse_config(data)
    for section in ("reports", "outbox", "diagnosis", "system"):
        del data[section]
    assert parse_config(data).reports == full.reports
    assert parse_config(data).diagnosis == full.diagnosis


def test_minimal_config_has_no_optional_probes(tmp_path: Path) -> None:
    cfg = parse_config({"device": {"id": "dev-001"}, "broker": {"url": "mqtt://127.0.0.1"}})
    assert cfg.modem is None and cfg.amp is None and cfg.stream is None
    assert cfg.broker.port == 1883 and not cfg.broker.tls


BAD = [
    ({"device": {"id": "Bad_Id"}}, "device.id"),
    ({"device": {"id": "dev-001", "colour": "red"}}, "device.colour"),
    ({"device": {}}, "device.id"),
    ({"broker": {"url": "http://x"}}, "broker.url"),
    ({"broker": {"url": "mqtt://x:99999"}}, "broker.url"),
    ({"broker": {"url": "mqtt://x", "ca_file": "/nonexistent/ca.crt"}}, "broker.ca_file"),
    ({"broker": {"url": "mqtt://x", "keepalive_s": "long"}}, "broker.keepalive_s"),
    ({"modem": {"port": "/dev/ttyUSB2", "poll_s": 30, "timeout_s": 40}}, "modem.timeout_s"),
    ({"modem": {"port": "/dev/ttyUSB2", "baud": "fast"}}, "modem.baud"),
    ({"modem": {"baud": 9600}}, "modem.port"),
    ({"modem": {"port": "/dev/ttyUSB2", "dialect": "nokia"}}, "modem.dialect"),
    ({"amp": {"port": "/dev/ttyAMA0", "profile": "nope"}}, "amp.profile"),
    ({"amp": {"transport": "udp"}}, "amp.transport"),
    ({"amp": {"transport": "tcp", "address": "nohost"}}, "amp.address"),
    ({"amp": {"port": "/dev/ttyAMA0", "parity": "X"}}, "amp.parity"),
    ({"amp": {"port": "/dev/ttyAMA0", "unit": 300}}, "amp.unit"),
    ({"stream": {}}, "stream"),
    ({"stream": {"url": "ftp://x"}}, "stream.url"),
    ({"stream": {"url": "http://x", "poll_s": 10, "timeout_s": 10}}, "stream.timeout_s"),
    ({"reports": {"heartbeat_s": 0}}, "reports.heartbeat_s"),
    ({"outbox": {"max_bytes": 10}}, "outbox.max_bytes"),
    ({"diagnosis": {"flap_count": 1}}, "diagnosis.flap_count"),
    ({"recovery": {"hook_command": "reboot"}}, "recovery.hook_command"),
    ({"recovery": {"soft_reset_after_s": 100, "hook_after_s": 50}}, "recovery.hook_after_s"),
    ({"log_level": "LOUD"}, "log_level"),
]


@pytest.mark.parametrize(("patch", "field"), BAD, ids=[f for _, f in BAD])
def test_bad_value_names_the_field(patch: dict[str, Any], field: str) -> None:
    data: dict[str, Any] = {"device": {"id": "dev-001"}, "broker": {"url": "mqtt://127.0.0.1"}}
    for k, v in patch.items():
        data[k] = v
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert info.value.field == field, str(info.value)


def test_load_config_reports_the_file_and_the_toml_error(tmp_path: Path) -> None:
    bad = tmp_path / "agent.toml"
    bad.write_text("[device\nid = 1\n")
    with pytest.raises(ConfigError, match=r"agent\.toml.*not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    bad.write_text('[device]\nid = "dev-001"\n[broker]\nurl = "mqtt://h"\n[modem]\nport = 5\n')
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert info.value.field == "modem.port" and str(bad) in str(info.value)
