"""The container image's promises, read from the Dockerfile (no Docker engine runs on CI)."""

from __future__ import annotations

import re
from pathlib import Path

DOCKERFILE = (Path(__file__).parent.parent / "Dockerfile").read_text()


def instructions(name: str) -> list[str]:
    return re.findall(rf"^{name}\s+(.+)$", DOCKERFILE, flags=re.MULTILINE)


def test_build_is_multi_stage_from_the_lock_file() -> None:
    assert len(instructions("FROM")) >= 2
    assert "uv.lock" in DOCKERFILE and "--frozen" in DOCKERFILE
    assert "COPY --from=builder" in DOCKERFILE


def test_runtime_runs_as_a_non_root_user() -> None:
    users = instructions("USER")
    assert users, "no USER instruction"
    assert users[-1].split(":")[0] not in ("root", "0")


def test_default_port_is_exposed_and_health_checked() -> None:
    assert instructions("EXPOSE") == ["9866"]
    (health,) = instructions("HEALTHCHECK")
    assert "/healthz" in DOCKERFILE[DOCKERFILE.index("HEALTHCHECK") :]
    assert "--interval" in health


def test_entrypoint_is_the_console_script_running_the_agent() -> None:
    assert instructions("ENTRYPOINT") == ['["sophos-central-exporter"]']
    assert '"run"' in instructions("CMD")[0]
