"""OpenAPI 3.1 path items of the remote-command routes (``collector.remote_api``).

Merged into the collector's document by ``collector.openapi``; free of aiohttp
and store imports like ``collector.b2.openapi``.
"""

from __future__ import annotations

from typing import Any


def _op(summary: str, **extra: Any) -> dict[str, Any]:
    return {
        "summary": summary,
        "responses": {
            "200": {"description": "the command record", "content": _JSON},
            "400": {"description": "invalid input"},
            "401": {"description": "authentication required"},
            "403": {"description": "not allowed for this role"},
            "404": {"description": "no such device or command"},
        },
        **extra,
    }


_JSON = {"application/json": {"schema": {"type": "object"}}}
_DEVICE = {"name": "device_id", "in": "path", "required": True, "schema": {"type": "string"}}

#: OpenAPI path items of these routes (merged into ``collector.openapi``).
PATHS: dict[str, dict[str, Any]] = {
    "/api/v1/devices/{device_id}/commands": {
        "post": _op(
            "Send a remote command (technician, admin); 202 queued, 409 offline, 504 no reply",
            parameters=[_DEVICE],
            requestBody={
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["action"],
                            "properties": {
                                "action": {"type": "string"},
                                "args": {"type": "object"},
                                "wait_s": {"type": "number"},
                                "offline": {"type": "string", "enum": ["refuse", "queue"]},
                                "expires_s": {"type": "number"},
                                "confirm": {"type": "boolean"},
                            },
                        }
                    }
                },
            },
        ),
        "get": _op("A device's latest remote commands", parameters=[_DEVICE]),
    },
    "/api/v1/config/push": {
        "post": _op(
            "Push an agent.toml (one device) or changed fields (device, commune or fleet); "
            "each device keeps it only if healthy within deadline_s, else rolls back",
            requestBody={
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "device": {"type": "string"},
                                "commune": {"type": "string"},
                                "fleet": {"type": "boolean"},
                                "toml": {"type": "string"},
                                "set": {"type": "object"},
                                "deadline_s": {"type": "number"},
                                "offline": {"type": "string", "enum": ["refuse", "queue"]},
                                "wait_s": {"type": "number"},
                                "expires_s": {"type": "number"},
                            },
                        }
                    }
                },
            },
        )
    },
    "/api/v1/config/versions": {
        "get": _op(
            "Each device's agent and config version (from its last full report)",
            parameters=[
                {"name": "commune", "in": "query", "required": False, "schema": {"type": "string"}}
            ],
        )
    },
    "/api/v1/upgrades": {"get": _op("Signed agent upgrades available (admin)")},
    "/api/v1/upgrades/{version}/plan": {
        "get": _op(
            "What a rollout would cost before it starts: bytes per device, devices, total "
            "bytes, canaries and the rest",
            parameters=[
                {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}},
                *(
                    {"name": n, "in": "query", "required": False, "schema": {"type": "string"}}
                    for n in ("device", "commune", "canaries", "canary_count")
                ),
            ],
        )
    },
    "/api/v1/upgrades/rollouts": {
        "post": _op(
            "Start a staged rollout (canaries, then the rest; halts when a canary fails)",
            requestBody={
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["version"],
                            "properties": {
                                "version": {"type": "string"},
                                "device": {"type": "string"},
                                "commune": {"type": "string"},
                                "fleet": {"type": "boolean"},
                                "canaries": {"type": "array", "items": {"type": "string"}},
                                "canary_count": {"type": "integer"},
                                "deadline_s": {"type": "number"},
                            },
                        }
                    }
                },
            },
        )
    },
    "/api/v1/upgrades/rollouts/{rollout_id}": {
        "get": _op(
            "A rollout's progress per device",
            parameters=[
                {"name": "rollout_id", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
        )
    },
    "/api/v1/commands/{command_id}": {
        "get": _op(
            "One remote command and its result",
            parameters=[
                {"name": "command_id", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
        )
    },
}


__all__ = ["PATHS"]
