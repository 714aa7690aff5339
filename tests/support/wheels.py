"""Agent wheels for upgrade tests, built from this source tree with another version.

A wheel is a zip with a ``.dist-info`` (PEP 427); building one here takes
milliseconds, where ``pip wheel`` of the project would take many seconds, and
lets a test make variants: a good one with a new ``AGENT_VERSION``, or one
that crashes at start.
"""

from __future__ import annotations

import base64
import hashlib
import tomllib
import zipfile
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
AGENT_PACKAGES = ("fleet_protocol", "firmware_shims", "edge_agent")

Patch = Callable[[str], str]


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_agent_wheel(out: Path, version: str, patches: dict[str, Patch] | None = None) -> Path:
    """``loa_fleet-<version>-py3-none-any.whl`` in ``out`` with the agent's packages.

    ``patches`` maps a file (``edge_agent/cli.py``) to a text transformation;
    ``edge_agent/agent.py`` always gets ``AGENT_VERSION = "<version>"``.
    """
    patches = dict(patches or {})
    bump = patches.get("edge_agent/agent.py", lambda s: s)
    patches["edge_agent/agent.py"] = lambda s: bump(
        s.replace('AGENT_VERSION = "0.1.0"', f'AGENT_VERSION = "{version}"')
    )
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    out.mkdir(parents=True, exist_ok=True)
    wheel = out / f"loa_fleet-{version}-py3-none-any.whl"
    dist = f"loa_fleet-{version}.dist-info"
    records: list[str] = []
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:

        def add(name: str, data: bytes) -> None:
            z.writestr(name, data)
            records.append(_record_line(name, data))

        for package in AGENT_PACKAGES:
            for f in sorted((REPO / package).rglob("*")):
                if not f.is_file() or "__pycache__" in f.parts or f.suffix == ".pyc":
                    continue
                rel = f.relative_to(REPO).as_posix()
                data = f.read_bytes()
                if rel in patches:
                    data = patches[rel](data.decode()).encode()
                add(rel, data)
        metadata = [
            "Metadata-Version: 2.1",
            "Name: loa-fleet",
            f"Version: {version}",
            *(f"Requires-Dist: {d}" for d in project["dependencies"]),
        ]
        add(f"{dist}/METADATA", ("\n".join(metadata) + "\n").encode())
        add(
            f"{dist}/WHEEL",
            b"Wheel-Version: 1.0\nGenerator: loa-fleet-tests\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n",
        )
        add(f"{dist}/entry_points.txt", b"[console_scripts]\nloa-agent = edge_agent.cli:main\n")
        records.append(f"{dist}/RECORD,,")
        z.writestr(f"{dist}/RECORD", "\n".join(records) + "\n")
    return wheel


def crash_at_start(text: str) -> str:
    """A patch for edge_agent/cli.py: the agent dies before it does anything."""
    marker = "def main(argv: Sequence[str] | None = None) -> int:\n"
    assert marker in text
    return text.replace(marker, marker + '    raise SystemExit("crashed at start (test wheel)")\n')
