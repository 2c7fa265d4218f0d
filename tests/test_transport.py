"""The agent's HTTP client (httpx on aiohttp) against loopback servers that send exactly the bytes
we choose.

Each case is a server script: what it answers to each request on each connection. The client is
the one the agent builds (``agent.transport.build_http_client``), so failures are seen as the
agent sees them and classified by ``agent.classify`` as the agent would. The safety properties
that live in ``agent.client`` (one deadline per call, capped bodies, the keep-alive retry, the
allowlist) are checked through a real ``SophosClient`` on the same client.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import ssl
import struct
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import trustme

from agent.classify import classify_exception
from agent.client import CallRecord, SophosClient
from agent.clock import SystemClock
from agent.config import Settings
from agent.hosts import HostPolicy
from agent.ratebudget import RateBudget
from agent.secrets import proxy_secrets
from agent.sophos import Tenant, Token
from agent.transport import (
    NO_RESPONSE,
    AgentTransport,
    ProxyFailure,
    build_http_client,
)

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]
LIMITS = {"1s": 1000, "1m": 100000, "1h": 1000000, "1d": 10000000}


def settings(**extra: Any) -> Settings:
    return Settings(
        credentials=[{"name": "c1", "client_id": "client-id-1", "client_secret": "secret-1"}],
        allowed_api_hosts=["127.0.0.1"],
        rate_limits=LIMITS,
        budget_share=1.0,
        **extra,
    )


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


async def serve_script(
    serve: Callable[[Script], Awaitable[Server]],
    body: Callable[[Server, asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]],
) -> Server:
    """A server whose script may use the server itself (to record requests)."""
    holder: list[Server] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await body(holder[0], reader, writer, n)

    holder.append(await serve(script))
    return holder[0]


def client(timeout: float = 5.0) -> httpx.AsyncClient:
    return build_http_client(settings(request_timeout=timeout))


def answer(body: bytes, *headers: str, status: str = "200 OK") -> bytes:
    lines = [f"HTTP/1.1 {status}", *headers, f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def keep_answering(reply: bytes, times: int = 100) -> Callable[..., Awaitable[None]]:
    async def body(
        server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int
    ) -> None:
        for _ in range(times):
            await server.read_request(reader)
            writer.write(reply)
            await writer.drain()

    return body


def one_reply(reply: bytes, then_wait: bool = False) -> Callable[..., Awaitable[None]]:
    async def body(
        server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int
    ) -> None:
        await server.read_request(reader)
        writer.write(reply)
        await writer.drain()
        if then_wait:
            await asyncio.sleep(30)

    return body


# -- framing and keep-alive ------------------------------------------------------------------------


async def test_sized_responses_reuse_one_connection(
    serve: Callable[[Script], Awaitable[Server]],
) -> None:
    server = await serve_script(serve, keep_answering(answer(b'{"ok": 1}')))
    async with client() as http:
        for _ in range(3):
            response = await http.get(server.url + "/endpoint/v1/endpoints?pageSize=1&view=basic")
            assert (response.status_code, response.json()) == (200, {"ok": 1})
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"GET /endpoint/v1/endpoints?pageSize=1&view=basic HTTP/1.1\r\n")
    assert b"\r\nhost: 127.0.0.1:" in first.lower()
    assert b"\r\nuser-agent: sophos-central-exporter\r\n" in first.lower()


async def test_chunked_bodies_with_extensions_and_trailers_are_reassembled(
    serve: Callable[[Script], Awaitable[Server]],
) -> None:
    reply = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: yes\r\n\r\n"
    )
    server = await serve_script(serve, keep_answering(reply))
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
    server = await serve_script(serve, one_reply(reply))
    async with client() as http:
        assert (await http.get(server.url)).content == b"until close"
        assert (await http.get(server.url)).content == b"until close"
    assert server.connections == 2


async def test_gzip_bodies_are_decoded_by_httpx_and_a_form_body_is_sent_whole(
    serve: Callable[[Script], Awaitable[Server]],
) -> None:
    packed = gzip.compress(b'{"access_token": "x"}')
    reply = answer(packed, "Content-Encoding: gzip", "Content-Type: application/json")
    server = await serve_script(serve, one_reply(reply))
    async with client() as http:
        response = await http.post(server.url + "/token", data={"grant_type": "client_credentials"})
    assert response.json() == {"access_token": "x"}
    assert server.requests[0].endswith(b"\r\n\r\ngrant_type=client_credentials")
    assert b"content-length: 29\r\n" in server.requests[0].lower()


async def test_a_body_left_unread_closes_its_connection(
    serve: Callable[[Script], Awaitable[Server]],
) -> None:
    server = await serve_script(serve, keep_answering(answer(b"x" * 2_000_000)))
    async with client() as http:
        async with http.stream("GET", server.url) as response:
            async for _ in response.aiter_bytes():
                break  # the agent stops at max_response_bytes
        assert (await http.get(server.url)).content == b"x" * 2_000_000
    assert server.connections == 2


async def test_a_pooled_connection_the_server_closed_is_not_reused(
    serve: Callable[[Script], Awaitable[Server]],
) -> None:
    server = await serve_script(serve, one_reply(answer(b"once")))  # keep-alive only advertised
    async with client() as http:
        assert (await http.get(server.url)).content == b"once"
        for _ in range(50):  # let the loop read the server's FIN
            await asyncio.sleep(0)
        assert (await http.get(server.url)).content == b"once"
    assert server.connections == 2


async def test_redirects_are_not_followed(serve: Callable[[Script], Awaitable[Server]]) -> None:
    elsewhere = await serve_script(serve, keep_answering(answer(b"stolen")))
    location = f"Location: {elsewhere.url}/steal"
    server = await serve_script(serve, one_reply(answer(b"", location, status="302 Found")))
    async with client() as http:
        response = await http.get(server.url, headers={"Authorization": "Bearer t0ken-value"})
    assert response.status_code == 302
    assert elsewhere.requests == []


# -- failures, as the agent classifies them -------------------------------------------------------


async def failure(server: Server, within: float = 5.0) -> Exception:
    async with client(within) as http:
        with pytest.raises(Exception) as caught:
            await http.get(server.url)
    assert isinstance(caught.value, Exception)
    return caught.value


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nContent-Len",
        answer(b"full body")[:-4],
        b"SMTP ready\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
async def test_broken_responses_are_protocol_errors(
    serve: Callable[[Script], Awaitable[Server]], reply: bytes
) -> None:
    server = await serve_script(serve, one_reply(reply))
    error = await failure(server)
    assert isinstance(error, httpx.RemoteProtocolError), repr(error)
    assert classify_exception(error).error_code == "protocol_error"


async def test_a_connection_closed_before_any_response_says_so(
    serve: Callable[[Script], Awaitable[Server]],
) -> None:
    server = await serve_script(serve, one_reply(b""))
    error = await failure(server)
    assert isinstance(error, httpx.RemoteProtocolError)
    assert str(error) == NO_RESPONSE
    assert classify_exception(error).error_code == "protocol_error"


async def test_a_reset_is_a_protocol_error_and_a_stall_a_timeout(
    serve: Callable[[Script], Awaitable[Server]],
) -> None:
    async def reset(
        server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int
    ) -> None:
        await server.read_request(reader)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    error = await failure(await serve_script(serve, reset))
    assert isinstance(error, httpx.ReadError | httpx.RemoteProtocolError), repr(error)
    assert classify_exception(error).error_code == "protocol_error"

    stalled = await serve_script(serve, one_reply(b"HTTP/1.1 200 OK\r\n", then_wait=True))
    error = await failure(stalled, within=0.3)
    assert isinstance(error, httpx.TimeoutException), repr(error)
    assert classify_exception(error).error_code == "timeout"


async def test_a_refused_connection_is_a_connect_error() -> None:
    async with client() as http:
        with pytest.raises(httpx.ConnectError) as caught:
            await http.get("http://127.0.0.1:9/")
    assert classify_exception(caught.value).error_code == "connect_error"
    assert "127.0.0.1:9" in str(caught.value)


@pytest.mark.parametrize(
    "headers",
    [{"X-Tenant-ID": "a\r\nX-Evil: 1"}, {"X-Tenant-ID": "a\nb"}, {"X-Tenant-ID": "a\x00b"}],
)
async def test_header_injection_is_refused_before_anything_is_sent(
    serve: Callable[[Script], Awaitable[Server]], headers: dict[str, str]
) -> None:
    server = await serve_script(serve, keep_answering(answer(b"")))
    async with client() as http:
        with pytest.raises(httpx.LocalProtocolError):
            await http.get(server.url, headers=headers)
    assert server.requests == []


def test_the_environment_is_ignored_unless_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://user:envpassword@127.0.0.1:9")
    assert build_http_client(settings()).trust_env is False
    assert build_http_client(settings(proxy_from_environment=True)).trust_env is True
    assert proxy_secrets(settings()) == []
    assert proxy_secrets(settings(proxy_from_environment=True)) == [
        "envpassword",
        "user:envpassword",
    ]
    explicit = settings(proxy_url="http://u:p%40ss-word@proxy.example:3128")
    assert proxy_secrets(explicit) == ["p@ss-word", "u:p@ss-word", "u:p%40ss-word"]


# -- TLS ----------------------------------------------------------------------------------------


@pytest.fixture
async def tls_server() -> AsyncIterator[tuple[str, trustme.CA]]:
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
    async with build_http_client(settings(ca_bundle=bundle)) as http:
        response = await http.get(url)
    assert response.content == b"secure"


async def test_a_certificate_from_another_ca_is_a_tls_error(
    tls_server: tuple[str, trustme.CA],
) -> None:
    url, _ = tls_server
    async with client() as http:
        with pytest.raises(httpx.ConnectError) as caught:
            await http.get(url)
    assert classify_exception(caught.value).error_code == "tls_error"


# -- the client's promises on this transport ------------------------------------------------------


class Calls:
    def __init__(self) -> None:
        self.records: list[CallRecord] = []

    def observe_call(self, record: CallRecord) -> None:
        self.records.append(record)


def sophos_client(
    base: str, **extra: Any
) -> tuple[SophosClient, RateBudget, Calls, httpx.AsyncClient]:
    cfg = settings(auth_url=base + "/token", api_url=base, **extra)
    clock = SystemClock()
    budget = RateBudget(cfg.rate_limits, cfg.budget_share, clock)
    calls = Calls()
    http = build_http_client(cfg)
    policy = HostPolicy(cfg.allowed_api_hosts, fixed_urls=(cfg.auth_url, cfg.api_url))
    sophos = SophosClient(cfg, cfg.credentials[0], http, budget, [calls], clock, policy)
    now = clock.time()
    sophos._token = Token("t0ken-value", issued_at=now, expires_at=now + 3600)
    return sophos, budget, calls, http


async def test_a_pooled_connection_dropped_at_reuse_is_retried_once_and_counted(
    serve: Callable[[Script], Awaitable[Server]],
) -> None:
    async def script(
        server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        await server.read_request(reader)
        if n == 1:
            writer.write(answer(b'{"items": []}'))
            await writer.drain()
            await server.read_request(reader)  # the reused connection: closed, no answer
            return
        writer.write(answer(b'{"items": []}'))
        await writer.drain()

    server = await serve_script(serve, script)
    sophos, budget, calls, http = sophos_client(server.url)
    tenant = Tenant(id="t1", name="T", api_host=server.url)
    async with http:
        assert (await sophos.probe_tenant(tenant)).ok
        outcome = await sophos.probe_tenant(tenant)
    assert outcome.ok
    assert len(server.requests) == 3, "the pool itself never re-sends a request"
    assert [r.outcome.error_code or "ok" for r in calls.records] == ["ok", "protocol_error", "ok"]
    assert budget.calls("c1")["1m"] == 3, "every attempt passed admission"


async def test_a_trickling_server_is_cut_off_at_request_timeout(
    serve: Callable[[Script], Awaitable[Server]],
) -> None:
    async def trickle(
        server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int
    ) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        for _ in range(200):  # one byte every 50 ms: no read ever waits long
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.05)

    server = await serve_script(serve, trickle)
    sophos, _, _, http = sophos_client(server.url, request_timeout="0.6s")
    started = time.monotonic()
    async with http:
        outcome = await sophos.probe_tenant(Tenant(id="t1", name="T", api_host=server.url))
    assert (outcome.status_code, outcome.error_code) == (0, "timeout")
    assert time.monotonic() - started < 3


async def test_a_huge_body_is_read_only_up_to_max_response_bytes(
    serve: Callable[[Script], Awaitable[Server]],
) -> None:
    sent = 20_000_000
    server = await serve_script(serve, keep_answering(answer(b"x" * sent)))
    sophos, _, calls, http = sophos_client(server.url, max_response_bytes=4096)
    async with http:
        outcome = await sophos.probe_tenant(Tenant(id="t1", name="T", api_host=server.url))
    assert outcome.error_code == "invalid_response"
    assert "exceeds max_response_bytes" in outcome.message
    assert len(calls.records[0].raw_body) == 4096


async def test_a_host_outside_the_allowlist_receives_no_byte(
    serve: Callable[[Script], Awaitable[Server]],
) -> None:
    server = await serve_script(serve, keep_answering(answer(b"{}")))
    sophos, _, _, http = sophos_client("https://api.central.sophos.com")
    outside = server.url.replace("127.0.0.1", "localhost")
    async with http:
        outcome = await sophos.probe_tenant(Tenant(id="t1", name="T", api_host=outside))
    assert outcome.error_code == "host_not_allowed"
    assert server.connections == 0


def test_a_proxy_whose_name_does_not_resolve_is_unreachable_not_a_sophos_failure() -> None:
    from aiohttp.client_reqrep import ConnectionKey

    transport = AgentTransport(proxy=httpx.Proxy("http://u:proxy-pass-77@proxy.invalid:3128"))
    key = ConnectionKey("proxy.invalid", 3128, False, True, None, None, None)
    dns = aiohttp.ClientConnectorDNSError(key, OSError(-2, "Name or service not known"))
    translated = transport._translate(httpx.ConnectError("x"), body=False) is None
    assert translated, "an httpx error without an aiohttp cause stays as it is"
    error = transport._translate(dns, body=False)
    assert isinstance(error, ProxyFailure)
    assert classify_exception(error).error_code == "proxy_unreachable"
    assert str(error) == "cannot connect to proxy proxy.invalid:3128: Name or service not known"


async def test_through_a_proxy_the_allowlist_still_applies_to_the_final_host(
    serve: Callable[[Script], Awaitable[Server]],
) -> None:
    proxy = await serve_script(serve, keep_answering(answer(b"{}")))
    sophos, _, _, http = sophos_client("https://api.central.sophos.com", proxy_url=proxy.url)
    async with http:
        outcome = await sophos.probe_tenant(
            Tenant(id="t1", name="T", api_host="https://collector.example")
        )
    assert outcome.error_code == "host_not_allowed"
    assert proxy.connections == 0, "not even a CONNECT for a host outside the allowlist"


async def test_proxy_url_wins_over_the_environment(
    serve: Callable[[Script], Awaitable[Server]], monkeypatch: pytest.MonkeyPatch
) -> None:
    refuse = one_reply(answer(b"", status="403 Forbidden"))
    configured = await serve_script(serve, refuse)
    from_env = await serve_script(serve, refuse)
    monkeypatch.setenv("HTTPS_PROXY", from_env.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    cfg = settings(proxy_url=configured.url, proxy_from_environment=True)
    async with build_http_client(cfg) as http:
        with pytest.raises(ProxyFailure) as caught:
            await http.get("https://api-eu01.central.sophos.com/endpoint/v1/endpoints")
    assert classify_exception(caught.value).error_code == "proxy_refused"
    assert configured.requests[0].startswith(b"CONNECT api-eu01.central.sophos.com:443 ")
    assert from_env.connections == 0


async def test_informational_responses_are_skipped_and_empty_statuses_have_no_body(
    serve: Callable[[Script], Awaitable[Server]],
) -> None:
    async def script(
        server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int
    ) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + answer(b"after"))
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 304 Not Modified\r\n\r\n")
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")  # to a HEAD: no body
        await server.read_request(reader)
        writer.write(answer(b"last"))
        await writer.drain()

    server = await serve_script(serve, script)
    async with client() as http:
        assert (await http.get(server.url)).content == b"after"
        assert (await http.get(server.url)).status_code == 204
        assert (await http.get(server.url)).status_code == 304
        assert (await http.head(server.url)).content == b""
        assert (await http.get(server.url)).content == b"last"
    assert server.connections == 1


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000,
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 1_000_000,
        b"HTTP/1.1 302 Found\r\nLocation: https://evil.example/" + b"a" * 1_000_000,
    ],
    ids=["70KB-header", "1MB-header", "1MB-location"],
)
async def test_a_huge_response_head_is_refused(
    serve: Callable[[Script], Awaitable[Server]], head: bytes
) -> None:
    huge = head + b"\r\n\r\n"
    error = await failure(await serve_script(serve, one_reply(huge, then_wait=True)))
    assert isinstance(error, httpx.RemoteProtocolError), repr(error)
    assert classify_exception(error).error_code == "protocol_error"


# -- content codings: decoded by the agent, under max_response_bytes -----------------------------

ITEMS = b'{"items": [], "pages": {}}'


def deflated(data: bytes, wrapped: bool = True) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


@pytest.mark.parametrize(
    ("coding", "body"),
    [
        ("gzip", gzip.compress(ITEMS)),
        ("x-gzip", gzip.compress(ITEMS)),
        ("deflate", deflated(ITEMS)),
        ("deflate", deflated(ITEMS, wrapped=False)),  # raw deflate, as some servers send it
        ("gzip, gzip", gzip.compress(gzip.compress(ITEMS))),
        ("deflate, identity, gzip", gzip.compress(deflated(ITEMS))),
        ("GZIP", gzip.compress(ITEMS)),
    ],
    ids=["gzip", "x-gzip", "deflate", "raw-deflate", "gzip-gzip", "deflate-gzip", "upper"],
)
async def test_content_codings_the_agent_asked_for_are_decoded(
    serve: Callable[[Script], Awaitable[Server]], coding: str, body: bytes
) -> None:
    reply = answer(body, f"Content-Encoding: {coding}", "Content-Type: application/json")
    server = await serve_script(serve, keep_answering(reply))
    sophos, _, calls, http = sophos_client(server.url)
    async with http:
        outcome = await sophos.probe_tenant(Tenant(id="t1", name="T", api_host=server.url))
    assert outcome.ok and outcome.error_code == "", outcome
    assert calls.records[0].raw_body == ITEMS
    assert b"accept-encoding: gzip, deflate\r\n" in server.requests[0].lower()


@pytest.mark.parametrize(
    ("coding", "body", "why"),
    [
        ("br", b"\x1b\x00\x00garbage", "(it asks for gzip, deflate) (Content-Encoding: br)"),
        ("zstd", b"(\xb5/\xfd garbage", "(Content-Encoding: zstd)"),
        ("gzip, br", b"whatever", "did not ask for (it asks for gzip, deflate)"),
        ("gzip, gzip, gzip, gzip", b"x", "stacks 4 content codings"),
        ("compress\x1b[2J", b"x", "(Content-Encoding: compress [2J)"),
    ],
    ids=["br", "zstd", "gzip-br", "four-deep", "escape"],
)
async def test_content_codings_never_asked_for_are_refused_unread(
    serve: Callable[[Script], Awaitable[Server]], coding: str, body: bytes, why: str
) -> None:
    reply = answer(body, f"Content-Encoding: {coding}")
    server = await serve_script(serve, keep_answering(reply))
    sophos, _, calls, http = sophos_client(server.url)
    async with http:
        outcome = await sophos.probe_tenant(Tenant(id="t1", name="T", api_host=server.url))
    assert (outcome.status_code, outcome.error_code) == (200, "invalid_response")
    assert why in outcome.message and outcome.message.isprintable()
    assert calls.records[0].outcome.error_code == "invalid_response", "counted as such"
    assert calls.records[0].raw_body == b""


async def test_a_gzip_body_with_data_after_its_end_is_a_protocol_error(
    serve: Callable[[Script], Awaitable[Server]],
) -> None:
    reply = answer(gzip.compress(ITEMS) + b"trailing", "Content-Encoding: gzip")
    server = await serve_script(serve, keep_answering(reply))
    sophos, _, _, http = sophos_client(server.url)
    async with http:
        outcome = await sophos.probe_tenant(Tenant(id="t1", name="T", api_host=server.url))
    assert (outcome.status_code, outcome.error_code) == (0, "protocol_error")
    assert "after the end of its gzip stream" in outcome.message


@pytest.mark.parametrize("coding", ["", "gzip", "gzip, gzip"])
async def test_max_response_bytes_is_the_decoded_size_to_the_byte(
    serve: Callable[[Script], Awaitable[Server]], coding: str
) -> None:
    cap = 4096
    exact = b'{"items": [], "pages": {}, "pad": "' + b"p" * (cap - 37) + b'"}'
    assert len(exact) == cap
    over = exact[:-2] + b'p"}'

    def packed(data: bytes) -> bytes:
        for _ in coding.split(", ") if coding else ():
            data = gzip.compress(data)
        return data

    headers = [f"Content-Encoding: {coding}"] if coding else []

    async def script(
        server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int
    ) -> None:
        for body in (exact, over):
            await server.read_request(reader)
            writer.write(answer(packed(body), *headers))
            await writer.drain()

    server = await serve_script(serve, script)
    sophos, _, calls, http = sophos_client(server.url, max_response_bytes=cap)
    tenant = Tenant(id="t1", name="T", api_host=server.url)
    async with http:
        assert (await sophos.probe_tenant(tenant)).ok
        outcome = await sophos.probe_tenant(tenant)
    assert outcome.error_code == "invalid_response"
    assert f"exceeds max_response_bytes ({cap} bytes" in outcome.message
    assert [len(r.raw_body) for r in calls.records] == [cap, cap]
    assert [r.body_complete for r in calls.records] == [True, False]
