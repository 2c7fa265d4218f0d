"""Time as a dependency.

Every part that waits or timestamps takes a ``Clock`` so that tests can move time by hand instead of
sleeping. ``SystemClock`` is the real one; ``FakeClock`` only moves when a test advances it.

Two clocks, two jobs. The wall clock (``time``) can step: NTP corrects it, a VM resumes, somebody
fixes a wrong date. The monotonic clock never steps. Everything that measures a duration (rate
windows, 429 pauses, schedules, sleeps) runs on the monotonic clock; wall time is only for what is
shown and persisted, and that is derived from the monotonic clock through a ``Timeline`` anchored
once at start-up, so that a step while the agent runs changes neither what it spends nor what it
writes down.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol


class Clock(Protocol):
    """Wall-clock seconds, monotonic seconds and an awaitable sleep."""

    def time(self) -> float: ...

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class Timeline:
    """Wall-clock seconds derived from monotonic seconds, anchored once (at start-up).

    ``wall(mono)`` is what a monotonic moment is shown and persisted as; ``mono(wall)`` turns a
    persisted wall timestamp back into a moment on this process's monotonic clock. Both use the
    offset between the two clocks at the moment of anchoring, so a later wall-clock step moves
    neither: what the agent writes down stays consistent with what it counted.
    """

    __slots__ = ("_clock", "_offset")

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._offset = clock.time() - clock.monotonic()

    def wall(self, mono: float) -> float:
        return mono + self._offset

    def mono(self, wall: float) -> float:
        return wall - self._offset

    def now(self) -> float:
        """Wall-clock seconds now, as this timeline shows them (not stepped since anchoring)."""
        return self._clock.monotonic() + self._offset


class FakeClock:
    """A clock that stands still until ``advance`` is called.

    Sleepers wake in deadline order as time passes them; ``advance`` yields to the event loop after
    each wake-up so that woken tasks run before the next deadline is reached. ``step_wall`` moves
    the wall clock alone, as NTP or a resumed VM does, and wakes nobody: sleeping is monotonic.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._mono = 1000.0
        self._wall_offset = start - self._mono
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def time(self) -> float:
        return self._mono + self._wall_offset

    def monotonic(self) -> float:
        return self._mono

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._mono + seconds, next(self._seq), fut))
        await fut

    def step_wall(self, seconds: float) -> None:
        """Step the wall clock by ``seconds`` (negative: back) without moving the monotonic one."""
        self._wall_offset += seconds

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, waking every sleeper whose deadline passes."""
        target = self._mono + seconds
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, fut = heapq.heappop(self._sleepers)
            self._step_to(deadline)
            if not fut.done():
                fut.set_result(None)
            for _ in range(5):
                await asyncio.sleep(0)
        self._step_to(target)
        for _ in range(5):
            await asyncio.sleep(0)

    def _step_to(self, mono: float) -> None:
        self._mono = max(self._mono, mono)
