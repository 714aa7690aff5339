"""``loa-sim``'s hardware subcommands: ``modem``, ``amp`` and ``ctl``.

Each lives with its simulator: ``modem`` (firmware_shims.modem.sim), ``amp``
(firmware_shims.amp.sim), ``ctl`` (the control interface). The console script
itself is ``fleet_sim.cli``, which adds ``fleet`` and ``demo`` from the layer
above; ``python -m firmware_shims.cli`` offers the hardware subcommands alone.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence

from firmware_shims import control

#: module implementing ``add_parser(subparsers) -> None``; it sets ``func`` on its parser.
SUBCOMMAND_MODULES = ("firmware_shims.modem.sim", "firmware_shims.amp.sim")


def _ctl(args: argparse.Namespace) -> int:
    try:
        reply = control.send(args.socket, args.op, args.fault)
    except OSError as exc:
        print(f"loa-sim ctl: cannot reach {args.socket}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(reply, ensure_ascii=False))
    return 0 if reply.get("ok") else 1


def build_parser(modules: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The ``loa-sim`` parser with the hardware subcommands and those of ``modules``."""
    parser = argparse.ArgumentParser(
        prog="loa-sim", description="hardware simulators for development, tests and the demo"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in (*SUBCOMMAND_MODULES, *modules):
        importlib.import_module(name).add_parser(sub)
    ctl = sub.add_parser("ctl", help="set, clear or list a running simulator's faults")
    ctl.add_argument("--socket", required=True, help="the simulator's control socket")
    ctl.add_argument("op", choices=["set", "clear", "list"])
    ctl.add_argument("fault", nargs="?")
    ctl.set_defaults(func=_ctl)
    return parser


def main(argv: Sequence[str] | None = None, *, modules: Sequence[str] = ()) -> int:
    args = build_parser(modules).parse_args(argv)
    rc = args.func(args)
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
