"""The report behind ``/status`` and ``check``: what comes first, how failures are grouped and
counted, and how the terminal table lines up when tenant names are Chinese or Japanese."""

from __future__ import annotations

from wcwidth import wcswidth

from agent.causes import NOT_PROBED, TABLE
from agent.probes import CredentialState, ProbeResult
from agent.snapshot import Snapshot
from agent.sophos import parse_tenant
from agent.views.check import format_check
from agent.views.report import NO_ANSWER, NOT_RUN_NO_TOKEN, Report, build_report
from agent.views.status import remedy_html
from tests.snapshots import NOW, snapshot_of

REMEDIES = {name: cause.remedy for name, cause in TABLE.items()}


def result(
    cred: str, tenant_id: str, probe: str, status: int, code: str, cause: str
) -> ProbeResult:
    return ProbeResult(
        credential=cred,
        tenant_id=tenant_id,
        probe=probe,
        success=cause == "ok",
        status_code=status,
        error_code=code,
        cause=cause,
        remedy=REMEDIES[cause],
        message="",
        timestamp=NOW - 90,
        duration=0.1,
    )


def state(name: str, tenants: dict[str, str], results: list[ProbeResult]) -> CredentialState:
    st = CredentialState(name=name)
    for tid, tname in tenants.items():
        tenant = parse_tenant(
            {
                "id": tid,
                "name": tname,
                "billingType": "term",
                "apiHost": "https://api-eu01.central.sophos.com",
            }
        )
        assert tenant is not None
        st.tenants[tid] = st.probed[tid] = tenant
    for r in results:
        st.results[(r.tenant_id, r.probe)] = r
    return st


def agent_of(*states: CredentialState) -> Snapshot:
    return snapshot_of(
        *states,
        period=13_680.0,
        period_text="every 3.8 h: stretched to fit the rate budget",
        window_calls={"1s": 0, "1m": 3, "1h": 22, "1d": 120},
        limits={"1s": 10, "1m": 100, "1h": 1000, "1d": 50000},
    )


def fleet() -> Report:
    healthy = state(
        "msp-main",
        {"t-1": "東京 クリニック", "t-2": "Acme GmbH", "t-3": "北京 Pty", "t-4": "Zeta"},
        [
            result("msp-main", "", "token", 200, "success", "ok"),
            result("msp-main", "t-1", "tenant", 200, "", "ok"),
            result("msp-main", "t-2", "tenant", 500, "internalServerError", "sophos_server_error"),
            result("msp-main", "t-3", "tenant", 403, "forbidden", "partner_assistance_disabled"),
            result("msp-main", "t-4", "tenant", 0, "not_activated", "not_activated"),
        ],
    )
    revoked = state(
        "revoked-key",
        {},
        [
            result(
                "revoked-key",
                "",
                "token",
                401,
                "oauth.invalid_client_secret",
                "invalid_credentials",
            ),
            result(
                "revoked-key",
                "",
                "whoami",
                401,
                "oauth.invalid_client_secret",
                "invalid_credentials",
            ),
        ],
    )
    return build_report(agent_of(healthy, revoked))


def test_a_credential_without_a_token_comes_first_and_its_other_probes_were_not_run() -> None:
    report = fleet()
    first = report.credentials[0]
    assert first.name == "revoked-key" and first.token_failed
    assert first.token is not None and first.token.status == "401"
    (group,) = first.groups
    assert group.section == "not_run" and group.kind == "failure"  # the cause keeps its kind
    assert [r.status for r in group.rows] == [NOT_RUN_NO_TOKEN]
    assert report.attention[0].credential == "revoked-key"
    assert "token issuance fails (401)" in report.attention[0].what


def test_summary_counts_failures_business_state_and_not_run_apart() -> None:
    s = fleet().summary
    assert (s.credentials, s.credentials_without_token, s.tenants) == (2, 1, 4)
    assert s.failing_by_cause == {"invalid_credentials": 1, "sophos_server_error": 1}
    assert s.business_by_cause == {"partner_assistance_disabled": 1, "not_activated": 1}
    assert (s.not_run, s.healthy, s.probes) == (1, 2, 7)


def test_failures_are_grouped_by_cause_with_the_remedy_once_and_come_before_business() -> None:
    cred = fleet().credentials[1]
    assert [g.kind for g in cred.groups] == ["failure", "business", "business"]
    assert cred.groups[0].cause == "sophos_server_error"
    assert cred.groups[0].remedy == REMEDIES["sophos_server_error"]
    statuses = {r.tenant_id: r.status for g in cred.groups for r in g.rows}
    assert statuses["t-4"] == NOT_PROBED  # nothing was sent: not "no answer", not "0"


def test_a_probe_without_a_response_reads_no_answer() -> None:
    st = state(
        "c",
        {"t": "T"},
        [result("c", "t", "tenant", 0, "timeout", "network_error")],
    )
    (group,) = build_report(agent_of(st)).credentials[0].groups
    assert group.rows[0].status == NO_ANSWER


def test_check_table_aligns_columns_by_display_width_with_cjk_names() -> None:
    text = format_check(fleet())
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("CREDENTIAL"))
    rows = {t: line for line in lines for t in ("t-1", "t-2", "t-3", "t-4") if t in line}
    assert len(rows) == 4
    column = wcswidth(header[: header.index("TENANT ID")])
    for tid, line in rows.items():
        assert wcswidth(line[: line.index(tid)]) == column, line


def test_check_summary_says_failures_by_cause_and_the_probe_period() -> None:
    first, second = format_check(fleet()).splitlines()[:2]
    assert first.startswith("7 probes: 2 failing (1 invalid_credentials, 1 sophos_server_error)")
    assert "2 business state (" in first
    assert "1 partner_assistance_disabled" in first and "1 not_activated" in first
    assert "1 not run: no token" in first
    assert second == "revoked-key: tenants probed every 3.8 h: stretched to fit the rate budget"


def test_failures_only_leaves_healthy_rows_out() -> None:
    text = format_check(fleet(), failures_only=True)
    assert "t-1" not in text and "t-2" in text


def test_remedies_show_code_spans_as_code_not_backticks() -> None:
    html = str(remedy_html(REMEDIES["sophos_server_error"]))
    assert "`" not in html
    assert "<code>sophos-central-exporter support-bundle --config FILE</code>" in html
    assert str(remedy_html("a <b> `x<y>`")) == "a &lt;b&gt; <code>x&lt;y&gt;</code>"


def test_one_cause_with_two_remedies_is_two_groups_and_neither_remedy_is_hidden() -> None:
    rows = [
        result("c", "t-1", "common_alerts", 403, "forbidden", "forbidden"),
        result("c", "t-2", "tenant", 403, "forbidden", "forbidden"),
    ]
    rows[0] = ProbeResult(**{**rows[0].__dict__, "remedy": "may call X but not Y"})
    st = state("c", {"t-1": "One", "t-2": "Two"}, rows)
    groups = build_report(agent_of(st)).credentials[0].groups
    assert sorted(g.remedy for g in groups) == sorted(
        ["may call X but not Y", REMEDIES["forbidden"]]
    )
    assert len({g.anchor for g in groups}) == 2
