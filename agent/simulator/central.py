"""The simulated Sophos Central service: one ``ApiRequest`` in, one ``Reply`` out.

Checks run in the order a client meets them on the real service: arrival is counted (and may be
rate limited), then the outage switch, then the bearer token, then the route's own headers, then
the tenant's fault. Tokens are opaque random strings mapped to (client, expiry); they stay valid
after a secret rotation until they expire, as real ones do.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import math
import re
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from agent.clock import Clock
from agent.simulator.bodies import (
    central_error,
    endpoint_items,
    expired_token_error,
    oauth_error,
    tenant_item,
    token_body,
)
from agent.simulator.families import FamilyBadRequest, denied, family_of, family_reply
from agent.simulator.faults import fault_reply
from agent.simulator.model import (
    ALL_FAULTS,
    API_FAMILIES,
    PERMISSION_FAULTS,
    TRANSPORT_FAULTS,
    Credential,
    Scenario,
    Tenant,
)
from agent.simulator.traffic import TrafficStats
from agent.simulator.wire import (
    HOST_FAULTY,
    HOST_MAIN,
    HOST_ROGUE,
    ApiRequest,
    Reply,
    json_reply,
    region_host,
)

TOKEN_PATH = "/api/v2/oauth2/token"  # noqa: S105 - a path, not a password
WHOAMI_PATH = "/whoami/v1"
_TENANT_LIST = re.compile(r"^/(partner|organization)/v1/tenants(?:/([^/]+))?$")
_ENDPOINT = re.compile(r"^/endpoint/v1/endpoints/([^/]+)$")
TENANT_NAMESPACES = frozenset(
    {"endpoint", "common", "siem", "account-health-check", "live-discover", "xdr-query", "firewall"}
)
"""First path segments of the per-tenant APIs, served by the tenant's own regional host."""
_ID_HEADERS = {
    "partner": ("x-partner-id", "X-Partner-ID"),
    "organization": ("x-organization-id", "X-Organization-ID"),
}
_ENDPOINT_VIEWS = frozenset({"basic", "summary", "full"})
_ENDPOINT_MAX_PAGE = 500


@dataclass(frozen=True, slots=True)
class HostUrls:
    """Where each listener ended up; known only once the sockets are bound."""

    main: str
    regions: tuple[str, ...]
    faulty: str
    rogue: str

    def url_of(self, host: str | None) -> str | None:
        if host is None:
            return None
        if host == HOST_MAIN:
            return self.main
        if host == HOST_FAULTY:
            return self.faulty
        if host == HOST_ROGUE:
            return self.rogue
        return self.regions[int(host.removeprefix("region-"))]


@dataclass(slots=True)
class _Session:
    client_id: str
    expires_at: float


TOO_MANY_REQUESTS = "Too many requests."
"""The 429 message of Sophos's API specification."""


class BadRequest(ValueError):
    """A query parameter Central would refuse with 400."""


class Central:
    """State and behaviour of the simulated service, shared by every host."""

    def __init__(self, scenario: Scenario, clock: Clock) -> None:
        scenario.validate()
        self.scenario = scenario
        self._clock = clock
        self.stats = TrafficStats(clock, scenario.rate_limits)
        self._by_client = {c.client_id: c for c in scenario.credentials}
        self._by_name = {c.name: c for c in scenario.credentials}
        self._secrets = {c.client_id: c.client_secret for c in scenario.credentials}
        self._owned = {c.client_id: {t.id: t for t in c.tenants} for c in scenario.credentials}
        self._tenants = {t.id: t for t in scenario.tenants()}
        self._faults = dict(scenario.faults)
        self._hosts = {t.id: self._placement(t) for t in self._tenants.values()}
        self._tokens: dict[str, _Session] = {}
        self.outage = scenario.outage
        self._urls: HostUrls | None = None
        self._started = clock.monotonic()

    def _placement(self, tenant: Tenant) -> str | None:
        if not tenant.activated:
            return None
        if tenant.rogue:
            return HOST_ROGUE
        if self._faults.get(tenant.id) in TRANSPORT_FAULTS:
            return HOST_FAULTY
        return region_host(tenant.region % self.scenario.regions)

    # --- wiring and runtime control -------------------------------------------------------

    def bind_urls(self, urls: HostUrls) -> None:
        self._urls = urls

    @property
    def urls(self) -> HostUrls:
        if self._urls is None:
            raise RuntimeError("the simulator has not been started")
        return self._urls

    def host_of(self, tenant_id: str) -> str | None:
        """The host key that serves a tenant (None: not activated)."""
        return self._hosts[tenant_id]

    def api_host_of(self, tenant_id: str) -> str | None:
        return self.urls.url_of(self._hosts[tenant_id])

    def credential_name(self, client_id: str) -> str:
        return self._by_client[client_id].name

    def set_fault(self, tenant_id: str, fault: str | None) -> None:
        """Give a tenant a fault, or clear it with None; its host does not move."""
        if tenant_id not in self._tenants:
            raise KeyError(f"no tenant with id {tenant_id!r}")
        if fault is None:
            self._faults.pop(tenant_id, None)
            return
        if fault not in ALL_FAULTS:
            raise ValueError(f"unknown fault {fault!r} (known: {', '.join(ALL_FAULTS)})")
        self._faults[tenant_id] = fault

    def fault_of(self, tenant_id: str) -> str | None:
        return self._faults.get(tenant_id)

    @property
    def faults(self) -> dict[str, str]:
        return dict(self._faults)

    def rotate_secret(self, credential_name: str) -> str:
        """Make the configured secret invalid; issued tokens stay valid until they expire."""
        cred = self._credential(credential_name)
        new_secret = secrets.token_urlsafe(30)
        self._secrets[cred.client_id] = new_secret
        return new_secret

    def expire_tokens(self, credential_name: str) -> int:
        """Expire every token issued to a credential now; returns how many there were."""
        cred = self._credential(credential_name)
        now = self._clock.monotonic()
        sessions = [s for s in self._tokens.values() if s.client_id == cred.client_id]
        for session in sessions:
            session.expires_at = min(session.expires_at, now)
        return len(sessions)

    def _credential(self, name: str) -> Credential:
        cred = self._by_name.get(name)
        if cred is None:
            raise KeyError(f"no credential named {name!r}")
        return cred

    def state(self) -> dict[str, Any]:
        """JSON-ready state for the admin API (names, never client ids or secrets)."""
        names = {cid: cred.name for cid, cred in self._by_client.items()}
        return {
            "scenario": self.scenario.name,
            "outage": self.outage,
            "tenants": len(self._tenants),
            "credentials": [
                {"name": c.name, "id_type": c.id_type, "id": c.id, "tenants": len(c.tenants)}
                for c in self.scenario.credentials
            ],
            "faults": self.faults,
            "rate_limits": dict(self.scenario.rate_limits),
            "stats": self.stats.snapshot(names),
        }

    # --- request handling -----------------------------------------------------------------

    def handle(self, req: ApiRequest) -> Reply:
        reply = self._dispatch(req)
        label = str(reply.status) if reply.transport == "normal" else reply.transport
        self.stats.note_status(req.host, label)
        return reply

    def _dispatch(self, req: ApiRequest) -> Reply:
        if req.host == HOST_MAIN and req.path == TOKEN_PATH:
            return self._token(req)
        return self._api(req)

    def _now(self) -> float:
        return self._clock.time()

    def _too_many(self, retry_after: int) -> Reply:
        return central_error(429, self._now(), None, (("retry-after", str(retry_after)),))

    def _token(self, req: ApiRequest) -> Reply:
        form = _form(req)
        client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        if not client_id:
            client_id, secret = _basic_auth(req.headers.get("authorization", ""))
        cred = self._by_client.get(client_id)
        admission = self.stats.arrive(None if cred is None else cred.client_id, req.host)
        if admission.retry_after is not None:
            return self._too_many(admission.retry_after)
        if req.method != "POST":
            return oauth_error(405, "oauth.method_not_allowed", "Method Not Allowed")
        if form.get("grant_type") != "client_credentials":
            return oauth_error(400, "oauth.unsupported_grant_type", "Bad Request")
        if cred is None:
            return oauth_error(401, "oauth.client_app_does_not_exist", "Unauthorized")
        if not hmac.compare_digest(secret.encode(), self._secrets[cred.client_id].encode()):
            return oauth_error(401, "oauth.invalid_client_secret", "Unauthorized")
        if form.get("scope", "token") != "token":
            return oauth_error(400, "oauth.invalid_scope", "Bad Request")
        return json_reply(200, token_body(self._issue(cred), self.scenario.token_lifetime))

    def _issue(self, cred: Credential) -> str:
        now = self._clock.monotonic()
        if len(self._tokens) > 1000:
            grace = self.scenario.token_lifetime
            self._tokens = {k: s for k, s in self._tokens.items() if s.expires_at + grace > now}
        token = secrets.token_urlsafe(32)
        self._tokens[token] = _Session(cred.client_id, now + self.scenario.token_lifetime)
        return token

    def _api(self, req: ApiRequest) -> Reply:
        session = self._tokens.get(_bearer(req.headers.get("authorization", "")))
        admission = self.stats.arrive(None if session is None else session.client_id, req.host)
        now = self._now()
        if admission.retry_after is not None:
            return self._too_many(admission.retry_after)
        if self.outage:
            return central_error(503, now)
        if session is None:
            return central_error(401, now, "Full authentication is required")
        if session.expires_at <= self._clock.monotonic():
            return expired_token_error()
        cred = self._by_client[session.client_id]
        if self._throttled(cred.name):
            return central_error(429, now, TOO_MANY_REQUESTS)  # no Retry-After: the usual 429
        return self._route(req, cred)

    def _throttled(self, credential_name: str) -> bool:
        throttle = self.scenario.throttles.get(credential_name)
        return throttle is not None and throttle.active(self._clock.monotonic() - self._started)

    def _route(self, req: ApiRequest, cred: Credential) -> Reply:
        path = req.path.rstrip("/") or "/"
        now = self._now()
        tenant_list = _TENANT_LIST.match(path)
        if path == WHOAMI_PATH and req.host != HOST_MAIN:
            # What Sophos's data-region hosts do when whoami is sent there: a gateway timeout.
            return Reply(504)
        if path == WHOAMI_PATH or tenant_list is not None:
            if req.host != HOST_MAIN:
                return central_error(404, now, "Resource not found.", error="notFound")
            if req.method != "GET":
                return central_error(405, now)
            if tenant_list is None:
                return self._whoami(cred)
            return self._tenant_list(req, cred, tenant_list.group(1), tenant_list.group(2))
        if path.split("/")[1] in TENANT_NAMESPACES:
            return self._tenant_call(req, cred, path)
        return central_error(404, now, "Resource not found.", error="notFound")

    def _whoami(self, cred: Credential) -> Reply:
        api_hosts: dict[str, str | None] = {"global": self.urls.main}
        if cred.id_type == "tenant":
            api_hosts["dataRegion"] = self.api_host_of(cred.id)
        return json_reply(200, {"id": cred.id, "idType": cred.id_type, "apiHosts": api_hosts})

    def _tenant_list(
        self, req: ApiRequest, cred: Credential, kind: str, tenant_id: str | None
    ) -> Reply:
        now = self._now()
        if cred.id_type != kind:
            return central_error(403, now, f"Only {kind} credentials can list {kind} tenants")
        header, shown = _ID_HEADERS[kind]
        value = req.headers.get(header, "").strip()
        if not value:
            return central_error(
                401, now, f"Missing required header {shown}", error="notAuthorized"
            )
        if value != cred.id:
            return central_error(403, now, error="forbiddenAccess")
        if tenant_id is not None:
            tenant = self._owned[cred.client_id].get(tenant_id)
            if tenant is None:
                return central_error(404, now)
            return json_reply(200, tenant_item(tenant, cred, self.api_host_of(tenant.id)))
        try:
            return self._tenant_page(req, cred)
        except BadRequest as exc:
            return central_error(400, now, str(exc))

    def _tenant_page(self, req: ApiRequest, cred: Credential) -> Reply:
        max_size = self.scenario.max_page_size
        page = _positive_int(req.query, "page", 1)
        size = min(_positive_int(req.query, "pageSize", min(100, max_size)), max_size)
        start = (page - 1) * size
        items = [
            tenant_item(t, cred, self.api_host_of(t.id)) for t in cred.tenants[start : start + size]
        ]
        pages: dict[str, int] = {"current": page, "size": size, "maxSize": max_size}
        if req.query.get("pageTotal", "").lower() == "true":
            total_items = len(cred.tenants)
            pages["total"] = max(1, math.ceil(total_items / size))
            pages["items"] = total_items
        return json_reply(200, {"items": items, "pages": pages})

    def _tenant_call(self, req: ApiRequest, cred: Credential, path: str) -> Reply:
        now = self._now()
        tenant_id = req.headers.get("x-tenant-id", "").strip()
        if not tenant_id:
            return central_error(401, now, "Missing required header X-Tenant-ID")
        tenant = self._owned[cred.client_id].get(tenant_id)
        if tenant is None:
            return central_error(403, now, "Access is denied", error="forbidden")
        host = self._hosts[tenant_id]
        if host is None:
            return central_error(403, now, "Tenant is not activated", error="forbidden")
        if host != req.host:
            return central_error(
                403, now, "Wrong data region: use the tenant's apiHost", error="forbidden"
            )
        fault = self._faults.get(tenant_id)
        forbidden = denied(fault, path, now)
        if forbidden is not None:
            return forbidden
        normal = self._tenant_api(req, tenant, path)
        if fault is None or fault in PERMISSION_FAULTS:  # a permission fault elsewhere
            return normal
        return fault_reply(fault, normal, now, self.scenario.slow_seconds)

    def _tenant_api(self, req: ApiRequest, tenant: Tenant, path: str) -> Reply:
        now = self._now()
        family = family_of(path)
        if family is not None and family != "endpoint" and path == API_FAMILIES[family]:
            if req.method != "GET":
                return central_error(405, now)
            try:
                return family_reply(family, req.query, tenant, now)
            except FamilyBadRequest as exc:
                return central_error(400, now, str(exc))
        single = _ENDPOINT.match(path)
        if path != "/endpoint/v1/endpoints" and single is None:
            return central_error(404, now, "Resource not found.", error="notFound")
        if req.method != "GET":
            return central_error(405, now)
        if single is not None:
            found = [e for e in endpoint_items(tenant, tenant.endpoints) if e["id"] == single[1]]
            return json_reply(200, found[0]) if found else central_error(404, now)
        try:
            return _endpoint_page(req, tenant)
        except BadRequest as exc:
            return central_error(400, now, str(exc), error="badRequest")


def _endpoint_page(req: ApiRequest, tenant: Tenant) -> Reply:
    size = min(_positive_int(req.query, "pageSize", 50), _ENDPOINT_MAX_PAGE)
    if req.query.get("view", "basic") not in _ENDPOINT_VIEWS:
        raise BadRequest("view must be one of basic, summary, full")
    offset = _positive_int(req.query, "pageFromKey", 1) - 1 if "pageFromKey" in req.query else 0
    everything = endpoint_items(tenant, offset + size)
    items = everything[offset:]
    pages: dict[str, Any] = {"size": len(items), "maxSize": _ENDPOINT_MAX_PAGE}
    if offset + size < tenant.endpoints:
        pages["nextKey"] = str(offset + size + 1)
    return json_reply(200, {"items": items, "pages": pages})


def _positive_int(query: Any, name: str, default: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number") from None
    if value < 1:
        raise BadRequest(f"{name} must be at least 1")
    return value


def _form(req: ApiRequest) -> dict[str, str]:
    parsed = parse_qs(req.body.decode("utf-8", "replace"), keep_blank_values=True)
    return {key: values[0] for key, values in parsed.items()}


def _bearer(header: str) -> str:
    scheme, _, token = header.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _basic_auth(header: str) -> tuple[str, str]:
    """Client id and secret from HTTP Basic auth, which the id host also accepts."""
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return "", ""
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return "", ""
    client_id, _, secret = decoded.partition(":")
    return client_id, secret
