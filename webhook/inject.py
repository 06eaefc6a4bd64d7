"""What injection adds to a pod, expressed as JSON Patch operations.

`patch_for` turns a Decision into operations: the proxy (merged into the pod's own
istio-proxy when it declares one), istio-init or istio-validation, the proxy's volumes, the
Multus network, and the annotations Istio's tooling and the CNI plugin read. Templates come
from the policy as JSON, decoded per request, so each request owns the objects it returns.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import orjson

from . import multus, templates, traffic
from .decision import INJECTED, STATUS, Decision
from .patch import Op, list_edits, map_entries
from .policy import Policy

DEFAULT_CONTAINER = "kubectl.kubernetes.io/default-container"


def _index(items: list[dict[str, Any]], name: str) -> int | None:
    for i, item in enumerate(items):
        if item.get("name") == name:
            return i
    return None


def _proxy(
    policy: Policy, pod: Mapping[str, Any], mode: str, annotations: Mapping[str, str]
) -> dict[str, Any]:
    proxy: dict[str, Any] = orjson.loads(policy.proxy_json)
    spec = pod.get("spec") or {}
    apps = [c for c in spec.get("containers") or () if c.get("name") != templates.PROXY]
    interception = traffic.interception_mode(annotations)
    env = proxy.setdefault("env", [])
    have = {e.get("name") for e in env}
    ports = [
        {k: p[k] for k in ("name", "containerPort", "protocol") if k in p}
        for c in apps
        for p in c.get("ports") or ()
        if isinstance(p, dict)
    ]
    derived = [
        ("ISTIO_META_POD_PORTS", json.dumps(ports, separators=(",", ":")) if ports else None),
        ("ISTIO_META_APP_CONTAINERS", ",".join(c["name"] for c in apps) or None),
        ("ISTIO_META_INTERCEPTION_MODE", interception),
    ]
    env.extend({"name": k, "value": v} for k, v in derived if v is not None and k not in have)
    if mode == "init" and interception == "TPROXY":
        # As Istio does: TPROXY needs the proxy itself to hold NET_ADMIN, as root.
        context = proxy.setdefault("securityContext", {})
        caps = context.setdefault("capabilities", {})
        caps["add"] = [*(caps.get("add") or []), "NET_ADMIN"]
        context.update(runAsUser=0, runAsNonRoot=False)
    return proxy


def _init_container(policy: Policy, mode: str, annotations: Mapping[str, str]) -> dict[str, Any]:
    args = traffic.iptables_args(annotations)
    args[args.index("-u") + 1] = str(policy.proxy_uid)
    if mode == "init":
        container: dict[str, Any] = orjson.loads(policy.init_json)
    else:
        container = orjson.loads(policy.validation_json)
        args += ["--run-validation", "--skip-rule-apply"]
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
    if decision.action == "inject":
        ops += _containers(pod, decision, policy, annotations, new_annotations)
    if meta is None:
        return [{"op": "add", "path": "/metadata", "value": {"annotations": new_annotations}}, *ops]
    return map_entries("/metadata/annotations", meta.get("annotations"), new_annotations) + ops


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

    proxy = _proxy(policy, pod, mode, annotations)
    if native:
        proxy["restartPolicy"] = "Always"
    # A pod may declare its own istio-proxy (Istio's `image: auto`): merge, never duplicate.
    in_containers = _index(containers, templates.PROXY)
    in_inits = _index(inits, templates.PROXY)
    if in_containers is not None:
        proxy = templates.merge(proxy, containers.pop(in_containers))
    elif in_inits is not None:
        proxy = templates.merge(proxy, inits.pop(in_inits))
    if not native:
        proxy.pop("restartPolicy", None)  # only init containers may carry one

    injected_inits: list[str] = []
    if decision.gateway:
        containers.insert(0, proxy)
    else:
        first = 0
        if mode == "init" or policy.validation_init_container:
            init = _init_container(policy, mode, annotations)
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
    added_volumes = [v for v in orjson.loads(policy.volumes_json) if v["name"] not in present]
    volumes = [*(old_volumes or []), *added_volumes]

    status = {
        "initContainers": injected_inits or None,
        "containers": None if native else [templates.PROXY],
        "volumes": [v["name"] for v in orjson.loads(policy.volumes_json)] or None,
        "imagePullSecrets": None,
        "revision": "default",
    }
    new_annotations[STATUS] = json.dumps(status, separators=(",", ":"))
    new_annotations[INJECTED] = f"{mode}@{policy.version}"
    apps = [c["name"] for c in containers if c.get("name") != templates.PROXY]
    if apps and DEFAULT_CONTAINER not in annotations:
        new_annotations[DEFAULT_CONTAINER] = apps[0]

    ops += list_edits("/spec/containers", old_containers, containers)
    ops += list_edits("/spec/initContainers", old_inits, inits)
    ops += list_edits("/spec/volumes", old_volumes, volumes)
    return ops
