"""The probes (``token``, ``whoami``, ``tenant_list``, and per tenant each of ``tenant_probes``)
and what they leave.

A probe makes its call(s) through the ``SophosClient``, diagnoses the outcome and records a
``ProbeResult``. Results live in a ``CredentialState`` that the metrics, the status page and the
``check`` command read; nothing else keeps probe state, so all views agree.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from agent.causes import INVALID_TENANT_ID, lookup
from agent.classify import Outcome
from agent.client import SophosClient
from agent.clock import Clock
from agent.diagnosis import Context, Diagnosis, diagnose, not_probed
from agent.families import CREDENTIAL_PROBES, TENANT, Family
from agent.ratebudget import PRIORITY_TENANT
from agent.sophos import Tenant, WhoAmI, tenant_from_whoami

log = logging.getLogger(__name__)

TenantFilter = Callable[[str], bool]


@dataclass(frozen=True)
class ProbeResult:
    """The last result of one probe; ``error_code`` is raw (guard it before using as a label)."""

    credential: str
    tenant_id: str
    probe: str
    success: bool
    status_code: int
    error_code: str
    cause: str
    remedy: str
    message: str
    timestamp: float
    duration: float
    ids: dict[str, str] = field(default_factory=dict)
    consecutive_failures: int = 0
    """Failed runs in a row up to this one; 0 after a success and for tenants not probed."""
    last_success: float | None = None
    """When the probe last succeeded (this run's timestamp after a success); None: not since
    the agent started, nor remembered from before (``CredentialProber``'s ``remembered``)."""


SuccessHook = Callable[[ProbeResult], None]
"""Told every success of a family with a ``lookback`` (to keep it across restarts)."""

_PROBE_ORDER = {name: rank for rank, name in enumerate(CREDENTIAL_PROBES)}


def display_order(result: ProbeResult) -> tuple[int, str, int, str]:
    """Credential-level probes first (what everything else depends on), then tenants by id,
    each tenant's probes together (``tenant`` first, the other families by name)."""
    rank = _PROBE_ORDER.get(result.probe, len(_PROBE_ORDER))
    return (rank, result.tenant_id, 0 if result.probe == TENANT else 1, result.probe)


@dataclass
class CredentialState:
    """Everything known about one credential, replaced piecewise as probes finish."""

    name: str
    whoami: WhoAmI | None = None
    tenants: dict[str, Tenant] = field(default_factory=dict)
    probed: dict[str, Tenant] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    """Listed tenants the agent does not probe: tenant id -> the cause (nothing sent)."""
    refused_ids: int = 0
    """Items of the tenant list whose id the agent refused: counted, never probed."""
    results: dict[tuple[str, str], ProbeResult] = field(default_factory=dict)
    tenants_listed: bool = False
    first_cycle_done: bool = False

    def result(self, tenant_id: str, probe: str) -> ProbeResult | None:
        return self.results.get((tenant_id, probe))

    def failures(self) -> list[ProbeResult]:
        return [r for r in self.results.values() if not r.success]


class CredentialProber:
    """Runs the probes of one credential and keeps its ``CredentialState`` current."""

    def __init__(
        self,
        client: SophosClient,
        clock: Clock,
        owns_tenant: TenantFilter | None = None,
        families: tuple[Family, ...] | None = None,
        owns_refused: bool = True,
        remembered: Mapping[tuple[str, str], float] | None = None,
        on_success: SuccessHook | None = None,
    ) -> None:
        """``remembered``: (tenant id, probe) -> last success from before a restart, for the
        families with a ``lookback``; ``on_success`` is told each new success of those."""
        self.client = client
        self.state = CredentialState(name=client.name)
        self._clock = clock
        self._owns = owns_tenant or (lambda _tenant_id: True)
        self._owns_refused = owns_refused
        chosen = families if families is not None else client.settings.families
        self.families: dict[str, Family] = {f.name: f for f in chosen}
        self._remembered = dict(remembered or {})
        self._on_success = on_success

    @property
    def probe_names(self) -> tuple[str, ...]:
        """The per-tenant probes, in configured order: every tenant gets each of them."""
        return tuple(self.families)

    @property
    def name(self) -> str:
        return self.client.name

    async def probe_token(self) -> ProbeResult:
        """Fresh token issuance, on its own schedule: a revoked secret shows up within minutes
        even while a cached token still works."""
        started = self._clock.monotonic()
        outcome, _ = await self.client.issue_token()
        return self._record("", "token", outcome, started)

    async def probe_whoami(self) -> ProbeResult:
        started = self._clock.monotonic()
        outcome, whoami = await self.client.whoami()
        if whoami is not None:
            self.state.whoami = whoami
        return self._record("", "whoami", outcome, started)

    async def refresh_tenants(self) -> ProbeResult | None:
        """whoami, then the tenant list (partner / organization) or the tenant itself.

        A failed list keeps the tenants known from before: a transient 503 must not make every
        tenant's series vanish. Returns the tenant_list result, or None for tenant credentials.
        """
        await self.probe_whoami()
        whoami = self.state.whoami
        if whoami is None:
            return None
        if whoami.header is None:
            self._set_tenants([tenant_from_whoami(whoami, self.name)])
            return None
        started = self._clock.monotonic()
        outcome, tenants = await self.client.list_tenants(whoami)
        result = self._record("", "tenant_list", outcome, started)
        if tenants is not None:
            self._set_tenants(tenants)
            self._set_refused(self.client.refused_tenant_items)
        return result

    async def probe_tenant(
        self, tenant_id: str, probe: str = TENANT, priority: int = PRIORITY_TENANT
    ) -> ProbeResult | None:
        """One family's cheap per-tenant call; None when the tenant left the list meanwhile
        (or the family is not configured)."""
        tenant = self.state.probed.get(tenant_id)
        family = self.families.get(probe)
        if tenant is None or family is None:
            return None
        started = self._clock.monotonic()
        outcome = await self.client.probe_tenant(tenant, family, priority)
        return self._record(tenant.id, probe, outcome, started, tenant)

    def _set_tenants(self, tenants: list[Tenant]) -> None:
        """Replace the tenant set: the shard's own, split into probed and skipped (with why)."""
        mine = {t.id: t for t in tenants if self._owns(t.id)}
        probed: dict[str, Tenant] = {}
        skipped: dict[str, Diagnosis] = {}
        for tenant in mine.values():
            why = not_probed(tenant, self._may_call)
            if why is None:
                probed[tenant.id] = tenant
            else:
                skipped[tenant.id] = why
        self.state.tenants, self.state.probed = mine, probed
        self.state.skipped = {tenant_id: why.cause for tenant_id, why in skipped.items()}
        self.state.tenants_listed = True
        self._forget_departed(mine)
        for tenant_id, why in skipped.items():
            self._record_skipped(mine[tenant_id], why)

    def _may_call(self, url: str) -> bool:
        try:
            self.client.check_host(url)
        except ValueError:
            return False
        return True

    def _set_refused(self, count: int) -> None:
        """Items whose id the agent refused have no id to name them by: count them, and say
        so in the log once per change. Refused ids belong to no shard, so shard 0 counts them."""
        count = count if self._owns_refused else 0
        if count and count != self.state.refused_ids:
            log.warning(
                "%d %s",
                count,
                INVALID_TENANT_ID.log,
                extra={"credential": self.name, "cause": INVALID_TENANT_ID.name},
            )
        self.state.refused_ids = count

    def _record_skipped(self, tenant: Tenant, why: Diagnosis) -> None:
        """Report a tenant the agent will not call, once per change, with the reason."""
        first = next(iter(self.families), TENANT)
        previous = self.state.result(tenant.id, first)
        message = lookup(why.cause).log
        if tenant.api_host_problem:
            message = f"{message} (apiHost {tenant.api_host_problem})"
        outcome = Outcome(status_code=0, error_code=why.cause, message=message)
        for probe in self.families:
            self._record(
                tenant.id, probe, outcome, self._clock.monotonic(), tenant, quiet=True, why=why
            )
        if previous is None or (previous.cause, previous.remedy) != (why.cause, why.remedy):
            log.warning(
                "tenant not probed: %s",
                message,
                extra={
                    "credential": self.name,
                    "tenant_id": tenant.id,
                    "cause": why.cause,
                    "hint": why.remedy,
                },
            )

    def _forget_departed(self, current: dict[str, Tenant]) -> None:
        for key in [k for k in self.state.results if k[0] and k[0] not in current]:
            del self.state.results[key]

    def _record(
        self,
        tenant_id: str,
        probe: str,
        outcome: Outcome,
        started: float,
        tenant: Tenant | None = None,
        *,
        quiet: bool = False,
        why: Diagnosis | None = None,
    ) -> ProbeResult:
        """Diagnose (unless ``why`` already says it) and keep the result; ``quiet`` for a
        tenant that is not probed: it has no streak and no failure log line."""
        diagnosis = why
        if diagnosis is None:
            context = Context(
                tenant,
                self._token_age(),
                self.client.settings.api_url,
                credential=self.client.credential,
                now=self._clock.time(),
            )
            if tenant is not None and not quiet:
                context = self._family_context(context, tenant_id, probe)
            diagnosis = diagnose(probe, outcome, context)
        previous = self.state.results.get((tenant_id, probe))
        success = lookup(diagnosis.cause).kind == "ok"
        streak = 0
        if not success and not quiet:
            streak = 1 + (previous.consecutive_failures if previous is not None else 0)
        now = self._clock.time()
        if success:
            last_success: float | None = now
        elif previous is not None:
            last_success = previous.last_success
        else:
            last_success = self._remembered.get((tenant_id, probe))
        result = ProbeResult(
            credential=self.name,
            tenant_id=tenant_id,
            probe=probe,
            success=success,
            status_code=outcome.status_code,
            error_code=outcome.error_code,
            cause=diagnosis.cause,
            remedy=diagnosis.remedy,
            message=outcome.message,
            timestamp=now,
            duration=max(0.0, self._clock.monotonic() - started),
            ids=dict(outcome.ids),
            consecutive_failures=streak,
            last_success=last_success,
        )
        self.state.results[(tenant_id, probe)] = result
        family = self.families.get(probe) if tenant_id else None
        if success and family is not None and family.lookback and self._on_success:
            self._on_success(result)
        if not result.success and not quiet:
            _log_failure(result)
        return result

    def _family_context(self, context: Context, tenant_id: str, probe: str) -> Context:
        """Add which other family this tenant answers: families that disagree point at the
        credential's API role, not at the tenant."""
        family = self.families.get(probe)
        for name, other in self.families.items():
            result = self.state.results.get((tenant_id, name))
            if name != probe and result is not None and result.success and family is not None:
                return dataclasses.replace(context, path=family.endpoint, permitted=other.endpoint)
        return context

    def _token_age(self) -> float | None:
        token = self.client.token
        return None if token is None else self._clock.time() - token.issued_at


def _log_failure(result: ProbeResult) -> None:
    """One warning per failed probe, with the ids Sophos support asks for and Sophos's own error
    ``code`` and ``docUrl`` when the body had them — in the log only."""
    log.warning(
        "probe failed: %s",
        result.message or result.cause,
        extra={
            "credential": result.credential,
            "tenant_id": result.tenant_id,
            "probe": result.probe,
            "status_code": result.status_code,
            "error_code": result.error_code,
            "cause": result.cause,
            "hint": result.remedy,
            **result.ids,
        },
    )
