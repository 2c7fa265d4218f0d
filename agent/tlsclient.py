"""The agent's TLS as a client: how it verifies Sophos's certificates, and why a handshake failed.

**Strict X.509, as Python 3.13 and later do it.** Python 3.13 turned on ``VERIFY_X509_STRICT``
(and ``VERIFY_X509_PARTIAL_CHAIN``) in ``ssl.create_default_context()``. Under strict rules
OpenSSL refuses certificates that break RFC 5280 in ways older Pythons let pass; the one people
meet is the private CA of a TLS-inspecting proxy whose Basic Constraints extension is not marked
critical ("Basic Constraints of CA cert not marked critical"), which broke Sophos's own SIEM
script behind corporate proxies. The agent sets both flags itself, on whichever Python runs it,
so that it behaves the same in the container image, a wheel on Python 3.11 and on 3.13, and so
that such a proxy is found by the exporter before the customer's other integrations meet it on
their next Python upgrade. ``tls_x509_strict: false`` clears the strict flag (as Python 3.12
and earlier verified) while the proxy's CA is being re-issued; the chain, the names and the
dates are verified either way.

**Why a handshake failed.** OpenSSL says why it refused a certificate in
``ssl.SSLCertVerificationError.verify_code`` (an ``X509_V_ERR_*`` number) and
``verify_message``; aiohttp keeps that exception as the cause of its
``ClientConnectorCertificateError`` (which is itself an ``ssl.CertificateError``, without the
code), and ``agent.transport`` keeps aiohttp's as the cause of httpx's ``ConnectError``.
``tls_failure`` walks that chain and names the reason with one of ``REASONS``: a small fixed set,
safe as a label value, each with its remedy in the cause table (``tls_error``'s variants). A
failure that is not about a certificate (a protocol version or cipher nobody shares, something
that does not speak TLS on the port, a renegotiation refused) is ``tls_handshake``.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from agent.text import printable

UNKNOWN_ISSUER = "tls_unknown_issuer"
HOSTNAME_MISMATCH = "tls_hostname_mismatch"
EXPIRED = "tls_expired"
NOT_YET_VALID = "tls_not_yet_valid"
SELF_SIGNED = "tls_self_signed"
CA_REJECTED = "tls_ca_rejected"
HANDSHAKE = "tls_handshake"

REASONS: tuple[str, ...] = (
    UNKNOWN_ISSUER,
    HOSTNAME_MISMATCH,
    EXPIRED,
    NOT_YET_VALID,
    SELF_SIGNED,
    CA_REJECTED,
    HANDSHAKE,
)
"""Every reason a TLS failure can be given, ``HANDSHAKE`` for anything the others do not name."""

_BY_VERIFY_CODE: Mapping[int, str] = MappingProxyType(
    {
        # The chain ends at a CA the agent does not trust: usually an inspecting proxy's.
        2: UNKNOWN_ISSUER,  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT
        19: UNKNOWN_ISSUER,  # X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN: an untrusted root was sent
        20: UNKNOWN_ISSUER,  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
        21: UNKNOWN_ISSUER,  # X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE
        27: UNKNOWN_ISSUER,  # X509_V_ERR_CERT_UNTRUSTED
        62: HOSTNAME_MISMATCH,  # X509_V_ERR_HOSTNAME_MISMATCH
        64: HOSTNAME_MISMATCH,  # X509_V_ERR_IP_ADDRESS_MISMATCH
        10: EXPIRED,  # X509_V_ERR_CERT_HAS_EXPIRED
        9: NOT_YET_VALID,  # X509_V_ERR_CERT_NOT_YET_VALID
        18: SELF_SIGNED,  # X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
        # A certificate the agent's OpenSSL refuses for what it is, not for who issued it:
        # a CA unfit to issue (no keyCertSign, not a CA at all, path length), keys or digests
        # below the build's security level, and OpenSSL 3's strict RFC 5280 checks (79 to 94:
        # Basic Constraints not critical, Key Usage or key identifiers missing, ...).
        25: CA_REJECTED,  # X509_V_ERR_PATH_LENGTH_EXCEEDED
        26: CA_REJECTED,  # X509_V_ERR_INVALID_PURPOSE
        32: CA_REJECTED,  # X509_V_ERR_KEYUSAGE_NO_CERTSIGN
        37: CA_REJECTED,  # X509_V_ERR_INVALID_NON_CA
        66: CA_REJECTED,  # X509_V_ERR_EE_KEY_TOO_SMALL
        67: CA_REJECTED,  # X509_V_ERR_CA_KEY_TOO_SMALL
        68: CA_REJECTED,  # X509_V_ERR_CA_MD_TOO_WEAK
        **dict.fromkeys(range(79, 95), CA_REJECTED),  # X509_V_ERR_INVALID_CA .. EC_KEY_EXPLICIT
    }
)

_MAX_WHY = 160


@dataclass(frozen=True)
class TlsFailure:
    """Why a handshake failed: ``reason`` (one of ``REASONS``) and ``why``, OpenSSL's own words
    (``verify_message``, or the SSL error's reason), printable and short. Both come from the
    agent's TLS library, never from the peer, and name no secret."""

    reason: str
    why: str


def client_context(ca_bundle: Path | None = None, *, strict: bool = True) -> ssl.SSLContext:
    """The context every call to Sophos verifies with: the system CAs plus ``ca_bundle``, and
    Python 3.13's verification flags (strict X.509 unless ``strict`` is False)."""
    context = ssl.create_default_context()
    if ca_bundle is not None:
        context.load_verify_locations(cafile=str(ca_bundle))
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    if strict:
        context.verify_flags |= ssl.VERIFY_X509_STRICT
    else:
        context.verify_flags &= ~ssl.VERIFY_X509_STRICT
    return context


def tls_failure(exc: BaseException) -> TlsFailure | None:
    """The TLS failure behind ``exc`` (followed through its causes), or None when none is."""
    errors = [e for e in _chain(exc) if isinstance(e, ssl.SSLError)]
    for error in errors:
        certificate = getattr(error, "certificate_error", None)  # aiohttp's wrapper keeps it
        if isinstance(certificate, ssl.SSLCertVerificationError):
            error = certificate
        code = getattr(error, "verify_code", None)
        if isinstance(error, ssl.SSLCertVerificationError) and isinstance(code, int):
            reason = _BY_VERIFY_CODE.get(code, HANDSHAKE)
            return TlsFailure(reason, _words(error.verify_message or f"verify code {code}"))
    if errors:
        deepest = errors[-1]  # the ssl module's own error, under any wrapper
        named = getattr(deepest, "reason", None)  # WRONG_VERSION_NUMBER, ...
        why = str(named).replace("_", " ").lower() if named else str(deepest)
        return TlsFailure(HANDSHAKE, _words(why or type(deepest).__name__))
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    seen: set[int] = set()
    found: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        found.append(current)
        current = current.__cause__ or current.__context__
    return found


def _words(text: object) -> str:
    cleaned = " ".join(printable(str(text)).split())
    return cleaned[:_MAX_WHY]
