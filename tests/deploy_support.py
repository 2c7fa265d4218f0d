"""Helpers shared by the tests of what users deploy: the image, the wheel, the manifests.

Free loopback ports, processes with their output in files, a bounded wait for an HTTP answer or
a file, the demo scenario's agent config, and the samples of one metric family. Every wait has a
deadline and says what it waited for when it gives up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

BIG_PARTNER = "msp-main"
"""The demo scenario's partner with 250 tenants: its first probe cycle takes 45 s at the demo's
limits, while the organization, tenant and revoked credentials finish theirs in seconds."""


def wait_http(
    url: str,
    within: float,
    accept: Callable[[httpx.Response], bool] = lambda r: r.status_code == 200,
    alive: Callable[[], str | None] = lambda: None,
) -> httpx.Response:
    """The first answer from ``url`` that ``accept`` takes, polling until ``within`` seconds.

    ``alive`` returns why the server can no longer answer (it exited), so a crash fails at once
    with its reason instead of at the deadline.
    """
    deadline = time.monotonic() + within
    last = "no answer"
    with httpx.Client(timeout=5, trust_env=False) as client:
        while True:
            try:
                response = client.get(url)
                if accept(response):
                    return response
                last = f"HTTP {response.status_code}: {response.text[:300]}"
            except httpx.TransportError as exc:
                last = repr(exc)
            gone = alive()
            if gone is not None:
                raise AssertionError(f"{url}: the server is gone ({gone}); last answer: {last}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {within} s waiting for {url}: {last}")
            time.sleep(0.2)


def samples(metrics_text: str, family: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample of ``family`` on a /metrics page."""
    for parsed in text_string_to_metric_families(metrics_text):
        if parsed.name == family:
            return [(dict(s.labels), s.value) for s in parsed.samples]
    return []


def wait_for_file(path: Path, within: float, alive: Callable[[], str | None]) -> None:
    """Until ``path`` exists and is not empty (a writer that exits first fails at once)."""
    deadline = time.monotonic() + within
    while not path.is_file() or path.stat().st_size == 0:
        gone = alive()
        assert gone is None, f"waiting for {path}: {gone}"
        assert time.monotonic() < deadline, f"{path} not written within {within} s"
        time.sleep(0.1)


def leave_out_the_big_partner(config_path: Path) -> None:
    """Keep the demo's quick credentials in an agent config the simulator wrote.

    The file keeps its owner and mode (it holds the simulator's secrets).
    """
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    config["credentials"] = [c for c in config["credentials"] if c["name"] != BIG_PARTNER]
    assert len(config["credentials"]) == 3, [c["name"] for c in config["credentials"]]
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


class Process:
    """A long-running command with stdout and stderr in files (no pipe can fill and stall it)."""

    def __init__(
        self, argv: Sequence[str], workdir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.argv = list(argv)
        workdir.mkdir(parents=True, exist_ok=True)
        self.out_path, self.err_path = workdir / "stdout", workdir / "stderr"
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.popen = subprocess.Popen(
                self.argv, stdout=out, stderr=err, cwd=workdir, env=env or dict(os.environ)
            )

    def output(self) -> str:
        text = self.out_path.read_text(errors="replace") + self.err_path.read_text(errors="replace")
        return text[-4000:]

    def gone(self) -> str | None:
        """Why the process no longer serves (it exited), or None while it runs."""
        code = self.popen.poll()
        return None if code is None else f"exited {code}; its output:\n{self.output()}"

    def stop(self, within: float = 15) -> int:
        """SIGTERM, then the exit code; killed (and an error) if it outlives ``within``."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(within)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise AssertionError(
                f"{self.argv[:3]} still running {within} s after SIGTERM"
            ) from None

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()
