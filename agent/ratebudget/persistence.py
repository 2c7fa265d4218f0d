"""What the rate budget keeps in the state file, so that a restart neither forgets the day's calls
nor starts the 429 ladder over.

Every admitted call is written as it is admitted (``rate_calls``, one UPSERT), and every pause
with its streak (``rate_pauses``), under the process's ``owner`` (shards may share one file).
The file holds wall-clock seconds, because they must mean the same to the next process; the budget
counts on the monotonic clock. Writing, a monotonic moment becomes wall time through the start-up
``Timeline`` (a wall-clock step while running changes nothing written); loading, a wall timestamp
becomes a moment on the new process's monotonic clock through its own timeline. A persisted time
later than now (the wall clock was stepped back between two runs) is taken as now: a call cannot
have been made in the future, and it must not keep a window full for the length of the step.

Tenant keys (``rate_limit_scope: tenant``) are written to the hour (``TENANT_PERSIST_SECONDS``):
at most 24 rows a tenant a day instead of one a call, restored into the longest window only, where
an hour more is harmless; their shorter windows start empty after a restart (the probe schedule
spreads a tenant's calls over its period anyway).

When the state file is deleted or replaced under the running agent, the state file recreates it
and calls ``rewrite``: this owner's rows are replaced by what its ledgers hold now, so a restart
after that still sees every call of the day.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from dataclasses import dataclass

from agent.clock import Timeline
from agent.ratebudget.keys import BudgetKey, is_tenant_key
from agent.ratebudget.ladder import Pause
from agent.statefile import StateFile, StateFileError

TENANT_PERSIST_SECONDS = 3600
"""Per-tenant calls are written to the state file to the hour (see the module docstring)."""

PAUSE_SCHEMA = """
CREATE TABLE IF NOT EXISTS rate_pauses (
    owner TEXT NOT NULL,
    key TEXT NOT NULL,
    started REAL NOT NULL,
    until REAL NOT NULL,
    window TEXT NOT NULL,
    reason TEXT NOT NULL,
    consecutive INTEGER NOT NULL,
    PRIMARY KEY (owner, key)
) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class RestoredCalls:
    """Calls of one key loaded from the state file, at monotonic ``at`` (to the second; a
    tenant key's to the hour)."""

    key: BudgetKey
    at: float
    calls: int


class BudgetStore:
    """The rate budget's rows in the state file, for one ``owner``."""

    def __init__(self, store: StateFile, owner: str, timeline: Timeline) -> None:
        self._store = store
        self._owner = owner
        self._timeline = timeline
        store.ensure_schema(PAUSE_SCHEMA)

    def record_call(self, key: BudgetKey, at: float) -> None:
        """One call admitted at monotonic ``at``; never raises (the ledger still holds it)."""
        wall = self._timeline.wall(at)
        if is_tenant_key(key):
            wall = math.ceil(wall / TENANT_PERSIST_SECONDS) * TENANT_PERSIST_SECONDS
        self._store.record_call(self._owner, key, wall)

    def load_calls(self, since: float, now: float) -> list[RestoredCalls]:
        """This owner's calls admitted after monotonic ``since``, none later than ``now``."""
        rows = self._store.load_calls(self._owner, self._timeline.wall(since))
        return [
            RestoredCalls(key, min(self._timeline.mono(float(second)), now), calls)
            for key, second, calls in rows
        ]

    def load_pauses(self, now: float) -> list[tuple[BudgetKey, Pause]]:
        """This owner's pauses; one that started "in the future" (the wall clock was stepped
        back between two runs) is moved to start now, keeping its length."""
        try:
            rows = self._store.execute(
                "SELECT key, started, until, window, reason, consecutive FROM rate_pauses"
                " WHERE owner = ?",
                (self._owner,),
            )
        except StateFileError:
            return []
        pauses = []
        for key, started, until, window, reason, consecutive in rows:
            begin, end = self._timeline.mono(float(started)), self._timeline.mono(float(until))
            if begin > now:
                begin, end = now, now + (end - begin)
            pauses.append((str(key), Pause(begin, end, str(window), str(reason), int(consecutive))))
        return pauses

    def save_pause(self, key: BudgetKey, pause: Pause | None, streak: int) -> None:
        """Write the key's pause and streak (a 429 or the first success after: rare)."""
        if pause is None:
            return
        with contextlib.suppress(StateFileError):
            self._write_pause(key, pause, streak)

    def rewrite(
        self,
        calls: Iterable[tuple[BudgetKey, float, int]],
        pauses: Iterable[tuple[BudgetKey, Pause | None, int]],
    ) -> int:
        """Replace this owner's rows by ``calls`` (key, monotonic time, calls) and ``pauses``
        (key, pause, streak), in one transaction; returns the calls written."""
        rows: dict[tuple[BudgetKey, int], int] = {}
        for key, at, count in calls:
            wall = self._timeline.wall(at)
            if is_tenant_key(key):
                wall = math.ceil(wall / TENANT_PERSIST_SECONDS) * TENANT_PERSIST_SECONDS
            second = math.ceil(wall)
            rows[(key, second)] = rows.get((key, second), 0) + count
        owner = self._owner
        with self._store.transaction() as conn:
            conn.execute("DELETE FROM rate_calls WHERE owner = ?", (owner,))
            conn.execute("DELETE FROM rate_pauses WHERE owner = ?", (owner,))
            conn.executemany(
                "INSERT INTO rate_calls (owner, credential, second, calls) VALUES (?, ?, ?, ?)",
                [(owner, key, second, count) for (key, second), count in rows.items()],
            )
            for key, pause, streak in pauses:
                if pause is not None and streak:
                    conn.execute(_INSERT_PAUSE, self._pause_row(key, pause, streak))
        return sum(rows.values())

    def _write_pause(self, key: BudgetKey, pause: Pause, streak: int) -> None:
        if streak == 0:
            self._store.execute(
                "DELETE FROM rate_pauses WHERE owner = ? AND key = ?", (self._owner, key)
            )
            return
        self._store.execute(_INSERT_PAUSE, self._pause_row(key, pause, streak))

    def _pause_row(self, key: BudgetKey, pause: Pause, streak: int) -> tuple[object, ...]:
        wall = self._timeline.wall
        return (
            self._owner,
            key,
            wall(pause.started),
            wall(pause.until),
            pause.window,
            pause.reason,
            streak,
        )


_INSERT_PAUSE = (
    "INSERT OR REPLACE INTO rate_pauses"
    " (owner, key, started, until, window, reason, consecutive)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
