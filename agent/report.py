"""What the agent knows, arranged as a person reads it: one report for ``/status`` and ``check``.

Both views answer "what is wrong and what do I do" and must agree to the word, so the arranging
happens once, here: a summary first, then per credential its failures grouped by cause (the remedy
once per group), business state apart from failures, healthy probes last. The renderers
(``agent.status_page`` for HTML, ``agent.cli`` for the terminal and JSON) only lay it out.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from agent import __version__
from agent.diagnosis import SKIP_CAUSES
from agent.durations import format_duration
from agent.metricnames import WINDOWS
from agent.probes import CredentialState, ProbeResult, display_order

if TYPE_CHECKING:
    from agent.runtime import Agent

Kind = Literal["failure", "business", "not_run", "ok"]

NO_ANSWER = "no answer"
"""How a probe that got no HTTP response reads everywhere (the metrics say status_code "0")."""

NOT_RUN_NO_TOKEN = "not run: no token"  # noqa: S105 - words, not a secret

BUSINESS_CAUSES = frozenset(
    {"trial_account", "partner_assistance_disabled", "not_activated"},
)
"""Causes that are the customer's or Sophos's business decision, not an outage: counted apart."""

NOT_PROBED = "not probed"

_KIND_ORDER: dict[str, int] = {"not_run": 0, "failure": 1, "business": 2, "ok": 3}
_CODE_SPAN = re.compile(r"`([^`]+)`")


@dataclass(frozen=True)
class Row:
    """One probe's last result, with everything both views print."""

    credential: str
    tenant_id: str
    tenant_name: str
    probe: str
    status: str
    error_code: str
    cause: str
    kind: Kind
    remedy: str
    age_seconds: float

    @property
    def age(self) -> str:
        return format_duration(self.age_seconds, approximate=True)


@dataclass(frozen=True)
class CauseGroup:
    """Every probe of one credential failing for one cause and remedy: the remedy is said once.

    A cause may come with more than one remedy (a 401 on a fresh token, a 403 that one API
    family gets and another does not): each remedy is its own group, so none is hidden.
    """

    cause: str
    kind: Kind
    remedy: str
    rows: list[Row]
    anchor: str


@dataclass(frozen=True)
class WindowUse:
    """One rate window: calls in it, the agent's own allowance and Sophos's limit."""

    window: str
    calls: int
    allowance: int
    limit: int

    @property
    def ratio(self) -> float:
        return self.calls / self.limit if self.limit else 0.0

    @property
    def level(self) -> str:
        """``over`` past the agent's allowance, ``high`` from 80 % of it, else empty."""
        if self.calls > self.allowance:
            return "over"
        return "high" if self.calls >= 0.8 * self.allowance else ""


@dataclass(frozen=True)
class Pause:
    """A 429 pause that is running now: until when, and which window the agent assumes full."""

    until: str
    why: str
    window: str
    reason: str


@dataclass(frozen=True)
class CredentialReport:
    name: str
    identity: str
    tenants_listed: int
    tenants_probed: int
    period_seconds: float
    period_text: str
    token_failed: bool
    token: Row | None
    groups: list[CauseGroup]
    healthy: list[Row]
    windows: list[WindowUse]
    pause: Pause | None = None
    scope_note: str = ""

    def all_rows(self) -> list[Row]:
        """Every probe of the credential: the failing token (shown on its own), groups, healthy."""
        token = [self.token] if self.token_failed and self.token is not None else []
        return token + [r for g in self.groups for r in g.rows] + self.healthy

    @property
    def problems(self) -> int:
        """Failures (token included) that need someone; business state and not-run excluded."""
        return sum(r.kind == "failure" for r in self.all_rows())


@dataclass(frozen=True)
class Example:
    """One probe named in a needs-attention line: tenant name, id and probe."""

    name: str
    tenant_id: str
    probe: str

    def __str__(self) -> str:
        if not self.tenant_id:
            return self.probe
        who = f"{self.name} ({self.tenant_id})" if self.name else self.tenant_id
        return who if self.probe == "tenant" else f"{who} {self.probe}"


@dataclass(frozen=True)
class Attention:
    """One line of "needs attention": a credential's failure group, with a few of its tenants."""

    credential: str
    cause: str
    count: int
    what: str
    examples: list[Example]
    anchor: str


@dataclass(frozen=True)
class Summary:
    credentials: int
    credentials_without_token: int
    tenants: int
    probes: int
    failing: int
    failing_by_cause: dict[str, int]
    business: int
    business_by_cause: dict[str, int]
    not_run: int
    healthy: int


@dataclass(frozen=True)
class Report:
    version: str
    generated_at: float
    summary: Summary
    credentials: list[CredentialReport] = field(default_factory=list)
    attention: list[Attention] = field(default_factory=list)

    def rows(self) -> list[Row]:
        """Every row, in the order the report shows them."""
        return [row for cred in self.credentials for row in cred.all_rows()]

    def to_json(self) -> dict[str, Any]:
        """A plain mapping for ``check --output json``: stable keys, no secrets."""
        data = asdict(self)
        for cred, original in zip(data["credentials"], self.credentials, strict=True):
            for window, use in zip(cred["windows"], original.windows, strict=True):
                window["utilization"] = round(use.ratio, 6)
        return data


def build_report(agent: Agent) -> Report:
    """The report of a running (or just-run) agent."""
    now = agent.clock.time()
    creds = [_credential(agent, prober.state, now) for prober in agent.probers]
    creds.sort(key=lambda c: (not c.token_failed, c.problems == 0, c.name))
    return Report(__version__, now, _summary(creds), creds, _attention(creds))


ATTENTION_EXAMPLES = 3


def _attention(creds: list[CredentialReport]) -> list[Attention]:
    """Failures only (business state and not-run are counted, not listed): token first."""
    lines: list[Attention] = []
    for cred in creds:
        if cred.pause is not None:
            what = f"paused until {cred.pause.until}: {cred.pause.why}"
            lines.append(Attention(cred.name, "rate_limited", 1, what, [], pause_anchor(cred.name)))
        if cred.token_failed and cred.token is not None:
            what = f"token issuance fails ({cred.token.status}); nothing else is run"
            anchor = token_anchor(cred.name)
            lines.append(Attention(cred.name, cred.token.cause, 1, what, [], anchor))
        for group in cred.groups:
            if group.kind != "failure":
                continue
            examples = [
                Example(r.tenant_name, r.tenant_id, r.probe)
                for r in group.rows[:ATTENTION_EXAMPLES]
            ]
            what = f"{len(group.rows)} {'probe' if len(group.rows) == 1 else 'probes'}"
            count = len(group.rows)
            lines.append(Attention(cred.name, group.cause, count, what, examples, group.anchor))
    return lines


def token_anchor(credential: str) -> str:
    return f"{credential}--token"


def pause_anchor(credential: str) -> str:
    return f"{credential}--pause"


def _credential(agent: Agent, state: CredentialState, now: float) -> CredentialReport:
    names = {t.id: t.name for t in state.tenants.values()}
    token = state.result("", "token")
    token_failed = token is not None and not token.success
    rows = [
        _row(r, names, now, token if token_failed else None)
        for r in sorted(state.results.values(), key=display_order)
    ]
    whoami = state.whoami
    return CredentialReport(
        name=state.name,
        identity=f"{whoami.id_type} {whoami.id}" if whoami else "identity not known yet",
        tenants_listed=len(state.tenants),
        tenants_probed=len(state.probed),
        period_seconds=agent.period(state.name),
        period_text=agent.explain_period(state.name),
        token_failed=token_failed,
        token=next((r for r in rows if r.probe == "token"), None),
        groups=_groups(
            state.name,
            [r for r in rows if r.kind != "ok" and not (token_failed and r.probe == "token")],
        ),
        healthy=[r for r in rows if r.kind == "ok"],
        windows=_windows(agent, state.name),
        pause=_pause(agent, state.name, now),
        scope_note=_scope_note(agent, state.name),
    )


def _pause(agent: Agent, credential: str, now: float) -> Pause | None:
    info = agent.budget.pause_info(credential)
    if info is None or info.until <= now:
        return None
    return Pause(info.until_text(now), info.describe(), info.window, info.reason)


def _scope_note(agent: Agent, credential: str) -> str:
    """With per-tenant rate windows, the table shows credential-level calls only: say so."""
    if not agent.tenant_scope:
        return ""
    summary = agent.budget.tenant_budgets(credential)
    paused = f"; {summary.paused} paused after a 429" if summary.paused else ""
    return (
        "Rate windows counted per tenant (rate_limit_scope: tenant): "
        f"{summary.tenants} tenant ledgers{paused}; "
        "the table holds the credential-level calls only."
    )


def _row(result: ProbeResult, names: dict[str, str], now: float, token: ProbeResult | None) -> Row:
    kind = _kind(result, token)
    return Row(
        credential=result.credential,
        tenant_id=result.tenant_id,
        tenant_name=names.get(result.tenant_id, ""),
        probe=result.probe,
        status=NOT_RUN_NO_TOKEN
        if kind == "not_run"
        else status_text(result.status_code, result.error_code),
        error_code=result.error_code,
        cause=result.cause,
        kind=kind,
        remedy="" if kind == "ok" else result.remedy,
        age_seconds=max(0.0, now - result.timestamp),
    )


def _kind(result: ProbeResult, token: ProbeResult | None) -> Kind:
    """A probe that failed only because no token could be had was not really run."""
    if result.success:
        return "ok"
    if token is not None and result.probe != "token" and _same_failure(result, token):
        return "not_run"
    return "business" if result.cause in BUSINESS_CAUSES else "failure"


def _same_failure(result: ProbeResult, token: ProbeResult) -> bool:
    return (result.status_code, result.error_code, result.cause) == (
        token.status_code,
        token.error_code,
        token.cause,
    )


def _groups(credential: str, rows: list[Row]) -> list[CauseGroup]:
    """Rows grouped by (kind, cause, remedy): the token first, then by kind, then the biggest."""
    grouped: dict[tuple[Kind, str, str], list[Row]] = {}
    for row in rows:
        grouped.setdefault((row.kind, row.cause, row.remedy), []).append(row)
    ordered = sorted(
        grouped.items(),
        key=lambda item: (
            not any(r.probe == "token" for r in item[1]),
            _KIND_ORDER[item[0][0]],
            -len(item[1]),
            item[0][1],
        ),
    )
    groups: list[CauseGroup] = []
    anchors: Counter[str] = Counter()
    for (kind, cause, _), members in ordered:
        anchors[cause] += 1
        anchor = f"{credential}--{cause}" + (f"-{anchors[cause]}" if anchors[cause] > 1 else "")
        groups.append(CauseGroup(cause, kind, _group_remedy(kind, members), members, anchor))
    return groups


def _group_remedy(kind: Kind, rows: list[Row]) -> str:
    if kind == "not_run":
        return "Nothing was sent: fix the token first (see the token probe above)."
    return rows[0].remedy


def _windows(agent: Agent, credential: str) -> list[WindowUse]:
    calls = agent.budget.calls(credential)
    return [
        WindowUse(
            window,
            calls.get(window, 0),
            agent.budget.allowance[window],
            agent.budget.limits[window],
        )
        for window in WINDOWS
    ]


def _summary(creds: list[CredentialReport]) -> Summary:
    kinds: dict[str, Counter[str]] = {kind: Counter() for kind in _KIND_ORDER}
    for cred in creds:
        for row in cred.all_rows():
            kinds[row.kind][row.cause] += 1
    failing, business = kinds["failure"], kinds["business"]
    return Summary(
        credentials=len(creds),
        credentials_without_token=sum(c.token_failed for c in creds),
        tenants=sum(c.tenants_listed for c in creds),
        probes=sum(sum(counter.values()) for counter in kinds.values()),
        failing=sum(failing.values()),
        failing_by_cause=dict(failing.most_common()),
        business=sum(business.values()),
        business_by_cause=dict(business.most_common()),
        not_run=sum(kinds["not_run"].values()),
        healthy=sum(kinds["ok"].values()),
    )


def status_text(status_code: int, error_code: str = "") -> str:
    """The HTTP status as people read it: "no answer" rather than "0", "not probed" when the
    agent sent nothing on purpose."""
    if status_code != 0:
        return str(status_code)
    return NOT_PROBED if error_code in SKIP_CAUSES else NO_ANSWER


def plain_remedy(text: str) -> str:
    """A remedy for the terminal: the Markdown code spans' backticks removed."""
    return _CODE_SPAN.sub(r"\1", text)


def remedy_parts(text: str) -> list[tuple[str, bool]]:
    """A remedy split into (text, is_code) parts, so HTML shows code spans as code."""
    parts: list[tuple[str, bool]] = []
    pos = 0
    for match in _CODE_SPAN.finditer(text):
        if match.start() > pos:
            parts.append((text[pos : match.start()], False))
        parts.append((match.group(1), True))
        pos = match.end()
    if pos < len(text):
        parts.append((text[pos:], False))
    return parts
