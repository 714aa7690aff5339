"""Collector config: the deploy example loads, bad files fail naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.config import CollectorConfig, ConfigError, load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "collector.example.toml"


def test_deploy_example_loads_with_documented_defaults() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.mqtt.client_id == "loa-collector-1"
    assert cfg.fleet.heartbeat_grace_s >= 3 * 900
    defaults = CollectorConfig()
    # The example shows the defaults (only the password source differs).
    assert cfg.fleet == defaults.fleet and cfg.repairs == defaults.repairs
    assert cfg.ingest == defaults.ingest and cfg.http == defaults.http and cfg.db == defaults.db
    assert cfg.alerts == defaults.alerts


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[mqtt]\nport = 'abc'\n", "[mqtt] port: expected an integer"),
        ("[mqtt]\nport = 70000\n", "[mqtt] port: must be 1..65535"),
        ("[mqtt]\nprot = 1\n", "[mqtt] prot: unknown setting"),
        ("[fleet]\nheartbeat_grace_s = 60\n", "[fleet] heartbeat_grace_s: must exceed"),
        ("[db]\nsynchronous = 'off'\n", "[db] synchronous"),
        ("[nope]\n", "nope: unknown setting or section"),
        ("ingest_enabled = 'yes'\n", "ingest_enabled: expected true or false"),
        ("[http\n", "not valid TOML"),
        ("[alerts]\nlang = 'fr'\n", "[alerts] lang: must be vi or en"),
        ("[alerts.monthly_report]\nday = 31\n", "[alerts.monthly_report] day: must be 1..28"),
        ("[alerts.email]\nprot = 25\n", "[alerts.email] prot: unknown setting"),
        ("[alerts]\nlease_s = 10\n", "[alerts] lease_s: must exceed twice"),
        (
            "[alerts.monthly_report]\nrecipients = ['a b@c']\n",
            "[alerts.monthly_report] recipients: 'a b@c' is not an address",
        ),
    ],
)
def test_bad_config_names_the_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=None) as info:
        load_config(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_amqp_nodes_and_db_urls_are_checked(tmp_path: Path) -> None:
    from collector.config import config_from_dict

    cfg = config_from_dict(
        {"amqp": {"urls": ["amqp://loa@n1:5672/%2F", "amqps://loa@n2:5671/%2F"]}}
    )
    assert cfg.amqp.nodes == ("amqp://loa@n1:5672/%2F", "amqps://loa@n2:5671/%2F")
    assert config_from_dict({}).amqp.nodes == (config_from_dict({}).amqp.url,)
    with pytest.raises(ConfigError, match=r"\[amqp\] urls: put the password in password_file"):
        config_from_dict({"amqp": {"urls": ["amqp://loa@n1/%2F", "amqp://loa:secret@n2/%2F"]}})
    with pytest.raises(ConfigError, match=r"\[db\] url: must start with postgresql://"):
        config_from_dict({"db": {"url": "mysql://x@y/z"}})
    assert config_from_dict({"db": {"url": "postgresql://loa@db/loa"}}).db.url
