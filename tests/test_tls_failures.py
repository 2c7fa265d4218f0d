"""TLS failures named, with real certificates, through the agent's own transport.

Each case is a loopback TLS server (asyncio with the ssl module) presenting a certificate made
for the case, with trustme where it can make it and with the ``cryptography`` package where a
certificate must be wrong on purpose (self-signed, a CA whose Basic Constraints extension is not
critical, a CA without Key Usage). The agent meets it as it would meet Sophos: an ``Agent`` built
from a configuration (``ca_bundle``, ``tls_x509_strict``), its token probe through httpx on
aiohttp, the result diagnosed. What a user relies on: the cause is ``tls_error``, the
``error_code`` (the label's value) stays ``tls_error``, the remedy is the reason's, and the log
line names the reason.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.causes import TABLE
from agent.classify import classify_exception
from agent.config import Settings
from agent.probes import ProbeResult
from agent.runtime import Agent
from agent.tlsclient import REASONS, client_context, tls_failure
from tests.test_real_bodies import Failures

TOKEN = (
    b'{"access_token":"eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.tls-test","errorCode":"success",'
    b'"expires_in":3600,"message":"OK","token_type":"bearer"}'
)
NOW = datetime.datetime.now(datetime.UTC)
DAY = datetime.timedelta(days=1)
TLS_ERROR = TABLE["tls_error"]


@dataclass(frozen=True)
class Served:
    """What the server presents (PEM chain and key) and what the agent trusts (PEM CAs)."""

    chain: bytes
    key: bytes
    trusted: bytes
    host: str = "127.0.0.1"


def _trustme(leaf: trustme.LeafCert, ca: trustme.CA, *, extra: bytes = b"") -> Served:
    chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems) + extra
    return Served(chain, leaf.private_key_pem.bytes(), ca.cert_pem.bytes())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _builder(subject: str, issuer: str, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + 30 * DAY)
    )


def proxy_ca(*, critical: bool = True, key_usage: bool = True) -> Served:
    """A TLS-inspecting proxy's own CA, made by hand as such CAs often are, and the certificate
    it issues for 127.0.0.1: Basic Constraints critical or not, Key Usage present or not."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    builder = _builder("Inspecting Proxy CA", "Inspecting Proxy CA", ca_key).add_extension(
        x509.BasicConstraints(ca=True, path_length=None), critical=critical
    )
    builder = builder.add_extension(
        x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
    )
    if key_usage:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    ca_cert = builder.sign(ca_key, hashes.SHA256())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = _leaf(_builder("127.0.0.1", "Inspecting Proxy CA", leaf_key), ca_key)
    return Served(_pem(leaf.sign(ca_key, hashes.SHA256())), _key_pem(leaf_key), _pem(ca_cert))


def _leaf(
    builder: x509.CertificateBuilder, issuer_key: ec.EllipticCurvePrivateKey
) -> x509.CertificateBuilder:
    return (
        builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )


def self_signed() -> Served:
    """An appliance's own certificate for 127.0.0.1, signed by itself."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _leaf(_builder("127.0.0.1", "127.0.0.1", key), key).sign(key, hashes.SHA256())
    return Served(_pem(cert), _key_pem(key), trustme.CA().cert_pem.bytes())


def good() -> Served:
    ca = trustme.CA()
    return _trustme(ca.issue_cert("127.0.0.1", "localhost"), ca)


def unknown_issuer() -> Served:
    trusted, proxy = trustme.CA(), trustme.CA(organization_name="Inspecting Proxy")
    return _trustme(proxy.issue_cert("127.0.0.1"), trusted)


def unknown_root_sent_along() -> Served:
    """The proxy sends its root with the chain: OpenSSL says 'self-signed certificate in
    certificate chain', and it is the same unknown issuer."""
    trusted, proxy = trustme.CA(), trustme.CA(organization_name="Inspecting Proxy")
    leaf = proxy.issue_cert("127.0.0.1")
    return Served(
        b"".join(blob.bytes() for blob in leaf.cert_chain_pems) + proxy.cert_pem.bytes(),
        leaf.private_key_pem.bytes(),
        trusted.cert_pem.bytes(),
    )


def other_name() -> Served:
    ca = trustme.CA()
    return _trustme(ca.issue_cert("sophos.example"), ca)


def ip_only_called_by_name() -> Served:
    ca = trustme.CA()
    return dataclasses.replace(_trustme(ca.issue_cert("127.0.0.1"), ca), host="localhost")


def expired() -> Served:
    ca = trustme.CA()
    return _trustme(ca.issue_cert("127.0.0.1", not_before=NOW - 30 * DAY, not_after=NOW - DAY), ca)


def not_yet_valid() -> Served:
    ca = trustme.CA()
    return _trustme(ca.issue_cert("127.0.0.1", not_before=NOW + DAY, not_after=NOW + 30 * DAY), ca)


@dataclass(frozen=True)
class Case:
    name: str
    served: Callable[[], Served]
    reason: str
    said: str
    """What OpenSSL says, as the log line and (for some reasons) the remedy repeat it."""


CASES = [
    Case("unknown issuer", unknown_issuer, "tls_unknown_issuer", "unable to get local issuer"),
    Case(
        "unknown root sent along",
        unknown_root_sent_along,
        "tls_unknown_issuer",
        "self-signed certificate in certificate chain",
    ),
    Case("certificate for another name", other_name, "tls_hostname_mismatch", "mismatch"),
    Case(
        "IP certificate called by name",
        ip_only_called_by_name,
        "tls_hostname_mismatch",
        "Hostname mismatch",
    ),
    Case("expired", expired, "tls_expired", "certificate has expired"),
    Case("not yet valid", not_yet_valid, "tls_not_yet_valid", "certificate is not yet valid"),
    Case("self-signed", self_signed, "tls_self_signed", "self-signed certificate"),
    Case(
        "proxy CA without critical Basic Constraints",
        lambda: proxy_ca(critical=False),
        "tls_ca_rejected",
        "Basic Constraints of CA cert not marked critical",
    ),
    Case(
        "proxy CA without Key Usage",
        lambda: proxy_ca(key_usage=False),
        "tls_ca_rejected",
        "CA cert does not include key usage extension",
    ),
]


@pytest.fixture
async def tls_server() -> AsyncIterator[Callable[[Served, Path], Awaitable[str]]]:
    """Starts loopback servers that present a ``Served`` chain and answer a token to anything."""
    servers: list[asyncio.Server] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                + f"Content-Length: {len(TOKEN)}\r\n\r\n".encode()
                + TOKEN
            )
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError, ssl.SSLError):
            pass  # the client refused the handshake: that is the case under test
        finally:
            writer.close()

    async def plain_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A plain HTTP server where TLS was expected: it answers the ClientHello's bytes."""
        try:
            await asyncio.wait_for(reader.read(100), 5)
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
        except (ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()

    async def start(served: Served | None, tmp: Path) -> str:
        context: ssl.SSLContext | None = None
        if served is not None:
            (tmp / "chain.pem").write_bytes(served.chain)
            (tmp / "key.pem").write_bytes(served.key)
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(tmp / "chain.pem", tmp / "key.pem")
        handler = answer if served is not None else plain_http
        server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=context)
        servers.append(server)
        host = served.host if served is not None else "127.0.0.1"
        return f"https://{host}:{server.sockets[0].getsockname()[1]}"

    yield start
    for server in servers:
        server.close()


async def token_probe(base: str, tmp: Path, trusted: bytes, **extra: Any) -> ProbeResult:
    """The token probe of an agent configured for ``base``, trusting ``trusted``."""
    bundle = tmp / "ca_bundle.pem"
    bundle.write_bytes(trusted)
    settings = Settings(
        auth_url=f"{base}/api/v2/oauth2/token",
        api_url=base,
        allowed_api_hosts=["127.0.0.1", "localhost"],
        ca_bundle=bundle,
        state_file=tmp / "state.db",
        request_timeout=5,
        credentials=[{"name": "tls", "client_id": "tls-client", "client_secret": "tls-secret"}],
        **extra,
    )
    agent = Agent(settings, process_metrics=False)  # its own client: httpx on aiohttp
    try:
        return await agent.probers[0].probe_token()
    finally:
        await agent.stop(grace=0)


async def test_a_certificate_the_agent_trusts_gives_a_token(
    tls_server: Callable[[Served | None, Path], Awaitable[str]], tmp_path: Path
) -> None:
    served = good()
    result = await token_probe(await tls_server(served, tmp_path), tmp_path, served.trusted)
    assert (result.cause, result.status_code, result.error_code) == ("ok", 200, "")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_each_bad_certificate_is_named_with_its_remedy(
    case: Case,
    tls_server: Callable[[Served | None, Path], Awaitable[str]],
    tmp_path: Path,
    failures: Failures,
) -> None:
    served = case.served()
    result = await token_probe(await tls_server(served, tmp_path), tmp_path, served.trusted)

    assert (result.cause, result.status_code, result.error_code) == ("tls_error", 0, "tls_error")
    remedy = TLS_ERROR.variants[case.reason]
    if "{" in remedy:
        assert case.said in result.remedy
    else:
        assert result.remedy == remedy
    (record,) = failures.records
    assert record.__dict__["cause"] == "tls_error"
    assert record.__dict__["error_code"] == "tls_error"
    assert f"({case.reason})" in record.getMessage() and case.said in record.getMessage()


async def test_a_proxy_ca_refused_only_by_strict_rules_names_the_fix_and_the_way_round(
    tls_server: Callable[[Served | None, Path], Awaitable[str]], tmp_path: Path
) -> None:
    """Python 3.13's strict X.509 check, on the Python the tests run on: the remedy says what is
    wrong with the CA and what to do; tls_x509_strict: false accepts it as Python 3.12 did."""
    served = proxy_ca(critical=False)
    base = await tls_server(served, tmp_path)
    strict = await token_probe(base, tmp_path, served.trusted)
    assert strict.cause == "tls_error"
    assert "(Basic Constraints of CA cert not marked critical)" in strict.remedy
    assert "re-issued" in strict.remedy and "tls_x509_strict: false" in strict.remedy

    lenient = await token_probe(base, tmp_path, served.trusted, tls_x509_strict=False)
    assert (lenient.cause, lenient.status_code) == ("ok", 200)


async def test_an_untrusted_certificate_stays_refused_without_strict_rules(
    tls_server: Callable[[Served | None, Path], Awaitable[str]], tmp_path: Path
) -> None:
    """tls_x509_strict: false relaxes RFC 5280 conformance only: trust, names and dates hold."""
    for make, reason in ((unknown_issuer, "tls_unknown_issuer"), (expired, "tls_expired")):
        served = make()
        base = await tls_server(served, tmp_path)
        result = await token_probe(base, tmp_path, served.trusted, tls_x509_strict=False)
        assert (result.cause, result.remedy) == ("tls_error", TLS_ERROR.variants[reason])


async def test_something_that_does_not_speak_tls_is_a_handshake_failure(
    tls_server: Callable[[Served | None, Path], Awaitable[str]], tmp_path: Path
) -> None:
    base = await tls_server(None, tmp_path)  # plain HTTP behind an https:// URL
    result = await token_probe(base, tmp_path, good().trusted)
    assert (result.cause, result.error_code) == ("tls_error", "tls_error")
    expected = TLS_ERROR.variants["tls_handshake"].format(handshake="wrong version number")
    assert result.remedy == expected


def test_every_reason_has_its_remedy_and_the_strict_flags_follow_the_setting() -> None:
    assert set(TLS_ERROR.variants) == set(REASONS)
    assert client_context().verify_flags & ssl.VERIFY_X509_STRICT
    assert client_context().verify_flags & ssl.VERIFY_X509_PARTIAL_CHAIN
    assert not client_context(strict=False).verify_flags & ssl.VERIFY_X509_STRICT
    assert client_context(strict=False).verify_mode == ssl.CERT_REQUIRED
    assert client_context(strict=False).check_hostname


def test_a_tls_failure_without_a_verify_code_is_a_handshake_failure() -> None:
    outer = httpx.ConnectError("handshake")
    outer.__cause__ = ssl.SSLError(1, "[SSL: UNSAFE_LEGACY_RENEGOTIATION_DISABLED] ...")
    outcome = classify_exception(outer)
    assert (outcome.error_code, outcome.tls is not None) == ("tls_error", True)
    assert tls_failure(ValueError("no TLS here")) is None
