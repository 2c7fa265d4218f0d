"""Test-time transform of the rule files: every alert's ``for:`` becomes one short duration.

End-to-end tests against a real Prometheus cannot wait 10 or 15 minutes for an alert to leave
``pending``. This rewrites the ``for:`` of every alerting rule (rules without one are left
alone, as are the expressions, their range windows and the recording rules) and can also set
each group's evaluation ``interval``. See alerts/README.md.

    uv run python -m tools.shorten_for --for 5s [--interval 1s] --out-dir /tmp/rules \\
        alerts/*.rules.yml

In Python::

    from tools.shorten_for import shorten_for_file
    shorten_for_file(Path("alerts/sophos-central.rules.yml"), tmp / "rules.yml", "5s")
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


def shorten_for_text(text: str, duration: str, *, interval: str | None = None) -> str:
    """The same on YAML text (comments are not kept)."""
    shortened = shorten_for(yaml.safe_load(text), duration, interval=interval)
    return yaml.safe_dump(shortened, sort_keys=False, allow_unicode=True, width=100_000)


def shorten_for_file(
    source: Path, destination: Path, duration: str, *, interval: str | None = None
) -> Path:
    """Write ``source`` with shortened ``for:`` durations to ``destination``."""
    text = shorten_for_text(source.read_text(encoding="utf-8"), duration, interval=interval)
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_text(text, encoding="utf-8")
    return destination


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Shorten every alert's `for:` for tests.")
    parser.add_argument("files", nargs="+", type=Path, help="rule files (alerts/*.rules.yml)")
    parser.add_argument("--for", dest="duration", required=True, help="e.g. 5s")
    parser.add_argument("--interval", default=None, help="also set every group's interval")
    parser.add_argument("--out-dir", type=Path, required=True, help="where to write the copies")
    args = parser.parse_args(argv)
    try:
        for source in args.files:
            written = shorten_for_file(
                source, args.out_dir / source.name, args.duration, interval=args.interval
            )
            print(f"wrote {written}")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
