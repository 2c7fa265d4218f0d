"""One running agent, wired from a ``Settings``: clients, probes, budget, metrics, schedule.

The CLI and the HTTP server talk to this class only; it owns the lifetime of the connection pool,
the state file and the scheduler.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Sequence

import httpx
import prometheus_client

from agent.classify import ErrorCodeGuard
from agent.client import CallObserver, SophosClient, build_http_client
from agent.clock import Clock, SystemClock
from agent.config import Settings
from agent.evidence import EvidenceRecorder
from agent.hosts import HostPolicy
from agent.logs import REDACTOR
from agent.metrics import AgentMetrics, CredentialView
from agent.planner import Plan, pages_for, plan_probe_period
from agent.probes import CredentialProber, ProbeResult
from agent.ratebudget import RateBudget
from agent.scheduler import CredentialSchedule, ProbeScheduler, tick_seconds
from agent.sharding import owns
from agent.statefile import StateFile

log = logging.getLogger(__name__)


class Agent:
    """The exporter's moving parts for one configuration."""

    def __init__(
        self,
        settings: Settings,
        clock: Clock | None = None,
        http: httpx.AsyncClient | None = None,
        extra_observers: Sequence[CallObserver] = (),
        process_metrics: bool = True,
    ) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        REDACTOR.add(_secrets(settings))
        self.state_file = StateFile(settings.state_file)
        self.owner = _owner(settings)
        self.budget = RateBudget(
            settings.rate_limits,
            settings.shard_budget_share,
            self.clock,
            store=self.state_file,
            owner=self.owner,
        )
        self.guard = ErrorCodeGuard()
        self.metrics = AgentMetrics(
            self.guard,
            shard=settings.shard,
            total_shards=settings.total_shards,
            process_registry=prometheus_client.REGISTRY if process_metrics else None,
        )
        self.evidence = EvidenceRecorder(self.state_file, self.owner)
        self.observers: list[CallObserver] = [self.metrics, self.evidence, *extra_observers]
        self._own_http = http is None
        self.http = http or build_http_client(settings)
        self.policy = HostPolicy(
            settings.allowed_api_hosts, fixed_urls=(settings.auth_url, settings.api_url)
        )
        self.probers = [self._prober(c.name) for c in settings.credentials]
        self.plans: dict[str, Plan] = {}
        self._semaphore = asyncio.Semaphore(64)
        self.scheduler: ProbeScheduler | None = None

    def _prober(self, name: str) -> CredentialProber:
        credential = next(c for c in self.settings.credentials if c.name == name)
        client = SophosClient(
            self.settings,
            credential,
            self.http,
            self.budget,
            self.observers,
            self.clock,
            self.policy,
        )
        shard, total = self.settings.shard, self.settings.total_shards
        return CredentialProber(client, self.clock, lambda tid: owns(tid, shard, total))

    # -- scheduling --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the scheduled probes (needs a running event loop)."""
        schedules = [
            CredentialSchedule(
                prober,
                self.clock,
                period=functools.partial(self.period, prober.name),
                on_refresh=self._after_refresh,
                semaphore=self._semaphore,
            )
            for prober in self.probers
        ]
        self.scheduler = ProbeScheduler(
            schedules,
            token_interval=self.settings.token_probe_interval,
            refresh_interval=self.settings.tenant_refresh_interval,
            tick=lambda s: tick_seconds(self.period(s.name), len(s.prober.state.probed)),
        )
        self.scheduler.start()

    async def stop(self, grace: float = 2.0) -> None:
        """Finish in-flight work briefly, then release the pool and the state file."""
        if self.scheduler is not None:
            await self.scheduler.stop(grace)
        if self._own_http:
            await self.http.aclose()
        self.state_file.close()

    @property
    def ready(self) -> bool:
        return self.scheduler is not None and self.scheduler.ready

    def period(self, credential: str) -> float:
        plan = self.plans.get(credential)
        return plan.period if plan is not None else self.settings.probe_interval

    def _after_refresh(self, prober: CredentialProber) -> None:
        self.metrics.prune(prober.name, prober.state.tenants)
        self._replan(prober)
        if self.scheduler is not None:
            for schedule in self.scheduler.schedules:
                if schedule.prober is prober:
                    self.scheduler.retick(schedule)

    def _replan(self, prober: CredentialProber) -> None:
        """Recompute the credential's probe period; warn once each time it becomes stretched."""
        whoami = prober.state.whoami
        lists = whoami is not None and whoami.header is not None
        plan = plan_probe_period(
            tenants=len(prober.state.probed),
            probe_interval=self.settings.probe_interval,
            token_probe_interval=self.settings.token_probe_interval,
            tenant_refresh_interval=self.settings.tenant_refresh_interval,
            tenant_list_pages=pages_for(len(prober.state.tenants)) if lists else 0,
            allowance=self.budget.allowance,
        )
        previous = self.plans.get(prober.name)
        self.plans[prober.name] = plan
        if plan.stretched and (previous is None or previous.period != plan.period):
            log.warning(plan.message, extra={"credential": prober.name})

    # -- one-shot cycle (check) --------------------------------------------------------------

    async def run_cycle(self) -> list[ProbeResult]:
        """Every probe of every credential once, now (the ``check`` command)."""
        results = await asyncio.gather(*(self._cycle(p) for p in self.probers))
        return [r for per_credential in results for r in per_credential]

    async def _cycle(self, prober: CredentialProber) -> list[ProbeResult]:
        await prober.probe_token()
        await prober.refresh_tenants()
        await asyncio.gather(*(self._bounded(prober, t) for t in list(prober.state.probed)))
        prober.state.first_cycle_done = True
        return sorted(prober.state.results.values(), key=_result_order)

    async def _bounded(self, prober: CredentialProber, tenant_id: str) -> None:
        async with self._semaphore:
            await prober.probe_tenant(tenant_id)

    # -- views -------------------------------------------------------------------------------

    def views(self) -> list[CredentialView]:
        return [
            CredentialView(
                state=p.state,
                token=p.client.token,
                whoami=p.state.whoami,
                probe_interval=self.period(p.name),
                budget_key=p.name,
                in_flight=p.client.in_flight,
            )
            for p in self.probers
        ]

    def render_metrics(self) -> bytes:
        return self.metrics.render(self.views(), self.budget)


def _result_order(result: ProbeResult) -> tuple[int, str, str]:
    order = {"token": 0, "whoami": 1, "tenant_list": 2, "tenant": 3}
    return (order.get(result.probe, 9), result.tenant_id, result.probe)


def _owner(settings: Settings) -> str:
    if settings.total_shards == 1:
        return ""
    return f"shard-{settings.shard}-of-{settings.total_shards}"


def _secrets(settings: Settings) -> list[str]:
    values: list[str] = []
    for credential in settings.credentials:
        values.append(credential.client_id.get_secret_value())
        with contextlib.suppress(OSError):
            values.append(credential.secret())
    return values
