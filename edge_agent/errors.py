"""The edge agent's own exceptions.

``ConfigError`` is the config schema's (``fleet_protocol.agent_config``),
re-exported here; the collector's provisioning raises it too.

Hardware I/O failures are ``firmware_shims.errors.ShimError``; these cover the
agent's other boundaries (its config file, its outbox database, its uplink and
its control socket). Every message names the field, file or endpoint.
"""

from __future__ import annotations

from fleet_protocol.agent_config import ConfigError


class AgentError(Exception):
    """Base of the agent's exceptions."""


class OutboxError(AgentError):
    """The outbox database cannot be opened or written; the message names the file."""


class UplinkError(AgentError):
    """The broker cannot be reached or refused us; the message names the endpoint."""


__all__ = ["AgentError", "ConfigError", "OutboxError", "UplinkError"]
