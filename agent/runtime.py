"""One running agent, wired from a ``Settings``: clients, probes, budget, metrics, schedule.

The CLI and the HTTP server talk to this class only; it owns the lifetime of the connection pool,
the state file and the scheduler.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Sequence
from typing import Literal

import httpx
import prometheus_client

from agent.classify import ErrorCodeGuard
from agent.client import CallObserver, CallRecord, SophosClient
from agent.clock import Clock, SystemClock, Timeline
from agent.collection import CollectionCheck, LastSuccessStore, check_collection
from agent.config import Settings
from agent.durations import format_duration
from agent.evidence import Evidence, EvidenceRecorder, load_evidence
from agent.hosts import HostPolicy
from agent.metrics import AgentMetrics
from agent.planner import Plan, pages_for, plan_probe_period
from agent.probes import CredentialProber, ProbeResult, display_order
from agent.ratebudget import RateBudget, allowance_for
from agent.scheduler import CredentialSchedule, ProbeScheduler, tick_seconds
from agent.secrets import register as register_secrets
from agent.sharding import owns
from agent.snapshot import CredentialSnapshot, Snapshot, credential_snapshot
from agent.sophos import MAX_PAGES, PAGE_CAP_REMEDY
from agent.statefile import StateFile, StateFileError
from agent.transport import build_http_client

log = logging.getLogger(__name__)

STATE_FILE_CHECK_SECONDS = 5.0
"""How often the running agent checks that its state file was not deleted or replaced (writes
check too, at most every second)."""


class ListingPages:
    """Tenant-list pages per complete refresh, per credential, as the agent really read them.

    The plan must count every page a refresh costs. A shard keeps only its own tenants but reads
    every page of the list, so its page count cannot be derived from the tenants it keeps; it is
    counted here, as the calls go out.
    """

    def __init__(self) -> None:
        self._current: dict[str, int] = {}
        self._last: dict[str, int] = {}

    def observe_call(self, record: CallRecord) -> None:
        if record.probe == "tenant_list":
            self._current[record.credential] = self._current.get(record.credential, 0) + 1

    def finish(self, credential: str, complete: bool) -> None:
        """A refresh ended; its count becomes the credential's figure if it read every page."""
        pages = self._current.pop(credential, 0)
        if complete and pages:
            self._last[credential] = pages

    def last(self, credential: str) -> int | None:
        """Pages of the last complete listing, None before the first one."""
        return self._last.get(credential)


class PausedAwareSlots(asyncio.Semaphore):
    """The agent's shared concurrency limit as one credential's schedule sees it.

    A slot is taken only once the credential is not in a 429 pause: without Retry-After a pause
    can last an hour or a day, and probes waiting in admission while holding slots would keep
    every other credential's probes from running. Acquire and release go to the shared limit.
    """

    def __init__(self, shared: asyncio.Semaphore, client: SophosClient) -> None:
        super().__init__(0)
        self._shared = shared
        self._client = client

    async def acquire(self) -> Literal[True]:
        await self._client.wait_while_paused()
        return await self._shared.acquire()

    def release(self) -> None:
        self._shared.release()

    def locked(self) -> bool:
        return self._shared.locked()


class Agent:
    """The exporter's moving parts for one configuration.

    ``schedule_speed`` is clock seconds per real second for the scheduler's jobs (see
    ``ProbeScheduler``): 1 with the real clock, more only with a benchmark's fast clock.
    """

    def __init__(
        self,
        settings: Settings,
        clock: Clock | None = None,
        http: httpx.AsyncClient | None = None,
        extra_observers: Sequence[CallObserver] = (),
        process_metrics: bool = True,
        schedule_speed: float = 1.0,
    ) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self._schedule_speed = schedule_speed
        register_secrets(settings)  # before anything is sent or logged
        self.timeline = Timeline(self.clock)  # wall time shown and persisted, from start-up on
        self.state_file = StateFile(settings.state_file, self.clock)
        self.owner = _owner(settings)
        self.budget = RateBudget(
            settings.rate_limits,
            settings.shard_budget_share,
            self.clock,
            store=self.state_file,
            owner=self.owner,
            tenant_share=settings.budget_share,  # a tenant belongs to one shard only
            timeline=self.timeline,
        )
        self.guard = ErrorCodeGuard()
        self.metrics = AgentMetrics(
            self.guard,
            shard=settings.shard,
            total_shards=settings.total_shards,
            process_registry=prometheus_client.REGISTRY if process_metrics else None,
        )
        self.evidence = EvidenceRecorder(self.state_file, self.owner, names=self.tenant_name)
        self.listing = ListingPages()
        self.observers: list[CallObserver] = [
            self.metrics,
            self.evidence,
            self.listing,
            *extra_observers,
        ]
        self._own_http = http is None
        self.http = http or build_http_client(settings)  # agent.transport: httpx on aiohttp
        self.policy = HostPolicy(
            settings.allowed_api_hosts, fixed_urls=(settings.auth_url, settings.api_url)
        )
        self.last_success = LastSuccessStore(self.state_file)
        self.probers = [self._prober(c.name) for c in settings.credentials]
        self.plans: dict[str, Plan] = {}
        self.collection: dict[str, CollectionCheck] = {}
        self._semaphore = asyncio.Semaphore(64)
        self.scheduler: ProbeScheduler | None = None
        self._unread_pages: dict[str, int] = {}

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
        return CredentialProber(
            client,
            self.clock,
            lambda tid: owns(tid, shard, total),
            owns_refused=shard == 0,
            remembered=self.last_success.load(name, self.clock.time()),
            on_success=self.last_success.remember,
        )

    # -- scheduling --------------------------------------------------------------------------

    def claim_state_file(self) -> None:
        """Hold the state file for this agent's owner; ``StateFileInUse`` when another running
        agent does (a second ``run`` on the same file and shard refuses to start)."""
        self.state_file.lock(self.owner)

    def start(self) -> None:
        """Start the scheduled probes (needs a running event loop)."""
        schedules = [
            CredentialSchedule(
                prober,
                self.clock,
                period=functools.partial(self.period, prober.name),
                on_refresh=self._after_refresh,
                semaphore=PausedAwareSlots(self._semaphore, prober.client),
                confirm_interval=self.settings.confirm_interval,
                spare=functools.partial(self.spare, prober.name),
                queued=functools.partial(self.budget.queued, prober.name),
            )
            for prober in self.probers
        ]
        self.scheduler = ProbeScheduler(
            schedules,
            token_interval=self.settings.token_probe_interval,
            refresh_interval=self.settings.tenant_refresh_interval,
            tick=lambda s: tick_seconds(
                self.period(s.name), len(s.prober.state.probed) * len(s.prober.probe_names)
            ),
            clock=self.clock,
            speed=self._schedule_speed,
            housekeeping=[("state_file", STATE_FILE_CHECK_SECONDS, self._check_state_file)],
        )
        self.scheduler.start()

    async def _check_state_file(self) -> None:
        self.state_file.verify()

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

    @property
    def tenant_scope(self) -> bool:
        """``rate_limit_scope: tenant``: each tenant's calls count against its own windows."""
        return self.settings.rate_limit_scope == "tenant"

    def period(self, credential: str) -> float:
        plan = self.plans.get(credential)
        return plan.period if plan is not None else self.settings.probe_interval

    def spare(self, credential: str) -> float:
        """Calls per second the credential's plan leaves unused (0 before the first plan)."""
        plan = self.plans.get(credential)
        return plan.spare if plan is not None else 0.0

    def tenant_name(self, credential: str, tenant_id: str) -> str:
        """The name a tenant was listed under, or "" (it left the list, or none was read yet)."""
        for prober in self.probers:
            if prober.name == credential:
                tenant = prober.state.tenants.get(tenant_id)
                return tenant.name if tenant is not None else ""
        return ""

    def explain_period(self, credential: str) -> str:
        """The credential's per-tenant probe period and why (``Plan.explain``), or the
        configured one while no tenant list has been planned for yet."""
        plan = self.plans.get(credential)
        if plan is not None:
            return plan.explain()
        return (
            f"every {format_duration(self.settings.probe_interval, approximate=True)}: "
            "as configured (probe_interval), until the first tenant list is planned for"
        )

    def refresh_interval(self, credential: str) -> float:
        """The effective tenant-refresh interval (``tenant_refresh_interval``, maybe stretched)."""
        plan = self.plans.get(credential)
        return plan.refresh_interval if plan is not None else self.settings.tenant_refresh_interval

    def _after_refresh(self, prober: CredentialProber) -> None:
        self.metrics.prune(prober.name, prober.state.tenants)
        self._tenants_listed(prober)
        listed = prober.state.result("", "tenant_list")
        self.listing.finish(prober.name, listed is not None and listed.success)
        self._say_unread_pages(prober)
        plan = self._replan(prober)
        if self.scheduler is not None:
            for schedule in self.scheduler.schedules:
                if schedule.prober is prober:
                    self.scheduler.retick(schedule)
                    self.scheduler.reschedule_refresh(schedule, plan.refresh_interval)

    def _say_unread_pages(self, prober: CredentialProber) -> None:
        """A tenant list longer than the page cap: warn once (until it changes), and export it."""
        listing = prober.client.last_listing
        if listing is None or not listing.complete:
            return
        unread, before = listing.unread_pages, self._unread_pages.get(prober.name, 0)
        self._unread_pages[prober.name] = unread
        if unread and unread != before:
            log.warning(
                "tenant list cut at the page cap: read %d of the %d pages it claims; the tenants "
                "on the other %d pages are not probed (%s)",
                listing.pages,
                listing.claimed,
                unread,
                PAGE_CAP_REMEDY,
                extra={
                    "credential": prober.name,
                    "pages_read": listing.pages,
                    "pages_claimed": listing.claimed,
                    "page_cap": MAX_PAGES,
                },
            )

    def _replan(self, prober: CredentialProber) -> Plan:
        """Recompute the credential's probe period and refresh interval; warn once each time
        either becomes stretched (or changes while stretched), and when the period is too long
        for the SIEM collection alert (``agent.collection``)."""
        plan = self._plan(prober, self.settings.budget_share, len(prober.families))
        previous = self.plans.get(prober.name)
        self.plans[prober.name] = plan
        self._check_collection(prober, plan)
        degraded = plan.stretched or plan.refresh_stretched or not plan.overhead_fits
        changed = previous is None or (previous.period, previous.refresh_interval) != (
            plan.period,
            plan.refresh_interval,
        )
        if previous is None:
            log.info(
                f"tenants probed {plan.explain()}",
                extra={"credential": prober.name, "period_seconds": round(plan.period)},
            )
        if degraded and changed:
            log.warning(plan.message, extra={"credential": prober.name})
        return plan

    def _plan(self, prober: CredentialProber, budget_share: float, families: int) -> Plan:
        """The credential's plan as it is, or with another ``budget_share`` and family count."""
        shares = self.settings.total_shards
        own = budget_share == self.settings.budget_share
        return plan_probe_period(
            tenants=len(prober.state.probed),
            probe_interval=self.settings.probe_interval,
            token_probe_interval=self.settings.token_probe_interval,
            tenant_refresh_interval=self.settings.tenant_refresh_interval,
            tenant_list_pages=self._pages(prober),
            allowance=self.budget.allowance
            if own
            else allowance_for(self.budget.limits, budget_share / shares),
            span={w: self.budget.hold_seconds(w)[1] for w in self.budget.limits},
            families=families,
            per_tenant=self.tenant_scope,
            tenant_allowance=self.budget.tenant_allowance
            if own
            else allowance_for(self.budget.limits, budget_share),
        )

    def _check_collection(self, prober: CredentialProber, plan: Plan) -> None:
        """Whether the SIEM collection alert holds at this plan; said in the log when that
        changes (at start-up, once the first tenant list is planned for)."""
        check = check_collection(
            plan,
            tuple(prober.families.values()),
            self.settings.confirm_interval,
            self.settings.budget_share,
            lambda share, families: self._plan(prober, share, families),
        )
        previous = self.collection.pop(prober.name, None)
        if check is None:
            return
        self.collection[prober.name] = check
        if check.note() and (previous is None or previous.note() != check.note()):
            log.warning(check.note(), extra={"credential": prober.name})

    def _pages(self, prober: CredentialProber) -> int:
        """Tenant-list pages per refresh: as counted, else estimated from the tenants kept."""
        whoami = prober.state.whoami
        if whoami is None or whoami.header is None:
            return 0
        counted = self.listing.last(prober.name)
        if counted is not None:
            return counted
        return pages_for(len(prober.state.tenants) * self.settings.total_shards)

    # -- one-shot cycle (check) --------------------------------------------------------------

    async def run_cycle(self) -> list[ProbeResult]:
        """Every probe of every credential once, now (the ``check`` command)."""
        self._warn_paused()
        results = await asyncio.gather(*(self._cycle(p) for p in self.probers))
        return [r for per_credential in results for r in per_credential]

    def _warn_paused(self) -> None:
        """A 429 pause kept in the state file holds ``check`` too: say so instead of hanging."""
        now = self.timeline.now()
        for prober in self.probers:
            info = self.budget.pause_info(prober.name)
            if info is not None and info.until > now:
                log.warning(
                    "paused after a 429 until %s (%s): this credential's probes wait for it",
                    info.until_text(now),
                    info.describe(),
                    extra={"credential": prober.name},
                )

    def _tenants_listed(self, prober: CredentialProber) -> None:
        """After a refresh: evidence of tenants no longer listed becomes history."""
        if prober.state.tenants_listed:
            self.evidence.tenants_listed(prober.name, prober.state.tenants, self.clock.time())

    async def _cycle(self, prober: CredentialProber) -> list[ProbeResult]:
        await prober.probe_token()
        await prober.refresh_tenants()
        self._tenants_listed(prober)
        self._replan(prober)  # the period a running agent would use, for check's summary
        await asyncio.gather(*(self._bounded(prober, t) for t in list(prober.state.probed)))
        prober.state.first_cycle_done = True
        return sorted(prober.state.results.values(), key=display_order)

    async def _bounded(self, prober: CredentialProber, tenant_id: str) -> None:
        """A tenant's probes one after the other, in configured order: when families disagree,
        the later ones can say which API the tenant does answer."""
        async with self._semaphore:
            for probe in prober.probe_names:
                await prober.probe_tenant(tenant_id, probe)

    # -- the read model ----------------------------------------------------------------------

    def snapshot(self, *, evidence: bool = False) -> Snapshot:
        """What every view renders: the agent's state now, copied (see ``agent.snapshot``).

        ``evidence`` also loads the 5XX support evidence from the state file (``/support``);
        evidence of a credential or probe that is no longer configured reads as history. The
        rate budget is read through its readout, at the same moment as the rest.
        """
        now = self.timeline.now()
        credentials = tuple(self._credential_snapshot(p) for p in self.probers)
        return Snapshot(
            taken_at=now,
            credentials=credentials,
            limits=self.budget.limits,
            allowance=self.budget.allowance,
            tenant_scope=self.tenant_scope,
            shard=self.settings.shard,
            total_shards=self.settings.total_shards,
            evidence=tuple(self._evidence()) if evidence else (),
            state_file_recreated=self.state_file.recreated,
            external_url=self.settings.external_url,
        )

    def _credential_snapshot(self, prober: CredentialProber) -> CredentialSnapshot:
        budget = self.budget.readout(prober.name, tenants=self.tenant_scope)
        return credential_snapshot(
            prober.state,
            token=prober.client.token,
            period=self.period(prober.name),
            period_text=self.explain_period(prober.name),
            refresh_interval=self.refresh_interval(prober.name),
            window_calls=budget.calls,
            in_flight=prober.client.in_flight,
            pause=budget.pause,
            pauses_total=budget.pauses_total,
            tenant_budgets=budget.tenant_budgets,
            probes=prober.probe_names,
            tenant_list_unread_pages=self._unread_pages.get(prober.name, 0),
            watched=tuple(f.name for f in prober.families.values() if f.lookback),
            collection_note=self._collection_note(prober.name),
            expires_at=prober.client.credential.expiry,
        )

    def _collection_note(self, credential: str) -> str:
        check = self.collection.get(credential)
        return "" if check is None else check.note()

    def _evidence(self) -> list[Evidence]:
        configured = {p.name: p.probe_names for p in self.probers}
        try:
            return load_evidence(self.state_file, configured)
        except StateFileError:
            return []

    def render_metrics(self) -> bytes:
        return self.metrics.render(self.snapshot())


def _owner(settings: Settings) -> str:
    if settings.total_shards == 1:
        return ""
    return f"shard-{settings.shard}-of-{settings.total_shards}"
