"""The HTTP side: ``/metrics``, ``/healthz``, ``/readyz``, the landing page and the human pages.

Rendering happens on the event loop, where the probe state lives, so a scrape always sees one
consistent state; the renderer is fast enough (see bench/) that this costs the probes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import socket
from collections.abc import Callable, Iterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from agent import __version__
from agent.config import Settings
from agent.evidence import render_support_page
from agent.metrics import gzip_bytes
from agent.runtime import Agent
from agent.status_page import render_status_page
from agent.webconfig import WebConfig, bound_port, make_uvicorn_server, wait_started

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
        schedules = agent.scheduler.schedules if agent.scheduler is not None else []
        pending = [s.name for s in schedules if not s.ready] or [p.name for p in agent.probers]
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
        host, port = parse_listen_address(listen or settings.web_listen_address)
        self._address = (host, port)
        app = build_app(self.agent, render_status_page, render_support_page)
        self.server = make_uvicorn_server(app, host, port, web_config)
        self.server.capture_signals = _no_signal_capture  # type: ignore[method-assign]
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        return bound_port(self.server)

    @property
    def serving(self) -> asyncio.Task[None]:
        assert self._task is not None, "not started"
        return self._task

    async def start(self, deadline: float = 10.0) -> None:
        """Bind the listener, then start probing; raises OSError when the address is taken.

        We bind the socket ourselves: uvicorn's own bind failure ends in ``sys.exit``, which
        would escape as a traceback instead of a one-line error.
        """
        sock = bind_socket(*self._address)
        self._task = asyncio.get_running_loop().create_task(self.server.serve(sockets=[sock]))
        async with asyncio.timeout(deadline):
            await wait_started(self.server, self._task)
        self.agent.start()

    async def stop(self, grace: float = 2.0) -> None:
        """Finish in-flight probes briefly, then close the listener."""
        self.server.should_exit = True
        await self.agent.stop(grace=grace)
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._task, timeout=5)


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
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


@contextlib.contextmanager
def _no_signal_capture() -> Iterator[None]:
    """uvicorn would re-raise SIGTERM after its shutdown (exit 143); the CLI handles signals and
    exits 0, as supervisors expect of a clean stop."""
    yield
