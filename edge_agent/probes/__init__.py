"""The agent's own probes (controller and broadcast stream).

Modem and amplifier probes come from ``firmware_shims``; these two read the
controller itself and the stream, and follow the same contract
(``firmware_shims.readings.Probe``): ``read()`` never raises for a failing
source, it returns a reading that says so.
"""

from edge_agent.probes.stream import StreamProbe
from edge_agent.probes.system import SystemProbe

__all__ = ["StreamProbe", "SystemProbe"]
