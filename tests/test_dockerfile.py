"""The container image, built from the project's Dockerfile by podman and run as users run it.

The base image is the public ``debian:bookworm-slim``. No container registry is reachable from
the machines that run these tests, so when it is missing it is made here from Debian's packages
with ``mmdebstrap`` (minbase, merged /usr, documentation and manual pages left out, apt cleaning
up after itself: what the official slim image does) and tagged under that same name, so the
image tested is the image users build on the public base.

The agent and the built-in simulator each run in a container of that image on the host network
(everything stays on loopback): the agent answers ``/metrics``, ``/healthz`` and ``/readyz``,
runs as uid 10001, its ``HEALTHCHECK`` passes, and its state file on a named volume carries the
day's rate-window usage into a new container.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import resource
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent import __version__
from tests.deploy_support import (
    leave_out_the_big_partner,
    samples,
    wait_for_file,
    wait_http,
)
from tests.ports import free_port, free_port_block

ROOT = Path(__file__).resolve().parent.parent
BASE_IMAGE = "docker.io/library/debian:bookworm-slim"
"""What ``FROM debian:bookworm-slim`` resolves to."""
IMAGE = "localhost/sophos-central-exporter:test"
MAX_IMAGE_BYTES = 200_000_000
"""Debian slim (78 MB) + python3 and CA certificates (47 MB) + the virtual environment (45 MB)."""
STATE_DIR = "/var/lib/sophos-central-exporter"
CONFIG_DIR = "/etc/sophos-central-exporter"
UID = 10001

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(1500)]

# The public slim image's recipe, as far as it matters to an image built on it.
DEBIAN_MIRRORS = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
APT_CLEAN = "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb"
MMDEBSTRAP_OPTIONS = (
    "--variant=minbase",
    "--mode=root",
    "--format=tar",
    # Without it apt pulls in the usrmerge package and with it perl (30 MB).
    "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
    f'--aptopt=DPkg::Post-Invoke {{ "{APT_CLEAN} /var/cache/apt/*.bin || true"; }}',
    f'--aptopt=APT::Update::Post-Invoke {{ "{APT_CLEAN} /var/cache/apt/*.bin || true"; }}',
    '--aptopt=Dir::Cache::pkgcache ""',
    '--aptopt=Dir::Cache::srcpkgcache ""',
    '--aptopt=Acquire::Languages "none"',
    '--aptopt=Acquire::GzipIndexes "true"',
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--dpkgopt=path-exclude=/usr/share/info/*",
)

# Package downloads in the build check TLS against this machine's CA bundle, mounted read-only at
# a path of its own (mounting over /etc/ssl/certs would break installing ca-certificates there).
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BUILD_CA_BUNDLE = "/run/build-ca/ca-certificates.crt"


def _run_flags() -> list[str]:
    """``podman run`` flags for this machine, each one needed here and harmless elsewhere.

    - host network: the agent, the simulator and the test talk over loopback only;
    - ulimits: podman asks runc for 1,048,576 open files and processes by default, and this
      sandbox may not raise a limit (no CAP_SYS_RESOURCE): runc fails with "error setting rlimit
      type 7: operation not permitted". The container gets the current hard limit on open files
      and 4,096 processes, which the exporter's one process never nears;
    - no health-check timer: podman would schedule it with systemd, which this machine lacks; the
      test runs the check itself with ``podman healthcheck run``.
    """
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if nofile == resource.RLIM_INFINITY or nofile > 65536:
        nofile = 65536
    return [
        "--network=host",
        "--ulimit",
        f"nofile={nofile}:{nofile}",
        "--ulimit",
        "nproc=4096:4096",
        "--health-interval=disable",
    ]


def podman(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Debian's podman with runc (crun refuses this kernel's cgroup setup)."""
    exe = shutil.which("podman")
    if exe is None:
        pytest.fail("podman not found; `scripts/bootstrap --debian` installs it", pytrace=False)
    result = subprocess.run(
        [exe, "--runtime", "runc", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"podman {' '.join(args[:3])} ... exited {result.returncode}\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


@contextlib.contextmanager
def _machine_lock(name: str) -> Iterator[None]:
    """One process at a time on this machine (two test runs must not both make the base)."""
    with open(Path(tempfile.gettempdir()) / f"{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_base_image(workdir: Path) -> None:
    """``debian:bookworm-slim``: the one in local storage, or made from Debian's packages."""
    with _machine_lock("sophos-central-exporter-base-image"):
        if podman("image", "exists", BASE_IMAGE, check=False).returncode == 0:
            return
        mmdebstrap = shutil.which("mmdebstrap")
        if mmdebstrap is None:
            pytest.fail("mmdebstrap not found; `scripts/bootstrap --debian` installs it")
        tarball = workdir / "bookworm-slim.tar"
        made = subprocess.run(
            [mmdebstrap, *MMDEBSTRAP_OPTIONS, "bookworm", str(tarball), *DEBIAN_MIRRORS],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert made.returncode == 0, f"mmdebstrap failed:\n{made.stderr[-3000:]}"
        podman("import", "--change", 'CMD ["bash"]', str(tarball), BASE_IMAGE, timeout=300)
        tarball.unlink()


def build_image() -> None:
    podman(
        "build",
        "--isolation=chroot",
        "--format=docker",  # the OCI format has no HEALTHCHECK
        "--network=host",
        "--pull=never",
        f"--volume={HOST_CA_BUNDLE}:{BUILD_CA_BUNDLE}:ro",
        f"--build-arg=SSL_CERT_FILE={BUILD_CA_BUNDLE}",
        f"--build-arg=PIP_CERT={BUILD_CA_BUNDLE}",
        "--build-arg=UV_SYSTEM_CERTS=1",
        f"--tag={IMAGE}",
        str(ROOT),
        timeout=1200,
    )


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The image built from the working tree (on a cold machine: base image and build)."""
    ensure_base_image(tmp_path_factory.mktemp("base"))
    build_image()
    [inspected] = json.loads(podman("image", "inspect", IMAGE).stdout)
    return dict(inspected)


class Container:
    """A detached container of the image, removed when the test is done with it."""

    def __init__(self, name: str, *args: str) -> None:
        self.name = name
        podman("run", "--detach", f"--name={name}", *_run_flags(), *args, timeout=120)

    def gone(self) -> str | None:
        state = podman("inspect", "--format={{.State.Status}}", self.name, check=False)
        status = state.stdout.strip()
        if status in ("running", "created"):
            return None
        return f"container {status or 'missing'}; its log:\n{self.logs()}"

    def logs(self) -> str:
        result = podman("logs", self.name, check=False)
        return (result.stdout + result.stderr)[-4000:]

    def inspect(self, template: str) -> str:
        return podman("inspect", f"--format={template}", self.name).stdout.strip()

    def stop(self) -> int:
        """SIGTERM, then the exit code (the agent exits 0 after finishing in-flight probes)."""
        podman("stop", "--time=20", self.name, timeout=60)
        return int(self.inspect("{{.State.ExitCode}}"))

    def remove(self) -> None:
        podman("rm", "--force", "--volumes", "--time=0", self.name, check=False, timeout=60)


def test_image_is_small_non_root_health_checked_and_free_of_build_tools(
    image: dict[str, Any],
) -> None:
    config = image["Config"]
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == ["sophos-central-exporter"]
    assert "9866/tcp" in config["ExposedPorts"]
    assert STATE_DIR in config["Volumes"]
    assert image["Healthcheck"]["Test"] == ["CMD", "python3", "-m", "agent.healthcheck"], (
        "the HEALTHCHECK is kept (docker format)"
    )
    assert image["Size"] <= MAX_IMAGE_BYTES, f"{image['Size'] / 1e6:.0f} MB"
    probe = podman(
        "run",
        "--rm",
        *_run_flags(),
        "--entrypoint=/bin/sh",
        IMAGE,
        "-c",
        "for tool in gcc cc make pip pip3 uv; do command -v $tool; done;"
        " python3 -c 'import pip' 2>/dev/null && echo pip-module;"
        ' readlink -f "$(command -v python3)"; sophos-central-exporter --version;'
        " ls /opt/sophos-central-exporter/lib/python3*/site-packages/"
        "sophos_central_exporter-*/licenses | grep -x LICENSE",
    )
    lines = probe.stdout.split()
    assert lines == ["/usr/bin/python3.11", "sophos-central-exporter", __version__, "LICENSE"], (
        "no compiler, pip or uv in the runtime stage; Debian's python3 runs the exporter, "
        "installed as a package with its licence"
    )


def test_agent_in_the_image_serves_probes_passes_its_health_check_and_keeps_its_budget(
    image: dict[str, Any], tmp_path: Path
) -> None:
    containers: list[Container] = []
    run_id = uuid.uuid4().hex[:10]
    volume = f"sce-test-state-{run_id}"
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chown(shared, UID, UID)  # the simulator (uid 10001) writes the agent's config here
    sim_port, agent_port = free_port_block(5), free_port()
    # The image's own simulator, with the compose demo's scenario; it writes a ready config.
    simulator = Container(
        f"sce-test-simulator-{run_id}",
        f"--volume={shared}:/shared",
        IMAGE,
        *("simulate", "--listen", f"127.0.0.1:{sim_port}", "--scenario", "demo"),
        *("--agent-config", "/shared/config.yml"),
    )
    containers.append(simulator)
    agent_args = (
        # The listen address by environment, so the HEALTHCHECK asks the same address.
        f"--env=SOPHOS_EXPORTER_WEB_LISTEN_ADDRESS=127.0.0.1:{agent_port}",
        # Short periods so that the first probe cycle ends within seconds.
        "--env=SOPHOS_EXPORTER_PROBE_INTERVAL=2s",
        f"--volume={shared}:{CONFIG_DIR}:ro",
        f"--volume={volume}:{STATE_DIR}",
        IMAGE,  # and the image's own CMD: run --config /etc/sophos-central-exporter/config.yml
    )
    base = f"http://127.0.0.1:{agent_port}"
    try:
        wait_for_file(shared / "config.yml", within=60, alive=simulator.gone)
        leave_out_the_big_partner(shared / "config.yml")
        first = Container(f"sce-test-agent-{run_id}-1", *agent_args)
        containers.append(first)
        assert wait_http(f"{base}/healthz", 60, alive=first.gone).status_code == 200
        wait_http(f"{base}/readyz", 120, alive=first.gone)  # every credential's first cycle
        metrics = wait_http(f"{base}/metrics", 10, alive=first.gone).text
        [(build, _)] = samples(metrics, "sophos_central_exporter_build_info")
        python = podman(
            "exec", first.name, "python3", "-c", "import platform; print(platform.python_version())"
        )
        assert build == {"version": __version__, "python_version": python.stdout.strip()}
        assert samples(metrics, "sophos_central_probe_success"), "probes ran"

        pid = first.inspect("{{.State.Pid}}")
        assert _uids(pid) == {UID}, "the agent's process runs as uid 10001, not root"

        health = podman("healthcheck", "run", first.name, check=False)
        assert health.returncode == 0, health.stdout + health.stderr
        wrong = podman(
            "exec",
            "--env=SOPHOS_EXPORTER_WEB_LISTEN_ADDRESS=127.0.0.1:1",
            first.name,
            "python3",
            "-m",
            "agent.healthcheck",
            check=False,
        )
        assert wrong.returncode == 1, "the check fails when nothing answers"

        before = _day_calls(wait_http(f"{base}/metrics", 10).text)
        assert before and all(calls > 0 for calls in before.values()), before
        assert first.stop() == 0, first.logs()
        first.remove()

        second = Container(f"sce-test-agent-{run_id}-2", *agent_args)
        containers.append(second)
        after = _day_calls(wait_http(f"{base}/metrics", 60, alive=second.gone).text)
        assert after.keys() == before.keys()
        for credential, calls in before.items():
            assert after[credential] >= calls, (
                f"{credential}: {after[credential]} calls in the day window after the restart, "
                f"{calls} before: the state file on the volume was not read back"
            )
    finally:
        for container in containers:
            container.remove()
        podman("volume", "rm", "--force", volume, check=False)


def _uids(pid: str) -> set[int]:
    """Real, effective, saved and filesystem uid of a process, as the host sees it."""
    status = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    match = re.search(r"^Uid:\s+(.+)$", status, flags=re.MULTILINE)
    assert match is not None
    return {int(uid) for uid in match.group(1).split()}


def _day_calls(metrics_text: str) -> dict[str, float]:
    """Calls each credential made in the trailing day window, as /metrics reports them."""
    return {
        labels["credential"]: value
        for labels, value in samples(metrics_text, "sophos_central_rate_limit_calls")
        if labels.get("window") == "1d"
    }
