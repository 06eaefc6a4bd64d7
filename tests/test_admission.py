"""The admission engine without HTTP: webhook.admission.parse_review and admit (SPEC 4, 5).

Every patch a response carries is decoded and applied to the request's object with
`jsonpatch`; every response is checked for the protocol invariants (uid echoed, audit
annotations, patchType only with a non-empty patch).
"""

from __future__ import annotations

import base64
import copy
import json
import re
from typing import Any

import orjson
import pytest
from helpers import container, decode_patch, patched, workload
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from webhook.admission import BadRequest, Context, admit, parse_review
from webhook.namespaces import StaticNamespaces
from webhook.policy import Policy, compile_policy, default_policy

OWN_NAMESPACE = "meshgate-system"
# Under the embedded default policy: "mesh" matches namespaces[2] (cni, injection enabled,
# CNI enforced), "optin" falls to the default (cni, opt-in, not enforced), "legacy" is init
# mode, "off" is disabled. Namespaces not listed have no labels.
NAMESPACES = StaticNamespaces(
    {
        "mesh": {"istio-injection": "enabled"},
        "optin": {},
        "legacy": {"meshgate.io/mode": "init"},
        "off": {"istio-injection": "disabled"},
    }
)

DENY = default_policy()
WARN = compile_policy({"gate": {"action": "warn"}})
AUDIT = compile_policy({"gate": {"action": "audit"}})

# auditAnnotations keys are prefixed with the webhook's name by the API server, and must
# then be a valid qualified name: the part after the prefix is at most 63 characters.
AUDIT_KEY = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


def ctx(policy: Policy = DENY) -> Context:
    return Context(policy, NAMESPACES, OWN_NAMESPACE)


# ---------------------------------------------------------------------------------------
# builders


def pod(
    *containers: dict[str, Any],
    init: list[dict[str, Any]] | None = None,
    ephemeral: list[dict[str, Any]] | None = None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    name: str = "web",
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if labels is not None:
        meta["labels"] = labels
    if annotations is not None:
        meta["annotations"] = annotations
    spec: dict[str, Any] = {"containers": list(containers) or [container("app")]}
    if init is not None:
        spec["initContainers"] = init
    if ephemeral is not None:
        spec["ephemeralContainers"] = ephemeral
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def template_of(p: dict[str, Any]) -> dict[str, Any]:
    meta = copy.deepcopy(p["metadata"])
    meta.pop("name", None)
    meta.setdefault("labels", {"app": "web"})
    return {"metadata": meta, "spec": copy.deepcopy(p["spec"])}


# (group, version, kind, where the pod template sits)
WORKLOADS = [
    ("apps", "v1", "Deployment", ("spec", "template")),
    ("apps", "v1", "StatefulSet", ("spec", "template")),
    ("apps", "v1", "DaemonSet", ("spec", "template")),
    ("apps", "v1", "ReplicaSet", ("spec", "template")),
    ("", "v1", "ReplicationController", ("spec", "template")),
    ("batch", "v1", "Job", ("spec", "template")),
    ("batch", "v1", "CronJob", ("spec", "jobTemplate", "spec", "template")),
]
WORKLOAD_IDS = [w[2] for w in WORKLOADS]


def request(
    obj: Any,
    *,
    kind: str = "Pod",
    group: str = "",
    version: str = "v1",
    operation: str = "CREATE",
    namespace: str | None = "mesh",
    sub: str | None = None,
    old: Any = None,
    uid: str = "705ab4f5-6393-11e8-b7cc-42010a800002",
    dry_run: bool = False,
    resource: str | None = None,
) -> dict[str, Any]:
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    name = meta.get("name") if isinstance(meta, dict) else None
    req: dict[str, Any] = {
        "uid": uid,
        "kind": {"group": group, "version": version, "kind": kind},
        "resource": {"group": group, "version": version,
                     "resource": resource or kind.lower() + "s"},
        "requestKind": {"group": group, "version": version, "kind": kind},
        "operation": operation,
        "userInfo": {"username": "alice", "groups": ["system:authenticated"]},
        "object": obj,
        "oldObject": old,
        "dryRun": dry_run,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
    }  # fmt: skip
    if namespace is not None:
        req["namespace"] = namespace
    if isinstance(name, str) and name:
        req["name"] = name
    if sub is not None:
        req["subResource"] = sub
    return req


def wire(req: dict[str, Any]) -> dict[str, Any]:
    """The request as parse_review returns it from an AdmissionReview body."""
    body = orjson.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                         "request": req})  # fmt: skip
    return parse_review(body)


def answer(req: dict[str, Any], endpoint: str, policy: Policy = DENY) -> dict[str, Any]:
    """The checked response of `endpoint` to `req`."""
    outcome = admit(wire(req), endpoint, ctx(policy))
    review = outcome.review
    assert review["apiVersion"] == "admission.k8s.io/v1"
    assert review["kind"] == "AdmissionReview"
    response = review["response"]
    assert response["uid"] == req["uid"]
    assert isinstance(response["allowed"], bool)
    assert outcome.allowed is response["allowed"]
    notes = response["auditAnnotations"]
    assert {"decision", "reason", "policy"} <= set(notes)
    assert notes["policy"] == policy.version
    assert all(AUDIT_KEY.match(key) for key in notes), notes
    assert all(isinstance(v, str) and v for v in notes.values()), notes
    assert ("patch" in response) is ("patchType" in response)
    if "patch" in response:
        assert response["allowed"] is True
        assert response["patchType"] == "JSONPatch"
        assert decode_patch(response) != []
    if not response["allowed"]:
        status = response["status"]
        assert isinstance(status["message"], str) and status["message"]
        assert isinstance(status["code"], int) and 400 <= status["code"] < 500
    for warning in response.get("warnings", []):
        assert isinstance(warning, str)
    # Must survive the wire: plain JSON.
    assert json.loads(orjson.dumps(review)) == review
    return response


def message(response: dict[str, Any]) -> str:
    text: str = response["status"]["message"]
    return text


def clause(text: str, kind: str, name: str) -> str:
    """The part of a message (split at ';') that names `kind "name"`; fails if none."""
    pattern = re.compile(rf'(?<![A-Za-z]){kind} "{re.escape(name)}"')
    for part in re.split(r";", text):
        if pattern.search(part):
            return part
    raise AssertionError(f'{kind} "{name}" is not named in: {text}')


NET_ADMIN_POD = pod(
    container("app", "NET_ADMIN"),
    container("helper", privileged=True),
    init=[container("setup", "cap_net_admin")],
)
NET_ADMIN_VIOLATIONS = [
    ("container", "app", "NET_ADMIN"),
    ("container", "helper", "privileged"),
    ("initContainer", "setup", "NET_ADMIN"),
]


def assert_names_every_violation(
    text: str, namespace: str, violations: list[tuple[str, str, str]]
) -> None:
    assert f'"{namespace}"' in text or f" {namespace} " in text, text
    for kind, name, what in violations:
        assert what in clause(text, kind, name), (kind, name, text)


# ---------------------------------------------------------------------------------------
# parse_review


def _body(review: Any) -> bytes:
    return orjson.dumps(review)


GOOD_REQUEST = request(pod())


@pytest.mark.parametrize(
    ("body", "uid", "words"),
    [
        pytest.param(b"{not json", None, "JSON", id="not-json"),
        pytest.param(b"", None, "JSON", id="empty"),
        pytest.param(b"\xff\xfe", None, "JSON", id="not-utf8"),
        pytest.param(b"[]", None, "AdmissionReview", id="json-array"),
        pytest.param(b'"AdmissionReview"', None, "AdmissionReview", id="json-string"),
        pytest.param(b"null", None, "AdmissionReview", id="json-null"),
        pytest.param(
            _body({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}),
            None, "request", id="missing-request",
        ),
        pytest.param(
            _body({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                   "request": "x"}),
            None, "request", id="request-not-object",
        ),
        pytest.param(
            _body({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                   "request": {k: v for k, v in GOOD_REQUEST.items() if k != "uid"}}),
            None, "uid", id="missing-uid",
        ),
        pytest.param(
            _body({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                   "request": {**GOOD_REQUEST, "uid": 42}}),
            None, "uid", id="uid-not-string",
        ),
        pytest.param(
            _body({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                   "request": {**GOOD_REQUEST, "uid": ""}}),
            None, "uid", id="uid-empty",
        ),
        pytest.param(
            _body({"apiVersion": "admission.k8s.io/v1", "kind": "Pod",
                   "request": GOOD_REQUEST}),
            GOOD_REQUEST["uid"], "kind", id="wrong-kind",
        ),
        pytest.param(
            _body({"apiVersion": "admission.k8s.io/v1", "request": GOOD_REQUEST}),
            GOOD_REQUEST["uid"], "kind", id="missing-kind",
        ),
        pytest.param(
            _body({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview",
                   "request": GOOD_REQUEST}),
            GOOD_REQUEST["uid"], "apiVersion", id="v1beta1",
        ),
        pytest.param(
            _body({"kind": "AdmissionReview", "request": GOOD_REQUEST}),
            GOOD_REQUEST["uid"], "apiVersion", id="missing-apiVersion",
        ),
        pytest.param(
            _body({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                   "request": {**GOOD_REQUEST, "kind": "Pod"}}),
            GOOD_REQUEST["uid"], "kind", id="request-kind-not-object",
        ),
        pytest.param(
            _body({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                   "request": {**GOOD_REQUEST, "operation": None}}),
            GOOD_REQUEST["uid"], "operation", id="operation-missing",
        ),
        pytest.param(
            _body({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                   "request": {**GOOD_REQUEST, "namespace": ["mesh"]}}),
            GOOD_REQUEST["uid"], "namespace", id="namespace-not-string",
        ),
    ],
)  # fmt: skip
def test_parse_review_rejects(body: bytes, uid: str | None, words: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_review(body)
    err = caught.value
    assert err.status == 400
    assert err.uid == uid
    assert words.lower() in err.message.lower()


def test_parse_review_returns_the_request() -> None:
    body = _body({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                  "request": GOOD_REQUEST})  # fmt: skip
    assert parse_review(body) == GOOD_REQUEST


def test_parse_review_ignores_a_response_field_and_unknown_fields() -> None:
    body = _body({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                  "request": GOOD_REQUEST, "response": None, "extra": 1})  # fmt: skip
    assert parse_review(body)["uid"] == GOOD_REQUEST["uid"]


# ---------------------------------------------------------------------------------------
# responses: uid, auditAnnotations, patch encoding


@pytest.mark.parametrize(
    "uid",
    [
        pytest.param("705ab4f5-6393-11e8-b7cc-42010a800002", id="uuid"),
        pytest.param("x", id="short"),
        pytest.param("ünïcødé-✓", id="unicode"),
        pytest.param("u" * 300, id="long"),
    ],
)
@pytest.mark.parametrize("endpoint", ["mutate", "validate"])
def test_uid_is_echoed(uid: str, endpoint: str) -> None:
    for obj in (pod(), NET_ADMIN_POD, {"metadata": {"labels": []}}):
        response = answer(request(obj, uid=uid), endpoint)
        assert response["uid"] == uid


def test_patch_is_base64_json_patch_that_applies_and_injects() -> None:
    annotations = {"team": "a/b", "k8s.v1.cni.cncf.io/networks": "macvlan"}
    original = pod(container("app"), labels={"app": "web"}, annotations=annotations)
    response = answer(request(original), "mutate")
    assert response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    assert base64.b64encode(base64.b64decode(response["patch"])).decode() == response["patch"]
    result = patched(original, response)
    names = [c["name"] for c in result["spec"]["containers"]]
    assert names[0] == "app" and names.count("istio-proxy") == 1
    assert result["spec"]["containers"][0] == original["spec"]["containers"][0]
    annotations = result["metadata"]["annotations"]
    assert annotations["team"] == "a/b"
    assert json.loads(annotations["sidecar.istio.io/status"])["containers"] == ["istio-proxy"]
    assert annotations["meshgate.io/injected"] == f"cni@{DENY.version}"
    assert annotations["k8s.v1.cni.cncf.io/networks"] == "macvlan, istio-cni"
    assert result["metadata"]["labels"]["app"] == "web"  # the pod's labels are kept
    assert response["auditAnnotations"]["decision"] == "inject:cni"


@pytest.mark.parametrize(
    ("namespace", "original"),
    [
        pytest.param("mesh", pod(), id="no-annotations-key"),
        pytest.param("mesh", {**pod(), "metadata": {"name": "web", "annotations": None,
                                                     "labels": None}}, id="null-maps"),
        pytest.param("mesh", pod(annotations={}), id="empty-annotations"),
        pytest.param("mesh", pod(init=[container("migrate")]), id="existing-init"),
        pytest.param("mesh", {**pod(), "spec": {"containers": [container("app")],
                                                 "initContainers": None, "volumes": None}},
                     id="null-lists"),
        pytest.param("mesh", {**pod(), "spec": {"containers": [container("app")],
                     "volumes": [{"name": "data", "emptyDir": {}}]}}, id="existing-volumes"),
        pytest.param("mesh", pod(annotations={"odd~key/x": "1"}), id="tilde-and-slash-keys"),
        pytest.param("legacy", pod(), id="init-mode"),
        pytest.param("legacy", pod(init=[container("migrate")]), id="init-mode-existing-init"),
        pytest.param("optin", pod(labels={"sidecar.istio.io/inject": "true"}), id="opt-in"),
        pytest.param("mesh", {"apiVersion": "v1", "kind": "Pod",
                              "metadata": {"generateName": "web-"},
                              "spec": {"containers": [container("app")]}}, id="generate-name"),
    ],
)  # fmt: skip
def test_every_injecting_patch_applies_and_is_idempotent(
    namespace: str, original: dict[str, Any]
) -> None:
    response = answer(request(original, namespace=namespace), "mutate")
    assert response["allowed"] is True
    assert "patch" in response
    result = patched(original, response)
    names = [c["name"] for c in result["spec"]["containers"]]
    assert names.count("istio-proxy") == 1
    assert [n for n in names if n != "istio-proxy"] == [
        c["name"] for c in original["spec"]["containers"]
    ]
    inits = [c["name"] for c in result["spec"].get("initContainers") or ()]
    before = [c["name"] for c in original["spec"].get("initContainers") or ()]
    assert [n for n in inits if n not in ("istio-init", "istio-validation")] == before
    if namespace == "legacy":
        assert inits[0] == "istio-init"
    for key, value in (original["metadata"].get("annotations") or {}).items():
        assert result["metadata"]["annotations"][key] == value
    assert "sidecar.istio.io/status" in result["metadata"]["annotations"]
    # Mutating the mutated pod yields an empty patch (SPEC 2, step 5).
    again = answer(request(result, namespace=namespace), "mutate")
    assert again["allowed"] is True
    assert "patch" not in again and "patchType" not in again


@pytest.mark.parametrize(
    ("namespace", "original"),
    [
        pytest.param("optin", pod(), id="opt-in-not-opted-in"),
        pytest.param("off", pod(), id="disabled"),
        pytest.param("kube-system", pod(), id="exempt"),
        pytest.param(OWN_NAMESPACE, pod(), id="own-namespace"),
        pytest.param("mesh", pod(labels={"sidecar.istio.io/inject": "false"}), id="opt-out"),
        pytest.param("mesh", {**pod(), "spec": {"hostNetwork": True,
                                                 "containers": [container("app")]}},
                     id="host-network"),
    ],
)  # fmt: skip
def test_no_patch_and_no_patch_type_when_nothing_to_inject(
    namespace: str, original: dict[str, Any]
) -> None:
    response = answer(request(original, namespace=namespace), "mutate")
    assert response["allowed"] is True
    assert "patch" not in response and "patchType" not in response
    # Skip reasons are not warnings (SPEC 5).
    assert "warnings" not in response


# ---------------------------------------------------------------------------------------
# routing


def _net_admin_template() -> dict[str, Any]:
    return template_of(pod(container("app", "NET_ADMIN")))


@pytest.mark.parametrize(
    ("group", "version", "kind", "path"),
    [
        pytest.param("apps", "v1beta1", "Deployment", ("spec", "template"), id="apps-v1beta1"),
        pytest.param("apps", "v1beta2", "Deployment", ("spec", "template"), id="apps-v1beta2"),
        pytest.param("extensions", "v1beta1", "Deployment", ("spec", "template"),
                     id="extensions-Deployment"),
        pytest.param("extensions", "v1beta1", "DaemonSet", ("spec", "template"),
                     id="extensions-DaemonSet"),
        pytest.param("extensions", "v1beta1", "ReplicaSet", ("spec", "template"),
                     id="extensions-ReplicaSet"),
        pytest.param("apps", "v1beta2", "StatefulSet", ("spec", "template"),
                     id="apps-v1beta2-StatefulSet"),
        pytest.param("batch", "v1beta1", "CronJob", ("spec", "jobTemplate", "spec", "template"),
                     id="batch-v1beta1-CronJob"),
        pytest.param("batch", "v2alpha1", "CronJob",
                     ("spec", "jobTemplate", "spec", "template"), id="batch-v2alpha1-CronJob"),
    ],
)  # fmt: skip
def test_workloads_are_routed_by_group_and_kind_for_any_version(
    group: str, version: str, kind: str, path: tuple[str, ...]
) -> None:
    obj = workload(group, version, kind, path, _net_admin_template())
    response = answer(request(obj, kind=kind, group=group, version=version), "validate")
    assert response["allowed"] is False
    assert "NET_ADMIN" in clause(message(response), "container", "app")


@pytest.mark.parametrize(
    ("group", "kind"),
    [
        pytest.param("example.com", "Deployment", id="custom-group-Deployment"),
        pytest.param("apps", "Pod", id="apps-Pod"),
        pytest.param("", "Deployment", id="core-Deployment"),
        pytest.param("argoproj.io", "Rollout", id="argo-Rollout"),
    ],
)
def test_same_kind_in_another_group_is_not_judged(group: str, kind: str) -> None:
    obj = workload("apps", "v1", "Deployment", ("spec", "template"), _net_admin_template())
    for endpoint in ("mutate", "validate"):
        response = answer(request(obj, kind=kind, group=group), endpoint)
        assert response["allowed"] is True
        assert "patch" not in response


def _ephemeral_pod(*ephemeral: dict[str, Any]) -> dict[str, Any]:
    return pod(container("app"), ephemeral=list(ephemeral))


def _legacy_ephemeral(*ephemeral: dict[str, Any]) -> dict[str, Any]:
    """The pre-1.22 `EphemeralContainers` object of the ephemeralcontainers subresource."""
    return {"apiVersion": "v1", "kind": "EphemeralContainers",
            "metadata": {"name": "web", "namespace": "mesh"},
            "ephemeralContainers": list(ephemeral)}  # fmt: skip


def _ephemeral_request(kind: str, old: list[dict[str, Any]], new: list[dict[str, Any]],
                       **kw: Any) -> dict[str, Any]:  # fmt: skip
    build = _legacy_ephemeral if kind == "EphemeralContainers" else _ephemeral_pod
    return request(build(*new), kind=kind, operation="UPDATE", sub="ephemeralcontainers",
                   old=build(*old), resource="pods", **kw)  # fmt: skip


EPHEMERAL_KINDS = [pytest.param("Pod", id="pod"),
                   pytest.param("EphemeralContainers", id="pre-1.22-kind")]  # fmt: skip


@pytest.mark.parametrize("kind", EPHEMERAL_KINDS)
def test_new_ephemeral_container_with_net_admin_is_denied(kind: str) -> None:
    req = _ephemeral_request(kind, [], [container("debugger", "NET_ADMIN")])
    response = answer(req, "validate")
    assert response["allowed"] is False
    assert response["status"]["code"] == 403
    assert_names_every_violation(
        message(response), "mesh", [("ephemeralContainer", "debugger", "NET_ADMIN")]
    )


@pytest.mark.parametrize("kind", EPHEMERAL_KINDS)
def test_only_the_new_ephemeral_containers_are_judged(kind: str) -> None:
    old = [container("old-debugger", "NET_ADMIN")]
    # An old one with NET_ADMIN (added before enforcement) is not judged again...
    response = answer(_ephemeral_request(kind, old, [*old, container("shell")]), "validate")
    assert response["allowed"] is True
    # ... but a new one is, and only the new one is named.
    req = _ephemeral_request(kind, old, [*old, container("tcpdump", "CAP_NET_ADMIN")])
    response = answer(req, "validate")
    assert response["allowed"] is False
    assert "tcpdump" in message(response)
    assert "old-debugger" not in message(response)


def test_ephemeral_update_does_not_judge_the_pods_regular_containers_again() -> None:
    old = {**NET_ADMIN_POD, "spec": {**NET_ADMIN_POD["spec"], "ephemeralContainers": []}}
    new = copy.deepcopy(old)
    new["spec"]["ephemeralContainers"] = [container("shell")]
    req = request(new, operation="UPDATE", sub="ephemeralcontainers", old=old, resource="pods")
    assert answer(req, "validate")["allowed"] is True


@pytest.mark.parametrize("kind", EPHEMERAL_KINDS)
def test_ephemeral_update_is_not_gated_on_mutate(kind: str) -> None:
    response = answer(_ephemeral_request(kind, [], [container("dbg", "NET_ADMIN")]), "mutate")
    assert response["allowed"] is True
    assert "patch" not in response


@pytest.mark.parametrize("kind", EPHEMERAL_KINDS)
def test_ephemeral_update_in_warn_mode_warns(kind: str) -> None:
    response = answer(_ephemeral_request(kind, [], [container("dbg", "NET_ADMIN")]),
                      "validate", WARN)  # fmt: skip
    assert response["allowed"] is True
    assert len(response["warnings"]) == 1
    assert "dbg" in response["warnings"][0]


def test_ephemeral_update_outside_enforcement_is_allowed() -> None:
    req = _ephemeral_request("Pod", [], [container("dbg", "NET_ADMIN")], namespace="optin")
    assert answer(req, "validate")["allowed"] is True


def _deployment_request(obj: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return request(obj, kind="Deployment", group="apps", **kw)


def _status_of(p: dict[str, Any]) -> dict[str, Any]:
    return {**p, "status": {"phase": "Running"}}


NET_ADMIN_DEPLOYMENT = workload("apps", "v1", "Deployment", ("spec", "template"),
                                template_of(NET_ADMIN_POD))  # fmt: skip


@pytest.mark.parametrize(
    "req",
    [
        pytest.param(request(_status_of(NET_ADMIN_POD), operation="UPDATE", sub="status",
                             old=NET_ADMIN_POD), id="pods/status"),
        pytest.param(request(NET_ADMIN_POD, operation="UPDATE", old=NET_ADMIN_POD),
                     id="pod-update"),
        pytest.param(request(None, operation="DELETE", old=NET_ADMIN_POD), id="pod-delete"),
        pytest.param(request({"apiVersion": "v1", "kind": "PodExecOptions",
                              "command": ["sh"], "container": "app"},
                             kind="PodExecOptions", operation="CONNECT", sub="exec",
                             resource="pods"), id="pods/exec-connect"),
        pytest.param(request({"apiVersion": "v1", "kind": "PodAttachOptions"},
                             kind="PodAttachOptions", operation="CONNECT", sub="attach",
                             resource="pods"), id="pods/attach-connect"),
        pytest.param(request({"apiVersion": "policy/v1", "kind": "Eviction",
                              "metadata": {"name": "web"}}, kind="Eviction", group="policy",
                             sub="eviction", resource="pods"), id="pods/eviction"),
        pytest.param(request({"apiVersion": "v1", "kind": "Binding",
                              "metadata": {"name": "web"}, "target": {"name": "node"}},
                             kind="Binding", sub="binding", resource="pods"),
                     id="pods/binding"),
        pytest.param(request({"apiVersion": "v1", "kind": "ConfigMap",
                              "metadata": {"name": "c"}, "data": {"a": "b"}},
                             kind="ConfigMap"), id="configmap-create"),
        pytest.param(request(None, kind="Deployment", group="apps", operation="DELETE",
                             old=NET_ADMIN_DEPLOYMENT), id="deployment-delete"),
        pytest.param(_deployment_request(NET_ADMIN_DEPLOYMENT, operation="UPDATE", sub="status",
                                         old=NET_ADMIN_DEPLOYMENT), id="deployments/status"),
        pytest.param(request({"apiVersion": "autoscaling/v1", "kind": "Scale",
                              "metadata": {"name": "web"}, "spec": {"replicas": 3}},
                             kind="Scale", group="autoscaling", operation="UPDATE",
                             sub="scale", resource="deployments"), id="deployments/scale"),
        pytest.param(request(NET_ADMIN_POD, kind="Namespace", namespace=None),
                     id="cluster-scoped-kind"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("endpoint", ["mutate", "validate"])
def test_unhandled_requests_are_allowed_without_patch(req: dict[str, Any], endpoint: str) -> None:
    response = answer(req, endpoint)
    assert response["allowed"] is True
    assert "patch" not in response
    assert "warnings" not in response


def test_pod_create_on_validate_never_patches() -> None:
    response = answer(request(pod()), "validate")
    assert response["allowed"] is True
    assert "patch" not in response


# ---------------------------------------------------------------------------------------
# the gate on pods and workloads


@pytest.mark.parametrize("endpoint", ["mutate", "validate"])
def test_pod_with_net_admin_is_denied_with_one_message_naming_everything(endpoint: str) -> None:
    p = pod(container("app", "NET_ADMIN"), container("helper", privileged=True),
            init=[container("setup", "cap_net_admin")],
            ephemeral=[container("dbg", " Cap_Net_Admin ")])  # fmt: skip
    response = answer(request(p), endpoint)
    assert response["allowed"] is False
    assert response["status"]["code"] == 403
    text = message(response)
    assert_names_every_violation(
        text, "mesh", [*NET_ADMIN_VIOLATIONS, ("ephemeralContainer", "dbg", "NET_ADMIN")]
    )
    assert "fix" in text.lower()
    assert "patch" not in response


@pytest.mark.parametrize(("group", "version", "kind", "path"), WORKLOADS, ids=WORKLOAD_IDS)
def test_workload_create_with_net_admin_is_denied(
    group: str, version: str, kind: str, path: tuple[str, ...]
) -> None:
    obj = workload(group, version, kind, path, template_of(NET_ADMIN_POD))
    response = answer(request(obj, kind=kind, group=group, version=version), "validate")
    assert response["allowed"] is False
    assert response["status"]["code"] == 403
    text = message(response)
    assert_names_every_violation(text, "mesh", NET_ADMIN_VIOLATIONS)
    assert "fix" in text.lower()
    assert "patch" not in response


@pytest.mark.parametrize(("group", "version", "kind", "path"), WORKLOADS, ids=WORKLOAD_IDS)
def test_workload_create_without_net_admin_is_allowed(
    group: str, version: str, kind: str, path: tuple[str, ...]
) -> None:
    template = template_of(pod(container("app", "NET_BIND_SERVICE")))
    obj = workload(group, version, kind, path, template)
    response = answer(request(obj, kind=kind, group=group, version=version), "validate")
    assert response["allowed"] is True
    assert "patch" not in response


@pytest.mark.parametrize("namespace", ["optin", "off", "kube-system", OWN_NAMESPACE, "unlisted"])
@pytest.mark.parametrize(("group", "version", "kind", "path"), WORKLOADS[:1] + WORKLOADS[-1:],
                         ids=["Deployment", "CronJob"])  # fmt: skip
def test_workload_outside_enforcement_is_allowed(
    group: str, version: str, kind: str, path: tuple[str, ...], namespace: str
) -> None:
    obj = workload(group, version, kind, path, template_of(NET_ADMIN_POD))
    req = request(obj, kind=kind, group=group, version=version, namespace=namespace)
    assert answer(req, "validate")["allowed"] is True


@pytest.mark.parametrize(("group", "version", "kind", "path"), WORKLOADS, ids=WORKLOAD_IDS)
def test_workload_update_with_unchanged_template_is_allowed(
    group: str, version: str, kind: str, path: tuple[str, ...]
) -> None:
    old = workload(group, version, kind, path, template_of(NET_ADMIN_POD))
    new = copy.deepcopy(old)
    new["metadata"]["labels"] = {"changed": "yes"}
    new["spec"]["paused" if kind != "CronJob" else "suspend"] = True
    req = request(new, kind=kind, group=group, version=version, operation="UPDATE", old=old)
    response = answer(req, "validate")
    assert response["allowed"] is True
    assert "warnings" not in response


@pytest.mark.parametrize(("group", "version", "kind", "path"), WORKLOADS, ids=WORKLOAD_IDS)
def test_workload_update_changing_only_a_template_label_is_judged(
    group: str, version: str, kind: str, path: tuple[str, ...]
) -> None:
    old = workload(group, version, kind, path, template_of(NET_ADMIN_POD))
    new = copy.deepcopy(old)
    template: Any = new
    for key in path:
        template = template[key]
    template["metadata"]["labels"]["version"] = "v2"
    req = request(new, kind=kind, group=group, version=version, operation="UPDATE", old=old)
    response = answer(req, "validate")
    assert response["allowed"] is False
    assert_names_every_violation(message(response), "mesh", NET_ADMIN_VIOLATIONS)


def test_workload_update_without_old_object_is_judged() -> None:
    req = _deployment_request(NET_ADMIN_DEPLOYMENT, operation="UPDATE", old=None)
    assert answer(req, "validate")["allowed"] is False


def test_workloads_are_not_handled_on_mutate() -> None:
    response = answer(_deployment_request(NET_ADMIN_DEPLOYMENT), "mutate")
    assert response["allowed"] is True
    assert "patch" not in response


# ---------------------------------------------------------------------------------------
# warn and audit


LONG = "a-very-long-container-name-" + "x" * 300


def _warn_cases() -> list[Any]:
    p = pod(container("app", "NET_ADMIN"), container(LONG, "NET_ADMIN"),
            container("helper", privileged=True),
            init=[container("setup", "  cap_net_admin" + " " * 200)])  # fmt: skip
    return [
        pytest.param(request(p), id="pod"),
        pytest.param(_deployment_request(workload("apps", "v1", "Deployment",
                                                  ("spec", "template"), template_of(p))),
                     id="deployment"),
    ]  # fmt: skip


WARN_NAMES = ["app", LONG, "helper", "setup"]


@pytest.mark.parametrize("req", _warn_cases())
@pytest.mark.parametrize(
    "policy",
    [
        pytest.param(WARN, id="gate-action"),
        pytest.param(compile_policy({"namespaces": [
            {"match": {"names": ["mesh"]}, "mode": "cni", "enforceCNI": True,
             "gateAction": "warn"}]}), id="rule-gateAction"),
    ],
)  # fmt: skip
def test_warn_allows_with_one_short_warning_per_violation(
    req: dict[str, Any], policy: Policy
) -> None:
    response = answer(req, "validate", policy)
    assert response["allowed"] is True
    assert "patch" not in response
    warnings = response["warnings"]
    assert len(warnings) == len(WARN_NAMES)
    for warning in warnings:
        assert 0 < len(warning) <= 120, warning
    for name, warning in zip(WARN_NAMES, warnings, strict=True):
        if name == LONG:
            assert "…" in warning and "a-very-long-container-name-" in warning
        else:
            assert f'"{name}"' in warning, warning
    assert "NET_ADMIN" in warnings[0]


@pytest.mark.parametrize("req", _warn_cases())
def test_audit_allows_silently_and_records_violations_in_audit_annotations(
    req: dict[str, Any],
) -> None:
    response = answer(req, "validate", AUDIT)
    assert response["allowed"] is True
    assert "warnings" not in response
    assert "patch" not in response
    notes = " ".join(response["auditAnnotations"].values())
    for name in ("app", "helper", "setup"):
        assert f'"{name}"' in notes
    assert "NET_ADMIN" in notes
    assert "privileged" in notes


def test_mutate_denies_in_deny_mode() -> None:
    response = answer(request(NET_ADMIN_POD), "mutate")
    assert response["allowed"] is False
    assert_names_every_violation(message(response), "mesh", NET_ADMIN_VIOLATIONS)


@pytest.mark.parametrize("policy", [pytest.param(WARN, id="warn"),
                                    pytest.param(AUDIT, id="audit")])  # fmt: skip
def test_mutate_reports_no_gate_findings_in_warn_or_audit_mode(policy: Policy) -> None:
    response = answer(request(NET_ADMIN_POD), "mutate", policy)
    assert response["allowed"] is True
    for warning in response.get("warnings", []):
        assert "NET_ADMIN" not in warning and "privileged" not in warning
    assert "warnings" not in response
    assert set(response["auditAnnotations"]) == {"decision", "reason", "policy"}
    assert "NET_ADMIN" not in " ".join(response["auditAnnotations"].values())
    # It still injects: the gate is /validate's to report.
    assert "istio-proxy" in [c["name"] for c in patched(NET_ADMIN_POD, response)["spec"]
                             ["containers"]]  # fmt: skip


# ---------------------------------------------------------------------------------------
# injection warnings come from /mutate only


@pytest.mark.parametrize(
    ("namespace", "original", "words", "injects"),
    [
        pytest.param("optin", pod(annotations={"sidecar.istio.io/inject": "true"}),
                     "deprecated", True, id="deprecated-annotation"),
        pytest.param("mesh", pod(labels={"sidecar.istio.io/inject": "maybe"}),
                     "maybe", False, id="invalid-inject-label"),
        pytest.param("mesh", pod(labels={"meshgate.io/mode": "init"}),
                     "meshgate.io/mode", True, id="ignored-mode-label"),
    ],
)  # fmt: skip
def test_injection_warnings_come_from_mutate_only(
    namespace: str, original: dict[str, Any], words: str, injects: bool
) -> None:
    mutated = answer(request(original, namespace=namespace), "mutate")
    assert mutated["allowed"] is True
    assert any(words in w for w in mutated.get("warnings", [])), mutated.get("warnings")
    assert ("patch" in mutated) is injects
    if injects:
        result = patched(original, mutated)
        assert "istio-proxy" in [c["name"] for c in result["spec"]["containers"]]
    validated = answer(request(original, namespace=namespace), "validate")
    assert validated["allowed"] is True
    assert "warnings" not in validated


# ---------------------------------------------------------------------------------------
# dry-run


def _dry_run_cases() -> list[Any]:
    deployment = NET_ADMIN_DEPLOYMENT
    return [
        pytest.param(request(pod()), "mutate", DENY, id="inject"),
        pytest.param(request(NET_ADMIN_POD), "mutate", DENY, id="mutate-deny"),
        pytest.param(request(NET_ADMIN_POD), "validate", DENY, id="validate-deny"),
        pytest.param(request(NET_ADMIN_POD), "validate", WARN, id="validate-warn"),
        pytest.param(request(NET_ADMIN_POD), "validate", AUDIT, id="validate-audit"),
        pytest.param(request(pod(), namespace="optin"), "mutate", DENY, id="skip"),
        pytest.param(request({"metadata": {"labels": [1]}}), "mutate", DENY, id="invalid"),
        pytest.param(_deployment_request(deployment), "validate", DENY, id="workload"),
        pytest.param(_ephemeral_request("Pod", [], [container("d", "NET_ADMIN")]),
                     "validate", DENY, id="ephemeral"),
        pytest.param(request(pod(annotations={"sidecar.istio.io/inject": "true"}),
                             namespace="optin"), "mutate", DENY, id="warning"),
        pytest.param(request(None, operation="DELETE", old=pod()), "validate", DENY,
                     id="ignored"),
    ]  # fmt: skip


@pytest.mark.parametrize(("req", "endpoint", "policy"), _dry_run_cases())
def test_dry_run_gets_exactly_the_same_answer(
    req: dict[str, Any], endpoint: str, policy: Policy
) -> None:
    wet = admit(wire({**req, "dryRun": False}), endpoint, ctx(policy)).review
    dry = admit(wire({**req, "dryRun": True}), endpoint, ctx(policy)).review
    absent = admit(wire({k: v for k, v in req.items() if k != "dryRun"}), endpoint,
                   ctx(policy)).review  # fmt: skip
    assert dry == wet == absent


# ---------------------------------------------------------------------------------------
# invalid objects


def _with_container(c: Any, field: str = "containers") -> dict[str, Any]:
    p = pod()
    p["spec"][field] = [c]
    return p


INVALID_PODS = [
    pytest.param(None, "object", id="object-null"),
    pytest.param(["not", "a", "pod"], "object", id="object-list"),
    pytest.param({**pod(), "metadata": "web"}, "metadata", id="metadata-string"),
    pytest.param({**pod(), "metadata": {"name": "web", "labels": ["app"]}},
                 "metadata.labels", id="labels-list"),
    pytest.param({**pod(), "metadata": {"name": "web", "labels": {"app": 1}}},
                 "metadata.labels", id="label-value-int"),
    pytest.param({**pod(), "metadata": {"name": "web", "labels": {"sidecar.istio.io/inject":
                                                                   True}}},
                 "metadata.labels", id="inject-label-bool"),
    pytest.param({**pod(), "metadata": {"name": "web", "annotations": {"a": {"b": "c"}}}},
                 "metadata.annotations", id="annotation-value-map"),
    pytest.param({**pod(), "metadata": {"name": "web", "annotations": "a=b"}},
                 "metadata.annotations", id="annotations-string"),
    pytest.param({**pod(), "spec": "nope"}, "spec", id="spec-string"),
    pytest.param({**pod(), "spec": {"containers": {"name": "app"}}},
                 "spec.containers", id="containers-map"),
    pytest.param(_with_container("app"), "spec.containers[0]", id="container-string"),
    pytest.param(_with_container({"image": "x"}), "spec.containers[0].name",
                 id="container-without-name"),
    pytest.param(_with_container({"name": 7}), "spec.containers[0].name",
                 id="container-name-int"),
    pytest.param(_with_container({"image": "x"}, "initContainers"),
                 "spec.initContainers[0].name", id="init-container-without-name"),
    pytest.param(_with_container({"image": "x"}, "ephemeralContainers"),
                 "spec.ephemeralContainers[0].name", id="ephemeral-container-without-name"),
    pytest.param(_with_container({"name": "app", "securityContext": "root"}),
                 "spec.containers[0].securityContext", id="security-context-string"),
    pytest.param(_with_container({"name": "app", "securityContext": {
        "capabilities": {"add": "NET_ADMIN"}}}),
        "spec.containers[0].securityContext.capabilities.add", id="add-string"),
    pytest.param(_with_container({"name": "app", "securityContext": {
        "capabilities": {"add": ["NET_RAW", 12]}}}),
        "spec.containers[0].securityContext.capabilities.add", id="add-int-item"),
    pytest.param(_with_container({"name": "app", "securityContext": {
        "capabilities": ["NET_ADMIN"]}}),
        "spec.containers[0].securityContext.capabilities", id="capabilities-list"),
    pytest.param(_with_container({"name": "app", "securityContext": {"privileged": "true"}}),
                 "spec.containers[0].securityContext.privileged", id="privileged-string"),
    pytest.param(_with_container({"name": "app", "securityContext": {"privileged": 1}}),
                 "spec.containers[0].securityContext.privileged", id="privileged-int"),
]  # fmt: skip


@pytest.mark.parametrize("namespace", ["mesh", "optin"])
@pytest.mark.parametrize("endpoint", ["mutate", "validate"])
@pytest.mark.parametrize(("obj", "field"), INVALID_PODS)
def test_invalid_pod_is_refused_naming_the_field(
    obj: Any, field: str, endpoint: str, namespace: str
) -> None:
    response = answer(request(obj, namespace=namespace), endpoint)
    assert response["allowed"] is False
    assert "patch" not in response and "patchType" not in response
    assert field in message(response), message(response)


def _deployment(template: Any) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"replicas": 1, "template": template}}  # fmt: skip


INVALID_WORKLOADS = [
    pytest.param("apps", "Deployment", {"apiVersion": "apps/v1", "kind": "Deployment",
                                        "metadata": {"name": "web"}, "spec": {"replicas": 1}},
                 "spec.template", id="deployment-without-template"),
    pytest.param("apps", "Deployment", {"apiVersion": "apps/v1", "kind": "Deployment",
                                        "metadata": {"name": "web"}},
                 "spec", id="deployment-without-spec"),
    pytest.param("apps", "Deployment", _deployment(["x"]), "spec.template",
                 id="template-list"),
    pytest.param("batch", "CronJob", {"apiVersion": "batch/v1", "kind": "CronJob",
                                      "metadata": {"name": "c"},
                                      "spec": {"schedule": "* * * * *"}},
                 "jobTemplate", id="cronjob-without-jobTemplate"),
    pytest.param("batch", "CronJob", {"apiVersion": "batch/v1", "kind": "CronJob",
                                      "metadata": {"name": "c"},
                                      "spec": {"jobTemplate": {"spec": {}}}},
                 "jobTemplate.spec.template", id="cronjob-without-template"),
    pytest.param("apps", "Deployment", _deployment({"metadata": {"labels": {"app": 3}}}),
                 "spec.template.metadata.labels", id="template-label-int"),
    pytest.param("apps", "Deployment",
                 _deployment({"spec": {"containers": [{"name": "app", "securityContext": {
                     "capabilities": {"add": "NET_ADMIN"}}}]}}),
                 "spec.template.spec.containers[0].securityContext.capabilities.add",
                 id="template-add-string"),
    pytest.param("apps", "Deployment",
                 _deployment({"spec": {"initContainers": [{"image": "x"}]}}),
                 "spec.template.spec.initContainers[0].name", id="template-init-without-name"),
    pytest.param("apps", "Deployment",
                 _deployment({"spec": {"containers": [{"name": "a", "securityContext": {
                     "privileged": "yes"}}]}}),
                 "privileged", id="template-privileged-string"),
    pytest.param("apps", "Deployment", {**_deployment({}), "metadata": {"labels": "x"}},
                 "metadata.labels", id="workload-labels-string"),
]  # fmt: skip


@pytest.mark.parametrize("namespace", ["mesh", "optin"])
@pytest.mark.parametrize(("group", "kind", "obj", "field"), INVALID_WORKLOADS)
def test_invalid_workload_is_refused_naming_the_field(
    group: str, kind: str, obj: Any, field: str, namespace: str
) -> None:
    req = request(obj, kind=kind, group=group, namespace=namespace)
    response = answer(req, "validate")
    assert response["allowed"] is False
    assert "patch" not in response
    assert field in message(response), message(response)


def test_invalid_new_ephemeral_container_is_refused() -> None:
    req = _ephemeral_request("Pod", [], [{"name": "dbg", "securityContext": {
        "capabilities": {"add": [None]}}}])  # fmt: skip
    response = answer(req, "validate")
    assert response["allowed"] is False
    assert "ephemeralContainers[0].securityContext.capabilities.add" in message(response)


def test_valid_but_unread_fields_pass_through_untouched() -> None:
    """Only what meshgate reads is validated: odd values elsewhere are not refused."""
    p = pod(container("app"))
    p["spec"]["containers"][0]["ports"] = "not-a-list"  # not read by meshgate
    p["spec"]["nodeSelector"] = ["weird"]
    p["metadata"]["ownerReferences"] = "x"
    for endpoint in ("mutate", "validate"):
        response = answer(request(p), endpoint)
        assert response["allowed"] is True
    result = patched(p, answer(request(p), "mutate"))
    assert result["spec"]["nodeSelector"] == ["weird"]
    assert result["spec"]["containers"][0]["ports"] == "not-a-list"


@pytest.mark.parametrize(
    "old_spec",
    [
        pytest.param({"ephemeralContainers": 5}, id="list-is-int"),
        pytest.param({"ephemeralContainers": "dbg"}, id="list-is-string"),
        pytest.param({"ephemeralContainers": {"name": "dbg"}}, id="list-is-map"),
        pytest.param({"ephemeralContainers": [{"name": {"x": 1}}, {"name": ["dbg"]}, 3]},
                     id="unhashable-names"),
        pytest.param(7, id="spec-is-int"),
    ],
)  # fmt: skip
def test_malformed_old_object_of_ephemeral_update_never_crashes_nor_exempts(
    old_spec: Any,
) -> None:
    old = pod(container("app"))
    old["spec"] = old_spec
    new = pod(container("app"), ephemeral=[container("dbg", "NET_ADMIN")])
    req = request(new, operation="UPDATE", sub="ephemeralcontainers", old=old, resource="pods")
    response = answer(req, "validate")
    assert response["allowed"] is False
    assert "dbg" in message(response)


# ---------------------------------------------------------------------------------------
# property: whatever the object looks like, admit answers (never raises)

_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 2),
    st.sampled_from(["", "x", "NET_ADMIN", "true", "app", "istio-proxy", "ALL"]),
)
_KEYS = st.sampled_from(
    [
        "name",
        "spec",
        "metadata",
        "containers",
        "initContainers",
        "ephemeralContainers",
        "securityContext",
        "capabilities",
        "add",
        "privileged",
        "labels",
        "annotations",
        "template",
        "jobTemplate",
        "volumes",
        "hostNetwork",
        "serviceAccountName",
    ]
)
_JSON = st.recursive(
    _LEAF,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_KEYS, inner, max_size=4)),
    max_leaves=10,
)
# fmt: skip


@st.composite
def _corrupted(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    obj = copy.deepcopy(base)
    nodes: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            nodes.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(obj)
    for _ in range(draw(st.integers(1, 3))):
        node = draw(st.sampled_from(nodes))
        key = draw(st.one_of(st.sampled_from(sorted(node)), _KEYS))
        node[key] = draw(_JSON)
    return obj


_SHAPES = [
    ("", "Pod", None, pod(container("app", "NET_ADMIN"), ephemeral=[container("e")],
                          annotations={"k8s.v1.cni.cncf.io/networks": "a"})),
    ("", "Pod", "ephemeralcontainers", pod(container("app"), ephemeral=[container("e")])),
    ("", "EphemeralContainers", "ephemeralcontainers", _legacy_ephemeral(container("e"))),
    ("apps", "Deployment", None, NET_ADMIN_DEPLOYMENT),
    ("batch", "CronJob", None, workload("batch", "v1", "CronJob",
                                        ("spec", "jobTemplate", "spec", "template"),
                                        template_of(NET_ADMIN_POD))),
]  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_SHAPES), st.sampled_from(["CREATE", "UPDATE"]),
       st.sampled_from(["mutate", "validate"]), st.sampled_from(["mesh", "optin", "legacy"]),
       st.sampled_from([DENY, WARN]), st.data())  # fmt: skip
def test_admit_answers_any_object_shape(
    shape: Any, operation: str, endpoint: str, namespace: str, policy: Policy, data: Any
) -> None:
    group, kind, sub, base = shape
    obj = data.draw(_corrupted(base), label="object")
    old = data.draw(st.one_of(st.none(), _corrupted(base)), label="oldObject")
    req = request(obj, kind=kind, group=group, operation=operation, namespace=namespace,
                  sub=sub, old=old, resource="pods" if sub else None)  # fmt: skip
    response = answer(req, endpoint, policy)
    if "patch" in response:
        patched(obj, response)
