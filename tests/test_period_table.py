"""The README's table of probe periods is what the planner computes, so users can size the budget
before deploying."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools import period_table


def test_readme_table_matches_the_planner() -> None:
    text = period_table.README.read_text(encoding="utf-8")
    assert period_table.readme_table(text) == period_table.render(), (
        "run `uv run python -m tools.period_table --write` and commit README.md"
    )


def test_table_has_a_row_per_tenant_count_and_a_column_per_budget_share() -> None:
    lines = period_table.render().splitlines()
    assert len(lines) == 2 + len(period_table.TENANTS)
    header = lines[0]
    assert all(f"`budget_share` {share} " in header for share in period_table.SHARES)
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in lines[2:]}
    assert list(rows) == ["20", "100", "250", "1,000", "10,000"]
    # The default budget (100 calls an hour): 250 tenants are probed every 3.8 hours.
    assert rows["250"][0].strip() == "3.8 h"


def test_periods_shrink_with_a_larger_budget_and_grow_with_more_tenants() -> None:
    for tenants in period_table.TENANTS:
        periods = [period_table.period(tenants, share) for share in period_table.SHARES]
        assert periods == sorted(periods, reverse=True), tenants
    for share in period_table.SHARES:
        periods = [period_table.period(tenants, share) for tenants in period_table.TENANTS]
        assert periods == sorted(periods), share


def test_check_mode_fails_on_a_stale_readme(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = tmp_path / "README.md"
    text = period_table.README.read_text(encoding="utf-8")
    stale.write_text(period_table.with_table(text, "| tenants |\n"), encoding="utf-8")
    monkeypatch.setattr(period_table, "README", stale)
    assert period_table.main(["--check"]) == 1
    assert period_table.main(["--write"]) == 0
    assert period_table.main(["--check"]) == 0
