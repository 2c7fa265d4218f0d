"""The configuration a user writes, and the exact message each mistake earns."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from agent.cli import main
from agent.config import ConfigError, Settings, load_settings
from agent.durations import format_duration, parse_duration

DATA = Path(__file__).parent / "testdata" / "config"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("SOPHOS_EXPORTER_"):
            monkeypatch.delenv(key)


INVALID = [
    ("invalid-budget-share.yml", "budget_share: must be greater than 0 and at most 1 (got 1.5)"),
    (
        "invalid-unknown-key.yml",
        "probe_intervall: unknown key (did you mean probe_interval?)",
    ),
    (
        "invalid-duration.yml",
        "probe_interval: 'soon' is not a duration; use a number of seconds or units s, m, h, d "
        "(e.g. 90s, 5m)",
    ),
    (
        "invalid-http-url.yml",
        "api_url: plain http:// is accepted only for loopback hosts; use https://",
    ),
    (
        "invalid-no-secret.yml",
        "credentials.0: set exactly one of client_secret or client_secret_file",
    ),
    (
        "invalid-two-secrets.yml",
        "credentials.0: set exactly one of client_secret or client_secret_file",
    ),
    ("invalid-no-credentials.yml", "credentials: required key is missing"),
    ("invalid-duplicate-name.yml", "credentials: duplicate name 'a'"),
    (
        "invalid-credential-name.yml",
        "credentials.0.name: must start with a letter or digit and use only letters, digits, '_', "
        "'.', ':' or '-' (at most 64 characters); it becomes a label value",
    ),
    ("invalid-rate-window.yml", "rate_limits: unknown window '1w'; use 1s, 1m, 1h or 1d"),
    ("invalid-rate-value.yml", "rate_limits: 1m: must be a positive whole number of calls"),
    ("invalid-shard.yml", "shard: must be between 0 and total_shards - 1 (2)"),
    ("invalid-rate-limit-scope.yml", "rate_limit_scope: Input should be 'credential' or 'tenant'"),
    (
        "invalid-allowed-host.yml",
        "allowed_api_hosts: 'https://*.sophos.com' is not a host name pattern (no scheme, port or "
        "path: '*.sophos.com', '127.0.0.1')",
    ),
    (
        "invalid-secret-file.yml",
        "credentials.0: client_secret_file /nonexistent/secret is not a readable file",
    ),
    # Keys given twice, each named with both lines, in the order of the file.
    (
        "invalid-duplicate-key.yml",
        "credentials.0.client_id: duplicate key at line 6 (first at line 4)\n"
        "  probe_interval: duplicate key at line 7 (first at line 1)",
    ),
    ("invalid-wrong-type.yml", "budget_share: must be a number"),
    (
        "invalid-proxy-url.yml",
        "proxy_url: must start with http:// or https:// (the proxy's own scheme; socks is not "
        "supported)",
    ),
    (
        "invalid-expires-at.yml",
        "credentials.0.expires_at: must be a date (YYYY-MM-DD) or an RFC 3339 timestamp "
        "(YYYY-MM-DDTHH:MM:SSZ)",
    ),
    # Unquoted, YAML would make this a date that does not exist: still the key's own message.
    (
        "invalid-expires-at-day.yml",
        "credentials.0.expires_at: must be a date (YYYY-MM-DD) or an RFC 3339 timestamp "
        "(YYYY-MM-DDTHH:MM:SSZ); 2027-02-30 is not a day of the calendar",
    ),
    (
        "invalid-expires-at-offset.yml",
        "credentials.0.expires_at: must be a date (YYYY-MM-DD) or an RFC 3339 timestamp "
        "(YYYY-MM-DDTHH:MM:SSZ); a timestamp needs its offset (Z or +01:00)",
    ),
    (
        "invalid-external-url.yml",
        "external_url: must be an http:// or https:// URL with a host, e.g. "
        "https://exporter.example.com or http://exporter.example.com:9866/prefix",
    ),
    (
        "invalid-external-url-password.yml",
        "external_url: must not carry user:password@: every alert shows this URL",
    ),
]


@pytest.mark.parametrize(("name", "problem"), INVALID, ids=[n for n, _ in INVALID])
def test_invalid_config_names_the_key_and_the_problem(name: str, problem: str) -> None:
    path = DATA / name
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert str(caught.value) == f"invalid config file {path}:\n  {problem}"


def test_broken_yaml_says_where() -> None:
    path = DATA / "invalid-yaml.yml"
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert str(caught.value) == (
        f"config file {path} is not valid YAML at line 2, column 1: "
        "expected ',' or '}', but got '<stream end>'"
    )


def test_config_that_is_not_a_mapping_is_refused() -> None:
    path = DATA / "invalid-not-mapping.yml"
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert str(caught.value) == f"config file {path} must be a mapping of keys to values"


def test_missing_file_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"cannot read config file /nonexistent.yml"):
        load_settings("/nonexistent.yml")


def test_valid_config_applies_durations_limits_and_defaults() -> None:
    settings = load_settings(DATA / "valid.yml")
    assert settings.probe_interval == 90
    assert settings.token_probe_interval == 300
    assert settings.request_timeout == 7
    assert settings.tenant_refresh_interval == 900
    assert settings.rate_limits == {"1s": 10, "1m": 300, "1h": 1000, "1d": 50000}
    assert settings.allowed_api_hosts == ["*.sophos.com"]
    assert settings.auth_url == "https://id.sophos.com/api/v2/oauth2/token"
    assert settings.credentials[0].secret() == "not-a-real-secret-value"


def test_environment_overrides_the_file_including_nested_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SOPHOS_EXPORTER_BUDGET_SHARE", "0.3")
    monkeypatch.setenv("SOPHOS_EXPORTER_RATE_LIMITS__1H", "2000")
    monkeypatch.setenv("SOPHOS_EXPORTER_PROBE_INTERVAL", "2m")
    settings = load_settings(DATA / "valid.yml")
    assert settings.budget_share == 0.3
    assert settings.rate_limits["1h"] == 2000
    assert settings.rate_limits["1m"] == 300
    assert settings.probe_interval == 120


def test_credentials_can_come_from_the_environment_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "SOPHOS_EXPORTER_CREDENTIALS",
        '[{"name": "env-cred", "client_id": "abc", "client_secret": "def"}]',
    )
    settings = load_settings(None)
    assert [c.name for c in settings.credentials] == ["env-cred"]


def test_bad_environment_value_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOPHOS_EXPORTER_BUDGET_SHARE", "0")
    with pytest.raises(ConfigError, match=r"budget_share: must be greater than 0 and at most 1"):
        load_settings(DATA / "valid.yml")


def test_secret_file_is_read_and_stripped(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("from-a-file\n")
    cfg = tmp_path / "c.yml"
    cfg.write_text(f"credentials: [{{name: a, client_id: x, client_secret_file: {secret}}}]\n")
    assert load_settings(cfg).credentials[0].secret() == "from-a-file"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("5m", 300),
        ("1h30m", 5400),
        ("1d", 86400),
        ("250ms", 0.25),
        (45, 45),
        ("12.5", 12.5),
    ],
)
def test_durations_accept_prometheus_style_and_plain_seconds(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (30, "30s"),
        (60, "1m"),
        (90, "1m30s"),
        (900, "15m"),
        (5400, "1h30m"),
        (86400, "1d"),
        (0.25, "250ms"),
        (2.5, "2s500ms"),
    ],
)
def test_durations_print_as_people_write_them_and_read_back(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5x", "m5", "-3", 0, True, "1h 30m"])
def test_durations_refuse_nonsense(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_config_check_masks_secrets_and_client_ids(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", "--config", str(DATA / "valid.yml")]) == 0
    out = capsys.readouterr().out
    assert "configuration OK" in out
    assert "not-a-real-secret-value" not in out
    assert "11111111-2222-3333-4444-555555555555" not in out
    assert out.count("<masked>") == 2
    assert "budget_share: 0.2" in out


def test_config_check_exits_2_and_names_the_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", "--config", str(DATA / "invalid-budget-share.yml")]) == 2
    err = capsys.readouterr().err
    assert "budget_share: must be greater than 0 and at most 1 (got 1.5)" in err


def test_rejected_secret_values_are_never_echoed(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yml"
    cfg.write_text(
        "credentials: [{name: a, client_id: x, client_secret: {nested: s3cr3t-canary}}]\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(cfg)
    assert "s3cr3t-canary" not in str(caught.value)
    assert "credentials.0.client_secret" in str(caught.value)


def test_check_warns_when_an_inline_secret_is_readable_by_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "c.yml"
    cfg.write_text(
        "auth_url: http://127.0.0.1:9/api/v2/oauth2/token\napi_url: http://127.0.0.1:9\n"
        f"state_file: {tmp_path / 's.db'}\nrequest_timeout: 2s\n"
        "credentials: [{name: a, client_id: x, client_secret: inline-secret-value}]\n"
    )
    cfg.chmod(0o644)
    assert main(["check", "--config", str(cfg)]) == 1  # nothing listens on port 9
    captured = capsys.readouterr()
    assert "readable by other users" in captured.err
    assert "inline-secret-value" not in captured.err + captured.out


def test_the_printed_config_reads_back_as_the_same_config() -> None:
    """``config check`` output is a config a user can paste: durations and probes as written."""
    settings = Settings(
        credentials=[{"name": "a", "client_id": "id-1", "client_secret": "s-1"}],
        probe_interval="90s",
        confirm_interval="2m",
        tenant_probes=["tenant", "siem_events", {"name": "mine", "path": "/x/v1/y"}],
    )
    shown = yaml.safe_load(yaml.safe_dump(settings.masked()))
    assert shown["probe_interval"] == "1m30s"
    assert shown["tenant_probes"] == ["tenant", "siem_events", {"name": "mine", "path": "/x/v1/y"}]
    shown["credentials"][0].update(client_id="id-1", client_secret="s-1")
    assert Settings(**shown) == settings


def _regional_config(tmp_path: Path, api_url: str) -> Path:
    cfg, secret = tmp_path / "c.yml", tmp_path / "secret"
    secret.write_text("regional-test-secret")
    cfg.write_text(
        f"auth_url: http://127.0.0.1:9/api/v2/oauth2/token\napi_url: {api_url}\n"
        f"state_file: {tmp_path / 's.db'}\nrequest_timeout: 2s\n"
        f"credentials: [{{name: a, client_id: x, client_secret_file: {secret}}}]\n"
    )
    cfg.chmod(0o600)
    return cfg


REGIONAL_WARNING = (
    "api_url https://api-eu01.central.sophos.com is a data-region host, which does not serve "
    "whoami or the tenant lists; use https://api.central.sophos.com"
)


def test_config_check_warns_about_a_data_region_api_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _regional_config(tmp_path, "https://api-eu01.central.sophos.com")
    assert main(["config", "check", "--config", str(cfg)]) == 0  # a warning, not an error
    captured = capsys.readouterr()
    assert f"warning: {REGIONAL_WARNING}\n" in captured.err
    assert "configuration OK" in captured.out


def test_check_warns_about_a_data_region_api_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _regional_config(tmp_path, "https://api-eu01.central.sophos.com")
    assert main(["check", "--config", str(cfg)]) == 1  # no token: nothing listens on port 9
    assert REGIONAL_WARNING in capsys.readouterr().err


@pytest.mark.parametrize(
    "api_url",
    ["https://api.central.sophos.com", "https://api-gateway.central.sophos.com", "http://[::1]:8"],
)
def test_no_warning_for_other_api_urls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], api_url: str
) -> None:
    assert main(["config", "check", "--config", str(_regional_config(tmp_path, api_url))]) == 0
    assert "data-region" not in capsys.readouterr().err


def test_proxy_url_is_a_secret_masked_in_the_effective_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    credentials = [{"name": "a", "client_id": "x", "client_secret": "y"}]
    monkeypatch.setenv("SOPHOS_EXPORTER_PROXY_URL", "http://squid-user:proxy-pass-77@proxy:3128")
    monkeypatch.setenv("SOPHOS_EXPORTER_PROXY_FROM_ENVIRONMENT", "true")
    settings = Settings(credentials=credentials)
    assert settings.proxy_from_environment is True
    assert settings.proxy_url is not None
    assert "proxy-pass-77" not in repr(settings)
    assert settings.masked()["proxy_url"] == "http://<masked>@proxy:3128"
    monkeypatch.delenv("SOPHOS_EXPORTER_PROXY_URL")
    plain = Settings(credentials=credentials, proxy_url="https://proxy:3128")
    assert plain.masked()["proxy_url"] == "https://proxy:3128"


def test_a_bad_proxy_url_never_echoes_its_password() -> None:
    for bad in (
        "socks5://u:proxy-pass-77@h:1",
        "http://u:proxy-pass-77@h/x",
        "http://u:proxy-pass-77@h:x",
    ):
        with pytest.raises(ConfigError) as caught:
            load_settings(
                None,
                proxy_url=bad,
                credentials=[{"name": "a", "client_id": "x", "client_secret": "y"}],
            )
        assert "proxy_url: " in str(caught.value)
        assert "proxy-pass-77" not in str(caught.value)
