"""Floods on the metrics port, against the real agent process: what a hostile or broken client
does to ``/healthz``, to the probes and to the log.

    uv run python -m bench.flood                     # every attack, this checkout
    uv run python -m bench.flood --only slowloris    # one attack
    uv run python -m bench.flood --source DIR        # another checkout (a baseline)

Each attack starts its own simulator (``bench.simproc``, generous limits) and its own agent
(``python -m agent run`` of ``--source``) with a low ``RLIMIT_NOFILE`` (256, soft and hard), so
that the descriptor limit is reached with a few hundred connections. The attacks:

- ``burst``: 500 clients ask for ``/metrics`` (gzip), ``/status`` and ``/support`` as fast as
  they are answered, for 8 s, from an agent probing 1,000 tenants (with 1,024 descriptors, the
  usual default soft limit);
- ``slowloris``: 300 connections send a request line and one header byte every 2 s, never
  finishing the head; how many are still open after 15 s;
- ``idle``: 400 connections that send nothing (more than the agent's 256 descriptors);
- ``password``: with basic auth (bcrypt cost 10), 128 connections send wrong passwords as fast
  as they are answered, from 127.0.0.2; one valid login, never seen before, from 127.0.0.1.

During each one, ``/healthz`` is asked every 0.25 s over a fresh connection (its latency, or a
failure after 5 s), and afterwards the transport failures of the agent's own probes (calls with
status ``0``: ``timeout``, ``connect_error``, ...) are read from ``/metrics`` and the agent's log
lines per second are counted. Tests (``tests/e2e/test_floods.py``) assert on the same figures.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import re
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
GENEROUS_LIMITS = {"1s": 1000, "1m": 60_000, "1h": 10_000_000, "1d": 100_000_000}
CHILD_NOFILE = 256
BURST_TENANTS = 1000
PASSWORD = "flood-test-password"
HEALTHZ_EVERY = 0.25
HEALTHZ_TIMEOUT = 5.0


def raise_own_nofile() -> None:
    """The attacker (this process) needs more descriptors than the agent it attacks."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class AgentProc:
    """A running ``python -m agent run`` with its log in a file."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    sim: subprocess.Popen[bytes]

    def log_lines(self) -> list[str]:
        return self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()


def _prepare(workdir: Path) -> Any:
    workdir.mkdir(parents=True, exist_ok=True)
    return (workdir / "sim.log").open("wb")


def _spawn(argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, **kwargs)


def _limit_nofile(n: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))

    return apply


@contextlib.asynccontextmanager
async def running_agent(
    workdir: Path,
    source: Path = ROOT,
    nofile: int = CHILD_NOFILE,
    web_config: str | None = None,
    tenants: int | None = None,
    **overrides: Any,
) -> AsyncIterator[AgentProc]:
    """Simulator and agent as child processes of ``source``; yields once ``/readyz`` is 200."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(source)}
    config_path = workdir / "agent.yml"
    sim_log = _prepare(workdir)
    sim = _spawn(
        [
            sys.executable,
            "-m",
            "bench.simproc",
            "--scenario",
            "healthy" if tenants is None else "scale-10k",
            *(() if tenants is None else ("--tenants", str(tenants))),
            "--limits",
            json.dumps(GENEROUS_LIMITS),
            "--config-out",
            str(config_path),
        ],
        stdout=subprocess.PIPE,
        stderr=sim_log,
        cwd=source,
        env=env,
    )
    agent: subprocess.Popen[bytes] | None = None
    try:
        assert sim.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(sim.stdout.readline), 30)
        if not line:
            raise RuntimeError("the simulator did not start: " + (workdir / "sim.log").read_text())
        config = yaml.safe_load(config_path.read_text())
        config.update(
            {
                "state_file": str(workdir / "state.db"),
                "probe_interval": "2s",
                "budget_share": 1.0,
                "request_timeout": "5s",
                **overrides,
            }
        )
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        config_path.chmod(0o600)
        port = _free_port()
        argv = [sys.executable, "-m", "agent", "run", "--config", str(config_path)]
        argv += ["--web.listen-address", f"127.0.0.1:{port}"]
        if web_config is not None:
            web_path = workdir / "web.yml"
            web_path.write_text(web_config)
            argv += ["--web.config.file", str(web_path)]
        log_path = workdir / "agent.log"
        with log_path.open("wb") as log:
            agent = _spawn(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=workdir,
                env=env,
                preexec_fn=_limit_nofile(nofile),
            )
        proc = AgentProc(agent, port, log_path, sim)
        await wait_ready(proc, web_config is not None)
        yield proc
    finally:
        for child in (agent, sim):
            if child is not None and child.poll() is None:
                child.terminate()
                try:
                    await asyncio.wait_for(asyncio.to_thread(child.wait), 10)
                except TimeoutError:
                    child.kill()
        sim_log.close()


async def wait_ready(proc: AgentProc, with_auth: bool, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    headers = basic_auth_header("prometheus", PASSWORD) if with_auth else b""
    while time.monotonic() < deadline:
        if proc.process.poll() is not None:
            raise RuntimeError("the agent exited:\n" + "\n".join(proc.log_lines()[-40:]))
        answer = await http_get(proc.port, "/readyz", headers, within=5)
        if answer is not None and answer[0] == 200:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the agent was not ready within {within} s")


def basic_auth_header(user: str, password: str) -> bytes:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return f"Authorization: Basic {token}\r\n".encode()


async def http_get(
    port: int,
    path: str,
    headers: bytes = b"",
    within: float = HEALTHZ_TIMEOUT,
    source: str | None = None,
) -> tuple[int, bytes] | None:
    """One request over a fresh connection: (status, body), or None when it failed in time."""
    writer = None
    try:
        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, local_addr=(source, 0) if source else None
            )
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n".encode()
                + headers
                + b"\r\n"
            )
            await writer.drain()
            data = await reader.read()
    except (OSError, TimeoutError):
        return None
    finally:
        if writer is not None:
            writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", head)
    return (int(match.group(1)), body) if match else None


@dataclass
class HealthzWatch:
    """``/healthz`` asked every ``HEALTHZ_EVERY`` s: latencies of answers and failures."""

    started: float = 0.0
    latencies: list[float] = field(default_factory=list)
    failures: int = 0
    failed_at: list[float] = field(default_factory=list)

    @property
    def worst(self) -> float:
        return max(self.latencies, default=float("inf")) if not self.failures else float("inf")

    def summary(self) -> dict[str, Any]:
        return {
            "healthz_asked": len(self.latencies) + self.failures,
            "healthz_failed": self.failures,
            "healthz_failed_at_s": self.failed_at,
            "healthz_median_s": round(statistics.median(self.latencies), 4)
            if self.latencies
            else None,
            "healthz_max_s": round(max(self.latencies), 4) if self.latencies else None,
        }


@contextlib.asynccontextmanager
async def watching_healthz(port: int, headers: bytes = b"") -> AsyncIterator[HealthzWatch]:
    """``/healthz`` from a thread of its own, with blocking sockets: the attacker's event loop
    (busy opening hundreds of connections) must not delay the request it measures."""
    watch = HealthzWatch(started=time.monotonic())
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            started = time.monotonic()
            status = blocking_get(port, "/healthz", headers)
            took = time.monotonic() - started
            if status == 200:
                watch.latencies.append(took)
            else:
                watch.failures += 1
                watch.failed_at.append(round(started - watch.started, 2))
            stop.wait(max(0.0, HEALTHZ_EVERY - took))

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield watch
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, HEALTHZ_TIMEOUT + 1)


def blocking_get(port: int, path: str, headers: bytes = b"") -> int | None:
    """The status of one request over a fresh blocking connection, None if it failed in time."""
    deadline = time.monotonic() + HEALTHZ_TIMEOUT
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=HEALTHZ_TIMEOUT) as sock:
            sock.sendall(
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n".encode()
                + headers
                + b"\r\n"
            )
            data = b""
            while b"\r\n" not in data:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", data)
    return int(match.group(1)) if match else None


_TRANSPORT_FAILURE = re.compile(
    r'^sophos_central_api_requests_total\{[^}]*status_code="0"[^}]*error_code="([^"]*)"[^}]*\} '
    r"(\d+)",
    re.MULTILINE,
)


async def transport_failures(port: int, headers: bytes = b"") -> dict[str, int]:
    """The agent's own calls that got no answer, by error code (timeout, connect_error, ...)."""
    answer = await http_get(port, "/metrics", headers, within=30)
    if answer is None or answer[0] != 200:
        raise RuntimeError("cannot read /metrics after the flood")
    counts: dict[str, int] = {}
    for code, value in _TRANSPORT_FAILURE.findall(answer[1].decode()):
        counts[code] = counts.get(code, 0) + int(value)
    return counts


class Connections:
    """Raw connections an attacker holds open; ``closed`` counts those the agent closed."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []
        self.watchers: list[asyncio.Task[None]] = []
        self.refused = 0

    async def open(
        self, port: int, count: int, first: bytes = b"", source: str | None = None
    ) -> None:
        async def one() -> None:
            try:
                async with asyncio.timeout(3):
                    reader, writer = await asyncio.open_connection(
                        "127.0.0.1", port, local_addr=(source, 0) if source else None
                    )
            except (OSError, TimeoutError):
                self.refused += 1
                return
            if first:
                writer.write(first)
            self.writers.append(writer)
            self.watchers.append(asyncio.create_task(_until_closed(reader)))

        await asyncio.gather(*(one() for _ in range(count)))

    @property
    def open_count(self) -> int:
        return sum(1 for task in self.watchers if not task.done())

    def send_all(self, data: bytes) -> None:
        for writer in self.writers:
            if not writer.is_closing():
                with contextlib.suppress(OSError, RuntimeError):
                    writer.write(data)

    async def close(self) -> None:
        for writer in self.writers:
            writer.close()
        for task in self.watchers:
            task.cancel()
        await asyncio.gather(*self.watchers, return_exceptions=True)


async def _until_closed(reader: asyncio.StreamReader) -> None:
    with contextlib.suppress(OSError):
        while await reader.read(65536):
            pass


def log_rate(before: int, proc: AgentProc, seconds: float) -> float:
    return (len(proc.log_lines()) - before) / seconds


# -- the attacks ---------------------------------------------------------------------------------


async def attack_burst(proc: AgentProc, seconds: float = 8.0, clients: int = 500) -> dict[str, Any]:
    paths = ("/metrics", "/status", "/support")
    answered = 0
    stop = time.monotonic() + seconds

    async def client(i: int) -> None:
        nonlocal answered
        while time.monotonic() < stop:
            gzip = b"Accept-Encoding: gzip\r\n"
            if await http_get(proc.port, paths[i % len(paths)], gzip, within=30) is not None:
                answered += 1

    log_before = len(proc.log_lines())
    async with watching_healthz(proc.port) as watch:
        await asyncio.gather(*(client(i) for i in range(clients)))
    return {
        **watch.summary(),
        "pages_answered": answered,
        "log_lines_per_s": round(log_rate(log_before, proc, seconds), 1),
        "transport_failures": await transport_failures(proc.port),
    }


async def attack_slowloris(proc: AgentProc, count: int = 300, hold: float = 15.0) -> dict[str, Any]:
    conns = Connections()
    log_before = len(proc.log_lines())
    started = time.monotonic()
    async with watching_healthz(proc.port) as watch:
        await conns.open(proc.port, count, b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        opened = len(conns.writers)
        while time.monotonic() - started < hold:
            await asyncio.sleep(2)
            conns.send_all(b"X")  # one byte of a header that never ends
        still_open = conns.open_count
    await conns.close()
    return {
        **watch.summary(),
        "opened": opened,
        f"open_after_{hold:.0f}s": still_open,
        "log_lines_per_s": round(log_rate(log_before, proc, time.monotonic() - started), 1),
        "transport_failures": await transport_failures(proc.port),
    }


async def attack_idle(proc: AgentProc, count: int = 400, hold: float = 15.0) -> dict[str, Any]:
    conns = Connections()
    log_before = len(proc.log_lines())
    started = time.monotonic()
    async with watching_healthz(proc.port) as watch:
        await conns.open(proc.port, count)
        opened = len(conns.writers)
        await asyncio.sleep(max(0.0, hold - (time.monotonic() - started)))
        still_open = conns.open_count
    await conns.close()
    took = time.monotonic() - started
    return {
        **watch.summary(),
        "opened": opened,
        f"open_after_{hold:.0f}s": still_open,
        "log_lines_per_s": round(log_rate(log_before, proc, took), 1),
        "transport_failures": await transport_failures(proc.port),
    }


def web_config_with_password(cost: int = 10) -> str:
    import bcrypt

    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=cost)).decode()
    other = bcrypt.hashpw(b"second-user-password", bcrypt.gensalt(rounds=cost)).decode()
    return f"basic_auth_users:\n  prometheus: {hashed}\n  grafana: {other}\n"


async def attack_password(
    proc: AgentProc, connections: int = 128, seconds: float = 6.0
) -> dict[str, Any]:
    """Wrong passwords from 127.0.0.2; the first login of a second, valid user from 127.0.0.1."""
    wrong = basic_auth_header("prometheus", "not-the-password")
    stop = time.monotonic() + seconds
    refused = 0

    async def attacker() -> None:
        nonlocal refused
        while time.monotonic() < stop:
            answer = await http_get(proc.port, "/metrics", wrong, within=30, source="127.0.0.2")
            if answer is not None:
                refused += 1

    log_before = len(proc.log_lines())
    valid = basic_auth_header("prometheus", PASSWORD)
    async with watching_healthz(proc.port, valid) as watch:
        attackers = [asyncio.create_task(attacker()) for _ in range(connections)]
        await asyncio.sleep(2.0)
        started = time.monotonic()
        answer = await http_get(
            proc.port,
            "/metrics",
            basic_auth_header("grafana", "second-user-password"),
            within=30,
        )
        login_wait = time.monotonic() - started
        await asyncio.gather(*attackers)
    return {
        **watch.summary(),
        "valid_login_status": None if answer is None else answer[0],
        "valid_login_wait_s": round(login_wait, 3),
        "wrong_password_answers": refused,
        "log_lines_per_s": round(log_rate(log_before, proc, seconds), 1),
        "transport_failures": await transport_failures(proc.port, valid),
    }


ATTACKS = ("burst", "slowloris", "idle", "password")


async def run(only: list[str], source: Path, workdir: Path) -> dict[str, dict[str, Any]]:
    raise_own_nofile()
    results: dict[str, dict[str, Any]] = {}
    for name in only:
        web = web_config_with_password() if name == "password" else None
        # The burst needs pages worth rendering: 1,000 tenants, each probed every 30 s.
        size: dict[str, Any] = (
            {"tenants": BURST_TENANTS, "probe_interval": "30s", "nofile": 1024}
            if name == "burst"
            else {}
        )
        async with running_agent(workdir / name, source, web_config=web, **size) as proc:
            attack = {
                "burst": attack_burst,
                "slowloris": attack_slowloris,
                "idle": attack_idle,
                "password": attack_password,
            }[name]
            results[name] = await attack(proc)
            results[name]["agent_alive"] = proc.process.poll() is None
        print(json.dumps({name: results[name]}), flush=True)
    return results


@contextlib.contextmanager
def _workdir(path: str | None) -> Iterator[Path]:
    if path is not None:
        yield Path(path)
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-flood-") as tmp:
        yield Path(tmp)


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.flood")
    parser.add_argument("--only", default=",".join(ATTACKS))
    parser.add_argument("--source", default=str(ROOT), help="the checkout whose agent to attack")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    with _workdir(args.workdir) as workdir:
        asyncio.run(run(args.only.split(","), Path(args.source).resolve(), workdir))


if __name__ == "__main__":
    main()
