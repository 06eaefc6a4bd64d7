"""The HTTP shell over real TLS: webhook.app.create_app served by webhook.server.make_server.

Servers listen on 127.0.0.1 on an ephemeral port, run in a background thread, and stop
themselves at teardown. Clients verify the serving certificate against the test CA. The TLS
policy itself (versions, cipher suites, the chain) is tested in test_tls.py.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from helpers import (
    ServerThread,
    admission_review,
    client_context,
    make_cert_dir,
    patched,
    read_response,
)
from prometheus_client.parser import text_string_to_metric_families

from webhook import certs
from webhook.admission import Context
from webhook.app import Runtime, create_app
from webhook.namespaces import StaticNamespaces
from webhook.policy import compile_policy, default_policy

OWN_NAMESPACE = "meshgate-system"
NAMESPACES = StaticNamespaces({"mesh": {"istio-injection": "enabled"}, "optin": {}})
POLICY = default_policy()
SMALL_BODY = 4096

# ---------------------------------------------------------------------------------------
# certificates, servers, clients


@pytest.fixture(scope="module")
def cert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cert_dir(tmp_path_factory.mktemp("tls"), "meshgate-test-ca")


class Served(ServerThread):
    """One app served over TLS in a background thread (a `with` block stops it)."""

    def __init__(self, app: Any, cert_dir: Path) -> None:
        super().__init__(app, cert_dir, name="meshgate-test")
        with socket.create_connection(("127.0.0.1", self.port), timeout=5):
            pass  # it accepts connections

    def client(self, **kw: Any) -> httpx.Client:
        verify = kw.pop("verify", None) or client_context(self.cert_dir / certs.CA_CERT_FILE)
        return httpx.Client(base_url=self.url, verify=verify, timeout=10, **kw)


def ready_runtime(lookup: Callable[[str], Any] = NAMESPACES) -> Runtime:
    runtime = Runtime()
    runtime.install(Context(POLICY, lookup, OWN_NAMESPACE), "test")
    return runtime


@pytest.fixture(scope="module")
def main_server(cert_dir: Path) -> Iterator[Served]:
    with Served(create_app(ready_runtime()), cert_dir) as served:
        yield served


@pytest.fixture(scope="module")
def client(main_server: Served) -> Iterator[httpx.Client]:
    with main_server.client() as c:
        yield c


@pytest.fixture(scope="module")
def small_server(cert_dir: Path) -> Iterator[Served]:
    with Served(create_app(ready_runtime(), max_body=SMALL_BODY), cert_dir) as served:
        yield served


# ---------------------------------------------------------------------------------------
# reviews


def pod(*caps: str, name: str = "web") -> dict[str, Any]:
    app: dict[str, Any] = {"name": "app", "image": "example.com/app:1"}
    if caps:
        app["securityContext"] = {"capabilities": {"add": list(caps)}}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "web"}},
            "spec": {"containers": [app]}}  # fmt: skip


def review(obj: Any, *, uid: str = "uid-1", namespace: str = "mesh", kind: str = "Pod",
           group: str = "", operation: str = "CREATE") -> dict[str, Any]:  # fmt: skip
    return admission_review(obj, uid=uid, namespace=namespace, kind=kind, group=group,
                            operation=operation, name="web", dry_run=False)  # fmt: skip


JSON = {"content-type": "application/json"}


def post(client: httpx.Client, path: str, body: Any, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return client.post(path, content=content, headers={**JSON, **headers})


def check_error(response: httpx.Response, status: int, uid: str | None = None) -> str:
    """A 4xx/5xx JSON error: {"error": "...", "uid": ... when readable}."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body["error"], str) and body["error"]
    if uid is None:
        assert "uid" not in body
    else:
        assert body["uid"] == uid
    text: str = body["error"]
    return text


# ---------------------------------------------------------------------------------------
# health and readiness (metrics: test_observability.py)


def test_healthz(client: httpx.Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200


def test_readyz_shows_the_policy_version(client: httpx.Client) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert POLICY.version in response.text


def test_not_ready_without_a_policy(cert_dir: Path) -> None:
    with Served(create_app(Runtime()), cert_dir) as served, served.client() as c:
        assert c.get("/readyz").status_code == 503
        assert c.get("/healthz").status_code == 200  # alive, just not ready
        for path in ("/mutate", "/validate"):
            text = check_error(post(c, path, review(pod())), 503)
            assert "ready" in text.lower()


# ---------------------------------------------------------------------------------------
# admission round trips


def test_mutate_round_trip_injects_with_a_patch_that_applies(client: httpx.Client) -> None:
    obj = pod()
    response = post(client, "/mutate", review(obj, uid="round-trip"))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["apiVersion"] == "admission.k8s.io/v1"
    assert body["kind"] == "AdmissionReview"
    answer = body["response"]
    assert answer["uid"] == "round-trip"
    assert answer["allowed"] is True
    assert answer["patchType"] == "JSONPatch"
    assert {"decision", "reason", "policy"} <= set(answer["auditAnnotations"])
    result = patched(obj, answer)
    assert [c["name"] for c in result["spec"]["containers"]] == ["app", "istio-proxy"]
    assert "sidecar.istio.io/status" in result["metadata"]["annotations"]
    assert result["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"] == "istio-cni"


def test_validate_denies(client: httpx.Client) -> None:
    response = post(client, "/validate", review(pod("NET_ADMIN"), uid="deny-1"))
    assert response.status_code == 200  # a refusal is a normal response, not an HTTP error
    answer = response.json()["response"]
    assert answer["uid"] == "deny-1"
    assert answer["allowed"] is False
    assert answer["status"]["code"] == 403
    assert "NET_ADMIN" in answer["status"]["message"]
    assert '"app"' in answer["status"]["message"]
    assert "patch" not in answer


def test_invalid_object_is_a_refusal_not_an_http_error(client: httpx.Client) -> None:
    obj = pod()
    obj["metadata"]["labels"] = {"app": 1}
    for path in ("/mutate", "/validate"):
        response = post(client, path, review(obj, uid="bad-obj"))
        assert response.status_code == 200
        answer = response.json()["response"]
        assert answer["allowed"] is False
        assert "metadata.labels" in answer["status"]["message"]
        assert "patch" not in answer


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "Application/JSON"],
)
def test_json_content_types_are_accepted(client: httpx.Client, content_type: str) -> None:
    response = post(client, "/mutate", review(pod()), **{"content-type": content_type})
    assert response.status_code == 200


# ---------------------------------------------------------------------------------------
# bad input: a 4xx with a JSON error, never a 5xx


def _without(d: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != key}


GOOD = review(pod(), uid="uid-bad")
BAD_INPUT = [
    pytest.param(b"this is not json", 400, None, id="not-json"),
    pytest.param(b"", 400, None, id="empty-body"),
    pytest.param(b'{"apiVersion": "admission.k8s.io/v1", "kind": "Admiss', 400, None,
                 id="truncated-json"),
    pytest.param(b"[1, 2, 3]", 400, None, id="json-array"),
    pytest.param(b"[" * 100_000, 400, None, id="deeply-nested"),
    pytest.param(b'{"apiVersion": NaN}', 400, None, id="nan"),
    pytest.param(orjson.dumps({"hello": "world"}), 400, None, id="not-a-review"),
    pytest.param(orjson.dumps(_without(GOOD, "request")), 400, None, id="no-request"),
    pytest.param(orjson.dumps({**GOOD, "request": _without(GOOD["request"], "uid")}), 400,
                 None, id="missing-uid"),
    pytest.param(orjson.dumps({**GOOD, "request": {**GOOD["request"], "uid": 7}}), 400, None,
                 id="uid-not-string"),
    pytest.param(orjson.dumps({**GOOD, "kind": "ConfigMap"}), 400, "uid-bad",
                 id="wrong-kind"),
    pytest.param(orjson.dumps({**GOOD, "apiVersion": "admission.k8s.io/v1beta1"}), 400,
                 "uid-bad", id="wrong-apiVersion"),
    pytest.param(orjson.dumps({**GOOD, "request": {**GOOD["request"], "kind": None}}), 400,
                 "uid-bad", id="no-request-kind"),
]  # fmt: skip


@pytest.mark.parametrize("path", ["/mutate", "/validate"])
@pytest.mark.parametrize(("body", "status", "uid"), BAD_INPUT)
def test_bad_input_is_a_json_4xx(
    client: httpx.Client, path: str, body: bytes, status: int, uid: str | None
) -> None:
    check_error(post(client, path, body), status, uid)


@pytest.mark.parametrize("path", ["/mutate", "/validate"])
def test_body_over_the_limit_is_413(small_server: Served, path: str) -> None:
    obj = pod()
    obj["metadata"]["annotations"] = {"big": "x" * (SMALL_BODY + 10)}
    with small_server.client() as c:
        response = post(c, path, review(obj))
        text = check_error(response, 413)
        assert str(SMALL_BODY) in text
        # The rest of the refused body is not read: the connection is closed.
        assert response.headers.get("connection") == "close"
        # The same server answers a body under its limit.
        assert post(c, path, review(pod())).status_code == 200


def test_chunked_body_over_the_limit_is_413(small_server: Served) -> None:
    body = orjson.dumps(review({**pod(), "metadata": {"name": "x" * (SMALL_BODY * 2)}}))

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 512):
            yield body[start : start + 512]

    with small_server.client() as c:
        request = c.build_request("POST", "/mutate", content=chunks(), headers=JSON)
        assert "content-length" not in request.headers
        assert request.headers["transfer-encoding"] == "chunked"
        check_error(c.send(request), 413)


def test_chunked_body_under_the_limit_is_served(small_server: Served) -> None:
    body = orjson.dumps(review(pod()))
    with small_server.client() as c:
        request = c.build_request("POST", "/mutate", content=iter([body[:100], body[100:]]),
                                  headers=JSON)  # fmt: skip
        assert "content-length" not in request.headers
        response = c.send(request)
        assert response.status_code == 200
        assert response.json()["response"]["allowed"] is True


def test_default_body_limit_accepts_a_large_review(client: httpx.Client) -> None:
    """The API server caps an object at 3 MiB and a review carries two (SPEC 5)."""
    obj = pod()
    obj["metadata"]["annotations"] = {"big": "x" * (3 * 1024 * 1024)}
    body = review(obj, uid="big")
    body["request"]["oldObject"] = copy.deepcopy(obj)
    response = post(client, "/validate", body)
    assert response.status_code == 200
    assert response.json()["response"]["uid"] == "big"


@pytest.mark.parametrize("path", ["/mutate", "/validate"])
@pytest.mark.parametrize(
    "content_type",
    [
        pytest.param("text/plain", id="text-plain"),
        pytest.param("application/x-www-form-urlencoded", id="form"),
        pytest.param("application/yaml", id="yaml"),
        pytest.param(None, id="missing"),
    ],
)
def test_wrong_content_type_is_415(
    client: httpx.Client, path: str, content_type: str | None
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    request = client.build_request("POST", path, content=orjson.dumps(review(pod())),
                                   headers=headers)  # fmt: skip
    if content_type is None:
        assert "content-type" not in request.headers
    text = check_error(client.send(request), 415)
    assert "content type" in text.lower() or "content-type" in text.lower()


@pytest.mark.parametrize("path", ["/mutate", "/validate"])
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_wrong_method_is_405(client: httpx.Client, path: str, method: str) -> None:
    assert client.request(method, path).status_code == 405


def test_unknown_path_is_404(client: httpx.Client) -> None:
    assert post(client, "/mutate-pods", review(pod())).status_code == 404


def test_the_admission_paths_never_reach_the_framework() -> None:
    """The app answers /mutate and /validate (their 405s too) before FastAPI and Starlette
    run: Starlette builds its middleware stack on its first call, and has not after them."""
    app = create_app(ready_runtime())

    async def statuses() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://meshgate") as c:
            answered = [(await c.post(path, content=orjson.dumps(review(pod())),
                                      headers=JSON)).status_code
                        for path in ("/mutate", "/validate")]  # fmt: skip
            answered.append((await c.get("/mutate")).status_code)
            assert app.middleware_stack is None
            answered.append((await c.get("/healthz")).status_code)  # the framework's
            answered.append((await c.post("/mutate/", content=b"{}", headers=JSON)).status_code)
        return answered

    assert asyncio.run(statuses()) == [200, 200, 405, 200, 404]
    assert app.middleware_stack is not None


def test_the_server_still_answers_after_bad_input(client: httpx.Client) -> None:
    for body, _, _ in (p.values for p in BAD_INPUT):
        assert post(client, "/mutate", body).status_code < 500
    assert post(client, "/mutate", review(pod())).status_code == 200


_HEAD = b"POST /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(_HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\nzz\r\n",
                     id="broken-chunk"),
        pytest.param(_HEAD + b"Content-Length: -1\r\n\r\n", id="negative-length"),
        pytest.param(_HEAD + b"Content-Length: abc\r\n\r\n{}", id="non-numeric-length"),
        pytest.param(_HEAD + b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"2\r\n{}\r\n0\r\n\r\n", id="length-and-chunked"),
    ],
)  # fmt: skip
def test_malformed_http_is_a_4xx(main_server: Served, client: httpx.Client, raw: bytes) -> None:
    tls = _raw_tls(main_server)
    try:
        tls.sendall(raw)
        status, _ = read_response(tls)
    finally:
        tls.close()
    assert 400 <= status < 500
    assert post(client, "/mutate", review(pod())).status_code == 200


# ---------------------------------------------------------------------------------------
# overload, client disconnects, internal errors


def _raw_tls(served: Served) -> ssl.SSLSocket:
    context = client_context(served.cert_dir / certs.CA_CERT_FILE)
    raw = socket.create_connection(("127.0.0.1", served.port), timeout=10)
    return context.wrap_socket(raw, server_hostname="127.0.0.1")


def _start_slow_request(served: Served, body: bytes, path: str = "/mutate") -> ssl.SSLSocket:
    """Headers and the first half of the body; the rest is up to the caller."""
    tls = _raw_tls(served)
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()  # fmt: skip
    tls.sendall(head + body[: len(body) // 2])
    return tls


def _metric(c: httpx.Client, name: str) -> float:
    for family in text_string_to_metric_families(c.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"{name} not found")


def test_overload_answers_503_while_a_request_is_in_flight(cert_dir: Path) -> None:
    app = create_app(ready_runtime(), max_in_flight=1, body_timeout=60)
    body = orjson.dumps(review(pod(), uid="slow"))
    with Served(app, cert_dir) as served, served.client() as c:
        slow = _start_slow_request(served, body)
        try:
            deadline = time.monotonic() + 10
            while True:  # until the slow request holds the only slot
                response = post(c, "/mutate", review(pod(), uid="second"))
                if response.status_code == 503 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            text = check_error(response, 503)
            assert "overload" in text.lower()
            assert c.get("/healthz").status_code == 200
            slow.sendall(body[len(body) // 2 :])
            status, answer = read_response(slow)
        finally:
            slow.close()
        assert status == 200
        assert orjson.loads(answer)["response"]["uid"] == "slow"
        # The slot is free again.
        assert post(c, "/mutate", review(pod(), uid="third")).status_code == 200


def test_a_stalled_body_times_out_with_408_and_frees_its_slot(cert_dir: Path) -> None:
    app = create_app(ready_runtime(), max_in_flight=1, body_timeout=0.5)
    body = orjson.dumps(review(pod(), uid="stalled"))
    with Served(app, cert_dir) as served, served.client() as c:
        slow = _start_slow_request(served, body)
        try:
            started = time.monotonic()
            status, answer = read_response(slow)
            assert time.monotonic() - started < 8
        finally:
            slow.close()
        assert status == 408
        assert isinstance(orjson.loads(answer)["error"], str)
        assert post(c, "/mutate", review(pod(), uid="next")).status_code == 200
        assert _metric(c, "meshgate_internal_errors_total") == 0


def test_client_gone_mid_body_frees_its_slot_and_is_no_internal_error(cert_dir: Path) -> None:
    app = create_app(ready_runtime(), max_in_flight=1)
    body = orjson.dumps(review(pod(), uid="gone"))
    with Served(app, cert_dir) as served, served.client() as c:
        before = _metric(c, "meshgate_internal_errors_total")
        for _ in range(3):
            slow = _start_slow_request(served, body)
            time.sleep(0.2)
            slow.close()
        deadline = time.monotonic() + 10
        while True:
            response = post(c, "/mutate", review(pod(), uid="after"))
            if response.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert response.status_code == 200
        assert _metric(c, "meshgate_internal_errors_total") == before


def test_internal_error_is_500_logged_and_counted_with_the_uid(
    cert_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_lookup(name: str) -> Any:
        raise RuntimeError("namespace cache exploded")

    app = create_app(ready_runtime(broken_lookup))
    caplog.set_level(logging.ERROR)
    with Served(app, cert_dir) as served, served.client() as c:
        before = _metric(c, "meshgate_internal_errors_total")
        for path in ("/mutate", "/validate"):
            text = check_error(post(c, path, review(pod(), uid=f"boom{path}")), 500, f"boom{path}")
            assert "exploded" not in text  # details go to the log, not to the caller
        assert _metric(c, "meshgate_internal_errors_total") == before + 2
        # Bad input is still bad input, never a 5xx.
        check_error(post(c, "/mutate", b"not json"), 400)
    records = [r for r in caplog.records if r.levelno >= logging.ERROR]
    uids = {getattr(r, "uid", None) for r in records}
    assert {"boom/mutate", "boom/validate"} <= uids
    assert any(r.exc_info and "exploded" in str(r.exc_info[1]) for r in records)


def test_warn_policy_over_http_warns(cert_dir: Path) -> None:
    runtime = Runtime()
    runtime.install(Context(compile_policy({"gate": {"action": "warn"}}), NAMESPACES,
                            OWN_NAMESPACE), "test")  # fmt: skip
    with Served(create_app(runtime), cert_dir) as served, served.client() as c:
        answer = post(c, "/validate", review(pod("NET_ADMIN"))).json()["response"]
        assert answer["allowed"] is True
        assert len(answer["warnings"]) == 1
        assert "NET_ADMIN" in answer["warnings"][0]
        families = {f.name: f for f in text_string_to_metric_families(c.get("/metrics").text)}
        samples = families["meshgate_gate_violations"].samples
        assert any(s.labels.get("action") == "warn" and s.value >= 1 for s in samples)
