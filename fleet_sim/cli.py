"""``loa-sim``: the hardware simulators plus the fleet simulator and the demo.

The hardware subcommands (``modem``, ``amp``, ``ctl``) live in
``firmware_shims.cli``; this layer, the only one that may compose the agent
and the collector, adds ``fleet`` and ``demo``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from firmware_shims import cli as hardware


def main(argv: Sequence[str] | None = None) -> int:
    return hardware.main(argv, modules=("fleet_sim",))


if __name__ == "__main__":
    sys.exit(main())
