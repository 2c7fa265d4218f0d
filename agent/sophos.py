"""Sophos Central data as the agent uses it, parsed defensively from untrusted JSON.

Everything here is built from API responses, so every field is checked for type, length and
characters before it can become a label value or a URL the agent will call.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from agent.text import printable

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_TOKEN_VALUE = re.compile(r"[\x21-\x7e]{1,16384}")
"""Visible ASCII only: the token becomes an Authorization header value."""
_URL_HOST = re.compile(r"[a-z0-9._:-]{1,253}")
_REGION_HOST = re.compile(r"^api-([a-z0-9]{2,8})\.central\.sophos\.com$")
_DATA_REGION_HOST = re.compile(r"^api-[a-z]{2}[0-9]{2}\.central\.sophos\.com\.?$")
MAX_LABEL_TEXT = 128
MAX_URL = 2048
MAX_PAGES = 1000
"""The agent reads at most this many tenant-list pages per listing (100,000 tenants)."""
PAGE_CAP_REMEDY = "split the tenants over several credentials"
"""What to do about a tenant list longer than ``MAX_PAGES`` pages: its tenants beyond the cap are
never listed, so never probed."""

MAX_CLAIMED_PAGES = 1_000_000_000
"""A ``pages.total`` above this is not believed either: reported as this."""
TENANT_PAGE_SIZE = 100


class InvalidResponse(ValueError):
    """A 2XX body that does not have the shape the API documents."""


class NotSophosAnswer(InvalidResponse):
    """A 2XX JSON object with none of the fields the call answers with: not a broken answer of
    Sophos's but someone else's (a health or status document, a portal's own API)."""


def expect_some(body: dict[str, Any], keys: tuple[str, ...], what: str) -> None:
    """Raise ``NotSophosAnswer`` unless ``body`` has at least one of the call's ``keys``."""
    if not any(key in body for key in keys):
        names = ", ".join(keys)
        raise NotSophosAnswer(f"{what} has none of the fields it answers with ({names})")


@dataclass(frozen=True)
class Token:
    """An access token; ``repr`` never shows the value."""

    value: str = field(repr=False)
    issued_at: float
    expires_at: float


@dataclass(frozen=True)
class WhoAmI:
    id: str
    id_type: str
    global_url: str
    data_region_url: str | None = None

    @property
    def header(self) -> tuple[str, str] | None:
        """The id header that partner and organization calls must carry."""
        if self.id_type == "partner":
            return ("X-Partner-ID", self.id)
        if self.id_type == "organization":
            return ("X-Organization-ID", self.id)
        return None


@dataclass(frozen=True)
class Tenant:
    id: str
    name: str
    data_region: str = ""
    billing_type: str = ""
    api_host: str | None = None
    data_geography: str = ""
    api_host_problem: str = ""
    """Why an ``apiHost`` the list did give is refused for its form ('' when there is none, or
    it is a URL the agent may consider): such a tenant is reported, never called."""


@dataclass(frozen=True)
class TenantPage:
    """One tenant-list page: ``total_pages`` is what the agent will read (``pages.total``, at
    most ``MAX_PAGES``), ``claimed_pages`` what ``pages.total`` said."""

    tenants: list[Tenant]
    total_pages: int
    skipped: int = 0
    claimed_pages: int = 1


def label_text(value: Any, limit: int = MAX_LABEL_TEXT) -> str:
    """A string fit for a label value: printable, trimmed, bounded; anything else becomes ''."""
    if not isinstance(value, str):
        return ""
    cleaned = printable(value).strip()
    return cleaned[:limit].rstrip()


def parse_token(body: Any, now: float) -> Token:
    if not isinstance(body, dict):
        raise InvalidResponse("token response is not a JSON object")
    expect_some(body, ("access_token", "token_type", "expires_in"), "token response")
    value = body.get("access_token")
    if not isinstance(value, str) or not value or len(value) > 16384:
        raise InvalidResponse("token response has no access_token")
    if not _TOKEN_VALUE.fullmatch(value):
        raise InvalidResponse("token response has an access_token with characters no token has")
    expires_in = body.get("expires_in", 3600)
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
        raise InvalidResponse("token response has a non-numeric expires_in")
    # Python's json accepts NaN, Infinity and integers too large for a float; NaN would make
    # the token never fresh and the expiry gauge unrenderable.
    try:
        seconds = float(expires_in)
    except OverflowError:
        seconds = math.inf if expires_in > 0 else 0.0
    if math.isnan(seconds):
        raise InvalidResponse("token response has a non-numeric expires_in")
    lifetime = min(max(seconds, 0.0), 86400.0)
    return Token(value=value, issued_at=now, expires_at=now + lifetime)


def parse_whoami(body: Any) -> WhoAmI:
    if not isinstance(body, dict):
        raise InvalidResponse("whoami response is not a JSON object")
    expect_some(body, ("id", "idType", "apiHosts"), "whoami response")
    ident = body.get("id")
    id_type = body.get("idType")
    hosts = body.get("apiHosts")
    if not isinstance(ident, str) or not _ID.fullmatch(ident):
        raise InvalidResponse("whoami response has no valid id")
    if id_type not in ("tenant", "partner", "organization"):
        raise InvalidResponse("whoami response has an unknown idType")
    if not isinstance(hosts, dict) or not _is_url(hosts.get("global")):
        raise InvalidResponse("whoami response has no apiHosts.global")
    region = hosts.get("dataRegion")
    if id_type == "tenant" and not _is_url(region):
        raise InvalidResponse("whoami response for a tenant has no apiHosts.dataRegion")
    return WhoAmI(
        id=ident,
        id_type=str(id_type),
        global_url=str(hosts["global"]).rstrip("/"),
        data_region_url=str(region).rstrip("/") if _is_url(region) else None,
    )


def parse_tenant_page(body: Any) -> TenantPage:
    """One page of ``/partner/v1/tenants`` or ``/organization/v1/tenants``.

    Items that are not usable tenants (no valid id) are skipped and counted, not fatal: one broken
    item must not hide the other ninety-nine.
    """
    if isinstance(body, dict):
        expect_some(body, ("items", "pages"), "tenant list response")
    if not isinstance(body, dict) or not isinstance(body.get("items"), list):
        raise InvalidResponse("tenant list response has no items array")
    tenants, skipped = [], 0
    for item in body["items"]:
        tenant = parse_tenant(item)
        if tenant is None:
            skipped += 1
        else:
            tenants.append(tenant)
    claimed = _claimed_pages(body.get("pages"))
    return TenantPage(
        tenants=tenants,
        total_pages=min(claimed, MAX_PAGES),
        skipped=skipped,
        claimed_pages=claimed,
    )


def parse_tenant(item: Any) -> Tenant | None:
    if not isinstance(item, dict):
        return None
    ident = item.get("id")
    if not isinstance(ident, str) or not _ID.fullmatch(ident):
        return None
    # Trial tenants come without the apiHost key at all, others may carry null: both mean None.
    api_host = item.get("apiHost")
    usable = _is_url(api_host)
    return Tenant(
        id=ident,
        name=label_text(item.get("name")) or label_text(item.get("showAs")),
        data_region=label_text(item.get("dataRegion"), 32),
        billing_type=label_text(item.get("billingType"), 32),
        api_host=str(api_host).rstrip("/") if usable else None,
        data_geography=label_text(item.get("dataGeography"), 32),
        api_host_problem="" if usable or api_host in (None, "") else url_problem(api_host),
    )


def tenant_from_whoami(whoami: WhoAmI, name: str) -> Tenant:
    """A tenant credential probes itself, on its own data-region host."""
    return Tenant(
        id=whoami.id,
        name=name,
        data_region=region_of(whoami.data_region_url or ""),
        api_host=whoami.data_region_url,
    )


def region_of(url: str) -> str:
    """``eu02`` from ``https://api-eu02.central.sophos.com``; '' when the host says nothing."""
    host = url.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0].lower()
    match = _REGION_HOST.fullmatch(host)
    return match.group(1) if match else ""


def is_data_region_url(url: str) -> bool:
    """True for a data-region host such as ``https://api-eu01.central.sophos.com``.

    Such hosts serve one region's tenants; whoami and the tenant lists live only on the global
    host (``api.central.sophos.com``), and whoami sent to a data-region host answers 504.
    """
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return False
    return bool(_DATA_REGION_HOST.fullmatch(host.lower()))


def _claimed_pages(pages: Any) -> int:
    if not isinstance(pages, dict):
        return 1
    total = pages.get("total")
    if isinstance(total, bool) or not isinstance(total, int) or total < 1:
        return 1
    return min(total, MAX_CLAIMED_PAGES)


def _is_url(value: Any) -> bool:
    """An absolute http(s) URL with a host; whether the agent may call it is the host policy's
    decision, not this one's."""
    return url_problem(value) == ""


def url_problem(value: Any) -> str:
    """Why ``value`` is not an absolute http(s) URL the agent would consider calling, in a few
    words that never repeat the value (it comes from an API answer); '' when it is one."""
    if not isinstance(value, str):
        return "not a string"
    if len(value) > MAX_URL:
        return f"longer than {MAX_URL} characters"
    if not (value.startswith("https://") or value.startswith("http://")):
        return "not an http(s) URL"
    if not value.isprintable() or " " in value or "\\" in value:
        return "has characters a URL cannot have"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:  # e.g. an unbalanced IPv6 bracket
        return "not a well-formed URL"
    if parts.username is not None or parts.password is not None:
        return "carries credentials"
    if not _URL_HOST.fullmatch(parts.hostname or ""):
        return "names no valid host"
    return ""
