"""Schemathesis against a live collector: the served OpenAPI document is the contract.

A real collector app (TCP socket, real broker and ingest, seeded inventory,
reports, a ticket) is fuzzed with ``schemathesis run --checks all`` using an
admin token: schema-valid requests must be accepted (or answer 401/403/404/409/
429), schema-invalid ones refused with 4xx, every answer's status, content type
and body must be the documented ones, and nothing may answer 5xx. The number of
examples per operation is bounded (``LOA_SCHEMATHESIS_EXAMPLES``, default 100)
and the seed fixed (``LOA_SCHEMATHESIS_SEED``), so CI runs the same cases in
under a minute; any problem fails the test, and so ``.ci/run``.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fleet_protocol import FaultCode
from tests.collector.conftest import make_config, publish, state, wait_for
from tests.collector.test_api import Api, start_api
from tests.support.mosquitto import Broker

pytestmark = pytest.mark.integration

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
CONFIG = Path(__file__).with_name("schemathesis.toml")
EXAMPLES = int(os.environ.get("LOA_SCHEMATHESIS_EXAMPLES", "100"))
#: Fixed so CI runs the same cases; set another to explore.
SEED = os.environ.get("LOA_SCHEMATHESIS_SEED", "20260731")


@pytest.fixture
async def live(broker: Broker, tmp_path: Path) -> AsyncIterator[Api]:
    # Remote commands to the seeded devices get no answer: bounded at 1 s each.
    cfg = make_config(
        broker,
        tmp_path,
        repairs={"auto_open_after_s": 0.0},
        remote={"wait_s": 0.5, "max_wait_s": 1.0, "grace_s": 1.0},
    )
    async for api in start_api(broker, tmp_path, cfg):
        await publish(broker, "dev-11", state("dev-11", 1))
        await publish(broker, "dev-21", state("dev-21", 1, commune="xa-02"))
        await publish(broker, "dev-12", state("dev-12", 1, faults=(FaultCode.AMP_LINE_OPEN,)))

        async def seeded(api: Api = api) -> bool:
            return await api.repo.message_count() >= 3

        await wait_for(seeded, what="seeded reports stored")
        status, _ = await api.call("admin", "POST", "/api/v1/repairs", {"device_id": "dev-21"})
        assert status == 201
        yield api


@pytest.mark.timeout(600)
async def test_schemathesis_finds_no_problem(live: Api, tmp_path: Path) -> None:
    if not SCHEMATHESIS.exists():
        pytest.fail("schemathesis is not installed: it is in the dev extra (pip install -e .[dev])")
    server = live.client.server
    base = f"http://127.0.0.1:{server.port}"
    proc = await asyncio.create_subprocess_exec(
        str(SCHEMATHESIS),
        "--config-file",
        str(CONFIG),
        "run",
        f"{base}/api/v1/openapi.json",
        "--checks",
        "all",
        "--header",
        f"Authorization: Bearer {live.tokens['admin']}",
        "--max-examples",
        str(EXAMPLES),
        "--seed",
        SEED,
        "--generation-database",
        "none",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--no-color",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path / "report"),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 540)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode(errors="replace")
    (tmp_path / "schemathesis.log").write_text(text, encoding="utf-8")
    print(text[-3000:])  # the summary, shown with -s or -rA
    assert proc.returncode == 0, text[-60000:]
    assert "No issues found" in text or "passed" in text, text[-5000:]
