"""``RateBudget``: one ledger, one pause state and one admission queue per budget key.

This is the composition the rest of the agent talks to; each job is in its own module:
``ledger`` counts the windows, ``admission`` queues the waiting calls, ``ladder`` decides 429
pauses, ``persistence`` keeps both in the state file, ``presentation`` is what the views read.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping

from agent.clock import Clock, Timeline
from agent.config import WINDOW_SECONDS
from agent.ratebudget.admission import PRIORITY_TENANT, AdmissionQueue
from agent.ratebudget.keys import BudgetKey, is_tenant_key, split_key
from agent.ratebudget.ladder import REASON_RETRY_AFTER, KeyPauses, Pause, PauseLadder
from agent.ratebudget.ledger import (
    BUCKETS_PER_WINDOW,
    MARGIN_SECONDS,
    Ledger,
    WindowCounter,
    allowance_for,
)
from agent.ratebudget.persistence import TENANT_PERSIST_SECONDS, BudgetStore
from agent.ratebudget.presentation import BudgetReadout, PauseInfo, TenantBudgets
from agent.statefile import StateFile

log = logging.getLogger("agent.ratebudget")

SUMMARY_MAX_AGE = 5.0
"""How long a per-tenant summary (``tenant_budgets``) is reused before the ledgers are scanned."""


class RateBudget:
    """Window accounting, priority admission and 429 pauses, one ledger per budget key.

    ``budget_share`` is this process's share: a shard passes ``budget_share / total_shards``.
    ``tenant_share`` is the share of a tenant key's windows (default: ``budget_share``): a tenant
    belongs to one shard only, so with ``rate_limit_scope: tenant`` a shard passes the whole
    ``budget_share`` here.
    With a ``store`` every admitted call is written to the state file under ``owner`` and the
    owner's calls of the last day are loaded now, so a restart neither forgets the day's calls nor
    bursts past the minute allowance. Everything is counted on the monotonic clock; ``timeline``
    (default: anchored now) turns it into the wall-clock times that are shown and persisted.
    """

    def __init__(
        self,
        limits: Mapping[str, int],
        budget_share: float,
        clock: Clock,
        store: StateFile | None = None,
        owner: str = "",
        *,
        margin: float = MARGIN_SECONDS,
        rng: random.Random | None = None,
        tenant_share: float | None = None,
        timeline: Timeline | None = None,
    ) -> None:
        _validate(limits, budget_share, margin)
        if tenant_share is not None:
            _validate(limits, tenant_share, margin)
        self._limits = dict(limits)
        self._allowance = allowance_for(limits, budget_share)
        self._tenant_allowance = (
            self._allowance if tenant_share is None else allowance_for(limits, tenant_share)
        )
        self._clock = clock
        self._timeline = timeline or Timeline(clock)
        self._margin = margin
        rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._ladder = PauseLadder(limits, margin, self._timeline, rng)
        self._ledgers: dict[BudgetKey, Ledger] = {}
        self._pauses: dict[BudgetKey, KeyPauses] = {}
        self._queues: dict[BudgetKey, AdmissionQueue] = {}
        self._tenant_keys: dict[str, dict[str, BudgetKey]] = {}
        self._summaries: dict[str, tuple[float, TenantBudgets]] = {}
        self._store = None if store is None else BudgetStore(store, owner, self._timeline)
        if store is not None and self._store is not None:
            self._load(self._store)
            store.on_recreated(self._rewrite_state)

    # -- configuration ---------------------------------------------------------------------

    @property
    def limits(self) -> dict[str, int]:
        """The configured limit of each window (what ``rate_limit_max_calls`` reports)."""
        return dict(self._limits)

    @property
    def allowance(self) -> dict[str, int]:
        """The agent's own ceiling per window."""
        return dict(self._allowance)

    @property
    def tenant_allowance(self) -> dict[str, int]:
        """The agent's own ceiling per window of one tenant key (``rate_limit_scope: tenant``)."""
        return dict(self._tenant_allowance)

    @property
    def margin(self) -> float:
        return self._margin

    @property
    def timeline(self) -> Timeline:
        """The start-up timeline every wall-clock time the budget shows or writes comes from."""
        return self._timeline

    def hold_seconds(self, window: str) -> tuple[float, float]:
        """How long a call counts in ``window``: at least the first value, at most the second."""
        counter = WindowCounter(WINDOW_SECONDS[window], self._margin)
        return counter.hold, counter.hold + counter.width

    # -- admission and pauses --------------------------------------------------------------

    async def acquire(self, key: BudgetKey, priority: int = PRIORITY_TENANT) -> None:
        """Wait until one more call fits every window and no pause holds, then record it.

        Waiters are served lowest ``priority`` first, first come first served within one. A
        cancelled waiter simply leaves the queue.
        """
        queue = self._queues.get(key)
        if queue is None:
            ledger, pauses = self._ledger(key), self._pause_state(key)
            queue = AdmissionQueue(
                self._clock,
                wait_time=lambda now: max(pauses.until - now, ledger.wait_for_room(now)),
                admit=lambda now: self._record(key, ledger, now),
            )
            self._queues[key] = queue
        await queue.acquire(priority)

    def pause(
        self, key: BudgetKey, retry_after: float | None = None, sent_at: float | None = None
    ) -> float:
        """Pause ``key`` after a 429 and return how long from now it is paused.

        ``sent_at`` is the monotonic moment the answered call was admitted (see
        ``PauseLadder.on_429``); ``retry_after`` the seconds its Retry-After asked for.
        """
        ledger, state = self._ledger(key), self._pause_state(key)
        now = self._clock.monotonic()
        new = self._ladder.on_429(
            state, now, retry_after, sent_at, lambda w: ledger.oldest_leaves_at(w, now)
        )
        if self._store is not None:
            self._store.save_pause(key, state.last, state.streak)
        if new and state.last is not None:
            self._log_pause(key, state.last, now)
        return state.remaining(now)

    def note_success(self, key: BudgetKey, sent_at: float | None = None) -> None:
        """A call went through: the next 429 starts the escalation from the first step again.

        ``sent_at`` is the monotonic moment the call was admitted."""
        state = self._pauses.get(key)
        if state is None or not PauseLadder.on_success(state, sent_at):
            return
        if self._store is not None:
            self._store.save_pause(key, state.last, 0)

    def queued(self, key: BudgetKey) -> int:
        """Calls of ``key`` waiting for admission now."""
        queue = self._queues.get(key)
        return 0 if queue is None else queue.waiting

    def pause_remaining(self, key: BudgetKey) -> float:
        """Seconds until ``key``'s 429 pause ends (0.0: not paused)."""
        state = self._pauses.get(key)
        return 0.0 if state is None else state.remaining(self._clock.monotonic())

    # -- presentation ------------------------------------------------------------------------

    def wall_now(self) -> float:
        """Wall-clock seconds now, on the budget's timeline (what its readings are relative to)."""
        return self._timeline.now()

    def credentials(self) -> list[str]:
        """Every credential-level key seen so far (by acquire, pause or the state file), sorted."""
        return sorted(k for k in self._ledgers if not is_tenant_key(k))

    def calls(self, key: BudgetKey) -> dict[str, int]:
        """Calls counted in each trailing window now, in-flight ones included (conservative).

        This is the admission view: a call counts for ``window + margin`` and up to one bucket
        width more. For what the agent really made in the window, see ``exact_calls``.
        """
        ledger = self._ledgers.get(key)
        if ledger is None:
            return dict.fromkeys(self._limits, 0)
        return ledger.counts(self._clock.monotonic())

    def exact_calls(self, key: BudgetKey) -> dict[str, int]:
        """Calls admitted in each trailing window ``(now - window, now]``, in-flight ones included.

        What ``sophos_central_rate_limit_calls`` reports: exact at both edges of every window
        (calls restored after a restart are known to the second, rounded up). A tenant key keeps
        no exact log (memory at 10,000 tenants) and gives ``calls``.
        """
        ledger = self._ledgers.get(key)
        if ledger is None:
            return dict.fromkeys(self._limits, 0)
        return ledger.exact_counts(self._clock.monotonic())

    def stored_buckets(self, key: BudgetKey) -> int:
        """Buckets held for ``key`` over all windows: bounded, whatever the call rate."""
        ledger = self._ledgers.get(key)
        return 0 if ledger is None else ledger.buckets(self._clock.monotonic())

    def logged_calls(self, key: BudgetKey) -> int:
        """Admission times held for ``exact_calls``: at most the longest window's allowance."""
        ledger = self._ledgers.get(key)
        return 0 if ledger is None else ledger.logged(self._clock.monotonic())

    def paused_until(self, key: BudgetKey) -> float:
        """Wall-clock time until which ``key`` is paused after a 429 (0.0: never)."""
        info = self.pause_info(key)
        return info.until if info is not None else 0.0

    def pauses_total(self, key: BudgetKey) -> int:
        """How many 429 pauses ``key`` has had since start."""
        state = self._pauses.get(key)
        return state.total if state is not None else 0

    def pause_info(self, key: BudgetKey) -> PauseInfo | None:
        """The running or last 429 pause of ``key`` in wall-clock time, None if it never had one."""
        state = self._pauses.get(key)
        if state is None or state.last is None:
            return None
        last, wall = state.last, self._timeline.wall
        return PauseInfo(
            wall(last.started), wall(state.until), last.window, last.reason, last.consecutive
        )

    def readout(self, key: BudgetKey, tenants: bool = False) -> BudgetReadout:
        """Everything a view shows of ``key``, read at one moment; with ``tenants`` the summary
        of its per-tenant windows too (``rate_limit_scope: tenant``)."""
        mono = self._clock.monotonic()
        ledger, state = self._ledgers.get(key), self._pauses.get(key)
        zero = dict.fromkeys(self._limits, 0)
        allowance = self._tenant_allowance if is_tenant_key(key) else self._allowance
        return BudgetReadout(
            key=key,
            now=self._timeline.wall(mono),
            calls=zero if ledger is None else ledger.exact_counts(mono),
            admission_calls=zero if ledger is None else ledger.counts(mono),
            allowance=dict(allowance),
            limits=dict(self._limits),
            pause=self.pause_info(key),
            paused=state is not None and state.remaining(mono) > 0,
            pauses_total=0 if state is None else state.total,
            tenant_budgets=self.tenant_budgets(key) if tenants else None,
        )

    def tenant_budgets(self, credential: str, max_age: float = SUMMARY_MAX_AGE) -> TenantBudgets:
        """The busiest tenant's window counts and the paused tenants of ``credential``.

        Tenants whose windows have all emptied (and that are not paused or waited on) are
        forgotten here, with their 429 streak, so tenants that left the list do not keep their
        ledgers. A scan of 10,000 ledgers takes tens of milliseconds, so a summary up to
        ``max_age`` seconds old is reused (a scrape and a ``/status`` view share it).
        """
        cached = self._summaries.get(credential)
        mono = self._clock.monotonic()
        if cached is not None and mono - cached[0] < max_age:
            return cached[1]
        summary = self._scan_tenants(credential, mono)
        self._summaries[credential] = (mono, summary)
        return summary

    # -- internals ---------------------------------------------------------------------------

    def _scan_tenants(self, credential: str, now: float) -> TenantBudgets:
        keys = self._tenant_keys.get(credential, {})
        top = dict.fromkeys(self._limits, 0)
        paused = 0
        idle: list[str] = []
        for tenant_id, key in keys.items():
            counts = self._ledgers[key].counts(now)
            for window, count in counts.items():
                top[window] = max(top[window], count)
            state = self._pauses[key]
            queue = self._queues.get(key)
            if state.remaining(now) > 0:
                paused += 1
            elif not any(counts.values()) and (queue is None or not queue.busy):
                idle.append(tenant_id)
        for tenant_id in idle:
            self._forget(credential, tenant_id)
        return TenantBudgets(max_calls=top, paused=paused, tenants=len(keys))

    def _forget(self, credential: str, tenant_id: str) -> None:
        """A tenant key with nothing counted: drop it, and its streak (a day without a call:
        the next 429 starts the ladder over)."""
        key = self._tenant_keys[credential].pop(tenant_id)
        del self._ledgers[key]
        self._queues.pop(key, None)
        state = self._pauses.pop(key)
        if state.streak and self._store is not None:
            self._store.save_pause(key, state.last, 0)

    def _ledger(self, key: BudgetKey) -> Ledger:
        ledger = self._ledgers.get(key)
        if ledger is None:
            credential, tenant_id = split_key(key)
            allowance = self._tenant_allowance if tenant_id else self._allowance
            ledger = Ledger(self._limits, allowance, self._margin, exact=not tenant_id)
            self._ledgers[key] = ledger
            self._pauses.setdefault(key, KeyPauses())
            if tenant_id:
                self._tenant_keys.setdefault(credential, {})[tenant_id] = key
        return ledger

    def _pause_state(self, key: BudgetKey) -> KeyPauses:
        self._ledger(key)
        return self._pauses[key]

    def _record(self, key: BudgetKey, ledger: Ledger, now: float) -> None:
        """The file first: should it have to be recreated on this write, what is written back
        from the ledger must not hold this call twice."""
        if self._store is not None:
            self._store.record_call(key, now)
        ledger.record(now)

    def _log_pause(self, key: BudgetKey, pause: Pause, now: float) -> None:
        credential, tenant_id = split_key(key)
        info = self.pause_info(key)
        assert info is not None
        log.warning(
            "rate limited (429): pausing for %.0f s: %s",
            pause.until - now,
            info.describe(),
            extra={
                "credential": credential,
                "tenant_id": tenant_id,
                "pause_seconds": round(pause.until - now, 3),
                "window": pause.window,
                "retry_after_sent": pause.reason == REASON_RETRY_AFTER,
                "consecutive": pause.consecutive,
            },
        )

    def _load(self, store: BudgetStore) -> None:
        now = self._clock.monotonic()
        longest = max((WINDOW_SECONDS[w] for w in self._limits), default=0)
        since = now - longest - self._margin - longest / BUCKETS_PER_WINDOW
        for restored in store.load_calls(since - TENANT_PERSIST_SECONDS, now):
            ledger = self._ledger(restored.key)
            if is_tenant_key(restored.key):
                ledger.restore_longest(restored.at, restored.calls)
            else:
                ledger.record(restored.at, restored.calls)
        for key, pause in store.load_pauses(now):
            state = self._pause_state(key)
            state.last = pause
            state.until = max(state.until, pause.until)
            state.streak = pause.consecutive

    def _rewrite_state(self) -> int:
        """The state file was recreated: write back what the ledgers and pauses hold."""
        if self._store is None:
            return 0
        now = self._clock.monotonic()
        calls = [
            (key, at, count)
            for key, ledger in self._ledgers.items()
            for at, count in ledger.history(now)
        ]
        pauses = [(key, state.last, state.streak) for key, state in self._pauses.items()]
        return self._store.rewrite(calls, pauses)


def _validate(limits: Mapping[str, int], budget_share: float, margin: float) -> None:
    if not 0 < budget_share <= 1:
        raise ValueError(f"budget_share must be > 0 and <= 1, got {budget_share}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    for window, limit in limits.items():
        if window not in WINDOW_SECONDS:
            known = ", ".join(WINDOW_SECONDS)
            raise ValueError(f"unknown rate window {window!r} (known: {known})")
        if limit < 1:
            raise ValueError(f"rate limit for window {window} must be >= 1, got {limit}")
