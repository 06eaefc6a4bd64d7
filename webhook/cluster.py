"""What meshgate learns from the cluster: namespace labels, NetworkAttachmentDefinitions and
the policy ConfigMap, each kept current by a ListWatch.

Requests never wait on these watches: each cache is an immutable snapshot replaced whole by
its watch thread (writers take a lock; readers take none). The one exception is a namespace
created a moment ago, which a request may fetch once, with a short timeout.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import orjson
from kubernetes import client
from kubernetes.client import ApiException

from .match import SchemaError
from .policy import Policy, default_policy
from .runtime import Runtime
from .sources import CONFIGMAP_NAME, POLICY_KEY, parse_policy_text
from .watch import Handlers, ListWatch, Object

log = logging.getLogger("meshgate.cluster")

POLICY_CONFIGMAP = CONFIGMAP_NAME
NAD_GROUP, NAD_VERSION, NAD_PLURAL = "k8s.cni.cncf.io", "v1", "network-attachment-definitions"
GET_TIMEOUT = 1.0  # seconds a request may wait for a namespace the cache has not seen


def _labels(obj: Object) -> Mapping[str, str]:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return MappingProxyType({k: v for k, v in labels.items() if isinstance(v, str)})


def _name(obj: Object) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


class NamespaceCache:
    """Namespace name → labels (names and labels only: memory stays proportional)."""

    def __init__(self, core: client.CoreV1Api, *, get_timeout: float = GET_TIMEOUT) -> None:
        self._core = core
        self._get_timeout = get_timeout
        self._labels: Mapping[str, Mapping[str, str]] = MappingProxyType({})
        self._write = threading.Lock()
        self._fetching: dict[str, threading.Event] = {}
        self.synced = threading.Event()
        self.gets = 0

    def __call__(self, name: str) -> Mapping[str, str] | None:
        """The labels, or None when the namespace is unknown (not listed, GET failed)."""
        return self._labels.get(name)

    def cached(self, name: str) -> bool:
        return name in self._labels

    def ready(self) -> bool:
        return self.synced.is_set()

    def fetch(self, name: str) -> None:
        """One GET for a namespace not in the cache yet; on failure the cache stays without
        it, so the request is judged as one whose namespace could not be read.

        Concurrent requests for the same new namespace share the one GET, and its outcome:
        they wait for it (at most its timeout) rather than each trying again in turn, which
        would make the last of them wait one timeout per request ahead of it.
        """
        with self._write:
            if name in self._labels:
                return
            pending = self._fetching.get(name)
            if pending is not None:
                owner = False
            else:
                owner, pending = True, threading.Event()
                self._fetching[name] = pending
                self.gets += 1
        if not owner:
            pending.wait(self._get_timeout + 0.5)
            return
        try:
            # Raw JSON, not the client's model: only the labels are kept.
            response: Any = self._core.read_namespace(
                name, _preload_content=False, _request_timeout=self._get_timeout
            )
            labels = _labels(orjson.loads(response.data))
            with self._write:  # the watch may have delivered a newer state meanwhile
                if name not in self._labels:
                    self._labels = MappingProxyType({**self._labels, name: labels})
        except Exception as err:
            log.warning("namespace GET failed; judging the request fail-closed",
                        extra={"namespace": name, "error": str(err)[:300]})  # fmt: skip
        finally:
            with self._write:
                self._fetching.pop(name, None)
            pending.set()

    def _store(self, name: str, labels: Mapping[str, str] | None) -> None:
        with self._write:
            updated = dict(self._labels)
            if labels is None:
                updated.pop(name, None)
            else:
                updated[name] = labels
            self._labels = MappingProxyType(updated)

    def handlers(self) -> Handlers:
        def replace(items: list[Object]) -> None:
            with self._write:
                self._labels = MappingProxyType({_name(o): _labels(o) for o in items})
            self.synced.set()

        def apply(kind: str, obj: Object) -> None:
            self._store(_name(obj), None if kind == "DELETED" else _labels(obj))

        return Handlers(replace, apply)

    def watcher(self, **options: Any) -> ListWatch:
        return ListWatch("namespaces", self._core.list_namespace, self.handlers(), **options)


class NetworkCache:
    """Which NetworkAttachmentDefinitions exist, as (namespace, name) pairs.

    Without the CRD (404 on list) there is nothing to check: the check turns itself off
    and every lookup says "present", so no request is warned about.
    """

    def __init__(self, custom: client.CustomObjectsApi) -> None:
        self._custom = custom
        self._present: frozenset[tuple[str, str]] = frozenset()
        self._write = threading.Lock()
        self.enabled = True
        self.synced = threading.Event()

    def __call__(self, namespace: str, name: str) -> bool:
        if not self.enabled or not self.synced.is_set():
            return True
        return (namespace, name) in self._present

    def handlers(self) -> Handlers:
        def key(obj: Object) -> tuple[str, str]:
            return (str((obj.get("metadata") or {}).get("namespace", "")), _name(obj))

        def replace(items: list[Object]) -> None:
            with self._write:
                self._present = frozenset(key(o) for o in items)
            self.synced.set()

        def apply(kind: str, obj: Object) -> None:
            with self._write:
                if kind == "DELETED":
                    self._present = self._present - {key(obj)}
                else:
                    self._present = self._present | {key(obj)}

        def give_up(err: ApiException) -> bool:
            if err.status != 404:
                return False
            self.enabled = False
            log.info(
                "NetworkAttachmentDefinition CRD (k8s.cni.cncf.io/v1) not installed: the "
                "Multus network check is off"
            )
            return True

        return Handlers(replace, apply, give_up)

    def watcher(self, **options: Any) -> ListWatch:
        def list_nads(**kwargs: Any) -> Any:
            return self._custom.list_cluster_custom_object(
                NAD_GROUP, NAD_VERSION, NAD_PLURAL, **kwargs
            )

        return ListWatch("network-attachment-definitions", list_nads, self.handlers(), **options)


class EventRecorder:
    """core/v1 Events about the policy ConfigMap, so `kubectl describe` shows what happened.

    Events are written by a thread of their own, from a bounded queue: a slow or failing
    events API must never delay the next policy change (SPEC 3 allows 2 seconds).
    """

    QUEUE = 64

    def __init__(self, core: client.CoreV1Api, namespace: str, *, timeout: float = 2.0) -> None:
        self._core = core
        self._namespace = namespace
        self._timeout = timeout
        self._instance = socket.gethostname()
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(self.QUEUE)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.failures = 0
        self.dropped = 0

    def record(self, configmap: Object | None, kind: str, reason: str, message: str) -> None:
        meta = (configmap or {}).get("metadata") or {}
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{POLICY_CONFIGMAP}.{uuid.uuid4().hex[:16]}",
                "namespace": self._namespace,
            },
            "involvedObject": {
                "apiVersion": "v1", "kind": "ConfigMap", "name": POLICY_CONFIGMAP,
                "namespace": self._namespace, "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": kind,
            "source": {"component": "meshgate", "host": self._instance},
            "reportingComponent": "meshgate",
            "reportingInstance": self._instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }  # fmt: skip
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._write_all, name="watch-policy-events", daemon=True
                )
                self._thread.start()
        try:
            self._queue.put_nowait(body)
        except queue.Full:
            self.dropped += 1
            log.warning("events API too slow: an Event was dropped", extra={"reason": reason})

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (each with its own timeout), then end the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)

    def _write_all(self) -> None:
        while (body := self._queue.get()) is not None:
            try:
                event: Any = body  # the client serialises a plain dict as it is
                self._core.create_namespaced_event(
                    self._namespace, event, _request_timeout=self._timeout
                )
            except Exception as err:  # an Event is a courtesy: never let it stop anything
                self.failures += 1
                log.warning("could not write an Event",
                            extra={"reason": body["reason"], "error": str(err)[:300]})  # fmt: skip


class PolicyWatch:
    """Follows the one ConfigMap `meshgate-policy` and tells `on_policy`/`on_invalid`.

    No ConfigMap (never created, or deleted) means the embedded default, so every replica
    agrees; an invalid one never replaces the last good policy.
    """

    def __init__(
        self,
        core: client.CoreV1Api,
        namespace: str,
        runtime: Runtime,
        events: EventRecorder | None = None,
    ) -> None:
        self._core = core
        self._namespace = namespace
        self._runtime = runtime
        self._events = events or EventRecorder(core, namespace)
        self.synced = threading.Event()

    def handlers(self) -> Handlers:
        def replace(items: list[Object]) -> None:
            found = [o for o in items if _name(o) == POLICY_CONFIGMAP]
            if found:
                self._apply(found[0])
            else:
                self._absent()
            self.synced.set()

        def apply(kind: str, obj: Object) -> None:
            if _name(obj) != POLICY_CONFIGMAP:
                return
            if kind == "DELETED":
                self._absent()
            else:
                self._apply(obj)

        return Handlers(replace, apply, closed=self._events.close)

    def watcher(self, **options: Any) -> ListWatch:
        kwargs = {
            "namespace": self._namespace,
            "field_selector": f"metadata.name={POLICY_CONFIGMAP}",
        }
        return ListWatch("policy", self._core.list_namespaced_config_map, self.handlers(),
                         kwargs=kwargs, **options)  # fmt: skip

    def _where(self, obj: Object) -> str:
        version = (obj.get("metadata") or {}).get("resourceVersion", "?")
        return f"ConfigMap {self._namespace}/{POLICY_CONFIGMAP} (resourceVersion {version})"

    def _absent(self) -> None:
        source = f"embedded default (no ConfigMap {self._namespace}/{POLICY_CONFIGMAP})"
        self._install(default_policy(), source, None)

    def _apply(self, obj: Object) -> None:
        data = obj.get("data") or {}
        text = data.get(POLICY_KEY)
        try:
            if not isinstance(text, str):
                raise SchemaError([f"data.{POLICY_KEY}: missing (the policy goes under this key)"])
            policy = parse_policy_text(text)
        except SchemaError as err:
            self._reject(obj, err.errors)
            return
        self._install(policy, self._where(obj), obj)

    def _install(self, policy: Policy, source: str, obj: Object | None) -> None:
        old = self._runtime.policy
        old_version = old.version if old is not None else None
        self._runtime.set_policy(policy, source)
        self._runtime.metrics.policy_reloads.labels("success").inc()
        if old_version == policy.version:
            return
        message = f"policy {old_version or '(none)'} → {policy.version} from {source}"
        log.info("policy applied", extra={"old": old_version, "new": policy.version,
                                          "source": source})  # fmt: skip
        if obj is not None:
            self._events.record(obj, "Normal", "PolicyApplied", message)

    def _reject(self, obj: Object, errors: list[str]) -> None:
        self._runtime.reject_policy(errors, self._where(obj))
        self._runtime.metrics.policy_reloads.labels("invalid").inc()
        kept = self._runtime.policy
        log.error(
            "invalid policy rejected",
            extra={"source": self._where(obj), "errors": errors,
                   "kept": kept.version if kept else None},
        )  # fmt: skip
        keeping = f"keeping policy {kept.version}" if kept else "no valid policy yet: not ready"
        self._events.record(obj, "Warning", "InvalidPolicy",
                            f"{keeping}; " + "; ".join(errors))  # fmt: skip


def connect(
    runtime: Runtime, api: client.ApiClient, *, policy: bool, namespaces: bool, **options: Any
) -> list[ListWatch]:
    """Point `runtime` at the cluster caches and start their watches (NADs always; the
    policy and the namespaces unless they come from files). Stop them with `.stop()`."""
    core = client.CoreV1Api(api)
    watchers = []
    networks = NetworkCache(client.CustomObjectsApi(api))
    watchers.append(networks.watcher(**options))
    if namespaces:
        cache = NamespaceCache(core)
        runtime.set_sources(namespaces=cache, networks=networks)
        watchers.append(cache.watcher(**options))
    else:
        runtime.set_sources(networks=networks)
    if policy:
        watchers.append(PolicyWatch(core, runtime.own_namespace, runtime).watcher(**options))
    for watcher in watchers:
        watcher.start()
    return watchers
