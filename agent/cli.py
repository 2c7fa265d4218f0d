"""The command line: ``run`` (default), ``check``, ``demo``, ``simulate``, ``support-bundle``,
``config check``. Exit codes are part of the interface scripts rely on: 2 means the
configuration is unusable."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import yaml

from agent import __version__
from agent.config import (
    ConfigError,
    Settings,
    api_url_warning,
    group_or_world_readable,
    has_inline_secret,
    load_settings,
)
from agent.expiry import config_note
from agent.logs import REDACTOR, setup_logging
from agent.statefile import StateFileInUse
from agent.views.check import check_json, format_check
from agent.views.report import build_report

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
    _web_config_arg(run)
    run.add_argument("--shard", type=int, default=None)
    run.add_argument("--total-shards", dest="total_shards", type=int, default=None)

    check = sub.add_parser("check", help="run one probe cycle now and print a report")
    _config_arg(check)
    check.add_argument(
        "--output",
        choices=("table", "json"),
        default="table",
        help="table for people (default), json for scripts",
    )
    check.add_argument(
        "--failures-only",
        action="store_true",
        help="leave healthy probes out of the table",
    )

    demo = sub.add_parser("demo", help="the agent against the built-in simulator")
    demo.add_argument("--web.listen-address", dest="listen", default=DEMO_LISTEN)
    demo.add_argument("--scenario", default="demo")
    demo.add_argument(
        "--tls",
        action="store_true",
        help="serve the simulator over HTTPS (the agent trusts its CA)",
    )

    simulate = sub.add_parser("simulate", help="run the Sophos Central simulator alone")
    simulate.add_argument("--listen", default=f"127.0.0.1:{DEMO_SIMULATOR_PORT}")
    simulate.add_argument("--scenario", default="demo")
    simulate.add_argument(
        "--agent-config",
        default=None,
        help="also write a ready exporter config (with the simulator's own secrets) to this file",
    )
    simulate.add_argument(
        "--tls",
        action="store_true",
        help="serve every host over HTTPS with a certificate from a CA made at start-up",
    )
    simulate.add_argument(
        "--tls-dir",
        default=None,
        help="with --tls: write the CA and certificate here (default: a temporary directory)",
    )
    simulate.add_argument(
        "--drill", default=None, help="YAML file of faults to inject on a schedule"
    )

    bundle = sub.add_parser("support-bundle", help="write the evidence for a 5XX support case")
    _config_arg(bundle)
    bundle.add_argument("--out", default=None, help="file to write (default: standard output)")
    bundle.add_argument("--format", choices=("md", "json"), default="md")

    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    config_check = config_sub.add_parser(
        "check", help="validate and print the effective config (and a web config file)"
    )
    _config_arg(config_check)
    _web_config_arg(config_check)
    return parser


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        "--config.file",
        dest="config",
        default=None,
        help="YAML configuration file (keys may also come from SOPHOS_EXPORTER_*)",
    )


def _web_config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--web.config.file",
        dest="web_config",
        default=None,
        help="exporter-toolkit web configuration: TLS, basic auth, headers (docs/web-config.md)",
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


def warn_api_url(settings: Settings) -> None:
    """At start-up and in ``check``: a data-region api_url would read as a Sophos outage."""
    warning = api_url_warning(settings)
    if warning is not None:
        log.warning(warning, extra={"key": "api_url"})


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
    warn_api_url(settings)
    listen = args.listen or settings.web_listen_address
    web_config = None
    if args.web_config:
        from agent.web.loading import load_web_config

        try:
            web_config = load_web_config(args.web_config)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    try:
        asyncio.run(serve_agent(settings, listen, web_config))
    except StateFileInUse as exc:  # a second agent on the same state file and shard
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
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
    warn_api_url(settings)
    logging.getLogger().setLevel(logging.ERROR)  # the table says it all; no per-probe warnings
    return asyncio.run(run_check(settings, sys.stdout, args.output, args.failures_only))


async def run_check(
    settings: Settings, out: TextIO, output: str = "table", failures_only: bool = False
) -> int:
    """One probe cycle now; the report as a table (or JSON); exit 1 if any probe failed."""
    from agent.runtime import Agent

    agent = Agent(settings, process_metrics=False)
    try:
        await agent.run_cycle()
    finally:
        await agent.stop(grace=0)
    report = build_report(agent.snapshot())
    text = check_json(report) if output == "json" else format_check(report, failures_only)
    out.write(REDACTOR(text))
    return EXIT_FAILED if any(row.kind != "ok" for row in report.rows()) else EXIT_OK


# -- config check ------------------------------------------------------------------------------


def cmd_config_check(args: argparse.Namespace) -> int:
    """Validate the config file (unless only a web config file is given) and the web config file.

    Both are checked before the exit code is decided, so one run reports the mistakes of both.
    """
    code = EXIT_OK
    if args.config is not None or args.web_config is None:
        code = _check_agent_config(args)
    if args.web_config is not None:
        code = max(code, _check_web_config(args.web_config))
    return code


def _check_agent_config(args: argparse.Namespace) -> int:
    settings = load_or_exit(args)
    if settings is None:
        return EXIT_CONFIG
    warning = api_url_warning(settings)
    if warning is not None:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"configuration OK{f' ({args.config})' if args.config else ''}")
    now = time.time()
    for credential in settings.credentials:  # as YAML comments: the output still loads
        print(f"# {config_note(credential.name, credential.expiry, now)}")
    print(yaml.safe_dump(settings.masked(), sort_keys=False, allow_unicode=True), end="")
    return EXIT_OK


def _check_web_config(path: str) -> int:
    """Like ``promtool check web-config``: the file loads, the certificates and keys with it."""
    from agent.web.loading import load_web_config
    from agent.web.schema import describe_web_config

    try:
        web_config = load_web_config(path)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"web configuration OK ({path}): {describe_web_config(web_config)}")
    return EXIT_OK


# -- simulator and demo ------------------------------------------------------------------------


def cmd_simulate(args: argparse.Namespace) -> int:
    from agent.server import parse_listen_address
    from agent.simulator import SCENARIO_NAMES, DrillError, serve

    if args.scenario not in SCENARIO_NAMES:
        print(
            f"error: unknown scenario {args.scenario!r}; one of: {', '.join(SCENARIO_NAMES)}",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    setup_logging("logfmt", "info")
    host, port = parse_listen_address(args.listen)
    if args.tls_dir and not args.tls:
        print("error: --tls-dir needs --tls", file=sys.stderr)
        return EXIT_CONFIG
    running = serve(
        args.scenario,
        host,
        port,
        agent_config_path=args.agent_config,
        tls=args.tls,
        tls_dir=args.tls_dir,
        drill_path=args.drill,
    )
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_until_signal(running))
    except DrillError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
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
        return asyncio.run(run_demo(args.listen, args.scenario, tls=args.tls))
    return EXIT_OK


async def run_demo(
    listen: str, scenario: str, stop: asyncio.Event | None = None, *, tls: bool = False
) -> int:
    """The agent against the built-in simulator, from a temporary folder removed on the way out.

    The folder holds the simulator's credentials and the agent's state file: both are throwaway,
    and a demo that leaves secrets behind in /tmp would teach the wrong habit.
    """
    from agent.simulator import Simulator, build_scenario, make_tls

    workdir = Path(tempfile.mkdtemp(prefix="sophos-central-exporter-demo-"))
    files = make_tls(workdir / "tls") if tls else None
    sim = Simulator(build_scenario(scenario), host="127.0.0.1", port=0, tls=files)
    try:
        await sim.start()
        host, _, port = listen.rpartition(":")
        config = {
            **sim.agent_config(),
            "state_file": str(workdir / "state.db"),
            "external_url": f"http://{host or '127.0.0.1'}:{port}",  # the alerts' links
        }
        config_path = workdir / "config.yml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        config_path.chmod(0o600)
        settings = load_settings(config_path)
        started = asyncio.Event()
        runner = asyncio.create_task(serve_agent(settings, listen, None, started, stop))
        await asyncio.wait(
            {runner, asyncio.create_task(started.wait())}, return_when=asyncio.FIRST_COMPLETED
        )
        if runner.done():
            runner.result()
        _print_demo_banner(
            listen, sim.api_url, config_path, None if files is None else files.ca_file
        )
        await runner
    finally:
        await sim.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return EXIT_OK


def own_command() -> str:
    """How to run this very program from any shell: an absolute path, so it works when pasted.

    The demo runs inside the project's virtual environment, whose ``bin`` is not on a fresh
    shell's PATH; the bare program name would be "command not found" there.
    """
    script = Path(sys.executable).parent / "sophos-central-exporter"
    if script.is_file():
        return shlex.quote(str(script))
    return f"{shlex.quote(sys.executable)} -m agent"


def _print_demo_banner(
    listen: str, simulator_url: str, config_path: Path, ca_file: Path | None = None
) -> None:
    host, _, port = listen.rpartition(":")
    base = f"http://{host or '127.0.0.1'}:{port}"
    trust = "" if ca_file is None else f"  simulator CA: {ca_file} (the config's ca_bundle)\n"
    print(
        "\nsophos-central-exporter demo: the agent is probing the built-in Sophos Central "
        "simulator.\n"
        f"  metrics:      {base}/metrics\n"
        f"  status page:  {base}/status\n"
        f"  support:      {base}/support\n"
        f"  readiness:    {base}/readyz\n"
        f"  simulator:    {simulator_url}\n"
        f"{trust}"
        f"  config used:  {config_path} (removed when the demo stops)\n"
        "The simulator grants far larger rate limits than Sophos Central does, so the demo can\n"
        "probe each tenant about every half minute and every kind of failure shows within a\n"
        "minute or two (the first full cycle over all tenants takes about a minute). With real\n"
        "credentials, Sophos's limits stretch the period to fit your tenants: the status page\n"
        "says the period in force, and the README has a table to size the budget with.\n"
        f"Try, in another shell: {own_command()} check --config {shlex.quote(str(config_path))}\n"
        "Press Ctrl-C to stop.\n",
        flush=True,
    )


# -- support bundle ----------------------------------------------------------------------------


def cmd_support_bundle(args: argparse.Namespace) -> int:
    """0 written, 1 no evidence yet (nothing written), 2 bad config.

    Reads only the state file, so it works while the agent runs and after it stopped. Evidence
    of a credential or probe no longer configured, or of a tenant the agent saw leave the list,
    is written as history.
    """
    settings = load_or_exit(args)
    if settings is None:
        return EXIT_CONFIG
    from agent.evidence import load_evidence
    from agent.secrets import register as register_secrets
    from agent.statefile import StateFile
    from agent.views.support import render_json, render_markdown

    path = Path(settings.state_file)
    if not path.exists():
        print(f"no evidence yet: state file {path} does not exist", file=sys.stderr)
        return EXIT_FAILED
    probes = tuple(family.name for family in settings.families)
    configured = {credential.name: probes for credential in settings.credentials}
    store = StateFile(path)
    try:
        items = load_evidence(store, configured)
    finally:
        store.close()
    if not items:
        print(f"no evidence yet: no 5XX answers recorded in {path}", file=sys.stderr)
        return EXIT_FAILED
    register_secrets(settings)  # the evidence is stored redacted; the bundle passes once more
    text = REDACTOR(render_json(items) if args.format == "json" else render_markdown(items))
    if args.out is None:
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {len(items)} evidence item(s) to {args.out}", file=sys.stderr)
    return EXIT_OK
