"""One ``Dialect`` per modem family: what to ask in a poll and how to read it.

``get_dialect("generic" | "quectel" | "simcom")`` returns the registry entry.
A probe runs ``poll_commands``, then (unless the SIM is absent or failed) the
``iccid_commands`` in order until one yields an ICCID, and hands all answers,
keyed by command, to ``parse``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from firmware_shims.modem import generic, quectel, simcom
from firmware_shims.modem.at import AtResponse
from fleet_protocol import ModemState


@dataclass(frozen=True, slots=True)
class Dialect:
    """A modem family's AT vocabulary.

    ``poll_commands``: read-only commands of one poll, in order.
    ``iccid_commands``: ICCID commands, the vendor's first, ``AT+CRSM`` last.
    ``reset_command``: the soft reset that restarts the module (it goes silent,
    then prints ``RDY``; a USB module re-enumerates its ports).
    ``parse``: answers keyed by command → ModemState (never raises).
    """

    name: str
    poll_commands: tuple[str, ...]
    iccid_commands: tuple[str, ...]
    reset_command: str
    parse: Callable[[Mapping[str, AtResponse]], ModemState]

    @property
    def iccid_command(self) -> str:
        """The vendor's own ICCID command."""
        return self.iccid_commands[0]


def _quectel(responses: Mapping[str, AtResponse]) -> ModemState:
    return quectel.build_state(responses)


def _simcom(responses: Mapping[str, AtResponse]) -> ModemState:
    return simcom.build_state(responses)


DIALECTS: dict[str, Dialect] = {
    "generic": Dialect(
        name="generic",
        poll_commands=generic.POLL,
        iccid_commands=generic.ICCID_COMMANDS,
        reset_command="AT+CFUN=1,1",
        parse=generic.build_state,
    ),
    "quectel": Dialect(
        name="quectel",
        poll_commands=quectel.POLL,
        iccid_commands=quectel.ICCID_COMMANDS,
        reset_command="AT+CFUN=1,1",
        parse=_quectel,
    ),
    "simcom": Dialect(
        name="simcom",
        poll_commands=simcom.POLL,
        iccid_commands=simcom.ICCID_COMMANDS,
        reset_command="AT+CRESET",
        parse=_simcom,
    ),
}


def get_dialect(name: str) -> Dialect:
    """The dialect called ``name``; ValueError naming the known ones otherwise."""
    try:
        return DIALECTS[name]
    except KeyError:
        raise ValueError(f"unknown modem dialect {name!r}; known: {', '.join(DIALECTS)}") from None


__all__ = ["DIALECTS", "Dialect", "get_dialect"]
