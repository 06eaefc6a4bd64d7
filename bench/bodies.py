"""Request bodies for the benchmark: AdmissionReview JSON as the API server sends it.

The base pod is what a Deployment's ReplicaSet controller submits for a typical service:
generated name, pod-template-hash label, ownerReferences to its ReplicaSet, the projected
service-account token volume the admission chain has already added, probes, resources and
environment variables. Every body is deterministic (fixed uids and names), so two runs send
the same bytes.

The namespaces are given to `meshgate serve --namespaces-file` (see namespaces_yaml):
- shop:   istio-injection=enabled → cni mode, injection on, CNI enforced (the gate applies)
- legacy: meshgate.io/mode=init   → init mode, injection on
- batch:  istio-injection=disabled → mode disabled: the policy skips the pod
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonpatch
import orjson
import yaml

from webhook.admission import Context, admit, parse_review
from webhook.namespaces import StaticNamespaces
from webhook.policy import default_policy
from webhook.sources import DEFAULT_NAMESPACE

CNI_NAMESPACE = "shop"
INIT_NAMESPACE = "legacy"
SKIP_NAMESPACE = "batch"

NAMESPACE_LABELS: dict[str, dict[str, str]] = {
    CNI_NAMESPACE: {"kubernetes.io/metadata.name": CNI_NAMESPACE, "istio-injection": "enabled"},
    INIT_NAMESPACE: {"kubernetes.io/metadata.name": INIT_NAMESPACE, "meshgate.io/mode": "init"},
    SKIP_NAMESPACE: {"kubernetes.io/metadata.name": SKIP_NAMESPACE, "istio-injection": "disabled"},
}

# Environment variables of the base pod's container (literal and valueFrom).
BASE_ENV_VARS = 9
# The large pods: (containers, environment variables in total).
SIZE_STEPS: tuple[tuple[int, int], ...] = ((10, 150), (30, 1_500), (60, 15_000))


@dataclass(frozen=True)
class Body:
    """One request body and what meshgate is expected to answer to it."""

    name: str  # short id, used in file names and tables
    endpoint: str  # "mutate" or "validate"
    description: str
    review: dict[str, Any]
    expect_allowed: bool
    expect_patch: bool

    @property
    def pod(self) -> dict[str, Any]:
        obj: dict[str, Any] = self.review["request"]["object"]
        return obj

    @property
    def containers(self) -> int:
        return len(self.pod["spec"]["containers"])

    @property
    def env_vars(self) -> int:
        return env_count(self.pod)

    def encode(self) -> bytes:
        return orjson.dumps(self.review)


def _env(count: int, container: int) -> list[dict[str, Any]]:
    """`count` variables: mostly literal values, every tenth from a field or a secret."""
    env: list[dict[str, Any]] = []
    for i in range(count):
        name = f"APP_SETTING_{container:02d}_{i:05d}"
        if i % 10 == 8:
            env.append(
                {
                    "name": name,
                    "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}},
                }
            )
        elif i % 10 == 9:
            env.append(
                {
                    "name": name,
                    "valueFrom": {
                        "secretKeyRef": {"name": "checkout-secrets", "key": f"key-{i:05d}"}
                    },
                }
            )
        else:
            env.append({"name": name, "value": f"value-{container:02d}-{i:05d}-enabled"})
    return env


def _base_env() -> list[dict[str, Any]]:
    return [
        {"name": "PORT", "value": "8080"},
        {"name": "LOG_LEVEL", "value": "info"},
        {"name": "DATABASE_URL", "value": "postgres://checkout@db.shop.svc:5432/checkout"},
        {"name": "CART_SERVICE_ADDR", "value": "cart.shop.svc.cluster.local:7070"},
        {
            "name": "OTEL_EXPORTER_OTLP_ENDPOINT",
            "value": "http://otel-collector.observability:4317",
        },
        {
            "name": "POD_NAME",
            "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}},
        },
        {
            "name": "POD_NAMESPACE",
            "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}},
        },
        {
            "name": "GOMEMLIMIT",
            "valueFrom": {"resourceFieldRef": {"divisor": "0", "resource": "limits.memory"}},
        },
        {
            "name": "API_TOKEN",
            "valueFrom": {"secretKeyRef": {"key": "token", "name": "checkout-secrets"}},
        },
    ]


def _container(name: str, env: list[dict[str, Any]], port: int = 8080) -> dict[str, Any]:
    return {
        "name": name,
        "image": "registry.example.com/shop/checkout:1.14.2",
        "imagePullPolicy": "IfNotPresent",
        "ports": [
            {"name": "http", "containerPort": port, "protocol": "TCP"},
            {"name": "metrics", "containerPort": port + 1010, "protocol": "TCP"},
        ],
        "env": env,
        "resources": {
            "limits": {"cpu": "1", "memory": "512Mi"},
            "requests": {"cpu": "250m", "memory": "256Mi"},
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": port, "scheme": "HTTP"},
            "initialDelaySeconds": 10,
            "periodSeconds": 10,
            "timeoutSeconds": 1,
            "successThreshold": 1,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": {"path": "/ready", "port": port, "scheme": "HTTP"},
            "periodSeconds": 5,
            "timeoutSeconds": 1,
            "successThreshold": 1,
            "failureThreshold": 3,
        },
        "volumeMounts": [
            {"name": "config", "mountPath": "/etc/checkout", "readOnly": True},
            {
                "name": "kube-api-access-7xk2p",
                "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                "readOnly": True,
            },
        ],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
    }


def pod(namespace: str, containers: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The Deployment-created pod (one container with BASE_ENV_VARS variables by default)."""
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "generateName": "checkout-6f8d9c7b5d-",
            "namespace": namespace,
            "creationTimestamp": None,
            "labels": {
                "app": "checkout",
                "app.kubernetes.io/name": "checkout",
                "app.kubernetes.io/part-of": "shop",
                "version": "v1",
                "pod-template-hash": "6f8d9c7b5d",
            },
            "annotations": {
                "kubectl.kubernetes.io/restartedAt": "2024-05-02T09:14:27Z",
                "prometheus.io/scrape": "true",
                "prometheus.io/port": "9090",
            },
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": "checkout-6f8d9c7b5d",
                    "uid": "8b4e7c1a-2f3d-4e5b-9a6c-7d8e9f0a1b2c",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "volumes": [
                {"name": "config", "configMap": {"name": "checkout-config", "defaultMode": 420}},
                {
                    "name": "kube-api-access-7xk2p",
                    "projected": {
                        "sources": [
                            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                            {
                                "configMap": {
                                    "name": "kube-root-ca.crt",
                                    "items": [{"key": "ca.crt", "path": "ca.crt"}],
                                }
                            },
                            {
                                "downwardAPI": {
                                    "items": [
                                        {
                                            "path": "namespace",
                                            "fieldRef": {
                                                "apiVersion": "v1",
                                                "fieldPath": "metadata.namespace",
                                            },
                                        }
                                    ]
                                }
                            },
                        ],
                        "defaultMode": 420,
                    },
                },
            ],
            "containers": containers
            if containers is not None
            else [_container("checkout", _base_env())],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "checkout",
            "serviceAccount": "checkout",
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 10001,
                "fsGroup": 10001,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "schedulerName": "default-scheduler",
            "tolerations": [
                {
                    "key": "node.kubernetes.io/not-ready",
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300,
                },
                {
                    "key": "node.kubernetes.io/unreachable",
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300,
                },
            ],
            "priority": 0,
            "enableServiceLinks": True,
            "preemptionPolicy": "PreemptLowerPriority",
        },
        "status": {},
    }


def net_admin_pod(namespace: str) -> dict[str, Any]:
    """The base pod whose container adds NET_ADMIN (denied where CNI is enforced)."""
    p = pod(namespace)
    p["spec"]["containers"][0]["securityContext"]["capabilities"] = {
        "add": ["NET_ADMIN"],
        "drop": ["ALL"],
    }
    return p


def large_pod(namespace: str, containers: int, env_total: int) -> dict[str, Any]:
    """`containers` containers sharing `env_total` environment variables evenly."""
    per, extra = divmod(env_total, containers)
    return pod(
        namespace,
        [
            _container(f"worker-{c:02d}", _env(per + (1 if c < extra else 0), c), 8080 + c)
            for c in range(containers)
        ],
    )


def review(obj: dict[str, Any], uid: str, namespace: str) -> dict[str, Any]:
    """A v1 AdmissionReview for a pod CREATE, as the API server sends it."""
    return {
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "0f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9",
                "groups": [
                    "system:serviceaccounts",
                    "system:serviceaccounts:kube-system",
                    "system:authenticated",
                ],
            },
            "object": obj,
            "oldObject": None,
            "dryRun": False,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        },
    }


def context() -> Context:
    """The same policy and namespaces as the benchmarked server."""
    return Context(default_policy(), StaticNamespaces(NAMESPACE_LABELS), DEFAULT_NAMESPACE)


def mutated(body: Mapping[str, Any]) -> dict[str, Any]:
    """The pod after meshgate's /mutate patch (computed in-process, applied with jsonpatch)."""
    request = parse_review(orjson.dumps(body))
    outcome = admit(request, "mutate", context())
    if not outcome.allowed or not outcome.patch:
        raise RuntimeError(f"expected an injecting patch, got {outcome.decision}: {outcome.reason}")
    result: dict[str, Any] = jsonpatch.apply_patch(
        copy.deepcopy(request["object"]), list(outcome.patch)
    )
    return result


def _uid(n: int) -> str:
    return f"b3f5a0c2-7e1d-4c9a-8f6b-{n:012d}"


def env_count(obj: Mapping[str, Any]) -> int:
    return sum(len(c.get("env") or ()) for c in obj["spec"]["containers"])


def all_bodies() -> list[Body]:
    base = pod(CNI_NAMESPACE)
    inject = review(base, _uid(1), CNI_NAMESPACE)
    bodies = [
        Body("inject-cni", "mutate", "/mutate, injecting pod, cni namespace", inject, True, True),
        Body(
            "inject-init",
            "mutate",
            "/mutate, same pod, init namespace",
            review(pod(INIT_NAMESPACE), _uid(2), INIT_NAMESPACE),
            True,
            True,
        ),
        Body(
            "skip",
            "mutate",
            "/mutate, same pod, namespace the policy skips",
            review(pod(SKIP_NAMESPACE), _uid(3), SKIP_NAMESPACE),
            True,
            False,
        ),
        Body(
            "deny",
            "mutate",
            "/mutate, NET_ADMIN pod, cni-enforced namespace (gate denies)",
            review(net_admin_pod(CNI_NAMESPACE), _uid(4), CNI_NAMESPACE),
            False,
            False,
        ),
        Body(
            "validate",
            "validate",
            "/validate, the injected pod",
            review(mutated(inject), _uid(5), CNI_NAMESPACE),
            True,
            False,
        ),
    ]
    for n, (containers, env_total) in enumerate(SIZE_STEPS):
        bodies.append(
            Body(
                f"env-{env_total}",
                "mutate",
                f"/mutate, {containers} containers, {env_total:,} env vars, cni namespace",
                review(
                    large_pod(CNI_NAMESPACE, containers, env_total), _uid(10 + n), CNI_NAMESPACE
                ),
                True,
                True,
            )
        )
    return bodies


def namespaces_yaml() -> str:
    """The --namespaces-file for `meshgate serve`."""
    docs = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}
        for name, labels in NAMESPACE_LABELS.items()
    ]
    return yaml.safe_dump_all(docs, sort_keys=False)


def write(bodies: list[Body], out_dir: Path) -> dict[str, Path]:
    """Write each body to <out_dir>/<name>.json; returns the paths by name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for body in bodies:
        path = out_dir / f"{body.name}.json"
        path.write_bytes(body.encode())
        paths[body.name] = path
    return paths


if __name__ == "__main__":
    for b in all_bodies():
        print(
            f"{b.name:12} {b.endpoint:9} pod {len(orjson.dumps(b.pod)):>9,} B  "
            f"review {len(b.encode()):>9,} B  env {env_count(b.pod):>6}  {b.description}"
        )
