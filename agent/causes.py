"""Every cause a probe result can have, and what it means: one entry per cause, in one table.

A probe result carries one ``cause`` (the ``cause`` label of ``sophos_central_probe_cause_info``).
Each cause has one **kind**, the same on every surface:

- ``ok``: the probe succeeded;
- ``business``: the customer's or Sophos's decision about the account (a trial, no Partner
  Assistance, an activation not finished): reported, counted apart, never an outage;
- ``failure``: something is broken or refused, and a person can act on it.

Everything that says what a cause means derives from this table: the diagnosis's remedies
(``agent/diagnosis.py`` decides *which* cause an outcome gets), the log hint, ``/metrics`` (the
``kind`` label and the tenant states), ``/status``, ``check``, ``/support``, the dashboards
(``tools/gen_dashboards.py`` generates their colours and texts from it), and the alert and
recording rules (they select on ``kind``; where they need another property, such as "a 5XX or no
answer", ``tests/test_causes.py`` holds their cause lists equal to the table, as it holds
``docs/troubleshooting.md``, the runbook's list of causes and the README's).

Adding a cause: one ``_entry(...)`` below (its place in the table is its place in the docs), the
rule that picks it in ``agent/diagnosis.py`` (none when ``answers`` lists its HTTP statuses), a
section in ``docs/troubleshooting.md`` (the test prints the text to paste), and its test.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

Kind = Literal["ok", "business", "failure"]

CONFIRMED_AFTER = 3
"""Failures in a row that confirm a failure: a failed per-tenant probe is re-probed until this
many fail in a row (or one succeeds), 5XX support evidence becomes "persistent" at this many 5XX
in a row, and the dashboards and the per-tenant alerts call a failure confirmed from here."""

NOT_PROBED = "not probed"
"""How every surface says that the agent sent nothing for a tenant on purpose: only ever for a
cause whose ``sent`` is False, never for a result that came from a call."""


@dataclass(frozen=True)
class KindStyle:
    """How one kind looks: the words of the legends and one colour, the same everywhere."""

    kind: Kind
    words: str
    grafana: str
    """The colour on every dashboard (a Grafana colour name)."""
    html: str
    """The same colour on ``/status``, dark enough to read as text on its light background."""


KINDS: Mapping[Kind, KindStyle] = MappingProxyType(
    {
        "ok": KindStyle("ok", "ok: nothing to do", "green", "#1a7f37"),
        "business": KindStyle(
            "business",
            "business state: a customer's or Sophos's decision about the account (a trial, no "
            "Partner Assistance, an activation not finished), not an outage",
            "purple",
            "#7b3fa0",
        ),
        "failure": KindStyle(
            "failure", "failure: something is broken or refused, act on it", "red", "#b3261e"
        ),
    }
)


@dataclass(frozen=True)
class Cause:
    """One cause: what it is, how surfaces show it and what to do about it."""

    name: str
    """The ``cause`` label value. Users' alerts and dashboards select on it: never rename."""
    kind: Kind
    summary: str
    """What happened, in one line (the runbook's and the dashboards' lists of causes)."""
    remedy: str
    """What to do: shown on ``/status``, by ``check`` and as the log line's ``hint``."""
    sent: bool = True
    """Whether a call went out. False: the agent sent nothing for the tenant on purpose, and
    every surface says so in words (``NOT_PROBED``)."""
    evidence: bool = False
    """Its answers are Sophos-side 5XX failures: support evidence is kept from the first one
    (``/support``, ``support-bundle``) and the persistent-5XX alert fires on it."""
    unavailable: bool = False
    """The API looks down from here (a 5XX or no answer at all): the outage rules count it."""
    refused: bool = False
    """A 403: the API refused the credential (the forbidden-spike rules count it)."""
    per_probe: bool = True
    """Whether a probe result can carry it; False for a reason that is only ever counted per
    tenant list (``sophos_central_tenants{state}``), because no tenant id can be named."""
    answers: tuple[int, ...] = ()
    """HTTP statuses that mean this cause once nothing earlier in the diagnosis decided."""
    why: str = ""
    """Why its kind is what it is, where that is not obvious."""
    log: str = ""
    """For a cause whose ``sent`` is False: the log message, said once per change."""
    variants: Mapping[str, str] = field(default_factory=dict)
    """Other remedies for the same cause, picked by the diagnosis from what else it knows; a
    ``{name}`` in one is filled in from that knowledge."""

    @property
    def status_words(self) -> str | None:
        """What surfaces show as the status when no call was sent, else None."""
        return None if self.sent else NOT_PROBED


TABLE: dict[str, Cause] = {}
"""Every cause by name, in the order the docs list them."""


def _entry(entry: Cause) -> Cause:
    """Add one cause to the table (the table's order is the order of these calls)."""
    if entry.name in TABLE:
        raise ValueError(f"cause {entry.name} is defined twice")
    TABLE[entry.name] = entry
    return entry


def _in_support_case(what: str) -> str:
    return (
        f"{what}, open a support case 'New API 5xx error' with the evidence on the exporter's "
        "/support page (or `sophos-central-exporter support-bundle --config FILE`)."
    )


# --- the table ------------------------------------------------------------------------------------

OK = _entry(Cause("ok", "ok", "the probe's last call succeeded", "Nothing to do."))

INVALID_CREDENTIALS = _entry(
    Cause(
        "invalid_credentials",
        "failure",
        "the token endpoint refused the client id / secret",
        "Sophos rejected the client id or secret. Check both values in the agent's config; if they "
        "cannot be confirmed, create a new API credential in Sophos Central (Global Settings > "
        "API Credentials Management) and update the config.",
    )
)

CREDENTIAL_EXPIRED = _entry(
    Cause(
        "credential_expired",
        "failure",
        "the token endpoint refused the credential on or after its expires_at date",
        "The credential has expired (the date in its expires_at has passed) and Sophos refuses "
        "it; an expired credential cannot be renewed. Create a new API credential in Sophos "
        "Central (Global Settings > API Credentials Management), put its client id, secret and "
        "expires_at in the config and in every other integration that used the old one.",
    )
)

TOKEN_REJECTED = _entry(
    Cause(
        "token_rejected",
        "failure",
        "an API call with a token got 401 (expired, missing or unusable token, missing header)",
        "The API refused the bearer token. Tokens live one hour: the agent fetches a new one on "
        "its next call. If this repeats with fresh tokens, a required header (Authorization, "
        "X-Tenant-ID, X-Partner-ID) is missing or wrong for this host.",
        variants={
            "fresh_token": (
                "401 with a token issued moments ago: the token is not the problem. A required "
                "header is missing or wrong (X-Tenant-ID for tenant calls, X-Partner-ID or "
                "X-Organization-ID for lists), or the call went to another tenant's host."
            ),
        },
    )
)

PARTNER_ID_MISMATCH = _entry(
    Cause(
        "partner_id_mismatch",
        "failure",
        "403 on the tenant list: the X-Partner-ID / X-Organization-ID does not belong to this "
        "credential",
        "The partner or organization id sent does not match the credential. Call whoami and use "
        "the id it returns in X-Partner-ID / X-Organization-ID; the agent does this itself, so "
        "check the credential belongs to the account you expect.",
        refused=True,
    )
)

TRIAL_ACCOUNT = _entry(
    Cause(
        "trial_account",
        "business",
        "403 from a tenant whose billing type is trial",
        "403 from a trial tenant: business state, not an outage. Sophos refuses partner API calls "
        "to trial accounts; confirm the account type in the Partner Dashboard.",
        refused=True,
        why="Sophos gives partners no API access to trial accounts: the answer is the account "
        "type, and it stays so until the customer buys a licence.",
    )
)

PARTNER_ASSISTANCE_DISABLED = _entry(
    Cause(
        "partner_assistance_disabled",
        "business",
        "403 on a term tenant: Partner Assistance is off",
        "403 on a term-licensed tenant: the customer has not enabled Partner Assistance. Ask the "
        "customer to enable it, or confirm its state in the Partner Dashboard. Business state, "
        "not an outage.",
        refused=True,
        why="The customer manages its own licence and chose not to let the partner in: the API "
        "works, the answer is the customer's decision.",
    )
)

FORBIDDEN = _entry(
    Cause(
        "forbidden",
        "failure",
        "any other 403",
        "403: this credential may not access the resource. Check that the tenant belongs to this "
        "partner or organization and that the credential has the role the call needs.",
        refused=True,
        variants={
            "family": (
                "403 while another probe of this tenant succeeds: the credential may call "
                "{permitted} but not {path} for this tenant: its API role lacks that product's "
                "permission. Not a tenant outage; give the credential a role that covers this API "
                "(Global Settings > API Credentials Management) or remove the probe from "
                "tenant_probes."
            ),
        },
    )
)

BAD_REQUEST = _entry(
    Cause(
        "bad_request",
        "failure",
        "400, or another status no better cause covers (another 4XX, a redirect)",
        "400: Sophos could not parse the request. Reproduce it (e.g. in Postman or with the curl "
        "command from the support bundle) to find the malformed part; check tenant_probe_path.",
        answers=(400,),
        variants={
            "redirect": (
                "3XX: the host answered with a redirect, which the agent never follows (it "
                "could carry the bearer token to a host nobody approved). Check auth_url, api_url "
                "and any proxy or gateway in between; Sophos Central's API does not redirect."
            ),
        },
    )
)

NOT_FOUND = _entry(
    Cause(
        "not_found",
        "failure",
        "404: the object does not exist",
        "404: the object does not exist. The tenant or item may have been deleted, or an id is "
        "mistyped; re-list tenants and check tenant_probe_path.",
        answers=(404,),
    )
)

RATE_LIMITED = _entry(
    Cause(
        "rate_limited",
        "failure",
        "429: a Sophos rate limit was hit; the credential is paused",
        "429: the credential exceeded a Sophos rate limit (spike arrest). The agent pauses this "
        "credential; check which integration spends the budget and lower budget_share or spread "
        "its calls per Sophos's rate-limiting guide.",
        answers=(429,),
    )
)

SOPHOS_SERVER_ERROR = _entry(
    Cause(
        "sophos_server_error",
        "failure",
        "500 (or another 5XX outside 502-504)",
        "500: Sophos Central failed to process the call. Check the Sophos Central status page; "
        + _in_support_case("if it persists"),
        evidence=True,
        unavailable=True,
        answers=(500,),
    )
)

SOPHOS_UNAVAILABLE = _entry(
    Cause(
        "sophos_unavailable",
        "failure",
        "502, 503, 504: the service or its gateway is unavailable",
        "502/503/504: the Sophos service or its gateway is unavailable (maintenance or overload). "
        "Usually temporary; check the Sophos Central status page and, "
        + _in_support_case("if it persists"),
        evidence=True,
        unavailable=True,
        answers=(502, 503, 504),
    )
)

NETWORK_ERROR = _entry(
    Cause(
        "network_error",
        "failure",
        "no answer: timeout, refused connection or protocol error",
        "No answer: timeout, refused connection or protocol failure. Check DNS, proxies and "
        "firewalls between the agent and the Sophos host.",
        unavailable=True,
    )
)

_TLS_LET_THROUGH = "have *.sophos.com and id.sophos.com exempted from inspection"

TLS_ERROR = _entry(
    Cause(
        "tls_error",
        "failure",
        "no answer: the TLS handshake failed (a certificate the agent does not trust or that "
        "does not fit, or TLS itself); the reason picks the remedy",
        "The TLS handshake with the host failed, so no answer was read. Check what sits between "
        "the agent and Sophos (a proxy or firewall that inspects TLS), ca_bundle, and that "
        "auth_url and api_url name Sophos's HTTPS hosts; the log line gives the reason.",
        unavailable=True,
        why="Decided: failure, and the API unavailable from here, as when it was part of "
        "network_error: no answer was read, so the outage rules count it; no 5XX support "
        "evidence. The error_code label stays tls_error; the handshake's reason (one of "
        "tls_unknown_issuer, tls_hostname_mismatch, tls_expired, tls_not_yet_valid, "
        "tls_self_signed, tls_ca_rejected, tls_handshake) picks the remedy and is in the log "
        "line.",
        variants={
            "tls_unknown_issuer": (
                "TLS: the host's certificate was issued by a CA the agent does not trust. "
                "Sophos's certificates chain to public CAs every system trusts, so this is "
                "almost always a TLS-inspecting proxy or firewall re-signing the traffic: set "
                "ca_bundle to a PEM file with that proxy's CA certificate (whoever runs the "
                f"proxy has it), or {_TLS_LET_THROUGH}."
            ),
            "tls_hostname_mismatch": (
                "TLS: the certificate presented is not valid for the host the agent called, so "
                "something else answers for that name: an inspecting proxy that re-signs under "
                "another name, a captive portal, or DNS that points elsewhere. Check DNS for "
                "the host and the URLs in auth_url and api_url; a CA in ca_bundle does not "
                "help."
            ),
            "tls_expired": (
                "TLS: a certificate in the chain has expired. Check the exporter host's clock "
                "first (NTP); if it is right, the expired certificate is an inspecting proxy's "
                "(its CA or the certificate it issued: have it renewed) or, when nothing "
                "inspects the traffic, Sophos's own (check the Sophos Central status page)."
            ),
            "tls_not_yet_valid": (
                "TLS: a certificate in the chain is not valid yet. The exporter host's clock is "
                "most likely behind: check NTP. Otherwise an inspecting proxy issued a "
                "certificate dated in the future."
            ),
            "tls_self_signed": (
                "TLS: the host presented a self-signed certificate, which Sophos never does: "
                "something else answers (a proxy, an appliance, a test server). If it is an "
                "inspecting proxy you trust, put its certificate in ca_bundle; otherwise find "
                "out what answers for this host."
            ),
            "tls_ca_rejected": (
                "TLS: the agent refuses a certificate of the chain ({why}). The agent checks "
                "X.509 strictly, as every Python 3.13 client does, and this is usually a "
                "TLS-inspecting proxy's own CA, made without a critical Basic Constraints "
                "extension or without Key Usage. Have that CA re-issued to RFC 5280 (Basic "
                "Constraints critical with CA:TRUE, Key Usage keyCertSign, key identifiers) and "
                "put it in ca_bundle. Until then tls_x509_strict: false accepts what only the "
                "strict rules refuse, as Python 3.12 did; your integrations on Python 3.13 "
                "fail the same way."
            ),
            "tls_handshake": (
                "TLS: the handshake failed before any certificate was judged ({handshake}): no "
                "protocol version or cipher in common, a renegotiation refused, or something "
                "that does not speak TLS on that port. Check the proxy or firewall between the "
                "agent and Sophos, and that auth_url and api_url name Sophos's HTTPS hosts."
            ),
        },
    )
)

HOST_NOT_ALLOWED = _entry(
    Cause(
        "host_not_allowed",
        "failure",
        "the tenant's API host is not in allowed_api_hosts, or not a URL the agent will call; "
        "not probed",
        "The tenant's apiHost is outside allowed_api_hosts, so the agent sends nothing there. If "
        "the host is genuinely Sophos's, add it to allowed_api_hosts.",
        sent=False,
        why="Decided: failure. Nothing checks this tenant until a person acts: "
        "allowed_api_hosts is too narrow for a genuine Sophos host, or the tenant list named a "
        "host that is not Sophos's (a broken or forged answer worth a look). Neither the "
        "customer nor Sophos decided it, so it is not business state; nothing was sent, so "
        "surfaces say 'not probed' in words while showing it as the failure it is.",
        log="tenant apiHost is not one the agent may call; nothing is sent there",
        variants={
            "malformed": (
                "The tenant's apiHost is not a URL the agent will call (not an http(s) URL, "
                "characters a host name cannot have, or far too long), so nothing is sent "
                "there. No setting allows it: the tenant list answer itself is wrong; if it "
                "persists, report it to Sophos with the tenant id."
            ),
        },
    )
)

NOT_ACTIVATED = _entry(
    Cause(
        "not_activated",
        "business",
        "the tenant has no API host yet; not probed",
        "The tenant has no apiHost: it is not activated yet, so there is nothing to probe. Finish "
        "its activation in Sophos Central.",
        sent=False,
        why="The customer's activation is not finished: nothing is broken on either side, and "
        "there is nothing to call yet.",
        log="tenant is not activated (no apiHost); nothing is sent there",
    )
)

TRIAL_WITHOUT_HOST = _entry(
    Cause(
        "trial_without_host",
        "business",
        "a trial tenant listed without an API host; not probed",
        "Trial account listed without an apiHost: business state, not an outage. There is "
        "nothing to call (the agent sends nothing) until the account is converted; confirm the "
        "account type in the Partner Dashboard.",
        sent=False,
        why="Sophos lists trial accounts without an apiHost: there is no activation to finish and "
        "no host to call, only the account type.",
        log="tenant is a trial account listed without apiHost; nothing is sent there",
    )
)

INVALID_RESPONSE = _entry(
    Cause(
        "invalid_response",
        "failure",
        "a 2XX answer in Sophos's shape that the agent cannot read (a field missing or of the "
        "wrong type, too large, a coding it did not ask for)",
        "Sophos answered 2XX with a body the agent cannot read. Usually a proxy or a Sophos-side "
        "defect; capture the response and contact Sophos support if it persists.",
        why="Sophos's answer, broken or cut on the way: the call reached the API. A body that is "
        "clearly not Sophos's (an HTML page, JSON with none of the call's fields) is "
        "not_sophos_answer.",
        variants={
            "token": (
                "The id host answered 2XX without a usable token (not JSON, no access_token, or "
                "an expires_in of 0 or less: expired on arrival). Sophos's tokens last an hour, "
                "so something else answered: check auth_url and any proxy or gateway in between. "
                "The agent keeps such a token a minute at most and never fetches more than one "
                "per call."
            ),
        },
    )
)

_LET_THROUGH = (
    "Have *.sophos.com and id.sophos.com let through unchanged, and check auth_url, api_url and "
    "the proxy settings."
)
_A_PAGE = (
    "came where Sophos answers JSON: a captive portal, a web filter's or WAF's block page, an "
    "inspecting proxy's error or maintenance page. "
    + _LET_THROUGH
    + " If the title names Sophos (a maintenance notice), check the Sophos Central status page."
)

NOT_SOPHOS_ANSWER = _entry(
    Cause(
        "not_sophos_answer",
        "failure",
        "an answer that is not Sophos's: an HTML page (other than a gateway's stock 5XX page) or "
        "2XX JSON with none of the call's fields, from a portal, WAF, proxy or maintenance page",
        "Not Sophos's answer: a 2XX whose JSON has none of the fields this call answers with (a "
        "health or status document, another service's API), so something else answers in "
        "Sophos's place. " + _LET_THROUGH,
        unavailable=True,
        why="Decided: failure; the API unavailable from here, never a refusal, and no 5XX "
        "support evidence. Whoever answered, Sophos's answer never arrived, so the outage rules "
        "count it (a portal or a block page in front of every call pages like an outage); the "
        "page is not Sophos's, so a 403 page is no refused credential and a 5XX page is nothing "
        'for a Sophos support case. A 5XX page that names only its status ("502 Bad '
        "Gateway\") or has no title is a gateway's stock page, as Sophos's own gateways send: "
        "sophos_unavailable or sophos_server_error, with evidence. A 2XX in Sophos's shape that "
        "cannot be read is invalid_response.",
        variants={
            "page": 'Not Sophos\'s answer: a proxy or WAF page? An HTML page titled "{title}" '
            + _A_PAGE,
            "untitled": "Not Sophos's answer: a proxy or WAF page? An HTML page without a title "
            + _A_PAGE,
        },
    )
)

WRONG_API_HOST = _entry(
    Cause(
        "wrong_api_host",
        "failure",
        "whoami answered 504 because api_url names a data-region host; fix api_url, not a Sophos "
        "outage",
        "api_url names a data-region host (api-<region>.central.sophos.com); whoami answers 504 "
        "there. Set api_url to https://api.central.sophos.com: the agent finds each tenant's "
        "data-region host itself. Not a Sophos outage; no support case needed.",
        why="A 504, but from the agent's own configuration: no support evidence, no outage alert.",
    )
)

EXPORT_RESTRICTED = _entry(
    Cause(
        "export_restricted",
        "failure",
        "451: Sophos refuses calls from where the exporter runs (US export control); retrying does "
        "not help",
        "451: Sophos refuses calls from where the agent runs (US export control applies to its "
        "location or its egress IP). Retrying does not help: run the exporter from an allowed "
        "location or egress, or contact Sophos.",
        answers=(451,),
        why="Decided: failure. Sophos answered, but about where the exporter runs, not about the "
        "customer's account: nothing can be monitored from there until someone moves the exporter "
        "or its egress, and waiting does not clear it. Business state is a decision about an "
        "account that monitoring should report and accept; this one needs a person.",
    )
)

PROXY_ERROR = _entry(
    Cause(
        "proxy_error",
        "failure",
        "no answer because the outbound proxy refused (407, 403 to CONNECT) or could not be "
        "reached",
        "The outbound proxy did not pass the call on, so Sophos never saw it. error_code says "
        "why: proxy_auth_required (407: set user:password@ in proxy_url, or check them), "
        "proxy_refused (the proxy answered CONNECT with another status: allow CONNECT to "
        "*.sophos.com:443 and id.sophos.com:443), proxy_unreachable (check the host:port in "
        "proxy_url or HTTPS_PROXY, and that the proxy runs).",
        unavailable=True,
    )
)

INVALID_TENANT_ID = _entry(
    Cause(
        "invalid_tenant_id",
        "failure",
        "the tenant list held an item whose id the agent refuses; counted, not probed",
        "The tenant list held items whose id is not one the agent accepts (missing, too long, or "
        "with characters Sophos tenant ids never have), so they are counted but never probed. The "
        "tenant list answer is broken; if it persists, report it to Sophos with the time the "
        "agent's log first said so.",
        sent=False,
        per_probe=False,
        why="A listed tenant nobody monitors, because the answer that lists it is broken or "
        "hostile: a person should report it.",
        log="tenant list items with an id the agent refuses are counted, not probed",
    )
)


# --- views of the table -----------------------------------------------------------------------


def lookup(name: str) -> Cause:
    """The entry of a cause; a name the table does not know reads as a failure."""
    return TABLE.get(name) or Cause(name, "failure", name, "")


def kind_of(name: str) -> Kind:
    return lookup(name).kind


LABEL_VALUES: tuple[str, ...] = tuple(c.name for c in TABLE.values() if c.per_probe)
"""The values the ``cause`` label can take."""

NOT_SENT: tuple[str, ...] = tuple(c.name for c in TABLE.values() if not c.sent)
"""Why a listed tenant is not probed (each also a ``sophos_central_tenants`` state)."""

BY_STATUS: Mapping[int, str] = MappingProxyType(
    {status: c.name for c in TABLE.values() for status in c.answers}
)

TENANT_STATES: tuple[str, ...] = ("probed", *NOT_SENT)
"""The ``state`` label values of ``sophos_central_tenants``: every listed tenant is in one."""


def names(*, kind: Kind | None = None, **flags: bool) -> tuple[str, ...]:
    """Cause names with a kind and/or flags, in table order: ``names(evidence=True)``."""
    return tuple(
        c.name
        for c in TABLE.values()
        if (kind is None or c.kind == kind)
        and all(getattr(c, flag) == wanted for flag, wanted in flags.items())
    )
