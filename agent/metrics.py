"""The metrics: counters fed by every call, gauges built from current probe state at scrape time.

Like prometheus-pve-exporter's collectors, the gauges are derived from the agent's state on each
scrape, so a tenant that leaves the tenant list simply stops being exported. Unlike them, we render
the text format ourselves: at 10,000 tenants a generic registry spends most of a scrape rebuilding
label strings that have not changed. Here every series keeps its pre-rendered name-and-labels
prefix (escaping is the expensive part, and label values change far less often than values), the
lines of an unchanged probe result, tenant or counter are reused as they are, already encoded,
and a changed probe result only formats its numbers. The page is joined from bytes: encoding a
10,000-tenant page whole would cost more than rendering it, and tenant names in other scripts
would make the intermediate string two or four bytes per character. bench/ measures it against
a plain prometheus_client registry holding the same series.
"""

from __future__ import annotations

import bisect
import gzip
import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import prometheus_client
from prometheus_client import CollectorRegistry

from agent import PYTHON, __version__
from agent import metricnames as m
from agent.causes import CONFIRMED_AFTER, TENANT_STATES, kind_of
from agent.classify import ErrorCodeGuard
from agent.client import CallRecord
from agent.probes import ProbeResult
from agent.snapshot import CredentialSnapshot, Snapshot
from agent.sophos import Tenant

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_SOURCE = "Values come from the agent's scheduled probes, not from the scrape."

HELP: dict[str, tuple[str, str]] = {
    m.API_REQUESTS_TOTAL: (
        "counter",
        "Calls the agent made to Sophos Central, by HTTP status ('0' when no answer) and the "
        "response's error code. " + _SOURCE,
    ),
    m.API_REQUEST_DURATION_SECONDS: (
        "histogram",
        "Duration of calls to Sophos Central. " + _SOURCE,
    ),
    m.PROBE_SUCCESS: ("gauge", "1 if the last run of the probe succeeded, else 0. " + _SOURCE),
    m.PROBE_LAST_RUN_TIMESTAMP_SECONDS: ("gauge", "When the probe last finished (Unix time)."),
    m.PROBE_DURATION_SECONDS: ("gauge", "How long the probe's last run took. " + _SOURCE),
    m.PROBE_CAUSE_INFO: (
        "gauge",
        "The diagnosis of the probe's last result (cause 'ok' on success) and the cause's "
        "kind: ok, business (an account's state, not an outage) or failure. " + _SOURCE,
    ),
    m.PROBE_CONSECUTIVE_FAILURES: (
        "gauge",
        "Failed runs of the probe in a row (0 after a success; a failed per-tenant probe is "
        f"re-probed after confirm_interval and twice that, so {CONFIRMED_AFTER} confirms a "
        "failure). " + _SOURCE,
    ),
    m.PROBE_LAST_SUCCESS_TIMESTAMP_SECONDS: (
        "gauge",
        "When the probe last succeeded (Unix time; kept across restarts), for the per-tenant "
        "probes whose API lets a collector read only so far back (siem_events, siem_alerts: "
        "24 h); absent before the first success. " + _SOURCE,
    ),
    m.TOKEN_EXPIRY_TIMESTAMP_SECONDS: ("gauge", "When the credential's cached token expires."),
    m.CREDENTIAL_EXPIRY_TIMESTAMP_SECONDS: (
        "gauge",
        "When the credential itself expires (Unix time), as configured in its expires_at: "
        "Sophos Central shows the date; no API reads it.",
    ),
    m.RATE_LIMIT_CALLS: (
        "gauge",
        "Calls the agent made for the credential in the trailing window, token calls included.",
    ),
    m.RATE_LIMIT_MAX_CALLS: ("gauge", "The configured rate limit of the window."),
    m.RATE_LIMIT_ALLOWED_CALLS: (
        "gauge",
        "Calls the agent allows itself in the window: floor(budget_share x limit), at least 1.",
    ),
    m.RATE_LIMIT_UTILIZATION_RATIO: ("gauge", "Calls in the trailing window / the window's limit."),
    m.RATE_LIMIT_PAUSES_TOTAL: ("counter", "Pauses of the credential after a 429 answer."),
    m.RATE_LIMIT_PAUSED_UNTIL: (
        "gauge",
        "When the credential's last 429 pause ends or ended (Unix time; 0: never paused). No "
        "call is made before it.",
    ),
    m.RATE_LIMIT_PAUSE_INFO: (
        "gauge",
        "The credential's last 429 pause: the window assumed exhausted ('none' when Retry-After "
        "gave the length) and why ('retry_after', or 'escalation' when 429s came without "
        "Retry-After); 1 while the pause runs, 0 after it ended.",
    ),
    m.RATE_LIMIT_TENANT_MAX_UTILIZATION_RATIO: (
        "gauge",
        "With rate_limit_scope tenant: the busiest tenant's calls in the trailing window / the "
        "window's limit (as admission counts them, up to 1 s and 1 % of the window longer).",
    ),
    m.RATE_LIMIT_PAUSED_TENANTS: (
        "gauge",
        "With rate_limit_scope tenant: tenants of the credential in a 429 pause now.",
    ),
    m.API_REQUESTS_IN_FLIGHT: (
        "gauge",
        "Calls admitted by the rate budget and not answered yet (they already count in "
        "rate_limit_calls, not yet in api_requests_total).",
    ),
    m.TENANT_INFO: ("gauge", "Every tenant listed for the credential (1), probed or not."),
    m.TENANTS: (
        "gauge",
        "Every listed tenant of the credential once, by state: probed, or the cause it is not "
        "(" + ", ".join(TENANT_STATES[1:]) + ").",
    ),
    m.WHOAMI_INFO: ("gauge", "The identity whoami reported for the credential."),
    m.EXPORTER_BUILD_INFO: ("gauge", "The exporter's version and the Python version it runs on."),
    m.EXPORTER_EXTERNAL_URL_INFO: (
        "gauge",
        "The exporter's URL as users reach it (external_url); alert annotations link to its "
        "/status page. Absent when external_url is not set.",
    ),
    m.PROBE_INTERVAL_SECONDS: (
        "gauge",
        "Effective period between two probes of one tenant (probe_interval, stretched to fit the "
        "rate budget); each of tenant_probes gets this period.",
    ),
    m.TENANT_REFRESH_INTERVAL_SECONDS: (
        "gauge",
        "Effective period between two tenant-list refreshes (tenant_refresh_interval, stretched "
        "so that the tenant list leaves room for tenant probes in the rate budget).",
    ),
    m.SHARD_ORDINAL: ("gauge", "This process's shard number."),
    m.TOTAL_SHARDS: ("gauge", "How many shards split the tenants."),
    m.STATE_FILE_RECREATED_TOTAL: (
        "counter",
        "Times the state file was found deleted or replaced while the agent ran, and recreated "
        "with the calls the agent held in memory.",
    ),
    m.TENANT_LIST_UNREAD_PAGES: (
        "gauge",
        "Tenant-list pages the last listing did not read because the list claims more than the "
        "agent's cap of 1000 pages; their tenants are not probed (0: the whole list was read).",
    ),
}


def escape(value: str) -> str:
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


def labels(**pairs: str) -> str:
    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in pairs.items()) + "}"


def fmt(value: float) -> str:
    """Numbers as the text format wants them; integers without a fraction."""
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


class _Counter:
    """One ``api_requests_total`` series: its count and its line, rendered again only when the
    count changed since the last scrape."""

    __slots__ = ("count", "line", "prefix")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.count = 0
        self.line = b""

    def render(self) -> bytes:
        if not self.line:
            self.line = f"{self.prefix} {self.count}\n".encode()
        return self.line


_RESULT_FAMILIES = (
    m.PROBE_SUCCESS,
    m.PROBE_LAST_RUN_TIMESTAMP_SECONDS,
    m.PROBE_DURATION_SECONDS,
    m.PROBE_CAUSE_INFO,
    m.PROBE_CONSECUTIVE_FAILURES,
)
"""The gauges every probe result gives, in the order ``_ResultLines.lines`` holds them."""


class _ResultLines:
    """The lines of one probe result, one per ``_RESULT_FAMILIES``, its last-success line (for
    the probes whose last success is exported, else empty), and the label set they share
    (which outlives it)."""

    __slots__ = ("labels", "last_success", "lines", "result")

    def __init__(self, label_set: str) -> None:
        self.labels = label_set
        self.result: ProbeResult | None = None
        self.lines: tuple[bytes, ...] = ()
        self.last_success = b""


@dataclass
class _Histogram:
    prefix_labels: str
    buckets: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    total: float = 0.0
    count: int = 0


class AgentMetrics:
    """The call counters (a ``CallObserver``) and the renderer of the whole ``/metrics`` page."""

    def __init__(
        self,
        guard: ErrorCodeGuard | None = None,
        shard: int = 0,
        total_shards: int = 1,
        process_registry: CollectorRegistry | None = prometheus_client.REGISTRY,
    ) -> None:
        self.guard = guard or ErrorCodeGuard()
        self._shard = shard
        self._total_shards = total_shards
        self._process_registry = process_registry
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, str, str, str], _Counter] = {}
        self._durations: dict[tuple[str, str], _Histogram] = {}
        self._line_cache: dict[tuple[str, str, str], _ResultLines] = {}
        self._tenant_lines: dict[tuple[str, str], tuple[Tenant, bytes]] = {}

    # -- counters ----------------------------------------------------------------------------

    def observe_call(self, record: CallRecord) -> None:
        outcome = record.outcome
        key = (
            record.credential,
            record.tenant_id,
            record.probe,
            outcome.status_label,
            self.guard.label(outcome.error_code),
        )
        with self._lock:
            entry = self._requests.get(key)
            if entry is None:
                prefix = m.API_REQUESTS_TOTAL + labels(
                    credential=key[0],
                    tenant_id=key[1],
                    probe=key[2],
                    status_code=key[3],
                    error_code=key[4],
                )
                entry = self._requests[key] = _Counter(prefix)
            entry.count += 1
            entry.line = b""
            self._observe_duration(record.credential, record.probe, record.duration)

    def _observe_duration(self, credential: str, probe: str, seconds: float) -> None:
        hist = self._durations.get((credential, probe))
        if hist is None:
            hist = self._durations[(credential, probe)] = _Histogram(
                f'credential="{escape(credential)}",probe="{escape(probe)}"'
            )
        hist.buckets[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
        hist.total += seconds
        hist.count += 1

    def prune(self, credential: str, tenant_ids: Iterable[str]) -> int:
        """Drop the counters of tenants that left the credential's tenant list."""
        keep = set(tenant_ids)
        with self._lock:
            gone = [k for k in self._requests if k[0] == credential and k[1] and k[1] not in keep]
            for key in gone:
                del self._requests[key]
            stale = [k for k in self._line_cache if k[0] == credential and k[1] not in keep]
            for cache_key in stale:
                del self._line_cache[cache_key]
            left = [k for k in self._tenant_lines if k[0] == credential and k[1] not in keep]
            for tenant_key in left:
                del self._tenant_lines[tenant_key]
        return len(gone)

    # -- rendering ---------------------------------------------------------------------------

    def render(self, snapshot: Snapshot) -> bytes:
        """The whole ``/metrics`` page: the snapshot's state and the counters kept here."""
        views = snapshot.credentials
        out: list[bytes] = []
        self._render_probe_families(out, views)
        with self._lock:
            self._render_requests(out)
            self._render_histogram(out)
        self._render_credential_families(out, snapshot)
        self._render_static(out, snapshot)
        if snapshot.external_url is not None:
            lbl = labels(external_url=snapshot.external_url)
            _family(out, m.EXPORTER_EXTERNAL_URL_INFO, [f"{m.EXPORTER_EXTERNAL_URL_INFO}{lbl} 1\n"])
        if self._process_registry is not None:
            out.append(prometheus_client.generate_latest(self._process_registry))
        return b"".join(out)

    def _render_probe_families(self, out: list[bytes], views: Iterable[CredentialSnapshot]) -> None:
        """success, last run, duration, cause and failure streak of every probe, and the last
        success of the watched ones (``CredentialSnapshot.watched``), from cached per-result
        lines."""
        blocks: list[list[bytes]] = [[] for _ in _RESULT_FAMILIES]
        successes: list[bytes] = []
        for view in views:
            watched = view.watched
            for result in view.results.values():
                cached = self._result_lines(result, bool(watched) and result.probe in watched)
                for block, line in zip(blocks, cached.lines, strict=True):
                    block.append(line)
                if cached.last_success:
                    successes.append(cached.last_success)
        for name, block in zip(_RESULT_FAMILIES, blocks, strict=True):
            _header(out, name)
            out.extend(block)
        _header(out, m.PROBE_LAST_SUCCESS_TIMESTAMP_SECONDS)
        out.extend(successes)

    def _result_lines(self, result: ProbeResult, watched: bool = False) -> _ResultLines:
        key = (result.credential, result.tenant_id, result.probe)
        cached = self._line_cache.get(key)
        if cached is None:
            lbl = labels(
                credential=result.credential, tenant_id=result.tenant_id, probe=result.probe
            )
            cached = self._line_cache[key] = _ResultLines(lbl)
        elif cached.result is result:
            return cached
        lbl = cached.labels
        cached.result = result
        cached.lines = (
            f"{m.PROBE_SUCCESS}{lbl} {1 if result.success else 0}\n".encode(),
            f"{m.PROBE_LAST_RUN_TIMESTAMP_SECONDS}{lbl} {fmt(result.timestamp)}\n".encode(),
            f"{m.PROBE_DURATION_SECONDS}{lbl} {fmt(result.duration)}\n".encode(),
            f'{m.PROBE_CAUSE_INFO}{lbl[:-1]},cause="{escape(result.cause)}",'
            f'kind="{kind_of(result.cause)}"}} 1\n'.encode(),
            f"{m.PROBE_CONSECUTIVE_FAILURES}{lbl} {result.consecutive_failures}\n".encode(),
        )
        last = result.last_success
        cached.last_success = (
            f"{m.PROBE_LAST_SUCCESS_TIMESTAMP_SECONDS}{lbl} {fmt(last)}\n".encode()
            if watched and last is not None
            else b""
        )
        return cached

    def _render_requests(self, out: list[bytes]) -> None:
        _header(out, m.API_REQUESTS_TOTAL)
        out.extend([entry.render() for entry in self._requests.values()])

    def _render_histogram(self, out: list[bytes]) -> None:
        name = m.API_REQUEST_DURATION_SECONDS
        lines: list[str] = []
        for hist in self._durations.values():
            cumulative = 0
            for bound, count in zip((*DURATION_BUCKETS, float("inf")), hist.buckets, strict=True):
                cumulative += count
                le = "+Inf" if bound == float("inf") else repr(bound)
                lines.append(f'{name}_bucket{{{hist.prefix_labels},le="{le}"}} {cumulative}\n')
            lines.append(f"{name}_sum{{{hist.prefix_labels}}} {fmt(hist.total)}\n")
            lines.append(f"{name}_count{{{hist.prefix_labels}}} {hist.count}\n")
        _family(out, name, lines)

    def _render_credential_families(self, out: list[bytes], snapshot: Snapshot) -> None:
        views = snapshot.credentials
        self._render_tenants(out, views)
        _family(out, m.TOKEN_EXPIRY_TIMESTAMP_SECONDS, _token_lines(views))
        _family(
            out,
            m.CREDENTIAL_EXPIRY_TIMESTAMP_SECONDS,
            (
                f"{m.CREDENTIAL_EXPIRY_TIMESTAMP_SECONDS}{labels(credential=v.name)} "
                f"{fmt(v.expires_at)}\n"
                for v in views
                if v.expires_at is not None
            ),
        )
        _family(out, m.WHOAMI_INFO, _whoami_lines(views))
        _family(
            out,
            m.PROBE_INTERVAL_SECONDS,
            (
                f"{m.PROBE_INTERVAL_SECONDS}{labels(credential=v.name)} {fmt(v.period)}\n"
                for v in views
            ),
        )
        _family(
            out,
            m.TENANT_REFRESH_INTERVAL_SECONDS,
            (
                f"{m.TENANT_REFRESH_INTERVAL_SECONDS}{labels(credential=v.name)} "
                f"{fmt(v.refresh_interval)}\n"
                for v in views
                if v.refresh_interval is not None
            ),
        )
        _render_budget(out, snapshot)
        _family(
            out,
            m.TENANT_LIST_UNREAD_PAGES,
            (
                f"{m.TENANT_LIST_UNREAD_PAGES}{labels(credential=v.name)} "
                f"{v.tenant_list_unread_pages}\n"
                for v in views
            ),
        )
        _family(
            out,
            m.API_REQUESTS_IN_FLIGHT,
            (
                f"{m.API_REQUESTS_IN_FLIGHT}{labels(credential=v.name)} {v.in_flight}\n"
                for v in views
            ),
        )

    def _render_tenants(self, out: list[bytes], views: Iterable[CredentialSnapshot]) -> None:
        _header(out, m.TENANT_INFO)
        cache = self._tenant_lines
        for view in views:
            name = view.name
            for tenant in view.tenants.values():
                key = (name, tenant.id)
                cached = cache.get(key)
                if cached is None or cached[0] is not tenant:
                    lbl = labels(
                        credential=name,
                        tenant_id=tenant.id,
                        tenant_name=tenant.name,
                        data_region=tenant.data_region,
                        billing_type=tenant.billing_type,
                    )
                    cached = cache[key] = (tenant, f"{m.TENANT_INFO}{lbl} 1\n".encode())
                out.append(cached[1])
        _family(
            out,
            m.TENANTS,
            (
                f"{m.TENANTS}{labels(credential=view.name, state=state)} {count}\n"
                for view in views
                for state, count in view.tenant_states().items()
            ),
        )

    def _render_static(self, out: list[bytes], snapshot: Snapshot) -> None:
        _family(
            out,
            m.EXPORTER_BUILD_INFO,
            [f"{m.EXPORTER_BUILD_INFO}{labels(version=__version__, python_version=PYTHON)} 1\n"],
        )
        _family(out, m.SHARD_ORDINAL, [f"{m.SHARD_ORDINAL} {self._shard}\n"])
        _family(out, m.TOTAL_SHARDS, [f"{m.TOTAL_SHARDS} {self._total_shards}\n"])
        recreated = f"{m.STATE_FILE_RECREATED_TOTAL} {snapshot.state_file_recreated}\n"
        _family(out, m.STATE_FILE_RECREATED_TOTAL, [recreated])


def _render_budget(out: list[bytes], snapshot: Snapshot) -> None:
    views = snapshot.credentials

    def per_window(name: str, value: Callable[[CredentialSnapshot, str], float]) -> Iterable[str]:
        for view in views:
            for window in m.WINDOWS:
                lbl = labels(credential=view.name, window=window)
                yield f"{name}{lbl} {fmt(value(view, window))}\n"

    def used(view: CredentialSnapshot, window: str) -> float:
        return float(view.window_calls.get(window, 0))

    def limit(_view: CredentialSnapshot, window: str) -> float:
        return float(snapshot.limits[window])

    def allowed(_view: CredentialSnapshot, window: str) -> float:
        return float(snapshot.allowance[window])

    def ratio(view: CredentialSnapshot, window: str) -> float:
        return used(view, window) / max(1.0, limit(view, window))

    _family(out, m.RATE_LIMIT_CALLS, per_window(m.RATE_LIMIT_CALLS, used))
    _family(out, m.RATE_LIMIT_MAX_CALLS, per_window(m.RATE_LIMIT_MAX_CALLS, limit))
    _family(out, m.RATE_LIMIT_ALLOWED_CALLS, per_window(m.RATE_LIMIT_ALLOWED_CALLS, allowed))
    _family(out, m.RATE_LIMIT_UTILIZATION_RATIO, per_window(m.RATE_LIMIT_UTILIZATION_RATIO, ratio))
    _family(
        out,
        m.RATE_LIMIT_PAUSES_TOTAL,
        (
            f"{m.RATE_LIMIT_PAUSES_TOTAL}{labels(credential=v.name)} {v.pauses_total}\n"
            for v in views
        ),
    )
    _render_pauses(out, views, snapshot.taken_at)
    _render_tenant_budgets(out, snapshot)


def _render_pauses(out: list[bytes], views: Iterable[CredentialSnapshot], now: float) -> None:
    """When the last 429 pause ends, and which window it assumed exhausted and why."""
    _family(
        out,
        m.RATE_LIMIT_PAUSED_UNTIL,
        (
            f"{m.RATE_LIMIT_PAUSED_UNTIL}{labels(credential=v.name)} "
            f"{fmt(v.pause.until if v.pause is not None else 0)}\n"
            for v in views
        ),
    )
    _family(
        out,
        m.RATE_LIMIT_PAUSE_INFO,
        (
            f"{m.RATE_LIMIT_PAUSE_INFO}"
            f"{labels(credential=v.name, window=v.pause.window, reason=v.pause.reason)} "
            f"{1 if v.pause.until > now else 0}\n"
            for v in views
            if v.pause is not None
        ),
    )


def _render_tenant_budgets(out: list[bytes], snapshot: Snapshot) -> None:
    """Per-tenant windows, summed up: one series per credential and window, not per tenant
    (10,000 tenants x 4 windows would be 40,000 series that nobody graphs)."""
    scoped = [(v.name, v.tenant_budgets) for v in snapshot.credentials if v.tenant_budgets]
    if not scoped:
        return
    lines: list[str] = []
    for name, budgets in scoped:
        for window in m.WINDOWS:
            used = budgets.max_calls.get(window, 0)
            ratio = used / max(1, snapshot.limits[window])
            lbl = labels(credential=name, window=window)
            lines.append(f"{m.RATE_LIMIT_TENANT_MAX_UTILIZATION_RATIO}{lbl} {fmt(ratio)}\n")
    _family(out, m.RATE_LIMIT_TENANT_MAX_UTILIZATION_RATIO, lines)
    _family(
        out,
        m.RATE_LIMIT_PAUSED_TENANTS,
        (
            f"{m.RATE_LIMIT_PAUSED_TENANTS}{labels(credential=name)} {budgets.paused}\n"
            for name, budgets in scoped
        ),
    )


def _token_lines(views: Iterable[CredentialSnapshot]) -> Iterable[str]:
    for view in views:
        if view.token is not None:
            lbl = labels(credential=view.name)
            yield f"{m.TOKEN_EXPIRY_TIMESTAMP_SECONDS}{lbl} {fmt(view.token.expires_at)}\n"


def _whoami_lines(views: Iterable[CredentialSnapshot]) -> Iterable[str]:
    for view in views:
        if view.whoami is not None:
            lbl = labels(credential=view.name, id_type=view.whoami.id_type, id=view.whoami.id)
            yield f"{m.WHOAMI_INFO}{lbl} 1\n"


def _header(out: list[bytes], name: str) -> None:
    kind, text = HELP[name]
    out.append(f"# HELP {name} {text}\n# TYPE {name} {kind}\n".encode())


def _family(out: list[bytes], name: str, lines: Iterable[str]) -> None:
    _header(out, name)
    out.extend(line.encode() for line in lines)


def gzip_bytes(data: bytes) -> bytes:
    """Level 3: most of level 9's ratio on this repetitive text at a fraction of its CPU."""
    return gzip.compress(data, compresslevel=3)
