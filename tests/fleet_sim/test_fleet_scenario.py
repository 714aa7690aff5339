"""Scenario loading and validation, the simulated clock, and the schedule (pure)."""

from __future__ import annotations

import copy
import math
import tomllib
from pathlib import Path
from typing import Any

import pytest

from fleet_sim import inventory_csv, main, with_time
from fleet_sim.scenario import (
    SCENARIO_DIR,
    ScenarioError,
    load_scenario,
    parse_duration,
    parse_moment,
    parse_scenario,
)
from fleet_sim.timeline import FleetClock, build_schedule, changes

DATA = Path(__file__).parent / "data"

SMALL: dict[str, Any] = {
    "scenario": {"name": "nhỏ", "prefix": "t", "seed": 7},
    "communes": [
        {"code": "1", "name": "Xã A", "slug": "a", "clusters": 3, "never_reporting": 1},
        {"code": "2", "name": "Thị trấn B", "kind": "thị trấn", "slug": "b", "clusters": 2},
    ],
}


def _cases() -> list[dict[str, Any]]:
    data = tomllib.loads((DATA / "fleet_bad_scenarios.toml").read_text(encoding="utf-8"))
    cases: list[dict[str, Any]] = data["case"]
    return cases


@pytest.mark.parametrize("case", _cases(), ids=lambda c: str(c["field"]))
def test_a_bad_scenario_names_its_field(case: dict[str, Any]) -> None:
    data = copy.deepcopy(SMALL)
    data.update(case.get("set", {}))
    for key, entry in case.get("append", {}).items():
        data.setdefault(key, []).append(entry)
    with pytest.raises(ScenarioError) as err:
        parse_scenario(data)
    assert err.value.field == case["field"], str(err.value)


def test_small_scenario_clusters_ids_and_silent_ones() -> None:
    s = parse_scenario(SMALL)
    assert [c.device_id for c in s.clusters] == ["t-a-01", "t-a-02", "t-a-03", "t-b-01", "t-b-02"]
    assert [c.device_id for c in s.clusters if c.silent] == ["t-a-03"]
    assert s.commune("2").kind == "thị trấn"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("6h", 21600), ("2d", 172800), ("1d12h", 129600), (45, 45)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text, "x") == seconds


def test_moments_relative_and_absolute() -> None:
    assert parse_moment("-40d", "x") == (-40 * 86400, False)
    assert parse_moment("2023-07-31T23:59:59+07:00", "x") == (1690822799.0, True)
    with pytest.raises(ScenarioError, match="offset"):
        parse_moment("2023-07-31T23:59:59", "x")


@pytest.mark.parametrize("name", sorted(p.stem for p in SCENARIO_DIR.glob("*.toml")))
def test_bundled_scenarios_load(name: str) -> None:
    s = load_scenario(name)
    assert s.clusters and s.communes
    assert len({c.device_id for c in s.clusters}) == len(s.clusters)


def test_lam_thao_is_the_district_of_the_notice() -> None:
    s = load_scenario("lam-thao")
    assert len(s.communes) == 14 and len(s.clusters) == 200
    assert "Xuân Lũng" in [c.name for c in s.communes]
    assert s.time.backfill_days >= 60  # last month's B2 table, and the one before


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text("[scenario\n", encoding="utf-8")
    with pytest.raises(ScenarioError, match=r"bad\.toml: \$: not valid TOML"):
        load_scenario(p)


def test_check_and_inventory_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--scenario", "lam-thao", "--check"]) == 0
    assert "14 communes, 200 clusters" in capsys.readouterr().out
    out = tmp_path / "inv.csv"
    assert main(["--scenario", "lam-thao", "--inventory", str(out)]) == 0
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("device_id,commune_code,commune_name")
    assert len(lines) == 201 and lines[1].startswith("lt-lamthao-01,08410,Lâm Thao,thị trấn")
    bad = tmp_path / "bad.toml"
    bad.write_text('[[communes]]\ncode = "1"\nname = "A"\nslug = "a"\nclusters = "x"\n')
    assert main(["--scenario", str(bad), "--check"]) == 2
    assert "communes[0].clusters" in capsys.readouterr().err


def test_inventory_iccids_are_vietnamese() -> None:
    rows = inventory_csv(parse_scenario(SMALL)).decode().splitlines()[1:]
    assert all(r.split(",")[-1].startswith("8984") for r in rows)


def test_time_overrides_are_validated() -> None:
    s = parse_scenario(SMALL)
    assert with_time(s, backfill_days=3, acceleration=1000).time.backfill_days == 3
    with pytest.raises(ScenarioError, match=r"time\.acceleration"):
        with_time(s, backfill_days=3, acceleration=1)


class Wall:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_clock_backfills_then_is_the_wall_clock() -> None:
    wall = Wall(1_000_000.0)
    clock = FleetClock(backfill_s=10 * 86400, acceleration=86400 / 10, wall=wall)
    assert clock.now() == 1_000_000.0 - 10 * 86400
    wall.t += 10  # ten real seconds = one simulated day
    assert clock.now() == pytest.approx(1_000_000.0 - 9 * 86400)
    assert not clock.live
    assert clock.real_delay(1_000_000.0 - 8 * 86400) == pytest.approx(10)
    wall.t = clock.caught_up_at
    assert clock.live and clock.now() == wall.t and clock.progress() == 1.0
    wall.t += 50
    assert clock.now() == wall.t  # real speed from now on, never ahead of the wall
    assert clock.real_delay(wall.t + 30) == pytest.approx(30)


def test_schedule_is_deterministic_and_covers_the_history() -> None:
    data = copy.deepcopy(SMALL)
    data["time"] = {"backfill_days": 30, "acceleration": 10000, "horizon_days": 5}
    data["random_faults"] = [
        {"fault": "stream.lost", "mtbf": "5d", "duration": ["1h", "2d"]},
        {"fault": "amp.over_temp", "mtbf": "1h", "duration": ["2m", "5m"], "phase": "live"},
    ]
    data["faults"] = [{"fault": "modem.sim_failure", "commune": "1", "start": "-3d"}]
    data["outages"] = [{"commune": "2", "start": "-10d", "duration": "6h"}]
    s = parse_scenario(data)
    start = 1_700_000_000.0
    a, b = build_schedule(s, start), build_schedule(s, start)
    assert a == b
    assert not any(e.device == "t-a-03" for e in a)  # never reporting
    lost = [e for e in a if e.name == "stream.lost"]
    assert lost and min(e.start for e in lost) < start - 20 * 86400
    live = [e for e in a if e.name == "amp.over_temp"]
    assert live and all(e.start >= start for e in live)
    sim = [e for e in a if e.name == "modem.sim_failure"]
    assert {e.device for e in sim} == {"t-a-01", "t-a-02"} and all(e.end == math.inf for e in sim)
    outage = [e for e in a if e.name == "network.outage"]
    assert {(e.device, e.end - e.start) for e in outage} == {("t-b-01", 21600), ("t-b-02", 21600)}
    ch = changes(a)
    assert ch == sorted(ch, key=lambda c: (c.at, c.on))
    assert sum(1 for c in ch if c.on) == len(a)
