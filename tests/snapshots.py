"""Snapshots of hand-made probe state, for tests of the views that render them.

The running agent builds its snapshot itself (``Agent.snapshot``); tests that start from a
``CredentialState`` build one here, with the same ``credential_snapshot`` the agent uses.
"""

from __future__ import annotations

from collections.abc import Mapping

from agent.probes import CredentialState
from agent.ratebudget import DEFAULT_LIMITS, PauseInfo, allowance_for
from agent.snapshot import Snapshot, credential_snapshot
from agent.sophos import Token

NOW = 1_700_000_100.0


def snapshot_of(
    *states: CredentialState,
    now: float = NOW,
    period: float = 60.0,
    period_text: str = "every 1 min: as configured (probe_interval)",
    window_calls: Mapping[str, int] | None = None,
    limits: Mapping[str, int] = DEFAULT_LIMITS,
    budget_share: float = 0.1,
    pause: PauseInfo | None = None,
    token: Token | None = None,
) -> Snapshot:
    credentials = tuple(
        credential_snapshot(
            state,
            token=token,
            period=period,
            period_text=period_text,
            refresh_interval=None,
            window_calls=window_calls or dict.fromkeys(limits, 0),
            pause=pause,
        )
        for state in states
    )
    return Snapshot(
        taken_at=now,
        credentials=credentials,
        limits=dict(limits),
        allowance=allowance_for(limits, budget_share),
    )
