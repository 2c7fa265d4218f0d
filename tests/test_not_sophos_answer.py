"""Answers that are not Sophos's: HTML pages and JSON of the wrong shape, told from Sophos's own.

A captive portal's page with 200, a WAF's block page with 403, a proxy's maintenance page with
503 and a health document where the endpoint list belongs are failures with their own cause
(``not_sophos_answer``), never a success, never a refused credential, never evidence for a Sophos
support case; a gateway's stock "502 Bad Gateway" page stays an outage of Sophos. The page's
title is shown, bounded, printable and redacted; nothing else of it. The agent meets each answer
through its real client and prober, served by a local HTTP server.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from agent.causes import TABLE, lookup
from agent.classify import Outcome, classify_response
from agent.diagnosis import Context, Diagnosis, diagnose
from agent.families import KNOWN_ANSWERS, ForeignShape, check_for, paged_items, siem_items
from agent.htmlpage import MAX_TITLE, PREFIX, is_gateway_page, page_title
from agent.logs import REDACTOR
from agent.probes import ProbeResult
from agent.runtime import Agent
from agent.simulator.bodies import HTML_200, HTML_502, HTML_503, WAF_403, WRONG_SHAPE_JSON
from agent.sophos import Tenant
from tests.test_real_bodies import (
    BY_NAME,
    JSON,
    TENANT_ID,
    Answer,
    ReplayServer,
    routes_for,
    run_probe,
    settings_for,
)

NOT_SOPHOS = TABLE["not_sophos_answer"]
HTML = {"content-type": "text/html; charset=utf-8"}


def page(title: str, body: str = "<p>Please sign in.</p>") -> bytes:
    head = f"<!DOCTYPE html><html><head><title>{title}</title></head>"
    return f"{head}<body>{body}</body></html>".encode()


def _tenant(billing: str = "usage") -> Tenant:
    return Tenant(id="t1", name="Acme", billing_type=billing, api_host="https://api-eu01.example")


# -- the page and its title ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type", "title"),
    [
        (HTML_200, "text/html", "Guest Wi-Fi - Please sign in"),
        (WAF_403, "text/html; charset=utf-8", "Request Rejected"),
        (page("Caf&eacute; &amp; Wi-Fi"), "text/html", "Café & Wi-Fi"),
        (page("  Two\n\tlines\r\n  "), "text/html", "Two lines"),
        (page("back`tick`s"), "text/html", "back'tick's"),
        (b"<html><body>Bad Gateway</body></html>", "", ""),  # sniffed, untitled
        (page("Maintenance"), "application/json", "Maintenance"),  # mislabelled, still HTML
        (b'{"items": [], "pages": {}}', "text/html", None),  # JSON whatever the label says
        (b"", "text/html", None),
        (b"OK", "text/plain", None),
        (b"[1, 2]", "", None),
        (b"<html><body>" + b"x" * PREFIX + b"<title>Too far</title>", "", ""),  # past PREFIX
    ],
)
def test_an_html_page_is_recognised_and_its_title_read(
    body: bytes, content_type: str, title: str | None
) -> None:
    assert page_title(body, content_type) == title


def test_the_title_shown_is_bounded_printable_and_redacted() -> None:
    REDACTOR.add(["pg-9f8e7d6c5b4a-secret"])
    long = "Blocked " * 40
    outcome = classify_response(403, page(long), HTML)
    assert outcome.page_title is not None and len(outcome.page_title) <= MAX_TITLE
    assert outcome.page_title.startswith("Blocked Blocked")
    echoed = classify_response(403, page("Denied for client pg-9f8e7d6c5b4a-secret"), HTML)
    assert echoed.page_title is not None
    assert "pg-9f8e7d6c5b4a-secret" not in echoed.page_title
    assert echoed.page_title.startswith("Denied for client ")
    controls = classify_response(200, page("Bell\x07 and \x1b[2J escape"), HTML)
    assert controls.page_title is not None and controls.page_title.isprintable()


@pytest.mark.parametrize(
    ("status", "title", "gateway"),
    [
        (502, "502 Bad Gateway", True),
        (503, "502 Bad Gateway", True),
        (504, "504 Gateway Time-out", True),
        (503, "503 Service Temporarily Unavailable", True),
        (500, "500 Internal Server Error", True),
        (502, "ERROR: The request could not be satisfied", True),
        (502, "", True),
        (503, "Scheduled Maintenance", False),
        (503, "Web Page Blocked", False),
        (502, "Bad Gateway - Example Corp Proxy", False),
        (403, "403 Forbidden", False),
        (200, "", False),
    ],
)
def test_a_gateways_stock_page_is_told_from_everyone_elses(
    status: int, title: str, gateway: bool
) -> None:
    assert is_gateway_page(status, title) is gateway


# -- the cause ---------------------------------------------------------------------------------

DIAGNOSES = [
    # probe, status, body, content type, tenant, cause
    ("token", 200, HTML_200, "text/html", None, "not_sophos_answer"),
    ("token", 403, WAF_403, "text/html", None, "not_sophos_answer"),  # not the secret's fault
    ("token", 401, page("Proxy login"), "text/html", None, "not_sophos_answer"),
    ("whoami", 200, HTML_200, "text/html", None, "not_sophos_answer"),
    ("tenant_list", 403, WAF_403, "text/html", None, "not_sophos_answer"),
    ("tenant", 403, WAF_403, "text/html", _tenant("trial"), "not_sophos_answer"),
    ("tenant", 404, page("Page not found"), "text/html", None, "not_sophos_answer"),
    ("tenant", 503, HTML_503, "text/html", None, "not_sophos_answer"),
    ("tenant", 502, HTML_502, "text/html", None, "sophos_unavailable"),
    ("tenant", 504, b"<html><body>Gateway Timeout</body></html>", "", None, "sophos_unavailable"),
    ("tenant", 500, page("500 Internal Server Error"), "text/html", None, "sophos_server_error"),
    (
        "tenant",
        403,
        json.dumps({"error": "Forbidden", "message": "Access Denied"}).encode(),
        "application/json",
        _tenant("trial"),
        "trial_account",
    ),
]


@pytest.mark.parametrize(("probe", "status", "raw", "content_type", "tenant", "cause"), DIAGNOSES)
def test_a_page_is_not_sophos_answer_unless_a_gateway_names_only_its_status(
    probe: str, status: int, raw: bytes, content_type: str, tenant: Tenant | None, cause: str
) -> None:
    outcome = classify_response(status, raw, {"content-type": content_type})
    diagnosis = diagnose(probe, outcome, Context(tenant=tenant))
    assert diagnosis.cause == cause
    if cause == "not_sophos_answer":
        title = outcome.page_title
        assert title is not None
        assert diagnosis.remedy == NOT_SOPHOS.variants["page"].format(title=title)
        assert diagnosis.remedy.startswith("Not Sophos's answer: a proxy or WAF page?")
        if status >= 300:  # for a 2XX, the client says so (``not_sophos_answer``)
            assert outcome.message == f'an HTML page titled "{title}"'


def test_not_sophos_answer_is_unavailable_but_neither_refused_nor_evidence() -> None:
    """The outage rules count it; the forbidden-spike rules and the 5XX support evidence do not,
    while a gateway's stock 5XX page keeps its evidence."""
    assert (NOT_SOPHOS.unavailable, NOT_SOPHOS.refused, NOT_SOPHOS.evidence) == (True, False, False)
    assert NOT_SOPHOS.kind == "failure"
    stock = diagnose("tenant", classify_response(502, HTML_502, HTML))
    assert lookup(stock.cause).evidence


def test_an_untitled_page_and_json_of_the_wrong_shape_have_their_own_remedies() -> None:
    untitled = diagnose("tenant", classify_response(403, b"<html><body>no</body></html>", {}))
    assert untitled.remedy == NOT_SOPHOS.variants["untitled"]
    marked = Outcome(200, "not_sophos_answer", "response has none of the fields")
    assert diagnose("tenant", marked) == Diagnosis("not_sophos_answer", NOT_SOPHOS.remedy)
    # A 2XX body's fields can never set the agent's own marks.
    assert diagnose("tenant", Outcome(403, "not_sophos_answer")).cause == "forbidden"


def test_the_shape_checks_tell_someone_elses_json_from_a_broken_answer() -> None:
    assert isinstance(paged_items(json.loads(WRONG_SHAPE_JSON)), ForeignShape)
    unreadable = paged_items({"items": [], "pages": "x"})  # Sophos's shape, a field broken
    assert unreadable is not None and not isinstance(unreadable, ForeignShape)
    assert isinstance(siem_items({"status": "ok"}), ForeignShape)
    assert paged_items({"items": [], "pages": {}}) is None
    assert check_for("/endpoint/v1/endpoints?pageSize=1&view=basic") is paged_items
    assert check_for("/xdr-query/v1/queries/runs?pageSize=1").__name__ == "any_object"
    assert set(KNOWN_ANSWERS) >= {"/endpoint/v1/endpoints", "/siem/v1/events", "/common/v1/alerts"}


# -- through the client and the prober ----------------------------------------------------------


async def probe_with(
    server: ReplayServer, tmp_path: Path, probe: str, answer: Answer
) -> tuple[ProbeResult, str]:
    """The result of ``probe`` when the call it makes gets ``answer``, and /metrics after it."""
    routes = routes_for(BY_NAME["endpoints page"], server.url)
    prefix = {
        "token": "/api/v2/oauth2/token",
        "whoami": "/whoami/v1",
        "tenant_list": "/partner/v1/tenants",
        "tenant": "/endpoint/",
    }[probe]
    routes.pop(prefix, None)
    server.routes = {prefix: answer, **routes}  # matched first, before the catch-all "/"
    settings = settings_for(tmp_path, server.url + "/api/v2/oauth2/token", server.url)
    async with httpx.AsyncClient(follow_redirects=False, trust_env=False) as http:
        agent = Agent(settings, http=http, process_metrics=False)
        try:
            result = await run_probe(agent.probers[0], probe)
            metrics = agent.render_metrics().decode()
        finally:
            await agent.stop(grace=0)
    return result, metrics


PAGES = [
    ("token", Answer(200, HTML_200, (("content-type", "text/html"),)), "Guest Wi-Fi"),
    ("whoami", Answer(200, HTML_200, (("content-type", "text/html"),)), "Guest Wi-Fi"),
    ("tenant_list", Answer(403, WAF_403, (("content-type", "text/html"),)), "Request Rejected"),
    ("tenant", Answer(403, WAF_403, (("content-type", "text/html"),)), "Request Rejected"),
    ("tenant", Answer(200, page("Maintenance"), JSON), "Maintenance"),
    ("tenant", Answer(503, HTML_503, (("content-type", "text/html"),)), "Scheduled Maintenance"),
]


@pytest.mark.parametrize(("probe", "answer", "title"), PAGES)
async def test_the_prober_reports_a_page_with_its_title_and_nothing_else_of_it(
    probe: str, answer: Answer, title: str, server: ReplayServer, tmp_path: Path
) -> None:
    result, metrics = await probe_with(server, tmp_path, probe, answer)
    assert (result.cause, result.success, result.status_code) == (
        "not_sophos_answer",
        False,
        answer.status,
    )
    assert f'titled "{title}' in result.remedy and f'titled "{title}' in result.message
    assert f'probe="{probe}",cause="not_sophos_answer",kind="failure"' in metrics
    assert title not in metrics and "Please" not in metrics


@pytest.mark.parametrize(
    ("probe", "body", "cause"),
    [
        ("token", WRONG_SHAPE_JSON, "not_sophos_answer"),
        ("token", b'{"access_token": 7, "token_type": "bearer"}', "invalid_response"),
        ("whoami", WRONG_SHAPE_JSON, "not_sophos_answer"),
        ("whoami", b'{"id": "x", "idType": "nobody"}', "invalid_response"),
        ("tenant_list", WRONG_SHAPE_JSON, "not_sophos_answer"),
        ("tenant_list", b'{"items": "none"}', "invalid_response"),
        ("tenant", WRONG_SHAPE_JSON, "not_sophos_answer"),
        ("tenant", b'{"items": []}', "invalid_response"),
    ],
)
async def test_json_with_none_of_the_calls_fields_is_not_sophos_answer(
    probe: str, body: bytes, cause: str, server: ReplayServer, tmp_path: Path
) -> None:
    result, _ = await probe_with(server, tmp_path, probe, Answer(200, body))
    assert (result.cause, result.success) == (cause, False)
    if cause == "not_sophos_answer":
        assert result.remedy == NOT_SOPHOS.remedy
        assert "none of the fields" in result.message
    assert result.tenant_id == ("" if probe != "tenant" else TENANT_ID)
