"""Project exceptions for hardware I/O (serial AT modems, Modbus amplifiers).

Library exceptions (``serial.SerialException``, ``OSError``, pymodbus errors,
``TimeoutError``) never cross a firmware_shims boundary: they become one of
these, raised ``from`` the original, with a message that names the port, unit
or endpoint and the command that failed, e.g.
``ProbeTimeout("AT+CSQ on /dev/ttyUSB2: no answer in 2.0 s")``.

Callers may rely on:

- every exception here is a ``ShimError``, so ``except ShimError`` catches all
  hardware I/O failures and nothing else;
- ``where`` (the port path, ``host:port`` or ``unit 3 on /dev/ttyUSB0``) and
  ``command`` (the AT command or Modbus request, or ``None``) are set on every
  instance, for counting and log keys;
- ``str(exc)`` reads ``"<command> on <where>: <detail>"`` (or
  ``"<where>: <detail>"`` without a command).
"""

from __future__ import annotations


class ShimError(Exception):
    """A hardware I/O failure at a firmware_shims boundary."""

    def __init__(self, where: str, detail: str, *, command: str | None = None) -> None:
        self.where = where
        self.detail = detail
        self.command = command
        prefix = f"{command} on {where}" if command else where
        super().__init__(f"{prefix}: {detail}")


class ProbeTimeout(ShimError):
    """The device did not answer (or did not finish answering) within the timeout."""


class PortUnavailable(ShimError):
    """The port or endpoint cannot be opened or used: missing device, permission,
    USB re-enumeration in progress, connection refused, closed port."""


class ProtocolGarbage(ShimError):
    """The device answered, but not in a form the protocol allows (noise bytes,
    a truncated frame, an answer that cannot be parsed)."""


__all__ = ["PortUnavailable", "ProbeTimeout", "ProtocolGarbage", "ShimError"]
