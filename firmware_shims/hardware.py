"""The agent config's hardware rules: names only this layer knows.

``fleet_protocol.agent_config.validate`` checks everything but whether the
modem dialect exists and the amplifier profile loads; both sides that
validate an ``agent.toml`` (the agent at start, the collector's provisioning
before writing one) pass ``check_agent_hardware`` as its ``hardware`` hook.
"""

from __future__ import annotations

from firmware_shims.amp.profile import ProfileError, load_profile
from firmware_shims.modem.dialects import get_dialect
from fleet_protocol.agent_config import AgentConfig, ConfigError


def check_agent_hardware(cfg: AgentConfig) -> None:
    """Raise ConfigError (``modem.dialect``, ``amp.profile``) for unknown hardware."""
    if cfg.modem is not None:
        try:
            get_dialect(cfg.modem.dialect)
        except (KeyError, ValueError) as exc:
            raise ConfigError("modem.dialect", str(exc).strip("'\"")) from None
    if cfg.amp is not None:
        try:
            load_profile(cfg.amp.profile)
        except (ProfileError, OSError) as exc:
            raise ConfigError("amp.profile", str(exc)) from None


__all__ = ["check_agent_hardware"]
