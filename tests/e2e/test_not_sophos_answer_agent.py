"""Answers that are not Sophos's, end to end: the agent against the simulator's ``not-api``
scenario (a captive portal's HTML 200, JSON 200 of the wrong shape, a WAF's HTML 403, a
maintenance HTML 503, and two healthy tenants).

Each of them is ``not_sophos_answer`` with kind ``failure`` on ``/metrics``, ``/status``,
``check`` and in the log; the page's title is in the remedy on ``/status`` and in ``check`` and in
the log line, and nothing of any page reaches ``/metrics``; the 503 page collects no 5XX support
evidence.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from agent import metricnames as m
from agent.causes import TABLE
from agent.cli import run_check
from agent.evidence import load_evidence
from agent.simulator import build_scenario
from agent.statefile import StateFile
from agent.views.report import plain_remedy
from agent.views.status import remedy_html
from tests.e2e.harness import Stack, start_ready_stack, stop_stack, tenant_tagged

IN_MODULE_LOOP = pytest.mark.asyncio(loop_scope="module")
NOT_SOPHOS = TABLE["not_sophos_answer"]

TITLES = {
    "html_200": "Guest Wi-Fi - Please sign in",
    "waf_html_403": "Request Rejected",
    "html_503": "Scheduled Maintenance",
    "wrong_shape_200": None,
}
STATUS = {"html_200": 200, "waf_html_403": 403, "html_503": 503, "wrong_shape_200": 200}
BODY_WORDS = (
    "Accept the terms of use",
    "Invalid request blocked",
    "7523156482179350182",
    "operating normally",
    "undergoing scheduled maintenance",
    "We'll be back",
)
"""Words of the pages' bodies (not their titles): shown nowhere."""


def remedy_for(tag: str) -> str:
    title = TITLES[tag]
    return NOT_SOPHOS.remedy if title is None else NOT_SOPHOS.variants["page"].format(title=title)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    running = await start_ready_stack(
        build_scenario("not-api"),
        tmp_path_factory.mktemp("not-api"),
        within=30,
        probe_interval="2s",
        request_timeout="3s",
    )
    yield running
    await stop_stack(running)


@IN_MODULE_LOOP
async def test_each_answer_that_is_not_sophos_is_named_with_its_title_everywhere(
    stack: Stack,
) -> None:
    families = await stack.metrics()
    labels = {
        lbl["tenant_id"]: lbl for _, lbl, _ in families[m.PROBE_CAUSE_INFO] if lbl["tenant_id"]
    }
    status = (await stack.get("/status")).text
    out = io.StringIO()
    assert await run_check(stack.settings, out) == 1
    table = out.getvalue().splitlines()
    records = [json.loads(line) for line in stack.logs.getvalue().splitlines() if line.strip()]
    for tag, title in TITLES.items():
        tid = tenant_tagged(stack, tag)
        remedy = remedy_for(tag)
        assert (labels[tid]["cause"], labels[tid]["kind"]) == ("not_sophos_answer", "failure")
        assert str(remedy_html(remedy)) in status, tag
        (line,) = [line for line in table if tid in line]
        assert f" {STATUS[tag]} " in line and " not_sophos_answer " in line, line
        assert line.endswith(plain_remedy(remedy)), (tag, line)
        logged = [r for r in records if r.get("tenant_id") == tid and r.get("cause")]
        assert logged and logged[-1]["cause"] == "not_sophos_answer"
        assert logged[-1]["hint"] == remedy
        if title is not None:
            assert f'titled "{title}"' in str(logged[-1]["msg"])
        else:
            assert "none of the fields" in str(logged[-1]["msg"])
    healthy = [lbl for lbl in labels.values() if lbl["cause"] == "ok"]
    assert len(healthy) == 2


@IN_MODULE_LOOP
async def test_nothing_of_the_pages_reaches_metrics_or_check(stack: Stack) -> None:
    metrics = (await stack.get("/metrics")).text
    status = (await stack.get("/status")).text
    for title in TITLES.values():
        if title is not None:
            assert title not in metrics
    for words in BODY_WORDS:
        assert words not in metrics and words not in status, words
    records = stack.logs.getvalue()
    for words in BODY_WORDS:
        assert words not in records, words


@IN_MODULE_LOOP
async def test_a_maintenance_page_with_503_collects_no_sophos_support_evidence(
    stack: Stack,
) -> None:
    store = StateFile(stack.settings.state_file)
    try:
        evidence = load_evidence(store)
    finally:
        store.close()
    assert tenant_tagged(stack, "html_503") not in {e.tenant_id for e in evidence}
    support = (await stack.get("/support")).text
    assert tenant_tagged(stack, "html_503") not in support
