"""The edge agent's own exceptions.

Hardware I/O failures are ``firmware_shims.errors.ShimError``; these cover the
agent's other boundaries (its config file, its outbox database, its uplink and
its control socket). Every message names the field, file or endpoint.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of the agent's exceptions."""


class ConfigError(AgentError):
    """A config file that cannot be used; ``field`` is the dotted TOML key (``modem.baud``)."""

    def __init__(self, field: str, reason: str, *, path: str | None = None) -> None:
        self.field = field
        self.reason = reason
        self.path = path
        where = f"{path}: " if path else ""
        super().__init__(f"{where}{field}: {reason}")


class OutboxError(AgentError):
    """The outbox database cannot be opened or written; the message names the file."""


class UplinkError(AgentError):
    """The broker cannot be reached or refused us; the message names the endpoint."""


__all__ = ["AgentError", "ConfigError", "OutboxError", "UplinkError"]
