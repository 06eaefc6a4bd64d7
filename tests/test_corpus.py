"""Whole-corpus invariants: every Pod and workload pod template in tests/corpus (SPEC 2, 4, 5).

Every object is sent through `webhook.admission.admit` as the API server would send it (a
v1 AdmissionReview request: uid, kind, resource, operation CREATE, namespace, object), in
three namespaces of the embedded default policy:

- cni: labelled istio-injection=enabled → namespaces[2]: cni mode, injection enabled,
  CNI enforced (the gate denies);
- init: labelled meshgate.io/mode=init → namespaces[1]: legacy istio-init mode;
- disabled: labelled istio-injection=disabled → namespaces[0]: no injection.

Workloads are judged twice, as in a cluster: their pod template rendered as the Pod their
controller creates goes to /mutate (and /validate), the workload object itself to
/validate. The numbers of objects read and of outcomes are asserted exactly per folder and
mode, so a loader or parser that silently drops a file or a document fails here.

The API server takes request.namespace from the URL and meshgate reads only that (SPEC 2),
so the objects keep whatever metadata.namespace the corpus gives them; all are sent to one
test namespace whose labels select the mode.
"""

from __future__ import annotations

import base64
import collections
import copy
import csv
import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import yaml

from webhook.admission import Context, Outcome, admit
from webhook.explain import explain
from webhook.policy import Policy, compile_policy, default_policy

CORPUS = Path(__file__).parent / "corpus"
OWN_NAMESPACE = "meshgate-system"
NAMESPACE = "corpus-apps"
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

MODES: dict[str, dict[str, str]] = {
    "cni": {"istio-injection": "enabled"},
    "init": {"meshgate.io/mode": "init"},
    "disabled": {"istio-injection": "disabled"},
}
FOLDERS = ("istio-inject", "apps", "linkerd", "kyverno", "psa", "istio-injected-reference")

DEFAULT = default_policy()
# The same policy with the gate in warn mode: pods that violate are injected too, so the
# "injection adds no violation" invariant can be checked on them as well.
WARN = compile_policy({"gate": {"action": "warn"}})
# gate.requireMesh: /validate also checks that the stored pod will be redirected.
REQUIRE_MESH = compile_policy({"gate": {"requireMesh": True}})

# The seven workload kinds of SPEC 4 and where each keeps its pod template; written out
# here rather than imported, so that a kind the webhook forgets changes the counts below.
WORKLOADS: dict[tuple[str, str], tuple[str, ...]] = {
    ("apps", "Deployment"): ("spec", "template"),
    ("apps", "StatefulSet"): ("spec", "template"),
    ("apps", "DaemonSet"): ("spec", "template"),
    ("apps", "ReplicaSet"): ("spec", "template"),
    ("", "ReplicationController"): ("spec", "template"),
    ("batch", "Job"): ("spec", "template"),
    ("batch", "CronJob"): ("spec", "jobTemplate", "spec", "template"),
}
RESOURCES = {
    "Pod": "pods",
    "Deployment": "deployments",
    "StatefulSet": "statefulsets",
    "DaemonSet": "daemonsets",
    "ReplicaSet": "replicasets",
    "ReplicationController": "replicationcontrollers",
    "Job": "jobs",
    "CronJob": "cronjobs",
}

STATUS = "sidecar.istio.io/status"
MULTUS = "k8s.v1.cni.cncf.io/networks"
PROXY, INIT, VALIDATION = "istio-proxy", "istio-init", "istio-validation"
MESHGATE_CONTAINERS = {PROXY, INIT, VALIDATION}
TLS_MODE = "security.istio.io/tlsMode"
# The labels Istio's control plane reads, which injection adds where the pod has none.
MESH_LABELS = {TLS_MODE, "service.istio.io/canonical-name", "service.istio.io/canonical-revision"}
CONTAINER_LISTS = ("containers", "initContainers", "ephemeralContainers")
GO_FALSE = {"0", "f", "F", "false", "FALSE", "False"}

# How every file of a folder is classified; a file with any other suffix fails
# test_every_file_is_accounted_for, so none can be skipped unnoticed.
MANIFEST_SUFFIXES = {".yaml", ".yml", ".j2", ".injected"}
TABLE_SUFFIXES = {".tsv"}
# linkerd/reference: the CLI's stdout/stderr goldens and the webhook's JSON patches.
REFERENCE_TEXT_SUFFIXES = {".report", ".stderr", ".golden", ".json"}


# ---------------------------------------------------------------------------------------
# reading the corpus


@dataclass(frozen=True)
class Entry:
    """One Pod or one workload of the corpus."""

    folder: str
    file: str  # relative to the folder
    index: int  # position among the file's Pods and workloads
    kind: str
    group: str
    version: str
    name: str
    obj: dict[str, Any] = field(repr=False, compare=False)

    @property
    def id(self) -> str:
        return f"{self.folder}/{self.file}#{self.index} {self.kind}/{self.name}"

    @property
    def workload(self) -> bool:
        return self.kind != "Pod"

    def pod(self) -> dict[str, Any]:
        """The Pod the API server would see: the object itself, or the Pod a controller
        creates from the workload's template (a fresh copy on every call)."""
        if not self.workload:
            return copy.deepcopy(self.obj)
        template: Any = self.obj
        for key in WORKLOADS[(self.group, self.kind)]:
            template = template[key]
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": copy.deepcopy(template.get("metadata") or {}),
            "spec": copy.deepcopy(template.get("spec")),
        }


@dataclass
class Inventory:
    files: collections.Counter[str] = field(default_factory=collections.Counter)
    unparseable: list[str] = field(default_factory=list)
    lists: int = 0  # `kind: List` documents, whose items are read
    empty: int = 0  # empty YAML documents and null List items
    fragments: list[str] = field(default_factory=list)  # mappings without a kind
    other_kinds: collections.Counter[str] = field(default_factory=collections.Counter)
    entries: list[Entry] = field(default_factory=list)

    def count(self, *, workload: bool) -> int:
        return sum(1 for e in self.entries if e.workload == workload)


def _file_class(path: Path) -> str:
    if path.suffix in MANIFEST_SUFFIXES:
        return "manifest"
    if path.suffix in TABLE_SUFFIXES:
        return "table"
    if path.suffix in REFERENCE_TEXT_SUFFIXES:
        return "reference-text"
    return f"unknown:{path.suffix}"


@functools.cache
def inventory(folder: str) -> Inventory:
    inv = Inventory()
    for path in sorted(p for p in (CORPUS / folder).rglob("*") if p.is_file()):
        kind = _file_class(path)
        inv.files[kind] += 1
        if kind != "manifest":
            continue
        rel = path.relative_to(CORPUS / folder).as_posix()
        try:
            docs = list(yaml.load_all(path.read_text(encoding="utf-8"), Loader=LOADER))
        except yaml.YAMLError:
            inv.unparseable.append(rel)
            continue
        index = 0
        for doc in _flatten(docs, inv):
            if doc is None:
                inv.empty += 1
            elif not isinstance(doc, dict) or not doc.get("kind"):
                inv.fragments.append(rel)
            else:
                entry = _entry(folder, rel, index, doc)
                if entry is None:
                    inv.other_kinds[str(doc["kind"])] += 1
                else:
                    inv.entries.append(entry)
                    index += 1
    return inv


def _flatten(docs: list[Any], inv: Inventory) -> Iterator[Any]:
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "List":
            inv.lists += 1
            yield from _flatten(doc.get("items") or [], inv)
        else:
            yield doc


def _entry(folder: str, rel: str, index: int, doc: dict[str, Any]) -> Entry | None:
    group, _, version = str(doc.get("apiVersion", "")).rpartition("/")
    kind = str(doc["kind"])
    name = str((doc.get("metadata") or {}).get("name") or "")
    if kind == "Pod":
        # Pods exist only in the core group. Eight Linkerd fixtures say `apiVersion:
        # apps/v1` for a Pod (the Linkerd tests decode them without an API server); a
        # cluster would serve them, if at all, as core v1 Pods, so that is how they are sent.
        return Entry(folder, rel, index, kind, "", "v1", name, doc)
    if (group, kind) in WORKLOADS:
        return Entry(folder, rel, index, kind, group, version, name, doc)
    return None


# ---------------------------------------------------------------------------------------
# admission


def context(mode: str, policy: Policy = DEFAULT) -> Context:
    labels = MODES[mode]
    return Context(policy, lambda name: labels if name == NAMESPACE else None, OWN_NAMESPACE)


def review_request(
    obj: Any, uid: str, *, kind: str = "Pod", group: str = "", version: str = "v1"
) -> dict[str, Any]:
    name = (obj.get("metadata") or {}).get("name") if isinstance(obj, dict) else None
    return {
        "uid": uid,
        "kind": {"group": group, "version": version, "kind": kind},
        "resource": {"group": group, "version": version, "resource": RESOURCES[kind]},
        "requestKind": {"group": group, "version": version, "kind": kind},
        "operation": "CREATE",
        "namespace": NAMESPACE,
        "name": name if isinstance(name, str) else "",
        "object": obj,
        "oldObject": None,
        "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
        "dryRun": False,
    }


def validate_pod(pod: dict[str, Any], mode: str, uid: str, policy: Policy = DEFAULT) -> Outcome:
    return admit(review_request(pod, uid), "validate", context(mode, policy))


def validate_original(entry: Entry, mode: str) -> Outcome:
    """/validate on the object exactly as the corpus has it (a Pod or a workload)."""
    request = review_request(
        copy.deepcopy(entry.obj), f"validate-{entry.id}",
        kind=entry.kind, group=entry.group, version=entry.version,
    )  # fmt: skip
    return admit(request, "validate", context(mode))


def decoded_patch(response: dict[str, Any]) -> list[dict[str, Any]]:
    if "patch" not in response:
        return []
    return json.loads(base64.b64decode(response["patch"]))


@dataclass
class Mutation:
    entry: Entry
    mode: str
    uid: str
    original: dict[str, Any]
    outcome: Outcome
    response: dict[str, Any]
    patch: list[dict[str, Any]]
    mutated: dict[str, Any] | None  # None when the patch does not apply
    apply_error: str = ""
    request_changed: bool = False  # admit modified the object it was given

    @property
    def status(self) -> str:
        """What happened, judged from the response and the pod its patch produces."""
        if not self.response["allowed"]:
            return self.outcome.decision  # denied | refused | invalid
        if not self.patch:
            return "skipped"
        if self.mutated is None:
            return "patch-does-not-apply"
        if STATUS in annotations(self.mutated) and STATUS not in annotations(self.original):
            return "injected"
        return "annotated"

    @property
    def gateway(self) -> bool:
        containers = (self.original.get("spec") or {}).get("containers") or []
        return len(containers) == 1 and containers[0].get("name") == PROXY


def mutate(entry: Entry, mode: str, policy: Policy = DEFAULT) -> Mutation:
    original = entry.pod()
    sent = copy.deepcopy(original)
    uid = f"{mode}-{entry.id}"
    outcome = admit(review_request(sent, uid), "mutate", context(mode, policy))
    response = outcome.review["response"]
    patch = decoded_patch(response)
    m = Mutation(entry, mode, uid, original, outcome, response, patch, None,
                 request_changed=sent != original)  # fmt: skip
    try:
        m.mutated = jsonpatch.apply_patch(copy.deepcopy(original), patch)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as err:
        m.apply_error = f"{type(err).__name__}: {err}"
    return m


@functools.cache
def mutations(folder: str, mode: str) -> list[Mutation]:
    return [mutate(e, mode) for e in inventory(folder).entries]


@functools.cache
def warn_mutations(folder: str) -> list[Mutation]:
    return [mutate(e, "cni", WARN) for e in inventory(folder).entries]


def names(pod: dict[str, Any]) -> list[str]:
    spec = pod.get("spec") or {}
    return [c.get("name") for f in CONTAINER_LISTS for c in spec.get(f) or ()]


def find(pod: dict[str, Any], name: str) -> dict[str, Any] | None:
    spec = pod.get("spec") or {}
    for f in CONTAINER_LISTS:
        for c in spec.get(f) or ():
            if c.get("name") == name:
                return c
    return None


def run_as(container: dict[str, Any] | None) -> tuple[Any, Any]:
    sc = (container or {}).get("securityContext") or {}
    return sc.get("runAsUser"), sc.get("runAsGroup")


def iptables_uid(container: dict[str, Any]) -> str | None:
    args = container.get("args") or []
    return args[args.index("-u") + 1] if "-u" in args[:-1] else None


def volume_names(pod: dict[str, Any]) -> list[str]:
    return [v.get("name") for v in (pod.get("spec") or {}).get("volumes") or ()]


def annotations(pod: dict[str, Any]) -> dict[str, str]:
    return (pod.get("metadata") or {}).get("annotations") or {}


def networks(value: str | None, namespace: str) -> set[tuple[str, str]]:
    """(namespace, name) of every network a Multus annotation names (Multus' own rules)."""
    if not value or not value.strip():
        return set()
    if value.lstrip().startswith("["):
        return {(item.get("namespace") or namespace, item["name"]) for item in json.loads(value)}
    found = set()
    for entry in value.split(","):
        ref = entry.strip().split("@")[0]
        ns, _, name = ref.rpartition("/")
        found.add((ns or namespace, name))
    return found


def fails(problems: list[str]) -> str:
    shown = "\n  ".join(problems[:40])
    more = f"\n  … and {len(problems) - 40} more" if len(problems) > 40 else ""
    return f"{len(problems)} problem(s):\n  {shown}{more}"


ALL_CASES = [pytest.param(f, m, id=f"{f}-{m}") for f in FOLDERS for m in MODES]
FOLDER_CASES = [pytest.param(f, id=f) for f in FOLDERS]


# ---------------------------------------------------------------------------------------
# what the corpus holds (README.md; checked by reading the files)

# files by class: manifests (YAML), the *.tsv tables, linkerd's reference text outputs.
EXPECTED_FILES = {
    # 108 inputs (100 Kubernetes manifests + 8 *.iop.yaml IstioOperator values) + INDEX.tsv
    "istio-inject": {"manifest": 108, "table": 1},
    # 26 manifests in 7 upstream groups + INDEX.tsv
    "apps": {"manifest": 26, "table": 1},
    # 27 cli-inject inputs (one of them malformed YAML), 21 proxy-injector fake data
    # files, 4 reference goldens in YAML; 8 reference text outputs (2 .report, 3 .stderr,
    # 1 .golden, 2 .patch.json) + INDEX.tsv
    "linkerd": {"manifest": 52, "table": 1, "reference-text": 8},
    # 26 files (test resources, kyverno-test.yaml result maps, policies) + EXPECTED.tsv
    "kyverno": {"manifest": 26, "table": 1},
    # 52 fixtures (2 levels × 2 versions × pass/fail) + EXPECTED.tsv
    "psa": {"manifest": 52, "table": 1},
    # 16 hand-picked Istio goldens
    "istio-injected-reference": {"manifest": 16},
}

# YAML files that do not parse: counted, never skipped silently.
EXPECTED_UNPARSEABLE = {
    # upstream's own negative test: "yaml: line 14: did not find expected key"
    "linkerd": ["cli-inject/inject_gettest_deployment.bad.input.yml"],
}

# (Pods, workloads) read per folder, and everything else the YAML holds.
EXPECTED_OBJECTS: dict[str, dict[str, Any]] = {
    # INDEX.tsv's kind column: 9 Pods; 83 Deployments (3 of them in `kind: List`s), one each
    # of DaemonSet, ReplicaSet, StatefulSet, Job, CronJob, ReplicationController = 89.
    # Not pods or workloads: 3 OpenShift DeploymentConfigs (not one of SPEC's seven kinds),
    # 8 IstioOperator value files, 4 Services; 2 empty documents (a trailing `---`).
    "istio-inject": {
        "pods": 9, "workloads": 89, "lists": 3, "empty": 2, "fragments": 0,
        "other": {"DeploymentConfig": 3, "IstioOperator": 8, "Service": 4},
    },
    # INDEX.tsv: 61 rows = the kube-flannel Namespace + 60 workloads and pods (18 Pods,
    # 36 Deployments, 4 DaemonSets, 1 StatefulSet, 1 ReplicationController).
    "apps": {
        "pods": 18, "workloads": 42, "lists": 0, "empty": 4, "fragments": 0,
        "other": {
            "ClusterRole": 2, "ClusterRoleBinding": 2, "ConfigMap": 2,
            "CustomResourceDefinition": 1, "Namespace": 1, "NetworkAttachmentDefinition": 4,
            "Service": 27, "ServiceAccount": 24, "StorageClass": 1,
        },
    },
    # INDEX.tsv: 52 rows = 49 workloads and pods + 2 labelled Namespaces + the malformed
    # file. 25 empty documents: a trailing `---` in 18 cli-inject inputs (3 in one, 1 each
    # in 15 others) and the 4 YAML goldens, plus 2 null items of a `kind: List`. The two
    # fragments are a bare container and a bare volume (inject-init-container-spec.yaml,
    # inject-linkerd-secrets-volume-spec.yaml).
    "linkerd": {
        "pods": 14, "workloads": 35, "lists": 2, "empty": 25, "fragments": 2,
        "other": {"Namespace": 4, "Service": 3},
    },
    # EXPECTED.tsv: 315 rows = 115 Pods + 200 Deployments and CronJobs; plus 5 ClusterPolicies
    # and 3 kyverno-test.yaml `Test`s.
    "kyverno": {
        "pods": 115, "workloads": 200, "lists": 0, "empty": 7, "fragments": 0,
        "other": {"ClusterPolicy": 5, "Test": 3},
    },
    # EXPECTED.tsv: 52 rows, one Pod per fixture.
    "psa": {"pods": 52, "workloads": 0, "lists": 0, "empty": 0, "fragments": 0, "other": {}},
    # 15 Deployments and native-sidecar.yaml.injected's Pod; each file ends with `---`.
    "istio-injected-reference": {
        "pods": 1, "workloads": 15, "lists": 0, "empty": 16, "fragments": 0, "other": {},
    },
}  # fmt: skip


# ---------------------------------------------------------------------------------------
# outcome counts per folder and mode

# injected: the patch adds sidecar.istio.io/status; annotated: a patch without it (an
# already-injected pod gets only its Multus entry); skipped: allowed, no patch; denied: the
# gate (deny action); refused: meshgate refuses whatever the gate says (invalid traffic
# annotation, TPROXY or a declared istio-init in cni mode, unparseable Multus value);
# invalid: not a valid pod (SPEC 5). Disabled mode never injects.
EXPECTED_OUTCOMES: dict[tuple[str, str], dict[str, int]] = {
    # 98 = 9 Pods + 89 workload templates.
    # cni: skipped 3 = hello-host-network{,-with-ns} (hostNetwork) + hello-ignore
    #   (inject "false"); refused 7 = the 5 traffic-annotations-bad-* + hello-openshift-
    #   tproxy (TPROXY) + proxy-override (declares istio-init); denied 2 = merge-probers
    #   (already injected by legacy Istio: istio-init adds NET_ADMIN) + init-no-intercept-
    #   no-native-sidecar (interceptionMode NONE is a gate violation where CNI is enforced).
    ("istio-inject", "cni"): {"injected": 86, "skipped": 3, "refused": 7, "denied": 2},
    # init: the same 3 skips + merge-probers (already injected); refused: the 5 bad traffic
    # annotations; TPROXY and a declared istio-init are fine in init mode.
    ("istio-inject", "init"): {"injected": 89, "skipped": 4, "refused": 5},
    ("istio-inject", "disabled"): {"skipped": 98},
    # 60. denied 10 = INDEX.tsv's 10 `reject` rows (flannel, security-context-4, es-rc,
    # newrelic, sysdig, multus-daemonset-thick, default-route1 ×2, simple-macvlan1 ×2).
    ("apps", "cni"): {"injected": 50, "denied": 10},
    # skipped 4 = the hostNetwork DaemonSets (flannel, newrelic, sysdig, multus).
    ("apps", "init"): {"injected": 56, "skipped": 4},
    ("apps", "disabled"): {"skipped": 60},
    # 49. invalid 3 = pod-with-{custom-debug-tag,debug-disabled,debug-enabled}: the
    # annotation config.linkerd.io/enable-debug-sidecar is a YAML boolean, not a string
    # (refused in every mode, SPEC 5); denied 4 = INDEX.tsv's `reject` rows (linkerd-init
    # with NET_ADMIN: inject_tap_deployment and 3 reference goldens); refused 1 =
    # inject_emojivoto_istio (declares istio-init); skipped 1 = ..._hostNetwork_true.
    # Linkerd's own `linkerd.io/inject: disabled` means nothing to meshgate.
    ("linkerd", "cni"): {"injected": 40, "invalid": 3, "denied": 4, "refused": 1, "skipped": 1},
    ("linkerd", "init"): {"injected": 45, "invalid": 3, "skipped": 1},
    ("linkerd", "disabled"): {"skipped": 46, "invalid": 3},
    # 315. EXPECTED.tsv has 11 `reject` rows: refused 6 = the mesh pods that declare an
    # istio-init initContainer (service-mesh-disallow-capabilities bad01, bad02, bad04,
    # good01; service-mesh-require-run-as-nonroot bad01, good01), denied 5 = badpod04-new,
    # baddeployment01-new (initContainer), bad03 and run-as-nonroot bad02 (istio-init in
    # containers), good02 (linkerd-init). skipped 6 = prevent-disabling-injection-pods'
    # 2 Pods, 2 Deployments and 2 CronJobs with sidecar.istio.io/inject: "false".
    ("kyverno", "cni"): {"injected": 298, "refused": 6, "denied": 5, "skipped": 6},
    # init: refused 2 = bad03 and run-as-nonroot bad02, whose *regular* container is named
    # istio-init: injecting the istio-init init container would duplicate the name.
    ("kyverno", "init"): {"injected": 307, "skipped": 6, "refused": 2},
    ("kyverno", "disabled"): {"skipped": 315},
    # 52. denied 8 = privileged0/privileged1 in the 4 fail/ folders; skipped 4 =
    # hostnamespaces1 (hostNetwork) in the 4 fail/ folders.
    ("psa", "cni"): {"injected": 40, "denied": 8, "skipped": 4},
    ("psa", "init"): {"injected": 48, "skipped": 4},
    ("psa", "disabled"): {"skipped": 52},
    # 16 pods Istio already injected. cni: denied 8 = the legacy outputs, whose istio-init
    # (and, with TPROXY, istio-proxy) adds NET_ADMIN; refused 1 = hello-openshift-tproxy
    # (TPROXY in cni mode); skipped 1 = hello-host-network; annotated 6 = Istio's CNI-mode
    # outputs, which get the missing Multus entry for "istio-cni" of this namespace
    # (hello-cncf-networks already names default/istio-cni, a different network here).
    ("istio-injected-reference", "cni"): {"annotated": 6, "denied": 8, "refused": 1,
                                          "skipped": 1},
    # init: already injected (or hostNetwork): nothing to add.
    ("istio-injected-reference", "init"): {"skipped": 16},
    ("istio-injected-reference", "disabled"): {"skipped": 16},
}  # fmt: skip


@pytest.mark.parametrize("folder", FOLDER_CASES)
def test_every_file_is_accounted_for(folder: str) -> None:
    inv = inventory(folder)
    assert dict(inv.files) == EXPECTED_FILES[folder]
    assert inv.unparseable == EXPECTED_UNPARSEABLE.get(folder, [])


@pytest.mark.parametrize("folder", FOLDER_CASES)
def test_objects_read(folder: str) -> None:
    inv = inventory(folder)
    got = {
        "pods": inv.count(workload=False),
        "workloads": inv.count(workload=True),
        "lists": inv.lists,
        "empty": inv.empty,
        "fragments": len(inv.fragments),
        "other": dict(sorted(inv.other_kinds.items())),
    }
    assert got == EXPECTED_OBJECTS[folder]


@pytest.mark.parametrize(("folder", "mode"), ALL_CASES)
def test_outcome_counts(folder: str, mode: str) -> None:
    got = collections.Counter(m.status for m in mutations(folder, mode))
    expected = EXPECTED_OUTCOMES[(folder, mode)]
    assert sum(expected.values()) == len(inventory(folder).entries)
    assert dict(sorted(got.items())) == dict(sorted(expected.items()))


# ---------------------------------------------------------------------------------------
# invariants over every object, in every mode


@pytest.mark.parametrize(("folder", "mode"), ALL_CASES)
def test_review_shape(folder: str, mode: str) -> None:
    """SPEC 5: uid echoed; patchType and patch only with a non-empty patch; audit notes."""
    problems = []
    for m in mutations(folder, mode):
        r = m.outcome.review
        resp = m.response
        where = m.entry.id
        if r.get("apiVersion") != "admission.k8s.io/v1" or r.get("kind") != "AdmissionReview":
            problems.append(f"{where}: not a v1 AdmissionReview: {r.get('apiVersion')}")
        if resp.get("uid") != m.uid:
            problems.append(f"{where}: uid {resp.get('uid')!r} is not the request's")
        if ("patch" in resp) != ("patchType" in resp) or ("patch" in resp) != bool(m.patch):
            problems.append(f"{where}: patchType/patch present without a non-empty patch")
        if "patchType" in resp and resp["patchType"] != "JSONPatch":
            problems.append(f"{where}: patchType {resp['patchType']!r}")
        if m.patch != list(m.outcome.patch):
            problems.append(f"{where}: the encoded patch differs from the outcome's")
        audit = resp.get("auditAnnotations") or {}
        for key in ("decision", "reason", "policy"):
            if not isinstance(audit.get(key), str) or not audit[key]:
                problems.append(f"{where}: auditAnnotations[{key!r}] missing")
        if audit.get("policy") != DEFAULT.version:
            problems.append(f"{where}: audit policy {audit.get('policy')!r}")
        if resp["allowed"]:
            if "status" in resp and resp["status"].get("code", 200) >= 400:
                problems.append(f"{where}: allowed with an error status")
        else:
            status = resp.get("status") or {}
            if status.get("code") not in (400, 403) or not status.get("message"):
                problems.append(f"{where}: refused without a 400/403 code and a message")
            if m.patch:
                problems.append(f"{where}: refused with a patch")
        for warning in resp.get("warnings") or ():
            if not isinstance(warning, str):
                problems.append(f"{where}: a warning is not a string")
    assert not problems, fails(problems)


@pytest.mark.parametrize(("folder", "mode"), ALL_CASES)
def test_patch_applies_and_only_adds(folder: str, mode: str) -> None:
    """Every patch applies to the original object with jsonpatch (SPEC 5), and the result
    keeps everything the pod had: its labels, annotations (bar the Multus value it extends),
    app containers and volumes, unchanged and in order."""
    problems = []
    for m in mutations(folder, mode):
        where = m.entry.id
        if m.request_changed:
            problems.append(f"{where}: admit modified the request object")
        if m.apply_error:
            problems.append(f"{where}: patch does not apply: {m.apply_error}")
            continue
        assert m.mutated is not None
        if not m.patch:
            if m.mutated != m.original:
                problems.append(f"{where}: no patch, yet the pod changed")
            continue
        if m.mutated == m.original:
            problems.append(f"{where}: a patch that changes nothing")
        before, after = m.original.get("metadata") or {}, m.mutated.get("metadata") or {}
        old_labels, new_labels = before.get("labels") or {}, after.get("labels") or {}
        if any(new_labels.get(k) != v for k, v in old_labels.items()):
            problems.append(f"{where}: a label of the pod changed or was removed")
        if set(new_labels) - set(old_labels) - MESH_LABELS:
            problems.append(f"{where}: labels other than Istio's mesh labels added")
        if m.status == "injected" and new_labels.get(TLS_MODE) != old_labels.get(TLS_MODE, "istio"):
            problems.append(f"{where}: injected without {TLS_MODE}=istio")
        old_notes, new_notes = annotations(m.original), annotations(m.mutated)
        for key, value in old_notes.items():
            if key != MULTUS and new_notes.get(key) != value:
                problems.append(f"{where}: annotation {key} changed or removed")
        if MULTUS in old_notes:
            old_value, new_value = old_notes[MULTUS], new_notes.get(MULTUS, "")
            if not new_value.startswith(old_value.rstrip().rstrip("]").rstrip()):
                problems.append(f"{where}: Multus value {old_value!r} not extended in place")
        old_spec, new_spec = m.original.get("spec") or {}, m.mutated.get("spec") or {}
        for f in (*CONTAINER_LISTS, "volumes"):
            old = [c for c in old_spec.get(f) or () if c.get("name") not in MESHGATE_CONTAINERS]
            own = {c.get("name") for c in old}
            new = [c for c in new_spec.get(f) or () if c.get("name") in own]
            if old != new:
                problems.append(f"{where}: spec.{f}: the pod's own items changed or moved")
        others = {k: v for k, v in old_spec.items() if k not in (*CONTAINER_LISTS, "volumes")}
        if any(new_spec.get(k) != v for k, v in others.items()):
            problems.append(f"{where}: a spec field other than the lists changed")
    assert not problems, fails(problems)


@pytest.mark.parametrize(("folder", "mode"), ALL_CASES)
def test_container_and_volume_names_stay_unique(folder: str, mode: str) -> None:
    """Never a second istio-proxy (or anything else): names are unique across containers,
    initContainers and ephemeralContainers, and volume names stay unique."""
    problems = []
    for m in mutations(folder, mode):
        if m.mutated is None:
            continue
        for label, get in (("container", names), ("volume", volume_names)):
            dupes = [n for n, k in collections.Counter(get(m.mutated)).items() if k > 1]
            already = [n for n, k in collections.Counter(get(m.original)).items() if k > 1]
            if sorted(dupes) != sorted(already):
                problems.append(f"{m.entry.id}: duplicate {label} names {dupes}")
    assert not problems, fails(problems)


@pytest.mark.parametrize(("folder", "mode"), ALL_CASES)
def test_mutation_is_idempotent(folder: str, mode: str) -> None:
    """SPEC 2 step 5: mutating the mutated pod yields an empty patch, and meshgate never
    refuses a pod it produced itself."""
    problems = []
    for m in mutations(folder, mode):
        if m.mutated is None:
            continue
        again = admit(review_request(copy.deepcopy(m.mutated), m.uid + "-again"), "mutate",
                      context(mode))  # fmt: skip
        resp = again.review["response"]
        if "patch" in resp or again.patch:
            problems.append(f"{m.entry.id}: second mutation patches again: {list(again.patch)}")
        if resp["allowed"] != m.response["allowed"]:
            problems.append(f"{m.entry.id}: second mutation allowed={resp['allowed']}: "
                            f"{(resp.get('status') or {}).get('message')}")  # fmt: skip
    assert not problems, fails(problems)


# ---------------------------------------------------------------------------------------
# cni mode


def _injected(folder: str, mode: str) -> list[Mutation]:
    return [m for m in mutations(folder, mode) if m.status == "injected"]


@pytest.mark.parametrize("folder", FOLDER_CASES)
def test_cni_injection_adds_no_gate_violation(folder: str) -> None:
    """SPEC 4: the gate's verdict on the injected pod (/validate, CNI enforced) is its
    verdict on the original pod: with the deny action (pods that pass the gate and are
    injected still pass it) and with the warn action (violating pods are injected too,
    and keep exactly their own violations)."""
    problems = []
    for policy, batch in ((DEFAULT, mutations(folder, "cni")), (WARN, warn_mutations(folder))):
        for m in batch:
            if m.status != "injected" or m.mutated is None:
                continue
            before = validate_pod(m.original, "cni", m.uid + "-v0", policy)
            after = validate_pod(m.mutated, "cni", m.uid + "-v1", policy)
            if (before.allowed, before.violations) != (after.allowed, after.violations):
                problems.append(
                    f"{m.entry.id} [{policy.gate_action}]: before {before.allowed} "
                    f"{before.violations}, after {after.allowed} {after.violations}: "
                    f"{after.reason}"
                )
    assert not problems, fails(problems)


def _restricted_problems(container: dict[str, Any], pod: dict[str, Any]) -> list[str]:
    """The Pod Security `restricted` checks that concern a container meshgate injects."""
    sc = container.get("securityContext") or {}
    pod_sc = (pod.get("spec") or {}).get("securityContext") or {}
    caps = sc.get("capabilities") or {}
    seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
    run_as_user = sc.get("runAsUser", pod_sc.get("runAsUser"))
    found = []
    if sc.get("privileged") is True:
        found.append("privileged")
    if sc.get("allowPrivilegeEscalation") is not False:
        found.append("allowPrivilegeEscalation is not false")
    if "ALL" not in (caps.get("drop") or ()):
        found.append("does not drop ALL")
    if set(caps.get("add") or ()) - {"NET_BIND_SERVICE"}:
        found.append(f"adds {caps.get('add')}")
    if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
        found.append("runAsNonRoot is not true")
    if run_as_user == 0:
        found.append("runs as uid 0")
    if seccomp not in ("RuntimeDefault", "Localhost"):
        found.append(f"seccompProfile {seccomp!r}")
    return found


@pytest.mark.parametrize("folder", FOLDER_CASES)
def test_cni_injected_containers_meet_pod_security_restricted(folder: str) -> None:
    """SPEC 2: everything cni mode injects passes Pod Security restricted; the containers
    the status annotation lists are the ones checked (they all exist)."""
    problems = []
    for m in _injected(folder, "cni"):
        assert m.mutated is not None
        status = json.loads(annotations(m.mutated)[STATUS])
        listed = [*(status.get("containers") or ()), *(status.get("initContainers") or ())]
        if PROXY not in listed:
            problems.append(f"{m.entry.id}: status lists no {PROXY}: {listed}")
        for name in listed:
            container = find(m.mutated, name)
            if container is None:
                problems.append(f"{m.entry.id}: status lists {name}, which the pod lacks")
                continue
            for problem in _restricted_problems(container, m.mutated):
                problems.append(f"{m.entry.id}: {name} {problem}")
    assert not problems, fails(problems)


@pytest.mark.parametrize("folder", FOLDER_CASES)
def test_cni_injected_pods_will_be_redirected(folder: str) -> None:
    """SPEC 2 "What the Istio CNI plugin needs": a non-gateway pod injected in cni mode
    has the Multus entry for cni.network, the status annotation, at least two regular
    containers, no istio-init, no inject annotation that parses false; and gate.requireMesh
    agrees. A gateway gets neither a network nor an init container."""
    problems = []
    for m in _injected(folder, "cni"):
        assert m.mutated is not None
        notes = annotations(m.mutated)
        spec = m.mutated.get("spec") or {}
        where = m.entry.id
        inits = [c.get("name") for c in spec.get("initContainers") or ()]
        if INIT in inits:
            problems.append(f"{where}: istio-init in cni mode")
        if m.gateway:
            if notes.get(MULTUS) != annotations(m.original).get(MULTUS):
                problems.append(f"{where}: gateway got a Multus network")
            if len(inits) != len((m.original.get("spec") or {}).get("initContainers") or ()):
                problems.append(f"{where}: gateway got an init container")
            continue
        if (NAMESPACE, "istio-cni") not in networks(notes.get(MULTUS), NAMESPACE):
            problems.append(f"{where}: no Multus entry for istio-cni: {notes.get(MULTUS)!r}")
        if STATUS not in notes:
            problems.append(f"{where}: no {STATUS}")
        if len(spec.get("containers") or ()) < 2:
            problems.append(f"{where}: fewer than two regular containers")
        if notes.get("sidecar.istio.io/inject") in GO_FALSE:
            problems.append(f"{where}: inject annotation says false")
        if VALIDATION not in inits:
            problems.append(f"{where}: no {VALIDATION} (cni.validationInitContainer is on)")
        else:
            # istio-validation runs as the proxy user and checks the rules that exempt it
            proxy_ids = run_as(find(m.mutated, PROXY))
            validation = find(m.mutated, VALIDATION) or {}
            if run_as(validation) != proxy_ids:
                problems.append(f"{where}: {VALIDATION} runs as {run_as(validation)}, "
                                f"the proxy as {proxy_ids}")  # fmt: skip
            if iptables_uid(validation) != str(proxy_ids[0]):
                problems.append(f"{where}: {VALIDATION} -u {iptables_uid(validation)}")
        verdict = validate_pod(m.mutated, "cni", m.uid + "-mesh", REQUIRE_MESH)
        if not verdict.allowed:
            problems.append(f"{where}: requireMesh refuses it: {verdict.reason}")
    assert not problems, fails(problems)


# ---------------------------------------------------------------------------------------
# init mode


@pytest.mark.parametrize("folder", FOLDER_CASES)
def test_init_mode_istio_init_comes_first_with_net_admin(folder: str) -> None:
    """SPEC 2, init mode: istio-init is the first init container, runs istio-iptables and
    adds NET_ADMIN and NET_RAW; the proxy is a regular container (sidecar.native: false);
    no Multus network is added. Gateways get no istio-init."""
    problems = []
    for m in _injected(folder, "init"):
        assert m.mutated is not None
        spec = m.mutated.get("spec") or {}
        inits = spec.get("initContainers") or []
        where = m.entry.id
        if annotations(m.mutated).get(MULTUS) != annotations(m.original).get(MULTUS):
            problems.append(f"{where}: init mode changed the Multus annotation")
        if PROXY not in [c.get("name") for c in spec.get("containers") or ()]:
            problems.append(f"{where}: {PROXY} is not a regular container")
        if m.gateway:
            if INIT in [c.get("name") for c in inits]:
                problems.append(f"{where}: gateway got istio-init")
            continue
        if not inits or inits[0].get("name") != INIT:
            problems.append(f"{where}: first init container is not istio-init: "
                            f"{[c.get('name') for c in inits]}")  # fmt: skip
            continue
        if INIT in [c.get("name") for c in (m.original.get("spec") or {}).get("initContainers")
                    or ()]:  # fmt: skip
            continue  # the pod's own istio-init: its fields win over the template (SPEC 2)
        init = inits[0]
        added = set(((init.get("securityContext") or {}).get("capabilities") or {}).get("add")
                    or ())  # fmt: skip
        if not {"NET_ADMIN", "NET_RAW"} <= added:
            problems.append(f"{where}: istio-init adds {sorted(added)}")
        if (init.get("args") or [None])[0] != "istio-iptables":
            problems.append(f"{where}: istio-init does not run istio-iptables")
        proxy_uid = run_as(find(m.mutated, PROXY))[0]
        if annotations(m.mutated).get("sidecar.istio.io/interceptionMode") != "TPROXY" and (
            iptables_uid(init) != str(proxy_uid)
        ):  # with TPROXY the proxy runs as root and -u keeps the proxy uid, as in Istio
            problems.append(f"{where}: istio-iptables -u {iptables_uid(init)}, proxy uid "
                            f"{proxy_uid}")  # fmt: skip
    assert not problems, fails(problems)


# ---------------------------------------------------------------------------------------
# the corpus tables: net_admin_gate_expect (README: "the verdict of meshgate's gate for the
# pod in a namespace with enforceCNI: true and the default gate settings")


def read_table(folder: str, name: str) -> list[dict[str, str]]:
    with (CORPUS / folder / name).open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


TABLES = {
    "psa": "EXPECTED.tsv",
    "kyverno": "EXPECTED.tsv",
    "apps": "INDEX.tsv",
    "linkerd": "INDEX.tsv",
}

# Where meshgate's answer differs from the table, and why the SPEC wins. The tables judge
# capabilities only; SPEC 5 refuses an object that is not a valid pod before any gate:
# these three Linkerd fixtures carry `config.linkerd.io/enable-debug-sidecar: True` / `False`
# unquoted, a YAML boolean where metadata.annotations must map strings to strings (the API
# server itself would refuse them), so /validate answers allowed: false naming the field.
DISAGREEMENTS: dict[tuple[str, str, str], str] = {
    ("linkerd", "proxy-injector-fake-data/pod-with-custom-debug-tag.yaml", "Pod/nginx"):
        "invalid: annotation value is a YAML boolean",
    ("linkerd", "proxy-injector-fake-data/pod-with-debug-disabled.yaml", "Pod/nginx"):
        "invalid: annotation value is a YAML boolean",
    ("linkerd", "proxy-injector-fake-data/pod-with-debug-enabled.yaml", "Pod/nginx"):
        "invalid: annotation value is a YAML boolean",
}  # fmt: skip


def _row_key(folder: str, row_or_entry: Any) -> tuple[str, str]:
    if isinstance(row_or_entry, Entry):
        e = row_or_entry
        return (e.file, "" if folder == "psa" else f"{e.kind}/{e.name}")
    return (row_or_entry["file"], "" if folder == "psa" else row_or_entry["resource"])


@pytest.mark.parametrize("folder", [pytest.param(f, id=f) for f in TABLES])
def test_gate_verdicts_match_the_corpus_tables(folder: str) -> None:
    """/validate on the ORIGINAL object (Pod or workload) in the enforced namespace answers
    `reject` → allowed: false, `allow` → allowed: true; every row with a verdict matches
    exactly one object, and every object has a row."""
    rows: dict[tuple[str, str], collections.deque[str]] = collections.defaultdict(collections.deque)
    for row in read_table(folder, TABLES[folder]):
        if row["net_admin_gate_expect"] in ("allow", "reject"):
            rows[_row_key(folder, row)].append(row["net_admin_gate_expect"])
    problems, seen = [], set()
    for entry in inventory(folder).entries:
        key = _row_key(folder, entry)
        if not rows.get(key):
            problems.append(f"{entry.id}: no table row left for {key}")
            continue
        expected = rows[key].popleft()
        outcome = validate_original(entry, "cni")
        got = "allow" if outcome.allowed else "reject"
        known = DISAGREEMENTS.get((folder, *key))
        if known:
            seen.add((folder, *key))
            if got == expected:
                problems.append(f"{entry.id}: documented disagreement no longer happens")
            elif outcome.decision != known.split(":")[0]:
                problems.append(f"{entry.id}: disagrees for another reason: {outcome.reason}")
        elif got != expected:
            problems.append(f"{entry.id}: table says {expected}, /validate says {got}: "
                            f"{outcome.reason}")  # fmt: skip
        if outcome.decision == "ignored":
            problems.append(f"{entry.id}: /validate does not handle {entry.kind}")
    problems += [f"table row {k} matches no object" for k, left in rows.items() if left]
    stale = {k for k in DISAGREEMENTS if k[0] == folder} - seen
    problems += [f"documented disagreement {k} matches no object" for k in sorted(stale)]
    assert not problems, fails(problems)


def test_the_table_lists_the_unparseable_file() -> None:
    """linkerd/INDEX.tsv marks the malformed file `n/a` with a YAML parse error: the same
    file the loader counts as unparseable."""
    marked = [r["file"] for r in read_table("linkerd", "INDEX.tsv")
              if r["notes"].startswith("YAML PARSE ERROR")]  # fmt: skip
    assert marked == inventory("linkerd").unparseable == EXPECTED_UNPARSEABLE["linkerd"]


def _istio_index() -> dict[str, dict[str, str]]:
    return {r["file"]: r for r in read_table("istio-inject", "INDEX.tsv")}


def test_istio_index_lists_every_input_and_its_kinds() -> None:
    """istio-inject/INDEX.tsv has one row per input, and its kind column adds up to what
    the loader read (Lists counted by their items)."""
    index = _istio_index()
    files = sorted(p.name for p in (CORPUS / "istio-inject").iterdir() if p.suffix == ".yaml")
    assert sorted(index) == files
    assert len(files) == 108
    assert sum(1 for f in files if f.endswith(".iop.yaml")) == 8
    kinds = collections.Counter(k for r in index.values() for k in r["kind"].split(","))
    inv = inventory("istio-inject")
    read = collections.Counter(e.kind for e in inv.entries) + inv.other_kinds
    assert kinds == read


@pytest.mark.parametrize("mode", [pytest.param(m, id=m) for m in ("cni", "init")])
def test_istio_inputs_that_upstream_rejects_are_refused_naming_the_annotation(mode: str) -> None:
    """INDEX.tsv's EXPECT-ERROR rows (traffic-annotations-bad-*): refused in both modes,
    whatever the gate says, with a message that names the bad annotation."""
    problems = []
    index = _istio_index()
    bad = {e.file for e in inventory("istio-inject").entries
           if "EXPECT-ERROR" in index[e.file]["upstream_test_outputs"]}  # fmt: skip
    assert len(bad) == 5
    for m in mutations("istio-inject", mode):
        if m.entry.file not in bad:
            continue
        annotation = index[m.entry.file]["injection_relevant_labels_annotations"].split("=")[0]
        message = (m.response.get("status") or {}).get("message", "")
        if m.status != "refused" or annotation not in message:
            problems.append(f"{m.entry.id}: {m.status}: {message!r} (wanted {annotation})")
    assert not problems, fails(problems)


@pytest.mark.parametrize(("mode"), [pytest.param(m, id=m) for m in MODES])
def test_istio_inputs_that_upstream_leaves_alone_are_not_mutated(mode: str) -> None:
    """hostNetwork inputs and sidecar.istio.io/inject=false: no patch in any mode."""
    index = _istio_index()
    chosen = {
        f for f, r in index.items()
        if r["hostNetwork"] == "true"
        or "sidecar.istio.io/inject=false" in r["injection_relevant_labels_annotations"]
    }  # fmt: skip
    assert chosen == {"hello-host-network.yaml", "hello-host-network-with-ns.yaml",
                      "hello-ignore.yaml"}  # fmt: skip
    statuses = {m.entry.id: m.status for m in mutations("istio-inject", mode)
                if m.entry.file in chosen}  # fmt: skip
    assert statuses and set(statuses.values()) == {"skipped"}, statuses


@pytest.mark.parametrize(("folder", "mode"), ALL_CASES)
def test_mutate_and_validate_agree_on_every_pod(folder: str, mode: str) -> None:
    """SPEC 4: /mutate also denies in deny mode, with the same gate as /validate, so for
    every pod both endpoints give the same verdict, and the same message when they refuse
    (every reason at once, refusals and gate violations together)."""
    problems = []
    for m in mutations(folder, mode):
        v = validate_pod(m.original, mode, m.uid + "-validate").review["response"]
        if v["allowed"] != m.response["allowed"]:
            problems.append(f"{m.entry.id}: /mutate allowed={m.response['allowed']}, "
                            f"/validate allowed={v['allowed']}")  # fmt: skip
        elif not v["allowed"] and v["status"]["message"] != m.response["status"]["message"]:
            problems.append(f"{m.entry.id}: messages differ:\n    /mutate   "
                            f"{m.response['status']['message']}\n    /validate "
                            f"{v['status']['message']}")  # fmt: skip
        if "patch" in v:
            problems.append(f"{m.entry.id}: /validate returned a patch")
    assert not problems, fails(problems)


@pytest.mark.parametrize("folder", FOLDER_CASES)
def test_explain_reads_every_object(folder: str) -> None:
    """`meshgate explain` (SPEC 7) goes through the same objects: one result per Pod and
    workload (with its /mutate answer, plus /validate for workloads) and one per other
    object, none dropped."""
    inv = inventory(folder)
    results = []
    for path in sorted((CORPUS / folder).rglob("*")):
        rel = path.relative_to(CORPUS / folder).as_posix()
        if not path.is_file() or _file_class(path) != "manifest" or rel in inv.unparseable:
            continue
        docs = list(yaml.load_all(path.read_text(encoding="utf-8"), Loader=LOADER))
        results += explain(docs, context("cni"))
    entries = inv.count(workload=False) + inv.count(workload=True)
    assert len(results) == entries + sum(inv.other_kinds.values()) + len(inv.fragments)
    assert sum(1 for r in results if "mutate" in r) == entries
    assert sum(1 for r in results if "validate" in r) == inv.count(workload=True)
