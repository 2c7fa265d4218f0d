"""Every call the simulated Central answers: one table.

Each ``Route`` is a method and path on the global host or on the tenant's own regional host, the
``family`` it belongs to (what a permission fault, a drill target and the state counts name) and
the function that builds its 200 answer. The service (``central.py``) runs the checks every call
meets on the real API (rate limit, token, id headers, tenant placement, faults) the same way for
every route; nothing else branches on paths. Adding a read call is adding a row, like a probe
family in the exporter.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from agent.simulator.model import IdType
from agent.simulator.reads import (
    Call,
    account_health,
    admins,
    alerts,
    directory_users,
    endpoints,
    firewall_licenses,
    firewalls,
    one_alert,
    one_endpoint,
    one_tenant,
    roles,
    siem,
    tenant_page,
    whoami,
)

Scope = Literal["global", "tenant"]
Answer = Callable[[Call], dict[str, Any]]

TENANT_MAX_PAGE = 100
"""The tenant lists' ``maxSize``; a scenario may lower it (``Scenario.max_page_size``)."""


@dataclass(frozen=True)
class Route:
    """One call: ``path`` may hold one ``{id}`` segment (a single item).

    ``who`` limits a global call to one kind of credential (the partner tenant list is for
    partner credentials); every global call but whoami needs the caller's own id header
    (``X-Partner-ID``, ``X-Organization-ID`` or ``X-Tenant-ID``). A tenant call needs
    ``X-Tenant-ID`` and must reach the tenant's own host.
    """

    family: str
    path: str
    scope: Scope
    answer: Answer
    who: IdType | None = None
    id_header: bool = True
    bad_request: str = "BadRequest"
    """How its 400 spells ``error`` (Sophos's APIs do not agree: ``BadRequest``, ``badRequest``)."""

    @property
    def pattern(self) -> re.Pattern[str]:
        return re.compile("^" + re.escape(self.path).replace(r"\{id\}", "([^/]+)") + "$")


def _siem(family: str) -> Answer:
    return lambda call: siem(call, family)


def _tenant_list(call: Call) -> dict[str, Any]:
    return tenant_page(call, int(call.extra.get("max_page_size", TENANT_MAX_PAGE)))


ROUTES: tuple[Route, ...] = (
    Route("whoami", "/whoami/v1", "global", whoami, id_header=False),
    Route("tenant_list", "/partner/v1/tenants", "global", _tenant_list, who="partner"),
    Route("tenant_list", "/partner/v1/tenants/{id}", "global", one_tenant, who="partner"),
    Route("tenant_list", "/organization/v1/tenants", "global", _tenant_list, who="organization"),
    Route(
        "tenant_list",
        "/organization/v1/tenants/{id}",
        "global",
        one_tenant,
        who="organization",
    ),
    Route("firewall_licenses", "/licenses/v1/licenses/firewalls", "global", firewall_licenses),
    Route("endpoint", "/endpoint/v1/endpoints", "tenant", endpoints, bad_request="badRequest"),
    Route("endpoint", "/endpoint/v1/endpoints/{id}", "tenant", one_endpoint),
    Route("common_alerts", "/common/v1/alerts", "tenant", alerts),
    Route("common_alerts", "/common/v1/alerts/{id}", "tenant", one_alert),
    Route("siem_events", "/siem/v1/events", "tenant", _siem("siem_events")),
    Route("siem_alerts", "/siem/v1/alerts", "tenant", _siem("siem_alerts")),
    Route("account_health", "/account-health-check/v1/health-check", "tenant", account_health),
    Route("directory_users", "/common/v1/directory/users", "tenant", directory_users),
    Route("roles", "/common/v1/roles", "tenant", roles),
    Route("admins", "/common/v1/admins", "tenant", admins),
    Route("firewalls", "/firewall/v1/firewalls", "tenant", firewalls),
)

_COMPILED = tuple((route, route.pattern) for route in ROUTES)

FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(r.family for r in ROUTES))
"""Every family, global ones first, in table order."""

TENANT_FAMILIES: tuple[str, ...] = tuple(
    dict.fromkeys(r.family for r in ROUTES if r.scope == "tenant")
)
"""The per-tenant families: a credential's role may allow some and not others."""

TENANT_NAMESPACES: frozenset[str] = frozenset(
    r.path.split("/")[1] for r in ROUTES if r.scope == "tenant"
) | {"live-discover", "xdr-query"}
"""First path segments served by a tenant's own host (also those the simulator has no route
for: a call there still needs the tenant's headers and host, then answers 404)."""


def match(path: str) -> tuple[Route, str | None] | None:
    """The route for ``path`` (without query) and its ``{id}``, or None."""
    for route, pattern in _COMPILED:
        found = pattern.match(path)
        if found is not None:
            return route, (found.group(1) if found.groups() else None)
    return None


def family_of(path: str) -> str | None:
    """The family of a path, also for paths no route answers under a family's collection."""
    found = match(path)
    if found is not None:
        return found[0].family
    for route in ROUTES:
        if route.scope == "tenant" and path.startswith(route.path.split("{", 1)[0].rstrip("/")):
            return route.family
    return None
