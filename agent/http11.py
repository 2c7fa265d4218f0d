"""A lean HTTP/1.1 transport for the agent's ``httpx.AsyncClient``, on asyncio streams.

Why not httpcore, httpx's default transport: the agent makes one small GET per tenant, thousands
of times, and httpcore spends most of the CPU of such a call on itself. Its pool re-checks every
pooled connection for every request (a ``poll`` system call per idle connection, and a scan that
grows with the square of the pool), every lock goes through anyio (and, since anyio stopped
installing sniffio, through a failing ``import sniffio`` each time: encode/httpcore#1103), and h11
validates each event through several layers. On the benchmark machine (see bench/) a keep-alive
GET through httpx cost about 1.1 ms of CPU with httpcore and about 0.4 ms with this transport,
httpx's own 0.2 ms included: the difference between the agent costing more CPU per probe than
blackbox_exporter and costing less. httpx stays in front, so requests, responses, content
decoding and the exception types are httpx's.

HTTP/1.1 as a client needs little, and every rule that matters for safety is kept:

- Requests: method, path and headers from httpx, refused if any name or value holds a control
  character (no header injection, whatever a tenant id or a token contains); bodies with their
  Content-Length.
- Responses: status line ``HTTP/1.x NNN reason``; header names must be tokens, values may not
  hold control characters, obsolete line folding is refused; the head is capped (64 KiB);
  informational (1xx) responses are skipped; framing follows RFC 9112 section 6.3: no body for
  HEAD, 1xx, 204 and 304, chunked (with trailers) when Transfer-Encoding ends in chunked, exact
  Content-Length (conflicting values refused), else until the server closes. A message with both
  Transfer-Encoding and Content-Length is refused (request smuggling's favourite ambiguity).
- Keep-alive per origin with httpx's expiry (5 s idle); a connection goes back to the pool only
  if its response was read to the end, was framed by length or chunks, came over HTTP/1.1 and
  neither side said ``Connection: close``. A pooled connection the server closed meanwhile is
  dropped before reuse.
- The same exception types and messages as httpcore for the same failures: ``ConnectError``
  (refused, unreachable, and TLS failures with the ``ssl.SSLError`` as their cause),
  ``ConnectTimeout``, ``ReadTimeout``/``WriteTimeout``, ``ReadError``/``WriteError`` (reset),
  ``RemoteProtocolError`` for malformed or cut-short messages, and ``RemoteProtocolError("Server
  disconnected without sending a response.")`` when a connection closes before any response,
  which ``agent.client`` recognises as the keep-alive race.

Not here: HTTP/2, proxies (the agent sets ``trust_env=False``), retries (every call is admitted
by the rate budget; a retry here would be a call nobody counted).
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx

from agent.config import Settings

KEEPALIVE_EXPIRY = 5.0
MAX_IDLE_PER_ORIGIN = 16
MAX_HEAD_BYTES = 64 * 1024
READ_SIZE = 64 * 1024
USER_AGENT = "sophos-central-exporter"
NO_RESPONSE = "Server disconnected without sending a response."

_Origin = tuple[bytes, bytes, int]
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?")
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?")
_REQUEST_UNSAFE = re.compile(rb"[\x00-\x1f\x7f]")


def build_http11_client(settings: Settings) -> httpx.AsyncClient:
    """The agent's connection pool: ``agent.client.build_http_client``'s settings on ``Http11``.

    Redirects are never followed (a redirect could carry the bearer token to a host the allowlist
    never approved), the environment is not consulted for proxies, and TLS trusts the system CAs
    plus ``ca_bundle``.
    """
    verify = ssl.create_default_context()
    if settings.ca_bundle is not None:
        verify.load_verify_locations(cafile=str(settings.ca_bundle))
    return httpx.AsyncClient(
        transport=Http11Transport(verify),
        timeout=httpx.Timeout(settings.request_timeout),
        follow_redirects=False,
        headers={"User-Agent": USER_AGENT},
        trust_env=False,
    )


@dataclass(eq=False)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = 0.0

    def usable(self, now: float) -> bool:
        """Still open, not expired, and not closed by the server while it was idle."""
        return (
            now - self.idle_since < KEEPALIVE_EXPIRY
            and not self.writer.is_closing()
            and not self.reader.at_eof()
        )

    def close(self) -> None:
        self.writer.transport.abort()


@dataclass(frozen=True)
class _Head:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    keep_alive: bool
    length: int | None  # None: chunked or until close
    chunked: bool


class Http11Transport(httpx.AsyncBaseTransport):
    """HTTP/1.1 over asyncio streams, keep-alive per origin; see the module docstring."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self._ssl = ssl_context or ssl.create_default_context()
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        read_timeout = timeouts.get("read")
        origin = _origin(request.url)
        message = await _serialise(request)
        conn = self._take_idle(origin)
        if conn is None:
            conn = await _connect(origin, self._ssl, timeouts.get("connect"))
        try:
            await _write(conn, message, timeouts.get("write"))
            head = await _read_head(conn, request.method, read_timeout)
        except BaseException:
            conn.close()
            raise
        body = _Body(self, origin, conn, head, read_timeout)
        return httpx.Response(
            status_code=head.status,
            headers=head.headers,
            stream=body,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": head.reason},
        )

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for conn in connections:
                conn.close()

    def _take_idle(self, origin: _Origin) -> _Connection | None:
        pool = self._idle.get(origin)
        now = time.monotonic()
        while pool:
            conn = pool.pop()
            if conn.usable(now):
                return conn
            conn.close()
        return None

    def _release(self, origin: _Origin, conn: _Connection) -> None:
        """Back to the pool: the response was read to its end and the connection may stay.

        Connections that expired meanwhile are closed here too (the oldest are first in the
        list), so an origin does not keep sockets half-closed by the server for long.
        """
        pool = self._idle.setdefault(origin, [])
        now = time.monotonic()
        while pool and not pool[0].usable(now):
            pool.pop(0).close()
        if self._closed or conn.writer.is_closing() or len(pool) >= MAX_IDLE_PER_ORIGIN:
            conn.close()
            return
        conn.idle_since = now
        pool.append(conn)


class _Body(httpx.AsyncByteStream):
    """The response body as it arrives; closing it before its end closes the connection."""

    def __init__(
        self,
        transport: Http11Transport,
        origin: _Origin,
        conn: _Connection,
        head: _Head,
        read_timeout: float | None,
    ) -> None:
        self._transport = transport
        self._origin = origin
        self._conn: _Connection | None = conn
        self._head = head
        self._timeout = read_timeout

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None:
            return
        head = self._head
        try:
            if head.chunked:
                async for chunk in _chunked(conn, self._timeout):
                    yield chunk
            elif head.length is not None:
                async for chunk in _sized(conn, head.length, self._timeout):
                    yield chunk
            else:
                while data := await _read(conn, READ_SIZE, self._timeout):
                    yield data
        except BaseException:
            self._conn = None
            conn.close()
            raise
        self._conn = None
        if head.keep_alive:
            self._transport._release(self._origin, conn)
        else:
            conn.close()

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()  # not read to the end: what follows on the wire is unknown


def _origin(url: httpx.URL) -> _Origin:
    scheme = url.raw_scheme
    port = url.port or (443 if scheme == b"https" else 80)
    return (scheme, url.raw_host, port)


async def _serialise(request: httpx.Request) -> bytes:
    parts = [request.method.encode("ascii"), b" ", request.url.raw_path, b" HTTP/1.1\r\n"]
    for name, value in request.headers.raw:
        if not _TOKEN.fullmatch(name) or _REQUEST_UNSAFE.search(value):
            raise httpx.LocalProtocolError(f"illegal header {name!r}")
        parts += [name, b": ", value, b"\r\n"]
    parts.append(b"\r\n")
    if _REQUEST_UNSAFE.search(parts[2]) or b" " in parts[2]:
        raise httpx.LocalProtocolError("illegal request target")
    body = b"".join([chunk async for chunk in request.stream])  # type: ignore[union-attr]
    return b"".join(parts) + body


async def _connect(origin: _Origin, context: ssl.SSLContext, within: float | None) -> _Connection:
    scheme, raw_host, port = origin
    host = raw_host.decode("ascii")
    tls = context if scheme == b"https" else None
    try:
        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_connection(
                host,
                port,
                ssl=tls,
                server_hostname=host if tls is not None else None,
                limit=MAX_HEAD_BYTES,
            )
    except TimeoutError as exc:
        raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out") from exc
    except OSError as exc:  # ssl.SSLError included
        raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
    return _Connection(reader, writer)


async def _write(conn: _Connection, message: bytes, within: float | None) -> None:
    try:
        conn.writer.write(message)
        async with asyncio.timeout(within):
            await conn.writer.drain()
    except TimeoutError as exc:
        raise httpx.WriteTimeout("sending the request timed out") from exc
    except OSError as exc:
        raise httpx.WriteError(str(exc) or type(exc).__name__) from exc


async def _read_head(conn: _Connection, method: str, within: float | None) -> _Head:
    while True:
        raw = await _read_until(conn, b"\r\n\r\n", within, first=True)
        lines = raw[:-4].split(b"\r\n")
        match = _STATUS_LINE.fullmatch(lines[0])
        if match is None:
            raise httpx.RemoteProtocolError(f"malformed status line {lines[0][:100]!r}")
        status = int(match[2])
        headers = _headers(lines[1:])
        if 100 <= status < 200:
            if status == 101:
                raise httpx.RemoteProtocolError("unexpected 101 Switching Protocols")
            continue
        return _framing(status, match[3] or b"", headers, http11=match[1] == b"1", method=method)


def _headers(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    headers = []
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise httpx.RemoteProtocolError(f"malformed header line {line[:100]!r}")
        value = value.strip(b" \t")
        if _CONTROL.search(value):
            raise httpx.RemoteProtocolError(f"illegal character in header {name[:100]!r}")
        headers.append((name, value))
    return headers


def _framing(
    status: int, reason: bytes, headers: list[tuple[bytes, bytes]], *, http11: bool, method: str
) -> _Head:
    connection: list[bytes] = []
    encodings: list[bytes] = []
    lengths: set[bytes] = set()
    for name, value in headers:
        key = name.lower()
        if key == b"connection":
            connection += [v.strip().lower() for v in value.split(b",")]
        elif key == b"transfer-encoding":
            encodings += [v.strip().lower() for v in value.split(b",")]
        elif key == b"content-length":
            lengths.update(v.strip() for v in value.split(b","))
    keep_alive = http11 and b"close" not in connection
    if method == "HEAD" or status in (204, 304):
        return _Head(status, reason, headers, keep_alive, 0, chunked=False)
    if encodings:
        if lengths:
            raise httpx.RemoteProtocolError("both Transfer-Encoding and Content-Length")
        if encodings[-1] == b"chunked":
            return _Head(status, reason, headers, keep_alive, None, chunked=True)
        return _Head(status, reason, headers, False, None, chunked=False)
    if lengths:
        if len(lengths) != 1 or not next(iter(lengths)).isdigit():
            raise httpx.RemoteProtocolError("bad Content-Length")
        length = int(next(iter(lengths)))
        return _Head(status, reason, headers, keep_alive, length, chunked=False)
    return _Head(status, reason, headers, False, None, chunked=False)


async def _sized(conn: _Connection, length: int, within: float | None) -> AsyncIterator[bytes]:
    left = length
    while left > 0:
        data = await _read(conn, min(left, READ_SIZE), within)
        if not data:
            raise httpx.RemoteProtocolError(
                "peer closed connection without sending complete message body: "
                f"received {length - left} bytes, expected {length}"
            )
        left -= len(data)
        yield data


async def _chunked(conn: _Connection, within: float | None) -> AsyncIterator[bytes]:
    while True:
        line = await _read_until(conn, b"\r\n", within)
        match = _CHUNK_SIZE.fullmatch(line[:-2])
        if match is None:
            raise httpx.RemoteProtocolError(f"malformed chunk size {line[:40]!r}")
        size = int(match[1], 16)
        if size == 0:
            while await _read_until(conn, b"\r\n", within) != b"\r\n":
                pass  # trailers are read and dropped
            return
        async for data in _sized(conn, size, within):
            yield data
        if await _read_until(conn, b"\r\n", within) != b"\r\n":
            raise httpx.RemoteProtocolError("chunk not followed by CRLF")


async def _read_until(
    conn: _Connection, separator: bytes, within: float | None, first: bool = False
) -> bytes:
    try:
        async with asyncio.timeout(within):
            return await conn.reader.readuntil(separator)
    except TimeoutError as exc:
        raise httpx.ReadTimeout("reading the response timed out") from exc
    except asyncio.IncompleteReadError as exc:
        if first and not exc.partial:
            raise httpx.RemoteProtocolError(NO_RESPONSE) from exc
        raise httpx.RemoteProtocolError("peer closed connection in the middle of a line") from exc
    except asyncio.LimitOverrunError as exc:
        raise httpx.RemoteProtocolError("response head or chunk line too long") from exc
    except OSError as exc:
        raise httpx.ReadError(str(exc) or type(exc).__name__) from exc


async def _read(conn: _Connection, size: int, within: float | None) -> bytes:
    try:
        async with asyncio.timeout(within):
            return await conn.reader.read(size)
    except TimeoutError as exc:
        raise httpx.ReadTimeout("reading the response timed out") from exc
    except OSError as exc:
        raise httpx.ReadError(str(exc) or type(exc).__name__) from exc
