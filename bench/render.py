"""b. /metrics at 10,000 tenants: the agent's renderer against a plain prometheus_client registry.

The state is what an agent holds for one partner credential with the ``scale-10k`` scenario's
10,000 tenants (their real names, ids and regions): a probe result per tenant (97 % healthy, 1 %
each a trial 403, a 503 and a timeout), the request counters and duration histogram those calls
produced (a failing tenant has a series for its earlier 200 too), the credential-level probes and
the rate budget. About 60,000 series.

The plain registry holds the same series with the same values, built with prometheus_client
``Gauge``/``Counter``/``Histogram`` objects (``_created`` series off, as the agent has none) and
fed the same observations; both pages are parsed and compared sample by sample before anything is
timed. Timings are medians in this process:

- agent, cold: every probe result replaced since the last scrape (all 10,000 tenants probed in
  between: the worst case; replacing them is not timed); each agent render includes building
  the snapshot it renders, as every scrape does;
- agent, warm: nothing changed since the last scrape (a stretched period: the usual case);
- plain: ``generate_latest`` of the registry;
- gzip: the agent's page compressed as ``/metrics`` serves it when asked.
"""

from __future__ import annotations

import dataclasses
import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families

from agent.classify import ErrorCodeGuard, Outcome
from agent.client import CallRecord
from agent.clock import FakeClock
from agent.metrics import DURATION_BUCKETS, HELP, AgentMetrics, gzip_bytes
from agent.probes import CredentialState, ProbeResult
from agent.ratebudget import DEFAULT_LIMITS, RateBudget
from agent.simulator import build_scenario
from agent.snapshot import Snapshot, credential_snapshot
from agent.sophos import Tenant, Token, WhoAmI

CREDENTIAL = "msp-scale"
NOW = 1_700_000_000.0
OUTCOMES = (
    (403, "Forbidden", "trial_account"),
    (503, "ServiceUnavailable", "sophos_unavailable"),
    (0, "timeout", "network_error"),
)


@dataclasses.dataclass
class Fixture:
    metrics: AgentMetrics
    budget: RateBudget
    records: list[CallRecord]
    state: CredentialState
    whoami: WhoAmI

    def snapshot(self) -> Snapshot:
        """What the agent builds for each scrape (its cost is part of every render timed)."""
        self.state.whoami = self.whoami
        view = credential_snapshot(
            self.state,
            token=Token("t", issued_at=NOW, expires_at=NOW + 3600),
            period=586_016.0,
            period_text="",
            refresh_interval=17_756.0,
            window_calls={"1s": 0, "1m": 7, "1h": 93, "1d": 2_204},
            pauses_total=self.budget.pauses_total(CREDENTIAL),
        )
        return Snapshot(NOW, (view,), self.budget.limits, self.budget.allowance)


def build(tenants: int = 10_000) -> Fixture:
    scenario = build_scenario("scale-10k").credential(CREDENTIAL)
    state = CredentialState(name=CREDENTIAL)
    metrics = AgentMetrics(ErrorCodeGuard(), process_registry=None)
    records: list[CallRecord] = []

    def call(tenant_id: str, probe: str, status: int, code: str, duration: float) -> None:
        record = CallRecord(
            credential=CREDENTIAL,
            tenant_id=tenant_id,
            probe=probe,
            method="GET",
            url="https://api-eu01.central.sophos.com/endpoint/v1/endpoints",
            request_headers={},
            outcome=Outcome(status, code),
            duration=duration,
            started_at=NOW,
        )
        records.append(record)
        metrics.observe_call(record)

    for i, source in enumerate(scenario.tenants[:tenants]):
        tenant = Tenant(
            id=source.id,
            name=source.name,
            data_region=source.data_region,
            billing_type=source.billing_type,
            api_host=f"https://api-{source.data_region}.central.sophos.com",
        )
        state.tenants[tenant.id] = state.probed[tenant.id] = tenant
        status, code, cause = (200, "", "ok") if i % 100 >= 3 else OUTCOMES[i % 100]
        duration = 0.04 + (i % 37) / 100
        if status != 200:
            call(tenant.id, "tenant", 200, "", duration)
        call(tenant.id, "tenant", status, code, duration)
        state.results[(tenant.id, "tenant")] = _result(tenant.id, "tenant", status, code, cause, i)
    for probe, calls in (("token", 12), ("whoami", 4), ("tenant_list", 400)):
        for n in range(calls):
            call("", probe, 200, "", 0.1 + n % 5 / 10)
        state.results[("", probe)] = _result("", probe, 200, "", "ok", 0)
    clock = FakeClock(start=NOW)
    budget = RateBudget(DEFAULT_LIMITS, 0.1, clock)
    whoami = WhoAmI(id=scenario.id, id_type="partner", global_url="https://api.central.sophos.com")
    return Fixture(metrics, budget, records, state, whoami)


def _result(tenant_id: str, probe: str, status: int, code: str, cause: str, i: int) -> ProbeResult:
    return ProbeResult(
        credential=CREDENTIAL,
        tenant_id=tenant_id,
        probe=probe,
        success=cause == "ok",
        status_code=status,
        error_code=code,
        cause=cause,
        remedy="",
        message="",
        timestamp=NOW - i * 0.731,
        duration=0.04 + (i % 37) / 100,
    )


def plain_registry(fixture: Fixture, page: str) -> CollectorRegistry:
    """The same series in prometheus_client objects: gauges and counters from the agent's page,
    the histogram from the same observations."""
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry()
    for family in text_string_to_metric_families(page):
        if family.type == "histogram" or not family.samples:
            continue  # a family without samples has no series to compare
        doc = HELP[_name(family.name, family.type)][1]
        names = list(family.samples[0].labels) if family.samples else []
        if family.type == "counter":
            counter = Counter(family.name, doc, names, registry=registry)
            for sample in family.samples:
                (counter.labels(**sample.labels) if names else counter).inc(sample.value)
        else:
            gauge = Gauge(family.name, doc, names, registry=registry)
            for sample in family.samples:
                (gauge.labels(**sample.labels) if names else gauge).set(sample.value)
    name = "sophos_central_api_request_duration_seconds"
    histogram = Histogram(
        name, HELP[name][1], ["credential", "probe"], buckets=DURATION_BUCKETS, registry=registry
    )
    for record in fixture.records:
        histogram.labels(credential=record.credential, probe=record.probe).observe(record.duration)
    return registry


def _generate(registry: CollectorRegistry) -> bytes:
    page: bytes = prometheus_client.generate_latest(registry)
    return page


def _name(family: str, kind: str) -> str:
    return family + "_total" if kind == "counter" and family + "_total" in HELP else family


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def same_series(ours: str, theirs: str) -> tuple[bool, int, str]:
    a, b = samples(ours), samples(theirs)
    if a.keys() != b.keys():
        missing = next(iter(a.keys() ^ b.keys()))
        return False, len(a), f"series differ, e.g. {missing}"
    for key, value in a.items():
        if abs(value - b[key]) > 1e-9 * max(1.0, abs(value)):
            return False, len(a), f"value differs for {key}: {value} vs {b[key]}"
    return True, len(a), ""


def median_ms(action: Callable[[], object], runs: int, before: Callable[[], None] | None) -> float:
    times = []
    for _ in range(runs):
        if before is not None:
            before()
        gc.collect()
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def run(runs: int = 15) -> dict[str, Any]:
    fixture = build()

    def render() -> bytes:
        return fixture.metrics.render(fixture.snapshot())

    page = render().decode()
    registry = plain_registry(fixture, page)
    plain_page = _generate(registry).decode()
    equal, series, why = same_series(page, plain_page)
    if not equal:
        raise AssertionError(f"the plain registry does not hold the same series: {why}")

    results = fixture.state.results
    tick = [0]

    def everything_probed() -> None:
        tick[0] += 1
        for key, result in list(results.items()):
            results[key] = dataclasses.replace(result, timestamp=result.timestamp + tick[0])

    cold = median_ms(render, runs, everything_probed)
    warm = median_ms(render, runs, None)
    plain = median_ms(lambda: _generate(registry), max(5, runs // 3), None)
    body = render()
    gzip_ms = median_ms(lambda: gzip_bytes(body), runs, None)
    return {
        "tenants": len(fixture.state.tenants),
        "series": series,
        "same_series_as_plain_registry": equal,
        "page_bytes": len(body),
        "gzip_bytes": len(gzip_bytes(body)),
        "plain_page_bytes": len(plain_page.encode()),
        "agent_render_ms_cold": cold,
        "agent_render_ms_warm": warm,
        "plain_generate_latest_ms": plain,
        "gzip_ms": gzip_ms,
        "ratio_cold_to_plain": cold / plain,
        "ratio_warm_to_plain": warm / plain,
        "runs": runs,
    }
