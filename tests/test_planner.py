"""The effective probe period: stretched until every window's expected calls fit the allowance."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.planner import (
    Plan,
    overhead_rate,
    pages_for,
    plan_probe_period,
    spread_offsets,
)
from agent.ratebudget import DEFAULT_LIMITS, WINDOW_SECONDS, allowance_for

# defaults of the config: probe 60 s, token probe 5 min, tenant refresh 15 min
DEFAULTS = {"probe_interval": 60.0, "token_probe_interval": 300.0, "tenant_refresh_interval": 900.0}
RENEWAL = 3300.0


def plan(
    tenants: int, share: float, *, limits: dict[str, int] = DEFAULT_LIMITS, **kw: float
) -> Plan:
    args: dict[str, float] = {**DEFAULTS, **kw}
    return plan_probe_period(
        tenants=tenants,
        probe_interval=args["probe_interval"],
        token_probe_interval=args["token_probe_interval"],
        tenant_refresh_interval=args["tenant_refresh_interval"],
        tenant_list_pages=pages_for(tenants),
        allowance=allowance_for(limits, share),
    )


def hourly_overhead(pages: int, refresh: float = 900.0) -> float:
    return 3600 / 300 + (1 + pages) * 3600 / refresh + 3600 / RENEWAL


def test_ten_tenants_fit_the_whole_budget_at_the_requested_interval() -> None:
    result = plan(10, share=1.0)
    assert result.period == 60.0
    assert not result.stretched
    assert result.overhead_fits
    assert result.binding_window == "1h"  # 600 tenant calls + 21 overhead of 900 usable
    assert result.expected["1h"] == pytest.approx(600 + hourly_overhead(1))
    assert "60s for 10 tenants fits" in result.message


def test_ten_tenants_at_a_tenth_of_the_default_limits_are_stretched_by_the_hour() -> None:
    result = plan(10, share=0.1)  # 100 calls an hour, 90 after headroom
    room = 90 - hourly_overhead(1)
    assert result.period == pytest.approx(10 * 3600 / room)
    assert result.stretched
    assert result.binding_window == "1h"
    assert result.expected["1h"] == pytest.approx(90)
    assert "stretched to 522s" in result.message
    assert "the 1h window allows 100 calls" in result.message


def test_ten_thousand_tenants_with_default_limits_are_stretched_to_the_hour_bound() -> None:
    # 1000/h x 24 = 24,000 a day is below 50,000/d: under the seed's limits the hour always binds
    result = plan(10_000, share=0.1, tenant_refresh_interval=86400.0)
    room = 90 - hourly_overhead(100, refresh=86400.0)
    assert result.binding_window == "1h"
    assert result.period == pytest.approx(10_000 * 3600 / room)
    assert result.overhead_fits


def test_ten_thousand_tenants_are_stretched_to_the_day_bound_when_the_day_binds() -> None:
    # Sophos's own pages list only the minute and the day window as enforced
    limits = {"1m": 100, "1d": 50_000}
    result = plan(10_000, share=0.1, limits=limits, tenant_refresh_interval=86400.0)
    day_overhead = 86400 / 300 + 101 + 86400 / RENEWAL
    assert result.binding_window == "1d"
    assert result.period == pytest.approx(10_000 * 86400 / (4500 - day_overhead))
    assert result.expected["1d"] == pytest.approx(4500)
    assert "stretched to 211515s (~2.4d)" in result.message


def test_overhead_alone_exceeding_the_allowance_is_reported() -> None:
    # 100 tenant-list pages every 15 minutes: 400 calls an hour against 90 usable
    result = plan(10_000, share=0.1)
    assert not result.overhead_fits
    assert result.binding_window == "1h"
    assert result.overhead["1h"] == pytest.approx(hourly_overhead(100))
    assert result.period == pytest.approx(10_000 * 3600 / 90)  # the tenants' own bound
    assert "credential-level probes alone need 417.1 calls per 1h" in result.message
    assert "tenant_refresh_interval (now 900s (~15.0min), 100 tenant-list pages" in result.message


def test_no_tenants_keeps_the_requested_interval() -> None:
    result = plan(0, share=0.1)
    assert result.period == 60.0
    assert result.binding_window is None
    assert not result.stretched


@given(
    tenants=st.integers(min_value=1, max_value=50_000),
    share=st.floats(min_value=0.01, max_value=1.0),
    probe=st.floats(min_value=1.0, max_value=3600.0),
    refresh=st.floats(min_value=900.0, max_value=86400.0),
)
def test_the_planned_period_fits_every_window_and_is_tight_when_stretched(
    tenants: int, share: float, probe: float, refresh: float
) -> None:
    result = plan(tenants, share, probe_interval=probe, tenant_refresh_interval=refresh)
    assert result.period >= probe
    if not result.overhead_fits:
        return
    for window in WINDOW_SECONDS:
        assert result.expected[window] <= result.usable[window] * (1 + 1e-9)
    if result.stretched:
        assert result.binding_window is not None
        binding = result.binding_window
        assert result.expected[binding] == pytest.approx(result.usable[binding])


def test_overhead_rate_counts_token_whoami_pages_and_renewal() -> None:
    rate = overhead_rate(token_probe_interval=300, tenant_refresh_interval=900, tenant_list_pages=3)
    assert rate == pytest.approx(1 / 300 + 4 / 900 + 1 / RENEWAL)


def test_pages_per_refresh_are_at_least_one() -> None:
    assert [pages_for(n) for n in (0, 1, 100, 101, 10_000)] == [1, 1, 1, 2, 100]


@pytest.mark.parametrize(
    ("probe", "token", "field"),
    [(0.0, 300.0, "probe_interval"), (60.0, -1.0, "token_probe_interval")],
)
def test_non_positive_intervals_are_refused(probe: float, token: float, field: str) -> None:
    with pytest.raises(ValueError, match=f"{field} must be > 0"):
        plan(10, share=0.1, probe_interval=probe, token_probe_interval=token)


def test_spread_offsets_are_even_over_one_period() -> None:
    assert spread_offsets(4, 60.0) == [0.0, 15.0, 30.0, 45.0]
    assert spread_offsets(0, 60.0) == []
    with pytest.raises(ValueError):
        spread_offsets(3, 0.0)
    with pytest.raises(ValueError):
        spread_offsets(-1, 10.0)
