"""``--web.config.file``: exporter-toolkit TLS, basic auth and headers, against a real uvicorn.

Certificates come from trustme; servers listen on 127.0.0.1 port 0; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
import textwrap
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
import trustme
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from agent.clock import FakeClock
from agent.configfile import ConfigError
from agent.server import bind_socket, make_http_server
from agent.web.auth import WebSecurityMiddleware
from agent.web.listener import make_uvicorn_server
from agent.web.loading import load_web_config, parse_web_config
from agent.web.schema import ClientAuthType, WebConfig
from agent.web.tls_context import build_ssl_context

PASSWORD = "correct horse battery staple"
ENDPOINTS = ("/metrics", "/healthz", "/")
STARTUP_TIMEOUT = 10.0


def _hash(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


ALICE_HASH = _hash(PASSWORD)


@dataclass
class Pki:
    dir: Path
    ca: trustme.CA
    client_ca: trustme.CA
    client_cert: trustme.LeafCert
    stranger_cert: trustme.LeafCert


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """Server cert for 127.0.0.1/localhost, a separate client CA and a client cert signed by it."""
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.cert_chain_pems[0].write_to_path(str(tmp_path / "server.pem"))
    server.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    ca.issue_cert("other.example").private_key_pem.write_to_path(str(tmp_path / "other.key"))
    client_ca = trustme.CA()
    client_ca.cert_pem.write_to_path(str(tmp_path / "client-ca.pem"))
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    return Pki(
        dir=tmp_path,
        ca=ca,
        client_ca=client_ca,
        client_cert=client_ca.issue_cert("prometheus@example.test"),
        stranger_cert=trustme.CA().issue_cert("intruder@example.test"),
    )


def write_config(pki: Pki, text: str) -> Path:
    path = pki.dir / "web.yml"
    path.write_text(textwrap.dedent(text))
    return path


def client_context(
    pki: Pki,
    *,
    max_version: ssl.TLSVersion | None = None,
    cert: trustme.LeafCert | None = None,
) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    pki.ca.configure_trust(ctx)
    if max_version is not None:
        ctx.maximum_version = max_version
    if cert is not None:
        cert.configure_cert(ctx)
    return ctx


def make_app(lifespan_events: list[str] | None = None) -> Starlette:
    async def metrics(request: Request) -> Response:
        return PlainTextResponse("sophos_central_exporter_build_info 1\n")

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def index(request: Request) -> Response:
        # The app sets its own X-Frame-Options; the operator's web config must win.
        return PlainTextResponse("landing\n", headers={"X-Frame-Options": "allow-from-app"})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if lifespan_events is not None:
            lifespan_events.append("startup")
        yield
        if lifespan_events is not None:
            lifespan_events.append("shutdown")

    return Starlette(
        routes=[Route("/metrics", metrics), Route("/healthz", healthz), Route("/", index)],
        lifespan=lifespan,
    )


@asynccontextmanager
async def serving(web_config: WebConfig | None, app: Starlette | None = None) -> AsyncIterator[int]:
    """Run the agent's HTTP server on 127.0.0.1:0 for the duration of the block; yield its port."""
    server = make_http_server(app or make_app(), bind_socket("127.0.0.1", 0), web_config)
    await server.start(STARTUP_TIMEOUT)
    try:
        yield server.port
    finally:
        await server.stop()


async def raw_get(port: int, ctx: ssl.SSLContext, path: str = "/healthz") -> bytes:
    """One HTTP/1.1 request over a TLS connection; TLS failures surface as ``ssl.SSLError``."""
    async with asyncio.timeout(STARTUP_TIMEOUT):
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1"
        )
        try:
            request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            writer.write(request.encode())
            await writer.drain()
            return await reader.read()
        finally:
            writer.close()
            with suppress(ssl.SSLError, ConnectionError):
                await writer.wait_closed()


async def handshake(port: int, ctx: ssl.SSLContext) -> str:
    """Only the TLS handshake; returns the negotiated version.

    A refused handshake raises ``ssl.SSLError`` or, because asyncio's server side closes the
    connection without flushing its TLS alert (CPython's sslproto), ``ConnectionError``.
    """
    async with asyncio.timeout(STARTUP_TIMEOUT):
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1"
        )
    version = writer.get_extra_info("ssl_object").version()
    writer.close()
    with suppress(ssl.SSLError, ConnectionError):
        await writer.wait_closed()
    assert isinstance(version, str)
    return version


async def answer_or_nothing(port: int, ctx: ssl.SSLContext) -> bytes:
    """The server's answer, or b"" when the connection was refused or dropped."""
    try:
        return await raw_get(port, ctx)
    except (ssl.SSLError, ConnectionError):
        return b""


REFUSED = (ssl.SSLError, ConnectionError)


def auth(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


SECURE_CONFIG = f"""
    tls_server_config:
      cert_file: server.pem
      key_file: server.key
    http_server_config:
      headers:
        Strict-Transport-Security: max-age=31536000
        X-Frame-Options: deny
        X-Content-Type-Options: nosniff
        Content-Security-Policy: default-src 'self'
    basic_auth_users:
      alice: {ALICE_HASH}
"""


# --------------------------------------------------------------------------------------------
# Basic auth and headers over real TLS


async def test_basic_auth_guards_every_endpoint_over_tls(pki: Pki) -> None:
    cfg = load_web_config(write_config(pki, SECURE_CONFIG))
    async with (
        serving(cfg) as port,
        httpx.AsyncClient(
            base_url=f"https://127.0.0.1:{port}", verify=client_context(pki)
        ) as client,
    ):
        for path in ENDPOINTS:
            anonymous = await client.get(path)
            assert anonymous.status_code == 401, path
            assert anonymous.headers["WWW-Authenticate"] == (
                'Basic realm="sophos-central-exporter", charset="UTF-8"'
            )
            wrong = await client.get(path, headers=auth("alice", "wrong"))
            assert wrong.status_code == 401, path
            stranger = await client.get(path, headers=auth("mallory", PASSWORD))
            assert stranger.status_code == 401, path
            right = await client.get(path, headers=auth("alice", PASSWORD))
            assert right.status_code == 200, path
        metrics = await client.get("/metrics", headers=auth("alice", PASSWORD))
        assert metrics.text == "sophos_central_exporter_build_info 1\n"


async def test_configured_headers_are_on_every_response_including_401(pki: Pki) -> None:
    cfg = load_web_config(write_config(pki, SECURE_CONFIG))
    expected = {
        "strict-transport-security": "max-age=31536000",
        "x-frame-options": "deny",
        "x-content-type-options": "nosniff",
        "content-security-policy": "default-src 'self'",
    }
    async with (
        serving(cfg) as port,
        httpx.AsyncClient(
            base_url=f"https://127.0.0.1:{port}", verify=client_context(pki)
        ) as client,
    ):
        for path in ENDPOINTS:
            for headers in ({}, auth("alice", PASSWORD)):
                response = await client.get(path, headers=headers)
                for name, value in expected.items():
                    assert response.headers.get_list(name) == [value], (path, name)


async def test_plain_http_without_web_config(pki: Pki) -> None:
    async with (
        serving(None) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
    ):
        for path in ENDPOINTS:
            assert (await client.get(path)).status_code == 200
        assert "strict-transport-security" not in (await client.get("/")).headers


async def test_basic_auth_without_tls_serves_plain_http_with_auth(pki: Pki) -> None:
    cfg = load_web_config(write_config(pki, f"basic_auth_users:\n  alice: {ALICE_HASH}\n"))
    assert cfg.tls is None
    async with (
        serving(cfg) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
    ):
        assert (await client.get("/metrics")).status_code == 401
        assert (await client.get("/metrics", headers=auth("alice", PASSWORD))).status_code == 200


async def test_lifespan_passes_through_the_middleware(pki: Pki) -> None:
    events: list[str] = []
    cfg = load_web_config(write_config(pki, SECURE_CONFIG))
    async with serving(cfg, make_app(events)):
        assert events == ["startup"]
    assert events == ["startup", "shutdown"]


async def test_inline_cert_and_key_are_served(pki: Pki) -> None:
    cert = (pki.dir / "server.pem").read_text()
    key = (pki.dir / "server.key").read_text()
    body = "tls_server_config:\n  cert: |\n" + textwrap.indent(cert, "    ")
    body += "  key: |\n" + textwrap.indent(key, "    ")
    cfg = load_web_config(write_config(pki, body))
    async with serving(cfg) as port:
        response = await raw_get(port, client_context(pki))
    assert response.startswith(b"HTTP/1.1 200 ")


# --------------------------------------------------------------------------------------------
# TLS versions


async def test_min_version_tls13_refuses_a_tls12_client_at_the_handshake(pki: Pki) -> None:
    cfg = load_web_config(
        write_config(
            pki,
            """
            tls_server_config:
              cert_file: server.pem
              key_file: server.key
              min_version: TLS13
            """,
        )
    )
    async with serving(cfg) as port:
        tls12_only = client_context(pki, max_version=ssl.TLSVersion.TLSv1_2)
        with pytest.raises(REFUSED):
            await handshake(port, tls12_only)
        async with httpx.AsyncClient(verify=tls12_only) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(f"https://127.0.0.1:{port}/healthz")
        # A TLS 1.3 client still gets in.
        assert await handshake(port, client_context(pki)) == "TLSv1.3"
        assert (await raw_get(port, client_context(pki))).startswith(b"HTTP/1.1 200 ")


async def test_default_min_version_is_tls12_and_accepts_a_tls12_client(pki: Pki) -> None:
    cfg = load_web_config(
        write_config(pki, "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n")
    )
    ctx = build_ssl_context(cfg)
    assert ctx is not None
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.maximum_version == ssl.TLSVersion.TLSv1_3
    async with serving(cfg) as port:
        tls12_only = client_context(pki, max_version=ssl.TLSVersion.TLSv1_2)
        assert await handshake(port, tls12_only) == "TLSv1.2"
        async with httpx.AsyncClient(verify=tls12_only) as client:
            assert (await client.get(f"https://127.0.0.1:{port}/healthz")).status_code == 200


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
async def test_a_tls11_client_is_refused_by_default(pki: Pki) -> None:
    cfg = load_web_config(
        write_config(pki, "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n")
    )
    ctx = client_context(pki)
    ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    async with serving(cfg) as port:
        with pytest.raises(REFUSED):
            await handshake(port, ctx)


def test_make_uvicorn_server_installs_our_ssl_context(pki: Pki) -> None:
    """uvicorn builds config.ssl in Config.load(); ours must replace it and survive serve()."""
    cfg = load_web_config(write_config(pki, SECURE_CONFIG))
    server = make_uvicorn_server(WebSecurityMiddleware(make_app(), cfg), build_ssl_context(cfg))
    assert server.config.loaded  # so Server.serve() will not call load() again
    assert isinstance(server.config.ssl, ssl.SSLContext)
    assert server.config.ssl.minimum_version == ssl.TLSVersion.TLSv1_2
    plain = make_uvicorn_server(make_app(), None)
    assert plain.config.ssl is None


# --------------------------------------------------------------------------------------------
# Client certificates

MTLS_CONFIG = """
    tls_server_config:
      cert_file: server.pem
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert
      client_ca_file: client-ca.pem
"""


async def test_require_and_verify_refuses_a_client_without_a_certificate(pki: Pki) -> None:
    cfg = load_web_config(write_config(pki, MTLS_CONFIG))
    async with serving(cfg) as port:
        # TLS 1.2: the refusal is part of the handshake itself.
        with pytest.raises(REFUSED):
            await handshake(port, client_context(pki, max_version=ssl.TLSVersion.TLSv1_2))
        # TLS 1.3: the client's side of the handshake completes before the server checks the
        # certificate, so the refusal shows as a connection dropped before any HTTP answer.
        assert await answer_or_nothing(port, client_context(pki)) == b""
        async with httpx.AsyncClient(verify=client_context(pki)) as client:
            with pytest.raises(httpx.TransportError):
                await client.get(f"https://127.0.0.1:{port}/healthz")


async def test_require_and_verify_refuses_a_certificate_from_another_ca(pki: Pki) -> None:
    cfg = load_web_config(write_config(pki, MTLS_CONFIG))
    async with serving(cfg) as port:
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            ctx = client_context(pki, max_version=version, cert=pki.stranger_cert)
            assert await answer_or_nothing(port, ctx) == b"", version


async def test_require_and_verify_accepts_a_certificate_signed_by_the_client_ca(pki: Pki) -> None:
    cfg = load_web_config(write_config(pki, MTLS_CONFIG))
    async with serving(cfg) as port:
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            ctx = client_context(pki, max_version=version, cert=pki.client_cert)
            assert (await raw_get(port, ctx)).startswith(b"HTTP/1.1 200 ")
        ctx = client_context(pki, cert=pki.client_cert)
        async with httpx.AsyncClient(verify=ctx) as client:
            assert (await client.get(f"https://127.0.0.1:{port}/metrics")).status_code == 200


@pytest.mark.parametrize(
    ("auth_type", "with_ca", "verify_mode"),
    [
        ("NoClientCert", False, ssl.CERT_NONE),
        ("RequestClientCert", False, ssl.CERT_NONE),
        ("RequireAnyClientCert", True, ssl.CERT_REQUIRED),
        ("RequireClientCert", True, ssl.CERT_REQUIRED),
        ("VerifyClientCertIfGiven", True, ssl.CERT_OPTIONAL),
        ("RequireAndVerifyClientCert", True, ssl.CERT_REQUIRED),
    ],
)
def test_client_auth_types_map_to_ssl_verify_modes(
    pki: Pki, auth_type: str, with_ca: bool, verify_mode: ssl.VerifyMode
) -> None:
    ca_line = "  client_ca_file: client-ca.pem\n" if with_ca else ""
    cfg = load_web_config(
        write_config(
            pki,
            "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n"
            f"  client_auth_type: {auth_type}\n{ca_line}",
        )
    )
    ctx = build_ssl_context(cfg)
    assert ctx is not None
    assert ctx.verify_mode == verify_mode


def test_require_any_client_cert_warns_that_it_verifies(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="agent.web.schema"):
        cfg = load_web_config(
            write_config(
                pki,
                "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n"
                "  client_auth_type: RequireAnyClientCert\n  client_ca_file: client-ca.pem\n",
            )
        )
    assert cfg.tls is not None
    assert cfg.tls.client_auth_type is ClientAuthType.REQUIRE_ANY_CLIENT_CERT
    assert "enforced as RequireAndVerifyClientCert" in caplog.text


def test_cipher_suites_are_mapped_to_openssl(pki: Pki) -> None:
    cfg = load_web_config(
        write_config(
            pki,
            """
            tls_server_config:
              cert_file: server.pem
              key_file: server.key
              cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, TLS_AES_128_GCM_SHA256]
            """,
        )
    )
    ctx = build_ssl_context(cfg)
    assert ctx is not None
    tls12 = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12 == {"ECDHE-ECDSA-AES256-GCM-SHA384"}


# --------------------------------------------------------------------------------------------
# Loading: valid and invalid files


def test_empty_file_means_plain_http_without_auth(pki: Pki) -> None:
    cfg = load_web_config(write_config(pki, ""))
    assert cfg.tls is None
    assert cfg.basic_auth_users == {}
    assert build_ssl_context(cfg) is None


def test_full_file_is_read(pki: Pki) -> None:
    cfg = load_web_config(
        write_config(
            pki,
            f"""
            tls_server_config:
              cert_file: server.pem
              key_file: server.key
              min_version: TLS13
              max_version: TLS13
              prefer_server_cipher_suites: false
            http_server_config:
              http2: false
              headers:
                X-XSS-Protection: "1; mode=block"
                X-Frame-Options: ""
            basic_auth_users:
              alice: {ALICE_HASH}
              bob: {ALICE_HASH.replace("$2b$", "$2y$")}
            rate_limit:
              interval: 1m30s
              burst: 5
            """,
        )
    )
    assert cfg.tls is not None
    assert cfg.tls.cert_file == pki.dir / "server.pem"
    assert cfg.tls.min_version == cfg.tls.max_version == ssl.TLSVersion.TLSv1_3
    assert cfg.http.http2 is False
    assert cfg.http.headers == (("X-XSS-Protection", "1; mode=block"),)
    assert set(cfg.basic_auth_users) == {"alice", "bob"}
    assert cfg.request_limit is not None
    assert cfg.request_limit.interval == 90.0
    assert cfg.request_limit.burst == 5
    assert ALICE_HASH not in repr(cfg)


TLS_PAIR = "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n"

INVALID_CONFIGS: list[tuple[str, str, str]] = [
    (
        "unknown top-level key",
        "tls_config: {}\n",
        "tls_config: unknown key (did you mean tls_server_config?)",
    ),
    (
        "unknown top-level key, nothing alike",
        "users: {}\n",
        "users: unknown key (allowed: tls_server_config, http_server_config, "
        "basic_auth_users, rate_limit)",
    ),
    (
        "unknown TLS key",
        "tls_server_config:\n  certfile: server.pem\n",
        "tls_server_config.certfile: unknown key (did you mean cert_file?)",
    ),
    (
        "section is a string",
        "tls_server_config: yes please\n",
        "tls_server_config: must be a mapping",
    ),
    (
        "missing cert file",
        "tls_server_config:\n  cert_file: missing.pem\n  key_file: server.key\n",
        "tls_server_config.cert_file: file not found: {dir}/missing.pem",
    ),
    (
        "cert file is a directory",
        "tls_server_config:\n  cert_file: .\n  key_file: server.key\n",
        "tls_server_config.cert_file: not a regular file: {dir}",
    ),
    (
        "key without cert",
        "tls_server_config:\n  key_file: server.key\n",
        "tls_server_config: missing one of cert or cert_file",
    ),
    (
        "cert without key",
        "tls_server_config:\n  cert_file: server.pem\n",
        "tls_server_config: missing one of key or key_file",
    ),
    (
        "client auth alone",
        "tls_server_config:\n  client_auth_type: NoClientCert\n",
        "tls_server_config: missing one of cert or cert_file",
    ),
    (
        "cert both inline and file",
        TLS_PAIR + "  cert: inline\n",
        "tls_server_config.cert: set either cert or cert_file, not both",
    ),
    (
        "unknown client_auth_type",
        TLS_PAIR + "  client_auth_type: RequireClientCertPlease\n",
        "tls_server_config.client_auth_type: unknown value 'RequireClientCertPlease' (expected "
        "one of NoClientCert, RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven, "
        "RequireAndVerifyClientCert)",
    ),
    (
        "verify mode without CA",
        TLS_PAIR + "  client_auth_type: RequireAndVerifyClientCert\n",
        "tls_server_config.client_ca_file: required when client_auth_type is "
        "RequireAndVerifyClientCert (or give client_ca inline)",
    ),
    (
        "verify-if-given without CA",
        TLS_PAIR + "  client_auth_type: VerifyClientCertIfGiven\n",
        "tls_server_config.client_ca_file: required when client_auth_type is "
        "VerifyClientCertIfGiven (or give client_ca inline)",
    ),
    (
        "CA without a client auth type",
        TLS_PAIR + "  client_ca_file: client-ca.pem\n",
        "tls_server_config.client_ca_file: a client CA is set but client_auth_type is "
        "NoClientCert; set client_auth_type: RequireAndVerifyClientCert to check client "
        "certificates",
    ),
    (
        "client CA file is not a certificate",
        TLS_PAIR + "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: junk.pem\n",
        "tls_server_config.client_ca_file: does not contain a PEM certificate",
    ),
    (
        "client_allowed_sans",
        TLS_PAIR + "  client_auth_type: RequireAndVerifyClientCert\n"
        "  client_ca_file: client-ca.pem\n  client_allowed_sans: [prometheus]\n",
        "tls_server_config.client_allowed_sans: not supported by this exporter (Python's TLS "
        "stack cannot check client SANs during the handshake); issue client certificates from "
        "a dedicated CA instead",
    ),
    (
        "bad min_version",
        TLS_PAIR + "  min_version: TLS14\n",
        "tls_server_config.min_version: unknown TLS version 'TLS14' (expected one of TLS10, "
        "TLS11, TLS12, TLS13)",
    ),
    (
        "min_version spelled like OpenSSL",
        TLS_PAIR + "  min_version: TLSv1.2\n",
        "tls_server_config.min_version: unknown TLS version 'TLSv1.2' (expected one of TLS10, "
        "TLS11, TLS12, TLS13)",
    ),
    (
        "min above max",
        TLS_PAIR + "  min_version: TLS13\n  max_version: TLS12\n",
        "tls_server_config: min_version TLS13 is above max_version TLS12",
    ),
    (
        "unknown cipher",
        TLS_PAIR + "  cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]\n",
        "tls_server_config.cipher_suites: unknown cipher 'TLS_RSA_WITH_RC4_128_SHA'",
    ),
    (
        "cipher_suites not a list",
        TLS_PAIR + "  cipher_suites: TLS_AES_128_GCM_SHA256\n",
        "tls_server_config.cipher_suites: must be a list of strings",
    ),
    (
        "unknown curve",
        TLS_PAIR + "  curve_preferences: [CurveP999]\n",
        "tls_server_config.curve_preferences: unknown curve 'CurveP999' (expected one of "
        "CurveP256, CurveP384, CurveP521, X25519)",
    ),
    (
        "cert file holds no certificate",
        "tls_server_config:\n  cert_file: server.key\n  key_file: server.key\n",
        "tls_server_config.cert_file: does not contain a PEM certificate",
    ),
    (
        "junk key",
        "tls_server_config:\n  cert_file: server.pem\n  key_file: junk.pem\n",
        "tls_server_config.key_file: does not contain a PEM private key",
    ),
    (
        "encrypted key",
        "tls_server_config:\n  cert_file: server.pem\n  key: |\n"
        "    -----BEGIN ENCRYPTED PRIVATE KEY-----\n    AAAA\n"
        "    -----END ENCRYPTED PRIVATE KEY-----\n",
        "tls_server_config.key: encrypted private keys are not supported",
    ),
    (
        "key of another certificate",
        "tls_server_config:\n  cert_file: server.pem\n  key_file: other.key\n",
        "tls_server_config: cannot load the certificate and key: the private key does not "
        "match the certificate",
    ),
    (
        "header not allowed",
        "http_server_config:\n  headers:\n    X-Powered-By: sophos\n",
        "http_server_config.headers: HTTP header 'X-Powered-By' can not be configured (allowed: "
        "Strict-Transport-Security, X-Content-Type-Options, X-Frame-Options, X-XSS-Protection, "
        "Content-Security-Policy)",
    ),
    (
        "header name in the wrong case",
        "http_server_config:\n  headers:\n    x-frame-options: deny\n",
        "http_server_config.headers: HTTP header 'x-frame-options' can not be configured "
        "(allowed: Strict-Transport-Security, X-Content-Type-Options, X-Frame-Options, "
        "X-XSS-Protection, Content-Security-Policy)",
    ),
    (
        "X-Frame-Options value",
        "http_server_config:\n  headers:\n    X-Frame-Options: allow\n",
        "http_server_config.headers.X-Frame-Options: invalid value 'allow' (expected one of "
        "'deny', 'sameorigin')",
    ),
    (
        "X-Content-Type-Options value",
        "http_server_config:\n  headers:\n    X-Content-Type-Options: sniff\n",
        "http_server_config.headers.X-Content-Type-Options: invalid value 'sniff' (expected one "
        "of 'nosniff')",
    ),
    (
        "header injection",
        'http_server_config:\n  headers:\n    Content-Security-Policy: "a\\r\\nSet-Cookie: x"\n',
        "http_server_config.headers.Content-Security-Policy: must not contain line breaks or NUL",
    ),
    (
        "http2 not a boolean",
        "http_server_config:\n  http2: 1\n",
        "http_server_config.http2: must be true or false",
    ),
    (
        "plaintext password",
        "basic_auth_users:\n  alice: hunter2\n",
        "basic_auth_users.alice: not a bcrypt hash (expected $2y$, $2b$ or $2a$, a cost from 04 "
        "to 31 and 53 characters of salt and hash; see docs/web-config.md to make one)",
    ),
    (
        "apr1 (MD5) htpasswd hash",
        "basic_auth_users:\n  alice: $apr1$7k6bxeqz$c2oM0W0a4W1pnfQWJqX0r0\n",
        "basic_auth_users.alice: not a bcrypt hash (expected $2y$, $2b$ or $2a$, a cost from 04 "
        "to 31 and 53 characters of salt and hash; see docs/web-config.md to make one)",
    ),
    (
        "bcrypt cost below 4",
        "basic_auth_users:\n  alice: " + ALICE_HASH.replace("$04$", "$03$") + "\n",
        "basic_auth_users.alice: not a bcrypt hash (expected $2y$, $2b$ or $2a$, a cost from 04 "
        "to 31 and 53 characters of salt and hash; see docs/web-config.md to make one)",
    ),
    (
        "user name with a colon",
        f"basic_auth_users:\n  'al:ice': {ALICE_HASH}\n",
        "basic_auth_users: user name 'al:ice' must not contain ':' (basic auth splits on it)",
    ),
    (
        "duplicate user",
        f"basic_auth_users:\n  alice: {ALICE_HASH}\n  alice: {ALICE_HASH}\n",
        "basic_auth_users.alice: duplicate key at line 3 (first at line 2)",
    ),
    (
        "rate limit burst not a number",
        "rate_limit:\n  interval: 1s\n  burst: '3'\n",
        "rate_limit.burst: must be an integer",
    ),
    (
        "rate limit burst zero",
        "rate_limit:\n  interval: 1s\n  burst: 0\n",
        "rate_limit.burst: must be at least 1 when rate_limit.interval is set",
    ),
    (
        "rate limit interval not a duration",
        "rate_limit:\n  interval: fast\n  burst: 3\n",
        "rate_limit.interval: 'fast' is not a duration; use a number of seconds or units s, m, "
        "h, d (e.g. 90s, 5m)",
    ),
]


@pytest.mark.parametrize(
    ("body", "expected"),
    [pytest.param(body, expected, id=name) for name, body, expected in INVALID_CONFIGS],
)
def test_invalid_config_gives_an_exact_error(pki: Pki, body: str, expected: str) -> None:
    path = write_config(pki, body)
    with pytest.raises(ConfigError) as error:
        load_web_config(path)
    problem = expected.format(dir=pki.dir.resolve())
    assert str(error.value) == f"invalid web config file {path}:\n  {problem}"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("- a\n", "web config file {path} must be a mapping of keys to values"),
        (
            "tls_server_config: [\n",
            "web config file {path} is not valid YAML at line 2, column 1: expected the node "
            "content, but found '<stream end>'",
        ),
    ],
    ids=["top level is a list", "broken YAML"],
)
def test_a_file_that_is_not_a_mapping_says_so(pki: Pki, body: str, expected: str) -> None:
    path = write_config(pki, body)
    with pytest.raises(ConfigError) as error:
        load_web_config(path)
    assert str(error.value) == expected.format(path=path)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_web_config(tmp_path / "nope.yml")
    assert str(error.value) == (
        f"cannot read web config file {tmp_path / 'nope.yml'}: No such file or directory"
    )


def test_every_problem_is_listed_at_once(pki: Pki) -> None:
    path = write_config(pki, "http_server_config:\n  http2: 1\nrate_limit:\n  burst: x\n")
    with pytest.raises(ConfigError) as error:
        load_web_config(path)
    assert str(error.value) == (
        f"invalid web config file {path}:\n"
        "  http_server_config.http2: must be true or false\n"
        "  rate_limit.burst: must be an integer"
    )


def test_both_files_refuse_a_duplicate_key_in_the_same_words(pki: Pki) -> None:
    """The agent's config and the web config share one loader and one error format."""
    from agent.config import load_settings

    body = "rate_limit:\n  burst: 1\n  burst: 2\n"
    web = write_config(pki, body)
    agent_config = pki.dir / "config.yml"
    agent_config.write_text("rate_limits:\n  1m: 1\n  1m: 2\n")
    with pytest.raises(ConfigError) as web_error:
        load_web_config(web)
    with pytest.raises(ConfigError) as agent_error:
        load_settings(agent_config)
    assert str(web_error.value).endswith(
        "rate_limit.burst: duplicate key at line 3 (first at line 2)"
    )
    assert str(agent_error.value).endswith(
        "rate_limits.1m: duplicate key at line 3 (first at line 2)"
    )


def test_error_never_echoes_a_password_given_instead_of_a_hash(pki: Pki) -> None:
    with pytest.raises(ConfigError) as error:
        load_web_config(write_config(pki, "basic_auth_users:\n  alice: s3cret-Pa55\n"))
    assert "s3cret-Pa55" not in str(error.value)
    assert [p.key for p in error.value.problems] == ["basic_auth_users.alice"]


def test_parse_web_config_accepts_parsed_yaml(pki: Pki) -> None:
    cfg = parse_web_config(
        {"tls_server_config": {"cert_file": "server.pem", "key_file": "server.key"}},
        base_dir=pki.dir,
    )
    assert cfg.tls is not None
    assert cfg.tls.key_file == (pki.dir / "server.key").resolve()


# --------------------------------------------------------------------------------------------
# The middleware on its own (no sockets): caching, timing safety, odd headers, rate limit


def middleware_client(
    app: Any, cfg: WebConfig, clock: FakeClock, **kwargs: Any
) -> tuple[WebSecurityMiddleware, httpx.AsyncClient]:
    mw = WebSecurityMiddleware(app, cfg, clock=clock, **kwargs)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=mw), base_url="http://test")
    return mw, client


@pytest.fixture
def checkpw_calls(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Record the hash every bcrypt verification runs against."""
    calls: list[bytes] = []
    real: Callable[[bytes, bytes], bool] = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(hashed)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    return calls


def users_config(**extra: Any) -> WebConfig:
    return parse_web_config(
        {"basic_auth_users": {"alice": ALICE_HASH}, **extra}, base_dir=Path("/nonexistent")
    )


async def test_successful_login_is_cached_until_the_ttl_passes(checkpw_calls: list[bytes]) -> None:
    clock = FakeClock()
    _, client = middleware_client(make_app(), users_config(), clock, cache_ttl=60.0)
    async with client:
        for _ in range(3):
            response = await client.get("/metrics", headers=auth("alice", PASSWORD))
            assert response.status_code == 200
        assert len(checkpw_calls) == 1
        await clock.advance(61.0)
        assert (await client.get("/metrics", headers=auth("alice", PASSWORD))).status_code == 200
        assert len(checkpw_calls) == 2


async def test_failed_logins_are_not_cached(checkpw_calls: list[bytes]) -> None:
    _, client = middleware_client(make_app(), users_config(), FakeClock())
    async with client:
        for _ in range(2):
            assert (await client.get("/", headers=auth("alice", "nope"))).status_code == 401
    assert len(checkpw_calls) == 2


async def test_unknown_user_pays_a_bcrypt_check_too(checkpw_calls: list[bytes]) -> None:
    _mw, client = middleware_client(make_app(), users_config(), FakeClock())
    async with client:
        assert (await client.get("/", headers=auth("mallory", PASSWORD))).status_code == 401
    assert len(checkpw_calls) == 1
    assert checkpw_calls[0] != ALICE_HASH.encode()
    assert checkpw_calls[0].startswith(b"$2b$04$")  # same cost as the real users


async def test_cache_never_holds_the_plaintext_password() -> None:
    mw, client = middleware_client(make_app(), users_config(), FakeClock())
    async with client:
        assert (await client.get("/", headers=auth("alice", PASSWORD))).status_code == 200
    assert mw._cache
    for key in mw._cache:
        assert PASSWORD.encode() not in key


@pytest.mark.parametrize(
    "header",
    [
        "Bearer abc",
        "Basic",
        "Basic !!!not-base64!!!",
        "Basic " + base64.b64encode(b"alice-without-colon").decode(),
        "Basic " + base64.b64encode(b"alice:" + b"x" * 100).decode(),
        "Basic " + base64.b64encode(b"alice:\x00" + PASSWORD.encode()).decode(),
    ],
    ids=["bearer", "empty", "not-base64", "no-colon", "over-72-bytes", "nul-byte"],
)
async def test_malformed_credentials_get_401_not_500(header: str) -> None:
    _, client = middleware_client(make_app(), users_config(), FakeClock())
    async with client:
        response = await client.get("/metrics", headers={"Authorization": header})
    assert response.status_code == 401


async def test_scheme_is_case_insensitive() -> None:
    token = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    _, client = middleware_client(make_app(), users_config(), FakeClock())
    async with client:
        response = await client.get("/metrics", headers={"Authorization": f"basic {token}"})
    assert response.status_code == 200


async def test_password_never_reaches_the_log(caplog: pytest.LogCaptureFixture) -> None:
    _, client = middleware_client(make_app(), users_config(), FakeClock())
    with caplog.at_level(logging.DEBUG):
        async with client:
            await client.get("/", headers=auth("alice", "wrong-Secret-123"))
            await client.get("/", headers=auth("alice", PASSWORD))
    assert "wrong-Secret-123" not in caplog.text
    assert PASSWORD not in caplog.text


async def test_rate_limit_answers_429_until_a_token_is_refilled() -> None:
    clock = FakeClock()
    cfg = parse_web_config({"rate_limit": {"interval": "1s", "burst": 2}}, base_dir=Path("/"))
    _, client = middleware_client(make_app(), cfg, clock)
    async with client:
        assert [(await client.get("/healthz")).status_code for _ in range(3)] == [200, 200, 429]
        await clock.advance(1.0)
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/healthz")).status_code == 429


async def test_websocket_and_lifespan_scopes_pass_through_untouched() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    async def never(*_: Any) -> Any:
        raise AssertionError("the middleware must not talk on a pass-through scope")

    mw = WebSecurityMiddleware(app, users_config(), clock=FakeClock())
    await mw({"type": "lifespan"}, never, never)
    await mw({"type": "websocket", "headers": []}, never, never)
    assert seen == ["lifespan", "websocket"]


# --------------------------------------------------------------------------------------------
# Wrong-password floods: attempts per address, valid logins first


def client_from(mw: WebSecurityMiddleware, address: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=mw, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://test")


async def test_an_address_with_too_many_failures_gets_429_without_bcrypt(
    checkpw_calls: list[bytes],
) -> None:
    from agent.web.auth import FAILURE_BURST, FAILURE_REFILL_SECONDS

    clock = FakeClock()
    mw = WebSecurityMiddleware(make_app(), users_config(), clock=clock)
    async with client_from(mw, "192.0.2.7") as attacker, client_from(mw, "192.0.2.8") as other:
        # A valid login from the attacker's address before the flood is cached and stays valid.
        assert (await attacker.get("/", headers=auth("alice", PASSWORD))).status_code == 200
        statuses = [
            (await attacker.get("/", headers=auth("alice", f"guess-{i}"))).status_code
            for i in range(FAILURE_BURST + 5)
        ]
        assert statuses == [401] * FAILURE_BURST + [429] * 5
        assert len(checkpw_calls) == 1 + FAILURE_BURST  # the throttled guesses cost no bcrypt
        throttled = await attacker.get("/", headers=auth("alice", "another-guess"))
        assert throttled.status_code == 429
        assert 1 <= int(throttled.headers["retry-after"]) <= FAILURE_REFILL_SECONDS
        assert (await attacker.get("/", headers=auth("alice", PASSWORD))).status_code == 200
        # Another address is not affected.
        assert (await other.get("/", headers=auth("alice", "wrong"))).status_code == 401
        # The attacker may try again once its bucket has a token.
        await clock.advance(FAILURE_REFILL_SECONDS)
        assert (await attacker.get("/", headers=auth("alice", "late-guess"))).status_code == 401
        assert (await attacker.get("/", headers=auth("alice", "too-soon"))).status_code == 429


async def test_concurrent_wrong_passwords_cannot_all_get_in_before_the_first_fails() -> None:
    """Each unverified attempt spends its address's token before bcrypt runs."""
    from agent.web.auth import FAILURE_BURST

    mw = WebSecurityMiddleware(make_app(), users_config(), clock=FakeClock())
    async with client_from(mw, "192.0.2.9") as attacker:
        answers = await asyncio.gather(
            *(attacker.get("/", headers=auth("alice", f"g{i}")) for i in range(40))
        )
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [401] * FAILURE_BURST + [429] * (40 - FAILURE_BURST)


async def test_ipv6_clients_are_counted_by_their_64() -> None:
    from agent.web.auth import client_address

    a = client_address({"client": ("2001:db8:1:2::17", 1)})
    b = client_address({"client": ("2001:db8:1:2:ffff::9", 1)})
    assert a == b == "2001:db8:1:2::/64"
    assert client_address({"client": ("::ffff:192.0.2.1", 1)}) == "192.0.2.1"
    assert client_address({"client": ("192.0.2.1", 1)}) == "192.0.2.1"


async def test_bcrypt_queue_serves_clean_addresses_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """With every worker busy, a waiting login from a clean address overtakes suspect ones."""
    from agent.web import auth as auth_module

    order: list[bytes] = []
    release = asyncio.Event()

    def slow_check(password: bytes, hashed: bytes) -> bool:
        order.append(password)
        return password == b"ok"

    queue = auth_module.BcryptQueue(workers=1, max_suspect=2)
    monkeypatch.setattr(auth_module, "_bcrypt_matches", slow_check)

    async def hold_the_worker() -> None:
        await queue._slot(urgent=True)
        await release.wait()
        queue._release()

    holder = asyncio.create_task(hold_the_worker())
    await asyncio.sleep(0)
    suspects = [asyncio.create_task(queue.check(b"s%d" % i, b"h", urgent=False)) for i in range(2)]
    await asyncio.sleep(0)
    assert await queue.check(b"s-extra", b"h", urgent=False) is None  # the suspect line is full
    valid = asyncio.create_task(queue.check(b"ok", b"h", urgent=True))
    await asyncio.sleep(0)
    release.set()
    assert await valid is True
    assert await asyncio.gather(*suspects) == [False, False]
    await holder
    assert order == [b"ok", b"s0", b"s1"]
