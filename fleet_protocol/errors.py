"""The one error type of the wire protocol."""

from __future__ import annotations


class ProtocolError(ValueError):
    """A message, topic or field that does not follow wire protocol v1.

    ``field`` names the offending field as a dotted path (``modem.rssi_dbm``,
    ``$`` for the whole message, ``topic`` for the topic) and ``reason`` says
    what was wrong. ``kind`` is a short stable key for counting rejections
    (``json``, ``schema``, ``topic``, ``mismatch``, ``oversize``, ``version``).
    """

    def __init__(self, field: str, reason: str, *, kind: str = "schema") -> None:
        self.field = field
        self.reason = reason
        self.kind = kind
        super().__init__(f"{field}: {reason}")
