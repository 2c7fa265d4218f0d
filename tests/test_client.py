"""The Sophos client's promises, checked against an in-process transport with a fake clock."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from agent.causes import TABLE
from agent.client import MIN_TOKEN_LIFETIME, SophosClient
from agent.clock import FakeClock
from agent.config import Settings
from agent.diagnosis import diagnose
from agent.hosts import HostPolicy
from agent.ratebudget import RateBudget
from agent.sophos import Tenant

AUTH = "https://id.sophos.com/api/v2/oauth2/token"
API = "https://api.central.sophos.com"
REGION = "https://api-eu01.central.sophos.com"

Handler = Callable[[httpx.Request], httpx.Response]


def settings(**extra: object) -> Settings:
    options: dict[str, object] = {
        "rate_limits": {"1s": 1000, "1m": 100000, "1h": 1000000, "1d": 10000000},
        "budget_share": 1.0,
        **extra,
    }
    return Settings(
        credentials=[{"name": "c1", "client_id": "client-id-1", "client_secret": "secret-1"}],
        **options,
    )


class Recorder:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)

    def to(self, host: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.host == host]


def token_response(expires_in: int = 3600) -> httpx.Response:
    return httpx.Response(
        200, json={"access_token": "tok", "token_type": "bearer", "expires_in": expires_in}
    )


def make_client(
    handler: Handler, clock: FakeClock, **extra: object
) -> tuple[SophosClient, RateBudget]:
    cfg = settings(**extra)
    budget = RateBudget(cfg.rate_limits, cfg.budget_share, clock)
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler), follow_redirects=False)
    policy = HostPolicy(cfg.allowed_api_hosts, fixed_urls=(cfg.auth_url, cfg.api_url))
    client = SophosClient(cfg, cfg.credentials[0], http, budget, [], clock, policy)
    return client, budget


def default_handler(request: httpx.Request) -> httpx.Response:
    if request.url.path.endswith("/oauth2/token"):
        return token_response()
    return httpx.Response(200, json={"items": []})


async def test_token_is_cached_and_renewed_ahead_of_expiry() -> None:
    clock = FakeClock()
    rec = Recorder(default_handler)
    client, _ = make_client(rec, clock)
    tenant = Tenant(id="t1", name="T", api_host=REGION)
    for _ in range(3):
        await client.probe_tenant(tenant)
    assert len(rec.to("id.sophos.com")) == 1
    await clock.advance(3600 - 301)  # 301 s left: still good
    await client.probe_tenant(tenant)
    assert len(rec.to("id.sophos.com")) == 1
    await clock.advance(2)  # 299 s left: within five minutes of expiry, renew before it lapses
    await client.probe_tenant(tenant)
    assert len(rec.to("id.sophos.com")) == 2


async def test_token_request_carries_client_credentials_form() -> None:
    rec = Recorder(default_handler)
    client, _ = make_client(rec, FakeClock())
    outcome, token = await client.issue_token()
    assert outcome.ok and token is not None
    form = dict(httpx.QueryParams(rec.requests[0].content.decode()))
    assert form == {
        "grant_type": "client_credentials",
        "client_id": "client-id-1",
        "client_secret": "secret-1",
        "scope": "token",
    }
    assert "tok" not in repr(token)


async def test_401_on_an_api_call_drops_the_cached_token() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/oauth2/token"):
            return token_response()
        return httpx.Response(401, json={"error": "Unauthorized"})

    rec = Recorder(handler)
    client, _ = make_client(rec, FakeClock())
    tenant = Tenant(id="t1", name="T", api_host=REGION)
    outcome = await client.probe_tenant(tenant)
    assert outcome.status_code == 401 and client.token is None
    await client.probe_tenant(tenant)
    assert len(rec.to("id.sophos.com")) == 2


async def test_tenant_host_outside_the_allowlist_receives_nothing() -> None:
    rec = Recorder(default_handler)
    client, _ = make_client(rec, FakeClock())
    outcome = await client.probe_tenant(Tenant(id="t1", name="T", api_host="https://evil.example"))
    assert outcome.error_code == "host_not_allowed"
    assert rec.to("evil.example") == []


@pytest.mark.parametrize(
    "host",
    ["https://api-eu01.central.sophos.com.evil.example", "http://api-eu01.central.sophos.com"],
)
async def test_lookalike_and_plain_http_hosts_are_refused(host: str) -> None:
    rec = Recorder(default_handler)
    client, _ = make_client(rec, FakeClock())
    outcome = await client.probe_tenant(Tenant(id="t1", name="T", api_host=host))
    assert outcome.error_code == "host_not_allowed"
    assert [r for r in rec.requests if "Authorization" in r.headers] == []


async def test_redirects_are_never_followed_with_the_token() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/oauth2/token"):
            return token_response()
        if request.url.host == "api-eu01.central.sophos.com":
            return httpx.Response(302, headers={"Location": "https://collector.example/steal"})
        return httpx.Response(200, json={})

    rec = Recorder(handler)
    client, _ = make_client(rec, FakeClock())
    outcome = await client.probe_tenant(Tenant(id="t1", name="T", api_host=REGION))
    assert outcome.status_code == 302
    assert rec.to("collector.example") == []


async def test_huge_body_is_read_only_up_to_the_cap() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/oauth2/token"):
            return token_response()
        return httpx.Response(500, content=b"x" * 5_000_000)

    client, _ = make_client(Recorder(handler), FakeClock(), max_response_bytes=4096)
    seen: list[int] = []

    class Capture:
        def observe_call(self, record: object) -> None:
            seen.append(len(record.raw_body))  # type: ignore[attr-defined]

    client._observers.append(Capture())
    outcome = await client.probe_tenant(Tenant(id="t1", name="T", api_host=REGION))
    assert outcome.status_code == 500
    assert seen[-1] == 4096


async def test_429_pauses_only_this_credential_for_retry_after() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/oauth2/token"):
            return token_response()
        return httpx.Response(429, headers={"Retry-After": "30"}, json={"error": "TooManyRequests"})

    clock = FakeClock()
    client, budget = make_client(Recorder(handler), clock)
    outcome = await client.probe_tenant(Tenant(id="t1", name="T", api_host=REGION))
    assert outcome.status_code == 429
    assert budget.paused_until("c1") == pytest.approx(clock.time() + 30, abs=1)
    assert budget.pauses_total("c1") == 1
    assert budget.paused_until("other") <= clock.time()


SPEC_429 = {
    "error": "TooManyRequests",
    "message": "Too many requests.",
    "correlationId": "6f1f3e0c-3c1e-4c55-9a57-0b7c6f0a2d11",
    "requestId": "0b8a4c1e-9d55-4f0e-8b7a-3f2d1e6c5a44",
    "createdAt": "2024-01-15T10:30:00.000Z",
}


async def test_429_without_retry_after_pauses_a_minute_and_logs_the_assumed_window(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/oauth2/token"):
            return token_response()
        return httpx.Response(429, json=SPEC_429)

    clock = FakeClock()
    client, budget = make_client(Recorder(handler), clock)
    with caplog.at_level("WARNING"):
        await client.probe_tenant(Tenant(id="t1", name="T", api_host=REGION))
    info = budget.pause_info("c1")
    assert info is not None
    assert (info.window, info.reason, info.consecutive) == ("1m", "escalation", 1)
    assert 61 <= budget.paused_until("c1") - clock.time() <= 61 * 1.1
    (warning,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "assuming the 1m window is exhausted" in warning.getMessage()
    assert warning.retry_after_sent is False  # type: ignore[attr-defined]
    assert warning.window == "1m"  # type: ignore[attr-defined]


async def test_tenant_scope_counts_tenant_calls_against_the_tenants_own_windows() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/oauth2/token"):
            return token_response()
        if request.headers.get("X-Tenant-ID") == "t1":
            return httpx.Response(429, json=SPEC_429)
        return httpx.Response(200, json={"items": []})

    clock = FakeClock()
    client, budget = make_client(Recorder(handler), clock, rate_limit_scope="tenant")
    await client.probe_tenant(Tenant(id="t1", name="T", api_host=REGION))
    await client.probe_tenant(Tenant(id="t2", name="T2", api_host=REGION))
    assert budget.calls("c1")["1m"] == 1, "only the token call counts for the credential"
    assert budget.calls("c1/t2")["1m"] == 1
    assert budget.paused_until("c1/t1") > clock.time(), "the 429 pauses tenant t1 only"
    assert budget.paused_until("c1") == 0.0
    assert budget.tenant_budgets("c1").paused == 1


async def test_credential_scope_counts_every_call_against_the_credential() -> None:
    clock = FakeClock()
    client, budget = make_client(Recorder(default_handler), clock)
    await client.probe_tenant(Tenant(id="t1", name="T", api_host=REGION))
    assert budget.calls("c1")["1m"] == 2
    assert budget.tenant_budgets("c1").tenants == 0


async def test_tenant_list_follows_every_page() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/oauth2/token"):
            return token_response()
        page = int(request.url.params["page"])
        assert request.headers["X-Partner-ID"] == "p1"
        items = [
            {"id": f"t{page}-{i}", "name": f"T{page}-{i}", "apiHost": REGION} for i in range(2)
        ]
        return httpx.Response(200, json={"items": items, "pages": {"current": page, "total": 3}})

    client, _ = make_client(Recorder(handler), FakeClock())
    from agent.sophos import WhoAmI

    outcome, tenants = await client.list_tenants(WhoAmI("p1", "partner", API))
    assert outcome.ok and tenants is not None
    assert [t.id for t in tenants] == [f"t{p}-{i}" for p in (1, 2, 3) for i in range(2)]


async def test_a_broken_page_fails_the_list_without_raising() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/oauth2/token"):
            return token_response()
        return httpx.Response(200, content=json.dumps({"items": "nope"}).encode())

    client, _ = make_client(Recorder(handler), FakeClock())
    from agent.sophos import WhoAmI

    outcome, tenants = await client.list_tenants(WhoAmI("p1", "partner", API))
    assert tenants is None and outcome.error_code == "invalid_response"


async def test_a_connection_dropped_before_any_response_is_retried_once() -> None:
    attempts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/oauth2/token"):
            return token_response()
        attempts.append(request.url.host)
        if len(attempts) == 1:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        return httpx.Response(200, json={"items": []})

    clock = FakeClock()
    client, budget = make_client(Recorder(handler), clock)
    seen: list[str] = []

    class Capture:
        def observe_call(self, record: object) -> None:
            seen.append(record.outcome.error_code or "ok")  # type: ignore[attr-defined]

    client._observers.append(Capture())
    outcome = await client.probe_tenant(Tenant(id="t1", name="T", api_host=REGION))
    assert outcome.ok
    assert len(attempts) == 2
    assert seen == ["ok", "protocol_error", "ok"]  # token, the dropped attempt, the retry
    assert budget.calls("c1")["1m"] == 3  # every attempt is counted against the budget


async def test_other_protocol_errors_are_not_retried() -> None:
    attempts: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/oauth2/token"):
            return token_response()
        attempts.append(1)
        raise httpx.RemoteProtocolError("illegal status line")

    client, _ = make_client(Recorder(handler), FakeClock())
    outcome = await client.probe_tenant(Tenant(id="t1", name="T", api_host=REGION))
    assert (outcome.status_code, outcome.error_code) == (0, "protocol_error")
    assert len(attempts) == 1


async def test_a_call_that_waits_for_admission_longer_than_a_token_lives_gets_a_fresh_one() -> None:
    """With a saturated budget a probe can wait for admission for over an hour; it must not
    leave with the token it would have had when it started waiting (a false 401)."""
    import asyncio

    clock = FakeClock()
    issued: dict[str, float] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/oauth2/token"):
            value = f"tok-{len(issued)}"
            issued[value] = clock.time()
            body = {"access_token": value, "token_type": "bearer", "expires_in": 3600}
            return httpx.Response(200, json=body)
        token = request.headers["Authorization"].removeprefix("Bearer ")
        if clock.time() >= issued[token] + 3600:
            return httpx.Response(401, json={"error": "Unauthorized"})
        return httpx.Response(200, json={"items": []})

    limits = {"1s": 1000, "1m": 100000, "1h": 2, "1d": 10000000}
    client, _ = make_client(Recorder(handler), clock, rate_limits=limits)
    tenant = Tenant(id="t1", name="T", api_host=REGION)
    assert (await client.probe_tenant(tenant)).status_code == 200  # the token + this: 2 calls
    second = asyncio.create_task(client.probe_tenant(tenant))
    for _ in range(3 * 3600 // 60):
        if second.done():
            break
        await clock.advance(60)
    assert second.done()
    assert second.result().status_code == 200
    assert len(issued) == 2


# -- token answers that say the token is already expired -----------------------------------------


def expired_token_handler(expires_in: float, api_status: int = 200) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/oauth2/token"):
            return httpx.Response(200, json={"access_token": "tok", "expires_in": expires_in})
        return httpx.Response(api_status, json={"items": [], "pages": {}})

    return handler


@pytest.mark.parametrize("expires_in", [0, -60, 0.4])
async def test_an_already_expired_token_serves_calls_for_a_minute_instead_of_one_each(
    expires_in: float,
) -> None:
    """The adversary's case: 23 API calls in 12 s. Before, two tokens were minted per call
    (46 token calls); now one token serves them all, and one more after a minute."""
    clock = FakeClock()
    rec = Recorder(expired_token_handler(expires_in))
    client, _ = make_client(rec, clock)
    tenant = Tenant(id="t1", name="T", api_host=REGION)
    for _ in range(23):
        assert (await client.probe_tenant(tenant)).ok
        await clock.advance(12 / 23)
    assert len(rec.to("id.sophos.com")) == 1
    await clock.advance(MIN_TOKEN_LIFETIME)
    assert (await client.probe_tenant(tenant)).ok
    assert len(rec.to("id.sophos.com")) == 2


async def test_token_calls_never_outrun_the_calls_they_serve() -> None:
    """A token the API refuses at once (401): one new token per call, never two; with calls
    every 2 s over ten minutes of expired-on-arrival tokens the API accepts: one a minute."""
    clock = FakeClock()
    rec = Recorder(expired_token_handler(0, api_status=401))
    client, _ = make_client(rec, clock)
    tenant = Tenant(id="t1", name="T", api_host=REGION)
    for _ in range(23):
        await client.probe_tenant(tenant)
    assert len(rec.to("id.sophos.com")) == 23 == len(rec.to("api-eu01.central.sophos.com"))

    clock = FakeClock()
    rec = Recorder(expired_token_handler(-1))
    client, _ = make_client(rec, clock)
    for _ in range(300):
        await client.probe_tenant(tenant)
        await clock.advance(2)
    assert len(rec.to("id.sophos.com")) <= 600 / (MIN_TOKEN_LIFETIME * 0.9) + 1


@pytest.mark.parametrize("expires_in", [0, -3600])
async def test_an_already_expired_token_answer_is_diagnosed_with_its_own_hint(
    expires_in: int,
) -> None:
    rec = Recorder(expired_token_handler(expires_in))
    client, _ = make_client(rec, FakeClock())
    outcome, token = await client.issue_token()
    assert token is not None, "usable for a while all the same"
    assert (outcome.status_code, outcome.error_code) == (200, "invalid_response")
    assert "expires_in of 0 or less" in outcome.message
    diagnosis = diagnose("token", outcome)
    invalid = TABLE["invalid_response"]
    assert (diagnosis.cause, diagnosis.remedy) == ("invalid_response", invalid.variants["token"])
    assert diagnose("tenant", outcome).remedy == invalid.remedy


async def test_a_normal_token_answer_is_ok_and_keeps_its_own_lifetime() -> None:
    clock = FakeClock()
    client, _ = make_client(Recorder(default_handler), clock)
    outcome, token = await client.issue_token()
    assert outcome.ok and outcome.error_code == "" and token is not None
    assert token.expires_at - token.issued_at == 3600
