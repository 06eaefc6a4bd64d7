"""The bypass catalogue: every way a pod author might get NET_ADMIN past an enforced namespace.

One row per trick, each named for it. Every row is sent as the API server sends it: a v1
AdmissionReview body, read by `admission.parse_review` and answered by `admission.admit`
(a handful also over real HTTPS, against the app served by uvicorn on 127.0.0.1). Each row
must be denied, or — for the rows marked ALLOWED BY DESIGN — allowed for the reason given in
the row, which names the SPEC clause or the platform behaviour that makes it safe.

Unless a row says otherwise the namespace is "mesh", labelled `istio-injection=enabled`, so
the embedded default policy's namespaces[2] applies: cni mode, CNI enforced, gate action
deny, gated capability NET_ADMIN (SPEC 3, 4). /mutate also denies in deny mode (SPEC 4), so
pod CREATE rows are judged on both endpoints; workload templates and the
`pods/ephemeralcontainers` update only on /validate, the authoritative gate.

How the container runtimes read `capabilities.add` (the spellings SPEC 4 requires to count):
- containerd: `"CAP_" + strings.ToUpper(c)`; `ALL` is compared case-insensitively. Go's
  ToUpper maps the dotless ı to I and the long ſ to S, so `net_admın` and `ſys_admin` are
  granted.
- CRI-O: keeps a `cap_` prefix (any case), otherwise `"CAP_" + strings.ToUpper(c)`, and
  checks the name against the known list with `strings.EqualFold` (Unicode simple case
  folding: ſ ~ s, the Kelvin sign K ~ k), so `cap_ſys_admin` passes its check.
- Neither maps fullwidth letters (ＮＥＴ＿ＡＤＭＩＮ), the Turkish İ, zero-width characters or
  a doubled `CAP_CAP_` prefix to an ASCII capability name: such a name is an unknown
  capability (CRI-O refuses to create the container; with containerd, runc refuses it or —
  recent runc — ignores it with a warning). Nothing is granted, so SPEC 4 ("any spelling a
  container runtime would grant") does not count them, and meshgate allows those pods. The
  rows for them are ALLOWED BY DESIGN.
meshgate compares after trimming (Python's str.strip, a superset of Go's TrimSpace), removing
one optional CAP_ prefix, both upper-cased and case-folded: a superset of both runtimes.

Duplicate and miscased JSON keys: the API server decodes the author's body into its typed
objects (see go_decode: a repeated list or scalar keeps the last value, as orjson does; a
repeated object is merged into the first) and sends webhooks that object re-encoded, with
its own field names and no duplicates. The rows show that meshgate judges what is stored.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import helpers
import httpx
import orjson
import pytest
from helpers import ServerThread, client_context, container, make_cert_dir, patched

from webhook import certs
from webhook.admission import Context, admit, parse_review
from webhook.app import Runtime, create_app
from webhook.namespaces import StaticNamespaces
from webhook.policy import Policy, compile_policy, default_policy

OWN_NAMESPACE = "meshgate-system"
ENFORCED = {"istio-injection": "enabled"}
UID = "b1f0c0de-0000-4000-8000-000000000001"
MULTUS = "k8s.v1.cni.cncf.io/networks"
STATUS = "sidecar.istio.io/status"
INTERCEPTION = "sidecar.istio.io/interceptionMode"
ISTIO_STATUS = (
    '{"initContainers":["istio-validation"],"containers":["istio-proxy"],'
    '"volumes":["istio-envoy"],"imagePullSecrets":null,"revision":"default"}'
)


class Namespaces(StaticNamespaces):
    """Namespace labels as the cache would give them: every namespace is enforced
    (`istio-injection=enabled`) except "optin" (no labels), and those whose name starts with
    "ghost", whose labels cannot be read (None: not cached and the GET failed). As a
    source for the Runtime (the HTTPS rows), it is a file's: every name cached, always
    ready."""

    def __call__(self, name: str) -> Mapping[str, str] | None:
        if name.startswith("ghost"):
            return None
        if name == "optin":
            return {}
        return dict(ENFORCED)


NAMESPACES = Namespaces()

DENY = default_policy()
WARN = compile_policy({"gate": {"action": "warn"}})
AUDIT = compile_policy({"gate": {"action": "audit"}})
# More gated names, for the tricks that need a letter NET_ADMIN does not have (ſ, K).
WIDE = compile_policy({"gate": {"capabilities": ["NET_ADMIN", "NET_RAW", "SYS_ADMIN", "KILL",
                                                 "MKNOD"]}})  # fmt: skip
REQUIRE_MESH = compile_policy({"gate": {"requireMesh": True}})
SA_EXEMPT = compile_policy({"gate": {"exempt": {"serviceAccounts": ["mesh/trusted"]}}})
GLOBS = compile_policy({"exemptNamespaces": ["kube-system", "team-*-sandbox", "sandbox-?"]})
# The enforcing rule lets pods pick `disabled` and never injects pods labelled legacy=true.
POD_CHOICES = compile_policy({
    "namespaces": [{"match": {"selector": {"matchLabels": ENFORCED}}, "mode": "cni",
                    "enforceCNI": True, "allowPodModes": ["disabled"]}],
    "pods": {"neverInjectSelector": [{"matchLabels": {"legacy": "true"}}]},
})  # fmt: skip


# ---------------------------------------------------------------------------------------
# objects and requests, as the API server sends them


def pod(*containers: dict[str, Any], init: list[dict[str, Any]] | None = None,
        ephemeral: list[dict[str, Any]] | None = None, labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None, name: str = "web",
        namespace: str | None = None, **spec: Any) -> dict[str, Any]:  # fmt: skip
    meta: dict[str, Any] = {"name": name, "labels": {"app": "web", **(labels or {})}}
    if annotations is not None:
        meta["annotations"] = annotations
    if namespace is not None:
        meta["namespace"] = namespace
    body: dict[str, Any] = {"containers": list(containers) or [container("app")], **spec}
    if init is not None:
        body["initContainers"] = init
    if ephemeral is not None:
        body["ephemeralContainers"] = ephemeral
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": body}


def net_admin_pod(*add: str, **kw: Any) -> dict[str, Any]:
    return pod(container("app", *(add or ("NET_ADMIN",))), **kw)


def request(obj: Any, *, kind: str = "Pod", group: str = "", version: str = "v1",
            operation: str = "CREATE", namespace: str = "mesh", sub: str | None = None,
            old: Any = None, dry_run: bool = False, resource: str | None = None,
            request_kind: tuple[str, str, str] | None = None) -> dict[str, Any]:  # fmt: skip
    gvk = {"group": group, "version": version, "kind": kind}
    rgroup, rversion, rkind = request_kind or (group, version, kind)
    req: dict[str, Any] = {
        "uid": UID,
        "kind": gvk,
        "resource": {"group": group, "version": version,
                     "resource": resource or kind.lower() + "s"},
        "requestKind": {"group": rgroup, "version": rversion, "kind": rkind},
        "requestResource": {"group": rgroup, "version": rversion,
                            "resource": resource or rkind.lower() + "s"},
        "namespace": namespace,
        "operation": operation,
        "userInfo": {"username": "mallory", "groups": ["system:authenticated"]},
        "object": obj,
        "oldObject": old,
        "dryRun": dry_run,
        "options": {"apiVersion": "meta.k8s.io/v1",
                    "kind": "UpdateOptions" if operation == "UPDATE" else "CreateOptions"},
    }  # fmt: skip
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    if isinstance(meta, dict) and isinstance(meta.get("name"), str):
        req["name"] = meta["name"]
    if sub is not None:
        req["subResource"] = sub
    return req


def review_body(req: dict[str, Any]) -> bytes:
    return orjson.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                         "request": req})  # fmt: skip


# (group, version, kind, where the pod template sits): the seven kinds of SPEC 4
TEMPLATE = ("spec", "template")
CRON_TEMPLATE = ("spec", "jobTemplate", "spec", "template")
WORKLOADS = [
    ("apps", "v1", "Deployment", TEMPLATE),
    ("apps", "v1", "StatefulSet", TEMPLATE),
    ("apps", "v1", "DaemonSet", TEMPLATE),
    ("apps", "v1", "ReplicaSet", TEMPLATE),
    ("", "v1", "ReplicationController", TEMPLATE),
    ("batch", "v1", "Job", TEMPLATE),
    ("batch", "v1", "CronJob", CRON_TEMPLATE),
]
# Older versions of the same kinds, which matchPolicy: Equivalent still routes to meshgate.
OLD_WORKLOADS = [
    ("apps", "v1beta1", "Deployment", TEMPLATE),
    ("apps", "v1beta1", "StatefulSet", TEMPLATE),
    ("apps", "v1beta2", "Deployment", TEMPLATE),
    ("apps", "v1beta2", "StatefulSet", TEMPLATE),
    ("apps", "v1beta2", "DaemonSet", TEMPLATE),
    ("apps", "v1beta2", "ReplicaSet", TEMPLATE),
    ("extensions", "v1beta1", "Deployment", TEMPLATE),
    ("extensions", "v1beta1", "DaemonSet", TEMPLATE),
    ("extensions", "v1beta1", "ReplicaSet", TEMPLATE),
    ("batch", "v1beta1", "CronJob", CRON_TEMPLATE),
    ("batch", "v2alpha1", "CronJob", CRON_TEMPLATE),
]


def template_of(p: dict[str, Any]) -> dict[str, Any]:
    meta = copy.deepcopy(p["metadata"])
    meta.pop("name", None)
    return {"metadata": meta, "spec": copy.deepcopy(p["spec"])}


def workload(kind: str, path: tuple[str, ...], template: Any, group: str = "apps",
             version: str = "v1") -> dict[str, Any]:  # fmt: skip
    obj = helpers.workload(group, version, kind, path, template)
    if kind != "CronJob":
        obj["spec"]["replicas"] = 2
    return obj


def workload_request(group: str, version: str, kind: str, path: tuple[str, ...],
                     template: Any, **kw: Any) -> dict[str, Any]:  # fmt: skip
    obj = workload(kind, path, template, group, version)
    return request(obj, kind=kind, group=group, version=version, **kw)


def ephemeral_request(old: list[dict[str, Any]] | None, new: list[dict[str, Any]], *,
                      legacy: bool = False) -> dict[str, Any]:  # fmt: skip
    """The `pods/ephemeralcontainers` UPDATE (`kubectl debug`): since Kubernetes 1.22 the
    object is the whole Pod; before, an EphemeralContainers object."""
    if legacy:
        def obj(items: list[dict[str, Any]] | None) -> dict[str, Any]:
            return {"apiVersion": "v1", "kind": "EphemeralContainers",
                    "metadata": {"name": "web"}, "ephemeralContainers": items or []}  # fmt: skip
        return request(obj(new), kind="EphemeralContainers", operation="UPDATE",
                       sub="ephemeralcontainers", resource="pods",
                       old=None if old is None else obj(old))  # fmt: skip
    new_pod = pod(container("app"), ephemeral=new)
    old_pod = None if old is None else pod(container("app"), ephemeral=old)
    return request(new_pod, operation="UPDATE", sub="ephemeralcontainers", resource="pods",
                   old=old_pod)  # fmt: skip


# ---------------------------------------------------------------------------------------
# judging


def judge(body: bytes, endpoint: str, policy: Policy) -> dict[str, Any]:
    """The response to one AdmissionReview body, checked for the protocol invariants."""
    outcome = admit(parse_review(body), endpoint, Context(policy, NAMESPACES, OWN_NAMESPACE))
    review = outcome.review
    assert review["apiVersion"] == "admission.k8s.io/v1"
    assert review["kind"] == "AdmissionReview"
    response: dict[str, Any] = review["response"]
    return check_response(response, policy)


def check_response(response: dict[str, Any], policy: Policy) -> dict[str, Any]:
    assert response["uid"] == UID
    assert isinstance(response["allowed"], bool)
    notes = response["auditAnnotations"]
    assert {"decision", "reason", "policy"} <= set(notes)
    assert notes["policy"] == policy.version
    assert ("patch" in response) is ("patchType" in response)
    if not response["allowed"]:
        assert "patch" not in response
        assert isinstance(response["status"]["message"], str) and response["status"]["message"]
    return response


@dataclass(frozen=True)
class Case:
    """One trick. `build` returns the request dict (or a raw AdmissionReview body).

    expect: "deny" → allowed: false, code 403, and the message contains every word of
    `says` (the namespace is always required); "invalid" → allowed: false, code 400, the
    message names the field in `says`; "allow" → allowed: true — only ALLOWED BY DESIGN
    rows, whose `why` gives the documented reason and whose `reason` words must appear in
    the audit reason (what meshgate says it did).
    """

    build: Callable[[], dict[str, Any] | bytes]
    expect: str
    says: tuple[str, ...] = ()
    endpoints: tuple[str, ...] = ("mutate", "validate")
    policy: Policy = DENY
    why: str = ""
    reason: tuple[str, ...] = ()
    check: Callable[[str, dict[str, Any], dict[str, Any]], None] | None = None
    http: bool = False
    namespace: str = "mesh"
    extra: dict[str, Any] = field(default_factory=dict)

    def body(self) -> bytes:
        built = self.build()
        return built if isinstance(built, bytes) else review_body(built)


def verify(case: Case, endpoint: str, response: dict[str, Any], body: bytes) -> None:
    obj = go_decode(body)["request"].get("object")  # what the API server stores
    if case.expect == "allow":
        assert case.why, "an allowed row must say why"
        assert response["allowed"] is True, response.get("status")
        reason = response["auditAnnotations"]["reason"]
        for word in case.reason:
            assert word in reason, (word, reason)
        if "patch" in response:
            assert endpoint == "mutate"
            result = patched(obj, response)
            # meshgate adds, it never takes away what the author wrote
            names = {c["name"] for c in result["spec"]["containers"]}
            assert {c["name"] for c in obj["spec"]["containers"]} <= names
    else:
        assert response["allowed"] is False, response["auditAnnotations"]
        status = response["status"]
        assert status["code"] == (400 if case.expect == "invalid" else 403), status
        text = status["message"]
        if case.expect == "deny":
            assert f'"{case.namespace}"' in text, text
        for word in case.says:
            assert word in text, (word, text)
    if case.check is not None:
        case.check(endpoint, response, obj)


# ---------------------------------------------------------------------------------------
# row builders


def deny(build: Callable[[], Any], *says: str, **kw: Any) -> Case:
    return Case(build, "deny", says, **kw)


def invalid(build: Callable[[], Any], *says: str, **kw: Any) -> Case:
    return Case(build, "invalid", says, **kw)


def allow(build: Callable[[], Any], why: str, *reason: str, **kw: Any) -> Case:
    return Case(build, "allow", why=why, reason=reason, **kw)


def cap_pod(*add: str, **kw: Any) -> Callable[[], dict[str, Any]]:
    return lambda: request(net_admin_pod(*add), **kw)


def spelling(add: str, granted: str = "NET_ADMIN", policy: Policy = DENY,
             http: bool = False) -> Case:  # fmt: skip
    """A container adding `add`, which a runtime grants as `granted`."""
    says = ('container "app"', f"adds {granted}")
    return deny(cap_pod(add), *says, policy=policy, http=http)


def unknown(add: str) -> Case:
    return allow(cap_pod(add), "no container runtime maps this spelling to a capability it "
                 "grants (module docstring); SPEC 4 counts only spellings a runtime grants",
                 "gate pass", endpoints=("validate",))  # fmt: skip


def warns(endpoint: str, response: dict[str, Any], obj: dict[str, Any]) -> None:
    if endpoint == "validate":
        warnings = response.get("warnings") or []
        assert warnings and all(len(w) <= 120 for w in warnings), warnings
        assert any("NET_ADMIN" in w and '"app"' in w for w in warnings), warnings
    else:  # gate warnings come from /validate only; /mutate still injects
        assert not any("NET_ADMIN" in w for w in response.get("warnings") or [])


def audits(endpoint: str, response: dict[str, Any], obj: dict[str, Any]) -> None:
    assert not response.get("warnings")
    if endpoint == "validate":
        assert "NET_ADMIN" in response["auditAnnotations"]["violations"]


def same_without_dry_run(endpoint: str, response: dict[str, Any], obj: dict[str, Any]) -> None:
    wet = judge(review_body(request(obj, dry_run=False)), endpoint, DENY)
    assert wet == response


def injects_nothing(endpoint: str, response: dict[str, Any], obj: dict[str, Any]) -> None:
    assert "patch" not in response


# --- tricks that need more than one request --------------------------------------------


def later_webhook(change: Callable[[dict[str, Any]], None],
                  policy: Policy = DENY) -> Callable[[], dict[str, Any]]:  # fmt: skip
    """meshgate's /mutate injects a clean pod; a mutating webhook that runs after it changes
    the pod (`change`); the result is what /validate sees."""

    def build() -> dict[str, Any]:
        obj = pod(container("app"))
        first = judge(review_body(request(obj)), "mutate", policy)
        assert first["allowed"] is True and "patch" in first
        injected = patched(obj, first)
        change(injected)
        return request(injected)

    return build


def _container_named(p: dict[str, Any], name: str) -> dict[str, Any]:
    for field_name in ("containers", "initContainers"):
        for c in p["spec"].get(field_name) or []:
            if c["name"] == name:
                found: dict[str, Any] = c
                return found
    raise AssertionError(f"no container {name}")


def _add_cap(name: str, cap: str = "NET_ADMIN") -> Callable[[dict[str, Any]], None]:
    def change(p: dict[str, Any]) -> None:
        context = _container_named(p, name).setdefault("securityContext", {})
        caps = context.setdefault("capabilities", {})
        caps["add"] = [*(caps.get("add") or []), cap]
    return change


def _privileged(name: str) -> Callable[[dict[str, Any]], None]:
    def change(p: dict[str, Any]) -> None:
        _container_named(p, name).setdefault("securityContext", {})["privileged"] = True
    return change


def _annotate(key: str, value: str | None) -> Callable[[dict[str, Any]], None]:
    def change(p: dict[str, Any]) -> None:
        if value is None:
            p["metadata"]["annotations"].pop(key, None)
        else:
            p["metadata"]["annotations"][key] = value
    return change


def _add_istio_init(p: dict[str, Any]) -> None:
    p["spec"]["initContainers"].insert(0, container("istio-init", "NET_ADMIN", "NET_RAW"))


# --- duplicate JSON keys ---------------------------------------------------------------


def raw_pod_body(container_json: str, namespace_json: str = '"namespace":"mesh"') -> bytes:
    """A review whose object is written by hand (so it can repeat a key)."""
    text = (
        '{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{'
        f'"uid":"{UID}","kind":{{"group":"","version":"v1","kind":"Pod"}},'
        '"resource":{"group":"","version":"v1","resource":"pods"},'
        f'"operation":"CREATE",{namespace_json},"name":"web",'
        '"object":{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web"},'
        f'"spec":{{"containers":[{container_json}]}}}}}}}}'
    )
    return text.encode()


def go_decode(text: bytes | str) -> Any:
    """JSON read the way the API server fills its typed objects (Go's encoding/json, and
    sigs.k8s.io/json, its case-sensitive fork): when a key repeats, an object value is
    decoded into the value the first occurrence made (struct fields, pointers and maps are
    reused, so the two merge), and anything else replaces it (a slice is reset, a scalar
    overwritten). Strict field validation rejects the duplicate instead; Warn and Ignore
    store the merged object."""

    def merge(first: Any, second: Any) -> Any:
        if isinstance(first, dict) and isinstance(second, dict):
            out = dict(first)
            for key, value in second.items():
                out[key] = merge(out[key], value) if key in out else value
            return out
        return second

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for key, value in items:
            obj[key] = merge(obj[key], value) if key in obj else value
        return obj

    return json.loads(text, object_pairs_hook=pairs)


def same_as_stored(endpoint: str, response: dict[str, Any], obj: Any) -> None:
    """For a repeated scalar or list, Go keeps the last value, and so does orjson: meshgate's
    answer to the raw body is its answer to the object the API server stores (`obj`, read by
    go_decode). (The API server never forwards a raw body anyway: webhooks get the object it
    decoded, re-encoded without duplicates.)"""
    stored = judge(review_body(request(obj)), endpoint, DENY)
    assert stored["allowed"] is response["allowed"]
    assert stored.get("status") == response.get("status")


def as_the_api_server_sends(container_json: str) -> Callable[[], dict[str, Any]]:
    """The review for a pod created with this hand-written container: the API server decodes
    the body (merging repeated objects) and sends the webhook that object, re-encoded."""
    return lambda: go_decode(raw_pod_body(container_json))["request"]


# --- workload updates ------------------------------------------------------------------


def _deployment_update(new_template: dict[str, Any],
                       old_template: dict[str, Any]) -> Callable[[], dict[str, Any]]:  # fmt: skip
    def build() -> dict[str, Any]:
        old = workload("Deployment", TEMPLATE, old_template)
        new = workload("Deployment", TEMPLATE, new_template)
        new["spec"]["replicas"] = 5  # a scale-up, as `kubectl apply` of a new manifest does
        new["metadata"]["resourceVersion"] = "2"
        return request(new, kind="Deployment", group="apps", operation="UPDATE", old=old)
    return build


def _relabelled(t: dict[str, Any], **labels: str) -> dict[str, Any]:
    t = copy.deepcopy(t)
    t["metadata"]["labels"].update(labels)
    return t


def _reannotated(t: dict[str, Any], **annotations: str) -> dict[str, Any]:
    t = copy.deepcopy(t)
    t["metadata"].setdefault("annotations", {}).update(annotations)
    return t


NET_ADMIN_TEMPLATE = template_of(net_admin_pod())
CLEAN_TEMPLATE = template_of(pod(container("app")))


# ---------------------------------------------------------------------------------------
# the catalogue

ON_VALIDATE = {"endpoints": ("validate",)}
NS_SAYS = ('container "app"', "adds NET_ADMIN")

CASES = [
    # --- capability spellings (SPEC 4) ---------------------------------------------------
    pytest.param(spelling("NET_ADMIN", http=True), id="plain-NET_ADMIN"),
    pytest.param(spelling("net_admin"), id="lower-case"),
    pytest.param(spelling("Net_Admin"), id="title-case"),
    pytest.param(spelling("nEt_aDmIn"), id="alternating-case"),
    pytest.param(spelling("CAP_NET_ADMIN"), id="CAP_-prefix"),
    pytest.param(spelling("cap_net_admin"), id="cap_-prefix-lower"),
    pytest.param(spelling("Cap_Net_Admin"), id="Cap_-prefix-title"),
    pytest.param(spelling("cAP_NET_ADMIN"), id="cAP_-prefix-mixed"),
    pytest.param(spelling(" NET_ADMIN"), id="leading-space"),
    pytest.param(spelling("NET_ADMIN "), id="trailing-space"),
    pytest.param(spelling("\tNET_ADMIN\t"), id="tabs"),
    pytest.param(spelling("\nNET_ADMIN\n"), id="newlines"),
    pytest.param(spelling("\r\nNET_ADMIN\r\n"), id="crlf"),
    pytest.param(spelling("\x0bNET_ADMIN\x0c"), id="vertical-tab-form-feed"),
    pytest.param(spelling("\u00a0NET_ADMIN\u00a0"), id="nbsp"),
    pytest.param(spelling("\u2003NET_ADMIN\u2009"), id="em-space-thin-space"),
    pytest.param(spelling("NET_ADMIN\u3000"), id="ideographic-space"),
    pytest.param(spelling("\u2028NET_ADMIN\u2029"), id="line-paragraph-separators"),
    pytest.param(spelling("\u0085NET_ADMIN"), id="next-line-NEL"),
    pytest.param(spelling("\u202fNET_ADMIN\u205f"), id="narrow-nbsp-math-space"),
    pytest.param(spelling(" \t CAP_NET_ADMIN \n "), id="whitespace-and-CAP_-prefix"),
    pytest.param(spelling("net_adm\u0131n", http=True), id="dotless-i"),
    pytest.param(spelling("NET_ADM\u0131N"), id="dotless-i-upper-rest"),
    pytest.param(spelling("cap_net_adm\u0131n"), id="dotless-i-with-cap_-prefix"),
    pytest.param(spelling("\u00a0Cap_Net_Adm\u0131n\u3000"), id="dotless-i-prefix-unicode-spaces"),
    pytest.param(spelling("\u017fys_admin", "SYS_ADMIN", WIDE), id="long-s-SYS_ADMIN"),
    pytest.param(spelling("cap_\u017fy\u017f_admin", "SYS_ADMIN", WIDE), id="long-s-twice-cap_"),
    pytest.param(spelling("\u212aILL", "KILL", WIDE), id="kelvin-sign-KILL"),
    pytest.param(spelling("m\u212anod", "MKNOD", WIDE), id="kelvin-sign-MKNOD"),
    pytest.param(spelling("net_raw", "NET_RAW", WIDE), id="NET_RAW-when-listed"),
    pytest.param(deny(cap_pod("CHOWN", "SETUID", "NET_ADMIN"), *NS_SAYS),
                 id="hidden-among-harmless-capabilities"),
    pytest.param(deny(cap_pod("NET_ADMIN", "net_admin", "CAP_NET_ADMIN"), *NS_SAYS),
                 id="three-spellings-at-once"),
    pytest.param(deny(lambda: request(pod(container("app", context={"capabilities": {
        "drop": ["NET_ADMIN"], "add": ["NET_ADMIN"]}}))), *NS_SAYS),
                 id="added-and-dropped"),  # SPEC 4: drop never counts
    pytest.param(deny(lambda: request(pod(container("app", context={"capabilities": {
        "drop": ["ALL"], "add": ["NET_ADMIN"]}}))), *NS_SAYS),
                 id="drop-ALL-then-add"),
    pytest.param(unknown("\uff2e\uff25\uff34\uff3f\uff21\uff24\uff2d\uff29\uff2e"),
                 id="fullwidth-letters-ALLOWED-BY-DESIGN"),
    pytest.param(unknown("NET_ADM\u0130N"), id="turkish-dotted-I-ALLOWED-BY-DESIGN"),
    pytest.param(unknown("NET_\u200bADMIN"), id="zero-width-space-inside-ALLOWED-BY-DESIGN"),
    pytest.param(unknown("\ufeffNET_ADMIN"), id="byte-order-mark-ALLOWED-BY-DESIGN"),
    pytest.param(unknown("CAP_CAP_NET_ADMIN"), id="double-CAP_-prefix-ALLOWED-BY-DESIGN"),
    pytest.param(unknown("NET-ADMIN"), id="hyphen-for-underscore-ALLOWED-BY-DESIGN"),
    pytest.param(unknown("NET_\u0410DMIN"), id="cyrillic-A-homoglyph-ALLOWED-BY-DESIGN"),
    # --- ALL and privileged --------------------------------------------------------------
    pytest.param(deny(cap_pod("ALL"), 'container "app"', "adds ALL", http=True), id="ALL"),
    pytest.param(deny(cap_pod("all"), "adds ALL"), id="all-lower-case"),
    pytest.param(deny(cap_pod("aLl"), "adds ALL"), id="all-mixed-case"),
    pytest.param(deny(cap_pod("\u00a0all\t"), "adds ALL"), id="all-with-whitespace"),
    pytest.param(deny(cap_pod("CAP_ALL"), "adds ALL"), id="CAP_ALL"),
    pytest.param(deny(cap_pod("cap_all"), "adds ALL"), id="cap_all-lower"),
    pytest.param(deny(cap_pod("CHOWN", "ALL"), "adds ALL"), id="ALL-after-harmless"),
    pytest.param(deny(lambda: request(pod(container("app", privileged=True))),
                      'container "app"', "privileged", http=True), id="privileged-true"),
    pytest.param(deny(lambda: request(pod(container("app", context={
        "privileged": True, "capabilities": {"drop": ["ALL"]}}))), "privileged"),
                 id="privileged-with-drop-ALL"),
    pytest.param(deny(lambda: request(pod(container("app"), init=[
        container("setup", privileged=True)])), 'initContainer "setup"', "privileged"),
                 id="privileged-init-container"),
    pytest.param(deny(lambda: request(pod(container("app", "NET_ADMIN", privileged=False))),
                      *NS_SAYS), id="privileged-false-but-NET_ADMIN"),
    pytest.param(invalid(lambda: request(pod(container("app", privileged="true"))),
                         "privileged must be a boolean"), id="privileged-string-true-invalid"),
    pytest.param(invalid(lambda: request(pod(container("app", privileged=1))),
                         "privileged must be a boolean"), id="privileged-one-invalid"),
    # --- where the container sits --------------------------------------------------------
    pytest.param(deny(lambda: request(pod(container("app"), init=[
        container("setup", "NET_ADMIN")])), 'initContainer "setup"', "adds NET_ADMIN"),
        id="init-container"),
    pytest.param(deny(lambda: request(pod(container("app"), init=[container(
        "sidecar", "NET_ADMIN", restartPolicy="Always")])), 'initContainer "sidecar"'),
                 id="native-sidecar-init-container"),
    pytest.param(deny(lambda: request(pod(container("app"), ephemeral=[container(
        "debug", "NET_ADMIN")])), 'ephemeralContainer "debug"'),
                 id="ephemeral-container-in-pod-create"),
    pytest.param(deny(lambda: request(pod(container("a"), container("b"), container(
        "c", "NET_ADMIN"))), 'container "c"'), id="third-of-three-containers"),
    pytest.param(deny(lambda: request(pod(container("app", "NET_ADMIN"), init=[container(
        "setup", "cap_net_admin")], ephemeral=[container("debug", privileged=True)])),
        'container "app"', 'initContainer "setup"', 'ephemeralContainer "debug"'),
                 id="every-list-at-once-all-named"),
    pytest.param(deny(lambda: request(pod(container("app", "NET_ADMIN"), hostNetwork=True)),
                      *NS_SAYS), id="hostNetwork-with-NET_ADMIN"),
    pytest.param(deny(lambda: request(pod(container("app", "NET_ADMIN"), hostUsers=False)),
                      *NS_SAYS), id="user-namespace-hostUsers-false"),
    pytest.param(allow(lambda: request(pod(container("app"), securityContext={
        "capabilities": {"add": ["NET_ADMIN"]}, "privileged": True, "runAsUser": 0})),
        "PodSecurityContext has no capabilities and no privileged field: the API server "
        "drops (or, with strict field validation, rejects) them, so nothing is granted",
        "pass", endpoints=("validate",)), id="pod-level-securityContext-ALLOWED-BY-DESIGN"),
    pytest.param(allow(lambda: request(pod(container("app", context={"capabilities": {
        "add": None}}))), "add: null adds nothing (the API server stores no add list)",
        "pass", endpoints=("validate",)), id="add-null-ALLOWED-BY-DESIGN"),
    # --- malformed capability fields: refused, never allowed (SPEC 5) --------------------
    pytest.param(invalid(lambda: request(pod(container("app", context={"capabilities": {
        "add": "NET_ADMIN"}}))), "capabilities.add must be a list of strings"),
        id="add-as-a-string-invalid"),
    pytest.param(invalid(lambda: request(pod(container("app", context={"capabilities": {
        "add": [["NET_ADMIN"]]}}))), "capabilities.add must be a list of strings"),
        id="add-nested-list-invalid"),
    pytest.param(invalid(lambda: request(pod(container("app", context={"capabilities": {
        "add": [None, "NET_ADMIN"]}}))), "capabilities.add"), id="add-with-null-item-invalid"),
    pytest.param(invalid(lambda: request(pod(container("app", context={"capabilities": {
        "add": {"NET_ADMIN": True}}}))), "capabilities.add"), id="add-as-a-map-invalid"),
    pytest.param(invalid(lambda: request(pod(container("app", context={"capabilities": {
        "add": [7]}}))), "capabilities.add"), id="add-number-item-invalid"),
    pytest.param(invalid(lambda: request(pod(container("app", context={
        "capabilities": ["NET_ADMIN"]}))), "capabilities must be an object"),
        id="capabilities-as-a-list-invalid"),
    pytest.param(invalid(lambda: request(pod(container("app", context="privileged"))),
                         "securityContext must be an object"), id="securityContext-string-invalid"),
    pytest.param(invalid(lambda: request({"metadata": {"name": "web"}, "spec": {
        "containers": {"app": container("app", "NET_ADMIN")}}}), "spec.containers must be a list"),
        id="containers-as-a-map-invalid"),
    pytest.param(invalid(lambda: request(pod({"image": "x", "securityContext": {
        "capabilities": {"add": ["NET_ADMIN"]}}})), "containers[0].name"),
        id="nameless-container-invalid"),
    pytest.param(invalid(lambda: request(pod(container("app", "NET_ADMIN"), hostNetwork="true")),
                         "hostNetwork must be a boolean"), id="hostNetwork-string-invalid"),
    # --- labels, annotations, names and images never exempt (SPEC 4) ---------------------
    pytest.param(deny(lambda: request(net_admin_pod(labels={"sidecar.istio.io/inject": "false"})),
                      *NS_SAYS), id="opt-out-label"),
    pytest.param(deny(lambda: request(net_admin_pod(annotations={
        "sidecar.istio.io/inject": "false"})), *NS_SAYS), id="opt-out-annotation"),
    pytest.param(deny(lambda: request(net_admin_pod(labels={"sidecar.istio.io/inject": "maybe"})),
                      *NS_SAYS), id="invalid-inject-label"),
    pytest.param(deny(lambda: request(net_admin_pod(labels={"meshgate.io/mode": "disabled"})),
                      *NS_SAYS), id="mode-label-disabled-not-allowed"),
    pytest.param(deny(lambda: request(net_admin_pod(labels={"meshgate.io/mode": "init"})),
                      *NS_SAYS), id="mode-label-init-not-allowed"),
    pytest.param(deny(lambda: request(net_admin_pod(labels={"meshgate.io/mode": "disabled"})),
                      *NS_SAYS, policy=POD_CHOICES), id="mode-label-disabled-allowed-by-rule"),
    pytest.param(deny(lambda: request(net_admin_pod(labels={"legacy": "true"})), *NS_SAYS,
                      policy=POD_CHOICES), id="matches-neverInjectSelector"),
    pytest.param(deny(lambda: request(net_admin_pod(annotations={
        "meshgate.io/injected": f"cni@{DENY.version}"})), *NS_SAYS),
        id="forged-meshgate-injected-annotation"),
    pytest.param(deny(lambda: request(net_admin_pod(annotations={"meshgate.io/exempt": "true",
                                                                 "meshgate.io/gate": "off"})),
                      *NS_SAYS), id="made-up-meshgate-annotations"),
    pytest.param(deny(lambda: request(net_admin_pod(annotations={
        "kubernetes.io/config.mirror": "abc"})), *NS_SAYS), id="mirror-pod-annotation"),
    pytest.param(deny(lambda: request(net_admin_pod(annotations={
        STATUS: ISTIO_STATUS, MULTUS: "istio-cni"})), *NS_SAYS),
        id="hand-written-status-already-injected-look"),
    pytest.param(deny(lambda: request(pod(container("app"), container("istio-proxy", "NET_ADMIN"))),
                      'container "istio-proxy"', "adds NET_ADMIN"),
                 id="container-named-istio-proxy"),
    pytest.param(deny(lambda: request(pod(container("app"), init=[container(
        "istio-init", "NET_ADMIN", "NET_RAW")])), 'initContainer "istio-init"', "NET_ADMIN"),
        id="init-container-named-istio-init"),
    pytest.param(deny(lambda: request(pod(container("app"), init=[container(
        "istio-validation", "NET_ADMIN")])), 'initContainer "istio-validation"'),
        id="init-container-named-istio-validation"),
    pytest.param(deny(lambda: request(pod(container("app", "NET_ADMIN",
                                                    image="docker.io/istio/proxyv2:1.22.0"))),
                      *NS_SAYS), id="istio-proxyv2-image"),
    pytest.param(deny(lambda: request(pod(container("istio-proxy", "NET_ADMIN", image="auto"),
                                          labels={"istio": "ingressgateway"},
                                          name="istio-ingressgateway-7d9f")),
                      'container "istio-proxy"'), id="gateway-shaped-pod"),
    pytest.param(deny(lambda: request(pod(container("app", "NET_ADMIN", image="gcr.io/"
                                                    "linkerd-io/proxy-init:v2"),
                                          annotations={"linkerd.io/inject": "disabled"})),
                      *NS_SAYS), id="linkerd-look-alike"),
    # --- traffic capture (SPEC 2, 4) -----------------------------------------------------
    pytest.param(deny(lambda: request(pod(container("app"), annotations={
        INTERCEPTION: "TPROXY"})), f"{INTERCEPTION}: TPROXY"), id="interceptionMode-TPROXY"),
    pytest.param(deny(lambda: request(pod(container("app"), annotations={
        INTERCEPTION: "NONE"})), f"{INTERCEPTION}: NONE"), id="interceptionMode-NONE"),
    pytest.param(deny(lambda: request(pod(container("app"), annotations={
        INTERCEPTION: "NONE"}, labels={"sidecar.istio.io/inject": "false"})),
        f"{INTERCEPTION}: NONE"), id="interceptionMode-NONE-and-opt-out"),
    pytest.param(deny(lambda: request(pod(container("app"), annotations={
        INTERCEPTION: "tproxy"})), INTERCEPTION, "not one of", policy=AUDIT),
        id="interceptionMode-lower-case-invalid"),
    pytest.param(deny(lambda: request(pod(container("app"), annotations={
        "traffic.sidecar.istio.io/excludeInboundPorts": "15000-15100"})),
        "traffic.sidecar.istio.io/excludeInboundPorts", policy=AUDIT),
        id="plugin-rejects-port-range-even-in-audit"),
    pytest.param(deny(lambda: request(pod(container("app"), annotations={
        "traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.0.0.0/8, 10.1.0.0/16"})),
        "traffic.sidecar.istio.io/excludeOutboundIPRanges", policy=AUDIT),
        id="plugin-rejects-cidr-with-space"),
    pytest.param(deny(lambda: request(pod(container("app"), annotations={
        STATUS: ISTIO_STATUS, MULTUS: "istio-cni",
        "traffic.sidecar.istio.io/includeInboundPorts": "http"})),
        "traffic.sidecar.istio.io/includeInboundPorts", policy=AUDIT),
        id="plugin-rejects-annotation-on-already-injected-pod"),
    pytest.param(deny(lambda: request(pod(container("app"), labels={
        "sidecar.istio.io/inject": "true"}, annotations={"sidecar.istio.io/inject": "False"})),
        "sidecar.istio.io/inject", policy=AUDIT), id="plugin-skips-inject-annotation-False"),
    pytest.param(deny(lambda: request(pod(container("app"), annotations={MULTUS: "[not json"})),
                      MULTUS, policy=AUDIT), id="unparseable-multus-annotation"),
    # --- namespaces (SPEC 2, 4) ----------------------------------------------------------
    pytest.param(allow(cap_pod(namespace="kube-system"), "exemptNamespaces (SPEC 2): no "
                       "mutation, no gate; the webhook configurations do not even call "
                       "meshgate there", "exempt", namespace="kube-system"),
                 id="kube-system-exempt-ALLOWED-BY-DESIGN"),
    pytest.param(allow(cap_pod(namespace=OWN_NAMESPACE), "the webhook's own namespace is "
                       "always exempt (SPEC 2)", "exempt", namespace=OWN_NAMESPACE),
                 id="own-namespace-exempt-ALLOWED-BY-DESIGN"),
    pytest.param(deny(cap_pod(namespace="kube-system-x"), *NS_SAYS, namespace="kube-system-x",
                      http=True), id="namespace-kube-system-x"),
    pytest.param(deny(cap_pod(namespace="kube-system "), *NS_SAYS, namespace="kube-system "),
                 id="namespace-kube-system-trailing-space"),
    pytest.param(deny(cap_pod(namespace=" kube-system"), *NS_SAYS, namespace=" kube-system"),
                 id="namespace-kube-system-leading-space"),
    pytest.param(deny(cap_pod(namespace="kube-system\n"), *NS_SAYS, namespace="kube-system\n"),
                 id="namespace-kube-system-trailing-newline"),
    pytest.param(deny(cap_pod(namespace="Kube-System"), *NS_SAYS, namespace="Kube-System"),
                 id="namespace-Kube-System-case"),
    pytest.param(deny(cap_pod(namespace="x-kube-system"), *NS_SAYS, namespace="x-kube-system"),
                 id="namespace-x-kube-system"),
    pytest.param(deny(cap_pod(namespace="kube\u2010system"), *NS_SAYS,
                      namespace="kube\u2010system"), id="namespace-unicode-hyphen"),
    pytest.param(deny(cap_pod(namespace="meshgate-system-x"), *NS_SAYS,
                      namespace="meshgate-system-x"), id="namespace-meshgate-system-x"),
    pytest.param(deny(cap_pod(namespace="istio-system2"), *NS_SAYS, namespace="istio-system2"),
                 id="namespace-istio-system2"),
    pytest.param(allow(cap_pod(namespace="team-a-sandbox"), "matches the exemptNamespaces "
                       "glob team-*-sandbox", "exempt", policy=GLOBS,
                       namespace="team-a-sandbox"), id="exempt-glob-match-ALLOWED-BY-DESIGN"),
    pytest.param(deny(cap_pod(namespace="team-a-sandbox-prod"), *NS_SAYS, policy=GLOBS,
                      namespace="team-a-sandbox-prod"), id="exempt-glob-whole-name-only"),
    pytest.param(deny(cap_pod(namespace="Team-a-sandbox"), *NS_SAYS, policy=GLOBS,
                      namespace="Team-a-sandbox"), id="exempt-glob-case-sensitive"),
    pytest.param(deny(cap_pod(namespace="sandbox-10"), *NS_SAYS, policy=GLOBS,
                      namespace="sandbox-10"), id="exempt-glob-question-mark-one-char"),
    pytest.param(deny(cap_pod(namespace="kube-system/x"), *NS_SAYS, policy=GLOBS,
                      namespace="kube-system/x"), id="exempt-glob-slash-suffix"),
    pytest.param(deny(lambda: request(net_admin_pod(namespace="kube-system")), *NS_SAYS),
                 id="object-claims-kube-system-request-says-mesh"),
    pytest.param(deny(lambda: request(net_admin_pod(namespace=OWN_NAMESPACE)), *NS_SAYS),
                 id="object-claims-own-namespace-request-says-mesh"),
    pytest.param(deny(cap_pod(namespace="ghost-ns"), *NS_SAYS, "could not be read",
                      namespace="ghost-ns"),
                 id="unreadable-namespace-strictest-rule"),
    pytest.param(deny(lambda: workload_request("apps", "v1", "Deployment", TEMPLATE,
                                               NET_ADMIN_TEMPLATE, namespace="ghost-ns"),
                      *NS_SAYS, "could not be read", namespace="ghost-ns", **ON_VALIDATE),
                 id="unreadable-namespace-workload"),
    pytest.param(deny(lambda: ephemeral_request([], [container("debug", "NET_ADMIN")])
                      | {"namespace": "ghost-ns"}, "could not be read", namespace="ghost-ns",
                      **ON_VALIDATE), id="unreadable-namespace-ephemeral"),
    pytest.param(allow(lambda: request(pod(container("app")), namespace="ghost-ns"),
                       "only pods that violate are refused when the namespace cannot be "
                       "read (SPEC 4); nothing is injected", check=injects_nothing,
                       namespace="ghost-ns"),
                 id="unreadable-namespace-clean-pod-ALLOWED-BY-DESIGN"),
    # --- service accounts (SPEC 4) -------------------------------------------------------
    pytest.param(allow(lambda: request(net_admin_pod(serviceAccountName="trusted")),
                       "gate.exempt.serviceAccounts lists mesh/trusted (trusted authors only; "
                       "README)", "exempt", policy=SA_EXEMPT, endpoints=("validate",)),
                 id="exempt-service-account-ALLOWED-BY-DESIGN"),
    pytest.param(deny(lambda: request(net_admin_pod(serviceAccountName="mallory",
                                                    serviceAccount="trusted")),
                      *NS_SAYS, policy=SA_EXEMPT), id="deprecated-serviceAccount-disagrees"),
    pytest.param(allow(lambda: request(net_admin_pod(serviceAccountName="",
                                                     serviceAccount="trusted")),
                       "an empty serviceAccountName takes the deprecated serviceAccount, as "
                       "the API server's conversion does: the pod runs as mesh/trusted",
                       "exempt", policy=SA_EXEMPT, endpoints=("validate",)),
                 id="deprecated-serviceAccount-only-ALLOWED-BY-DESIGN"),
    pytest.param(deny(lambda: request(net_admin_pod(serviceAccountName="trusted"),
                                      namespace="mesh2"), *NS_SAYS, policy=SA_EXEMPT,
                      namespace="mesh2"), id="exempt-account-name-in-another-namespace"),
    pytest.param(deny(lambda: request(net_admin_pod(serviceAccountName="Trusted")), *NS_SAYS,
                      policy=SA_EXEMPT), id="exempt-account-name-case"),
    pytest.param(deny(lambda: request(net_admin_pod(serviceAccountName="trusted ")), *NS_SAYS,
                      policy=SA_EXEMPT), id="exempt-account-name-trailing-space"),
    pytest.param(deny(lambda: request(net_admin_pod(serviceAccountName="mesh/trusted")),
                      *NS_SAYS, policy=SA_EXEMPT), id="exempt-account-qualified-name"),
    pytest.param(invalid(lambda: request(net_admin_pod(serviceAccountName=["trusted"])),
                         "serviceAccountName must be a string", policy=SA_EXEMPT),
                 id="serviceAccountName-list-invalid"),
    # --- gate actions (SPEC 4) -----------------------------------------------------------
    pytest.param(allow(cap_pod(), "gate action warn: allowed with one warning per violation "
                       "from /validate", policy=WARN, check=warns),
                 id="warn-mode-ALLOWED-BY-DESIGN"),
    pytest.param(allow(cap_pod(), "gate action audit: allowed, recorded in auditAnnotations "
                       "and metrics", policy=AUDIT, check=audits),
                 id="audit-mode-ALLOWED-BY-DESIGN"),
    pytest.param(deny(cap_pod(dry_run=True), *NS_SAYS, check=same_without_dry_run),
                 id="dry-run"),
    # --- the pods/ephemeralcontainers update (SPEC 4) ------------------------------------
    pytest.param(deny(lambda: ephemeral_request([], [container("debug", "NET_ADMIN")]),
                      'ephemeralContainer "debug"', "adds NET_ADMIN", http=True, **ON_VALIDATE),
                 id="kubectl-debug-ephemeral-NET_ADMIN"),
    pytest.param(deny(lambda: ephemeral_request([], [container("debug", "NET_ADMIN", "NET_RAW",
                                                               "SYS_PTRACE")]),
                      'ephemeralContainer "debug"', **ON_VALIDATE),
                 id="kubectl-debug-profile-netadmin"),
    pytest.param(deny(lambda: ephemeral_request([], [container("debug", privileged=True)]),
                      'ephemeralContainer "debug"', "privileged", **ON_VALIDATE),
                 id="kubectl-debug-profile-sysadmin-privileged"),
    pytest.param(deny(lambda: ephemeral_request([container("old")], [
        container("old"), container("debug2", "cap_net_adm\u0131n")]),
        'ephemeralContainer "debug2"', **ON_VALIDATE), id="second-debug-container"),
    pytest.param(deny(lambda: ephemeral_request(None, [container("debug", "NET_ADMIN")]),
                      'ephemeralContainer "debug"', **ON_VALIDATE),
                 id="ephemeral-update-without-oldObject"),
    pytest.param(deny(lambda: ephemeral_request([], [container("debug", "NET_ADMIN")],
                                                legacy=True),
                      'ephemeralContainer "debug"', **ON_VALIDATE),
                 id="pre-1.22-EphemeralContainers-kind"),
    pytest.param(allow(lambda: ephemeral_request([container("debug")], [
        container("debug", "NET_ADMIN")]), "an existing ephemeral container cannot be "
        "changed: the API server's own validation (\"existing ephemeral containers may not "
        "be changed\") refuses the update before validating webhooks run; meshgate judges "
        "only containers new in this request (SPEC 4)", "new ephemeral containers []",
        **ON_VALIDATE), id="ephemeral-changed-in-place-ALLOWED-BY-DESIGN"),
    pytest.param(allow(lambda: request(net_admin_pod(), operation="UPDATE", old=pod(
        container("app"))), "a pod UPDATE cannot change securityContext (the pod spec is "
        "immutable but for images, tolerations and deadlines); it is not routed to meshgate",
        "not handled", **ON_VALIDATE), id="pod-update-ALLOWED-BY-DESIGN"),
    # --- workload templates (SPEC 4) -----------------------------------------------------
    *[pytest.param(deny(lambda w=w: workload_request(*w, NET_ADMIN_TEMPLATE), *NS_SAYS,
                        http=w[2] == "CronJob", **ON_VALIDATE), id=f"template-{w[2]}")
      for w in WORKLOADS],
    *[pytest.param(deny(lambda w=w: workload_request(*w, NET_ADMIN_TEMPLATE), *NS_SAYS,
                        **ON_VALIDATE), id=f"template-{w[0]}-{w[1]}-{w[2]}")
      for w in OLD_WORKLOADS],
    pytest.param(deny(lambda: workload_request("apps", "v1", "Deployment", TEMPLATE,
                                               NET_ADMIN_TEMPLATE,
                                               request_kind=("extensions", "v1beta1",
                                                             "Deployment")),
                      *NS_SAYS, **ON_VALIDATE), id="template-converted-from-extensions-v1beta1"),
    pytest.param(deny(lambda: workload_request("batch", "v1", "CronJob", CRON_TEMPLATE,
                                               template_of(pod(container("app"), init=[
                                                   container("setup", privileged=True)]))),
                      'initContainer "setup"', "privileged", **ON_VALIDATE),
                 id="template-CronJob-privileged-init"),
    pytest.param(deny(lambda: workload_request("apps", "v1", "Deployment", TEMPLATE,
                                               template_of(net_admin_pod(labels={
                                                   "sidecar.istio.io/inject": "false"}))),
                      *NS_SAYS, **ON_VALIDATE), id="template-with-opt-out-label"),
    pytest.param(invalid(lambda: request({"apiVersion": "batch/v1", "kind": "CronJob",
                                          "metadata": {"name": "web"},
                                          "spec": {"template": NET_ADMIN_TEMPLATE}},
                                         kind="CronJob", group="batch"),
                         "object.spec.jobTemplate", **ON_VALIDATE),
                 id="CronJob-template-at-Deployment-path-invalid"),
    pytest.param(invalid(lambda: request({"apiVersion": "apps/v1", "kind": "Deployment",
                                          "metadata": {"name": "web"},
                                          "spec": {"template": [NET_ADMIN_TEMPLATE]}},
                                         kind="Deployment", group="apps"),
                         "object.spec.template must be an object", **ON_VALIDATE),
                 id="template-as-a-list-invalid"),
    pytest.param(allow(_deployment_update(NET_ADMIN_TEMPLATE, NET_ADMIN_TEMPLATE),
                       "an UPDATE that leaves the template as it was is allowed: its pods are "
                       "gated when they are created (SPEC 4)", "template unchanged",
                       **ON_VALIDATE), id="workload-update-template-unchanged-ALLOWED-BY-DESIGN"),
    pytest.param(deny(_deployment_update(_relabelled(NET_ADMIN_TEMPLATE, rollout="2"),
                                         NET_ADMIN_TEMPLATE), *NS_SAYS, **ON_VALIDATE),
                 id="workload-update-changes-only-a-template-label"),
    pytest.param(deny(_deployment_update(_reannotated(NET_ADMIN_TEMPLATE,
                                                      **{"kubectl.kubernetes.io/restartedAt":
                                                         "2024-01-01T00:00:00Z"}),
                                         NET_ADMIN_TEMPLATE), *NS_SAYS, **ON_VALIDATE),
                 id="workload-rollout-restart-annotation"),
    pytest.param(deny(_deployment_update(NET_ADMIN_TEMPLATE, CLEAN_TEMPLATE), *NS_SAYS,
                      **ON_VALIDATE), id="workload-update-adds-NET_ADMIN"),
    pytest.param(deny(lambda: _deployment_update(NET_ADMIN_TEMPLATE, CLEAN_TEMPLATE)()
                      | {"oldObject": None}, *NS_SAYS, **ON_VALIDATE),
                 id="workload-update-without-oldObject"),
    pytest.param(allow(lambda: request({"apiVersion": "apps.openshift.io/v1",
                                        "kind": "DeploymentConfig", "metadata": {"name": "web"},
                                        "spec": {"template": NET_ADMIN_TEMPLATE}},
                                       kind="DeploymentConfig", group="apps.openshift.io"),
                       "not one of the seven kinds: its pods are judged when they are "
                       "created (pod CREATE is always gated)", "not handled", **ON_VALIDATE),
                 id="other-workload-kind-DeploymentConfig-ALLOWED-BY-DESIGN"),
    # --- a later mutating webhook (SPEC 4: /validate is authoritative) -------------------
    pytest.param(deny(later_webhook(_add_cap("app")), *NS_SAYS, http=True, **ON_VALIDATE),
                 id="later-webhook-adds-NET_ADMIN-to-app"),
    pytest.param(deny(later_webhook(_privileged("istio-proxy")), 'container "istio-proxy"',
                      "privileged", **ON_VALIDATE), id="later-webhook-privileges-istio-proxy"),
    pytest.param(deny(later_webhook(_add_cap("istio-validation", "ALL")),
                      'initContainer "istio-validation"', "adds ALL", **ON_VALIDATE),
                 id="later-webhook-adds-ALL-to-istio-validation"),
    pytest.param(deny(later_webhook(_add_istio_init), 'initContainer "istio-init"',
                      **ON_VALIDATE), id="later-webhook-adds-istio-init"),
    pytest.param(deny(later_webhook(_annotate(INTERCEPTION, "NONE")), f"{INTERCEPTION}: NONE",
                      **ON_VALIDATE), id="later-webhook-sets-interceptionMode-NONE"),
    pytest.param(deny(later_webhook(_annotate(MULTUS, None), REQUIRE_MESH), MULTUS,
                      policy=REQUIRE_MESH, **ON_VALIDATE),
                 id="later-webhook-drops-mesh-network-requireMesh"),
    # --- duplicate and miscased JSON keys ------------------------------------------------
    pytest.param(deny(lambda: raw_pod_body(
        '{"name":"app","securityContext":{"capabilities":{"add":[],"add":["NET_ADMIN"]}}}'),
        *NS_SAYS, check=same_as_stored, http=True), id="duplicate-add-key-last-wins"),
    pytest.param(allow(lambda: raw_pod_body(
        '{"name":"app","securityContext":{"capabilities":{"add":["NET_ADMIN"],"add":[]}}}'),
        "the API server keeps the last of duplicate keys too, so the stored pod adds "
        "nothing; meshgate judges that same object", "pass", check=same_as_stored,
        endpoints=("validate",)), id="duplicate-add-key-first-ALLOWED-BY-DESIGN"),
    pytest.param(deny(lambda: raw_pod_body(
        '{"name":"app","securityContext":{"privileged":false,"privileged":true}}'),
        "privileged", check=same_as_stored), id="duplicate-privileged-key"),
    pytest.param(deny(lambda: raw_pod_body(
        '{"name":"app","securityContext":{"capabilities":{"add":["NET_ADMIN"]}}}',
        '"namespace":"kube-system","namespace":"mesh"'), *NS_SAYS, check=same_as_stored),
        id="duplicate-request-namespace-key"),
    pytest.param(deny(as_the_api_server_sends(
        '{"name":"app","securityContext":{"privileged":true},'
        '"securityContext":{"runAsUser":1000}}'), 'container "app"', "privileged"),
        id="duplicate-securityContext-objects-merged-by-the-API-server"),
    pytest.param(deny(as_the_api_server_sends(
        '{"name":"app","securityContext":{"capabilities":{"add":["NET_ADMIN"]}},'
        '"securityContext":{"capabilities":{"drop":["ALL"]}}}'), *NS_SAYS),
        id="duplicate-capabilities-objects-merged-by-the-API-server"),
    pytest.param(allow(lambda: raw_pod_body(
        '{"name":"app","SecurityContext":{"Capabilities":{"Add":["NET_ADMIN"]}}}'),
        "the API server sends the object it decoded, re-encoded with its own field names; "
        "a miscased key never reaches a webhook (decoding is case-sensitive since 1.23, "
        "and before that it was folded into securityContext and re-encoded so)", "pass",
        endpoints=("validate",)), id="miscased-keys-ALLOWED-BY-DESIGN"),
    # --- gate.requireMesh (SPEC 4) -------------------------------------------------------
    pytest.param(deny(lambda: request(pod(container("app"), annotations={STATUS: ISTIO_STATUS,
                                                                         MULTUS: "istio-cni"})),
                      "lacks containers", policy=REQUIRE_MESH, **ON_VALIDATE),
                 id="requireMesh-hand-written-status"),
    pytest.param(deny(lambda: request(pod(container("app"), annotations={
        STATUS: '{"containers":[]}', MULTUS: "istio-cni"})), "fewer than two containers",
        policy=REQUIRE_MESH, **ON_VALIDATE), id="requireMesh-status-listing-nothing"),
    pytest.param(deny(lambda: request(pod(container("app"), annotations={STATUS: "{not json"})),
                      "not Istio's JSON", policy=REQUIRE_MESH, **ON_VALIDATE),
                 id="requireMesh-status-not-json"),
    pytest.param(deny(lambda: request(pod(container("app"), labels={
        "sidecar.istio.io/inject": "false"})), "not enrolled", policy=REQUIRE_MESH,
        **ON_VALIDATE), id="requireMesh-opt-out-label"),
    pytest.param(deny(lambda: request(pod(container("app"), hostNetwork=True)), "not enrolled",
                      policy=REQUIRE_MESH, **ON_VALIDATE), id="requireMesh-hostNetwork"),
    pytest.param(deny(later_webhook(_annotate("sidecar.istio.io/inject", "F"), REQUIRE_MESH),
                      "sidecar.istio.io/inject", policy=REQUIRE_MESH, **ON_VALIDATE),
                 id="requireMesh-plugin-false-annotation-after-injection"),
    pytest.param(allow(lambda: request(pod(container("istio-proxy", image="evil.example/x"),
                                           annotations={STATUS: '{"containers":["istio-proxy"]}'})),
                       "a pod whose only regular container is its istio-proxy is a gateway, "
                       "which SPEC 4 exempts from the redirection checks; it gains no "
                       "capability (see the report: any author can take this shape)", "pass",
                       policy=REQUIRE_MESH, **ON_VALIDATE),
                 id="requireMesh-gateway-disguise-ALLOWED-BY-DESIGN"),
]


@pytest.mark.parametrize("case", CASES)
def test_bypass(case: Case) -> None:
    for endpoint in case.endpoints:
        body = case.body()
        verify(case, endpoint, judge(body, endpoint, case.policy), body)


def test_catalogue_is_well_formed() -> None:
    """Row ids are unique, and a row is allowed exactly when its id says ALLOWED-BY-DESIGN
    and it gives its reason: no row can be allowed silently."""
    ids = [p.id for p in CASES]
    assert len(set(ids)) == len(ids)
    for p in CASES:
        case = p.values[0]
        assert ("ALLOWED-BY-DESIGN" in str(p.id)) is (case.expect == "allow"), p.id
        assert bool(case.why) is (case.expect == "allow"), p.id
        assert case.expect in ("allow", "deny", "invalid"), p.id


# ---------------------------------------------------------------------------------------
# a handful over real HTTPS


@pytest.fixture(scope="module")
def https(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    cert_dir = make_cert_dir(tmp_path_factory.mktemp("bypass-tls"), "meshgate-bypass-ca")
    runtime = Runtime()
    runtime.install(Context(DENY, NAMESPACES, OWN_NAMESPACE), "test")
    verify = client_context(cert_dir / certs.CA_CERT_FILE)
    with ServerThread(create_app(runtime), cert_dir, name="meshgate-bypass",
                      runtime=runtime) as served, httpx.Client(
        base_url=served.url, verify=verify, timeout=10
    ) as client:  # fmt: skip
        yield client


HTTP_CASES = [p for p in CASES if p.values[0].http]


@pytest.mark.parametrize("case", HTTP_CASES)
def test_bypass_over_https(case: Case, https: httpx.Client) -> None:
    assert case.policy is DENY  # the served app runs the default policy
    for endpoint in case.endpoints:
        body = case.body()
        answer = https.post(f"/{endpoint}", content=body,
                            headers={"content-type": "application/json"})  # fmt: skip
        assert answer.status_code == 200, answer.text
        review = answer.json()
        assert review["apiVersion"] == "admission.k8s.io/v1"
        response = check_response(review["response"], DENY)
        verify(case, endpoint, response, body)
        # the same answer as the engine gives in-process
        assert response == judge(body, endpoint, DENY)


def test_enough_rows_go_over_https() -> None:
    assert len(HTTP_CASES) >= 8
