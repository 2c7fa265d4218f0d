"""Reading a ``--web.config.file``: the schema (``agent.web.schema``) and the TLS files it names
(``agent.web.tls_context``), checked together at start-up and by ``config check``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agent.configfile import ConfigError, read_mapping, validation_problems
from agent.web.schema import WHAT, WebConfig, warn_about_approximations
from agent.web.tls_context import build_ssl_context


def load_web_config(path: str | Path) -> WebConfig:
    """Read and fully validate a web configuration file; ``ConfigError`` names key and problem.

    Everything the file points at is checked now (files exist, certificate and key load and
    match, the CA parses), so a mistake stops the agent at start-up and shows in ``config
    check`` rather than at the first scrape. Relative paths are relative to the file's directory,
    as in exporter-toolkit. An empty file is valid and means plain HTTP without authentication.
    """
    file = Path(path)
    data = read_mapping(file, WHAT)
    return parse_web_config(data, base_dir=file.resolve().parent, source=f"{WHAT} {file}")


def parse_web_config(data: Any, *, base_dir: Path, source: str = WHAT) -> WebConfig:
    """Validate already-parsed YAML (``None`` means an empty file); see ``load_web_config``."""
    try:
        cfg = WebConfig.model_validate(data or {}, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError.invalid(source, validation_problems(exc, WebConfig)) from None
    cfg._source = source
    warn_about_approximations(cfg.tls)
    build_ssl_context(cfg)  # loads the certificate, key and CA now: fail at start-up, not later
    return cfg
