"""Fleet correlation rules, table-driven from data/correlation_cases.toml."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from collector.config import ConfigError, config_from_dict
from collector.correlation import CorrelationConfig, LastKnown, infer

CASES = tomllib.loads((Path(__file__).parent / "data" / "correlation_cases.toml").read_text())


def _known(d: dict[str, Any]) -> LastKnown:
    cell = d.get("cell", "")
    return LastKnown(
        device_id=d["id"],
        commune=d["commune"],
        online=d["online"],
        last_seen=d.get("last_seen"),
        cell=tuple(cell.split("/", 1)) if cell else None,  # type: ignore[arg-type]
        report_ts=d.get("report_ts"),
        sim=d.get("sim"),
        faults=tuple(d.get("faults", ())),
        amp_flags=tuple(d.get("amp_flags", ())),
        mains_v=d.get("mains_v"),
    )


@pytest.mark.parametrize("case", CASES["case"], ids=lambda c: c["name"])
def test_rules(case: dict[str, Any]) -> None:
    got = infer([_known(d) for d in case["devices"]], CorrelationConfig())
    assert {k: f"{v.cause.value}/{v.rule}" for k, v in got.items()} == case["expect"]
    assert all(v.detail for v in got.values())


def test_thresholds_are_config() -> None:
    cfg = config_from_dict({"correlation": {"window_s": 60.0, "min_group": 3}})
    assert cfg.correlation.window_s == 60.0 and cfg.correlation.min_group == 3
    with pytest.raises(ConfigError, match=r"\[correlation\] cell_fraction"):
        config_from_dict({"correlation": {"cell_fraction": 1.5}})
    # The tighter window splits the first case's cell outage.
    devices = [_known(d) for d in CASES["case"][0]["devices"]]
    got = infer(devices, CorrelationConfig(window_s=60.0))
    assert {v.rule for v in got.values()} == {"lone_silence"}
