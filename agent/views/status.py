"""``/status``: what is wrong and what to do, on one screen, as one self-contained HTML page.

The page renders the report (``agent.views.report``) of one snapshot through a Jinja2 template
with autoescaping on: tenant names come from the API, and a template that escapes by default
cannot forget to. No external assets (the exporter may run where nothing else is reachable); a
meta refresh keeps a wall screen current, and the filter box keeps its text across refreshes.
``/status?credential=NAME&tenant=ID``, the link alerts carry, shows that credential only with the
filter set to the tenant.
The kinds' colours and legend words come from the cause table (``agent.causes.KINDS``), the same
as the dashboards'.
"""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup, escape

from agent.causes import KINDS
from agent.snapshot import Snapshot
from agent.views.report import (
    build_report,
    collection_anchor,
    expiry_anchor,
    not_probed_anchor,
    pause_anchor,
    remedy_parts,
    token_anchor,
)

REFRESH_SECONDS = 15
MAX_OK_ROWS = 500


def remedy_html(text: str) -> Markup:
    """A remedy with its `code spans` shown as code, everything else escaped."""
    return Markup("").join(
        Markup("<code>{}</code>").format(part) if is_code else escape(part)
        for part, is_code in remedy_parts(text)
    )


_TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).with_name("templates")),
    autoescape=select_autoescape(["html"]),
)
_TEMPLATES.globals.update(
    token_anchor=token_anchor,
    pause_anchor=pause_anchor,
    not_probed_anchor=not_probed_anchor,
    expiry_anchor=expiry_anchor,
    collection_anchor=collection_anchor,
    remedy=remedy_html,
    kinds=list(KINDS.values()),
)


def render_status_page(snapshot: Snapshot) -> str:
    """The whole page for one snapshot (no I/O, no agent: it may run off the event loop)."""
    template = _TEMPLATES.get_template("status.html")
    return template.render(
        report=build_report(snapshot),
        refresh_seconds=REFRESH_SECONDS,
        max_ok_rows=MAX_OK_ROWS,
    )
