"""Arrival accounting: the simulator's rate limiter and the judge of a client's rate fidelity.

Every call a credential makes is counted at arrival, on every host, the id host included, and
rejected calls count too (a client that keeps knocking while limited keeps itself limited). A
window of length W is half-open: two arrivals W or more apart never share one.

``max_calls_in_any_window`` is exact: the busiest window can always be slid until it ends on an
arrival, so tracking, after each arrival, how many arrivals lie less than W before it yields the
maximum over all windows. Configured (and extra tracked) windows keep that running maximum with
one deque each; any other length is answered from the full arrival history, which is kept up to
``history_cap`` arrivals per client.
"""

from __future__ import annotations

import math
import re
from array import array
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.clock import Clock

_WINDOW = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def window_seconds(label: str) -> float:
    """``"1s"``, ``"1m"``, ``"1h"``, ``"1d"`` (or plain seconds) as seconds."""
    match = _WINDOW.match(label)
    if match is None:
        raise ValueError(f"bad rate window {label!r}; use e.g. 1s, 1m, 1h, 1d")
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"]
    if seconds <= 0:
        raise ValueError(f"rate window {label!r} must be longer than zero")
    return seconds


class _Window:
    """Arrivals of one client during the last ``seconds``, with the busiest count ever seen."""

    __slots__ = ("arrivals", "limit", "peak", "seconds")

    def __init__(self, seconds: float, limit: int | None) -> None:
        self.seconds = seconds
        self.limit = limit
        self.arrivals: deque[float] = deque()
        self.peak = 0

    def add(self, now: float) -> None:
        arrivals = self.arrivals
        arrivals.append(now)
        while now - arrivals[0] >= self.seconds:
            arrivals.popleft()
        self.peak = max(self.peak, len(arrivals))

    def wait_needed(self, now: float) -> float | None:
        """Seconds until one more call would fit, or None when this arrival was within the limit.

        With arrivals a_0..a_{m-1} in the window and limit L, a call at s fits once at most L-1
        earlier ones lie within W of it, i.e. s >= a_{m-L} + W.
        """
        if self.limit is None or len(self.arrivals) <= self.limit:
            return None
        oldest_blocking = self.arrivals[len(self.arrivals) - self.limit]
        return oldest_blocking + self.seconds - now


class _ClientTraffic:
    __slots__ = ("arrivals", "history", "history_complete", "rejected", "windows")

    def __init__(self, windows: Mapping[float, int | None]) -> None:
        self.windows = {seconds: _Window(seconds, limit) for seconds, limit in windows.items()}
        self.history: array[float] = array("d")
        self.history_complete = True
        self.arrivals = 0
        self.rejected = 0


@dataclass(frozen=True, slots=True)
class Admission:
    """The verdict on one arrival: ``retry_after`` seconds (>= 1) when rejected, else None."""

    retry_after: int | None


class TrafficStats:
    """Per-client and per-host arrival counts, the limiter, and the exact window judge."""

    def __init__(
        self,
        clock: Clock,
        rate_limits: Mapping[str, int],
        extra_windows: Iterable[float] = (),
        history_cap: int = 1_000_000,
    ) -> None:
        self._clock = clock
        windows: dict[float, int | None] = {window_seconds(k): v for k, v in rate_limits.items()}
        for seconds in extra_windows:
            windows.setdefault(float(seconds), None)
        self._windows = windows
        self._history_cap = history_cap
        self._clients: dict[str, _ClientTraffic] = {}
        self._host_arrivals: Counter[str] = Counter()
        self._host_rejected: Counter[str] = Counter()
        self._client_host_arrivals: Counter[tuple[str, str]] = Counter()
        self._statuses: dict[str, Counter[str]] = {}
        self.unattributed = 0
        """Arrivals that could not be tied to a known credential (no or unknown token/client)."""

    def arrive(self, client_id: str | None, host: str) -> Admission:
        """Count one arrival and decide whether the client is over any configured limit."""
        self._host_arrivals[host] += 1
        if client_id is None:
            self.unattributed += 1
            return Admission(None)
        self._client_host_arrivals[(client_id, host)] += 1
        traffic = self._clients.get(client_id)
        if traffic is None:
            traffic = self._clients[client_id] = _ClientTraffic(self._windows)
        now = self._clock.monotonic()
        self._remember(traffic, now)
        waits = [
            w for w in (win.wait_needed(now) for win in traffic.windows.values()) if w is not None
        ]
        if not waits:
            return Admission(None)
        traffic.rejected += 1
        self._host_rejected[host] += 1
        return Admission(max(1, math.ceil(max(waits))))

    def _remember(self, traffic: _ClientTraffic, now: float) -> None:
        traffic.arrivals += 1
        for window in traffic.windows.values():
            window.add(now)
        if len(traffic.history) < self._history_cap:
            traffic.history.append(now)
        else:
            traffic.history_complete = False

    def note_status(self, host: str, status: str) -> None:
        """Count what a host answered ("200", "503", "reset", ...)."""
        self._statuses.setdefault(host, Counter())[status] += 1

    def max_calls_in_any_window(self, client_id: str, window_seconds: float) -> int:
        """The most arrivals of ``client_id`` in any window of that length during the run."""
        traffic = self._clients.get(client_id)
        if traffic is None:
            return 0
        tracked = traffic.windows.get(float(window_seconds))
        if tracked is not None:
            return tracked.peak
        if not traffic.history_complete:
            raise ValueError(
                f"window {window_seconds}s is not tracked and the arrival history was capped; "
                "pass it in extra_windows"
            )
        return busiest_window(traffic.history, float(window_seconds))

    def arrivals(self, client_id: str | None = None) -> int:
        """Arrivals of one client, or of all clients (unattributed included) when None."""
        if client_id is None:
            return sum(self._host_arrivals.values())
        traffic = self._clients.get(client_id)
        return 0 if traffic is None else traffic.arrivals

    def rate_limited(self, client_id: str | None = None) -> int:
        """429s sent to one client, or to all when None."""
        if client_id is None:
            return sum(self._host_rejected.values())
        traffic = self._clients.get(client_id)
        return 0 if traffic is None else traffic.rejected

    def host_arrivals(self, host: str) -> int:
        return self._host_arrivals[host]

    def client_host_arrivals(self, client_id: str, host: str) -> int:
        return self._client_host_arrivals[(client_id, host)]

    def host_statuses(self, host: str) -> dict[str, int]:
        return dict(self._statuses.get(host, Counter()))

    def calls_in_window(self, client_id: str, window_seconds: float) -> int:
        """Arrivals of a client within the trailing tracked window, as of its last arrival."""
        traffic = self._clients.get(client_id)
        window = None if traffic is None else traffic.windows.get(float(window_seconds))
        return 0 if window is None else len(window.arrivals)

    def snapshot(self, names: Mapping[str, str]) -> dict[str, Any]:
        """JSON-ready totals, keyed by credential *name* (client ids stay out of reports)."""
        labels = {seconds: _label(seconds) for seconds in self._windows}
        clients: dict[str, Any] = {}
        for client_id, traffic in self._clients.items():
            clients[names.get(client_id, "unknown")] = {
                "arrivals": traffic.arrivals,
                "rate_limited": traffic.rejected,
                "max_calls_in_any_window": {labels[s]: w.peak for s, w in traffic.windows.items()},
            }
        return {
            "credentials": clients,
            "hosts": {
                host: {
                    "arrivals": count,
                    "rate_limited": self._host_rejected[host],
                    "statuses": self.host_statuses(host),
                }
                for host, count in self._host_arrivals.items()
            },
            "unattributed": self.unattributed,
        }


def busiest_window(times: Iterable[float], seconds: float) -> int:
    """Most of the sorted ``times`` inside any half-open window of ``seconds`` (two pointers)."""
    ordered = list(times)
    best = 0
    start = 0
    for end, now in enumerate(ordered):
        while now - ordered[start] >= seconds:
            start += 1
        best = max(best, end - start + 1)
    return best


def _label(seconds: float) -> str:
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
