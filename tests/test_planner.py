"""The effective probe period: stretched until every window's expected calls fit the allowance."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.clock import FakeClock
from agent.durations import format_duration
from agent.planner import (
    REFRESH_SHARE,
    Plan,
    overhead_rate,
    pages_for,
    plan_probe_period,
    spread_offsets,
)
from agent.ratebudget import DEFAULT_LIMITS, WINDOW_SECONDS, RateBudget, allowance_for

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


TOKEN_PER_HOUR = 3600 / 300 + 3600 / RENEWAL  # token probe + renewal: 13.09 calls an hour


def test_ten_tenants_fit_the_whole_budget_at_the_requested_interval() -> None:
    result = plan(10, share=1.0)
    assert result.period == 60.0
    assert not result.stretched
    assert not result.refresh_stretched
    assert result.refresh_interval == 900.0
    assert result.overhead_fits
    assert result.binding_window == "1h"  # 600 tenant calls + 21 overhead of 950 usable
    assert result.expected["1h"] == pytest.approx(600 + hourly_overhead(1))
    assert "60 s for 10 tenants fits" in result.message


def test_ten_tenants_at_a_tenth_of_the_default_limits_are_stretched_by_the_hour() -> None:
    result = plan(10, share=0.1)  # 100 calls an hour, 95 after headroom
    room = 95 - hourly_overhead(1)
    assert result.period == pytest.approx(10 * 3600 / room)
    assert result.stretched
    assert not result.refresh_stretched, "two pages every 15 min are within the refresh share"
    assert result.binding_window == "1h"
    assert result.expected["1h"] == pytest.approx(95)
    assert "stretched to 8 min" in result.message
    assert "the 1h window allows 100 calls" in result.message


def test_ten_thousand_tenants_at_default_settings_stretch_the_refresh_then_the_period() -> None:
    # 100 pages every 15 minutes alone would be 404 calls an hour against 95 usable
    result = plan(10_000, share=0.1)
    left = 95 - TOKEN_PER_HOUR
    assert result.overhead_fits
    assert result.binding_window == "1h"
    assert result.refresh_stretched and result.stretched
    assert 101 * 3600 / result.refresh_interval == pytest.approx(REFRESH_SHARE * left)
    assert result.period == pytest.approx(10_000 * 3600 / ((1 - REFRESH_SHARE) * left))
    assert result.expected["1h"] == pytest.approx(95)
    assert result.overhead["1h"] == pytest.approx(TOKEN_PER_HOUR + REFRESH_SHARE * left)
    assert result.message.startswith(
        "probe_interval 60 s stretched to 6.8 d and tenant_refresh_interval "
        "15 min stretched to 4.9 h for 10000 tenants "
        "(100 tenant-list pages per refresh)"
    )
    assert "shards" not in result.message, "sharding never adds budget"


def test_the_refresh_stretches_only_as_far_as_the_requested_period_needs() -> None:
    # 600 tenant calls an hour fit 950 usable once the refresh gives way a little
    result = plan(10_000, share=1.0, probe_interval=60_000.0)
    assert result.period == 60_000.0
    assert not result.stretched
    assert result.refresh_stretched
    assert result.refresh_interval == pytest.approx(101 * 3600 / (950 - TOKEN_PER_HOUR - 600))
    assert result.expected["1h"] == pytest.approx(950)
    assert "tenant_refresh_interval 15 min stretched to 18 min" in result.message
    assert "probe_interval" not in result.message


def test_ten_thousand_tenants_with_a_daily_refresh_are_stretched_to_the_hour_bound() -> None:
    # 1000/h x 24 = 24,000 a day is below 50,000/d: under the seed's limits the hour always binds
    result = plan(10_000, share=0.1, tenant_refresh_interval=86400.0)
    room = 95 - hourly_overhead(100, refresh=86400.0)
    assert result.binding_window == "1h"
    assert not result.refresh_stretched
    assert result.period == pytest.approx(10_000 * 3600 / room)
    assert result.overhead_fits


def test_ten_thousand_tenants_are_stretched_to_the_day_bound_when_the_day_binds() -> None:
    # Sophos's own pages list only the minute and the day window as enforced
    limits = {"1m": 100, "1d": 50_000}
    result = plan(10_000, share=0.1, limits=limits, tenant_refresh_interval=86400.0)
    day_overhead = 86400 / 300 + 101 + 86400 / RENEWAL
    assert result.binding_window == "1d"
    assert result.period == pytest.approx(10_000 * 86400 / (4750 - day_overhead))
    assert result.expected["1d"] == pytest.approx(4750)
    assert "stretched to 2.3 d" in result.message


def test_token_probes_alone_exceeding_the_allowance_are_reported() -> None:
    # a hundredth of 1000/h is 10 calls an hour; the token probe alone makes 12
    result = plan(10_000, share=0.01)
    assert not result.overhead_fits
    assert result.binding_window == "1h"
    assert result.refresh_stretched and result.stretched
    assert result.period == pytest.approx(10_000 * 3600 / ((1 - REFRESH_SHARE) * 9.5))
    assert "token probes and renewals alone need 13.1 calls per 1h" in result.message
    assert "raise token_probe_interval or budget_share" in result.message


def test_the_plan_counts_a_call_for_as_long_as_the_admission_control_holds_it() -> None:
    budget = RateBudget(DEFAULT_LIMITS, 1.0, FakeClock())
    span = {w: budget.hold_seconds(w)[1] for w in WINDOW_SECONDS}
    limits = {"1s": 10, "1m": 100, "1h": 1_000_000, "1d": 10_000_000}
    result = plan_probe_period(
        tenants=10_000,
        probe_interval=60.0,
        token_probe_interval=300.0,
        tenant_refresh_interval=900.0,
        tenant_list_pages=100,
        allowance=allowance_for(limits, 1.0),
        span=span,
    )
    # the minute's 100 calls stay on the books for 61.6 s, not 60 s
    assert result.binding_window == "1m"
    assert result.usable["1m"] == pytest.approx(95 * 60 / 61.6)
    assert result.usable["1s"] == pytest.approx(9.5 / 2.01)
    assert result.expected["1m"] == pytest.approx(result.usable["1m"])


def test_no_tenants_keeps_the_requested_interval() -> None:
    result = plan(0, share=0.1)
    assert result.period == 60.0
    assert result.binding_window is None
    assert not result.stretched
    assert not result.refresh_stretched


@given(
    tenants=st.integers(min_value=0, max_value=50_000),
    share=st.floats(min_value=0.01, max_value=1.0),
    probe=st.floats(min_value=1.0, max_value=3600.0),
    refresh=st.floats(min_value=60.0, max_value=86400.0),
)
def test_the_planned_rates_fit_every_window_and_are_tight_when_stretched(
    tenants: int, share: float, probe: float, refresh: float
) -> None:
    result = plan(tenants, share, probe_interval=probe, tenant_refresh_interval=refresh)
    assert result.period >= probe
    assert result.refresh_interval >= refresh
    if not result.overhead_fits:
        return
    for window in WINDOW_SECONDS:
        assert result.expected[window] <= result.usable[window] * (1 + 1e-9)
    if result.stretched or result.refresh_stretched:
        assert result.binding_window is not None
        binding = result.binding_window
        assert result.expected[binding] == pytest.approx(result.usable[binding])
    if result.refresh_stretched and result.stretched:
        # the refresh gave way up to its share of what the token probes leave, and no further
        binding = result.binding_window
        assert binding is not None
        left = result.usable[binding] / WINDOW_SECONDS[binding] - (1 / 300 + 1 / RENEWAL)
        refresh_rate = (1 + pages_for(tenants)) / result.refresh_interval
        assert refresh_rate == pytest.approx(REFRESH_SHARE * left)


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


def plan_families(tenants: int, families: int, share: float = 0.1) -> Plan:
    return plan_probe_period(
        tenants=tenants,
        probe_interval=60.0,
        token_probe_interval=300.0,
        tenant_refresh_interval=900.0,
        tenant_list_pages=pages_for(tenants),
        allowance=allowance_for(DEFAULT_LIMITS, share),
        families=families,
    )


@pytest.mark.parametrize("tenants", [250, 1000, 10_000])
def test_every_tenant_probe_family_is_budgeted(tenants: int) -> None:
    one, three = plan_families(tenants, 1), plan_families(tenants, 3)
    assert three.period == pytest.approx(3 * one.period)  # each pair still once per period
    assert three.refresh_interval == one.refresh_interval
    assert three.expected["1h"] == pytest.approx(one.expected["1h"])  # the same budget, full
    assert three.expected["1h"] <= three.usable["1h"] + 1e-9
    assert f"for {tenants} tenants x 3 probes" in three.message


def test_families_fit_unstretched_when_the_budget_allows() -> None:
    result = plan_families(10, 3, share=1.0)  # 30 calls a minute: 1800 of 950 an hour
    assert result.stretched
    generous = plan_probe_period(
        tenants=10,
        probe_interval=60.0,
        token_probe_interval=300.0,
        tenant_refresh_interval=900.0,
        tenant_list_pages=1,
        allowance={"1s": 100, "1m": 1000, "1h": 10_000, "1d": 100_000},
        families=3,
    )
    assert generous.period == 60.0
    assert generous.expected["1h"] == pytest.approx(30 * 60 + hourly_overhead(1))
    assert "probe period 60 s for 10 tenants x 3 probes fits" in generous.message


def test_families_must_be_at_least_one() -> None:
    with pytest.raises(ValueError, match="families must be >= 1, got 0"):
        plan_families(10, 0)


# -- the period said out loud ---------------------------------------------------------------------


def test_explain_says_the_period_is_as_configured_when_it_fits() -> None:
    assert plan(10, share=1.0).explain() == "every 60 s: as configured (probe_interval)"


def test_explain_says_which_budget_stretched_the_period_for_how_many_tenants() -> None:
    result = plan(250, share=0.1)
    assert result.explain() == (
        "every 3.8 h: stretched to fit the rate budget: 100 calls/h allowed for 250 tenants "
        "x 1 probe (probe_interval asks for 60 s; raise budget_share to probe more often)"
    )


def test_explain_says_when_token_probes_alone_exceed_the_budget() -> None:
    text = plan(10_000, share=0.01).explain()
    assert text.startswith("every ")
    assert "10 calls/h allowed, and token probes and renewals alone need more" in text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(45, "45 s"), (960, "16 min"), (13_860, "3.9 h"), (592_000, "6.9 d")],
)
def test_human_duration_says_periods_as_people_do(seconds: float, text: str) -> None:
    assert format_duration(seconds, approximate=True) == text


# -- rate_limit_scope: tenant ------------------------------------------------------------------


def tenant_scope_plan(tenants: int, probe_interval: float, calls_per_probe: int = 1) -> Plan:
    budget = RateBudget(DEFAULT_LIMITS, 0.1, FakeClock())
    return plan_probe_period(
        tenants=tenants,
        probe_interval=probe_interval,
        token_probe_interval=300.0,
        tenant_refresh_interval=900.0,
        tenant_list_pages=pages_for(tenants),
        allowance=budget.allowance,
        span={w: budget.hold_seconds(w)[1] for w in budget.limits},
        per_tenant=True,
        families=calls_per_probe,
    )


def test_tenant_scope_does_not_divide_the_period_by_the_number_of_tenants() -> None:
    shared = plan(10_000, 0.1)
    own = tenant_scope_plan(10_000, 60.0)
    assert shared.period > 3600, "credential scope: 10,000 tenants share 100 calls an hour"
    assert own.period == 60.0 and not own.stretched
    # The credential's windows carry only token probes, renewals and 101 pages a refresh.
    assert own.refresh_stretched
    assert own.expected["1h"] <= own.usable["1h"] + 1e-9


def test_tenant_scope_period_is_bounded_by_one_tenants_own_windows() -> None:
    # One tenant may make 100 calls an hour (0.1 x 1000); after margin, buckets and 5 %
    # headroom that is one probe every ~38 s, whatever the number of tenants.
    for tenants in (1, 10_000):
        result = tenant_scope_plan(tenants, 5.0)
        assert result.binding_window == "1h"
        assert result.period == pytest.approx(3637 / 95, rel=1e-3)
        assert "each tenant's own 1h window allows 100 calls" in result.message
    assert tenant_scope_plan(1, 5.0, calls_per_probe=3).period == pytest.approx(
        3 * 3637 / 95, rel=1e-3
    )


# -- what the plan leaves unused: room confirmation re-probes may take without slowing routine --


def test_a_stretched_plan_leaves_nothing_spare() -> None:
    for tenants in (250, 10_000):
        assert plan(tenants, 0.1).spare == 0.0


def test_a_period_as_configured_leaves_the_rest_of_the_budget_spare() -> None:
    result = plan(10, share=0.1, probe_interval=3600.0)  # 10 calls an hour of 95 usable
    assert not result.stretched
    assert result.spare * 3600 == pytest.approx(95 - 10 - hourly_overhead(1))
    assert result.expected["1h"] + result.spare * 3600 == pytest.approx(result.usable["1h"])


def test_tenant_scope_spares_what_each_tenants_own_windows_leave() -> None:
    # Each tenant's own hour allows 95 usable calls after headroom; a probe every 60 s takes 60.
    result = tenant_scope_plan(100, 60.0)
    own_capacity = 95 / 3637  # calls a second per tenant, as the admission control holds them
    assert result.spare == pytest.approx(100 * (own_capacity - 1 / 60), rel=1e-3)
