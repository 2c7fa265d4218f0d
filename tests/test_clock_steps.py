"""The wall clock steps (NTP, a resumed VM, a fixed date) and nothing that measures time notices.

Rate windows, 429 pauses and the periodic jobs run on the monotonic clock; the wall clock is only
for what is shown and persisted, anchored at start-up. ``FakeClock.step_wall`` steps the wall
clock alone, as the system does.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path

import pytest

from agent.clock import FakeClock, Timeline
from agent.ratebudget import BUCKETS_PER_WINDOW, DEFAULT_LIMITS, MARGIN_SECONDS, RateBudget
from agent.scheduler import CredentialSchedule, PeriodicJob, ProbeScheduler
from agent.statefile import StateFile
from tests.test_scheduler import FakeState

HOUR, DAY = 3600.0, 86400.0
MINUTE_HOLD = 60 + MARGIN_SECONDS + 60 / BUCKETS_PER_WINDOW
"""The longest a call keeps counting in the minute window (window + margin + a bucket)."""
T_2300 = 1_700_002_800.0
"""2023-11-14 23:00:00 UTC: a clock hour starts."""


def ten_a_minute(clock: FakeClock, store: StateFile | None = None) -> RateBudget:
    return RateBudget({"1m": 100}, 0.1, clock, store, rng=random.Random(7))


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def fill(budget: RateBudget, calls: int = 10) -> None:
    for _ in range(calls):
        await asyncio.wait_for(budget.acquire("msp"), 1)


def test_the_fake_clock_steps_the_wall_alone_and_a_timeline_keeps_its_anchor() -> None:
    clock = FakeClock()
    timeline = Timeline(clock)
    mono, wall = clock.monotonic(), clock.time()
    clock.step_wall(-HOUR)
    assert (clock.monotonic(), clock.time()) == (mono, wall - HOUR)
    assert timeline.now() == wall, "what the agent shows and writes does not jump"
    assert timeline.mono(timeline.wall(mono + 5)) == mono + 5


# -- rate windows ----------------------------------------------------------------------------------


@pytest.mark.parametrize("step", [-HOUR, +DAY])
async def test_a_full_minute_window_empties_one_minute_later_whatever_the_wall_clock_did(
    step: float,
) -> None:
    clock = FakeClock()
    budget = ten_a_minute(clock)
    await fill(budget)
    clock.step_wall(step)
    waiter = asyncio.create_task(budget.acquire("msp"))
    await settle()
    assert budget.exact_calls("msp")["1m"] == 10, "the step neither forgets nor hides calls"
    await clock.advance(60 + MARGIN_SECONDS - 0.01)
    assert not waiter.done(), "a step forward must not let an 11th call into the minute"
    await clock.advance(MINUTE_HOLD - (60 + MARGIN_SECONDS) + 0.02)
    assert waiter.done(), "a step back must not keep the window full for an hour"
    assert budget.exact_calls("msp")["1m"] == 1


async def test_after_a_step_forward_no_trailing_minute_holds_more_than_the_allowance() -> None:
    clock = FakeClock()
    budget = ten_a_minute(clock)
    admitted: list[float] = []

    async def caller() -> None:
        while True:
            await budget.acquire("msp")
            admitted.append(clock.monotonic())

    task = asyncio.create_task(caller())
    await clock.advance(30)
    clock.step_wall(+DAY)
    for _ in range(300):
        await clock.advance(1)
    task.cancel()
    ordered = sorted(admitted)
    busiest = max(sum(1 for t in ordered if s <= t < s + 60) for s in ordered)
    assert busiest == 10, "the allowance is used and never exceeded"


# -- 429 pauses ------------------------------------------------------------------------------------


@pytest.mark.parametrize("step", [-HOUR, +DAY])
async def test_a_61_s_pause_lasts_61_s_of_real_time(step: float) -> None:
    clock = FakeClock()
    budget = ten_a_minute(clock)
    length = budget.pause("msp", None)
    shown = budget.paused_until("msp")
    assert 61.0 <= length <= 61.0 * 1.1
    clock.step_wall(step)
    assert budget.paused_until("msp") == shown, "the end shown does not jump with the clock"
    assert budget.pause_remaining("msp") == length
    waiter = asyncio.create_task(budget.acquire("msp"))
    await settle()
    await clock.advance(length - 0.01)
    assert not waiter.done()
    await clock.advance(0.02)
    assert waiter.done()


async def test_the_hour_step_of_the_ladder_reads_the_hour_on_the_start_up_timeline() -> None:
    clock = FakeClock(start=T_2300 + 600)  # 23:10
    budget = RateBudget(DEFAULT_LIMITS, 0.1, clock, rng=random.Random(7))
    first = budget.pause("msp", None, sent_at=clock.monotonic())
    await clock.advance(first)
    clock.step_wall(+1800)  # the wall clock now says 23:41
    budget.pause("msp", None, sent_at=clock.monotonic())
    # the next clock hour as the agent counts it (00:00 on its start-up timeline), not 23:41 + 19
    assert T_2300 + HOUR <= budget.paused_until("msp") <= T_2300 + HOUR + 60


# -- persisted across a step between two runs ----------------------------------------------


async def test_calls_persisted_before_the_clock_was_stepped_back_count_from_now_not_from_the_future(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    path = tmp_path / "state.db"
    with StateFile(path, clock) as store:
        await fill(ten_a_minute(clock, store))
    clock.step_wall(-HOUR)  # between the two runs
    with StateFile(path, clock) as store:
        again = ten_a_minute(clock, store)
        assert again.calls("msp")["1m"] == 10, "the restart still knows the minute is full"
        waiter = asyncio.create_task(again.acquire("msp"))
        await settle()
        await clock.advance(MINUTE_HOLD + 1.0)  # + the file's rounding to the second
        assert waiter.done(), "they leave a minute from now, not an hour and a minute"


async def test_a_pause_persisted_before_the_clock_was_stepped_back_keeps_its_length(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    path = tmp_path / "state.db"
    with StateFile(path, clock) as store:
        length = ten_a_minute(clock, store).pause("msp", None)
    clock.step_wall(-HOUR)
    with StateFile(path, clock) as store:
        again = ten_a_minute(clock, store)
        assert again.pause_remaining("msp") == pytest.approx(length)
        info = again.pause_info("msp")
        assert info is not None and info.until == pytest.approx(clock.time() + length)


# -- the periodic jobs -----------------------------------------------------------------------------


class FakeProber:
    """Counts what the jobs run; every call answers at once."""

    name = "cred"
    probe_names = ("tenant",)

    def __init__(self, tenants: list[str]) -> None:
        self.state = FakeState(tenants)
        self.runs: Counter[str] = Counter()

    async def probe_token(self) -> None:
        self.runs["token"] += 1

    async def refresh_tenants(self) -> None:
        self.runs["refresh"] += 1

    async def probe_tenant(self, tenant_id: str, probe: str = "tenant", priority: int = 10) -> None:
        self.runs["tenant"] += 1


def schedule_of(prober: FakeProber, clock: FakeClock, period: float) -> CredentialSchedule:
    return CredentialSchedule(
        prober,  # type: ignore[arg-type]
        clock,
        period=lambda: period,
        on_refresh=lambda _p: None,
        semaphore=asyncio.Semaphore(8),
    )


async def run_for(clock: FakeClock, seconds: int) -> None:
    for _ in range(seconds):
        await clock.advance(1.0)
        await settle()


async def test_token_refresh_and_tick_jobs_keep_their_pace_through_wall_clock_steps() -> None:
    clock = FakeClock()
    prober = FakeProber(["a", "b", "c", "d"])
    schedule = schedule_of(prober, clock, period=8.0)  # a tenant probe every 2 s
    scheduler = ProbeScheduler(
        [schedule], token_interval=60.0, refresh_interval=30.0, tick=lambda s: 1.0, clock=clock
    )
    scheduler.start()
    try:
        await run_for(clock, 45)
        clock.step_wall(-HOUR)
        await run_for(clock, 45)
        clock.step_wall(+DAY)
        await run_for(clock, 29)
    finally:
        await scheduler.stop(grace=0.1)
    # 119 s of real time: token at 0 and 60, refresh at 0, 30, 60 and 90, probes every 2 s
    assert prober.runs["token"] == 2
    assert prober.runs["refresh"] == 4
    assert 57 <= prober.runs["tenant"] <= 60


async def test_a_refresh_every_2_s_that_replans_the_tick_never_pushes_it_out() -> None:
    clock = FakeClock()
    prober = FakeProber(["a", "b", "c"])
    ticks = iter([5.0, 4.0] * 100)  # every refresh changes the tick a little
    holder: list[ProbeScheduler] = []

    def replan(_prober: object) -> None:
        holder[0].retick(schedule)

    schedule = CredentialSchedule(
        prober,  # type: ignore[arg-type]
        clock,
        period=lambda: 15.0,
        on_refresh=replan,
        semaphore=asyncio.Semaphore(8),
    )
    scheduler = ProbeScheduler(
        [schedule],
        token_interval=300.0,
        refresh_interval=2.0,
        tick=lambda s: next(ticks),
        clock=clock,
    )
    holder.append(scheduler)
    scheduler.start()
    try:
        await run_for(clock, 45)
    finally:
        await scheduler.stop(grace=0.1)
    assert prober.runs["refresh"] >= 22
    assert prober.runs["tenant"] >= 7, "three tenants every 15 s: about nine in 45 s"


async def test_a_job_that_overruns_skips_the_runs_it_missed_instead_of_bursting() -> None:
    clock = FakeClock()
    runs: list[float] = []

    async def slow() -> None:
        runs.append(clock.monotonic())
        await clock.sleep(25.0)

    job = PeriodicJob("slow", slow, clock, interval=10.0)
    job.start()
    await settle()
    await run_for(clock, 61)
    await job.stop()
    assert [t - 1000.0 for t in runs] == [0.0, 30.0, 60.0]
