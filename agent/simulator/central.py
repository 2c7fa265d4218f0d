"""The simulated Sophos Central service: one ``ApiRequest`` in, one ``Reply`` out.

Checks run in the order a client meets them on the real service: arrival is counted (and may be
rate limited), then the outage switch, then the bearer token, then the route's own headers and
the tenant's placement, then faults, then the route's answer (``routes.ROUTES``). Tokens are
opaque random strings mapped to (client, expiry); they stay valid after a secret rotation until
they expire, as real ones do.

Faults come from three places, checked in this order: the tenant's own (the scenario's, or set
through the admin API), then the drill's entries active now, in file order. The first that
applies to the call answers it.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from agent.clock import Clock
from agent.simulator.bodies import (
    central_error,
    expired_token_error,
    oauth_error,
    token_body,
)
from agent.simulator.drill import ID_HOST, CallPoint, Drill, DrillFault, describe_all, host_names
from agent.simulator.faults import (
    TENANT_FAULTS,
    TOO_MANY_REQUESTS,
    TRANSPORT_FAULTS,
    check_faults,
    fault_reply,
    permission_family,
)
from agent.simulator.model import Credential, Scenario, Tenant
from agent.simulator.reads import BadRequest, Call, NotFound
from agent.simulator.routes import TENANT_NAMESPACES, Route, family_of, match
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
_ID_HEADERS = {
    "partner": ("x-partner-id", "X-Partner-ID"),
    "organization": ("x-organization-id", "X-Organization-ID"),
    "tenant": ("x-tenant-id", "X-Tenant-ID"),
}
_DELIVERY_FAULTS = frozenset({"slow", "truncated", "stall"})
"""Faults that deliver the normal answer late, in part or never: they need it first."""


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


class Central:
    """State and behaviour of the simulated service, shared by every host."""

    def __init__(self, scenario: Scenario, clock: Clock, drill: Drill | None = None) -> None:
        scenario.validate()
        check_faults(scenario)
        self.scenario = scenario
        self.drill = drill
        self._clock = clock
        self.stats = TrafficStats(clock, scenario.rate_limits)
        self._by_client = {c.client_id: c for c in scenario.credentials}
        self._by_name = {c.name: c for c in scenario.credentials}
        self._secrets = {c.client_id: c.client_secret for c in scenario.credentials}
        self._owned = {c.client_id: {t.id: t for t in c.tenants} for c in scenario.credentials}
        self._tenants = {t.id: t for t in scenario.tenants()}
        self._faults = dict(scenario.faults)
        self._hosts = {t.id: self._placement(t) for t in self._tenants.values()}
        self._host_names = {key: name for name, key in host_names(scenario).items()}
        self._tokens: dict[str, _Session] = {}
        self.outage = scenario.outage
        self._urls: HostUrls | None = None
        self._started = clock.monotonic()
        self._epoch = clock.time()
        self.started_at = self._epoch
        """Wall time the hosts started listening: the drill's zero."""

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
        """The hosts are listening: from now on the drill's clock runs."""
        self._urls = urls
        self._started = self._clock.monotonic()
        self.started_at = self._clock.time()
        for cred in self.scenario.credentials:
            if cred.expires_after is not None and cred.expires_at is None:
                cred.expires_at = self.started_at + cred.expires_after

    @property
    def urls(self) -> HostUrls:
        if self._urls is None:
            raise RuntimeError("the simulator has not been started")
        return self._urls

    def elapsed(self) -> float:
        """Seconds since the hosts started listening, on the simulator's clock."""
        return self._clock.monotonic() - self._started

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
        if fault not in TENANT_FAULTS:
            raise ValueError(f"unknown fault {fault!r} (known: {', '.join(TENANT_FAULTS)})")
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

    def expire_credential(self, credential_name: str, at: float | None = None) -> None:
        """The credential expires at wall time ``at`` (now by default): from then on the id host
        refuses it, as Sophos Central refuses an expired credential; issued tokens stay valid
        until they expire (what Sophos does with them is not documented)."""
        self._credential(credential_name).expires_at = self._now() if at is None else at

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

    def active_faults(self) -> dict[str, Any]:
        """What is broken right now, and the drill's whole schedule (JSON-ready, no secrets)."""
        elapsed = self.elapsed()
        drill = () if self.drill is None else self.drill.faults
        return {
            "elapsed_seconds": round(elapsed, 3),
            "outage": self.outage,
            "tenants": self.faults,
            "throttled": [
                name
                for name, throttle in self.scenario.throttles.items()
                if throttle.active(elapsed)
            ],
            "drill": describe_all([f for f in drill if f.active(elapsed)], elapsed),
            "schedule": describe_all(drill, elapsed),
        }

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
            "active_faults": self.active_faults(),
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
        point = CallPoint(ID_HOST, None if cred is None else cred.name, family="token")
        fault = self._drill_fault(point)
        if fault is not None and fault not in _DELIVERY_FAULTS:
            return fault_reply(fault, Reply(200), self._now(), self.scenario.slow_seconds)
        normal = self._token_answer(req, form, cred, secret)
        if fault is None:
            return normal
        return fault_reply(fault, normal, self._now(), self.scenario.slow_seconds)

    def _token_answer(
        self, req: ApiRequest, form: dict[str, str], cred: Credential | None, secret: str
    ) -> Reply:
        if req.method != "POST":
            return oauth_error(405, "oauth.method_not_allowed", "Method Not Allowed")
        if form.get("grant_type") != "client_credentials":
            return oauth_error(400, "oauth.unsupported_grant_type", "Bad Request")
        if cred is None:
            return oauth_error(401, "oauth.client_app_does_not_exist", "Unauthorized")
        if not hmac.compare_digest(secret.encode(), self._secrets[cred.client_id].encode()):
            return oauth_error(401, "oauth.invalid_client_secret", "Unauthorized")
        if cred.expires_at is not None and self._now() >= cred.expires_at:
            # Sophos does not document the answer for an expired credential: the id host
            # refuses it as it refuses a wrong secret, and only the date tells them apart.
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
        return throttle is not None and throttle.active(self.elapsed())

    def _route(self, req: ApiRequest, cred: Credential) -> Reply:
        path = req.path.rstrip("/") or "/"
        now = self._now()
        found = match(path)
        if path == WHOAMI_PATH and req.host != HOST_MAIN:
            # What Sophos's data-region hosts do when whoami is sent there: a gateway timeout.
            return Reply(504)
        if found is not None and found[0].scope == "global":
            return self._global_call(req, cred, found[0], found[1])
        if path.split("/")[1] in TENANT_NAMESPACES:
            return self._tenant_call(req, cred, path, found)
        return central_error(404, now, "Resource not found.", error="notFound")

    def _call(self, req: ApiRequest, cred: Credential, **fields: Any) -> Call:
        return Call(
            query=req.query,
            credential=cred,
            now=self._now(),
            epoch=self._epoch,
            global_url=self.urls.main,
            api_host_of=self.api_host_of,
            owned=self._owned[cred.client_id],
            extra={"max_page_size": self.scenario.max_page_size},
            **fields,
        )

    def _global_call(
        self, req: ApiRequest, cred: Credential, route: Route, item: str | None
    ) -> Reply:
        now = self._now()
        if req.host != HOST_MAIN:
            return central_error(404, now, "Resource not found.", error="notFound")
        if req.method != "GET":
            return central_error(405, now)
        if route.who is not None and cred.id_type != route.who:
            return central_error(
                403, now, f"Only {route.who} credentials can list {route.who} tenants"
            )
        if route.id_header:
            header, shown = _ID_HEADERS[cred.id_type]
            value = req.headers.get(header, "").strip()
            if not value:
                return central_error(
                    401, now, f"Missing required header {shown}", error="notAuthorized"
                )
            if value != cred.id:
                return central_error(403, now, error="forbiddenAccess")
        point = CallPoint("global", cred.name, family=route.family)
        return self._answer(route, self._call(req, cred, item_id=item), point, None)

    def _tenant_call(
        self, req: ApiRequest, cred: Credential, path: str, found: tuple[Route, str | None] | None
    ) -> Reply:
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
        family = family_of(path)
        point = CallPoint(self._host_names.get(req.host, req.host), cred.name, tenant_id, family)
        if found is None:
            return self._faulted(
                point,
                self._faults.get(tenant_id),
                central_error(404, now, "Resource not found.", error="notFound"),
            )
        route, item = found
        if req.method != "GET":
            return central_error(405, now)
        call = self._call(req, cred, tenant=tenant, item_id=item)
        return self._answer(route, call, point, self._faults.get(tenant_id))

    def _answer(self, route: Route, call: Call, point: CallPoint, own: str | None) -> Reply:
        """The route's answer, or what the first applicable fault makes of it."""
        fault = self._applicable(point, own)
        if fault is not None and fault not in _DELIVERY_FAULTS and permission_family(fault) is None:
            return fault_reply(fault, Reply(200), call.now, self.scenario.slow_seconds)
        if fault is not None and permission_family(fault) is not None:
            return _denied(call.now)
        try:
            normal = json_reply(200, route.answer(call))
        except BadRequest as exc:
            normal = central_error(400, call.now, str(exc), error=route.bad_request)
        except NotFound:
            normal = central_error(404, call.now)
        if fault is None:
            return normal
        return fault_reply(fault, normal, call.now, self.scenario.slow_seconds)

    def _faulted(self, point: CallPoint, own: str | None, normal: Reply) -> Reply:
        fault = self._applicable(point, own)
        if fault is None or permission_family(fault) is not None:
            return normal
        return fault_reply(fault, normal, self._now(), self.scenario.slow_seconds)

    def _applicable(self, point: CallPoint, own: str | None) -> str | None:
        """The first fault that hits this call: the tenant's own, then the drill's."""
        if own is not None and _hits(own, point):
            return own
        return self._drill_fault(point)

    def _drill_fault(self, point: CallPoint) -> str | None:
        if self.drill is None:
            return None
        entries: list[DrillFault] = self.drill.active(self.elapsed())
        for entry in entries:
            if entry.applies(point) and _hits(entry.fault, point):
                return entry.fault
        return None


def _hits(fault: str, point: CallPoint) -> bool:
    """A permission fault hits its own family only; every other fault hits every call."""
    family = permission_family(fault)
    return family is None or family == point.family


def _denied(now: float) -> Reply:
    """The 403 of a permission fault: the real body seen when a role lacks one product."""
    return central_error(403, now, "Access is denied", error="forbidden")


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
