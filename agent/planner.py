"""The effective probe period per tenant: as often as asked, as seldom as the budget requires.

``probe_interval`` is a wish. Each credential also has a fixed overhead of credential-level calls
(a token probe every ``token_probe_interval``, whoami and the tenant-list pages every
``tenant_refresh_interval``, a token renewal about every hour), and what is left of the allowance
in each window after a headroom for retries is shared by the tenants. The period is stretched
until the *expected* calls fit every window::

    overhead_rate * window + tenants / period * window <= allowance * (1 - headroom)

Expected means averaged: bursts shorter than a window (all pages of a tenant refresh at once, a
start-up) are absorbed by the admission control in ``ratebudget``, which never lets a window
overflow; the plan only makes sure the sustained rate does not queue up without end.

The planner also gives the start offsets (``spread_offsets``) because it is what decides the shape
of the schedule: tenants start evenly spread over one period instead of all at once.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

from agent.ratebudget import WINDOW_SECONDS

DEFAULT_HEADROOM = 0.10
TOKEN_LIFETIME_SECONDS = 3600.0
TOKEN_RENEWAL_SECONDS = TOKEN_LIFETIME_SECONDS - 300.0
"""A cached token is renewed some minutes before it expires: about one call per 55 minutes."""
TENANT_PAGE_SIZE = 100


@dataclass(frozen=True)
class Plan:
    """The outcome of planning, with the numbers behind it for logs and the status page.

    ``period`` is the seconds between two probes of one tenant. When ``overhead_fits`` is False the
    credential-level probes alone exceed a window's usable allowance; ``period`` is then the bound
    from the tenants alone (the admission control will still hold every call back as needed), and
    the caller should warn with ``message``.
    """

    period: float
    requested: float
    stretched: bool
    binding_window: str | None
    overhead_fits: bool
    overhead: dict[str, float]
    expected: dict[str, float]
    usable: dict[str, float]
    message: str


def pages_for(tenants: int, page_size: int = TENANT_PAGE_SIZE) -> int:
    """Tenant-list pages per refresh; a partner or organization lists at least one page."""
    return max(1, math.ceil(tenants / page_size))


def overhead_rate(
    *,
    token_probe_interval: float,
    tenant_refresh_interval: float,
    tenant_list_pages: int,
    token_renewal_interval: float = TOKEN_RENEWAL_SECONDS,
) -> float:
    """Credential-level calls per second: token probe, whoami, tenant pages, token renewal."""
    per_refresh = 1 + tenant_list_pages
    return (
        1 / token_probe_interval
        + per_refresh / tenant_refresh_interval
        + 1 / token_renewal_interval
    )


def plan_probe_period(
    *,
    tenants: int,
    probe_interval: float,
    token_probe_interval: float,
    tenant_refresh_interval: float,
    tenant_list_pages: int,
    allowance: Mapping[str, int],
    headroom: float = DEFAULT_HEADROOM,
    token_renewal_interval: float = TOKEN_RENEWAL_SECONDS,
) -> Plan:
    """Plan one credential's tenant probing; ``tenants`` and ``allowance`` are this shard's."""
    _validate(tenants, probe_interval, token_probe_interval, tenant_refresh_interval, headroom)
    rate = overhead_rate(
        token_probe_interval=token_probe_interval,
        tenant_refresh_interval=tenant_refresh_interval,
        tenant_list_pages=tenant_list_pages,
        token_renewal_interval=token_renewal_interval,
    )
    usable = {w: a * (1 - headroom) for w, a in allowance.items()}
    overhead = {w: rate * WINDOW_SECONDS[w] for w in allowance}
    worst: str | None
    starved = [w for w in allowance if overhead[w] >= usable[w]]
    if starved:
        worst = max(starved, key=lambda w: overhead[w] / usable[w])
        bounds = {w: tenants * WINDOW_SECONDS[w] / usable[w] for w in allowance}
    else:
        bounds = {w: tenants * WINDOW_SECONDS[w] / (usable[w] - overhead[w]) for w in allowance}
        worst = max(bounds, key=lambda w: bounds[w]) if bounds and tenants else None
    period = max([probe_interval, *bounds.values()])
    expected = {w: overhead[w] + tenants / period * WINDOW_SECONDS[w] for w in allowance}
    plan = Plan(
        period=period,
        requested=probe_interval,
        stretched=period > probe_interval,
        binding_window=worst,
        overhead_fits=not starved,
        overhead=overhead,
        expected=expected,
        usable=usable,
        message="",
    )
    message = _message(
        plan, tenants, allowance, headroom, tenant_refresh_interval, tenant_list_pages
    )
    return dataclasses.replace(plan, message=message)


def spread_offsets(n: int, period: float) -> list[float]:
    """Start offsets ``0, period/n, 2*period/n, ...`` so that n tenants do not start at once."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if period <= 0:
        raise ValueError(f"period must be > 0, got {period}")
    return [period * i / n for i in range(n)]


def _message(
    plan: Plan,
    tenants: int,
    allowance: Mapping[str, int],
    headroom: float,
    refresh: float,
    pages: int,
) -> str:
    w = plan.binding_window
    if w is None:
        return f"probe period {_human(plan.period)} for {tenants} tenants"
    budget = (
        f"the {w} window allows {allowance[w]} calls (budget_share x limit), "
        f"{plan.usable[w]:.1f} after {headroom:.0%} headroom"
    )
    if not plan.overhead_fits:
        return (
            f"credential-level probes alone need {plan.overhead[w]:.1f} calls per {w} "
            f"but {budget}: "
            f"tenant probes cannot keep up; raise tenant_refresh_interval (now {_human(refresh)}, "
            f"{pages} tenant-list pages per refresh) or budget_share, or add shards"
        )
    if plan.stretched:
        return (
            f"probe_interval {_human(plan.requested)} stretched to {_human(plan.period)} for "
            f"{tenants} tenants: {budget}, of which credential-level probes take "
            f"{plan.overhead[w]:.1f}; raise budget_share or rate_limits, or add shards"
        )
    return (
        f"probe period {_human(plan.period)} for {tenants} tenants fits: tightest window {w} "
        f"expects {plan.expected[w]:.1f} of {plan.usable[w]:.1f} usable calls"
    )


def _human(seconds: float) -> str:
    text = f"{seconds:.0f}s"
    if seconds >= 86400:
        return f"{text} (~{seconds / 86400:.1f}d)"
    if seconds >= 3600:
        return f"{text} (~{seconds / 3600:.1f}h)"
    if seconds >= 120:
        return f"{text} (~{seconds / 60:.1f}min)"
    return text


def _validate(
    tenants: int, probe_interval: float, token_probe: float, refresh: float, headroom: float
) -> None:
    if tenants < 0:
        raise ValueError(f"tenants must be >= 0, got {tenants}")
    for name, value in (
        ("probe_interval", probe_interval),
        ("token_probe_interval", token_probe),
        ("tenant_refresh_interval", refresh),
    ):
        if value <= 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    if not 0 <= headroom < 1:
        raise ValueError(f"headroom must be >= 0 and < 1, got {headroom}")
