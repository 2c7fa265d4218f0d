"""The per-tenant API families beyond endpoints: SIEM events and alerts, common alerts.

Shapes as Sophos documents them: the SIEM APIs answer ``{"has_more", "items", "next_cursor"}``
(``limit`` 1 to 1000, ``from_date`` no older than 24 hours), the common alerts API pages like the
endpoint API (``{"items", "pages"}``). A permission fault (``forbidden_<family>``) makes one family
answer 403 "Access is denied" while the tenant's other APIs work, as a credential whose role lacks
one product's permission sees it.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

from agent.simulator.bodies import iso_timestamp, new_id
from agent.simulator.model import API_FAMILIES, PERMISSION_FAULTS, Tenant
from agent.simulator.wire import Reply, json_reply

SIEM_MAX_LIMIT = 1000
SIEM_DEFAULT_LIMIT = 200
SIEM_MAX_AGE_SECONDS = 24 * 3600
ALERTS_MAX_PAGE = 100


class FamilyBadRequest(ValueError):
    """A query parameter the family's API would refuse with 400."""


def family_of(path: str) -> str | None:
    """The family ``path`` belongs to (its collection or an item under it), or None."""
    for name, prefix in API_FAMILIES.items():
        if path == prefix or path.startswith(prefix + "/"):
            return name
    return None


def denied(fault: str | None, path: str, now: float) -> Reply | None:
    """The 403 of a permission fault on its own family; None when the fault does not apply."""
    if fault not in PERMISSION_FAULTS or f"forbidden_{family_of(path)}" != fault:
        return None
    body = {
        "error": "forbidden",
        "message": "Access is denied",
        "correlationId": new_id(),
        "requestId": new_id(),
        "createdAt": iso_timestamp(now),
    }
    return json_reply(403, body)


def family_reply(family: str, query: Any, tenant: Tenant, now: float) -> Reply:
    """The 200 answer of a SIEM or alerts collection (raises ``FamilyBadRequest``)."""
    if family == "common_alerts":
        return json_reply(200, _alerts_page(query, tenant, now))
    return json_reply(200, _siem_page(family, query, tenant, now))


def _siem_page(family: str, query: Any, tenant: Tenant, now: float) -> dict[str, Any]:
    limit = _int(query, "limit", SIEM_DEFAULT_LIMIT)
    if not 1 <= limit <= SIEM_MAX_LIMIT:
        raise FamilyBadRequest(f"limit must be between 1 and {SIEM_MAX_LIMIT}")
    if "from_date" in query:
        since = _int(query, "from_date", 0)
        if since < now - SIEM_MAX_AGE_SECONDS:
            raise FamilyBadRequest("from_date must be within the last 24 hours")
    kind = "event" if family == "siem_events" else "alert"
    items = [_siem_item(kind, tenant, i, now) for i in range(min(limit, tenant.endpoints))]
    cursor = base64.b64encode(f"V2_CURSOR|{iso_timestamp(now)}".encode()).decode()
    return {"has_more": False, "items": items, "next_cursor": cursor}


def _siem_item(kind: str, tenant: Tenant, i: int, now: float) -> dict[str, Any]:
    namespace = uuid.UUID(tenant.id)
    item: dict[str, Any] = {
        "id": str(uuid.uuid5(namespace, f"{kind}-{i}")),
        "customer_id": tenant.id,
        "when": iso_timestamp(now - 60 * (i + 1)),
        "created_at": iso_timestamp(now - 60 * (i + 1) + 1),
        "severity": "low",
        "source_info": {"ip": f"10.1.{i // 250}.{i % 250 + 1}"},
        "endpoint_type": "computer",
        "endpoint_id": str(uuid.uuid5(namespace, f"endpoint-{i}")),
        "origin": None,
        "location": f"ws-{tenant.id[:8]}-{i:03d}",
        "source": "n/a",
    }
    if kind == "event":
        item.update(
            type="Event::Endpoint::UpdateSuccess", group="UPDATING", name="Update succeeded"
        )
    else:
        item.update(
            type="Event::Endpoint::OutOfDate",
            description="Computer out of date",
            data={"endpoint_id": item["endpoint_id"]},
        )
    return item


def _alerts_page(query: Any, tenant: Tenant, now: float) -> dict[str, Any]:
    size = _int(query, "pageSize", 50)
    if not 1 <= size <= ALERTS_MAX_PAGE:
        raise FamilyBadRequest(f"pageSize must be between 1 and {ALERTS_MAX_PAGE}")
    namespace = uuid.UUID(tenant.id)
    total = tenant.endpoints
    items = [
        {
            "id": str(uuid.uuid5(namespace, f"alert-{i}")),
            "category": "updating",
            "description": "Computer out of date",
            "groupKey": "MiwxLE91dE9mRGF0ZQ==",
            "product": "endpoint",
            "raisedAt": iso_timestamp(now - 3600 * (i + 1)),
            "severity": "medium",
            "tenant": {"id": tenant.id},
            "type": "Event::Endpoint::OutOfDate",
            "allowedActions": ["acknowledge"],
        }
        for i in range(min(size, total))
    ]
    pages = {"current": 1, "size": size, "total": max(1, -(-total // size)), "items": total}
    return {"items": items, "pages": {**pages, "maxSize": ALERTS_MAX_PAGE}}


def _int(query: Any, name: str, default: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise FamilyBadRequest(f"{name} must be a whole number") from None
