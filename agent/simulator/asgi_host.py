"""A well-formed host: a starlette app on uvicorn that carries ``Reply`` objects.

Runtime faults below HTTP (a tenant on a regional host told to ``reset``, ``truncate`` or
``stall``) still have to happen here, so the rare broken reply reaches for the connection's own
transport through uvicorn's server state, matched by the client address. Everything else is an
ordinary response.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Generator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from agent.clock import Clock
from agent.simulator.hostio import Handler, pause, reset_transport
from agent.simulator.tls import TlsFiles
from agent.simulator.wire import ApiRequest, Reply

_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
_STARTUP_SECONDS = 10.0
_DISCONNECT_SECONDS = 5.0


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves signals to its owner: several run in one process."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class _BrokenResponse(Response):
    """A response whose sending is handed back to the host, which breaks it on purpose."""

    def __init__(self, reply: Reply, host: AsgiHost) -> None:
        super().__init__(status_code=reply.status or 200)
        self._reply = reply
        self._host = host

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._host.misbehave(self._reply, scope, receive, send)


async def _until_disconnect(receive: Receive) -> None:
    """Return once the server reports the client gone (uvicorn then logs nothing)."""
    while (await receive())["type"] != "http.disconnect":
        pass


class AsgiHost:
    """One uvicorn listener serving ``handler`` under the host key ``key``."""

    def __init__(
        self,
        key: str,
        handler: Handler,
        clock: Clock,
        stopping: asyncio.Event,
        tls: TlsFiles | None = None,
    ) -> None:
        self.key = key
        self._handler = handler
        self._clock = clock
        self._stopping = stopping
        self._tls = tls
        self.app = Starlette(routes=[Route("/{path:path}", self._endpoint, methods=_METHODS)])
        self._server: _QuietServer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, sockets: list[socket.socket]) -> None:
        config = uvicorn.Config(
            self.app,
            http="h11",
            ws="none",
            lifespan="off",
            log_config=None,
            access_log=False,
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=2,
            ssl_certfile=None if self._tls is None else str(self._tls.certfile),
            ssl_keyfile=None if self._tls is None else str(self._tls.keyfile),
        )
        server = self._server = _QuietServer(config)
        self._task = asyncio.create_task(server.serve(sockets=sockets))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _STARTUP_SECONDS
        while not server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError(f"simulator host {self.key} exited during startup")
            if loop.time() > deadline:
                raise RuntimeError(f"simulator host {self.key} did not start")
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(self._task, timeout=10)
        except TimeoutError:
            self._server.force_exit = True

    async def _endpoint(self, request: Request) -> Response:
        req = ApiRequest(
            method=request.method,
            path=request.url.path,
            query=dict(request.query_params),
            headers=dict(request.headers.items()),
            body=await request.body(),
            host=self.key,
        )
        reply = self._handler(req)
        if reply.delay > 0 and not await pause(self._clock, reply.delay, self._stopping):
            return Response(status_code=503)
        if reply.transport != "normal":
            return _BrokenResponse(reply, self)
        return Response(reply.body, reply.status, headers=dict(reply.headers))

    async def misbehave(self, reply: Reply, scope: Scope, receive: Receive, send: Send) -> None:
        """Reset, truncate or stall the connection this request came on."""
        transport = self._transport_of(scope.get("client"))
        if transport is None:
            raise RuntimeError("the connection to misbehave on is gone")
        if reply.transport == "reset":
            reset_transport(transport)
        else:
            headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers]
            headers.append((b"content-length", str(len(reply.body)).encode()))
            await send({"type": "http.response.start", "status": reply.status, "headers": headers})
            if reply.transport == "truncate":
                part = reply.body[: len(reply.body) // 2]
                await send({"type": "http.response.body", "body": part, "more_body": True})
                transport.close()
            else:
                await self._stall(receive, transport)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_until_disconnect(receive), _DISCONNECT_SECONDS)

    async def _stall(self, receive: Receive, transport: asyncio.WriteTransport) -> None:
        gone = asyncio.ensure_future(_until_disconnect(receive))
        stop = asyncio.ensure_future(self._stopping.wait())
        done, pending = await asyncio.wait({gone, stop}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        if stop in done:
            transport.abort()

    def _transport_of(self, client: object) -> asyncio.WriteTransport | None:
        if self._server is None or not isinstance(client, tuple | list):
            return None
        wanted = tuple(client)
        for connection in list(self._server.server_state.connections):
            if getattr(connection, "client", None) == wanted:
                transport = getattr(connection, "transport", None)
                if isinstance(transport, asyncio.WriteTransport):
                    return transport
        return None
