"""Serving the app over TLS with uvicorn: one worker per process, TLS 1.2 or newer."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import uvicorn

from .certs import TLS_CERT_FILE, TLS_KEY_FILE

# Forward-secret AEAD suites only, for TLS 1.2 (TLS 1.3 suites are fixed by OpenSSL).
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def tls_context(cert_dir: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION
    context.load_cert_chain(cert_dir / TLS_CERT_FILE, cert_dir / TLS_KEY_FILE)
    return context


def make_server(app: Any, host: str, port: int, cert_dir: Path) -> uvicorn.Server:
    context = tls_context(cert_dir)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        workers=1,
        access_log=False,
        log_config=None,
        lifespan="off",
        server_header=False,
        timeout_keep_alive=30,
        ssl_context_factory=lambda _config, _default: context,
    )
    return uvicorn.Server(config)
