"""One diagnosis, told the same way everywhere: ``/metrics`` (cause and kind), ``/status``,
``check`` and the log (with the hint and the ids Sophos support asks for); 5XX evidence that
counts how often a probe fails. (docs/troubleshooting.md is held to the cause table by
tests/test_causes.py.)
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from agent import metricnames as m
from agent.causes import TABLE
from agent.classify import Outcome
from agent.cli import run_check
from agent.diagnosis import Context, diagnose
from agent.evidence import load_evidence
from agent.simulator import build_scenario
from agent.statefile import StateFile
from agent.views.report import plain_remedy
from agent.views.status import remedy_html
from tests.e2e.harness import Stack, start_ready_stack, stop_stack, tenant_tagged, wait_for

IN_MODULE_LOOP = pytest.mark.asyncio(loop_scope="module")


EXPECTED = {
    "trial_403": "trial_account",
    "no_partner_assistance_403": "partner_assistance_disabled",
    "not_found_404": "not_found",
    "server_error_500": "sophos_server_error",
    "html_502": "sophos_unavailable",
    "empty_503": "sophos_unavailable",
    "slow": "network_error",
    "reset": "network_error",
    "truncated": "network_error",
    "stall": "network_error",
    "bad_gzip": "network_error",
    "wrong_content_type": "not_sophos_answer",  # a maintenance page sent as application/json
    "huge_body": "invalid_response",
    "deep_json": "invalid_response",
    "export_restricted_451": "export_restricted",
    "not_activated": "not_activated",
    "trial_no_host": "trial_without_host",
    "rogue_host": "host_not_allowed",
}
NOT_PROBED = ("not_activated", "trial_no_host", "rogue_host")
REMEDIES = {
    "wrong_content_type": TABLE["not_sophos_answer"].variants["page"].format(title="Maintenance"),
}
"""Where a fault's remedy is a variant of its cause's, filled in from the answer."""
CENTRAL_ERROR_BODIES = {
    "trial_403",
    "no_partner_assistance_403",
    "not_found_404",
    "server_error_500",
}


# -- remedies picked from what else is known ----------------------------------------------------


def test_a_redirect_is_a_bad_request_with_its_own_remedy() -> None:
    diagnosis = diagnose("tenant", Outcome(302))
    redirect = TABLE["bad_request"].variants["redirect"]
    assert (diagnosis.cause, diagnosis.remedy) == ("bad_request", redirect)
    assert diagnose("tenant", Outcome(400)).remedy == TABLE["bad_request"].remedy


def test_a_401_with_a_fresh_token_points_at_the_headers() -> None:
    fresh = TABLE["token_rejected"].variants["fresh_token"]
    assert diagnose("tenant", Outcome(401), Context(token_age=5)).remedy == fresh
    assert (
        diagnose("tenant", Outcome(401), Context(token_age=900)).remedy
        == TABLE["token_rejected"].remedy
    )


# -- the same diagnosis everywhere --------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    running = await start_ready_stack(
        build_scenario("faults"),
        tmp_path_factory.mktemp("diagnosis"),
        within=30,
        probe_interval="2s",
        request_timeout="3s",  # room for a loaded CI machine; "slow" tenants take 8 s or more
    )
    yield running
    await stop_stack(running)


def json_log(stack: Stack) -> list[dict[str, object]]:
    lines = [line for line in stack.logs.getvalue().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    for record in records:
        assert {"ts", "level", "logger", "msg"} <= set(record)
    return records


@IN_MODULE_LOOP
async def test_every_fault_has_one_cause_in_metrics_status_check_and_log(stack: Stack) -> None:
    families = await stack.metrics()
    causes = {
        lbl["tenant_id"]: lbl["cause"]
        for _, lbl, _ in families[m.PROBE_CAUSE_INFO]
        if lbl["probe"] == "tenant"
    }
    kinds = {
        lbl["tenant_id"]: lbl["kind"]
        for _, lbl, _ in families[m.PROBE_CAUSE_INFO]
        if lbl["probe"] == "tenant"
    }
    status = (await stack.get("/status")).text
    out = io.StringIO()
    assert await run_check(stack.settings, out) == 1
    table = out.getvalue().splitlines()
    records = json_log(stack)
    for tag, cause in EXPECTED.items():
        tid = tenant_tagged(stack, tag)
        remedy = REMEDIES.get(tag, TABLE[cause].remedy)
        assert causes[tid] == cause, (tag, causes[tid])
        assert kinds[tid] == TABLE[cause].kind, tag
        group = re.search(
            rf'<div class="group [^"]*" id="[^"]*--{cause}" data-cause="{cause}".*?</table>',
            status,
            re.S,
        )
        assert group is not None, f"/status has no {cause} group for {tag}"
        assert f'data-cause="{cause}" data-tenant="{tid}"' in group.group(0), tag
        assert str(remedy_html(remedy)) in group.group(0)
        (line,) = [line for line in table if tid in line]
        assert f" {cause} " in line and line.endswith(plain_remedy(remedy)), (tag, line)
        logged = [r for r in records if r.get("tenant_id") == tid and r.get("cause") == cause]
        assert logged, f"no log line with cause {cause} for {tag}"
        assert logged[-1]["level"] == "warning"
        assert logged[-1]["hint"] == remedy
        if tag not in NOT_PROBED:  # not probed: logged once per tenant, not per probe
            assert logged[-1]["probe"] == "tenant"
        if tag in CENTRAL_ERROR_BODIES:
            assert {"correlationId", "requestId"} <= set(logged[-1]), logged[-1]


@IN_MODULE_LOOP
async def test_ids_go_to_the_log_never_to_labels(stack: Stack) -> None:
    text = (await stack.get("/metrics")).text
    records = json_log(stack)
    ids = {
        str(r[k])
        for r in records
        for k in ("correlationId", "requestId", "trackingId", "code", "docUrl")
        if k in r
    }
    assert ids
    assert [i for i in ids if i in text] == []
    # Sophos's own error code and documentation link of a 500 reach its log line too.
    tid = tenant_tagged(stack, "server_error_500")
    (logged, *_) = [r for r in records if r.get("tenant_id") == tid and "code" in r]
    assert str(logged["docUrl"]).startswith("https://")


@IN_MODULE_LOOP
async def test_5xx_evidence_counts_how_often_a_probe_fails_and_when_it_recovered(
    stack: Stack,
) -> None:
    tid = tenant_tagged(stack, "server_error_500")

    def evidence() -> dict[str, object]:
        store = StateFile(stack.settings.state_file)
        try:
            (item,) = [e for e in load_evidence(store) if e.tenant_id == tid]
        finally:
            store.close()
        return {
            "persistent": item.persistent,
            "failures": item.failures,
            "calls": item.calls,
            "consecutive": item.consecutive,
            "share": item.share,
            "last_ok": item.last_ok,
        }

    await wait_for(lambda: evidence()["persistent"], 20, "3 consecutive 5XX for the 500 tenant")
    before = evidence()
    assert before["share"] == 1.0 and before["last_ok"] is None
    assert before["failures"] == before["calls"] == before["consecutive"]
    support = (await stack.get("/support")).text
    assert f"({tid})" in support and "**failing now, persistent (" in support
    assert re.search(r"How often: \d+ of \d+ calls since first seen \(100%\)", support)

    stack.sim.set_fault(tid, None)
    await wait_for(lambda: evidence()["last_ok"] is not None, 20, "a success after the 5XX")
    after = evidence()
    assert after["consecutive"] == 0
    assert after["persistent"] is True  # it was persistent; the case may still be worth opening
    assert after["calls"] > after["failures"]
    assert 0 < float(after["share"]) < 1  # type: ignore[arg-type]
    support = (await stack.get("/support")).text
    assert "Last success after a 5XX: none" not in support.split(f"({tid})", 1)[1].split("## ")[0]
