"""A small HTTP/1.1 server on ``asyncio.start_server`` for what frameworks will not do.

It serves the faulty host (TCP reset, truncated body, stalled response) and the rogue listener.
It speaks just enough HTTP/1.1 for httpx: keep-alive, Content-Length request bodies, no chunked
requests. Each connection is a task the host tracks so that ``stop`` never waits on a stalled one.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from http import HTTPStatus
from urllib.parse import parse_qsl, unquote

from agent.clock import Clock
from agent.simulator.hostio import Handler, pause, reset_transport
from agent.simulator.tls import TlsFiles
from agent.simulator.wire import ApiRequest, Reply

MAX_HEAD = 64 * 1024
MAX_BODY = 1024 * 1024


class _BadRequest(Exception):
    """The client sent something this server will not parse; the connection is closed."""


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def encode_head(
    status: int, headers: tuple[tuple[str, str], ...], length: int, close: bool
) -> bytes:
    lines = [f"HTTP/1.1 {status} {_reason(status)}"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines.append(f"content-length: {length}")
    lines.append("connection: close" if close else "connection: keep-alive")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class RawHost:
    """One listener whose replies may break HTTP on purpose."""

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
        self._ssl = None if tls is None else tls.server_context()
        self._servers: list[asyncio.Server] = []
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def start(self, sockets: list[socket.socket]) -> None:
        for sock in sockets:
            server = await asyncio.start_server(
                self._on_connection, sock=sock, limit=MAX_HEAD, ssl=self._ssl
            )
            self._servers.append(server)

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        # Aborting the transports ends every connection task through its normal exit path;
        # cancelling them instead would make asyncio's stream callback log the cancellation.
        for writer in list(self._connections.values()):
            writer.transport.abort()
        if self._connections:
            _, stuck = await asyncio.wait(set(self._connections), timeout=5)
            for task in stuck:
                task.cancel()
        for server in self._servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), timeout=5)

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections[task] = writer
        try:
            await self._serve(reader, writer)
        except (
            _BadRequest,
            ConnectionError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ):
            pass
        finally:
            if task is not None:
                self._connections.pop(task, None)
            if not writer.transport.is_closing():
                writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not self._stopping.is_set():
            parsed = await self._read_request(reader)
            if parsed is None:
                return
            request, close = parsed
            reply = self._handler(request)
            if reply.delay > 0 and not await pause(self._clock, reply.delay, self._stopping):
                return
            if not await self._write(reply, reader, writer, close):
                return

    async def _read_request(self, reader: asyncio.StreamReader) -> tuple[ApiRequest, bool] | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                raise _BadRequest("incomplete request head") from exc
            return None
        lines = head[:-4].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            raise _BadRequest("bad request line")
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            raise _BadRequest("chunked request bodies are not supported")
        length = int(headers.get("content-length", "0") or "0")
        if length < 0 or length > MAX_BODY:
            raise _BadRequest("request body too large")
        body = await reader.readexactly(length) if length else b""
        path, _, query = target.partition("?")
        request = ApiRequest(
            method=method,
            path=unquote(path),
            query=dict(parse_qsl(query, keep_blank_values=True)),
            headers=headers,
            body=body,
            host=self.key,
        )
        connection = headers.get("connection", "").lower()
        close = connection == "close" or (version == "HTTP/1.0" and connection != "keep-alive")
        return request, close

    async def _write(
        self, reply: Reply, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, close: bool
    ) -> bool:
        """Send a reply; True when the connection may serve another request."""
        if reply.transport == "reset":
            reset_transport(writer.transport)
            return False
        head = encode_head(reply.status, reply.headers, len(reply.body), close)
        if reply.transport == "truncate":
            writer.write(head + reply.body[: len(reply.body) // 2])
            await writer.drain()
            writer.close()
            return False
        if reply.transport == "stall":
            writer.write(head)
            await writer.drain()
            await self._until_peer_leaves_or_stop(reader)
            return False
        writer.write(head + reply.body)
        await writer.drain()
        return not close

    async def _until_peer_leaves_or_stop(self, reader: asyncio.StreamReader) -> None:
        eof = asyncio.ensure_future(reader.read())
        stop = asyncio.ensure_future(self._stopping.wait())
        _, pending = await asyncio.wait({eof, stop}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
