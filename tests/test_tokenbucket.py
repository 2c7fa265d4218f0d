"""The one token bucket: the scheduler's confirmation cap, the web rate limit and failed logins."""

from __future__ import annotations

import math

import pytest

from agent.tokenbucket import TokenBucket


def test_starts_full_and_refills_at_its_rate_up_to_the_burst() -> None:
    bucket = TokenBucket(rate=2.0, burst=3)
    assert [bucket.take(10.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.seconds_until(10.0) == pytest.approx(0.5)
    assert bucket.take(10.5)
    assert not bucket.take(10.5)
    assert bucket.available(100.0) == 3  # never more than the burst


def test_the_rate_may_change_between_calls() -> None:
    bucket = TokenBucket(rate=1.0, burst=2)
    assert bucket.take(0.0) and bucket.take(0.0)
    bucket.rate = 0.1
    assert not bucket.take(5.0)  # 5 s at 0.1/s is half a token
    assert bucket.take(10.0)


def test_a_rate_of_zero_never_refills() -> None:
    bucket = TokenBucket(rate=0.0, burst=1)
    assert bucket.take(0.0)
    assert bucket.seconds_until(1e9) == math.inf


def test_time_going_backwards_takes_nothing_back() -> None:
    bucket = TokenBucket(rate=1.0, burst=1)
    assert bucket.take(100.0)
    assert not bucket.take(50.0)
    assert bucket.take(101.0)


@pytest.mark.parametrize(("rate", "burst"), [(-1.0, 1.0), (1.0, 0.0)])
def test_nonsense_is_refused(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate=rate, burst=burst)
