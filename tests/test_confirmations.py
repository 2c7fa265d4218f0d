"""Confirmation re-probes: a failed tenant probe is checked again after 1x and 2x confirm_interval,
three failures in a row confirm it, a success clears it, and an outage cannot starve routine probes.

The last tests run the whole agent (planner, rate budget, client, scheduler) on a fake clock with
the default budget (the seed's limits, ``budget_share: 0.1``, ``probe_interval: 60s``) against an
in-process partner of 250 or 10,000 tenants: ten tenants breaking at once, an outage of every
call, and a long run in which every tenant keeps its planned slot.
"""

from __future__ import annotations

import asyncio
import random
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from agent.clock import FakeClock
from agent.config import DEFAULT_RATE_LIMITS, Settings
from agent.ratebudget import (
    PRIORITY_CONFIRMATION,
    PRIORITY_TENANT,
    WINDOW_SECONDS,
    RateBudget,
    allowance_for,
)
from agent.runtime import Agent
from agent.scheduler import (
    CONFIRM_BURST,
    CONFIRM_SHARE,
    MAX_QUEUED,
    CredentialSchedule,
    ProbeScheduler,
)
from tests.test_listing import PARTNER, tenant_item


@dataclass(frozen=True)
class Result:
    consecutive_failures: int


class State:
    def __init__(self, tenants: list[str]) -> None:
        self.probed = {t: object() for t in tenants}
        self.first_cycle_done = False


class Prober:
    """Answers at once (or after the rate budget admits the call); ``failing`` pairs fail."""

    name = "cred"

    def __init__(
        self,
        tenants: list[str],
        clock: FakeClock,
        probes: tuple[str, ...] = ("tenant",),
        budget: RateBudget | None = None,
    ) -> None:
        self.state = State(tenants)
        self.probe_names = probes
        self.clock = clock
        self.budget = budget
        self.failing: set[tuple[str, str]] = set()
        self.streak: Counter[tuple[str, str]] = Counter()
        self.calls: list[tuple[str, str, int, float]] = []

    async def probe_token(self) -> None:
        return None

    async def refresh_tenants(self) -> None:
        return None

    async def probe_tenant(self, tenant_id: str, probe: str, priority: int) -> Result:
        if self.budget is not None:
            await self.budget.acquire(self.name, priority)
        self.calls.append((tenant_id, probe, priority, self.clock.monotonic()))
        pair = (tenant_id, probe)
        self.streak[pair] = self.streak[pair] + 1 if pair in self.failing else 0
        return Result(self.streak[pair])

    def times(self, tenant_id: str, probe: str = "tenant") -> list[tuple[float, int]]:
        """When the pair was probed (seconds since the start) and at which priority."""
        return [
            (round(at - 1000.0), prio)
            for t, p, prio, at in self.calls
            if (t, p) == (tenant_id, probe)
        ]


async def started(prober: Prober, clock: FakeClock, period: float) -> CredentialSchedule:
    schedule = CredentialSchedule(
        prober,  # type: ignore[arg-type]
        clock,
        period=lambda: period,
        on_refresh=lambda _p: None,
        semaphore=asyncio.Semaphore(64),
        confirm_interval=60.0,
    )
    await schedule.run_token()
    await schedule.run_refresh()
    await schedule.run_tick()
    return schedule


async def run(schedule: CredentialSchedule, clock: FakeClock, seconds: int) -> None:
    """Tick once a second of clock time, letting started probes finish in between."""
    for _ in range(seconds):
        await clock.advance(1.0)
        await schedule.run_tick()
        for _ in range(5):
            await asyncio.sleep(0)


R, C = PRIORITY_TENANT, PRIORITY_CONFIRMATION


async def test_a_failure_is_reprobed_after_1m_then_2m_and_confirmed_by_the_third() -> None:
    clock = FakeClock()
    prober = Prober(["a", "b", "c", "d"], clock)  # period 400 s: one slot every 100 s
    prober.failing.add(("a", "tenant"))
    schedule = await started(prober, clock, period=400.0)

    await run(schedule, clock, 1000)

    # routine at 100, re-probes at 160 and 280 (1 m, then 2 m), confirmed: routine only after
    assert prober.times("a") == [(100, R), (160, C), (280, C), (500, R), (900, R)]
    assert prober.times("b") == [(200, R), (600, R), (1000, R)]  # healthy tenants: routine only
    assert prober.streak[("a", "tenant")] == 5
    assert schedule.confirmations.due == {}


async def test_a_success_clears_the_failure_and_stops_the_reprobes() -> None:
    clock = FakeClock()
    prober = Prober(["a", "b", "c", "d"], clock)
    prober.failing.add(("a", "tenant"))
    schedule = await started(prober, clock, period=400.0)

    await run(schedule, clock, 130)
    prober.failing.clear()  # the tenant recovers before the first re-probe
    await run(schedule, clock, 870)

    assert prober.times("a") == [(100, R), (160, C), (500, R), (900, R)]
    assert prober.streak[("a", "tenant")] == 0


async def test_a_failure_that_returns_later_is_confirmed_again() -> None:
    clock = FakeClock()
    prober = Prober(["a", "b", "c", "d"], clock)
    schedule = await started(prober, clock, period=400.0)

    await run(schedule, clock, 450)
    prober.failing.add(("a", "tenant"))  # healthy at 100, broken from 450 on
    await run(schedule, clock, 400)

    assert prober.times("a") == [(100, R), (500, R), (560, C), (680, C)]


async def test_only_the_failing_family_of_a_tenant_is_reprobed() -> None:
    clock = FakeClock()
    prober = Prober(["a", "b"], clock, probes=("tenant", "common_alerts"))
    prober.failing.add(("a", "common_alerts"))
    schedule = await started(prober, clock, period=400.0)  # 4 pairs: one slot every 100 s

    await run(schedule, clock, 450)

    assert prober.times("a", "tenant") == [(100, R)]
    assert prober.times("a", "common_alerts") == [(200, R), (260, C), (380, C)]
    assert [p for _, p, prio, _ in prober.calls if prio == C] == ["common_alerts"] * 2


async def test_departed_tenants_are_not_reprobed() -> None:
    clock = FakeClock()
    prober = Prober(["a", "b", "c", "d"], clock)
    prober.failing.add(("a", "tenant"))
    schedule = await started(prober, clock, period=400.0)

    await run(schedule, clock, 120)
    del prober.state.probed["a"]
    await schedule.run_refresh()
    await run(schedule, clock, 300)

    assert prober.times("a") == [(100, R)]


async def test_an_outage_keeps_routine_probes_going_and_confirmations_under_the_cap() -> None:
    clock = FakeClock()
    # 120 pairs every 120 s: 1 routine call a second. The minute window admits ~68 calls a
    # minute (70 minus the admission margin), so routine alone nearly fills the budget.
    budget = RateBudget({"1s": 100, "1m": 70, "1h": 100_000, "1d": 1_000_000}, 1.0, clock)
    tenants = [f"t{i:03d}" for i in range(120)]
    prober = Prober(tenants, clock, budget=budget)
    prober.failing.update((t, "tenant") for t in tenants)  # everything fails at once
    schedule = await started(prober, clock, period=120.0)

    seconds = 600
    await run(schedule, clock, seconds)

    start = 1000.0
    confirmations = [at - start for _, _, prio, at in prober.calls if prio == C]
    routine = [at - start for _, _, prio, at in prober.calls if prio == R]
    cap = CONFIRM_SHARE * len(tenants) / 120.0  # re-probes per second
    for k, at in enumerate(sorted(confirmations)):
        assert k + 1 <= CONFIRM_BURST + cap * at + 1e-6, (k, at)
    for end in (120, 240, seconds):  # every stretch keeps at least half the planned routine
        assert sum(1 for at in routine if at <= end) >= 0.5 * end, end
    # confirmations did use their share once the first re-probes came due (1 m after the start)
    assert sum(1 for at in confirmations if at <= 240) >= 0.8 * cap * (240 - 60)


async def test_what_the_plan_leaves_unused_lifts_the_cap_above_half_the_routine_rate() -> None:
    clock = FakeClock()
    tenants = [f"t{i:03d}" for i in range(40)]
    prober = Prober(tenants, clock)
    prober.failing.update((t, "tenant") for t in tenants)
    schedule = CredentialSchedule(
        prober,  # type: ignore[arg-type]
        clock,
        period=lambda: 400.0,  # 0.1 routine probes a second: half of it is 0.05
        on_refresh=lambda _p: None,
        semaphore=asyncio.Semaphore(64),
        confirm_interval=60.0,
        spare=lambda: 0.5,  # the budget has room for far more than the routine rate
    )
    await schedule.run_token()
    await schedule.run_refresh()
    await schedule.run_tick()

    await run(schedule, clock, 600)

    # 80 re-probes in 580 s: half the routine rate and the burst would allow 49. With the room
    # the plan leaves, each went out when due: 60 s after the first failure, then 120 s later.
    for tenant in tenants:
        first = prober.times(tenant)[0][0]
        reprobes = [t for t in prober.times(tenant) if t[1] == C]
        assert reprobes == [(first + 60, C), (first + 180, C)], tenant
    assert schedule.confirm_rate(400.0) == 0.5


# -- the whole agent at the default budget -------------------------------------------------------

MINUTE, HOUR = 60.0, 3600.0
ALLOWANCE = allowance_for(DEFAULT_RATE_LIMITS, 0.1)  # 1 a second, 10 a minute, 100 an hour, ...


class Central:
    """A partner with ``count`` tenants that answers at once on the fake clock. ``broken``
    tenants answer 500; ``outage`` makes every API call answer 503. Every call is noted when it
    arrives, as Sophos's rate limiter counts it."""

    def __init__(self, count: int, clock: FakeClock) -> None:
        self.ids = [f"{i:08x}-1111-4222-8333-444455556666" for i in range(count)]
        random.Random(1).shuffle(self.ids)
        self.clock = clock
        self.broken: set[str] = set()
        self.outage = False
        self.arrivals: list[float] = []
        self.calls: dict[str, list[tuple[float, int]]] = defaultdict(list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        now = self.clock.monotonic()
        self.arrivals.append(now)
        path = request.url.path
        if path.endswith("/oauth2/token"):
            body = {"access_token": "tok", "token_type": "bearer", "expires_in": 3600}
            return httpx.Response(200, json=body)
        tenant = request.headers.get("X-Tenant-ID", "")
        status = 503 if self.outage else 500 if tenant in self.broken else 200
        if tenant:
            self.calls[tenant].append((now, status))
        if status != 200:
            return httpx.Response(status, json={"error": "internalServerError", "message": "x"})
        if path == "/whoami/v1":
            hosts = {"global": "https://api.central.sophos.com"}
            return httpx.Response(200, json={"id": PARTNER, "idType": "partner", "apiHosts": hosts})
        if path == "/partner/v1/tenants":
            page = int(request.url.params["page"])
            items = [tenant_item(t) for t in self.ids[(page - 1) * 100 : page * 100]]
            pages = {"current": page, "total": max(1, -(-len(self.ids) // 100))}
            return httpx.Response(200, json={"items": items, "pages": pages})
        return httpx.Response(200, json={"items": [], "pages": {}})

    def first_probe(self) -> float | None:
        return min((c[0][0] for c in self.calls.values()), default=None)

    def tenant_calls(self, since: float, until: float) -> int:
        return sum(1 for c in self.calls.values() for at, _ in c if since <= at < until)


async def default_budget_agent(count: int) -> tuple[Agent, Central, FakeClock]:
    """The agent with every default setting, probing ``count`` tenants (its first probe done)."""
    clock = FakeClock()
    central = Central(count, clock)
    settings = Settings(
        state_file=Path(":memory:"),
        credentials=[{"name": "msp", "client_id": "client-msp-0001", "client_secret": "s3cret-1"}],
    )
    http = httpx.AsyncClient(transport=httpx.MockTransport(central))
    agent = Agent(settings, clock=clock, http=http, process_metrics=False)
    agent.start()
    while central.first_probe() is None:  # 10,000 tenants: the list alone takes an hour
        await clock.advance(5.0)
    return agent, central, clock


async def run_for(clock: FakeClock, seconds: float) -> None:
    end = clock.monotonic() + seconds
    while clock.monotonic() < end:
        await clock.advance(5.0)


def the_schedule(agent: Agent) -> CredentialSchedule:
    assert isinstance(agent.scheduler, ProbeScheduler)
    (schedule,) = agent.scheduler.schedules
    return schedule


def busiest(times: list[float], seconds: float) -> int:
    """Most calls in any window of ``seconds`` (half-open, as the server counts)."""
    ordered, best, start = sorted(times), 0, 0
    for end, now in enumerate(ordered):
        while now - ordered[start] >= seconds:
            start += 1
        best = max(best, end - start + 1)
    return best


def assert_within_allowance(central: Central) -> None:
    for window, allowance in ALLOWANCE.items():
        calls = busiest(central.arrivals, WINDOW_SECONDS[window])
        assert calls <= allowance, (window, calls, allowance)


CONFIRMED_WITHIN = 8 * MINUTE
"""Three failures in a row this soon after the first: SophosCentralPersistent5xx and
SophosCentralForbiddenSpike fire 5 minutes later (their ``for:``), well within 20 minutes. With a
cap that followed the stretched routine rate, the tenth of ten tenants took 26 minutes."""


@pytest.mark.parametrize("count", [250, 10_000])
async def test_ten_tenants_breaking_at_once_are_each_confirmed_within_minutes(count: int) -> None:
    agent, central, clock = await default_budget_agent(count)
    try:
        await run_for(clock, 3 * HOUR)  # routine probing has filled the hour window
        schedule = the_schedule(agent)
        period, pairs = agent.period("msp"), len(schedule.rotation.order)
        broken = [tenant for tenant, _ in schedule.rotation.order[:10]]  # the ten due next
        central.broken.update(broken)
        at, confirmations = clock.monotonic(), schedule.confirmations.started

        await run_for(clock, 4 * HOUR)

        for tenant in broken:
            failed = [when for when, status in central.calls[tenant] if at <= when < at + HOUR]
            assert len(failed) == 3, "confirmed, then back on its routine slot, hours away"
            assert failed[2] - failed[0] <= CONFIRMED_WITHIN, (tenant, failed)
        reprobes = schedule.confirmations.started - confirmations
        assert reprobes == 20
        planned = pairs / period * HOUR
        routine = central.tenant_calls(at, at + HOUR) - reprobes
        assert routine >= 0.6 * planned, "routine probing went on meanwhile"
        routine = central.tenant_calls(at, clock.monotonic()) - reprobes
        assert routine >= 0.95 * 4 * planned, "and took back most of the slots it lent"
        assert_within_allowance(central)
    finally:
        await agent.stop(grace=0.1)


@pytest.mark.parametrize("count", [250, 10_000])
async def test_an_outage_keeps_routine_probing_at_half_its_pace_without_piling_up(
    count: int,
) -> None:
    agent, central, clock = await default_budget_agent(count)
    try:
        await run_for(clock, 3 * HOUR)
        schedule = the_schedule(agent)
        routine_rate = len(schedule.rotation.order) / agent.period("msp")
        central.outage = True
        at, confirmations = clock.monotonic(), schedule.confirmations.started
        waiting = []
        for _ in range(48):  # four hours
            await run_for(clock, 5 * MINUTE)
            waiting.append(len(schedule.rotation.in_flight))
        # SophosCentralApiOutage judges the tenant probes of the last 5 minutes and needs two
        ends = [at + 5 * MINUTE + 5 * k for k in range(int((clock.monotonic() - at) / 5) - 60)]
        fewest = min(central.tenant_calls(end - 5 * MINUTE, end) for end in ends)
        assert fewest >= 2, "in every 5 minutes of the outage, tenant probes ran"

        elapsed = clock.monotonic() - at
        reprobes = schedule.confirmations.started - confirmations
        routine = central.tenant_calls(at, clock.monotonic()) - reprobes
        assert reprobes <= CONFIRM_BURST + CONFIRM_SHARE * routine_rate * elapsed + 1
        assert routine >= CONFIRM_SHARE * routine_rate * elapsed - CONFIRM_BURST
        # Routine probes the budget cannot admit yet are held as slots, not stacked up as waiting
        # tasks that take the concurrency every credential shares: at most the queue limit and
        # what the cap lets out at once wait, however long the outage (94 after 4 hours before).
        assert max(waiting) <= MAX_QUEUED + CONFIRM_BURST, waiting
        assert_within_allowance(central)
    finally:
        await agent.stop(grace=0.1)


async def test_every_tenant_keeps_its_planned_slot_over_a_long_run() -> None:
    """A fault at a random moment waits half a period for its first failed probe, on average:
    the slots do not drift late, neither with confirmations taking their share nor with list
    refreshes every 15 minutes, and the rotation takes back the slots it lent."""
    agent, central, clock = await default_budget_agent(250)
    try:
        period = agent.period("msp")
        first = central.first_probe()
        assert first is not None
        rng = random.Random(4)
        broken = rng.sample(central.ids, 10)
        for tenant in broken:  # ten faults at random moments of the first period
            await run_for(clock, rng.uniform(0.05, 0.09) * period)
            central.broken.add(tenant)
        await run_for(clock, first + 4 * period - clock.monotonic())

        healthy = [t for t in central.ids if t not in broken]
        gaps = [
            b[0] - a[0]
            for t in healthy
            for a, b in zip(central.calls[t], central.calls[t][1:], strict=False)
        ]
        assert max(gaps) <= 1.1 * period
        assert statistics.mean(gaps) == pytest.approx(period, rel=0.01)
        waits = []
        for _ in range(4000):
            tenant, moment = rng.choice(healthy), rng.uniform(first, first + 3 * period)
            waits.append(next(at for at, _ in central.calls[tenant] if at >= moment) - moment)
        assert statistics.median(waits) / period == pytest.approx(0.5, abs=0.03)
        assert max(waits) <= 1.1 * period
    finally:
        await agent.stop(grace=0.1)
