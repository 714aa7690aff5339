"""The agent's configuration, as the agent loads it.

The schema (frozen dataclasses, one comment per field) and its cross-field
rules live in ``fleet_protocol.agent_config``, where the collector's
provisioning reads them too; here they are bound to the hardware checks of
``firmware_shims.hardware`` (modem dialect, amplifier profile).
``load_config(path)`` returns an ``AgentConfig`` or raises ``ConfigError``
naming the dotted key that was wrong. ``deploy/agent.example.toml`` is the
documented example and is loaded by a test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from firmware_shims.hardware import check_agent_hardware
from fleet_protocol import agent_config
from fleet_protocol.agent_config import (
    AgentConfig,
    AmpConfig,
    BrokerConfig,
    ConfigError,
    ControlConfig,
    DeviceConfig,
    DiagnosisConfig,
    ModemConfig,
    OutboxConfig,
    RecoveryConfig,
    ReportsConfig,
    SmsConfig,
    StreamConfig,
    SystemConfig,
    TunnelConfig,
    UpgradeConfig,
)


def validate(cfg: AgentConfig) -> AgentConfig:
    """Check cross-field and hardware rules; raises ConfigError naming the field."""
    return agent_config.validate(cfg, hardware=check_agent_hardware)


def parse_config(data: dict[str, Any]) -> AgentConfig:
    """Build and validate an AgentConfig from parsed TOML."""
    return agent_config.parse_config(data, hardware=check_agent_hardware)


def load_config(path: Path | str) -> AgentConfig:
    """Load ``path``; raises ConfigError (with ``path`` set) naming the bad field."""
    return agent_config.load_config(path, hardware=check_agent_hardware)


__all__ = [
    "AgentConfig",
    "AmpConfig",
    "BrokerConfig",
    "ConfigError",
    "ControlConfig",
    "DeviceConfig",
    "DiagnosisConfig",
    "ModemConfig",
    "OutboxConfig",
    "RecoveryConfig",
    "ReportsConfig",
    "SmsConfig",
    "StreamConfig",
    "SystemConfig",
    "TunnelConfig",
    "UpgradeConfig",
    "load_config",
    "parse_config",
    "validate",
]
