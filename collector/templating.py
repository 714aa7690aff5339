"""The Jinja2 environment of the dashboard pages and the HTML export (autoescaped).

Templates live in ``collector/web/templates/``. Autoescaping is on for every
template; trusted markup (the SVG charts, ``collector.web.markup.Html``)
passes through because it says so (``__html__``). The dashboard registers
this same environment with aiohttp-jinja2 (``collector.web.setup_dashboard``);
``collector.exports.as_html`` renders the B2 export with it, so the page and
the export draw the table from one template (``_b2_table.html``).
"""

from __future__ import annotations

from typing import Any, Final

import jinja2

ENV: Final = jinja2.Environment(
    loader=jinja2.PackageLoader("collector", "web/templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)


def render(name: str, /, **context: Any) -> str:
    """Template ``name`` rendered with ``context``."""
    return ENV.get_template(name).render(context)


__all__ = ["ENV", "render"]
