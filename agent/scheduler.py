"""When probes run: periodic jobs per credential, and a round-robin over its tenants.

Per credential there are three jobs: the token probe (``token_probe_interval``), the tenant refresh
(whoami + tenant list, ``tenant_refresh_interval``) and a tenant tick. The tick is not one job per
tenant — 10,000 jobs would make a scheduler's own bookkeeping the bottleneck — but a short interval
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
past its allowance.

How many re-probes may go out is the one real design question, because the planner gives routine
probing the whole budget: with the default budget the binding hour window runs at about 95 % of
its allowance, so every re-probe beyond that slack is a routine probe that goes later. Three
situations pull in different directions:

- *One tenant breaks* (the common case): its two re-probes must go now. Two calls displace two
  routine probes by a few minutes; nobody notices.
- *A handful break together* (one customer's region, a role change on a few tenants): each of them
  pages on its own, so each must be confirmed within minutes too, not one after another. Ten
  tenants are twenty re-probes; a full hour window still admits them within minutes, because
  calls keep leaving it at the routine pace and confirmations are admitted first.
- *Everything breaks* (an API outage): confirming every tenant would take two calls per routine
  probe and stop routine probing, while one alert (``SophosCentralApiOutage``, judged on the
  tenant probes of the last five minutes) already says what is wrong and holds back the
  per-tenant pages. Here routine probing must keep its pace.

So the cap is a token bucket sized for the second case and refilled for the third: a burst of
``CONFIRM_BURST``, every re-probe of ``CONFIRM_TENANTS`` failing pairs at once (with several
``tenant_probes``, a tenant that fails on all of them is that many pairs), and a sustained rate of
``CONFIRM_SHARE`` of the routine pair rate (``pairs / period``), or, when the plan leaves part of
the budget unused (a period not stretched, ``Plan.spare``), that unused rate if it is more: what
the budget really has free costs routine probing nothing. A cap that followed the routine rate
alone would not do: stretched to hours, half of it is one re-probe every two minutes at the default
budget, and ten tenants would page one after another over half an hour. Reserving room for
re-probes in the plan would not do either: twenty calls an hour kept free for failures that rarely
come would stretch every tenant's period by a fifth. Over any stretch of time ``t``, confirmations
take at most ``CONFIRM_BURST + CONFIRM_SHARE x pairs / period x t`` calls beyond the spare, so in
an outage routine probing keeps at least half its pace once the burst is spent, and the burst
refills within ``CONFIRM_BURST / rate`` (about forty minutes at the default budget). More than
``CONFIRM_TENANTS`` failing at once is "many": their confirmations go on at the sustained rate,
and the credential-wide alerts (``SophosCentralApiOutage`` for 5xx and no answer,
``SophosCentralForbiddenSpike`` with scope credential for 403s) speak for the whole.

Routine probes the budget cannot admit yet are not stacked up as waiting tasks. When
``MAX_QUEUED`` calls of the credential already wait for admission (re-probes ahead of them, the
pages of a long tenant list), the rotation lends its slots instead of starting more: they stay due
(at most one round of them) and start, still in rotation order, as the queue drains, so routine
probing takes the time back once the budget has room again. Without this, an outage stacks up
every displaced routine probe in admission, each holding one of the concurrent probe slots that
every credential shares; after two hours at the default budget the slots are full and re-probes,
which come later, wait behind routine probes for a slot.

The tenants one tick finds due do not start at once either: each waits for its own slot (one slot
length after the one before), so probes leave at the planned pace instead of in bursts of a tick's
worth. Bursts would not break the budget, but they cost CPU: every burst grows the connection
pool, and httpcore scans the whole pool (a ``poll`` per idle connection) for every request.

The jobs run on the agent's monotonic clock (``PeriodicJob``), not on a wall-clock scheduler.
APScheduler 3.x computes every fire time from wall-clock datetimes: a clock stepped back an hour
stalls its interval jobs for that hour, and one stepped forward makes it compute every missed fire
time at once (its maintainers leave clock changes to the application). The agent's jobs are a few
interval jobs that must keep running through NTP steps and resumed VMs, so they sleep monotonic
durations: a wall-clock step changes nothing here. Changing a job's interval keeps its phase
(the next run comes one new interval after the last one started), so a tenant refresh that
re-plans the tick can never push the tick out, however often it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from agent.causes import CONFIRMED_AFTER as CONFIRMATIONS
from agent.clock import Clock
from agent.probes import CredentialProber
from agent.ratebudget import PRIORITY_CONFIRMATION, PRIORITY_TENANT
from agent.tokenbucket import TokenBucket

log = logging.getLogger(__name__)

MIN_TICK = 0.2
MAX_TICK = 5.0
MAX_CONCURRENT_TENANT_PROBES = 64
MAX_QUEUED = 4
"""Calls of a credential waiting for admission beyond which the rotation holds its slots."""
CONFIRM_SHARE = 0.5
"""Sustained, confirmations may use at most this share of the routine per-tenant call rate."""
CONFIRM_TENANTS = 10
"""How many failing (tenant, probe) pairs at once the cap's burst confirms without waiting."""
CONFIRM_BURST = float((CONFIRMATIONS - 1) * CONFIRM_TENANTS)
"""The cap's bucket: every re-probe of ``CONFIRM_TENANTS`` pairs, and no more."""

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

    def due(self, elapsed: float, period: float, limit: int | None = None) -> list[K]:
        """The tenants whose slots fall within the last ``elapsed`` seconds, at most ``limit``
        of them: slots held back stay due (at most one round of them) and come first next time.
        """
        if not self.order or period <= 0:
            return []
        size = len(self.order)
        self.position = min(self.position + size * elapsed / period, float(size))
        count = min(int(self.position + 1e-9), size)  # float sums fall just short
        if limit is not None:
            count = min(count, max(0, limit))
        self.position = max(0.0, self.position - count)
        due = self.order[:count]
        self.order = self.order[count:] + due
        return due


@dataclass
class ConfirmationQueue:
    """Re-probes of failed pairs, due on the agent's clock, and the token bucket that caps them.

    ``after`` is told every finished per-tenant probe; ``take`` hands out the re-probes that are
    due, oldest first, as far as the cap allows (``rate`` re-probes a second, at most
    ``CONFIRM_BURST`` at once: see the module docstring). A pair whose re-probe waits for the cap
    stays due and goes out as soon as it fits.
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
        spare: Callable[[], float] = lambda: 0.0,
        queued: Callable[[], int] = lambda: 0,
    ) -> None:
        """``spare`` is the calls per second the plan leaves unused (``Plan.spare``), ``queued``
        how many calls of the credential wait for admission now."""
        self.prober = prober
        self._clock = clock
        self._period = period
        self._spare = spare
        self._queued = queued
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
        """The sustained cap on re-probes per second: ``CONFIRM_SHARE`` of the routine pair
        rate, or what the plan leaves unused if that is more."""
        routine = CONFIRM_SHARE * len(self.rotation.order) / period if period > 0 else 0.0
        return max(routine, self._spare())

    async def run_tick(self) -> None:
        now = self._clock.monotonic()
        elapsed = 0.0 if self._last_tick is None else now - self._last_tick
        self._last_tick = now
        period = self._period()
        busy = self.rotation.in_flight
        for pair in self.confirmations.take(now, self.confirm_rate(period), busy):
            self._start(pair, 0.0, PRIORITY_CONFIRMATION)
        slot = period / max(1, len(self.rotation.order))
        limit = self._routine_limit(elapsed, period)
        for k, pair in enumerate(self.rotation.due(elapsed, period, limit)):
            if pair not in self.rotation.in_flight:
                self._start(pair, k * slot)

    def _routine_limit(self, elapsed: float, period: float) -> int:
        """How many routine pairs this tick may start: none while ``MAX_QUEUED`` calls already
        wait for admission; else this tick's own slots and a few held back from before."""
        waiting = self._queued()
        if waiting >= MAX_QUEUED or period <= 0:
            return 0
        fresh = math.ceil(len(self.rotation.order) * elapsed / period)
        return fresh + MAX_QUEUED - waiting

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


Job = Callable[[], Awaitable[None]]


class PeriodicJob:
    """``func`` every ``interval`` seconds of the agent's monotonic clock, one run at a time.

    A run that is due while the previous one still runs is skipped, as are runs missed meanwhile:
    the next run is the next one on the job's grid after the overrun (a slow tenant listing is
    not followed by a burst of listings). A crash is logged and the job goes on.
    """

    def __init__(
        self, name: str, func: Job, clock: Clock, interval: float, first_in: float = 0.0
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval of {name} must be > 0, got {interval}")
        self.name = name
        self._func = func
        self._clock = clock
        self._interval = interval
        self._due = clock.monotonic() + first_in
        self._last_start: float | None = None
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.runs = 0

    @property
    def interval(self) -> float:
        return self._interval

    @property
    def due(self) -> float:
        """The monotonic moment of the next run."""
        return self._due

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=self.name)

    def set_interval(self, seconds: float, *, restart: bool = False) -> None:
        """Run every ``seconds`` from now on. The next run keeps the phase (one new interval
        after the last run started, at once if that has passed), or with ``restart`` comes
        ``seconds`` from now."""
        if seconds <= 0:
            raise ValueError(f"interval of {self.name} must be > 0, got {seconds}")
        self._interval = seconds
        now = self._clock.monotonic()
        if restart or self._last_start is None:
            self._due = now + seconds if restart else min(self._due, now + seconds)
        else:
            self._due = max(now, self._last_start + seconds)
        self._changed.set()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        while True:
            await self._until_due()
            start = self._clock.monotonic()
            self._last_start = start
            self._due = start + self._interval
            try:
                await self._func()
            except Exception:
                log.exception("scheduled job failed", extra={"job": self.name})
            self.runs += 1
            now = self._clock.monotonic()
            if self._due < now:  # overran: skip what was missed, keep the grid
                missed = math.ceil((now - self._due) / self._interval)
                self._due += missed * self._interval

    async def _until_due(self) -> None:
        """Sleep until due, waking early when ``set_interval`` moves the next run."""
        while (wait := self._due - self._clock.monotonic()) > 0:
            self._changed.clear()
            sleep = asyncio.ensure_future(self._clock.sleep(wait))
            changed = asyncio.ensure_future(self._changed.wait())
            try:
                await asyncio.wait((sleep, changed), return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleep.cancel()
                changed.cancel()


class ProbeScheduler:
    """The periodic jobs of every ``CredentialSchedule``, on the agent's ``clock``.

    ``speed`` is clock seconds per real second (1 with the real clock; more only with a
    benchmark's fast clock, which sleeps faster on its own): it keeps the tick from spinning
    faster than ``MIN_TICK`` real seconds. ``housekeeping`` adds jobs of the agent's own
    (name, interval in clock seconds, function), such as checking the state file.
    """

    def __init__(
        self,
        schedules: list[CredentialSchedule],
        token_interval: float,
        refresh_interval: float,
        tick: Callable[[CredentialSchedule], float],
        clock: Clock,
        speed: float = 1.0,
        housekeeping: Sequence[tuple[str, float, Job]] = (),
    ) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.schedules = schedules
        self._token_interval = token_interval
        self._refresh_interval = refresh_interval
        self._tick = tick
        self._clock = clock
        self._speed = speed
        self._housekeeping = list(housekeeping)
        self._jobs: dict[str, PeriodicJob] = {}

    def start(self) -> None:
        for schedule in self.schedules:
            name = schedule.name
            self._add(f"token:{name}", schedule.run_token, self._token_interval)
            self._add(f"refresh:{name}", schedule.run_refresh, self._refresh_interval)
            self._add(
                f"tenants:{name}",
                schedule.run_tick,
                self._tick_seconds(schedule),
                first_in=0.5 * self._speed,
            )
        for name, interval, func in self._housekeeping:
            self._add(name, func, interval, first_in=interval)
        for job in self._jobs.values():
            job.start()

    def job(self, job_id: str) -> PeriodicJob | None:
        """``token:<credential>``, ``refresh:<credential>``, ``tenants:<credential>`` or a
        housekeeping job's name."""
        return self._jobs.get(job_id)

    def refresh_interval(self, schedule: CredentialSchedule) -> float:
        """The tenant-refresh interval the credential's job runs at now (clock seconds)."""
        job = self._jobs.get(f"refresh:{schedule.name}")
        return job.interval if job is not None else self._refresh_interval

    def reschedule_refresh(self, schedule: CredentialSchedule, seconds: float) -> bool:
        """Run the credential's tenant refresh every ``seconds`` from now on; False if unchanged.

        The next refresh comes ``seconds`` after this call: it is made right after a refresh,
        so the new interval starts where the last listing ended.
        """
        if seconds <= 0:
            raise ValueError(f"refresh interval must be > 0, got {seconds}")
        job = self._jobs.get(f"refresh:{schedule.name}")
        if job is None or job.interval == seconds:
            return False
        job.set_interval(seconds, restart=True)
        return True

    def retick(self, schedule: CredentialSchedule) -> None:
        """Adjust a credential's tick after its tenant count or period changed, keeping its
        phase: however often this is called, the tick is never pushed out."""
        job = self._jobs.get(f"tenants:{schedule.name}")
        if job is not None:
            seconds = self._tick_seconds(schedule)
            if seconds != job.interval:
                job.set_interval(seconds)

    def set_speed(self, speed: float) -> None:
        """The clock changed speed (a benchmark's fast clock): re-floor every tick."""
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self._speed = speed
        for schedule in self.schedules:
            self.retick(schedule)

    @property
    def ready(self) -> bool:
        return all(s.ready for s in self.schedules)

    async def stop(self, grace: float = 2.0) -> None:
        await asyncio.gather(*(job.stop() for job in self._jobs.values()))
        await asyncio.gather(*(s.drain(grace) for s in self.schedules))

    def _add(self, job_id: str, func: Job, interval: float, first_in: float = 0.0) -> None:
        self._jobs[job_id] = PeriodicJob(job_id, func, self._clock, interval, first_in)

    def _tick_seconds(self, schedule: CredentialSchedule) -> float:
        """The tick in clock seconds, but never shorter than ``MIN_TICK`` real seconds."""
        return max(MIN_TICK * self._speed, self._tick(schedule))


def tick_seconds(period: float, tenants: int) -> float:
    """Short enough that slots stay evenly spread, long enough not to spin: one tick per slot,
    clamped to [MIN_TICK, MAX_TICK]. ``tenants`` counts slots: (tenant, probe) pairs."""
    if tenants <= 0:
        return MAX_TICK
    return min(MAX_TICK, max(MIN_TICK, period / tenants))
