"""``loa-collector remote DEVICE ACTION [ARGS...]``: a remote command from the shell.

Goes through the collector's HTTP API (so the same role check, scope and
audit log apply as for the dashboard), authenticated with an API token from
``--token-file`` or ``$LOA_COLLECTOR_TOKEN`` (``loa-collector users token``)::

    loa-collector remote lt-0001 status
    loa-collector remote lt-0001 diag
    loa-collector remote lt-0001 at AT+CSQ
    loa-collector remote lt-0001 modbus 100 9 input=true
    loa-collector remote lt-0001 read modem
    loa-collector remote lt-0001 events 20
    loa-collector remote lt-0001 soft_reset --confirm
    loa-collector remote lt-0001 status --queue --expires 7200

Positional ARGS fill the action's arguments in order (``at``: command;
``modbus``: address, count; ``read``: role; ``events``: limit); ``key=value``
sets any argument (the value is read as JSON when it parses, else as text).

Exit status: 0 the device answered ok; 1 it answered with an error, or the
request was refused; 3 no answer (unreachable, or queued for later).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

#: Positional argument names per action, and their types.
POSITIONAL: dict[str, tuple[tuple[str, type], ...]] = {
    "at": (("command", str),),
    "modbus": (("address", int), ("count", int)),
    "read": (("role", str),),
    "events": (("limit", int),),
    "tunnel": (("duration_s", int),),
}
EXIT_NO_ANSWER = 3


class RemoteCliError(Exception):
    """A usage or transport error: one line on stderr, exit status 1."""


def parse_args(action: str, raw: list[str]) -> dict[str, Any]:
    """The command's arguments from the CLI words; raises RemoteCliError naming the bad one."""
    names = POSITIONAL.get(action, ())
    out: dict[str, Any] = {}
    position = 0
    for word in raw:
        key, eq, value = word.partition("=")
        if eq and all(part.isidentifier() for part in key.split(".")):
            try:
                out[key] = json.loads(value)
            except ValueError:
                out[key] = value
            continue
        if position >= len(names):
            raise RemoteCliError(f"{action}: unexpected argument {word!r}")
        name, kind = names[position]
        position += 1
        try:
            out[name] = kind(word)
        except ValueError:
            raise RemoteCliError(
                f"{action}: {name} must be {kind.__name__}, got {word!r}"
            ) from None
    return out


def _token(args: argparse.Namespace) -> str:
    if args.token_file:
        try:
            return Path(args.token_file).read_text(encoding="utf-8").split()[0]
        except (OSError, IndexError) as exc:
            raise RemoteCliError(
                f"--token-file {args.token_file}: cannot read a token: {exc}"
            ) from None
    token = os.environ.get("LOA_COLLECTOR_TOKEN", "").strip()
    if not token:
        raise RemoteCliError("no API token: pass --token-file or set LOA_COLLECTOR_TOKEN")
    return token


async def _post(url: str, token: str, body: dict[str, Any], timeout: float) -> tuple[int, Any]:
    import aiohttp

    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.post(url, json=body, headers={"Authorization": f"Bearer {token}"}) as resp,
        ):
            try:
                data = await resp.json(content_type=None)
            except ValueError:
                data = {"error": await resp.text()}
            return resp.status, data
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise RemoteCliError(f"{url}: {exc or type(exc).__name__}") from None


def _print_record(data: Any, as_json: bool) -> None:
    if as_json or not isinstance(data, dict):
        print(json.dumps(data, ensure_ascii=False, indent=2))
        return
    state = data.get("state", "?")
    head = f"{data.get('device_id')} {data.get('action')} [{data.get('id')}]: {state}"
    if data.get("ok"):
        print(head)
        print(json.dumps(data.get("result"), ensure_ascii=False, indent=2))
    else:
        print(f"{head}: {data.get('error')}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from collector.cli import load

    try:
        cfg = load(args)
        base = args.url or f"http://{cfg.http.host}:{cfg.http.port}"
        body: dict[str, Any] = {
            "action": args.action,
            "args": parse_args(args.action, args.args),
            "offline": "queue" if args.queue else "refuse",
            "confirm": bool(args.confirm),
        }
        if args.wait is not None:
            body["wait_s"] = args.wait
        if args.expires is not None:
            body["expires_s"] = args.expires
        wait = args.wait if args.wait is not None else cfg.remote.max_wait_s
        url = f"{base.rstrip('/')}/api/v1/devices/{args.device}/commands"
        status, data = asyncio.run(_post(url, _token(args), body, timeout=wait + 30))
    except RemoteCliError as exc:
        print(f"loa-collector remote: {exc}", file=sys.stderr)
        return 1
    if status in (200, 202, 409, 504) and isinstance(data, dict) and "state" in data:
        _print_record(data, args.json)
        if status == 200:
            return 0 if data.get("ok") else 1
        return EXIT_NO_ANSWER if status in (202, 504) else 1
    error = data.get("error") if isinstance(data, dict) else data
    print(f"loa-collector remote: HTTP {status}: {error}", file=sys.stderr)
    return 1


def run_push(args: argparse.Namespace) -> int:
    """``loa-collector config-push``: one POST /api/v1/config/push, results per device."""
    from collector.cli import load

    try:
        cfg = load(args)
        base = args.url or f"http://{cfg.http.host}:{cfg.http.port}"
        body: dict[str, Any] = {"deadline_s": args.deadline}
        if args.device:
            body["device"] = args.device
        elif args.commune:
            body["commune"] = args.commune
        else:
            body["fleet"] = True
        if args.file:
            try:
                body["toml"] = Path(args.file).read_text(encoding="utf-8")
            except OSError as exc:
                raise RemoteCliError(f"--file {args.file}: {exc.strerror}") from None
        else:
            body["set"] = parse_args("set", args.set or [])
            if not body["set"]:
                raise RemoteCliError("give --file agent.toml or --set section.key=value ...")
        body["offline"] = "refuse" if args.refuse_offline else "queue"
        url = f"{base.rstrip('/')}/api/v1/config/push"
        status, data = asyncio.run(
            _post(url, _token(args), body, timeout=cfg.remote.max_wait_s + 60)
        )
    except RemoteCliError as exc:
        print(f"loa-collector config-push: {exc}", file=sys.stderr)
        return 1
    if status != 200 or not isinstance(data, dict):
        error = data.get("error") if isinstance(data, dict) else data
        print(f"loa-collector config-push: HTTP {status}: {error}", file=sys.stderr)
        return 1
    print(f"{data['bytes_per_device']} bytes per device; {data['summary']}")
    for r in data["devices"]:
        outcome = (r.get("result") or {}).get("version") if r.get("ok") else r.get("error")
        print(f"{r['device_id']}\t{r['state']}\t{outcome}")
    return 0 if all(r.get("ok") for r in data["devices"]) else 1


def run_upgrade(args: argparse.Namespace) -> int:
    """``loa-collector upgrade keygen|add``: the signing key and signed artifacts."""
    from collector import upgrades
    from collector.cli import load

    try:
        if args.upgrade_command == "keygen":
            private, public = upgrades.keygen(Path(args.out))
            print(f"signing key {private} (keep it secret); devices get {public}")
            return 0
        cfg = load(args)
        art = upgrades.add_artifact(
            Path(args.dir or cfg.upgrades.dir),
            Path(args.key or cfg.upgrades.signing_key),
            args.version,
            [Path(w) for w in args.wheels],
        )
    except (upgrades.UpgradeError, FileExistsError) as exc:
        print(f"loa-collector upgrade: {exc}", file=sys.stderr)
        return 1
    print(f"upgrade {art.version}: {art.size} bytes per device, sha256 {art.sha256}")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="collector base URL (default: from [http] in --config)")
    p.add_argument("--token-file", help="file holding an API token (else $LOA_COLLECTOR_TOKEN)")


def register(sub: Any, parent: argparse.ArgumentParser) -> None:
    u = sub.add_parser("upgrade", help="agent upgrades: signing key, signed artifacts")
    usub = u.add_subparsers(dest="upgrade_command", required=True)
    k = usub.add_parser("keygen", parents=[parent], help="make the Ed25519 signing key")
    k.add_argument("--out", required=True, help="directory for upgrade-signing.pem, upgrade.pub")
    k.set_defaults(func=run_upgrade)
    a = usub.add_parser("add", parents=[parent], help="sign and store an upgrade")
    a.add_argument("version", help="the loa-fleet version the wheels install")
    a.add_argument("wheels", nargs="+", help="the loa-fleet wheel and any changed dependency")
    a.add_argument("--dir", help="artifact directory (default [upgrades] dir)")
    a.add_argument("--key", help="signing key (default [upgrades] signing_key)")
    a.set_defaults(func=run_upgrade)
    c = sub.add_parser(
        "config-push",
        parents=[parent],
        help="push an agent.toml or changed fields to a device, a commune or the fleet",
    )
    target = c.add_mutually_exclusive_group(required=True)
    target.add_argument("--device")
    target.add_argument("--commune")
    target.add_argument("--fleet", action="store_true")
    what = c.add_mutually_exclusive_group(required=True)
    what.add_argument("--file", help="a whole agent.toml (one device)")
    what.add_argument("--set", nargs="+", metavar="SECTION.KEY=VALUE", help="changed fields")
    c.add_argument(
        "--deadline", type=float, default=180.0, help="seconds to come back healthy (10..3600)"
    )
    c.add_argument("--refuse-offline", action="store_true", help="do not queue for offline ones")
    _common(c)
    c.set_defaults(func=run_push)

    p = sub.add_parser(
        "remote",
        parents=[parent],
        help="send a remote command to a device (status, diag, at, modbus, ...)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("device", help="device id")
    p.add_argument("action", help="status, diag, read, at, modbus, outbox, events, soft_reset, ...")
    p.add_argument("args", nargs="*", help="the action's arguments (positional or key=value)")
    _common(p)
    p.add_argument("--wait", type=float, help="seconds to wait for the reply")
    p.add_argument(
        "--queue",
        action="store_true",
        help="if the device is offline, queue the command in its broker session",
    )
    p.add_argument("--expires", type=float, help="with --queue: seconds the command may wait")
    p.add_argument("--confirm", action="store_true", help="run an action that changes the device")
    p.add_argument("--json", action="store_true", help="print the whole command record as JSON")
    p.set_defaults(func=run)


__all__ = ["parse_args", "register", "run", "run_push", "run_upgrade"]
