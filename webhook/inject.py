"""What injection adds to a pod, expressed as JSON Patch operations.

`patch_for` turns a Decision into operations: the proxy (merged into the pod's own
istio-proxy when it declares one), istio-init or istio-validation, the proxy's volumes, the
Multus network, and the annotations Istio's tooling and the CNI plugin read. The policy's
templates are read-only and shared by every request (see templates.FrozenDict): a request
copies the levels it changes and shares the rest, so the operations may hold template
objects; they are only serialized, never changed.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

import orjson

from . import multus, templates, traffic
from .decision import INJECTED, STATUS, Decision
from .patch import Op, list_edits, map_entries
from .policy import Policy

DEFAULT_CONTAINER = "kubectl.kubernetes.io/default-container"
TLS_MODE = "security.istio.io/tlsMode"
CANONICAL_NAME = "service.istio.io/canonical-name"
CANONICAL_REVISION = "service.istio.io/canonical-revision"


def _index(items: list[dict[str, Any]], name: str) -> int | None:
    for i, item in enumerate(items):
        if item.get("name") == name:
            return i
    return None


def _proxy(
    policy: Policy, pod: Mapping[str, Any], annotations: Mapping[str, str]
) -> dict[str, Any]:
    template = policy.proxy_template
    proxy = dict(template)
    spec = pod.get("spec") or {}
    apps = [c for c in spec.get("containers") or () if c.get("name") != templates.PROXY]
    interception = traffic.interception_mode(annotations)
    env = template.get("env") or []
    have = {e.get("name") for e in env}
    ports = [
        {k: p[k] for k in ("name", "containerPort", "protocol") if k in p}
        for c in apps
        if isinstance(c.get("ports"), list)  # anything else passes through untouched
        for p in c["ports"]
        if isinstance(p, dict)
    ]
    derived = [
        ("ISTIO_META_POD_PORTS", orjson.dumps(ports).decode() if ports else None),
        ("ISTIO_META_APP_CONTAINERS", ",".join(c["name"] for c in apps) or None),
        ("ISTIO_META_INTERCEPTION_MODE", interception),
    ]
    proxy["env"] = [*env, *({"name": k, "value": v} for k, v in derived
                             if v is not None and k not in have)]  # fmt: skip
    return proxy


def _tproxy(proxy: dict[str, Any]) -> None:
    """As Istio does: TPROXY needs the proxy itself to hold NET_ADMIN, as root. Applied
    after the pod's own istio-proxy is merged in, as Istio's output shows: a capability
    added to a non-root process is not in its effective set, so the proxy could not
    open its transparent sockets."""
    context = proxy["securityContext"] = dict(proxy.get("securityContext") or {})  # or null
    caps = context["capabilities"] = dict(context.get("capabilities") or {})
    caps["add"] = list(dict.fromkeys([*(caps.get("add") or []), "NET_ADMIN"]))
    context.update(runAsUser=0, runAsNonRoot=False)


def _proxy_ids(
    policy: Policy, template: Mapping[str, Any], declared: Mapping[str, Any] | None
) -> tuple[int, Any]:
    """The uid and gid the proxy runs as. A pod's own istio-proxy may set them (as on
    OpenShift, where each namespace has its own uid range) and Istio honours that: these
    are the ids that istio-iptables and the CNI plugin exempt from redirection, so the
    proxy's own traffic is not sent back to itself."""
    own = (declared or {}).get("securityContext") or {}
    uid, gid = own.get("runAsUser"), own.get("runAsGroup")
    if not isinstance(uid, int) or isinstance(uid, bool):
        uid = policy.proxy_uid
    if not isinstance(gid, int) or isinstance(gid, bool):
        gid = (template.get("securityContext") or {}).get("runAsGroup")
    return uid, gid


@functools.lru_cache(maxsize=64)
def _status(init_containers: tuple[str, ...], native: bool, volumes: tuple[str, ...]) -> str:
    """Istio's sidecar.istio.io/status value (the same few strings over and over)."""
    status = {
        "initContainers": list(init_containers) or None,
        "containers": None if native else [templates.PROXY],
        "volumes": list(volumes) or None,
        "imagePullSecrets": None,
        "revision": "default",
    }
    return json.dumps(status, separators=(",", ":"))


def _init_container(
    policy: Policy, mode: str, annotations: Mapping[str, str], uid: int, gid: Any
) -> dict[str, Any]:
    args = traffic.iptables_args(annotations)
    args[args.index("-u") + 1] = str(uid)
    if mode == "init":
        container = dict(policy.init_template)
    else:
        container = dict(policy.validation_template)
        args += ["--run-validation", "--skip-rule-apply"]
        # istio-validation runs as the proxy user, as Istio's does.
        context = dict(container.get("securityContext") or {})
        context["runAsUser"] = uid
        if gid is not None:
            context["runAsGroup"] = gid
        container["securityContext"] = context
    container["args"] = args
    return container


def patch_for(pod: Mapping[str, Any], decision: Decision, policy: Policy) -> list[Op]:
    """The operations that carry out `decision` on `pod` (empty when nothing changes)."""
    if decision.action == "skip" or decision.refusals:
        return []
    meta = pod.get("metadata")
    annotations: Mapping[str, str] = (meta or {}).get("annotations") or {}
    new_annotations: dict[str, str] = {}
    if decision.network_value is not None:
        new_annotations[multus.ANNOTATION] = decision.network_value
    ops: list[Op] = []
    new_labels: dict[str, str] = {}
    if decision.action == "inject":
        ops += _containers(pod, decision, policy, annotations, new_annotations)
        new_labels = _mesh_labels((meta or {}).get("labels") or {})
    if meta is None:
        value = {"annotations": new_annotations, **({"labels": new_labels} if new_labels else {})}
        return [{"op": "add", "path": "/metadata", "value": value}, *ops]
    return (
        map_entries("/metadata/annotations", meta.get("annotations"), new_annotations)
        + map_entries("/metadata/labels", meta.get("labels"), new_labels)
        + ops
    )


def _mesh_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """The labels Istio's control plane reads: tlsMode (without it, auto mTLS sends the pod
    plaintext) and the canonical service name and revision, where the pod's labels say them."""
    wanted = {TLS_MODE: "istio"}
    name = labels.get("app.kubernetes.io/name") or labels.get("app")
    if name:
        wanted[CANONICAL_NAME] = name
        wanted[CANONICAL_REVISION] = (
            labels.get("app.kubernetes.io/version") or labels.get("version") or "latest"
        )
    return {k: v for k, v in wanted.items() if k not in labels}


def _containers(
    pod: Mapping[str, Any],
    decision: Decision,
    policy: Policy,
    annotations: Mapping[str, str],
    new_annotations: dict[str, str],
) -> list[Op]:
    mode = decision.mode
    ops: list[Op] = []
    spec = pod.get("spec")
    if spec is None:
        ops.append({"op": "add", "path": "/spec", "value": {}})
        spec = {}
    old_containers = spec.get("containers")
    old_inits = spec.get("initContainers")
    old_volumes = spec.get("volumes")
    containers = list(old_containers or [])
    inits = list(old_inits or [])
    native = policy.sidecar_native and not decision.gateway

    proxy = _proxy(policy, pod, annotations)
    if native:
        proxy["restartPolicy"] = "Always"
        proxy.setdefault("lifecycle", templates.NATIVE_LIFECYCLE)
    # A pod may declare its own istio-proxy (Istio's `image: auto`): merge, never duplicate.
    in_containers = _index(containers, templates.PROXY)
    in_inits = _index(inits, templates.PROXY)
    declared: dict[str, Any] | None = None
    if in_containers is not None:
        declared = containers.pop(in_containers)
    elif in_inits is not None:
        declared = inits.pop(in_inits)
    uid, gid = _proxy_ids(policy, proxy, declared)
    if declared is not None:
        proxy = templates.merge(proxy, declared)
    if mode == "init" and traffic.interception_mode(annotations) == "TPROXY":
        _tproxy(proxy)
    if native:
        proxy["restartPolicy"] = "Always"  # whatever the pod's own istio-proxy said
    else:
        proxy.pop("restartPolicy", None)  # only init containers may carry one

    injected_inits: list[str] = []
    if decision.gateway:
        containers.insert(0, proxy)
    else:
        first = 0
        if mode == "init" or policy.validation_init_container:
            init = _init_container(policy, mode, annotations, uid, gid)
            i = _index(inits, init["name"])
            if i is None:
                inits.insert(0, init)
                i = 0
            else:
                inits[i] = templates.merge(init, inits[i])
            first = i + 1
            injected_inits.append(init["name"])
        if native:
            inits.insert(first, proxy)
            injected_inits.append(templates.PROXY)
        elif in_containers is not None:
            containers.insert(in_containers, proxy)
        else:
            containers.append(proxy)
    present = {v.get("name") for v in old_volumes or ()}
    template_volumes = policy.volumes_template
    added_volumes = [v for v in template_volumes if v["name"] not in present]
    volumes = [*(old_volumes or []), *added_volumes]

    volume_names = tuple(v["name"] for v in template_volumes)
    new_annotations[STATUS] = _status(tuple(injected_inits), native, volume_names)
    new_annotations[INJECTED] = f"{mode}@{policy.version}"
    apps = [c["name"] for c in containers if c.get("name") != templates.PROXY]
    if apps and DEFAULT_CONTAINER not in annotations:
        new_annotations[DEFAULT_CONTAINER] = apps[0]

    ops += list_edits("/spec/containers", old_containers, containers)
    ops += list_edits("/spec/initContainers", old_inits, inits)
    ops += list_edits("/spec/volumes", old_volumes, volumes)
    return ops
