"""Why a probe failed and what to do about it.

blackbox_exporter tells you *that* a probe failed; users keep asking *why* (its issue #1077).
Every outcome here maps to one ``cause`` from a fixed set (a label value that users' alerts and
dashboards rely on) and a remedy paraphrased from Sophos's "Common troubleshooting steps for
Sophos Central API errors". A 403 on a tenant is often business state (a trial account, a term
customer without Partner Assistance), not an outage, and the remedy says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.classify import PROXY_CODES, Outcome
from agent.sophos import Tenant, is_data_region_url

FRESH_TOKEN_SECONDS = 120.0
SKIP_CAUSES = ("not_activated", "host_not_allowed", "trial_account")
"""Causes of tenants the agent does not call; their outcome has status 0 and the cause as code."""

REMEDIES: dict[str, str] = {
    "ok": "Nothing to do.",
    "invalid_credentials": (
        "Sophos rejected the client id or secret. Check both values in the agent's config; if they "
        "cannot be confirmed, create a new API credential in Sophos Central (Global Settings > "
        "API Credentials Management) and update the config."
    ),
    "token_rejected": (
        "The API refused the bearer token. Tokens live one hour: the agent fetches a new one on "
        "its next call. If this repeats with fresh tokens, a required header (Authorization, "
        "X-Tenant-ID, X-Partner-ID) is missing or wrong for this host."
    ),
    "partner_id_mismatch": (
        "The partner or organization id sent does not match the credential. Call whoami and use "
        "the id it returns in X-Partner-ID / X-Organization-ID; the agent does this itself, so "
        "check the credential belongs to the account you expect."
    ),
    "trial_account": (
        "Trial account: business state, not an outage. Sophos lists trial tenants without an "
        "apiHost (the agent then sends nothing) and refuses partner API calls to them with 403; "
        "confirm the account type in the Partner Dashboard."
    ),
    "partner_assistance_disabled": (
        "403 on a term-licensed tenant: the customer has not enabled Partner Assistance. Ask the "
        "customer to enable it, or confirm its state in the Partner Dashboard. Business state, "
        "not an outage."
    ),
    "forbidden": (
        "403: this credential may not access the resource. Check that the tenant belongs to this "
        "partner or organization and that the credential has the role the call needs."
    ),
    "bad_request": (
        "400: Sophos could not parse the request. Reproduce it (e.g. in Postman or with the curl "
        "command from the support bundle) to find the malformed part; check tenant_probe_path."
    ),
    "not_found": (
        "404: the object does not exist. The tenant or item may have been deleted, or an id is "
        "mistyped; re-list tenants and check tenant_probe_path."
    ),
    "rate_limited": (
        "429: the credential exceeded a Sophos rate limit (spike arrest). The agent pauses this "
        "credential; check which integration spends the budget and lower budget_share or spread "
        "its calls per Sophos's rate-limiting guide."
    ),
    "sophos_server_error": (
        "500: Sophos Central failed to process the call. Check the Sophos Central status page; if "
        "it persists, open a support case 'New API 5xx error' with the evidence on the exporter's "
        "/support page (or `sophos-central-exporter support-bundle --config FILE`)."
    ),
    "sophos_unavailable": (
        "502/503/504: the Sophos service or its gateway is unavailable (maintenance or overload). "
        "Usually temporary; check the Sophos Central status page and, if it persists, open a "
        "support case 'New API 5xx error' with the evidence on the exporter's /support page (or "
        "`sophos-central-exporter support-bundle --config FILE`)."
    ),
    "network_error": (
        "No answer: timeout, refused connection, TLS or protocol failure. Check DNS, proxies, "
        "firewalls and ca_bundle between the agent and the Sophos host."
    ),
    "host_not_allowed": (
        "The tenant's apiHost is outside allowed_api_hosts, so the agent sends nothing there. If "
        "the host is genuinely Sophos's, add it to allowed_api_hosts."
    ),
    "not_activated": (
        "The tenant has no apiHost: it is not activated yet, so there is nothing to probe. Finish "
        "its activation in Sophos Central."
    ),
    "proxy_error": (
        "The outbound proxy did not pass the call on, so Sophos never saw it. error_code says "
        "why: proxy_auth_required (407: set user:password@ in proxy_url, or check them), "
        "proxy_refused (the proxy answered CONNECT with another status: allow CONNECT to "
        "*.sophos.com:443 and id.sophos.com:443), proxy_unreachable (check the host:port in "
        "proxy_url or HTTPS_PROXY, and that the proxy runs)."
    ),
    "invalid_response": (
        "Sophos answered 2XX with a body the agent cannot read. Usually a proxy or a Sophos-side "
        "defect; capture the response and contact Sophos support if it persists."
    ),
    "wrong_api_host": (
        "api_url names a data-region host (api-<region>.central.sophos.com); whoami answers 504 "
        "there. Set api_url to https://api.central.sophos.com: the agent finds each tenant's "
        "data-region host itself. Not a Sophos outage; no support case needed."
    ),
    "export_restricted": (
        "451: Sophos refuses calls from where the agent runs (US export control applies to its "
        "location or its egress IP). Retrying does not help: run the exporter from an allowed "
        "location or egress, or contact Sophos."
    ),
}


@dataclass(frozen=True)
class Diagnosis:
    cause: str
    remedy: str


@dataclass(frozen=True)
class Context:
    """What else is known when a probe ends: the tenant, how old the token was, and the
    configured ``api_url`` (whoami goes there)."""

    tenant: Tenant | None = None
    token_age: float | None = None
    api_url: str = ""
    path: str | None = None
    permitted: str | None = None
    """For a per-tenant probe: its path, and the path of another family this tenant answers."""


HEADER_401_REMEDY = (
    "401 with a token issued moments ago: the token is not the problem. A required "
    "header is missing or wrong (X-Tenant-ID for tenant calls, X-Partner-ID or "
    "X-Organization-ID for lists), or the call went to another tenant's host."
)
"""The ``token_rejected`` remedy when the token was less than FRESH_TOKEN_SECONDS old."""

REDIRECT_REMEDY = (
    "3XX: the host answered with a redirect, which the agent never follows (it could carry the "
    "bearer token to a host nobody approved). Check auth_url, api_url and any proxy or gateway "
    "in between; Sophos Central's API does not redirect."
)
"""The ``bad_request`` remedy for a redirect: no cause fits better, the advice must differ."""

FAMILY_REMEDY = (
    "403 while another probe of this tenant succeeds: the credential may call {} but not {} for "
    "this tenant: its API role lacks that product's permission. Not a tenant outage; give the "
    "credential a role that covers this API (Global Settings > API Credentials Management) or "
    "remove the probe from tenant_probes."
)
"""The ``forbidden`` remedy when families disagree for one tenant (``tenant_probes``)."""


_PROXY_NAMED = re.compile(r"\bproxy (\[?[A-Za-z0-9.:-]+\]?:[0-9]{1,5})\b")
"""How ``agent.transport.ProxyFailure`` names the proxy in its message: host and port only."""


def diagnose(probe: str, outcome: Outcome, context: Context | None = None) -> Diagnosis:
    cause = cause_of(probe, outcome, context or Context())
    remedy = REMEDIES[cause]
    age = context.token_age if context else None
    if cause == "token_rejected" and age is not None and age < FRESH_TOKEN_SECONDS:
        remedy = HEADER_401_REMEDY
    if cause == "bad_request" and 300 <= outcome.status_code < 400:
        remedy = REDIRECT_REMEDY
    if outcome.status_code == 403 and context is not None and context.permitted:
        cause, remedy = "forbidden", FAMILY_REMEDY.format(context.permitted, context.path)
    if cause == "proxy_error" and (named := _PROXY_NAMED.search(outcome.message)):
        remedy = f"{remedy} Proxy: {named[1]}."
    return Diagnosis(cause, remedy)


def cause_of(probe: str, outcome: Outcome, context: Context) -> str:
    """The one cause label value for an outcome (one of ``metricnames.CAUSES``)."""
    status, code = outcome.status_code, outcome.error_code
    if status == 0 and code in PROXY_CODES:
        return "proxy_error"
    if status == 0:
        # The agent's own codes for calls it did not make; a body can never set these, since
        # an answer always has a status.
        return code if code in SKIP_CAUSES else "network_error"
    if outcome.ok:
        return "invalid_response" if code == "invalid_response" else "ok"
    token_call = probe == "token" or outcome.from_token
    if (token_call and status in (400, 401, 403)) or code.lower().startswith("oauth."):
        return "invalid_credentials"
    if status == 401:
        return "token_rejected"
    if status == 403:
        return _forbidden_cause(probe, context.tenant)
    if not token_call and is_wrong_api_host(probe, status, context.api_url):
        return "wrong_api_host"
    return _status_cause(status)


def is_wrong_api_host(probe: str, status: int, api_url: str) -> bool:
    """whoami answered 504 on a data-region host: the configuration is wrong, not Sophos.

    Decided from the host name (``api-eu01.central.sophos.com``), because a data-region host
    answers whoami with a gateway timeout rather than anything that names the mistake. The
    support evidence for 5XX answers uses the same test to leave this case out.
    """
    return probe == "whoami" and status == 504 and is_data_region_url(api_url)


def _forbidden_cause(probe: str, tenant: Tenant | None) -> str:
    if probe == "tenant_list":
        return "partner_id_mismatch"
    if tenant is not None:  # any per-tenant probe: business state blocks every family
        billing = tenant.billing_type.lower()
        if billing == "trial":
            return "trial_account"
        if billing == "term":
            return "partner_assistance_disabled"
    return "forbidden"


def _status_cause(status: int) -> str:
    if status == 404:
        return "not_found"
    if status == 429:
        return "rate_limited"
    if status == 451:
        return "export_restricted"
    if status in (502, 503, 504):
        return "sophos_unavailable"
    if status >= 500:
        return "sophos_server_error"
    return "bad_request"
