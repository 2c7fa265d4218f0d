"""The configuration schema: one YAML file plus ``SOPHOS_EXPORTER_*`` environment variables.

This module is the single description of what a user may configure (the README's configuration
reference follows it). A mistake must come back as one readable sentence that names the key,
because the person reading it is usually an on-call engineer staring at a crash-looping container.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import ssl
import stat
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from agent.configfile import ConfigError as ConfigError  # re-exported: callers catch it here
from agent.configfile import read_mapping, validation_problems
from agent.durations import format_duration, parse_duration
from agent.expiry import format_expires_at, parse_expires_at
from agent.families import Family, ProbeSpec, parse_specs, resolve, spec_as_config
from agent.logs import REDACTOR
from agent.sophos import is_data_region_url

ENV_PREFIX = "SOPHOS_EXPORTER_"
DEFAULT_AUTH_URL = "https://id.sophos.com/api/v2/oauth2/token"
DEFAULT_API_URL = "https://api.central.sophos.com"
DEFAULT_STATE_FILE = "/var/lib/sophos-central-exporter/state.db"
DEFAULT_RATE_LIMITS: dict[str, int] = {"1s": 10, "1m": 100, "1h": 1000, "1d": 50000}
WINDOW_SECONDS: dict[str, int] = {"1s": 1, "1m": 60, "1h": 3600, "1d": 86400}
DEFAULT_TENANT_PROBE_PATH = "/endpoint/v1/endpoints?pageSize=1&view=basic"

_CREDENTIAL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]
ExpiresAt = Annotated[
    datetime,
    BeforeValidator(parse_expires_at),
    PlainSerializer(format_expires_at, return_type=str, when_used="json"),
]
"""A credential's expiry date as Sophos Central shows it (``agent.expiry``)."""
TenantProbes = Annotated[
    tuple[ProbeSpec, ...],
    BeforeValidator(parse_specs),
    PlainSerializer(lambda specs: [spec_as_config(s) for s in specs], when_used="json"),
]


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals: the only hosts allowed plain http."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_url(url: str) -> str:
    """Accept https URLs, and http only towards loopback (the simulator, tests)."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s) URL")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise ValueError("plain http:// is accepted only for loopback hosts; use https://")
    return url.rstrip("/") if parts.path in ("", "/") else url


def check_proxy_url(url: str) -> None:
    """An ``http://`` or ``https://`` proxy with a host, optional port and ``user:password@``.

    Messages name the proxy by scheme, host and port only: the URL may carry a password.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise ValueError("is not a URL; use http://[user:password@]host:port") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(
            "must start with http:// or https:// (the proxy's own scheme; socks is not supported)"
        )
    if not parts.hostname:
        raise ValueError("has no host; use http://[user:password@]host:port")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        where = f"{parts.scheme}://{parts.hostname}" + (f":{port}" if port else "")
        raise ValueError(f"must be just {where} (no path, query or fragment)")


EXTERNAL_URL_EXAMPLE = "https://exporter.example.com or http://exporter.example.com:9866/prefix"


def check_external_url(url: str) -> str:
    """The exporter's URL as users reach it, without a trailing slash (links append paths).

    Any host and plain http are fine (it is only ever shown, never called), but not a query or
    fragment (``/status?...`` is appended) and not ``user:password@``: every alert carries it.
    """
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError(f"is not a URL; use e.g. {EXTERNAL_URL_EXAMPLE}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"must be an http:// or https:// URL with a host, e.g. {EXTERNAL_URL_EXAMPLE}"
        )
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry user:password@: every alert shows this URL")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query or fragment: links append /status?... to it")
    return url.strip().rstrip("/")


class Credential(BaseModel):
    """One Sophos Central API credential (partner, organization or tenant)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    client_id: SecretStr
    client_secret: SecretStr | None = None
    client_secret_file: Path | None = None
    expires_at: ExpiresAt | None = None
    """When Sophos Central stops accepting the credential (optional; no API reads it)."""

    @field_validator("name")
    @classmethod
    def _label_safe_name(cls, value: str) -> str:
        if not _CREDENTIAL_NAME.fullmatch(value):
            raise ValueError(
                "must start with a letter or digit and use only letters, digits, '_', '.', ':' "
                "or '-' (at most 64 characters); it becomes a label value"
            )
        return value

    @field_validator("client_id")
    @classmethod
    def _non_empty_id(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _one_secret_source(self) -> Credential:
        if (self.client_secret is None) == (self.client_secret_file is None):
            raise ValueError("set exactly one of client_secret or client_secret_file")
        if self.client_secret_file is not None and not self.client_secret_file.is_file():
            raise ValueError(f"client_secret_file {self.client_secret_file} is not a readable file")
        return self

    def secret(self) -> str:
        """The client secret, read from the file each time so that rotated files are picked up.

        A secret read from the file is made known to the redactor here, before the caller can
        send it: a rotated secret echoed back in an error body is masked from its first use."""
        if self.client_secret is not None:
            return self.client_secret.get_secret_value()
        assert self.client_secret_file is not None
        value = self.client_secret_file.read_text(encoding="utf-8").strip()
        REDACTOR.add([value])
        return value

    @property
    def expiry(self) -> float | None:
        """``expires_at`` as a Unix time, None when not configured."""
        return None if self.expires_at is None else self.expires_at.timestamp()


class Settings(BaseSettings):
    """The whole agent configuration. Environment variables override the file."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        case_sensitive=False,
        extra="forbid",
        frozen=True,
    )

    auth_url: str = DEFAULT_AUTH_URL
    api_url: str = DEFAULT_API_URL
    allowed_api_hosts: list[str] = Field(default_factory=lambda: ["*.sophos.com"])
    ca_bundle: Path | None = None
    tls_x509_strict: bool = True
    probe_interval: Duration = 60.0
    token_probe_interval: Duration = 300.0
    tenant_refresh_interval: Duration = 900.0
    request_timeout: Duration = 10.0
    budget_share: float = 0.1
    rate_limits: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_RATE_LIMITS))
    state_file: Path = Path(DEFAULT_STATE_FILE)
    shard: int = 0
    total_shards: int = 1
    tenant_probe_path: str = DEFAULT_TENANT_PROBE_PATH
    tenant_probes: TenantProbes = (ProbeSpec("tenant"),)
    confirm_interval: Duration = 60.0
    max_response_bytes: int = 1_048_576
    log_format: Literal["logfmt", "json"] = "logfmt"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    web_listen_address: str = ":9866"
    rate_limit_scope: Literal["credential", "tenant"] = "credential"
    proxy_url: SecretStr | None = None
    proxy_from_environment: bool = False
    external_url: str | None = None
    """The exporter's URL as users reach it (like Prometheus's ``--web.external-url``): alerts
    link to its ``/status`` page through ``sophos_central_exporter_external_url_info``."""
    credentials: list[Credential] = Field(min_length=1)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment first, then the YAML file (passed as init values): env wins."""
        return (env_settings, init_settings)

    @field_validator("auth_url", "api_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_url(value)

    @field_validator("allowed_api_hosts")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            if not pattern or "/" in pattern or ":" in pattern.strip("[]"):
                raise ValueError(
                    f"{pattern!r} is not a host name pattern (no scheme, port or path: "
                    "'*.sophos.com', '127.0.0.1')"
                )
        return [p.lower() for p in value]

    @field_validator("external_url")
    @classmethod
    def _external_url(cls, value: str | None) -> str | None:
        return None if value is None else check_external_url(value)

    @field_validator("ca_bundle")
    @classmethod
    def _ca_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a readable file")
        if value is not None:
            # Load it now: a bad bundle found when the HTTP client is built is a traceback.
            try:
                ssl.create_default_context().load_verify_locations(cafile=str(value))
            except (ssl.SSLError, OSError, ValueError) as exc:
                reason = getattr(exc, "reason", None) or exc.__class__.__name__
                raise ValueError(
                    f"{value} is not a PEM file of CA certificates ({reason})"
                ) from None
        return value

    @field_validator("proxy_url", mode="before")
    @classmethod
    def _proxy(cls, value: Any) -> Any:
        """Only the proxy's scheme, host and port may be echoed: its URL may hold a password."""
        if value is None:
            return None
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if not isinstance(text, str):
            raise ValueError("must be a URL such as http://proxy.example:3128")
        check_proxy_url(text)
        return text

    @field_validator("budget_share")
    @classmethod
    def _share(cls, value: float) -> float:
        if not (0 < value <= 1) or not math.isfinite(value):
            raise ValueError(f"must be greater than 0 and at most 1 (got {value})")
        return value

    @field_validator("rate_limits", mode="before")
    @classmethod
    def _limits(cls, value: Any) -> dict[str, int]:
        if not isinstance(value, dict):
            raise ValueError("must be a mapping of window (1s, 1m, 1h, 1d) to a number of calls")
        merged = dict(DEFAULT_RATE_LIMITS)
        for key, limit in value.items():
            window = str(key).lower()
            if window not in WINDOW_SECONDS:
                raise ValueError(f"unknown window {key!r}; use 1s, 1m, 1h or 1d")
            if isinstance(limit, bool) or not isinstance(limit, int | str):
                raise ValueError(f"{window}: must be a positive whole number of calls")
            try:
                number = int(limit)
            except ValueError:
                raise ValueError(f"{window}: must be a positive whole number of calls") from None
            if number < 1:
                raise ValueError(f"{window}: must be a positive whole number of calls")
            merged[window] = number
        return merged

    @field_validator("tenant_probe_path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must be a path starting with '/'")
        return value

    @field_validator("max_response_bytes")
    @classmethod
    def _cap(cls, value: int) -> int:
        if value < 1024:
            raise ValueError("must be at least 1024")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        if self.total_shards < 1:
            raise ValueError("total_shards: must be at least 1")
        if not 0 <= self.shard < self.total_shards:
            raise ValueError(
                f"shard: must be between 0 and total_shards - 1 ({self.total_shards - 1})"
            )
        names = [c.name for c in self.credentials]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"credentials: duplicate name {duplicates[0]!r}")
        return self

    @property
    def shard_budget_share(self) -> float:
        """This process's share of every window: each of M shards spends budget_share / M."""
        return self.budget_share / self.total_shards

    @property
    def families(self) -> tuple[Family, ...]:
        """The per-tenant probes to run, resolved from ``tenant_probes`` (see agent.families)."""
        return resolve(self.tenant_probes, self.tenant_probe_path)

    def masked(self) -> dict[str, Any]:
        """The effective configuration with every secret (and client id) masked."""
        data = self.model_dump(mode="json")
        for cred in data["credentials"]:
            cred["client_id"] = "<masked>"
            if cred.get("client_secret") is not None:
                cred["client_secret"] = "<masked>"  # noqa: S105 - a mask, not a secret
        if self.proxy_url is not None:
            data["proxy_url"] = masked_proxy_url(self.proxy_url.get_secret_value())
        return data


def masked_proxy_url(url: str) -> str:
    """The proxy URL as it may be shown: credentials, if any, masked."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://<masked>@{host}"


def load_settings(path: str | os.PathLike[str] | None, **overrides: Any) -> Settings:
    """Build the settings from a YAML file, the environment and command-line overrides.

    Every failure becomes a ``ConfigError`` whose message names the file, the key and the problem
    (``agent.configfile``: the same loader and format as the web config file).
    """
    data = read_mapping(path, "config file") if path is not None else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings(**data)
    except ValidationError as exc:
        where = f"config file {path}" if path is not None else "configuration"
        raise ConfigError.invalid(where, validation_problems(exc, Settings)) from None


def group_or_world_readable(path: str | os.PathLike[str]) -> bool:
    """True when a file's mode lets users other than its owner read it."""
    try:
        mode = Path(path).stat().st_mode
    except OSError:
        return False
    return bool(mode & (stat.S_IRGRP | stat.S_IROTH))


def api_url_warning(settings: Settings) -> str | None:
    """A one-line warning when ``api_url`` names a data-region host, else None.

    Not an error: the value is a valid URL, and a proxy or test setup may have reasons. But on
    the real service whoami answers 504 there, which would otherwise read as a Sophos outage.
    """
    if not is_data_region_url(settings.api_url):
        return None
    return (
        f"api_url {settings.api_url} is a data-region host, which does not serve whoami or the "
        f"tenant lists; use {DEFAULT_API_URL}"
    )


def has_inline_secret(settings: Settings) -> bool:
    """True when any credential keeps its secret in the config itself rather than in a file."""
    return any(c.client_secret is not None for c in settings.credentials)
