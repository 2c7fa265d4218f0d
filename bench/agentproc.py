"""The agent in its own process, for benchmarks that need what the command line cannot give it.

    python -m bench.agentproc --config agent.yml [--set key=value ...]
        [--speed 240 --origin <monotonic> --wall-origin <epoch>] [--switch-file PATH]
        [--events calls.jsonl]

It runs the same ``AgentService`` as ``sophos-central-exporter run`` (scheduler, rate budget,
state file, HTTP server), optionally on the ``WarpClock`` shared with the simulator. It prints one
JSON line with its port once it serves.

On SIGUSR1 it prints a snapshot line ``{"tenant_probes", "tenant_calls", "confirmations",
"cpu_seconds", "ready"}``: a parent can measure windows of its choosing without scraping (a scrape
would cost the agent CPU). ``tenant_calls`` counts the answered calls of every per-tenant probe,
``confirmations`` the confirmation re-probes the scheduler started: the routine probes of a
window are the difference.

``--events`` writes one JSON line per answered call, credential-level ones included: its clock
time ``t``, when it was sent (``sent``: the clock just after the rate budget admitted it), the
tenant (empty for credential-level calls), the probe and the status.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import signal
import sys
from typing import Any

import yaml

from agent.client import CallRecord
from agent.clock import Clock, SystemClock
from agent.config import load_settings
from agent.logs import setup_logging
from agent.scheduler import ProbeScheduler
from agent.server import AgentService
from bench.common import WarpClock, watch_switch


class TenantProbeCounter:
    """Counts answered tenant probes (an extra observer of every call); with ``events``, also
    writes one JSON line per answered call: clock time, sent, tenant, probe, status."""

    def __init__(self, clock: Clock, events: str | None = None) -> None:
        self.count = 0
        self.tenant_calls = 0
        self._clock = clock
        self._events = None if events is None else open(events, "a", buffering=1)  # noqa: SIM115

    def observe_call(self, record: CallRecord) -> None:
        if record.probe == "tenant":
            self.count += 1
        if record.tenant_id:
            self.tenant_calls += 1
        if self._events is not None:
            line = {
                "t": self._clock.time(),
                "sent": record.started_at,
                "tenant": record.tenant_id,
                "probe": record.probe,
                "status": record.outcome.status_code,
            }
            self._events.write(json.dumps(line) + "\n")


def switch_speed(scheduler: ProbeScheduler, speed: float) -> None:
    """The clock changed speed: the jobs sleep on the clock and follow it; the tick's floor of
    real time moves with it."""
    scheduler.set_speed(speed)


def _value(text: str) -> Any:
    return yaml.safe_load(text)


async def run(args: argparse.Namespace) -> None:
    overrides = dict(item.split("=", 1) for item in args.set)
    settings = load_settings(args.config, **{k: _value(v) for k, v in overrides.items()})
    setup_logging("logfmt", args.log_level)
    clock: Clock = SystemClock()
    speed = 1.0
    if args.origin is not None:
        clock = WarpClock(args.speed, args.origin, args.wall_origin)
        speed = args.speed
    counter = TenantProbeCounter(clock, args.events)
    service = AgentService(
        settings,
        "127.0.0.1:0",
        clock=clock,
        schedule_speed=speed,
        extra_observers=[counter],
        process_metrics=False,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def snapshot() -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        scheduler = service.agent.scheduler
        schedules = [] if scheduler is None else scheduler.schedules
        line = {
            "tenant_probes": counter.count,
            "tenant_calls": counter.tenant_calls,
            "confirmations": sum(s.confirmations.started for s in schedules),
            "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "system_seconds": usage.ru_stime,
            "ready": service.agent.ready,
        }
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()

    loop.add_signal_handler(signal.SIGUSR1, snapshot)
    await service.start()
    if isinstance(clock, WarpClock) and args.switch_file is not None:

        def rescheduled(new_speed: float) -> None:
            if service.agent.scheduler is not None:
                switch_speed(service.agent.scheduler, new_speed)

        watch_switch(clock, args.switch_file, rescheduled)
    try:
        sys.stdout.write(json.dumps({"port": service.port}) + "\n")
        sys.stdout.flush()
        await stop.wait()
    finally:
        await service.stop(grace=1.0)


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.agentproc")
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument("--origin", type=float, default=None)
    parser.add_argument("--wall-origin", type=float, default=None)
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--events", default=None, help="append per-tenant calls here (JSON lines)")
    parser.add_argument("--switch-file", default=None, help="SIGUSR2 switches the clock's speed")
    parser.add_argument("--profile", default=None, help="write cProfile stats here (ad hoc)")
    args = parser.parse_args()
    if args.profile is None:
        asyncio.run(run(args))
        return
    import cProfile

    with cProfile.Profile() as profile:
        asyncio.run(run(args))
    profile.dump_stats(args.profile)


if __name__ == "__main__":
    main()
