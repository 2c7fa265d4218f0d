"""Admission: the queue of calls waiting for room in one budget key's windows.

``AdmissionQueue.acquire`` returns only when one more call fits (the budget's ``wait_time`` is
zero) and records it at that moment (``admit``), so calls still in flight already count. Waiters
are served lowest priority first, first come first served within one; a newcomer never overtakes
a queued waiter, even when room appears just as it arrives. Nothing polls: one dispatcher task per
key sleeps (on the monotonic clock) exactly as long as the ledger says, and recomputes on waking.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable

from agent.clock import Clock

PRIORITY_CREDENTIAL = 0
"""token, whoami and the first tenant-list page: everything else depends on them, so they go
first."""
PRIORITY_CONFIRMATION = 5
"""A re-probe confirming a failed tenant probe goes ahead of routine tenant probes."""
PRIORITY_TENANT = 10
"""Routine tenant probes, and the tenant-list pages after the first, which compete with them
first come first served: a long tenant list never takes the whole budget."""

_EPSILON = 1e-6
"""A wait this short is none: wall-clock readings of a pause's end round to about a microsecond,
and waiting for one on top of a one-second margin would protect nothing."""

_Waiter = tuple[int, int, "asyncio.Future[None]"]
WaitTime = Callable[[float], float]
"""Seconds from monotonic ``now`` until one more call fits (0 or less: now)."""
Admit = Callable[[float], None]
"""Record one call admitted at monotonic ``now``."""


class AdmissionQueue:
    """Waiting calls of one budget key and the task that admits them in order."""

    __slots__ = ("_admit", "_clock", "_seq", "_wait_time", "dispatcher", "waiters")

    def __init__(self, clock: Clock, wait_time: WaitTime, admit: Admit) -> None:
        self._clock = clock
        self._wait_time = wait_time
        self._admit = admit
        self._seq = itertools.count()
        self.waiters: list[_Waiter] = []
        self.dispatcher: asyncio.Task[None] | None = None

    async def acquire(self, priority: int) -> None:
        """Wait for room, then record the call. A cancelled waiter simply leaves the queue."""
        now = self._clock.monotonic()
        if not self.waiters and self._wait_time(now) <= _EPSILON:
            self._admit(now)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self.waiters, (priority, next(self._seq), fut))
        if self.dispatcher is None:
            self.dispatcher = asyncio.create_task(self._dispatch())
        await fut

    @property
    def waiting(self) -> int:
        """Calls waiting for admission (a cancelled waiter leaves at once)."""
        return sum(1 for _, _, fut in self.waiters if not fut.done())

    @property
    def busy(self) -> bool:
        """Someone waits: the key's ledger must be kept."""
        return bool(self.waiters)

    async def _dispatch(self) -> None:
        """Admit queued waiters in order, sleeping on the clock until the head one fits.

        Only the wait computed from the ledger is slept; nothing polls. The wait can only grow
        while sleeping (a pause, a call recorded meanwhile), so it is recomputed on waking.
        """
        try:
            while True:
                while self.waiters and self.waiters[0][2].done():
                    heapq.heappop(self.waiters)
                if not self.waiters:
                    return
                now = self._clock.monotonic()
                wait = self._wait_time(now)
                if wait > _EPSILON:
                    await self._clock.sleep(wait + _EPSILON)
                    continue
                fut = heapq.heappop(self.waiters)[2]
                self._admit(now)
                fut.set_result(None)
        except BaseException as exc:
            self._fail_waiters(exc)
            raise
        finally:
            self.dispatcher = None

    def _fail_waiters(self, exc: BaseException) -> None:
        """The dispatcher is going away (cancelled at shutdown, or a bug): nobody may hang."""
        waiters, self.waiters = self.waiters, []
        for _, _, fut in waiters:
            if fut.done():
                continue
            if isinstance(exc, asyncio.CancelledError):
                fut.cancel()
            else:
                fut.set_exception(exc)
