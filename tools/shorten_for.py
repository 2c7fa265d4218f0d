"""Test-time transform of the rule files: shorter ``for:`` durations for end-to-end tests.

End-to-end tests against a real Prometheus cannot wait 10 or 15 minutes for an alert to leave
``pending``. This rewrites the ``for:`` of every alerting rule (rules without one are left
alone, as are the expressions, their range windows and the recording rules) and can also set
each group's evaluation ``interval``. See alerts/README.md.

Two modes: ``--for 5s`` gives every alert the same duration; ``--scale 60`` divides every
``for:`` by 60 (10m becomes 10s), which keeps their order. The order matters where the
Alertmanager inhibits one alert by another: ``SophosCentralApiOutage`` (2m) fires before the
per-tenant ``SophosCentralPersistent5xx`` (5m) it inhibits, in production and in the test.

    uv run python -m tools.shorten_for --for 5s [--interval 1s] --out-dir /tmp/rules \\
        alerts/*.rules.yml
    uv run python -m tools.shorten_for --scale 60 --interval 1s --out-dir /tmp/rules \\
        alerts/*.rules.yml

In Python::

    from tools.shorten_for import scale_for_file, shorten_for_file
    shorten_for_file(Path("alerts/sophos-central.rules.yml"), tmp / "rules.yml", "5s")
    scale_for_file(Path("alerts/sophos-central.rules.yml"), tmp / "rules.yml", 60)
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path
from typing import Any

import yaml

_DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
_DURATION_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_UNIT_MS = {
    "ms": 1,
    "s": 1000,
    "m": 60_000,
    "h": 3_600_000,
    "d": 86_400_000,
    "w": 604_800_000,
    "y": 31_536_000_000,
}


def _check_duration(value: str) -> str:
    if not _DURATION.match(value):
        raise ValueError(f"{value!r} is not a Prometheus duration such as 5s, 30s or 1m")
    return value


def shorten_for(
    rule_file: dict[str, Any], duration: str, *, interval: str | None = None
) -> dict[str, Any]:
    """A copy of a parsed rule file with every alert's ``for:`` set to ``duration``."""
    _check_duration(duration)
    if interval is not None:
        _check_duration(interval)
    result = copy.deepcopy(rule_file)
    for group in result.get("groups", []):
        if interval is not None:
            group["interval"] = interval
        for rule in group.get("rules", []):
            if "alert" in rule and "for" in rule:
                rule["for"] = duration
    return result


def duration_ms(value: str) -> int:
    """A Prometheus duration (``1h30m``, ``5s``, ``250ms``) in milliseconds."""
    _check_duration(value)
    return sum(int(n) * _UNIT_MS[unit] for n, unit in _DURATION_PART.findall(value))


def format_ms(ms: int) -> str:
    """Milliseconds as a Prometheus duration: whole seconds as ``Ns``, else ``Nms``."""
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def scale_for(
    rule_file: dict[str, Any], factor: float, *, interval: str | None = None
) -> dict[str, Any]:
    """A copy of a parsed rule file with every alert's ``for:`` divided by ``factor``.

    Results are rounded to whole milliseconds, at least 1 ms (``for: 0s`` stays 0s).
    """
    if not factor > 0:
        raise ValueError(f"scale must be a positive number, not {factor!r}")
    if interval is not None:
        _check_duration(interval)
    result = copy.deepcopy(rule_file)
    for group in result.get("groups", []):
        if interval is not None:
            group["interval"] = interval
        for rule in group.get("rules", []):
            if "alert" in rule and "for" in rule:
                ms = duration_ms(str(rule["for"]))
                rule["for"] = format_ms(max(round(ms / factor), 1) if ms else 0)
    return result


def shorten_for_text(text: str, duration: str, *, interval: str | None = None) -> str:
    """The same on YAML text (comments are not kept)."""
    shortened = shorten_for(yaml.safe_load(text), duration, interval=interval)
    return _dump(shortened)


def scale_for_text(text: str, factor: float, *, interval: str | None = None) -> str:
    """``scale_for`` on YAML text (comments are not kept)."""
    return _dump(scale_for(yaml.safe_load(text), factor, interval=interval))


def _dump(rule_file: dict[str, Any]) -> str:
    return yaml.safe_dump(rule_file, sort_keys=False, allow_unicode=True, width=100_000)


def shorten_for_file(
    source: Path, destination: Path, duration: str, *, interval: str | None = None
) -> Path:
    """Write ``source`` with shortened ``for:`` durations to ``destination``."""
    text = shorten_for_text(source.read_text(encoding="utf-8"), duration, interval=interval)
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_text(text, encoding="utf-8")
    return destination


def scale_for_file(
    source: Path, destination: Path, factor: float, *, interval: str | None = None
) -> Path:
    """Write ``source`` with every ``for:`` divided by ``factor`` to ``destination``."""
    text = scale_for_text(source.read_text(encoding="utf-8"), factor, interval=interval)
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_text(text, encoding="utf-8")
    return destination


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Shorten every alert's `for:` for tests.")
    parser.add_argument("files", nargs="+", type=Path, help="rule files (alerts/*.rules.yml)")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--for", dest="duration", help="one duration for every alert, e.g. 5s")
    mode.add_argument(
        "--scale", type=float, help="divide every `for:` by this, e.g. 60 (10m becomes 10s)"
    )
    parser.add_argument("--interval", default=None, help="also set every group's interval")
    parser.add_argument("--out-dir", type=Path, required=True, help="where to write the copies")
    args = parser.parse_args(argv)
    try:
        for source in args.files:
            destination = args.out_dir / source.name
            if args.scale is not None:
                written = scale_for_file(source, destination, args.scale, interval=args.interval)
            else:
                written = shorten_for_file(
                    source, destination, args.duration, interval=args.interval
                )
            print(f"wrote {written}")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
