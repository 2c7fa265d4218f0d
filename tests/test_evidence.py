"""5XX support evidence: collected from the first 5XX on, persistent after three, kept on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.classify import classify_response
from agent.cli import main
from agent.client import CallRecord
from agent.evidence import EvidenceRecorder, load_evidence
from agent.statefile import StateFile
from agent.views.support import render_markdown

CANARY_TOKEN = "canary-token-4242-do-not-leak"


def call(
    status: int, at: float, probe: str = "tenant", body: bytes = b"", url: str = ""
) -> CallRecord:
    raw = (
        body
        or json.dumps(
            {
                "error": "InternalServerError",
                "correlationId": f"corr-{at:.0f}",
                "requestId": "req-1",
            }
        ).encode()
    )
    return CallRecord(
        credential="msp-main",
        tenant_id="tenant-1" if probe == "tenant" else "",
        probe=probe,
        method="POST" if probe == "token" else "GET",
        url=url
        or "https://api-eu01.central.sophos.com/endpoint/v1/endpoints?pageSize=1&view=basic",
        request_headers={"Authorization": "<redacted>", "X-Tenant-ID": "tenant-1"},
        outcome=classify_response(status, raw, {"content-type": "application/json"}),
        duration=0.1,
        started_at=at,
        response_headers={"content-type": "application/json", "set-cookie": "session=abc"},
        raw_body=raw,
    )


def test_three_consecutive_5xx_make_a_probe_persistent(tmp_path: Path) -> None:
    store = StateFile(tmp_path / "state.db")
    recorder = EvidenceRecorder(store)
    recorder.observe_call(call(200, 1.0))  # nothing recorded before the first 5XX
    assert load_evidence(store) == []
    recorder.observe_call(call(500, 10.0))
    recorder.observe_call(call(503, 20.0))
    (item,) = load_evidence(store)
    assert not item.persistent and item.consecutive == 2
    recorder.observe_call(call(502, 30.0))
    (item,) = load_evidence(store)
    assert item.persistent and item.consecutive == 3
    assert (item.first_seen, item.last_seen, item.failures, item.calls) == (10.0, 30.0, 3, 3)
    assert item.ids == {"correlationId": "corr-30", "requestId": "req-1"}
    assert "set-cookie" not in item.response_headers


def test_a_success_ends_the_streak_but_keeps_the_history(tmp_path: Path) -> None:
    store = StateFile(tmp_path / "state.db")
    recorder = EvidenceRecorder(store)
    for at in (1.0, 2.0):
        recorder.observe_call(call(500, at))
    recorder.observe_call(call(200, 3.0))
    recorder.observe_call(call(500, 4.0))
    (item,) = load_evidence(store)
    assert item.consecutive == 1 and not item.persistent
    assert item.failures == 3 and item.calls == 4 and item.share == 0.75
    assert item.last_ok == 3.0


def test_evidence_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = StateFile(path)
    recorder = EvidenceRecorder(store)
    for at in (1.0, 2.0, 3.0):
        recorder.observe_call(call(500, at))
    store.close()
    reopened = StateFile(path)
    recorder = EvidenceRecorder(reopened)
    recorder.observe_call(call(200, 4.0))  # known key after restart: the success is counted
    (item,) = load_evidence(reopened)
    assert item.persistent and item.calls == 4 and item.consecutive == 0


def test_markdown_has_the_subject_the_curl_and_no_secret(tmp_path: Path) -> None:
    store = StateFile(tmp_path / "state.db")
    recorder = EvidenceRecorder(store)
    recorder.observe_call(call(500, 1.0, probe="token"))
    text = render_markdown(load_evidence(store))
    assert text.startswith("# Subject: New API 5xx error")
    assert "curl -sS -X POST" in text
    assert "client_secret=<redacted>" in text
    assert "Bearer <redacted>" in text
    assert CANARY_TOKEN not in text
    assert "correlationId=corr-1" in text


SOPHOS_500 = json.dumps(
    {
        "error": "internalServerError",
        "message": "Internal Server Error.",
        "correlationId": "df88bf88-471b-49d6-8a5e-07a26964d2ec",
        "requestId": "85073630-8ad8-46da-bf64-cb1e8b6f864b",
        "code": "SRV00000500",
        "docUrl": "https://developer.sophos.com/intro#errors",
    }
).encode()


def test_sophos_code_and_doc_url_reach_the_support_bundle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state.db"
    cfg = write_config(tmp_path, state)
    store = StateFile(state)
    EvidenceRecorder(store).observe_call(call(500, 5.0, body=SOPHOS_500))
    store.close()
    assert main(["support-bundle", "--config", str(cfg)]) == 0
    markdown = capsys.readouterr().out
    assert (
        "- Correlation / request ids: correlationId=df88bf88-471b-49d6-8a5e-07a26964d2ec, "
        "requestId=85073630-8ad8-46da-bf64-cb1e8b6f864b\n"
    ) in markdown
    assert (
        "- Sophos error code and documentation: code=SRV00000500, "
        "docUrl=https://developer.sophos.com/intro#errors\n"
    ) in markdown
    assert main(["support-bundle", "--config", str(cfg), "--format", "json"]) == 0
    (item,) = json.loads(capsys.readouterr().out)["evidence"]
    assert item["ids"]["code"] == "SRV00000500"
    assert item["ids"]["docUrl"] == "https://developer.sophos.com/intro#errors"


def test_whoami_504_from_a_data_region_api_url_is_no_support_case(tmp_path: Path) -> None:
    store = StateFile(tmp_path / "state.db")
    recorder = EvidenceRecorder(store)
    regional = "https://api-eu01.central.sophos.com/whoami/v1"
    for at in (1.0, 2.0, 3.0):
        recorder.observe_call(call(504, at, probe="whoami", body=b"", url=regional))
    assert load_evidence(store) == []
    recorder.observe_call(
        call(504, 4.0, probe="whoami", url="https://api.central.sophos.com/whoami/v1")
    )
    (item,) = load_evidence(store)
    assert (item.probe, item.status) == ("whoami", 504)


def write_config(tmp_path: Path, state: Path) -> Path:
    cfg = tmp_path / "config.yml"
    cfg.write_text(
        f"state_file: {state}\n"
        "credentials: [{name: msp-main, client_id: id-x, client_secret: secret-x}]\n"
    )
    return cfg


def test_support_bundle_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state.db"
    cfg = write_config(tmp_path, state)
    assert main(["support-bundle", "--config", str(cfg)]) == 1
    assert "no evidence yet" in capsys.readouterr().err
    store = StateFile(state)
    EvidenceRecorder(store).observe_call(call(503, 5.0, body=b"<html>Service Unavailable</html>"))
    store.close()
    out = tmp_path / "bundle.md"
    assert main(["support-bundle", "--config", str(cfg), "--out", str(out)]) == 0
    assert "<html>Service Unavailable</html>" in out.read_text()
    assert main(["support-bundle", "--config", str(cfg), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["subject"] == "New API 5xx error"
    assert data["evidence"][0]["status"] == 503
    bad = tmp_path / "bad.yml"
    bad.write_text("budget_share: 7\n")
    assert main(["support-bundle", "--config", str(bad)]) == 2


def test_the_bundle_names_tenants_as_the_support_page_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``support-bundle`` reads only the state file, with no agent running: the tenant's name
    was kept with the evidence, so the case names the tenant the way ``/support`` did."""
    store = StateFile(tmp_path / "state.db")
    names = {("msp-main", "tenant-1"): "Crème Brûlée S.A."}
    recorder = EvidenceRecorder(store, names=lambda cred, tid: names.get((cred, tid), ""))
    recorder.observe_call(call(500, 10.0))
    live = render_markdown(load_evidence(store), {"tenant-1": "Crème Brûlée S.A."})
    store.close()
    config = tmp_path / "config.yml"
    config.write_text(
        f"state_file: {tmp_path / 'state.db'}\n"
        "credentials: [{name: msp-main, client_id: x, client_secret: y}]\n"
    )
    config.chmod(0o600)
    assert main(["support-bundle", "--config", str(config)]) == 0
    bundle = capsys.readouterr().out
    assert "## msp-main / tenant / Crème Brûlée S.A. (tenant-1)" in bundle
    assert bundle == live


@pytest.mark.parametrize(
    ("statuses", "state", "often"),
    [
        (
            [500, 500],
            "failing now, not yet persistent (2 5XX in a row; persistent from 3)",
            "2 of 2",
        ),
        ([500] * 3, "failing now, persistent (3 5XX in a row; persistent from 3)", "3 of 3"),
        ([500, 200], "intermittent: recovered after each 5XX", "1 of 2"),
        (
            [500] * 3 + [200],
            "recovered since; it was persistent (3 or more 5XX in a row)",
            "3 of 4",
        ),
    ],
)
def test_the_status_line_agrees_with_the_counts_beside_it(
    tmp_path: Path, statuses: list[int], state: str, often: str
) -> None:
    store = StateFile(tmp_path / "state.db")
    recorder = EvidenceRecorder(store)
    for i, status in enumerate(statuses):
        recorder.observe_call(call(status, 10.0 + i))
    text = render_markdown(load_evidence(store))
    assert f"- Status: **{state}**; last 5XX answer HTTP 500" in text
    assert f"- How often: {often} calls since first seen" in text


# -- evidence about what is gone is history -----------------------------------------------------


def _bundle(config: Path, capsys: pytest.CaptureFixture[str], fmt: str = "md") -> str:
    capsys.readouterr()
    assert main(["support-bundle", "--config", str(config), "--format", fmt]) == 0
    return capsys.readouterr().out


def _section(markdown: str, tenant_id: str) -> str:
    """The bundle's section of one tenant's probe, from its heading to the next one."""
    return markdown.split(f"({tenant_id})", 1)[1].split("\n## ", 1)[0]


async def test_evidence_of_a_departed_tenant_and_a_removed_credential_is_history(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both tenants answer 500 until their evidence is persistent. Then one leaves the tenant
    list and the other's credential is removed from the config: /support and support-bundle
    (both formats) keep their evidence as history, never as "failing now"."""
    import yaml

    from agent.config import load_settings
    from agent.runtime import Agent
    from agent.simulator import Simulator, build_scenario
    from agent.views.support import render_support_page
    from tests.e2e.harness import GENEROUS_LIMITS

    scenario = build_scenario("healthy")
    scenario.rate_limits.update(GENEROUS_LIMITS)
    sim = Simulator(scenario, host="127.0.0.1", port=0)
    await sim.start()
    try:
        msp, org = sim.scenario.credential("msp-healthy"), sim.scenario.credential("org-healthy")
        leaving, staying = msp.tenants[3], org.tenants[1]
        for tenant in (leaving, staying):
            sim.set_fault(tenant.id, "server_error_500")
        config = {
            **sim.agent_config(),
            "state_file": str(tmp_path / "state.db"),
            "budget_share": 1.0,
        }
        full = tmp_path / "config.yml"
        full.write_text(yaml.safe_dump(config, sort_keys=False))
        agent = Agent(load_settings(full), process_metrics=False)
        try:
            for _ in range(3):
                await agent.run_cycle()
            before = render_support_page(agent.snapshot(evidence=True))
            msp.tenants.remove(leaving)  # it leaves the partner's tenant list
            await agent.run_cycle()
            after = render_support_page(agent.snapshot(evidence=True))
        finally:
            await agent.stop(grace=0)
    finally:
        await sim.stop()

    assert "**failing now, persistent (3 5XX in a row" in _section(before, leaving.id)
    assert "# History" not in before
    current, history = after.split("\n# History\n", 1)
    assert f"({staying.id})" in current and "failing now" in _section(current, staying.id)
    assert f"({leaving.id})" in history and "failing now" not in _section(after, leaving.id)
    assert "history (the tenant left the tenant list): when last probed it was failing" in (
        _section(after, leaving.id)
    )
    assert "- History: the tenant left the tenant list (since 20" in _section(after, leaving.id)

    # support-bundle reads the state file alone: the departure was written there.
    assert _bundle(full, capsys) == after
    items = {e["tenant_id"]: e for e in json.loads(_bundle(full, capsys, "json"))["evidence"]}
    assert items[leaving.id]["current"] is False
    assert items[leaving.id]["history"] == "the tenant left the tenant list"
    assert items[staying.id]["current"] is True
    assert "failing now" in items[staying.id]["state"]

    # The org credential is removed from the config: its evidence is history too.
    config["credentials"] = [c for c in config["credentials"] if c["name"] != org.name]
    reduced = tmp_path / "reduced.yml"
    reduced.write_text(yaml.safe_dump(config, sort_keys=False))
    markdown = _bundle(reduced, capsys)
    assert "\n# History\n" in markdown and "failing now" not in markdown
    assert "history (the credential is no longer in the config)" in _section(markdown, staying.id)
    items = {e["tenant_id"]: e for e in json.loads(_bundle(reduced, capsys, "json"))["evidence"]}
    assert [items[t.id]["current"] for t in (leaving, staying)] == [False, False]
    agent = Agent(load_settings(reduced), process_metrics=False)
    try:
        page = render_support_page(agent.snapshot(evidence=True))
    finally:
        await agent.stop(grace=0)
    assert "failing now" not in page
    assert "history (the credential is no longer in the config)" in _section(page, staying.id)


@pytest.mark.parametrize("complete", [True, False])
def test_a_secret_at_the_edge_of_what_is_kept_is_not_kept_in_part(
    tmp_path: Path, complete: bool
) -> None:
    """The evidence keeps the first MAX_BODY_CHARS of a body: a secret straddling that cut, or
    the end of a body already cut at max_response_bytes, must not be stored half."""
    from dataclasses import replace

    from agent.evidence import MAX_BODY_CHARS
    from agent.logs import REDACTOR

    secret = "edge-secret-0123456789abcdef"
    REDACTOR.add([secret])
    start = MAX_BODY_CHARS - 10 if complete else 500
    filler = b"."  # other tests register secrets in the process-wide redactor, such as "x" * 9
    body = (filler * start + secret.encode())[: None if complete else start + 12]
    store = StateFile(tmp_path / "state.db")
    recorder = EvidenceRecorder(store)
    record = replace(call(500, 1.0, body=body + (b"tail" if complete else b"")))
    recorder.observe_call(replace(record, body_complete=complete))
    (item,) = load_evidence(store)
    store.close()
    assert secret[:8] not in item.response_body
    assert item.response_body.startswith("." * (start - 100))
