"""The faults the simulator can inject, and how a call answers under one.

A fault is applied after authentication and header checks, as in the real service: a trial tenant
still needs a valid token to be told 403. ``normal`` is the answer the call would have given, which
the slow, truncated and stalled variants deliver late, in part, or never.

The catalog, by kind:

- ``FAULT_NAMES``: what real tenants do to a prober (one per cause the exporter diagnoses), the
  broken answers a robust client must survive, and the 451 some callers get;
- ``NOT_API_FAULTS``: answers that are not the API's at all (a captive portal's or maintenance
  page's HTML 200, JSON 200 of the wrong shape, a WAF's HTML 403, a maintenance HTML 503);
- ``WIDE_FAULTS``: what a whole host, credential or family does in an outage (503 in Sophos's
  JSON, an empty 504, 429 without ``Retry-After``);
- ``PERMISSION_FAULTS``: one family answers 403 while the tenant's others work;
- ``TOKEN_FAULTS``: ``revoked``, the id host refusing a credential's secret.
"""

from __future__ import annotations

from dataclasses import replace

from agent.simulator.bodies import (
    BAD_GZIP,
    HTML_200,
    HTML_502,
    HTML_503,
    WAF_403,
    WRONG_SHAPE_JSON,
    WRONG_TYPE_HTML,
    central_error,
    deep_json,
    huge_body,
    oauth_error,
)
from agent.simulator.model import Scenario
from agent.simulator.routes import TENANT_FAMILIES
from agent.simulator.wire import Reply

BASIC_FAULTS: tuple[str, ...] = (
    "trial_403",
    "no_partner_assistance_403",
    "not_found_404",
    "server_error_500",
    "html_502",
    "empty_503",
    "slow",
    "reset",
)
"""What real tenants do to a prober, one per ``cause`` the agent can diagnose."""

CHAOS_FAULTS: tuple[str, ...] = (
    "truncated",
    "stall",
    "bad_gzip",
    "wrong_content_type",
    "huge_body",
    "deep_json",
)
"""Broken answers that a robust client must survive without crashing or hanging."""

STATUS_FAULTS: tuple[str, ...] = ("export_restricted_451",)
"""Answers the service gives to some callers only: 451 where US export control applies (status
only, no body)."""

FAULT_NAMES: tuple[str, ...] = BASIC_FAULTS + CHAOS_FAULTS + STATUS_FAULTS

NOT_API_FAULTS: tuple[str, ...] = ("html_200", "wrong_shape_200", "waf_html_403", "html_503")
"""Answers from something in front of the API: a captive portal or maintenance page (HTML 200),
JSON 200 that is not the call's shape, a web application firewall's HTML 403 page and a
maintenance HTML 503, each with a ``<title>``."""

WIDE_FAULTS: tuple[str, ...] = ("unavailable_503", "gateway_timeout_504", "too_many_requests_429")
"""Outage answers for a whole host, credential or family: 503 with Sophos's JSON body, an empty
504, and 429 the way Central usually sends it (the specification's body, no ``Retry-After``)."""

PERMISSION_FAULTS: tuple[str, ...] = tuple(f"forbidden_{name}" for name in TENANT_FAMILIES)
"""A fault that makes one family answer 403 while the others work (a role without that
product's permission); ``forbidden_common_alerts`` and so on."""

TOKEN_FAULTS: tuple[str, ...] = ("revoked",)
"""The id host refuses the credential's secret (401 ``oauth.invalid_client_secret``) while the
fault lasts; tokens issued before stay valid until they expire."""

ALL_FAULTS: tuple[str, ...] = (
    FAULT_NAMES + NOT_API_FAULTS + WIDE_FAULTS + PERMISSION_FAULTS + TOKEN_FAULTS
)
TENANT_FAULTS: tuple[str, ...] = FAULT_NAMES + NOT_API_FAULTS + WIDE_FAULTS + PERMISSION_FAULTS
"""What a single tenant may be given (through a scenario, the admin API or a drill)."""

TRANSPORT_FAULTS: frozenset[str] = frozenset({"reset", "truncated", "stall"})
"""Faults below HTTP; tenants that start with one are placed on the raw faulty host."""

TOO_MANY_REQUESTS = "Too many requests."
"""The 429 message of Sophos's API specification."""

_JSON = ("content-type", "application/json")
_HTML = ("content-type", "text/html; charset=utf-8")


def permission_family(fault: str | None) -> str | None:
    """The family a permission fault denies, or None for any other fault."""
    if fault in PERMISSION_FAULTS:
        return fault.removeprefix("forbidden_")
    return None


def check_faults(scenario: Scenario) -> None:
    """Refuse a scenario whose ``faults`` name an unknown tenant or fault."""
    known = {t.id for t in scenario.tenants()}
    for tenant_id, fault in scenario.faults.items():
        if tenant_id not in known:
            raise ValueError(f"faults: unknown tenant id {tenant_id!r}")
        if fault not in TENANT_FAULTS:
            raise ValueError(f"faults: unknown fault {fault!r} (known: {', '.join(TENANT_FAULTS)})")


def fault_reply(fault: str, normal: Reply, now: float, slow_seconds: float) -> Reply:
    """The reply of a call under ``fault`` (any of ``ALL_FAULTS`` but the permission faults,
    which ``central`` applies to their own family only)."""
    if fault == "trial_403":
        # Central says only "Forbidden" (spelled either way); the billingType in the tenant
        # list tells the two 403s apart.
        return central_error(403, now, "Forbidden", error="forbidden")
    if fault == "no_partner_assistance_403":
        return central_error(403, now)
    if fault == "not_found_404":
        return central_error(404, now, "Tenant not found")
    if fault == "server_error_500":
        return central_error(500, now)
    if fault == "unavailable_503":
        return central_error(503, now)
    if fault == "too_many_requests_429":
        return central_error(429, now, TOO_MANY_REQUESTS)
    if fault == "revoked":
        return oauth_error(401, "oauth.invalid_client_secret", "Unauthorized")
    return _fixed_or_broken(fault, normal, slow_seconds)


def _fixed_or_broken(fault: str, normal: Reply, slow_seconds: float) -> Reply:
    replies: dict[str, Reply] = {
        "html_502": Reply(502, HTML_502, (("content-type", "text/html"),)),
        "empty_503": Reply(503),
        "gateway_timeout_504": Reply(504),
        "export_restricted_451": Reply(451),
        "slow": replace(normal, delay=slow_seconds),
        "reset": Reply(0, transport="reset"),
        "truncated": replace(normal, transport="truncate"),
        "stall": replace(normal, transport="stall"),
        "bad_gzip": Reply(200, BAD_GZIP, (_JSON, ("content-encoding", "gzip"))),
        "wrong_content_type": Reply(200, WRONG_TYPE_HTML, (_JSON,)),
        "html_200": Reply(200, HTML_200, (_HTML,)),
        "wrong_shape_200": Reply(200, WRONG_SHAPE_JSON, (_JSON,)),
        "waf_html_403": Reply(403, WAF_403, (_HTML,)),
        "html_503": Reply(503, HTML_503, (_HTML,)),
    }
    if fault in replies:
        return replies[fault]
    if fault == "huge_body":
        return Reply(200, huge_body(), (_JSON,))
    if fault == "deep_json":
        return Reply(200, deep_json(), (_JSON,))
    raise ValueError(f"unknown fault {fault!r}")
