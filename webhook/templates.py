"""The containers and volumes meshgate injects: Istio-like defaults, policy overrides, merging.

The defaults follow what Istio's own injector produces (container fields, probes, volumes,
uid/gid 1337), hardened so that everything cni mode injects passes Pod Security
``restricted``. A policy's ``sidecar.container``, ``sidecar.volumes``, ``init.container``
and ``cni.validationContainer`` are merged over them with :func:`merge`, the same merge that
folds the template into a pod's own ``istio-proxy`` container.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PROXY = "istio-proxy"
INIT = "istio-init"
VALIDATION = "istio-validation"
PROXY_IMAGE = "docker.io/istio/proxyv2:1.28.0"

# Lists merged element by element, keyed by `name`, as a strategic merge patch does.
KEYED_LISTS = ("env", "ports", "volumeMounts", "volumes")

_RESOURCES = {
    "limits": {"cpu": "2", "memory": "1Gi"},
    "requests": {"cpu": "100m", "memory": "128Mi"},
}

_RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "privileged": False,
    "readOnlyRootFilesystem": True,
    "runAsGroup": 1337,
    "runAsNonRoot": True,
    "runAsUser": 1337,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _resource_env(name: str, resource: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"resourceFieldRef": {"divisor": "1", "resource": resource}}}


DEFAULT_PROXY: dict[str, Any] = {
    "name": PROXY,
    "image": PROXY_IMAGE,
    "args": [
        "proxy",
        "sidecar",
        "--domain",
        "$(POD_NAMESPACE).svc.cluster.local",
        "--proxyLogLevel=warning",
        "--proxyComponentLogLevel=misc:error",
        "--log_output_level=default:info",
    ],
    "env": [
        {"name": "PILOT_CERT_PROVIDER", "value": "istiod"},
        {"name": "CA_ADDR", "value": "istiod.istio-system.svc:15012"},
        _field_env("POD_NAME", "metadata.name"),
        _field_env("POD_NAMESPACE", "metadata.namespace"),
        _field_env("INSTANCE_IP", "status.podIP"),
        _field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        _field_env("HOST_IP", "status.hostIP"),
        _resource_env("ISTIO_CPU_LIMIT", "limits.cpu"),
        {"name": "PROXY_CONFIG", "value": "{}\n"},
        _resource_env("GOMEMLIMIT", "limits.memory"),
        {"name": "ISTIO_META_CLUSTER_ID", "value": "Kubernetes"},
        _field_env("ISTIO_META_NODE_NAME", "spec.nodeName"),
        {"name": "ISTIO_META_MESH_ID", "value": "cluster.local"},
        {"name": "TRUST_DOMAIN", "value": "cluster.local"},
    ],
    "ports": [{"containerPort": 15090, "name": "http-envoy-prom", "protocol": "TCP"}],
    "readinessProbe": {
        "failureThreshold": 4,
        "httpGet": {"path": "/healthz/ready", "port": 15021},
        "periodSeconds": 15,
        "timeoutSeconds": 3,
    },
    "resources": _RESOURCES,
    "securityContext": _RESTRICTED,
    "startupProbe": {
        "failureThreshold": 600,
        "httpGet": {"path": "/healthz/ready", "port": 15021},
        "periodSeconds": 1,
        "timeoutSeconds": 3,
    },
    "volumeMounts": [
        {"mountPath": "/var/run/secrets/workload-spiffe-uds", "name": "workload-socket"},
        {"mountPath": "/var/run/secrets/credential-uds", "name": "credential-socket"},
        {"mountPath": "/var/run/secrets/workload-spiffe-credentials", "name": "workload-certs"},
        {"mountPath": "/var/run/secrets/istio", "name": "istiod-ca-cert"},
        {"mountPath": "/var/run/secrets/istio/crl", "name": "istio-ca-crl"},
        {"mountPath": "/var/lib/istio/data", "name": "istio-data"},
        {"mountPath": "/etc/istio/proxy", "name": "istio-envoy"},
        {"mountPath": "/var/run/secrets/tokens", "name": "istio-token"},
        {"mountPath": "/etc/istio/pod", "name": "istio-podinfo"},
    ],
}

# A native sidecar outlives the app's containers, so it drains its listeners on the way out;
# as in Istio, a classic sidecar gets no preStop hook (it would cut the app's traffic).
NATIVE_LIFECYCLE: dict[str, Any] = {
    "preStop": {
        "exec": {"command": ["pilot-agent", "request", "--debug-port=15020", "POST", "drain"]}
    }
}

DEFAULT_VOLUMES: list[dict[str, Any]] = [
    {"name": "workload-socket", "emptyDir": {}},
    {"name": "credential-socket", "emptyDir": {}},
    {"name": "workload-certs", "emptyDir": {}},
    {"name": "istio-envoy", "emptyDir": {"medium": "Memory"}},
    {"name": "istio-data", "emptyDir": {}},
    {
        "name": "istio-podinfo",
        "downwardAPI": {
            "items": [
                {"fieldRef": {"fieldPath": "metadata.labels"}, "path": "labels"},
                {"fieldRef": {"fieldPath": "metadata.annotations"}, "path": "annotations"},
            ]
        },
    },
    {
        "name": "istio-token",
        "projected": {
            "sources": [
                {
                    "serviceAccountToken": {
                        "audience": "istio-ca",
                        "expirationSeconds": 43200,
                        "path": "istio-token",
                    }
                }
            ]
        },
    },
    {"name": "istiod-ca-cert", "configMap": {"name": "istio-ca-root-cert"}},
    {"name": "istio-ca-crl", "configMap": {"name": "istio-ca-crl", "optional": True}},
]

# The legacy init container: istio-iptables needs NET_ADMIN and NET_RAW, as root.
DEFAULT_INIT: dict[str, Any] = {
    "name": INIT,
    "image": PROXY_IMAGE,
    "resources": _RESOURCES,
    "securityContext": {
        "allowPrivilegeEscalation": False,
        "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        "privileged": False,
        "readOnlyRootFilesystem": False,
        "runAsGroup": 0,
        "runAsNonRoot": False,
        "runAsUser": 0,
    },
}

# cni mode: checks that the CNI plugin's rules are in place, with no capabilities.
DEFAULT_VALIDATION: dict[str, Any] = {
    "name": VALIDATION,
    "image": PROXY_IMAGE,
    "resources": _RESOURCES,
    "securityContext": _RESTRICTED,
}


def _read_only(self: object, *args: object, **kwargs: object) -> None:
    raise TypeError("a compiled template is shared by every request: copy it before changing")


class FrozenDict(dict[str, Any]):
    """A map of a compiled template. Templates are built once per policy and shared by
    every request, which copies only the levels it changes; a change in place would leak
    into every later pod, so it raises instead. Copies (copy, deepcopy, pickle) are plain."""

    __setitem__ = __delitem__ = __ior__ = _read_only  # type: ignore[assignment]
    setdefault = update = pop = popitem = clear = _read_only  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (dict(self),))


class FrozenList(list[Any]):
    """A list of a compiled template (see FrozenDict)."""

    __setitem__ = __delitem__ = __iadd__ = __imul__ = _read_only  # type: ignore[assignment]
    append = extend = insert = pop = remove = clear = sort = reverse = _read_only

    def __reduce__(self) -> tuple[Any, ...]:
        return (list, (list(self),))


def freeze(value: Any) -> Any:
    """A read-only deep copy of a JSON value (maps and lists; scalars are immutable)."""
    if isinstance(value, dict):
        return FrozenDict((k, freeze(v)) for k, v in value.items())
    if isinstance(value, list):
        return FrozenList(freeze(v) for v in value)
    return value


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` merged over `base`, returning new objects (neither input is changed).

    Maps merge key by key; the lists in KEYED_LISTS merge element by element on `name`
    (elements without a name are appended); other lists and scalars are replaced by the
    override, except ``image: auto`` (Istio's convention for "inject the image here").
    """
    result: dict[str, Any] = dict(base)
    for key, value in override.items():
        old = result.get(key)
        if key == "image" and value == "auto" and old is not None:
            continue
        if isinstance(value, dict) and isinstance(old, dict):
            result[key] = merge(old, value)
        elif key in KEYED_LISTS and isinstance(value, list) and isinstance(old, list):
            result[key] = merge_by_name(old, value)
        else:
            result[key] = value
    return result


def merge_by_name(base: list[Any], override: list[Any]) -> list[Any]:
    merged = list(base)
    index = {item.get("name"): i for i, item in enumerate(merged) if isinstance(item, dict)}
    for item in override:
        name = item.get("name") if isinstance(item, dict) else None
        if name is not None and name in index:
            merged[index[name]] = merge(merged[index[name]], item)
        else:
            merged.append(item)
    return merged
