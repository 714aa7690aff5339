"""The ``[report]`` section of the collector config."""

from __future__ import annotations

import pytest

from collector.b2.settings import ReportSettings
from collector.config import ConfigError, config_from_dict


def test_defaults_and_values() -> None:
    assert config_from_dict({}).report == ReportSettings()
    cfg = config_from_dict(
        {"report": {"time_zone": "Asia/Bangkok", "offline_days": 3, "unit_name": "UBND huyện"}}
    )
    assert cfg.report == ReportSettings(
        time_zone="Asia/Bangkok", offline_days=3.0, unit_name="UBND huyện"
    )


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"time_zone": "Mars/Olympus"}, "[report] time_zone: time zone 'Mars/Olympus': unknown"),
        ({"offline_days": 0}, "[report] offline_days: must be > 0"),
        ({"lang": "fr"}, "[report] lang: must be vi or en"),
        ({"offline_days": "seven"}, "[report] offline_days: expected a number"),
        ({"colour": "red"}, "[report] colour: unknown setting"),
    ],
)
def test_bad_settings_name_the_field(section: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"report": section})
    assert message in str(info.value)
