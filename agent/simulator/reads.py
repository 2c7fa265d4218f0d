"""The 200 answers of the read calls, in the shapes Sophos documents and real clients parse.

Every answer is a pure function of a ``Call``: the query, the tenant (or the caller, for calls on
the global host) and the clock. Records are derived from the tenant id, so they never change
between calls and two processes agree on them; time-ordered records (alerts, SIEM events) are
anchored either at the simulator's start (alerts) or at fixed intervals of wall time (SIEM), so a
cursor or a page key taken now still means the same thing later.

Paging, as Sophos pages each API:

- tenant lists: page numbers (``page``, ``pageSize``; ``pageTotal=true`` adds ``total`` pages and
  ``items``), ``maxSize`` 100, default size 50;
- endpoints and common alerts: keys (``pageFromKey`` in, ``pages.nextKey`` out, ``pages.fromKey``
  the key of this page), ``maxSize`` 500 and 1000;
- SIEM: ``cursor`` in, ``next_cursor`` and ``has_more`` out, ``limit`` 1 to 1000, ``from_date``
  no older than 24 hours.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from agent.simulator.bodies import endpoint_items, iso_timestamp, tenant_item
from agent.simulator.model import Credential, Tenant

TENANT_PAGE_DEFAULT = 50
ENDPOINT_MAX_PAGE = 500
ENDPOINT_DEFAULT_PAGE = 50
ALERTS_MAX_PAGE = 1000
ALERTS_DEFAULT_PAGE = 50
SIEM_MAX_LIMIT = 1000
SIEM_DEFAULT_LIMIT = 200
SIEM_MAX_AGE_SECONDS = 24 * 3600
SIEM_EVENT_EVERY = 60.0
"""Each tenant raises one SIEM event a minute: 1,440 in the 24 hours a connector may look back."""
SIEM_ALERT_EVERY = 600.0
ENDPOINT_VIEWS = frozenset({"basic", "summary", "full"})

EVENT_TYPES: tuple[tuple[str, str, str, str], ...] = (
    ("Event::Endpoint::UpdateSuccess", "UPDATING", "low", "Update succeeded"),
    ("Event::Endpoint::Registered", "PROTECTION", "low", "New computer registered"),
    ("Event::Endpoint::WebControlViolation", "WEB", "medium", "Website blocked"),
    ("Event::Endpoint::Threat::CleanedUp", "MALWARE", "low", "Threat cleaned up"),
    ("Event::Endpoint::UpdateFailure", "UPDATING", "medium", "Failed to protect computer"),
)
"""(type, group, severity, name) of the SIEM events, in the order they recur."""

ALERT_KINDS: tuple[tuple[str, str, str, str], ...] = (
    ("Event::Endpoint::OutOfDate", "updating", "medium", "Computer out of date"),
    ("Event::Endpoint::Threat::Detected", "malware", "high", "Malware detected"),
    ("Event::Endpoint::ServiceNotRunning", "protection", "medium", "Service not running"),
    ("Event::Endpoint::NotProtected", "protection", "high", "Computer not protected"),
)
"""(type, category, severity, description) of the alerts, in the order they recur."""


class BadRequest(ValueError):
    """A query parameter the API refuses with 400; the message says which and why."""


@dataclass(frozen=True)
class Call:
    """What an answer may read.

    ``tenant`` is set for per-tenant calls (after every check passed); ``owned`` are the tenants
    the caller may reach; ``epoch`` is the wall time the simulated Central started, which anchors
    records that must not move while a client pages through them.
    """

    query: Mapping[str, str]
    credential: Credential
    now: float
    epoch: float
    global_url: str
    api_host_of: Callable[[str], str | None]
    owned: Mapping[str, Tenant]
    tenant: Tenant | None = None
    item_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def the_tenant(self) -> Tenant:
        if self.tenant is None:
            raise RuntimeError("a per-tenant answer was called without its tenant")
        return self.tenant


class NotFound(LookupError):
    """The item named in the path does not exist (404 ``resourceNotFound``)."""


# --- query parameters --------------------------------------------------------------------------


def int_param(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number") from None
    if not low <= value <= high:
        raise BadRequest(f"{name} must be between {low} and {high}")
    return value


def _wants_total(query: Mapping[str, str]) -> bool:
    return query.get("pageTotal", "").lower() == "true"


def _csv(query: Mapping[str, str], name: str) -> set[str] | None:
    raw = query.get(name)
    if not raw:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def _iso_param(query: Mapping[str, str], name: str) -> float | None:
    raw = query.get(name)
    if not raw:
        return None
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise BadRequest(
            f"{name} must be an ISO 8601 date-time, e.g. 2026-01-14T16:29:46Z"
        ) from None


# --- page keys ---------------------------------------------------------------------------------


def page_key(offset: int) -> str:
    """An opaque key in Sophos's form: base64 of a JSON list (here: the offset it starts at)."""
    return base64.b64encode(json.dumps([str(offset)]).encode()).decode()


def _offset_of(key: str) -> int:
    try:
        # A client that forgets to encode '+' in a query string sends a space instead.
        decoded = json.loads(base64.b64decode(key.replace(" ", "+"), validate=True))
        offset = int(decoded[0])
    except (binascii.Error, ValueError, TypeError, IndexError, KeyError):
        raise BadRequest("pageFromKey is not a key this API handed out") from None
    if offset < 0:
        raise BadRequest("pageFromKey is not a key this API handed out")
    return offset


def key_page(
    query: Mapping[str, str], records: Sequence[dict[str, Any]], default: int, max_size: int
) -> dict[str, Any]:
    """``{"items", "pages"}`` of one key-paged page: a client following ``nextKey`` gets every
    record exactly once, and the last page has no ``nextKey``."""
    size = int_param(query, "pageSize", default, 1, max_size)
    offset = _offset_of(query["pageFromKey"]) if query.get("pageFromKey") else 0
    items = list(records[offset : offset + size])
    pages: dict[str, Any] = {"fromKey": page_key(offset), "size": size, "maxSize": max_size}
    if offset + size < len(records):
        pages["nextKey"] = page_key(offset + size)
    if _wants_total(query):
        pages["total"] = max(1, -(-len(records) // size))
        pages["items"] = len(records)
    return {"items": items, "pages": pages}


# --- global host -------------------------------------------------------------------------------


def whoami(call: Call) -> dict[str, Any]:
    cred = call.credential
    hosts: dict[str, str | None] = {"global": call.global_url}
    if cred.id_type == "tenant":
        hosts["dataRegion"] = call.api_host_of(cred.id)
    return {"id": cred.id, "idType": cred.id_type, "apiHosts": hosts}


def tenant_page(call: Call, max_size: int) -> dict[str, Any]:
    """One page of the caller's tenants, by page number."""
    tenants = call.credential.tenants
    page = int_param(call.query, "page", 1, 1, 1_000_000)
    size = min(
        int_param(call.query, "pageSize", min(TENANT_PAGE_DEFAULT, max_size), 1, 10**6), max_size
    )
    start = (page - 1) * size
    items = [
        tenant_item(t, call.credential, call.api_host_of(t.id))
        for t in tenants[start : start + size]
    ]
    pages: dict[str, int] = {"current": page, "size": size, "maxSize": max_size}
    if _wants_total(call.query):
        pages["total"] = max(1, -(-len(tenants) // size))
        pages["items"] = len(tenants)
    return {"items": items, "pages": pages}


def one_tenant(call: Call) -> dict[str, Any]:
    tenant = call.owned.get(call.item_id or "")
    if tenant is None:
        raise NotFound(call.item_id)
    return tenant_item(tenant, call.credential, call.api_host_of(tenant.id))


def firewall_licenses(call: Call) -> dict[str, Any]:
    """``GET /licenses/v1/licenses/firewalls``: one hardware firewall licence per tenant that
    has firewalls, owned by the caller."""
    cred = call.credential
    items = []
    for tenant in cred.tenants:
        if firewall_count(tenant) == 0:
            continue
        serial = f"C{zlib.crc32(tenant.id.encode()):010d}"
        items.append(
            {
                "serialNumber": serial,
                "owner": {"id": cred.id, "type": _owner_type(cred)},
                "partner": {"id": cred.id} if cred.id_type == "partner" else None,
                "organization": {"id": cred.id} if cred.id_type == "organization" else None,
                "tenant": {"id": tenant.id},
                "billingTenant": {"id": tenant.id},
                "model": "XGS2100",
                "modelType": "hardware",
                "lastSeenAt": iso_timestamp(call.epoch - 300),
                "licenses": [
                    {
                        "id": _uuid(tenant, "licence"),
                        "licenseIdentifier": f"LIC-{serial}",
                        "product": {
                            "code": "XGS2100-XSTREAM",
                            "name": "Xstream Protection",
                            "genericCode": "xstream",
                            "features": ["webProtection", "zeroDayProtection"],
                        },
                        "startDate": "2025-01-01",
                        "endDate": "2028-01-01",
                        "perpetual": False,
                        "type": "term",
                        "quantity": 1,
                        "usage": {"current": {"count": 1}},
                        "unlimited": False,
                    }
                ],
            }
        )
    return {"items": items}


def _owner_type(cred: Credential) -> str:
    return "organization" if cred.id_type == "organization" else "partner"


# --- per tenant: endpoints ---------------------------------------------------------------------


def _endpoint_records(tenant: Tenant, view: str) -> list[dict[str, Any]]:
    records = []
    for item in endpoint_items(tenant, tenant.endpoints):
        record = {"id": item["id"], "type": item["type"], "tenant": {"id": tenant.id}}
        record["hostname"] = item["hostname"]
        if view != "basic":
            record.update(
                health={"overall": "good", "threats": {"status": "good"}},
                os={"isServer": item["type"] == "server", "platform": "windows"},
                associatedPerson={"viaLogin": f"CORP\\{item['hostname']}"},
                tamperProtectionEnabled=True,
            )
        records.append(record)
    return records


def endpoints(call: Call) -> dict[str, Any]:
    view = call.query.get("view", "summary") or "summary"
    if view not in ENDPOINT_VIEWS:
        raise BadRequest("view must be one of basic, summary, full")
    records = _endpoint_records(call.the_tenant, view)
    return key_page(call.query, records, ENDPOINT_DEFAULT_PAGE, ENDPOINT_MAX_PAGE)


def one_endpoint(call: Call) -> dict[str, Any]:
    for record in _endpoint_records(call.the_tenant, "full"):
        if record["id"] == call.item_id:
            return record
    raise NotFound(call.item_id)


# --- per tenant: common alerts -----------------------------------------------------------------


def alert_count(tenant: Tenant) -> int:
    """How many open alerts a tenant has: three per endpoint unless the scenario says."""
    return tenant.alerts if tenant.alerts is not None else 3 * tenant.endpoints


def _alert_records(tenant: Tenant, epoch: float) -> list[dict[str, Any]]:
    machines = endpoint_items(tenant, tenant.endpoints)
    records = []
    for i in range(alert_count(tenant)):
        kind, category, severity, description = ALERT_KINDS[i % len(ALERT_KINDS)]
        machine = machines[i % len(machines)] if machines else None
        record: dict[str, Any] = {
            "id": _uuid(tenant, f"alert-{i}"),
            "allowedActions": ["acknowledge"],
            "category": category,
            "description": f"{description}: {machine['hostname']}" if machine else description,
            "groupKey": base64.b64encode(f"{i % 7},{kind}".encode()).decode(),
            "managedAgent": (
                {"id": machine["id"], "type": machine["type"], "name": machine["hostname"]}
                if machine
                else None
            ),
            "person": {"id": _uuid(tenant, f"person-{i % 5}"), "name": f"User {i % 5}"},
            "product": "server" if machine and machine["type"] == "server" else "endpoint",
            "raisedAt": iso_timestamp(epoch - 900 * (i + 1)),
            "severity": severity,
            "tenant": {"id": tenant.id, "name": tenant.name},
            "type": kind,
        }
        records.append(record)
    return records


def _filter_alerts(query: Mapping[str, str], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    since, until = _iso_param(query, "from"), _iso_param(query, "to")
    wanted = {name: _csv(query, name) for name in ("product", "category", "severity")}
    kept = []
    for record in records:
        raised = datetime.fromisoformat(record["raisedAt"].replace("Z", "+00:00")).timestamp()
        if (since is not None and raised < since) or (until is not None and raised > until):
            continue
        if any(
            values is not None and record[name] not in values for name, values in wanted.items()
        ):
            continue
        kept.append(record)
    return kept


def alerts(call: Call) -> dict[str, Any]:
    records = _filter_alerts(call.query, _alert_records(call.the_tenant, call.epoch))
    return key_page(call.query, records, ALERTS_DEFAULT_PAGE, ALERTS_MAX_PAGE)


def one_alert(call: Call) -> dict[str, Any]:
    for record in _alert_records(call.the_tenant, call.epoch):
        if record["id"] == call.item_id:
            return record
    raise NotFound(call.item_id)


# --- per tenant: SIEM --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Stream:
    kind: str
    every: float


SIEM_STREAMS = {
    "siem_events": _Stream("event", SIEM_EVENT_EVERY),
    "siem_alerts": _Stream("alert", SIEM_ALERT_EVERY),
}


def _phase(tenant: Tenant, every: float) -> float:
    return zlib.crc32(tenant.id.encode()) % int(every)


def _cursor(index: int) -> str:
    text = f"V2_CURSOR|{index}"
    return base64.urlsafe_b64encode(text.encode()).decode()


def _cursor_index(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor.replace(" ", "+").encode()).decode()
        prefix, _, index = text.partition("|")
        if prefix != "V2_CURSOR":
            raise ValueError(prefix)
        return int(index)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadRequest("cursor is not a cursor this API handed out") from None


def siem(call: Call, family: str) -> dict[str, Any]:
    """One SIEM page: the items after the cursor (or since ``from_date``) up to ``limit``.

    Item ``i`` of a tenant's stream happens at ``phase + i * every`` seconds of wall time, so the
    stream grows as time passes: a cursor handed out now resumes after the last item served, and
    later returns only what happened since. Items older than 24 hours are gone, as at Sophos.
    """
    stream = SIEM_STREAMS[family]
    tenant = call.the_tenant
    query = call.query
    limit = int_param(query, "limit", SIEM_DEFAULT_LIMIT, 1, SIEM_MAX_LIMIT)
    int_param(query, "from_date_offset_minutes", 0, 0, 24 * 60)  # accepted, like Sophos
    phase = _phase(tenant, stream.every)
    oldest = _first_index_at_or_after(call.now - SIEM_MAX_AGE_SECONDS, phase, stream.every)
    newest = int((call.now - phase) // stream.every)  # the last item that has happened
    if query.get("cursor"):
        start = max(_cursor_index(query["cursor"]) + 1, oldest)
    elif query.get("from_date"):
        since = int_param(query, "from_date", 0, 0, 2**53)
        if since < call.now - SIEM_MAX_AGE_SECONDS:
            raise BadRequest("from_date must be within the last 24 hours")
        start = _first_index_at_or_after(since, phase, stream.every)
    else:
        start = oldest
    excluded = _csv(query, "exclude_types") or set()
    items: list[dict[str, Any]] = []
    index = start - 1
    while index < newest and len(items) < limit:
        index += 1
        item = _siem_item(stream.kind, tenant, index, phase + index * stream.every)
        if item["type"] not in excluded:
            items.append(item)
    last = max(index, start - 1)
    return {"has_more": last < newest, "items": items, "next_cursor": _cursor(last)}


def _first_index_at_or_after(when: float, phase: float, every: float) -> int:
    return int(-((phase - when) // every))


def _siem_item(kind: str, tenant: Tenant, index: int, when: float) -> dict[str, Any]:
    machines = endpoint_items(tenant, tenant.endpoints)
    machine = machines[index % len(machines)] if machines else None
    base: dict[str, Any] = {
        "id": _uuid(tenant, f"{kind}-{index}"),
        "customer_id": tenant.id,
        "when": iso_timestamp(when),
        "created_at": iso_timestamp(when + 0.2),
        "source_info": {"ip": f"10.1.{index % 250}.{index % 200 + 1}"},
        "endpoint_type": machine["type"] if machine else "computer",
        "endpoint_id": machine["id"] if machine else None,
        "location": machine["hostname"] if machine else "n/a",
        "origin": None,
        "source": "n/a",
    }
    if kind == "event":
        event_type, group, severity, name = EVENT_TYPES[index % len(EVENT_TYPES)]
        base.update(type=event_type, group=group, severity=severity, name=name)
    else:
        alert_type, category, severity, description = ALERT_KINDS[index % len(ALERT_KINDS)]
        base.update(
            type=alert_type,
            severity=severity,
            category=category,
            description=description,
            event_service_event_id=_uuid(tenant, f"event-for-alert-{index}"),
            data={"endpoint_id": base["endpoint_id"], "endpoint_type": base["endpoint_type"]},
            threat_cleanable=False,
        )
    return base


# --- per tenant: account health, directory, roles, admins, firewalls -------------------------


def _check(score: int, total: int = 100, **extra: Any) -> dict[str, Any]:
    return {"score": score, "total": total, "snoozed": False, **extra}


def account_health(call: Call) -> dict[str, Any]:
    """``GET /account-health-check/v1/health-check``: scores under ``endpoint`` per area."""
    tenant = call.the_tenant
    servers = sum(1 for e in endpoint_items(tenant, tenant.endpoints) if e["type"] == "server")
    computers = tenant.endpoints - servers
    score = 100 - zlib.crc32(tenant.id.encode()) % 40
    policies = ["Base Policy"]
    return {
        "tenant": {"id": tenant.id},
        "endpoint": {
            "protection": {
                "computer": _check(score, notFullyProtected=computers // 10),
                "server": _check(score, notFullyProtected=servers // 10),
            },
            "policy": {
                "computer": {
                    "threat-protection": _check(score, notOnRecommended=0, policies=policies)
                },
                "server": {
                    "server-threat-protection": _check(score, notOnRecommended=0, policies=policies)
                },
            },
            "exclusions": {
                "policy": {
                    "computer": _check(score, numberOfSecurityRisks=0, exclusions=[]),
                    "server": _check(score, numberOfSecurityRisks=0, exclusions=[]),
                },
                "global": _check(100, numberOfSecurityRisks=0, exclusions=[]),
            },
            "tamperProtection": {
                "computer": _check(score, disabled=False),
                "server": _check(score, disabled=False),
                "globalDetail": _check(100, enabled=True),
                "global": True,
            },
        },
    }


def _people(tenant: Tenant) -> list[dict[str, Any]]:
    count = max(2, tenant.endpoints // 2)
    domain = f"t{tenant.id[:8]}.example"
    return [
        {
            "id": _uuid(tenant, f"person-{i}"),
            "name": f"User {i}",
            "firstName": "User",
            "lastName": str(i),
            "email": f"user{i}@{domain}",
            "exchangeLogin": f"user{i}",
            "groups": {
                "total": 1,
                "itemsCount": 1,
                "items": [{"id": _uuid(tenant, "group-0"), "name": "Staff"}],
            },
            "source": {"type": "custom"},
            "tenant": {"id": tenant.id},
        }
        for i in range(count)
    ]


def directory_users(call: Call) -> dict[str, Any]:
    return key_page(call.query, _people(call.the_tenant), 50, 500)


ROLES = (
    ("SuperAdmin", "Super Admin"),
    ("Admin", "Admin"),
    ("ReadOnly", "Read-only"),
    ("HelpDesk", "Help Desk"),
)


def roles(call: Call) -> dict[str, Any]:
    tenant = call.the_tenant
    items = [
        {
            "id": _uuid(tenant, f"role-{code}"),
            "name": name,
            "type": "predefined",
            "principalType": "user",
            "permissionSets": [code],
        }
        for code, name in ROLES
    ]
    return {"items": items, "pages": {"current": 1, "size": len(items), "maxSize": 100}}


def admins(call: Call) -> dict[str, Any]:
    tenant = call.the_tenant
    items = []
    for i, person in enumerate(_people(tenant)[:2]):
        code, name = ROLES[i]
        items.append(
            {
                "id": _uuid(tenant, f"admin-{i}"),
                "profile": {
                    "firstName": person["firstName"],
                    "lastName": person["lastName"],
                    "email": person["email"],
                },
                "roleAssignments": [{"roleId": _uuid(tenant, f"role-{code}"), "roleName": name}],
                "tenant": {"id": tenant.id},
                "createdAt": iso_timestamp(call.epoch - 86400 * 30),
            }
        )
    return {"items": items, "pages": {"current": 1, "size": len(items), "maxSize": 100}}


def firewall_count(tenant: Tenant) -> int:
    """Every fourth tenant (by id) has a firewall."""
    return 1 if zlib.crc32(tenant.id.encode()) % 4 == 0 else 0


def firewalls(call: Call) -> dict[str, Any]:
    tenant = call.the_tenant
    items = [
        {
            "id": _uuid(tenant, f"firewall-{i}"),
            "cluster": None,
            "tenant": {"id": tenant.id},
            "serialNumber": f"C{zlib.crc32(tenant.id.encode()):010d}",
            "group": None,
            "hostname": f"fw-{tenant.id[:8]}-{i}",
            "name": f"Firewall {i}",
            "externalIpv4Addresses": [f"198.51.100.{i + 1}"],
            "firmwareVersion": "SFOS 21.0.1 MR-1-Build272",
            "model": "XGS2100",
            "status": {
                "managing": "approved",
                "reporting": "approved",
                "connected": True,
                "suspended": False,
            },
            "stateChangedAt": iso_timestamp(call.epoch - 3600),
            "capabilities": ["configuration", "firmwareUpgrade"],
            "geoLocation": {"latitude": "51.75", "longitude": "-1.25"},
            "createdAt": iso_timestamp(call.epoch - 86400 * 90),
            "updatedAt": iso_timestamp(call.epoch - 3600),
        }
        for i in range(firewall_count(tenant))
    ]
    return {"items": items, "pages": {"current": 1, "size": len(items), "maxSize": 100}}


def _uuid(tenant: Tenant, name: str) -> str:
    return str(uuid.uuid5(uuid.UUID(tenant.id), name))
