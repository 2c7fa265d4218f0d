"""The real stack for the end-to-end test: simulator, agent, Prometheus, Alertmanager, a webhook.

Every process runs on 127.0.0.1 with its own temporary directory and log file, and is stopped by
its own id at teardown. The simulator and the agent are this repository's command line
(``python -m agent simulate`` / ``run``); Prometheus, promtool and Alertmanager are the real
binaries. The rule files go through the documented test-time transform
(``tools.shorten_for.scale_for_file``: every ``for:`` divided by 60, order kept) and the
Alertmanager example through ``alertmanager_config_for_test`` (webhook URLs pointed at the test's
receiver, short group timers): see "End-to-end test" in alerts/README.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tests.ports import free_port
from tests.test_alerts import binary
from tools.shorten_for import scale_for_file

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "alerts"
DASHBOARDS = ROOT / "dashboards"
JOB = "sophos-central-exporter"
FOR_SCALE = 60.0
"""Every alert's ``for:`` divided by this: 10m becomes 10s, and 2m still comes before 5m."""

T = TypeVar("T")


# --- small helpers ----------------------------------------------------------------------------


def http_json(url: str, payload: Any = None, *, timeout: float = 5.0) -> Any:
    """GET (or POST ``payload`` as JSON) and decode the JSON answer."""
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body = response.read()
    return json.loads(body) if body else None


def wait_until(
    condition: Callable[[], T | None], within: float, what: str, *, interval: float = 0.25
) -> T:
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` on timeout.

    Connection errors count as "not yet" (a server that is still starting).
    """
    deadline = time.monotonic() + within
    while True:
        value: T | None
        try:
            value = condition()
        except (OSError, urllib.error.URLError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:.0f} s waiting for {what}")
        time.sleep(interval)


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def clean_env() -> dict[str, str]:
    """The environment without SOPHOS_EXPORTER_* settings, which would override the config."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SOPHOS_EXPORTER_")}


# --- the test-time transform of the Alertmanager example -------------------------------------


def alertmanager_config_for_test(
    source: Path,
    webhook_url: str,
    *,
    group_wait: str = "1s",
    group_interval: str = "2s",
    repeat_interval: str = "1h",
) -> dict[str, Any]:
    """The example config with every webhook URL sent to ``{webhook_url}/{receiver name}`` (a
    Slack-format chat text to ``{webhook_url}/{receiver name}/text``), its templates found from
    wherever the copy is written, and every route's ``group_wait``/``group_interval`` shortened
    (``repeat_interval`` set, so a repeat never passes for a new notification). Routes,
    matchers, grouping, inhibition rules and the templates are left exactly as they are: they
    are what the test checks."""
    config: dict[str, Any] = yaml.safe_load(source.read_text(encoding="utf-8"))

    def shorten(route: dict[str, Any]) -> None:
        for key, value in (
            ("group_wait", group_wait),
            ("group_interval", group_interval),
            ("repeat_interval", repeat_interval),
        ):
            if key in route or route is config["route"]:
                route[key] = value
        for child in route.get("routes", []):
            shorten(child)

    shorten(config["route"])
    for receiver in config["receivers"]:
        name = urllib.parse.quote(receiver["name"])
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = f"{webhook_url}/{name}"
        for chat in receiver.get("slack_configs", []):
            chat["api_url"] = f"{webhook_url}/{name}/text"
    config["templates"] = [str(source.parent / t) for t in config.get("templates", [])]
    return config


# --- the webhook receiver ---------------------------------------------------------------------


@dataclass(frozen=True)
class Notification:
    """One POST from Alertmanager: a group of alerts for one receiver."""

    seq: int
    received_at: float
    receiver: str
    path: str
    status: str
    alerts: list[dict[str, Any]]
    text: str = ""
    """A chat text (Slack's format, rendered from the example's templates): title and text."""


class Webhook:
    """An HTTP server on a free loopback port that records every notification it is sent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received: list[Notification] = []
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    payload = json.loads(raw)
                except ValueError:
                    payload = {"receiver": "", "status": "unparseable", "alerts": []}
                webhook._record(self.path, payload)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="webhook", daemon=True
        )

    def _record(self, path: str, payload: dict[str, Any]) -> None:
        with self._lock:
            self._received.append(
                Notification(
                    seq=len(self._received),
                    received_at=time.monotonic(),
                    receiver=str(payload.get("receiver", "")),
                    path=path,
                    status=str(payload.get("status", "")),
                    alerts=list(payload.get("alerts", [])),
                    text="\n".join(
                        f"{a.get('title', '')}\n{a.get('text', '')}"
                        for a in payload.get("attachments", [])
                    ),
                )
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def received(self) -> list[Notification]:
        with self._lock:
            return list(self._received)

    def texts(self, since_seq: int = 0) -> list[str]:
        """The chat texts posted from notification ``since_seq`` on."""
        return [n.text for n in self.received[since_seq:] if n.text]

    def firing(self, since_seq: int = 0) -> list[tuple[str, dict[str, str]]]:
        """(receiver, labels) of every firing alert posted from notification ``since_seq`` on."""
        return [
            (n.receiver, alert["labels"])
            for n in self.received[since_seq:]
            for alert in n.alerts
            if alert.get("status") == "firing"
        ]

    def describe(self) -> str:
        lines = []
        for n in self.received:
            alerts = "; ".join(f"{a.get('status')} {_brief(a.get('labels', {}))}" for a in n.alerts)
            lines.append(f"#{n.seq} {n.receiver} ({n.path}) {n.status}: {alerts}")
        return "\n".join(lines) or "(nothing received)"


def _brief(labels: dict[str, str]) -> str:
    keys = ("alertname", "severity", "credential", "tenant_id", "probe", "scope", "window")
    return "{" + ", ".join(f"{k}={labels[k]}" for k in keys if labels.get(k)) + "}"


# --- processes --------------------------------------------------------------------------------


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    handles: list[Any] = field(repr=False, default_factory=list)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM this process (by its own id), SIGKILL after ``grace`` seconds."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=grace)
        for handle in self.handles:
            handle.close()
        self.handles.clear()


class RealStack:
    """The webhook, simulator, agent, Alertmanager and Prometheus, each started after what it
    talks to; ``close()`` stops every one of them, whatever happened."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.processes: dict[str, Process] = {}
        self.webhook = Webhook()
        self.simulator: dict[str, Any] = {}
        self.agent_port = free_port()
        self.prometheus_url = ""
        self.alertmanager_url = ""
        self.started_at = time.time()

    # --- lifecycle ----------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], *, stdout: Path | None = None) -> Process:
        log = self.workdir / f"{name}.log"
        handles = [log.open("ab")]
        if stdout is not None:
            handles.append(stdout.open("wb"))
        popen = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=handles[-1],
            stderr=handles[0],
        )
        process = Process(name, popen, log, handles)
        self.processes[name] = process
        return process

    def _wait_ready(self, name: str, url: str, within: float = 30.0) -> None:
        process = self.processes[name]

        def ready() -> bool:
            if not process.alive():
                raise AssertionError(
                    f"{name} exited with {process.popen.returncode}:\n{tail(process.log)}"
                )
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)

        wait_until(ready, within, f"{name} to answer 200 on {url}")

    def start_simulator(self, scenario: str, *extra_args: str) -> dict[str, Any]:
        """``python -m agent simulate`` on ephemeral ports; returns its announcement.

        ``extra_args`` go to ``simulate`` as they are (``--drill FILE``)."""
        announce = self.workdir / "simulator.out"
        config = self.workdir / "simulator-agent-config.yml"
        self._spawn(
            "simulator",
            [
                sys.executable, "-m", "agent", "simulate", "--listen", "127.0.0.1:0",
                "--scenario", scenario, "--agent-config", str(config), *extra_args,
            ],
            stdout=announce,
        )  # fmt: skip
        process = self.processes["simulator"]

        def announced() -> dict[str, Any] | None:
            if not process.alive():
                raise AssertionError(f"the simulator exited:\n{tail(process.log)}")
            text = announce.read_text(encoding="utf-8")
            if not text.endswith("\n"):
                return None
            parsed: dict[str, Any] = json.loads(text.splitlines()[0])
            return parsed

        self.simulator = wait_until(announced, 30, "the simulator's announcement line")
        self.simulator["agent_config"] = yaml.safe_load(config.read_text(encoding="utf-8"))
        return self.simulator

    def write_agent_config(self, name: str, config: dict[str, Any]) -> Path:
        path = self.workdir / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            yaml.safe_dump(config, handle, sort_keys=False)
        return path

    def start_agent(self, config: Path) -> None:
        """``python -m agent run`` on the stack's agent port; waits for /healthz.

        Not /readyz: that waits for every credential's first full cycle, which for a credential
        whose probe interval the rate budget stretches to minutes takes minutes."""
        old = self.processes.get("agent")
        if old is not None:
            old.stop()
        self._spawn(
            "agent",
            [
                sys.executable, "-m", "agent", "run", "--config", str(config),
                "--web.listen-address", f"127.0.0.1:{self.agent_port}",
            ],
        )  # fmt: skip
        self._wait_ready("agent", f"http://127.0.0.1:{self.agent_port}/healthz", within=60)

    def start_alertmanager(self) -> None:
        config = alertmanager_config_for_test(ALERTS / "alertmanager.example.yml", self.webhook.url)
        path = self.workdir / "alertmanager.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        port = free_port()
        self._spawn(
            "alertmanager",
            [
                binary("prometheus-alertmanager", "alertmanager"),
                f"--config.file={path}",
                f"--storage.path={self.workdir / 'alertmanager-data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
            ],
        )
        self.alertmanager_url = f"http://127.0.0.1:{port}"
        self._wait_ready("alertmanager", f"{self.alertmanager_url}/-/ready")

    def start_prometheus(self) -> None:
        rules = self.workdir / "rules"
        for source in sorted(ALERTS.glob("*.rules.yml")):
            scale_for_file(source, rules / source.name, FOR_SCALE, interval="1s")
        config = {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "evaluation_interval": "1s",
            },
            "rule_files": [str(rules / "*.rules.yml")],
            "alerting": {
                "alertmanagers": [
                    {"static_configs": [{"targets": [self.alertmanager_url.split("//")[1]]}]}
                ]
            },
            "scrape_configs": [
                {
                    "job_name": JOB,
                    "static_configs": [{"targets": [f"127.0.0.1:{self.agent_port}"]}],
                }
            ],
        }
        path = self.workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        check = subprocess.run(
            [binary("promtool"), "check", "config", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        port = free_port()
        self._spawn(
            "prometheus",
            [
                binary("prometheus"),
                f"--config.file={path}",
                f"--storage.tsdb.path={self.workdir / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
        )
        self.prometheus_url = f"http://127.0.0.1:{port}"
        self._wait_ready("prometheus", f"{self.prometheus_url}/-/ready")

    def close(self) -> None:
        """Stop every process (the agent first, so that it does not probe a dead simulator)."""
        for name in ("prometheus", "alertmanager", "agent", "simulator"):
            process = self.processes.get(name)
            if process is not None:
                with contextlib.suppress(Exception):
                    process.stop()
        with contextlib.suppress(Exception):
            self.webhook.stop()

    # --- the simulator's admin API --------------------------------------------------------------

    def admin(self, path: str, payload: Any) -> Any:
        return http_json(f"{self.simulator['admin_url']}/{path.lstrip('/')}", payload)

    # --- Prometheus and Alertmanager ------------------------------------------------------------

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query; fails unless Prometheus answers status success."""
        url = f"{self.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        answer = _prometheus_answer(url)
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def query_range(self, expr: str, start: float, end: float, step: str = "1s") -> list[Any]:
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": step}
        url = f"{self.prometheus_url}/api/v1/query_range?" + urllib.parse.urlencode(params)
        result: list[Any] = _prometheus_answer(url)["data"]["result"]
        return result

    def prometheus_alerts(self) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = http_json(f"{self.prometheus_url}/api/v1/alerts")["data"][
            "alerts"
        ]
        return alerts

    def firing_in_prometheus(self, **labels: str) -> list[dict[str, Any]]:
        return [
            a
            for a in self.prometheus_alerts()
            if a["state"] == "firing" and all(a["labels"].get(k) == v for k, v in labels.items())
        ]

    def alertmanager_alerts(self) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = http_json(f"{self.alertmanager_url}/api/v2/alerts")
        return alerts

    # --- diagnostics ----------------------------------------------------------------------------

    def diagnostics(self) -> str:
        parts = []
        for process in self.processes.values():
            state = "running" if process.alive() else f"exited {process.popen.returncode}"
            parts.append(f"--- {process.name} ({state}), last lines of {process.log}:")
            parts.append(tail(process.log))
        if not self.prometheus_url or not self.alertmanager_url:
            parts.append("--- Prometheus / Alertmanager not started")
        else:
            parts.extend(self._alert_diagnostics())
        parts.append("--- webhook notifications:")
        parts.append(self.webhook.describe())
        return "\n".join(parts)

    def _alert_diagnostics(self) -> list[str]:
        parts = []
        try:
            alerts = self.prometheus_alerts()
            parts.append("--- Prometheus /api/v1/alerts:")
            parts.extend(f"{a['state']} {_brief(a['labels'])}" for a in alerts)
        except Exception as exc:
            parts.append(f"--- Prometheus /api/v1/alerts unavailable: {exc}")
        try:
            parts.append("--- Alertmanager /api/v2/alerts:")
            parts.extend(
                f"{a['status']['state']} {_brief(a['labels'])}"
                + (" inhibited" if a["status"]["inhibitedBy"] else "")
                for a in self.alertmanager_alerts()
            )
        except Exception as exc:
            parts.append(f"--- Alertmanager /api/v2/alerts unavailable: {exc}")
        return parts

    @contextlib.contextmanager
    def explain_failure(self) -> Iterator[None]:
        """On any failure inside, print the logs, the alerts and the webhook's notifications."""
        try:
            yield
        except BaseException:
            print(self.diagnostics())
            raise


def _prometheus_answer(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            answer: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")
        raise AssertionError(f"Prometheus refused {url}: HTTP {exc.code} {detail}") from None
    assert answer.get("status") == "success", answer
    return answer


# --- dashboards -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DashboardQuery:
    dashboard: str
    panel: str
    ref_id: str
    expr: str
    instant: bool

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.dashboard, self.panel, self.ref_id)

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel} / {self.ref_id}"


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard_queries() -> list[DashboardQuery]:
    """Every panel target of every dashboard under dashboards/."""
    queries = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text(encoding="utf-8"))
        for panel in _panels(board.get("panels", [])):
            for target in panel.get("targets", []):
                if target.get("expr"):
                    queries.append(
                        DashboardQuery(
                            board["uid"],
                            panel["title"],
                            target["refId"],
                            target["expr"],
                            bool(target.get("instant")) and not target.get("range"),
                        )
                    )
    return queries


def dashboard_variable_queries() -> list[tuple[str, str, str]]:
    """(dashboard uid, variable name, ``label_values(...)`` query) of every query variable."""
    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text(encoding="utf-8"))
        for variable in board.get("templating", {}).get("list", []):
            if variable.get("type") == "query":
                query = variable.get("query")
                text = query.get("query") if isinstance(query, dict) else query
                found.append((board["uid"], variable["name"], str(text)))
    return found


_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)(?::\w+)?\}")


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana variables replaced as Grafana would; an unknown one fails the test."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise AssertionError(f"no test value for the Grafana variable ${name} in {expr}")
        return values[name]

    return _VARIABLE.sub(replace, expr)


_LABEL_VALUES = re.compile(r"^label_values\((?:(?P<match>.+),\s*)?(?P<label>\w+)\)$")


def label_values_request(query: str) -> tuple[str, str | None]:
    """``label_values(selector, label)`` as (label, selector) for /api/v1/label/.../values."""
    parsed = _LABEL_VALUES.match(query.strip())
    if parsed is None:
        raise AssertionError(f"not a label_values() query: {query}")
    return parsed["label"], parsed["match"]
