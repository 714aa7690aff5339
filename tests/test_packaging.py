"""The wheel, installed outside this checkout, serves the dashboard with its CSS and JS.

Builds the wheel offline (``pip wheel --no-build-isolation``), installs it
without dependencies into a fresh virtual environment whose only link to this
checkout's ``.venv`` is a ``.pth`` line for the third-party libraries, and runs
its ``loa-collector``: migrate, add a user, serve. The test then logs in,
fetches the dashboard and every stylesheet, script and icon the page links,
and checks that the code that answered came from the installed wheel.
"""

from __future__ import annotations

import http.cookiejar
import json
import re
import shutil
import site
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from collector.broker_config import DATA_DIR, BrokerLayout, render
from tests.support.mosquitto import free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
_NOT_SOURCES = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "var", ".*_cache")


def _run(*argv: str | Path, cwd: Path) -> str:
    proc = subprocess.run(
        [str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"{argv}: {proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed; its ``bin`` directory."""
    tmp = tmp_path_factory.mktemp("wheel")
    # A copy of the checkout: setuptools writes build/ next to the sources, and a
    # stale build/ there could put modules in the wheel that no longer exist.
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(*_NOT_SOURCES))
    _run(
        sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
        "-w", tmp / "dist", src, cwd=tmp,
    )  # fmt: skip
    wheels = list((tmp / "dist").glob("loa_fleet-*.whl"))
    assert len(wheels) == 1
    venv = tmp / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp)
    py = venv / "bin" / "python"
    _run(sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps",
         "--no-index", wheels[0], cwd=tmp)  # fmt: skip
    fresh_site = Path(
        _run(py, "-c", "import site; print(site.getsitepackages()[0])", cwd=tmp).strip()
    )
    # Dependencies (aiohttp, msgspec, ...) from this venv; .pth files there are not
    # processed, so this checkout's editable install stays out of the fresh venv.
    (fresh_site / "deps.pth").write_text(
        "\n".join(p for p in site.getsitepackages()) + "\n", encoding="utf-8"
    )
    where = _run(py, "-c", "import collector, fleet_sim; print(collector.__file__)", cwd=tmp)
    assert Path(where.strip()).is_relative_to(fresh_site), where
    return venv / "bin"


def test_the_installed_wheel_serves_a_page_with_its_css_and_js(
    installed: Path, tmp_path: Path
) -> None:
    port = free_port()
    cfg = tmp_path / "collector.toml"
    cfg.write_text(
        f"""ingest_enabled = false
[mqtt]
password = "unused"
[db]
path = "{tmp_path / "collector.db"}"
[http]
host = "127.0.0.1"
port = {port}
secure_cookies = false
""",
        encoding="utf-8",
    )
    pw = tmp_path / "pw"
    pw.write_text("a-long-password\n", encoding="utf-8")
    exe = installed / "loa-collector"
    _run(exe, "db", "migrate", "--config", cfg, cwd=tmp_path)
    _run(exe, "users", "add", "admin", "--role", "admin", "--password-file", pw,
         "--config", cfg, cwd=tmp_path)  # fmt: skip
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [exe, "serve", "--config", cfg], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with opener.open(f"{base}/healthz", timeout=2):
                    break
            except (urllib.error.URLError, OSError):
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()
                assert time.monotonic() < deadline, "collector never answered"
                time.sleep(0.2)
        login = urllib.request.Request(
            f"{base}/api/v1/auth/login",
            data=json.dumps({"name": "admin", "password": "a-long-password"}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with opener.open(login, timeout=10) as resp:
            assert resp.status == 200
        with opener.open(f"{base}/", timeout=10) as resp:
            assert resp.status == 200
            page = resp.read().decode()
        assets = re.findall(r'(?:href|src)="(/static/[^"]+)"', page)
        kinds = {Path(a).suffix for a in assets}
        assert {".css", ".js", ".svg"} <= kinds, assets
        for asset in sorted(set(assets)):
            with opener.open(base + asset, timeout=10) as resp:
                body = resp.read()
                assert resp.status == 200 and body, asset
                name = Path(asset).name
                assert body == (REPO / "collector" / "web" / "static" / name).read_bytes()
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def test_the_installed_wheel_carries_the_broker_config_and_the_agent_template(
    installed: Path, tmp_path: Path
) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    for name in ("passwd", "acl"):
        (etc / name).write_text("", encoding="utf-8")
    exe = installed / "loa-collector"
    out = _run(exe, "broker-config", "--config-dir", etc, "--tls-port", "0", "--cert-port", "0",
               cwd=tmp_path)  # fmt: skip
    # The same file this checkout renders from deploy/mosquitto/mosquitto.conf.
    layout = BrokerLayout(config_dir=etc, data_dir=DATA_DIR, tls_port=None, cert_port=None)
    assert out == render(layout)
    assert "allow_anonymous false" in out and f"acl_file {etc / 'acl'}" in out
    py = installed / "python"
    template = _run(py, "-c", "from collector.provision import AGENT_TEMPLATE as t; print(t)",
                    cwd=tmp_path).strip()  # fmt: skip
    assert Path(template).read_bytes() == (REPO / "deploy" / "agent.example.toml").read_bytes()
    assert "site-packages" in template
