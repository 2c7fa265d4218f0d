"""Confirmation re-probes: a failed tenant probe is checked again after 1x and 2x confirm_interval,
three failures in a row confirm it, a success clears it, and an outage cannot starve routine probes.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass

from agent.clock import FakeClock
from agent.ratebudget import PRIORITY_CONFIRMATION, PRIORITY_TENANT, RateBudget
from agent.scheduler import CONFIRM_BURST, CONFIRM_SHARE, CredentialSchedule


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
