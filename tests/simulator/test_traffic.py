"""The exact judge of rate fidelity and the limiter's arithmetic, on hand-made arrivals."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.clock import FakeClock
from agent.simulator import TrafficStats, busiest_window, window_seconds


def _brute_force(times: list[float], seconds: float) -> int:
    """Most arrivals in any half-open window [x, x + seconds), trying every x at an arrival."""
    return max((sum(1 for t in times if x <= t < x + seconds) for x in times), default=0)


async def _replay(times: list[float], limits: dict[str, int], **kwargs: object) -> TrafficStats:
    clock = FakeClock()
    stats = TrafficStats(clock, limits, **kwargs)  # type: ignore[arg-type]
    now = 0.0
    for t in times:
        await clock.advance(t - now)
        now = t
        stats.arrive("client", "main")
    return stats


async def test_max_calls_in_any_window_on_a_hand_made_sequence() -> None:
    times = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 5.0, 5.5, 59.0, 60.0, 61.0]
    stats = await _replay(times, {"1s": 1000, "1m": 1000})

    assert stats.max_calls_in_any_window("client", 1) == 5
    assert stats.max_calls_in_any_window("client", 60) == 10
    assert stats.max_calls_in_any_window("client", 0.5) == 3  # from the history
    assert stats.max_calls_in_any_window("client", 3600) == 12
    assert stats.max_calls_in_any_window("nobody", 1) == 0


async def test_arrivals_exactly_one_window_apart_never_share_it() -> None:
    stats = await _replay([0.0, 1.0, 2.0, 3.0], {"1s": 1000})

    assert stats.max_calls_in_any_window("client", 1) == 1
    assert stats.max_calls_in_any_window("client", 1.5) == 2


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=400), max_size=60))
def test_tracked_and_untracked_windows_match_brute_force(quarters: list[int]) -> None:
    times = sorted(q / 4 for q in quarters)
    for seconds in (0.25, 1.0, 2.5, 60.0):
        assert busiest_window(times, seconds) == _brute_force(times, seconds)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=400), min_size=1, max_size=40))
async def test_running_peak_matches_brute_force(quarters: list[int]) -> None:
    times = sorted(q / 4 for q in quarters)
    stats = await _replay(times, {"1s": 10_000, "1m": 10_000}, extra_windows=[2.5])

    for seconds in (1.0, 60.0, 2.5):
        assert stats.max_calls_in_any_window("client", seconds) == _brute_force(times, seconds)


async def test_capped_history_refuses_untracked_windows_but_keeps_tracked_ones_exact() -> None:
    stats = await _replay([0.0, 0.1, 0.2, 0.3], {"1s": 1000}, history_cap=2)

    assert stats.max_calls_in_any_window("client", 1) == 4
    with pytest.raises(ValueError, match="not tracked"):
        stats.max_calls_in_any_window("client", 0.5)


async def test_rejections_count_and_retry_after_points_past_the_blocking_arrival() -> None:
    clock = FakeClock()
    stats = TrafficStats(clock, {"10s": 2})
    verdicts = [stats.arrive("c", "main").retry_after]
    await clock.advance(3)
    verdicts.append(stats.arrive("c", "main").retry_after)
    await clock.advance(3)
    verdicts.append(stats.arrive("c", "main").retry_after)  # blocked by the one at t=3
    await clock.advance(7)
    verdicts.append(stats.arrive("c", "main").retry_after)  # t=13: t=3 has left the window

    assert verdicts == [None, None, 7, None]
    assert stats.rate_limited("c") == 1
    assert stats.arrivals("c") == 4


@pytest.mark.parametrize(
    ("label", "seconds"), [("1s", 1.0), ("1m", 60.0), ("1h", 3600.0), ("1d", 86400.0), ("90", 90.0)]
)
def test_window_labels(label: str, seconds: float) -> None:
    assert window_seconds(label) == seconds


def test_bad_window_label_is_refused() -> None:
    with pytest.raises(ValueError, match="bad rate window"):
        window_seconds("soon")
