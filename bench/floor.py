"""The floor: the least any admission webhook on this stack must do per request.

A raw ASGI app (no framework) served by meshgate's own server factory
(webhook.server.make_server: the same uvicorn, one worker, the same TLS context, access
log off, the same HTTP and event-loop implementations), using the same JSON library
(orjson), the same garbage-collector setting (the start-up heap frozen). It reads the
body, parses the AdmissionReview and answers `allowed: true` with the uid. It writes no
per-request log line. Whatever meshgate spends beyond this is the webhook's own cost.

    python -m bench.floor --cert-dir DIR --port PORT
"""

from __future__ import annotations

import argparse
import gc
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import orjson

from webhook.server import make_server

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_HEADERS = [(b"content-type", b"application/json")]


async def _answer(send: Send, status: int, payload: bytes) -> None:
    headers = [*_HEADERS, (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    if scope["method"] != "POST":  # a readiness probe
        await _answer(send, 200, b'{"status":"ok"}')
        return
    chunks = []
    more = True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    try:
        uid = orjson.loads(b"".join(chunks))["request"]["uid"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        await _answer(send, 400, b'{"error":"not an AdmissionReview"}')
        return
    response = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": uid, "allowed": True},
    }
    await _answer(send, 200, orjson.dumps(response))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cert-dir", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    server = make_server(app, args.host, args.port, args.cert_dir)
    # As `meshgate serve` does: the start-up heap out of the garbage collector's sight, so
    # the floor does not pay for walking it on large bodies either.
    gc.collect()
    gc.freeze()
    server.run()


if __name__ == "__main__":
    main()
