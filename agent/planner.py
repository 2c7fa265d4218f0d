"""The effective probe period per tenant, and the tenant-list refresh interval that allows it.

``probe_interval`` and ``tenant_refresh_interval`` are wishes. Each credential has a fixed cost of
credential-level calls (a token probe every ``token_probe_interval``, a token renewal about every
hour), a refresh cost (whoami and every tenant-list page, each ``tenant_refresh_interval``), and
what is left of the allowance after a headroom is shared by the tenants. Everything is planned as
a sustained rate, in calls per second, because that is what has to fit::

    fixed + (1 + pages) / refresh + tenants x families / period <= capacity

where ``families`` is how many per-tenant probes ``tenant_probes`` lists: each (tenant, family)
pair is probed once per period, so the period is what every pair gets.

``capacity`` is the tightest window's ``allowance x (1 - headroom) / span``, where ``span`` is how
long the admission control keeps a call on its books (the window, plus its safety margin, plus
up to one bucket width, see ``ratebudget``): planning with the bare window would promise 1.7 %
more than the minute window ever admits, and twice what the 1 s window admits.

When the wishes do not fit, the budget is contended and the planner decides who gives way:

1. The tenant list. Listing 10,000 tenants is 101 calls; every 15 minutes that is 404 calls an
   hour, four times the default allowance (0.1 x 1000/h), and no tenant would ever be probed. So
   the refresh interval is stretched, just enough for the tenants to keep ``probe_interval`` if
   that is possible, and never further than the point where the refresh takes
   ``REFRESH_SHARE`` of what the token probes leave.
2. The tenants. Whatever the refresh leaves is shared by the tenants: ``period`` is stretched
   until they fit.

Expected means averaged: bursts shorter than a window (all pages of a refresh at once, a start-up)
are absorbed by the admission control in ``ratebudget``, which never lets a window overflow; the
plan makes sure the sustained rate does not queue up without end and that the exported period is
the one that really happens. The headroom is small (5 %) because the admission control, not the
plan, is what keeps the windows; a larger one would only leave capacity unused.

With ``rate_limit_scope: tenant`` (``per_tenant=True``) the windows are not shared: a tenant's
probes count against the tenant's own windows and the credential's windows carry only the
credential-level calls. Then the period is bounded by one tenant's own allowance
(``families / period <= tenant capacity``), not divided by the number of tenants, and only
the tenant list is stretched to fit the credential's windows (no tenant gives way for it).

The planner also gives the start offsets (``spread_offsets``) because it is what decides the shape
of the schedule: tenants start evenly spread over one period instead of all at once.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from agent.config import WINDOW_SECONDS
from agent.durations import format_duration
from agent.sophos import TENANT_PAGE_SIZE

DEFAULT_HEADROOM = 0.05
REFRESH_SHARE = 0.25
"""At most this share of what the token probes leave goes to the tenant list when contended."""
TOKEN_LIFETIME_SECONDS = 3600.0
TOKEN_RENEWAL_SECONDS = TOKEN_LIFETIME_SECONDS - 300.0
"""A cached token is renewed some minutes before it expires: about one call per 55 minutes."""


@dataclass(frozen=True)
class Plan:
    """The outcome of planning, with the numbers behind it for logs and the status page.

    ``period`` is the seconds between two probes of one tenant, ``refresh_interval`` the seconds
    between two tenant-list refreshes (whoami and every page). Per-window figures (``overhead``,
    ``expected``, ``usable``) are calls per window length: ``usable`` is what the admission control
    lets through in a window at a sustained rate, after the headroom. When ``overhead_fits`` is
    False the token probes and renewals alone exceed a window's usable allowance; the plan is then
    made as if they took nothing (the admission control still holds every call back as needed)
    and the caller should warn with ``message``.
    """

    period: float
    requested: float
    stretched: bool
    refresh_interval: float
    refresh_requested: float
    refresh_stretched: bool
    binding_window: str | None
    overhead_fits: bool
    overhead: dict[str, float]
    expected: dict[str, float]
    usable: dict[str, float]
    message: str
    tenants: int = 0
    allowance: dict[str, int] = field(default_factory=dict)
    families: int = 1
    per_tenant: bool = False
    spare: float = 0.0
    """Calls per second the plan leaves unused in its tightest window (with ``per_tenant``,
    summed over the tenants' own windows): 0 when the period is stretched to fit. Confirmation
    re-probes may take this much without slowing routine probing down."""

    def explain(self) -> str:
        """The period and why it is what it is, in one line for users (status page, ``check``,
        the start-up log): the first thing to know before reading any per-tenant alert."""
        return f"every {_said(self.period)}: {self.cause()}"

    def cause(self) -> str:
        """Why the period is what it is: as configured, or stretched by which budget."""
        w = self.binding_window
        if not self.stretched or w is None:
            return "as configured (probe_interval)"
        allowed = f"{self.allowance.get(w, 0)} calls/{_PER[w]} allowed"
        if not self.overhead_fits:
            return (
                f"stretched to fit the rate budget: {allowed}, and token probes and renewals "
                "alone need more (raise budget_share or token_probe_interval)"
            )
        probes = f"{self.families} probe{'s' if self.families != 1 else ''}"
        asks = f"probe_interval asks for {_said(self.requested)}"
        if self.per_tenant:
            return (
                f"stretched to fit each tenant's own rate budget: {allowed} per tenant for "
                f"{probes} ({asks}; raise budget_share to probe more often)"
            )
        return (
            f"stretched to fit the rate budget: {allowed} for {self.tenants} tenants x {probes} "
            f"({asks}; raise budget_share to probe more often)"
        )


_PER = {"1s": "s", "1m": "min", "1h": "h", "1d": "day"}


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
    span: Mapping[str, float] | None = None,
    families: int = 1,
    per_tenant: bool = False,
    tenant_allowance: Mapping[str, int] | None = None,
) -> Plan:
    """Plan one credential's probing; ``tenants``, ``pages`` and ``allowance`` are this shard's.

    ``span`` is how long a call occupies each window's ledger (``RateBudget.hold_seconds``'s upper
    bound); without it, the bare window length. ``families`` is the number of per-tenant probes
    (``tenant_probes``): every tenant costs that many calls per period. ``per_tenant`` plans for
    tenant-scoped windows (``rate_limit_scope: tenant``), where each probe round of a tenant costs
    ``families`` calls of its own windows, each allowing ``tenant_allowance`` (default:
    ``allowance``; a shard's tenant windows are whole).
    """
    _validate(tenants, probe_interval, token_probe_interval, tenant_refresh_interval, headroom)
    if families < 1:
        raise ValueError(f"families must be >= 1, got {families}")
    probed = tenants
    tenants = probed * families  # calls per period: one per (tenant, family) pair
    spans = {w: float(WINDOW_SECONDS[w]) for w in allowance}
    if span is not None:
        spans.update({w: float(span[w]) for w in allowance if w in span})
    capacity = {w: a * (1 - headroom) / spans[w] for w, a in allowance.items()}
    fixed = 1 / token_probe_interval + 1 / token_renewal_interval
    per_refresh = 1 + tenant_list_pages
    tightest = min(capacity, key=lambda w: capacity[w]) if capacity else None
    cap = capacity[tightest] if tightest is not None else math.inf
    if per_tenant:
        own = allowance if tenant_allowance is None else tenant_allowance
        return _plan_per_tenant(
            tenants=probed,
            probe_interval=probe_interval,
            tenant_refresh_interval=tenant_refresh_interval,
            per_refresh=per_refresh,
            fixed=fixed,
            capacity=capacity,
            tenant_capacity={w: a * (1 - headroom) / spans[w] for w, a in own.items()},
            calls_per_probe=families,
            headroom=headroom,
            allowance=allowance,
            tenant_allowance=own,
        )

    refresh, period = tenant_refresh_interval, probe_interval
    left = cap - fixed
    need = tenants / probe_interval
    overhead_fits = left > 0
    if not overhead_fits:
        refresh = max(refresh, per_refresh / (REFRESH_SHARE * cap))
        period = max(period, tenants / ((1 - REFRESH_SHARE) * cap))
    elif per_refresh / refresh + need > left:
        refresh_cap = per_refresh / (REFRESH_SHARE * left)
        if left > need and per_refresh / (left - need) <= refresh_cap:
            refresh = per_refresh / (left - need)  # the refresh alone makes room
        else:
            refresh = max(refresh, refresh_cap)
            period = max(period, tenants / (left - per_refresh / refresh))

    rate = fixed + per_refresh / refresh
    spare = max(0.0, cap - rate - tenants / period) if overhead_fits else 0.0
    contended = period > probe_interval or refresh > tenant_refresh_interval
    binding = tightest if (tenants or contended or not overhead_fits) else None
    plan = Plan(
        period=period,
        requested=probe_interval,
        stretched=period > probe_interval,
        refresh_interval=refresh,
        refresh_requested=tenant_refresh_interval,
        refresh_stretched=refresh > tenant_refresh_interval,
        binding_window=binding,
        overhead_fits=overhead_fits,
        overhead={w: rate * WINDOW_SECONDS[w] for w in allowance},
        expected={w: (rate + tenants / period) * WINDOW_SECONDS[w] for w in allowance},
        usable={w: capacity[w] * WINDOW_SECONDS[w] for w in allowance},
        message="",
        tenants=probed,
        allowance=dict(allowance),
        families=families,
        spare=spare,
    )
    message = _message(plan, probed, allowance, headroom, tenant_list_pages, fixed, families)
    return dataclasses.replace(plan, message=message)


def _plan_per_tenant(
    *,
    tenants: int,
    probe_interval: float,
    tenant_refresh_interval: float,
    per_refresh: int,
    fixed: float,
    capacity: Mapping[str, float],
    tenant_capacity: Mapping[str, float],
    calls_per_probe: int,
    headroom: float,
    allowance: Mapping[str, int],
    tenant_allowance: Mapping[str, int],
) -> Plan:
    """Tenant scope: the tenant's own windows bound its period; the credential's windows carry
    the token probes, renewals and the tenant list only."""
    own_tightest = min(tenant_capacity, key=lambda w: tenant_capacity[w])
    period = max(probe_interval, calls_per_probe / tenant_capacity[own_tightest])
    tightest = min(capacity, key=lambda w: capacity[w]) if capacity else None
    cap = capacity[tightest] if tightest is not None else math.inf
    refresh = tenant_refresh_interval
    overhead_fits = cap > fixed
    if not overhead_fits:
        refresh = max(refresh, per_refresh / (REFRESH_SHARE * cap))
    elif fixed + per_refresh / refresh > cap:
        refresh = per_refresh / (cap - fixed)
    rate = fixed + per_refresh / refresh
    stretched = period > probe_interval
    refresh_stretched = refresh > tenant_refresh_interval
    credential_bound = refresh_stretched or not overhead_fits
    binding = own_tightest if stretched else tightest if credential_bound else None
    if binding is None:
        message = f"probe period {_said(period)} for {tenants} tenants (per-tenant windows)"
    else:
        changes = []
        if stretched:
            changes.append(
                f"probe_interval {_said(probe_interval)} stretched to {_said(period)}: each "
                f"tenant's own {own_tightest} window allows {tenant_allowance[own_tightest]} "
                f"calls (budget_share x limit) and a probe round costs {calls_per_probe}"
            )
        w = tightest or own_tightest
        if refresh_stretched:
            changes.append(
                f"tenant_refresh_interval {_said(tenant_refresh_interval)} stretched to "
                f"{_said(refresh)} to fit the credential's own {w} window "
                f"({per_refresh} calls per refresh)"
            )
        if not overhead_fits:
            changes.append(
                f"token probes and renewals alone need {fixed * WINDOW_SECONDS[w]:.1f} calls "
                f"per {w}; raise token_probe_interval or budget_share"
            )
        message = (
            "; ".join(changes) + f" ({headroom:.0%} headroom); raise budget_share or rate_limits"
        )
    return Plan(
        period=period,
        requested=probe_interval,
        stretched=stretched,
        refresh_interval=refresh,
        refresh_requested=tenant_refresh_interval,
        refresh_stretched=refresh_stretched,
        binding_window=binding,
        overhead_fits=overhead_fits,
        overhead={w: rate * WINDOW_SECONDS[w] for w in allowance},
        expected={w: rate * WINDOW_SECONDS[w] for w in allowance},
        usable={w: capacity[w] * WINDOW_SECONDS[w] for w in allowance},
        message=message,
        tenants=tenants,
        allowance=dict(tenant_allowance if stretched else allowance),
        families=calls_per_probe,
        per_tenant=True,
        spare=tenants * max(0.0, tenant_capacity[own_tightest] - calls_per_probe / period),
    )


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
    pages: int,
    fixed: float,
    families: int = 1,
) -> str:
    w = plan.binding_window
    count = f"{tenants} tenants" + (f" x {families} probes" if families > 1 else "")
    if w is None:
        return f"probe period {_said(plan.period)} for {count}"
    budget = (
        f"the {w} window allows {allowance[w]} calls (budget_share x limit), "
        f"{plan.usable[w]:.1f} at a sustained rate after {headroom:.0%} headroom"
    )
    if not plan.overhead_fits:
        return (
            f"token probes and renewals alone need {fixed * WINDOW_SECONDS[w]:.1f} calls per {w} "
            f"but {budget}: tenant probes cannot keep up; raise token_probe_interval or "
            f"budget_share (shards do not help: each lists and renews on its own)"
        )
    changes = []
    if plan.stretched:
        changes.append(f"probe_interval {_said(plan.requested)} stretched to {_said(plan.period)}")
    if plan.refresh_stretched:
        changes.append(
            f"tenant_refresh_interval {_said(plan.refresh_requested)} stretched to "
            f"{_said(plan.refresh_interval)}"
        )
    if changes:
        return (
            f"{' and '.join(changes)} for {count} ({pages} tenant-list "
            f"page{'' if pages == 1 else 's'} per refresh): {budget}, of which credential-level "
            f"probes take "
            f"{plan.overhead[w]:.1f}; raise budget_share or rate_limits"
        )
    return (
        f"probe period {_said(plan.period)} for {count} fits: tightest window {w} "
        f"expects {plan.expected[w]:.1f} of {plan.usable[w]:.1f} usable calls"
    )


def _said(seconds: float) -> str:
    """A duration as the status page and ``check`` say it (``16 min``, ``3.8 h``)."""
    return format_duration(seconds, approximate=True)


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
