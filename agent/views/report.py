"""What the agent knows, arranged as a person reads it: one report for ``/status`` and ``check``.

Both views answer "what is wrong and what do I do" and must agree to the word, so the arranging
happens once, here, from one ``Snapshot``: a summary first, then per credential its failures
grouped by cause (the remedy once per group), business state apart from failures, healthy probes
last. Every row's kind is its cause's kind (``agent.causes``); a probe that failed only because
its credential has no token is shown apart as "not run". The renderers (``agent.views.status``
for HTML, ``agent.views.check`` for the terminal and JSON) only lay it out.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from agent import __version__
from agent import expiry as credential_expiry
from agent.causes import INVALID_TENANT_ID, RATE_LIMITED, Kind, lookup
from agent.durations import format_duration
from agent.metricnames import WINDOWS
from agent.probes import ProbeResult, display_order
from agent.snapshot import CredentialSnapshot, Snapshot
from agent.sophos import PAGE_CAP_REMEDY

Section = Literal["not_run", "failure", "business", "ok"]
"""Where a row is shown: its kind, or "not_run" for a probe its credential's token held up."""

NO_ANSWER = "no answer"
"""How a probe that got no HTTP response reads everywhere (the metrics say status_code "0")."""

NOT_RUN_NO_TOKEN = "not run: no token"  # noqa: S105 - words, not a secret

_SECTION_ORDER: dict[str, int] = {"not_run": 0, "failure": 1, "business": 2, "ok": 3}
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
    last_run: float
    not_run: bool = False
    """The probe failed only because its credential has no token: nothing of it was sent."""

    @property
    def age(self) -> str:
        return format_duration(self.age_seconds, approximate=True)

    @property
    def section(self) -> Section:
        return "not_run" if self.not_run else self.kind

    def to_json(self) -> dict[str, Any]:
        """The row as ``check --output json`` lists it under ``probes``."""
        return {
            "credential": self.credential,
            "tenant_id": self.tenant_id,
            "tenant_name": self.tenant_name,
            "probe": self.probe,
            "status": self.status,
            "error_code": self.error_code,
            "cause": self.cause,
            "kind": self.kind,
            "remedy": self.remedy,
            "last_run": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.last_run)),
        }


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
    not_run: bool = False

    @property
    def section(self) -> Section:
        return "not_run" if self.not_run else self.kind


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
class Expiry:
    """The credential's configured expiry: how close, in words, and what to do about it."""

    at: float
    text: str
    """``expires in 12 days (2027-03-01)``, ``expired 3 days ago (2027-03-01)``."""
    level: credential_expiry.Level
    remedy: str

    @property
    def needs_attention(self) -> bool:
        return self.level != "ok"


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
    not_probed: dict[str, int] = field(default_factory=dict)
    """Listed tenants that are not probed, by cause (those without a row included)."""
    expiry: Expiry | None = None
    """The credential's ``expires_at``, when configured."""
    collection_note: str = ""
    """Why the SIEM collection alert cannot warn in time, and what would let it (or empty)."""
    unread_pages: int = 0
    """Tenant-list pages past the page cap, not read: their tenants are not probed."""

    @property
    def unread_pages_text(self) -> str:
        """``tenant list cut at the page cap: 5 pages not read, their tenants not probed``
        (empty when the whole list was read)."""
        if not self.unread_pages:
            return ""
        pages = f"{self.unread_pages} {'page' if self.unread_pages == 1 else 'pages'}"
        return f"tenant list cut at the page cap: {pages} not read, their tenants not probed"

    def all_rows(self) -> list[Row]:
        """Every probe of the credential: the failing token (shown on its own), groups, healthy."""
        token = [self.token] if self.token_failed and self.token is not None else []
        return token + [r for g in self.groups for r in g.rows] + self.healthy

    @property
    def problems(self) -> int:
        """Failures (token included) that need someone; business state and not-run excluded."""
        rows = sum(r.section == "failure" for r in self.all_rows())
        return rows + self.not_probed.get(INVALID_TENANT_ID.name, 0)

    @property
    def not_probed_text(self) -> str:
        """``3 not_activated, 12 invalid_tenant_id``: every reason a listed tenant is not probed."""
        return ", ".join(f"{n} {cause}" for cause, n in self.not_probed.items() if n)


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


AttentionLevel = Literal["warning", "failure"]


@dataclass(frozen=True)
class Attention:
    """One line of "needs attention": a credential's failure group, with a few of its tenants,
    or something about the credential itself (``topic`` instead of a cause: its expiry, a probe
    period too long for the SIEM collection alert), at ``level`` warning or failure."""

    credential: str
    cause: str
    count: int
    what: str
    examples: list[Example]
    anchor: str
    topic: str = ""
    level: AttentionLevel = "failure"

    @property
    def title(self) -> str:
        return self.cause or self.topic


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
    not_probed_by_cause: dict[str, int] = field(default_factory=dict)
    """Listed tenants the agent does not probe, by cause, over every credential."""


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
        """A plain mapping for ``check --output json``: stable keys, no secrets. ``probes`` is
        every probe flat, one object each, for scripts (``jq '.probes[] | select(.kind ==
        "failure")'``); ``credentials`` holds the same rows grouped as the table shows them."""
        data = asdict(self)
        for cred, original in zip(data["credentials"], self.credentials, strict=True):
            for window, use in zip(cred["windows"], original.windows, strict=True):
                window["utilization"] = round(use.ratio, 6)
        data["probes"] = [row.to_json() for row in self.rows()]
        return data


def build_report(snapshot: Snapshot) -> Report:
    """The report of a running (or just-run) agent, from one snapshot of it."""
    now = snapshot.taken_at
    creds = [_credential(snapshot, cred, now) for cred in snapshot.credentials]
    creds.sort(key=lambda c: (not c.token_failed, c.problems == 0, c.name))
    return Report(__version__, now, _summary(creds), creds, _attention(creds))


ATTENTION_EXAMPLES = 3


def _attention(creds: list[CredentialReport]) -> list[Attention]:
    """Failures only (business state and not-run are counted, not listed): token first."""
    lines: list[Attention] = []
    for cred in creds:
        if cred.pause is not None:
            what = f"paused until {cred.pause.until}: {cred.pause.why}"
            anchor = pause_anchor(cred.name)
            lines.append(Attention(cred.name, RATE_LIMITED.name, 1, what, [], anchor))
        if cred.token_failed and cred.token is not None:
            what = f"token issuance fails ({cred.token.status}); nothing else is run"
            anchor = token_anchor(cred.name)
            lines.append(Attention(cred.name, cred.token.cause, 1, what, [], anchor))
        refused = cred.not_probed.get(INVALID_TENANT_ID.name, 0)
        if refused:
            what = f"{refused} listed {'tenant' if refused == 1 else 'tenants'}, not probed"
            anchor = not_probed_anchor(cred.name)
            lines.append(Attention(cred.name, INVALID_TENANT_ID.name, refused, what, [], anchor))
        for group in cred.groups:
            if group.section != "failure":
                continue
            examples = [
                Example(r.tenant_name, r.tenant_id, r.probe)
                for r in group.rows[:ATTENTION_EXAMPLES]
            ]
            what = f"{len(group.rows)} {'probe' if len(group.rows) == 1 else 'probes'}"
            count = len(group.rows)
            lines.append(Attention(cred.name, group.cause, count, what, examples, group.anchor))
        lines.extend(_credential_attention(cred))
    return lines


EXPIRY_TOPIC = "credential expiry"
COLLECTION_TOPIC = "SIEM collection alert"
PAGE_CAP_TOPIC = "tenant list page cap"


def _credential_attention(cred: CredentialReport) -> list[Attention]:
    """What needs someone about the credential itself: an expiry within ``WARNING_DAYS``
    (a failure within ``CRITICAL_DAYS`` or past), a period too long for the SIEM alert."""
    lines: list[Attention] = []
    expiry = cred.expiry
    if expiry is not None and expiry.needs_attention:
        level: AttentionLevel = "warning" if expiry.level == "warning" else "failure"
        what = f"the credential {expiry.text}: {expiry.remedy}"
        anchor = expiry_anchor(cred.name)
        lines.append(Attention(cred.name, "", 1, what, [], anchor, EXPIRY_TOPIC, level))
    if cred.unread_pages:
        what = f"{cred.unread_pages_text}: {PAGE_CAP_REMEDY}"
        anchor = not_probed_anchor(cred.name)
        lines.append(Attention(cred.name, "", cred.unread_pages, what, [], anchor, PAGE_CAP_TOPIC))
    if cred.collection_note:
        anchor = collection_anchor(cred.name)
        lines.append(
            Attention(
                cred.name, "", 1, cred.collection_note, [], anchor, COLLECTION_TOPIC, "warning"
            )
        )
    return lines


def token_anchor(credential: str) -> str:
    return f"{credential}--token"


def pause_anchor(credential: str) -> str:
    return f"{credential}--pause"


def not_probed_anchor(credential: str) -> str:
    return f"{credential}--not-probed"


def expiry_anchor(credential: str) -> str:
    return f"{credential}--expiry"


def collection_anchor(credential: str) -> str:
    return f"{credential}--collection"


def _credential(snapshot: Snapshot, cred: CredentialSnapshot, now: float) -> CredentialReport:
    names = {t.id: t.name for t in cred.tenants.values()}
    token = cred.results.get(("", "token"))
    token_failed = token is not None and not token.success
    rows = [
        _row(r, names, now, token if token_failed else None)
        for r in sorted(cred.results.values(), key=display_order)
    ]
    whoami = cred.whoami
    return CredentialReport(
        name=cred.name,
        identity=f"{whoami.id_type} {whoami.id}" if whoami else "identity not known yet",
        tenants_listed=cred.tenants_listed,
        tenants_probed=cred.probed,
        period_seconds=cred.period,
        period_text=cred.period_text,
        token_failed=token_failed,
        token=next((r for r in rows if r.probe == "token"), None),
        groups=_groups(
            cred.name,
            [r for r in rows if r.section != "ok" and not (token_failed and r.probe == "token")],
        ),
        healthy=[r for r in rows if r.section == "ok"],
        windows=_windows(snapshot, cred),
        pause=_pause(cred, now),
        scope_note=_scope_note(cred),
        not_probed={cause: n for cause, n in cred.not_probed.items() if n},
        expiry=_expiry(cred, now),
        collection_note=cred.collection_note,
        unread_pages=cred.tenant_list_unread_pages,
    )


def _expiry(cred: CredentialSnapshot, now: float) -> Expiry | None:
    at = cred.expires_at
    if at is None:
        return None
    return Expiry(
        at,
        credential_expiry.describe(at, now),
        credential_expiry.level(at, now),
        credential_expiry.remedy(at, now),
    )


def _pause(cred: CredentialSnapshot, now: float) -> Pause | None:
    info = cred.pause
    if info is None or info.until <= now:
        return None
    return Pause(info.until_text(now), info.describe(), info.window, info.reason)


def _scope_note(cred: CredentialSnapshot) -> str:
    """With per-tenant rate windows, the table shows credential-level calls only: say so."""
    summary = cred.tenant_budgets
    if summary is None:
        return ""
    paused = f"; {summary.paused} paused after a 429" if summary.paused else ""
    return (
        "Rate windows counted per tenant (rate_limit_scope: tenant): "
        f"{summary.tenants} tenant ledgers{paused}; "
        "the table holds the credential-level calls only."
    )


def _row(result: ProbeResult, names: dict[str, str], now: float, token: ProbeResult | None) -> Row:
    kind = lookup(result.cause).kind
    not_run = _not_run(result, token)
    return Row(
        credential=result.credential,
        tenant_id=result.tenant_id,
        tenant_name=names.get(result.tenant_id, ""),
        probe=result.probe,
        status=NOT_RUN_NO_TOKEN if not_run else status_text(result.status_code, result.error_code),
        error_code=result.error_code,
        cause=result.cause,
        kind=kind,
        remedy="" if kind == "ok" else result.remedy,
        age_seconds=max(0.0, now - result.timestamp),
        last_run=result.timestamp,
        not_run=not_run,
    )


def _not_run(result: ProbeResult, token: ProbeResult | None) -> bool:
    """A probe that failed only because no token could be had was not really run."""
    if result.success or token is None or result.probe == "token":
        return False
    return (result.status_code, result.error_code, result.cause) == (
        token.status_code,
        token.error_code,
        token.cause,
    )


def _groups(credential: str, rows: list[Row]) -> list[CauseGroup]:
    """Rows grouped by (section, cause, remedy): the token first, then by section, then the
    biggest."""
    grouped: dict[tuple[Section, str, str], list[Row]] = {}
    for row in rows:
        grouped.setdefault((row.section, row.cause, row.remedy), []).append(row)
    ordered = sorted(
        grouped.items(),
        key=lambda item: (
            not any(r.probe == "token" for r in item[1]),
            _SECTION_ORDER[item[0][0]],
            -len(item[1]),
            item[0][1],
        ),
    )
    groups: list[CauseGroup] = []
    anchors: Counter[str] = Counter()
    for (section, cause, _), members in ordered:
        anchors[cause] += 1
        anchor = f"{credential}--{cause}" + (f"-{anchors[cause]}" if anchors[cause] > 1 else "")
        not_run = section == "not_run"
        remedy = _group_remedy(not_run, members)
        groups.append(CauseGroup(cause, members[0].kind, remedy, members, anchor, not_run))
    return groups


def _group_remedy(not_run: bool, rows: list[Row]) -> str:
    if not_run:
        return "Nothing was sent: fix the token first (see the token probe above)."
    return rows[0].remedy


def _windows(snapshot: Snapshot, cred: CredentialSnapshot) -> list[WindowUse]:
    """The exact calls of each trailing window: the numbers ``/metrics`` exports."""
    return [
        WindowUse(
            window,
            cred.window_calls.get(window, 0),
            snapshot.allowance[window],
            snapshot.limits[window],
        )
        for window in WINDOWS
    ]


def _summary(creds: list[CredentialReport]) -> Summary:
    sections: dict[str, Counter[str]] = {section: Counter() for section in _SECTION_ORDER}
    not_probed: Counter[str] = Counter()
    for cred in creds:
        for row in cred.all_rows():
            sections[row.section][row.cause] += 1
        not_probed.update(cred.not_probed)
    failing, business = sections["failure"], sections["business"]
    return Summary(
        credentials=len(creds),
        credentials_without_token=sum(c.token_failed for c in creds),
        tenants=sum(c.tenants_listed for c in creds),
        probes=sum(sum(counter.values()) for counter in sections.values()),
        failing=sum(failing.values()),
        failing_by_cause=dict(failing.most_common()),
        business=sum(business.values()),
        business_by_cause=dict(business.most_common()),
        not_run=sum(sections["not_run"].values()),
        healthy=sum(sections["ok"].values()),
        not_probed_by_cause=dict(not_probed.most_common()),
    )


def status_text(status_code: int, error_code: str = "") -> str:
    """The HTTP status as people read it: "no answer" rather than "0", "not probed" when the
    agent sent nothing on purpose (a cause whose ``sent`` is False)."""
    if status_code != 0:
        return str(status_code)
    words = lookup(error_code).status_words if error_code else None
    return words or NO_ANSWER


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
