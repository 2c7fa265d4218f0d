"""How a faulty tenant answers a call that passed every check.

The fault is applied after authentication and header checks, as in the real service: a trial
tenant still needs a valid token to be told 403. ``normal`` is the answer the tenant would have
given, which the slow, truncated and stalled variants deliver late, in part, or never.
"""

from __future__ import annotations

from dataclasses import replace

from agent.simulator.bodies import (
    BAD_GZIP,
    HTML_502,
    WRONG_TYPE_HTML,
    central_error,
    deep_json,
    huge_body,
)
from agent.simulator.wire import Reply

_JSON = ("content-type", "application/json")


def fault_reply(fault: str, normal: Reply, now: float, slow_seconds: float) -> Reply:
    """The reply of a tenant with ``fault`` (one of ``FAULT_NAMES``)."""
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
    return _gateway_or_chaos(fault, normal, slow_seconds)


def _gateway_or_chaos(fault: str, normal: Reply, slow_seconds: float) -> Reply:
    replies: dict[str, Reply] = {
        "html_502": Reply(502, HTML_502, (("content-type", "text/html"),)),
        "empty_503": Reply(503),
        "export_restricted_451": Reply(451),
        "slow": replace(normal, delay=slow_seconds),
        "reset": Reply(0, transport="reset"),
        "truncated": replace(normal, transport="truncate"),
        "stall": replace(normal, transport="stall"),
        "bad_gzip": Reply(200, BAD_GZIP, (_JSON, ("content-encoding", "gzip"))),
        "wrong_content_type": Reply(200, WRONG_TYPE_HTML, (_JSON,)),
    }
    if fault in replies:
        return replies[fault]
    if fault == "huge_body":
        return Reply(200, huge_body(), (_JSON,))
    if fault == "deep_json":
        return Reply(200, deep_json(), (_JSON,))
    raise ValueError(f"unknown fault {fault!r}")
