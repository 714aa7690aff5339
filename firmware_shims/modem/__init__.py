"""AT modems: pure parsers per dialect, the async AT port, the probe and the simulator.

Public API: ``get_dialect``/``Dialect`` (dialects), ``AtResponse``/``is_read_only``
(at), ``AtPort`` (port), ``ModemProbe`` (probe), ``ModemEngine``/``running_modem``
(sim). Import those from their modules; this package imports nothing heavy.
"""

from firmware_shims.modem.at import AtResponse, is_read_only
from firmware_shims.modem.dialects import DIALECTS, Dialect, get_dialect

__all__ = ["DIALECTS", "AtResponse", "Dialect", "get_dialect", "is_read_only"]
