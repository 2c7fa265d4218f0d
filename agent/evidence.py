"""Support evidence for 5XX answers, the way Sophos support asks for it.

Sophos's troubleshooting guide says: for persistent, repeatable 5XX errors, open a case with the
subject "New API 5xx error", the request (JSON or curl), the full response, and how often it fails.
By the time someone opens that case the failure may have stopped, or the agent may have restarted,
so the evidence is collected as it happens (from the first 5XX of a probe on) and kept in the state
file. Which answers collect evidence is the cause table's word (``Cause.evidence``): a whoami 504
from a data-region ``api_url`` is a configuration mistake (``wrong_api_host``) and collects
nothing. A probe is *persistent* after ``CONFIRMED_AFTER`` consecutive 5XX. Secrets never enter
the evidence: the token, client id and client secret are redacted before anything is written.
Sophos's own error ``code`` and ``docUrl``, when the body has them, are kept with the ids.

Evidence outlives what it is about: a tenant that left the tenant list (the running agent notes
when), a credential removed from the config, a probe no longer configured. Such evidence is
*history*: it stays (a case may still be worth opening) and says so, never "failing now".
The views that show it live in ``agent/views/support.py``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shlex
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.causes import CONFIRMED_AFTER, lookup
from agent.client import CallRecord
from agent.diagnosis import Context, cause_of
from agent.logs import REDACTOR
from agent.statefile import StateFile, StateFileError

log = logging.getLogger(__name__)

PERSISTENT_AFTER = CONFIRMED_AFTER
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
CREATE TABLE IF NOT EXISTS evidence_departed (
    owner TEXT NOT NULL,
    credential TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    since REAL NOT NULL,
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
    f"SELECT {', '.join('e.' + c.strip() for c in _COLUMNS.split(','))}, COALESCE(n.name, ''), "  # noqa: S608
    "d.since FROM evidence_5xx e LEFT JOIN evidence_tenant_names n "
    "ON n.owner = e.owner AND n.credential = e.credential AND n.tenant_id = e.tenant_id "
    "LEFT JOIN evidence_departed d "
    "ON d.owner = e.owner AND d.credential = e.credential AND d.tenant_id = e.tenant_id "
    "ORDER BY e.persistent DESC, e.last_seen DESC"
)
_DEPARTED = "INSERT OR IGNORE INTO evidence_departed VALUES (?, ?, ?, ?)"
_RETURNED = "DELETE FROM evidence_departed WHERE owner = ? AND credential = ? AND tenant_id = ?"

TENANT_LEFT = "the tenant left the tenant list"
CREDENTIAL_REMOVED = "the credential is no longer in the config"
PROBE_REMOVED = "the probe is no longer in tenant_probes"
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
    history: str = ""
    """Why this evidence is about something that is gone ('' while it is current)."""
    history_since: float | None = None
    """When the agent saw it go, when it knows (a tenant leaving the list)."""

    @property
    def share(self) -> float:
        """Failed share of this probe's calls since the first 5XX."""
        return self.failures / self.calls if self.calls else 0.0

    @property
    def current(self) -> bool:
        return not self.history

    @property
    def state(self) -> str:
        """Where the probe stands, in words that agree with the counts printed beside them;
        for history, where it stood when it was last probed (never "now")."""
        in_a_row = f"{self.consecutive} 5XX in a row; persistent from {PERSISTENT_AFTER}"
        if self.history:
            return f"history ({self.history}): when last probed it was {self._past(in_a_row)}"
        if self.consecutive and self.persistent:
            return f"failing now, persistent ({in_a_row})"
        if self.consecutive:
            return f"failing now, not yet persistent ({in_a_row})"
        if self.persistent:
            return f"recovered since; it was persistent ({PERSISTENT_AFTER} or more 5XX in a row)"
        return "intermittent: recovered after each 5XX"

    def _past(self, in_a_row: str) -> str:
        if self.consecutive and self.persistent:
            return f"failing, persistent ({in_a_row})"
        if self.consecutive:
            return f"failing, not yet persistent ({in_a_row})"
        if self.persistent:
            return f"recovered, after being persistent ({PERSISTENT_AFTER} or more 5XX in a row)"
        return "recovered after each 5XX"


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
        self._departed = self._load_departed()

    def _load_departed(self) -> set[tuple[str, str]]:
        try:
            rows = self._store.execute(
                "SELECT credential, tenant_id FROM evidence_departed WHERE owner = ?",
                (self._owner,),
            )
        except StateFileError:
            return set()
        return {(str(r[0]), str(r[1])) for r in rows}

    def tenants_listed(self, credential: str, listed: Collection[str], now: float) -> None:
        """A complete tenant list came: evidence of tenants not on it becomes history (since
        ``now``), and a tenant back on it is current again."""
        tenants = {key[1] for key in self._tracked if key[0] == credential and key[1]}
        try:
            for tenant_id in sorted(tenants):
                key = (credential, tenant_id)
                if tenant_id not in listed and key not in self._departed:
                    self._store.execute(_DEPARTED, (self._owner, credential, tenant_id, now))
                    self._departed.add(key)
                elif tenant_id in listed and key in self._departed:
                    self._store.execute(_RETURNED, (self._owner, credential, tenant_id))
                    self._departed.discard(key)
        except StateFileError:
            pass  # best effort, as all evidence is

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
        cause = cause_of(record.probe, record.outcome, Context(api_url=record.url))
        try:
            if lookup(cause).evidence:
                self._record_failure(key, record)
            elif key in self._tracked:
                self._record_other(key, record)
        except StateFileError:
            pass  # already logged by the state file; evidence is best effort, probing goes on

    def _record_failure(self, key: tuple[str, str, str], record: CallRecord) -> None:
        now = record.started_at
        request, headers, body, ids = redacted(record)
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
            request,
            record.outcome.status_code,
            json.dumps(headers),
            body,
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


def redacted(record: CallRecord) -> tuple[str, dict[str, str], str, dict[str, str]]:
    """The request (as curl), response headers, body and ids of a call, as they may be stored.

    A server may echo what it was sent, so every part passes the redactor, header names too.
    The body is cut at ``MAX_BODY_CHARS`` by the redactor itself, so that no secret is kept in
    part, and a body that was already cut (at ``max_response_bytes``) loses its last characters,
    which may be the start of one."""
    headers = {
        REDACTOR(k): REDACTOR(v)
        for k, v in record.response_headers.items()
        if k.lower() not in _HIDDEN_RESPONSE_HEADERS
    }
    ids = {k: REDACTOR(v) for k, v in record.outcome.ids.items()}
    text = record.raw_body[: 4 * (MAX_BODY_CHARS + REDACTOR.longest)].decode("utf-8", "replace")
    body = REDACTOR.head(text, MAX_BODY_CHARS, complete=record.body_complete)
    return REDACTOR(curl_command(record)), headers, body, ids


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


def load_evidence(
    store: StateFile, configured: Mapping[str, Collection[str]] | None = None
) -> list[Evidence]:
    """All evidence in the state file (every owner, so shards sharing a file report together).

    ``configured`` maps each configured credential to its per-tenant probes: evidence of any
    other credential or probe is history. Without it only departed tenants are history.
    """
    store.ensure_schema(_SCHEMA)
    rows = store.execute(_SELECT_ALL)
    items = [_evidence(row) for row in rows]
    return items if configured is None else [_mark_removed(e, configured) for e in items]


def _mark_removed(item: Evidence, configured: Mapping[str, Collection[str]]) -> Evidence:
    if item.credential not in configured:
        return dataclasses.replace(item, history=CREDENTIAL_REMOVED, history_since=None)
    probes = configured[item.credential]
    if item.tenant_id and item.probe not in probes and not item.history:
        return dataclasses.replace(item, history=PROBE_REMOVED)
    return item


def current_first(items: Iterable[Evidence]) -> list[Evidence]:
    """Current evidence first, history after it, each in the order they came."""
    listed = list(items)
    return [e for e in listed if e.current] + [e for e in listed if not e.current]


def _evidence(row: tuple[Any, ...]) -> Evidence:
    departed = row[17]
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
        history=TENANT_LEFT if departed is not None else "",
        history_since=None if departed is None else float(departed),
    )
