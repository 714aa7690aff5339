"""Trusted-markup strings for server-rendered pages: everything else gets escaped.

``Html`` marks text that is already safe markup; :func:`html` fills a template
whose placeholders are escaped unless the value is ``Html``. Page code builds
markup only through these, so user data (device ids, notes, names) cannot
inject tags or attributes.
"""

from __future__ import annotations

from collections.abc import Iterable
from html import escape


class Html(str):
    """A string of trusted markup (never re-escaped, by ``esc`` or by Jinja2)."""

    __slots__ = ()

    def __html__(self) -> str:
        return str(self)


def esc(value: object) -> Html:
    """``value`` as markup: Html unchanged, anything else escaped (quotes too)."""
    if isinstance(value, Html):
        return value
    return Html(escape("" if value is None else str(value), quote=True))


def html(template: str, /, **values: object) -> Html:
    """``template`` (trusted) with ``{name}`` placeholders replaced by escaped values."""
    return Html(template.format_map({k: esc(v) for k, v in values.items()}))


def join(parts: Iterable[object], sep: str = "") -> Html:
    """Escaped parts joined by the trusted separator ``sep``."""
    return Html(sep.join(esc(p) for p in parts))


def attrs(**values: object) -> Html:
    """HTML attributes from keywords (``class_`` -> ``class``, ``data_x`` -> ``data-x``).

    ``None`` and ``False`` omit the attribute; ``True`` writes it bare.
    """
    out: list[str] = []
    for key, value in values.items():
        name = key.rstrip("_").replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            out.append(f" {name}")
        else:
            out.append(f' {name}="{esc(value)}"')
    return Html("".join(out))
