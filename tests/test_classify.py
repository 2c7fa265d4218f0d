"""Every body shape Sophos sends (and some it should not) becomes a bounded, label-safe outcome."""

from __future__ import annotations

import json
import ssl

import httpx
import pytest

from agent.causes import TABLE
from agent.classify import (
    ErrorCodeGuard,
    Outcome,
    classify_exception,
    classify_response,
)
from agent.config import Credential
from agent.diagnosis import Context, diagnose
from agent.sophos import Tenant
from agent.transport import ProxyFailure


def body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


CASES = [
    # (description, status, body, expected error_code, expected ids)
    (
        "token success with errorCode success",
        200,
        body(
            access_token="t",
            token_type="bearer",
            expires_in=3600,
            errorCode="success",
            message="OK",
        ),
        "",
        {},
    ),
    (
        "id host bad secret",
        401,
        body(
            errorCode="oauth.invalid_client_secret",
            message="Unauthorized",
            trackingId="197a2922-65e4-4548-a0a1-79a13b12c8fc",
        ),
        "oauth.invalid_client_secret",
        {"trackingId": "197a2922-65e4-4548-a0a1-79a13b12c8fc"},
    ),
    (
        "central 401",
        401,
        body(error="Unauthorized", correlationId="cdf74ec9", requestId="0ca2e378"),
        "Unauthorized",
        {"correlationId": "cdf74ec9", "requestId": "0ca2e378"},
    ),
    (
        "central 403",
        403,
        body(
            error="Forbidden",
            correlationId="c",
            requestId="r",
            createdAt="2020-01-14T16:29:46Z",
            message="Access Denied",
        ),
        "Forbidden",
        {"correlationId": "c", "requestId": "r"},
    ),
    (
        "central 400",
        400,
        body(error="BadRequest", correlationId="c1"),
        "BadRequest",
        {"correlationId": "c1"},
    ),
    ("central 404", 404, body(error="resourceNotFound"), "resourceNotFound", {}),
    ("errorCode wins over error", 401, body(errorCode="a.b", error="c"), "a.b", {}),
    ("html 502 from a gateway", 502, b"<html><body>Bad Gateway</body></html>", "", {}),
    ("empty 503", 503, b"", "", {}),
    ("json that is not an object", 500, b"[1, 2, 3]", "", {}),
    ("error code of the wrong type", 500, body(error=42, errorCode=None), "", {}),
    (
        "ids with hostile characters are dropped",
        500,
        body(error="X", correlationId="a\nb", requestId="x" * 500),
        "X",
        {},
    ),
    ("truncated json", 500, b'{"error": "Forb', "", {}),
    (
        "code and docUrl are kept with the ids",
        429,
        body(error="TooManyRequests", code="RTL1", docUrl="https://developer.sophos.com/x#y"),
        "TooManyRequests",
        {"code": "RTL1", "docUrl": "https://developer.sophos.com/x#y"},
    ),
    (
        "a docUrl that is not a URL is dropped",
        500,
        body(error="e", code="bad code", docUrl="javascript:alert(1)"),
        "e",
        {},
    ),
    (
        "a 2XX body's code is not an error code",
        200,
        body(items=[], code="C1", docUrl="https://x.example/"),
        "",
        {},
    ),
    ("deeply nested json", 500, b"[" * 100000 + b"]" * 100000, "", {}),
    ("invalid utf-8", 500, b"\xff\xfe\x00garbage", "", {}),
]


@pytest.mark.parametrize(
    ("status", "raw", "code", "ids"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_response_classification(status: int, raw: bytes, code: str, ids: dict[str, str]) -> None:
    outcome = classify_response(status, raw, {"content-type": "whatever"})
    assert outcome.status_code == status
    assert outcome.error_code == code
    assert outcome.ids == ids
    assert outcome.status_label == str(status)


def test_retry_after_is_kept_for_the_budget() -> None:
    outcome = classify_response(429, b"", httpx.Headers({"Retry-After": "7"}))
    assert outcome.retry_after == "7"


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (httpx.ReadTimeout("slow"), "timeout"),
        (httpx.ConnectTimeout("slow"), "timeout"),
        (TimeoutError(), "timeout"),
        (httpx.ConnectError("refused"), "connect_error"),
        (ConnectionRefusedError(), "connect_error"),
        (httpx.RemoteProtocolError("peer closed"), "protocol_error"),
        (httpx.ReadError("reset"), "protocol_error"),
        (httpx.DecodingError("bad gzip"), "protocol_error"),
        (ValueError("anything else"), "protocol_error"),
        (ProxyFailure("proxy_auth_required", "proxy p:3128 answered 407"), "proxy_auth_required"),
        (ProxyFailure("proxy_refused", "proxy p:3128 answered 403 Forbidden"), "proxy_refused"),
        (ProxyFailure("proxy_unreachable", "cannot connect to proxy p:3128"), "proxy_unreachable"),
        (httpx.ProxyError("some other proxy trouble"), "proxy_refused"),
    ],
)
def test_no_answer_gets_status_0_and_a_transport_code(exc: BaseException, code: str) -> None:
    outcome = classify_exception(exc)
    assert (outcome.status_code, outcome.error_code) == (0, code)


def test_tls_failure_inside_a_connect_error_is_a_tls_error() -> None:
    inner = ssl.SSLCertVerificationError("certificate verify failed")
    outer = httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED]")
    outer.__cause__ = inner
    assert classify_exception(outer).error_code == "tls_error"


@pytest.mark.parametrize(
    "code", ["", "oauth.invalid_client_secret", "Forbidden", "a:b-c_d.e", "Z" * 64]
)
def test_guard_keeps_valid_codes(code: str) -> None:
    assert ErrorCodeGuard().label(code) == code


@pytest.mark.parametrize(
    "code", ["1abc", "has space", "é", "a" * 65, "x\ny", "<html>", "a/b", "{}"]
)
def test_guard_turns_odd_codes_into_other(code: str) -> None:
    assert ErrorCodeGuard().label(code) == "other"


def test_guard_caps_distinct_values_at_100() -> None:
    guard = ErrorCodeGuard()
    labels = [guard.label(f"code{i}") for i in range(150)]
    assert labels[:100] == [f"code{i}" for i in range(100)]
    assert set(labels[100:]) == {"other"}
    assert guard.label("code5") == "code5"  # a value seen before keeps its label
    assert guard.label("timeout") == "timeout"  # transport codes never count against the cap


def _tenant(billing: str) -> Tenant:
    return Tenant(
        id="t1", name="Acme", billing_type=billing, api_host="https://api-eu01.central.sophos.com"
    )


DIAGNOSES = [
    ("token", Outcome(401, "oauth.invalid_client_secret"), None, "invalid_credentials"),
    ("token", Outcome(400, "oauth.client_app_does_not_exist"), None, "invalid_credentials"),
    ("whoami", Outcome(401, "Unauthorized"), None, "token_rejected"),
    ("tenant", Outcome(401, "oauth.invalid_client_secret"), None, "invalid_credentials"),
    ("tenant_list", Outcome(403, "Forbidden"), None, "partner_id_mismatch"),
    ("tenant", Outcome(403, "Forbidden"), _tenant("trial"), "trial_account"),
    ("tenant", Outcome(403, "Forbidden"), _tenant("term"), "partner_assistance_disabled"),
    ("tenant", Outcome(403, "Forbidden"), _tenant("usage"), "forbidden"),
    ("whoami", Outcome(403, "Forbidden"), None, "forbidden"),
    ("tenant", Outcome(400, "BadRequest"), None, "bad_request"),
    ("tenant", Outcome(404, "resourceNotFound"), None, "not_found"),
    ("tenant", Outcome(429, "TooManyRequests"), None, "rate_limited"),
    ("tenant", Outcome(500, ""), None, "sophos_server_error"),
    ("tenant", Outcome(502, ""), None, "sophos_unavailable"),
    ("tenant", Outcome(503, ""), None, "sophos_unavailable"),
    ("tenant", Outcome(504, ""), None, "sophos_unavailable"),
    ("tenant", Outcome(0, "timeout"), None, "network_error"),
    ("token", Outcome(0, "tls_error"), None, "tls_error"),
    ("tenant", Outcome(0, "host_not_allowed"), None, "host_not_allowed"),
    ("tenant", Outcome(0, "not_activated"), None, "not_activated"),
    ("token", Outcome(0, "proxy_auth_required"), None, "proxy_error"),
    ("tenant", Outcome(0, "proxy_refused"), None, "proxy_error"),
    ("whoami", Outcome(0, "proxy_unreachable"), None, "proxy_error"),
    ("tenant", Outcome(200, ""), None, "ok"),
    ("whoami", Outcome(200, "invalid_response"), None, "invalid_response"),
    ("tenant", Outcome(0, "trial_without_host"), None, "trial_without_host"),
    # A call that could not get a token carries the token endpoint's answer, whatever its code.
    ("whoami", Outcome(400, "customer.validation", from_token=True), None, "invalid_credentials"),
    ("tenant", Outcome(401, "OAuth.Invalid_Client_Secret"), None, "invalid_credentials"),
    ("tenant", Outcome(503, "", from_token=True), None, "sophos_unavailable"),
    ("tenant", Outcome(451, ""), None, "export_restricted"),
    ("token", Outcome(451, ""), None, "export_restricted"),
    ("whoami", Outcome(451, ""), None, "export_restricted"),
    # An answer never takes one of the agent's own codes as its cause, whatever it says.
    ("tenant", Outcome(403, "not_activated"), _tenant("usage"), "forbidden"),
    ("tenant", Outcome(400, "host_not_allowed"), None, "bad_request"),
    ("tenant", Outcome(502, "trial_account"), None, "sophos_unavailable"),
]

SPELLINGS = [
    (401, ("Unauthorized", "notAuthorized", "unauthorized", ""), "token_rejected"),
    (403, ("Forbidden", "forbidden", "forbiddenAccess", ""), "forbidden"),
    (404, ("resourceNotFound", "notFound", ""), "not_found"),
    (400, ("BadRequest", "badRequest", ""), "bad_request"),
    (429, ("TooManyRequests", ""), "rate_limited"),
    (500, ("internalServerError", "InternalServerError", ""), "sophos_server_error"),
]


@pytest.mark.parametrize(("status", "spellings", "cause"), SPELLINGS)
def test_the_cause_does_not_depend_on_the_error_spelling(
    status: int, spellings: tuple[str, ...], cause: str
) -> None:
    for spelling in spellings:
        outcome = classify_response(status, body(error=spelling, correlationId="c"))
        assert outcome.error_code == spelling  # the label keeps the raw value
        assert diagnose("whoami", outcome).cause == cause, spelling


WHOAMI_504 = [
    ("https://api-eu01.central.sophos.com", "wrong_api_host"),
    ("https://API-US03.central.sophos.com/", "wrong_api_host"),
    ("https://api.central.sophos.com", "sophos_unavailable"),
    ("https://api-eu01.central.sophos.com.evil.example", "sophos_unavailable"),
    ("http://127.0.0.1:8080", "sophos_unavailable"),
]


@pytest.mark.parametrize(("api_url", "cause"), WHOAMI_504)
def test_a_whoami_504_is_wrong_api_host_only_on_a_data_region_host(
    api_url: str, cause: str
) -> None:
    assert diagnose("whoami", Outcome(504), Context(api_url=api_url)).cause == cause


def test_a_504_elsewhere_on_a_data_region_api_url_is_still_unavailable() -> None:
    context = Context(api_url="https://api-eu01.central.sophos.com")
    assert diagnose("tenant_list", Outcome(504), context).cause == "sophos_unavailable"
    from_id_host = Outcome(504, from_token=True)  # whoami could not get a token
    assert diagnose("whoami", from_id_host, context).cause == "sophos_unavailable"
    assert diagnose("whoami", Outcome(503), context).cause == "sophos_unavailable"


@pytest.mark.parametrize(("probe", "outcome", "tenant", "cause"), DIAGNOSES)
def test_every_outcome_maps_to_one_cause(
    probe: str, outcome: Outcome, tenant: Tenant | None, cause: str
) -> None:
    diagnosis = diagnose(probe, outcome, Context(tenant=tenant))
    assert diagnosis.cause == cause
    assert diagnosis.remedy


def test_trial_403_is_reported_as_business_state() -> None:
    diagnosis = diagnose("tenant", Outcome(403, "Forbidden"), Context(tenant=_tenant("trial")))
    assert "not an outage" in diagnosis.remedy


def test_401_with_a_fresh_token_points_at_headers_not_expiry() -> None:
    fresh = diagnose("tenant", Outcome(401, "Unauthorized"), Context(token_age=5))
    old = diagnose("tenant", Outcome(401, "Unauthorized"), Context(token_age=3000))
    assert "header" in fresh.remedy and "moments ago" in fresh.remedy
    assert "one hour" in old.remedy


def test_a_proxy_error_remedy_names_the_proxy_by_host_and_port_only() -> None:
    failure = ProxyFailure("proxy_auth_required", "proxy proxy.example:3128 answered 407 Nope")
    diagnosis = diagnose("token", classify_exception(failure))
    assert diagnosis.cause == "proxy_error"
    assert diagnosis.remedy.endswith(" Proxy: proxy.example:3128.")
    assert diagnose("token", Outcome(0, "proxy_refused")).remedy == TABLE["proxy_error"].remedy


def _configured(expires_at: str | None) -> Credential:
    return Credential(name="c", client_id="x", client_secret="y", expires_at=expires_at)


EXPIRES = "2027-03-01"
AT_EXPIRY = 1803859200.0  # 2027-03-01T00:00:00Z
REFUSED = Outcome(401, "oauth.invalid_client_secret")
NO_TOKEN = Outcome(401, "Unauthorized", from_token=True)


@pytest.mark.parametrize(
    ("probe", "outcome", "expires_at", "now", "cause"),
    [
        # The token endpoint refuses on or after the configured date: the credential expired.
        ("token", REFUSED, EXPIRES, AT_EXPIRY, "credential_expired"),
        ("token", REFUSED, EXPIRES, AT_EXPIRY + 86400 * 9, "credential_expired"),
        # whoami (or a tenant) that could not get a token reports the token endpoint's refusal.
        ("whoami", NO_TOKEN, EXPIRES, AT_EXPIRY, "credential_expired"),
        # The same refusal a second before the date, or without a date: check both values.
        ("token", REFUSED, EXPIRES, AT_EXPIRY - 1, "invalid_credentials"),
        ("token", REFUSED, None, AT_EXPIRY, "invalid_credentials"),
        # After the date, what is not a refusal of the credential keeps its own cause.
        ("token", Outcome(503), EXPIRES, AT_EXPIRY, "sophos_unavailable"),
        ("token", Outcome(0, "timeout"), EXPIRES, AT_EXPIRY, "network_error"),
        ("tenant", Outcome(401, "Unauthorized"), EXPIRES, AT_EXPIRY, "token_rejected"),
    ],
)  # fmt: skip
def test_a_refusal_on_or_after_expires_at_is_the_credential_expiring(
    probe: str, outcome: Outcome, expires_at: str | None, now: float, cause: str
) -> None:
    context = Context(credential=_configured(expires_at), now=now)
    assert diagnose(probe, outcome, context).cause == cause


def test_an_expired_credentials_remedy_says_the_date_and_to_create_a_new_one() -> None:
    context = Context(credential=_configured(EXPIRES), now=AT_EXPIRY + 3600)
    remedy = diagnose("token", REFUSED, context).remedy
    assert remedy == TABLE["credential_expired"].remedy + " It expired on 2027-03-01."
    assert "Create a new API credential" in remedy
    assert "Check both values" not in remedy
