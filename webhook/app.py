"""The HTTP shell: FastAPI app factory, body checks, status mapping, logs and metrics.

Everything between the socket and `admission.admit` lives here, and only here: the body
limit (413), a body that stalls (408), the content type (415), malformed reviews (400),
overload and readiness (503), unexpected errors (500, logged and counted). The admission
routes are plain Starlette routes inside the FastAPI app: they take the raw body and return
raw JSON, with no model validation of the pod, which the hot path does not need.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from fastapi import FastAPI
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from .admission import BadRequest, Outcome, admit, parse_review
from .runtime import Runtime

MAX_BODY = 7 * 1024 * 1024  # the API server caps objects at 3 MiB; a review carries two
MAX_IN_FLIGHT = 256  # at least 64 (SPEC 5); beyond this, 503 and the failurePolicy applies
# A body that has not arrived by then never will in time (the API server gives a webhook 30 s
# at most); without a deadline, clients that stall mid-body would hold every in-flight slot.
BODY_TIMEOUT = 10.0

log = logging.getLogger("meshgate.admission")


def _json(status: int, payload: dict[str, Any]) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


def _error(status: int, message: str, uid: str | None = None) -> Response:
    payload: dict[str, Any] = {"error": message}
    if uid:
        payload["uid"] = uid
    response = _json(status, payload)
    if status == 503:
        response.headers["Retry-After"] = "1"
    return response


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None once it exceeds `limit` (read no further than that)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(
    runtime: Runtime,
    *,
    max_body: int = MAX_BODY,
    max_in_flight: int = MAX_IN_FLIGHT,
    body_timeout: float = BODY_TIMEOUT,
) -> FastAPI:
    app = FastAPI(title="meshgate", docs_url=None, redoc_url=None, openapi_url=None)
    metrics = runtime.metrics
    in_flight = 0

    def record(endpoint: str, outcome: Outcome, started: float) -> None:
        elapsed = time.perf_counter() - started
        metrics.requests.labels(endpoint, outcome.operation, outcome.decision).inc()
        metrics.duration.labels(endpoint).observe(elapsed)
        if endpoint == "mutate" and outcome.mode:
            metrics.decisions.labels(outcome.mode, outcome.decision).inc()
        if endpoint == "validate" and outcome.violations:
            metrics.violations.labels(outcome.gate_action).inc(len(outcome.violations))
        log.info(
            "admission",
            extra={
                "uid": outcome.review["response"]["uid"],
                "endpoint": endpoint,
                "namespace": outcome.namespace,
                "pod": outcome.name,
                "operation": outcome.operation,
                "decision": outcome.decision,
                "allowed": outcome.allowed,
                "reason": outcome.reason,
                "violations": list(outcome.violations),
                "durationMs": round(elapsed * 1000, 3),
            },
        )

    def http_error(endpoint: str, started: float, status: int, message: str,
                   uid: str | None = None) -> Response:  # fmt: skip
        """An HTTP error answer, with its one log line (the message names what was wrong,
        never the content of the object)."""
        log.info("admission request not judged", extra={
            "uid": uid, "endpoint": endpoint, "status": status, "error": message[:300],
            "durationMs": round((time.perf_counter() - started) * 1000, 3)})  # fmt: skip
        return _error(status, message, uid)

    async def serve_review(request: Request, endpoint: str) -> Response:
        nonlocal in_flight
        started = time.perf_counter()
        if in_flight >= max_in_flight:
            metrics.requests.labels(endpoint, "", "overloaded").inc()
            return http_error(
                endpoint, started, 503, "overloaded: too many requests in flight; retry"
            )
        context = runtime.context
        if context is None:
            return http_error(endpoint, started, 503, f"not ready: {runtime.not_ready_detail}")
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/json":
            return http_error(
                endpoint, started, 415, f"content type must be application/json, got {media_type!r}"
            )
        in_flight += 1
        uid = None
        try:
            try:
                async with asyncio.timeout(body_timeout):
                    body = await _read_body(request, max_body)
            except TimeoutError:
                return http_error(
                    endpoint, started, 408, f"request body not received within {body_timeout:g} s"
                )
            if body is None:
                return http_error(
                    endpoint, started, 413, f"request body is larger than {max_body} bytes"
                )
            try:
                parsed = parse_review(body)
                uid = parsed["uid"]
                namespace = parsed.get("namespace")
                if namespace and not runtime.namespaces.cached(namespace):
                    # A namespace created a moment ago: one short GET, off the event loop.
                    await asyncio.to_thread(runtime.namespaces.fetch, namespace)
                outcome = admit(parsed, endpoint, context)
            except BadRequest as err:
                metrics.requests.labels(endpoint, "", "bad-request").inc()
                return http_error(endpoint, started, err.status, err.message, err.uid)
            record(endpoint, outcome, started)
            return Response(orjson.dumps(outcome.review), media_type="application/json")
        except ClientDisconnect:
            # The caller went away mid-body (e.g. the API server's timeout): no one reads an
            # answer, and it is no fault of ours, so it is not counted as an internal error.
            log.info("client disconnected before the body was complete",
                     extra={"endpoint": endpoint})  # fmt: skip
            return _error(400, "client disconnected before the body was complete")
        except Exception:
            log.exception("internal error", extra={"uid": uid, "endpoint": endpoint})
            metrics.errors.inc()
            return _error(500, "internal error (logged); the failurePolicy applies", uid)
        finally:
            in_flight -= 1

    async def answer(request: Request, endpoint: str) -> Response:
        response = await serve_review(request, endpoint)
        if runtime.draining:
            # Keep-alive callers (the API server) reconnect for their next call, and reach
            # a replica that is not leaving; this connection is then idle when we close.
            response.headers["connection"] = "close"
        return response

    async def mutate(request: Request) -> Response:
        return await answer(request, "mutate")

    async def validate(request: Request) -> Response:
        return await answer(request, "validate")

    async def healthz(request: Request) -> Response:
        return _json(200, {"status": "ok"})

    async def readyz(request: Request) -> Response:
        if runtime.draining:  # shutting down: out of the endpoints, still answering
            return _json(503, {"ready": False, "detail": "draining"})
        context = runtime.context
        if context is None:
            return _json(503, {"ready": False, "detail": runtime.not_ready_detail})
        status: dict[str, Any] = {"ready": True, "policy": context.policy.version,
                                  "policySource": runtime.policy_source}  # fmt: skip
        if runtime.policy_error:  # a rejected change; the last good policy stays in force
            status["policyError"] = runtime.policy_error
        return _json(200, status)

    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    app.router.add_route("/mutate", mutate, methods=["POST"])
    app.router.add_route("/validate", validate, methods=["POST"])
    app.router.add_route("/healthz", healthz, methods=["GET"])
    app.router.add_route("/readyz", readyz, methods=["GET"])
    app.router.add_route("/metrics", metrics_endpoint, methods=["GET"])
    return app
