"""One cause table (``agent/causes.py``), and no surface with its own idea of what a cause means.

The views, the log and the dashboards take the table as it is. The other places that must name
causes (the alert and recording rules, ``docs/troubleshooting.md``, the runbook's list, the
README's metrics reference) are held equal to it here: each test fails with the text to paste
when a copy drifts.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent import metricnames as m
from agent.causes import (
    CONFIRMED_AFTER,
    KINDS,
    LABEL_VALUES,
    NOT_PROBED,
    TABLE,
    TENANT_STATES,
    Cause,
    names,
)
from agent.classify import Outcome
from agent.diagnosis import diagnose
from agent.metrics import AgentMetrics
from agent.probes import CredentialState, ProbeResult
from agent.views.report import build_report, status_text
from tests.e2e.harness import parse_metrics
from tests.snapshots import NOW, snapshot_of

ROOT = Path(__file__).resolve().parent.parent
RULE_FILES = sorted((ROOT / "alerts").glob("*.rules.yml"))
TROUBLESHOOTING = ROOT / "docs" / "troubleshooting.md"
RUNBOOK = ROOT / "docs" / "runbook.md"
README = ROOT / "README.md"

PROPERTY_SETS: dict[str, frozenset[str]] = {
    "sent nothing": frozenset(names(sent=False, per_probe=True)),
    "unavailable (5XX or no answer)": frozenset(names(unavailable=True)),
    "5XX support evidence": frozenset(names(evidence=True)),
    "refused (403)": frozenset(names(refused=True)),
}
"""The cause lists the rules may spell out: each is a property of the table, not a kind."""

RULE_CAUSE_SETS = {
    "sophos_central:tenants_probed:count": "sent nothing",
    "sophos_central:tenant_probes_5m:count": "sent nothing",
    "sophos_central:tenant_probes_unavailable_5m:count": "unavailable (5XX or no answer)",
    "sophos_central:tenant_probes_newly_forbidden_15m:count": "refused (403)",
    "SophosCentralForbiddenSpike": "refused (403)",
    "SophosCentralPersistent5xx": "5XX support evidence",
    "SophosCentralApiOutage": "unavailable (5XX or no answer)",
    "SophosCentralProbesStale": "sent nothing",
}
"""Which of the table's properties each rule that lists causes means."""

DOC_EXAMPLES = {
    "permitted": "/endpoint/v1/endpoints",
    "path": "/common/v1/alerts",
    "why": "Basic Constraints of CA cert not marked critical",
    "handshake": "wrong version number",
    "title": "Request Rejected",
}
"""What the troubleshooting page fills a remedy's placeholders with in its quote."""


# -- the table itself ---------------------------------------------------------------------------


@pytest.mark.parametrize("cause", TABLE.values(), ids=lambda c: c.name)
def test_every_cause_says_what_every_surface_needs(cause: Cause) -> None:
    assert re.fullmatch(r"[a-z][a-z_]*[a-z]", cause.name)
    assert cause.kind in KINDS
    assert cause.summary and cause.remedy
    assert cause.status_words == (None if cause.sent else NOT_PROBED)
    assert bool(cause.log) == (not cause.sent), "a cause that sends nothing is logged once"
    assert cause.per_probe or not cause.sent, "only a reason for sending nothing has no series"
    assert not cause.evidence or cause.unavailable, "5XX evidence is about an unavailable API"
    if cause.kind == "business" or not cause.sent:
        assert cause.why, "business state, and not probing, each need their reason said"
    for remedy in cause.variants.values():
        assert remedy.format_map(DOC_EXAMPLES) != cause.remedy


def test_the_kind_of_the_causes_users_disagreed_about_is_decided_and_explained() -> None:
    """host_not_allowed was a failure on /status and "not probed" in Grafana; export_restricted
    a failure on /status and business state in Grafana. One kind each, with the reason."""
    for name in ("host_not_allowed", "export_restricted"):
        assert TABLE[name].kind == "failure"
        assert TABLE[name].why.startswith("Decided: failure.")
    assert TABLE["partner_assistance_disabled"].kind == "business"
    assert (TABLE["trial_account"].sent, TABLE["trial_without_host"].sent) == (True, False)


def test_not_probed_is_said_only_for_causes_where_nothing_was_sent() -> None:
    for name, cause in TABLE.items():
        shown = status_text(0, name)
        assert (shown == NOT_PROBED) == (not cause.sent), name
    assert status_text(403, "trial_account") == "403"
    assert status_text(0, "timeout") == "no answer"


def test_tenant_states_are_probed_and_every_reason_for_not_probing() -> None:
    assert ("probed", *names(sent=False)) == TENANT_STATES
    assert set(m.CAUSES) == set(LABEL_VALUES) == set(names(per_probe=True))


def result(cause: str, tenant_id: str) -> ProbeResult:
    return ProbeResult(
        credential="c",
        tenant_id=tenant_id,
        probe="tenant",
        success=cause == "ok",
        status_code=0 if not TABLE[cause].sent else 200 if cause == "ok" else 500,
        error_code=cause if not TABLE[cause].sent else "",
        cause=cause,
        remedy=TABLE[cause].remedy,
        message="",
        timestamp=NOW - 5,
        duration=0.1,
    )


def one_probe_per_cause() -> CredentialState:
    state = CredentialState(name="c")
    for i, cause in enumerate(LABEL_VALUES):
        state.results[(f"t{i}", "tenant")] = result(cause, f"t{i}")
    return state


def test_metrics_status_and_check_give_every_cause_the_kind_of_the_table() -> None:
    snapshot = snapshot_of(one_probe_per_cause())
    page = parse_metrics(AgentMetrics(process_registry=None).render(snapshot).decode())
    exported = {lbl["cause"]: lbl["kind"] for _, lbl, _ in page[m.PROBE_CAUSE_INFO]}
    report = build_report(snapshot)
    reported = {p["cause"]: p["kind"] for p in report.to_json()["probes"]}
    expected = {name: TABLE[name].kind for name in LABEL_VALUES}
    assert exported == reported == expected


def test_a_5xx_is_a_sophos_failure_with_evidence_whatever_its_body_says() -> None:
    """A token endpoint answering 500 with an ``oauth.*`` code is failing, not judging the
    secret: the support evidence for it is kept, as for any 5XX."""
    for probe in ("token", "whoami"):
        diagnosis = diagnose(probe, Outcome(500, "oauth.invalid_client_secret"))
        assert diagnosis.cause == "sophos_server_error"
        assert TABLE[diagnosis.cause].evidence
    assert diagnose("token", Outcome(401, "oauth.invalid_client_secret")).cause == (
        "invalid_credentials"
    )


# -- the rules ---------------------------------------------------------------------------------


def rules() -> list[dict[str, Any]]:
    return [
        rule
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
        for rule in group["rules"]
    ]


def rule_name(rule: dict[str, Any]) -> str:
    return str(rule.get("alert") or rule["record"])


def rule_text(rule: dict[str, Any]) -> str:
    """Every string of a rule (expression, labels, annotations) as written: a YAML dump would
    escape the quotes of a multi-line expression, and no cause list would be found in it."""
    strings: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        else:
            strings.append(str(value))

    walk(rule)
    return "\n".join(strings)


CAUSE_LIST = re.compile(r'\bcause\s*(=~|!~)\s*"([^"]*)"')


@pytest.mark.parametrize("rule", rules(), ids=rule_name)
def test_rules_select_on_kind_and_list_causes_only_as_the_table_says(rule: dict[str, Any]) -> None:
    text = rule_text(rule)
    assert not re.search(r'\bcause\s*(=|!=)\s*"', text), "select on kind, not on one cause"
    for kind in re.findall(r'\bkind\s*!?=\s*"([^"]*)"', text):
        assert kind in KINDS
    lists = {frozenset(found.split("|")) for _, found in CAUSE_LIST.findall(text)}
    if not lists:
        return
    meaning = RULE_CAUSE_SETS.get(rule_name(rule))
    assert meaning is not None, f"{rule_name(rule)} lists causes: say which property it means"
    expected = PROPERTY_SETS[meaning]
    assert lists == {expected}, (
        f"{rule_name(rule)}: its cause list must be the table's {meaning!r} causes: "
        + "|".join(n for n in TABLE if n in expected)
    )


def test_every_confirmation_threshold_in_the_rules_is_the_agents() -> None:
    """Per-tenant alerts call a failure confirmed where the scheduler stops re-probing it."""
    seen = 0
    confirmed = (
        "SophosCentralPersistent5xx",
        "SophosCentralForbiddenSpike",
        "SophosCentralSiemCollectionAtRisk",
    )
    for rule in rules():
        if rule.get("alert") not in confirmed:
            continue
        for threshold in re.findall(
            r"probe_consecutive_failures\{[^}]*\}\s*\)\s*>=\s*(\d+)", rule["expr"]
        ):
            assert int(threshold) == CONFIRMED_AFTER, rule_name(rule)
            seen += 1
    assert seen == 4


def test_the_tenant_counts_of_the_recording_rules_follow_the_kinds(tmp_path: Path) -> None:
    """Prometheus's own engine, one tenant per cause: tenants_failing counts exactly the
    failure kind (a tenant not probed for its host included), tenants_ok the ok kind,
    tenants_business the business kind, and tenants_probed leaves out what sent nothing."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found on PATH; install it with: apt-get install -y prometheus")
    base = 'job="j", instance="i:9866", credential="c", probe="tenant"'
    series = [
        {
            "series": f'{m.PROBE_CAUSE_INFO}{{{base}, tenant_id="t{i}", cause="{name}", '
            f'kind="{TABLE[name].kind}"}}',
            "values": "1x3",
        }
        for i, name in enumerate(LABEL_VALUES)
    ]
    counts = {
        "sophos_central:tenants_ok:count": len(names(kind="ok", per_probe=True)),
        "sophos_central:tenants_failing:count": len(names(kind="failure", per_probe=True)),
        "sophos_central:tenants_business:count": len(names(kind="business", per_probe=True)),
        "sophos_central:tenants_probed:count": len(names(sent=True)),
    }
    labels = '{job="j", instance="i:9866", credential="c"}'
    tests = {
        "rule_files": [str(path) for path in RULE_FILES],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    {
                        "expr": rule,
                        "eval_time": "2m",
                        "exp_samples": [{"labels": rule + labels, "value": count}],
                    }
                    for rule, count in counts.items()
                ],
            }
        ],
    }
    test_file = tmp_path / "kinds.test.yml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False), encoding="utf-8")
    run = subprocess.run(
        [promtool, "test", "rules", str(test_file)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr


# -- the docs ----------------------------------------------------------------------------------


def kind_line(cause: Cause) -> str:
    """The line under each cause's heading in docs/troubleshooting.md."""
    parts = [f"**Kind:** `{cause.kind}`"]
    if not cause.sent:
        parts.append(f"{NOT_PROBED}: the agent sends nothing for such a tenant")
    if cause.evidence:
        parts.append("5XX support evidence is collected")
    line = "; ".join(parts) + "."
    return f"{line} {cause.why}" if cause.why else line


def doc_sections() -> dict[str, dict[str, Any]]:
    """``## `cause` `` headings in order, each with its kind line and its block quotes."""
    sections: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    quote: list[str] = []
    for line in [*TROUBLESHOOTING.read_text(encoding="utf-8").splitlines(), ""]:
        if line.startswith("> ") and current is not None:
            quote.append(line[2:].strip())
            continue
        if quote and current is not None:
            current["quotes"].append(" ".join(quote))
            quote = []
        heading = re.fullmatch(r"## `([a-z_]+)`", line)
        if heading:
            current = sections.setdefault(heading.group(1), {"kind": "", "quotes": []})
        elif current is not None and line.startswith("**Kind:**"):
            current["kind"] = line
    return sections


def test_troubleshooting_has_a_section_per_cause_in_table_order() -> None:
    assert list(doc_sections()) == list(TABLE)


@pytest.mark.parametrize("cause", TABLE.values(), ids=lambda c: c.name)
def test_troubleshooting_says_each_causes_kind_and_quotes_its_remedies(cause: Cause) -> None:
    section = doc_sections().get(cause.name, {"kind": "", "quotes": []})
    assert section["kind"] == kind_line(cause), (
        f"docs/troubleshooting.md, section `{cause.name}`: under the heading, write:\n"
        + kind_line(cause)
    )
    expected = [cause.remedy, *(v.format_map(DOC_EXAMPLES) for v in cause.variants.values())]
    assert section["quotes"] == expected, (
        f"docs/troubleshooting.md, section `{cause.name}`: the quoted remedies differ from "
        "agent/causes.py; quote exactly:\n" + "\n".join(f"> {q}" for q in expected)
    )


def runbook_row(cause: Cause) -> str:
    return f"| `{cause.name}` | {cause.kind} | {cause.summary} |"


def test_the_runbooks_list_of_causes_is_the_table() -> None:
    rows = [
        line
        for line in RUNBOOK.read_text(encoding="utf-8").splitlines()
        if re.match(r"\| `[a-z_]+` \| (ok|business|failure) \|", line)
    ]
    expected = [runbook_row(c) for c in TABLE.values()]
    assert rows == expected, "docs/runbook.md, the table of causes:\n" + "\n".join(expected)


def test_the_readme_names_every_cause_value_and_tenant_state() -> None:
    text = README.read_text(encoding="utf-8")
    (causes,) = re.findall(r"`cause` is one of (.+?)\.\s", text, flags=re.S)
    assert re.findall(r"`([a-z_]+)`", causes) == list(LABEL_VALUES)
    (states,) = re.findall(r"\| `sophos_central_tenants` \|[^\n]*", text)
    assert re.findall(r"`([a-z_]+)`", states.split("|")[4]) == list(TENANT_STATES)


def test_no_other_source_file_spells_out_what_a_cause_means() -> None:
    """The names of the causes surfaces used to disagree about appear, quoted, only in the table
    and at most one more file: everything else refers to the table's entries."""
    sources = [*ROOT.glob("agent/**/*.py"), *ROOT.glob("tools/**/*.py")]
    for name in ("partner_assistance_disabled", "host_not_allowed", "export_restricted"):
        quoted = re.compile(rf"[\"']{name}[\"']")
        files = sorted(
            str(p.relative_to(ROOT)) for p in sources if quoted.search(p.read_text("utf-8"))
        )
        assert "agent/causes.py" in files and len(files) <= 2, (name, files)


def test_cause_lists_in_the_docs_are_the_tables() -> None:
    """A query a reader copies from the docs lists causes as the rules do: one of the table's
    properties, complete."""
    docs = [README, *sorted((ROOT / "docs").glob("*.md")), *sorted(ROOT.glob("*/README.md"))]
    for doc in docs:
        for _, found in CAUSE_LIST.findall(doc.read_text(encoding="utf-8")):
            assert frozenset(found.split("|")) in PROPERTY_SETS.values(), (doc.name, found)
