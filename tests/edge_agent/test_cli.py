"""``loa-agent``: the entry point refuses a bad config at start, naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.cli import build_parser, main


def test_bad_config_stops_at_start_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        '[device]\nid = "dev-001"\n[broker]\nurl = "mqtt://127.0.0.1"\n'
        '[modem]\nport = "/dev/ttyUSB2"\npoll_s = 10\ntimeout_s = 12\n'
    )
    assert main(["run", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "modem.timeout_s" in err and str(cfg) in err


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--config", str(tmp_path / "nope.toml")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_run_is_a_subcommand_and_others_can_be_added() -> None:
    parser = build_parser()
    args = parser.parse_args(["run", "--config", "/etc/loa-agent/agent.toml"])
    assert args.command == "run" and callable(args.func)
