"""The public metric names: one source of truth for agent, dashboards, alerts and users' queries.

Renaming or removing one breaks somebody's dashboard or alert; add, never rename."""

from agent.causes import LABEL_VALUES

PREFIX = "sophos_central_"

API_REQUESTS_TOTAL = "sophos_central_api_requests_total"
API_REQUEST_DURATION_SECONDS = "sophos_central_api_request_duration_seconds"
PROBE_SUCCESS = "sophos_central_probe_success"
PROBE_LAST_RUN_TIMESTAMP_SECONDS = "sophos_central_probe_last_run_timestamp_seconds"
TOKEN_EXPIRY_TIMESTAMP_SECONDS = "sophos_central_token_expiry_timestamp_seconds"  # noqa: S105
RATE_LIMIT_CALLS = "sophos_central_rate_limit_calls"
RATE_LIMIT_MAX_CALLS = "sophos_central_rate_limit_max_calls"
RATE_LIMIT_UTILIZATION_RATIO = "sophos_central_rate_limit_utilization_ratio"
TENANT_INFO = "sophos_central_tenant_info"
WHOAMI_INFO = "sophos_central_whoami_info"
EXPORTER_BUILD_INFO = "sophos_central_exporter_build_info"
PROBE_INTERVAL_SECONDS = "sophos_central_probe_interval_seconds"
SHARD_ORDINAL = "sophos_central_shard_ordinal"
TOTAL_SHARDS = "sophos_central_total_shards"
PROBE_CAUSE_INFO = "sophos_central_probe_cause_info"

# Added later, beside the original set.
RATE_LIMIT_ALLOWED_CALLS = "sophos_central_rate_limit_allowed_calls"
RATE_LIMIT_PAUSES_TOTAL = "sophos_central_rate_limit_pauses_total"
TENANTS = "sophos_central_tenants"
PROBE_DURATION_SECONDS = "sophos_central_probe_duration_seconds"
API_REQUESTS_IN_FLIGHT = "sophos_central_api_requests_in_flight"
TENANT_REFRESH_INTERVAL_SECONDS = "sophos_central_tenant_refresh_interval_seconds"
PROBE_CONSECUTIVE_FAILURES = "sophos_central_probe_consecutive_failures"
RATE_LIMIT_PAUSED_UNTIL = "sophos_central_rate_limit_paused_until_timestamp_seconds"
RATE_LIMIT_PAUSE_INFO = "sophos_central_rate_limit_pause_info"
RATE_LIMIT_TENANT_MAX_UTILIZATION_RATIO = "sophos_central_rate_limit_tenant_max_utilization_ratio"
RATE_LIMIT_PAUSED_TENANTS = "sophos_central_rate_limit_paused_tenants"
STATE_FILE_RECREATED_TOTAL = "sophos_central_state_file_recreated_total"
TENANT_LIST_UNREAD_PAGES = "sophos_central_tenant_list_unread_pages"
CREDENTIAL_EXPIRY_TIMESTAMP_SECONDS = "sophos_central_credential_expiry_timestamp_seconds"
PROBE_LAST_SUCCESS_TIMESTAMP_SECONDS = "sophos_central_probe_last_success_timestamp_seconds"
EXPORTER_EXTERNAL_URL_INFO = "sophos_central_exporter_external_url_info"

STABLE_METRICS = (
    API_REQUESTS_TOTAL,
    API_REQUEST_DURATION_SECONDS,
    PROBE_SUCCESS,
    PROBE_LAST_RUN_TIMESTAMP_SECONDS,
    TOKEN_EXPIRY_TIMESTAMP_SECONDS,
    RATE_LIMIT_CALLS,
    RATE_LIMIT_MAX_CALLS,
    RATE_LIMIT_UTILIZATION_RATIO,
    TENANT_INFO,
    WHOAMI_INFO,
    EXPORTER_BUILD_INFO,
    PROBE_INTERVAL_SECONDS,
    SHARD_ORDINAL,
    TOTAL_SHARDS,
    PROBE_CAUSE_INFO,
)

CAUSES = LABEL_VALUES
"""The values of the ``cause`` label: the cause table's (``agent.causes``), never a copy."""

PROBES = ("token", "whoami", "tenant_list", "tenant")
WINDOWS = ("1s", "1m", "1h", "1d")
