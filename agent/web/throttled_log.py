"""One log line per condition, however often it happens: a flood costs a line a minute."""

from __future__ import annotations

import logging
import time

LOG_EVERY = 60.0


class ThrottledLog:
    """One warning per condition: the first occurrence at once, then at most one line every
    ``every`` seconds saying how many happened since. A flood costs a line a minute."""

    def __init__(self, message: str, every: float = LOG_EVERY, logger: str = "agent.web") -> None:
        self._log = logging.getLogger(logger)
        self._message = message
        self._every = every
        self._last: float | None = None
        self._since = 0

    def __call__(self, detail: str = "") -> None:
        now = time.monotonic()
        self._since += 1
        if self._last is not None and now - self._last < self._every:
            return
        extra = f" ({self._since} times in the last {self._every:.0f} s)" if self._last else ""
        self._log.warning("%s%s%s", self._message, f": {detail}" if detail else "", extra)
        self._last, self._since = now, 0
