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
"""

from __future__ import annotations

import asyncio
import bisect
import email.utils
import heapq
import itertools
import logging
import math
import random
from array import array
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC
from typing import TYPE_CHECKING

from agent.clock import Clock
from agent.config import DEFAULT_RATE_LIMITS
from agent.config import WINDOW_SECONDS as WINDOW_SECONDS  # re-exported for callers

if TYPE_CHECKING:
    from agent.statefile import StateFile

log = logging.getLogger(__name__)

DEFAULT_LIMITS = DEFAULT_RATE_LIMITS

MARGIN_SECONDS = 1.0
BUCKETS_PER_WINDOW = 100

PRIORITY_CREDENTIAL = 0
"""token, whoami and tenant_list: everything else depends on them, so they go first."""
PRIORITY_TENANT = 10
PRIORITY_CONFIRMATION = 5
"""A re-probe confirming a failed tenant probe goes ahead of routine tenant probes."""

BACKOFF_BASE_SECONDS = 2.0
BACKOFF_CAP_SECONDS = 300.0
MAX_PAUSE_SECONDS = float(WINDOW_SECONDS["1d"])
"""A Retry-After longer than the longest window is not believable; it is clamped to a day."""

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
    """Calls in one trailing window, in fixed-width buckets keyed by their end time."""

    def __init__(self, length: float, margin: float) -> None:
        self.width = length / BUCKETS_PER_WINDOW
        self.hold = length + margin
        self._buckets: deque[list[int]] = deque()  # [bucket key, calls]; keys ascending
        self._total = 0

    def add(self, ts: float, calls: int) -> None:
        """File ``calls`` made at ``ts``; an out-of-order ``ts`` joins the newest bucket."""
        key = math.ceil(ts / self.width)
        if self._buckets and key <= self._buckets[-1][0]:
            self._buckets[-1][1] += calls
        else:
            self._buckets.append([key, calls])
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
        for key, calls in self._buckets:
            leaving += calls
            if leaving >= excess:
                return self._leaves_at(key) - now
        return self._leaves_at(self._buckets[-1][0]) - now  # pragma: no cover - loop returns

    def __len__(self) -> int:
        return len(self._buckets)

    def _leaves_at(self, key: int) -> float:
        return key * self.width + self.hold

    def _prune(self, now: float) -> None:
        while self._buckets and self._leaves_at(self._buckets[0][0]) <= now:
            self._total -= self._buckets.popleft()[1]


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


@dataclass
class _Credential:
    windows: dict[str, _WindowCounter]
    log: _CallLog
    waiters: list[_Waiter] = field(default_factory=list)
    dispatcher: asyncio.Task[None] | None = None
    paused_until: float = 0.0
    streak: int = 0
    pauses: int = 0


class RateBudget:
    """Window accounting, priority admission and 429 pauses, one ledger per credential.

    ``budget_share`` is this process's share: a shard passes ``budget_share / total_shards``.
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
    ) -> None:
        _validate(limits, budget_share, margin)
        self._limits = dict(limits)
        self._allowance = allowance_for(limits, budget_share)
        self._clock = clock
        self._store = store
        self._owner = owner
        self._margin = margin
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._credentials: dict[str, _Credential] = {}
        self._seq = itertools.count()
        if store is not None:
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
    def margin(self) -> float:
        return self._margin

    def hold_seconds(self, window: str) -> tuple[float, float]:
        """How long a call counts in ``window``: at least the first value, at most the second."""
        counter = _WindowCounter(WINDOW_SECONDS[window], self._margin)
        return counter.hold, counter.hold + counter.width

    def credentials(self) -> list[str]:
        """Every credential seen so far (by acquire, pause or the state file), sorted."""
        return sorted(self._credentials)

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
        if cred is None:
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

    def pause(self, credential: str, retry_after: float | None = None) -> float:
        """Pause ``credential`` after a 429 and return how long.

        ``retry_after`` (seconds, see ``parse_retry_after``) is honoured when given. Otherwise the
        pause is exponential in the number of consecutive 429s, ``BACKOFF_BASE_SECONDS`` doubling up
        to ``BACKOFF_CAP_SECONDS``, with "equal jitter" (a random point in the upper half) so that
        several agents or credentials do not come back in lockstep. A pause never shortens one that
        is already running.
        """
        cred = self._credential(credential)
        cred.streak += 1
        cred.pauses += 1
        if retry_after is not None and retry_after >= 0:
            length = min(retry_after, MAX_PAUSE_SECONDS)
        else:
            length = self._backoff(cred.streak)
        cred.paused_until = max(cred.paused_until, self._clock.time() + length)
        log.warning(
            "rate limited (429): pausing credential=%s for %.1fs (consecutive=%d)",
            credential,
            length,
            cred.streak,
        )
        return length

    def note_success(self, credential: str) -> None:
        """A call went through: the next 429 starts the back-off from the base again."""
        cred = self._credentials.get(credential)
        if cred is not None:
            cred.streak = 0

    def _backoff(self, streak: int) -> float:
        ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2.0 ** min(streak - 1, 32))
        return ceiling / 2 + self._rng.uniform(0.0, ceiling / 2)

    def _credential(self, credential: str) -> _Credential:
        cred = self._credentials.get(credential)
        if cred is None:
            windows = {w: _WindowCounter(WINDOW_SECONDS[w], self._margin) for w in self._limits}
            longest = max((WINDOW_SECONDS[w] for w in self._limits), default=0)
            cred = _Credential(windows=windows, log=_CallLog(longest))
            self._credentials[credential] = cred
        return cred

    def _wait_time(self, cred: _Credential, now: float) -> float:
        wait = cred.paused_until - now
        for window, counter in cred.windows.items():
            wait = max(wait, counter.wait_for_room(now, self._allowance[window]))
        return wait

    def _record(self, credential: str, cred: _Credential, now: float) -> None:
        for counter in cred.windows.values():
            counter.add(now, 1)
        cred.log.add(now)
        if self._store is not None:
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
        for credential, second, calls in store.load_calls(self._owner, since):
            cred = self._credential(credential)
            for counter in cred.windows.values():
                counter.add(float(second), calls)
            cred.log.add(float(second), calls)


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
