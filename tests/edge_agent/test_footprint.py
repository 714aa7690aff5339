"""The agent's import footprint: no aiohttp, no collector-side library, ever."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

FORBIDDEN = {"aiohttp", "collector", "openpyxl", "argon2", "cryptography", "yarl", "multidict"}
#: Not collector-side, but 2.7 MiB of RSS for four /proc reads: the agent reads /proc itself.
HEAVY = {"psutil"}

PROBE = """
import json, sys
import edge_agent.agent, edge_agent.cli, edge_agent.uplink, edge_agent.outbox
edge_agent.cli.build_parser(subcommands=False)  # what `loa-agent run` builds
# What the agent imports when every probe is configured.
import firmware_shims.modem.probe, firmware_shims.modem.port
import firmware_shims.amp.probe, firmware_shims.amp.profile
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def test_agent_imports_no_collector_side_library() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=60,
    )
    loaded = set(json.loads(out.stdout))
    assert "edge_agent" in loaded and "aiomqtt" in loaded
    assert not loaded & (FORBIDDEN | HEAVY), sorted(loaded & (FORBIDDEN | HEAVY))
