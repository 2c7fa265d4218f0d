"""tenant_probes: parsing, per-family answer checks, the diagnosis when families disagree."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from agent.client import SophosClient
from agent.clock import FakeClock
from agent.config import ConfigError, Settings, load_settings
from agent.families import BUILTINS
from agent.hosts import HostPolicy
from agent.metrics import AgentMetrics
from agent.probes import CredentialProber, display_order
from agent.ratebudget import RateBudget
from agent.sophos import Tenant
from tests.snapshots import snapshot_of

REGION = "https://api-eu01.central.sophos.com"
CRED = {"name": "c1", "client_id": "client-id-1", "client_secret": "secret-1"}


def config_error(**keys: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, credentials=[CRED], **keys)
    return str(caught.value)


def test_default_is_the_tenant_probe_on_tenant_probe_path() -> None:
    settings = Settings(credentials=[CRED], tenant_probe_path="/endpoint/v1/endpoints?pageSize=1")
    assert [(f.name, f.path) for f in settings.families] == [
        ("tenant", "/endpoint/v1/endpoints?pageSize=1")
    ]
    assert settings.confirm_interval == 60.0


def test_builtins_and_custom_entries_resolve_in_order() -> None:
    settings = load_settings(
        None,
        credentials=[CRED],
        tenant_probes=[
            "tenant",
            "siem_events",
            "siem_alerts",
            "common_alerts",
            "account_health",
            {"name": "xdr_queries", "path": "/xdr-query/v1/queries/runs?pageSize=1"},
        ],
        confirm_interval="30s",
    )
    assert [(f.name, f.path) for f in settings.families] == [
        ("tenant", "/endpoint/v1/endpoints?pageSize=1&view=basic"),
        ("siem_events", "/siem/v1/events?limit=1"),
        ("siem_alerts", "/siem/v1/alerts?limit=1"),
        ("common_alerts", "/common/v1/alerts?pageSize=1"),
        ("account_health", "/account-health-check/v1/health-check"),
        ("xdr_queries", "/xdr-query/v1/queries/runs?pageSize=1"),
    ]
    assert settings.confirm_interval == 30.0


def test_tenant_probes_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOPHOS_EXPORTER_TENANT_PROBES", '["tenant", "common_alerts"]')
    names = [f.name for f in Settings(credentials=[CRED]).families]
    assert names == ["tenant", "common_alerts"]


@pytest.mark.parametrize(
    ("value", "line"),
    [
        (
            ["tenant", "siem", "common_alerts"],
            "tenant_probes[1]: unknown probe 'siem'; built-ins are tenant, siem_events, "
            "siem_alerts, common_alerts, account_health, or give {name, path} for another GET "
            "call",
        ),
        (
            ["tenant", "siem_events", {"name": "alerts2", "path": "common/v1/alerts"}],
            "tenant_probes[2].path: must be a path starting with '/' (a GET on the apiHost)",
        ),
        (
            [{"name": "Alerts", "path": "/common/v1/alerts"}],
            "tenant_probes[0].name: must match ^[a-z][a-z0-9_]{0,31}$ (lower-case letters, "
            "digits and '_', starting with a letter); it becomes the probe label",
        ),
        (
            [{"name": "a" * 33, "path": "/x"}],
            "tenant_probes[0].name: must match ^[a-z][a-z0-9_]{0,31}$",
        ),
        (
            ["tenant", {"name": "whoami", "path": "/whoami/v1"}],
            "tenant_probes[1].name: 'whoami' is a credential-level probe; choose another name",
        ),
        (
            [{"name": "siem_events", "path": "/siem/v1/events?limit=5"}],
            "tenant_probes[0].name: 'siem_events' is a built-in probe; list it by name, "
            "without a path",
        ),
        (
            ["tenant", {"name": "x", "path": "/a"}, {"name": "x", "path": "/b"}],
            "tenant_probes[2].name: 'x' is listed twice",
        ),
        (["tenant", "tenant"], "tenant_probes[1]: 'tenant' is listed twice"),
        (
            [{"name": "x", "path": "/a", "method": "POST"}],
            "tenant_probes[0].method: unknown key (an entry has only name and path)",
        ),
        (
            [],
            "tenant_probes: must be a non-empty list of probe names (tenant, siem_events, "
            "siem_alerts, common_alerts, account_health) or {name, path} entries",
        ),
        ("tenant", "tenant_probes: must be a non-empty list of probe names"),
        ([3], "tenant_probes[0]: must be a probe name or a mapping with name and path"),
    ],
)
def test_bad_entries_name_the_key(value: object, line: str) -> None:
    message = config_error(tenant_probes=value)
    assert message.splitlines()[0] == "invalid configuration:"
    assert message.splitlines()[1].startswith(f"  {line}"), message


def test_bad_confirm_interval_names_the_key() -> None:
    assert "  confirm_interval: must be a positive duration" in config_error(confirm_interval="0s")


# -- answers -----------------------------------------------------------------------------------


def _client(
    body: object, clock: FakeClock, seen: list[httpx.Request] | None = None
) -> SophosClient:
    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        if request.url.path.endswith("/oauth2/token"):
            return httpx.Response(
                200, json={"access_token": "tok", "token_type": "bearer", "expires_in": 3600}
            )
        return httpx.Response(200, json=body)

    cfg = Settings(
        credentials=[CRED],
        rate_limits={"1s": 1000, "1m": 100000, "1h": 1000000, "1d": 10000000},
        budget_share=1.0,
    )
    budget = RateBudget(cfg.rate_limits, cfg.budget_share, clock)
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    policy = HostPolicy(cfg.allowed_api_hosts, fixed_urls=(cfg.auth_url, cfg.api_url))
    return SophosClient(cfg, cfg.credentials[0], http, budget, [], clock, policy)


SIEM_OK = {"has_more": False, "items": [{"id": "e1"}], "next_cursor": "VjJf"}
PAGED_OK = {"items": [], "pages": {"size": 1, "maxSize": 100}}
SCORE = {"score": 87, "total": 100, "snoozed": False}
HEALTH_OK = {
    "tenant": {"id": "t1"},
    "endpoint": {
        "protection": {"computer": {**SCORE, "notFullyProtected": 1}},
        "policy": {"computer": {"threat-protection": {**SCORE, "notOnRecommended": 0}}},
        "exclusions": {"global": {**SCORE, "numberOfSecurityRisks": 0}},
        "tamperProtection": {"computer": {**SCORE, "disabled": False}, "global": True},
    },
}


@pytest.mark.parametrize(
    ("family", "body", "error"),
    [
        ("siem_events", SIEM_OK, ""),
        ("siem_alerts", SIEM_OK, ""),
        ("common_alerts", PAGED_OK, ""),
        ("siem_events", PAGED_OK, "response has no boolean 'has_more'"),
        ("siem_alerts", {"has_more": False}, "response has no 'items' list"),
        ("common_alerts", {"items": []}, "response has no 'pages' object"),
        ("common_alerts", SIEM_OK, "response has no 'pages' object"),
        ("siem_events", ["not", "an", "object"], "response body is not a JSON object"),
        ("account_health", HEALTH_OK, ""),
        ("account_health", {"tenant": {"id": "t1"}, "endpoint": {}}, ""),
        ("account_health", {"endpoint": [SCORE]}, "response has no 'endpoint' object"),
    ],
)
async def test_each_family_checks_its_documented_answer(
    family: str, body: object, error: str
) -> None:
    clock = FakeClock()
    client = _client(body, clock)
    tenant = Tenant(id="t1", name="T", api_host=REGION)

    outcome = await client.probe_tenant(tenant, BUILTINS[family])

    assert outcome.status_code == 200
    assert outcome.error_code == ("invalid_response" if error else "")
    assert outcome.message == error


@pytest.mark.parametrize(
    ("family", "body"),
    [
        ("account_health", PAGED_OK),
        ("account_health", {"status": "ok"}),
        ("siem_events", {"status": "ok"}),
        ("common_alerts", {"endpoint": {}}),
    ],
)
async def test_an_answer_with_none_of_the_calls_fields_is_not_sophos_answer(
    family: str, body: object
) -> None:
    """The endpoint list where the health check belongs, or a status document from a portal,
    is someone else's answer, not a broken one of Sophos's."""
    client = _client(body, FakeClock())
    tenant = Tenant(id="t1", name="T", api_host=REGION)

    outcome = await client.probe_tenant(tenant, BUILTINS[family])

    assert (outcome.status_code, outcome.error_code) == (200, "not_sophos_answer")


async def test_each_family_calls_its_own_path_with_the_tenant_header() -> None:
    seen: list[httpx.Request] = []
    clock = FakeClock()
    client = _client(SIEM_OK, clock, seen)
    tenant = Tenant(id="t1", name="T", api_host=REGION)
    for family in BUILTINS.values():
        await client.probe_tenant(tenant, family if family.path else None)

    calls = [(r.url.path, r.url.query.decode(), r.headers["x-tenant-id"]) for r in seen[1:]]
    assert calls == [
        ("/endpoint/v1/endpoints", "pageSize=1&view=basic", "t1"),
        ("/siem/v1/events", "limit=1", "t1"),
        ("/siem/v1/alerts", "limit=1", "t1"),
        ("/common/v1/alerts", "pageSize=1", "t1"),
        ("/account-health-check/v1/health-check", "", "t1"),
    ]


# -- diagnosis and views -------------------------------------------------------------------------


def _prober(responses: dict[str, tuple[int, object]], clock: FakeClock) -> CredentialProber:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/oauth2/token"):
            return httpx.Response(
                200, json={"access_token": "tok", "token_type": "bearer", "expires_in": 3600}
            )
        status, body = responses[request.url.path]
        return httpx.Response(status, json=body)

    cfg = load_settings(
        None,
        credentials=[CRED],
        tenant_probes=["tenant", "siem_events", "common_alerts"],
        rate_limits={"1s": 1000, "1m": 100000, "1h": 1000000, "1d": 10000000},
        budget_share=1.0,
    )
    budget = RateBudget(cfg.rate_limits, cfg.budget_share, clock)
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    policy = HostPolicy(cfg.allowed_api_hosts, fixed_urls=(cfg.auth_url, cfg.api_url))
    client = SophosClient(cfg, cfg.credentials[0], http, budget, [], clock, policy)
    prober = CredentialProber(client, clock)
    tenant = Tenant(id="t1", name="T", api_host=REGION, billing_type="usage")
    prober.state.tenants = prober.state.probed = {"t1": tenant}
    return prober


DENIED = {"error": "forbidden", "message": "Access is denied", "requestId": "r-1"}


async def test_a_family_denied_while_another_works_names_both_paths() -> None:
    clock = FakeClock()
    prober = _prober(
        {
            "/endpoint/v1/endpoints": (200, PAGED_OK),
            "/siem/v1/events": (200, SIEM_OK),
            "/common/v1/alerts": (403, DENIED),
        },
        clock,
    )
    for probe in prober.probe_names:
        await prober.probe_tenant("t1", probe)

    denied = prober.state.result("t1", "common_alerts")
    assert denied is not None and not denied.success
    assert denied.cause == "forbidden"
    assert (
        "the credential may call /endpoint/v1/endpoints but not /common/v1/alerts for this "
        "tenant: its API role lacks that product's permission" in denied.remedy
    )
    assert [r.probe for r in sorted(prober.state.results.values(), key=display_order)] == [
        "tenant",
        "common_alerts",
        "siem_events",
    ]


async def test_a_tenant_denied_on_every_family_keeps_the_plain_diagnosis() -> None:
    clock = FakeClock()
    prober = _prober(
        {
            p: (403, DENIED)
            for p in ("/endpoint/v1/endpoints", "/siem/v1/events", "/common/v1/alerts")
        },
        clock,
    )
    for probe in prober.probe_names:
        await prober.probe_tenant("t1", probe)

    for probe in prober.probe_names:
        result = prober.state.result("t1", probe)
        assert result is not None
        assert result.cause == "forbidden"
        assert "may call" not in result.remedy


async def test_consecutive_failures_count_per_probe_and_reset_on_success() -> None:
    clock = FakeClock()
    responses: dict[str, tuple[int, object]] = {
        "/endpoint/v1/endpoints": (500, {"error": "internalServerError"}),
        "/siem/v1/events": (200, SIEM_OK),
        "/common/v1/alerts": (200, PAGED_OK),
    }
    prober = _prober(responses, clock)
    metrics = AgentMetrics(process_registry=None)

    def gauge(probe: str) -> str:
        page = metrics.render(snapshot_of(prober.state)).decode()
        name = "sophos_central_probe_consecutive_failures"
        labels = f'{{credential="c1",tenant_id="t1",probe="{probe}"}}'
        (line,) = [x for x in page.splitlines() if x.startswith(name + labels)]
        return line.rsplit(" ", 1)[1]

    for expected in ("1", "2", "3", "4"):
        await prober.probe_tenant("t1", "tenant")
        await prober.probe_tenant("t1", "siem_events")
        assert gauge("tenant") == expected
        assert gauge("siem_events") == "0"
    responses["/endpoint/v1/endpoints"] = (200, PAGED_OK)
    await prober.probe_tenant("t1", "tenant")
    assert gauge("tenant") == "0"


async def test_credential_level_probes_count_their_failures_with_an_empty_tenant_id() -> None:
    clock = FakeClock()
    answers = [401, 401, 200]

    def handler(request: httpx.Request) -> httpx.Response:
        status = answers.pop(0)
        if status != 200:
            return httpx.Response(status, json={"errorCode": "oauth.invalid_client_secret"})
        return httpx.Response(
            200, json={"access_token": "tok", "token_type": "bearer", "expires_in": 3600}
        )

    cfg = Settings(credentials=[CRED], budget_share=1.0)
    budget = RateBudget(cfg.rate_limits, cfg.budget_share, clock)
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    policy = HostPolicy(cfg.allowed_api_hosts, fixed_urls=(cfg.auth_url, cfg.api_url))
    prober = CredentialProber(
        SophosClient(cfg, cfg.credentials[0], http, budget, [], clock, policy), clock
    )
    metrics = AgentMetrics(process_registry=None)
    line = 'sophos_central_probe_consecutive_failures{credential="c1",tenant_id="",probe="token"}'

    seen = []
    for _ in range(3):
        await prober.probe_token()
        await clock.advance(1.0)
        page = metrics.render(snapshot_of(prober.state))
        (found,) = [x for x in page.decode().splitlines() if x.startswith(line)]
        seen.append(found.rsplit(" ", 1)[1])

    assert seen == ["1", "2", "0"]
