"""The HTTP shell: the FastAPI app factory.

The admission endpoints (POST /mutate and /validate) are answered by the raw ASGI layer in
`fastpath`, installed as the app's middleware; the framework routes the rest: /healthz,
/readyz and /metrics.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from .fastpath import BODY_TIMEOUT, MAX_BODY, MAX_IN_FLIGHT, AdmissionFastPath
from .runtime import Runtime


def _json(status: int, payload: dict[str, Any]) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


def create_app(
    runtime: Runtime,
    *,
    max_body: int = MAX_BODY,
    max_in_flight: int = MAX_IN_FLIGHT,
    body_timeout: float = BODY_TIMEOUT,
) -> FastAPI:
    app = FastAPI(title="meshgate", docs_url=None, redoc_url=None, openapi_url=None)
    metrics = runtime.metrics
    app.add_middleware(
        AdmissionFastPath,
        runtime=runtime,
        max_body=max_body,
        max_in_flight=max_in_flight,
        body_timeout=body_timeout,
    )

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

    app.router.add_route("/healthz", healthz, methods=["GET"])
    app.router.add_route("/readyz", readyz, methods=["GET"])
    app.router.add_route("/metrics", metrics_endpoint, methods=["GET"])
    return app
