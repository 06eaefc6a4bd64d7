"""Self-tests of tests/fakeapi.py, driven by the official ``kubernetes`` client.

The fake is only worth something if the real client, unchanged, sees what it would see
from a real API server: these tests go through kubeconfig loading, ApiClient, urllib3 and
kubernetes.watch.Watch, never raw HTTP.
"""

from __future__ import annotations

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
