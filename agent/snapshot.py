"""What the agent knows at one moment: the one read model behind every view.

``/metrics``, ``/status``, ``check`` (table and JSON) and ``/support`` render a ``Snapshot``; none
of them reads the running agent. ``agent.runtime.Agent.snapshot`` builds one per request, on the
event loop where the probe state lives, so every view of one request sees one consistent state,
and two views built at the same moment show the same numbers (the rate windows, for one, are the
exact counts ``sophos_central_rate_limit_calls`` exports, on ``/status`` too).

A snapshot copies the containers it reads (the values in them are frozen), so a view may render
it anywhere, off the event loop included, while probes go on changing the agent's state.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from agent.causes import INVALID_TENANT_ID, TENANT_STATES
from agent.evidence import Evidence
from agent.probes import CredentialState, ProbeResult
from agent.ratebudget import PauseInfo, TenantBudgets
from agent.sophos import Tenant, Token, WhoAmI


@dataclass(frozen=True)
class CredentialSnapshot:
    """One credential: its probe results, tenants, plan, rate windows and pause.

    ``window_calls`` are the calls made in each trailing window, exact at the window's edges;
    ``pause`` is the last 429 pause (still running when ``pause.until`` is after the snapshot's
    ``taken_at``); ``tenant_budgets`` the per-tenant windows, only with ``rate_limit_scope:
    tenant``; ``refresh_interval`` the effective tenant-refresh interval (None: not known).
    """

    name: str
    results: Mapping[tuple[str, str], ProbeResult]
    tenants: Mapping[str, Tenant]
    probed: int
    not_probed: Mapping[str, int]
    """Listed tenants that are not probed, by cause (``TENANT_STATES`` after ``probed``)."""
    whoami: WhoAmI | None
    token: Token | None
    period: float
    period_text: str
    refresh_interval: float | None
    window_calls: Mapping[str, int]
    in_flight: int = 0
    pause: PauseInfo | None = None
    pauses_total: int = 0
    tenant_budgets: TenantBudgets | None = None
    probes: tuple[str, ...] = ()
    """The per-tenant probes configured for every tenant (``tenant_probes``)."""
    tenant_list_unread_pages: int = 0
    """Tenant-list pages beyond the page cap that the last listing did not read (0: none)."""
    watched: tuple[str, ...] = ()
    """Those of them whose API forgets (a family's ``lookback``, the SIEM ones): their last
    success is exported and alerted on (``agent.collection``)."""
    collection_note: str = ""
    """Why the SIEM collection alert cannot warn in time at this period, and what would let
    it; empty when it can (or no such family is probed)."""
    expires_at: float | None = None
    """The credential's configured ``expires_at`` (Unix time), None when not configured."""

    @property
    def tenants_listed(self) -> int:
        """Every tenant the list named, those whose id the agent refused included."""
        return len(self.tenants) + self.not_probed.get(INVALID_TENANT_ID.name, 0)

    def tenant_states(self) -> dict[str, int]:
        """Every listed tenant counted once, by state: ``probed`` or why it is not."""
        return {"probed": self.probed} | {
            state: self.not_probed.get(state, 0) for state in TENANT_STATES[1:]
        }


@dataclass(frozen=True)
class Snapshot:
    """The whole agent: every credential, the rate limits, and (for ``/support``) the evidence."""

    taken_at: float
    credentials: tuple[CredentialSnapshot, ...]
    limits: Mapping[str, int]
    allowance: Mapping[str, int]
    tenant_scope: bool = False
    shard: int = 0
    total_shards: int = 1
    evidence: tuple[Evidence, ...] = field(default=())
    """5XX support evidence, loaded only for the views that show it."""
    state_file_recreated: int = 0
    """Times the state file was found deleted or replaced while running, and recreated."""
    external_url: str | None = None
    """The exporter's URL as users reach it (``external_url``), None when not configured."""

    def credential(self, name: str) -> CredentialSnapshot | None:
        return next((c for c in self.credentials if c.name == name), None)

    def tenant_names(self) -> dict[str, str]:
        return {t.id: t.name for c in self.credentials for t in c.tenants.values()}


def credential_snapshot(
    state: CredentialState,
    *,
    token: Token | None,
    period: float,
    period_text: str,
    refresh_interval: float | None,
    window_calls: Mapping[str, int],
    in_flight: int = 0,
    pause: PauseInfo | None = None,
    pauses_total: int = 0,
    tenant_budgets: TenantBudgets | None = None,
    probes: tuple[str, ...] = (),
    tenant_list_unread_pages: int = 0,
    watched: tuple[str, ...] = (),
    collection_note: str = "",
    expires_at: float | None = None,
) -> CredentialSnapshot:
    """A credential's state copied for a snapshot, with what the wiring knows about it."""
    not_probed = Counter(state.skipped.values())
    if state.refused_ids:
        not_probed[INVALID_TENANT_ID.name] = state.refused_ids
    return CredentialSnapshot(
        name=state.name,
        results=MappingProxyType(dict(state.results)),
        tenants=MappingProxyType(dict(state.tenants)),
        probed=len(state.probed),
        not_probed=MappingProxyType(dict(not_probed)),
        whoami=state.whoami,
        token=token,
        period=period,
        period_text=period_text,
        refresh_interval=refresh_interval,
        window_calls=MappingProxyType(dict(window_calls)),
        in_flight=in_flight,
        pause=pause,
        pauses_total=pauses_total,
        tenant_budgets=tenant_budgets,
        probes=probes,
        tenant_list_unread_pages=tenant_list_unread_pages,
        watched=watched,
        collection_note=collection_note,
        expires_at=expires_at,
    )
