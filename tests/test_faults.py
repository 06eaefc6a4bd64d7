"""Faults (issue 6 item 4): what meshgate does when the API server, a client or meshgate
itself fails, shown on the real server (in a thread, or `meshgate serve` as a process)
against tests/fakeapi.FakeAPIServer.

Covered elsewhere, and not repeated here:
- test_cluster.py (the cluster code in-process): the API server down at start-up (not
  ready, 503, ready once it answers) and mid-run (answers from the last snapshot, backoff,
  resync); a dropped watch stream and 410 Gone (relist); a namespace GET that fails or
  stalls on a cache miss (fail closed within its 1 s timeout, one GET shared); an invalid
  policy ConfigMap (the last good policy stays, Event, metric, /readyz).
- test_shutdown.py: SIGTERM under load (not ready at once, answering through the drain,
  requests in flight finished, exit 0, no failed request).

Added here: the same outages seen from outside a `meshgate serve` process (it stays up and
live, its logs stay clean); a stalled namespace GET while other requests flow; the policy
ConfigMap flipping between valid and invalid under concurrent load; stuck clients at
shutdown; and a worker killed with SIGKILL.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonpatch
import kubernetes
import orjson
import pytest
from fakeapi import FakeAPIServer
from helpers import (
    Served,
    ServerThread,
    admission_review,
    client_context,
    free_port,
    isolated_env,
    make_cert_dir,
    meshgate_command,
    threads_running,
    wait_for,
)

from webhook import certs, cluster, kube, server
from webhook.app import create_app
from webhook.runtime import Runtime
from webhook.sources import parse_policy_text

OWN = "meshgate-system"
ENABLED = {"istio-injection": "enabled"}
SECRET_TOKEN = "fake-token-Xq7-do-not-log"  # the kubeconfig's bearer token
SECRET_ENV = "env-value-Vb3-do-not-log"  # a value in meshgate's environment
WARN = "gate: {action: warn}"
AUDIT = "gate: {action: audit}"
INVALID = "gate: {action: maybe}"
DEFAULT_VERSION = parse_policy_text("{}").version


@pytest.fixture
def cert_dir(tmp_path: Path) -> Path:
    return make_cert_dir(tmp_path / "tls", "meshgate-faults-ca")


@pytest.fixture
def api(tmp_path: Path) -> Iterator[FakeAPIServer]:
    with FakeAPIServer(tmp_path / "api", token=SECRET_TOKEN, bookmark_interval=0.5) as fake:
        yield fake


def container(name: str, *caps: str) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "image": f"example.com/{name}:1"}
    if caps:
        c["securityContext"] = {"capabilities": {"add": list(caps)}}
    return c


def pod(*caps: str, name: str = "web") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [container("app", *caps)]}}  # fmt: skip


PLAIN, NET_ADMIN = pod(), pod("NET_ADMIN", name="debug")


def review(obj: dict[str, Any], namespace: str, uid: str) -> bytes:
    return orjson.dumps(admission_review(obj, uid=uid, namespace=namespace))


JSON = {"content-type": "application/json"}


def answer(response: httpx.Response, obj: dict[str, Any], uid: str
           ) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """The AdmissionReview response of a 200 for `uid`, and `obj` with its patch applied."""
    assert response.status_code == 200, response.text
    body = response.json()["response"]
    assert body["uid"] == uid
    result = copy.deepcopy(obj)
    if "patch" in body:
        assert body["allowed"] is True and body["patchType"] == "JSONPatch"
        result = jsonpatch.apply_patch(result, json.loads(base64.b64decode(body["patch"])))
    return body, result


def injected(result: dict[str, Any]) -> bool:
    return "istio-proxy" in [c["name"] for c in result["spec"]["containers"]]


def log_lines(text: str) -> list[dict[str, Any]]:
    """meshgate's log: every line one JSON object."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------
# the API server down, at start-up and mid-run, seen from outside the process


def test_serve_rides_out_the_api_server_down_at_start_up_and_mid_run(
    api: FakeAPIServer, tmp_path: Path, cert_dir: Path
) -> None:
    api.upsert("namespaces", {"metadata": {"name": "shop", "labels": ENABLED}})
    api.upsert("configmaps", {"metadata": {"namespace": OWN, "name": "meshgate-policy"},
                              "data": {"policy.yaml": WARN}})  # fmt: skip
    warn, audit = parse_policy_text(WARN).version, parse_policy_text(AUDIT).version
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    env = {**isolated_env(tmp_path), "MESHGATE_FAULT_TEST_SECRET": SECRET_ENV}
    api.refuse_connections(True)  # down before meshgate starts
    served = Served(["--kubeconfig", str(kubeconfig), "--namespace", OWN], env, tmp_path,
                    cert_dir)  # fmt: skip
    code = None
    try:
        # Up and live (the kubelet leaves it running), not ready, and admission is 503:
        # the API server applies the failurePolicy, and the other replicas serve.
        served.wait(lambda: served.client.get("/healthz").status_code == 200, "/healthz")
        served.wait(lambda: "watch failed; retrying" in served.output(), "a failed attempt")
        readyz = served.client.get("/readyz")
        assert (readyz.status_code, readyz.json()) == (503, {"ready": False,
                                                             "detail": "no policy yet"})
        refused = served.client.post("/mutate", content=review(PLAIN, "shop", "down-1"),
                                     headers=JSON)  # fmt: skip
        assert refused.status_code == 503 and "not ready" in refused.json()["error"]
        assert served.process.poll() is None

        api.refuse_connections(False)  # it answers: ready with the ConfigMap's policy
        status = served.wait(served.readyz, "/readyz 200 after the outage", timeout=15)
        assert status["policy"] == warn
        body, result = answer(served.client.post(
            "/mutate", content=review(PLAIN, "shop", "up-1"), headers=JSON), PLAIN, "up-1")
        assert injected(result) and body["auditAnnotations"]["policy"] == warn

        # Down mid-run: every stream ends, every reconnect is refused. Still ready, and
        # every answer comes from the last snapshot.
        failures_before = served.output().count("watch failed; retrying")
        api.refuse_connections(True)
        api.stop()
        api.start()
        served.wait(lambda: served.output().count("watch failed; retrying") > failures_before,
                    "a failed reconnect")  # fmt: skip
        api.upsert("configmaps", {"metadata": {"namespace": OWN, "name": "meshgate-policy"},
                                  "data": {"policy.yaml": AUDIT}})  # fmt: skip
        for n in range(10):
            assert (served.readyz() or {}).get("policy") == warn
            uid = f"mid-{n}"
            body, result = answer(served.client.post(
                "/mutate", content=review(PLAIN, "shop", uid), headers=JSON), PLAIN, uid)
            assert injected(result) and body["auditAnnotations"]["policy"] == warn

        api.refuse_connections(False)  # back: the change made meanwhile arrives
        served.wait(lambda: (served.readyz() or {}).get("policy") == audit, "the resync",
                    timeout=15)  # fmt: skip
    finally:
        code = served.stop()
    output = served.output()
    assert code == 0, output
    assert SECRET_TOKEN not in output and SECRET_ENV not in output
    assert "Traceback" not in output
    lines = log_lines(output)
    failed = [e for e in lines if e["msg"] == "watch failed; retrying"]
    assert failed and all(e["level"] == "warning" and e["error"] for e in failed)


# ---------------------------------------------------------------------------------------
# a stalled namespace GET on a cache miss


def test_a_stalled_namespace_get_holds_only_the_request_that_needs_it(
    api: FakeAPIServer, tmp_path: Path, cert_dir: Path
) -> None:
    api.upsert("namespaces", {"metadata": {"name": "mesh", "labels": ENABLED}})
    api.upsert("namespaces", {"metadata": {"name": "newns", "labels": ENABLED}})
    api_client = kube.api_client(str(api.write_kubeconfig(tmp_path / "kubeconfig")))
    cache = cluster.NamespaceCache(kubernetes.client.CoreV1Api(api_client))
    # Listed before `newns` was created, and its watch event not in yet: a cache miss.
    cache.handlers().replace([{"metadata": {"name": "mesh", "labels": ENABLED}}])
    runtime = Runtime(own_namespace=OWN, namespaces=cache)
    runtime.set_policy(parse_policy_text("{}"), "embedded default")
    api.stall_next("GET", "/api/v1/namespaces/newns", seconds=5)
    trust = client_context(cert_dir / certs.CA_CERT_FILE)
    finished: dict[str, Any] = {}

    def new_namespace_request() -> None:
        with httpx.Client(base_url=served.url, verify=trust, timeout=10) as c:
            started = time.monotonic()
            finished["response"] = c.post("/mutate", content=review(NET_ADMIN, "newns", "new"),
                                          headers=JSON)  # fmt: skip
            finished["at"] = time.monotonic()
            finished["took"] = finished["at"] - started

    with ServerThread(create_app(runtime), cert_dir, name="meshgate-faults",
                      runtime=runtime) as served, \
            httpx.Client(base_url=served.url, verify=trust, timeout=10) as client:  # fmt: skip
        stalled = threading.Thread(target=new_namespace_request)
        stalled.start()
        wait_for(lambda: cache.gets == 1, "the GET to be sent")
        others = []
        for n in range(20):  # meanwhile, requests for a known namespace
            started = time.monotonic()
            body, result = answer(client.post("/mutate", content=review(PLAIN, "mesh", f"o{n}"),
                                              headers=JSON), PLAIN, f"o{n}")  # fmt: skip
            assert injected(result)
            others.append((started, time.monotonic()))
        assert client.get("/readyz").status_code == 200
        stalled.join(10)
        api_client.close()

    assert max(end - start for start, end in others) < 0.5
    assert others[-1][1] < finished["at"]  # all answered while the GET was stalled
    # The one that needed the GET: judged fail-closed after its 1 s timeout.
    assert cluster.GET_TIMEOUT - 0.1 <= finished["took"] < cluster.GET_TIMEOUT + 1.0
    body, _ = answer(finished["response"], NET_ADMIN, "new")
    assert body["allowed"] is False and "could not be read" in body["status"]["message"]
    assert [r[:2] for r in api.requests].count(("GET", "/api/v1/namespaces/newns")) == 1


# ---------------------------------------------------------------------------------------
# the policy ConfigMap flipping between valid and invalid under load


def test_policy_configmap_flipping_valid_and_invalid_under_load(
    api: FakeAPIServer, tmp_path: Path, cert_dir: Path
) -> None:
    texts = {"a": "cni: {network: net-a}", "b": "cni: {network: net-b}"}
    network = {parse_policy_text(t).version: f"net-{k}" for k, t in texts.items()}
    network[DEFAULT_VERSION] = "istio-cni"
    api.upsert("namespaces", {"metadata": {"name": "mesh", "labels": ENABLED}})
    api_client = kube.api_client(str(api.write_kubeconfig(tmp_path / "kubeconfig")))
    runtime = Runtime(own_namespace=OWN)
    watchers = cluster.connect(runtime, api_client, policy=True, namespaces=True,
                               timeout_seconds=2, request_timeout=2.0)  # fmt: skip
    stop = threading.Event()
    lock = threading.Lock()
    results: list[tuple[str, int, str]] = []  # (endpoint, status, policy version or error)
    problems: list[str] = []
    readiness: list[tuple[int, dict[str, Any]]] = []
    trust = client_context(cert_dir / certs.CA_CERT_FILE)

    def load(worker: int) -> None:
        n = 0
        with httpx.Client(base_url=served.url, verify=trust, timeout=10) as c:
            while not stop.is_set():
                n += 1
                uid = f"w{worker}-{n}"
                endpoint, obj = ("/mutate", PLAIN) if n % 2 else ("/validate", NET_ADMIN)
                try:
                    response = c.post(endpoint, content=review(obj, "mesh", uid), headers=JSON)
                    body, result = answer(response, obj, uid)
                    version = body["auditAnnotations"]["policy"]
                    if version not in network:
                        problems.append(f"{uid}: answered from policy {version}")
                    elif endpoint == "/validate" and body["allowed"] is not False:
                        problems.append(f"{uid}: NET_ADMIN allowed under {version}")
                    elif endpoint == "/mutate":
                        notes = result["metadata"]["annotations"]
                        if notes["meshgate.io/injected"] != f"cni@{version}":
                            problems.append(f"{uid}: stamp {notes['meshgate.io/injected']}")
                        if notes["k8s.v1.cni.cncf.io/networks"] != network[version]:
                            problems.append(f"{uid}: network of another policy than {version}")
                    with lock:
                        results.append((endpoint, response.status_code, version))
                except Exception as err:  # any failure is a failed request
                    problems.append(f"{uid}: {type(err).__name__}: {err}")

    def probe() -> None:
        with httpx.Client(base_url=served.url, verify=trust, timeout=10) as c:
            while not stop.is_set():
                response = c.get("/readyz")
                readiness.append((response.status_code, response.json()))
                time.sleep(0.02)

    def flip(text: str | None, expect: Callable[[], bool]) -> None:
        if text is None:
            api.delete("configmaps", OWN, "meshgate-policy")
        else:
            api.upsert("configmaps", {"metadata": {"namespace": OWN, "name": "meshgate-policy"},
                                      "data": {"policy.yaml": text}})  # fmt: skip
        wait_for(expect, "the change to be applied", timeout=2.0)  # SPEC 3: within 2 s
        done = len(results)
        wait_for(lambda: len(results) >= done + 20, "answers under this policy")

    def on(version: str) -> Callable[[], bool]:
        return lambda: runtime.policy is not None and runtime.policy.version == version

    a, b = (parse_policy_text(t).version for t in texts.values())
    try:
        wait_for(lambda: runtime.context, "readiness")
        with ServerThread(create_app(runtime), cert_dir, name="meshgate-flips",
                          runtime=runtime) as served:  # fmt: skip
            threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
            threads.append(threading.Thread(target=probe))
            with threads_running(threads, stop):
                flip(texts["a"], on(a))
                flip(INVALID, lambda: bool(runtime.policy_error))
                flip(texts["b"], on(b))
                flip(INVALID, lambda: bool(runtime.policy_error))
                flip(None, on(DEFAULT_VERSION))  # deleted: the embedded default
                flip(INVALID, lambda: bool(runtime.policy_error))
                flip(texts["a"], on(a))
    finally:
        for watcher in watchers:
            watcher.stop()
        api_client.close()

    assert problems == []
    assert {v for _, _, v in results} == set(network)  # each valid policy answered in turn
    assert all(status == 200 for _, status, _ in results)
    # Ready throughout, and saying so while a rejected change is pending.
    assert readiness and all(status == 200 for status, _ in readiness)
    assert any("policyError" in body for _, body in readiness)
    rejected = runtime.metrics.registry.get_sample_value(
        "meshgate_policy_reloads_total", {"result": "invalid"})
    assert rejected == 3
    print(f"\n{len(results)} answers across 7 ConfigMap changes (3 invalid), none failed")


# ---------------------------------------------------------------------------------------
# stuck clients at shutdown


def _raw(port: int, cert_dir: Path) -> Any:
    trust = client_context(cert_dir / certs.CA_CERT_FILE)
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    return trust.wrap_socket(sock, server_hostname="127.0.0.1")


def _head(body: bytes) -> bytes:
    return (b"POST /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))  # fmt: skip


def test_stuck_clients_do_not_hold_the_shutdown(
    cert_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the drain, uvicorn waits for its connections to finish. A client that sends
    half a request, or never answers the TLS close of an idle connection, could hold the
    exit for as long as the app's own body timeout or the TLS close timeout (uvicorn's cap:
    15 s); the request timeout and the bounded TLS close end them."""
    request_timeout, drain = 1.0, 0.5
    monkeypatch.setattr(server, "TLS_SHUTDOWN_TIMEOUT", 0.5)  # meshgate's: 5 s
    runtime = Runtime()
    runtime.set_policy(parse_policy_text("{}"), "embedded default")
    app = create_app(runtime, body_timeout=60)
    made = server.make_server(app, "127.0.0.1", 0, cert_dir, runtime=runtime,
                              drain_seconds=drain, request_timeout=request_timeout)  # fmt: skip
    thread = threading.Thread(target=made.run, daemon=True)
    thread.start()
    wait_for(lambda: made.started, "the server", timeout=15)
    port = made.servers[0].sockets[0].getsockname()[1]
    body = review(PLAIN, "default", "in-flight")
    stuck: list[Any] = []
    try:
        idle = _raw(port, cert_dir)  # a request answered, then silent, never closing, never reading
        idle.sendall(_head(review(PLAIN, "default", "idle")) + review(PLAIN, "default", "idle"))
        assert idle.recv(12).startswith(b"HTTP/1.1 200")
        half_head = _raw(port, cert_dir)
        half_head.sendall(b"POST /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        half_body = _raw(port, cert_dir)
        half_body.sendall(_head(body) + body[:30])
        stuck += [idle, half_head, half_body]
        honest = _raw(port, cert_dir)  # in flight across the drain, complete in time
        honest.sendall(_head(body) + body[: len(body) // 2])
        stuck.append(honest)
        started = time.monotonic()
        made.begin_drain()  # what SIGTERM does
        time.sleep(drain * 0.8)
        honest.sendall(body[len(body) // 2 :])
        reply = b""
        while chunk := honest.recv(65536):  # connection: close, once the drain is over
            reply += chunk
        thread.join(15)
        took = time.monotonic() - started
    finally:
        made.should_exit = True
        thread.join(15)
        for sock in stuck:
            with contextlib.suppress(OSError):
                sock.close()
    assert reply.startswith(b"HTTP/1.1 200")
    assert b'"uid":"in-flight"' in reply
    assert not thread.is_alive()
    # The drain, then at most the request timeout and the TLS close; not the 15 s cap.
    assert took < drain + request_timeout + 0.5 + 1.5, took


# ---------------------------------------------------------------------------------------
# a worker killed


def _serve_dev(port: int, cert_dir: Path, tmp_path: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**isolated_env(tmp_path), "MESHGATE_FAULT_TEST_SECRET": SECRET_ENV}
    with log.open("ab") as out:
        return subprocess.Popen(
            [*meshgate_command(), "serve", "--dev", "--host", "127.0.0.1", "--port", str(port),
             "--cert-dir", str(cert_dir), "--drain-seconds", "0"],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
        )  # fmt: skip


def test_a_killed_worker_frees_its_port_and_a_restart_serves_again(tmp_path: Path) -> None:
    port, cert_dir, log = free_port(), tmp_path / "dev-certs", tmp_path / "meshgate.log"
    url = f"https://127.0.0.1:{port}"
    first = _serve_dev(port, cert_dir, tmp_path, log)
    second: subprocess.Popen[bytes] | None = None
    try:
        wait_for(lambda: (cert_dir / certs.CA_CERT_FILE).exists(), "the dev CA", timeout=20)
        trust = client_context(cert_dir / certs.CA_CERT_FILE)

        def ready() -> bool:
            with contextlib.suppress(httpx.TransportError), \
                    httpx.Client(base_url=url, verify=trust, timeout=2) as c:  # fmt: skip
                return c.get("/readyz").status_code == 200
            return False

        wait_for(ready, "the first process", timeout=20, interval=0.05)
        kept = httpx.Client(base_url=url, verify=trust, timeout=5)  # a keep-alive caller
        answer(kept.post("/mutate", content=review(PLAIN, "default", "k1"), headers=JSON),
               PLAIN, "k1")  # fmt: skip
        body = review(PLAIN, "default", "in-flight")
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        held = trust.wrap_socket(sock, server_hostname="127.0.0.1")
        held.sendall(_head(body) + body[:40])  # a request in flight

        first.send_signal(signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL

        # What the API server sees: the call in flight ends without an answer, the kept
        # connection is dead, and a new one is refused at once (not a timeout). With
        # failurePolicy Fail the pod is then refused; the other replicas take the next calls.
        with contextlib.suppress(ConnectionError):
            assert held.recv(65536) == b""
        held.close()
        with pytest.raises(httpx.TransportError):
            kept.post("/mutate", content=review(PLAIN, "default", "k2"), headers=JSON)
        kept.close()
        started = time.monotonic()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        assert time.monotonic() - started < 0.5

        # The kubelet restarts the container: the port is free, and it serves again.
        second = _serve_dev(port, cert_dir, tmp_path, log)
        wait_for(ready, "the restarted process", timeout=20, interval=0.05)
        with httpx.Client(base_url=url, verify=trust, timeout=5) as c:
            answer(c.post("/mutate", content=review(PLAIN, "default", "again"), headers=JSON),
                   PLAIN, "again")  # fmt: skip
        second.send_signal(signal.SIGTERM)
        assert second.wait(10) == 0
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(10)
    output = log.read_text()
    assert "address already in use" not in output.lower()
    assert SECRET_ENV not in output and "Traceback" not in output
    log_lines(output)  # every line JSON, across both processes

