"""When probes run: APScheduler jobs per credential, and a round-robin over its tenants.

Per credential there are three jobs: the token probe (``token_probe_interval``), the tenant refresh
(whoami + tenant list, ``tenant_refresh_interval``) and a tenant tick. The tick is not one job per
tenant — 10,000 jobs would make APScheduler's own bookkeeping the bottleneck — but a short interval
job that starts the probes whose slot has come. The rotation runs over (tenant, probe) pairs, one
per tenant and ``tenant_probes`` entry, a tenant's probes next to each other: pair *i* of *N* is
due at ``i x period / N`` within each period, so start-up is spread evenly and every pair is probed
once per period. Each probe runs as its own task, so a hanging tenant never delays the next tick or
any other tenant; the rate budget, not the scheduler, decides how fast calls actually leave.

A failed per-tenant probe is confirmed instead of waiting a whole period, which the planner may
have stretched to hours or days: the pair is re-probed ``confirm_interval`` after the failure, then
twice that after the next one, until ``CONFIRMATIONS`` failures in a row confirm it or a success
clears it; then it is back on its routine slot only (a tenant that stays broken costs nothing
extra). Confirmations are served by the tick before routine slots and go ahead of routine probes
at admission (``PRIORITY_CONFIRMATION``), through the same rate budget, so they never push a window
past its allowance. Their rate is capped at ``CONFIRM_SHARE`` of the routine pair rate
(``pairs / period``), with a burst of ``CONFIRM_BURST``: when many tenants fail at once (an outage)
routine probing keeps at least half its pace even when the budget is saturated, instead of
starving behind the confirmations.

The tenants one tick finds due do not start at once either: each waits for its own slot (one slot
length after the one before), so probes leave at the planned pace instead of in bursts of a tick's
worth. Bursts would not break the budget, but they cost CPU: every burst grows the connection
pool, and httpcore scans the whole pool (a ``poll`` per idle connection) for every request.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from agent.causes import CONFIRMED_AFTER as CONFIRMATIONS
from agent.clock import Clock
from agent.probes import CredentialProber
from agent.ratebudget import PRIORITY_CONFIRMATION, PRIORITY_TENANT
from agent.tokenbucket import TokenBucket

log = logging.getLogger(__name__)

MIN_TICK = 0.2
MAX_TICK = 5.0
MAX_CONCURRENT_TENANT_PROBES = 64
CONFIRM_SHARE = 0.5
"""Confirmations may use at most this share of the routine per-tenant call rate."""
CONFIRM_BURST = 2.0
"""The cap's bucket: one tenant's two re-probes always fit, and an outage cannot bank more."""

K = TypeVar("K", str, tuple[str, str])
Pair = tuple[str, str]
"""(tenant id, probe name): what the rotation and the confirmations schedule."""


@dataclass
class TenantRotation(Generic[K]):
    """Round-robin position over a credential's probed (tenant, probe) pairs; survives
    tenant-list changes."""

    order: list[K] = field(default_factory=list)
    position: float = 0.0
    in_flight: set[K] = field(default_factory=set)
    pending_first: set[K] | None = None

    def replace(self, tenant_ids: list[K], key: Callable[[K], Any] | None = None) -> None:
        """New tenant set: keep the rotation going, drop departed ids, add newcomers at the end
        (in ``key`` order)."""
        current = set(tenant_ids)
        kept = [t for t in self.order if t in current]
        known = set(kept)
        self.order = kept + sorted((t for t in tenant_ids if t not in known), key=key)
        if self.order:
            self.position %= len(self.order)
        else:
            self.position = 0.0
        if self.pending_first is None:
            self.pending_first = set(self.order)
        else:
            self.pending_first &= current

    def due(self, elapsed: float, period: float) -> list[K]:
        """The tenants whose slots fall within the last ``elapsed`` seconds."""
        if not self.order or period <= 0:
            return []
        self.position += len(self.order) * elapsed / period
        count = min(int(self.position + 1e-9), len(self.order))  # float sums fall just short
        self.position -= count
        due = self.order[:count]
        self.order = self.order[count:] + due
        return due


@dataclass
class ConfirmationQueue:
    """Re-probes of failed pairs, due on the agent's clock, and the token bucket that caps them.

    ``after`` is told every finished per-tenant probe; ``take`` hands out the re-probes that are
    due, oldest first, as far as the cap allows (``rate`` re-probes a second, at most
    ``CONFIRM_BURST`` at once). A pair whose re-probe waits for the cap stays due and goes out
    as soon as it fits.
    """

    interval: float
    due: dict[Pair, float] = field(default_factory=dict)
    bucket: TokenBucket = field(default_factory=lambda: TokenBucket(rate=0.0, burst=CONFIRM_BURST))
    started: int = 0

    def after(self, pair: Pair, failures: int, now: float) -> None:
        """A probe of ``pair`` finished with ``failures`` in a row: plan its next re-probe."""
        if 0 < failures < CONFIRMATIONS:
            self.due[pair] = now + self.interval * 2 ** (failures - 1)
        else:
            self.due.pop(pair, None)

    def take(self, now: float, rate: float, busy: set[Pair]) -> list[Pair]:
        """The pairs to re-probe now; ``busy`` pairs (being probed) wait for their result."""
        self.bucket.rate = rate
        if self.bucket.available(now) < 1.0 or not self.due:
            return []
        ready = sorted((at, pair) for pair, at in self.due.items() if at <= now)
        taken: list[Pair] = []
        for _, pair in ready:
            if pair in busy:
                continue
            if not self.bucket.take(now):
                break
            del self.due[pair]
            taken.append(pair)
        self.started += len(taken)
        return taken

    def keep(self, pairs: set[Pair]) -> None:
        """Forget re-probes of tenants (or probes) no longer probed."""
        self.due = {p: at for p, at in self.due.items() if p in pairs}


RefreshHook = Callable[[CredentialProber], None]


class CredentialSchedule:
    """The jobs of one credential, and the bookkeeping for readiness."""

    def __init__(
        self,
        prober: CredentialProber,
        clock: Clock,
        period: Callable[[], float],
        on_refresh: RefreshHook,
        semaphore: asyncio.Semaphore,
        confirm_interval: float = 60.0,
    ) -> None:
        self.prober = prober
        self._clock = clock
        self._period = period
        self._on_refresh = on_refresh
        self._semaphore = semaphore
        self.rotation: TenantRotation[Pair] = TenantRotation()
        self.confirmations = ConfirmationQueue(confirm_interval)
        self._last_tick: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.token_done = False
        self.refresh_done = False

    @property
    def name(self) -> str:
        return self.prober.name

    @property
    def ready(self) -> bool:
        """First cycle complete: token, refresh and every tenant once, whatever the outcomes."""
        pending = self.rotation.pending_first
        return self.token_done and self.refresh_done and (pending is None or not pending)

    async def run_token(self) -> None:
        try:
            await self.prober.probe_token()
        finally:
            self.token_done = True

    async def run_refresh(self) -> None:
        try:
            await self.prober.refresh_tenants()
            pairs = self.pairs()
            self.rotation.replace(pairs, key=self._pair_order())
            self.confirmations.keep(set(pairs))
            self._on_refresh(self.prober)
        finally:
            if self.rotation.pending_first is None:
                self.rotation.pending_first = set()
            self.refresh_done = True
            self.prober.state.first_cycle_done = self.ready

    def pairs(self) -> list[Pair]:
        """Every (tenant, probe) pair to probe: each probed tenant times each tenant probe."""
        names = self.prober.probe_names
        return [(tenant_id, probe) for tenant_id in self.prober.state.probed for probe in names]

    def _pair_order(self) -> Callable[[Pair], tuple[str, int]]:
        """Newcomers by tenant id, each tenant's probes in configured order, side by side."""
        rank = {name: i for i, name in enumerate(self.prober.probe_names)}
        return lambda pair: (pair[0], rank.get(pair[1], len(rank)))

    def confirm_rate(self, period: float) -> float:
        """The cap on re-probes per second: ``CONFIRM_SHARE`` of the routine pair rate."""
        return CONFIRM_SHARE * len(self.rotation.order) / period if period > 0 else 0.0

    async def run_tick(self) -> None:
        now = self._clock.monotonic()
        elapsed = 0.0 if self._last_tick is None else now - self._last_tick
        self._last_tick = now
        period = self._period()
        busy = self.rotation.in_flight
        for pair in self.confirmations.take(now, self.confirm_rate(period), busy):
            self._start(pair, 0.0, PRIORITY_CONFIRMATION)
        slot = period / max(1, len(self.rotation.order))
        for k, pair in enumerate(self.rotation.due(elapsed, period)):
            if pair not in self.rotation.in_flight:
                self._start(pair, k * slot)

    def _start(self, pair: Pair, delay: float = 0.0, priority: int = PRIORITY_TENANT) -> None:
        self.rotation.in_flight.add(pair)
        task = asyncio.get_running_loop().create_task(self._probe(pair, delay, priority))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _probe(self, pair: Pair, delay: float, priority: int) -> None:
        failures = 0
        try:
            if delay > 0:
                await self._clock.sleep(delay)
            async with self._semaphore:
                result = await self.prober.probe_tenant(pair[0], pair[1], priority)
            failures = 0 if result is None else result.consecutive_failures
        except Exception:
            log.exception("tenant probe crashed", extra={"credential": self.name})
        finally:
            self.confirmations.after(pair, failures, self._clock.monotonic())
            self.rotation.in_flight.discard(pair)
            pending = self.rotation.pending_first
            if pending is not None:
                pending.discard(pair)
            self.prober.state.first_cycle_done = self.ready

    async def drain(self, grace: float) -> None:
        """Give in-flight probes a moment to finish, then cancel what is left."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)


class ProbeScheduler:
    """Owns the ``AsyncIOScheduler`` and one ``CredentialSchedule`` per credential.

    ``speed`` is clock seconds per real second. APScheduler runs on real time while everything
    else runs on the agent's ``Clock``; with the real clock the speed is 1. A benchmark that runs
    agent and simulator on a clock that runs faster (to cover hour and day windows in minutes)
    passes the same factor so that token probes and refreshes keep their pace in clock time.
    """

    def __init__(
        self,
        schedules: list[CredentialSchedule],
        token_interval: float,
        refresh_interval: float,
        tick: Callable[[CredentialSchedule], float],
        speed: float = 1.0,
    ) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.schedules = schedules
        self._token_interval = token_interval
        self._refresh_interval = refresh_interval
        self._tick = tick
        self._speed = speed
        self._refresh: dict[str, float] = {}
        self._scheduler = AsyncIOScheduler(timezone=UTC)

    def start(self) -> None:
        now = datetime.now(UTC)
        for schedule in self.schedules:
            token, refresh = self._token_interval, self._refresh_interval
            self._add(schedule.run_token, token / self._speed, f"token:{schedule.name}", now)
            self._add(schedule.run_refresh, refresh / self._speed, f"refresh:{schedule.name}", now)
            self._refresh[schedule.name] = refresh
            self._add(
                schedule.run_tick,
                self._tick_real(schedule),
                f"tenants:{schedule.name}",
                now + timedelta(seconds=0.5),
            )
        self._scheduler.start()

    def refresh_interval(self, schedule: CredentialSchedule) -> float:
        """The tenant-refresh interval the credential's job runs at now (clock seconds)."""
        return self._refresh.get(schedule.name, self._refresh_interval)

    def reschedule_refresh(self, schedule: CredentialSchedule, seconds: float) -> bool:
        """Run the credential's tenant refresh every ``seconds`` from now on; False if unchanged.

        The next refresh comes ``seconds`` after this call: it is made right after a refresh,
        so the new interval starts where the last listing ended.
        """
        if seconds <= 0:
            raise ValueError(f"refresh interval must be > 0, got {seconds}")
        if self._refresh.get(schedule.name) == seconds:
            return False
        self._refresh[schedule.name] = seconds
        job = self._scheduler.get_job(f"refresh:{schedule.name}")
        if job is not None:
            job.reschedule("interval", seconds=seconds / self._speed)
        return True

    def _tick_real(self, schedule: CredentialSchedule) -> float:
        """The tick in real seconds: faster with a fast clock, but never a busy loop."""
        return max(MIN_TICK, self._tick(schedule) / self._speed)

    def _add(
        self,
        func: Callable[[], Coroutine[Any, Any, None]],
        real: float,
        job_id: str,
        first: datetime,
    ) -> None:
        """An interval job every ``real`` seconds of real time."""
        self._scheduler.add_job(
            _guarded(func, job_id),
            "interval",
            seconds=real,
            id=job_id,
            next_run_time=first,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=max(1, math.ceil(real)),
        )

    def retick(self, schedule: CredentialSchedule) -> None:
        """Adjust a credential's tick after its tenant count or period changed."""
        job = self._scheduler.get_job(f"tenants:{schedule.name}")
        if job is not None:
            job.reschedule("interval", seconds=self._tick_real(schedule))

    @property
    def ready(self) -> bool:
        return all(s.ready for s in self.schedules)

    async def stop(self, grace: float = 2.0) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        await asyncio.gather(*(s.drain(grace) for s in self.schedules))


def tick_seconds(period: float, tenants: int) -> float:
    """Short enough that slots stay evenly spread, long enough not to spin: one tick per slot,
    clamped to [MIN_TICK, MAX_TICK]. ``tenants`` counts slots: (tenant, probe) pairs."""
    if tenants <= 0:
        return MAX_TICK
    return min(MAX_TICK, max(MIN_TICK, period / tenants))


def _guarded(
    func: Callable[[], Coroutine[Any, Any, None]], job_id: str
) -> Callable[[], Coroutine[Any, Any, None]]:
    """A job that logs its own crash instead of letting APScheduler swallow it silently."""

    async def job() -> None:
        try:
            await func()
        except Exception:
            log.exception("scheduled job failed", extra={"job": job_id})

    job.__name__ = job_id.replace(":", "_")
    return job
