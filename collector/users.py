"""The rules of a user account, once: for ``loa-collector users add`` and the users page."""

from __future__ import annotations

from collections.abc import Collection
from typing import Final

from collector.store.base import Role

#: Longest user name (the login form's limit too).
MAX_NAME: Final = 128


class UserRuleError(ValueError):
    """A user account that breaks a rule; ``field`` is "name", "role" or "communes"."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


def check_name(name: str) -> None:
    if not name or len(name) > MAX_NAME or not name.isprintable():
        raise UserRuleError("name", f"1..{MAX_NAME} printable characters")


def check_scope(
    role: Role, communes: Collection[str], known: Collection[str] | None = None
) -> None:
    """A commune officer needs communes; admins and district viewers take none.

    With ``known`` (the inventory's commune codes), every commune must be one of them.
    """
    if known is not None:
        unknown = sorted(set(communes) - set(known))
        if unknown:
            raise UserRuleError("communes", f"unknown commune {unknown[0][:64]!r}")
    if role is Role.COMMUNE_OFFICER and not communes:
        raise UserRuleError("communes", "a commune officer needs at least one commune")
    if role in (Role.ADMIN, Role.DISTRICT_VIEWER) and communes:
        raise UserRuleError("communes", f"do not apply to role {role}")


__all__ = ["MAX_NAME", "UserRuleError", "check_name", "check_scope"]
