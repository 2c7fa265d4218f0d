"""The bodies Sophos Central answers with, good and bad.

Error bodies come in the shapes Sophos sends: ``{errorCode, message, trackingId}`` from the id
host and ``{error, message, correlationId, requestId, createdAt}`` from the API hosts, sometimes
with ``code`` and ``docUrl``, and once (an expired token) with the 401 in ``errorCode`` and a
``code``. The ``error`` string is not spelled the same way twice (``Forbidden``, ``forbidden``,
``forbiddenAccess``), so each situation answers with one of the spellings seen in the wild:
a client that reads the string instead of the status breaks here as it would against Sophos.
Fault bodies imitate what sits in front of the API (an nginx-style gateway page, an empty 503)
and what a careless client chokes on (a huge body, deeply nested JSON).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from functools import cache
from typing import Any

from agent.simulator.model import Credential, Tenant
from agent.simulator.wire import Reply, json_reply

CENTRAL_ERRORS: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "Bad Request"),
    401: ("Unauthorized", "Unauthorized"),
    403: ("Forbidden", "Access Denied"),
    404: ("resourceNotFound", "Resource not found"),
    405: ("MethodNotAllowed", "Method Not Allowed"),
    429: ("TooManyRequests", "Too many requests."),
    500: ("internalServerError", "Internal Server Error."),
    503: ("ServiceUnavailable", "Service Unavailable"),
}
"""The default ``error`` spelling and message per status."""

ERROR_SPELLINGS: dict[int, tuple[str, ...]] = {
    400: ("BadRequest", "badRequest"),
    401: ("Unauthorized", "notAuthorized"),
    403: ("Forbidden", "forbidden", "forbiddenAccess"),
    404: ("resourceNotFound", "notFound"),
    405: ("MethodNotAllowed",),
    429: ("TooManyRequests",),
    500: ("internalServerError",),
    503: ("ServiceUnavailable",),
}
"""Every spelling of ``error`` (or ``errorCode``) the simulator answers with, per status."""

ERROR_DETAILS: dict[int, tuple[str, str]] = {
    429: ("RTL00000429", "https://developer.sophos.com/intro#rate-limits"),
    500: ("SRV00000500", "https://developer.sophos.com/intro#errors"),
}
"""Statuses whose body carries ``code`` and ``docUrl`` (example values, in Sophos's shape)."""

EXPIRED_JWT_CODE = "USR00004c5"
EXPIRED_JWT_MESSAGE = (
    "The client needs to authenticate before making the API call. Either your credentials are "
    "invalid or blacklisted, or your JWT authorization token has expired"
)

HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n"
)

WRONG_TYPE_HTML = (
    b"<!DOCTYPE html><html><head><title>Maintenance</title></head>"
    b"<body><p>We'll be back shortly.</p></body></html>"
)

HTML_200 = (
    b"<!DOCTYPE html><html><head><title>Guest Wi-Fi - Please sign in</title></head>"
    b'<body><form method="post" action="/login"><p>Accept the terms of use to continue.'
    b"</p><button>Connect</button></form></body></html>"
)
"""A captive portal's sign-in page, served with 200 in place of the API's answer."""

WRONG_SHAPE_JSON = b'{"status":"ok","message":"Service is operating normally"}'
"""JSON 200 of the wrong shape: a health or status document where the call's answer belongs."""

WAF_403 = (
    b"<!DOCTYPE html><html><head><title>Request Rejected</title></head><body>"
    b"<h1>Invalid request blocked (v1)</h1><p>The requested URL was rejected. Please consult "
    b"with your administrator.</p><p>Your support ID is: 7523156482179350182</p></body></html>"
)
"""A web application firewall's block page."""

HTML_503 = (
    b"<!DOCTYPE html><html><head><title>Scheduled Maintenance</title></head><body>"
    b"<h1>We'll be back soon</h1><p>Sophos Central is undergoing scheduled maintenance."
    b"</p></body></html>"
)
"""A maintenance page served with 503."""

BAD_GZIP = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03this is not a deflate stream at all"

HUGE_BODY_BYTES = 6 * 1024 * 1024
DEEP_JSON_DEPTH = 50_000


def new_id() -> str:
    """A random correlation / request / tracking id (not part of the deterministic scenario)."""
    return str(uuid.uuid4())


def iso_timestamp(epoch_seconds: float) -> str:
    """``2020-01-14T16:29:46.556Z`` like Central's ``createdAt``."""
    stamp = datetime.fromtimestamp(epoch_seconds, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def central_error(
    status: int,
    now: float,
    message: str | None = None,
    headers: tuple[tuple[str, str], ...] = (),
    *,
    error: str | None = None,
) -> Reply:
    """An API-host error body; ``message`` overrides the generic one for the status, ``error``
    picks another spelling from ``ERROR_SPELLINGS``; some statuses add ``code`` and ``docUrl``."""
    default_error, default_message = CENTRAL_ERRORS.get(status, ("Error", "Error"))
    if error is not None and error not in ERROR_SPELLINGS.get(status, ()):
        raise ValueError(f"{error!r} is not a spelling of HTTP {status}")
    body = {
        "error": error or default_error,
        "message": message or default_message,
        "correlationId": new_id(),
        "requestId": new_id(),
        "createdAt": iso_timestamp(now),
    }
    if status in ERROR_DETAILS:
        body["code"], body["docUrl"] = ERROR_DETAILS[status]
    return json_reply(status, body, headers)


def expired_token_error() -> Reply:
    """The 401 variant with the error in ``errorCode`` and a ``code``, no correlation id."""
    body = {
        "errorCode": "Unauthorized",
        "code": EXPIRED_JWT_CODE,
        "message": EXPIRED_JWT_MESSAGE,
        "requestId": new_id().upper(),
    }
    return json_reply(401, body)


def oauth_error(status: int, error_code: str, message: str) -> Reply:
    """An id-host error body."""
    return json_reply(status, {"errorCode": error_code, "message": message, "trackingId": new_id()})


def token_body(access_token: str, lifetime: int) -> dict[str, Any]:
    return {
        "access_token": access_token,
        "token_type": "bearer",
        "expires_in": lifetime,
        "errorCode": "success",
        "message": "OK",
        "trackingId": new_id(),
    }


def tenant_item(tenant: Tenant, owner: Credential, api_host: str | None) -> dict[str, Any]:
    """A tenant as ``/partner/v1/tenants`` and ``/organization/v1/tenants`` list it.

    The fields Sophos's examples show: ``showAs``, ``status``, the owner (``partner`` and
    ``organization``), ``contact``, ``products`` and ``externalIds``. A trial tenant without a
    host comes without the ``apiHost`` key, as Sophos sends it; any other tenant without one
    carries ``"apiHost": null``.
    """
    namespace = uuid.UUID(tenant.id)
    organization = (
        owner.id if owner.id_type == "organization" else str(uuid.uuid5(namespace, "organization"))
    )
    item: dict[str, Any] = {
        "id": tenant.id,
        "showAs": tenant.name,
        "name": tenant.name,
        "dataGeography": tenant.data_geography,
        "dataRegion": tenant.data_region,
        "billingType": tenant.billing_type,
        "organization": {"id": organization},
        "apiHost": api_host,
        "status": "active" if api_host is not None else "pendingActivation",
        "contact": _contact(tenant),
        "products": [{"code": code} for code in _PRODUCTS[: 1 + tenant.endpoints % 3]],
        "externalIds": [f"CRM-{tenant.id[:8].upper()}"],
    }
    if owner.id_type == "partner":
        item["partner"] = {"id": owner.id}
    if api_host is None and tenant.billing_type == "trial":
        del item["apiHost"]
        item["status"] = "active"
    return item


_PRODUCTS = ("endpointProtection", "interceptX", "firewallManagement")


def _contact(tenant: Tenant) -> dict[str, Any]:
    short = tenant.id[:8]
    return {
        "firstName": "Alex",
        "lastName": f"Admin {short}",
        "email": f"it-{short}@example.com",
        "phone": "+44 1235 559933",
        "address": {
            "address1": "The Pentagon",
            "address2": "Abingdon Science Park",
            "city": "Abingdon",
            "state": "Oxfordshire",
            "countryCode": "GB",
            "postalCode": "OX14 3YP",
        },
    }


def endpoint_items(tenant: Tenant, count: int) -> list[dict[str, Any]]:
    """The first ``count`` endpoints of a tenant, derived from its id so they never change."""
    namespace = uuid.UUID(tenant.id)
    short = tenant.id[:8]
    return [
        {
            "id": str(uuid.uuid5(namespace, f"endpoint-{i}")),
            "type": "computer" if i % 4 else "server",
            "hostname": f"ws-{short}-{i:03d}",
        }
        for i in range(min(count, tenant.endpoints))
    ]


@cache
def huge_body() -> bytes:
    """Several MB of valid JSON: a client must cap what it reads, not trust the server."""
    padding = "x" * 1000
    item = (
        f'{{"id":"00000000-0000-4000-8000-000000000000","type":"computer","hostname":"{padding}"}}'
    )
    count = HUGE_BODY_BYTES // (len(item) + 1) + 1
    items = ",".join([item] * count)
    return f'{{"items":[{items}],"pages":{{"size":{count},"maxSize":500}}}}'.encode()


@cache
def deep_json() -> bytes:
    """Valid JSON nested far beyond any parser's recursion limit."""
    depth = DEEP_JSON_DEPTH
    return b'{"items":' + b"[" * depth + b"]" * depth + b',"pages":{}}'
