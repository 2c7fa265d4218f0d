"""What the views read from the rate budget: typed, immutable, in wall-clock seconds.

``/metrics``, ``/status``, ``check`` and ``/support`` read the budget through these types only
(``RateBudget.readout``, ``pause_info``, ``tenant_budgets``), never through its ledgers. Times
here are wall-clock seconds derived from the monotonic clock on the start-up timeline
(``agent.clock.Timeline``): a wall-clock step while the agent runs does not make a running pause
look ended or an ended one running.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

from agent.ratebudget.ladder import REASON_RETRY_AFTER


@dataclass(frozen=True)
class PauseInfo:
    """The running, or last, 429 pause of one budget key: for metrics, the log and ``/status``.

    ``started`` and ``until`` are wall-clock seconds. ``window`` is the window assumed exhausted
    (``"none"`` when Retry-After said how long), ``reason`` is ``retry_after`` or
    ``escalation``, ``consecutive`` the 429s in a row without a success in between that led to it.
    """

    started: float
    until: float
    window: str
    reason: str
    consecutive: int

    def until_text(self, now: float) -> str:
        """``14:05:41 UTC``, with the date in front when the pause ends on another UTC day."""
        fmt = "%H:%M:%S" if _utc_day(self.until) == _utc_day(now) else "%Y-%m-%d %H:%M:%S"
        return time.strftime(fmt, time.gmtime(self.until)) + " UTC"

    def describe(self) -> str:
        """Why, in words: "2nd 429 in a row without Retry-After, assuming the 1h window is
        exhausted"."""
        nth = ordinal(self.consecutive)
        if self.reason == REASON_RETRY_AFTER:
            return f"{nth} 429 in a row, for as long as its Retry-After header asked"
        return (
            f"{nth} 429 in a row without Retry-After, assuming the {self.window} window is "
            "exhausted"
        )


@dataclass(frozen=True)
class TenantBudgets:
    """The per-tenant windows of one credential, summed up for a scrape (tenant scope only).

    ``max_calls`` is the busiest tenant's count in each window as admission counts it (up to
    the margin and one bucket width longer than the exact count), ``paused`` how many tenants
    are in a 429 pause now, ``tenants`` how many tenants have a ledger.
    """

    max_calls: dict[str, int]
    paused: int
    tenants: int


@dataclass(frozen=True)
class BudgetReadout:
    """One budget key's spending, as every view shows it, read at one moment.

    ``calls`` are the calls admitted in each trailing window ``(now - window, now]``, in-flight
    ones included, exact at both edges (``sophos_central_rate_limit_calls``; a tenant key keeps
    no exact log and gives admission's count). ``admission_calls`` are what admission counts: each
    call for its window plus the margin and up to one bucket width (never fewer than ``calls``).
    ``allowance`` is the agent's own ceiling per window, ``limits`` Sophos's limit. ``pause`` is
    the running or last 429 pause (``paused`` says whether it runs now), ``pauses_total`` the
    pauses since start. ``tenant_budgets`` is filled for a credential with
    ``rate_limit_scope: tenant``. ``now`` is the wall-clock moment of the reading.
    """

    key: str
    now: float
    calls: Mapping[str, int]
    admission_calls: Mapping[str, int]
    allowance: Mapping[str, int]
    limits: Mapping[str, int]
    pause: PauseInfo | None
    paused: bool
    pauses_total: int
    tenant_budgets: TenantBudgets | None = None

    @property
    def paused_until(self) -> float:
        """Wall-clock end of the running or last pause (0.0: never paused)."""
        return self.pause.until if self.pause is not None else 0.0

    def utilization(self, window: str) -> float:
        """Calls in ``window`` over Sophos's limit (what the utilization gauge shows)."""
        return self.calls.get(window, 0) / max(1, self.limits[window])


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, ..., 11th, 12th, 13th, 21st."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _utc_day(ts: float) -> int:
    return math.floor(ts / 86400)
