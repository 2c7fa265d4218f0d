"""The package as an index carries it, installed where nothing of the checkout helps.

``uv build`` makes the sdist and, from the sdist, the wheel; ``twine check`` passes both. pip
installs the wheel into a fresh virtual environment (no uv, no lock file) and the installed
command runs from a temporary directory (no checkout on ``sys.path``): ``--version`` prints the
package version and ``demo`` serves ``/status``, so every template and data file is in the wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from agent import __version__
from tests.deploy_support import Process, samples, wait_http
from tests.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
NAME = "sophos-central-exporter"

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(600)]


def run(argv: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    result = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{argv[:4]} exited {result.returncode}\n{result.stderr[-3000:]}"
    return result.stdout


def clean_env(venv: Path) -> dict[str, str]:
    """This machine's environment (proxy and CA settings for pip) without any Python or uv path."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("UV_", "PYTHON", "VIRTUAL_ENV", "SOPHOS_EXPORTER_"))
    }
    env["PATH"] = f"{venv / 'bin'}:/usr/bin:/bin"
    return env


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    uv = shutil.which("uv")
    assert uv is not None, "uv: `scripts/bootstrap` installs it"
    run([uv, "build", "--out-dir", str(out)], cwd=ROOT)
    [wheel] = out.glob("*.whl")
    [sdist] = out.glob("*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


@pytest.fixture(scope="module")
def venv(dist: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with pip and the wheel, nothing else."""
    where = tmp_path_factory.mktemp("venv")
    outside = tmp_path_factory.mktemp("elsewhere")
    run([sys.executable, "-m", "venv", str(where)], cwd=outside)
    assert not (where / "bin" / "uv").exists()
    # --no-compile: byte-compiling 35 packages would add 8 s and prove nothing about the wheel.
    pip = [str(where / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-compile"]
    run(
        [*pip, str(dist["wheel"])],
        cwd=outside,
        env=clean_env(where),
    )
    return where


def test_sdist_and_wheel_pass_twine_check_and_carry_the_version(dist: dict[str, Path]) -> None:
    out = run([sys.executable, "-m", "twine", "check", "--strict", *map(str, dist.values())], ROOT)
    assert out.count("PASSED") == 2
    assert dist["wheel"].name == f"sophos_central_exporter-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(dist["wheel"]) as wheel:
        meta_dir = f"sophos_central_exporter-{__version__}.dist-info"
        metadata = Parser().parsestr(wheel.read(f"{meta_dir}/METADATA").decode())
        names = set(wheel.namelist())
    assert metadata["Version"] == __version__
    assert metadata["License-Expression"] == "Apache-2.0"
    assert f"{meta_dir}/licenses/LICENSE" in names
    package = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "agent").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert package - names == set(), "every module, template and data file of agent/ is shipped"


def test_installed_command_prints_the_package_version(venv: Path, tmp_path: Path) -> None:
    out = run([str(venv / "bin" / NAME), "--version"], cwd=tmp_path, env=clean_env(venv))
    assert out.strip() == f"{NAME} {__version__}"
    where = run(
        [str(venv / "bin" / "python"), "-c", "import agent; print(agent.__file__)"],
        cwd=tmp_path,
        env=clean_env(venv),
    )
    assert Path(where.strip()).is_relative_to(venv), "imported from the venv, not the checkout"


def test_installed_demo_serves_the_status_page_and_metrics(venv: Path, tmp_path: Path) -> None:
    port = free_port()
    demo = Process(
        [str(venv / "bin" / NAME), "demo", "--web.listen-address", f"127.0.0.1:{port}"],
        tmp_path,
        clean_env(venv),
    )
    try:
        status = wait_http(
            f"http://127.0.0.1:{port}/status",
            60,
            lambda r: r.status_code == 200 and "Credential msp-main" in r.text,
            alive=demo.gone,
        )
        assert "text/html" in status.headers["content-type"]
        metrics = wait_http(f"http://127.0.0.1:{port}/metrics", 10, alive=demo.gone).text
        python = run(
            [
                str(venv / "bin" / "python"),
                "-c",
                "import platform; print(platform.python_version())",
            ],
            cwd=tmp_path,
            env=clean_env(venv),
        )
        assert samples(metrics, "sophos_central_exporter_build_info") == [
            ({"version": __version__, "python_version": python.strip()}, 1.0)
        ]
    finally:
        assert demo.stop() == 0, demo.output()


def test_changelog_starts_with_this_version() -> None:
    headings = [
        line.removeprefix("## ").strip()
        for line in (ROOT / "CHANGELOG.md").read_text(encoding="utf-8").splitlines()
        if line.startswith("## ")
    ]
    assert headings[0] == __version__
