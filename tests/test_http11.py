"""The agent's HTTP/1.1 transport against scripted servers that send exactly the bytes we choose.

Each case is a server script: what it answers to each request on each connection. The client is
the real ``httpx.AsyncClient`` the agent builds, so the failures are seen as the agent sees them
(and classified by ``agent.classify`` as the agent would).
"""

from __future__ import annotations

import asyncio
import gzip
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import trustme

from agent.classify import classify_exception
from agent.config import Settings
from agent.http11 import MAX_HEAD_BYTES, NO_RESPONSE, Http11Transport, build_http11_client

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


@dataclass
class Server:
    """A loopback server running ``script(reader, writer, connection number)`` per connection."""

    script: Script
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.script(reader, writer, self.connections)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        request = head + (await reader.readexactly(length) if length else b"")
        self.requests.append(request)
        return request


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Script], Awaitable[Server]]]:
    servers: list[Server] = []

    async def start(script: Script) -> Server:
        server = Server(script)
        server.server = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        servers.append(server)
        return server

    yield start
    for server in servers:
        assert server.server is not None
        server.server.close()


def client(timeout: float = 5.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=Http11Transport(), timeout=timeout, trust_env=False)


def answer(body: bytes, *headers: str, status: str = "200 OK") -> bytes:
    lines = [f"HTTP/1.1 {status}", *headers, f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def keep_answering(server_of: Callable[[], Server], reply: bytes, times: int = 100) -> Script:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        for _ in range(times):
            await server_of().read_request(reader)
            writer.write(reply)
            await writer.drain()

    return script


# -- framing and keep-alive ------------------------------------------------------------------------


async def test_sized_responses_reuse_one_connection(
    serve: Callable[[Script], Awaitable[Server]],
) -> None:
    holder: list[Server] = []
    server = await serve(keep_answering(lambda: holder[0], answer(b'{"ok": 1}')))
    holder.append(server)
    async with client() as http:
        for _ in range(3):
            response = await http.get(server.url + "/endpoint/v1/endpoints?pageSize=1&view=basic")
            assert (response.status_code, response.json()) == (200, {"ok": 1})
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"GET /endpoint/v1/endpoints?pageSize=1&view=basic HTTP/1.1\r\n")
    assert b"\r\nHost: 127.0.0.1:" in first


async def test_chunked_bodies_with_extensions_and_trailers_are_reassembled(
    serve: Callable[[Script], Awaitable[Server]],
) -> None:
    reply = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: yes\r\n\r\n"
    )
    holder: list[Server] = []
    server = await serve(keep_answering(lambda: holder[0], reply))
    holder.append(server)
    async with client() as http:
        assert (await http.get(server.url)).content == b"hello world"
        assert (await http.get(server.url)).content == b"hello world"
    assert server.connections == 1, "a complete chunked message keeps the connection"


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\n\r\nuntil close",  # no framing: read to the end of the connection
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 11\r\n\r\nuntil close",
        b"HTTP/1.0 200 OK\r\nContent-Length: 11\r\n\r\nuntil close",
    ],
)
async def test_responses_that_end_the_connection_are_not_pooled(
    serve: Callable[[Script], Awaitable[Server]], reply: bytes
) -> None:
    holder: list[Server] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await holder[0].read_request(reader)
        writer.write(reply)
        await writer.drain()

    server = await serve(script)
    holder.append(server)
    async with client() as http:
        assert (await http.get(server.url)).content == b"until close"
        assert (await http.get(server.url)).content == b"until close"
    assert server.connections == 2


async def test_informational_responses_are_skipped_and_empty_statuses_have_no_body(
    serve: Callable[[Script], Awaitable[Server]],
) -> None:
    holder: list[Server] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await holder[0].read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + answer(b"after"))
        await holder[0].read_request(reader)
        writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n")
        await holder[0].read_request(reader)
        writer.write(b"HTTP/1.1 304 Not Modified\r\n\r\n")
        await holder[0].read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")  # to a HEAD: no body
        await holder[0].read_request(reader)
        writer.write(answer(b"last"))
        await writer.drain()

    server = await serve(script)
    holder.append(server)
    async with client() as http:
        assert (await http.get(server.url)).content == b"after"
        assert (await http.get(server.url)).status_code == 204
        assert (await http.get(server.url)).status_code == 304
        assert (await http.head(server.url)).content == b""
        assert (await http.get(server.url)).content == b"last"
    assert server.connections == 1


async def test_gzip_bodies_are_decoded_by_httpx_and_a_form_body_is_sent_whole(
    serve: Callable[[Script], Awaitable[Server]],
) -> None:
    holder: list[Server] = []
    packed = gzip.compress(b'{"access_token": "x"}')

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await holder[0].read_request(reader)
        writer.write(answer(packed, "Content-Encoding: gzip", "Content-Type: application/json"))
        await writer.drain()

    server = await serve(script)
    holder.append(server)
    async with client() as http:
        response = await http.post(server.url + "/token", data={"grant_type": "client_credentials"})
    assert response.json() == {"access_token": "x"}
    assert server.requests[0].endswith(b"\r\n\r\ngrant_type=client_credentials")
    assert b"Content-Length: 29\r\n" in server.requests[0]


async def test_a_body_left_unread_closes_its_connection(
    serve: Callable[[Script], Awaitable[Server]],
) -> None:
    holder: list[Server] = []
    server = await serve(keep_answering(lambda: holder[0], answer(b"x" * 200_000)))
    holder.append(server)
    async with client() as http:
        async with http.stream("GET", server.url) as response:
            async for _ in response.aiter_bytes():
                break  # the agent stops at max_response_bytes
        assert (await http.get(server.url)).content == b"x" * 200_000
    assert server.connections == 2


async def test_a_pooled_connection_the_server_closed_is_not_reused(
    serve: Callable[[Script], Awaitable[Server]],
) -> None:
    holder: list[Server] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await holder[0].read_request(reader)
        writer.write(answer(b"once"))
        await writer.drain()  # then close: keep-alive was only advertised

    server = await serve(script)
    holder.append(server)
    async with client() as http:
        assert (await http.get(server.url)).content == b"once"
        for _ in range(50):  # let the loop read the server's FIN
            await asyncio.sleep(0)
        assert (await http.get(server.url)).content == b"once"
    assert server.connections == 2


# -- failures, as the agent classifies them -------------------------------------------------------


async def failure(server: Server, within: float = 5.0) -> httpx.HTTPError:
    async with client(within) as http:
        with pytest.raises(httpx.HTTPError) as caught:
            await http.get(server.url)
    return caught.value


def one_reply(holder: list[Server], reply: bytes, then_wait: bool = False) -> Script:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await holder[0].read_request(reader)
        writer.write(reply)
        await writer.drain()
        if then_wait:
            await asyncio.sleep(30)

    return script


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (b"", NO_RESPONSE),
        (b"HTTP/1.1 200 OK\r\nContent-Len", "peer closed connection in the middle of a line"),
        (answer(b"full body")[:-4], "received 5 bytes, expected 9"),
        (b"SMTP ready\r\n\r\n", "malformed status line"),
        (b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\nX: a\x01b\r\n\r\n", "illegal character in header"),
        (b"HTTP/1.1 200 OK\r\n folded: no\r\n\r\n", "malformed header line"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            "both Transfer-Encoding and Content-Length",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "bad Content-Length",
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\n", "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "malformed chunk size"),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "unexpected 101"),
    ],
)
async def test_broken_responses_are_protocol_errors(
    serve: Callable[[Script], Awaitable[Server]], reply: bytes, message: str
) -> None:
    holder: list[Server] = []
    server = await serve(one_reply(holder, reply))
    holder.append(server)
    error = await failure(server)
    assert isinstance(error, httpx.RemoteProtocolError)
    assert message in str(error)
    assert classify_exception(error).error_code == "protocol_error"


async def test_a_head_beyond_the_cap_is_refused(
    serve: Callable[[Script], Awaitable[Server]],
) -> None:
    holder: list[Server] = []
    huge = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n"
    server = await serve(one_reply(holder, huge, then_wait=True))
    holder.append(server)
    error = await failure(server)
    assert "too long" in str(error)


async def test_a_reset_is_a_read_error_and_a_stall_a_read_timeout(
    serve: Callable[[Script], Awaitable[Server]],
) -> None:
    holder: list[Server] = []

    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        import socket
        import struct

        await holder[0].read_request(reader)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    server = await serve(reset)
    holder.append(server)
    error = await failure(server)
    assert isinstance(error, httpx.ReadError | httpx.RemoteProtocolError)
    assert classify_exception(error).error_code == "protocol_error"

    stall_holder: list[Server] = []
    stalled = await serve(one_reply(stall_holder, b"HTTP/1.1 200 OK\r\n", then_wait=True))
    stall_holder.append(stalled)
    error = await failure(stalled, within=0.3)
    assert isinstance(error, httpx.ReadTimeout)
    assert classify_exception(error).error_code == "timeout"


async def test_a_refused_connection_is_a_connect_error() -> None:
    async with client() as http:
        with pytest.raises(httpx.ConnectError) as caught:
            await http.get("http://127.0.0.1:9/")
    assert classify_exception(caught.value).error_code == "connect_error"


async def test_header_injection_is_refused_before_anything_is_sent(
    serve: Callable[[Script], Awaitable[Server]],
) -> None:
    holder: list[Server] = []
    server = await serve(keep_answering(lambda: holder[0], answer(b"")))
    holder.append(server)
    async with client() as http:
        with pytest.raises(httpx.LocalProtocolError):
            await http.get(server.url, headers={"X-Tenant-ID": "a\r\nX-Evil: 1"})
    assert server.requests == []


# -- TLS ----------------------------------------------------------------------------------------


@pytest.fixture
async def tls_server(
    tmp_path: Path,
) -> AsyncIterator[tuple[str, trustme.CA]]:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer(b"secure"))
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    yield f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}", ca
    server.close()


async def test_tls_with_the_configured_ca_bundle_verifies_the_server(
    tls_server: tuple[str, trustme.CA], tmp_path: Path
) -> None:
    url, ca = tls_server
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    settings = Settings(
        ca_bundle=bundle,
        credentials=[{"name": "c", "client_id": "i", "client_secret": "s"}],
    )
    async with build_http11_client(settings) as http:
        response = await http.get(url)
    assert response.content == b"secure"
    assert response.request.headers["user-agent"] == "sophos-central-exporter"


async def test_a_certificate_from_another_ca_is_a_tls_error(
    tls_server: tuple[str, trustme.CA],
) -> None:
    url, _ = tls_server
    async with client() as http:
        with pytest.raises(httpx.ConnectError) as caught:
            await http.get(url)
    assert classify_exception(caught.value).error_code == "tls_error"


async def test_idle_connections_past_their_expiry_are_closed_not_reused(
    serve: Callable[[Script], Awaitable[Server]], monkeypatch: pytest.MonkeyPatch
) -> None:
    holder: list[Server] = []
    server = await serve(keep_answering(lambda: holder[0], answer(b"ok")))
    holder.append(server)
    async with client() as http:
        assert (await http.get(server.url)).content == b"ok"
        monkeypatch.setattr("agent.http11.KEEPALIVE_EXPIRY", 0.0)
        assert (await http.get(server.url)).content == b"ok"
    assert server.connections == 2
