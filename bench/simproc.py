"""The simulator in its own process, for benchmarks: a scenario with the limits asked for.

    python -m bench.simproc --scenario scale-10k --limits '{"1m": 100}' --config-out agent.yml
        [--speed 240 --origin <monotonic> --wall-origin <epoch>] [--tenants 2000]
        [--tls-cert cert.pem --tls-key key.pem] [--switch-file PATH]

Prints one JSON line (URLs, admin URL, credential names) once it listens, writes an agent config
for it (owner-only: it holds the secrets), and serves until SIGTERM. With ``--speed`` the
simulator runs on a ``WarpClock`` shared with the agent: its rate windows and token lifetimes pass
that many times faster than real time. ``--tenants`` trims or builds a one-partner scenario of that
many tenants (from ``scale-10k``'s tenants). ``--tls-cert``/``--tls-key`` serve every host over
HTTPS. ``--switch-file``: on SIGUSR2 the shared clock changes speed (see ``WarpClock.switch``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path

from agent.clock import Clock, SystemClock
from agent.simulator import Simulator, TlsFiles, build_scenario, write_agent_config
from bench.common import WarpClock, watch_switch


async def serve(args: argparse.Namespace) -> None:
    scenario = build_scenario(args.scenario)
    scenario.rate_limits.update({k: int(v) for k, v in json.loads(args.limits).items()})
    if args.tenants is not None:
        for credential in scenario.credentials:
            credential.tenants = credential.tenants[: args.tenants]
    clock: Clock = SystemClock()
    if args.origin is not None:
        clock = WarpClock(args.speed, args.origin, args.wall_origin)
        if args.switch_file is not None:
            watch_switch(clock, args.switch_file)
    tls = None if args.tls_cert is None else TlsFiles(Path(args.tls_cert), Path(args.tls_key))
    sim = Simulator(scenario, host="127.0.0.1", port=0, clock=clock, tls=tls)
    await sim.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        write_agent_config(sim, args.config_out)
        announcement = {
            **sim.announcement(),
            "agent_config_path": args.config_out,
            "tenants": {c.name: len(c.tenants) for c in scenario.credentials},
        }
        sys.stdout.write(json.dumps(announcement) + "\n")
        sys.stdout.flush()
        await stop.wait()
    finally:
        await sim.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.simproc")
    parser.add_argument("--scenario", required=True)
    parser.add_argument("--limits", default="{}")
    parser.add_argument("--config-out", required=True)
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument("--origin", type=float, default=None)
    parser.add_argument("--wall-origin", type=float, default=None)
    parser.add_argument("--tenants", type=int, default=None)
    parser.add_argument("--switch-file", default=None, help="SIGUSR2 switches the clock's speed")
    parser.add_argument("--tls-cert", default=None)
    parser.add_argument("--tls-key", default=None)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
