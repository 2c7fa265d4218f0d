"""Per-credential rate-window accounting and admission control.

The agent spends the customer's own Sophos Central rate limits, which their real integrations share.
It must never be the reason those integrations get a 429, so every call is admitted here first:
``await budget.acquire(credential)`` returns only when one more call fits the agent's allowance
(``max(1, floor(budget_share * limit))``) in every window, and records the call at that moment, so
calls still in flight already count.

Windows are counted as the server counts them, at arrival. Arrival is admission plus network delay,
and delays differ: a call held up by a fresh TLS handshake followed by one on a warm connection can
reach the server closer together than we admitted them. So a call keeps counting for
``window + MARGIN_SECONDS`` (plus at most one bucket width, see below) after its admission: as long
as arrival delays vary by less than the margin, no server-side window ever holds more calls than
the allowance. One second covers ordinary latency spread. Its cost is small: 1.7 % of the minute
window, nothing measurable for the hour and day; it halves only the burst rate of the 1 s window,
which never binds a sustained rate under the default limits (10/s is far above 100/min).

Memory is bounded by bucketing: each window keeps at most about ``(window + margin) / width + 1``
buckets of width ``window / BUCKETS_PER_WINDOW``, however many calls are made. A call is filed in
the bucket whose *end* is at or after it, so it leaves the window no earlier than it truly should
(conservative, never an under-count) and at most one bucket width (1 % of the window) later.

That conservative count is right for admission and wrong for the public gauge
``sophos_central_rate_limit_calls``, which promises the calls made in the trailing window. So each
credential also keeps the admission times of its calls in the longest window (``_CallLog``, eight
bytes a call) and ``exact_calls`` counts them with the window's true edges: a call made at ``t``
counts while ``now - t < window`` (half-open, as the server counts) and not a moment longer. The
log is bounded by the admission itself: it never holds more than the longest window's allowance,
plus the calls restored from the state file, which are known to the second (rounded up, so a
restored call may count up to one second longer than it truly should).

Timestamps are wall-clock seconds (``Clock.time``) because they are persisted in the state file and
must mean the same after a restart; only sleeping uses relative durations.

429 pauses
----------
A 429 pauses the key: no call is admitted until the pause ends. A ``Retry-After`` (seconds or HTTP
date) is obeyed as sent, clamped to a day. But for the APIs the agent calls Sophos documents no
``Retry-After`` and no ``X-RateLimit-*`` header, so the normal 429 says only "some window is
full", not which one. A fixed back-off (say two seconds doubling to five minutes) would then keep
hammering a full hour or day window every five minutes, in the customer's own quota, for as long
as it stays full. So without the header the pause escalates with the 429s in a row (no success in
between), each step assuming the next longer window is the exhausted one:

1. 1st 429: the second or minute window. Pause a whole minute plus the margin (61 s): whether
   Sophos counts a sliding or a clock-aligned minute, every call it counted has left by then.
2. 2nd 429 in a row: the hour window. Resume when the hour could have room again, which is the
   later of two moments: the next clock-aligned hour (a fixed window resets there) and the moment
   our own oldest call in the hour leaves it (a sliding window frees a slot then, as far as our
   calls are concerned; from our own ledger). Never sooner than the previous step's minute, never
   later than the hour plus the margin. In steady operation that is "the rest of the clock hour".
3. 3rd and every further 429 in a row: the day window, the same way (next UTC midnight, our own
   oldest call of the day), at least an hour, at most a day.

Each pause gets up to 10 % more (at most a minute) of random jitter so that shards and credentials
do not come back in lockstep. What this guarantees: while a window stays exhausted, the agent
sends at most one call per step into it and then at most one an hour, however long it lasts; a
1 s or 1 min burst of the customer's own integration costs one minute of monitoring. What it
costs: if the minute window is hit twice in a row (a customer job that saturates every minute),
the second pause lasts into the next hour; erring long is the point, the agent is a guest in
that quota. Any success resets the escalation.

Calls in flight together see one overload together: a 429 for a call admitted before the running
pause began neither escalates nor counts as a new pause (``sent_at``), and a success of such a
call does not reset the escalation. Pauses and their streak are kept in the state file
(``rate_pauses``), so a restarted (or crash-looping) agent does not start the ladder over.

Tenant keys
-----------
With ``rate_limit_scope: tenant`` a tenant's calls count against its own key
``credential/tenant_id`` (``tenant_key``). At 10,000 tenants the ledgers must stay small, so a
tenant key keeps only the bucket counters (16 bytes a bucket, at most about 100 a window, fewer
when calls are sparse) and no exact call log: its counts are admission's conservative ones.
Tenant keys are forgotten once all their windows are empty (``tenant_budgets``). In the state file
their calls are written to the hour (``TENANT_PERSIST_SECONDS``): at most 24 rows a tenant a day
instead of one a call, restored into the longest window only, where an hour more is harmless;
their shorter windows start empty after a restart (the probe schedule spreads a tenant's calls
over its period anyway).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import email.utils
import heapq
import itertools
import logging
import math
import random
import time
from array import array
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC

from agent.clock import Clock
from agent.config import DEFAULT_RATE_LIMITS
from agent.config import WINDOW_SECONDS as WINDOW_SECONDS  # re-exported for callers
from agent.statefile import StateFile, StateFileError

log = logging.getLogger(__name__)

DEFAULT_LIMITS = DEFAULT_RATE_LIMITS

MARGIN_SECONDS = 1.0
BUCKETS_PER_WINDOW = 100

PRIORITY_CREDENTIAL = 0
"""token, whoami and tenant_list: everything else depends on them, so they go first."""
PRIORITY_TENANT = 10
PRIORITY_CONFIRMATION = 5
"""A re-probe confirming a failed tenant probe goes ahead of routine tenant probes."""

MAX_PAUSE_SECONDS = float(WINDOW_SECONDS["1d"])
"""A Retry-After longer than the longest window is not believable; it is clamped to a day."""
ESCALATION_MIN_WINDOW_SECONDS = 60
"""Windows shorter than this (the second) are never assumed alone: a minute's pause covers them."""
JITTER_FRACTION = 0.1
JITTER_CAP_SECONDS = 60.0
"""A pause without Retry-After gets up to 10 % more (at most a minute), so that several agents,
shards or credentials do not all come back in the same second."""

REASON_RETRY_AFTER = "retry_after"
REASON_ESCALATION = "escalation"
NO_WINDOW = "none"
"""The ``window`` of a pause whose length Sophos gave in Retry-After: no window is assumed."""

TENANT_KEY_SEPARATOR = "/"
"""Credential names cannot contain it, so ``credential/tenant_id`` keys never collide."""
SUMMARY_MAX_AGE = 5.0
"""How long a per-tenant summary (``tenant_budgets``) is reused before the ledgers are scanned."""
TENANT_PERSIST_SECONDS = 3600
"""Per-tenant calls are written to the state file to the hour (see "Tenant keys" above)."""

_EPSILON = 1e-6


def allowance_for(limits: Mapping[str, int], budget_share: float) -> dict[str, int]:
    """The agent's own ceiling per window: ``max(1, floor(budget_share * limit))``.

    The tiny addend keeps float noise (0.29 * 100 = 28.999...) from costing a whole call.
    """
    return {w: max(1, math.floor(budget_share * n + 1e-9)) for w, n in limits.items()}


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value, or None when it says nothing usable.

    Accepts delta-seconds (``"30"``, also ``"1.5"``) and an HTTP date
    (``"Wed, 21 Oct 2015 07:28:00 GMT"``) relative to ``now`` (wall-clock seconds). Garbage,
    negative seconds and dates already past give None, so the caller falls back to its own back-off
    instead of retrying at once.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        return _seconds_until_http_date(text, now)
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


def _seconds_until_http_date(text: str, now: float) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = when.timestamp() - now
    return delta if delta >= 0 else None


class _WindowCounter:
    """Calls in one trailing window, in fixed-width buckets keyed by their end time.

    Two parallel int64 arrays (bucket key, calls) with a pruned head index: 16 bytes a bucket,
    which matters when every tenant has its own windows (``rate_limit_scope: tenant``).
    """

    __slots__ = ("_calls", "_head", "_keys", "_total", "hold", "width")

    _COMPACT_AT = 32

    def __init__(self, length: float, margin: float) -> None:
        self.width = length / BUCKETS_PER_WINDOW
        self.hold = length + margin
        self._keys: array[int] = array("q")  # bucket keys, ascending
        self._calls: array[int] = array("q")
        self._head = 0
        self._total = 0

    def add(self, ts: float, calls: int) -> None:
        """File ``calls`` made at ``ts``; an out-of-order ``ts`` joins the newest bucket."""
        key = math.ceil(ts / self.width)
        if len(self._keys) > self._head and key <= self._keys[-1]:
            self._calls[-1] += calls
        else:
            self._keys.append(key)
            self._calls.append(calls)
        self._total += calls

    def count(self, now: float) -> int:
        self._prune(now)
        return self._total

    def wait_for_room(self, now: float, allowance: int) -> float:
        """Seconds until one more call fits: when enough of the oldest calls have left."""
        self._prune(now)
        excess = self._total + 1 - allowance
        if excess <= 0:
            return 0.0
        leaving = 0
        for i in range(self._head, len(self._keys)):
            leaving += self._calls[i]
            if leaving >= excess:
                return self._leaves_at(self._keys[i]) - now
        return self._leaves_at(self._keys[-1]) - now  # pragma: no cover - loop returns

    def oldest_leaves_at(self, now: float) -> float | None:
        """When the oldest call still counted leaves the window (None: nothing counted)."""
        self._prune(now)
        if self._head == len(self._keys):
            return None
        return self._leaves_at(self._keys[self._head])

    def __len__(self) -> int:
        return len(self._keys) - self._head

    def _leaves_at(self, key: int) -> float:
        return key * self.width + self.hold

    def _prune(self, now: float) -> None:
        keys, head = self._keys, self._head
        size = len(keys)
        if head == size or keys[head] * self.width + self.hold > now:
            return  # the common case, kept cheap: scans over 10,000 tenant ledgers call this
        while head < size and keys[head] * self.width + self.hold <= now:
            self._total -= self._calls[head]
            head += 1
        if head == size or (head >= self._COMPACT_AT and 2 * head >= size):
            del keys[:head]
            del self._calls[:head]
            head = 0
        self._head = head


class _CallLog:
    """Admission times of the calls in the trailing ``keep`` seconds, oldest first.

    One sorted array of floats for all windows: the exact count of a window is one binary search.
    The pruned head is only an index until it is half of the array, so pruning is amortised O(1).
    """

    _COMPACT_AT = 1024

    def __init__(self, keep: float) -> None:
        self._keep = keep
        self._times: array[float] = array("d")
        self._head = 0

    def add(self, ts: float, calls: int = 1) -> None:
        times = self._times
        if len(times) == self._head or ts >= times[-1]:
            times.extend([ts] * calls)
            return
        # Out of order: a restored call rounded up past now, or a wall clock stepped back.
        at = bisect.bisect_right(times, ts, self._head)
        times[at:at] = array("d", [ts] * calls)

    def count(self, now: float, length: float) -> int:
        """Calls made at ``t`` with ``now - t < length``."""
        self._prune(now)
        return len(self._times) - bisect.bisect_right(self._times, now - length, self._head)

    def __len__(self) -> int:
        return len(self._times) - self._head

    def _prune(self, now: float) -> None:
        times = self._times
        self._head = bisect.bisect_right(times, now - self._keep, self._head)
        if self._head >= self._COMPACT_AT and 2 * self._head >= len(times):
            del times[: self._head]
            self._head = 0


_Waiter = tuple[int, int, "asyncio.Future[None]"]


def tenant_key(credential: str, tenant_id: str) -> str:
    """The budget key of one tenant's own windows (``rate_limit_scope: tenant``)."""
    return f"{credential}{TENANT_KEY_SEPARATOR}{tenant_id}"


def split_key(key: str) -> tuple[str, str]:
    """``(credential, tenant_id)`` of a budget key; the tenant id is "" for a credential key."""
    credential, _, tenant_id = key.partition(TENANT_KEY_SEPARATOR)
    return credential, tenant_id


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, ..., 11th, 12th, 13th, 21st."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


@dataclass(frozen=True)
class PauseInfo:
    """The running, or last, 429 pause of one budget key: for metrics, the log and ``/status``.

    ``window`` is the window assumed exhausted (``"none"`` when Retry-After said how long),
    ``reason`` is ``retry_after`` or ``escalation``, ``consecutive`` the 429s in a row without a
    success in between that led to it.
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


@dataclass
class _Credential:
    windows: dict[str, _WindowCounter]
    log: _CallLog | None
    waiters: list[_Waiter] = field(default_factory=list)
    dispatcher: asyncio.Task[None] | None = None
    paused_until: float = 0.0
    streak: int = 0
    pauses: int = 0
    last_pause: PauseInfo | None = None


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


class RateBudget:
    """Window accounting, priority admission and 429 pauses, one ledger per credential.

    ``budget_share`` is this process's share: a shard passes ``budget_share / total_shards``.
    ``tenant_share`` is the share of a tenant key's windows (default: ``budget_share``): a tenant
    belongs to one shard only, so with ``rate_limit_scope: tenant`` a shard passes the whole
    ``budget_share`` here.
    With a ``store`` every admitted call is written to the state file under ``owner`` and the
    owner's calls of the last day are loaded now, so a restart neither forgets the day's calls nor
    bursts past the minute allowance.
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
        self._store = store
        self._owner = owner
        self._margin = margin
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._credentials: dict[str, _Credential] = {}
        self._tenants: dict[str, dict[str, _Credential]] = {}
        self._summaries: dict[str, tuple[float, TenantBudgets]] = {}
        self._seq = itertools.count()
        self._ladder = _escalation_ladder(limits)
        if store is not None:
            store.ensure_schema(_PAUSE_SCHEMA)
            self._load(store)

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

    def hold_seconds(self, window: str) -> tuple[float, float]:
        """How long a call counts in ``window``: at least the first value, at most the second."""
        counter = _WindowCounter(WINDOW_SECONDS[window], self._margin)
        return counter.hold, counter.hold + counter.width

    def credentials(self) -> list[str]:
        """Every credential-level key seen so far (by acquire, pause or the state file), sorted."""
        return sorted(k for k in self._credentials if TENANT_KEY_SEPARATOR not in k)

    def calls(self, credential: str) -> dict[str, int]:
        """Calls counted in each trailing window now, in-flight ones included (conservative).

        This is the admission view: a call counts for ``window + margin`` and up to one bucket
        width more. For what the agent really made in the window, see ``exact_calls``.
        """
        cred = self._credentials.get(credential)
        if cred is None:
            return dict.fromkeys(self._limits, 0)
        now = self._clock.time()
        return {w: c.count(now) for w, c in cred.windows.items()}

    def exact_calls(self, credential: str) -> dict[str, int]:
        """Calls admitted in each trailing window ``(now - window, now]``, in-flight ones included.

        What ``sophos_central_rate_limit_calls`` reports: exact at both edges of every window
        (calls restored after a restart are known to the second, rounded up).
        """
        cred = self._credentials.get(credential)
        if cred is None:
            return dict.fromkeys(self._limits, 0)
        if cred.log is None:  # a tenant key keeps no exact log (memory at 10,000 tenants)
            return self.calls(credential)
        now = self._clock.time()
        return {w: cred.log.count(now, WINDOW_SECONDS[w]) for w in self._limits}

    def stored_buckets(self, credential: str) -> int:
        """Buckets held for ``credential`` over all windows: bounded, whatever the call rate."""
        cred = self._credentials.get(credential)
        if cred is None:
            return 0
        now = self._clock.time()
        for counter in cred.windows.values():
            counter.count(now)
        return sum(len(c) for c in cred.windows.values())

    def logged_calls(self, credential: str) -> int:
        """Admission times held for ``exact_calls``: at most the longest window's allowance."""
        cred = self._credentials.get(credential)
        if cred is None or cred.log is None:
            return 0
        cred.log.count(self._clock.time(), 0.0)
        return len(cred.log)

    def paused_until(self, credential: str) -> float:
        """Wall-clock time until which ``credential`` is paused after a 429 (0.0: never)."""
        cred = self._credentials.get(credential)
        return cred.paused_until if cred is not None else 0.0

    def pauses_total(self, credential: str) -> int:
        """How many 429 pauses ``credential`` has had since start."""
        cred = self._credentials.get(credential)
        return cred.pauses if cred is not None else 0

    async def acquire(self, credential: str, priority: int = PRIORITY_TENANT) -> None:
        """Wait until one more call fits every window and no pause holds, then record it.

        Waiters are served lowest ``priority`` first, first come first served within one. A
        cancelled waiter simply leaves the queue.
        """
        cred = self._credential(credential)
        now = self._clock.time()
        if not cred.waiters and self._wait_time(cred, now) <= 0:
            self._record(credential, cred, now)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(cred.waiters, (priority, next(self._seq), fut))
        if cred.dispatcher is None:
            cred.dispatcher = asyncio.create_task(self._dispatch(credential, cred))
        await fut

    def pause_info(self, credential: str) -> PauseInfo | None:
        """The running or last 429 pause of ``credential``, None if it never had one."""
        cred = self._credentials.get(credential)
        return cred.last_pause if cred is not None else None

    def pause(
        self, credential: str, retry_after: float | None = None, sent_at: float | None = None
    ) -> float:
        """Pause ``credential`` after a 429 and return how long from now it is paused.

        ``retry_after`` (seconds, see ``parse_retry_after``) is honoured when given, clamped to
        a day. Without it the pause escalates with the 429s in a row (see the module docstring).
        ``sent_at`` is when the answered call was admitted: a 429 for a call sent before the
        running pause began is the same overload seen late (calls were in flight together), so it
        neither escalates nor counts as a new pause; only its Retry-After may lengthen the pause.
        A pause never shortens one that is already running.
        """
        cred = self._credential(credential)
        now = self._clock.time()
        last = cred.last_pause
        if sent_at is not None and last is not None and sent_at <= last.started:
            if retry_after is not None and now + _clamp(retry_after) > cred.paused_until:
                cred.paused_until = now + _clamp(retry_after)
                cred.last_pause = dataclasses.replace(last, until=cred.paused_until)
                self._save_pause(credential, cred)
            return max(0.0, cred.paused_until - now)
        cred.streak += 1
        cred.pauses += 1
        if retry_after is not None and retry_after >= 0:
            length, window, reason = _clamp(retry_after), NO_WINDOW, REASON_RETRY_AFTER
        else:
            window = self._ladder[min(cred.streak, len(self._ladder)) - 1]
            length, reason = self._escalation_pause(cred, window, now), REASON_ESCALATION
        cred.paused_until = max(cred.paused_until, now + length)
        cred.last_pause = PauseInfo(now, cred.paused_until, window, reason, cred.streak)
        self._save_pause(credential, cred)
        name, tenant_id = split_key(credential)
        log.warning(
            "rate limited (429): pausing for %.0f s: %s",
            cred.paused_until - now,
            cred.last_pause.describe(),
            extra={
                "credential": name,
                "tenant_id": tenant_id,
                "pause_seconds": round(cred.paused_until - now, 3),
                "window": window,
                "retry_after_sent": reason == REASON_RETRY_AFTER,
                "consecutive": cred.streak,
            },
        )
        return cred.paused_until - now

    def note_success(self, credential: str, sent_at: float | None = None) -> None:
        """A call went through: the next 429 starts the escalation from the first step again.

        A success of a call sent before the last pause began says nothing about now, so it is
        ignored when ``sent_at`` shows that.
        """
        cred = self._credentials.get(credential)
        if cred is None or cred.streak == 0:
            return
        last = cred.last_pause
        if sent_at is not None and last is not None and sent_at <= last.started:
            return
        cred.streak = 0
        self._save_pause(credential, cred)

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
        summary = self._scan_tenants(credential)
        self._summaries[credential] = (mono, summary)
        return summary

    def _scan_tenants(self, credential: str) -> TenantBudgets:
        now = self._clock.time()
        ledgers = self._tenants.get(credential, {})
        top = dict.fromkeys(self._limits, 0)
        paused = 0
        idle: list[str] = []
        for tenant_id, cred in ledgers.items():
            counts = {w: c.count(now) for w, c in cred.windows.items()}
            for window, count in counts.items():
                if count > top[window]:
                    top[window] = count
            if cred.paused_until > now:
                paused += 1
            elif not any(counts.values()) and not cred.waiters:
                idle.append(tenant_id)
        for tenant_id in idle:
            key = tenant_key(credential, tenant_id)
            cred = ledgers.pop(tenant_id)
            del self._credentials[key]
            if cred.streak:  # a day without a call: the next 429 starts the ladder over
                cred.streak = 0
                self._save_pause(key, cred)
        return TenantBudgets(max_calls=top, paused=paused, tenants=len(ledgers))

    def _escalation_pause(self, cred: _Credential, window: str, now: float) -> float:
        """Seconds until ``window`` could have room again, with jitter (see the docstring)."""
        length = WINDOW_SECONDS[window]
        step = self._ladder.index(window)
        end = now + length + self._margin
        if step > 0:
            floor = now + WINDOW_SECONDS[self._ladder[step - 1]] + self._margin
            boundary = (math.floor(now / length) + 1) * length
            own = cred.windows[window].oldest_leaves_at(now) if window in cred.windows else None
            end = min(end, max(floor, boundary, own or 0.0))
        pause = end - now
        return pause + self._rng.uniform(0.0, min(JITTER_FRACTION * pause, JITTER_CAP_SECONDS))

    def _credential(self, credential: str) -> _Credential:
        cred = self._credentials.get(credential)
        if cred is None:
            windows = {w: _WindowCounter(WINDOW_SECONDS[w], self._margin) for w in self._limits}
            longest = max((WINDOW_SECONDS[w] for w in self._limits), default=0)
            name, tenant_id = split_key(credential)
            cred = _Credential(windows=windows, log=None if tenant_id else _CallLog(longest))
            self._credentials[credential] = cred
            if tenant_id:
                self._tenants.setdefault(name, {})[tenant_id] = cred
        return cred

    def _wait_time(self, cred: _Credential, now: float) -> float:
        wait = cred.paused_until - now
        allowance = self._allowance if cred.log is not None else self._tenant_allowance
        for window, counter in cred.windows.items():
            wait = max(wait, counter.wait_for_room(now, allowance[window]))
        return wait

    def _record(self, credential: str, cred: _Credential, now: float) -> None:
        for counter in cred.windows.values():
            counter.add(now, 1)
        if cred.log is not None:
            cred.log.add(now)
        if self._store is not None:
            if cred.log is None:  # a tenant key: to the hour, for its day window
                now = math.ceil(now / TENANT_PERSIST_SECONDS) * TENANT_PERSIST_SECONDS
            self._store.record_call(self._owner, credential, now)

    async def _dispatch(self, credential: str, cred: _Credential) -> None:
        """Admit queued waiters in order, sleeping on the clock until the head one fits.

        Only the wait computed from the ledger is slept; nothing polls. The wait can only grow
        while sleeping (a pause, a call recorded meanwhile), so it is recomputed on waking.
        """
        try:
            while True:
                while cred.waiters and cred.waiters[0][2].done():
                    heapq.heappop(cred.waiters)
                if not cred.waiters:
                    return
                now = self._clock.time()
                wait = self._wait_time(cred, now)
                if wait > 0:
                    await self._clock.sleep(wait + _EPSILON)
                    continue
                fut = heapq.heappop(cred.waiters)[2]
                self._record(credential, cred, now)
                fut.set_result(None)
        except BaseException as exc:
            _fail_waiters(cred, exc)
            raise
        finally:
            cred.dispatcher = None

    def _load(self, store: StateFile) -> None:
        longest = max((WINDOW_SECONDS[w] for w in self._limits), default=0)
        since = self._clock.time() - longest - self._margin - longest / BUCKETS_PER_WINDOW
        since -= TENANT_PERSIST_SECONDS
        for credential, second, calls in store.load_calls(self._owner, since):
            cred = self._credential(credential)
            if cred.log is None:
                # Written to the hour: only the longest window may hold it (a little longer).
                longest_window = max(cred.windows, key=lambda w: WINDOW_SECONDS[w])
                cred.windows[longest_window].add(float(second), calls)
                continue
            for counter in cred.windows.values():
                counter.add(float(second), calls)
            cred.log.add(float(second), calls)
        self._load_pauses(store)

    def _load_pauses(self, store: StateFile) -> None:
        """Pauses and 429 streaks survive a restart: a crash-looping agent must not hammer."""
        try:
            rows = store.execute(
                "SELECT key, started, until, window, reason, consecutive FROM rate_pauses"
                " WHERE owner = ?",
                (self._owner,),
            )
        except StateFileError:
            return
        for key, started, until, window, reason, consecutive in rows:
            cred = self._credential(str(key))
            info = PauseInfo(
                float(started), float(until), str(window), str(reason), int(consecutive)
            )
            cred.last_pause = info
            cred.paused_until = max(cred.paused_until, info.until)
            cred.streak = info.consecutive

    def _save_pause(self, key: str, cred: _Credential) -> None:
        """Write the key's pause and streak (a 429 or the first success after: rare)."""
        info = cred.last_pause
        if self._store is None or info is None:
            return
        with contextlib.suppress(StateFileError):
            if cred.streak == 0:
                self._store.execute(
                    "DELETE FROM rate_pauses WHERE owner = ? AND key = ?", (self._owner, key)
                )
                return
            self._store.execute(
                "INSERT OR REPLACE INTO rate_pauses"
                " (owner, key, started, until, window, reason, consecutive)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (self._owner, key, info.started, info.until, info.window, info.reason, cred.streak),
            )


_PAUSE_SCHEMA = """
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


def _utc_day(ts: float) -> int:
    return math.floor(ts / 86400)


def _clamp(retry_after: float) -> float:
    return min(retry_after, MAX_PAUSE_SECONDS)


def _escalation_ladder(limits: Mapping[str, int]) -> list[str]:
    """The windows a 1st, 2nd, 3rd ... 429 without Retry-After assume exhausted, shortest first."""
    ordered = sorted(limits, key=lambda w: WINDOW_SECONDS[w])
    ladder = [w for w in ordered if WINDOW_SECONDS[w] >= ESCALATION_MIN_WINDOW_SECONDS]
    return ladder or ordered[-1:]


def _fail_waiters(cred: _Credential, exc: BaseException) -> None:
    """The dispatcher is going away (cancelled at shutdown, or a bug): nobody may hang on it."""
    waiters, cred.waiters = cred.waiters, []
    for _, _, fut in waiters:
        if fut.done():
            continue
        if isinstance(exc, asyncio.CancelledError):
            fut.cancel()
        else:
            fut.set_exception(exc)


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
