"""``--web.config.file``: the exporter-toolkit web configuration, as a strict pydantic model.

Prometheus operators already write one web configuration file for node_exporter, blackbox_exporter
and Prometheus itself (https://github.com/prometheus/exporter-toolkit, docs/web-configuration.md).
Accepting the same file here means the same runbook, the same secret-management pipeline and the
same Prometheus ``scrape_config`` work for this exporter too. The file is read like the agent's
own configuration (``agent.configfile``: duplicate keys refused, one error format) and validated
strictly: an unknown key, a value of the wrong type or a setting Python's TLS stack cannot honour
is an error that names the key, because silently serving plain HTTP or skipping a
client-certificate check would be worse than refusing to start.

Where Python's ``ssl`` module cannot express a Go ``crypto/tls`` setting exactly, the mapping errs
on the strict side and says so in a warning at load time (see docs/web-config.md).
"""

from __future__ import annotations

import enum
import logging
import re
import ssl
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from agent.configfile import KeyProblem
from agent.durations import format_duration, parse_duration

logger = logging.getLogger(__name__)

WHAT = "web config file"


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
VERIFY_MODES = {
    ClientAuthType.NO_CLIENT_CERT: ssl.CERT_NONE,
    ClientAuthType.REQUEST_CLIENT_CERT: ssl.CERT_NONE,
    ClientAuthType.REQUIRE_ANY_CLIENT_CERT: ssl.CERT_REQUIRED,
    ClientAuthType.VERIFY_CLIENT_CERT_IF_GIVEN: ssl.CERT_OPTIONAL,
    ClientAuthType.REQUIRE_AND_VERIFY_CLIENT_CERT: ssl.CERT_REQUIRED,
}

TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
TLS_VERSION_NAMES = {version: name for name, version in TLS_VERSIONS.items()}

# Go's tls.CipherSuites() (the only names exporter-toolkit accepts) and their OpenSSL spelling.
# TLS 1.3 suites are not configurable in Go either; they are accepted and have no effect.
TLS13_CIPHERS = frozenset(
    {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}
)
TLS12_CIPHERS = {
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
_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)


def _string_list(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("must be a list of strings")
    return tuple(value)


def _tls_version(value: Any) -> ssl.TLSVersion:
    if isinstance(value, ssl.TLSVersion):
        return value
    if not isinstance(value, str) or value not in TLS_VERSIONS:
        raise ValueError(
            f"unknown TLS version {value!r} (expected one of {', '.join(TLS_VERSIONS)})"
        )
    return TLS_VERSIONS[value]


def _file_path(value: Any, info: ValidationInfo) -> Path | None:
    """A file the config points at, relative to the config file's directory; must exist."""
    if value is None or value == "" or isinstance(value, Path):
        return value or None
    if not isinstance(value, str):
        raise ValueError("must be a string")
    base = (info.context or {}).get("base_dir", Path.cwd())
    path = (Path(base) / Path(value).expanduser()).resolve()
    if not path.exists():
        raise ValueError(f"file not found: {path}")
    if not path.is_file():
        raise ValueError(f"not a regular file: {path}")
    return path


def _inline(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


StringList = Annotated[tuple[str, ...], BeforeValidator(_string_list)]
TLSVersionName = Annotated[ssl.TLSVersion, BeforeValidator(_tls_version)]
FilePath = Annotated[Path | None, BeforeValidator(_file_path)]
InlinePEM = Annotated[str | None, BeforeValidator(_inline)]


class TLSServerConfig(BaseModel):
    """``tls_server_config``; file paths are absolute once validated."""

    model_config = _STRICT

    cert: InlinePEM = None
    key: InlinePEM = Field(default=None, repr=False)
    client_ca: InlinePEM = None
    cert_file: FilePath = None
    key_file: FilePath = None
    client_auth_type: ClientAuthType = ClientAuthType.NO_CLIENT_CERT
    client_ca_file: FilePath = None
    client_allowed_sans: StringList = ()
    min_version: TLSVersionName = ssl.TLSVersion.TLSv1_2
    max_version: TLSVersionName = ssl.TLSVersion.TLSv1_3
    cipher_suites: StringList = ()
    prefer_server_cipher_suites: bool = True
    curve_preferences: StringList = ()

    @property
    def enabled(self) -> bool:
        """exporter-toolkit serves plain HTTP for a TLS section that sets nothing; so do we."""
        return any(
            v is not None
            for v in (self.cert, self.key, self.client_ca, self.cert_file, self.key_file)
        ) or (self.client_ca_file is not None or "client_auth_type" in self.model_fields_set)

    @property
    def verify_mode(self) -> ssl.VerifyMode:
        """The ``ssl`` verify mode this ``client_auth_type`` maps to."""
        return VERIFY_MODES[self.client_auth_type]

    @field_validator("client_auth_type", mode="before")
    @classmethod
    def _auth_type(cls, value: Any) -> ClientAuthType:
        if isinstance(value, ClientAuthType):
            return value
        if value in _CLIENT_AUTH_ALIASES:
            return _CLIENT_AUTH_ALIASES[value]
        try:
            return ClientAuthType(value)
        except ValueError:
            expected = ", ".join(t.value for t in ClientAuthType)
            raise ValueError(f"unknown value {value!r} (expected one of {expected})") from None

    @field_validator("client_allowed_sans")
    @classmethod
    def _no_sans(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if value:
            raise ValueError(
                "not supported by this exporter (Python's TLS stack cannot check client SANs "
                "during the handshake); issue client certificates from a dedicated CA instead"
            )
        return value

    @field_validator("cipher_suites")
    @classmethod
    def _ciphers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if name not in TLS12_CIPHERS and name not in TLS13_CIPHERS:
                raise ValueError(f"unknown cipher {name!r}")
        return value

    @field_validator("curve_preferences")
    @classmethod
    def _curves(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if name not in _CURVES:
                raise ValueError(f"unknown curve {name!r} (expected one of {', '.join(_CURVES)})")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TLSServerConfig:
        if not self.enabled:
            return self
        if self.cert_file is None and self.cert is None:
            raise ValueError("missing one of cert or cert_file")
        if self.key_file is None and self.key is None:
            raise ValueError("missing one of key or key_file")
        for name in ("cert", "key", "client_ca"):
            if getattr(self, name) is not None and getattr(self, f"{name}_file") is not None:
                raise KeyProblem(name, f"set either {name} or {name}_file, not both")
        auth = self.client_auth_type
        has_ca = self.client_ca_file is not None or self.client_ca is not None
        if has_ca and auth is ClientAuthType.NO_CLIENT_CERT:
            raise KeyProblem(
                "client_ca_file" if self.client_ca_file is not None else "client_ca",
                "a client CA is set but client_auth_type is NoClientCert; "
                "set client_auth_type: RequireAndVerifyClientCert to check client certificates",
            )
        if not has_ca and VERIFY_MODES[auth] != ssl.CERT_NONE:
            raise KeyProblem(
                "client_ca_file",
                f"required when client_auth_type is {auth.value} (or give client_ca inline)",
            )
        if self.min_version > self.max_version:
            raise ValueError(
                f"min_version {TLS_VERSION_NAMES[self.min_version]} is above "
                f"max_version {TLS_VERSION_NAMES[self.max_version]}"
            )
        return self


def _headers(value: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise ValueError("must be a mapping of header name to value")
    headers: list[tuple[str, str]] = []
    for name, text in value.items():
        if not isinstance(name, str) or name not in _ALLOWED_HEADERS:
            raise ValueError(
                f"HTTP header {str(name)!r} can not be configured "
                f"(allowed: {', '.join(_ALLOWED_HEADERS)})"
            )
        if text is None or text == "":
            continue  # "Unset if blank" in exporter-toolkit
        if not isinstance(text, str):
            raise KeyProblem(name, "must be a string")
        allowed = _ALLOWED_HEADERS[name]
        if allowed and text not in allowed:
            expected = ", ".join(map(repr, allowed))
            raise KeyProblem(name, f"invalid value {text!r} (expected one of {expected})")
        if any(ch in text for ch in "\r\n\0"):
            raise KeyProblem(name, "must not contain line breaks or NUL")
        try:
            text.encode("latin-1")
        except UnicodeEncodeError:
            raise KeyProblem(name, "must be ASCII/Latin-1 text") from None
        headers.append((name, text))
    return tuple(headers)


class HTTPServerConfig(BaseModel):
    """``http_server_config``: ``http2`` is accepted but only HTTP/1.1 is served."""

    model_config = _STRICT

    http2: bool = True
    headers: Annotated[tuple[tuple[str, str], ...], BeforeValidator(_headers)] = ()


def _users(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError("must be a mapping of user name to bcrypt hash")
    for name, hashed in value.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"user name {name!r} must be a non-empty string")
        if ":" in name:
            raise ValueError(f"user name {name!r} must not contain ':' (basic auth splits on it)")
        if not isinstance(hashed, str) or not _BCRYPT_HASH.fullmatch(hashed):
            # The value is deliberately not echoed: it may be a plaintext password by mistake.
            raise KeyProblem(
                name,
                "not a bcrypt hash (expected $2y$, $2b$ or $2a$, a cost from 04 to 31 and 53 "
                "characters of salt and hash; see docs/web-config.md to make one)",
            )
    return dict(value)


class RateLimitConfig(BaseModel):
    """``rate_limit``: one request per ``interval`` seconds, bursts up to ``burst``."""

    model_config = _STRICT

    interval: Annotated[float, BeforeValidator(lambda v: parse_duration(v, allow_zero=True))] = 0.0
    burst: int = 0

    @model_validator(mode="after")
    def _burst_with_interval(self) -> RateLimitConfig:
        if self.interval > 0 and self.burst < 1:
            raise KeyProblem("burst", "must be at least 1 when rate_limit.interval is set")
        return self


class WebConfig(BaseModel):
    """A validated web configuration file; ``tls`` is None when the file does not enable TLS."""

    model_config = _STRICT

    tls_server_config: TLSServerConfig | None = None
    http_server_config: HTTPServerConfig = HTTPServerConfig()
    basic_auth_users: Annotated[dict[str, str], BeforeValidator(_users)] = Field(
        default_factory=dict, repr=False
    )
    rate_limit: RateLimitConfig | None = None
    _source: str = PrivateAttr(default=WHAT)

    @property
    def source(self) -> str:
        """How messages name the file: ``web config file <path>``."""
        return self._source

    @property
    def tls(self) -> TLSServerConfig | None:
        tls = self.tls_server_config
        return tls if tls is not None and tls.enabled else None

    @property
    def http(self) -> HTTPServerConfig:
        return self.http_server_config

    @property
    def request_limit(self) -> RateLimitConfig | None:
        """``rate_limit`` when it limits anything (an interval of 0 turns it off)."""
        limit = self.rate_limit
        return limit if limit is not None and limit.interval > 0 else None


def describe_web_config(cfg: WebConfig) -> str:
    """What the file turns on, in one line for ``config check`` (no secret: user names only)."""
    parts: list[str] = []
    tls = cfg.tls
    if tls is None:
        parts.append("plain HTTP (no TLS)")
    else:
        versions = f"{TLS_VERSION_NAMES[tls.min_version]} to {TLS_VERSION_NAMES[tls.max_version]}"
        parts.append(f"TLS {versions}, client certificates: {tls.client_auth_type.value}")
    users = sorted(cfg.basic_auth_users)
    parts.append(f"basic auth for {', '.join(users)}" if users else "no basic auth")
    if cfg.http.headers:
        parts.append("headers " + ", ".join(name for name, _ in cfg.http.headers))
    limit = cfg.request_limit
    if limit is not None:
        every = format_duration(limit.interval)
        parts.append(f"rate limit one request per {every} (burst {limit.burst})")
    return "; ".join(parts)


def warn_about_approximations(tls: TLSServerConfig | None) -> None:
    """Say where behaviour differs from Go's, so nobody learns it from an incident."""
    if tls is None:
        return
    if tls.client_auth_type is ClientAuthType.REQUEST_CLIENT_CERT:
        logger.warning(
            "client_auth_type RequestClientCert: no client certificate is requested, because "
            "Python's TLS stack cannot request one without verifying it and the exporter does "
            "not use it; use RequireAndVerifyClientCert to restrict access by certificate"
        )
    elif tls.client_auth_type is ClientAuthType.REQUIRE_ANY_CLIENT_CERT:
        logger.warning(
            "client_auth_type RequireAnyClientCert is enforced as RequireAndVerifyClientCert: "
            "client certificates must chain to the configured client CA"
        )
    if tls.min_version < ssl.TLSVersion.TLSv1_2:
        logger.warning(
            "min_version %s: OpenSSL's default security level may still refuse these old "
            "protocol versions",
            TLS_VERSION_NAMES[tls.min_version],
        )
    if tls.curve_preferences:
        logger.warning(
            "curve_preferences is accepted but not applied: Python's ssl module cannot set a "
            "curve preference list; OpenSSL's defaults are used"
        )
