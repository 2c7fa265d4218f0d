"""The HTTP side: ``/metrics``, ``/healthz``, ``/readyz`` (and their Prometheus-style names
``/-/healthy``, ``/-/ready``), the landing page and the human pages.

Rendering happens on the event loop, where the probe state lives, so a page always shows one
consistent state; each page is rendered by one request at a time and shared by every request
that asks meanwhile (``agent.web.rendering``), so a burst of requests costs one render, not
hundreds in a row while the probes wait. The listener is bounded (``agent.web.listener``): a
cap on connections below the descriptor limit, a deadline for request heads, one log line per
condition.
"""

from __future__ import annotations

import asyncio
import html
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route, request_response
from starlette.types import ASGIApp, Receive, Scope, Send

from agent import __version__
from agent.config import Settings
from agent.metrics import gzip_bytes
from agent.runtime import Agent
from agent.snapshot import Snapshot
from agent.transport import MAX_CONNECTIONS as OUTGOING_CONNECTIONS
from agent.views.status import render_status_page
from agent.views.support import render_support_page
from agent.web.auth import WebSecurityMiddleware
from agent.web.listener import BoundedServer, connection_cap, raise_nofile_limit
from agent.web.rendering import Page, RenderTurns, SharedRender
from agent.web.schema import WebConfig
from agent.web.tls_context import build_ssl_context

CONTENT_TYPE_METRICS = "text/plain; version=0.0.4; charset=utf-8"
DESCRIPTOR_RESERVE = OUTGOING_CONNECTIONS + 64
"""Descriptors the listener leaves free: the probes' connection pool, plus the state file, the
log, the event loop's own and the TLS bundles read at start-up."""

LISTEN_BACKLOG = 2048
"""Connections the kernel queues while the listener is at its cap (uvicorn's default)."""

PageRenderer = Callable[[Snapshot], str]
"""A human page: it renders the agent's snapshot (``Agent.snapshot``), nothing else."""
Endpoint = Callable[[Request], Awaitable[Response]]


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
    turns = RenderTurns()
    metrics_page = SharedRender(lambda: Page(agent.render_metrics(), gzip_bytes), turns)

    async def metrics(request: Request) -> Response:
        page = await metrics_page.get()
        if "gzip" in request.headers.get("accept-encoding", ""):
            return Response(
                await page.compressed(),
                media_type=CONTENT_TYPE_METRICS,
                headers={"Content-Encoding": "gzip", "Vary": "Accept-Encoding"},
            )
        return Response(page.body, media_type=CONTENT_TYPE_METRICS)

    def bounded(endpoint: Endpoint) -> ASGIApp:
        return BoundedPage(request_response(endpoint), turns)

    async def healthz(_: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(_: Request) -> Response:
        if agent.ready:
            return PlainTextResponse("ready\n")
        schedules = agent.scheduler.schedules if agent.scheduler is not None else []
        pending = [s.name for s in schedules if not s.ready] or [p.name for p in agent.probers]
        text = "waiting for the first probe cycle of: " + ", ".join(pending) + "\n"
        return PlainTextResponse(text, status_code=503)

    async def landing(_: Request) -> Response:
        return HTMLResponse(landing_page())

    routes = [
        Route("/metrics", bounded(metrics)),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/-/healthy", healthz),
        Route("/-/ready", readyz),
        Route("/", landing),
    ]
    if status_page is not None:
        render_status = status_page
        status_shared = SharedRender(lambda: render_status(agent.snapshot()), turns)

        async def status(_: Request) -> Response:
            return HTMLResponse(await status_shared.get())

        routes.append(Route("/status", bounded(status)))
    if support_page is not None:
        render_support = support_page
        support_shared = SharedRender(lambda: render_support(agent.snapshot(evidence=True)), turns)

        async def support(_: Request) -> Response:
            return PlainTextResponse(
                await support_shared.get(), media_type="text/markdown; charset=utf-8"
            )

        routes.append(Route("/support", bounded(support)))
    return Starlette(routes=routes)


class BoundedPage:
    """A page endpoint that takes a place in ``turns`` until its answer is sent, or answers 503
    at once when every place is taken (an ASGI app, so Starlette routes to it as it is)."""

    def __init__(self, app: ASGIApp, turns: RenderTurns) -> None:
        self.app = app
        self.turns = turns

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with self.turns.place() as admitted:
            if admitted:
                await self.app(scope, receive, send)
                return
        busy = PlainTextResponse(
            "busy: too many page requests at once\n", status_code=503, headers={"Retry-After": "1"}
        )
        await busy(scope, receive, send)


def landing_page() -> str:
    links = [
        ("/metrics", "Metrics"),
        ("/status", "Status of every probe, with the troubleshooting hint"),
        ("/support", "Support evidence for persistent 5XX (Markdown)"),
        ("/healthz", "Liveness (also /-/healthy)"),
        ("/readyz", "Readiness: every credential finished its first probe cycle (also /-/ready)"),
    ]
    items = "".join(f'<li><a href="{href}">{html.escape(text)}</a></li>' for href, text in links)
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<title>Sophos Central Exporter</title></head><body>"
        f"<h1>Sophos Central Exporter</h1><p>Version {html.escape(__version__)}</p>"
        f"<ul>{items}</ul></body></html>"
    )


class AgentService:
    """An agent and its HTTP server, started and stopped together.

    ``port`` may be 0 (tests): the bound port is known after ``start``.
    """

    def __init__(
        self,
        settings: Settings,
        listen: str | None = None,
        web_config: WebConfig | None = None,
        **agent_options: Any,
    ) -> None:
        self.agent = Agent(settings, **agent_options)
        self.agent.claim_state_file()  # before listening: a second agent on the file refuses
        self._address = parse_listen_address(listen or settings.web_listen_address)
        self._app = build_app(self.agent, render_status_page, render_support_page)
        self._web_config = web_config
        self.http: BoundedServer | None = None

    @property
    def port(self) -> int:
        assert self.http is not None, "not started"
        return self.http.port

    @property
    def serving(self) -> asyncio.Task[None]:
        assert self.http is not None, "not started"
        return self.http.serving

    async def start(self, deadline: float = 10.0) -> None:
        """Bind the listener, then start probing; raises OSError when the address is taken.

        We bind the socket ourselves: uvicorn's own bind failure ends in ``sys.exit``, which
        would escape as a traceback instead of a one-line error.
        """
        raise_nofile_limit()
        sock = bind_socket(*self._address)
        try:
            self.http = make_http_server(self._app, sock, self._web_config)
            await self.http.start(deadline)
        except BaseException:
            sock.close()
            raise
        self.agent.start()

    async def stop(self, grace: float = 2.0) -> None:
        """Finish in-flight probes briefly, then close the listener."""
        if self.http is not None:
            self.http.server.should_exit = True
        await self.agent.stop(grace=grace)
        if self.http is not None:
            await self.http.stop()


def make_http_server(
    app: ASGIApp, sock: socket.socket, web_config: WebConfig | None
) -> BoundedServer:
    """``app`` served on ``sock`` with ``web_config``'s TLS, auth and headers, bounded."""
    wrapped = app if web_config is None else WebSecurityMiddleware(app, web_config)
    ssl_context = build_ssl_context(web_config) if web_config is not None else None
    return BoundedServer(wrapped, sock, ssl_context, connection_cap(DESCRIPTOR_RESERVE))


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket for ``host:port`` (IPv4 or IPv6, as the host says)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
