"""Pages rendered one at a time, shared by every request that asks meanwhile.

The agent's state lives on the event loop and the probes run there, so pages are rendered there
too (a thread would read the state while probes change it). What must not happen is a burst of
scrapes or page views rendering the same page hundreds of times in a row while the probes wait
for the loop: at 10,000 tenants one ``/metrics`` is ~50 ms, so 200 concurrent requests would hold
the loop for 10 s, long enough for healthy tenants to fail with ``timeout`` and for a liveness
probe to restart the pod. So each page is rendered by one request at a time, every request that
arrives meanwhile gets that same result, and renders (of all pages together, one at a time) take
at most ``DUTY`` of the loop's time: after a render of ``d`` seconds the next one starts
``d * (1/DUTY - 1)`` later at the earliest. At most ``MAX_WAITING`` page requests wait at once;
more are answered 503 at once. gzip, which releases the GIL, runs in a worker thread, once per
render.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
DUTY = 0.5
"""The largest share of the event loop's time that renders may take."""
MAX_WAITING = 64
"""Requests that may wait for (or be sent) a rendered page at once; more are answered 503 at
once: a burst must not queue without end behind the renders, nor fill the memory with copies
of a page being written to hundreds of sockets."""


class RenderTurns:
    """The event loop's time the pages may take: one render at a time, and after a render of
    ``d`` seconds the next (of any page) starts ``d * (1/duty - 1)`` later at the earliest."""

    def __init__(self, duty: float = DUTY, max_waiting: int = MAX_WAITING) -> None:
        if not 0 < duty <= 1:
            raise ValueError(f"duty must be in (0, 1], got {duty}")
        self._rest = 1 / duty - 1
        self._lock = asyncio.Lock()
        self._not_before = 0.0
        self._max_waiting = max_waiting
        self.waiting = 0

    @contextlib.contextmanager
    def place(self) -> Iterator[bool]:
        """A place for one page request (True), or False when ``max_waiting`` are taken; held
        until the answer is sent."""
        if self.waiting >= self._max_waiting:
            yield False
            return
        self.waiting += 1
        try:
            yield True
        finally:
            self.waiting -= 1

    async def run(self, render: Callable[[], T]) -> T:
        async with self._lock:
            wait = self._not_before - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            started = time.monotonic()
            try:
                return render()
            finally:
                took = time.monotonic() - started
                self._not_before = time.monotonic() + took * self._rest


class SharedRender(Generic[T]):
    """``await shared.get()``: the result of one call of ``render``, shared by concurrent askers.

    A caller that arrives while a render is pending or running waits for it and gets its result
    (an exception is shared too). Renders take their turn in ``turns``, shared by every page.
    """

    def __init__(self, render: Callable[[], T], turns: RenderTurns) -> None:
        self._render = render
        self._turns = turns
        self._pending: asyncio.Future[T] | None = None
        self.renders = 0

    async def get(self) -> T:
        if self._pending is None:
            self._pending = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().create_task(self._run(self._pending))
        return await asyncio.shield(self._pending)

    async def _run(self, future: asyncio.Future[T]) -> None:
        try:
            result = await self._turns.run(self._render)
            future.set_result(result)
        except Exception as exc:  # shared with every waiter, who answer 500
            future.set_exception(exc)
        finally:
            self.renders += 1
            self._pending = None
            if future.done() and not future.cancelled():
                future.exception()  # retrieved: no "never retrieved" warning without waiters


class Page:
    """A rendered page body and, made once on first request in a worker thread, its compressed
    form (``compress``: gzip releases the GIL, so the loop keeps running meanwhile)."""

    def __init__(self, body: bytes, compress: Callable[[bytes], bytes]) -> None:
        self.body = body
        self._compress = compress
        self._compressed: asyncio.Future[bytes] | None = None

    async def compressed(self) -> bytes:
        if self._compressed is None:
            self._compressed = asyncio.ensure_future(asyncio.to_thread(self._compress, self.body))
        return await asyncio.shield(self._compressed)
