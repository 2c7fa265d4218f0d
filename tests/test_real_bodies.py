"""Replay what the real Sophos Central sends, body for body, through everything that reads it.

The bodies in ``tests/testdata/sophos-bodies/`` have the shapes the public documentation, Sophos's
own integration code and third-party fixtures show: the id host's token answers, the four whoami
variants, a tenant page with a trial tenant that has no ``apiHost`` key, an endpoints page, a SIEM
events page, and every error body (the ``error`` string spelled every way it is seen, the 401 that
puts it in ``errorCode``, bodies with ``code`` and ``docUrl``, a 451 with nothing, 429 with and
without ``Retry-After``, gateway 5XX empty or HTML). Each one goes through the parsers, the
classifier and the diagnosis, and then, served from a local HTTP server, through the real
``SophosClient`` and ``CredentialProber`` of an ``Agent``: the probe result, the failure's log
line and ``/metrics`` are what a user sees.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.causes import TABLE
from agent.classify import classify_response
from agent.config import Settings
from agent.diagnosis import Context, diagnose
from agent.evidence import load_evidence
from agent.probes import CredentialProber, ProbeResult
from agent.runtime import Agent
from agent.simulator import Simulator, build_scenario
from agent.sophos import Tenant, parse_tenant_page, parse_token, parse_whoami

DATA = Path(__file__).parent / "testdata" / "sophos-bodies"
JSON = (("content-type", "application/json"),)
JSON_UTF8 = (("content-type", "application/json; charset=utf-8"),)
HTML = (("content-type", "text/html"),)
TENANT_ID = "03b43abe-4f41-4734-b6d6-70b2fbdc2504"
PARTNER_ID = "d2ba043d-7fcd-4158-a861-1ec2c01f3d14"
TRIAL_ID = "17e9b3f3-c147-4d1f-87d5-313f44c4febe"
SECRET = "rb-5e1f9a3c7d2b4e6f8a0c1d3e5f7a9b2c"
ROOMY: dict[str, Any] = {
    "budget_share": 1.0,
    "rate_limits": {"1s": 1000, "1m": 60_000, "1h": 10**6, "1d": 10**7},
}
"""No waiting for the rate budget: these tests are about bodies, not pacing."""


@dataclass(frozen=True)
class Case:
    """One answer: which probe meets it, what arrives, and what the agent must make of it.

    ``ids`` are the body fields that must reach ``Outcome.ids`` (and the failure's log line).
    """

    name: str
    probe: str
    status: int
    body: str | None
    cause: str
    error_code: str = ""
    ids: tuple[str, ...] = ()
    headers: tuple[tuple[str, str], ...] = JSON
    path: str | None = None
    """The ``tenant_probe_path`` whose answer this is (the default: endpoints)."""

    def raw(self) -> bytes:
        return b"" if self.body is None else (DATA / self.body).read_bytes()

    def parsed(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.raw())
        return value


SUPPORT_IDS = ("correlationId", "requestId")

CASES = [
    # 3.1 token
    Case("token 200", "token", 200, "token-200.json", "ok", headers=JSON_UTF8),
    Case(
        "token 401 wrong secret",
        "token",
        401,
        "token-401-invalid-secret.json",
        "invalid_credentials",
        "oauth.invalid_client_secret",
        ("trackingId",),
    ),
    Case(
        "token 401 unknown client id",
        "token",
        401,
        "token-401-unknown-client.json",
        "invalid_credentials",
        "oauth.client_app_does_not_exist",
        ("trackingId",),
    ),
    Case(
        "token 400 malformed",
        "token",
        400,
        "token-400-validation.json",
        "invalid_credentials",
        "customer.validation",
        ("trackingId",),
    ),
    # 3.2 whoami
    Case("whoami partner", "whoami", 200, "whoami-partner.json", "ok"),
    Case(
        "whoami partner dataRegion null", "whoami", 200, "whoami-partner-dataregion-null.json", "ok"
    ),
    Case("whoami organization", "whoami", 200, "whoami-organization.json", "ok"),
    Case("whoami tenant", "whoami", 200, "whoami-tenant.json", "ok"),
    Case("whoami 504 from the global host", "whoami", 504, None, "sophos_unavailable", headers=()),
    # 3.3 tenant list
    Case("tenant page with a trial", "tenant_list", 200, "tenants-page-with-trial.json", "ok"),
    Case("tenant page without total", "tenant_list", 200, "tenants-page-without-total.json", "ok"),
    # 3.4 per tenant
    Case("endpoints page", "tenant", 200, "endpoints-page.json", "ok"),
    Case("SIEM events page", "tenant", 200, "siem-events-page.json", "ok", path="/siem/v1/events"),
    # 3.5 errors from the API hosts
    Case("401", "tenant", 401, "error-401.json", "token_rejected", "Unauthorized", SUPPORT_IDS),
    Case(
        "401 errorCode variant with code",
        "tenant",
        401,
        "error-401-errorcode-variant.json",
        "token_rejected",
        "Unauthorized",
        ("requestId", "code"),
    ),
    Case(
        "403 Forbidden",
        "tenant",
        403,
        "error-403-access-denied.json",
        "forbidden",
        "Forbidden",
        SUPPORT_IDS,
    ),
    Case(
        "403 forbidden",
        "tenant",
        403,
        "error-403-lowercase.json",
        "forbidden",
        "forbidden",
        SUPPORT_IDS,
    ),
    Case(
        "403 Access is denied",
        "tenant",
        403,
        "error-403-access-is-denied.json",
        "forbidden",
        "forbidden",
        SUPPORT_IDS,
    ),
    Case(
        "403 forbiddenAccess",
        "tenant",
        403,
        "error-403-forbiddenaccess.json",
        "forbidden",
        "forbiddenAccess",
        SUPPORT_IDS,
    ),
    Case(
        "400 BadRequest", "tenant", 400, "error-400.json", "bad_request", "BadRequest", SUPPORT_IDS
    ),
    Case(
        "400 badRequest",
        "tenant",
        400,
        "error-400-lowercase.json",
        "bad_request",
        "badRequest",
        SUPPORT_IDS,
    ),
    Case(
        "404 resourceNotFound",
        "tenant",
        404,
        "error-404.json",
        "not_found",
        "resourceNotFound",
        SUPPORT_IDS,
    ),
    Case(
        "404 notFound",
        "tenant",
        404,
        "error-404-notfound.json",
        "not_found",
        "notFound",
        SUPPORT_IDS,
    ),
    Case(
        "429 with Retry-After",
        "tenant",
        429,
        "error-429.json",
        "rate_limited",
        "TooManyRequests",
        (*SUPPORT_IDS, "code", "docUrl"),
        (*JSON, ("retry-after", "1")),
    ),
    Case(
        "429 without Retry-After",
        "tenant",
        429,
        "error-429.json",
        "rate_limited",
        "TooManyRequests",
        (*SUPPORT_IDS, "code", "docUrl"),
    ),
    Case("451 status only", "tenant", 451, None, "export_restricted", headers=()),
    Case(
        "500",
        "tenant",
        500,
        "error-500.json",
        "sophos_server_error",
        "internalServerError",
        SUPPORT_IDS,
    ),
    Case(
        "500 with code and docUrl",
        "tenant",
        500,
        "error-500-with-code.json",
        "sophos_server_error",
        "internalServerError",
        (*SUPPORT_IDS, "code", "docUrl"),
    ),
    Case("502 empty", "tenant", 502, None, "sophos_unavailable", headers=()),
    Case("502 HTML", "tenant", 502, "gateway-502.html", "sophos_unavailable", headers=HTML),
    Case("503 empty", "tenant", 503, None, "sophos_unavailable", headers=()),
    Case("503 HTML", "tenant", 503, "gateway-502.html", "sophos_unavailable", headers=HTML),
    Case("504 empty", "tenant", 504, None, "sophos_unavailable", headers=()),
    Case("504 HTML", "tenant", 504, "gateway-504.html", "sophos_unavailable", headers=HTML),
]
BY_NAME = {case.name: case for case in CASES}


def usage_tenant(api_host: str = "https://api-us03.central.sophos.com") -> Tenant:
    return Tenant(id=TENANT_ID, name="Father Oz", billing_type="usage", api_host=api_host)


# -- parsers ------------------------------------------------------------------------------------


def test_the_token_answer_parses_with_its_one_hour_lifetime() -> None:
    token = parse_token(BY_NAME["token 200"].parsed(), now=1000.0)
    assert token.expires_at - token.issued_at == 3600
    assert token.value.startswith("eyJ")


@pytest.mark.parametrize(
    ("name", "id_type", "region"),
    [
        ("whoami partner", "partner", None),
        ("whoami partner dataRegion null", "partner", None),
        ("whoami organization", "organization", None),
        ("whoami tenant", "tenant", "https://api-us02.central.sophos.com"),
    ],
)
def test_every_whoami_answer_parses(name: str, id_type: str, region: str | None) -> None:
    whoami = parse_whoami(BY_NAME[name].parsed())
    assert (whoami.id_type, whoami.data_region_url) == (id_type, region)
    assert whoami.global_url == "https://api.central.sophos.com"
    assert whoami.header is None if id_type == "tenant" else whoami.header is not None


def test_a_trial_tenant_without_the_api_host_key_is_parsed_not_skipped() -> None:
    page = parse_tenant_page(BY_NAME["tenant page with a trial"].parsed())
    assert (page.total_pages, page.skipped) == (1, 0)
    usage, trial = page.tenants
    assert (usage.api_host, usage.billing_type) == ("https://api-us03.central.sophos.com", "usage")
    assert (trial.id, trial.api_host, trial.billing_type) == (TRIAL_ID, None, "trial")
    assert (trial.data_region, trial.data_geography) == ("us03", "US")


def test_a_tenant_page_without_page_total_is_one_page() -> None:
    page = parse_tenant_page(BY_NAME["tenant page without total"].parsed())
    assert page.total_pages == 1 and [t.id for t in page.tenants] == [TENANT_ID]


# -- classifier and diagnosis -------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_classifier_and_diagnosis(case: Case) -> None:
    outcome = classify_response(case.status, case.raw(), dict(case.headers))
    tenant = usage_tenant() if case.probe == "tenant" else None
    diagnosis = diagnose(case.probe, outcome, Context(tenant=tenant))
    assert diagnosis.cause == case.cause
    assert outcome.error_code == case.error_code
    if case.status >= 300:
        assert sorted(outcome.ids) == sorted(case.ids)
        assert all(outcome.ids[k] == case.parsed()[k] for k in case.ids)
    retry_after = dict(case.headers).get("retry-after")
    assert outcome.retry_after == (retry_after if case.status >= 300 else None)


# -- the prober against a local server ----------------------------------------------------------


@dataclass
class Answer:
    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = JSON


@dataclass
class ReplayServer:
    """A minimal HTTP/1.1 server on 127.0.0.1 answering by path prefix (one request per
    connection), so each test decides exactly what the agent meets."""

    routes: dict[str, Answer] = field(default_factory=dict)
    fallback: Answer = field(default_factory=lambda: Answer(404))
    url: str = ""
    _server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def answer_for(self, path: str) -> Answer:
        for prefix, answer in self.routes.items():
            if path.startswith(prefix):
                return answer
        return self.fallback

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1]
            length = next(
                (
                    int(v)
                    for k, _, v in (ln.partition(":") for ln in lines)
                    if k.lower() == "content-length"
                ),
                0,
            )
            await reader.readexactly(length)
            writer.write(_response(self.answer_for(path)))
            await writer.drain()
        finally:
            writer.close()


def _response(answer: Answer) -> bytes:
    lines = [f"HTTP/1.1 {answer.status} {HTTPStatus(answer.status).phrase}"]
    lines += [f"{k}: {v}" for k, v in answer.headers]
    lines += [f"content-length: {len(answer.body)}", "connection: close", "", ""]
    return "\r\n".join(lines).encode() + answer.body


def _json(value: object) -> Answer:
    return Answer(200, json.dumps(value).encode())


def routes_for(case: Case, server_url: str) -> dict[str, Answer]:
    """The case's answer where its probe meets it; good answers on the way there."""
    token = Answer(200, BY_NAME["token 200"].raw(), JSON_UTF8)
    whoami = _json({"id": PARTNER_ID, "idType": "partner", "apiHosts": {"global": server_url}})
    tenants = _json(
        {
            "items": [
                {
                    "id": TENANT_ID,
                    "name": "Father Oz",
                    "billingType": "usage",
                    "dataRegion": "us03",
                    "partner": {"id": PARTNER_ID},
                    "apiHost": server_url,
                }
            ],
            "pages": {"current": 1, "size": 100, "total": 1, "items": 1, "maxSize": 100},
        }
    )
    routes = {"/api/v2/oauth2/token": token, "/whoami/v1": whoami, "/partner/v1/tenants": tenants}
    prefix = {
        "token": "/api/v2/oauth2/token",
        "whoami": "/whoami/v1",
        "tenant_list": "/partner/v1/tenants",
        "tenant": "/",
    }[case.probe]
    routes[prefix] = Answer(case.status, case.raw(), case.headers)
    return routes


def settings_for(tmp_path: Path, auth_url: str, api_url: str, path: str | None = None) -> Settings:
    return Settings(
        auth_url=auth_url,
        api_url=api_url,
        **({"tenant_probe_path": path} if path else {}),
        allowed_api_hosts=["127.0.0.1", "*.sophos.com"],
        state_file=tmp_path / "state.db",
        request_timeout=5,
        credentials=[{"name": "replay", "client_id": "replay-client", "client_secret": SECRET}],
        **ROOMY,
    )


class Failures(logging.Handler):
    """The ``probe failed`` records of agent.probes, whatever the root logger's level is."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("probe failed"):
            self.records.append(record)


async def run_probe(prober: CredentialProber, probe: str) -> ProbeResult:
    if probe == "token":
        return await prober.probe_token()
    if probe == "whoami":
        return await prober.probe_whoami()
    listed = await prober.refresh_tenants()
    assert listed is not None
    if probe == "tenant_list":
        return listed
    result = await prober.probe_tenant(TENANT_ID)
    assert result is not None
    return result


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_the_prober_meets_every_answer(
    case: Case, server: ReplayServer, failures: Failures, tmp_path: Path
) -> None:
    server.routes = routes_for(case, server.url)
    token_url = server.url + "/api/v2/oauth2/token"
    settings = settings_for(tmp_path, token_url, server.url, case.path)
    async with httpx.AsyncClient(follow_redirects=False, trust_env=False) as http:
        agent = Agent(settings, http=http, process_metrics=False)
        try:
            result = await run_probe(agent.probers[0], case.probe)
            metrics = agent.render_metrics().decode()
        finally:
            await agent.stop(grace=0)

    assert (result.cause, result.success) == (case.cause, case.cause == "ok")
    assert result.error_code == case.error_code
    assert result.remedy == TABLE[case.cause].remedy
    assert f'cause="{case.cause}"' in metrics
    if case.status < 300:
        assert failures.records == []
        return
    (record,) = failures.records
    assert (record.__dict__["cause"], record.__dict__["status_code"]) == (case.cause, case.status)
    body = case.parsed() if case.ids else {}
    for key in case.ids:
        assert record.__dict__[key] == body[key]  # in the log line...
        assert body[key] not in metrics  # ...and never in a label


@pytest.mark.parametrize(
    "name", ["token 401 wrong secret", "token 401 unknown client id", "token 400 malformed"]
)
async def test_a_refused_token_reaches_the_next_probe_as_invalid_credentials(
    name: str, server: ReplayServer, failures: Failures, tmp_path: Path
) -> None:
    case = BY_NAME[name]
    server.routes = routes_for(case, server.url)
    settings = settings_for(tmp_path, server.url + "/api/v2/oauth2/token", server.url)
    async with httpx.AsyncClient(trust_env=False) as http:
        agent = Agent(settings, http=http, process_metrics=False)
        try:
            result = await agent.probers[0].probe_whoami()  # the token is fetched first
        finally:
            await agent.stop(grace=0)

    assert (result.probe, result.status_code) == ("whoami", case.status)
    assert (result.cause, result.error_code) == ("invalid_credentials", case.error_code)


async def test_a_trial_tenant_without_api_host_is_reported_and_never_called(
    server: ReplayServer, failures: Failures, tmp_path: Path
) -> None:
    case = BY_NAME["tenant page with a trial"]
    server.routes = routes_for(case, server.url)
    settings = settings_for(tmp_path, server.url + "/api/v2/oauth2/token", server.url)
    async with httpx.AsyncClient(trust_env=False) as http:
        agent = Agent(settings, http=http, process_metrics=False)
        try:
            await agent.probers[0].refresh_tenants()
            state = agent.probers[0].state
            metrics = agent.render_metrics().decode()
        finally:
            await agent.stop(grace=0)

    assert state.skipped == {TRIAL_ID: "trial_without_host"}
    result = state.result(TRIAL_ID, "tenant")
    assert result is not None
    assert (result.cause, result.status_code, result.success) == ("trial_without_host", 0, False)
    assert "not an outage" in result.remedy
    assert 'sophos_central_tenants{credential="replay",state="trial_without_host"} 1' in metrics
    assert 'sophos_central_tenants{credential="replay",state="not_activated"} 0' in metrics
    assert failures.records == []  # not a failed probe: reported once as a tenant not probed


# -- whoami on a data-region host, against the simulator ----------------------------------------


class RegionalName(httpx.AsyncBaseTransport):
    """Sends requests for a real data-region host name to a loopback listener instead.

    There is no DNS in tests, and the agent must see the real name in ``api_url`` to decide; so
    the name stays in the request the agent builds and only the connection goes to loopback.
    """

    def __init__(self, name: str, target: str) -> None:
        self._name = name
        self._target = httpx.URL(target)
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == self._name:
            request.url = request.url.copy_with(
                scheme=self._target.scheme, host=self._target.host, port=self._target.port
            )
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_whoami_on_the_simulators_regional_host_is_wrong_api_host(
    tmp_path: Path, failures: Failures
) -> None:
    regional = "api-eu01.central.sophos.com"
    sim = Simulator(build_scenario("healthy"))
    await sim.start()
    try:
        cred = sim.scenario.credential("msp-healthy")
        settings = Settings(
            auth_url=sim.auth_url,
            api_url=f"https://{regional}",
            allowed_api_hosts=["127.0.0.1", "*.sophos.com"],
            state_file=tmp_path / "state.db",
            request_timeout=5,
            credentials=[
                {
                    "name": cred.name,
                    "client_id": cred.client_id,
                    "client_secret": cred.client_secret,
                }
            ],
            **ROOMY,
        )
        transport = RegionalName(regional, sim.region_urls[0])
        async with httpx.AsyncClient(transport=transport, trust_env=False) as http:
            agent = Agent(settings, http=http, process_metrics=False)
            try:
                result = await agent.probers[0].probe_whoami()
                metrics = agent.render_metrics().decode()
                evidence = load_evidence(agent.state_file)
            finally:
                await agent.stop(grace=0)
    finally:
        await sim.stop()

    assert (result.status_code, result.cause) == (504, "wrong_api_host")
    assert "https://api.central.sophos.com" in result.remedy
    assert 'probe="whoami",cause="wrong_api_host"' in metrics
    assert evidence == []  # a configuration mistake: nothing for a support case
    (record,) = failures.records
    assert record.__dict__["cause"] == "wrong_api_host"
