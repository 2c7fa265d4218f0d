"""The named scenarios, built deterministically from a seed.

Tenant ids, client ids, secrets and names come from a ``random.Random`` seeded with the scenario
name, so two processes that build the same scenario agree on everything (an end-to-end test can
build ``demo`` in-process to learn the client ids and secrets a subprocess simulator uses).
Tenants with a fault, or with a special placement, carry a tag in their name: ``[trial_403]``,
``[not_activated]``, ``[trial_no_host]`` (a trial listed without ``apiHost``), ``[rogue_host]``;
tests find them with ``Scenario.tenants_with_fault`` or ``tagged``.

The demo raises the rate limits (1s: 50, 1m: 3000, 1h: 100000, 1d: 1000000) and tells the agent
``budget_share: 0.5`` with a 30 s probe interval: with Sophos's defaults and the agent's default
share (0.1 of 100/minute = 10 calls a minute) its ~260 tenants would take half an hour to show
up. The limits are the simulator's own, so the agent still budgets against the limits it meets.
Once in a while (40 s every 10 minutes, from 3 minutes after start) the demo answers
``tenant-direct``'s API calls 429 without Retry-After, so that ``/status`` and the metrics show a
429 pause with the window it assumes; ``throttled`` does the same at once and for longer.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable

from agent.simulator.faults import (
    BASIC_FAULTS,
    CHAOS_FAULTS,
    FAULT_NAMES,
    NOT_API_FAULTS,
    check_faults,
)
from agent.simulator.model import (
    Credential,
    IdType,
    Scenario,
    Tenant,
    Throttle,
)

_PREFIXES = (
    "Müller",
    "Café Zürich",
    "Łódź",
    "São Paulo",
    "Ørsted",
    "Αθήνα",
    "東京",
    "Björkström",
    "Crème Brûlée",
    "Ñandú",
    "İstanbul",
    "Kraków",
    "Åland",
    "Acme",
    "Northwind",
    "Contoso",
    "Globex",
    "Initech",
    "Umbrella",
    "Hooli",
    "Москва",
    "Dubrovník",
    "Ūdens",
    "Fjärilen",
)
_SUFFIXES = (
    "GmbH",
    "Ltd",
    "SARL",
    "AG",
    "Inc.",
    "KK",
    "Oy",
    "S.A.",
    "BV",
    "Pty",
    "& Söhne",
    "Clinic",
)

PROBED_FAMILIES = ("endpoint", "common_alerts", "siem_events", "siem_alerts")
"""The families the ``families`` scenario's agent config probes, one permission fault each."""

DEMO_LIMITS = {"1s": 50, "1m": 3000, "1h": 100_000, "1d": 1_000_000}


class _Builder:
    """Deterministic ids, secrets and names for one scenario."""

    def __init__(self, name: str) -> None:
        seed = int.from_bytes(uuid.uuid5(uuid.NAMESPACE_URL, f"sophos-simulator:{name}").bytes)
        self._rng = random.Random(seed)  # noqa: S311 - reproducible fixtures, not cryptography
        self.faults: dict[str, str] = {}
        self._serial = 0

    def uuid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def secret(self) -> str:
        return f"{self._rng.getrandbits(256):064x}"

    def tenant(self, region: int, tag: str | None = None, **fields: object) -> Tenant:
        """A tenant with a unicode-rich name; ``tag`` ends the name as ``[tag]``."""
        self._serial += 1
        prefix = self._rng.choice(_PREFIXES)
        suffix = self._rng.choice(_SUFFIXES)
        name = f"{prefix} {suffix} {self._serial:05d}"
        tenant = Tenant(
            id=self.uuid(),
            name=f"{name} [{tag}]" if tag else name,
            region=region,
            endpoints=self._rng.randint(1, 40),
        )
        for key, value in fields.items():
            setattr(tenant, key, value)
        return tenant

    def faulty(self, region: int, fault: str) -> Tenant:
        """A tenant that starts with ``fault``; a 403 fault gets the billingType behind it."""
        billing = {"trial_403": "trial", "no_partner_assistance_403": "term"}.get(fault, "usage")
        tenant = self.tenant(region, fault, billing_type=billing)
        self.faults[tenant.id] = fault
        return tenant

    def credential(self, name: str, id_type: IdType, tenants: list[Tenant]) -> Credential:
        own_id = tenants[0].id if id_type == "tenant" else self.uuid()
        return Credential(name, self.uuid(), self.secret(), id_type, own_id, tenants)

    def healthy(self, count: int, regions: int) -> list[Tenant]:
        return [self.tenant(i % regions) for i in range(count)]


def tagged(scenario: Scenario, tag: str) -> list[Tenant]:
    """Tenants whose name ends with ``[tag]`` (faults, ``not_activated``, ``trial_no_host``,
    ``rogue_host``)."""
    return [t for t in scenario.tenants() if t.name.endswith(f"[{tag}]")]


def _demo() -> Scenario:
    b = _Builder("demo")
    faults_at = dict(zip((5, 17, 42, 88, 120, 150, 175, 199), BASIC_FAULTS, strict=True))

    def msp_tenant(i: int) -> Tenant:
        region = i % 2
        if i in faults_at:
            return b.faulty(region, faults_at[i])
        if i == 220:
            return b.tenant(region, "not_activated", activated=False)
        if i == 230:
            return b.tenant(region, "trial_no_host", activated=False, billing_type="trial")
        if i == 240:
            return b.tenant(region, "rogue_host", rogue=True)
        return b.tenant(region)

    msp = [msp_tenant(i) for i in range(250)]
    org = b.healthy(4, 2)
    direct = [b.tenant(1)]
    revoked = b.credential("revoked-key", "partner", b.healthy(3, 2))
    revoked.agent_secret = b.secret()
    main = b.credential("msp-main", "partner", msp)
    main.expires_after = 400 * 86400.0  # /status and check say when; no alert for 370 days
    return Scenario(
        name="demo",
        credentials=[
            main,
            b.credential("org-main", "organization", org),
            b.credential("tenant-direct", "tenant", direct),
            revoked,
        ],
        faults=b.faults,
        regions=2,
        rate_limits=dict(DEMO_LIMITS),
        slow_seconds=8.0,
        agent_overrides={"budget_share": 0.5, "probe_interval": "30s", "request_timeout": "5s"},
        throttles={"tenant-direct": Throttle(start=180.0, duration=40.0, every=600.0)},
    )


def _throttled() -> Scenario:
    """429s without Retry-After: ``msp-throttled`` from the start for 90 s (long enough for a
    1st and a 2nd 429 in a row), again every hour; ``org-steady`` beside it is never throttled."""
    b = _Builder("throttled")
    return Scenario(
        name="throttled",
        credentials=[
            b.credential("msp-throttled", "partner", b.healthy(6, 2)),
            b.credential("org-steady", "organization", b.healthy(2, 2)),
        ],
        regions=2,
        throttles={"msp-throttled": Throttle(start=0.0, duration=90.0, every=3600.0)},
    )


def _healthy() -> Scenario:
    b = _Builder("healthy")
    return Scenario(
        name="healthy",
        credentials=[
            b.credential("msp-healthy", "partner", b.healthy(20, 2)),
            b.credential("org-healthy", "organization", b.healthy(5, 2)),
            b.credential("tenant-healthy", "tenant", [b.tenant(0)]),
        ],
        regions=2,
    )


def _faults() -> Scenario:
    b = _Builder("faults")
    tenants = [b.tenant(0), b.tenant(1)]
    tenants += [b.faulty(i % 2, fault) for i, fault in enumerate(FAULT_NAMES)]
    tenants.append(b.tenant(0, "not_activated", activated=False))
    tenants.append(b.tenant(1, "rogue_host", rogue=True))
    tenants.append(b.tenant(0, "trial_no_host", activated=False, billing_type="trial"))
    return Scenario(
        name="faults",
        credentials=[b.credential("msp-faults", "partner", tenants)],
        faults=b.faults,
        regions=2,
        slow_seconds=15.0,
    )


def _outage() -> Scenario:
    scenario = _healthy()
    scenario.name = "outage"
    scenario.outage = True
    return scenario


def _chaos() -> Scenario:
    b = _Builder("chaos")
    kinds = (*CHAOS_FAULTS, "reset", "server_error_500", "html_502", "empty_503")
    tenants: list[Tenant] = []
    for i in range(60):
        fault = kinds[(i // 3) % len(kinds)] if i % 3 == 0 else None
        tenants.append(b.faulty(i % 2, fault) if fault else b.tenant(i % 2))
    return Scenario(
        name="chaos",
        credentials=[b.credential("msp-chaos", "partner", tenants)],
        faults=b.faults,
        regions=2,
    )


def _families() -> Scenario:
    """Tenants whose credential may call some API families and not others, for ``tenant_probes``.

    Each permission fault tags one tenant (``[forbidden_common_alerts]`` ...); the agent config
    probes the endpoint, SIEM and alerts families.
    """
    b = _Builder("families")
    tenants = [b.tenant(0), b.tenant(1)]
    for i, fault in enumerate(f"forbidden_{family}" for family in PROBED_FAMILIES):
        tenant = b.tenant(i % 2, fault)
        b.faults[tenant.id] = fault
        tenants.append(tenant)
    return Scenario(
        name="families",
        credentials=[b.credential("msp-families", "partner", tenants)],
        faults=b.faults,
        regions=2,
        agent_overrides={
            "tenant_probes": ["tenant", "siem_events", "siem_alerts", "common_alerts"]
        },
    )


def _integrations() -> Scenario:
    """For real integrations (SIEM connectors, scripts, Sophos clients from PyPI): every call
    answers, and every kind of paging has more than one page: 60 partner tenants (two pages of
    the default 50), one tenant with 37 endpoints and 111 alerts, an organization and a tenant
    credential. The demo's larger rate limits, so that several clients can share a credential
    at once."""
    b = _Builder("integrations")
    tenants = b.healthy(60, 2)
    tenants[0].endpoints = 37
    return Scenario(
        name="integrations",
        credentials=[
            b.credential("msp-integrations", "partner", tenants),
            b.credential("org-integrations", "organization", b.healthy(3, 2)),
            b.credential("tenant-integrations", "tenant", [b.tenant(1)]),
        ],
        regions=2,
        rate_limits=dict(DEMO_LIMITS),
    )


def _not_api() -> Scenario:
    """Answers that are not the API's: one tenant per ``NOT_API_FAULTS`` fault (a captive
    portal's HTML 200, JSON 200 of the wrong shape, a WAF's HTML 403, a maintenance HTML 503),
    tagged with the fault's name, and two healthy tenants."""
    b = _Builder("not-api")
    tenants = [b.tenant(0), b.tenant(1)]
    tenants += [b.faulty(i % 2, fault) for i, fault in enumerate(NOT_API_FAULTS)]
    return Scenario(
        name="not-api",
        credentials=[b.credential("msp-not-api", "partner", tenants)],
        faults=b.faults,
        regions=2,
    )


def _scale_10k() -> Scenario:
    b = _Builder("scale-10k")
    return Scenario(
        name="scale-10k",
        credentials=[b.credential("msp-scale", "partner", b.healthy(10_000, 2))],
        regions=2,
    )


def _scale_20x500() -> Scenario:
    b = _Builder("scale-20x500")
    credentials = [b.credential(f"msp-{n:02d}", "partner", b.healthy(500, 2)) for n in range(1, 21)]
    return Scenario(name="scale-20x500", credentials=credentials, regions=2)


_BUILDERS: dict[str, Callable[[], Scenario]] = {
    "demo": _demo,
    "healthy": _healthy,
    "faults": _faults,
    "outage": _outage,
    "throttled": _throttled,
    "chaos": _chaos,
    "families": _families,
    "integrations": _integrations,
    "not-api": _not_api,
    "scale-10k": _scale_10k,
    "scale-20x500": _scale_20x500,
}

SCENARIO_NAMES: tuple[str, ...] = tuple(_BUILDERS)


def build_scenario(name: str) -> Scenario:
    """A fresh copy of the named scenario (the same every time for the same name)."""
    builder = _BUILDERS.get(name)
    if builder is None:
        raise ValueError(f"unknown scenario {name!r}; choose one of {', '.join(SCENARIO_NAMES)}")
    scenario = builder()
    scenario.validate()
    check_faults(scenario)
    return scenario
