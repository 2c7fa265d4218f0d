"""a. Budget fidelity: the simulator's own per-window counters judge the agent's rate budget.

Each phase runs the simulator and the agent (``bench.agentproc``, the same ``AgentService`` as
``run``) as two processes talking real HTTP over loopback, with more tenants than the budget
allows, so that the planner stretches the period and the admission control is busy. The agent
spends ``budget_share: 1.0``: its allowance *is* the simulator's limit, so a single call too many
is a 429, and the judge's busiest window is compared with the allowance directly.

Long windows are covered with a fast clock, not by waiting: simulator and agent share a
``WarpClock`` running ``speed`` times real time (an hour in 15 s, a day in 30 s), and the
scheduler runs its jobs at the same speed, while calls still travel over real sockets. Short
windows run at 10x or 5x, where real network delays stay far below the 1 s safety margin. Each
phase gives one window a limit that binds and the others room.

Figures per phase: for every window the busiest window the simulator saw divided by the allowance
(must be <= 1.00) and the 429s (must be 0); for the binding window the calls that arrived while
measuring (after a warm-up) divided by what the allowance permits over that time (>= 0.90: the
budget is used, not wasted).
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    Child,
    WarpClock,
    children,
    parse_page,
    scrape,
    simulator_state,
    spawn,
    start_simulator,
)

WINDOWS = {"1s": 1, "1m": 60, "1h": 3600, "1d": 86400}
PRODUCT_DEFAULTS = {
    "probe_interval": "60s",
    "token_probe_interval": "5m",
    "tenant_refresh_interval": "15m",
    "request_timeout": "10s",
}


@dataclass(frozen=True)
class Phase:
    name: str
    binding: str
    limits: dict[str, int]
    speed: float
    warmup: float  # clock seconds
    measure: float  # clock seconds
    scenario: str = "scale-10k"
    tenants: int | None = 2000

    @property
    def real_seconds(self) -> float:
        return (self.warmup + self.measure) / self.speed


PHASES = (
    Phase(
        "minute binds, 1 partner x 2,000 tenants",
        "1m",
        {"1s": 10, "1m": 100, "1h": 100_000, "1d": 1_000_000},
        speed=10,
        warmup=120,
        measure=480,
    ),
    Phase(
        "hour binds, 1 partner x 2,000 tenants",
        "1h",
        {"1s": 100, "1m": 6_000, "1h": 1_000, "1d": 1_000_000},
        speed=240,
        warmup=3_600,
        measure=3 * 3_600,
    ),
    Phase(
        "day binds, 1 partner x 2,000 tenants",
        "1d",
        {"1s": 1_000, "1m": 60_000, "1h": 1_000_000, "1d": 5_000},
        speed=2_880,
        warmup=43_200,
        measure=2 * 86_400,
    ),
    Phase(
        "minute binds, 20 partners x 500 tenants",
        "1m",
        {"1s": 10, "1m": 100, "1h": 100_000, "1d": 1_000_000},
        speed=5,
        warmup=90,
        measure=240,
        scenario="scale-20x500",
        tenants=None,
    ),
)


async def run(workdir: Path, phases: tuple[Phase, ...] = PHASES) -> list[dict[str, Any]]:
    results = []
    for number, phase in enumerate(phases, start=1):
        phase_dir = workdir / f"fidelity-{number}"
        phase_dir.mkdir(parents=True, exist_ok=True)
        results.append(await _run_phase(phase_dir, phase))
    return results


async def _run_phase(workdir: Path, phase: Phase) -> dict[str, Any]:
    origin, wall_origin = time.monotonic(), time.time()
    clock = WarpClock(phase.speed, origin, wall_origin)
    with children() as running:
        sim = start_simulator(
            workdir,
            phase.scenario,
            phase.limits,
            speed=phase.speed,
            origin=origin,
            wall_origin=wall_origin,
            tenants=phase.tenants,
        )
        running.append(sim)
        agent = _start_agent(workdir, sim, phase, origin, wall_origin)
        running.append(agent)
        await _sleep_clock(clock, phase.warmup, agent, sim)
        before, t1 = await simulator_state(sim), clock.elapsed()
        await _sleep_clock(clock, phase.measure, agent, sim)
        after, t2 = await simulator_state(sim), clock.elapsed()
        page = parse_page((await scrape(f"http://127.0.0.1:{agent.announcement['port']}")).text)
    return _figures(phase, before, after, t2 - t1, page)


def _start_agent(
    workdir: Path, sim: Child, phase: Phase, origin: float, wall_origin: float
) -> Child:
    settings = {**PRODUCT_DEFAULTS, "budget_share": "1.0", "state_file": str(workdir / "state.db")}
    argv = [sys.executable, "-m", "bench.agentproc", "--config"]
    argv.append(sim.announcement["agent_config_path"])
    for key, value in settings.items():
        argv += ["--set", f"{key}={value}"]
    argv += ["--speed", str(phase.speed), "--origin", repr(origin), "--wall-origin"]
    argv.append(repr(wall_origin))
    return spawn("agent", argv, workdir, announce=True)


async def _sleep_clock(clock: WarpClock, seconds: float, *watched: Child) -> None:
    """Wait ``seconds`` of clock time, failing early if a child dies."""
    until = clock.elapsed() + seconds
    while (left := until - clock.elapsed()) > 0:
        for child in watched:
            child.check()
        await asyncio.sleep(min(1.0, left / clock.speed))


def _figures(
    phase: Phase,
    before: dict[str, Any],
    after: dict[str, Any],
    measured: float,
    page: dict[str, list[tuple[dict[str, str], float]]],
) -> dict[str, Any]:
    credentials = after["stats"]["credentials"]
    per_credential = {}
    worst = dict.fromkeys(WINDOWS, 0.0)
    utilisations = []
    limited = 0
    for name, stats in credentials.items():
        used = stats["arrivals"] - before["stats"]["credentials"].get(name, {}).get("arrivals", 0)
        allowed = phase.limits[phase.binding] * measured / WINDOWS[phase.binding]
        ratios = {w: stats["max_calls_in_any_window"][w] / phase.limits[w] for w in WINDOWS}
        for window, ratio in ratios.items():
            worst[window] = max(worst[window], ratio)
        utilisations.append(used / allowed)
        limited += stats["rate_limited"]
        per_credential[name] = {
            "arrivals": stats["arrivals"],
            "rate_limited": stats["rate_limited"],
            "max_in_window_over_allowed": ratios,
            "used_over_allowed": used / allowed,
        }
    plan = {
        "probe_interval_seconds": _values(page, "sophos_central_probe_interval_seconds"),
        "tenant_refresh_interval_seconds": _values(
            page, "sophos_central_tenant_refresh_interval_seconds"
        ),
    }
    return {
        "phase": phase.name,
        "binding_window": phase.binding,
        "clock_speed": phase.speed,
        "limits": phase.limits,
        "budget_share": 1.0,
        "warmup_clock_seconds": phase.warmup,
        "measured_clock_seconds": measured,
        "max_in_window_over_allowed": worst,
        "rate_limited": limited,
        "used_over_allowed_min": min(utilisations),
        "used_over_allowed_mean": sum(utilisations) / len(utilisations),
        "credentials": len(credentials),
        "agent_plan": plan,
        "per_credential": per_credential if len(per_credential) <= 3 else None,
    }


def _values(page: dict[str, list[tuple[dict[str, str], float]]], name: str) -> list[float]:
    return sorted({value for _, value in page.get(name, [])})
