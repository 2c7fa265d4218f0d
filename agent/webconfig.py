"""``--web.config.file``: TLS, basic auth and response headers in the exporter-toolkit format.

Prometheus operators already write one web configuration file for node_exporter, blackbox_exporter
and Prometheus itself (https://github.com/prometheus/exporter-toolkit, docs/web-configuration.md).
Accepting the same file here means the same runbook, the same secret-management pipeline and the
same Prometheus ``scrape_config`` work for this exporter too. The format is read strictly: a key
we do not know, or a setting Python's TLS stack cannot honour, is an error that names the key,
because silently serving plain HTTP or skipping a client-certificate check would be worse than
refusing to start.

Where Python's ``ssl`` module cannot express a Go ``crypto/tls`` setting exactly, the mapping errs
on the strict side and says so in a warning at load time (see docs/web-config.md).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
import hashlib
import hmac
import logging
import re
import secrets
import ssl
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import uvicorn
import yaml
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.clock import Clock, SystemClock

__all__ = [
    "ClientAuthType",
    "HTTPServerConfig",
    "RateLimitConfig",
    "TLSServerConfig",
    "WebConfig",
    "WebConfigError",
    "WebSecurityMiddleware",
    "bound_port",
    "build_ssl_context",
    "load_web_config",
    "make_uvicorn_server",
    "parse_web_config",
    "wait_started",
]

logger = logging.getLogger(__name__)

DEFAULT_REALM = "sophos-central-exporter"


class WebConfigError(Exception):
    """The web configuration cannot be used.

    The message is ``<file>: <key>: <problem>`` so that the on-call engineer reading a crash loop
    knows which line to fix; ``key`` and ``problem`` are kept for callers that want them apart.
    No secret (password hash, inline private key) is ever part of the message.
    """

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        super().__init__(": ".join(part for part in (source, key, problem) if part))


class _Invalid(Exception):
    """Raised while parsing, before the file name is known to the raiser."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(key, problem)
        self.key = key
        self.problem = problem


class ClientAuthType(enum.StrEnum):
    """exporter-toolkit's ``client_auth_type`` values (Go's ``tls.ClientAuthType`` names)."""

    NO_CLIENT_CERT = "NoClientCert"
    REQUEST_CLIENT_CERT = "RequestClientCert"
    REQUIRE_ANY_CLIENT_CERT = "RequireAnyClientCert"
    VERIFY_CLIENT_CERT_IF_GIVEN = "VerifyClientCertIfGiven"
    REQUIRE_AND_VERIFY_CLIENT_CERT = "RequireAndVerifyClientCert"


# exporter-toolkit still accepts this pre-1.0 spelling; so do we.
_CLIENT_AUTH_ALIASES = {"RequireClientCert": ClientAuthType.REQUIRE_ANY_CLIENT_CERT}

# Python cannot ask for a client certificate without verifying it, nor require one without
# verifying it. "Request without verifying" grants nothing the exporter uses, so it maps to not
# asking; "require any" maps to "require and verify" (stricter, needs a CA). Both are warned about.
_VERIFY_MODES = {
    ClientAuthType.NO_CLIENT_CERT: ssl.CERT_NONE,
    ClientAuthType.REQUEST_CLIENT_CERT: ssl.CERT_NONE,
    ClientAuthType.REQUIRE_ANY_CLIENT_CERT: ssl.CERT_REQUIRED,
    ClientAuthType.VERIFY_CLIENT_CERT_IF_GIVEN: ssl.CERT_OPTIONAL,
    ClientAuthType.REQUIRE_AND_VERIFY_CLIENT_CERT: ssl.CERT_REQUIRED,
}

_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
_TLS_VERSION_NAMES = {version: name for name, version in _TLS_VERSIONS.items()}

# Go's tls.CipherSuites() (the only names exporter-toolkit accepts) and their OpenSSL spelling.
# TLS 1.3 suites are not configurable in Go either; they are accepted and have no effect.
_TLS13_CIPHERS = frozenset(
    {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}
)
_TLS12_CIPHERS = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
_CURVES = ("CurveP256", "CurveP384", "CurveP521", "X25519")

# exporter-toolkit allows exactly these response headers (some with a fixed set of values), to keep
# the Prometheus ecosystem consistent; anything else is refused rather than passed through.
_ALLOWED_HEADERS: dict[str, tuple[str, ...]] = {
    "Strict-Transport-Security": (),
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": (),
    "Content-Security-Policy": (),
}

_BCRYPT_HASH = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_GO_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}

_TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users", "rate_limit")
_TLS_KEYS = (
    "cert",
    "key",
    "client_ca",
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "client_allowed_sans",
    "min_version",
    "max_version",
    "cipher_suites",
    "prefer_server_cipher_suites",
    "curve_preferences",
)
_HTTP_KEYS = ("http2", "headers")
_RATE_LIMIT_KEYS = ("interval", "burst")


@dataclass(frozen=True)
class TLSServerConfig:
    """``tls_server_config`` after validation; file paths are absolute."""

    cert_file: Path | None = None
    cert: str | None = None
    key_file: Path | None = None
    key: str | None = field(default=None, repr=False)
    client_auth_type: ClientAuthType = ClientAuthType.NO_CLIENT_CERT
    client_ca_file: Path | None = None
    client_ca: str | None = None
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
    cipher_suites: tuple[str, ...] = ()
    prefer_server_cipher_suites: bool = True
    curve_preferences: tuple[str, ...] = ()

    @property
    def verify_mode(self) -> ssl.VerifyMode:
        """The ``ssl`` verify mode this ``client_auth_type`` maps to."""
        return _VERIFY_MODES[self.client_auth_type]


@dataclass(frozen=True)
class HTTPServerConfig:
    """``http_server_config``: ``http2`` is accepted but only HTTP/1.1 is served."""

    http2: bool = True
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class RateLimitConfig:
    """``rate_limit``: a token bucket refilled one request per ``interval_seconds``."""

    interval_seconds: float
    burst: int


@dataclass(frozen=True)
class WebConfig:
    """A validated web configuration file. ``tls`` is None when the file does not enable TLS."""

    tls: TLSServerConfig | None = None
    http: HTTPServerConfig = HTTPServerConfig()
    basic_auth_users: Mapping[str, str] = field(default_factory=dict, repr=False)
    rate_limit: RateLimitConfig | None = None
    source: str = "<web config>"


# --------------------------------------------------------------------------------------------
# Loading and validation


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate keys, as Go's ``yaml.UnmarshalStrict`` does.

    PyYAML keeps the last duplicate silently; a user listed twice under ``basic_auth_users`` would
    then lose one password without a word.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str | int | float | bool):
                continue  # the base class reports unhashable keys
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_web_config(path: str | Path) -> WebConfig:
    """Read and fully validate a web configuration file.

    Everything the file points at is checked now (files exist, certificate and key load and
    match, the CA parses), so a mistake stops the agent at startup and shows in ``config check``
    rather than at the first scrape. Relative paths are relative to the file's directory, as in
    exporter-toolkit. An empty file is valid and means plain HTTP without authentication.
    """
    file = Path(path)
    source = str(file)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise WebConfigError(source, "", "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise WebConfigError(source, "", f"cannot be read: {_os_reason(exc)}") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise WebConfigError(source, "", f"not valid YAML: {_yaml_reason(exc)}") from None
    return parse_web_config(data, base_dir=file.resolve().parent, source=source)


def parse_web_config(data: object, *, base_dir: Path, source: str = "<web config>") -> WebConfig:
    """Validate already-parsed YAML (``None`` means an empty file); see ``load_web_config``."""
    try:
        cfg = _parse(data, base_dir, source)
    except _Invalid as exc:
        raise WebConfigError(source, exc.key, exc.problem) from None
    build_ssl_context(cfg)  # loads the certificate, key and CA now: fail at startup, not later
    return cfg


def _parse(data: object, base_dir: Path, source: str) -> WebConfig:
    if data is None:
        return WebConfig(source=source)
    top = _section(data, "", _TOP_KEYS)
    tls = _parse_tls(top.get("tls_server_config"), base_dir)
    http = _parse_http(top.get("http_server_config"))
    users = _parse_users(top.get("basic_auth_users"))
    rate_limit = _parse_rate_limit(top.get("rate_limit"))
    return WebConfig(
        tls=tls, http=http, basic_auth_users=users, rate_limit=rate_limit, source=source
    )


def _parse_tls(raw: object, base_dir: Path) -> TLSServerConfig | None:
    where = "tls_server_config"
    if raw is None:
        return None
    sec = _section(raw, where, _TLS_KEYS)
    cert = _opt_str(sec, where, "cert")
    key = _opt_str(sec, where, "key")
    client_ca = _opt_str(sec, where, "client_ca")
    cert_file = _opt_path(sec, where, "cert_file", base_dir)
    key_file = _opt_path(sec, where, "key_file", base_dir)
    client_ca_file = _opt_path(sec, where, "client_ca_file", base_dir)
    auth_name = _opt_str(sec, where, "client_auth_type")

    enabled = any(
        v is not None
        for v in (cert, key, client_ca, cert_file, key_file, client_ca_file, auth_name)
    )
    if not enabled:
        # exporter-toolkit serves plain HTTP for a TLS section that sets nothing; so do we.
        return None

    if cert_file is None and cert is None:
        raise _Invalid(where, "missing one of cert or cert_file")
    if key_file is None and key is None:
        raise _Invalid(where, "missing one of key or key_file")
    for inline, name in ((cert, "cert"), (key, "key"), (client_ca, "client_ca")):
        if inline is not None and sec.get(f"{name}_file") is not None:
            raise _Invalid(f"{where}.{name}", f"set either {name} or {name}_file, not both")

    if auth_name is None:
        auth = ClientAuthType.NO_CLIENT_CERT
    elif auth_name in _CLIENT_AUTH_ALIASES:
        auth = _CLIENT_AUTH_ALIASES[auth_name]
    else:
        try:
            auth = ClientAuthType(auth_name)
        except ValueError:
            expected = ", ".join(t.value for t in ClientAuthType)
            raise _Invalid(
                f"{where}.client_auth_type",
                f"unknown value {auth_name!r} (expected one of {expected})",
            ) from None
    has_ca = client_ca_file is not None or client_ca is not None
    if has_ca and auth is ClientAuthType.NO_CLIENT_CERT:
        ca_key = "client_ca_file" if client_ca_file is not None else "client_ca"
        raise _Invalid(
            f"{where}.{ca_key}",
            "a client CA is set but client_auth_type is NoClientCert; "
            "set client_auth_type: RequireAndVerifyClientCert to check client certificates",
        )
    if not has_ca and _VERIFY_MODES[auth] != ssl.CERT_NONE:
        raise _Invalid(
            f"{where}.client_ca_file",
            f"required when client_auth_type is {auth.value} (or give client_ca inline)",
        )
    if sec.get("client_allowed_sans") is not None:
        raise _Invalid(
            f"{where}.client_allowed_sans",
            "not supported by this exporter (Python's TLS stack cannot check client SANs during "
            "the handshake); issue client certificates from a dedicated CA instead",
        )

    min_version = _tls_version(sec, where, "min_version", ssl.TLSVersion.TLSv1_2)
    max_version = _tls_version(sec, where, "max_version", ssl.TLSVersion.TLSv1_3)
    if min_version > max_version:
        raise _Invalid(
            where,
            f"min_version {_TLS_VERSION_NAMES[min_version]} is above "
            f"max_version {_TLS_VERSION_NAMES[max_version]}",
        )

    ciphers = _opt_str_list(sec, where, "cipher_suites")
    for name in ciphers:
        if name not in _TLS12_CIPHERS and name not in _TLS13_CIPHERS:
            raise _Invalid(f"{where}.cipher_suites", f"unknown cipher {name!r}")
    curves = _opt_str_list(sec, where, "curve_preferences")
    for name in curves:
        if name not in _CURVES:
            raise _Invalid(
                f"{where}.curve_preferences",
                f"unknown curve {name!r} (expected one of {', '.join(_CURVES)})",
            )
    prefer = _opt_bool(sec, where, "prefer_server_cipher_suites", default=True)

    _warn_about_approximations(auth, min_version, curves)
    return TLSServerConfig(
        cert_file=cert_file,
        cert=cert,
        key_file=key_file,
        key=key,
        client_auth_type=auth,
        client_ca_file=client_ca_file,
        client_ca=client_ca,
        min_version=min_version,
        max_version=max_version,
        cipher_suites=ciphers,
        prefer_server_cipher_suites=prefer,
        curve_preferences=curves,
    )


def _warn_about_approximations(
    auth: ClientAuthType, min_version: ssl.TLSVersion, curves: tuple[str, ...]
) -> None:
    """Say where behaviour differs from Go's, so nobody learns it from an incident."""
    if auth is ClientAuthType.REQUEST_CLIENT_CERT:
        logger.warning(
            "client_auth_type RequestClientCert: no client certificate is requested, because "
            "Python's TLS stack cannot request one without verifying it and the exporter does "
            "not use it; use RequireAndVerifyClientCert to restrict access by certificate"
        )
    elif auth is ClientAuthType.REQUIRE_ANY_CLIENT_CERT:
        logger.warning(
            "client_auth_type RequireAnyClientCert is enforced as RequireAndVerifyClientCert: "
            "client certificates must chain to the configured client CA"
        )
    if min_version < ssl.TLSVersion.TLSv1_2:
        logger.warning(
            "min_version %s: OpenSSL's default security level may still refuse these old "
            "protocol versions",
            _TLS_VERSION_NAMES[min_version],
        )
    if curves:
        logger.warning(
            "curve_preferences is accepted but not applied: Python's ssl module cannot set a "
            "curve preference list; OpenSSL's defaults are used"
        )


def _parse_http(raw: object) -> HTTPServerConfig:
    where = "http_server_config"
    if raw is None:
        return HTTPServerConfig()
    sec = _section(raw, where, _HTTP_KEYS)
    http2 = _opt_bool(sec, where, "http2", default=True)
    headers_raw = sec.get("headers")
    if headers_raw is None:
        return HTTPServerConfig(http2=http2)
    hwhere = f"{where}.headers"
    if not isinstance(headers_raw, dict):
        raise _Invalid(hwhere, "must be a mapping of header name to value")
    headers: list[tuple[str, str]] = []
    for name, value in headers_raw.items():
        if not isinstance(name, str) or name not in _ALLOWED_HEADERS:
            raise _Invalid(
                hwhere,
                f"HTTP header {str(name)!r} can not be configured "
                f"(allowed: {', '.join(_ALLOWED_HEADERS)})",
            )
        if value is None or value == "":
            continue  # "Unset if blank" in exporter-toolkit
        if not isinstance(value, str):
            raise _Invalid(f"{hwhere}.{name}", "must be a string")
        allowed = _ALLOWED_HEADERS[name]
        if allowed and value not in allowed:
            raise _Invalid(
                f"{hwhere}.{name}",
                f"invalid value {value!r} (expected one of {', '.join(map(repr, allowed))})",
            )
        if any(ch in value for ch in "\r\n\0"):
            raise _Invalid(f"{hwhere}.{name}", "must not contain line breaks or NUL")
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            raise _Invalid(f"{hwhere}.{name}", "must be ASCII/Latin-1 text") from None
        headers.append((name, value))
    return HTTPServerConfig(http2=http2, headers=tuple(headers))


def _parse_users(raw: object) -> dict[str, str]:
    where = "basic_auth_users"
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _Invalid(where, "must be a mapping of user name to bcrypt hash")
    users: dict[str, str] = {}
    for name, hashed in raw.items():
        if not isinstance(name, str) or not name:
            raise _Invalid(where, f"user name {name!r} must be a non-empty string")
        if ":" in name:
            raise _Invalid(
                where, f"user name {name!r} must not contain ':' (basic auth splits on it)"
            )
        if not isinstance(hashed, str) or not _BCRYPT_HASH.fullmatch(hashed):
            # The value is deliberately not echoed: it may be a plaintext password by mistake.
            raise _Invalid(
                f"{where}.{name}",
                "not a bcrypt hash (expected $2y$, $2b$ or $2a$, a cost from 04 to 31 and 53 "
                "characters of salt and hash; see docs/web-config.md to make one)",
            )
        users[name] = hashed
    return users


def _parse_rate_limit(raw: object) -> RateLimitConfig | None:
    where = "rate_limit"
    if raw is None:
        return None
    sec = _section(raw, where, _RATE_LIMIT_KEYS)
    interval = _go_duration(sec.get("interval", 0), f"{where}.interval")
    burst_raw = sec.get("burst", 0)
    if isinstance(burst_raw, bool) or not isinstance(burst_raw, int):
        raise _Invalid(f"{where}.burst", "must be an integer")
    if interval == 0:
        return None  # exporter-toolkit: an interval of 0 disables the limiter
    if burst_raw < 1:
        raise _Invalid(f"{where}.burst", "must be at least 1 when rate_limit.interval is set")
    return RateLimitConfig(interval_seconds=interval, burst=burst_raw)


def _go_duration(value: object, where: str) -> float:
    """Parse a Go ``time.Duration`` string (``500ms``, ``1m30s``) or a bare 0."""
    if isinstance(value, int) and not isinstance(value, bool) and value == 0:
        return 0.0
    problem = "must be a duration such as 500ms, 1s or 1m30s"
    if not isinstance(value, str) or not value:
        raise _Invalid(where, problem)
    if value == "0":
        return 0.0
    pos, total = 0, 0.0
    for match in _GO_DURATION_PART.finditer(value):
        if match.start() != pos:
            raise _Invalid(where, problem)
        total += float(match.group(1)) * _GO_DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(value):
        raise _Invalid(where, problem)
    return total


def _section(raw: object, where: str, allowed: tuple[str, ...]) -> dict[str, object]:
    if not isinstance(raw, dict):
        raise _Invalid(
            where, "must be a mapping" if where else "must be a YAML mapping of settings"
        )
    for key in raw:
        if key not in allowed:
            name = f"{where}.{key}" if where else str(key)
            raise _Invalid(name, f"unknown key (allowed: {', '.join(allowed)})")
    return {str(k): v for k, v in raw.items()}


def _opt_str(sec: Mapping[str, object], where: str, key: str) -> str | None:
    value = sec.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _Invalid(f"{where}.{key}", "must be a string")
    return value


def _opt_path(sec: Mapping[str, object], where: str, key: str, base_dir: Path) -> Path | None:
    text = _opt_str(sec, where, key)
    if text is None:
        return None
    path = (base_dir / Path(text).expanduser()).resolve()
    if not path.exists():
        raise _Invalid(f"{where}.{key}", f"file not found: {path}")
    if not path.is_file():
        raise _Invalid(f"{where}.{key}", f"not a regular file: {path}")
    return path


def _opt_bool(sec: Mapping[str, object], where: str, key: str, *, default: bool) -> bool:
    value = sec.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _Invalid(f"{where}.{key}", "must be true or false")
    return value


def _opt_str_list(sec: Mapping[str, object], where: str, key: str) -> tuple[str, ...]:
    value = sec.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Invalid(f"{where}.{key}", "must be a list of strings")
    return tuple(value)


def _tls_version(
    sec: Mapping[str, object], where: str, key: str, default: ssl.TLSVersion
) -> ssl.TLSVersion:
    name = _opt_str(sec, where, key)
    if name is None:
        return default
    if name not in _TLS_VERSIONS:
        raise _Invalid(
            f"{where}.{key}",
            f"unknown TLS version {name!r} (expected one of {', '.join(_TLS_VERSIONS)})",
        )
    return _TLS_VERSIONS[name]


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def _yaml_reason(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return str(problem)


# --------------------------------------------------------------------------------------------
# TLS


def build_ssl_context(cfg: WebConfig) -> ssl.SSLContext | None:
    """The server-side ``SSLContext`` for ``cfg``, or None when the file does not enable TLS.

    ``minimum_version`` defaults to TLS 1.2, so an older client is refused during the handshake,
    before any HTTP is read. ALPN offers only ``http/1.1`` because that is what uvicorn's h11
    protocol speaks; advertising ``h2`` would break clients that pick it.
    """
    tls = cfg.tls
    if tls is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = tls.min_version
    ctx.maximum_version = tls.max_version
    if tls.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    _load_cert_chain(ctx, tls, cfg.source)
    ctx.verify_mode = tls.verify_mode
    if tls.verify_mode != ssl.CERT_NONE:
        _load_client_ca(ctx, tls, cfg.source)
    openssl_ciphers = [_TLS12_CIPHERS[n] for n in tls.cipher_suites if n in _TLS12_CIPHERS]
    if openssl_ciphers:
        try:
            ctx.set_ciphers(":".join(openssl_ciphers))
        except ssl.SSLError:
            raise WebConfigError(
                cfg.source,
                "tls_server_config.cipher_suites",
                "none of the listed cipher suites is available in this OpenSSL build",
            ) from None
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def _load_cert_chain(ctx: ssl.SSLContext, tls: TLSServerConfig, source: str) -> None:
    where = "tls_server_config"
    cert_text = tls.cert if tls.cert is not None else _read_pem(tls.cert_file, source, "cert_file")
    key_text = tls.key if tls.key is not None else _read_pem(tls.key_file, source, "key_file")
    cert_key = "cert" if tls.cert is not None else "cert_file"
    key_key = "key" if tls.key is not None else "key_file"
    if "-----BEGIN CERTIFICATE-----" not in cert_text:
        raise WebConfigError(source, f"{where}.{cert_key}", "does not contain a PEM certificate")
    if not re.search(r"-----BEGIN [A-Z ]*PRIVATE KEY-----", key_text):
        raise WebConfigError(source, f"{where}.{key_key}", "does not contain a PEM private key")
    if "ENCRYPTED" in key_text:
        raise WebConfigError(
            source, f"{where}.{key_key}", "encrypted private keys are not supported"
        )
    # The ssl module loads certificates and keys only from files; inline PEM goes through a
    # private temporary directory that is removed right after loading.
    with tempfile.TemporaryDirectory(prefix="webconfig-") as tmp:
        cert_path = tls.cert_file or _write_private(Path(tmp) / "cert.pem", cert_text)
        key_path = tls.key_file or _write_private(Path(tmp) / "key.pem", key_text)
        try:
            # A password callback keeps OpenSSL from ever prompting on the terminal.
            ctx.load_cert_chain(cert_path, key_path, password=_no_password)
        except ssl.SSLError as exc:
            raise WebConfigError(
                source, where, f"cannot load the certificate and key: {_ssl_reason(exc)}"
            ) from None


def _load_client_ca(ctx: ssl.SSLContext, tls: TLSServerConfig, source: str) -> None:
    where = "tls_server_config"
    if tls.client_ca is not None:
        ca_key, ca_text = "client_ca", tls.client_ca
    else:
        ca_key, ca_text = "client_ca_file", _read_pem(tls.client_ca_file, source, "client_ca_file")
    if "-----BEGIN CERTIFICATE-----" not in ca_text:
        raise WebConfigError(source, f"{where}.{ca_key}", "does not contain a PEM certificate")
    try:
        ctx.load_verify_locations(cadata=ca_text)
    except ssl.SSLError as exc:
        raise WebConfigError(
            source, f"{where}.{ca_key}", f"cannot load the CA: {_ssl_reason(exc)}"
        ) from None


def _read_pem(path: Path | None, source: str, key: str) -> str:
    assert path is not None
    try:
        return path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise WebConfigError(
            source, f"tls_server_config.{key}", f"file not found: {path}"
        ) from None
    except UnicodeDecodeError:
        raise WebConfigError(
            source, f"tls_server_config.{key}", f"not a PEM file: {path}"
        ) from None
    except OSError as exc:
        raise WebConfigError(
            source, f"tls_server_config.{key}", f"cannot read {path}: {_os_reason(exc)}"
        ) from None


def _write_private(path: Path, text: str) -> Path:
    path.touch(mode=0o600)
    path.write_text(text, encoding="ascii")
    return path


def _no_password() -> bytes:
    return b""


def _ssl_reason(exc: ssl.SSLError) -> str:
    if exc.reason == "KEY_VALUES_MISMATCH":
        return "the private key does not match the certificate"
    text = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], str) else str(exc)
    return re.sub(r"\s*\(_ssl\.c:\d+\)$", "", text)


# --------------------------------------------------------------------------------------------
# Basic auth, response headers and rate limit


class WebSecurityMiddleware:
    """ASGI middleware: exporter-toolkit's rate limit, basic auth and response headers.

    It sits outside every route so no endpoint can forget it. bcrypt is deliberately slow, and a
    Prometheus scrape every 15 s would otherwise pay for it each time, so successful
    verifications are remembered for ``cache_ttl`` seconds under an HMAC of (user, hash, password)
    with a per-process random key: the plaintext password is never stored, logged or echoed.
    Failed attempts are not cached; they run bcrypt in a worker thread one at a time, so a flood
    of bad credentials cannot stall the event loop or starve the thread pool. Unknown users are
    checked against a dummy hash of the same cost, so response time does not reveal which user
    names exist. Lifespan and websocket scopes pass through untouched.
    """

    def __init__(
        self,
        app: ASGIApp,
        cfg: WebConfig,
        *,
        realm: str = DEFAULT_REALM,
        clock: Clock | None = None,
        cache_ttl: float = 300.0,
        cache_size: int = 100,
    ) -> None:
        self.app = app
        self._clock: Clock = clock or SystemClock()
        self._headers = [
            (n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in cfg.http.headers
        ]
        self._header_names = frozenset(name for name, _ in self._headers)
        self._users = [
            (u.encode("utf-8"), h.encode("ascii")) for u, h in cfg.basic_auth_users.items()
        ]
        self._dummy_hash = _dummy_hash(h for _, h in self._users) if self._users else b""
        safe_realm = realm.replace("\\", "\\\\").replace('"', '\\"')
        self._challenge = f'Basic realm="{safe_realm}", charset="UTF-8"'.encode("latin-1")
        self._cache_key = secrets.token_bytes(32)
        self._cache: dict[bytes, float] = {}
        self._cache_ttl = cache_ttl
        self._cache_size = cache_size
        self._bcrypt_lock = asyncio.Lock()
        self._bucket = _TokenBucket(cfg.rate_limit, self._clock) if cfg.rate_limit else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._bucket is not None and not self._bucket.take():
            await self._plain_response(send, 429, b"Too Many Requests\n")
            return
        if self._users and not await self._authorized(scope):
            await self._plain_response(
                send, 401, b"Unauthorized\n", [(b"www-authenticate", self._challenge)]
            )
            return
        if not self._headers:
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [
                    (name, value)
                    for name, value in message.get("headers", [])
                    if bytes(name).lower() not in self._header_names
                ]
                message = {**message, "headers": kept + self._headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _authorized(self, scope: Scope) -> bool:
        credentials = _basic_credentials(scope)
        if credentials is None:
            return False
        user, password = credentials
        hashed, known = self._lookup(user)
        key = self._cache_digest(user, hashed, password)
        if self._cached(key):
            return known
        async with self._bcrypt_lock:
            if self._cached(key):  # verified by a concurrent request while we waited
                return known
            ok = await asyncio.to_thread(_bcrypt_matches, password, hashed)
        if ok and known:
            self._remember(key)
            return True
        logger.debug("basic auth refused for a request to %s", scope.get("path", ""))
        return False

    def _lookup(self, user: bytes) -> tuple[bytes, bool]:
        """Find the user's hash comparing every name in constant time; dummy hash if unknown."""
        found, known = self._dummy_hash, False
        for name, hashed in self._users:
            if hmac.compare_digest(name, user):
                found, known = hashed, True
        return found, known

    def _cache_digest(self, user: bytes, hashed: bytes, password: bytes) -> bytes:
        mac = hmac.new(self._cache_key, digestmod=hashlib.sha256)
        for part in (user, hashed, password):
            mac.update(len(part).to_bytes(8, "big"))
            mac.update(part)
        return mac.digest()

    def _cached(self, key: bytes) -> bool:
        expires = self._cache.get(key)
        if expires is None:
            return False
        if expires <= self._clock.monotonic():
            del self._cache[key]
            return False
        return True

    def _remember(self, key: bytes) -> None:
        now = self._clock.monotonic()
        if len(self._cache) >= self._cache_size:
            for stale in [k for k, exp in self._cache.items() if exp <= now]:
                del self._cache[stale]
        while len(self._cache) >= self._cache_size:
            del self._cache[next(iter(self._cache))]  # oldest first: dicts keep insertion order
        self._cache[key] = now + self._cache_ttl

    async def _plain_response(
        self,
        send: Send,
        status: int,
        body: bytes,
        extra: Iterable[tuple[bytes, bytes]] = (),
    ) -> None:
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode("ascii")),
            *extra,
            *self._headers,
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _TokenBucket:
    """exporter-toolkit's ``rate_limit``: one token per interval, at most ``burst`` saved up."""

    def __init__(self, cfg: RateLimitConfig, clock: Clock) -> None:
        self._interval = cfg.interval_seconds
        self._burst = float(cfg.burst)
        self._tokens = float(cfg.burst)
        self._clock = clock
        self._last = clock.monotonic()

    def take(self) -> bool:
        now = self._clock.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._last) / self._interval)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


def _basic_credentials(scope: Scope) -> tuple[bytes, bytes] | None:
    for name, value in scope.get("headers", []):
        if bytes(name).lower() != b"authorization":
            continue
        scheme, _, token = bytes(value).strip().partition(b" ")
        if scheme.lower() != b"basic":
            return None
        try:
            decoded = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            return None
        user, sep, password = decoded.partition(b":")
        return (user, password) if sep else None
    return None


def _bcrypt_matches(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:
        # bcrypt >= 5 refuses passwords over 72 bytes (and NUL bytes); that is a failed login.
        return False


def _dummy_hash(hashes: Iterable[bytes]) -> bytes:
    """A hash of a random password at the highest configured cost, for unknown user names."""
    cost = max(int(h[4:6]) for h in hashes)
    return bcrypt.hashpw(secrets.token_bytes(16).hex().encode(), bcrypt.gensalt(rounds=cost))


# --------------------------------------------------------------------------------------------
# uvicorn


def make_uvicorn_server(
    app: ASGIApp,
    host: str,
    port: int,
    web_config: WebConfig | None,
    log_level: str = "warning",
) -> uvicorn.Server:
    """A uvicorn server for ``app`` with ``web_config``'s TLS, auth and headers applied.

    uvicorn builds its own ``SSLContext`` from ``ssl_certfile`` & co. inside ``Config.load()``,
    and that builder cannot express ``min_version``, ``client_auth_type`` modes or inline PEM.
    So the config is loaded here, then ``config.ssl`` is replaced with ours; ``Server.serve()``
    skips ``load()`` for a loaded config and passes ``config.ssl`` to ``loop.create_server``.
    (Checked against uvicorn 0.54; the same holds back to 0.30.) ``port=0`` binds an ephemeral
    port; read it with ``bound_port`` once ``server.started`` is true. ``log_config=None`` leaves
    logging to the agent's own setup instead of uvicorn's dictConfig.
    """
    wrapped: ASGIApp = app if web_config is None else WebSecurityMiddleware(app, web_config)
    config = uvicorn.Config(
        wrapped,
        host=host,
        port=port,
        log_level=log_level,
        log_config=None,
        http="h11",
        ws="none",
        server_header=False,
    )
    config.load()
    config.ssl = build_ssl_context(web_config) if web_config is not None else None
    return uvicorn.Server(config)


def bound_port(server: uvicorn.Server) -> int:
    """The TCP port ``server`` listens on (useful with ``port=0``); call after startup."""
    if not server.started:
        raise RuntimeError("the server has not started yet")
    for listener in getattr(server, "servers", []):
        for sock in listener.sockets or ():
            port = sock.getsockname()[1]
            if isinstance(port, int):
                return port
    raise RuntimeError("the server has no listening TCP socket")


async def wait_started(server: uvicorn.Server, task: asyncio.Task[Any]) -> None:
    """Wait until ``server`` (running as ``task``) listens, or fail fast if it stopped.

    uvicorn offers no startup event, only the ``started`` flag, so this polls it; a startup
    failure (port in use, app error) surfaces at once instead of after the caller's deadline.
    Bound it with ``asyncio.timeout``.
    """
    while not server.started:
        if task.done():
            task.result()  # re-raise the failure
            raise RuntimeError("the server stopped before it started listening")
        await asyncio.sleep(0.005)
