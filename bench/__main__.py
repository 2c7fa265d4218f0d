"""Run the benchmarks and print their figures side by side: ``uv run python -m bench``.

    uv run python -m bench                # all four, about 8 minutes on 2 cores
    uv run python -m bench --only b,c     # some of them

a. budget fidelity against the simulator (bench/fidelity.py)
b. /metrics render time at 10,000 tenants against a plain prometheus_client registry (render.py)
c. CPU per probe against prometheus-blackbox-exporter (cpu.py)
d. peak RSS at 10,000 tenants (rss.py)
e. fault to page at 250 and 10,000 tenants with the default budget and real Prometheus
   (faultpage.py; not in the default run: ``--only e``, about 16 minutes)

The results also go to bench/results/latest.json. Each benchmark's module docstring says exactly
what is measured and how.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import cpu, faultpage, fidelity, render, rss
from bench.common import ROOT, machine

RESULTS = ROOT / "bench" / "results" / "latest.json"


class Checks:
    """The targets, checked against the figures."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, bool]] = []

    def at_most(self, what: str, value: float, limit: float) -> None:
        self.rows.append((what, f"{value:.3f} <= {limit}", value <= limit))

    def at_least(self, what: str, value: float, limit: float) -> None:
        self.rows.append((what, f"{value:.3f} >= {limit}", value >= limit))

    def equal(self, what: str, value: float, expected: float) -> None:
        self.rows.append((what, f"{value:g} == {expected:g}", value == expected))

    @property
    def passed(self) -> bool:
        return all(ok for _, _, ok in self.rows)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="a,b,c,d", help="comma-separated: a, b, c, d, e")
    parser.add_argument("--workdir", default=None, help="keep logs and configs here")
    args = parser.parse_args()
    chosen = {part.strip() for part in args.only.split(",") if part.strip()}
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="sophos-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    report: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "uv run python -m bench"
        + ("" if args.only == "a,b,c,d" else f" --only {args.only}"),
        "argv": shlex.join(sys.argv),
        "machine": machine(),
        "load_average_at_start": os.getloadavg(),
    }
    steps: dict[str, tuple[str, Callable[[], Any]]] = {
        "a": ("budget_fidelity", lambda: asyncio.run(fidelity.run(workdir))),
        "b": ("metrics_render", lambda: render.run()),
        "c": ("cpu_per_probe", lambda: asyncio.run(cpu.run(workdir))),
        "d": ("peak_rss", lambda: asyncio.run(rss.run(workdir))),
        "e": ("fault_to_page", lambda: asyncio.run(faultpage.run(workdir))),
    }
    for key in "abcde":
        if key in chosen:
            name, step = steps[key]
            print(f"running {key}. {name.replace('_', ' ')} ...", file=sys.stderr, flush=True)
            step_started = time.monotonic()
            report[name] = step()
            report[name + "_seconds"] = round(time.monotonic() - step_started, 1)
    report["load_average_at_end"] = os.getloadavg()
    report["total_seconds"] = round(time.monotonic() - started, 1)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    checks = Checks()
    print(format_report(report, checks))
    report["checks"] = [{"check": c, "figure": f, "ok": ok} for c, f, ok in checks.rows]
    report["passed"] = checks.passed
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults: {RESULTS.relative_to(ROOT)}   logs: {workdir}")
    return 0 if checks.passed else 1


def format_report(report: dict[str, Any], checks: Checks) -> str:
    m = report["machine"]
    lines = [
        f"sophos-central-exporter benchmarks, {report['when']}",
        f"machine: {m['nproc']} x {m['cpu_model']}, Python {m['python']}, Linux {m['kernel']}; "
        f"load average at start {report['load_average_at_start'][0]:.2f}",
        f"command: {report['command']}   ({report['total_seconds']:.0f} s)",
    ]
    if "budget_fidelity" in report:
        lines += ["", *_fidelity(report["budget_fidelity"], checks)]
    if "metrics_render" in report:
        lines += ["", *_render(report["metrics_render"], checks)]
    if "cpu_per_probe" in report:
        lines += ["", *_cpu(report["cpu_per_probe"], checks)]
    if "peak_rss" in report:
        lines += ["", *_rss(report["peak_rss"], checks)]
    if "fault_to_page" in report:
        lines += ["", *_faultpage(report["fault_to_page"], checks)]
    lines += ["", "targets:"]
    width = max(len(c) for c, _, _ in checks.rows) if checks.rows else 0
    for check, figure, ok in checks.rows:
        lines.append(f"  {'ok  ' if ok else 'FAIL'}  {check.ljust(width)}  {figure}")
    return "\n".join(lines)


def _fidelity(phases: list[dict[str, Any]], checks: Checks) -> list[str]:
    lines = [
        "a. budget fidelity: the simulator's per-window counters are the judge. budget_share 1.0",
        "   (the allowance is the limit, one call too many is a 429); long windows on a shared",
        "   fast clock (speed x real time), real loopback HTTP; used/allowed over the measured",
        "   time after a warm-up, in the binding window.",
        f"   {'phase':<42} {'speed':>6}  max in any window / allowed      429s  used/allowed",
        f"   {'':<42} {'':>6}  {'1s':>6} {'1m':>6} {'1h':>6} {'1d':>6}",
    ]
    for phase in phases:
        worst = phase["max_in_window_over_allowed"]
        used = phase["used_over_allowed_min"]
        lines.append(
            f"   {phase['phase']:<42} {phase['clock_speed']:>5g}x  "
            + " ".join(f"{worst[w]:>6.3f}" for w in ("1s", "1m", "1h", "1d"))
            + f"  {phase['rate_limited']:>5}  {used:.3f} ({phase['binding_window']})"
        )
        short = phase["phase"].split(",")[0]
        for window, ratio in worst.items():
            if window == "1s":  # a clock second is milliseconds of real time here: see README
                continue
            checks.at_most(
                f"a. {short} ({phase['credentials']} cr.): max/allowed {window}", ratio, 1.0
            )
        checks.equal(f"a. {short} ({phase['credentials']} cr.): 429s", phase["rate_limited"], 0)
        checks.at_least(f"a. {short} ({phase['credentials']} cr.): used/allowed", used, 0.90)
    return lines


def _render(r: dict[str, Any], checks: Checks) -> list[str]:
    checks.at_most("b. /metrics render, median (cold), ms", r["agent_render_ms_cold"], 100)
    checks.at_most("b. render / plain prometheus_client", r["ratio_cold_to_plain"], 0.25)
    return [
        f"b. /metrics at {r['tenants']:,} tenants, {r['series']:,} series (same series and values"
        f" in both: {'yes' if r['same_series_as_plain_registry'] else 'NO'}); medians of "
        f"{r['runs']}",
        f"   agent, every result new (cold)  {r['agent_render_ms_cold']:8.1f} ms",
        f"   agent, nothing new (warm)       {r['agent_render_ms_warm']:8.1f} ms",
        f"   plain prometheus_client         {r['plain_generate_latest_ms']:8.1f} ms"
        f"   ratio cold/plain {r['ratio_cold_to_plain']:.3f}, warm/plain "
        f"{r['ratio_warm_to_plain']:.3f}",
        f"   page {r['page_bytes'] / 1e6:.2f} MB, gzip {r['gzip_bytes'] / 1e6:.2f} MB "
        f"({r['gzip_ms']:.0f} ms, level 3 as served)",
    ]


def _cpu(r: dict[str, Any], checks: Checks) -> list[str]:
    if "skipped" in r:
        return [f"c. CPU per probe: skipped ({r['skipped']})"]
    checks.at_most("c. CPU per probe, agent / blackbox", r["ratio_agent_to_blackbox"], 1.0)
    checks.equal("c. failed blackbox probes", r["blackbox_failed_probes"], 0)
    rounds = ", ".join(
        f"{x['agent_cpu_seconds'] / x['blackbox_cpu_seconds']:.2f}" for x in r["rounds"]
    )
    return [
        f"c. CPU per probe, {r['endpoint']} with Authorization + X-Tenant-ID, "
        f"{r['probes_each']:,} probes each, 3 alternating rounds",
        f"   agent (scheduler, {r['tenants']:,} tenants every {r['agent_probe_period']})"
        f"  {r['agent_cpu_ms_per_probe']:.3f} ms",
        f"   {r['blackbox_version'].split(' (')[0]} (/probe, {r['blackbox_concurrency']} at a time)"
        f"  {r['blackbox_cpu_ms_per_probe']:.3f} ms",
        f"   ratio agent/blackbox {r['ratio_agent_to_blackbox']:.3f} (rounds: {rounds}); "
        f"simulator answered {r['simulator_regional_statuses']}",
        *_proxy(r.get("proxy")),
    ]


def _proxy(p: dict[str, Any] | None) -> list[str]:
    if p is None:
        return []
    if "skipped" in p:
        return [f"c. through a proxy: skipped ({p['skipped']})"]

    def per_probe(x: dict[str, Any]) -> float:
        return float(x["cpu_seconds"]) / max(1, int(x["probes"]))

    rounds = ", ".join(
        f"{per_probe(x['proxied']) / per_probe(x['direct']):.2f}" for x in p["rounds"]
    )
    return [
        f"c. the same probe over {p['scheme']}, direct and through {p['proxy']} (CONNECT), "
        f"{p['probes_direct']:,} / {p['probes_proxied']:,} probes, 3 alternating rounds",
        f"   direct  {p['direct_cpu_ms_per_probe']:.3f} ms, through the proxy  "
        f"{p['proxied_cpu_ms_per_probe']:.3f} ms ({p['proxy_connects']} CONNECT tunnels)",
        f"   ratio proxied/direct {p['ratio_proxied_to_direct']:.3f} (rounds: {rounds})",
    ]


def _rss(r: dict[str, Any], checks: Checks) -> list[str]:
    checks.at_most("d. peak RSS at 10,000 tenants, MiB", r["peak_rss_mib"], 150)
    return [
        f"d. peak RSS of `python -m agent run`: {r['tenants_listed']:,} tenants listed, "
        f"{r['tenant_probes']:,} tenant probes (every {r['probe_interval']}), "
        f"{r['scrapes']} scrapes in {r['run_seconds']:.0f} s",
        f"   peak (VmHWM) {r['peak_rss_mib']:.1f} MiB, at the end {r['rss_at_end_mib']:.1f} MiB; "
        f"first full cycle after {r['first_cycle_seconds']:.0f} s",
    ]


def _minutes(seconds: float | None) -> str:
    return "   n/a" if seconds is None else f"{seconds / 60:6.1f}"


def _faultpage(r: dict[str, Any], checks: Checks) -> list[str]:
    if "skipped" in r:
        return [f"e. fault to page: skipped ({r['skipped']})"]
    lines = [
        "e. fault to page, default budget (seed limits, budget_share 0.1, confirm_interval 1m);",
        "   clock minutes. (a) fault -> first failed probe on the fast clock, against the routine",
        "   period; (b) first failed probe -> alert firing in real Prometheus at 60x (rules'",
        "   durations / 60, time() on the agent's clock).",
    ]
    for size in r["sizes"]:
        lines += _faultpage_size(size, checks)
    return lines


def _pair(summary: dict[str, Any]) -> str:
    return (
        f"median {_minutes(summary['median'])} max {_minutes(summary['max'])}"
        f" ({summary['measured']}/{summary['count']})"
    )


def _faultpage_size(size: dict[str, Any], checks: Checks) -> list[str]:
    a, b = size["fault_to_first_failed_probe"], size["first_failed_probe_to_page"]
    c, sched = size["first_failed_probe_to_page_all_at_once"], a["schedule"]
    outage, hours = size["outage"], size["probe_interval_seconds"] / 3600
    worst, sent = (
        size["budget_max_in_window_over_allowance"],
        size["agent_sent_max_in_window_over_allowance"],
    )
    lines = [
        f"   {size['tenants']:>6,} tenants: period {hours:.2f} h"
        f" (fast {size['fast_speed']:g}x; scrape {size['scrape_interval_clock_seconds']:g} s,"
        f" eval {size['evaluation_interval_clock_seconds']:g} s of clock)",
        f"     (a)/period, {a['all']['count']} faults: median {a['over_period_median']:.2f}"
        f" max {a['over_period_max']:.2f} | schedule, {sched['samples']:,} samples: median"
        f" {sched['over_period_median']:.3f} p90 {sched['over_period_p90']:.2f} max"
        f" {sched['over_period_max']:.2f} | gaps/period median"
        f" {sched['gap_over_period_median']:.3f} max {sched['gap_over_period_max']:.3f}",
        f"     (b) one at a time: 5xx {_pair(b['5xx'])} | 403 {_pair(b['403'])}",
        f"     (b) ten at once:   5xx {_pair(c['5xx'])} | 403 {_pair(c['403'])}",
        f"     outage: start -> ApiOutage {_minutes(outage.get('outage_to_page_seconds'))},"
        f" first 503 -> ApiOutage {_minutes(outage.get('to_page_seconds'))}; in"
        f" {_minutes(outage['lasted_seconds']).strip()} min of outage"
        f" {outage['routine_probes']} routine probes (planned"
        f" {outage['planned_routine_probes']:.0f}) and {outage['confirmations']} re-probes",
        "     busiest window / allowance, simulator (whole run) "
        + " ".join(f"{w} {v:.2f}" for w, v in worst.items())
        + f"; 429s {size['rate_limited']}",
        "       as the agent sent them, fast phase "
        + " ".join(f"{w} {v:.2f}" for w, v in sent["fast"].items())
        + "; slow phase "
        + " ".join(f"{w} {v:.2f}" for w, v in sent["slow"].items()),
    ]
    tag = f"e. {size['tenants']:,} tenants:"
    for label, pages in (("one at a time", b["all"]), ("ten at once", c["all"])):
        for stat in ("median", "max"):
            value = pages[stat]
            checks.at_most(
                f"{tag} (b) {label} {stat}, min",
                float("inf") if value is None else value / 60,
                20,
            )
        checks.equal(f"{tag} (b) {label}: faults paged", pages["measured"], pages["count"])
    seconds = outage.get("outage_to_page_seconds")
    checks.at_most(
        f"{tag} (b) outage start to ApiOutage, min",
        float("inf") if seconds is None else seconds / 60,
        10,
    )
    checks.at_most(f"{tag} (a)/period median (schedule)", sched["over_period_median"], 0.55)
    # Judged where the agent's 1 s safety margin outlasts the delay between admitting a call and
    # the simulator counting it: at 60x (17 ms of real time), not on the fast clock (see README).
    for window, ratio in sent["slow"].items():
        if window != "1s":
            checks.at_most(f"{tag} busiest {window} window / allowance, slow phase", ratio, 1.0)
    checks.equal(f"{tag} 429s", size["rate_limited"], 0)
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
