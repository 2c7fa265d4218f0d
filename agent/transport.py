"""The agent's HTTP client: httpx in front, aiohttp's connection pool underneath.

Why aiohttp: the agent makes one small GET per tenant, thousands of times, and httpx's default
transport (httpcore) spends most of the CPU of such a call on itself; aiohttp's HTTP/1.1 client,
with its parser in C, costs about a third of that (see bench/). httpx stays in front, through
``httpx-aiohttp``'s transport, so requests, responses and the exception types the rest of the
agent sees are httpx's. Neither library decodes the agent's response bodies: aiohttp's
decompression is off under httpx-aiohttp, and ``agent.client`` reads the raw body and decodes it
under ``max_response_bytes`` with ``agent.decoding`` (httpx's own decoders inflate whole chunks).
The ``Accept-Encoding`` sent is exactly what that module decodes.

What this module adds to that transport, and why:

- Exceptions mean what they say. ``httpx-aiohttp`` maps every aiohttp connection error, a server
  closing the connection included, to ``httpx.ConnectTimeout``; here each failure becomes the
  type ``agent.classify`` needs to tell a timeout from a refused connection, a TLS failure, a
  protocol error or a proxy that refused (``ProxyFailure``, with one of ``PROXY_CODES``). A
  connection closed before any response is ``RemoteProtocolError(NO_RESPONSE)``, which
  ``agent.client`` recognises as the keep-alive race and retries once.
- No retry inside the pool. aiohttp silently re-sends an idempotent request whose pooled
  connection was closed; every call must pass the rate budget's admission and be counted, so
  that retry is switched off and ``agent.client`` makes it instead.
- Header injection is refused before a byte is sent, whatever a tenant id or a token contains.
- Proxies go through aiohttp too: ``proxy_url`` (or, with ``proxy_from_environment``,
  ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY`` as httpx reads them) reaches aiohttp as the
  request's proxy. HTTPS is tunnelled with ``CONNECT``, so the bearer token stays inside TLS from
  the agent to Sophos; the proxy sees only the host name and port.

Redirects are never followed (a redirect could carry the bearer token to a host the allowlist
never approved), and TLS trusts the system CAs plus ``ca_bundle``, verified with Python 3.13's
strict X.509 rules on every Python (``agent.tlsclient``).
"""

from __future__ import annotations

import base64
import re
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from agent.classify import PROXY_CODES
from agent.config import Settings
from agent.decoding import ACCEPT_ENCODING
from agent.tlsclient import client_context

USER_AGENT = "sophos-central-exporter"
NO_RESPONSE = "Server disconnected without sending a response."
KEEPALIVE_EXPIRY = 5.0
MAX_CONNECTIONS = 100
DEFAULT_LIMITS = httpx.Limits(max_connections=MAX_CONNECTIONS, keepalive_expiry=KEEPALIVE_EXPIRY)
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


class ProxyFailure(httpx.ProxyError):
    """The proxy refused the call or could not be reached; no byte reached Sophos.

    ``code`` is one of ``agent.classify.PROXY_CODES``. The message names the proxy by host and
    port only, never its credentials.
    """

    def __init__(self, code: str, message: str) -> None:
        assert code in PROXY_CODES
        super().__init__(message)
        self.code = code


def build_http_client(settings: Settings) -> httpx.AsyncClient:
    """The shared connection pool of one agent, with the proxy settings applied."""
    verify = client_context(settings.ca_bundle, strict=settings.tls_x509_strict)
    proxy = settings.proxy_url.get_secret_value() if settings.proxy_url is not None else None
    return AgentHttpClient(
        verify=verify,
        proxy=proxy,
        timeout=httpx.Timeout(settings.request_timeout),
        follow_redirects=False,
        limits=DEFAULT_LIMITS,
        # What agent.decoding decodes, whichever optional decoders httpx would find installed.
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": ACCEPT_ENCODING},
        # httpx reads HTTPS_PROXY/HTTP_PROXY/NO_PROXY only with trust_env; an explicit proxy
        # wins over them. ca_bundle is an SSLContext, so SSL_CERT_FILE changes nothing.
        trust_env=settings.proxy_from_environment,
    )


class AgentHttpClient(httpx.AsyncClient):
    """``httpx.AsyncClient`` whose direct and proxied routes all use ``AgentTransport``."""

    def _init_transport(  # type: ignore[override]
        self,
        verify: ssl.SSLContext | str | bool = True,
        limits: httpx.Limits = DEFAULT_LIMITS,
        transport: httpx.AsyncBaseTransport | None = None,
        **_: Any,
    ) -> httpx.AsyncBaseTransport:
        if transport is not None:
            return transport
        return AgentTransport(verify=verify, limits=limits)

    def _init_proxy_transport(  # type: ignore[override]
        self,
        proxy: httpx.Proxy,
        verify: ssl.SSLContext | str | bool = True,
        limits: httpx.Limits = DEFAULT_LIMITS,
        **_: Any,
    ) -> httpx.AsyncBaseTransport:
        return AgentTransport(verify=verify, limits=limits, proxy=proxy)


class AgentTransport(AiohttpTransport):
    """``httpx-aiohttp``'s transport with the agent's rules; see the module docstring."""

    def __init__(
        self,
        verify: ssl.SSLContext | str | bool = True,
        limits: httpx.Limits = DEFAULT_LIMITS,
        proxy: httpx.Proxy | None = None,
    ) -> None:
        self._proxy_authorization: str | None = None
        if proxy is not None and proxy.auth is not None:
            # As a header, not aiohttp's deprecated proxy_auth: sent with CONNECT only, so the
            # proxy credentials never enter the tunnel to Sophos.
            self._proxy_authorization = _basic(*proxy.auth)
            headers = {**proxy.headers, "Proxy-Authorization": self._proxy_authorization}
            proxy = httpx.Proxy(proxy.url, headers=headers)
        super().__init__(verify=verify, trust_env=False, limits=limits, proxy=proxy)
        self._proxy_name = _host_port(proxy.url) if proxy is not None else ""

    def get_client(self) -> aiohttp.ClientSession:
        """The aiohttp session, built on first use (it needs the running event loop)."""
        connector = aiohttp.TCPConnector(
            ssl=self.ssl_context,
            limit=self.limits.max_connections or 0,
            keepalive_timeout=self.limits.keepalive_expiry,
        )
        session = aiohttp.ClientSession(connector=connector, trust_env=False)
        # aiohttp would re-send a GET whose pooled connection was closed: a call the rate
        # budget never admitted. agent.client makes that retry itself, counted.
        session._retry_connection = False
        return session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        _refuse_unsafe_headers(request)
        if self._proxy_authorization is not None and request.url.scheme == "http":
            # Plain http is forwarded, not tunnelled: the proxy reads this request's headers.
            request.headers["Proxy-Authorization"] = self._proxy_authorization
        with self._translated(body=False):
            response = await super().handle_async_request(request)
        if self.proxy is not None and response.status_code == 407:
            # Only a proxy answers 407 (plain http through a proxy; HTTPS fails at CONNECT).
            await response.aclose()
            raise self._proxy_failure(407, "Proxy Authentication Required")
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _TranslatedStream(response.stream, self)
        return response

    @contextmanager
    def _translated(self, *, body: bool) -> Iterator[None]:
        try:
            yield
        except (httpx.HTTPError, aiohttp.ClientError, ValueError) as exc:
            better = self._translate(exc, body=body)
            if better is None:
                raise
            raise better from _original(exc)

    def _translate(self, exc: Exception, *, body: bool) -> Exception | None:
        """The httpx exception the agent should see for what aiohttp raised, or None: as is."""
        original = _original(exc)
        if isinstance(original, aiohttp.ClientHttpProxyError):
            return self._proxy_failure(original.status, original.message)
        if isinstance(original, aiohttp.ClientProxyConnectionError) or (
            isinstance(original, aiohttp.ClientConnectorError)
            and self._proxy_name == f"{original.host}:{original.port}"  # e.g. its name unknown
        ):
            why = original.os_error.strerror or type(original.os_error).__name__
            return ProxyFailure(
                "proxy_unreachable", f"cannot connect to proxy {self._proxy_name}: {why}"
            )
        if isinstance(original, aiohttp.ConnectionTimeoutError):
            return httpx.ConnectTimeout(str(original) or "connecting timed out")
        if isinstance(original, TimeoutError):
            return httpx.ReadTimeout(str(original) or "reading the response timed out")
        if isinstance(original, aiohttp.ClientSSLError):
            # Raised from aiohttp's error, itself caused by the ssl module's: classify reads
            # tls_error, and agent.tlsclient the handshake's reason, from that chain.
            return httpx.ConnectError(str(original))
        if isinstance(original, aiohttp.ClientConnectorError):
            # Not str(original): it says "ssl:default" even for a plain refused connection.
            why = original.os_error.strerror or type(original.os_error).__name__
            return httpx.ConnectError(f"cannot connect to {original.host}:{original.port}: {why}")
        if isinstance(original, aiohttp.ServerDisconnectedError):
            if body:
                return httpx.RemoteProtocolError("peer closed connection during the body")
            return httpx.RemoteProtocolError(NO_RESPONSE)
        if isinstance(original, aiohttp.ClientPayloadError | aiohttp.ClientResponseError):
            return httpx.RemoteProtocolError(str(original))
        if isinstance(original, aiohttp.ClientOSError | aiohttp.ClientConnectionError):
            return httpx.ReadError(str(original) or type(original).__name__)
        if isinstance(original, ValueError) and not isinstance(exc, httpx.HTTPError):
            return httpx.LocalProtocolError(str(original))
        return None

    def _proxy_failure(self, status: int, reason: str) -> ProxyFailure:
        code = "proxy_auth_required" if status == 407 else "proxy_refused"
        return ProxyFailure(code, f"proxy {self._proxy_name} answered {status} {reason}".strip())


class _TranslatedStream(httpx.AsyncByteStream):
    """The response body, with aiohttp's failures translated like the head's."""

    def __init__(self, inner: httpx.AsyncByteStream, transport: AgentTransport) -> None:
        self._inner = inner
        self._transport = transport

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with self._transport._translated(body=True):
            async for chunk in self._inner:
                yield chunk

    async def aclose(self) -> None:
        with self._transport._translated(body=True):
            await self._inner.aclose()


def _original(exc: BaseException) -> BaseException:
    """What aiohttp raised, under ``httpx-aiohttp``'s own mapping (which keeps it as the cause)."""
    cause = exc.__cause__
    if isinstance(exc, httpx.HTTPError) and isinstance(cause, aiohttp.ClientError | TimeoutError):
        return cause
    return exc


def _refuse_unsafe_headers(request: httpx.Request) -> None:
    """No control character in a header name or value, nor in the request target."""
    for name, value in request.headers.items():
        if _UNSAFE.search(name) or _UNSAFE.search(value):
            raise httpx.LocalProtocolError(f"illegal header {name[:40]!r}")
    if _UNSAFE.search(request.url.raw_path.decode("ascii", "replace")):
        raise httpx.LocalProtocolError("illegal request target")


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def _host_port(url: httpx.URL) -> str:
    """A proxy named by host and port only: its URL may carry credentials."""
    port = url.port or (443 if url.scheme == "https" else 80)
    return f"{url.host}:{port}"
