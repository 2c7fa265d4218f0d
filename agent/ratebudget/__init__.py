"""The rate budget: per-credential rate-window accounting, admission control and 429 pauses.

The agent spends the customer's own Sophos Central rate limits, which their real integrations share.
It must never be the reason those integrations get a 429, so every call is admitted here first:
``await budget.acquire(key)`` returns only when one more call fits the agent's allowance
(``max(1, floor(budget_share * limit))``) in every window, and records the call at that moment, so
calls still in flight already count. A 429 pauses the key, escalating minute, hour, day when
Sophos sends no ``Retry-After``. Everything runs on the monotonic clock; wall time is only for
what is shown and persisted (``agent.clock.Timeline``).

One module per job:

- ``keys``: budget keys, a credential or (``rate_limit_scope: tenant``) ``credential/tenant_id``;
- ``ledger``: the calls of one key, counted per trailing window (conservative and exact);
- ``admission``: the priority queue of calls waiting for room, and the priorities;
- ``ladder``: the 429 ladder, how long a pause lasts and when the escalation starts over;
- ``persistence``: the budget's rows in the state file, written as calls are admitted;
- ``presentation``: the typed readings the views take (``BudgetReadout``, ``PauseInfo``,
  ``TenantBudgets``);
- ``budget``: ``RateBudget``, one ledger, pause state and queue per key, composed.

The names below are the package's public surface; import them from here.
"""

from agent.config import DEFAULT_RATE_LIMITS as DEFAULT_LIMITS
from agent.config import WINDOW_SECONDS
from agent.ratebudget.admission import PRIORITY_CONFIRMATION, PRIORITY_CREDENTIAL, PRIORITY_TENANT
from agent.ratebudget.budget import SUMMARY_MAX_AGE, RateBudget
from agent.ratebudget.keys import TENANT_KEY_SEPARATOR, BudgetKey, split_key, tenant_key
from agent.ratebudget.ladder import (
    JITTER_CAP_SECONDS,
    JITTER_FRACTION,
    MAX_PAUSE_SECONDS,
    NO_WINDOW,
    REASON_ESCALATION,
    REASON_RETRY_AFTER,
    parse_retry_after,
)
from agent.ratebudget.ledger import BUCKETS_PER_WINDOW, MARGIN_SECONDS, allowance_for
from agent.ratebudget.persistence import TENANT_PERSIST_SECONDS
from agent.ratebudget.presentation import BudgetReadout, PauseInfo, TenantBudgets, ordinal

__all__ = [
    "BUCKETS_PER_WINDOW",
    "DEFAULT_LIMITS",
    "JITTER_CAP_SECONDS",
    "JITTER_FRACTION",
    "MARGIN_SECONDS",
    "MAX_PAUSE_SECONDS",
    "NO_WINDOW",
    "PRIORITY_CONFIRMATION",
    "PRIORITY_CREDENTIAL",
    "PRIORITY_TENANT",
    "REASON_ESCALATION",
    "REASON_RETRY_AFTER",
    "SUMMARY_MAX_AGE",
    "TENANT_KEY_SEPARATOR",
    "TENANT_PERSIST_SECONDS",
    "WINDOW_SECONDS",
    "BudgetKey",
    "BudgetReadout",
    "PauseInfo",
    "RateBudget",
    "TenantBudgets",
    "allowance_for",
    "ordinal",
    "parse_retry_after",
    "split_key",
    "tenant_key",
]
