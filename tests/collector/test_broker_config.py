"""``loa-collector broker-config``: the production Mosquitto config for this host."""

from __future__ import annotations

import getpass
import shutil
import subprocess
from pathlib import Path

import aiomqtt
import pytest

from collector.broker_config import PRODUCTION_ACL
from collector.cli import main
from tests.support.mosquitto import MOSQUITTO, MOSQUITTO_PASSWD, free_port, wait_port


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    etc = tmp_path / "etc"
    etc.mkdir()
    shutil.copy(PRODUCTION_ACL, etc / "acl")
    (etc / "passwd").write_text("loa_collector:pw-collector-long\n", encoding="utf-8")
    subprocess.run([MOSQUITTO_PASSWD, "-U", str(etc / "passwd")], check=True)
    return etc


@pytest.mark.integration
async def test_the_written_config_starts_mosquitto_with_auth(etc: Path, tmp_path: Path) -> None:
    port = free_port()
    conf = tmp_path / "out" / "mosquitto.conf"
    argv = [
        "broker-config", "--config-dir", str(etc), "--data-dir", str(tmp_path),
        "--plain-port", str(port), "--tls-port", "0", "--cert-port", "0",
        "--log-file", str(tmp_path / "mosquitto.log"), "--user", getpass.getuser(),
        "-o", str(conf),
    ]  # fmt: skip
    assert main(argv) == 0
    text = conf.read_text(encoding="utf-8")
    assert f"listener {port} 127.0.0.1" in text and "listener 8883" not in text
    assert f"password_file {etc / 'passwd'}" in text and "allow_anonymous false" in text
    assert conf.stat().st_mode & 0o777 == 0o640
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stderr=subprocess.PIPE)  # noqa: ASYNC220
    try:
        wait_port("127.0.0.1", port)
        async with aiomqtt.Client(
            "127.0.0.1", port, username="loa_collector", password="pw-collector-long"
        ) as client:
            await client.publish("loa/v1/x/state", b"{}", qos=1)  # the ACL allows nothing here
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client("127.0.0.1", port):
                pass  # anonymous: refused
    finally:
        proc.terminate()
        proc.wait(10)
        assert proc.stderr is not None
        proc.stderr.close()


def test_tls_listeners_need_their_files(
    etc: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "mosquitto.conf"
    argv = ["broker-config", "--config-dir", str(etc), "-o", str(conf)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"missing {etc / 'ca.crt'}" in err and "--tls-port 0" in err
    assert not conf.exists()
    for name in ("ca.crt", "server.crt", "server.key", "crl.pem"):
        (etc / name).write_text("x", encoding="utf-8")
    assert main([*argv[:-2], "--tls-host", "203.0.113.5"]) == 0
    out = capsys.readouterr().out
    assert "listener 8883 203.0.113.5" in out and "listener 8884" in out
    assert f"cafile {etc / 'ca.crt'}" in out and f"crlfile {etc / 'crl.pem'}" in out
    (etc / "passwd").unlink()
    assert main(argv) == 1
    assert f"missing {etc / 'passwd'}" in capsys.readouterr().err


def test_a_bad_port_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["broker-config", "--tls-port", "70000"])
    assert "--tls-port" in capsys.readouterr().err
