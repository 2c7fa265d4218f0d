"""One duration parser and one formatter for the whole project."""

from __future__ import annotations

import pytest

from agent.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),  # Go, as in the web config's rate_limit.interval
        ("1m30s", 90),
        ("1.5h", 5400),
        ("250us", 0.00025),
        ("2d", 172800),  # Prometheus
        ("1w", 604800),
        (0.25, 0.25),
    ],
)
def test_both_files_read_the_same_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def test_zero_only_where_it_means_off() -> None:
    assert parse_duration(0, allow_zero=True) == 0
    assert parse_duration("0", allow_zero=True) == 0
    with pytest.raises(ValueError, match="must be a positive duration"):
        parse_duration("0s")


@pytest.mark.parametrize(
    ("seconds", "exact", "approximate"),
    [
        (45, "45s", "45 s"),
        (960, "16m", "16 min"),
        (13_860, "3h51m", "3.9 h"),
        (592_000, "6d20h26m40s", "6.9 d"),
        (0.25, "250ms", "0 s"),
    ],
)
def test_one_formatter_says_it_exactly_or_for_people(
    seconds: float, exact: str, approximate: str
) -> None:
    assert format_duration(seconds) == exact
    assert parse_duration(exact) == seconds
    assert format_duration(seconds, approximate=True) == approximate
