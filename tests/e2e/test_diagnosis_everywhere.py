"""One diagnosis, told the same way everywhere: ``/metrics``, ``/status``, ``check`` and the log
(with the hint and the ids Sophos support asks for); 5XX evidence that counts how often a probe
fails; and docs/troubleshooting.md kept in step with the remedies the agent actually shows.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from agent import metricnames as m
from agent.classify import Outcome
from agent.cli import run_check
from agent.diagnosis import HEADER_401_REMEDY, REDIRECT_REMEDY, REMEDIES, Context, diagnose
from agent.evidence import load_evidence
from agent.report import plain_remedy
from agent.simulator import build_scenario
from agent.statefile import StateFile
from agent.status_page import remedy_html
from tests.e2e.harness import Stack, start_ready_stack, stop_stack, tenant_tagged, wait_for

IN_MODULE_LOOP = pytest.mark.asyncio(loop_scope="module")

DOC = Path(__file__).resolve().parents[2] / "docs" / "troubleshooting.md"

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
    "wrong_content_type": "invalid_response",
    "huge_body": "invalid_response",
    "deep_json": "invalid_response",
    "export_restricted_451": "export_restricted",
    "not_activated": "not_activated",
    "trial_no_host": "trial_account",
    "rogue_host": "host_not_allowed",
}
NOT_PROBED = ("not_activated", "trial_no_host", "rogue_host")
CENTRAL_ERROR_BODIES = {
    "trial_403",
    "no_partner_assistance_403",
    "not_found_404",
    "server_error_500",
}


# -- the troubleshooting page -------------------------------------------------------------------


def doc_sections() -> dict[str, list[str]]:
    """``## `cause` `` headings in order, each with its block quotes (joined into one line)."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    quote: list[str] = []
    for line in [*DOC.read_text(encoding="utf-8").splitlines(), ""]:
        if line.startswith("> ") and current is not None:
            quote.append(line[2:].strip())
            continue
        if quote and current is not None:
            current.append(" ".join(quote))
            quote = []
        heading = re.fullmatch(r"## `([a-z_]+)`", line)
        if heading:
            current = sections.setdefault(heading.group(1), [])
    return sections


def test_troubleshooting_page_has_a_section_per_cause_in_contract_order() -> None:
    assert list(doc_sections()) == list(m.CAUSES)


def test_troubleshooting_page_quotes_exactly_the_remedies_the_agent_shows() -> None:
    variants = {"token_rejected": [HEADER_401_REMEDY], "bad_request": [REDIRECT_REMEDY]}
    for cause, quotes in doc_sections().items():
        expected = [REMEDIES[cause], *variants.get(cause, [])]
        assert quotes == expected, (
            f"docs/troubleshooting.md, section `{cause}`: the quoted remedies differ from "
            f"agent/diagnosis.py; quote exactly:\n" + "\n".join(f"> {q}" for q in expected)
        )


def test_a_redirect_is_a_bad_request_with_its_own_remedy() -> None:
    diagnosis = diagnose("tenant", Outcome(302))
    assert (diagnosis.cause, diagnosis.remedy) == ("bad_request", REDIRECT_REMEDY)
    assert diagnose("tenant", Outcome(400)).remedy == REMEDIES["bad_request"]


def test_a_401_with_a_fresh_token_points_at_the_headers() -> None:
    assert diagnose("tenant", Outcome(401), Context(token_age=5)).remedy == HEADER_401_REMEDY
    assert (
        diagnose("tenant", Outcome(401), Context(token_age=900)).remedy
        == REMEDIES["token_rejected"]
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
    status = (await stack.get("/status")).text
    out = io.StringIO()
    assert await run_check(stack.settings, out) == 1
    table = out.getvalue().splitlines()
    records = json_log(stack)
    for tag, cause in EXPECTED.items():
        tid = tenant_tagged(stack, tag)
        remedy = REMEDIES[cause]
        assert causes[tid] == cause, (tag, causes[tid])
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
        if tag not in NOT_PROBED:  # not probed: logged once, no hint
            assert logged[-1]["hint"] == remedy
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
