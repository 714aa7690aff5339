"""``loa-agent status|diag|at|modbus|outbox|events`` against real processes.

``loa-sim modem`` on a pty, ``loa-sim amp`` over Modbus TCP, a real Mosquitto
and a real ``loa-agent run`` daemon; every command runs as its own process
(``python -m edge_agent.cli ...``), first through the running daemon, then
again with the daemon stopped (hardware and outbox file opened directly).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge_agent import control
from edge_agent.cli import main as loa_agent_main
from edge_agent.tech import client
from firmware_shims.amp.sim import RunningSim, amp_simulator
from firmware_shims.modem.sim import SimProcess, running_modem
from tests.edge_agent.agent_support import REPO, AgentProcess, write_config
from tests.edge_agent.test_tech_checks import check_contract
from tests.support.mosquitto import Broker

pytestmark = pytest.mark.integration

#: "Within a few seconds": every command, including the hung-modem ones.
FEW_SECONDS = 6.0


@dataclass
class Run:
    rc: int
    out: str
    err: str
    elapsed: float

    def json(self) -> Any:
        return json.loads(self.out)


def _run_sync(argv: list[str], env: dict[str, str] | None = None) -> Run:
    t0 = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", *argv],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        env={**os.environ, "NO_COLOR": "1", **(env or {})},
    )
    return Run(p.returncode, p.stdout, p.stderr, time.monotonic() - t0)


async def loa(*argv: str, env: dict[str, str] | None = None) -> Run:
    """``loa-agent ARGV`` as a child process; asserts it answered within a few seconds."""
    r = await asyncio.to_thread(_run_sync, list(argv), env)
    assert r.elapsed < FEW_SECONDS, (argv, r)
    return r


@dataclass
class Rig:
    cfg: Path
    sock: Path
    modem: SimProcess
    amp: RunningSim
    agent: AgentProcess

    def args(self, *argv: str) -> list[str]:
        return [*argv, "--config", str(self.cfg)]


async def _until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def _status(sock: Path) -> dict[str, Any]:
    try:
        reply = await control.request(sock, "status", timeout=3.0)
    except (OSError, TimeoutError):
        return {}
    return reply.get("result") or {}


@contextlib.asynccontextmanager
async def rig(
    broker: Broker, tmp_path: Path, *, modem_poll: dict[str, float] | None = None
) -> AsyncIterator[Rig]:
    async with (
        running_modem(tmp_path / "modem", dialect="quectel") as modem,
        amp_simulator(
            profile="generic", tcp="127.0.0.1:0", control_socket=tmp_path / "amp.ctl"
        ) as amp,
    ):
        assert amp.tcp is not None
        cfg = write_config(
            tmp_path,
            broker,
            modem={
                "port": str(modem.link),
                "dialect": "quectel",
                **(modem_poll or {"poll_s": 1.0, "timeout_s": 0.5}),
            },
            amp={
                "transport": "tcp",
                "address": f"{amp.tcp[0]}:{amp.tcp[1]}",
                "poll_s": 1.0,
                "timeout_s": 0.5,
            },
        )
        sock = tmp_path / "control.sock"
        with AgentProcess(cfg, tmp_path / "agent.log") as agent:

            async def ready() -> bool:
                st = await _status(sock)
                return bool(
                    st.get("link", {}).get("connected")
                    and {"modem", "amp"} <= set(st.get("readings", {}))
                )

            try:
                await _until(ready, "the agent connected, with modem and amp readings")
                yield Rig(cfg, sock, modem, amp, agent)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n--- agent log ---\n{agent.log()[-4000:]}") from None


async def _stop(r: Rig) -> None:
    assert await asyncio.to_thread(r.agent.stop) == 0, r.agent.log()[-3000:]
    assert not r.sock.exists()


@pytest.mark.timeout(120)
async def test_every_command_with_the_daemon_and_without(broker: Broker, tmp_path: Path) -> None:
    async with rig(broker, tmp_path) as r:
        # --- through the running daemon -----------------------------------------------
        st = await loa(*r.args("status", "--json"))
        assert st.rc == 0, st
        s = st.json()
        assert s["source"] == "agent" and s["running"] is True
        assert s["device"] == "dev-001" and s["commune"] == "xa-test"
        assert s["link"]["connected"] and s["faults"] == []
        assert s["signal"] in ("excellent", "good", "fair", "poor", "none")
        assert {"modem", "amp", "system"} <= set(s["readings"])

        text = await loa(*r.args("status", "--lang", "en"))
        assert text.rc == 0
        for words in ("dev-001", "xa-test", "connected since", "SIM ready", "Viettel", "No faults"):
            assert words in text.out, (words, text.out)
        assert re.search(r"RSRP -\d+ dBm.*: (excellent|good|fair|poor|none)", text.out)
        assert "\x1b[" not in text.out  # not a terminal: no colour
        vi = await loa(*r.args("status"))
        assert "Không có lỗi" in vi.out and "Máy chủ MQTT" in vi.out

        diag = await loa(*r.args("diag", "--json"))
        assert diag.rc == 0, diag
        d = diag.json()
        assert d["source"] == "agent" and d["ok"] is True and d["faults"] == []
        check_contract(d["modem"])
        assert d["amp"]["state"]["responding"] is True and d["network"]["broker"]["ok"] is True

        dm = await loa(*r.args("diag", "modem", "--json"))
        assert dm.rc == 0
        check_contract(dm.json())
        assert dm.json()["sim"] == "ready" and dm.json()["source"] == "agent"

        at = await loa(*r.args("at", "AT+CSQ", "--json"))
        assert at.rc == 0, at
        assert at.json()["source"] == "agent" and at.json()["final"] == "OK"
        assert re.fullmatch(r"\+CSQ: \d+,99", at.json()["lines"][0])

        mb = await loa(*r.args("modbus", "read", "100", "4", "--input", "--json"))
        assert mb.rc == 0, mb
        assert mb.json()["source"] == "agent" and len(mb.json()["words"]) == 4
        mb_text = await loa(*r.args("modbus", "read", "100", "2", "--input", "--lang", "en"))
        assert "input 100" in mb_text.out and "0x" in mb_text.out

        ob = await loa(*r.args("outbox", "--json"))
        assert ob.rc == 0 and ob.json()["source"] == "agent"
        assert {"depth", "bytes", "oldest", "kinds"} <= set(ob.json())

        ev = await loa(*r.args("events", "-n", "5", "--json"))
        assert ev.rc == 0 and ev.json()["source"] == "agent"
        assert "agent_start" in [e["type"] for e in ev.json()["events"]]

        await _stop(r)

        # --- the daemon stopped: hardware and the outbox file, directly --------------
        st = await loa(*r.args("status", "--json"))
        assert st.rc == 1, st  # nothing is monitored: not healthy
        assert st.json()["source"] == "outbox_file" and st.json()["running"] is False
        st_text = await loa(*r.args("status", "--lang", "en"))
        assert "no agent is running" in st_text.out

        ob = await loa(*r.args("outbox", "--json"))
        assert ob.rc == 0 and ob.json()["source"] == "outbox_file"
        ev = await loa(*r.args("events", "--json"))
        assert ev.rc == 0 and ev.json()["source"] == "outbox_file"

        diag = await loa(*r.args("diag", "--json"))
        assert diag.rc == 0, diag
        assert diag.json()["source"] == "direct"
        check_contract(diag.json()["modem"])
        assert diag.json()["modem"]["sim"] == "ready"
        assert diag.json()["amp"]["state"]["responding"] is True
        assert diag.json()["network"]["broker"]["ok"] is True

        at = await loa(*r.args("at", "AT+CSQ", "--json"))
        assert at.rc == 0, at
        assert at.json()["source"] == "direct" and at.json()["final"] == "OK"

        mb = await loa(*r.args("modbus", "read", "100", "4", "--input", "--json"))
        assert mb.rc == 0, mb
        assert mb.json()["source"] == "direct" and len(mb.json()["words"]) == 4

        # A freshly installed controller: no config at all, only flags.
        flags = [
            "--config", str(tmp_path / "none.toml"),
            "--socket", str(tmp_path / "none.sock"),
        ]  # fmt: skip
        dm = await loa("diag", "modem", "--port", str(r.modem.link), "--dialect", "quectel",
                       "--json", *flags)  # fmt: skip
        assert dm.rc == 0, dm
        check_contract(dm.json())
        assert "cannot read" in dm.err  # the missing config is said, once
        assert r.amp.tcp is not None
        amp_flag = f"{r.amp.tcp[0]}:{r.amp.tcp[1]}"
        mb = await loa("modbus", "read", "100", "1", "--input", "--amp-tcp", amp_flag, *flags)
        assert mb.rc == 0, mb


@pytest.mark.timeout(120)
async def test_at_passthrough_never_interleaves_with_polling(
    broker: Broker, tmp_path: Path
) -> None:
    """Hammer AT commands while the daemon polls as fast as it can: every answer
    must be the answer to its own command, and nothing garbled on the port."""
    expect = {
        "AT+CSQ": re.compile(r"\+CSQ: \d+,99"),
        "AT+CPIN?": re.compile(r"\+CPIN: READY"),
        "AT+COPS?": re.compile(r'\+COPS: 0,0,"\w+",\d+'),
        "AT+QCCID": re.compile(r"\+QCCID: 8984\d+F?"),
        "AT+CEREG?": re.compile(r"\+CEREG: \d,1"),
    }
    async with rig(broker, tmp_path, modem_poll={"poll_s": 0.5, "timeout_s": 0.4}) as r:
        before = (await _status(r.sock))["pollers"]["modem"]["polls"]
        answers: list[tuple[str, dict[str, Any]]] = []
        # Two technicians at once; more would queue on the port lock long enough to
        # starve the daemon's own poll (which it then counts as failed, by design).
        sem = asyncio.Semaphore(2)

        async def one(cmd: str) -> None:
            async with sem:
                res = await client.call(r.sock, "at", deadline=10.0, command=cmd, timeout=1.0)
                answers.append((cmd, res))

        cmds = list(expect) * 40
        runs = [loa(*r.args("at", cmd, "--json")) for cmd in list(expect)]
        results = await asyncio.gather(*(one(c) for c in cmds), *runs)
        for cmd, res in answers:
            assert res["final"] == "OK", (cmd, res)
            assert len(res["lines"]) == 1 and expect[cmd].fullmatch(res["lines"][0]), (cmd, res)
        for cmd, run in zip(expect, results[len(cmds) :], strict=True):
            assert isinstance(run, Run) and run.rc == 0, run
            assert expect[cmd].fullmatch(run.json()["lines"][0]), run

        st = await _status(r.sock)
        modem = st["pollers"]["modem"]
        assert modem["polls"] - before >= 3, "the daemon kept polling meanwhile"
        assert modem["failures"] == 0 and st["faults"] == []
        port = (await control.request(r.sock, "tech.port"))["result"]["modem"]
        # A second process on the pty (a CLI opening the port itself) shows up here:
        # answers it stole from the daemon, and its answers taken for unsolicited lines.
        assert port["garbage_bytes"] == 0 and port["stale_lines"] == 0, port
        assert port["urcs"] == [], port
        # The daemon's own last poll: every command answered, none refused as garbled.
        last = (await control.request(r.sock, "diag"))["result"]["modem"]
        assert last["errors"] == {}, last
        assert all("ERROR" not in " ".join(lines) for lines in last["raw"].values())
        await _stop(r)


@pytest.mark.timeout(120)
async def test_a_hung_modem_times_out_clearly(broker: Broker, tmp_path: Path) -> None:
    async with rig(broker, tmp_path) as r:
        await r.modem.set("unresponsive")
        at = await loa(*r.args("at", "AT+CSQ", "--timeout", "1", "--lang", "en"))
        assert at.rc == 2, at
        assert "timeout" in at.err and "AT+CSQ" in at.err and "no answer in 1 s" in at.err
        dm = await loa(*r.args("diag", "modem", "--lang", "en"))
        assert dm.rc == 1, dm
        assert "Modem not answering" in dm.out and "no answer" in dm.out
        assert "power-cycle the modem" in dm.out

        await _stop(r)
        at = await loa(*r.args("at", "AT+CSQ", "--timeout", "1"))
        assert at.rc == 2, at
        assert "no answer in 1 s" in at.err and str(r.modem.link) in at.err
        dm = await loa(*r.args("diag", "modem", "--json"))
        assert dm.rc == 1, dm
        check_contract(dm.json())
        assert [f["code"] for f in dm.json()["faults"]] == ["modem_unresponsive"]


@pytest.mark.timeout(120)
async def test_state_changing_at_needs_unsafe(broker: Broker, tmp_path: Path) -> None:
    async with rig(broker, tmp_path) as r:
        for _ in ("daemon", "direct"):
            refused = await loa(*r.args("at", "AT+CFUN=0"))
            assert refused.rc == 2 and "--unsafe" in refused.err, refused
            still = await loa(*r.args("at", "AT+CFUN?", "--json"))
            assert still.json()["lines"] == ["+CFUN: 1"], still
            forced = await loa(*r.args("at", "AT+CMEE=1", "--unsafe", "--json"))
            assert forced.rc == 0 and forced.json()["final"] == "OK", forced
            if r.sock.exists():
                await _stop(r)


async def test_sim_failure_explained_in_words(tmp_path: Path) -> None:
    """Direct mode on a fresh controller: the modem's own error, then the remedy."""
    async with running_modem(tmp_path / "m", dialect="generic", faults=["sim_failure"]) as m:
        flags = ["--port", str(m.link), "--socket", str(tmp_path / "none.sock")]
        en = await loa("diag", "modem", "--lang", "en", *flags)
        assert en.rc == 1, en
        assert "SIM failure (+CME ERROR: 13 on AT+CPIN?)" in en.out
        assert "→ replace the SIM card" in en.out
        vi = await loa("diag", "modem", *flags)
        assert "Cháy SIM, lỗi SIM (+CME ERROR: 13 on AT+CPIN?)" in vi.out
        assert "thay thẻ SIM" in vi.out
        # The modem line speaks Vietnamese too, not the wire protocol's enum values.
        assert "SIM hỏng" in vi.out and "[nghiêm trọng; Cháy SIM, lỗi SIM]" in vi.out
        assert "not_registered" not in vi.out and "critical" not in vi.out
        js = await loa("diag", "modem", "--json", *flags)
        check_contract(js.json())
        [fault] = js.json()["faults"]
        assert (fault["code"], fault["cause"], fault["severity"]) == (
            "sim_failure",
            "sim_failure",
            "critical",
        )
        assert fault["evidence"] == "+CME ERROR: 13 on AT+CPIN?"


@pytest.mark.parametrize(
    ("dialect", "faults"),
    [
        ("generic", ["csq_stuck"]),
        ("quectel-eg21", ["csq_stuck"]),
        ("quectel-ec200", []),
        ("quectel-eg800k", []),
        ("simcom-a7670", []),
        ("simcom-a7672", []),
    ],
)
async def test_diag_modem_json_for_every_new_dialect(
    tmp_path: Path, dialect: str, faults: list[str]
) -> None:
    """``loa-agent diag modem --json`` (its own process) on ``loa-sim modem`` (its own
    process, on a pty) for each Cat-1 dialect and firmware quirk: a healthy modem
    with a real level, and the contract kept."""
    async with running_modem(tmp_path / "m", dialect=dialect, faults=faults) as m:
        flags = ["--port", str(m.link), "--dialect", dialect]
        js = await loa("diag", "modem", "--json", *flags, "--socket", str(tmp_path / "no.sock"))
        assert js.rc == 0, js
        result = js.json()
        check_contract(result)
        assert result["sim"] == "ready" and result["registration"] == "home", result
        assert result["iccid"] == "8984040000012345678"
        assert result["rsrp_dbm"] is not None and -100 <= result["rsrp_dbm"] <= -90, result
        assert result["rsrq_db"] == -10.0, result
        if faults:
            assert result["rssi_dbm"] is None or result["rssi_dbm"] < 0
        assert result["faults"] == []


# --- without any process: the errors a technician meets first -------------------------------


def test_no_daemon_and_no_config_is_a_clear_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nowhere = ["--socket", str(tmp_path / "none.sock"), "--config", str(tmp_path / "no.toml")]
    for argv in (
        ["status"],
        ["outbox"],
        ["events"],
        ["at", "AT+CSQ"],
        ["modbus", "read", "1", "1"],
    ):
        assert loa_agent_main([*argv, *nowhere]) == 2
        err = capsys.readouterr().err
        assert "no agent is running" in err and str(tmp_path / "none.sock") in err, err


def test_bad_requests_are_refused_before_anything_opens(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nowhere = ["--socket", str(tmp_path / "none.sock"), "--port", str(tmp_path / "tty")]
    assert loa_agent_main(["at", "rm -rf /", *nowhere]) == 2
    assert "is not one AT command line" in capsys.readouterr().err
    assert loa_agent_main(["at", "ATD112;", *nowhere]) == 2
    assert "--unsafe" in capsys.readouterr().err
    assert loa_agent_main(["diag", "modem", "--dialect", "nokia", *nowhere]) == 2
    assert "unknown modem dialect 'nokia'" in capsys.readouterr().err
    assert loa_agent_main(["modbus", "read", "1", "500", *nowhere]) == 2
    assert "count 500" in capsys.readouterr().err


def _on_a_terminal(argv: list[str], env: dict[str, str]) -> str:
    """Run ``loa-agent ARGV`` with its stdout on a pseudo-terminal; what it printed."""
    import pty

    master, slave = pty.openpty()
    try:
        p = subprocess.run(
            [sys.executable, "-m", "edge_agent.cli", *argv],
            stdout=slave,
            stderr=subprocess.PIPE,
            timeout=30,
            cwd=REPO,
            env={**{k: v for k, v in os.environ.items() if k != "NO_COLOR"}, **env},
        )
        os.set_blocking(master, False)
        chunks = []
        with contextlib.suppress(BlockingIOError, OSError):
            while chunk := os.read(master, 65536):
                chunks.append(chunk)
    finally:
        os.close(master)
        os.close(slave)
    assert p.returncode == 1, p.stderr
    return b"".join(chunks).decode()


async def test_colour_on_a_terminal_unless_no_color(tmp_path: Path) -> None:
    async with running_modem(tmp_path / "m", dialect="generic", faults=["sim_absent"]) as m:
        argv = ["diag", "modem", "--port", str(m.link), "--socket", str(tmp_path / "none.sock")]
        coloured = await asyncio.to_thread(_on_a_terminal, argv, {"TERM": "xterm"})
        assert "\x1b[31m" in coloured and "Không có SIM" in coloured
        plain = await asyncio.to_thread(_on_a_terminal, argv, {"TERM": "xterm", "NO_COLOR": "1"})
        assert "\x1b[" not in plain and "Không có SIM" in plain
