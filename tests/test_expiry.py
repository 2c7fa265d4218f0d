"""A credential's expiry date as a user writes it, and how close it is, in the words every
surface uses."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from agent.cli import main
from agent.config import Settings, load_settings
from agent.expiry import (
    CRITICAL_DAYS,
    WARNING_DAYS,
    days_left,
    describe,
    level,
    parse_expires_at,
)

DAY = 86400.0
EXPIRY = datetime(2027, 3, 1, tzinfo=UTC).timestamp()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("SOPHOS_EXPORTER_"):
            monkeypatch.delenv(key)


@pytest.mark.parametrize(
    ("written", "meant"),
    [
        ("2027-03-01", datetime(2027, 3, 1, tzinfo=UTC)),
        ("2027-03-01T09:30:00Z", datetime(2027, 3, 1, 9, 30, tzinfo=UTC)),
        ("2027-03-01T09:30:00+01:00", datetime(2027, 3, 1, 8, 30, tzinfo=UTC)),
        ("2027-03-01 09:30:00.5-02:00", datetime(2027, 3, 1, 11, 30, 0, 500000, tzinfo=UTC)),
        (date(2027, 3, 1), datetime(2027, 3, 1, tzinfo=UTC)),
        (
            datetime(2027, 3, 1, 10, tzinfo=timezone(timedelta(hours=2))),
            datetime(2027, 3, 1, 8, tzinfo=UTC),
        ),
    ],
)
def test_a_date_or_an_rfc3339_timestamp_is_read_in_utc(written: object, meant: datetime) -> None:
    assert parse_expires_at(written) == meant


@pytest.mark.parametrize(
    "written", ["", "soon", 1803859200, True, "2027-3-1", "20270301", "2027-03-01T09:30Z"]
)
def test_anything_else_is_refused_not_guessed(written: object) -> None:
    with pytest.raises(ValueError, match=r"^must be a date \(YYYY-MM-DD\) or an RFC 3339"):
        parse_expires_at(written)


def test_the_config_reads_both_forms_unquoted_and_prints_them_back(tmp_path: Path) -> None:
    """Unquoted in YAML, as people write dates; ``config check`` shows them as written."""
    path = tmp_path / "c.yml"
    path.write_text(
        "credentials:\n"
        "  - {name: a, client_id: x, client_secret: y, expires_at: 2027-03-01}\n"
        "  - {name: b, client_id: x, client_secret: y, expires_at: 2027-03-01T09:30:00+01:00}\n"
        "  - {name: c, client_id: x, client_secret: y}\n"
    )
    settings = load_settings(path)
    assert [c.expiry for c in settings.credentials] == [EXPIRY, EXPIRY + 8.5 * 3600, None]
    shown = settings.masked()["credentials"]
    assert [c["expires_at"] for c in shown] == ["2027-03-01", "2027-03-01T08:30:00Z", None]
    back = yaml.safe_load(yaml.safe_dump(settings.masked()))
    for cred in back["credentials"]:
        cred.update(client_id="x", client_secret="y")
    assert Settings(**back) == settings


def test_the_environment_can_set_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "SOPHOS_EXPORTER_CREDENTIALS",
        '[{"name": "a", "client_id": "x", "client_secret": "y", "expires_at": "2027-03-01"}]',
    )
    assert Settings().credentials[0].expiry == EXPIRY  # type: ignore[call-arg]


def test_whole_days_left_and_the_levels_the_alert_uses() -> None:
    assert days_left(EXPIRY, EXPIRY - 30 * DAY) == 30
    assert level(EXPIRY, EXPIRY - 30 * DAY) == "ok"  # from 30 days before: not yet
    assert level(EXPIRY, EXPIRY - 30 * DAY + 1) == "warning"
    assert days_left(EXPIRY, EXPIRY - 30 * DAY + 1) == WARNING_DAYS - 1
    assert level(EXPIRY, EXPIRY - 7 * DAY) == "warning"
    assert level(EXPIRY, EXPIRY - 7 * DAY + 1) == "critical"
    assert days_left(EXPIRY, EXPIRY - 7 * DAY + 1) == CRITICAL_DAYS - 1
    assert level(EXPIRY, EXPIRY - 1) == "critical"
    assert level(EXPIRY, EXPIRY) == "expired"


@pytest.mark.parametrize(
    ("now", "words"),
    [
        (EXPIRY - 120 * DAY, "expires in 120 days (2027-03-01)"),
        (EXPIRY - 1.5 * DAY, "expires in 1 day (2027-03-01)"),
        (EXPIRY - 3600, "expires today (2027-03-01)"),
        (EXPIRY + 3600, "expired today (2027-03-01)"),
        (EXPIRY + 1.5 * DAY, "expired 1 day ago (2027-03-01)"),
        (EXPIRY + 40 * DAY, "expired 40 days ago (2027-03-01)"),
    ],
)
def test_how_every_surface_says_it(now: float, words: str) -> None:
    assert describe(EXPIRY, now) == words


def test_a_time_of_day_is_said_when_it_is_not_midnight() -> None:
    at = EXPIRY + 14.5 * 3600
    assert describe(at, at - 10 * DAY) == "expires in 10 days (2027-03-01 14:30 UTC)"


def test_config_check_says_when_each_credential_expires_and_where_to_read_a_missing_date(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    soon = (datetime.now(UTC) + timedelta(days=20, hours=12)).date().isoformat()
    path = tmp_path / "c.yml"
    path.write_text(
        "credentials:\n"
        f"  - {{name: soon, client_id: x, client_secret: y, expires_at: {soon}}}\n"
        "  - {name: far, client_id: x, client_secret: y, expires_at: 2099-01-01}\n"
        "  - {name: undated, client_id: x, client_secret: y}\n"
    )
    assert main(["config", "check", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[1] == (
        f"# soon: the credential expires in 20 days ({soon}): Before {soon}, create a new API "
        "credential in Sophos Central (Global Settings > API Credentials Management), put its "
        "client id and secret and its expires_at in the config (and in every other integration "
        "that uses this credential), then delete the old one."
    )
    assert lines[2].startswith("# far: the credential expires in ") and "(2099-01-01)" in lines[2]
    assert lines[3] == (
        "# undated: no expires_at; Sophos Central shows the credential's expiry date under "
        "Global Settings > API Credentials Management: set it to be warned 30 days before the "
        "credential stops working"
    )
    shown = yaml.safe_load(out.split("\n", 1)[1])  # the notes are comments: still a config
    assert [c.get("expires_at") for c in shown["credentials"]] == [soon, "2099-01-01", None]
