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

Slow and greedy clients (SPEC 5, issue 6): uvicorn bounds neither the time a request may
take to arrive nor the size of its head, so `GuardedHTTPProtocol` adds both: a request
(request line, headers and body) must have fully arrived within `REQUEST_TIMEOUT` of its
first byte (the first request of a connection: of the connection being accepted, TLS
handshake included), or the connection is dropped; a request line and headers over
`MAX_HEAD_BYTES` are answered 431 and the connection closed. The TLS handshake and the TLS
close are bounded too (`TLS_HANDSHAKE_TIMEOUT`, `TLS_SHUTDOWN_TIMEOUT`; asyncio's defaults
are 60 s and 30 s). An idle keep-alive connection is closed after `KEEP_ALIVE_TIMEOUT`.
While more than `MAX_CONNECTIONS` connections are open, every request is answered 503 (and
its connection closed), as is one beyond the app's own bound on requests in flight.
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

import orjson
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from . import logs
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
# A request, its first byte to its last (a connection's first: from its accept), in seconds.
# The API server waits for a webhook at most 30 s (ours: timeoutSeconds <= 5): a request
# still arriving after 10 s is a client that is stuck or hostile, not one worth waiting for.
REQUEST_TIMEOUT = 10.0
# Request line and headers. The API server sends well under 1 KiB; uvicorn's httptools
# parser has no limit of its own (a client could stream headers until memory runs out).
MAX_HEAD_BYTES = 64 * 1024
# Seconds an idle keep-alive connection stays open. Long enough that a quiet API server
# (a pod now and then) reuses its connection instead of paying a handshake per call, and
# rarely races a close against its next request; idle connections cost little and are
# bounded by MAX_CONNECTIONS.
KEEP_ALIVE_TIMEOUT = 30
# Open connections served at once; while more are open (counting those still in their TLS
# close), every request is answered 503 (uvicorn's limit_concurrency). Far above the
# benchmark's 64 connections and above the app's bound on requests in flight (256), so that
# bound, with its JSON 503, is the one normally met.
MAX_CONNECTIONS = 512
TLS_HANDSHAKE_TIMEOUT = REQUEST_TIMEOUT
TLS_SHUTDOWN_TIMEOUT = 5.0  # waiting for the peer's close_notify, after our own

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
    # With OP_NO_TICKET, OpenSSL 3 still answers each TLS 1.3 handshake with a stateful
    # ticket and keeps its session in the server cache; nothing resumes them (the API
    # server does not), so they only grow memory with every new connection: issue none.
    context.num_tickets = 0
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


class GuardedHTTPProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline per request and a bound on its head.

    One timer per connection at most, re-armed lazily: a request's start records its
    deadline; its end clears it; the timer, when it fires, drops the connection only if the
    request it was armed for (or a later one) is still incomplete.
    """

    request_timeout: float = REQUEST_TIMEOUT
    max_head_bytes: int = MAX_HEAD_BYTES

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Made when the connection is accepted, before the TLS handshake: the first
        # request's time runs from now.
        self._deadline: float | None = self.loop.time() + self.request_timeout
        self._timer: asyncio.TimerHandle | None = None
        self._in_head = True  # the current request's line and headers are not complete
        self._head_bytes = 0
        self._tail = b""  # the last bytes of the head so far: its end may span two reads

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._deadline = None
        super().connection_lost(exc)
        # uvicorn cancels its keep-alive timer only when the connection ends cleanly; after
        # a reset the timer would keep this protocol, its transport and TLS buffers (tens
        # of KB) in memory until it fires, KEEP_ALIVE_TIMEOUT later.
        self._unset_keepalive_if_required()

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return  # refused or dropped: nothing more is read
        if self._in_head:
            # Measured before the parser sees it: a head that arrives whole in one read
            # would otherwise be taken, whatever its size.
            end = (self._tail + data).find(b"\r\n\r\n")
            self._head_bytes += len(data) if end < 0 else end + 4 - len(self._tail)
            if self._head_bytes > self.max_head_bytes:
                self._refuse_head()
                return
            self._tail = data[-3:]
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:  # a later request on a kept-alive connection
            self._deadline = self.loop.time() + self.request_timeout
            self._arm()

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._deadline = None
        self._in_head, self._head_bytes, self._tail = True, 0, b""

    def _arm(self) -> None:
        if self._timer is None and self._deadline is not None:
            self._timer = self.loop.call_at(self._deadline, self._expired)

    def _expired(self) -> None:
        self._timer = None
        if self._deadline is None or self.transport is None or self.transport.is_closing():
            return
        now = self.loop.time()
        if self.flow.read_paused:
            # We stopped reading (the app has not taken the body so far, or a pipelined
            # request waits for the one before it): not the client's delay.
            self._deadline = now + self.request_timeout
        if now < self._deadline:
            self._arm()
            return
        log.info("request not received in time: connection dropped",
                 extra={"client": _address(self.client), "seconds": self.request_timeout,
                        "headersComplete": not self._in_head})  # fmt: skip
        self.transport.abort()  # no TLS close: a stuck peer would hold the socket longer

    def _refuse_head(self) -> None:
        log.warning("request line and headers too large: refused",
                    extra={"client": _address(self.client), "limit": self.max_head_bytes})
        if self.cycle is None or self.cycle.response_complete:  # no answer is being written
            body = orjson.dumps({"error": "request line and headers are larger than "
                                          f"{self.max_head_bytes} bytes"})  # fmt: skip
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                b"content-type: application/json\r\nconnection: close\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(body), body)
            )
            self.transport.close()
        else:
            self.transport.abort()


def _address(client: tuple[str, int] | None) -> str | None:
    return f"{client[0]}:{client[1]}" if client else None


def _tls_limits(kwargs: dict[str, Any]) -> dict[str, Any]:
    if kwargs.get("ssl") is not None:
        kwargs.setdefault("ssl_handshake_timeout", TLS_HANDSHAKE_TIMEOUT)
        kwargs.setdefault("ssl_shutdown_timeout", TLS_SHUTDOWN_TIMEOUT)
    return kwargs


# uvicorn creates the listener with the loop's own TLS handshake and close timeouts (60 s
# and 30 s) and no way to change them: its loop, with those two bounded, is ours.
class _SelectorLoop(asyncio.SelectorEventLoop):
    async def create_server(self, *args: Any, **kwargs: Any) -> asyncio.Server:
        return await super().create_server(*args, **_tls_limits(kwargs))


try:
    import uvloop
except ImportError:  # pragma: no cover  (uvicorn[standard] brings it on Linux)
    uvloop = None  # type: ignore[assignment]

if uvloop is not None:

    class _UVLoop(uvloop.Loop):
        async def create_server(self, *args: Any, **kwargs: Any) -> asyncio.AbstractServer:  # type: ignore[override]
            return await super().create_server(*args, **_tls_limits(kwargs))


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The event loop uvicorn would choose ("auto": uvloop when installed), with the TLS
    handshake and close bounded."""
    return _UVLoop() if uvloop is not None else _SelectorLoop()


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
            # The last requests' log lines wait for a turn of the loop that may not come.
            logs.lines.flush()

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
    request_timeout: float = REQUEST_TIMEOUT,
    keep_alive: int = KEEP_ALIVE_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
) -> Server:
    """A server for `app` on host:port over TLS from `cert_dir` (CertificateError if the
    files do not load). With `runtime`, it reports the certificate in its metrics and turns
    `runtime.draining` on when the drain starts. The limits on clients (module docstring)
    are parameters for the tests; meshgate serves with the defaults."""
    certificate = ServingCertificate(cert_dir, runtime.metrics if runtime else None)
    protocol = type("GuardedHTTPProtocol", (GuardedHTTPProtocol,),
                    {"request_timeout": request_timeout})  # fmt: skip
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        workers=1,
        loop=new_event_loop,  # type: ignore[arg-type]
        http=protocol,
        ws="none",  # no WebSocket endpoint: an upgrade request is served as plain HTTP
        # Nothing proxies to meshgate (the API server calls it through its Service): no
        # X-Forwarded-* rewriting, and no middleware for it on every request.
        proxy_headers=False,
        access_log=False,
        log_config=None,
        lifespan="off",
        server_header=False,
        timeout_keep_alive=keep_alive,
        # uvicorn answers 503 once this many connections (this one included) are open.
        limit_concurrency=max_connections + 1,
        timeout_graceful_shutdown=SHUTDOWN_TIMEOUT,
        ssl_context_factory=lambda _config, _default: certificate.listener,
    )

    def on_drain() -> None:
        if runtime is not None:
            runtime.draining = True

    return Server(config, certificate, drain_seconds=drain_seconds, on_drain=on_drain,
                  reload_interval=reload_interval)  # fmt: skip
