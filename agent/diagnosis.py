"""Why a probe failed: which cause an outcome gets, and which of the cause's remedies fits.

blackbox_exporter tells you *that* a probe failed; users keep asking *why* (its issue #1077).
Every outcome here maps to one ``cause`` of ``agent.causes.TABLE`` (a label value that users'
alerts and dashboards rely on), whose entry says what it means, its kind and its remedy
(paraphrased from Sophos's "Common troubleshooting steps for Sophos Central API errors"). This
module only decides; it keeps no text of its own. A 403 on a tenant is often business state (a
trial account, a term customer without Partner Assistance), not an outage.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from agent.causes import (
    BAD_REQUEST,
    BY_STATUS,
    CREDENTIAL_EXPIRED,
    FORBIDDEN,
    HOST_NOT_ALLOWED,
    INVALID_CREDENTIALS,
    INVALID_RESPONSE,
    NETWORK_ERROR,
    NOT_ACTIVATED,
    NOT_SENT,
    NOT_SOPHOS_ANSWER,
    OK,
    PARTNER_ASSISTANCE_DISABLED,
    PARTNER_ID_MISMATCH,
    PROXY_ERROR,
    SOPHOS_SERVER_ERROR,
    TLS_ERROR,
    TOKEN_REJECTED,
    TRIAL_ACCOUNT,
    TRIAL_WITHOUT_HOST,
    WRONG_API_HOST,
    lookup,
)
from agent.classify import PROXY_CODES, Outcome
from agent.config import Credential
from agent.expiry import date_text
from agent.htmlpage import is_gateway_page
from agent.sophos import Tenant, is_data_region_url

FRESH_TOKEN_SECONDS = 120.0
"""A 401 on a token younger than this cannot be about the token (``TOKEN_REJECTED``'s
``fresh_token`` remedy)."""


@dataclass(frozen=True)
class Diagnosis:
    cause: str
    remedy: str


@dataclass(frozen=True)
class Context:
    """What else is known when a probe ends: the tenant, how old the token was, the configured
    ``api_url`` (whoami goes there), the credential as configured and the time.

    The prober fills it whole for every result, so a rule that needs more of what the user
    configured about the credential (its ``expires_at``, say) reads it here: a new cause needs
    its entry in the table and its rule below, no new plumbing.
    """

    tenant: Tenant | None = None
    token_age: float | None = None
    api_url: str = ""
    path: str | None = None
    permitted: str | None = None
    """For a per-tenant probe: its path, and the path of another family this tenant answers."""
    credential: Credential | None = None
    now: float | None = None
    """The agent's clock (wall time) when the probe ended."""

    @property
    def expired(self) -> bool:
        """The credential's configured ``expires_at`` has come."""
        expiry = self.credential.expiry if self.credential is not None else None
        return expiry is not None and self.now is not None and self.now >= expiry


_PROXY_NAMED = re.compile(r"\bproxy (\[?[A-Za-z0-9.:-]+\]?:[0-9]{1,5})\b")
"""How ``agent.transport.ProxyFailure`` names the proxy in its message: host and port only."""


def diagnose(probe: str, outcome: Outcome, context: Context | None = None) -> Diagnosis:
    cause = cause_of(probe, outcome, context or Context())
    remedy = lookup(cause).remedy
    age = context.token_age if context else None
    if cause == TOKEN_REJECTED.name and age is not None and age < FRESH_TOKEN_SECONDS:
        remedy = TOKEN_REJECTED.variants["fresh_token"]
    if cause == BAD_REQUEST.name and 300 <= outcome.status_code < 400:
        remedy = BAD_REQUEST.variants["redirect"]
    if outcome.status_code == 403 and context is not None and context.permitted:
        cause = FORBIDDEN.name
        remedy = FORBIDDEN.variants["family"].format(permitted=context.permitted, path=context.path)
    if cause == INVALID_RESPONSE.name and (probe == "token" or outcome.from_token):
        remedy = INVALID_RESPONSE.variants["token"]
    if cause == PROXY_ERROR.name and (named := _PROXY_NAMED.search(outcome.message)):
        remedy = f"{remedy} Proxy: {named[1]}."
    expiry = context.credential.expiry if context and context.credential else None
    if cause == CREDENTIAL_EXPIRED.name and expiry is not None:
        remedy = f"{remedy} It expired on {date_text(expiry)}."
    if cause == TLS_ERROR.name and outcome.tls is not None:
        variant = TLS_ERROR.variants.get(outcome.tls.reason)
        # OpenSSL's words: why it refused a certificate, or why the handshake failed.
        why = outcome.tls.why
        remedy = remedy if variant is None else variant.format(why=why, handshake=why)
    if cause == NOT_SOPHOS_ANSWER.name and outcome.page_title is not None:
        page = "page" if outcome.page_title else "untitled"
        remedy = NOT_SOPHOS_ANSWER.variants[page].format(title=outcome.page_title)
    return Diagnosis(cause, remedy)


def not_probed(tenant: Tenant, may_call: Callable[[str], bool]) -> Diagnosis | None:
    """Why the agent sends nothing for a listed tenant, or None when it probes the tenant.

    ``may_call`` is the host policy: whether the bearer token may go to the tenant's apiHost.
    """
    if tenant.api_host_problem:
        return Diagnosis(HOST_NOT_ALLOWED.name, HOST_NOT_ALLOWED.variants["malformed"])
    if tenant.api_host is None:
        trial = tenant.billing_type.lower() == "trial"
        chosen = TRIAL_WITHOUT_HOST if trial else NOT_ACTIVATED
        return Diagnosis(chosen.name, chosen.remedy)
    if not may_call(tenant.api_host):
        return Diagnosis(HOST_NOT_ALLOWED.name, HOST_NOT_ALLOWED.remedy)
    return None


def cause_of(probe: str, outcome: Outcome, context: Context) -> str:
    """The one cause label value for an outcome (one of ``agent.causes.LABEL_VALUES``)."""
    status, code = outcome.status_code, outcome.error_code
    if status == 0 and code in PROXY_CODES:
        return PROXY_ERROR.name
    if status == 0 and code == TLS_ERROR.name:
        return TLS_ERROR.name
    if status == 0:
        # The agent's own codes for calls it did not make; a body can never set these, since
        # an answer always has a status.
        return code if code in NOT_SENT else NETWORK_ERROR.name
    if is_not_sophos_answer(outcome):
        return NOT_SOPHOS_ANSWER.name
    if outcome.ok:
        return INVALID_RESPONSE.name if code == INVALID_RESPONSE.name else OK.name
    token_call = probe == "token" or outcome.from_token
    oauth_code = code.lower().startswith("oauth.") and status < 500  # a 5XX is Sophos's failure
    if (token_call and status in (400, 401, 403)) or oauth_code:
        return CREDENTIAL_EXPIRED.name if context.expired else INVALID_CREDENTIALS.name
    if status == 401:
        return TOKEN_REJECTED.name
    if status == 403:
        return _forbidden_cause(probe, context.tenant)
    if not token_call and is_wrong_api_host(probe, status, context.api_url):
        return WRONG_API_HOST.name
    return _status_cause(status)


def is_not_sophos_answer(outcome: Outcome) -> bool:
    """Someone other than Sophos answered: an HTML page where Sophos answers JSON, whatever the
    status, or a 2XX the client found to have none of the call's fields.

    A 5XX page that names only its status, or has no title, is a gateway's stock error page,
    which Sophos's own gateways send (nginx's "502 Bad Gateway"): that one stays an outage of
    Sophos, with its support evidence. Decided before the token rules too: a block page from the
    id host's address says nothing about the client secret.
    """
    if outcome.ok and outcome.error_code == NOT_SOPHOS_ANSWER.name:
        return True
    title = outcome.page_title
    return title is not None and not is_gateway_page(outcome.status_code, title)


def is_wrong_api_host(probe: str, status: int, api_url: str) -> bool:
    """whoami answered 504 on a data-region host: the configuration is wrong, not Sophos.

    Decided from the host name (``api-eu01.central.sophos.com``), because a data-region host
    answers whoami with a gateway timeout rather than anything that names the mistake. The
    support evidence for 5XX answers uses the same test to leave this case out.
    """
    return probe == "whoami" and status == 504 and is_data_region_url(api_url)


def _forbidden_cause(probe: str, tenant: Tenant | None) -> str:
    if probe == "tenant_list":
        return PARTNER_ID_MISMATCH.name
    if tenant is not None:  # any per-tenant probe: business state blocks every family
        billing = tenant.billing_type.lower()
        if billing == "trial":
            return TRIAL_ACCOUNT.name
        if billing == "term":
            return PARTNER_ASSISTANCE_DISABLED.name
    return FORBIDDEN.name


def _status_cause(status: int) -> str:
    """The cause the table names for this status (``Cause.answers``); any other 5XX is a server
    error, anything else (another 4XX, a redirect) a bad request."""
    named = BY_STATUS.get(status)
    if named is not None:
        return named
    return SOPHOS_SERVER_ERROR.name if status >= 500 else BAD_REQUEST.name
