"""Budget keys: whose rate windows a call counts against.

A budget key is a credential's name, or, with ``rate_limit_scope: tenant``, ``credential/tenant_id``
for the calls that carry a tenant's ``X-Tenant-ID``. Credential names cannot contain the
separator, so the two kinds never collide.
"""

from __future__ import annotations

BudgetKey = str
"""A credential name, or ``credential/tenant_id`` (see ``tenant_key``)."""

TENANT_KEY_SEPARATOR = "/"


def tenant_key(credential: str, tenant_id: str) -> BudgetKey:
    """The budget key of one tenant's own windows (``rate_limit_scope: tenant``)."""
    return f"{credential}{TENANT_KEY_SEPARATOR}{tenant_id}"


def split_key(key: BudgetKey) -> tuple[str, str]:
    """``(credential, tenant_id)`` of a budget key; the tenant id is "" for a credential key."""
    credential, _, tenant_id = key.partition(TENANT_KEY_SEPARATOR)
    return credential, tenant_id


def is_tenant_key(key: BudgetKey) -> bool:
    return TENANT_KEY_SEPARATOR in key
