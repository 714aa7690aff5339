"""The account rules (collector.users), as the CLI and the users page apply them."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.cli import main
from collector.store.base import Role
from collector.users import UserRuleError, check_name, check_scope
from tests.collector.test_cli import write_config


@pytest.mark.parametrize(
    ("role", "communes", "known", "field"),
    [
        (Role.COMMUNE_OFFICER, [], None, "communes"),
        (Role.ADMIN, ["xa-01"], None, "communes"),
        (Role.DISTRICT_VIEWER, ["xa-01"], None, "communes"),
        (Role.TECHNICIAN, ["xa-99"], ["xa-01"], "communes"),
        (Role.COMMUNE_OFFICER, ["xa-01"], ["xa-01"], None),
        (Role.TECHNICIAN, [], None, None),
    ],
)
def test_scope_rules(
    role: Role, communes: list[str], known: list[str] | None, field: str | None
) -> None:
    if field is None:
        check_scope(role, communes, known)
        return
    with pytest.raises(UserRuleError) as err:
        check_scope(role, communes, known)
    assert err.value.field == field


@pytest.mark.parametrize("name", ["", "x" * 129, "tab\there", "nl\n"])
def test_bad_names(name: str) -> None:
    with pytest.raises(UserRuleError, match="name"):
        check_name(name)


def test_the_cli_applies_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path / "c.toml", None)
    assert main(["db", "migrate", "--config", str(cfg)]) == 0
    pw = tmp_path / "pw"
    pw.write_text("a-long-password\n")
    base = ["users", "add", "--password-file", str(pw), "--config", str(cfg)]
    assert main([*base, "officer", "--role", "commune_officer"]) == 1
    assert "--commune: a commune officer needs at least one commune" in capsys.readouterr().err
    assert main([*base, "boss", "--role", "admin", "--commune", "xa-01"]) == 1
    assert "--commune: do not apply to role admin" in capsys.readouterr().err
