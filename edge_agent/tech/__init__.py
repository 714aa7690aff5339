"""The technician commands of ``loa-agent``: status, diag, at, modbus, outbox, events.

Modules:

- ``cli``: the subcommands (``add_parser`` plugs them into ``loa-agent``);
- ``client``: the daemon's control socket, with timeouts, as a few exceptions;
- ``direct``: the hardware opened directly when no daemon runs;
- ``checks``: pure: readings → check results, signal grade, the ``diag modem``
  JSON contract, using the agent's own ``edge_agent.diagnosis``;
- ``render``: words for a person (tables, colour, Vietnamese or English);
- ``ops``: the ``tech.*`` operations the daemon serves for these commands;
- ``outboxfile``: read-only views of the outbox database;
- ``wire``: readings to JSON and back.
"""
