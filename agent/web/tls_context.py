"""The server ``SSLContext`` a web configuration asks for.

Python's ``ssl`` module is the TLS stack (OpenSSL underneath); this module only translates
exporter-toolkit's settings (``agent.web.schema``) into it and loads the certificate, key and
client CA, so that a file that does not load stops the agent at start-up with the key named.
"""

from __future__ import annotations

import re
import ssl
import tempfile
from pathlib import Path
from typing import NoReturn

from agent.configfile import ConfigError, Problem
from agent.web.schema import TLS12_CIPHERS, TLSServerConfig, WebConfig


def _fail(source: str, key: str, problem: str) -> NoReturn:
    raise ConfigError.invalid(source, [Problem(key, problem)]) from None


def build_ssl_context(cfg: WebConfig) -> ssl.SSLContext | None:
    """The server-side ``SSLContext`` for ``cfg``, or None when the file does not enable TLS.

    ``minimum_version`` defaults to TLS 1.2, so an older client is refused during the handshake,
    before any HTTP is read. ALPN offers only ``http/1.1`` because that is what uvicorn's h11
    protocol speaks; advertising ``h2`` would break clients that pick it.
    """
    tls = cfg.tls
    if tls is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = tls.min_version
    ctx.maximum_version = tls.max_version
    if tls.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    _load_cert_chain(ctx, tls, cfg.source)
    ctx.verify_mode = tls.verify_mode
    if tls.verify_mode != ssl.CERT_NONE:
        _load_client_ca(ctx, tls, cfg.source)
    openssl_ciphers = [TLS12_CIPHERS[n] for n in tls.cipher_suites if n in TLS12_CIPHERS]
    if openssl_ciphers:
        try:
            ctx.set_ciphers(":".join(openssl_ciphers))
        except ssl.SSLError:
            _fail(
                cfg.source,
                "tls_server_config.cipher_suites",
                "none of the listed cipher suites is available in this OpenSSL build",
            )
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def _load_cert_chain(ctx: ssl.SSLContext, tls: TLSServerConfig, source: str) -> None:
    where = "tls_server_config"
    cert_text = tls.cert if tls.cert is not None else _read_pem(tls.cert_file, source, "cert_file")
    key_text = tls.key if tls.key is not None else _read_pem(tls.key_file, source, "key_file")
    cert_key = "cert" if tls.cert is not None else "cert_file"
    key_key = "key" if tls.key is not None else "key_file"
    if "-----BEGIN CERTIFICATE-----" not in cert_text:
        _fail(source, f"{where}.{cert_key}", "does not contain a PEM certificate")
    if not re.search(r"-----BEGIN [A-Z ]*PRIVATE KEY-----", key_text):
        _fail(source, f"{where}.{key_key}", "does not contain a PEM private key")
    if "ENCRYPTED" in key_text:
        _fail(source, f"{where}.{key_key}", "encrypted private keys are not supported")
    # The ssl module loads certificates and keys only from files; inline PEM goes through a
    # private temporary directory that is removed right after loading.
    with tempfile.TemporaryDirectory(prefix="webconfig-") as tmp:
        cert_path = tls.cert_file or _write_private(Path(tmp) / "cert.pem", cert_text)
        key_path = tls.key_file or _write_private(Path(tmp) / "key.pem", key_text)
        try:
            # A password callback keeps OpenSSL from ever prompting on the terminal.
            ctx.load_cert_chain(cert_path, key_path, password=_no_password)
        except ssl.SSLError as exc:
            _fail(source, where, f"cannot load the certificate and key: {_ssl_reason(exc)}")


def _load_client_ca(ctx: ssl.SSLContext, tls: TLSServerConfig, source: str) -> None:
    where = "tls_server_config"
    if tls.client_ca is not None:
        ca_key, ca_text = "client_ca", tls.client_ca
    else:
        ca_key, ca_text = "client_ca_file", _read_pem(tls.client_ca_file, source, "client_ca_file")
    if "-----BEGIN CERTIFICATE-----" not in ca_text:
        _fail(source, f"{where}.{ca_key}", "does not contain a PEM certificate")
    try:
        ctx.load_verify_locations(cadata=ca_text)
    except ssl.SSLError as exc:
        _fail(source, f"{where}.{ca_key}", f"cannot load the CA: {_ssl_reason(exc)}")


def _read_pem(path: Path | None, source: str, key: str) -> str:
    assert path is not None
    try:
        return path.read_text(encoding="ascii")
    except FileNotFoundError:
        _fail(source, f"tls_server_config.{key}", f"file not found: {path}")
    except UnicodeDecodeError:
        _fail(source, f"tls_server_config.{key}", f"not a PEM file: {path}")
    except OSError as exc:
        _fail(source, f"tls_server_config.{key}", f"cannot read {path}: {_os_reason(exc)}")


def _write_private(path: Path, text: str) -> Path:
    path.touch(mode=0o600)
    path.write_text(text, encoding="ascii")
    return path


def _no_password() -> bytes:
    return b""


def _ssl_reason(exc: ssl.SSLError) -> str:
    if exc.reason == "KEY_VALUES_MISMATCH":
        return "the private key does not match the certificate"
    text = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], str) else str(exc)
    return re.sub(r"\s*\(_ssl\.c:\d+\)$", "", text)


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
