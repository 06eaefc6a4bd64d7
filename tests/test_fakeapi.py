"""Self-tests of tests/fakeapi.py, driven by the official ``kubernetes`` client.

The fake is only worth something if the real client, unchanged, sees what it would see
from a real API server: these tests go through kubeconfig loading, ApiClient, urllib3 and
kubernetes.watch.Watch, never raw HTTP.
"""

from __future__ import annotations

import base64
import copy
import json
import threading
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import urllib3
from fakeapi import FakeAPIServer
from kubernetes.client import ApiException

NAD = ("k8s.cni.cncf.io", "v1", "network-attachment-definitions")


def connect(api: FakeAPIServer, tmp_path: Path, name: str = "kubeconfig") -> Any:
    cfg = kubernetes.client.Configuration()
    kubeconfig = api.write_kubeconfig(tmp_path / name)
    kubernetes.config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    return kubernetes.client.ApiClient(cfg)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[FakeAPIServer]:
    with FakeAPIServer(tmp_path, bookmark_interval=0.2) as server:
        yield server


@pytest.fixture
def client(api: FakeAPIServer, tmp_path: Path) -> Iterator[Any]:
    api_client = connect(api, tmp_path)
    yield api_client
    api_client.close()


@pytest.fixture
def v1(client: Any) -> Any:
    return kubernetes.client.CoreV1Api(client)


def namespace(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels}}


def configmap(ns: str, name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"namespace": ns, "name": name, "labels": labels}, "data": {"k": "v"}}


def status_of(err: ApiException) -> dict[str, Any]:
    """The Status object an ApiException carries as its body."""
    return json.loads(err.body or "null")


def in_thread(action: Callable[[], object], delay: float = 0.2) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        action()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def collect(stream: Generator[dict[str, Any]], until: Callable[[list], bool]) -> list:
    """Events from a watch until `until(events)`; then the stream is closed (its response
    released), as leaving the loop of a real consumer would eventually do."""
    events: list[dict[str, Any]] = []
    for event in stream:
        events.append(event)
        if until(events):
            break
    stream.close()
    return events


# ---------------------------------------------------------------------------------------
# LIST and GET


def test_list_namespaces(api: FakeAPIServer, v1: Any) -> None:
    api.upsert("namespaces", namespace("b", team="x"))
    api.upsert("namespaces", namespace("a"))
    result = v1.list_namespace()
    assert [ns.metadata.name for ns in result.items] == ["a", "b"]
    assert result.metadata.resource_version == api.resource_version
    assert result.items[1].metadata.labels == {"team": "x", "kubernetes.io/metadata.name": "b"}
    assert result.items[0].metadata.uid and result.items[0].metadata.creation_timestamp


def test_list_raw_json_omits_kind_on_items(api: FakeAPIServer, v1: Any) -> None:
    api.upsert("namespaces", namespace("a"))
    body = json.loads(v1.list_namespace(_preload_content=False).data)
    assert body["kind"] == "NamespaceList" and body["apiVersion"] == "v1"
    assert body["metadata"] == {"resourceVersion": api.resource_version}
    assert [set(item) for item in body["items"]] == [{"metadata"}]


def test_read_namespace_and_not_found(api: FakeAPIServer, v1: Any) -> None:
    api.upsert("namespaces", namespace("a"))
    assert v1.read_namespace("a").metadata.name == "a"
    with pytest.raises(ApiException) as caught:
        v1.read_namespace("nope", _preload_content=False)
    assert caught.value.status == 404
    assert status_of(caught.value) == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'namespaces "nope" not found', "reason": "NotFound",
        "details": {"name": "nope", "kind": "namespaces"}, "code": 404,
    }  # fmt: skip
    assert [r for r in api.requests if r[:2] == ("GET", "/api/v1/namespaces/nope")] == [
        ("GET", "/api/v1/namespaces/nope", {})
    ]


def test_pagination(api: FakeAPIServer, v1: Any) -> None:
    for i in range(5):
        api.upsert("configmaps", configmap("ns", f"cm{i}"))
    first = v1.list_namespaced_config_map("ns", limit=2)
    assert [c.metadata.name for c in first.items] == ["cm0", "cm1"]
    assert first.metadata._continue and first.metadata.remaining_item_count == 3
    api.upsert("configmaps", configmap("ns", "cm2", changed="yes"))  # pages stay consistent
    second = v1.list_namespaced_config_map("ns", limit=2, _continue=first.metadata._continue)
    assert [c.metadata.name for c in second.items] == ["cm2", "cm3"]
    assert second.items[0].metadata.labels == {}
    assert second.metadata.resource_version == first.metadata.resource_version
    last = v1.list_namespaced_config_map("ns", limit=2, _continue=second.metadata._continue)
    assert [c.metadata.name for c in last.items] == ["cm4"] and last.metadata._continue is None
    api.compact()
    with pytest.raises(ApiException) as caught:
        v1.list_namespaced_config_map("ns", limit=2, _continue=first.metadata._continue)
    assert caught.value.status == 410


def test_selectors(api: FakeAPIServer, v1: Any) -> None:
    api.upsert("configmaps", configmap("ns", "policy", app="x"))
    api.upsert("configmaps", configmap("ns", "other", app="y"))
    api.upsert("configmaps", configmap("elsewhere", "policy"))
    found = v1.list_namespaced_config_map("ns", field_selector="metadata.name=policy")
    assert [(c.metadata.namespace, c.metadata.name) for c in found.items] == [("ns", "policy")]
    everywhere = v1.list_config_map_for_all_namespaces(field_selector="metadata.name==policy")
    assert [c.metadata.namespace for c in everywhere.items] == ["elsewhere", "ns"]
    labelled = v1.list_namespaced_config_map("ns", label_selector="app=y")
    assert [c.metadata.name for c in labelled.items] == ["other"]
    assert len(v1.list_config_map_for_all_namespaces(label_selector="app").items) == 2
    assert len(v1.list_config_map_for_all_namespaces(label_selector="!app,app!=z").items) == 1
    with pytest.raises(ApiException) as caught:
        v1.list_namespaced_config_map("ns", field_selector="data.k=v")
    assert caught.value.status == 400
    assert status_of(caught.value)["message"] == "field label not supported: data.k"


# ---------------------------------------------------------------------------------------
# WATCH


def test_watch_streams_changes_and_bookmarks(api: FakeAPIServer, v1: Any) -> None:
    rv = v1.list_namespace().metadata.resource_version

    def changes() -> None:
        api.upsert("namespaces", namespace("a"))
        api.upsert("namespaces", namespace("a", team="x"))
        time.sleep(0.5)  # long enough for a bookmark
        api.delete("namespaces", "", "a")

    thread = in_thread(changes)
    stream = kubernetes.watch.Watch().stream(
        v1.list_namespace, resource_version=rv, timeout_seconds=2, allow_watch_bookmarks=True
    )
    events = collect(stream, lambda seen: seen[-1]["type"] == "DELETED")
    thread.join()
    types = [e["type"] for e in events]
    assert [t for t in types if t != "BOOKMARK"] == ["ADDED", "MODIFIED", "DELETED"]
    assert "BOOKMARK" in types
    assert events[-1]["object"].metadata.resource_version == api.resource_version
    versions = [int(e["raw_object"]["metadata"]["resourceVersion"]) for e in events]
    assert versions == sorted(versions)
    # A bookmark carries only a resourceVersion: the start, or one the stream has reached
    # (when it comes depends on thread timing, so any of those).
    reached = {str(rv)} | {e["raw_object"]["metadata"]["resourceVersion"]
                           for e in events if e["type"] != "BOOKMARK"}  # fmt: skip
    for bookmark in (e for e in events if e["type"] == "BOOKMARK"):
        assert set(bookmark["object"]) == {"kind", "apiVersion", "metadata"}
        assert bookmark["object"]["kind"] == "Namespace"
        assert set(bookmark["object"]["metadata"]) == {"resourceVersion"}
        assert bookmark["object"]["metadata"]["resourceVersion"] in reached


def test_watch_replays_history_and_ends_at_timeout(api: FakeAPIServer, v1: Any) -> None:
    rv = v1.list_namespace().metadata.resource_version
    api.upsert("namespaces", namespace("a"))
    api.upsert("configmaps", configmap("ns", "cm"))  # another resource: not in this watch
    started = time.monotonic()
    events = list(kubernetes.watch.Watch().stream(v1.list_namespace, resource_version=rv,
                                                  timeout_seconds=1))  # fmt: skip
    assert 0.9 < time.monotonic() - started < 1.8
    assert [(e["type"], e["object"].metadata.name) for e in events] == [("ADDED", "a")]


def test_watch_without_version_starts_with_added(api: FakeAPIServer, v1: Any) -> None:
    api.upsert("namespaces", namespace("a"))
    api.upsert("namespaces", namespace("b"))
    for version in ({}, {"resource_version": "0"}):
        watch = kubernetes.watch.Watch()
        stream = watch.stream(v1.list_namespace, timeout_seconds=1, **version)
        events = collect(stream, lambda seen: len(seen) == 2)
        watch.stop()
        assert [(e["type"], e["object"].metadata.name) for e in events] == [
            ("ADDED", "a"), ("ADDED", "b")
        ]  # fmt: skip


def test_watch_selector_sees_objects_enter_and_leave(api: FakeAPIServer, v1: Any) -> None:
    api.upsert("configmaps", configmap("ns", "cm", mesh="on"))
    rv = api.resource_version
    api.upsert("configmaps", configmap("ns", "cm"))
    api.upsert("configmaps", configmap("ns", "cm", mesh="on"))
    api.upsert("configmaps", configmap("ns", "cm", mesh="on", more="1"))
    stream = kubernetes.watch.Watch(return_type="object").stream(
        v1.list_namespaced_config_map, "ns", label_selector="mesh=on", resource_version=rv,
        timeout_seconds=1,
    )  # fmt: skip
    events = list(stream)
    assert [e["type"] for e in events] == ["DELETED", "ADDED", "MODIFIED"]
    assert events[0]["object"]["metadata"]["labels"] == {"mesh": "on"}  # the content before
    assert isinstance(events[0]["object"], dict)  # return_type="object": plain dicts


def test_watch_after_compaction_is_gone(api: FakeAPIServer, v1: Any) -> None:
    rv = v1.list_namespace().metadata.resource_version
    api.upsert("namespaces", namespace("a"))
    compacted = api.compact()
    with pytest.raises(ApiException) as caught:
        list(kubernetes.watch.Watch().stream(v1.list_namespace, resource_version=rv,
                                             timeout_seconds=5))  # fmt: skip
    assert caught.value.status == 410
    assert caught.value.reason == f"Expired: too old resource version: {rv} ({compacted})"
    events = list(kubernetes.watch.Watch().stream(v1.list_namespace, resource_version=compacted,
                                                  timeout_seconds=1))  # fmt: skip
    assert events == []


def test_dropped_watch_raises(api: FakeAPIServer, v1: Any) -> None:
    api.upsert("namespaces", namespace("a"))
    api.upsert("namespaces", namespace("b"))
    api.drop_next_watch("/api/v1/namespaces", after_events=1)
    started = time.monotonic()
    seen = []
    with pytest.raises(urllib3.exceptions.ProtocolError):
        for event in kubernetes.watch.Watch().stream(v1.list_namespace, timeout_seconds=5):
            seen.append(event["object"].metadata.name)
    assert seen == ["a"] and time.monotonic() - started < 2
    assert len(v1.list_namespace().items) == 2  # the next requests are served normally


# ---------------------------------------------------------------------------------------
# NetworkAttachmentDefinitions and Events


def test_network_attachment_definitions(api: FakeAPIServer, client: Any) -> None:
    custom: Any = kubernetes.client.CustomObjectsApi(client)
    nad = {"metadata": {"namespace": "ns", "name": "net"}, "spec": {"config": "{}"}}
    api.upsert("network-attachment-definitions", nad)
    listed = custom.list_cluster_custom_object(*NAD)
    assert listed["kind"] == "NetworkAttachmentDefinitionList"
    assert [i["metadata"]["name"] for i in listed["items"]] == ["net"]
    assert custom.list_namespaced_custom_object(NAD[0], NAD[1], "ns", NAD[2])["items"]
    assert custom.get_namespaced_custom_object(NAD[0], NAD[1], "ns", NAD[2], "net")["kind"] == (
        "NetworkAttachmentDefinition"
    )
    with pytest.raises(ApiException) as caught:
        custom.get_namespaced_custom_object(NAD[0], NAD[1], "ns", NAD[2], "gone")
    assert caught.value.status == 404
    assert status_of(caught.value)["message"] == (
        'network-attachment-definitions.k8s.cni.cncf.io "gone" not found'
    )
    api.crd_installed = False
    with pytest.raises(ApiException) as caught:
        custom.list_cluster_custom_object(*NAD)
    assert caught.value.status == 404
    body = status_of(caught.value)
    assert (body["reason"], body["message"]) == (
        "NotFound", "the server could not find the requested resource"
    )  # fmt: skip


def test_watch_network_attachment_definitions(api: FakeAPIServer, client: Any) -> None:
    custom: Any = kubernetes.client.CustomObjectsApi(client)
    rv = custom.list_cluster_custom_object(*NAD)["metadata"]["resourceVersion"]
    nad = {"metadata": {"namespace": "ns", "name": "net"}}
    thread = in_thread(lambda: api.upsert("network-attachment-definitions", nad))
    stream = kubernetes.watch.Watch().stream(custom.list_cluster_custom_object, *NAD,
                                             resource_version=rv, timeout_seconds=2)  # fmt: skip
    [event] = collect(stream, lambda seen: True)
    thread.join()
    assert event["type"] == "ADDED" and event["object"]["metadata"]["name"] == "net"


def test_create_event(api: FakeAPIServer, v1: Any, client: Any) -> None:
    body = {"metadata": {"name": "e1"}, "involvedObject": {"kind": "ConfigMap", "name": "cm"},
            "reason": "PolicyApplied", "message": "hello", "type": "Normal"}  # fmt: skip
    created = v1.create_namespaced_event("ns", body)
    assert created.metadata.namespace == "ns" and created.metadata.resource_version
    assert api.events[-1]["message"] == "hello" and api.events[-1]["kind"] == "Event"
    with pytest.raises(ApiException) as caught:
        v1.create_namespaced_event("ns", body)
    assert caught.value.status == 409
    assert status_of(caught.value)["reason"] == "AlreadyExists"
    events_v1 = kubernetes.client.EventsV1Api(client)
    new: Any = {"metadata": {"generateName": "e-"}, "eventTime": "2024-01-01T00:00:00.000000Z"}
    events_v1.create_namespaced_event("ns", new)
    assert api.events[-1]["apiVersion"] == "events.k8s.io/v1"
    assert api.events[-1]["metadata"]["name"].startswith("e-")


# ---------------------------------------------------------------------------------------
# faults


def test_fail_next(api: FakeAPIServer, v1: Any) -> None:
    api.fail_next("GET", "/api/v1/namespaces", times=2)
    api.fail_next("GET", "/api/v1/namespaces", status=403, reason="Forbidden")
    for status in (500, 500, 403):
        with pytest.raises(ApiException) as caught:
            v1.list_namespace()
        assert caught.value.status == status
        assert status_of(caught.value)["code"] == status
    assert v1.list_namespace().items == []


def test_too_many_requests_is_retried_by_urllib3(api: FakeAPIServer, v1: Any) -> None:
    # urllib3's default Retry honours Retry-After on 413/429/503, whatever client_go_retries says
    api.fail_next("GET", "/api/v1/namespaces", status=429, reason="TooManyRequests", retry_after=0)
    assert v1.list_namespace().items == []
    assert len(api.requests) == 2
    api.fail_next("GET", "/api/v1/namespaces", status=429, reason="TooManyRequests")
    with pytest.raises(ApiException) as caught:
        v1.list_namespace()
    assert caught.value.status == 429


def test_stall_next_times_out_on_the_client(api: FakeAPIServer, v1: Any) -> None:
    # urllib3 retries a GET that timed out (Retry(3) by default): one stall costs one timeout
    api.stall_next("GET", "/api/v1/namespaces", seconds=5)
    started = time.monotonic()
    assert v1.list_namespace(_request_timeout=0.2).items == []
    assert 0.2 < time.monotonic() - started < 1
    assert [r[0] for r in api.requests if r[1] == "/api/v1/namespaces"] == ["GET", "GET"]
    api.stall_next("GET", "/api/v1/namespaces", seconds=5, times=4)
    started = time.monotonic()
    with pytest.raises(urllib3.exceptions.MaxRetryError) as caught:
        v1.list_namespace(_request_timeout=0.2)
    assert isinstance(caught.value.reason, urllib3.exceptions.ReadTimeoutError)
    assert 0.8 < time.monotonic() - started < 2


def test_refuse_connections_and_restart(api: FakeAPIServer, tmp_path: Path) -> None:
    api.refuse_connections(True)
    fresh = connect(api, tmp_path)  # no pooled connection to reuse
    core = kubernetes.client.CoreV1Api(fresh)
    started = time.monotonic()
    with pytest.raises(urllib3.exceptions.MaxRetryError):
        core.list_namespace()
    assert time.monotonic() - started < 2
    api.refuse_connections(False)
    assert core.list_namespace().items == []
    port = api.port
    api.stop()
    with pytest.raises(urllib3.exceptions.MaxRetryError):
        core.list_namespace()
    api.start()
    assert api.port == port and core.list_namespace().items == []
    fresh.close()


def test_wrong_token_is_unauthorized(api: FakeAPIServer, v1: Any) -> None:
    api.token = "another-token"  # the kubeconfig's token is no longer the right one
    with pytest.raises(ApiException) as caught:
        v1.list_namespace()
    assert caught.value.status == 401
    assert status_of(caught.value) == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "Unauthorized", "reason": "Unauthorized", "code": 401,
    }  # fmt: skip


def test_stop_ends_everything(tmp_path: Path) -> None:
    baseline = set(threading.enumerate())
    with FakeAPIServer(tmp_path, bookmark_interval=0.2) as api:
        client = connect(api, tmp_path)
        v1 = kubernetes.client.CoreV1Api(client)
        v1.list_namespace()  # leaves an idle keep-alive connection in the pool
        ended: list[str] = []

        def watch() -> None:
            events = list(kubernetes.watch.Watch().stream(v1.list_namespace, timeout_seconds=60))
            ended.append(f"watch ended cleanly after {len(events)} events")

        def stalled() -> None:
            api.stall_next("GET", "/api/v1/namespaces/x", seconds=60)
            try:
                kubernetes.client.CoreV1Api(connect(api, tmp_path, "k2")).read_namespace("x")
            except Exception as err:
                ended.append(type(err).__name__)

        threads = [threading.Thread(target=watch), threading.Thread(target=stalled)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        started = time.monotonic()
    assert time.monotonic() - started < 2
    for thread in threads:
        thread.join(5)
    client.close()
    assert sorted(ended) == ["MaxRetryError", "watch ended cleanly after 0 events"], ended
    assert set(threading.enumerate()) == baseline


# ---------------------------------------------------------------------------------------
# Secrets: create, replace (optimistic concurrency); webhook configurations: patch

ADMISSION_PATH = "/apis/admissionregistration.k8s.io/v1"
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def tls_secret(name: str = "tls", **data: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "type": "kubernetes.io/tls",
            "data": {k.replace("_", "."): b64(v) for k, v in data.items()}}  # fmt: skip


def webhook_configuration(name: str, *hooks: str) -> dict[str, Any]:
    service = {"namespace": "meshgate-system", "name": "meshgate", "path": "/mutate"}
    return {"metadata": {"name": name},
            "webhooks": [{"name": h, "clientConfig": {"service": service},
                          "sideEffects": "None", "admissionReviewVersions": ["v1"]}
                         for h in hooks]}  # fmt: skip


@pytest.fixture
def admission(client: Any) -> Any:
    return kubernetes.client.AdmissionregistrationV1Api(client)


def raw(response: Any) -> dict[str, Any]:
    return json.loads(response.data)


def test_secret_create_and_already_exists(api: FakeAPIServer, v1: Any) -> None:
    created = raw(v1.create_namespaced_secret(
        "ns", tls_secret(tls_crt="C", tls_key="K"), _preload_content=False))  # fmt: skip
    assert created["kind"] == "Secret" and created["metadata"]["namespace"] == "ns"
    assert created["metadata"]["resourceVersion"] == api.resource_version
    assert created["metadata"]["uid"] and created["type"] == "kubernetes.io/tls"
    assert api.get("secrets", "ns", "tls") == created
    read = v1.read_namespaced_secret("tls", "ns")
    assert base64.b64decode(read.data["tls.crt"]) == b"C"
    with pytest.raises(ApiException) as caught:
        v1.create_namespaced_secret("ns", tls_secret(tls_crt="other", tls_key="K"))
    assert caught.value.status == 409
    assert status_of(caught.value) == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'secrets "tls" already exists', "reason": "AlreadyExists",
        "details": {"name": "tls", "kind": "secrets"}, "code": 409,
    }  # fmt: skip
    assert base64.b64decode(api.get("secrets", "ns", "tls")["data"]["tls.crt"]) == b"C"
    assert [(m, p) for m, p, _ in api.requests if m == "POST"] == [
        ("POST", "/api/v1/namespaces/ns/secrets")] * 2  # fmt: skip
    method, path, _, body = api.bodies[0]
    assert (method, path) == ("POST", "/api/v1/namespaces/ns/secrets")
    assert body["data"]["tls.key"] == b64("K")


def test_secret_create_defaults_and_validation(api: FakeAPIServer, v1: Any) -> None:
    v1.create_namespaced_secret("ns", {"metadata": {"name": "plain"},
                                       "stringData": {"k": "v"}})  # fmt: skip
    stored = api.get("secrets", "ns", "plain")
    assert stored["type"] == "Opaque" and stored["data"] == {"k": b64("v")}
    assert "stringData" not in stored
    with pytest.raises(ApiException) as caught:  # a TLS Secret needs both keys
        v1.create_namespaced_secret("ns", tls_secret(tls_crt="C"))
    assert caught.value.status == 422
    body = status_of(caught.value)
    assert body["reason"] == "Invalid"
    assert body["message"] == 'Secret "tls" is invalid: data[tls.key]: Required value'
    assert body["details"]["causes"] == [
        {"reason": "FieldValueRequired", "message": "Required value", "field": "data[tls.key]"}]
    with pytest.raises(ApiException) as caught:
        v1.create_namespaced_secret("ns", {"metadata": {"name": "bad"}, "data": {"k": "!!"}})
    assert caught.value.status == 400
    with pytest.raises(ApiException) as caught:
        v1.create_namespaced_secret("ns", {"metadata": {"name": "x", "namespace": "other"}})
    assert caught.value.status == 400
    assert api.get("secrets", "ns", "tls") is None and api.get("secrets", "ns", "bad") is None


def test_secret_replace_is_conditional_on_resource_version(api: FakeAPIServer, v1: Any) -> None:
    first = api.upsert("secrets", {**tls_secret(tls_crt="", tls_key=""),
                                   "metadata": {"name": "tls", "namespace": "ns"}})  # fmt: skip
    filled = copy.deepcopy(first)
    filled["data"] = {"tls.crt": b64("C"), "tls.key": b64("K"), "ca.crt": b64("A")}
    second = raw(v1.replace_namespaced_secret("tls", "ns", filled, _preload_content=False))
    assert int(second["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])
    assert second["metadata"]["uid"] == first["metadata"]["uid"]
    assert second["data"]["ca.crt"] == b64("A")
    stale = copy.deepcopy(filled)  # still carries the first resourceVersion
    stale["data"]["tls.crt"] = b64("lost update")
    with pytest.raises(ApiException) as caught:
        v1.replace_namespaced_secret("tls", "ns", stale)
    assert caught.value.status == 409
    assert status_of(caught.value) == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'Operation cannot be fulfilled on secrets "tls": the object has been '
                   "modified; please apply your changes to the latest version and try again",
        "reason": "Conflict", "details": {"name": "tls", "kind": "secrets"}, "code": 409,
    }  # fmt: skip
    assert api.get("secrets", "ns", "tls") == second
    del stale["metadata"]["resourceVersion"]  # no resourceVersion: unconditional
    v1.replace_namespaced_secret("tls", "ns", stale)
    assert api.get("secrets", "ns", "tls")["data"]["tls.crt"] == b64("lost update")


@pytest.mark.parametrize(
    ("name", "change", "status"),
    [
        pytest.param("gone", {}, 404, id="absent-secret-is-not-created-by-put"),
        pytest.param("tls", {"type": "Opaque"}, 422, id="type-is-immutable"),
        pytest.param("tls", {"metadata": {"name": "other"}}, 400, id="name-differs-from-url"),
    ],
)
def test_secret_replace_refused(api: FakeAPIServer, v1: Any, name: str,
                                change: dict[str, Any], status: int) -> None:  # fmt: skip
    stored = api.upsert("secrets", {**tls_secret(tls_crt="C", tls_key="K"),
                                    "metadata": {"name": "tls", "namespace": "ns"}})  # fmt: skip
    body = {**copy.deepcopy(stored), **change}
    if status == 404:
        body["metadata"] = {**body["metadata"], "name": name}
    with pytest.raises(ApiException) as caught:
        v1.replace_namespaced_secret(name, "ns", body)
    assert caught.value.status == status
    if status == 422:
        assert status_of(caught.value)["message"] == (
            'Secret "tls" is invalid: type: Invalid value: "Opaque": field is immutable'
        )
    assert api.get("secrets", "ns", "tls") == stored


def test_secret_writes_are_watched(api: FakeAPIServer, v1: Any) -> None:
    rv = v1.list_namespaced_secret("ns").metadata.resource_version
    v1.create_namespaced_secret("ns", tls_secret(tls_crt="C", tls_key="K"))
    current = v1.read_namespaced_secret("tls", "ns")
    current.data["tls.crt"] = b64("D")
    v1.replace_namespaced_secret("tls", "ns", current)
    events = list(kubernetes.watch.Watch().stream(v1.list_namespaced_secret, "ns",
                                                  resource_version=rv, timeout_seconds=1))
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED"]
    assert events[1]["raw_object"]["data"]["tls.crt"] == b64("D")


def test_webhook_configuration_json_patch(api: FakeAPIServer, admission: Any) -> None:
    api.upsert("mutatingwebhookconfigurations", webhook_configuration("mg", "a.x", "b.x"))
    before = api.get("mutatingwebhookconfigurations", "", "mg")
    ops = [{"op": "test", "path": "/webhooks/1/name", "value": "b.x"},
           {"op": "add", "path": "/webhooks/1/clientConfig/caBundle", "value": b64("CA")}]
    patched = raw(admission.patch_mutating_webhook_configuration(
        "mg", ops, _content_type=JSON_PATCH, _preload_content=False))  # fmt: skip
    assert patched["webhooks"][1]["clientConfig"]["caBundle"] == b64("CA")
    assert "caBundle" not in patched["webhooks"][0]["clientConfig"]
    assert patched["metadata"]["uid"] == before["metadata"]["uid"]
    assert int(patched["metadata"]["resourceVersion"]) > int(before["metadata"]["resourceVersion"])
    assert api.get("mutatingwebhookconfigurations", "", "mg") == patched
    assert api.bodies[-1] == ("PATCH", f"{ADMISSION_PATH}/mutatingwebhookconfigurations/mg",
                              JSON_PATCH, ops)  # fmt: skip
    assert admission.read_mutating_webhook_configuration("mg").webhooks[1].name == "b.x"
    # a failed test: the whole patch is refused (422, as the API server words it)
    wrong = [{"op": "test", "path": "/webhooks/0/name", "value": "b.x"},
             {"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": b64("X")}]
    with pytest.raises(ApiException) as caught:
        admission.patch_mutating_webhook_configuration("mg", wrong, _content_type=JSON_PATCH)
    assert caught.value.status == 422
    body = status_of(caught.value)
    assert (body["reason"], body["message"]) == (
        "Invalid", "the server rejected our request due to an error in our request")
    assert body["details"]["causes"][0]["message"]
    assert api.get("mutatingwebhookconfigurations", "", "mg") == patched


@pytest.mark.parametrize(
    ("content_type", "patch", "hooks"),
    [
        pytest.param(MERGE_PATCH, {"webhooks": [{"name": "b.x", "clientConfig": {"url": "u"}}]},
                     [("b.x", {"url": "u"})], id="merge-patch-replaces-the-list"),
        pytest.param(STRATEGIC_PATCH,
                     {"webhooks": [{"name": "b.x", "clientConfig": {"caBundle": b64("CA")}}]},
                     [("a.x", {}), ("b.x", {"caBundle": b64("CA")})],
                     id="strategic-merge-by-name"),
        pytest.param(STRATEGIC_PATCH,
                     {"webhooks": [{"name": "c.x", "clientConfig": {"url": "u"}}]},
                     [("a.x", {}), ("b.x", {}), ("c.x", {"url": "u"})],
                     id="strategic-merge-appends-a-new-name"),
    ],
)  # fmt: skip
def test_webhook_configuration_merge_patches(
    api: FakeAPIServer, admission: Any, content_type: str, patch: dict[str, Any],
    hooks: list[tuple[str, dict[str, Any]]],
) -> None:  # fmt: skip
    api.upsert("validatingwebhookconfigurations", webhook_configuration("mg", "a.x", "b.x"))
    # raw: the client's models would refuse webhooks without sideEffects when reading them
    admission.patch_validating_webhook_configuration("mg", patch, _content_type=content_type,
                                                     _preload_content=False)  # fmt: skip
    stored = api.get("validatingwebhookconfigurations", "", "mg")
    got = [(w["name"], {k: v for k, v in w["clientConfig"].items() if k != "service"})
           for w in stored["webhooks"]]  # fmt: skip
    assert got == hooks


@pytest.mark.parametrize(
    ("content_type", "patch", "status"),
    [
        pytest.param(JSON_PATCH, [{"op": "add", "path": "/webhooks/0/name", "value": "b.x"}],
                     422, id="duplicate-webhook-name"),
        pytest.param(JSON_PATCH, [{"op": "add", "path": "/webhooks/0/clientConfig/caBundle",
                                   "value": "not base64!"}], 422, id="caBundle-not-base64"),
        pytest.param(JSON_PATCH, [{"op": "add", "path": "/webhooks/7/clientConfig/caBundle",
                                   "value": b64("CA")}], 422, id="path-does-not-exist"),
        pytest.param(MERGE_PATCH, {"metadata": {"resourceVersion": "1"}}, 409,
                     id="stale-resource-version-is-a-conflict"),
        pytest.param(STRATEGIC_PATCH, {"webhooks": [{"name": "a.x", "$patch": "delete"}]}, 400,
                     id="strategic-directive-not-implemented"),
        pytest.param(STRATEGIC_PATCH, {"webhooks": [{"clientConfig": {}}]}, 400,
                     id="strategic-item-without-merge-key"),
        pytest.param("application/apply-patch+yaml", {}, 415, id="apply-patch-unsupported"),
    ],
)  # fmt: skip
def test_webhook_configuration_patch_refused(api: FakeAPIServer, admission: Any,
                                             content_type: str, patch: Any,
                                             status: int) -> None:  # fmt: skip
    stored = api.upsert("mutatingwebhookconfigurations", webhook_configuration("mg", "a.x", "b.x"))
    with pytest.raises(ApiException) as caught:
        admission.patch_mutating_webhook_configuration("mg", patch, _content_type=content_type)
    assert caught.value.status == status
    assert status_of(caught.value)["code"] == status
    assert api.get("mutatingwebhookconfigurations", "", "mg") == stored


def test_webhook_configurations_are_cluster_scoped(api: FakeAPIServer, admission: Any,
                                                   client: Any) -> None:  # fmt: skip
    with pytest.raises(ApiException) as caught:
        admission.read_validating_webhook_configuration("mg")
    assert caught.value.status == 404
    assert status_of(caught.value)["message"] == (
        'validatingwebhookconfigurations.admissionregistration.k8s.io "mg" not found'
    )
    with pytest.raises(ApiException) as caught:
        admission.patch_validating_webhook_configuration("mg", [], _content_type=JSON_PATCH)
    assert caught.value.status == 404
    api.upsert("validatingwebhookconfigurations", webhook_configuration("mg", "a.x"))
    assert [w.metadata.name for w in admission.list_validating_webhook_configuration().items] == [
        "mg"]  # fmt: skip
    with pytest.raises(ValueError):
        api.upsert("validatingwebhookconfigurations",
                   {**webhook_configuration("x"), "metadata": {"name": "x", "namespace": "n"}})
    path = f"{ADMISSION_PATH}/namespaces/n/validatingwebhookconfigurations/mg"
    request = client.param_serialize("GET", path, auth_settings=["BearerToken"])
    response = client.call_api(*request)  # raw: no client method names such a path
    response.read()
    assert response.status == 404
    assert json.loads(response.data)["message"] == (
        "the server could not find the requested resource")


def test_methods_a_resource_does_not_allow_are_405(api: FakeAPIServer, admission: Any,
                                                   v1: Any) -> None:  # fmt: skip
    api.upsert("configmaps", configmap("ns", "cm"))
    api.upsert("secrets", {"metadata": {"namespace": "ns", "name": "s"}})
    calls = [
        lambda: v1.replace_namespaced_config_map("cm", "ns", configmap("ns", "cm")),
        lambda: v1.patch_namespaced_secret("s", "ns", [], _content_type=JSON_PATCH),
        lambda: v1.delete_namespaced_secret("s", "ns"),
        lambda: admission.create_mutating_webhook_configuration(webhook_configuration("m", "a")),
    ]
    for call in calls:
        with pytest.raises(ApiException) as caught:
            call()
        assert caught.value.status == 405
        assert status_of(caught.value)["reason"] == "MethodNotAllowed"


def test_faults_apply_to_writes(api: FakeAPIServer, v1: Any, admission: Any) -> None:
    api.upsert("mutatingwebhookconfigurations", webhook_configuration("mg", "a.x"))
    api.fail_next("POST", "/api/v1/namespaces/ns/secrets", status=403, reason="Forbidden")
    api.fail_next("PATCH", ADMISSION_PATH, status=500)
    with pytest.raises(ApiException) as caught:
        v1.create_namespaced_secret("ns", tls_secret(tls_crt="C", tls_key="K"))
    assert caught.value.status == 403 and api.get("secrets", "ns", "tls") is None
    ops = [{"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": b64("CA")}]
    with pytest.raises(ApiException) as caught:
        admission.patch_mutating_webhook_configuration("mg", ops, _content_type=JSON_PATCH)
    assert caught.value.status == 500
    admission.patch_mutating_webhook_configuration("mg", ops, _content_type=JSON_PATCH)
    v1.create_namespaced_secret("ns", tls_secret(tls_crt="C", tls_key="K"))
    stored = api.get("mutatingwebhookconfigurations", "", "mg")
    assert stored["webhooks"][0]["clientConfig"]["caBundle"] == b64("CA")
