"""The HTTP shell: the FastAPI app factory.

The admission endpoints (POST /mutate and /validate) are answered by the raw ASGI layer in
`fastpath`, called first thing by the app itself; the framework routes the rest: /healthz,
/readyz and /metrics.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .fastpath import BODY_TIMEOUT, ENDPOINTS, MAX_BODY, MAX_IN_FLIGHT, AdmissionFastPath
from .runtime import Runtime


class MeshgateApp(FastAPI):
    """The FastAPI app, with the admission paths answered before the framework sees them.

    As a middleware, the fast path would run inside FastAPI's and Starlette's own calls and
    Starlette's error middleware (which wraps `send`), on every request; they do nothing an
    admission answer needs (the fast path maps its own errors to statuses). Everything
    else, the lifespan included, is the framework's.
    """

    def __init__(self, admission: AdmissionFastPath, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            endpoint = ENDPOINTS.get(scope["path"])
            if endpoint is not None:
                await self.admission.answer(scope, receive, send, endpoint)
                return
        await super().__call__(scope, receive, send)


def _json(status: int, payload: dict[str, Any]) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


def create_app(
    runtime: Runtime,
    *,
    max_body: int = MAX_BODY,
    max_in_flight: int = MAX_IN_FLIGHT,
    body_timeout: float = BODY_TIMEOUT,
) -> FastAPI:
    admission = AdmissionFastPath(
        runtime, max_body=max_body, max_in_flight=max_in_flight, body_timeout=body_timeout
    )
    app = MeshgateApp(admission, title="meshgate", docs_url=None, redoc_url=None,
                      openapi_url=None)  # fmt: skip
    metrics = runtime.metrics

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
