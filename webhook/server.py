"""Serving the app over TLS with uvicorn: one worker per process, hardened TLS, a serving
certificate that follows its files, and a drain before every shutdown.

Rotation: a Kubernetes Secret volume is updated by an atomic symlink swap (``tls.crt ->
..data/tls.crt``, ``..data -> ..2026_11_26_10_00_00.123``), cert-manager and ``meshgate
certs`` replace files in place. Either way the listener's TLS context stays the one uvicorn
was given; its ``sni_callback`` (OpenSSL calls it on every ClientHello, with or without SNI)
moves each new handshake onto the newest loaded context. Reloading builds a fresh context
off the event loop and swaps one reference, so a handshake sees the old certificate or the
new one, never half of each, and established connections keep theirs.

Shutdown (SPEC 6): SIGTERM starts a drain. ``/readyz`` turns 503 at once so endpoints and
load balancers move on, while requests keep being answered (the API server does not retry
a failed webhook call); then the listener closes and requests in flight are finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from .certs import TLS_CERT_FILE, TLS_KEY_FILE

if TYPE_CHECKING:
    from .metrics import Metrics
    from .runtime import Runtime

# Forward-secret AEAD suites only, for TLS 1.2 (TLS 1.3 suites are all AEAD and
# forward-secret; OpenSSL fixes them).
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
RELOAD_INTERVAL = 1.0  # seconds between looks at the certificate files
DRAIN_SECONDS = 5.0  # default of `meshgate serve --drain-seconds`
# After the drain, how long requests in flight may take before they are cancelled. The API
# server gives a webhook at most 30 s (ours: timeoutSeconds <= 5); a body that stalls is
# already cut off by the app's body timeout.
SHUTDOWN_TIMEOUT = 15

log = logging.getLogger("meshgate.server")


class CertificateError(Exception):
    """The serving certificate files are missing, unreadable or do not match."""


def hardened_context() -> ssl.SSLContext:
    """A server context with meshgate's TLS policy and no certificate yet."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS)
    context.options |= (
        ssl.OP_NO_COMPRESSION  # CRIME
        | ssl.OP_NO_RENEGOTIATION  # TLS 1.2 renegotiation: a DoS lever, never needed here
        | ssl.OP_CIPHER_SERVER_PREFERENCE
        # A long-lived process never rotates its ticket key, and a stolen ticket key would
        # decrypt every TLS 1.2 session it resumed: keep resumption state server-side.
        | ssl.OP_NO_TICKET
    )
    return context


def tls_context(cert_dir: Path) -> ssl.SSLContext:
    """A hardened context serving the certificate in `cert_dir` as it is now."""
    return ServingCertificate(cert_dir).listener


@dataclass(frozen=True)
class Loaded:
    """One serving certificate and key, loaded into a context of their own."""

    context: ssl.SSLContext
    digest: str  # of the two files' bytes: a rewrite with the same content is no reload
    fingerprint: str  # SHA-256 of the certificate (DER), as `openssl x509 -fingerprint` shows
    serial: int
    subject: str
    not_after: float  # unix time


def _stat(path: Path) -> tuple[Any, ...]:
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
    except OSError as err:
        return (str(path), type(err).__name__, err.errno)
    return (real, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


class ServingCertificate:
    """`tls.crt` and `tls.key` in `cert_dir`, reloaded by `check()` when they change.

    A change that does not load (a file missing or half-written, a key that does not match
    the certificate) keeps the certificate in use: it is tried again on every `check()`
    until the files load, and logged and counted once if it still fails on the second try.
    """

    def __init__(self, cert_dir: Path, metrics: Metrics | None = None) -> None:
        self.cert_dir = Path(cert_dir)
        self._metrics = metrics
        self._pending: tuple[Any, ...] | None = None  # failed once: may be mid-update
        self._failed: tuple[Any, ...] | None = None  # failed twice: logged and counted
        self._seen = self._signature()
        self.current = self._load()  # CertificateError at start-up: nothing to serve yet
        self.listener = self.current.context
        self.listener.sni_callback = self._select
        self._loaded(self.current, first=True)

    def _select(self, ssl_object: Any, server_name: str | None, listener: ssl.SSLContext) -> None:
        current = self.current.context  # one read: this handshake gets one certificate
        if current is not listener:
            ssl_object.context = current

    def _signature(self) -> tuple[Any, ...]:
        # The resolved paths change with each symlink swap; inode and mtime with each
        # rename or rewrite in place.
        return _stat(self.cert_dir / TLS_CERT_FILE) + _stat(self.cert_dir / TLS_KEY_FILE)

    def _load(self) -> Loaded:
        # Resolve the links once: both files then come from the same `..data` generation,
        # even if the link is swapped again meanwhile.
        cert_path = Path(os.path.realpath(self.cert_dir / TLS_CERT_FILE))
        key_path = Path(os.path.realpath(self.cert_dir / TLS_KEY_FILE))
        try:
            cert_pem, key_pem = cert_path.read_bytes(), key_path.read_bytes()
            context = hardened_context()
            context.load_cert_chain(cert_path, key_path)
            if cert_path.read_bytes() != cert_pem or key_path.read_bytes() != key_pem:
                raise CertificateError("the files changed while they were being loaded")
            cert = x509.load_pem_x509_certificate(cert_pem)
        except (ssl.SSLError, ValueError) as err:  # (SSLError is an OSError: first)
            raise CertificateError(f"{TLS_CERT_FILE} and {TLS_KEY_FILE} in {self.cert_dir} "
                                   f"do not load: {err}") from None  # fmt: skip
        except OSError as err:
            raise CertificateError(f"{err.filename or self.cert_dir}: {err.strerror}") from None
        return Loaded(
            context=context,
            digest=hashlib.sha256(cert_pem + b"\0" + key_pem).hexdigest(),
            fingerprint=cert.fingerprint(hashes.SHA256()).hex(),
            serial=cert.serial_number,
            subject=cert.subject.rfc4514_string(),
            not_after=cert.not_valid_after_utc.timestamp(),
        )

    def _loaded(self, loaded: Loaded, first: bool = False) -> None:
        if self._metrics is not None:
            self._metrics.certificate_reloads.labels("success").inc()
            self._metrics.certificate_expiry.set(loaded.not_after)
        expires_in = loaded.not_after - time.time()
        log.log(
            logging.WARNING if expires_in < 7 * 86400 else logging.INFO,
            "serving certificate loaded" if first else "serving certificate reloaded",
            extra={"dir": str(self.cert_dir), "subject": loaded.subject,
                   "serial": format(loaded.serial, "x"), "sha256": loaded.fingerprint,
                   "notAfter": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(loaded.not_after)),
                   "expiresInDays": round(expires_in / 86400, 1)},
        )  # fmt: skip

    def check(self) -> bool:
        """Load the files if they changed; True when new handshakes now get a new certificate."""
        signature = self._signature()
        if signature == self._seen:
            return False
        try:
            loaded = self._load()
        except CertificateError as err:
            if signature != self._pending:
                # Files replaced one by one (`meshgate certs`, the self-signed keeper) do not
                # match half-way through: look again at the next check before calling it.
                self._pending = signature
                return False
            if signature != self._failed:  # once per change, not once per second
                self._failed = signature
                if self._metrics is not None:
                    self._metrics.certificate_reloads.labels("error").inc()
                log.error(
                    "serving certificate not reloaded; the one in use stays",
                    extra={"error": str(err), "sha256": self.current.fingerprint},
                )
            return False
        self._seen, self._pending, self._failed = signature, None, None
        if loaded.digest == self.current.digest:
            return False
        self.current = loaded
        self._loaded(loaded)
        return True


class Server(uvicorn.Server):
    """uvicorn, plus the certificate watch and the drain on SIGTERM."""

    def __init__(
        self,
        config: uvicorn.Config,
        certificate: ServingCertificate,
        *,
        drain_seconds: float = DRAIN_SECONDS,
        on_drain: Callable[[], None] | None = None,
        reload_interval: float = RELOAD_INTERVAL,
    ) -> None:
        super().__init__(config)
        self.certificate = certificate
        self.drain_seconds = drain_seconds
        self.reload_interval = reload_interval
        self._on_drain = on_drain
        self._drain_until: float | None = None
        self._drain_logged = False

    @property
    def draining(self) -> bool:
        return self._drain_until is not None

    def begin_drain(self) -> None:
        """Turn not-ready now, keep serving for `drain_seconds`, then stop (thread-safe)."""
        if self._drain_until is not None:
            return
        self._drain_until = time.monotonic() + self.drain_seconds
        if self._on_drain is not None:
            self._on_drain()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs in the main thread, between two bytecodes of whatever it interrupted: set
        # flags only; the ticks below do the rest. A second SIGTERM, or SIGINT, stops now.
        if sig == signal.SIGTERM and self.drain_seconds > 0 and not self.draining:
            self.begin_drain()
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._drain_until is not None and not self.should_exit:
            if not self._drain_logged:
                self._drain_logged = True
                log.info("draining: not ready, still answering",
                         extra={"seconds": self.drain_seconds})  # fmt: skip
            if time.monotonic() >= self._drain_until:
                log.info("drain over: no new connections; finishing the requests in flight")
                self.should_exit = True
        return await super().on_tick(counter)

    async def serve(self, sockets: list[Any] | None = None) -> None:
        watch = asyncio.create_task(self._watch_certificate(), name="certificate-watch")
        try:
            await super().serve(sockets)
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch

    async def _watch_certificate(self) -> None:
        while True:
            await asyncio.sleep(self.reload_interval)
            try:
                await asyncio.to_thread(self.certificate.check)
            except Exception:  # the watch must outlive any surprise; the old cert stays
                log.exception("serving certificate check failed")


def make_server(
    app: Any,
    host: str,
    port: int,
    cert_dir: Path,
    *,
    runtime: Runtime | None = None,
    drain_seconds: float = DRAIN_SECONDS,
    reload_interval: float = RELOAD_INTERVAL,
) -> Server:
    """A server for `app` on host:port over TLS from `cert_dir` (CertificateError if the
    files do not load). With `runtime`, it reports the certificate in its metrics and turns
    `runtime.draining` on when the drain starts."""
    certificate = ServingCertificate(cert_dir, runtime.metrics if runtime else None)
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
        timeout_graceful_shutdown=SHUTDOWN_TIMEOUT,
        ssl_context_factory=lambda _config, _default: certificate.listener,
    )

    def on_drain() -> None:
        if runtime is not None:
            runtime.draining = True

    return Server(config, certificate, drain_seconds=drain_seconds, on_drain=on_drain,
                  reload_interval=reload_interval)  # fmt: skip
