"""e. Fault to page: how long a tenant fault takes to be probed, and then to page.

With the product's default budget (the simulator has the seed's limits, 10 a second, 100 a
minute, 1,000 an hour and 50,000 a day; the agent spends ``budget_share: 0.1`` of them, probes
every ``probe_interval: 60s`` as far as the budget allows, and re-probes a failed tenant after
``confirm_interval: 1m`` and 2 minutes later), at 250 and at 10,000 tenants of one partner
credential, the simulator and the agent (``bench.agentproc``, the same ``AgentService`` as
``run``) run as two processes over real loopback HTTP, on one shared fast clock (``WarpClock``).
Every figure is in clock seconds: the time the agent and the simulator live in.

Two phases per size, on one continuous clock:

1. **Fast** (480x at 250 tenants, 2,880x at 10,000): the agent lists the tenants and probes
   them on its routine schedule. At random moments of the first period after the list, random
   tenants get a persistent 500 (``server_error_500``) or a 403 (``no_partner_assistance_403``),
   each through the simulator's admin API; the tenant is drawn from every tenant not used yet,
   whatever its place in the rotation (drawing 403 tenants only among those already probed would
   pick tenants whose next probe is late in the period, and did: 0.72 of the period on average).
   Figure (a) is the time from the fault to the first failed probe of that tenant (the agent
   writes every call with its clock time, ``--events``), against the routine period it exports
   as ``sophos_central_probe_interval_seconds``: the wait is up to one period, half on average.
   The same figure is also read off the schedule itself for thousands of (moment, healthy
   tenant) pairs: a fault at that moment would be seen at the tenant's next call, since routine
   slots do not depend on faults. Thirty injected faults (fifteen of each kind) put the
   median to within about 0.05; each is healed as soon as its first failed probe is written
   down, so that it costs a re-probe or two rather than a failing tenant's re-probes for the
   rest of the phase (in a full budget those displace the routine probes the other faults are
   measured against). Last, how far apart each healthy
   tenant's calls are, against the period: slots that drift late show there.
2. **Slow** (60x): the clock slows down (``WarpClock.switch``: both processes switch at the same
   real moment, the agent reschedules its jobs) and a real Prometheus (the Debian
   ``prometheus`` binary) scrapes the agent. The project's own rule files are loaded with every
   duration divided by 60 (each ``for:``, each range ``[..]`` and ``offset``) and ``time()``
   replaced by the agent's clock (a linear function of Prometheus's time); the scrape and
   evaluation intervals are set in real time, which is 60x as long in clock time (15 s or
   60 s, as the report says). New faults go onto the tenants due next in the rotation (known
   from the calls so far) so that their first failed probe comes within minutes; figure (b) is
   the time from that first failed probe to the moment ``SophosCentralPersistent5xx`` or
   ``SophosCentralForbiddenSpike{scope="tenant"}`` for that tenant is firing (the first
   evaluation with ``ALERTS{alertstate="firing"}``, read back from Prometheus). The faults come
   one at a time (the next once the last one paged: a single tenant breaking), then ten at
   once. Then every call answers 503 (the simulator's outage switch), and (b) for the outage is
   from its start (and from the first failed probe) to ``SophosCentralApiOutage{scope="tenants"}``
   firing; the outage goes on for 30 more clock minutes, and the routine probes that ran during
   it (the per-tenant calls the agent answered less the confirmation re-probes it started, from
   its own counters) say whether routine coverage kept going.

Budget: the simulator's busiest window of each length over the whole run (both phases, the
confirmations and the outage included) divided by the agent's allowance (0.1 x the limit), and
the 429s it answered. Beside it, the busiest window of the calls as the agent sent them (its
clock, just after admission), per phase: on the fast clock a millisecond of loopback between
sending and arriving is several clock seconds, more than the budget's one-second safety margin,
so the simulator can count a call in the next window that the agent counted in the last one; the
agent's own figure shows whether the agent kept its allowance.

Why two speeds: (a) needs whole probe periods (3.8 hours at 250 tenants, about 4 days at 10,000),
(b) needs Prometheus to scrape and evaluate often enough in clock time, and Prometheus runs on
real time: at 2,880x a one-second scrape interval would be 48 clock minutes.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import re
import shutil
import signal
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from agent.simulator import busiest_window
from bench.common import (
    ROOT,
    Child,
    WarpClock,
    agent_snapshot,
    children,
    free_port,
    parse_page,
    scrape,
    simulator_state,
    spawn,
    start_simulator,
    wait_until,
)
from tools.shorten_for import duration_ms, format_ms

SEED_LIMITS = {"1s": 10, "1m": 100, "1h": 1_000, "1d": 50_000}
BUDGET_SHARE = 0.1
WINDOWS = {"1s": 1, "1m": 60, "1h": 3600, "1d": 86400}
AGENT_SETTINGS = {
    "probe_interval": "60s",
    "token_probe_interval": "5m",
    "tenant_refresh_interval": "15m",
    "request_timeout": "10s",
    "confirm_interval": "1m",
    "budget_share": str(BUDGET_SHARE),
}
FAULTS = {"5xx": "server_error_500", "403": "no_partner_assistance_403"}
STATUS = {"5xx": 500, "403": 403}
ALERTS = {"5xx": "SophosCentralPersistent5xx", "403": "SophosCentralForbiddenSpike"}
JOB = "sophos-central-exporter"
SLOW_SPEED = 60.0
SCHEDULE_SAMPLES = 5_000
"""(moment, tenant) pairs read off the schedule for figure (a)."""
OUTAGE_AFTER_PAGE = 30 * 60.0
"""Clock seconds the outage goes on after SophosCentralApiOutage fired."""


@dataclass(frozen=True)
class Size:
    tenants: int
    fast_speed: float
    scrape_real: str
    eval_real: str
    faults: int = 5
    fast_faults: int = 15
    seed: int = 4
    day_rules_real: str | None = None
    """Evaluate the 1-day recording rules this often, in a group of their own (real time)."""


SIZES = (
    Size(250, fast_speed=480, scrape_real="250ms", eval_real="250ms"),
    Size(10_000, fast_speed=2_880, scrape_real="1s", eval_real="500ms", day_rules_real="2s"),
)


@dataclass
class Fault:
    kind: str
    tenant: str
    injected: float
    first_failed: float | None = None
    fired: float | None = None
    last_ok_before: float | None = None

    def to_probe(self) -> float | None:
        return None if self.first_failed is None else self.first_failed - self.injected

    def to_page(self) -> float | None:
        if self.first_failed is None or self.fired is None:
            return None
        return self.fired - self.first_failed


@dataclass
class Calls:
    """The agent's calls (``--events``), read as the file grows: per tenant (clock time answered,
    status), and when every call was sent."""

    path: Path
    by_tenant: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    sent: list[float] = field(default_factory=list)
    offset: int = 0
    first: float | None = None

    def read(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        for line in data[:end].splitlines():
            event = json.loads(line)
            self.sent.append(event["sent"])
            if not event["tenant"]:
                continue
            self.by_tenant.setdefault(event["tenant"], []).append((event["t"], event["status"]))
            if self.first is None:
                self.first = event["t"]

    def last_ok(self, tenant: str, before: float) -> float | None:
        calls = [c for c in self.by_tenant.get(tenant, []) if c[0] < before]
        return calls[-1][0] if calls and calls[-1][1] == 200 else None

    def first_failure(self, tenant: str, since: float, status: int) -> float | None:
        """The first call since ``since`` answered with the injected fault's ``status``."""
        for at, answered in self.by_tenant.get(tenant, []):
            if at >= since and answered == status:
                return at
        return None

    def any_failure(self, since: float, status: int) -> float | None:
        times = [
            at
            for calls in self.by_tenant.values()
            for at, answered in calls
            if at >= since and answered == status
        ]
        return min(times) if times else None

    def next_call(self, tenant: str, moment: float) -> float | None:
        return next((at for at, _ in self.by_tenant.get(tenant, []) if at >= moment), None)

    def statuses(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for calls in self.by_tenant.values():
            for _, answered in calls:
                counts[str(answered)] = counts.get(str(answered), 0) + 1
        return dict(sorted(counts.items()))


async def run(workdir: Path, sizes: tuple[Size, ...] = SIZES) -> dict[str, Any]:
    if shutil.which("prometheus") is None:
        return {"skipped": "the prometheus binary is not on PATH (Debian package prometheus)"}
    results = []
    for size in sizes:
        size_dir = workdir / f"faultpage-{size.tenants}"
        size_dir.mkdir(parents=True, exist_ok=True)
        print(f"  e. {size.tenants:,} tenants ...", file=sys.stderr, flush=True)
        results.append(await _run_size(size_dir, size))
    return {"sizes": results}


async def _run_size(workdir: Path, size: Size) -> dict[str, Any]:
    origin, wall_origin = time.monotonic(), time.time()
    clock = WarpClock(size.fast_speed, origin, wall_origin)
    switch_file = workdir / "switch"
    calls = Calls(workdir / "calls.jsonl")
    with children() as running:
        sim = start_simulator(
            workdir,
            "scale-10k",
            SEED_LIMITS,
            speed=size.fast_speed,
            origin=origin,
            wall_origin=wall_origin,
            tenants=size.tenants,
            switch_file=switch_file,
        )
        running.append(sim)
        agent = _start_agent(workdir, sim, size, origin, wall_origin, calls.path, switch_file)
        running.append(agent)
        base = f"http://127.0.0.1:{agent.announcement['port']}"
        watched = (agent, sim)
        period, tenants = await _plan(base, calls, size, watched)
        fast = await _fast_phase(clock, sim, calls, size, period, tenants, watched)
        schedule = _schedule_figures(calls, size, period, {f.tenant for f in fast})
        prom, mapping, switched = await _switch_and_start_prometheus(
            workdir, clock, origin, wall_origin, size, agent, sim, running
        )
        prometheus = f"http://127.0.0.1:{prom.announcement['port']}"
        used = {f.tenant for f in fast}
        slow, together = await _slow_phase(
            clock, sim, calls, size, used, prometheus, mapping, watched
        )
        outage = await _outage(clock, sim, agent, calls, prometheus, mapping, watched, slow)
        outage["planned_routine_probes"] = size.tenants / period * outage["lasted_seconds"]
        state = await simulator_state(sim)
        page = parse_page((await scrape(base)).text)
    result = _figures(size, period, fast, slow, together, outage, state, page)
    result["fault_to_first_failed_probe"]["schedule"] = schedule
    result["agent_sent_max_in_window_over_allowance"] = {
        "fast": _busiest([t for t in calls.sent if t < switched]),
        "slow": _busiest([t for t in calls.sent if t >= switched]),
    }
    result["per_tenant_call_statuses"] = calls.statuses()
    return result


def _start_agent(
    workdir: Path,
    sim: Child,
    size: Size,
    origin: float,
    wall_origin: float,
    events: Path,
    switch_file: Path,
) -> Child:
    settings = {**AGENT_SETTINGS, "state_file": str(workdir / "state.db")}
    argv = [sys.executable, "-m", "bench.agentproc", "--config"]
    argv.append(sim.announcement["agent_config_path"])
    for key, value in settings.items():
        argv += ["--set", f"{key}={value}"]
    argv += ["--speed", str(size.fast_speed), "--origin", repr(origin), "--wall-origin"]
    argv += [repr(wall_origin), "--events", str(events), "--switch-file", str(switch_file)]
    return spawn("agent", argv, workdir, announce=True)


async def _plan(
    base: str, calls: Calls, size: Size, watched: tuple[Child, ...]
) -> tuple[float, list[str]]:
    """The routine period the agent exports and its tenant ids, once the list is in."""

    async def listed() -> bool:
        for child in watched:
            child.check()
        calls.read()
        return calls.first is not None

    await wait_until(listed, 300, "the first tenant probe", every=0.5)
    page = parse_page((await scrape(base)).text)
    periods = [v for _, v in page.get("sophos_central_probe_interval_seconds", [])]
    tenants = sorted({labels["tenant_id"] for labels, _ in page["sophos_central_tenant_info"]})
    if len(tenants) != size.tenants or not periods:
        raise RuntimeError(f"the agent lists {len(tenants)} tenants, period {periods}")
    return max(periods), tenants


async def _admin(sim: Child, path: str, payload: dict[str, Any]) -> None:
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        response = await client.post(sim.announcement["admin_url"] + path, json=payload)
    response.raise_for_status()


async def _inject(sim: Child, clock: WarpClock, kind: str, tenant: str) -> float:
    await _admin(sim, f"/tenants/{tenant}/fault", {"fault": FAULTS[kind]})
    return clock.time()


async def _until_clock(clock: WarpClock, moment: float, watched: tuple[Child, ...]) -> None:
    while (left := moment - clock.time()) > 0:
        for child in watched:
            child.check()
        await asyncio.sleep(min(0.5, left / clock.speed_now()))


async def _fast_phase(
    clock: WarpClock,
    sim: Child,
    calls: Calls,
    size: Size,
    period: float,
    tenants: list[str],
    watched: tuple[Child, ...],
) -> list[Fault]:
    """(a): faults at random moments of the first period after the list, on random tenants;
    the phase lasts two periods and a little, so that every moment of the first has its next
    call (``_schedule_figures``). Each fault is healed as soon as its first failed probe is
    written down: it has then given its figure, and a tenant left failing would keep taking
    re-probes from the routine schedule the other faults are measured against."""
    rng = random.Random(size.seed)
    assert calls.first is not None
    first = calls.first
    kinds = ["5xx", "403"] * size.fast_faults
    rng.shuffle(kinds)
    moments = sorted(rng.uniform(first + 0.2 * period, first + period) for _ in kinds)
    faults: list[Fault] = []
    pending: list[Fault] = []
    used: set[str] = set()
    for moment, kind in zip(moments, kinds, strict=True):
        while clock.time() < moment:
            await _heal_probed(sim, calls, pending, watched)
            await asyncio.sleep(min(0.05, max(0.0, moment - clock.time()) / clock.speed_now()))
        tenant = rng.choice([t for t in tenants if t not in used])
        used.add(tenant)
        calls.read()
        fault = Fault(kind, tenant, await _inject(sim, clock, kind, tenant))
        fault.last_ok_before = calls.last_ok(tenant, fault.injected)
        faults.append(fault)
        pending.append(fault)

    async def all_probed() -> bool:
        await _heal_probed(sim, calls, pending, watched)
        return not pending

    await wait_until(
        all_probed, period / size.fast_speed + 60, "(a) first failed probes", every=0.05
    )
    await _until_clock(clock, first + 2.1 * period, watched)
    calls.read()
    return faults


async def _heal_probed(
    sim: Child, calls: Calls, pending: list[Fault], watched: tuple[Child, ...]
) -> None:
    """Note each pending fault's first failed probe and heal its tenant."""
    for child in watched:
        child.check()
    calls.read()
    for fault in list(pending):
        fault.first_failed = calls.first_failure(fault.tenant, fault.injected, STATUS[fault.kind])
        if fault.first_failed is not None:
            await _admin(sim, f"/tenants/{fault.tenant}/fault", {"fault": None})
            pending.remove(fault)


def _schedule_figures(calls: Calls, size: Size, period: float, faulted: set[str]) -> dict[str, Any]:
    """(a) read off the schedule: for random moments of the first period and random healthy
    tenants, the wait until the tenant's next call; and the gaps between a tenant's calls."""
    assert calls.first is not None
    rng = random.Random(size.seed + 1)
    healthy = sorted(t for t in calls.by_tenant if t not in faulted)
    waits: list[float] = []
    for _ in range(SCHEDULE_SAMPLES):
        tenant = rng.choice(healthy)
        moment = rng.uniform(calls.first + 0.2 * period, calls.first + period)
        following = calls.next_call(tenant, moment)
        if following is None:
            raise RuntimeError(f"tenant {tenant} had no call within a period of {moment}")
        waits.append((following - moment) / period)
    end = calls.first + 2.1 * period
    gaps = [
        (b[0] - a[0]) / period
        for t in healthy
        for a, b in itertools.pairwise([c for c in calls.by_tenant[t] if c[0] < end])
    ]
    waits.sort()
    return {
        "samples": len(waits),
        "over_period_median": statistics.median(waits),
        "over_period_p90": waits[int(0.9 * len(waits))],
        "over_period_max": waits[-1],
        "gap_over_period_median": statistics.median(gaps) if gaps else None,
        "gap_over_period_max": max(gaps) if gaps else None,
        "gaps": len(gaps),
    }


@dataclass(frozen=True)
class Mapping:
    """Prometheus's real time to the agent's clock after the switch: clock = a * real + b."""

    a: float
    b: float

    def clock(self, real: float) -> float:
        return self.a * real + self.b

    @property
    def promql(self) -> str:
        return f"({self.a!r} * time() + {self.b!r})"


_RANGE = re.compile(r"\[(\d+(?:ms|[smhdwy]))\]")
_OFFSET = re.compile(r"offset (\d+(?:ms|[smhdwy]))")


def warp_rules(
    text: str, speed: float, mapping: Mapping, interval: str, day_interval: str | None = None
) -> str:
    """A rule file on the agent's clock: every duration / ``speed``, ``time()`` mapped. With
    ``day_interval``, the recording rules that read a day of samples go to a group of their
    own evaluated that often, as alerts/README.md advises for very many tenants."""

    def scaled(value: str) -> str:
        return format_ms(max(1, round(duration_ms(value) / speed)))

    data = yaml.safe_load(text)
    if day_interval is not None:
        data["groups"] = [
            g for group in data.get("groups", []) for g in _split(group, day_interval)
        ]
    for group in data.get("groups", []):
        group.setdefault("interval", interval)
        for rule in group.get("rules", []):
            expr = _RANGE.sub(lambda m: f"[{scaled(m[1])}]", str(rule["expr"]))
            expr = _OFFSET.sub(lambda m: f"offset {scaled(m[1])}", expr)
            rule["expr"] = expr.replace("time()", mapping.promql)
            if "alert" in rule and "for" in rule:
                rule["for"] = scaled(str(rule["for"]))
    dumped: str = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100_000)
    return dumped


def _split(group: dict[str, Any], day_interval: str) -> list[dict[str, Any]]:
    """The group without its 1-day recording rules, and those in a group of their own."""
    rules = group.get("rules", [])
    day = [r for r in rules if "record" in r and "[1d]" in str(r["expr"])]
    if not day:
        return [group]
    rest = {**group, "rules": [r for r in rules if r not in day]}
    return [rest, {"name": f"{group['name']}.1d", "interval": day_interval, "rules": day}]


def _busiest(times: list[float]) -> dict[str, float]:
    """The busiest window of each length over the allowance, for calls at ``times``."""
    ordered = sorted(times)
    return {
        window: busiest_window(ordered, float(seconds))
        / max(1, int(BUDGET_SHARE * SEED_LIMITS[window]))
        for window, seconds in WINDOWS.items()
    }


async def _switch_and_start_prometheus(
    workdir: Path,
    clock: WarpClock,
    origin: float,
    wall_origin: float,
    size: Size,
    agent: Child,
    sim: Child,
    running: list[Child],
) -> tuple[Child, Mapping, float]:
    """Slow the shared clock down a few seconds from now and start Prometheus on it; returns
    Prometheus, its time on the agent's clock, and the clock time of the switch."""
    at = time.monotonic() + 8.0
    switch_real = at - origin
    mapping = Mapping(
        SLOW_SPEED,
        wall_origin * (1 - SLOW_SPEED) + switch_real * (size.fast_speed - SLOW_SPEED),
    )
    rules = workdir / "rules"
    rules.mkdir(exist_ok=True)
    for source in sorted((ROOT / "alerts").glob("*.rules.yml")):
        text = warp_rules(
            source.read_text(), SLOW_SPEED, mapping, size.eval_real, size.day_rules_real
        )
        (rules / source.name).write_text(text)
    port = free_port()
    config = {
        "global": {
            "scrape_interval": size.scrape_real,
            "scrape_timeout": size.scrape_real,
            "evaluation_interval": size.eval_real,
        },
        "rule_files": [str(rules / "*.rules.yml")],
        "scrape_configs": [
            {
                "job_name": JOB,
                "static_configs": [{"targets": [f"127.0.0.1:{agent.announcement['port']}"]}],
            }
        ],
    }
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    argv = [
        "prometheus",
        f"--config.file={config_path}",
        f"--storage.tsdb.path={workdir / 'prometheus-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    prom = spawn("prometheus", argv, workdir)
    prom.announcement = {"port": port}
    running.append(prom)
    switch_file = workdir / "switch"
    switch_file.write_text(f"{at!r} {SLOW_SPEED!r}\n")
    for child in (sim, agent):
        child.process.send_signal(signal.SIGUSR2)
    clock.switch(at, SLOW_SPEED)

    async def ready() -> bool:
        prom.check()
        try:
            async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
                return (await client.get(f"http://127.0.0.1:{port}/-/ready")).status_code == 200
        except httpx.TransportError:
            return False

    await wait_until(ready, 60, "Prometheus to be ready", every=0.5)
    if time.monotonic() >= at:
        raise RuntimeError("Prometheus started after the clock switch; give it more time")
    await asyncio.sleep(at - time.monotonic() + 3 * duration_ms(size.scrape_real) / 1000 + 1)
    return prom, mapping, wall_origin + clock.elapsed_at(at)


async def _prom_get(prometheus: str, path: str, **params: str) -> Any:
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        response = await client.get(prometheus + path, params=params)
    response.raise_for_status()
    return response.json()["data"]


async def _first_firing(
    prometheus: str, selector: str, start: float, mapping: Mapping, step: float
) -> dict[str, float]:
    """First evaluation at which each matching alert is firing, by tenant id, in clock time."""
    end = time.time()
    data = await _prom_get(
        prometheus,
        "/api/v1/query_range",
        query=f'ALERTS{{alertstate="firing",{selector}}}',
        start=repr(start),
        end=repr(end),
        step=f"{step:.3f}",
    )
    fired: dict[str, float] = {}
    for series in data["result"]:
        key = series["metric"].get("tenant_id", "")
        first = mapping.clock(float(series["values"][0][0]))
        fired[key] = min(first, fired.get(key, first))
    return fired


def _selector(kind: str) -> str:
    scope = ',scope="tenant"' if kind == "403" else ""
    return f'alertname="{ALERTS[kind]}"{scope}'


def _due_next(calls: Calls, clock: WarpClock, used: set[str], count: int) -> list[str]:
    """Tenants whose last probe succeeded, oldest first: the rotation's next ones (the very
    next is skipped: it may be on its way already)."""
    calls.read()
    now = clock.time()
    due = sorted(
        (calls.by_tenant[t][-1][0], t)
        for t in calls.by_tenant
        if t not in used and calls.last_ok(t, now) is not None
    )
    return [t for _, t in due[1 : 1 + count]]


async def _slow_phase(
    clock: WarpClock,
    sim: Child,
    calls: Calls,
    size: Size,
    used: set[str],
    prometheus: str,
    mapping: Mapping,
    watched: tuple[Child, ...],
) -> tuple[list[Fault], list[Fault]]:
    """(b): faults on the tenants due next; first failed probe to the alert firing.

    One fault at a time first (the figure: a single tenant breaking), then all of them at
    once (tenants breaking together share the confirmations' cap)."""
    alone: list[Fault] = []
    for number in range(2 * size.faults):
        kinds = ["5xx" if number % 2 == 0 else "403"]
        since = time.time()
        faults = await _inject_due(clock, sim, calls, kinds, used)
        alone += await _until_paged(calls, size, faults, since, prometheus, mapping, watched)
    kinds = ["5xx" if n % 2 == 0 else "403" for n in range(2 * size.faults)]
    since = time.time()
    faults = await _inject_due(clock, sim, calls, kinds, used)
    together = await _until_paged(calls, size, faults, since, prometheus, mapping, watched)
    return alone, together


async def _inject_due(
    clock: WarpClock, sim: Child, calls: Calls, kinds: list[str], used: set[str]
) -> list[Fault]:
    """Faults of ``kinds`` on the tenants due next, at once. A tenant whose probe got through
    just before its fault did (its next probe is then a period away) is healed and replaced."""
    faults: list[Fault] = []
    while len(faults) < len(kinds):
        wanted = kinds[len(faults) :]
        tenants = _due_next(calls, clock, used, len(wanted))
        used.update(tenants)
        known = {t: len(calls.by_tenant[t]) for t in tenants}
        new = [
            Fault(kind, tenant, await _inject(sim, clock, kind, tenant))
            for kind, tenant in zip(wanted, tenants, strict=True)
        ]
        await asyncio.sleep(0.3)
        calls.read()
        for fault in new:
            after = calls.by_tenant[fault.tenant][known[fault.tenant] :]
            if any(status == 200 for _, status in after):
                await _admin(sim, f"/tenants/{fault.tenant}/fault", {"fault": None})
                continue
            fault.last_ok_before = calls.last_ok(fault.tenant, fault.injected)
            faults.append(fault)
    return faults


async def _until_paged(
    calls: Calls,
    size: Size,
    faults: list[Fault],
    started_real: float,
    prometheus: str,
    mapping: Mapping,
    watched: tuple[Child, ...],
) -> list[Fault]:
    """Wait until each fault's alert fires (read back from Prometheus from ``started_real``,
    just before the faults went in)."""
    step = duration_ms(size.eval_real) / 2000

    async def paged() -> bool:
        for child in watched:
            child.check()
        calls.read()
        for fault in faults:
            fault.first_failed = calls.first_failure(
                fault.tenant, fault.injected, STATUS[fault.kind]
            )
        for kind in {f.kind for f in faults}:
            fired = await _first_firing(prometheus, _selector(kind), started_real, mapping, step)
            for fault in faults:
                if fault.kind == kind and fault.tenant in fired:
                    fault.fired = fired[fault.tenant]
        return all(f.fired is not None for f in faults)

    deadline_real = 90 * 60 / SLOW_SPEED + 30  # 90 minutes of clock time
    try:
        await wait_until(paged, deadline_real, "(b) alerts for every fault", every=0.5)
    except TimeoutError as exc:
        print(f"  e. {exc}", file=sys.stderr, flush=True)
    return faults


async def _outage(
    clock: WarpClock,
    sim: Child,
    agent: Child,
    calls: Calls,
    prometheus: str,
    mapping: Mapping,
    watched: tuple[Child, ...],
    slow: list[Fault],
) -> dict[str, Any]:
    """Every call answers 503: outage (and first failed probe) to SophosCentralApiOutage
    (tenants) firing; the outage goes on for ``OUTAGE_AFTER_PAGE`` more, and the routine probes
    that ran meanwhile are counted."""
    selector = 'alertname="SophosCentralApiOutage",scope="tenants"'
    phase_start = min((f.injected for f in slow), default=clock.time())
    before = await _first_firing(prometheus, selector, time.time() - 600, mapping, 0.5)
    counted = await agent_snapshot(agent)
    await _admin(sim, "/outage", {"on": True})
    started_clock, started_real = clock.time(), time.time()
    result: dict[str, Any] = {"started": started_clock}

    async def paged() -> bool:
        for child in watched:
            child.check()
        calls.read()
        result["first_failed"] = calls.any_failure(started_clock, 503)
        fired = await _first_firing(prometheus, selector, started_real, mapping, 0.1)
        if "" in fired:
            result["fired"] = fired[""]
        return "fired" in result and result["first_failed"] is not None

    try:
        await wait_until(paged, 30 * 60 / SLOW_SPEED + 30, "(b) the outage alert", every=2.0)
    except TimeoutError as exc:
        print(f"  e. {exc}", file=sys.stderr, flush=True)
    await _until_clock(clock, result.get("fired", clock.time()) + OUTAGE_AFTER_PAGE, watched)
    after = await agent_snapshot(agent)
    await _admin(sim, "/outage", {"on": False})
    ended = clock.time()
    result["lasted_seconds"] = ended - started_clock
    result["tenant_calls"] = after["tenant_calls"] - counted["tenant_calls"]
    result["confirmations"] = after["confirmations"] - counted["confirmations"]
    result["routine_probes"] = result["tenant_calls"] - result["confirmations"]
    result["fired_before_outage"] = [t for t in before.values() if t >= phase_start]
    if "fired" in result and result.get("first_failed") is not None:
        result["to_page_seconds"] = result["fired"] - result["first_failed"]
        result["outage_to_page_seconds"] = result["fired"] - started_clock
    return result


def _summary(values: list[float | None]) -> dict[str, float | int | None]:
    known = [v for v in values if v is not None]
    return {
        "count": len(values),
        "measured": len(known),
        "median": statistics.median(known) if known else None,
        "max": max(known) if known else None,
    }


def _by_kind(faults: list[Fault]) -> dict[str, dict[str, float | int | None]]:
    """First failed probe to page per kind of fault, and over all of them."""
    summary = {k: _summary([f.to_page() for f in faults if f.kind == k]) for k in ALERTS}
    summary["all"] = _summary([f.to_page() for f in faults])
    return summary


def _figures(
    size: Size,
    period: float,
    fast: list[Fault],
    slow: list[Fault],
    together: list[Fault],
    outage: dict[str, Any],
    state: dict[str, Any],
    page: dict[str, list[tuple[dict[str, str], float]]],
) -> dict[str, Any]:
    credentials = state["stats"]["credentials"]
    worst = dict.fromkeys(WINDOWS, 0.0)
    limited = 0
    for stats in credentials.values():
        for window in WINDOWS:
            allowance = int(BUDGET_SHARE * SEED_LIMITS[window])
            ratio = stats["max_calls_in_any_window"][window] / max(1, allowance)
            worst[window] = max(worst[window], ratio)
        limited += stats["rate_limited"]
    to_probe = {k: _summary([f.to_probe() for f in fast if f.kind == k]) for k in ALERTS}
    ratios = [p / period for f in fast if (p := f.to_probe()) is not None]
    return {
        "tenants": size.tenants,
        "fast_speed": size.fast_speed,
        "slow_speed": SLOW_SPEED,
        "scrape_interval_clock_seconds": duration_ms(size.scrape_real) / 1000 * SLOW_SPEED,
        "evaluation_interval_clock_seconds": duration_ms(size.eval_real) / 1000 * SLOW_SPEED,
        "probe_interval_seconds": period,
        "probe_interval_at_end": sorted(
            {v for _, v in page.get("sophos_central_probe_interval_seconds", [])}
        ),
        "fault_to_first_failed_probe": {
            **to_probe,
            "all": _summary([f.to_probe() for f in fast]),
            "over_period_median": statistics.median(ratios) if ratios else None,
            "over_period_max": max(ratios) if ratios else None,
        },
        "first_failed_probe_to_page": _by_kind(slow),
        "first_failed_probe_to_page_all_at_once": _by_kind(together),
        "outage": outage,
        "budget_max_in_window_over_allowance": worst,
        "rate_limited": limited,
        "faults_fast": [asdict(f) for f in fast],
        "faults_slow": [asdict(f) for f in slow],
        "faults_all_at_once": [asdict(f) for f in together],
    }
