"""The image's HEALTHCHECK asks the address the agent really listens on."""

from __future__ import annotations

import pytest

from agent import healthcheck
from agent.config import ENV_PREFIX, Settings
from agent.server import parse_listen_address


@pytest.mark.parametrize(
    ("listen", "url"),
    [
        (":9866", "http://127.0.0.1:9866/healthz"),
        ("0.0.0.0:9866", "http://127.0.0.1:9866/healthz"),
        ("127.0.0.1:19866", "http://127.0.0.1:19866/healthz"),
        ("[::]:9866", "http://[::1]:9866/healthz"),
        ("[::1]:9000", "http://[::1]:9000/healthz"),
        ("exporter.internal:9866", "http://exporter.internal:9866/healthz"),
    ],
)
def test_health_url_asks_where_the_agent_listens(listen: str, url: str) -> None:
    assert healthcheck.health_url(listen) == url
    host, port = parse_listen_address(listen)  # the agent's own reading of the same address
    assert f":{port}/" in url
    if host not in ("0.0.0.0", "::"):
        assert host in url


@pytest.mark.parametrize("listen", ["9866", "localhost", "host:port", ":"])
def test_a_listen_address_the_agent_refuses_is_refused_here_too(listen: str) -> None:
    with pytest.raises(ValueError):
        parse_listen_address(listen)
    with pytest.raises(ValueError):
        healthcheck.health_url(listen)


def test_defaults_are_the_agents() -> None:
    assert Settings.model_fields["web_listen_address"].default == healthcheck.DEFAULT_LISTEN
    assert f"{ENV_PREFIX}WEB_LISTEN_ADDRESS" == healthcheck.LISTEN_ENV


def test_the_check_fails_when_nothing_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(healthcheck.LISTEN_ENV, "127.0.0.1:1")
    assert healthcheck.main() == 1
