"""SIEM collection at risk: when each tenant's SIEM probe last worked, and whether the probe
period lets the alert on it come in time.

Sophos's SIEM endpoints accept a ``from_date`` at most 24 hours back (the families'
``lookback``): a connector that cannot collect for a day loses the events in between for good.
``SophosCentralSiemCollectionAtRisk`` pages while there is still time, from what the exporter
knows between probes: when the tenant's SIEM probe last succeeded
(``sophos_central_probe_last_success_timestamp_seconds``) and that it is failing now, confirmed
by the re-probes (``sophos_central_probe_consecutive_failures``). It warns ``WARNING_AFTER`` and
pages ``CRITICAL_AFTER`` after the last success (``tests/test_alerts.py`` holds the rule equal to
these).

Two things make that hold in production:

- **Restarts.** The last success is kept in the state file (``LastSuccessStore``), so an exporter
  restarted (a new image, a rescheduled pod) still knows it; otherwise a tenant probed every
  few hours would have no last success for hours after every restart.
- **The period.** A failure that starts just after a success is seen at the tenant's next routine
  probe, one period later, and confirmed by the re-probes after that. When that takes longer than
  ``WARNING_AFTER``, the alert cannot warn in time, and ``check_collection`` says so, with the
  ``budget_share`` (or ``tenant_probes``) that would let it; ``/status``, ``check`` and the
  start-up log show its note.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from agent.causes import CONFIRMED_AFTER
from agent.durations import format_duration
from agent.families import Family
from agent.planner import Plan
from agent.probes import ProbeResult
from agent.statefile import StateFile, StateFileError

ALERT = "SophosCentralSiemCollectionAtRisk"
WARNING_AFTER = 12 * 3600.0
"""The alert warns this long after the last success (half the 24-hour lookback left)."""
CRITICAL_AFTER = 20 * 3600.0
"""... and pages this long after it (4 hours left)."""
ALERT_FOR = 5 * 60.0
"""The alert's ``for:``."""

KEEP_SECONDS = 7 * 86400.0
"""Last successes older than this are forgotten at start-up (a tenant long gone, a family no
longer probed): a week after the last success, the events are long lost."""


def confirmation_seconds(confirm_interval: float) -> float:
    """From a first failure to its confirmation: the re-probes after ``confirm_interval``, then
    twice that, ... until ``CONFIRMED_AFTER`` failures in a row (``agent.scheduler``)."""
    return confirm_interval * float(2 ** (CONFIRMED_AFTER - 1) - 1)


def worst_case_seconds(period: float, confirm_interval: float) -> float:
    """From a last success to the alert, for a failure that starts right after it: the next
    routine probe (one period), the confirmations, and the alert's ``for:``."""
    return period + confirmation_seconds(confirm_interval) + ALERT_FOR


# -- the period --------------------------------------------------------------------------------


PlanFor = Callable[[float, int], Plan]
"""The plan the credential would get with another ``budget_share`` and number of families."""


@dataclass(frozen=True)
class CollectionCheck:
    """Whether the alert can warn in time at a credential's period, and what would let it."""

    families: tuple[str, ...]
    period: float
    worst_case: float
    fits: bool
    remedy: str = ""

    def note(self) -> str:
        """What ``/status``, ``check`` and the start-up log say; empty when the alert holds."""
        if self.fits:
            return ""
        names = " and ".join(self.families)
        return (
            f"{ALERT} cannot warn in time: each tenant's {names} "
            f"{'is' if len(self.families) == 1 else 'are'} probed every {_said(self.period)}, "
            f"so a failure that starts just after a success is confirmed and alerted only "
            f"{_said(self.worst_case)} later, after the {WARNING_AFTER / 3600:g} h warning "
            f"(events more than 24 h old are lost for good). {self.remedy}"
        )


def check_collection(
    plan: Plan,
    families: Sequence[Family],
    confirm_interval: float,
    budget_share: float,
    plan_for: PlanFor,
) -> CollectionCheck | None:
    """Check a credential's plan for its families with a ``lookback``; None without any.

    ``plan_for`` re-plans the credential with another share and family count (the runtime
    passes the planner with everything else as it is), so the suggestion is the planner's own
    figure, not an estimate.
    """
    watched = tuple(f.name for f in families if f.lookback)
    if not watched:
        return None
    worst = worst_case_seconds(plan.period, confirm_interval)
    if worst <= WARNING_AFTER:
        return CollectionCheck(watched, plan.period, worst, True)
    remedy = _remedy(plan.tenants, len(families), watched, confirm_interval, budget_share, plan_for)
    return CollectionCheck(watched, plan.period, worst, False, remedy)


def _remedy(
    tenants: int,
    count: int,
    watched: tuple[str, ...],
    confirm_interval: float,
    budget_share: float,
    plan_for: PlanFor,
) -> str:
    """The smallest change that lets the alert hold: a larger ``budget_share``, else probing
    only the families it watches (with the share that then needs), else none there is."""
    share = needed_share(count, confirm_interval, budget_share, plan_for)
    if share is not None:
        return f"Raise budget_share to {share:g} (now {budget_share:g}) to let it."
    only = ", ".join(watched)
    if len(watched) < count:
        share = needed_share(len(watched), confirm_interval, budget_share, plan_for)
        if share is not None:
            raise_it = f" and raise budget_share to {share:g}" if share > budget_share else ""
            return f"Probe only {only} (tenant_probes: [{only}]){raise_it} to let it."
    return (
        f"No budget_share up to 1 lets it, even probing only {only}: {tenants} tenants need "
        "more calls than one credential's rate limits allow in that time (shards split the "
        "same limits). Choose rate_limit_scope: tenant if Sophos counts these limits per tenant; "
        "otherwise watch these tenants' SIEM collection in the connector itself."
    )


def needed_share(
    families: int, confirm_interval: float, budget_share: float, plan_for: PlanFor
) -> float | None:
    """The smallest ``budget_share`` (in hundredths, at least the current one) whose plan lets
    the alert warn in time with ``families`` per-tenant probes; None if not even 1 does."""

    def fits(share: float) -> bool:
        period = plan_for(share, families).period
        return worst_case_seconds(period, confirm_interval) <= WARNING_AFTER

    if not fits(1.0):
        return None
    low = math.ceil(budget_share * 100)
    if fits(low / 100):
        return low / 100
    high = 100
    while high - low > 1:  # fits(high / 100) holds, fits(low / 100) does not
        middle = (low + high) // 2
        if fits(middle / 100):
            high = middle
        else:
            low = middle
    return high / 100


def _said(seconds: float) -> str:
    return format_duration(seconds, approximate=True)


# -- remembered across restarts ----------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS last_success (
    credential TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    probe TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (credential, tenant_id, probe)
) WITHOUT ROWID;
"""
_UPSERT = (
    "INSERT INTO last_success (credential, tenant_id, probe, at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (credential, tenant_id, probe) DO UPDATE SET at = MAX(at, excluded.at)"
)


class LastSuccessStore:
    """The last success of every (credential, tenant, probe) of a family with a ``lookback``,
    in the state file: one UPSERT per success of such a probe (a few an hour per tenant at
    most). Shards share the table: a tenant belongs to one shard, and keeps its row when the
    shards are counted anew. Best effort, as the state file is: a broken file costs the memory
    across a restart, never a probe."""

    def __init__(self, store: StateFile) -> None:
        self._store = store
        store.ensure_schema(_SCHEMA)

    def load(self, credential: str, now: float) -> dict[tuple[str, str], float]:
        """(tenant id, probe) -> last success of ``credential``; forgets rows past
        ``KEEP_SECONDS``."""
        try:
            self._store.execute("DELETE FROM last_success WHERE at < ?", (now - KEEP_SECONDS,))
            rows = self._store.execute(
                "SELECT tenant_id, probe, at FROM last_success WHERE credential = ?",
                (credential,),
            )
        except StateFileError:
            return {}
        return {(str(tenant), str(probe)): float(at) for tenant, probe, at in rows}

    def remember(self, result: ProbeResult) -> None:
        """A success of a family with a ``lookback`` (``CredentialProber``'s ``on_success``)."""
        if result.last_success is None:
            return
        row = (result.credential, result.tenant_id, result.probe, result.last_success)
        # A failure is logged by the state file; the in-memory result still holds the time.
        with contextlib.suppress(StateFileError):
            self._store.execute(_UPSERT, row)
