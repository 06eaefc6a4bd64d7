"""The cluster code (webhook.cluster, webhook.watch, webhook.runtime) through the real
``kubernetes`` client against tests/fakeapi.FakeAPIServer, over TLS, with the kubeconfig
loaded by webhook.kube.api_client (SPEC 3 "Where the policy comes from", 4 last bullet,
5 last bullet; issue 3).

Every test stops what it started: the fixtures stop the watchers, then check that no
``watch-`` thread is left. Waits poll with a deadline; nothing sleeps for a fixed time to let
something happen. Run with ``-s`` to see the measured figures (policy change latency, the
namespace GET's give-up time).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import functools
import json
import logging
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import helpers
import httpx
import jsonpatch
import kubernetes
import orjson
import pytest
from fakeapi import FakeAPIServer
from helpers import admission_review

from webhook import cluster, kube, multus, watch
from webhook.admission import Context, admit, parse_review
from webhook.app import create_app
from webhook.cluster import POLICY_CONFIGMAP, NamespaceCache
from webhook.decision import INJECTED
from webhook.policy import default_policy
from webhook.runtime import Runtime
from webhook.sources import POLICY_KEY, parse_policy_text
from webhook.watch import ListWatch

OWN = "meshgate-system"
MESH = "mesh"  # a namespace the fake labels istio-injection=enabled
ENABLED = {"istio-injection": "enabled"}
OPTIONS: dict[str, Any] = {"timeout_seconds": 2, "request_timeout": 2.0}
DEFAULT = default_policy()
WARN_TEXT = "gate: {action: warn}"
AUDIT_TEXT = "gate: {action: audit}"
INVALID_TEXT = "gate: {action: maybe}"  # the error names the path gate.action
PROXY = "istio-proxy"
ADMISSION = "admission.k8s.io/v1"

# Figures for the closing note (printed with -s).
LATENCIES_MS: list[float] = []
GET_GIVE_UP_SECONDS: list[float] = []


# ---------------------------------------------------------------------------------------
# waiting, threads


# Waits here give up after 3 s unless told otherwise, and poll every 5 ms.
wait_for = functools.partial(helpers.wait_for, timeout=3.0, interval=0.005)


def watch_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("watch-")]


# ---------------------------------------------------------------------------------------
# the fake cluster and the watchers started against it


class Cluster:
    """One FakeAPIServer, the API clients made for it and the watchers started on it."""

    def __init__(self, directory: Path, **fake_options: Any) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        fake_options.setdefault("bookmark_interval", 0.5)
        self.api = FakeAPIServer(directory, **fake_options).start()
        self.kubeconfig = self.api.write_kubeconfig(directory / "kubeconfig")
        self.watchers: list[ListWatch] = []
        self._clients: list[Any] = []

    def client(self) -> Any:
        api_client = kube.api_client(str(self.kubeconfig))
        self._clients.append(api_client)
        return api_client

    def core(self) -> Any:
        return kubernetes.client.CoreV1Api(self.client())

    def connect(self, runtime: Runtime | None = None, *, policy: bool = True,
                namespaces: bool = True, **options: Any) -> Runtime:  # fmt: skip
        runtime = runtime or Runtime(own_namespace=OWN)
        options = {**OPTIONS, **options}
        self.watchers += cluster.connect(runtime, self.client(), policy=policy,
                                         namespaces=namespaces, **options)  # fmt: skip
        return runtime

    def start(self, watcher: ListWatch) -> ListWatch:
        self.watchers.append(watcher)
        watcher.start()
        return watcher

    def watcher(self, name: str) -> ListWatch:
        return next(w for w in self.watchers if w.name == name)

    def stop_watchers(self) -> float:
        """Stop every watcher; the seconds it took."""
        started = time.monotonic()
        for watcher in self.watchers:
            watcher.stop()
        self.watchers = []
        return time.monotonic() - started

    def close(self) -> None:
        self.stop_watchers()
        for api_client in self._clients:
            api_client.close()
        self.api.stop()

    # the cluster, changed as kubectl would

    def namespace(self, name: str, labels: dict[str, str] | None = None) -> None:
        self.api.upsert("namespaces", {"metadata": {"name": name, "labels": labels or {}}})

    def policy(self, text: str) -> None:
        self.api.upsert("configmaps", policy_configmap(text))

    def delete_policy(self) -> None:
        self.api.delete("configmaps", OWN, POLICY_CONFIGMAP)

    def nad(self, namespace: str, name: str) -> None:
        obj = {"metadata": {"namespace": namespace, "name": name}, "spec": {"config": "{}"}}
        self.api.upsert("network-attachment-definitions", obj)

    def gets(self, name: str) -> int:
        """GETs of one namespace the API server has seen."""
        return sum(1 for r in self.api.requests if r[:2] == ("GET", f"/api/v1/namespaces/{name}"))

    def watch_requests(self, path: str) -> list[dict[str, str]]:
        return [q for m, p, q in self.api.requests if p == path and q.get("watch") == "true"]


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(**fake_options: Any) -> Cluster:
        made.append(Cluster(tmp_path / f"cluster{len(made)}", **fake_options))
        return made[-1]

    yield make
    for c in made:
        c.close()
    assert watch_threads() == [], "a watch thread outlived its stop()"


@pytest.fixture
def fake(make_cluster: Callable[..., Cluster]) -> Cluster:
    return make_cluster()


def policy_configmap(text: str) -> dict[str, Any]:
    return {"metadata": {"namespace": OWN, "name": POLICY_CONFIGMAP}, "data": {POLICY_KEY: text}}


def ready(runtime: Runtime) -> Context:
    return wait_for(lambda: runtime.context, "the runtime to be ready")


def reloads(runtime: Runtime, result: str) -> float:
    value = runtime.metrics.registry.get_sample_value(
        "meshgate_policy_reloads_total", {"result": result}
    )
    return value or 0.0


# ---------------------------------------------------------------------------------------
# pods and answers


def container(name: str, *add: str) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "image": f"example.com/{name}:1"}
    if add:
        c["securityContext"] = {"capabilities": {"add": list(add)}}
    return c


def pod(*containers: dict[str, Any], name: str = "web") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": list(containers) or [container("app")]}}  # fmt: skip


PLAIN = pod(container("app"))
NET_ADMIN = pod(container("app", "NET_ADMIN"), name="debug")


def review(obj: dict[str, Any], namespace: str, uid: str = "uid-1") -> dict[str, Any]:
    return admission_review(obj, uid=uid, namespace=namespace)


def checked(obj: dict[str, Any], body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The response of an AdmissionReview answer, and the pod with its patch applied."""
    assert body["apiVersion"] == ADMISSION and body["kind"] == "AdmissionReview"
    response = body["response"]
    assert {"decision", "reason", "policy"} <= set(response["auditAnnotations"])
    assert ("patch" in response) is ("patchType" in response)
    result = copy.deepcopy(obj)
    if "patch" in response:
        assert response["allowed"] is True and response["patchType"] == "JSONPatch"
        ops = json.loads(base64.b64decode(response["patch"]))
        assert ops
        result = jsonpatch.apply_patch(copy.deepcopy(obj), ops)
    return response, result


def ask(ctx: Context | None, obj: dict[str, Any], namespace: str,
        endpoint: str = "mutate") -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """admission.admit on one pod, against the runtime's snapshot `ctx`."""
    assert ctx is not None, "not ready"
    request = parse_review(orjson.dumps(review(obj, namespace)))
    return checked(obj, admit(request, endpoint, ctx).review)


def injected(result: dict[str, Any]) -> bool:
    return PROXY in [c["name"] for c in result["spec"]["containers"]]


async def _requests(runtime: Runtime, calls: list[tuple[str, str, Any]]) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=create_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://meshgate") as client:
        return list(await asyncio.gather(*(client.request(m, p, json=b) for m, p, b in calls)))


def http(runtime: Runtime, *calls: tuple[str, str, Any]) -> list[httpx.Response]:
    """The app's answers to concurrent requests (method, path, JSON body or None)."""
    return asyncio.run(_requests(runtime, list(calls)))


def readyz(runtime: Runtime) -> tuple[int, dict[str, Any]]:
    [response] = http(runtime, ("GET", "/readyz", None))
    return response.status_code, response.json()


def mutate(runtime: Runtime, obj: dict[str, Any],
           namespace: str) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    [response] = http(runtime, ("POST", "/mutate", review(obj, namespace)))
    assert response.status_code == 200, response.text
    return checked(obj, response.json())


# ---------------------------------------------------------------------------------------
# 1. initial sync and readiness


def test_not_ready_until_the_namespaces_are_listed(fake: Cluster) -> None:
    fake.namespace(MESH, ENABLED)
    core = fake.core()
    cache = NamespaceCache(core)
    runtime = Runtime(own_namespace=OWN, namespaces=cache)
    assert runtime.context is None and runtime.not_ready_detail == "no policy yet"
    policy = fake.start(cluster.PolicyWatch(core, OWN, runtime).watcher(**OPTIONS))
    wait_for(lambda: runtime.policy is not None, "the policy list")
    assert policy.lists == 1
    assert runtime.context is None
    assert runtime.not_ready_detail == "namespaces not listed yet"
    status, body = readyz(runtime)
    assert (status, body) == (503, {"ready": False, "detail": "namespaces not listed yet"})
    fake.start(cache.watcher(**OPTIONS))
    ctx = ready(runtime)
    assert runtime.not_ready_detail == ""
    assert ctx.namespaces(MESH) == {**ENABLED, "kubernetes.io/metadata.name": MESH}
    status, body = readyz(runtime)
    assert status == 200 and body["ready"] is True and body["policy"] == DEFAULT.version


def test_not_ready_until_the_policy_configmap_is_listed(fake: Cluster) -> None:
    # The ConfigMap's list is slow; the namespaces are listed at once: still not ready.
    fake.api.stall_next("GET", f"/api/v1/namespaces/{OWN}/configmaps", seconds=0.7)
    started = time.monotonic()
    runtime = fake.connect()
    wait_for(runtime.namespaces.ready, "the namespace list")
    assert runtime.policy is None and runtime.context is None
    assert runtime.not_ready_detail == "no policy yet"
    assert readyz(runtime) == (503, {"ready": False, "detail": "no policy yet"})
    ready(runtime)
    assert time.monotonic() - started >= 0.7  # not before the stalled list was answered
    # Listed, and absent: the embedded default, and /readyz says where it comes from.
    assert runtime.policy is not None and runtime.policy.version == DEFAULT.version
    status, body = readyz(runtime)
    assert status == 200 and body["policy"] == DEFAULT.version
    assert "embedded default" in body["policySource"]
    assert f"no ConfigMap {OWN}/{POLICY_CONFIGMAP}" in body["policySource"]


# ---------------------------------------------------------------------------------------
# 2. policy update applied: how fast, and never a mixed or failed answer


def _networks(result: dict[str, Any]) -> list[str]:
    value = result["metadata"]["annotations"][multus.ANNOTATION]
    return [ref.name for ref in multus.parse(value)]


def test_policy_update_applied_within_two_seconds_without_a_wrong_answer(fake: Cluster) -> None:
    fake.namespace(MESH, ENABLED)
    texts = [f"cni: {{network: net-{letter}}}" for letter in "abcdefg"]
    network_of = {parse_policy_text(t).version: f"net-{t[-2]}" for t in texts}
    network_of[DEFAULT.version] = DEFAULT.cni_network
    assert len(network_of) == len(texts) + 1  # every policy has a version of its own
    runtime = fake.connect()
    ready(runtime)

    answered: list[str] = []
    errors: list[str] = []
    done = threading.Event()

    def admit_in_a_loop() -> None:
        while not done.is_set():
            try:
                response, result = ask(runtime.context, PLAIN, MESH)
                version = response["auditAnnotations"]["policy"]
                stamp = result["metadata"]["annotations"][INJECTED]
                if version not in network_of:
                    errors.append(f"answer from an unknown policy {version}")
                elif stamp != f"cni@{version}":
                    errors.append(f"{INJECTED}={stamp} in an answer from policy {version}")
                elif _networks(result) != [network_of[version]]:
                    errors.append(f"networks {_networks(result)} from policy {version}")
                answered.append(version)
            except Exception as err:  # any exception is a failed request
                errors.append(repr(err))
            time.sleep(0.0005)

    def apply(text: str) -> float:
        """Milliseconds from the API server accepting the change to the runtime using it."""
        version = parse_policy_text(text).version
        started = time.perf_counter()
        fake.policy(text)
        while runtime.policy is None or runtime.policy.version != version:
            assert time.perf_counter() - started < 2.0, "SPEC 3: within 2 seconds"
            time.sleep(0.0005)
        elapsed = (time.perf_counter() - started) * 1000
        wait_for(lambda: version in answered[-3:], "an answer from the new policy")
        return elapsed

    thread = threading.Thread(target=admit_in_a_loop)
    thread.start()
    try:
        # Edits some time apart, as people make them: the watch event alone.
        for text in texts[:4]:
            LATENCIES_MS.append(apply(text))
            time.sleep(0.15)  # pacing between edits (nothing waited for)
        # Back to back: each change also waits for the previous change's Event to be written.
        back_to_back = [apply(text) for text in texts[4:]]
    finally:
        done.set()
        thread.join(5)
    assert errors == []
    assert set(answered) == set(network_of)  # every policy answered, in turn
    paced = sorted(LATENCIES_MS[-4:])
    print(f"\npolicy change applied in {statistics.median(paced):.1f} ms (median of "
          f"{len(paced)} changes 150 ms apart, max {paced[-1]:.1f} ms; back to back: "
          f"{', '.join(f'{ms:.0f}' for ms in back_to_back)} ms; from the ConfigMap upsert "
          "to runtime.policy)")  # fmt: skip
    wait_for(lambda: reloads(runtime, "success") == len(texts) + 1, "every reload counted")


def test_a_slow_events_api_does_not_delay_the_next_policy_change(fake: Cluster) -> None:
    runtime = fake.connect()
    ready(runtime)
    fake.api.stall_next("POST", f"/api/v1/namespaces/{OWN}/events", seconds=10)
    warn, audit = parse_policy_text(WARN_TEXT).version, parse_policy_text(AUDIT_TEXT).version
    fake.policy(WARN_TEXT)  # applied at once; its PolicyApplied Event stalls
    wait_for(lambda: runtime.policy.version == warn, "the first change")
    started = time.monotonic()
    fake.policy(AUDIT_TEXT)
    wait_for(lambda: runtime.policy.version == audit, "the second change")
    assert time.monotonic() - started < 2.0  # SPEC 3


# ---------------------------------------------------------------------------------------
# 3. invalid policy: last good kept, Event, metric, /readyz; accepted changes evented


def _events(fake: Cluster, reason: str) -> list[dict[str, Any]]:
    return [e for e in fake.api.events if e.get("reason") == reason]


def test_invalid_policy_keeps_the_last_good_one_and_says_so_everywhere(
    fake: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshgate.cluster")
    warn, audit = parse_policy_text(WARN_TEXT).version, parse_policy_text(AUDIT_TEXT).version
    fake.policy(WARN_TEXT)
    runtime = fake.connect()
    ready(runtime)
    assert runtime.policy is not None and runtime.policy.version == warn
    assert f"ConfigMap {OWN}/{POLICY_CONFIGMAP}" in runtime.policy_source

    fake.policy(INVALID_TEXT)
    wait_for(lambda: runtime.policy_error, "the rejection")
    assert runtime.policy.version == warn and runtime.context is not None  # still serving
    assert "gate.action" in runtime.policy_error
    [event] = wait_for(lambda: _events(fake, "InvalidPolicy"), "the Warning Event")
    assert reloads(runtime, "invalid") == 1  # counted before the Event is written
    assert event["type"] == "Warning"
    assert event["metadata"]["namespace"] == OWN
    involved = event["involvedObject"]
    assert (involved["kind"], involved["name"], involved["namespace"]) == (
        "ConfigMap", POLICY_CONFIGMAP, OWN
    )  # fmt: skip
    stored = fake.api.get("configmaps", OWN, POLICY_CONFIGMAP)
    assert stored is not None and involved["uid"] == stored["metadata"]["uid"]
    assert "gate.action" in event["message"] and f"keeping policy {warn}" in event["message"]
    [logged] = [r for r in caplog.records if r.getMessage() == "invalid policy rejected"]
    assert logged.levelno == logging.ERROR
    assert any("gate.action" in e for e in logged.errors)
    status, body = readyz(runtime)
    assert status == 200 and body["policy"] == warn
    assert "gate.action" in body["policyError"] and POLICY_CONFIGMAP in body["policyError"]
    # The answers are still the last good policy's (warn: the NET_ADMIN pod is admitted).
    response, _ = ask(runtime.context, NET_ADMIN, MESH)
    assert response["allowed"] is True and response["auditAnnotations"]["policy"] == warn

    fake.policy(AUDIT_TEXT)  # the fix
    wait_for(lambda: runtime.policy.version == audit, "the fixed policy")
    assert runtime.policy_error == ""
    status, body = readyz(runtime)
    assert status == 200 and body["policy"] == audit and "policyError" not in body
    assert reloads(runtime, "invalid") == 1
    applied = wait_for(lambda: [e for e in _events(fake, "PolicyApplied")
                                if audit in e["message"]], "the PolicyApplied Event")  # fmt: skip
    assert applied[-1]["type"] == "Normal" and warn in applied[-1]["message"]
    assert applied[-1]["involvedObject"]["name"] == POLICY_CONFIGMAP
    changes = [(r.old, r.new) for r in caplog.records
               if r.getMessage() == "policy applied"]  # fmt: skip
    assert changes == [(None, warn), (warn, audit)]


# ---------------------------------------------------------------------------------------
# 4. the ConfigMap's life, and the answer a pod gets at each stage


def test_configmap_absent_created_invalid_fixed_deleted(fake: Cluster) -> None:
    fake.namespace(MESH, ENABLED)
    warn, audit = parse_policy_text(WARN_TEXT).version, parse_policy_text(AUDIT_TEXT).version
    runtime = fake.connect()
    ready(runtime)

    def stage(version: str, allowed: bool, source: str) -> None:
        wait_for(lambda: runtime.policy.version == version,
                 f"policy {version}")  # fmt: skip
        assert source in runtime.policy_source
        response, result = ask(runtime.context, NET_ADMIN, MESH)
        assert response["allowed"] is allowed, response
        assert response["auditAnnotations"]["policy"] == version
        if allowed:  # warn or audit: admitted and injected; the gate speaks on /validate
            assert injected(result)
        else:
            assert response["status"]["code"] == 403 and MESH in response["status"]["message"]
        response, result = ask(runtime.context, PLAIN, MESH)
        assert response["allowed"] is True and injected(result)
        assert result["metadata"]["annotations"][INJECTED] == f"cni@{version}"

    absent = f"embedded default (no ConfigMap {OWN}/{POLICY_CONFIGMAP})"
    configmap = f"ConfigMap {OWN}/{POLICY_CONFIGMAP}"
    stage(DEFAULT.version, False, absent)  # never created: the embedded default denies
    fake.policy(WARN_TEXT)
    stage(warn, True, configmap)  # created
    fake.policy(INVALID_TEXT)
    wait_for(lambda: runtime.policy_error, "the rejection")
    stage(warn, True, configmap)  # made invalid: the warn policy is kept
    fake.policy(AUDIT_TEXT)
    stage(audit, True, configmap)  # fixed
    assert runtime.policy_error == ""
    fake.delete_policy()
    stage(DEFAULT.version, False, absent)  # deleted: the embedded default again


# ---------------------------------------------------------------------------------------
# 5. a replica that starts while the ConfigMap is invalid


def test_replica_started_with_an_invalid_configmap_is_not_ready_until_fixed(
    fake: Cluster,
) -> None:
    fake.policy(INVALID_TEXT)
    runtime = fake.connect()
    wait_for(lambda: runtime.policy_error, "the rejection")
    wait_for(runtime.namespaces.ready, "the namespace list")
    assert runtime.policy is None and runtime.context is None
    assert runtime.not_ready_detail.startswith("no valid policy: ")
    assert "gate.action" in runtime.not_ready_detail
    status, body = readyz(runtime)
    assert status == 503 and body["ready"] is False and "gate.action" in body["detail"]
    [response] = http(runtime, ("POST", "/mutate", review(PLAIN, MESH)))
    assert response.status_code == 503  # the failurePolicy applies, never a guess
    [event] = wait_for(lambda: _events(fake, "InvalidPolicy"), "the Warning Event")
    assert "not ready" in event["message"] and "gate.action" in event["message"]
    assert reloads(runtime, "invalid") == 1

    fake.policy(WARN_TEXT)
    ctx = ready(runtime)
    assert ctx.policy.version == parse_policy_text(WARN_TEXT).version
    assert runtime.policy_error == "" and readyz(runtime)[0] == 200


# ---------------------------------------------------------------------------------------
# 6. namespace labels follow the watch


def test_namespace_label_change_flips_the_decision(fake: Cluster) -> None:
    fake.namespace("team")
    runtime = fake.connect()
    ctx = ready(runtime)
    cache = runtime.namespaces
    response, result = ask(ctx, PLAIN, "team")  # no label: the default rule is opt-in
    assert response["allowed"] is True and not injected(result) and "patch" not in response

    fake.namespace("team", ENABLED)
    wait_for(lambda: (cache("team") or {}).get("istio-injection") == "enabled", "ADDED label")
    response, result = ask(runtime.context, PLAIN, "team")
    assert injected(result) and result["metadata"]["annotations"][INJECTED].startswith("cni@")

    fake.namespace("team", {"istio-injection": "disabled"})
    wait_for(lambda: (cache("team") or {}).get("istio-injection") == "disabled", "MODIFIED")
    response, result = ask(runtime.context, PLAIN, "team")
    assert response["allowed"] is True and "patch" not in response
    # Names and labels only: nothing else of the object is kept.
    assert dict(cache("team") or {}) == {"istio-injection": "disabled",
                                         "kubernetes.io/metadata.name": "team"}  # fmt: skip

    fake.api.delete("namespaces", "", "team")
    wait_for(lambda: not cache.cached("team"), "DELETED")
    assert cache("team") is None
    response, result = ask(runtime.context, PLAIN, "team")  # judged as unknown: no injection
    assert "patch" not in response and "could not be read" in response["auditAnnotations"]["reason"]


# ---------------------------------------------------------------------------------------
# 7. cache miss: one GET, shared, then cached
# 8. GET failure: fail closed, within the short timeout


def _unsynced_namespace_runtime(fake: Cluster) -> tuple[Runtime, NamespaceCache]:
    """A runtime whose namespace cache was listed before `newns` existed, and whose watch
    has not delivered it yet (the watch is not running): requests for it are cache misses."""
    cache = NamespaceCache(fake.core())
    cache.handlers().replace([])
    runtime = Runtime(own_namespace=OWN, namespaces=cache)
    runtime.set_policy(DEFAULT, "embedded default")
    return runtime, cache


def test_cache_miss_makes_one_get_shared_by_concurrent_requests(fake: Cluster) -> None:
    fake.namespace("newns", ENABLED)
    runtime, cache = _unsynced_namespace_runtime(fake)
    fake.api.stall_next("GET", "/api/v1/namespaces/newns", seconds=0.3)  # they all overlap
    bodies = [review(PLAIN, "newns", uid=f"uid-{i}") for i in range(8)]
    responses = http(runtime, *(("POST", "/mutate", b) for b in bodies))
    assert fake.gets("newns") == 1 and cache.gets == 1
    for response in responses:
        assert response.status_code == 200
        answer, result = checked(PLAIN, response.json())
        assert answer["allowed"] is True and injected(result)
    assert cache.cached("newns")
    assert cache("newns") == {**ENABLED, "kubernetes.io/metadata.name": "newns"}
    http(runtime, ("POST", "/mutate", review(PLAIN, "newns")))  # cached: no second GET
    assert fake.gets("newns") == 1


FAULTS = [
    pytest.param("error", id="GET-answers-500"),
    pytest.param("stall", id="GET-stalls-5s"),
]


def _fault(fake: Cluster, kind: str, times: int) -> None:
    if kind == "error":
        fake.api.fail_next("GET", "/api/v1/namespaces/newns", 500, times=times)
    else:
        fake.api.stall_next("GET", "/api/v1/namespaces/newns", seconds=5, times=times)


@pytest.mark.parametrize("kind", FAULTS)
def test_get_failure_fails_closed_within_the_timeout(fake: Cluster, kind: str) -> None:
    fake.namespace("newns", ENABLED)  # exists, but its labels cannot be read
    runtime, cache = _unsynced_namespace_runtime(fake)

    _fault(fake, kind, times=1)
    started = time.monotonic()
    cache.fetch("newns")
    elapsed = time.monotonic() - started
    assert elapsed < 1.2, f"the GET gave up after {elapsed:.2f} s (SPEC: a short timeout, ≤ 1 s)"
    if kind == "stall":
        assert elapsed >= 0.9  # it did wait for its timeout
        GET_GIVE_UP_SECONDS.append(elapsed)
        print(f"\nnamespace GET gave up after {elapsed * 1000:.0f} ms (timeout 1 s)")
    assert not cache.cached("newns") and cache("newns") is None

    # Over HTTP: each request tries its one GET again, fails, and is judged fail-closed.
    _fault(fake, kind, times=2)
    started = time.monotonic()
    denied_review, plain_review = review(NET_ADMIN, "newns"), review(PLAIN, "newns", "uid-2")
    [denied] = http(runtime, ("POST", "/mutate", denied_review))
    [plain] = http(runtime, ("POST", "/mutate", plain_review))
    assert time.monotonic() - started < 2 * 1.2 + 0.5
    assert fake.gets("newns") == 3

    answer, _ = checked(NET_ADMIN, denied.json())
    assert answer["allowed"] is False and answer["status"]["code"] == 403
    message = answer["status"]["message"]
    assert "could not be read" in message and "retried" in message and "newns" in message
    assert "NET_ADMIN" in message
    assert answer["auditAnnotations"]["reason"] == message

    answer, result = checked(PLAIN, plain.json())
    assert answer["allowed"] is True and "patch" not in answer and not injected(result)
    reason = answer["auditAnnotations"]["reason"]
    assert "could not be read" in reason and "not injecting" in reason
    assert "namespaces[2]" in reason  # the strictest enforcing rule that may match

    # The API server answers again: the next request reads the labels and injects.
    [again] = http(runtime, ("POST", "/mutate", review(PLAIN, "newns", "uid-3")))
    answer, result = checked(PLAIN, again.json())
    assert injected(result) and cache.cached("newns")


def test_concurrent_requests_share_one_failed_get(fake: Cluster) -> None:
    """Requests that queue behind a GET that fails do not each try again in turn: all are
    answered (fail-closed) within the one GET's timeout."""
    fake.namespace("newns", ENABLED)
    runtime, cache = _unsynced_namespace_runtime(fake)
    _fault(fake, "stall", times=10)
    started = time.monotonic()
    bodies = [review(NET_ADMIN, "newns", uid=f"uid-{i}") for i in range(6)]
    responses = http(runtime, *(("POST", "/mutate", b) for b in bodies))
    elapsed = time.monotonic() - started
    assert fake.gets("newns") == 1
    assert elapsed < 1.6, f"{len(bodies)} concurrent requests took {elapsed:.2f} s"
    for response in responses:
        answer, _ = checked(NET_ADMIN, response.json())
        assert answer["allowed"] is False and "could not be read" in answer["status"]["message"]


# ---------------------------------------------------------------------------------------
# 9. 410 Gone: list again, never watch from the stale version


def test_gone_relists_and_never_rewatches_from_the_stale_version(fake: Cluster) -> None:
    fake.namespace("old", ENABLED)
    runtime = fake.connect(policy=False, timeout_seconds=1)
    runtime.set_policy(DEFAULT, "embedded default")
    ready(runtime)
    watcher = fake.watcher("namespaces")
    assert watcher.lists == 1
    # The next watch request is held back while the cluster changes and etcd compacts
    # (a watch that reconnects after an outage): it asks for a version that is gone.
    fake.api.stall_next("GET", "/api/v1/namespaces", seconds=0.5)
    before = len(fake.watch_requests("/api/v1/namespaces"))
    wait_for(lambda: len(fake.watch_requests("/api/v1/namespaces")) > before,
             "the stalled re-watch")  # fmt: skip
    stale = fake.watch_requests("/api/v1/namespaces")[before]["resourceVersion"]
    fake.namespace("late", {"team": "a"})
    fake.api.delete("namespaces", "", "old")
    compacted = fake.api.compact()
    assert int(stale) < int(compacted)

    cache = runtime.namespaces
    wait_for(lambda: cache.cached("late") and not cache.cached("old"), "the relist")
    assert watcher.lists == 2 and watcher.failures == 0  # 410 is not a failure
    fake.namespace("after", {"team": "b"})  # a change after the relist arrives by the watch
    wait_for(lambda: cache.cached("after"), "the change after the relist")
    assert watcher.lists == 2

    versions = [q["resourceVersion"] for q in fake.watch_requests("/api/v1/namespaces")]
    after = versions[before + 1 :]  # every watch after the one that was answered 410
    assert after and after[0] == compacted, versions  # from the new list's resourceVersion
    assert stale not in after and all(int(v) >= int(compacted) for v in after), versions
    # In order: list, watch…, the watch answered 410, the relist, then watches only.
    kinds = ["watch" if q.get("watch") == "true" else "list"
             for _, p, q in fake.api.requests if p == "/api/v1/namespaces"]  # fmt: skip
    assert kinds[0] == "list" and kinds.count("list") == 2, kinds
    assert kinds.index("list", 1) == before + 2, kinds


# ---------------------------------------------------------------------------------------
# 10. errors: reconnect with a growing, jittered delay; recover and resync


@pytest.fixture
def backoffs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, float, float]]:
    """Every backoff_delay call of the watch loop: (thread, failures, delay, when)."""
    calls: list[tuple[str, int, float, float]] = []
    real = watch.backoff_delay

    def recording(failures: int, jitter: float, **kw: float) -> float:
        delay = real(failures, jitter, **kw)
        calls.append((threading.current_thread().name, failures, delay, time.monotonic()))
        return delay

    monkeypatch.setattr(watch, "backoff_delay", recording)
    return calls


def test_failed_lists_back_off_with_growing_delays(
    fake: Cluster, backoffs: list[tuple[str, int, float, float]]
) -> None:
    fake.namespace(MESH, ENABLED)
    core = fake.core()
    attempts: list[float] = []
    real_list = core.list_namespace

    def timed_list(*args: Any, **kwargs: Any) -> Any:
        if not kwargs.get("watch"):
            attempts.append(time.monotonic())
        return real_list(*args, **kwargs)

    core.list_namespace = timed_list
    cache = NamespaceCache(core)
    fake.api.fail_next("GET", "/api/v1/namespaces", 500, times=3)
    watcher = fake.start(cache.watcher(rng=lambda: 0.0, **OPTIONS))
    wait_for(cache.ready, "the list after three failures", timeout=5)
    assert [(f, d) for _, f, d, _ in backoffs] == [(1, 0.25), (2, 0.5), (3, 1.0)]
    assert watcher.failures == 0 and watcher.lists == 1
    assert len(attempts) == 4
    gaps = [b - a for a, b in zip(attempts, attempts[1:], strict=False)]
    for gap, (_, _, delay, _) in zip(gaps, backoffs, strict=True):
        assert delay <= gap < delay + 0.3, (gaps, backoffs)
    assert cache(MESH) is not None


def test_outage_answers_from_the_last_snapshot_reconnects_with_backoff_and_resyncs(
    fake: Cluster, backoffs: list[tuple[str, int, float, float]]
) -> None:
    fake.namespace(MESH, ENABLED)
    fake.namespace("team")
    runtime = fake.connect(rng=lambda: 0.0)
    ready(runtime)
    version = runtime.policy.version
    # The API server goes down: every connection is refused, open streams end.
    fake.api.refuse_connections(True)
    fake.api.stop()
    fake.api.start()
    policy = fake.watcher("policy")
    wait_for(lambda: policy.failures >= 3, "three failed attempts", timeout=4)
    fake.namespace("team", ENABLED)  # a change it cannot see yet
    fake.policy(WARN_TEXT)

    # Mid-outage: still ready, every answer from the last snapshot.
    for _ in range(20):
        ctx = runtime.context
        assert ctx is not None and ctx.policy.version == version
        response, result = ask(ctx, PLAIN, MESH)
        assert response["allowed"] is True and injected(result)
    response, result = mutate(runtime, PLAIN, MESH)
    assert injected(result)
    assert readyz(runtime)[0] == 200
    assert "patch" not in ask(runtime.context, PLAIN, "team")[0]

    delays = [d for name, _, d, _ in backoffs if name == "watch-policy"]
    assert delays[:3] == [0.25, 0.5, 1.0]  # doubling (jitter 0 gives half the full delay)

    fake.api.refuse_connections(False)
    warn = parse_policy_text(WARN_TEXT).version
    wait_for(lambda: runtime.policy.version == warn, "the resync", timeout=5)
    wait_for(lambda: runtime.namespaces("team") and all(w.failures == 0 for w in fake.watchers),
             "every watcher to recover")  # fmt: skip
    response, result = ask(runtime.context, PLAIN, "team")
    assert injected(result)


def test_dropped_watch_reconnects_and_converges(
    fake: Cluster, backoffs: list[tuple[str, int, float, float]]
) -> None:
    fake.api.drop_next_watch("/api/v1/namespaces", after_events=1)
    runtime = fake.connect(policy=False, rng=lambda: 0.0)
    runtime.set_policy(DEFAULT, "embedded default")
    ready(runtime)
    watcher = fake.watcher("namespaces")
    fake.namespace("first")
    fake.namespace("second", ENABLED)  # the stream is cut before this one
    cache = runtime.namespaces
    wait_for(lambda: cache.cached("first") and cache.cached("second"), "convergence")
    assert [(name, f) for name, f, _, _ in backoffs] == [("watch-namespaces", 1)]
    assert watcher.lists == 2 and watcher.failures == 0
    fake.namespace("third")
    wait_for(lambda: cache.cached("third"), "the next watch")


# ---------------------------------------------------------------------------------------
# 11. NetworkAttachmentDefinitions


NAD_CASES = [
    pytest.param(None, ("other", "istio-cni"), (MESH, "istio-cni"), f"{MESH}/istio-cni",
                 id="network-in-the-pod-namespace"),
    pytest.param("cni: {network: kube-system/istio-cni}", (MESH, "istio-cni"),
                 ("kube-system", "istio-cni"), "kube-system/istio-cni", id="network-ns/name"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "wrong", "right", "named"), NAD_CASES)
def test_missing_network_attachment_definition_warns(
    fake: Cluster, text: str | None, wrong: tuple[str, str], right: tuple[str, str], named: str
) -> None:
    fake.namespace(MESH, ENABLED)
    fake.namespace("plain")
    if text is not None:
        fake.policy(text)
    runtime = fake.connect()
    ready(runtime)
    networks = runtime.networks
    assert isinstance(networks, cluster.NetworkCache)
    wait_for(networks.synced.is_set, "the NAD list")

    def nad_warnings() -> list[str]:
        response, result = mutate(runtime, PLAIN, MESH)
        assert response["allowed"] is True and injected(result)
        return [w for w in response.get("warnings", []) if "NetworkAttachmentDefinition" in w]

    [warning] = nad_warnings()
    assert named in warning and len(warning) <= 120
    response, _ = mutate(runtime, PLAIN, "plain")  # not injected: nothing to warn about
    assert "warnings" not in response
    fake.nad(*wrong)
    wait_for(lambda: networks(*wrong), "the other NAD")
    assert len(nad_warnings()) == 1
    fake.nad(*right)
    wait_for(lambda: networks(*right), "the NAD")
    assert nad_warnings() == []
    fake.api.delete("network-attachment-definitions", *right)
    wait_for(lambda: not networks(*right), "the NAD's deletion")
    assert len(nad_warnings()) == 1


def test_without_the_crd_the_network_check_is_off(
    make_cluster: Callable[..., Cluster], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    fake = make_cluster(crd_installed=False)
    fake.namespace(MESH, ENABLED)
    runtime = fake.connect()
    ready(runtime)
    networks = runtime.networks
    assert isinstance(networks, cluster.NetworkCache)
    nad_watcher = fake.watcher("network-attachment-definitions")
    wait_for(lambda: not nad_watcher.alive, "the NAD watcher to end")
    assert networks.enabled is False
    assert "watch-network-attachment-definitions" not in watch_threads()
    response, result = mutate(runtime, PLAIN, MESH)
    assert injected(result) and "warnings" not in response
    said = [r for r in caplog.records if "NetworkAttachmentDefinition" in r.getMessage()]
    assert len(said) == 1 and "not installed" in said[0].getMessage()
    assert not [r for r in caplog.records if r.getMessage() == "watch failed; retrying"]
    assert nad_watcher.failures == 0 and nad_watcher.lists == 0


# ---------------------------------------------------------------------------------------
# 12. clean shutdown


@pytest.mark.parametrize("state", ["streaming", "backing-off"])
def test_shutdown_stops_every_watcher_at_once(
    fake: Cluster, caplog: pytest.LogCaptureFixture, state: str
) -> None:
    caplog.set_level(logging.INFO)
    fake.namespace(MESH, ENABLED)
    fake.policy(WARN_TEXT)
    runtime = fake.connect()
    ready(runtime)
    # The Event writer starts with the first PolicyApplied Event, just after the policy;
    # that Event is written before the API goes away (else its failure, logged whenever the
    # write gives up, could fall into the stop below).
    wait_for(lambda: "watch-policy-events" in watch_threads(), "the Event writer")
    wait_for(lambda: _events(fake, "PolicyApplied"), "the PolicyApplied Event")
    assert sorted(watch_threads()) == [
        "watch-namespaces", "watch-network-attachment-definitions", "watch-policy",
        "watch-policy-events",
    ]  # fmt: skip
    if state == "backing-off":
        fake.api.refuse_connections(True)
        fake.api.stop()
        fake.api.start()
        wait_for(lambda: all(w.failures for w in fake.watchers), "every watcher to fail")
    else:
        fake.namespace("team")
        wait_for(lambda: runtime.namespaces.cached("team"), "a watch event")
    first = len(caplog.records)
    elapsed = fake.stop_watchers()
    assert elapsed < 1.0, f"stopping took {elapsed:.2f} s"
    assert watch_threads() == []
    during = [r.getMessage() for r in caplog.records[first:] if r.levelno >= logging.WARNING]
    assert during == []


# ---------------------------------------------------------------------------------------
# 13. the API server down at start-up, and mid-run


def test_api_server_down_at_startup_then_ready_when_it_answers(
    fake: Cluster, backoffs: list[tuple[str, int, float, float]]
) -> None:
    fake.namespace(MESH, ENABLED)
    fake.api.refuse_connections(True)
    runtime = fake.connect(rng=lambda: 0.0)
    wait_for(lambda: all(w.failures >= 2 for w in fake.watchers), "failed attempts")
    assert runtime.context is None and runtime.policy is None
    assert readyz(runtime) == (503, {"ready": False, "detail": "no policy yet"})
    [response] = http(runtime, ("POST", "/mutate", review(PLAIN, MESH)))
    assert response.status_code == 503
    assert all(w.alive for w in fake.watchers)  # still trying, nothing crashed
    fake.api.refuse_connections(False)
    ctx = wait_for(lambda: runtime.context, "readiness", timeout=4)
    assert ctx.policy.version == DEFAULT.version
    response, result = ask(ctx, PLAIN, MESH)
    assert injected(result)


# ---------------------------------------------------------------------------------------
# 14 (in-process part). configuration


def test_kubeconfig_from_the_environment(
    fake: Cluster, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake.namespace(MESH)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(fake.kubeconfig))
    api_client = kube.api_client(None)
    try:
        listed = kubernetes.client.CoreV1Api(api_client).list_namespace()
        assert [n.metadata.name for n in listed.items] == [MESH]
    finally:
        api_client.close()
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(kube.ClusterConfigError, match="kubeconfig"):
        kube.api_client(None)
    with pytest.raises(kube.ClusterConfigError, match="missing"):
        kube.api_client(str(tmp_path / "missing"))


def test_in_cluster_configuration_without_a_service_account_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if Path("/var/run/secrets/kubernetes.io/serviceaccount/token").exists():
        pytest.skip("this machine runs in a cluster")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    with pytest.raises(kube.ClusterConfigError, match="in-cluster"):
        kube.api_client(None)


# ---------------------------------------------------------------------------------------
# 15. the webhook's own namespace


@pytest.mark.parametrize(
    ("flag", "file_text", "expected"),
    [
        pytest.param("flagged", "from-file\n", "flagged", id="flag-wins"),
        pytest.param(None, "from-file\n", "from-file", id="service-account-file"),
        pytest.param(None, None, "meshgate-system", id="default"),
        pytest.param(None, "  \n", "meshgate-system", id="empty-file"),
        pytest.param("", "from-file", "from-file", id="empty-flag-is-no-flag"),
    ],
)
def test_own_namespace(tmp_path: Path, flag: str | None, file_text: str | None,
                       expected: str) -> None:  # fmt: skip
    sa_file = tmp_path / "namespace"
    if file_text is not None:
        sa_file.write_text(file_text)
    assert kube.own_namespace(flag, sa_file) == expected
