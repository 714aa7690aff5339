"""`loa-sim amp`: command line, control socket, clean shutdown."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from firmware_shims import cli, control
from firmware_shims.amp.sim import SimulatorError, amp_simulator

pytestmark = pytest.mark.integration


def test_bad_profile_fails_at_start_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "amp.toml"
    bad.write_text(
        '[profile]\nname = "x"\n[[registers]]\nname = "a"\nfunction = "coil"\n'
        'address = 1\nmeaning = "m"\n',
        encoding="utf-8",
    )
    rc = cli.main(["amp", "--profile", str(bad), "--rtu-link", str(tmp_path / "amp0")])
    assert rc == 2
    assert "registers[0].function: must be 'input' or 'holding'" in capsys.readouterr().err
    assert not (tmp_path / "amp0").exists()


def test_tcp_needs_a_control_socket(capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["amp", "--profile", "generic", "--tcp", "127.0.0.1:0"])
    assert rc == 2
    assert "--control SOCKET is required with --tcp" in capsys.readouterr().err


def test_unknown_fault_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["amp", "--profile", "generic", "--tcp", "127.0.0.1:0", "--fault", "on_fire"])
    assert "on_fire" in capsys.readouterr().err


async def test_rtu_link_control_socket_and_clean_shutdown(tmp_path: Path) -> None:
    link = tmp_path / "amp0"
    async with amp_simulator(rtu_link=link, faults=["battery_low"]) as sim:
        assert sim.rtu_link == link
        assert sim.control == tmp_path / "amp0.ctl"  # the default next to the link
        assert link.is_symlink() and os.readlink(link).startswith("/dev/pts/")
        listing = await control.asend(sim.control, "list")
        assert listing["faults"] == ["battery_low"]
        assert set(listing["known"]) == {
            "over_temp", "output_short", "line_open", "mains_fail", "battery_low",
            "no_response", "exception_reply",
        }  # fmt: skip
        bad = await control.asend(sim.control, "set", "on_fire")
        assert bad["ok"] is False and "on_fire" in bad["error"]
        # The shell front end works against the running simulator too.
        assert cli.main(["ctl", "--socket", str(sim.control), "clear"]) == 0
        assert await sim.faults() == []
        proc = sim.process
    assert proc.returncode == 0  # SIGTERM is a clean stop
    assert not link.exists() and not link.is_symlink()
    assert not (tmp_path / "amp0.ctl").exists()


async def test_ready_line_names_the_chosen_tcp_port(tmp_path: Path) -> None:
    async with amp_simulator(tcp="127.0.0.1:0", control_socket=tmp_path / "c.ctl") as sim:
        assert sim.tcp is not None and sim.tcp[0] == "127.0.0.1" and sim.tcp[1] > 0
        assert sim.profile == "generic" and sim.unit == 1


async def test_port_in_use_is_a_clear_startup_error(tmp_path: Path) -> None:
    async with amp_simulator(tcp="127.0.0.1:0", control_socket=tmp_path / "a.ctl") as sim:
        assert sim.tcp is not None
        taken = f"127.0.0.1:{sim.tcp[1]}"
        with pytest.raises(SimulatorError, match=f"cannot listen on {taken}"):
            async with amp_simulator(tcp=taken, control_socket=tmp_path / "b.ctl"):
                pass


def test_ready_line_is_json() -> None:
    """The READY line format documented in the module docstring parses as JSON."""
    from firmware_shims.amp import sim

    doc = sim.__doc__ or ""
    start = doc.index("READY {") + len("READY ")
    text = doc[start : doc.index("}", start) + 1].replace("\n", " ")
    assert set(json.loads(text)) == {"profile", "unit", "tcp", "rtu_link", "control", "pid"}
