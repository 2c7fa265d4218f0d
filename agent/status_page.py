"""``/status``: what is wrong and what to do, on one screen, as one self-contained HTML page.

The page renders ``agent.report``'s report through a Jinja2 template with autoescaping on: tenant
names come from the API, and a template that escapes by default cannot forget to. No external
assets (the exporter may run where nothing else is reachable); a meta refresh keeps a wall screen
current, and the filter box keeps its text across refreshes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from markupsafe import Markup, escape
from starlette.templating import Jinja2Templates

from agent.report import build_report, pause_anchor, remedy_parts, token_anchor

if TYPE_CHECKING:
    from agent.runtime import Agent

REFRESH_SECONDS = 15
MAX_OK_ROWS = 500

_TEMPLATES = Jinja2Templates(directory=Path(__file__).with_name("templates"))
_TEMPLATES.env.globals.update(token_anchor=token_anchor, pause_anchor=pause_anchor)


def remedy_html(text: str) -> Markup:
    """A remedy with its `code spans` shown as code, everything else escaped."""
    return Markup("").join(
        Markup("<code>{}</code>").format(part) if is_code else escape(part)
        for part, is_code in remedy_parts(text)
    )


_TEMPLATES.env.globals.update(remedy=remedy_html)


def render_status_page(agent: Agent) -> str:
    template = _TEMPLATES.get_template("status.html")
    return template.render(
        report=build_report(agent),
        refresh_seconds=REFRESH_SECONDS,
        max_ok_rows=MAX_OK_ROWS,
    )
