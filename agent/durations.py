"""The one way the project reads and says durations.

``parse_duration`` reads what users write in either configuration file: Prometheus-style
durations (``30s``, ``5m``, ``1h30m``, ``2d``, ``1w``), Go ``time.Duration`` strings (``500ms``,
``1.5h``, ``250us``), or a plain number of seconds. ``format_duration`` says a number of seconds
back: exactly, as a user would write it in a config (``1h30m``, ``2s500ms``: what ``config check``
prints, so that its output reads back as the same config), or ``approximate`` for people reading
a page or a log line (``45 s``, ``16 min``, ``3.8 h``, ``6.9 d``).
"""

from __future__ import annotations

import math
import re
from typing import Any

_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h|d|w|y)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # Go accepts the micro sign and the Greek mu
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
    "y": 31536000.0,
}
_EXACT_UNITS = (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000))
EXPECTED = "expected a duration such as 30s, 5m or 1h, or a number of seconds"
_HINT = "use a number of seconds or units s, m, h, d (e.g. 90s, 5m)"


def parse_duration(value: Any, *, allow_zero: bool = False) -> float:
    """Seconds from a duration or a number of seconds; ``ValueError`` says what is expected.

    ``allow_zero`` accepts 0 (where 0 means "off", as the web config's ``rate_limit.interval``);
    otherwise a duration must be positive. Booleans are refused although Python counts them as
    numbers: ``probe_interval: yes`` is a mistake, not one second.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(EXPECTED)
    seconds = float(value) if not isinstance(value, str) else _parse_text(value.strip())
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        raise ValueError("must be a positive duration" + (" or 0" if allow_zero else ""))
    return seconds


def _parse_text(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"{text!r} is not a duration; {_HINT}")
    return total


def format_duration(seconds: float, *, approximate: bool = False) -> str:
    """``seconds`` as a duration: exactly (``1h30m``, ``250ms``) or ``approximate`` for people.

    The exact form is to the millisecond and reads back through ``parse_duration`` unchanged.
    The approximate form keeps two or three significant figures in the unit people use at that
    size: seconds under 2 minutes, minutes under 2 hours, hours under 2 days, then days.
    """
    if approximate:
        return _approximate(seconds)
    millis = round(seconds * 1000)
    if millis <= 0:
        return "0s"
    parts: list[str] = []
    for unit, size in _EXACT_UNITS:
        count, millis = divmod(millis, size)
        if count:
            parts.append(f"{count}{unit}")
    if millis:
        parts.append(f"{millis}ms")
    return "".join(parts)


def _approximate(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"
