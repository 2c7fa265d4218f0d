"""Tenant sharding: disjoint, complete, balanced, stable across processes, minimal movement."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from agent.sharding import check_shard, jump_hash, owns, shard_of, tenant_key

TENANTS = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"tenant-{i}")) for i in range(10_000)]


@pytest.mark.parametrize(
    ("key", "buckets", "expected"),
    [(256, 1024, 520), (123456, 1000, 984), (0, 1, 0), (2**64 - 1, 1, 0)],
)
def test_jump_hash_matches_the_published_algorithm(key: int, buckets: int, expected: int) -> None:
    # vectors shared by other implementations of the paper's C++ code
    assert jump_hash(key, buckets) == expected


@pytest.mark.parametrize(("key", "buckets"), [(1, 0), (-1, 3), (2**64, 3)])
def test_jump_hash_refuses_bad_input(key: int, buckets: int) -> None:
    with pytest.raises(ValueError):
        jump_hash(key, buckets)


@pytest.mark.parametrize("total", [1, 2, 3, 5, 8])
def test_shards_split_ten_thousand_tenants_disjoint_complete_and_balanced(total: int) -> None:
    owners = [[s for s in range(total) if owns(t, s, total)] for t in TENANTS]
    assert all(len(o) == 1 for o in owners), "every tenant has exactly one shard"
    sizes = [sum(1 for o in owners if o == [s]) for s in range(total)]
    assert sum(sizes) == len(TENANTS)
    fair = len(TENANTS) / total
    assert all(abs(size - fair) <= 0.1 * fair for size in sizes), sizes


@pytest.mark.parametrize("total", [1, 2, 3, 4, 7, 10])
def test_adding_a_shard_moves_only_its_share_and_only_to_the_new_shard(total: int) -> None:
    before = [shard_of(t, total) for t in TENANTS]
    after = [shard_of(t, total + 1) for t in TENANTS]
    moved = [(b, a) for b, a in zip(before, after, strict=True) if b != a]
    assert all(a == total for _, a in moved), "moved tenants go to the new shard only"
    share = len(moved) / len(TENANTS)
    assert 0.8 / (total + 1) <= share <= 1.2 / (total + 1), share


def test_shard_of_is_the_same_in_every_process_whatever_the_hash_seed() -> None:
    sample = TENANTS[:20]
    here = [shard_of(t, 7) for t in sample]
    script = f"from agent.sharding import shard_of; print([shard_of(t, 7) for t in {sample!r}])"
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", script],
            env={"PYTHONHASHSEED": seed, "PATH": ""},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert out.strip() == str(here)


def test_tenant_ids_are_compared_case_insensitively() -> None:
    tenant = TENANTS[0]
    assert tenant_key(tenant.upper()) == tenant_key(tenant)
    assert tenant_key(TENANTS[1]) != tenant_key(tenant)


@pytest.mark.parametrize(
    ("shard", "total", "message"),
    [
        (3, 3, "shard must be between 0 and total_shards - 1 \\(2\\), got 3"),
        (-1, 3, "got -1"),
        (0, 0, "total_shards must be >= 1, got 0"),
    ],
)
def test_bad_shard_numbers_are_refused(shard: int, total: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_shard(shard, total)
    with pytest.raises(ValueError, match=message):
        owns(TENANTS[0], shard, total)
