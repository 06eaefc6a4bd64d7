"""meshgate's output against Istio's own injector output (tests/corpus/istio-injected-reference).

Each reference X.injected was produced by Istio's `TestInjection` from an input in
tests/corpus/istio-inject/ with the settings INDEX.tsv records. meshgate is run on the same
input, with its policy set to the nearest equivalent, and the fields are compared that
Istio's tooling and the Istio CNI plugin read: the sidecar.istio.io/status annotation, the
init containers and their capabilities, the proxy's uid/gid (the ids the CNI plugin and
istio-iptables exempt from redirection) and the istio-iptables arguments, the Multus
network, hostNetwork pods, TPROXY. Everything else Istio adds (labels such as
security.istio.io/tlsMode, prometheus annotations, ISTIO_META_OWNER…) is outside the SPEC.

Placement: Istio's references use native sidecars (istio-proxy in initContainers with
restartPolicy: Always) by default; meshgate's default is `sidecar.native: false`. Cases
whose reference is native run meshgate with `sidecar: {native: true}` (and, because cni
mode needs it, `cni: {pluginSupportsNativeSidecars: true}`); hello-old-version (Istio with
native sidecars disabled) runs with meshgate's default.

Mode: Istio's "components.cni.enabled=true" references are compared with meshgate's cni mode
(namespace labelled istio-injection=enabled); Istio's legacy references with init mode
(namespace labelled meshgate.io/mode=init). Requests use namespace "default", the
namespace of Istio's test pods.
"""

from __future__ import annotations

import base64
import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import yaml
from helpers import admission_request

from webhook.admission import Context, Outcome, admit
from webhook.policy import compile_policy

CORPUS = Path(__file__).parent / "corpus"
INPUTS = CORPUS / "istio-inject"
REFERENCES = CORPUS / "istio-injected-reference"
OWN_NAMESPACE = "meshgate-system"
NAMESPACE = "default"
LABELS = {"cni": {"istio-injection": "enabled"}, "init": {"meshgate.io/mode": "init"}}
NATIVE = {"sidecar": {"native": True}, "cni": {"pluginSupportsNativeSidecars": True}}
# Istio's Multus provider names the NetworkAttachmentDefinition "istio-cni" in namespace
# "default"; meshgate writes cni.network as written (default "istio-cni", i.e. the pod's
# own namespace, one NetworkAttachmentDefinition per tenant as on OpenShift).
NATIVE_ISTIO_NETWORK = {**NATIVE, "cni": {**NATIVE["cni"], "network": "default/istio-cni"}}

STATUS = "sidecar.istio.io/status"
MULTUS = "k8s.v1.cni.cncf.io/networks"
TPROXY = {"sidecar.istio.io/interceptionMode": "TPROXY"}
PROXY, INIT, VALIDATION = "istio-proxy", "istio-init", "istio-validation"
INJECTED_INITS = (INIT, VALIDATION)


@dataclass(frozen=True)
class Case:
    reference: str
    input: str  # file in istio-inject/
    mode: str  # meshgate's mode: cni | init
    istio: str  # how upstream produced the reference (INDEX.tsv)
    policy: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(NATIVE))
    # Istio's mesh-wide setting expressed as the per-pod annotation meshgate reads.
    annotations: dict[str, str] = field(default_factory=dict)
    multus: bool = False  # Istio ran with values.cni.provider=multus


CASES = [
    Case("hello.yaml.injected", "hello.yaml", "init", "default settings"),
    Case("hello-old-version.yaml.injected", "hello.yaml", "init",
         "native sidecars disabled", policy={}),
    # There is no hello-never.yaml: upstream runs hello.yaml with
    # values.global.imagePullPolicy=Never. meshgate's equivalent is the policy's templates.
    Case("hello-never.yaml.injected", "hello.yaml", "init", "values.global.imagePullPolicy=Never",
         policy={"sidecar": {"native": True, "container": {"imagePullPolicy": "Never"}},
                 "init": {"container": {"imagePullPolicy": "Never"}},
                 "cni": {"pluginSupportsNativeSidecars": True}}),
    Case("explicit-security-context.yaml.injected", "explicit-security-context.yaml", "init",
         "default settings"),
    Case("native-sidecar.yaml.injected", "native-sidecar.yaml", "init", "default settings"),
    Case("hello-tproxy.yaml.injected", "hello.yaml", "init", "mesh interceptionMode=TPROXY",
         annotations=TPROXY),
    Case("proxy-override-runas.yaml.tproxy.injected", "proxy-override-runas.yaml", "init",
         "mesh interceptionMode=TPROXY", annotations=TPROXY),
    Case("only-proxy-container.yaml.injected", "only-proxy-container.yaml", "init",
         "default settings"),
    Case("hello-host-network.yaml.injected", "hello-host-network.yaml", "init",
         "default settings"),
    Case("hello.yaml.cni.injected", "hello.yaml", "cni",
         "components.cni.enabled=true, values.cni.provider=default"),
    Case("proxy-override-runas.yaml.cni.injected", "proxy-override-runas.yaml", "cni",
         "components.cni.enabled=true"),
    Case("hello-openshift.yaml.injected", "hello-openshift.yaml", "cni",
         "components.cni.enabled=true, webhook-only, namespace with an OpenShift uid range"),
    Case("hello-openshift-tproxy.yaml.injected", "hello-openshift-tproxy.yaml", "cni",
         "components.cni.enabled=true, webhook-only"),
    Case("hello-cncf-networks.yaml.injected", "hello.yaml", "cni",
         "components.cni.enabled=true, values.cni.provider=multus", multus=True),
    Case("hello-existing-cncf-networks.yaml.injected", "hello-existing-cncf-networks.yaml",
         "cni", "components.cni.enabled=true, values.cni.provider=multus", multus=True),
    Case("hello-existing-cncf-networks-json.yaml.injected",
         "hello-existing-cncf-networks-json.yaml", "cni",
         "components.cni.enabled=true, values.cni.provider=multus", multus=True),
]  # fmt: skip
PARAMS = [pytest.param(c, id=c.reference.removesuffix(".injected")) for c in CASES]


def _pod_of(obj: dict[str, Any]) -> dict[str, Any]:
    if obj["kind"] == "Pod":
        return copy.deepcopy(obj)
    template = obj["spec"]["template"]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": copy.deepcopy(template.get("metadata") or {}),
            "spec": copy.deepcopy(template["spec"])}  # fmt: skip


def _single(path: Path) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    assert len(docs) == 1, path
    return docs[0]


def reference_pod(case: Case) -> dict[str, Any]:
    return _pod_of(_single(REFERENCES / case.reference))


def input_pod(case: Case) -> dict[str, Any]:
    pod = _pod_of(_single(INPUTS / case.input))
    if case.annotations:
        pod["metadata"].setdefault("annotations", {}).update(case.annotations)
    return pod


def run(case: Case, policy: dict[str, Any] | None = None, endpoint: str = "mutate",
        pod: dict[str, Any] | None = None, mode: str | None = None) -> Outcome:  # fmt: skip
    mode = mode or case.mode
    labels = LABELS[mode]
    ctx = Context(compile_policy(case.policy if policy is None else policy),
                  lambda n: labels if n == NAMESPACE else None, OWN_NAMESPACE)  # fmt: skip
    obj = input_pod(case) if pod is None else pod
    request = admission_request(obj, uid=f"compat-{case.reference}", namespace=NAMESPACE)
    return admit(request, endpoint, ctx)


def meshgate_pod(case: Case, policy: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The pod meshgate produces (its patch applied with jsonpatch), None when refused."""
    outcome = run(case, policy)
    response = outcome.review["response"]
    if not response["allowed"]:
        return None
    ops = json.loads(base64.b64decode(response["patch"])) if "patch" in response else []
    return jsonpatch.apply_patch(input_pod(case), ops)


def status(pod: dict[str, Any]) -> dict[str, Any] | None:
    value = ((pod.get("metadata") or {}).get("annotations") or {}).get(STATUS)
    return None if value is None else json.loads(value)


def container(pod: dict[str, Any], name: str) -> dict[str, Any] | None:
    for f in ("initContainers", "containers"):
        for c in (pod.get("spec") or {}).get(f) or ():
            if c.get("name") == name:
                return c
    return None


def caps_added(c: dict[str, Any] | None) -> list[str]:
    return list((((c or {}).get("securityContext") or {}).get("capabilities") or {}).get("add")
                or [])  # fmt: skip


def ids(c: dict[str, Any] | None) -> tuple[Any, Any]:
    sc = (c or {}).get("securityContext") or {}
    return sc.get("runAsUser"), sc.get("runAsGroup")


def init_names(pod: dict[str, Any]) -> list[str]:
    return [c["name"] for c in (pod.get("spec") or {}).get("initContainers") or ()]


def iptables_uid(pod: dict[str, Any]) -> str | None:
    for name in INJECTED_INITS:
        c = container(pod, name)
        if c is not None:
            args = c.get("args") or []
            return args[args.index("-u") + 1]
    return None


def networks(value: str | None, namespace: str) -> set[tuple[str, str]]:
    """(namespace, name) of the networks a Multus annotation names (Multus' rules)."""
    if not value:
        return set()
    if value.lstrip().startswith("["):
        return {(i.get("namespace") or namespace, i["name"]) for i in json.loads(value)}
    refs = (e.strip().split("@")[0].rpartition("/") for e in value.split(","))
    return {(ns or namespace, name) for ns, _, name in refs}


# Cases where meshgate differs on purpose, with the reason (checked below, not skipped).
GATEWAY = "only-proxy-container.yaml.injected"
TPROXY_CNI = "hello-openshift-tproxy.yaml.injected"
HOST_NETWORK = "hello-host-network.yaml.injected"
OPENSHIFT_UID = "hello-openshift.yaml.injected"
# The cases where both inject a sidecar next to app containers (the others are compared in
# test_status_annotation_matches_istio and their own tests).
INJECTED_PARAMS = [p for p in PARAMS
                   if p.values[0].reference not in (HOST_NETWORK, TPROXY_CNI, GATEWAY)]  # fmt: skip


def test_every_reference_has_a_case() -> None:
    assert sorted(c.reference for c in CASES) == sorted(p.name for p in REFERENCES.iterdir())
    for case in CASES:
        assert (INPUTS / case.input).is_file()
    assert not (INPUTS / "hello-never.yaml").exists()  # see the hello-never case above


@pytest.mark.parametrize("case", PARAMS)
def test_status_annotation_matches_istio(case: Case) -> None:
    """The status annotation istioctl and the CNI plugin read: identical JSON (containers,
    initContainers in order, volumes in order, imagePullSecrets, revision)."""
    ours = meshgate_pod(case)
    theirs = reference_pod(case)
    if case.reference == HOST_NETWORK:
        assert ours == input_pod(case) and status(theirs) is None  # both leave it alone
    elif case.reference == TPROXY_CNI:
        assert ours is None  # refused: see test_tproxy_in_cni_mode_is_refused
    elif case.reference == GATEWAY:
        # Istio moves the only container to initContainers and leaves `containers: []`,
        # which the API server rejects (a pod needs a regular container). SPEC 2 makes
        # such a pod a gateway: the proxy stays its only container, with no init container.
        assert theirs["spec"]["containers"] == []
        assert ours is not None
        assert status(ours) == {**(status(theirs) or {}), "initContainers": None,
                                "containers": [PROXY]}  # fmt: skip
        assert [c["name"] for c in ours["spec"]["containers"]] == [PROXY]
        assert init_names(ours) == []
    else:
        assert ours is not None
        assert status(ours) == status(theirs)


@pytest.mark.parametrize("case", INJECTED_PARAMS)
def test_init_containers_and_capabilities_match_istio(case: Case) -> None:
    """The same init containers in the same order (legacy: istio-init with NET_ADMIN and
    NET_RAW; cni: istio-validation with none), and the same capabilities on the proxy."""
    ours, theirs = meshgate_pod(case), reference_pod(case)
    assert ours is not None
    assert init_names(ours) == init_names(theirs)
    for name in (INIT, VALIDATION, PROXY):
        assert caps_added(container(ours, name)) == caps_added(container(theirs, name)), name
    legacy = container(ours, INIT)
    if case.mode == "init":
        assert legacy is not None and caps_added(legacy) == ["NET_ADMIN", "NET_RAW"]
        assert container(ours, VALIDATION) is None
    else:
        assert legacy is None and caps_added(container(ours, VALIDATION)) == []


@pytest.mark.parametrize("case", INJECTED_PARAMS)
def test_proxy_ids_and_iptables_arguments_match_istio(case: Case) -> None:
    """The proxy's runAsUser/runAsGroup (what the CNI plugin exempts), istio-validation's
    ids, and the istio-iptables arguments of istio-init / istio-validation."""
    ours, theirs = meshgate_pod(case), reference_pod(case)
    assert ours is not None
    if case.reference == OPENSHIFT_UID:
        # Istio's test namespace carries OpenShift's openshift.io/sa.scc.uid-range
        # annotation (1000620000/10000) and Istio runs the proxy as the range's last uid.
        # meshgate reads namespace labels only, so the proxy runs as 1337; OpenShift's
        # restricted SCC refuses a uid outside the namespace's range (see the report).
        # Both stay self-consistent: the exempted uid is the proxy's uid.
        assert ids(container(theirs, PROXY)) == (1000629999, 1000629999)
        assert ids(container(ours, PROXY)) == (1337, 1337)
        for pod in (ours, theirs):
            assert iptables_uid(pod) == str(ids(container(pod, PROXY))[0])
        return
    assert ids(container(ours, PROXY)) == ids(container(theirs, PROXY))
    assert ids(container(ours, VALIDATION)) == ids(container(theirs, VALIDATION))
    for name in INJECTED_INITS:
        mine, upstream = container(ours, name), container(theirs, name)
        assert (mine is None) == (upstream is None), name
        if mine is not None and upstream is not None:
            assert mine["args"] == upstream["args"], name


@pytest.mark.parametrize("case", [p for p in INJECTED_PARAMS if p.values[0].mode == "cni"])
def test_multus_network_resolves_to_the_same_network(case: Case) -> None:
    """Istio's Multus provider writes `default/istio-cni` (namespace-qualified); meshgate
    writes cni.network as written (`istio-cni`, the pod's namespace). Same shape (comma or
    JSON list, the author's entries kept), and the same (namespace, name) set for a pod in
    namespace "default"; with cni.network "default/istio-cni" the value is identical.
    Istio's references made with the default (chained) CNI provider carry no Multus
    annotation at all: meshgate's plugin always runs through Multus (SPEC 2)."""
    ours = meshgate_pod(case)
    exact = meshgate_pod(case, NATIVE_ISTIO_NETWORK)
    theirs = reference_pod(case)
    assert ours is not None and exact is not None

    def value(pod: dict[str, Any]) -> str | None:
        return ((pod.get("metadata") or {}).get("annotations") or {}).get(MULTUS)

    original = value(input_pod(case))
    if not case.multus:
        assert value(theirs) is None
        assert networks(value(ours), NAMESPACE) == networks(original, NAMESPACE) | {
            (NAMESPACE, "istio-cni")
        }
        return
    assert value(exact) == value(theirs)
    assert networks(value(ours), NAMESPACE) == networks(value(theirs), NAMESPACE)
    assert value(ours) is not None and value(theirs) is not None
    is_json = [str(value(pod)).lstrip().startswith("[") for pod in (ours, theirs)]
    assert is_json[0] == is_json[1]  # the same form: comma list or JSON list
    if original:
        assert networks(original, NAMESPACE) < networks(value(ours), NAMESPACE)


def test_host_network_pods_are_left_alone_like_istio() -> None:
    case = next(c for c in CASES if c.reference == HOST_NETWORK)
    for mode in ("cni", "init"):
        outcome = run(case, mode=mode)
        assert outcome.allowed and not outcome.patch, mode
    theirs = reference_pod(case)
    assert status(theirs) is None
    assert [c["name"] for c in theirs["spec"]["containers"]] == [
        c["name"] for c in input_pod(case)["spec"]["containers"]
    ]


@pytest.mark.parametrize("reference", ["hello-tproxy.yaml.injected",
                                       "proxy-override-runas.yaml.tproxy.injected"])  # fmt: skip
def test_tproxy_in_init_mode_gives_the_proxy_net_admin_as_root_like_istio(reference: str) -> None:
    case = next(c for c in CASES if c.reference == reference)
    ours, theirs = meshgate_pod(case), reference_pod(case)
    assert ours is not None
    for pod in (ours, theirs):
        proxy = container(pod, PROXY)
        assert caps_added(proxy) == ["NET_ADMIN"]
        assert ids(proxy)[0] == 0
        assert (proxy or {})["securityContext"]["runAsNonRoot"] is False
        args = (container(pod, INIT) or {})["args"]
        assert args[args.index("-m") + 1] == "TPROXY"
    assert ids(container(ours, PROXY)) == ids(container(theirs, PROXY))


def test_tproxy_in_cni_mode_is_refused() -> None:
    """Istio, in CNI mode, still gives a TPROXY proxy NET_ADMIN (hello-openshift-tproxy);
    SPEC 2 refuses TPROXY in cni mode, naming the annotation, and the gate would reject
    Istio's output where CNI is enforced."""
    case = next(c for c in CASES if c.reference == TPROXY_CNI)
    theirs = reference_pod(case)
    assert caps_added(container(theirs, PROXY)) == ["NET_ADMIN"]
    assert init_names(theirs)[0] == VALIDATION
    outcome = run(case)
    assert not outcome.allowed
    assert "sidecar.istio.io/interceptionMode" in outcome.review["response"]["status"]["message"]
    assert not run(case, endpoint="validate", pod=theirs).allowed


# SPEC 2: the container and volume fields follow hello.yaml.cni.injected. What Istio adds
# beyond meshgate's template (workload identity and network metadata for the proxy).
ISTIO_ONLY_ENV = {"ISTIO_META_OWNER", "ISTIO_META_WORKLOAD_NAME", "ISTIO_META_NETWORK"}
# Formatting only: Istio pretty-prints the JSON list, meshgate writes it compact.
SAME_JSON_ENV = {"ISTIO_META_POD_PORTS"}


def test_proxy_and_validation_containers_follow_istio_hello_cni() -> None:
    case = next(c for c in CASES if c.reference == "hello.yaml.cni.injected")
    ours, theirs = meshgate_pod(case), reference_pod(case)
    assert ours is not None
    for name in (PROXY, VALIDATION):
        mine, upstream = container(ours, name), container(theirs, name)
        assert mine is not None and upstream is not None
        for key in sorted(set(mine) | set(upstream)):
            if key == "image":
                continue  # Istio's test registry vs a released image
            if key == "securityContext":
                # meshgate adds seccomp RuntimeDefault: Pod Security restricted wants it
                extra = {k: v for k, v in mine[key].items() if k != "seccompProfile"}
                assert extra == upstream[key], name
                assert mine[key]["seccompProfile"] == {"type": "RuntimeDefault"}
            elif key == "env":
                got = {e["name"]: e for e in mine["env"]}
                want = {e["name"]: e for e in upstream["env"] if e["name"] not in ISTIO_ONLY_ENV}
                assert set(got) == set(want)
                for env in sorted(got):
                    if env in SAME_JSON_ENV:
                        assert json.loads(got[env]["value"]) == json.loads(want[env]["value"])
                    else:
                        assert got[env] == want[env], env
            else:
                assert mine.get(key) == upstream.get(key), f"{name}.{key}"
    assert {v["name"] for v in ours["spec"]["volumes"]} == {
        v["name"] for v in theirs["spec"]["volumes"]
    }


def test_preStop_drain_only_on_native_sidecars_as_in_istio() -> None:
    """Istio gives the proxy a preStop `pilot-agent request POST drain` only as a native
    sidecar (it stops after the app); as a classic sidecar (hello-old-version) it has no
    lifecycle, since draining would cut the app's traffic while the app still runs."""
    classic = next(c for c in CASES if c.reference == "hello-old-version.yaml.injected")
    ours, theirs = meshgate_pod(classic), reference_pod(classic)
    assert ours is not None
    assert "lifecycle" not in (container(theirs, PROXY) or {})
    assert "lifecycle" not in (container(ours, PROXY) or {})
    native = next(c for c in CASES if c.reference == "hello.yaml.injected")
    ours_native, theirs_native = meshgate_pod(native), reference_pod(native)
    assert ours_native is not None
    assert (container(theirs_native, PROXY) or {})["lifecycle"] == (
        container(ours_native, PROXY) or {}
    )["lifecycle"]
