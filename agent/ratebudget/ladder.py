"""The 429 ladder: how long a budget key pauses after a 429, and when the escalation starts over.

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
call does not reset the escalation.

A pause runs on the monotonic clock: a wall-clock step neither stretches a 61 s pause to an hour
nor ends it early. Only the clock-aligned boundaries (the next hour, the next UTC midnight) are
wall-clock facts; they are computed on the start-up ``Timeline`` and turned into monotonic moments.
"""

from __future__ import annotations

import email.utils
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC

from agent.clock import Timeline
from agent.config import WINDOW_SECONDS

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


@dataclass(frozen=True)
class Pause:
    """One 429 pause, on the monotonic clock: ``started`` and ``until`` are monotonic seconds."""

    started: float
    until: float
    window: str
    reason: str
    consecutive: int


@dataclass
class KeyPauses:
    """The pause state of one budget key: until when it is paused (monotonic), the 429s in a
    row, how many pauses it has had since start, and the running or last pause."""

    until: float = -math.inf
    streak: int = 0
    total: int = 0
    last: Pause | None = None

    def remaining(self, now: float) -> float:
        return max(0.0, self.until - now)


OldestLeaves = Callable[[str], float | None]
"""When a key's oldest call still counted in a window leaves it (monotonic), None if empty."""


class PauseLadder:
    """Decides every pause from the 429s in a row; ``limits`` give the steps of the ladder."""

    def __init__(
        self, limits: Mapping[str, int], margin: float, timeline: Timeline, rng: random.Random
    ) -> None:
        self._steps = escalation_ladder(limits)
        self._margin = margin
        self._timeline = timeline
        self._rng = rng

    def on_429(
        self,
        state: KeyPauses,
        now: float,
        retry_after: float | None,
        sent_at: float | None,
        oldest_leaves: OldestLeaves,
    ) -> bool:
        """Pause after a 429 answered at monotonic ``now``; True if it is a new pause.

        ``retry_after`` (seconds, see ``parse_retry_after``) is honoured when given, clamped to
        a day. Without it the pause escalates with the 429s in a row (see the module docstring).
        ``sent_at`` is when the answered call was admitted (monotonic): a 429 for a call sent
        before the running pause began is the same overload seen late, so it neither escalates
        nor counts as a new pause; only its Retry-After may lengthen the pause (the state changes
        then, and False is returned all the same). A pause never shortens a running one.
        """
        last = state.last
        if sent_at is not None and last is not None and sent_at <= last.started:
            if retry_after is not None and now + _clamp(retry_after) > state.until:
                state.until = now + _clamp(retry_after)
                state.last = Pause(
                    last.started, state.until, last.window, last.reason, last.consecutive
                )
            return False
        state.streak += 1
        state.total += 1
        if retry_after is not None and retry_after >= 0:
            length, window, reason = _clamp(retry_after), NO_WINDOW, REASON_RETRY_AFTER
        else:
            window = self._steps[min(state.streak, len(self._steps)) - 1]
            length = self._escalation_pause(window, now, oldest_leaves(window))
            reason = REASON_ESCALATION
        state.until = max(state.until, now + length)
        state.last = Pause(now, state.until, window, reason, state.streak)
        return True

    @staticmethod
    def on_success(state: KeyPauses, sent_at: float | None) -> bool:
        """A call went through: the next 429 starts the ladder from the first step again. True
        if the streak was reset. A success of a call sent before the last pause began says
        nothing about now, so it is ignored when ``sent_at`` shows that."""
        if state.streak == 0:
            return False
        last = state.last
        if sent_at is not None and last is not None and sent_at <= last.started:
            return False
        state.streak = 0
        return True

    def _escalation_pause(self, window: str, now: float, own_oldest: float | None) -> float:
        """Seconds until ``window`` could have room again, with jitter (see the docstring)."""
        length = WINDOW_SECONDS[window]
        step = self._steps.index(window)
        end = now + length + self._margin
        if step > 0:
            floor = now + WINDOW_SECONDS[self._steps[step - 1]] + self._margin
            wall = self._timeline.wall(now)
            boundary = self._timeline.mono((math.floor(wall / length) + 1) * length)
            end = min(end, max(floor, boundary, own_oldest or -math.inf))
        pause = end - now
        return pause + self._rng.uniform(0.0, min(JITTER_FRACTION * pause, JITTER_CAP_SECONDS))


def escalation_ladder(limits: Mapping[str, int]) -> list[str]:
    """The windows a 1st, 2nd, 3rd ... 429 without Retry-After assume exhausted, shortest first."""
    ordered = sorted(limits, key=lambda w: WINDOW_SECONDS[w])
    ladder = [w for w in ordered if WINDOW_SECONDS[w] >= ESCALATION_MIN_WINDOW_SECONDS]
    return ladder or ordered[-1:]


def _clamp(retry_after: float) -> float:
    return min(retry_after, MAX_PAUSE_SECONDS)
