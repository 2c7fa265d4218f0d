"""The HTTP side: ``/metrics``, ``/healthz``, ``/readyz``, the landing page and the human pages.

Rendering happens on the event loop, where the probe state lives, so a scrape always sees one
consistent state; the renderer is fast enough (see bench/) that this costs the probes nothing.
"""

from __future__ import annotations

import html
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from agent import __version__
from agent.metrics import gzip_bytes
from agent.runtime import Agent

CONTENT_TYPE_METRICS = "text/plain; version=0.0.4; charset=utf-8"

PageRenderer = Callable[[Agent], str]


def parse_listen_address(address: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` (all interfaces) or ``[::1]:PORT``."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"listen address {address!r} is not HOST:PORT")
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104 - ':9866' means all interfaces, as in Go
    return host, int(port)


def build_app(
    agent: Agent,
    status_page: PageRenderer | None = None,
    support_page: PageRenderer | None = None,
) -> Starlette:
    """The ASGI app. ``status_page``/``support_page`` render the human pages when available."""

    async def metrics(request: Request) -> Response:
        body = agent.render_metrics()
        if "gzip" in request.headers.get("accept-encoding", ""):
            return Response(
                gzip_bytes(body),
                media_type=CONTENT_TYPE_METRICS,
                headers={"Content-Encoding": "gzip", "Vary": "Accept-Encoding"},
            )
        return Response(body, media_type=CONTENT_TYPE_METRICS)

    async def healthz(_: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(_: Request) -> Response:
        if agent.ready:
            return PlainTextResponse("ready\n")
        pending = [p.name for p in agent.probers if not p.state.first_cycle_done]
        text = "waiting for the first probe cycle of: " + ", ".join(pending) + "\n"
        return PlainTextResponse(text, status_code=503)

    async def landing(_: Request) -> Response:
        return HTMLResponse(landing_page())

    routes = [
        Route("/metrics", metrics),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/", landing),
    ]
    if status_page is not None:
        render_status = status_page

        async def status(_: Request) -> Response:
            return HTMLResponse(render_status(agent))

        routes.append(Route("/status", status))
    if support_page is not None:
        render_support = support_page

        async def support(_: Request) -> Response:
            return PlainTextResponse(
                render_support(agent), media_type="text/markdown; charset=utf-8"
            )

        routes.append(Route("/support", support))
    return Starlette(routes=routes)


def landing_page() -> str:
    links = [
        ("/metrics", "Metrics"),
        ("/status", "Status of every probe, with the troubleshooting hint"),
        ("/support", "Support evidence for persistent 5XX (Markdown)"),
        ("/healthz", "Liveness"),
        ("/readyz", "Readiness (first probe cycle complete)"),
    ]
    items = "".join(f'<li><a href="{href}">{html.escape(text)}</a></li>' for href, text in links)
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<title>Sophos Central Exporter</title></head><body>"
        f"<h1>Sophos Central Exporter</h1><p>Version {html.escape(__version__)}</p>"
        f"<ul>{items}</ul></body></html>"
    )
