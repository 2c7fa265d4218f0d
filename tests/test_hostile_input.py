"""Whatever arrives from Sophos Central (or from something posing as it), the agent neither crashes
nor emits a label value Prometheus would choke on.

Property-based: hypothesis throws random bytes, arbitrary JSON of the wrong types, control, RTL
and surrogate characters, huge and deeply nested bodies at the classifier and the parsers. The only
exception allowed out of a parser is the documented ``InvalidResponse``.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import ssl
import threading
from collections.abc import Callable
from html.parser import HTMLParser
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from agent import metricnames as m
from agent.causes import LABEL_VALUES, TABLE
from agent.classify import (
    MAX_DISTINCT_ERROR_CODES,
    TRANSPORT_CODES,
    ErrorCodeGuard,
    Outcome,
    classify_exception,
    classify_response,
)
from agent.client import CallRecord
from agent.diagnosis import Context, diagnose
from agent.metrics import AgentMetrics
from agent.probes import CredentialState, ProbeResult
from agent.ratebudget import parse_retry_after
from agent.simulator.bodies import deep_json, huge_body
from agent.sophos import (
    InvalidResponse,
    Tenant,
    parse_tenant,
    parse_tenant_page,
    parse_token,
    parse_whoami,
)
from agent.views.status import render_status_page
from tests.snapshots import snapshot_of

LABEL_CODE = re.compile(r"\A[A-Za-z][A-Za-z0-9_.:-]{0,63}\Z")
TENANT_ID = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")
TRACKING_ID = re.compile(r"\A[A-Za-z0-9_.:-]{1,128}\Z")
FIELD_LIMITS = {"name": 128, "data_region": 32, "billing_type": 32, "data_geography": 32}

NASTY = (
    "\n",
    "\r\n",
    "\x00",
    "\x1b[2J",
    "\t",
    '"',
    "\\",
    "\\n",
    '"}',
    "{",
    "=",
    ",",
    "# HELP x",
    "\u202e",  # right-to-left override
    "\u2028",  # line separator
    "\u200d",  # zero-width joiner
    "\ufeff",
    "\ud800",  # a lone surrogate: json.loads produces these from "\\ud800"
    "😀",
    "👩‍👩‍👧",
    "שלום",
    "مرحبا",
    "e\u0301",
    "<script>alert(1)</script>",
    "x" * 300,
)

hostile_text = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(exclude_categories=()), max_size=40),  # surrogates and controls too
    st.lists(st.sampled_from(NASTY), max_size=6).map("".join),
    st.builds(lambda a, b: a + b, st.sampled_from(NASTY), st.text(max_size=10)),
)
valid_code = st.from_regex(LABEL_CODE, fullmatch=True)
json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**300, max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    hostile_text,
)
FIELDS = (
    "id",
    "name",
    "showAs",
    "dataRegion",
    "dataGeography",
    "billingType",
    "apiHost",
    "items",
    "pages",
    "total",
    "errorCode",
    "error",
    "message",
    "trackingId",
    "correlationId",
    "requestId",
    "access_token",
    "expires_in",
    "idType",
    "apiHosts",
    "global",
    "dataRegion",
)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), inner, max_size=6),
    ),
    max_leaves=25,
)
url_like = st.one_of(
    st.just("https://api-eu01.central.sophos.com"),
    st.builds(lambda t: "https://" + t, hostile_text),
    st.builds(lambda t: "http://127.0.0.1:1/" + t, hostile_text),
    json_value,
)
tenant_item = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(
            st.uuids().map(str), st.builds(lambda t: "a" + t, hostile_text), json_value
        ),
        "name": st.one_of(hostile_text, json_value),
        "showAs": st.one_of(hostile_text, json_value),
        "dataRegion": st.one_of(hostile_text, json_value),
        "dataGeography": st.one_of(hostile_text, json_value),
        "billingType": st.one_of(st.sampled_from(["trial", "term", "usage"]), hostile_text),
        "apiHost": url_like,
    },
)
error_body = st.fixed_dictionaries(
    {},
    optional={
        "errorCode": st.one_of(valid_code, hostile_text, json_value),
        "error": st.one_of(valid_code, hostile_text, json_value),
        "message": st.one_of(hostile_text, json_value),
        "trackingId": st.one_of(st.uuids().map(str), hostile_text, json_value),
        "correlationId": st.one_of(st.uuids().map(str), hostile_text),
        "requestId": st.one_of(st.uuids().map(str), hostile_text),
    },
)


def to_body(value: Any, ascii_only: bool) -> bytes:
    """JSON bytes for any value, lone surrogates included (escaped, or passed through raw)."""
    text = json.dumps(value, ensure_ascii=ascii_only)
    return text.encode("utf-8", errors="surrogatepass")


bodies = st.one_of(
    st.binary(max_size=2048),
    st.builds(to_body, json_value, st.booleans()),
    st.builds(to_body, error_body, st.booleans()),
    st.sampled_from([b"", b"null", b"[]", b"{}", b"<html>502</html>", b"\xff\xfe\x00", b"NaN"]),
)
statuses = st.one_of(
    st.sampled_from([200, 400, 401, 403, 404, 429, 500, 502, 503, 504]),
    st.integers(min_value=100, max_value=599),
)
header_maps = st.dictionaries(
    st.sampled_from(["Retry-After", "retry-after", "Content-Type", "X-Anything"]),
    hostile_text,
    max_size=3,
)


def printable_bounded(value: str, limit: int) -> bool:
    return (
        isinstance(value, str)
        and len(value) <= limit
        and all(ch.isprintable() for ch in value)
        and value == value.strip()
    )


def assert_label_safe_code(label: str) -> None:
    assert label in ("", "other") or LABEL_CODE.match(label), repr(label)


def assert_sane_outcome(outcome: Outcome) -> None:
    assert isinstance(outcome.error_code, str)
    assert len(outcome.error_code) <= 128
    assert all(ch.isprintable() for ch in outcome.error_code), repr(outcome.error_code)
    assert len(outcome.message) <= 300
    assert all(ch.isprintable() for ch in outcome.message), repr(outcome.message)
    assert set(outcome.ids) <= {"trackingId", "correlationId", "requestId"}
    assert all(TRACKING_ID.match(v) for v in outcome.ids.values()), outcome.ids
    assert_label_safe_code(ErrorCodeGuard().label(outcome.error_code))


# -- the response classifier ---------------------------------------------------------------------


@settings(max_examples=400)
@given(status=statuses, body=bodies, headers=header_maps)
@example(status=403, body=b'{"error": "Forbidden\\n"}', headers={})
@example(status=500, body=b'{"error": "\\u001b[2Jpwned"}', headers={})
@example(status=401, body=b'{"errorCode": "\\ud800"}', headers={})
def test_any_response_is_classified_without_raising(
    status: int, body: bytes, headers: dict[str, str]
) -> None:
    outcome = classify_response(status, body, headers)
    assert outcome.status_code == status
    assert_sane_outcome(outcome)
    if 200 <= status < 300:
        assert outcome.error_code == ""


@given(body=error_body, status=st.sampled_from([400, 401, 403, 404, 500, 503]))
def test_error_code_is_errorcode_else_error_and_kept_exactly_when_label_safe(
    body: dict[str, Any], status: int
) -> None:
    outcome = classify_response(status, json.dumps(body).encode())
    raw = next(
        (body[k] for k in ("errorCode", "error") if isinstance(body.get(k), str) and body[k]), ""
    )
    if LABEL_CODE.match(raw):
        assert outcome.error_code == raw
        assert ErrorCodeGuard().label(outcome.error_code) == raw
    else:
        assert ErrorCodeGuard().label(outcome.error_code) in ("", "other")


def test_a_trailing_newline_does_not_sneak_into_the_error_code_label() -> None:
    outcome = classify_response(403, b'{"error": "Forbidden\\n"}')
    assert ErrorCodeGuard().label(outcome.error_code) == "other"
    assert ErrorCodeGuard().label("Forbidden\n") == "other"


def test_terminal_escapes_in_an_error_code_are_neutralised() -> None:
    outcome = classify_response(500, b'{"error": "\\u001b]0;owned\\u0007\\u001b[2J"}')
    assert "\x1b" not in outcome.error_code and "\x07" not in outcome.error_code


def test_huge_json_body_is_classified() -> None:
    body = huge_body()
    assert len(body) > 5_000_000
    outcome = classify_response(500, body)
    assert outcome.status_code == 500 and outcome.error_code == ""
    assert_sane_outcome(outcome)


def test_huge_garbage_body_is_classified() -> None:
    outcome = classify_response(502, b"\x00\xff<" * 2_000_000)
    assert outcome.message == "body is not JSON"


@pytest.mark.parametrize(
    "body",
    [
        deep_json(),
        b"[" * 200_000,
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        b'{"error": ' + b"9" * 100_000 + b"}",  # beyond int max_str_digits
        b'{"error": "' + "x\u0301".encode() * 100_000 + b'"}',
    ],
    ids=["deep_json", "unclosed_arrays", "deep_objects", "long_integer", "long_code"],
)
def test_pathological_json_is_classified(body: bytes) -> None:
    assert_sane_outcome(classify_response(503, body))
    assert classify_response(200, body).error_code == ""


# -- transport failures --------------------------------------------------------------------------

EXCEPTIONS: tuple[type[BaseException], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.ReadTimeout,
    httpx.PoolTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
    httpx.LocalProtocolError,
    httpx.DecodingError,
    httpx.ProxyError,
    httpx.UnsupportedProtocol,
    ssl.SSLError,
    ssl.SSLCertVerificationError,
    ConnectionResetError,
    ConnectionRefusedError,
    TimeoutError,
    OSError,
    RuntimeError,
    ValueError,
)


class BrokenStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ exploded")


@st.composite
def exception_chains(draw: st.DrawFn) -> BaseException:
    chain = [
        draw(st.sampled_from(EXCEPTIONS))(draw(hostile_text))
        for _ in range(draw(st.integers(1, 4)))
    ]
    for outer, inner in itertools.pairwise(chain):
        if draw(st.booleans()):
            outer.__cause__ = inner
        else:
            outer.__context__ = inner
    if draw(st.booleans()):
        chain[-1].__context__ = chain[0]  # a cycle must not hang the classifier
    return chain[0]


@settings(max_examples=300)
@given(exc=exception_chains())
def test_any_transport_failure_is_one_of_the_four_codes(exc: BaseException) -> None:
    outcome = classify_exception(exc)
    assert outcome.status_code == 0
    assert outcome.error_code in TRANSPORT_CODES
    assert_sane_outcome(outcome)


def test_tls_failure_wrapped_by_httpx_is_a_tls_error() -> None:
    inner = ssl.SSLCertVerificationError("certificate verify failed")
    outer = httpx.ConnectError("connection failed")
    outer.__cause__ = inner
    assert classify_exception(outer).error_code == "tls_error"


def test_an_exception_whose_str_raises_is_still_classified() -> None:
    outcome = classify_exception(BrokenStr())
    assert outcome.error_code == "protocol_error"
    assert outcome.message == "BrokenStr"


# -- the cardinality guard -----------------------------------------------------------------------


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(
    codes=st.lists(
        st.one_of(valid_code, hostile_text, st.sampled_from(TRANSPORT_CODES)), max_size=400
    )
)
def test_the_guard_never_lets_more_than_100_distinct_codes_through(codes: list[str]) -> None:
    guard = ErrorCodeGuard()
    labels = [guard.label(code) for code in codes]
    for label in labels:
        assert_label_safe_code(label)
    distinct = set(labels) - set(TRANSPORT_CODES) - {"", "other"}
    assert len(distinct) <= MAX_DISTINCT_ERROR_CODES
    # A value, once admitted, keeps its label; the guard never flips it to "other" later.
    first: dict[str, str] = {}
    for code, label in zip(codes, labels, strict=True):
        assert first.setdefault(code, label) == label


def test_the_101st_code_is_other_but_known_and_transport_codes_stay() -> None:
    guard = ErrorCodeGuard()
    admitted = [guard.label(f"code{i}") for i in range(MAX_DISTINCT_ERROR_CODES)]
    assert admitted == [f"code{i}" for i in range(MAX_DISTINCT_ERROR_CODES)]
    assert guard.label("brandNewCode") == "other"
    assert guard.label("code7") == "code7"
    assert [guard.label(c) for c in TRANSPORT_CODES] == list(TRANSPORT_CODES)


def test_the_guard_holds_under_concurrent_use() -> None:
    guard = ErrorCodeGuard()
    seen: set[str] = set()
    lock = threading.Lock()

    def worker(n: int) -> None:
        mine = {guard.label(f"w{n}_{i}") for i in range(60)}
        with lock:
            seen.update(mine)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(seen - {"other"}) == MAX_DISTINCT_ERROR_CODES


# -- the parsers ---------------------------------------------------------------------------------


def assert_label_safe_tenant(tenant: Tenant) -> None:
    assert TENANT_ID.match(tenant.id), repr(tenant.id)
    for name, limit in FIELD_LIMITS.items():
        value = getattr(tenant, name)
        assert printable_bounded(value, limit), (name, value)
        value.encode("utf-8")  # no lone surrogate survives
    if tenant.api_host is not None:
        assert tenant.api_host.startswith(("https://", "http://"))
        assert httpx.URL(tenant.api_host).host
        assert tenant.api_host.isprintable() and len(tenant.api_host) <= 2048
    # Why an apiHost was refused is the agent's own words, never the value from the answer.
    assert len(tenant.api_host_problem) <= 40 and tenant.api_host_problem.isprintable()


@settings(max_examples=400)
@given(item=st.one_of(tenant_item, json_value))
@example(item={"id": "abc\n", "name": "x"})
@example(item={"id": "t1", "name": "\ud800\u202eevil\n", "billingType": "trial\r\n"})
def test_any_tenant_item_is_a_label_safe_tenant_or_skipped(item: Any) -> None:
    tenant = parse_tenant(item)
    if tenant is not None:
        assert_label_safe_tenant(tenant)


def test_a_tenant_id_with_a_trailing_newline_is_skipped() -> None:
    assert parse_tenant({"id": "abc\n", "name": "x", "apiHost": "https://a.sophos.com"}) is None


@settings(max_examples=200)
@given(
    body=st.one_of(
        json_value,
        st.fixed_dictionaries(
            {"items": st.lists(st.one_of(tenant_item, json_value), max_size=8)},
            optional={
                "pages": st.one_of(json_value, st.fixed_dictionaries({"total": json_scalar}))
            },
        ),
    )
)
def test_any_tenant_page_parses_or_is_an_invalid_response(body: Any) -> None:
    try:
        page = parse_tenant_page(body)
    except InvalidResponse:
        return
    assert 1 <= page.total_pages <= 1000
    assert page.skipped + len(page.tenants) == len(body["items"])
    for tenant in page.tenants:
        assert_label_safe_tenant(tenant)


@settings(max_examples=300)
@given(
    body=st.one_of(
        json_value,
        st.fixed_dictionaries(
            {
                "id": st.one_of(st.uuids().map(str), hostile_text, json_value),
                "idType": st.one_of(
                    st.sampled_from(["tenant", "partner", "organization"]), json_value
                ),
                "apiHosts": st.one_of(
                    json_value,
                    st.fixed_dictionaries({"global": url_like}, optional={"dataRegion": url_like}),
                ),
            }
        ),
    )
)
@example(body={"id": "p1\n", "idType": "partner", "apiHosts": {"global": "https://a.sophos.com"}})
def test_any_whoami_parses_or_is_an_invalid_response(body: Any) -> None:
    try:
        who = parse_whoami(body)
    except InvalidResponse:
        return
    assert TENANT_ID.match(who.id)
    assert who.id_type in ("tenant", "partner", "organization")
    assert who.global_url.isprintable()
    if who.header is not None:
        name, value = who.header
        httpx.Headers({name: value})  # a usable header value, no CR/LF


@settings(max_examples=300)
@given(
    body=st.one_of(
        json_value,
        st.fixed_dictionaries(
            {"access_token": st.one_of(hostile_text, json_value)},
            optional={"expires_in": json_scalar},
        ),
    ),
    now=st.floats(min_value=0, max_value=4e9),
)
@example(body={"access_token": "t", "expires_in": math.nan}, now=0.0)
@example(body={"access_token": "t", "expires_in": 10**400}, now=0.0)
@example(body={"access_token": "t", "expires_in": -(10**400)}, now=0.0)
def test_any_token_body_parses_or_is_an_invalid_response(body: Any, now: float) -> None:
    try:
        token = parse_token(body, now)
    except InvalidResponse:
        return
    assert token.value and isinstance(token.value, str)
    assert math.isfinite(token.expires_at)
    assert token.issued_at <= token.expires_at <= token.issued_at + 86400
    assert "value=" not in repr(token)


@given(
    value=st.one_of(st.none(), hostile_text, st.floats().map(str), st.integers().map(str)),
    now=st.floats(min_value=0, max_value=4e9),
)
@example(value="Wed, 21 Oct 99999 07:28:00 GMT", now=0.0)
@example(value="1e400", now=0.0)
def test_any_retry_after_is_a_finite_wait_or_none(value: str | None, now: float) -> None:
    wait = parse_retry_after(value, now)
    assert wait is None or (math.isfinite(wait) and wait >= 0)


# -- diagnosis -----------------------------------------------------------------------------------


@settings(max_examples=300)
@given(
    probe=st.sampled_from(m.PROBES),
    status=st.one_of(st.just(0), statuses),
    code=st.one_of(st.just(""), valid_code, hostile_text, st.sampled_from(TRANSPORT_CODES)),
    billing=st.one_of(st.sampled_from(["trial", "term", "usage", "TRIAL"]), hostile_text),
    token_age=st.one_of(st.none(), st.floats(allow_nan=False)),
)
def test_every_outcome_gets_a_contract_cause_and_a_remedy(
    probe: str, status: int, code: str, billing: str, token_age: float | None
) -> None:
    tenant = Tenant(id="t1", name="T", billing_type=billing)
    diagnosis = diagnose(probe, Outcome(status, code), Context(tenant, token_age))
    assert diagnosis.cause in m.CAUSES
    assert diagnosis.remedy


def test_every_cause_has_a_remedy_and_every_remedy_a_cause() -> None:
    assert set(m.CAUSES) == set(LABEL_VALUES) <= set(TABLE)
    assert all(cause.remedy for cause in TABLE.values())


# -- rendering hostile tenants -------------------------------------------------------------------


def hostile_state(names: list[str], codes: list[str]) -> CredentialState:
    state = CredentialState(name="msp-main")
    for i, name in enumerate(names):
        tenant = parse_tenant(
            {
                "id": f"tenant-{i}",
                "name": name,
                "showAs": name[::-1],
                "dataRegion": name[:5],
                "billingType": name[-5:],
                "apiHost": "https://api-eu01.central.sophos.com",
            }
        )
        assert tenant is not None
        state.tenants[tenant.id] = state.probed[tenant.id] = tenant
        code = codes[i % len(codes)] if codes else ""
        outcome = classify_response(403, json.dumps({"error": code}).encode())
        diagnosis = diagnose("tenant", outcome, Context(tenant))
        state.results[(tenant.id, "tenant")] = ProbeResult(
            credential=state.name,
            tenant_id=tenant.id,
            probe="tenant",
            success=False,
            status_code=403,
            error_code=outcome.error_code,
            cause=diagnosis.cause,
            remedy=diagnosis.remedy,
            message=outcome.message,
            timestamp=1_700_000_000.0,
            duration=0.2,
        )
    return state


def render(state: CredentialState, metrics: AgentMetrics) -> str:
    for result in state.results.values():
        metrics.observe_call(
            CallRecord(
                credential=state.name,
                tenant_id=result.tenant_id,
                probe="tenant",
                method="GET",
                url="https://api-eu01.central.sophos.com/endpoint/v1/endpoints",
                request_headers={},
                outcome=Outcome(result.status_code, result.error_code),
                duration=0.2,
                started_at=1_700_000_000.0,
            )
        )
    window_calls = {"1s": 0, "1m": 3, "1h": 9, "1d": 12}
    return metrics.render(snapshot_of(state, window_calls=window_calls)).decode("utf-8")


EXAMPLE_NAMES = [
    'Acme "Quoted" GmbH',
    "Back\\slash\\ Ltd",
    "Line\nBreak\r\nInc",
    "Emoji 😀👩‍👩‍👧 KK",
    "שלום בע״מ",
    "شركة مرحبا",
    "\u202eevil\u202c override",
    '} 1\nsophos_central_probe_success{fake="1"} 1',
    "\x00\x1b[31mred\x07",
    "\ud800 lone surrogate",
    "<script>alert(1)</script> & Co",
    "x" * 1000,
]


@settings(max_examples=60, deadline=None)
@given(
    names=st.lists(hostile_text, min_size=1, max_size=25),
    codes=st.lists(st.one_of(valid_code, hostile_text), max_size=10),
)
@example(names=EXAMPLE_NAMES, codes=["Forbidden\n", 'a"b', "\\", "ok.code"])
def test_metrics_stay_parseable_whatever_the_tenant_names(
    names: list[str], codes: list[str]
) -> None:
    state = hostile_state(names, codes)
    text = render(state, AgentMetrics(ErrorCodeGuard(), process_registry=None))
    families = {f.name: f for f in text_string_to_metric_families(text)}
    info = families[m.TENANT_INFO].samples
    assert sorted(s.labels["tenant_name"] for s in info) == sorted(
        t.name for t in state.tenants.values()
    )
    for sample in info:
        assert sample.labels["credential"] == "msp-main"
        assert printable_bounded(sample.labels["tenant_name"], 128)
    assert len(families[m.PROBE_SUCCESS].samples) == len(state.results)
    requests = families[m.API_REQUESTS_TOTAL.removesuffix("_total")].samples
    assert sum(s.value for s in requests) == len(state.results)
    for sample in requests:
        assert_label_safe_code(sample.labels["error_code"])
    # Nothing a tenant name carries can forge a series.
    assert all("fake" not in s.labels for f in families.values() for s in f.samples)


def test_status_page_escapes_hostile_tenant_names() -> None:
    state = hostile_state(EXAMPLE_NAMES, ["Forbidden"])
    page = render_status_page(snapshot_of(state, now=1_700_000_030.0))
    page.encode("utf-8")
    assert page.count("<script") == 1  # the page's own filter script; no name injected one
    shown = visible_text(page)
    for tenant in state.tenants.values():
        assert tenant.name in shown


def visible_text(page: str) -> str:
    """The page's text as a browser shows it: tags dropped, entities decoded."""

    class Text(HTMLParser):
        def __init__(self) -> None:
            super().__init__(convert_charrefs=True)
            self.parts: list[str] = []
            self.skip = 0

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            self.skip += tag in ("script", "style")

        def handle_endtag(self, tag: str) -> None:
            self.skip -= tag in ("script", "style")

        def handle_data(self, data: str) -> None:
            if not self.skip:
                self.parts.append(data)

    parser = Text()
    parser.feed(page)
    parser.close()
    return "".join(parser.parts)


# -- the client on a hostile tenant host ---------------------------------------------------------

REGION = "https://api-eu01.central.sophos.com"


def tenant_client(reply: httpx.Response, cap: int = 1_048_576) -> Any:
    from agent.client import SophosClient
    from agent.clock import FakeClock
    from agent.config import Settings
    from agent.hosts import HostPolicy
    from agent.ratebudget import RateBudget

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/oauth2/token"):
            return httpx.Response(200, json={"access_token": "tok", "expires_in": 3600})
        return reply

    cfg = Settings(
        credentials=[{"name": "c1", "client_id": "client-id-1", "client_secret": "secret-1"}],
        rate_limits={"1s": 1000, "1m": 100000, "1h": 1000000, "1d": 10000000},
        budget_share=1.0,
        max_response_bytes=cap,
    )
    clock = FakeClock()
    budget = RateBudget(cfg.rate_limits, cfg.budget_share, clock)
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    policy = HostPolicy(cfg.allowed_api_hosts, fixed_urls=(cfg.auth_url, cfg.api_url))
    return SophosClient(cfg, cfg.credentials[0], http, budget, [], clock, policy)


GZIP_GARBAGE = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03garbage"


@pytest.mark.parametrize(
    ("content", "headers", "cause", "message"),
    [
        (b'{"items": [], "pages": {}}', {}, "ok", ""),
        (b"<!DOCTYPE html><p>Maintenance</p>", {}, "not_sophos_answer", "an HTML page"),
        (deep_json(), {}, "invalid_response", "not a JSON object"),
        (huge_body(), {}, "invalid_response", "max_response_bytes"),
        (b'["a", "list"]', {}, "invalid_response", "not a JSON object"),
        (GZIP_GARBAGE, {"Content-Encoding": "gzip"}, "network_error", "DecodingError"),
    ],
    ids=["json_object", "html_page", "deep_json", "huge_body", "json_list", "bad_gzip"],
)
async def test_a_tenant_answer_that_is_not_json_is_a_failure_not_ok(
    content: bytes, headers: dict[str, str], cause: str, message: str
) -> None:
    reply = httpx.Response(200, stream=httpx.ByteStream(content), headers=headers)
    client = tenant_client(reply)
    outcome = await client.probe_tenant(Tenant(id="t1", name="T", api_host=REGION))
    assert diagnose("tenant", outcome).cause == cause
    assert message in outcome.message


# -- support evidence of a hostile 5XX body ------------------------------------------------------


@settings(max_examples=150)
@given(
    body=st.one_of(
        hostile_text,
        st.lists(
            st.sampled_from(["```", "````", "`", "\n", "# Subject: fake", "x"]), max_size=12
        ).map("".join),
    ),
    header=hostile_text.map(lambda t: t.replace("\n", " ")),
)
@example(body="ok\n```\n# Subject: injected\n```http\n", header="```")
def test_a_5xx_body_stays_inside_its_code_block_in_the_support_bundle(
    body: str, header: str
) -> None:
    from agent.evidence import Evidence
    from agent.views.support import render_markdown

    item = Evidence(
        owner="",
        credential="msp-main",
        tenant_id="t1",
        probe="tenant",
        first_seen=1.7e9,
        last_seen=1.7e9,
        failures=3,
        calls=3,
        consecutive=3,
        persistent=True,
        last_ok=None,
        request="curl -sS -X GET 'https://api-eu01.central.sophos.com/x'",
        status=500,
        response_headers={"x-echo": header},
        response_body=body,
        ids={},
    )
    lines = render_markdown([item]).split("\n")
    start = next(i for i, line in enumerate(lines) if re.fullmatch(r"`{3,}http", line))
    fence = lines[start].removesuffix("http")
    end = lines.index(fence, start + 1)
    inside = "\n".join(lines[start + 1 : end])
    assert (body or "(empty body)") in inside
    assert f"x-echo: {header}" in inside
    outside = lines[:start] + lines[end + 1 :]
    assert [line for line in outside if line.startswith("# ")] == ["# Subject: New API 5xx error"]


# -- hostile token answers, through the client ---------------------------------------------------


def hostile_token_client(
    reply: Callable[[], httpx.Response],
) -> tuple[Any, list[httpx.Request]]:
    """A client whose id host answers ``reply()``; every request that reaches the API is kept."""
    from agent.client import SophosClient
    from agent.clock import FakeClock
    from agent.config import Settings
    from agent.hosts import HostPolicy
    from agent.ratebudget import RateBudget

    api_requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/oauth2/token"):
            return reply()
        api_requests.append(request)
        return httpx.Response(200, json={"items": [], "pages": {}})

    cfg = Settings(
        credentials=[{"name": "c1", "client_id": "client-id-1", "client_secret": "secret-1"}],
        rate_limits={"1s": 1000, "1m": 100000, "1h": 1000000, "1d": 10000000},
        budget_share=1.0,
    )
    clock = FakeClock()
    budget = RateBudget(cfg.rate_limits, cfg.budget_share, clock)
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    policy = HostPolicy(cfg.allowed_api_hosts, fixed_urls=(cfg.auth_url, cfg.api_url))
    return SophosClient(cfg, cfg.credentials[0], http, budget, [], clock, policy), api_requests


def streamed(status: int, content: bytes) -> httpx.Response:
    return httpx.Response(status, stream=httpx.ByteStream(content))


HOSTILE_TOKEN_ANSWERS: dict[str, Callable[[], httpx.Response]] = {
    "html": lambda: streamed(200, b"<html><title>Login</title></html>"),
    "empty": lambda: streamed(200, b""),
    "json_list": lambda: httpx.Response(200, json=[{"access_token": "tok"}]),
    "token_number": lambda: httpx.Response(200, json={"access_token": 12345, "expires_in": 3600}),
    "token_list": lambda: httpx.Response(200, json={"access_token": ["tok"], "expires_in": 3600}),
    "token_empty": lambda: httpx.Response(200, json={"access_token": "", "expires_in": 3600}),
    "expiry_text": lambda: httpx.Response(200, json={"access_token": "tok", "expires_in": "3600"}),
    "expiry_bool": lambda: httpx.Response(200, json={"access_token": "tok", "expires_in": True}),
    "expiry_null": lambda: httpx.Response(200, json={"access_token": "tok", "expires_in": None}),
    "token_huge": lambda: httpx.Response(
        200, json={"access_token": "t" * 20_000, "expires_in": 3600}
    ),
    "body_huge": lambda: streamed(200, b'{"access_token": "' + b"t" * 2_000_000 + b'"}'),
    "token_crlf": lambda: httpx.Response(200, json={"access_token": "tok\r\nX-Injected: yes"}),
    "token_nul": lambda: httpx.Response(200, json={"access_token": "tok\x00en"}),
    "token_space": lambda: httpx.Response(200, json={"access_token": "tok en"}),
    "token_unicode": lambda: httpx.Response(200, json={"access_token": "tök\u202een"}),
    "token_escape": lambda: httpx.Response(200, json={"access_token": "\x1b[2Jtok"}),
}


NOT_SOPHOS_TOKEN_ANSWERS = {"html": "not_sophos_answer"}
"""A login page is someone else's answer; every other hostile token answer is Sophos-shaped."""


@pytest.mark.parametrize("name", list(HOSTILE_TOKEN_ANSWERS))
async def test_a_hostile_token_answer_is_diagnosed_and_no_call_carries_it(
    name: str,
) -> None:
    cause = NOT_SOPHOS_TOKEN_ANSWERS.get(name, "invalid_response")
    client, api_requests = hostile_token_client(HOSTILE_TOKEN_ANSWERS[name])
    outcome, token = await client.issue_token()
    assert token is None
    assert (outcome.status_code, diagnose("token", outcome).cause) == (200, cause)
    assert outcome.message.isprintable() and len(outcome.message) <= 300
    probed = await client.probe_tenant(Tenant(id="t1", name="T", api_host=REGION))
    assert diagnose("tenant", probed).cause == cause
    assert probed.from_token, "the tenant probe says the token is what failed"
    assert api_requests == [], "no API call without a usable token"


# -- oversized URLs and headers in answers -------------------------------------------------------

ONE_MB = 1_000_000


def test_a_1mb_url_in_whoami_or_a_tenant_is_refused_not_called() -> None:
    huge = "https://api-eu01.central.sophos.com/" + "a" * ONE_MB
    with pytest.raises(InvalidResponse):
        parse_whoami({"id": "p1", "idType": "partner", "apiHosts": {"global": huge}})
    tenant = parse_tenant({"id": "t1", "name": "T", "apiHost": huge})
    assert tenant is not None and tenant.api_host is None
    page = parse_tenant_page({"items": [{"id": "t1", "apiHost": huge}], "pages": {"total": 1}})
    assert [t.api_host for t in page.tenants] == [None]


# -- departed tenants' series --------------------------------------------------------------------


async def test_a_tenant_that_leaves_the_list_leaves_metrics() -> None:
    """A running agent (scheduler, real clock, loopback-free in-process transport): once the
    tenant list no longer has a tenant, no series of /metrics names it."""
    import asyncio

    from agent.config import Settings
    from agent.runtime import Agent

    api = "https://api.central.sophos.com"
    listed = ["t-stays", "t-leaves"]

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/oauth2/token"):
            return httpx.Response(200, json={"access_token": "tok", "expires_in": 3600})
        if path == "/whoami/v1":
            hosts = {"global": api}
            return httpx.Response(200, json={"id": "p1", "idType": "partner", "apiHosts": hosts})
        if path == "/partner/v1/tenants":
            items = [{"id": t, "name": t.upper(), "apiHost": REGION} for t in listed]
            return httpx.Response(200, json={"items": items, "pages": {"total": 1}})
        return httpx.Response(200, json={"items": [], "pages": {}})

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            credentials=[{"name": "c1", "client_id": "client-id-1", "client_secret": "secret-1"}],
            rate_limits={"1s": 1000, "1m": 100000, "1h": 1000000, "1d": 10000000},
            budget_share=1.0,
            probe_interval="1s",
            tenant_refresh_interval="1s",
            state_file=f"{tmp}/state.db",
        )
        http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        agent = Agent(settings, http=http, process_metrics=False)
        agent.start()

        async def series_of(tenant: str) -> bool:
            return f'tenant_id="{tenant}"' in agent.render_metrics().decode()

        try:
            for _ in range(100):
                if (
                    await series_of("t-leaves")
                    and 'probe="tenant"' in agent.render_metrics().decode()
                ):
                    break
                await asyncio.sleep(0.1)
            assert await series_of("t-leaves")
            listed.remove("t-leaves")
            for _ in range(100):
                if not await series_of("t-leaves"):
                    break
                await asyncio.sleep(0.1)
            text = agent.render_metrics().decode()
            assert "t-leaves" not in text and 'tenant_id="t-stays"' in text
        finally:
            await agent.stop(grace=0)
            await http.aclose()
