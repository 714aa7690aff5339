"""``loa-sim demo``: Mosquitto, the collector and a simulated district, with one command.

``bash scripts/demo.sh`` (the README's first command) installs what is missing
and runs this. In a working directory (``var/demo`` by default, emptied first):

1. Mosquitto from ``deploy/mosquitto/mosquitto.conf`` (rendered by
   ``collector.broker_config.render``: the production file with local paths
   and a free port), with a password for the collector and for every device
   and the production ACL;
2. the collector with SQLite: schema migrated, the scenario's inventory
   imported, an ``admin`` login created, ``loa-collector serve`` started;
3. the fleet (``fleet_sim.runner.Fleet``) in this process: it
   backfills the scenario's history (about two months for ``lam-thao``, so the
   B2 table for last month exists), then runs live with faults coming and
   going.

It prints the dashboard URL and the login as soon as the collector answers.
SIGINT (Ctrl-C) or SIGTERM stops the fleet in order, then the collector, then
Mosquitto; the child processes are also told to die with this one
(``PR_SET_PDEATHSIG``), so a killed demo leaves nothing behind.

Everything is in the working directory: ``mosquitto.log``, ``collector.log``,
``collector.db``, ``fleet-status.json`` and ``credentials.txt``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import datetime as dt
import getpass
import io
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from fleet_sim.scenario import Scenario, ScenarioError, load_scenario

log = logging.getLogger("loa.demo")

COLLECTOR_USER = "loa_collector"
ADMIN_USER = "admin"
#: The simulated repair crews' login: an admin, since only admins may record past times.
CREW_USER = "demo-crew"


class DemoError(Exception):
    """The demo cannot start; the message says what to do."""


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the demo process dies (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _wait(
    what: str,
    ready: Callable[[], bool],
    timeout: float,
    proc: subprocess.Popen[bytes],
    log_file: Path,
) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise DemoError(
                f"{what} exited with status {proc.returncode}; see {log_file}:\n{_tail(log_file)}"
            )
        if time.monotonic() > deadline:
            raise DemoError(
                f"{what} not ready after {timeout:.0f} s; see {log_file}:\n{_tail(log_file)}"
            )
        time.sleep(0.1)


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _listening(port: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    return check


def _healthy(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return int(resp.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    return check


def last_month_end(today: dt.date) -> dt.date:
    """The last day of the month before ``today``'s (the B2 table the demo backfills)."""
    return today.replace(day=1) - dt.timedelta(days=1)


class Demo:
    """The demo's processes and files under ``workdir``; ``run()`` until stopped."""

    def __init__(
        self,
        scenario: Scenario,
        workdir: Path,
        *,
        http_port: int = 8080,
        mqtt_port: int = 0,
        duration: float | None = None,
        out: IO[str] = sys.stdout,
    ) -> None:
        self.scenario = scenario
        self.workdir = workdir.resolve()
        self.http_port = http_port
        self.mqtt_port = mqtt_port or _free_port()
        self.duration = duration
        self.out = out
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.admin_password = secrets.token_urlsafe(9)
        self.collector_cfg = self.workdir / "collector.toml"
        self.device_passwords = self.workdir / "device-passwords"
        self.crew_token = ""

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    # --- files ---------------------------------------------------------------------

    def prepare(self) -> None:
        if not _port_free(self.http_port):
            raise DemoError(
                f"port {self.http_port} is in use (another demo?): pass --http-port PORT"
            )
        if not shutil.which("mosquitto") and not Path("/usr/sbin/mosquitto").exists():
            raise DemoError(
                "mosquitto is not installed: run scripts/setup.sh (apt-get install mosquitto)"
            )
        if self.workdir.exists():
            shutil.rmtree(self.workdir)
        for d in ("broker/etc", "broker/data", "fleet"):
            (self.workdir / d).mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o700)

    def _mosquitto_passwd(self) -> str:
        return shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"

    def write_broker(self) -> Path:
        from collector.broker_config import PRODUCTION_ACL, BrokerLayout, render

        etc = self.workdir / "broker" / "etc"
        shutil.copy(PRODUCTION_ACL, etc / "acl")
        users = {COLLECTOR_USER: secrets.token_urlsafe(18)}
        devices = {c.device_id: secrets.token_urlsafe(12) for c in self.scenario.clusters}
        users.update(devices)
        passwd = etc / "passwd"
        # mosquitto_passwd -U hashes a whole "user:password" file in one run,
        # far faster than one call per device for a province.
        passwd.write_text("".join(f"{u}:{p}\n" for u, p in users.items()), encoding="utf-8")
        passwd.chmod(0o600)
        subprocess.run(
            [self._mosquitto_passwd(), "-U", str(passwd)], check=True, capture_output=True
        )
        self.device_passwords.write_text(
            "".join(f"{u}:{p}\n" for u, p in devices.items()), encoding="utf-8"
        )
        self.device_passwords.chmod(0o600)
        (self.workdir / "mqtt-password").write_text(users[COLLECTOR_USER] + "\n", encoding="utf-8")
        (self.workdir / "mqtt-password").chmod(0o600)
        layout = BrokerLayout(
            config_dir=etc,
            data_dir=self.workdir / "broker" / "data",
            plain_port=self.mqtt_port,
            tls_port=None,
            cert_port=None,
            log_file=self.workdir / "mosquitto.log",
            # Mosquitto started as root drops to "mosquitto", which cannot read our files.
            run_as=getpass.getuser(),
        )
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(render(layout), encoding="utf-8")
        return conf

    def write_collector(self) -> None:
        db = self.workdir / "collector.db"
        self.collector_cfg.write_text(
            f"""# Written by loa-sim demo.
[mqtt]
host = "127.0.0.1"
port = {self.mqtt_port}
username = "{COLLECTOR_USER}"
password_file = "{self.workdir / "mqtt-password"}"
client_id = "loa-collector-demo"

[db]
path = "{db}"
# A demo: a crash may lose the last second, a power cut is not a concern.
synchronous = "normal"

[http]
host = "127.0.0.1"
port = {self.http_port}
# Plain HTTP on this machine: a Secure cookie would never be sent back.
secure_cookies = false

[repairs]
# The demo's repair crews (fleet_sim/repairs.py) open, start and
# resolve tickets on the fleet's simulated clock; the collector's automatic
# open and resolve work on wall-clock time and would stamp backfilled
# breakdowns with today's date, so they are off here.
auto_open_after_s = 0
auto_resolve_after_s = 31536000
""",
            encoding="utf-8",
        )

    def _collector_cli(self, *argv: str) -> str:
        """Run one ``loa-collector`` command in this process; its standard output."""
        from collector import cli

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = cli.main([*argv])
        if rc != 0:
            raise DemoError(f"loa-collector {' '.join(argv[:2])} failed (status {rc})")
        return out.getvalue()

    def setup_collector(self) -> None:
        from fleet_sim import inventory_csv

        cfg = str(self.collector_cfg)
        self._collector_cli("db", "migrate", "--config", cfg)
        inventory = self.workdir / "inventory.csv"
        inventory.write_bytes(inventory_csv(self.scenario))
        self._collector_cli("inventory", "import", str(inventory), "--config", cfg)
        pw_file = self.workdir / "admin-password"
        pw_file.write_text(self.admin_password + "\n", encoding="utf-8")
        pw_file.chmod(0o600)
        self._collector_cli(
            "users",
            "add",
            ADMIN_USER,
            "--role",
            "admin",
            "--password-file",
            str(pw_file),
            "--config",
            cfg,
        )
        crew_pw = self.workdir / "crew-password"
        crew_pw.write_text(secrets.token_urlsafe(18) + "\n", encoding="utf-8")
        crew_pw.chmod(0o600)
        for argv in (
            ("users", "add", CREW_USER, "--role", "admin", "--password-file", str(crew_pw)),
            ("users", "token", CREW_USER, "--label", "loa-sim demo repair crews"),
        ):
            out = self._collector_cli(*argv, "--config", cfg)
        self.crew_token = out.strip().splitlines()[-1]

    # --- processes -----------------------------------------------------------------

    def spawn(self, name: str, argv: Sequence[str], log_file: Path) -> subprocess.Popen[bytes]:
        with open(log_file, "ab") as out:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        self.procs.append((name, proc))
        return proc

    def start_broker(self, conf: Path) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        proc = self.spawn(
            "mosquitto", [exe, "-c", str(conf)], self.workdir / "mosquitto-stdout.log"
        )
        _wait("mosquitto", _listening(self.mqtt_port), 15, proc, self.workdir / "mosquitto.log")

    def start_collector(self) -> None:
        proc = self.spawn(
            "collector",
            [sys.executable, "-m", "collector.cli", "serve", "--config", str(self.collector_cfg)],
            self.workdir / "collector.log",
        )
        _wait(
            "the collector",
            _healthy(f"http://127.0.0.1:{self.http_port}/healthz"),
            60,
            proc,
            self.workdir / "collector.log",
        )

    def stop_processes(self) -> None:
        """SIGTERM the children newest first; SIGKILL what is still there after 15 s."""
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    log.warning("%s did not stop on SIGTERM; killing it", name)
                    proc.kill()
                    proc.wait()
        self.procs.clear()

    # --- the whole thing -----------------------------------------------------------

    def banner(self) -> None:
        url = f"http://127.0.0.1:{self.http_port}/"
        month_end = last_month_end(dt.date.today())
        credentials = {
            "dashboard": url,
            "user": ADMIN_USER,
            "password": self.admin_password,
            "b2_last_month": f"{url}b2?as_of={month_end.isoformat()}",
            "mqtt": f"mqtt://127.0.0.1:{self.mqtt_port}",
        }
        path = self.workdir / "credentials.json"
        path.write_text(json.dumps(credentials, indent=1) + "\n", encoding="utf-8")
        path.chmod(0o600)
        t = self.scenario.time
        self.say(
            "\n".join(
                [
                    "",
                    f"loa-fleet demo: {self.scenario.name}",
                    f"  dashboard   {url}",
                    f"  login       {ADMIN_USER} / {self.admin_password}",
                    f"  B2 table    {credentials['b2_last_month']}",
                    f"  history     {t.backfill_days:g} days backfilled at x{t.acceleration:g}"
                    f" (about {t.backfill_days * 86400 / max(t.acceleration - 1, 1):.0f} s),"
                    " then live",
                    f"  files       {self.workdir}",
                    "  stop        Ctrl-C",
                    "",
                ]
            )
        )

    async def run_fleet(self, stop: asyncio.Event) -> None:
        from fleet_sim.cluster import BrokerTarget
        from fleet_sim.repairs import RepairCrew, plan_repairs
        from fleet_sim.runner import Fleet

        passwords: dict[str, str] = {}
        for line in self.device_passwords.read_text(encoding="utf-8").splitlines():
            user, _, pw = line.partition(":")
            passwords[user] = pw
        fleet = Fleet(
            self.scenario,
            broker=BrokerTarget(f"mqtt://127.0.0.1:{self.mqtt_port}"),
            state_dir=self.workdir / "fleet",
            passwords=passwords,
            status_file=self.workdir / "fleet-status.json",
        )
        loop = asyncio.get_running_loop()
        if self.duration:
            loop.call_later(self.duration, stop.set)
        collector = next(p for n, p in self.procs if n == "collector")

        async def watch() -> None:
            # A collector that dies takes the demo with it, with its log's tail.
            while collector.poll() is None:  # noqa: ASYNC110 - a child process, not an event
                await asyncio.sleep(1.0)
            tail = _tail(self.workdir / "collector.log")
            self.say(f"the collector exited ({collector.returncode}):\n{tail}")
            stop.set()

        contractors = {
            c.device_id: self.scenario.commune(c.commune).contractor for c in self.scenario.clusters
        }
        crew = RepairCrew(
            f"http://127.0.0.1:{self.http_port}",
            self.crew_token,
            plan_repairs(fleet.episodes, contractors, seed=self.scenario.seed),
            fleet.clock,
        )
        watcher = asyncio.create_task(watch(), name="demo.watch")
        crew_task = asyncio.create_task(crew.run(stop), name="demo.repair-crew")
        try:
            await fleet.run(stop)
        finally:
            stop.set()
            watcher.cancel()
            await asyncio.gather(watcher, crew_task, return_exceptions=True)

    def run(self) -> int:
        stop_requested = False

        def on_signal(signum: int, _frame: Any) -> None:
            nonlocal stop_requested
            stop_requested = True
            raise KeyboardInterrupt

        # During setup a signal unwinds through the finally below; once the
        # fleet runs, its event loop's handlers take over.
        old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.prepare()
            self.say(f"loa-sim demo: setting up in {self.workdir}")
            conf = self.write_broker()
            self.start_broker(conf)
            self.write_collector()
            self.setup_collector()
            self.start_collector()
            self.banner()

            async def main() -> None:
                stop = asyncio.Event()
                loop = asyncio.get_running_loop()
                for s in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(s, stop.set)
                try:
                    await self.run_fleet(stop)
                finally:
                    for s in (signal.SIGINT, signal.SIGTERM):
                        loop.remove_signal_handler(s)

            asyncio.run(main())
            return 0
        except KeyboardInterrupt:
            return 0 if stop_requested else 130
        finally:
            # A second Ctrl-C while stopping must not skip stopping the children.
            for s in (signal.SIGINT, signal.SIGTERM):
                signal.signal(s, signal.SIG_IGN)
            self.say("loa-sim demo: stopping the collector and Mosquitto")
            self.stop_processes()
            for s, h in old.items():
                signal.signal(s, h)
            self.say("loa-sim demo: stopped")


def _demo(args: argparse.Namespace) -> int:
    from fleet_sim import with_time

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for name in ("edge_agent", "firmware_shims", "pymodbus"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        scenario = with_time(
            load_scenario(args.scenario),
            backfill_days=args.backfill_days,
            acceleration=args.acceleration,
        )
        return Demo(
            scenario,
            Path(args.workdir),
            http_port=args.http_port,
            mqtt_port=args.mqtt_port,
            duration=args.duration,
        ).run()
    except (ScenarioError, DemoError) as exc:
        print(f"loa-sim demo: {exc}", file=sys.stderr)
        return 2


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("demo", help="Mosquitto + collector + a simulated district, at once")
    p.add_argument(
        "--scenario",
        default=os.environ.get("LOA_DEMO_SCENARIO", "lam-thao"),
        help="scenario TOML or bundled name (default lam-thao)",
    )
    p.add_argument(
        "--workdir",
        default=os.environ.get("LOA_DEMO_WORKDIR", "var/demo"),
        help="working directory, emptied first (default var/demo)",
    )
    p.add_argument(
        "--http-port", type=int, default=int(os.environ.get("LOA_DEMO_HTTP_PORT", "8080"))
    )
    p.add_argument(
        "--mqtt-port",
        type=int,
        default=int(os.environ.get("LOA_DEMO_MQTT_PORT", "0")),
        help="broker port (default: a free one)",
    )
    p.add_argument("--backfill-days", type=float, help="override the scenario's history length")
    p.add_argument("--acceleration", type=float, help="override the scenario's backfill speed")
    p.add_argument(
        "--duration",
        type=float,
        default=float(os.environ["LOA_DEMO_DURATION"])
        if os.environ.get("LOA_DEMO_DURATION")
        else None,
        help="stop after this many seconds (default: until Ctrl-C)",
    )
    p.set_defaults(func=_demo)


__all__ = ["Demo", "DemoError", "add_parser", "last_month_end"]
