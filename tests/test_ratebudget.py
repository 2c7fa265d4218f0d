"""Window accounting, admission control and 429 pauses, all on a fake clock."""

from __future__ import annotations

import asyncio
import bisect
import email.utils
import random
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.clock import FakeClock
from agent.ratebudget import (
    BUCKETS_PER_WINDOW,
    DEFAULT_LIMITS,
    MARGIN_SECONDS,
    PRIORITY_CREDENTIAL,
    PRIORITY_TENANT,
    WINDOW_SECONDS,
    RateBudget,
    allowance_for,
    parse_retry_after,
    tenant_key,
)
from agent.statefile import StateFile

T_2300 = 1_700_002_800.0
"""2023-11-14 23:00:00 UTC: a clock hour starts."""


def make_budget(
    clock: FakeClock,
    share: float = 1.0,
    limits: dict[str, int] | None = None,
    seed: int = 7,
) -> RateBudget:
    return RateBudget(limits or DEFAULT_LIMITS, share, clock, rng=random.Random(seed))


async def run_until(clock: FakeClock, done: Callable[[], bool], step: float, limit: float) -> None:
    """Advance the fake clock in steps until ``done()``; fail rather than spin forever."""
    spent = 0.0
    while not done():
        assert spent <= limit, f"not done after {limit}s of fake time"
        await clock.advance(step)
        spent += step


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


def max_in_any_window(times: list[float], length: float) -> int:
    """The most events in any half-open interval [t, t + length) (its start can be an event)."""
    times = sorted(times)
    return max((bisect.bisect_left(times, t + length) - i for i, t in enumerate(times)), default=0)


# -- allowance and validation ------------------------------------------------------------------


def test_allowance_is_floor_of_share_times_limit_but_at_least_one() -> None:
    assert allowance_for(DEFAULT_LIMITS, 0.1) == {"1s": 1, "1m": 10, "1h": 100, "1d": 5000}
    assert allowance_for({"1m": 100}, 0.29) == {"1m": 29}  # 0.29 * 100 is 28.999... in floats
    assert allowance_for({"1s": 10}, 0.01) == {"1s": 1}


@pytest.mark.parametrize(
    ("limits", "share", "message"),
    [
        (DEFAULT_LIMITS, 0.0, "budget_share"),
        (DEFAULT_LIMITS, 1.5, "budget_share"),
        ({"5m": 10}, 0.5, "unknown rate window '5m'"),
        ({"1m": 0}, 0.5, "window 1m must be >= 1"),
    ],
)
def test_bad_limits_or_share_are_refused(
    limits: dict[str, int], share: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        RateBudget(limits, share, FakeClock())


def test_read_accessors_report_limits_allowance_and_zero_for_unknown_credentials() -> None:
    budget = make_budget(FakeClock(), share=0.1)
    assert budget.limits == DEFAULT_LIMITS
    assert budget.allowance == {"1s": 1, "1m": 10, "1h": 100, "1d": 5000}
    assert budget.calls("nobody") == {"1s": 0, "1m": 0, "1h": 0, "1d": 0}
    assert budget.credentials() == []
    assert budget.paused_until("nobody") == 0.0
    assert budget.pauses_total("nobody") == 0


# -- window edges ------------------------------------------------------------------------------


@pytest.mark.parametrize("start_fraction", [0.0, 0.123, 0.5999, 0.6])
async def test_a_call_counts_in_the_minute_until_window_plus_margin_and_no_longer(
    start_fraction: float,
) -> None:
    clock = FakeClock(start=1_700_000_000.0 + start_fraction)
    budget = make_budget(clock)
    await budget.acquire("msp")

    await clock.advance(59.999)
    assert budget.calls("msp")["1m"] == 1
    await clock.advance(60.999 - 59.999)
    assert budget.calls("msp")["1m"] == 1, "must count for the window plus the 1 s margin"
    await clock.advance(0.001 + 60 / BUCKETS_PER_WINDOW)
    assert budget.calls("msp")["1m"] == 0, "at most one bucket width (1 %) longer"
    assert budget.calls("msp")["1h"] == 1


@pytest.mark.parametrize("window", list(WINDOW_SECONDS))
async def test_every_window_holds_a_call_between_its_documented_bounds(window: str) -> None:
    clock = FakeClock(start=1_700_000_000.37)
    budget = make_budget(clock)
    at_least, at_most = budget.hold_seconds(window)
    assert at_least == WINDOW_SECONDS[window] + 1.0 == WINDOW_SECONDS[window] + MARGIN_SECONDS
    await budget.acquire("msp")
    await clock.advance(at_least - 1e-3)
    assert budget.calls("msp")[window] == 1
    await clock.advance(at_most - at_least + 2e-3)
    assert budget.calls("msp")[window] == 0


async def test_memory_stays_bounded_over_a_simulated_day_of_calls() -> None:
    clock = FakeClock()
    limits = {"1s": 10, "1m": 100, "1h": 5000, "1d": 200_000}
    budget = make_budget(clock, limits=limits)
    most = 0
    for _ in range(86_400):  # one call per second for a day
        await budget.acquire("msp")
        await clock.advance(1.0)
        most = max(most, budget.stored_buckets("msp"))
    # 86,400 calls, yet per window at most (window + margin) / width + 1 buckets:
    # 201 + 102 + 102 + 102 (one call a second fills about 2 + 62 + 101 + 101 of them)
    assert 200 < most <= 510
    day = budget.calls("msp")["1d"]
    assert 86_400 <= day <= 86_400 + MARGIN_SECONDS + 86_400 / BUCKETS_PER_WINDOW


# -- admission ---------------------------------------------------------------------------------


async def test_burst_of_100_acquirers_never_exceeds_any_window_as_the_server_counts() -> None:
    clock = FakeClock()
    budget = make_budget(clock, share=0.5)  # allowance 5/s, 50/min, 500/h, 25000/d
    admitted: list[float] = []

    async def caller() -> None:
        await budget.acquire("msp")
        admitted.append(clock.time())

    tasks = [asyncio.create_task(caller()) for _ in range(100)]
    await settle()
    await run_until(clock, lambda: len(admitted) == 100, step=0.5, limit=600)
    await asyncio.gather(*tasks)

    # the server counts at arrival; delays that differ by up to the 1 s margin must not matter
    rng = random.Random(3)
    arrivals = [t + rng.uniform(0.05, 1.049) for t in admitted]
    for window, length in WINDOW_SECONDS.items():
        allowed = budget.allowance[window]
        assert max_in_any_window(admitted, length + MARGIN_SECONDS) <= allowed, window
        assert max_in_any_window(arrivals, length) <= allowed, f"server view, {window}"
    assert max_in_any_window(admitted, 60 + MARGIN_SECONDS) == 50, "the budget is used, too"
    assert admitted[-1] - admitted[0] < 2 * (60 + MARGIN_SECONDS) + 2


async def test_waiters_are_served_by_priority_then_first_come_first_served() -> None:
    clock = FakeClock()
    budget = make_budget(clock, share=0.1)  # one call per 1 s window
    await budget.acquire("msp")
    order: list[str] = []

    async def caller(name: str, priority: int) -> None:
        await budget.acquire("msp", priority=priority)
        order.append(name)

    names = [("tenant-a", PRIORITY_TENANT), ("tenant-b", PRIORITY_TENANT)]
    names += [("token", PRIORITY_CREDENTIAL), ("tenant-c", PRIORITY_TENANT)]
    names += [("whoami", PRIORITY_CREDENTIAL)]
    tasks = []
    for name, priority in names:
        tasks.append(asyncio.create_task(caller(name, priority)))
        await settle()
    await run_until(clock, lambda: len(order) == 5, step=1.0, limit=120)
    await asyncio.gather(*tasks)
    assert order == ["token", "whoami", "tenant-a", "tenant-b", "tenant-c"]


class CountingClock(FakeClock):
    def __init__(self) -> None:
        super().__init__()
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await super().sleep(seconds)


async def test_a_waiter_sleeps_once_until_the_oldest_call_leaves_instead_of_polling() -> None:
    clock = CountingClock()
    budget = make_budget(clock, share=0.1, limits={"1m": 100})  # ten per minute
    for _ in range(10):
        await budget.acquire("msp")
    waiter = asyncio.create_task(budget.acquire("msp"))
    await settle()
    await clock.advance(60 + MARGIN_SECONDS - 0.01)
    assert not waiter.done()
    await clock.advance(60 / BUCKETS_PER_WINDOW + 0.02)
    assert waiter.done()
    assert len(clock.sleeps) == 1
    assert clock.sleeps[0] == pytest.approx(60 + MARGIN_SECONDS, abs=60 / BUCKETS_PER_WINDOW)


async def test_a_newcomer_does_not_overtake_queued_waiters_when_room_appears() -> None:
    clock = FakeClock()
    budget = make_budget(clock)
    budget.pause("msp", 10.0)
    order: list[str] = []

    async def newcomer() -> None:
        await clock.sleep(10.0)  # wakes the instant the pause ends, before the queue is served
        await budget.acquire("msp")
        order.append("newcomer")

    async def queued() -> None:
        await budget.acquire("msp")
        order.append("queued")

    tasks = [asyncio.create_task(newcomer())]
    await settle()
    tasks.append(asyncio.create_task(queued()))
    await settle()
    await clock.advance(11)
    await asyncio.gather(*tasks)
    assert order == ["queued", "newcomer"]


async def test_a_cancelled_waiter_gives_up_its_place_without_spending_a_call() -> None:
    clock = FakeClock()
    budget = make_budget(clock, share=0.1, limits={"1m": 100})
    for _ in range(10):
        await budget.acquire("msp")
    gone = asyncio.create_task(budget.acquire("msp"))
    stays = asyncio.create_task(budget.acquire("msp"))
    await settle()
    gone.cancel()
    await run_until(clock, stays.done, step=1.0, limit=120)
    assert gone.cancelled()
    assert budget.calls("msp")["1m"] == 1, "only the waiter that stayed was recorded"


async def test_queued_counts_the_calls_waiting_for_admission_of_one_key() -> None:
    clock = FakeClock()
    budget = make_budget(clock, share=0.1, limits={"1m": 100})
    for _ in range(10):
        await budget.acquire("msp")
    assert budget.queued("msp") == 0
    waiting = [asyncio.create_task(budget.acquire("msp")) for _ in range(3)]
    await settle()
    assert (budget.queued("msp"), budget.queued("other")) == (3, 0)
    waiting[0].cancel()
    await settle()
    assert budget.queued("msp") == 2, "a cancelled waiter no longer waits"
    await run_until(clock, lambda: all(t.done() for t in waiting), step=1.0, limit=120)
    assert budget.queued("msp") == 0


# -- 429 pauses --------------------------------------------------------------------------------


async def test_pause_honours_retry_after_seconds_and_acquire_waits_it_out() -> None:
    clock = FakeClock()
    budget = make_budget(clock)
    assert budget.pause("msp", 30.0) == 30.0
    assert budget.paused_until("msp") == clock.time() + 30.0
    waiter = asyncio.create_task(budget.acquire("msp", priority=PRIORITY_CREDENTIAL))
    await settle()
    await clock.advance(29.9)
    assert not waiter.done()
    await clock.advance(0.2)
    assert waiter.done()
    assert budget.pauses_total("msp") == 1


async def test_pause_honours_retry_after_given_as_an_http_date() -> None:
    clock = FakeClock()
    budget = make_budget(clock)
    header = email.utils.format_datetime(
        datetime.fromtimestamp(clock.time() + 120, UTC), usegmt=True
    )
    seconds = parse_retry_after(header, clock.time())
    assert seconds == pytest.approx(120.0)
    assert budget.pause("msp", seconds) == pytest.approx(120.0)
    waiter = asyncio.create_task(budget.acquire("msp"))
    await settle()
    await clock.advance(119.5)
    assert not waiter.done()
    await clock.advance(1.0)
    assert waiter.done()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("30", 30.0),
        (" 1.5 ", 1.5),
        ("0", 0.0),
        ("Tue, 14 Nov 2023 22:15:00 GMT", 100.0),  # FakeClock starts at 22:13:20 UTC
        ("Tue, 14 Nov 2023 22:15:00", 100.0),  # no zone: taken as UTC
        ("Tue, 14 Nov 2023 22:13:00 GMT", None),  # already past
        ("-5", None),
        ("soon", None),
        ("nan", None),
        ("inf", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_values_parse_to_seconds_or_none(
    value: str | None, expected: float | None
) -> None:
    assert parse_retry_after(value, FakeClock().time()) == expected


def test_a_429_with_retry_after_assumes_no_window_and_says_so() -> None:
    budget = make_budget(FakeClock())
    assert budget.pause("msp", 30.0) == 30.0
    info = budget.pause_info("msp")
    assert info is not None
    assert (info.window, info.reason, info.consecutive) == ("none", "retry_after", 1)
    assert info.describe() == "1st 429 in a row, for as long as its Retry-After header asked"


async def steady_calls(budget: RateBudget, clock: FakeClock, every: float, hours: float) -> None:
    """One call every ``every`` seconds for ``hours``: the agent's own ledger in steady use."""
    for _ in range(int(hours * 3600 / every)):
        await budget.acquire("msp")
        await clock.advance(every)


async def test_429s_without_retry_after_escalate_minute_then_rest_of_hour_then_day() -> None:
    clock = FakeClock(start=T_2300)
    budget = make_budget(clock)
    await steady_calls(budget, clock, every=300.0, hours=2.0)  # 23:00 to 01:00
    await clock.advance(600.0)  # 01:10:00
    sent = clock.monotonic()
    await budget.acquire("msp")

    first = budget.pause("msp", None, sent_at=sent)
    assert 61.0 <= first <= 61.0 * 1.1, "a whole minute plus the margin, and some jitter"
    info = budget.pause_info("msp")
    assert info is not None
    assert (info.window, info.reason, info.consecutive) == ("1m", "escalation", 1)

    await clock.advance(first)
    sent = clock.monotonic()
    await budget.acquire("msp")
    budget.pause("msp", None, sent_at=sent)
    info = budget.pause_info("msp")
    assert info is not None
    assert (info.window, info.consecutive) == ("1h", 2)
    assert info.describe() == (
        "2nd 429 in a row without Retry-After, assuming the 1h window is exhausted"
    )
    top_of_hour = T_2300 + 3 * 3600  # 02:00: our oldest call of the hour leaves long before
    assert top_of_hour <= budget.paused_until("msp") <= top_of_hour + 60

    await clock.advance(budget.paused_until("msp") - clock.time())
    sent = clock.monotonic()
    await budget.acquire("msp")
    budget.pause("msp", None, sent_at=sent)
    info = budget.pause_info("msp")
    assert info is not None
    assert (info.window, info.consecutive) == ("1d", 3)
    midnight = T_2300 + 3600 + 86400  # the next UTC midnight; our oldest call left at 23:00
    assert midnight <= budget.paused_until("msp") <= midnight + 60

    await clock.advance(budget.paused_until("msp") - clock.time())
    sent = clock.monotonic()
    await budget.acquire("msp")
    fourth = budget.pause("msp", None, sent_at=sent)
    info = budget.pause_info("msp")
    assert info is not None
    assert (info.window, info.consecutive) == ("1d", 4)
    assert fourth >= 3601.0, "past the day step, at most one call an hour into a full window"
    assert budget.pauses_total("msp") == 4


async def test_the_hour_step_waits_for_our_own_oldest_call_of_the_hour_to_leave() -> None:
    clock = FakeClock(start=T_2300 + 3000)  # 23:50, a fresh agent: its calls are all recent
    budget = make_budget(clock)
    sent = clock.monotonic()
    await budget.acquire("msp")
    first = budget.pause("msp", None, sent_at=sent)
    await clock.advance(first)
    sent = clock.monotonic()
    await budget.acquire("msp")
    budget.pause("msp", None, sent_at=sent)
    # The next clock hour (00:00) is near, but a sliding hour still holds our 23:50 call.
    oldest_leaves = T_2300 + 3000 + 3600 + MARGIN_SECONDS
    assert oldest_leaves <= budget.paused_until("msp") <= oldest_leaves + 36 + 60


async def test_a_success_resets_the_escalation_but_not_one_sent_before_the_pause() -> None:
    clock = FakeClock()
    budget = make_budget(clock)
    before = clock.monotonic()
    await budget.acquire("msp")
    await budget.acquire("msp")
    budget.pause("msp", None, sent_at=before)
    budget.note_success("msp", sent_at=before)  # the other call was in flight: says nothing
    await clock.advance(budget.paused_until("msp") - clock.time())
    sent = clock.monotonic()
    await budget.acquire("msp")
    budget.pause("msp", None, sent_at=sent)
    assert budget.pause_info("msp").window == "1h"  # type: ignore[union-attr]

    await clock.advance(budget.paused_until("msp") - clock.time())
    sent = clock.monotonic()
    await budget.acquire("msp")
    budget.note_success("msp", sent_at=sent)
    sent = clock.monotonic()
    await budget.acquire("msp")
    length = budget.pause("msp", None, sent_at=sent)
    info = budget.pause_info("msp")
    assert info is not None
    assert (info.window, info.consecutive) == ("1m", 1)
    assert length <= 61.0 * 1.1


async def test_429s_of_calls_in_flight_together_are_one_pause_not_an_escalation() -> None:
    clock = FakeClock()
    budget = make_budget(clock)
    sent = clock.monotonic()
    for _ in range(5):
        await budget.acquire("msp")
    first = budget.pause("msp", None, sent_at=sent)
    await clock.advance(0.3)
    for _ in range(4):  # the other four answer 429 a moment later
        assert budget.pause("msp", None, sent_at=sent) == pytest.approx(first - 0.3)
    info = budget.pause_info("msp")
    assert info is not None
    assert (info.window, info.consecutive) == ("1m", 1)
    assert budget.pauses_total("msp") == 1
    budget.pause("msp", 600.0, sent_at=sent)  # a late Retry-After may still lengthen it
    assert budget.paused_until("msp") == pytest.approx(clock.time() + 600.0)
    assert budget.pause_info("msp").until == budget.paused_until("msp")  # type: ignore[union-attr]


async def test_no_call_is_admitted_during_an_escalation_pause() -> None:
    clock = FakeClock()
    budget = make_budget(clock)
    length = budget.pause("msp", None)
    waiters = [asyncio.create_task(budget.acquire("msp")) for _ in range(3)]
    await settle()
    await clock.advance(length - 0.05)
    assert not any(w.done() for w in waiters)
    assert budget.calls("msp")["1m"] == 0
    await clock.advance(0.1)
    await settle()
    assert all(w.done() for w in waiters)
    assert budget.exact_calls("msp")["1s"] == 3


def test_every_credential_comes_back_at_its_own_moment() -> None:
    budget = make_budget(FakeClock())
    firsts = {budget.pause(f"cred-{i}", None) for i in range(10)}
    assert len(firsts) == 10, "jitter: credentials do not come back in lockstep"


async def test_a_pause_and_its_streak_survive_a_restart(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "state.db"
    with StateFile(path, clock) as store:
        budget = RateBudget(DEFAULT_LIMITS, 0.1, clock, store=store, rng=random.Random(1))
        sent = clock.monotonic()
        await budget.acquire("msp")
        budget.pause("msp", None, sent_at=sent)
        await clock.advance(budget.paused_until("msp") - clock.time())
        sent = clock.monotonic()
        await budget.acquire("msp")
        budget.pause("msp", None, sent_at=sent)
        until = budget.paused_until("msp")
    await clock.advance(10.0)
    with StateFile(path, clock) as store:
        restarted = RateBudget(DEFAULT_LIMITS, 0.1, clock, store=store, rng=random.Random(1))
        assert restarted.paused_until("msp") == until
        info = restarted.pause_info("msp")
        assert info is not None
        assert (info.window, info.consecutive) == ("1h", 2)
        waiter = asyncio.create_task(restarted.acquire("msp"))
        await settle()
        assert not waiter.done(), "the restarted agent keeps the pause"
        waiter.cancel()
        restarted.pause("msp", None)
        assert restarted.pause_info("msp").window == "1d"  # type: ignore[union-attr]


def test_a_later_shorter_pause_does_not_cut_a_running_one_short() -> None:
    clock = FakeClock()
    budget = make_budget(clock)
    budget.pause("msp", 100.0)
    budget.pause("msp", 5.0)
    assert budget.paused_until("msp") == clock.time() + 100.0


async def test_only_the_paused_credential_waits() -> None:
    clock = FakeClock()
    budget = make_budget(clock)
    budget.pause("paused", 60.0)
    paused = asyncio.create_task(budget.acquire("paused"))
    other = asyncio.create_task(budget.acquire("other"))
    await settle()
    assert other.done()
    assert not paused.done()
    await clock.advance(61)
    assert paused.done()
    assert budget.credentials() == ["other", "paused"]


# -- exact counts (what sophos_central_rate_limit_calls shows) ---------------------------------


@pytest.mark.parametrize("window", list(WINDOW_SECONDS))
@pytest.mark.parametrize("start", [1_700_000_000.5, 1_700_000_000.0])
async def test_exact_count_holds_a_call_for_exactly_the_window_and_not_a_moment_longer(
    window: str, start: float
) -> None:
    clock = FakeClock(start=start)  # binary fractions: the edge is hit exactly
    budget = make_budget(clock)
    await budget.acquire("msp")
    length = WINDOW_SECONDS[window]

    await clock.advance(length - 0.001)
    assert budget.exact_calls("msp")[window] == 1
    await clock.advance(0.001)
    assert budget.exact_calls("msp")[window] == 0, "half-open: W after the call it is out"
    assert budget.calls("msp")[window] == 1, "admission still holds it for the margin"


async def test_exact_counts_match_a_brute_force_count_of_every_admitted_call() -> None:
    clock = FakeClock(start=1_700_000_000.37)
    limits = {"1s": 50, "1m": 400, "1h": 2000, "1d": 3000}
    budget = make_budget(clock, limits=limits)
    rng = random.Random(11)
    admitted: list[float] = []
    for _ in range(2500):
        await budget.acquire("msp")
        admitted.append(clock.time())
        await clock.advance(rng.choice((0.0, 0.01, 0.3, 2.0, 45.0)))
        if rng.random() < 0.05:
            now = clock.time()
            expected = {
                w: sum(1 for t in admitted if now - t < length)
                for w, length in WINDOW_SECONDS.items()
            }
            assert budget.exact_calls("msp") == expected
    conservative, exact = budget.calls("msp"), budget.exact_calls("msp")
    assert all(conservative[w] >= exact[w] for w in WINDOW_SECONDS)


async def test_exact_counts_are_exact_between_calls_queued_at_the_edge() -> None:
    clock = FakeClock(start=1_700_000_000.0)
    budget = make_budget(clock, share=0.1, limits={"1m": 100})  # ten per minute
    for _ in range(10):
        await budget.acquire("msp")
    waiter = asyncio.create_task(budget.acquire("msp"))
    await settle()
    await clock.advance(59.5)
    assert budget.exact_calls("msp")["1m"] == 10
    await clock.advance(0.5)
    assert budget.exact_calls("msp")["1m"] == 0, "the ten calls are a minute old"
    assert not waiter.done(), "admission waits out its margin before the eleventh"
    await run_until(clock, waiter.done, step=0.1, limit=5)
    assert budget.exact_calls("msp")["1m"] == 1


async def test_the_exact_log_never_holds_more_than_the_longest_windows_allowance() -> None:
    clock = FakeClock()
    budget = make_budget(clock, limits={"1s": 10, "1m": 100, "1h": 600})
    most = 0
    waiter: asyncio.Task[None] | None = None
    for _ in range(3 * 3600):  # three hours of a caller that wants one call a second
        if waiter is None or waiter.done():
            waiter = asyncio.create_task(budget.acquire("msp"))
            await settle()
        most = max(most, budget.logged_calls("msp"))
        await clock.advance(1.0)
    assert most == 600, "the hour's allowance, reached and never exceeded"
    assert budget.exact_calls("msp")["1h"] <= 600
    assert waiter is not None
    waiter.cancel()


# -- tenant keys (rate_limit_scope: tenant) ------------------------------------------------------


async def test_tenant_keys_have_their_own_windows_apart_from_the_credentials() -> None:
    clock = FakeClock()
    budget = make_budget(clock, share=0.1, limits={**DEFAULT_LIMITS, "1s": 100})
    for _ in range(10):  # a tenant's own minute allowance: 10 calls
        await asyncio.wait_for(budget.acquire(tenant_key("msp", "t-1")), 1)
    await budget.acquire(tenant_key("msp", "t-2"))
    await budget.acquire("msp")
    assert budget.calls("msp")["1m"] == 1, "tenant calls do not count against the credential"
    blocked = asyncio.create_task(budget.acquire(tenant_key("msp", "t-1")))
    other = asyncio.create_task(budget.acquire(tenant_key("msp", "t-2")))
    await settle()
    assert other.done() and not blocked.done(), "only the full tenant waits"
    summary = budget.tenant_budgets("msp")
    assert summary.max_calls == {"1s": 10, "1m": 10, "1h": 10, "1d": 10}
    assert (summary.paused, summary.tenants) == (0, 2)
    assert budget.credentials() == ["msp"]
    blocked.cancel()


async def test_a_429_on_a_tenant_key_pauses_that_tenant_only() -> None:
    clock = FakeClock()
    budget = make_budget(clock)
    budget.pause(tenant_key("msp", "t-1"), None)
    assert budget.tenant_budgets("msp").paused == 1
    await asyncio.wait_for(budget.acquire("msp"), 1)
    await asyncio.wait_for(budget.acquire(tenant_key("msp", "t-2")), 1)
    assert budget.paused_until("msp") == 0.0


async def test_tenant_ledgers_stay_small_and_are_forgotten_once_empty() -> None:
    clock = FakeClock()
    budget = make_budget(clock, share=0.1)
    keys = [tenant_key("msp", f"t-{i}") for i in range(200)]
    for _ in range(60):  # an hour of one call a minute per tenant
        for key in keys:
            await budget.acquire(key)
        await clock.advance(60.0)
    assert budget.logged_calls(keys[0]) == 0, "no exact log per tenant"
    assert budget.stored_buckets(keys[0]) <= 2 + 61 + 61 + 2
    assert budget.exact_calls(keys[0]) == budget.calls(keys[0])
    await clock.advance(86400 + 3600)
    assert budget.tenant_budgets("msp").tenants == 0
    assert budget.stored_buckets(keys[0]) == 0


async def test_tenant_calls_are_persisted_to_the_hour_and_restored_into_the_day(
    tmp_path: Path,
) -> None:
    clock = FakeClock(start=T_2300 + 60)
    path = tmp_path / "state.db"
    key = tenant_key("msp", "t-1")
    with StateFile(path, clock) as store:
        budget = RateBudget({**DEFAULT_LIMITS, "1s": 100}, 0.1, clock, store=store)
        for _ in range(3):
            await asyncio.wait_for(budget.acquire(key), 1)
        await budget.acquire("msp")
        rows = store.execute("SELECT credential, second, calls FROM rate_calls ORDER BY 1")
    assert (key, int(T_2300 + 3600), 3) in rows, "one row for the tenant's hour"
    with StateFile(path, clock) as store:
        restarted = RateBudget({**DEFAULT_LIMITS, "1s": 100}, 0.1, clock, store=store)
        assert restarted.calls(key) == {"1s": 0, "1m": 0, "1h": 0, "1d": 3}
        assert restarted.calls("msp")["1m"] == 1


def test_the_end_of_a_pause_is_shown_with_its_date_only_when_it_is_not_today() -> None:
    clock = FakeClock(start=T_2300)  # 2023-11-14 23:00:00 UTC
    budget = make_budget(clock)
    budget.pause("msp", 30.0)
    info = budget.pause_info("msp")
    assert info is not None
    assert info.until_text(clock.time()) == "23:00:30 UTC"
    budget.pause("other", 7200.0)
    info = budget.pause_info("other")
    assert info is not None
    assert info.until_text(clock.time()) == "2023-11-15 01:00:00 UTC"


async def test_a_shards_tenant_windows_get_the_whole_share_its_credential_windows_a_part() -> None:
    clock = FakeClock()
    limits = {**DEFAULT_LIMITS, "1s": 1000}
    budget = RateBudget(limits, 0.1 / 4, clock, tenant_share=0.1)  # shard 1 of 4
    assert budget.allowance["1m"] == 2 and budget.tenant_allowance["1m"] == 10
    for _ in range(10):
        await asyncio.wait_for(budget.acquire(tenant_key("msp", "t-1")), 1)
    for _ in range(2):
        await asyncio.wait_for(budget.acquire("msp"), 1)
    third = asyncio.create_task(budget.acquire("msp"))
    eleventh = asyncio.create_task(budget.acquire(tenant_key("msp", "t-1")))
    await settle()
    assert not third.done() and not eleventh.done()
    third.cancel()
    eleventh.cancel()


# -- the presentation surface ----------------------------------------------------------------------


async def test_a_readout_gives_every_view_the_same_numbers_read_at_one_moment() -> None:
    clock = FakeClock(start=1_700_000_000.0)
    budget = make_budget(clock, share=0.1, limits={**DEFAULT_LIMITS, "1s": 100})
    for _ in range(3):
        await budget.acquire("msp")
    await clock.advance(59.5)
    await budget.acquire("msp")
    await clock.advance(0.5)
    length = budget.pause("msp", 30.0)
    reading = budget.readout("msp")
    assert reading.key == "msp" and reading.now == clock.time()
    assert reading.calls == {"1s": 1, "1m": 1, "1h": 4, "1d": 4}, "exact: the first three left"
    assert reading.admission_calls["1m"] == 4, "admission holds them for the margin"
    assert reading.allowance == budget.allowance and reading.limits == budget.limits
    assert reading.paused and reading.pauses_total == 1
    assert reading.paused_until == clock.time() + length
    assert reading.pause == budget.pause_info("msp")
    assert reading.tenant_budgets is None
    assert reading.utilization("1h") == 4 / DEFAULT_LIMITS["1h"]
    await clock.advance(length + 1)
    assert not budget.readout("msp").paused, "the pause ended; it is still shown, as the last"


async def test_a_readout_with_tenants_sums_up_the_tenant_windows() -> None:
    clock = FakeClock()
    budget = make_budget(clock, share=0.1, limits={**DEFAULT_LIMITS, "1s": 100})
    for _ in range(2):
        await budget.acquire(tenant_key("msp", "t-1"))
    await budget.acquire(tenant_key("msp", "t-2"))
    reading = budget.readout("msp", tenants=True)
    assert reading.tenant_budgets is not None
    assert reading.tenant_budgets.max_calls["1m"] == 2 and reading.tenant_budgets.tenants == 2
    assert reading.calls["1m"] == 0, "tenant calls count apart from the credential's"
    tenant = budget.readout(tenant_key("msp", "t-1"))
    assert tenant.calls["1m"] == 2 and tenant.allowance == budget.tenant_allowance
