"""Which shard probes which tenant: jump consistent hash of the tenant id.

Every shard lists all tenants and keeps the ones it owns, so shards need no coordination, only the
same function. Jump hash (Lamping & Veach, 2014, arXiv:1406.2294) needs no ring or table, splits
ids evenly, and when ``total_shards`` grows from M to M+1 moves only about 1/(M+1) of them, all to
the new shard: scaling out does not reshuffle who probes what.

The tenant id is first reduced to 64 bits with BLAKE2b, not Python's ``hash()``, which is salted
per process and would give every shard a different answer.
"""

from __future__ import annotations

import hashlib

_MASK64 = (1 << 64) - 1
_LCG_MULTIPLIER = 2862933555777941757


def jump_hash(key: int, buckets: int) -> int:
    """The bucket in ``[0, buckets)`` of a 64-bit ``key`` (the paper's algorithm, bit for bit)."""
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    if not 0 <= key <= _MASK64:
        raise ValueError(f"key must be an unsigned 64-bit integer, got {key}")
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * _LCG_MULTIPLIER + 1) & _MASK64
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


def tenant_key(tenant_id: str) -> int:
    """A stable 64-bit key for a tenant id, the same in every process and Python version.

    Tenant ids are UUIDs, whose text is case-insensitive, so the id is lower-cased first.
    """
    digest = hashlib.blake2b(tenant_id.strip().lower().encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def check_shard(shard: int, total_shards: int) -> None:
    """Raise ``ValueError`` unless ``0 <= shard < total_shards``."""
    if total_shards < 1:
        raise ValueError(f"total_shards must be >= 1, got {total_shards}")
    if not 0 <= shard < total_shards:
        raise ValueError(
            f"shard must be between 0 and total_shards - 1 ({total_shards - 1}), got {shard}"
        )


def shard_of(tenant_id: str, total_shards: int) -> int:
    """The shard (0-based) that probes ``tenant_id``."""
    check_shard(0, total_shards)
    return jump_hash(tenant_key(tenant_id), total_shards)


def owns(tenant_id: str, shard: int, total_shards: int) -> bool:
    """Whether shard ``shard`` of ``total_shards`` probes ``tenant_id``."""
    check_shard(shard, total_shards)
    return jump_hash(tenant_key(tenant_id), total_shards) == shard
