"""The one token bucket of the project: a rate with a burst, on whatever clock the caller reads.

Three places cap how often something may happen: the scheduler's confirmation re-probes (a share
of the routine probe rate), the web config's ``rate_limit`` (exporter-toolkit's requests per
interval) and the failed basic-auth attempts of one client address. They all need the same
thing: at most ``burst`` at once, refilled at ``rate`` per second, asked without waiting. The
caller passes ``now`` (monotonic seconds from its own clock, often a ``FakeClock`` in tests), so
the bucket never reads time itself. The libraries we looked at either wait instead of answering
(aiolimiter), read the system clock themselves, or fix the rate at construction, while the
confirmation cap's rate follows the number of probed pairs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; starts full.

    ``rate`` may be changed between calls (the elapsed time is refilled at the rate in force
    when it is next asked). A rate of 0 never refills.
    """

    rate: float
    burst: float
    tokens: float = field(default=-1.0)
    refilled: float | None = None

    def __post_init__(self) -> None:
        if self.rate < 0 or self.burst <= 0:
            raise ValueError(f"a token bucket needs rate >= 0 and burst > 0, got {self}")
        if self.tokens < 0:
            self.tokens = self.burst

    def available(self, now: float) -> float:
        """Tokens there are at ``now`` (refills first)."""
        if self.refilled is not None and now > self.refilled:
            self.tokens = min(self.burst, self.tokens + (now - self.refilled) * self.rate)
        if self.refilled is None or now > self.refilled:
            self.refilled = now
        return self.tokens

    def take(self, now: float, tokens: float = 1.0) -> bool:
        """Take ``tokens`` if there are that many; False (and nothing taken) otherwise."""
        if self.available(now) < tokens:
            return False
        self.tokens -= tokens
        return True

    @property
    def full(self) -> bool:
        """Nothing taken since it last filled up (as of the last ``available``/``take``)."""
        return self.tokens >= self.burst

    def seconds_until(self, now: float, tokens: float = 1.0) -> float:
        """How long until ``tokens`` are there: 0 if they are, ``inf`` if they never will be."""
        missing = tokens - self.available(now)
        if missing <= 0:
            return 0.0
        return math.inf if self.rate == 0 else missing / self.rate
