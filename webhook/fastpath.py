"""The admission hot path: POST /mutate and /validate answered over raw ASGI.

Every pod creation in the cluster passes through here, so this path pays only for what an
answer needs: read the body, parse it, judge it, write the JSON answer, one log line and the
metrics. The app (`app.MeshgateApp`) hands these two paths straight to `AdmissionFastPath`;
routing, request and response objects, and the framework's middleware are for every other
route (healthz, readyz, metrics); here they would cost more than the judging itself. The
mapping from failure to HTTP status lives in this one place: the body limit (413), a body
that stalls (408), the content type (415), malformed reviews (400), overload and
readiness (503), unexpected errors (500, logged and counted).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from . import logs
from .admission import BadRequest, Outcome, admit, parse_review
from .runtime import Runtime

MAX_BODY = 7 * 1024 * 1024  # the API server caps objects at 3 MiB; a review carries two
MAX_IN_FLIGHT = 256  # at least 64 (SPEC 5); beyond this, 503 and the failurePolicy applies
# A body that has not arrived by then never will in time (the API server gives a webhook 30 s
# at most); without a deadline, clients that stall mid-body would hold every in-flight slot.
BODY_TIMEOUT = 10.0
ENDPOINTS = {"/mutate": "mutate", "/validate": "validate"}

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("meshgate.admission")

_JSON = (b"content-type", b"application/json")
_CLOSE = (b"connection", b"close")
_RETRY = (b"retry-after", b"1")


class ClientGone(Exception):
    """The caller disconnected before its body was complete."""


class TooLarge(Exception):
    """The body is over the limit (read no further)."""


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


class AdmissionFastPath:
    """Answers the HTTP requests for /mutate and /validate (any method)."""

    def __init__(
        self,
        runtime: Runtime,
        max_body: int = MAX_BODY,
        max_in_flight: int = MAX_IN_FLIGHT,
        body_timeout: float = BODY_TIMEOUT,
    ) -> None:
        self.runtime = runtime
        self.max_body = max_body
        self.max_in_flight = max_in_flight
        self.body_timeout = body_timeout
        self.in_flight = 0
        self._record = _Recorder(runtime)

    async def answer(self, scope: Scope, receive: Receive, send: Send, endpoint: str) -> None:
        """Answer an http `scope` for ENDPOINTS' path of `endpoint`."""
        if scope["method"] != "POST":
            await _reply(send, 405, orjson.dumps({"detail": "Method Not Allowed"}),
                         (b"allow", b"POST"))  # fmt: skip
            return
        status, body = await self._judge(scope, receive, endpoint)
        # Leaving (draining), or the rest of a body we refused is still on its way: close,
        # so the caller reconnects (elsewhere) rather than us reading what we will discard.
        extra = [_CLOSE] if self.runtime.draining or status in (408, 413) else []
        if status == 503:
            extra.append(_RETRY)
        await _reply(send, status, body, *extra)

    async def _judge(self, scope: Scope, receive: Receive, endpoint: str) -> tuple[int, bytes]:
        """(status, JSON body) for one admission call; never raises."""
        started = time.perf_counter()
        runtime = self.runtime
        if self.in_flight >= self.max_in_flight:
            runtime.metrics.requests.inc((endpoint, "", "overloaded"))
            message = "overloaded: too many requests in flight; retry"
            return self._error(endpoint, started, 503, message)
        context = runtime.context
        if context is None:
            return self._error(endpoint, started, 503, f"not ready: {runtime.not_ready_detail}")
        content_type = _header(scope, b"content-type") or b""
        media_type = content_type.split(b";")[0].strip().lower()
        if media_type != b"application/json":
            shown = media_type.decode("latin-1")
            return self._error(endpoint, started, 415,
                               f"content type must be application/json, got {shown!r}")  # fmt: skip
        self.in_flight += 1
        uid: str | None = None
        try:
            try:
                body = await self._body(scope, receive)
            except TimeoutError:
                message = f"request body not received within {self.body_timeout:g} s"
                return self._error(endpoint, started, 408, message)
            except TooLarge:
                message = f"request body is larger than {self.max_body} bytes"
                return self._error(endpoint, started, 413, message)
            try:
                parsed = parse_review(body)
                uid = parsed["uid"]
                namespace = parsed.get("namespace")
                if namespace and not runtime.namespaces.cached(namespace):
                    # A namespace created a moment ago: one short GET, off the event loop.
                    await asyncio.to_thread(runtime.namespaces.fetch, namespace)
                outcome = admit(parsed, endpoint, context)
            except BadRequest as err:
                runtime.metrics.requests.inc((endpoint, "", "bad-request"))
                return self._error(endpoint, started, err.status, err.message, err.uid)
            self._record(endpoint, outcome, started)
            return 200, orjson.dumps(outcome.review)
        except ClientGone:
            # The caller went away mid-body (e.g. the API server's timeout): no one reads an
            # answer, and it is no fault of ours, so it is not counted as an internal error.
            log.info("client disconnected before the body was complete",
                     extra={"endpoint": endpoint})  # fmt: skip
            return 400, _error_body("client disconnected before the body was complete")
        except Exception:
            log.exception("internal error", extra={"uid": uid, "endpoint": endpoint})
            runtime.metrics.errors.inc()
            return 500, _error_body("internal error (logged); the failurePolicy applies", uid)
        finally:
            self.in_flight -= 1

    async def _body(self, scope: Scope, receive: Receive) -> bytes:
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            raise TooLarge
        message = await receive()  # the common case: the whole body has arrived already
        chunks = [message.get("body", b"")]
        if message["type"] == "http.disconnect":
            raise ClientGone
        if not message.get("more_body", False):
            if len(chunks[0]) > self.max_body:
                raise TooLarge
            return chunks[0]
        async with asyncio.timeout(self.body_timeout):
            size = len(chunks[0])
            while True:
                if size > self.max_body:
                    raise TooLarge
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone
                chunk = message.get("body", b"")
                size += len(chunk)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
            if size > self.max_body:
                raise TooLarge
        return b"".join(chunks)

    def _error(
        self, endpoint: str, started: float, status: int, message: str, uid: str | None = None
    ) -> tuple[int, bytes]:
        """An HTTP error answer, with its one log line (the message names what was wrong,
        never the content of the object)."""
        log.info("admission request not judged", extra={
            "uid": uid, "endpoint": endpoint, "status": status, "error": message[:300],
            "durationMs": round((time.perf_counter() - started) * 1000, 3)})  # fmt: skip
        return status, _error_body(message, uid)


class _Recorder:
    """Metrics and the per-request log line of a judged request."""

    def __init__(self, runtime: Runtime) -> None:
        metrics = runtime.metrics
        self._requests = metrics.requests
        self._duration = metrics.duration
        self._decisions = metrics.decisions
        self._violations = metrics.violations

    def __call__(self, endpoint: str, outcome: Outcome, started: float) -> None:
        elapsed = time.perf_counter() - started
        self._requests.inc((endpoint, outcome.operation, outcome.decision))
        self._duration.observe((endpoint,), elapsed)
        if endpoint == "mutate" and outcome.mode:
            self._decisions.inc((outcome.mode, outcome.decision))
        if endpoint == "validate" and outcome.violations:
            self._violations.inc((outcome.gate_action,), len(outcome.violations))
        if log.isEnabledFor(logging.INFO):
            logs.info(log.name, "admission", {
                "uid": outcome.review["response"]["uid"],
                "endpoint": endpoint,
                "namespace": outcome.namespace,
                "pod": outcome.name,
                "operation": outcome.operation,
                "decision": outcome.decision,
                "allowed": outcome.allowed,
                "reason": outcome.reason,
                "violations": outcome.violations,  # a tuple: a JSON array too
                # The value of round(elapsed * 1000, 3), at a fraction of its cost.
                "durationMs": round(elapsed * 1_000_000) / 1000,
            })  # fmt: skip


def _error_body(message: str, uid: str | None = None) -> bytes:
    return orjson.dumps({"error": message, "uid": uid} if uid else {"error": message})


async def _reply(send: Send, status: int, body: bytes, *headers: tuple[bytes, bytes]) -> None:
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [_JSON, (b"content-length", str(len(body)).encode()), *headers],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": body})
