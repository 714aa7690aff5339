"""loa-fleet edge agent: the daemon on each speaker cluster's controller.

``loa-agent run --config agent.toml`` (``edge_agent.cli``) runs
``edge_agent.agent.Agent``: one poller per probe (modem and amplifier from
``firmware_shims``, system and stream from ``edge_agent.probes``), the pure
``edge_agent.diagnosis.diagnose``, the SQLite ``edge_agent.outbox.Outbox``,
the MQTT ``edge_agent.uplink.Uplink``, the ``edge_agent.recovery`` ladder and
the local ``edge_agent.control`` socket that the technician CLI talks to.

Nothing here imports aiohttp or any collector-side library.
"""
