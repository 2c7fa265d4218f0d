"""``/status``: what an on-call engineer wants to see first, as one self-contained HTML page.

Failures come first, each with its cause and what to do; healthy tenants follow, capped so that a
10,000-tenant MSP still gets a page a browser renders at once. No external assets (the exporter may
run where nothing else is reachable), every value escaped (tenant names come from the API), and a
meta refresh so the page can stay open on a wall screen.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from agent import __version__
from agent.metricnames import WINDOWS
from agent.probes import CredentialState, ProbeResult, display_order

if TYPE_CHECKING:
    from agent.runtime import Agent

REFRESH_SECONDS = 15
MAX_OK_ROWS = 500

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1d2430;background:#fafbfc}
h1{font-size:1.4rem}h2{font-size:1.15rem;margin-top:2rem}
table{border-collapse:collapse;width:100%;margin:.5rem 0 1rem;font-size:.9rem}
th,td{border-bottom:1px solid #dde2e8;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#eef1f5}.ok{color:#17663a}.fail{color:#b3261e;font-weight:600}
.business{color:#8a5a00;font-weight:600}.muted{color:#6b7785}
.bar{background:#e4e8ee;width:12rem;height:.8rem;display:inline-block;border-radius:3px}
.fill{background:#2f6fd0;height:100%;border-radius:3px}.fill.high{background:#d08a2f}
.fill.over{background:#b3261e}code{font-size:.85rem}
"""
_BUSINESS_CAUSES = {"trial_account", "partner_assistance_disabled", "not_activated"}


def render_status_page(agent: Agent) -> str:
    now = agent.clock.time()
    sections = [_credential_section(agent, p.state, now) for p in agent.probers]
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta http-equiv='refresh' content='{REFRESH_SECONDS}'>"
        "<title>Sophos Central Exporter: status</title>"
        f"<style>{_STYLE}</style></head><body>"
        "<h1>Sophos Central Exporter: status</h1>"
        f"<p class='muted'>Version {html.escape(__version__)}; refreshes every "
        f"{REFRESH_SECONDS} s. <a href='/metrics'>metrics</a> · <a href='/support'>5XX support "
        "evidence</a></p>" + "".join(sections) + "</body></html>"
    )


def _credential_section(agent: Agent, state: CredentialState, now: float) -> str:
    results = list(state.results.values())
    failing = sorted((r for r in results if not r.success), key=display_order)
    healthy = sorted((r for r in results if r.success), key=display_order)
    whoami = state.whoami
    identity = (
        f"{html.escape(whoami.id_type)} {html.escape(whoami.id)}" if whoami else "whoami pending"
    )
    names = {t.id: t.name for t in state.tenants.values()}
    parts = [
        f"<h2 id='credential-{html.escape(state.name)}'>Credential {html.escape(state.name)}</h2>",
        f"<p>{identity}; {len(state.tenants)} tenants listed, {len(state.probed)} probed; "
        f"effective probe period {agent.period(state.name):.0f} s.</p>",
        _pause_line(agent, state.name),
        _budget_table(agent, state.name),
        f"<h3>Failing probes ({len(failing)})</h3>",
        _probe_table(failing, names, now, "failing") if failing else "<p class='ok'>None.</p>",
        f"<h3>Healthy probes ({len(healthy)})</h3>",
        _probe_table(healthy[:MAX_OK_ROWS], names, now, "healthy"),
    ]
    if len(healthy) > MAX_OK_ROWS:
        parts.append(f"<p class='muted'>… and {len(healthy) - MAX_OK_ROWS} more healthy.</p>")
    return "".join(parts)


def _pause_line(agent: Agent, credential: str) -> str:
    """The credential's 429 pause, if one runs: until when and which window it assumes full.

    With tenant scope, also how many tenants are paused on their own windows.
    """
    now = agent.clock.time()
    parts: list[str] = []
    info = agent.budget.pause_info(credential)
    if info is not None and info.until > now:
        parts.append(
            f"<p class='fail pause' data-window='{html.escape(info.window)}' "
            f"data-reason='{html.escape(info.reason)}'>Rate limited: paused until "
            f"{info.until_text(now)}: "
            f"{html.escape(info.describe())}.</p>"
        )
    if agent.tenant_scope:
        summary = agent.budget.tenant_budgets(credential)
        paused = f"; {summary.paused} paused after a 429" if summary.paused else ""
        parts.append(
            f"<p class='muted tenant-scope'>Rate windows counted per tenant "
            f"(rate_limit_scope: tenant): {summary.tenants} tenant ledgers{paused}; the table "
            "below holds the credential-level calls only.</p>"
        )
    return "".join(parts)


def _budget_table(agent: Agent, credential: str) -> str:
    calls = agent.budget.calls(credential)
    limits, allowance = agent.budget.limits, agent.budget.allowance
    rows = []
    for window in WINDOWS:
        used, limit, allowed = calls.get(window, 0), limits[window], allowance[window]
        ratio = used / limit if limit else 0.0
        kind = "over" if used > allowed else "high" if used >= 0.8 * allowed else ""
        rows.append(
            f"<tr data-window='{window}'><td>{window}</td><td>{used}</td><td>{allowed}</td>"
            f"<td>{limit}</td><td><span class='bar'><span class='fill {kind}' "
            f"style='width:{min(100.0, ratio * 100):.1f}%'></span></span> {ratio:.1%}</td></tr>"
        )
    return (
        "<table class='budget'><tr><th>window</th><th>calls</th><th>agent's allowance</th>"
        "<th>Sophos limit</th><th>utilization of the limit</th></tr>" + "".join(rows) + "</table>"
    )


def _probe_table(results: list[ProbeResult], names: dict[str, str], now: float, kind: str) -> str:
    head = (
        f"<table class='probes {kind}'><tr><th>probe</th><th>tenant</th><th>tenant id</th>"
        "<th>status</th><th>error code</th><th>cause</th><th>what to do</th>"
        "<th>last probe</th></tr>"
    )
    return head + "".join(_row(r, names, now) for r in results) + "</table>"


def _row(result: ProbeResult, names: dict[str, str], now: float) -> str:
    css = "ok" if result.success else "business" if result.cause in _BUSINESS_CAUSES else "fail"
    remedy = "" if result.success else html.escape(result.remedy)
    status = "-" if result.status_code == 0 else str(result.status_code)
    return (
        f"<tr class='probe {css}' data-cause='{html.escape(result.cause)}' "
        f"data-tenant='{html.escape(result.tenant_id)}'>"
        f"<td>{html.escape(result.probe)}</td>"
        f"<td>{html.escape(names.get(result.tenant_id, '')) or '-'}</td>"
        f"<td><code>{html.escape(result.tenant_id) or '-'}</code></td>"
        f"<td>{status}</td><td><code>{html.escape(result.error_code) or '-'}</code></td>"
        f"<td class='{css}'>{html.escape(result.cause)}</td><td>{remedy}</td>"
        f"<td>{_age(now - result.timestamp)} ago</td></tr>"
    )


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
