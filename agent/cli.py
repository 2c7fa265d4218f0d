"""The command line: ``run`` (default), ``check``, ``demo``, ``simulate``, ``support-bundle``,
``config check``. Exit codes are part of the contract: 2 means the configuration is unusable."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import yaml

from agent import __version__
from agent.config import (
    ConfigError,
    Settings,
    group_or_world_readable,
    has_inline_secret,
    load_settings,
)
from agent.logs import REDACTOR, setup_logging

log = logging.getLogger("agent")

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
COMMANDS = ("run", "check", "demo", "simulate", "support-bundle", "config")
DEMO_LISTEN = "127.0.0.1:9866"
DEMO_SIMULATOR_PORT = 9867


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sophos-central-exporter",
        description="Probe the Sophos Central API per credential and tenant; export metrics.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command")

    run = sub.add_parser("run", help="run the agent (default)")
    _config_arg(run)
    run.add_argument("--web.listen-address", dest="listen", default=None, help="default :9866")
    run.add_argument("--web.config.file", dest="web_config", default=None)
    run.add_argument("--shard", type=int, default=None)
    run.add_argument("--total-shards", dest="total_shards", type=int, default=None)

    check = sub.add_parser("check", help="run one probe cycle now and print a table")
    _config_arg(check)

    demo = sub.add_parser("demo", help="the agent against the built-in simulator")
    demo.add_argument("--web.listen-address", dest="listen", default=DEMO_LISTEN)
    demo.add_argument("--scenario", default="demo")

    simulate = sub.add_parser("simulate", help="run the Sophos Central simulator alone")
    simulate.add_argument("--listen", default=f"127.0.0.1:{DEMO_SIMULATOR_PORT}")
    simulate.add_argument("--scenario", default="demo")
    simulate.add_argument(
        "--agent-config",
        default=None,
        help="also write a ready exporter config (with the simulator's own secrets) to this file",
    )

    bundle = sub.add_parser("support-bundle", help="write the evidence for a 5XX support case")
    _config_arg(bundle)
    bundle.add_argument("--out", default=None, help="file to write (default: standard output)")
    bundle.add_argument("--format", choices=("md", "json"), default="md")

    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    config_check = config_sub.add_parser("check", help="validate and print the effective config")
    _config_arg(config_check)
    return parser


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        "--config.file",
        dest="config",
        default=None,
        help="YAML configuration file (keys may also come from SOPHOS_EXPORTER_*)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or (
        args_list[0] not in COMMANDS and args_list[0] not in ("-h", "--help", "--version")
    ):
        args_list.insert(0, "run")
    args = build_parser().parse_args(args_list)
    handlers = {
        "run": cmd_run,
        "check": cmd_check,
        "demo": cmd_demo,
        "simulate": cmd_simulate,
        "support-bundle": cmd_support_bundle,
        "config": cmd_config_check,
    }
    return handlers[args.command](args)


def load_or_exit(args: argparse.Namespace, **overrides: Any) -> Settings | None:
    """The settings, or None after printing the configuration error (the caller exits 2)."""
    try:
        return load_settings(args.config, **overrides)
    except ConfigError as exc:
        print(f"error: {REDACTOR(str(exc))}", file=sys.stderr)
        return None


def warn_readable_secret(path: str | None, settings: Settings) -> None:
    if path and has_inline_secret(settings) and group_or_world_readable(path):
        log.warning(
            "config file holds an inline client_secret and is readable by other users; "
            "chmod 600 it or use client_secret_file",
            extra={"path": path},
        )


# -- run ---------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    settings = load_or_exit(args)
    if settings is None:
        return EXIT_CONFIG
    try:
        settings = apply_shard_flags(settings, args.shard, args.total_shards)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(settings.log_format, settings.log_level)
    warn_readable_secret(args.config, settings)
    listen = args.listen or settings.web_listen_address
    web_config = None
    if args.web_config:
        from agent.webconfig import WebConfigError, load_web_config

        try:
            web_config = load_web_config(args.web_config)
        except WebConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    try:
        asyncio.run(serve_agent(settings, listen, web_config))
    except OSError as exc:
        print(f"error: cannot serve on {listen}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def apply_shard_flags(settings: Settings, shard: int | None, total_shards: int | None) -> Settings:
    """``--shard``/``--total-shards`` over the config keys and ``SOPHOS_EXPORTER_SHARD``.

    Flags win over the environment and the file, as in every Prometheus exporter. They are
    applied after loading because the settings loader lets the environment win over values
    passed in, which would make ``--shard 2`` lose to a stray ``SOPHOS_EXPORTER_SHARD=0``.
    """
    if shard is None and total_shards is None:
        return settings
    shard = settings.shard if shard is None else shard
    total = settings.total_shards if total_shards is None else total_shards
    if total < 1:
        raise ConfigError(f"--total-shards: must be at least 1 (got {total})")
    if not 0 <= shard < total:
        raise ConfigError(
            f"--shard: must be between 0 and total_shards - 1 ({total - 1}), got {shard}"
        )
    return settings.model_copy(update={"shard": shard, "total_shards": total})


async def serve_agent(
    settings: Settings,
    listen: str,
    web_config: Any = None,
    started: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run agent and HTTP server until SIGTERM/SIGINT (or ``stop``), then shut down cleanly."""
    from agent.server import AgentService

    service = AgentService(settings, listen, web_config)
    stop = stop or asyncio.Event()
    _install_signal_handlers(stop)
    try:
        await service.start()
    except SystemExit:  # uvicorn exits when it cannot bind
        raise OSError(f"cannot listen on {listen}") from None
    log.info("listening", extra={"address": listen, "version": __version__})
    if started is not None:
        started.set()
    try:
        await _wait_either(stop, service.serving)
    finally:
        log.info("shutting down")
        await service.stop(grace=2.0)


async def _wait_either(stop: asyncio.Event, serving: asyncio.Task[None]) -> None:
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait({waiter, serving}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()


def _install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)


# -- check -------------------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    settings = load_or_exit(args)
    if settings is None:
        return EXIT_CONFIG
    setup_logging(settings.log_format, "warning")
    warn_readable_secret(args.config, settings)
    logging.getLogger().setLevel(logging.ERROR)  # the table says it all; no per-probe warnings
    return asyncio.run(run_check(settings, sys.stdout))


async def run_check(settings: Settings, out: TextIO) -> int:
    from agent.runtime import Agent

    agent = Agent(settings, process_metrics=False)
    try:
        results = await agent.run_cycle()
    finally:
        await agent.stop(grace=0)
    names = {t.id: t.name for p in agent.probers for t in p.state.tenants.values()}
    rows = [
        (
            r.credential,
            names.get(r.tenant_id, "") if r.tenant_id else "-",
            r.tenant_id or "-",
            r.probe,
            str(r.status_code),
            r.error_code or "-",
            r.cause,
            "-" if r.success else r.remedy,
        )
        for r in results
    ]
    header = ("CREDENTIAL", "TENANT", "TENANT ID", "PROBE", "STATUS", "ERROR CODE", "CAUSE", "HINT")
    out.write(REDACTOR(format_table(header, rows)))
    failed = [r for r in results if not r.success]
    out.write("\n")
    for prober in agent.probers:
        out.write(f"{prober.name}: tenants probed {agent.explain_period(prober.name)}\n")
    out.write(f"{len(results)} probes, {len(failed)} failed\n")
    return EXIT_FAILED if failed else EXIT_OK


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to width; the last column (the hint) is left to run on."""
    widths = [len(h) for h in header]
    for row in rows:
        for i, cell in enumerate(row[:-1]):
            widths[i] = min(max(widths[i], len(cell)), 48)
    lines = []
    for row in (header, *rows):
        cells = [cell[:48].ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines) + "\n"


# -- config check ------------------------------------------------------------------------------


def cmd_config_check(args: argparse.Namespace) -> int:
    settings = load_or_exit(args)
    if settings is None:
        return EXIT_CONFIG
    print(f"configuration OK{f' ({args.config})' if args.config else ''}")
    print(yaml.safe_dump(settings.masked(), sort_keys=False, allow_unicode=True), end="")
    return EXIT_OK


# -- simulator and demo ------------------------------------------------------------------------


def cmd_simulate(args: argparse.Namespace) -> int:
    from agent.server import parse_listen_address
    from agent.simulator import SCENARIO_NAMES, serve

    if args.scenario not in SCENARIO_NAMES:
        print(
            f"error: unknown scenario {args.scenario!r}; one of: {', '.join(SCENARIO_NAMES)}",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    setup_logging("logfmt", "info")
    host, port = parse_listen_address(args.listen)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            _until_signal(serve(args.scenario, host, port, agent_config_path=args.agent_config))
        )
    return EXIT_OK


async def _until_signal(coro: Any) -> None:
    stop = asyncio.Event()
    _install_signal_handlers(stop)
    task = asyncio.create_task(coro)
    await _wait_either(stop, task)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def cmd_demo(args: argparse.Namespace) -> int:
    setup_logging("logfmt", "warning")
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run_demo(args.listen, args.scenario))
    return EXIT_OK


async def run_demo(listen: str, scenario: str, stop: asyncio.Event | None = None) -> int:
    from agent.simulator import Simulator, build_scenario

    sim = Simulator(build_scenario(scenario), host="127.0.0.1", port=0)
    await sim.start()
    workdir = Path(tempfile.mkdtemp(prefix="sophos-central-exporter-demo-"))
    config = {**sim.agent_config(), "state_file": str(workdir / "state.db")}
    config_path = workdir / "config.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    config_path.chmod(0o600)
    settings = load_settings(config_path)
    started = asyncio.Event()
    try:
        runner = asyncio.create_task(serve_agent(settings, listen, None, started, stop))
        await asyncio.wait(
            {runner, asyncio.create_task(started.wait())}, return_when=asyncio.FIRST_COMPLETED
        )
        if runner.done():
            runner.result()
        _print_demo_banner(listen, sim.api_url, config_path)
        await runner
    finally:
        await sim.stop()
    return EXIT_OK


def _print_demo_banner(listen: str, simulator_url: str, config_path: Path) -> None:
    host, _, port = listen.rpartition(":")
    base = f"http://{host or '127.0.0.1'}:{port}"
    print(
        "\nsophos-central-exporter demo: the agent is probing the built-in Sophos Central "
        "simulator.\n"
        f"  metrics:      {base}/metrics\n"
        f"  status page:  {base}/status\n"
        f"  support:      {base}/support\n"
        f"  readiness:    {base}/readyz\n"
        f"  simulator:    {simulator_url}\n"
        f"  config used:  {config_path}\n"
        "Try: sophos-central-exporter check --config " + str(config_path) + "\n"
        "Press Ctrl-C to stop.\n",
        flush=True,
    )


# -- support bundle ----------------------------------------------------------------------------


def cmd_support_bundle(args: argparse.Namespace) -> int:
    settings = load_or_exit(args)
    if settings is None:
        return EXIT_CONFIG
    from agent.evidence import write_support_bundle

    return write_support_bundle(settings, args.out, args.format)
