"""Support evidence for 5XX answers, the way Sophos support asks for it.

Sophos's troubleshooting guide says: for persistent, repeatable 5XX errors, open a case with the
subject "New API 5xx error", the request (JSON or curl), the full response, and how often it fails.
By the time someone opens that case the failure may have stopped, or the agent may have restarted,
so the evidence is collected as it happens (from the first 5XX of a probe on) and kept in the state
file. A probe is *persistent* after 3 consecutive 5XX. Secrets never enter the evidence: the token,
client id and client secret are redacted before anything is written. Sophos's own error ``code``
and ``docUrl``, when the body has them, are kept with the ids. A whoami 504 from a data-region
``api_url`` is a configuration mistake (``wrong_api_host``), so it collects nothing.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.client import CallRecord
from agent.diagnosis import is_wrong_api_host
from agent.logs import REDACTOR
from agent.statefile import StateFile, StateFileError

if TYPE_CHECKING:
    from agent.config import Settings
    from agent.runtime import Agent

log = logging.getLogger(__name__)

SUBJECT = "New API 5xx error"
PERSISTENT_AFTER = 3
MAX_BODY_CHARS = 16384
_HIDDEN_RESPONSE_HEADERS = {"set-cookie", "authorization", "proxy-authorization"}
_TOKEN_FORM = (
    "grant_type=client_credentials",
    "client_id=<redacted>",
    "client_secret=<redacted>",
    "scope=token",
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS evidence_5xx (
    owner TEXT NOT NULL,
    credential TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    probe TEXT NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    failures INTEGER NOT NULL,
    calls INTEGER NOT NULL,
    consecutive INTEGER NOT NULL,
    persistent INTEGER NOT NULL,
    last_ok REAL,
    request TEXT NOT NULL,
    status INTEGER NOT NULL,
    response_headers TEXT NOT NULL,
    response_body TEXT NOT NULL,
    ids TEXT NOT NULL,
    PRIMARY KEY (owner, credential, tenant_id, probe)
);
CREATE TABLE IF NOT EXISTS evidence_tenant_names (
    owner TEXT NOT NULL,
    credential TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    name TEXT NOT NULL,
    PRIMARY KEY (owner, credential, tenant_id)
);
"""
_COLUMNS = (
    "owner, credential, tenant_id, probe, first_seen, last_seen, failures, calls, consecutive, "
    "persistent, last_ok, request, status, response_headers, response_body, ids"
)

_KEY = "owner = ? AND credential = ? AND tenant_id = ? AND probe = ?"
_UPSERT_FAILURE = (
    f"INSERT INTO evidence_5xx ({_COLUMNS}) VALUES ({', '.join('?' * 16)}) "  # noqa: S608 - constants
    "ON CONFLICT (owner, credential, tenant_id, probe) DO UPDATE SET "
    "last_seen = excluded.last_seen, failures = failures + 1, calls = calls + 1, "
    "consecutive = consecutive + 1, "
    f"persistent = MAX(persistent, consecutive + 1 >= {PERSISTENT_AFTER}), "
    "request = excluded.request, status = excluded.status, "
    "response_headers = excluded.response_headers, "
    "response_body = excluded.response_body, ids = excluded.ids"
)
_UPDATE_ANSWERED = (
    f"UPDATE evidence_5xx SET calls = calls + 1, consecutive = 0, last_ok = ? WHERE {_KEY}"  # noqa: S608
)
_UPDATE_UNANSWERED = f"UPDATE evidence_5xx SET calls = calls + 1 WHERE {_KEY}"  # noqa: S608
_SELECT_ALL = (
    f"SELECT {', '.join('e.' + c.strip() for c in _COLUMNS.split(','))}, COALESCE(n.name, '') "  # noqa: S608
    "FROM evidence_5xx e LEFT JOIN evidence_tenant_names n "
    "ON n.owner = e.owner AND n.credential = e.credential AND n.tenant_id = e.tenant_id "
    "ORDER BY e.persistent DESC, e.last_seen DESC"
)
_UPSERT_NAME = (
    "INSERT INTO evidence_tenant_names (owner, credential, tenant_id, name) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (owner, credential, tenant_id) DO UPDATE SET name = excluded.name"
)


@dataclass(frozen=True)
class Evidence:
    """Everything known about the 5XX answers of one probe (credential, tenant, probe)."""

    owner: str
    credential: str
    tenant_id: str
    probe: str
    first_seen: float
    last_seen: float
    failures: int
    calls: int
    consecutive: int
    persistent: bool
    last_ok: float | None
    request: str
    status: int
    response_headers: dict[str, str]
    response_body: str
    ids: dict[str, str]
    tenant_name: str = ""

    @property
    def share(self) -> float:
        """Failed share of this probe's calls since the first 5XX."""
        return self.failures / self.calls if self.calls else 0.0

    @property
    def state(self) -> str:
        """Where the probe stands now, in words that agree with the counts printed beside them."""
        in_a_row = f"{self.consecutive} 5XX in a row; persistent from {PERSISTENT_AFTER}"
        if self.consecutive and self.persistent:
            return f"failing now, persistent ({in_a_row})"
        if self.consecutive:
            return f"failing now, not yet persistent ({in_a_row})"
        if self.persistent:
            return f"recovered since; it was persistent ({PERSISTENT_AFTER} or more 5XX in a row)"
        return "intermittent: recovered after each 5XX"


TenantNames = Callable[[str, str], str]
"""(credential, tenant id) -> the tenant's name as listed, or ""."""


class EvidenceRecorder:
    """A ``CallObserver`` that keeps 5XX evidence in the state file.

    The tenant's name is kept beside the evidence, so that ``support-bundle`` (which reads the
    state file while no agent runs) names tenants as ``/support`` does.
    """

    def __init__(self, store: StateFile, owner: str = "", names: TenantNames | None = None) -> None:
        self._store = store
        self._owner = owner
        self._names = names
        store.ensure_schema(_SCHEMA)
        self._tracked = self._load_keys()

    def _load_keys(self) -> set[tuple[str, str, str]]:
        try:
            rows = self._store.execute(
                "SELECT credential, tenant_id, probe FROM evidence_5xx WHERE owner = ?",
                (self._owner,),
            )
        except StateFileError:
            return set()
        return {(str(r[0]), str(r[1]), str(r[2])) for r in rows}

    def observe_call(self, record: CallRecord) -> None:
        key = (record.credential, record.tenant_id, record.probe)
        status = record.outcome.status_code
        if is_wrong_api_host(record.probe, status, record.url):
            return  # a configuration mistake, not a Sophos failure: nothing to send support
        try:
            if 500 <= status <= 599:
                self._record_failure(key, record)
            elif key in self._tracked:
                self._record_other(key, record)
        except StateFileError:
            pass  # already logged by the state file; evidence is best effort, probing goes on

    def _record_failure(self, key: tuple[str, str, str], record: CallRecord) -> None:
        now = record.started_at
        # A server may echo what it was sent: every part of the answer passes the redactor.
        headers = {
            k: REDACTOR(v)
            for k, v in record.response_headers.items()
            if k.lower() not in _HIDDEN_RESPONSE_HEADERS
        }
        ids = {k: REDACTOR(v) for k, v in record.outcome.ids.items()}
        body = record.raw_body.decode("utf-8", errors="replace")[:MAX_BODY_CHARS]
        values = (
            self._owner,
            *key,
            now,
            now,
            1,
            1,
            1,
            0,
            None,
            REDACTOR(curl_command(record)),
            record.outcome.status_code,
            json.dumps(headers),
            REDACTOR(body),
            json.dumps(ids),
        )
        self._store.execute(_UPSERT_FAILURE, values)
        name = self._names(key[0], key[1]) if self._names is not None and key[1] else ""
        if name:
            self._store.execute(_UPSERT_NAME, (self._owner, key[0], key[1], name))
        if key not in self._tracked:
            self._tracked.add(key)
            log.warning(
                "first 5XX of this probe: collecting support evidence",
                extra={
                    "credential": key[0],
                    "tenant_id": key[1],
                    "probe": key[2],
                    "status_code": record.outcome.status_code,
                    **record.outcome.ids,
                },
            )

    def _record_other(self, key: tuple[str, str, str], record: CallRecord) -> None:
        """Any other answer (or none) still counts towards 'how often it fails'; a real answer
        below 500 ends the streak of consecutive 5XX."""
        if record.outcome.answered:
            self._store.execute(_UPDATE_ANSWERED, (record.started_at, self._owner, *key))
        else:
            self._store.execute(_UPDATE_UNANSWERED, (self._owner, *key))


def curl_command(record: CallRecord) -> str:
    """The request as a curl command a support engineer can run, with every secret redacted."""
    parts = ["curl", "-sS", "-X", record.method, shlex.quote(record.url)]
    for name, value in record.request_headers.items():
        shown = "Bearer <redacted>" if name.lower() == "authorization" else value
        parts += ["-H", shlex.quote(f"{name}: {shown}")]
    if record.probe == "token":
        for field in _TOKEN_FORM:
            parts += ["--data-urlencode", shlex.quote(field)]
    return " ".join(parts)


def load_evidence(store: StateFile) -> list[Evidence]:
    """All evidence in the state file (every owner, so shards sharing a file report together)."""
    store.ensure_schema(_SCHEMA)
    rows = store.execute(_SELECT_ALL)
    return [_evidence(row) for row in rows]


def _evidence(row: tuple[Any, ...]) -> Evidence:
    return Evidence(
        owner=str(row[0]),
        credential=str(row[1]),
        tenant_id=str(row[2]),
        probe=str(row[3]),
        first_seen=float(row[4]),
        last_seen=float(row[5]),
        failures=int(row[6]),
        calls=int(row[7]),
        consecutive=int(row[8]),
        persistent=bool(row[9]),
        last_ok=None if row[10] is None else float(row[10]),
        request=str(row[11]),
        status=int(row[12]),
        response_headers=json.loads(row[13]),
        response_body=str(row[14]),
        ids=json.loads(row[15]),
        tenant_name=str(row[16]),
    )


def render_markdown(items: list[Evidence], tenant_names: dict[str, str] | None = None) -> str:
    names = tenant_names or {}
    lines = [f"# Subject: {SUBJECT}", ""]
    if not items:
        lines += ["No 5XX answers recorded yet: there is no evidence to send.", ""]
        return "\n".join(lines)
    persistent = sum(1 for e in items if e.persistent)
    lines += [
        "Evidence collected by sophos-central-exporter for a Sophos Central Support case, as the",
        "Sophos troubleshooting guide asks for it: the request, the full response, and how often",
        f"the failure occurs. {len(items)} probe(s) got 5XX answers; {persistent} of them are",
        f"persistent ({PERSISTENT_AFTER} or more consecutive 5XX). Secrets are redacted.",
        "",
    ]
    for item in items:
        lines += _markdown_item(item, names.get(item.tenant_id) or item.tenant_name)
    return "\n".join(lines)


def _markdown_item(item: Evidence, tenant_name: str) -> list[str]:
    tenant = f"{tenant_name} ({item.tenant_id})" if item.tenant_id else "-"
    headers = "\n".join(f"{k}: {v}" for k, v in item.response_headers.items())
    ids = _joined(item.ids, _TRACKING_IDS) or "none in the response"
    sophos_code = _joined(item.ids, _ERROR_DETAILS)
    request_fence = _fence(item.request)
    response_fence = _fence(headers + item.response_body)
    return [
        f"## {item.credential} / {item.probe} / {tenant}",
        "",
        f"- Status: **{item.state}**; last 5XX answer HTTP {item.status}",
        f"- First seen: {_iso(item.first_seen)}; last seen: {_iso(item.last_seen)}",
        f"- How often: {item.failures} of {item.calls} calls since first seen ({item.share:.0%})",
        f"- Last success after a 5XX: {_iso(item.last_ok) if item.last_ok else 'none'}",
        f"- Correlation / request ids: {ids}",
        *([f"- Sophos error code and documentation: {sophos_code}"] if sophos_code else []),
        "",
        "Request:",
        "",
        f"{request_fence}sh",
        item.request,
        request_fence,
        "",
        "Response:",
        "",
        f"{response_fence}http",
        f"HTTP {item.status}",
        headers,
        "",
        item.response_body or "(empty body)",
        response_fence,
        "",
    ]


_TRACKING_IDS = ("trackingId", "correlationId", "requestId")
_ERROR_DETAILS = ("code", "docUrl")


def _joined(ids: dict[str, str], keys: tuple[str, ...]) -> str:
    return ", ".join(f"{k}={ids[k]}" for k in keys if k in ids)


def _fence(text: str) -> str:
    """A code fence longer than any backtick run in ``text``: a response body that contains
    ```` ``` ```` must not end the block early and inject Markdown into the support case."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def render_json(items: list[Evidence]) -> str:
    data = {
        "subject": SUBJECT,
        "evidence": [{**asdict(e), "share": round(e.share, 4)} for e in items],
    }
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def _iso(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def render_support_page(agent: Agent) -> str:
    """``/support``: the same Markdown as ``support-bundle``."""
    names = {t.id: t.name for p in agent.probers for t in p.state.tenants.values()}
    try:
        items = load_evidence(agent.state_file)
    except StateFileError:
        items = []
    return render_markdown(items, names)


def write_support_bundle(settings: Settings, out: str | None, fmt: str) -> int:
    """``support-bundle``: 0 written, 1 no evidence yet (nothing written)."""
    path = Path(settings.state_file)
    if not path.exists():
        print(f"no evidence yet: state file {path} does not exist", file=sys.stderr)
        return 1
    store = StateFile(path)
    try:
        items = load_evidence(store)
    finally:
        store.close()
    if not items:
        print(f"no evidence yet: no 5XX answers recorded in {path}", file=sys.stderr)
        return 1
    text = render_json(items) if fmt == "json" else render_markdown(items)
    if out is None:
        sys.stdout.write(text)
    else:
        Path(out).write_text(text, encoding="utf-8")
        print(f"wrote {len(items)} evidence item(s) to {out}", file=sys.stderr)
    return 0
