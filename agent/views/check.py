"""``check``: the report of one probe cycle as a terminal table or as JSON for scripts.

The table lists every probe (summary first, then what is not healthy, then the rest); the JSON
holds the report's summary, the probes grouped as the table shows them, and ``probes``: every
probe flat, one object each, with its cause's kind, so that ``jq '.probes[] | select(.kind ==
"failure")'`` lists what needs someone.
"""

from __future__ import annotations

import json

from tabulate import tabulate

from agent.views.report import Report, Row, plain_remedy


def check_json(report: Report) -> str:
    return json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n"


CHECK_HEADER = (
    "CREDENTIAL",
    "TENANT",
    "TENANT ID",
    "PROBE",
    "STATUS",
    "ERROR CODE",
    "CAUSE",
    "HINT",
)


def format_check(report: Report, failures_only: bool = False) -> str:
    """Summary first, then every probe that is not healthy, then (unless left out) the rest.

    Columns are aligned by display width (``tabulate`` with ``wcwidth``), so tenant names in
    Chinese or Japanese do not shift the columns after them.
    """
    rows = [r for r in report.rows() if not (failures_only and r.kind == "ok")]
    table = tabulate(
        [_check_row(r) for r in rows],
        headers=CHECK_HEADER,
        tablefmt="plain",
        disable_numparse=True,
    )
    return "\n".join([*summary_lines(report), "", table, ""])


def _check_row(row: Row) -> tuple[str, ...]:
    return (
        row.credential,
        row.tenant_name or "-",
        row.tenant_id or "-",
        row.probe,
        row.status,
        row.error_code or "-",
        row.cause,
        "-" if row.kind == "ok" else plain_remedy(row.remedy),
    )


def summary_lines(report: Report) -> list[str]:
    """The report's first lines: what failed, by cause, how often each credential probes and
    when it expires, then what needs attention about a credential itself (its expiry within
    30 days, a period too long for the SIEM collection alert)."""
    s = report.summary
    parts = [f"{s.probes} probes: {s.failing} failing{_by_cause(s.failing_by_cause)}"]
    parts.append(f"{s.business} business state{_by_cause(s.business_by_cause)}")
    if s.not_run:
        parts.append(f"{s.not_run} not run: no token")
    parts.append(f"{s.healthy} healthy")
    if s.not_probed_by_cause:
        tenants = sum(s.not_probed_by_cause.values())
        parts.append(f"{tenants} tenants not probed{_by_cause(s.not_probed_by_cause)}")
    periods = [
        f"{c.name}: tenants probed {c.period_text}"
        + (f"; the credential {c.expiry.text}" if c.expiry is not None else "")
        for c in report.credentials
    ]
    notes = [
        f"{a.level}: {a.credential}: {plain_remedy(a.what)}" for a in report.attention if a.topic
    ]
    return ["; ".join(parts), *periods, *notes]


def _by_cause(counts: dict[str, int]) -> str:
    if not counts:
        return ""
    return " (" + ", ".join(f"{n} {cause}" for cause, n in counts.items()) + ")"
