"""What a simulated Sophos Central holds: credentials, their tenants, faults and limits.

A ``Scenario`` is plain data so that tests can build one by hand as easily as ``build_scenario``
builds the named ones. Where a tenant is served is derived, not stored: a tenant that is not
activated has no host, a rogue tenant lives on the rogue listener, a tenant whose *scenario*
fault breaks HTTP itself (``faults.TRANSPORT_FAULTS``) lives on the raw faulty host, and every
other tenant on regional host ``region % regions``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

IdType = Literal["partner", "organization", "tenant"]

DEFAULT_RATE_LIMITS: dict[str, int] = {"1s": 10, "1m": 100, "1h": 1000, "1d": 50000}

REGIONS: tuple[tuple[str, str], ...] = (
    ("eu01", "IE"),
    ("us03", "US"),
    ("eu02", "DE"),
    ("us01", "US"),
    ("ca01", "CA"),
    ("au01", "AU"),
    ("jp01", "JP"),
    ("br01", "BR"),
    ("in01", "IN"),
)
"""(dataRegion, dataGeography) pairs as Sophos names them; regional host i serves REGIONS[i]."""


@dataclass(slots=True)
class Tenant:
    """A customer tenant. ``region`` indexes the regional hosts (and ``REGIONS``)."""

    id: str
    name: str
    region: int = 0
    billing_type: str = "usage"
    activated: bool = True
    rogue: bool = False
    endpoints: int = 3
    alerts: int | None = None
    """Open alerts in ``/common/v1/alerts``; None: three per endpoint."""

    @property
    def data_region(self) -> str:
        return REGIONS[self.region % len(REGIONS)][0]

    @property
    def data_geography(self) -> str:
        return REGIONS[self.region % len(REGIONS)][1]


@dataclass(slots=True)
class Credential:
    """An API credential and the tenants it may reach.

    ``id`` is what whoami returns: the partner or organization id, or for a tenant credential the
    id of its single tenant. ``agent_secret`` is the secret handed to the agent when it differs
    from the one the id host accepts (a revoked key). ``expires_at`` (wall time) is when the id
    host starts refusing the credential, as Sophos Central does with an expired one; the
    generated agent config carries it as the credential's ``expires_at``. A scenario gives
    ``expires_after`` instead (seconds after the simulator starts), so that building it twice
    gives equal scenarios.
    """

    name: str
    client_id: str
    client_secret: str
    id_type: IdType
    id: str
    tenants: list[Tenant] = field(default_factory=list)
    agent_secret: str | None = None
    expires_at: float | None = None
    expires_after: float | None = None

    @property
    def configured_secret(self) -> str:
        """The secret the generated agent config carries."""
        return self.client_secret if self.agent_secret is None else self.agent_secret


@dataclass(slots=True)
class Throttle:
    """A credential whose API calls Central answers 429, without Retry-After, for a while.

    The way a real 429 looks for the APIs the agent calls: the spec body, no Retry-After, no
    ``X-RateLimit-*`` header. It stands for another integration that exhausts a shared window:
    ``duration`` seconds out of every ``every``, the first time ``start`` seconds after the
    simulator started. Token calls are not throttled (the id host is another service).
    """

    start: float = 0.0
    duration: float = 30.0
    every: float = 600.0

    def active(self, elapsed: float) -> bool:
        """True while the throttle holds, ``elapsed`` seconds after the simulator started."""
        since = elapsed - self.start
        return since >= 0 and since % self.every < self.duration


@dataclass(slots=True)
class Scenario:
    """A whole simulated Sophos Central.

    ``faults`` maps tenant id to fault name at start; ``slow_seconds`` is how long the ``slow``
    fault waits (keep it above the agent's request timeout); ``agent_overrides`` are extra keys
    for the generated agent config (shorter intervals, a larger budget share for the demo).
    ``throttles`` maps credential names to a ``Throttle``: at times their API calls answer 429
    without Retry-After.
    """

    name: str
    credentials: list[Credential]
    faults: dict[str, str] = field(default_factory=dict)
    regions: int = 2
    rate_limits: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_RATE_LIMITS))
    token_lifetime: int = 3600
    max_page_size: int = 100
    slow_seconds: float = 15.0
    outage: bool = False
    agent_overrides: dict[str, Any] = field(default_factory=dict)
    throttles: dict[str, Throttle] = field(default_factory=dict)

    def credential(self, name: str) -> Credential:
        for cred in self.credentials:
            if cred.name == name:
                return cred
        raise KeyError(f"no credential named {name!r}")

    def tenants(self) -> Iterator[Tenant]:
        """Every tenant once, in credential order."""
        seen: set[str] = set()
        for cred in self.credentials:
            for tenant in cred.tenants:
                if tenant.id not in seen:
                    seen.add(tenant.id)
                    yield tenant

    def tenant(self, tenant_id: str) -> Tenant:
        for tenant in self.tenants():
            if tenant.id == tenant_id:
                return tenant
        raise KeyError(f"no tenant with id {tenant_id!r}")

    def tenant_by_name(self, name: str) -> Tenant:
        for tenant in self.tenants():
            if tenant.name == name:
                return tenant
        raise KeyError(f"no tenant named {name!r}")

    def tenants_with_fault(self, fault: str) -> list[Tenant]:
        """Tenants that start with ``fault``, in listing order."""
        return [t for t in self.tenants() if self.faults.get(t.id) == fault]

    def validate(self) -> None:
        """Refuse a scenario the simulator could not serve consistently, naming the problem.

        Fault names are checked by ``faults.check_faults``, which knows the catalog.
        """
        _check_positive(self)
        _check_credentials(self.credentials)
        for name, throttle in self.throttles.items():
            self.credential(name)  # KeyError names an unknown credential
            if not 0 < throttle.duration <= throttle.every or throttle.start < 0:
                raise ValueError(f"throttles[{name!r}]: need 0 < duration <= every, start >= 0")


def _check_positive(scenario: Scenario) -> None:
    if scenario.regions < 1:
        raise ValueError("regions must be at least 1")
    if scenario.max_page_size < 1:
        raise ValueError("max_page_size must be at least 1")
    if scenario.token_lifetime < 1:
        raise ValueError("token_lifetime must be at least 1")
    for label, limit in scenario.rate_limits.items():
        if limit < 1:
            raise ValueError(f"rate_limits[{label!r}] must be at least 1")


def _check_credentials(credentials: list[Credential]) -> None:
    names: set[str] = set()
    client_ids: set[str] = set()
    for cred in credentials:
        if cred.name in names:
            raise ValueError(f"duplicate credential name {cred.name!r}")
        if cred.client_id in client_ids:
            raise ValueError(f"credential {cred.name!r}: duplicate client_id")
        names.add(cred.name)
        client_ids.add(cred.client_id)
        if cred.id_type == "tenant" and (len(cred.tenants) != 1 or cred.tenants[0].id != cred.id):
            raise ValueError(f"credential {cred.name!r}: a tenant credential is its one tenant")
