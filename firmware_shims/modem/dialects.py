"""One ``Dialect`` per modem family: what to ask in a poll and how to read it.

``get_dialect(name)`` returns the registry entry (``DIALECTS``): ``generic``
(3GPP), ``quectel`` (EC2x/EG2x), ``quectel-eg21``, ``quectel-ec200``
(EC200U/EC200A/EC200T), ``quectel-eg800k``, ``simcom`` (SIM7600/SIM7000),
``simcom-a7670`` and ``simcom-a7672``. A probe runs ``poll_commands``, then the
``followups`` those answers call for (the generic ``AT+CESQ`` when ``+CSQ``
gave 99), then (unless the SIM is absent or failed) the ``iccid_commands`` in
order until one yields an ICCID, and hands all answers, keyed by command, to
``parse``. What differs between the families and firmware builds is in the
``quectel`` and ``simcom`` module docs; firmware_shims/README.md names the
sources each was checked against.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

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
    ``followups``: the poll's answers so far → further read-only commands to ask.
    ``models``: the modules this dialect is for, for people.
    """

    name: str
    poll_commands: tuple[str, ...]
    iccid_commands: tuple[str, ...]
    reset_command: str
    parse: Callable[[Mapping[str, AtResponse]], ModemState]
    followups: Callable[[Mapping[str, AtResponse]], tuple[str, ...]] = field(
        default=lambda _responses: ()
    )
    models: str = ""

    @property
    def iccid_command(self) -> str:
        """The vendor's own ICCID command."""
        return self.iccid_commands[0]


def _quectel(responses: Mapping[str, AtResponse]) -> ModemState:
    return quectel.build_state(responses, "auto")


def _quectel_cat1(responses: Mapping[str, AtResponse]) -> ModemState:
    return quectel.build_state(responses, "db")


def _simcom(responses: Mapping[str, AtResponse]) -> ModemState:
    return simcom.build_state(responses)


def _simcom_a76xx(responses: Mapping[str, AtResponse]) -> ModemState:
    return simcom.build_state(responses, "a76xx")


def _registry(*dialects: Dialect) -> dict[str, Dialect]:
    return {d.name: d for d in dialects}


def _quectel_family(name: str, models: str, *, cat1: bool) -> Dialect:
    """EC2x-like (``cat1=False``) or EC200/EG800K-like Quectel dialect."""
    return Dialect(
        name=name,
        poll_commands=quectel.CAT1_POLL if cat1 else quectel.POLL,
        iccid_commands=quectel.CAT1_ICCID_COMMANDS if cat1 else quectel.ICCID_COMMANDS,
        reset_command="AT+CFUN=1,1",
        parse=_quectel_cat1 if cat1 else _quectel,
        models=models,
    )


def _simcom_a76xx_dialect(name: str, models: str) -> Dialect:
    return Dialect(
        name=name,
        poll_commands=simcom.POLL,
        iccid_commands=simcom.ICCID_COMMANDS,
        reset_command="AT+CRESET",
        parse=_simcom_a76xx,
        models=models,
    )


DIALECTS: dict[str, Dialect] = _registry(
    Dialect(
        name="generic",
        poll_commands=generic.POLL,
        iccid_commands=generic.ICCID_COMMANDS,
        reset_command="AT+CFUN=1,1",
        parse=generic.build_state,
        followups=generic.followups,
        models="any 3GPP TS 27.007 modem",
    ),
    _quectel_family("quectel", "Quectel EC25, EC21, EG25, EP06", cat1=False),
    _quectel_family("quectel-eg21", "Quectel EG21-G", cat1=False),
    _quectel_family("quectel-ec200", "Quectel EC200U, EC200A, EC200T", cat1=True),
    _quectel_family("quectel-eg800k", "Quectel EG800K", cat1=True),
    Dialect(
        name="simcom",
        poll_commands=simcom.POLL,
        iccid_commands=simcom.ICCID_COMMANDS,
        reset_command="AT+CRESET",
        parse=_simcom,
        models="SIMCom SIM7600, SIM7000, SIM7080",
    ),
    _simcom_a76xx_dialect("simcom-a7670", "SIMCom A7670"),
    _simcom_a76xx_dialect("simcom-a7672", "SIMCom A7672"),
)


def get_dialect(name: str) -> Dialect:
    """The dialect called ``name``; ValueError naming the known ones otherwise."""
    try:
        return DIALECTS[name]
    except KeyError:
        raise ValueError(f"unknown modem dialect {name!r}; known: {', '.join(DIALECTS)}") from None


__all__ = ["DIALECTS", "Dialect", "get_dialect"]
