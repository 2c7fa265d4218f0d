"""Ledgers: the calls of one budget key, counted per trailing window.

Every timestamp here is monotonic seconds (``Clock.monotonic``): a wall-clock step must neither
empty a full window (spending past the allowance) nor keep an empty one full for an hour.

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
``sophos_central_rate_limit_calls``, which promises the calls made in the trailing window. So a
credential's ledger also keeps the admission times of its calls in the longest window
(``CallLog``, eight bytes a call) and ``exact_counts`` counts them with the window's true edges: a
call made at ``t`` counts while ``now - t < window`` (half-open, as the server counts) and not a
moment longer. The log is bounded by the admission itself: it never holds more than the longest
window's allowance, plus the calls restored from the state file, which are known to the second
(rounded up, so a restored call may count up to one second longer than it truly should).

A tenant's ledger (``rate_limit_scope: tenant``) keeps only the bucket counters (16 bytes a
bucket, at most about 100 a window, fewer when calls are sparse) and no exact log: at 10,000
tenants the ledgers must stay small, so its counts are admission's conservative ones.
"""

from __future__ import annotations

import bisect
import math
from array import array
from collections.abc import Iterator, Mapping

from agent.config import WINDOW_SECONDS

MARGIN_SECONDS = 1.0
BUCKETS_PER_WINDOW = 100


def allowance_for(limits: Mapping[str, int], budget_share: float) -> dict[str, int]:
    """The agent's own ceiling per window: ``max(1, floor(budget_share * limit))``.

    The tiny addend keeps float noise (0.29 * 100 = 28.999...) from costing a whole call.
    """
    return {w: max(1, math.floor(budget_share * n + 1e-9)) for w, n in limits.items()}


class WindowCounter:
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

    def buckets(self, now: float) -> Iterator[tuple[float, int]]:
        """``(bucket end, calls)`` of every bucket still counted, oldest first."""
        self._prune(now)
        for i in range(self._head, len(self._keys)):
            yield self._keys[i] * self.width, self._calls[i]

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


class CallLog:
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
        # Out of order: a restored call rounded up past a call made since.
        at = bisect.bisect_right(times, ts, self._head)
        times[at:at] = array("d", [ts] * calls)

    def count(self, now: float, length: float) -> int:
        """Calls made at ``t`` with ``now - t < length``."""
        self._prune(now)
        return len(self._times) - bisect.bisect_right(self._times, now - length, self._head)

    def times(self, now: float) -> Iterator[float]:
        """Every admission time still kept, oldest first."""
        self._prune(now)
        for i in range(self._head, len(self._times)):
            yield self._times[i]

    def __len__(self) -> int:
        return len(self._times) - self._head

    def _prune(self, now: float) -> None:
        times = self._times
        self._head = bisect.bisect_right(times, now - self._keep, self._head)
        if self._head >= self._COMPACT_AT and 2 * self._head >= len(times):
            del times[: self._head]
            self._head = 0


class Ledger:
    """The calls of one budget key: a bucketed counter per window (admission's conservative
    count) and, for a credential key (``exact``), the exact admission times."""

    __slots__ = ("allowance", "log", "windows")

    def __init__(
        self, limits: Mapping[str, int], allowance: Mapping[str, int], margin: float, exact: bool
    ) -> None:
        self.windows = {w: WindowCounter(WINDOW_SECONDS[w], margin) for w in limits}
        self.allowance = allowance
        longest = max((WINDOW_SECONDS[w] for w in limits), default=0)
        self.log: CallLog | None = CallLog(longest) if exact else None

    @property
    def longest_window(self) -> str:
        return max(self.windows, key=lambda w: WINDOW_SECONDS[w])

    def record(self, at: float, calls: int = 1) -> None:
        """``calls`` admitted at monotonic ``at``: they count in every window from now on."""
        for counter in self.windows.values():
            counter.add(at, calls)
        if self.log is not None:
            self.log.add(at, calls)

    def restore_longest(self, at: float, calls: int) -> None:
        """Calls known only to the hour (a tenant's, from the state file): the longest window
        alone may hold them, where an hour more is harmless."""
        self.windows[self.longest_window].add(at, calls)

    def counts(self, now: float) -> dict[str, int]:
        """Calls in each window as admission counts them (up to margin + a bucket longer)."""
        return {w: c.count(now) for w, c in self.windows.items()}

    def exact_counts(self, now: float) -> dict[str, int]:
        """Calls admitted in ``(now - window, now]``; a tenant ledger gives ``counts``."""
        if self.log is None:
            return self.counts(now)
        log = self.log
        return {w: log.count(now, WINDOW_SECONDS[w]) for w in self.windows}

    def wait_for_room(self, now: float) -> float:
        """Seconds until one more call fits every window's allowance (0: now)."""
        wait = 0.0
        for window, counter in self.windows.items():
            wait = max(wait, counter.wait_for_room(now, self.allowance[window]))
        return wait

    def oldest_leaves_at(self, window: str, now: float) -> float | None:
        counter = self.windows.get(window)
        return None if counter is None else counter.oldest_leaves_at(now)

    def empty(self, now: float) -> bool:
        return not any(c.count(now) for c in self.windows.values())

    def buckets(self, now: float) -> int:
        """Buckets held over all windows: bounded, whatever the call rate."""
        for counter in self.windows.values():
            counter.count(now)
        return sum(len(c) for c in self.windows.values())

    def logged(self, now: float) -> int:
        """Admission times held for ``exact_counts``: at most the longest window's allowance."""
        if self.log is None:
            return 0
        self.log.count(now, 0.0)
        return len(self.log)

    def history(self, now: float) -> Iterator[tuple[float, int]]:
        """``(monotonic time, calls)`` of what the longest window still holds, oldest first:
        exact times for a credential key, bucket ends for a tenant key."""
        if self.log is not None:
            for at in self.log.times(now):
                yield at, 1
            return
        yield from self.windows[self.longest_window].buckets(now)
