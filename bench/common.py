"""What every benchmark needs: a shared fast clock, child processes, /proc readings, the judge.

Processes: each benchmark runs the simulator and the agent as separate child processes
(``bench.simproc``, ``bench.agentproc`` or the real ``python -m agent run``), so that the CPU and
memory of one are never counted as the other's, and so that the agent's event loop is its own,
as in production. The parent only drives, waits and reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


class WarpClock:
    """A clock that runs ``speed`` times faster than real time, the same in every process.

    It is anchored on ``time.monotonic()``, which on Linux is one system-wide clock, so the
    simulator and the agent, each in its own process, read the same fast time from the same
    ``origin``. Sleeping a clock second takes ``1 / speed`` real seconds. With it, an hour window
    passes in seconds while calls still travel over real loopback HTTP.

    ``switch(at, speed)`` changes the speed from the real moment ``at`` (monotonic) on; the
    clock stays continuous. Every process that shares the clock must be told the same ``at``
    before it comes (bench/faultpage.py does it through a file and a signal).
    """

    def __init__(self, speed: float, origin: float, wall_origin: float) -> None:
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.speed = speed
        self._origin = origin
        self._wall_origin = wall_origin
        self._switch_at: float | None = None
        self._then_speed = speed

    def switch(self, at: float, speed: float) -> None:
        if speed <= 0 or at < self._origin:
            raise ValueError("the switch needs a speed > 0 and a moment after the origin")
        self._switch_at, self._then_speed = at, speed

    def speed_now(self) -> float:
        at = self._switch_at
        return self.speed if at is None or time.monotonic() < at else self._then_speed

    def elapsed_at(self, monotonic: float) -> float:
        """Clock seconds since the origin at the real moment ``monotonic``."""
        at = self._switch_at
        if at is None or monotonic <= at:
            return (monotonic - self._origin) * self.speed
        return (at - self._origin) * self.speed + (monotonic - at) * self._then_speed

    def real_at(self, elapsed: float) -> float:
        """The real moment (monotonic) when the clock shows ``elapsed`` seconds since origin."""
        at = self._switch_at
        if at is None or elapsed <= (at - self._origin) * self.speed:
            return self._origin + elapsed / self.speed
        return at + (elapsed - (at - self._origin) * self.speed) / self._then_speed

    def elapsed(self) -> float:
        return self.elapsed_at(time.monotonic())

    def time(self) -> float:
        return self._wall_origin + self.elapsed()

    def monotonic(self) -> float:
        return 10_000.0 + self.elapsed()

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of clock time; in real slices of at most 0.1 s, so that a sleep
        that spans a switch announced after it began still ends at the right clock time."""
        target = self.elapsed() + max(0.0, seconds)
        while True:
            now = time.monotonic()
            left = self.real_at(target) - now
            if left <= 0:
                return
            await asyncio.sleep(min(left, 0.1))


def watch_switch(clock: WarpClock, path: str, then: Callable[[float], None] | None = None) -> None:
    """On SIGUSR2, read ``<monotonic moment> <speed>`` from ``path`` and switch the clock then.

    ``then`` is called at that moment with the new speed (the agent reschedules its jobs)."""
    loop = asyncio.get_running_loop()

    def switch() -> None:
        at_text, speed_text = Path(path).read_text().split()
        at, speed = float(at_text), float(speed_text)
        clock.switch(at, speed)
        if then is not None:
            loop.call_later(max(0.0, at - time.monotonic()), then, speed)

    loop.add_signal_handler(signal.SIGUSR2, switch)


def read_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    data: dict[str, Any] = yaml.safe_load(Path(path).read_text())
    return data


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_split(pid: int) -> tuple[float, float]:
    """(utime + stime, stime) of a process (all its threads) in seconds, from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    user, system = int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK
    return user + system, system


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


def machine() -> dict[str, Any]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


async def wait_until(
    condition: Callable[[], Awaitable[bool] | bool], within: float, what: str, every: float = 0.2
) -> None:
    """Poll until ``condition`` holds; raise with ``what`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if not isinstance(value, bool):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {within:.0f} s waiting for {what}")
        await asyncio.sleep(every)


@dataclass
class Child:
    """A child process whose stderr goes to a log file, stopped with SIGTERM then SIGKILL."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    announcement: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def check(self) -> None:
        if not self.alive():
            raise RuntimeError(f"{self.name} exited {self.process.returncode}:\n{self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        return self.process.returncode


def spawn(
    name: str,
    argv: Sequence[str],
    workdir: Path,
    announce: bool = False,
    env: Mapping[str, str] | None = None,
    within: float = 60.0,
) -> Child:
    """Start a child; with ``announce`` wait for its one JSON line on stdout (where it listens)."""
    log_path = workdir / f"{name}.log"
    process = subprocess.Popen(
        list(argv),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if announce else subprocess.DEVNULL,
        stderr=log_path.open("wb"),
        env={**os.environ, **(env or {})},
    )
    child = Child(name, process, log_path)
    if announce:
        assert process.stdout is not None
        deadline = time.monotonic() + within
        line = b""
        while not line.strip():
            if time.monotonic() > deadline or process.poll() is not None:
                child.stop()
                raise RuntimeError(f"{name} did not announce itself:\n{child.tail()}")
            line = process.stdout.readline()
        child.announcement = json.loads(line)
    return child


@contextlib.contextmanager
def children() -> Iterator[list[Child]]:
    """Every child started inside is stopped on the way out, whatever happens."""
    started: list[Child] = []
    try:
        yield started
    finally:
        for child in reversed(started):
            child.stop()


def start_simulator(
    workdir: Path,
    scenario: str,
    limits: Mapping[str, int],
    *,
    speed: float = 1.0,
    origin: float | None = None,
    wall_origin: float | None = None,
    tenants: int | None = None,
    tls: tuple[Path, Path] | None = None,
    name: str = "simulator",
    switch_file: Path | None = None,
) -> Child:
    """``bench.simproc`` in a child; its announcement holds the URLs and the config path.

    With ``tls`` (certificate chain, key) every host serves HTTPS."""
    argv = [
        sys.executable,
        "-m",
        "bench.simproc",
        "--scenario",
        scenario,
        "--limits",
        json.dumps(dict(limits)),
        "--config-out",
        str(workdir / f"agent-for-{name}.yml"),
        "--speed",
        str(speed),
    ]
    if origin is not None and wall_origin is not None:
        argv += ["--origin", repr(origin), "--wall-origin", repr(wall_origin)]
    if tenants is not None:
        argv += ["--tenants", str(tenants)]
    if tls is not None:
        argv += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
    if switch_file is not None:
        argv += ["--switch-file", str(switch_file)]
    return spawn(name, argv, workdir, announce=True)


async def agent_snapshot(agent: Child) -> dict[str, Any]:
    """``bench.agentproc``'s own counters and CPU time, asked for with SIGUSR1."""
    agent.check()
    stdout = agent.process.stdout
    assert stdout is not None
    agent.process.send_signal(signal.SIGUSR1)
    line = await asyncio.wait_for(asyncio.to_thread(stdout.readline), timeout=30)
    if not line:
        agent.check()
    snapshot: dict[str, Any] = json.loads(line)
    return snapshot


async def simulator_state(sim: Child) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        response = await client.get(sim.announcement["admin_url"] + "/state")
    response.raise_for_status()
    state: dict[str, Any] = response.json()
    return state


def parse_page(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """/metrics text as {sample name: [(labels, value)]} (no prometheus_client needed here)."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


async def scrape(base_url: str, gzip: bool = False) -> httpx.Response:
    headers = {"Accept-Encoding": "gzip"} if gzip else {"Accept-Encoding": "identity"}
    async with httpx.AsyncClient(timeout=60, trust_env=False) as client:
        response = await client.get(base_url + "/metrics", headers=headers)
    response.raise_for_status()
    return response
