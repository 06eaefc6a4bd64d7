"""Fuzzing /mutate and /validate: malformed bodies, random and mutated pods, random policies.

Property-based (hypothesis). Most examples go through `admission.parse_review` and
`admission.admit` directly (fast); a smaller number through the real ASGI app with httpx's
ASGITransport. What must hold for every input (SPEC 4, 5):

- never an unhandled exception, never a 5xx: bad input is a 4xx (HTTP) or BadRequest (engine)
  with a message, and a well-formed review whose object is malformed is `allowed: false`;
- the uid is echoed whenever it is readable (the body parses as JSON and request.uid is a
  non-empty string), in reviews and in HTTP error bodies;
- every deny carries a message and a 4xx code; a patch comes only with `allowed: true`, only
  from /mutate, only non-empty, with patchType JSONPatch;
- every patch applies to the request's object with `jsonpatch`, and is idempotent: mutating
  the mutated pod yields no patch;
- injection never changes the gate's verdict: the injected pod has exactly the violations
  of the original; and a pod meshgate injected in cni mode passes gate.requireMesh;
- the gate agrees with an independent model of SPEC 4 built from how each capability
  spelling was generated (which transformations keep it a name the spec counts).

Inputs: raw bytes and random JSON; AdmissionReviews of every handled (and some unhandled)
kind with 1-4 random edits anywhere (a value replaced by random JSON, a key or item removed
or added); random well-typed pods (labels, annotations and containers drawn from the values
meshgate reads, capabilities from the spelling strategy, nulls where a field may be absent);
corpus pods (tests/corpus) with capabilities added and fields dropped or retyped; pods that
declare their own istio-proxy / istio-init / istio-validation with odd fields; all under
random valid policies (every rule key, gate, cni.network in both forms, the validation
container, native sidecars with pluginSupportsNativeSidecars) and random namespace labels,
including namespaces whose labels cannot be read. The @example rows are regressions for
the bugs this file found.

Budgets: each test's max_examples is scaled by the active Hypothesis profile (tests/
conftest.py): "ci" for `make test` (bounded, derandomized), "fuzz" for `make fuzz`. The
number of examples run is printed in the "fuzz" section of the terminal summary.

Schemathesis is not used: the admission routes are plain Starlette routes that take the raw
body (the app is built with openapi_url=None), so there is no OpenAPI schema to drive it;
the strategies below generate AdmissionReviews directly instead.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import functools
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import jsonpatch
import orjson
import pytest
import yaml
from helpers import decode_patch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from webhook.admission import BadRequest, Context, admit, parse_review
from webhook.app import Runtime, create_app
from webhook.decision import Namespace, decide, mesh_violations
from webhook.namespaces import StaticNamespaces
from webhook.objects import check_pod
from webhook.policy import Policy, compile_policy, default_policy

OWN_NAMESPACE = "meshgate-system"
CORPUS = Path(__file__).parent / "corpus"
EXAMPLES: collections.Counter[str] = collections.Counter()


def budget(n: int) -> int:
    """`n` examples under the "ci" profile (max_examples 100), scaled for the others."""
    return max(1, n * settings.default.max_examples // 100)


@pytest.fixture(scope="module", autouse=True)
def _count_examples(fuzz_summary: list[str]) -> Iterator[None]:
    yield
    if EXAMPLES:
        parts = ", ".join(f"{name} {count}" for name, count in sorted(EXAMPLES.items()))
        fuzz_summary.append(f"{sum(EXAMPLES.values())} examples: {parts}")


# ---------------------------------------------------------------------------------------
# vocabularies

INJECT_LABEL = "sidecar.istio.io/inject"
MODE_LABEL = "meshgate.io/mode"
STATUS = "sidecar.istio.io/status"
MULTUS = "k8s.v1.cni.cncf.io/networks"
INTERCEPTION = "sidecar.istio.io/interceptionMode"
TRAFFIC = "traffic.sidecar.istio.io/"

CAP_WORDS = ["NET_ADMIN", "NET_RAW", "SYS_ADMIN", "KILL", "MKNOD", "CHOWN", "SYS_PTRACE",
             "SETUID", "NET_BIND_SERVICE", "ALL"]  # fmt: skip
GATE_NAMES = ["NET_ADMIN", "NET_RAW", "SYS_ADMIN", "KILL", "MKNOD", "SYS_PTRACE"]
# Trimmed by Python's str.strip (the spec says "trim"; a superset of Go's TrimSpace).
SPACES = [" ", "\t", "\n", "\r", "\x0b", "\x0c", "\x85", "\xa0", "\u1680", "\u2000", "\u2003",
          "\u2009", "\u200a", "\u2028", "\u2029", "\u202f", "\u205f", "\u3000"]  # fmt: skip
# Not white space and not a letter of any capability name: a spelling holding one is not a
# name any runtime grants.
BREAKERS = ["\u200b", "\ufeff", "\u00ad", "-", ".", "\x00", "\u0410", "\u0130", "\uff3f"]

NAMESPACE_NAMES = ["mesh", "ns-1", "ns-22", "app1", "team-x", "sandbox-a", "optin", "legacy",
                   "kube-system", "istio-system", OWN_NAMESPACE, "ghost-1"]  # fmt: skip
NAMESPACE_LABELS = st.dictionaries(
    st.sampled_from(["istio-injection", MODE_LABEL, "env", "tier"]),
    st.sampled_from(["enabled", "disabled", "init", "cni", "prod", "dev", ""]),
    max_size=3,
)
CONTAINER_NAMES = ["app", "web", "sidecar", "istio-proxy", "istio-init", "istio-validation",
                   "debug", "app"]  # fmt: skip


class Lookup(StaticNamespaces):
    """Namespace labels for one example; names starting with "ghost" cannot be read."""

    def __call__(self, name: str) -> Mapping[str, str] | None:
        if name.startswith("ghost"):
            return None
        return super().__call__(name)


# ---------------------------------------------------------------------------------------
# capability spellings, with what SPEC 4 says of each


class Spelled(str):
    """A capability spelling that knows the name it was made from and whether SPEC 4 counts
    it: `upper` (counts by the upper-case comparison) and `folded` (by case folding)."""

    word: str
    upper: bool
    folded: bool

    def counts(self, gated: set[str]) -> bool:
        if not (self.upper or self.folded):
            return False
        return bool(gated) if self.word == "ALL" else self.word in gated


@st.composite
def spellings(draw: st.DrawFn) -> Spelled:
    word = draw(st.sampled_from(CAP_WORDS))
    upper_ok = folded_ok = True
    out = []
    for ch in word:
        options = [ch, ch.lower()]
        if ch == "I":
            options.append("\u0131")  # dotless ı: upper-cases to I, does not fold to i
        if ch == "S":
            options.append("\u017f")  # long ſ: upper-cases to S and folds to s
        if ch == "K":
            options.append("\u212a")  # Kelvin sign: folds to k, stays itself upper-cased
        pick = draw(st.sampled_from(options))
        upper_ok &= pick != "\u212a"
        folded_ok &= pick != "\u0131"
        out.append(pick)
    text = "".join(out)
    if draw(st.booleans()):
        text = "".join(draw(st.sampled_from([c, c.lower()])) for c in "CAP_") + text
    if draw(st.integers(0, 9)) == 0:  # break it: the result is no capability name
        where = draw(st.integers(0, len(text)))
        text = text[:where] + draw(st.sampled_from(BREAKERS)) + text[where:]
        upper_ok = folded_ok = False
    if draw(st.integers(0, 19)) == 0:  # or write it in fullwidth letters
        text = "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)
        upper_ok = folded_ok = False
    pad = st.text(st.sampled_from(SPACES), max_size=3)
    spelled = Spelled(draw(pad) + text + draw(pad))
    spelled.word, spelled.upper, spelled.folded = word, upper_ok, folded_ok
    return spelled


def test_spellings_model_matches_the_spec_examples() -> None:
    """The model above, on the spec's own examples."""
    def spelled(text: str, word: str, upper: bool, folded: bool) -> Spelled:
        s = Spelled(text)
        s.word, s.upper, s.folded = word, upper, folded
        return s
    for text, word, upper, folded in [("net_adm\u0131n", "NET_ADMIN", True, False),
                                      ("\u017fys_admin", "SYS_ADMIN", True, True),
                                      ("\u212aILL", "KILL", False, True)]:  # fmt: skip
        assert spelled(text, word, upper, folded).counts({word})
    pod = {"spec": {"containers": [{"name": "a", "securityContext": {"capabilities": {
        "add": ["net_adm\u0131n", "\u017fys_admin", "\u212aILL"]}}}]}}  # fmt: skip
    policy = compile_policy({"gate": {"capabilities": ["NET_ADMIN", "SYS_ADMIN", "KILL"]}})
    decision = decide(pod, Namespace("mesh", {"istio-injection": "enabled"}), policy, "x")
    assert len(decision.gate.violations) == 3


# ---------------------------------------------------------------------------------------
# random valid policies

GLOBS = ["mesh", "mesh*", "ns-[0-9]", "ns-*", "app?", "team-*", "*", "sandbox-?", "[!k]*"]
SELECTOR_KEYS = ["istio-injection", MODE_LABEL, "env", "tier"]
SELECTOR_VALUES = ["enabled", "disabled", "init", "cni", "prod", "dev"]
LABEL_KEYS_FOR_PODS = ["app", "version", "legacy", "tier", "app.kubernetes.io/name"]


@st.composite
def selectors(draw: st.DrawFn, keys: list[str] = SELECTOR_KEYS) -> dict[str, Any]:
    selector: dict[str, Any] = {}
    if draw(st.booleans()):
        selector["matchLabels"] = draw(st.dictionaries(st.sampled_from(keys),
                                                       st.sampled_from(SELECTOR_VALUES),
                                                       max_size=2))  # fmt: skip
    if draw(st.booleans()):
        expressions = []
        for _ in range(draw(st.integers(1, 2))):
            operator = draw(st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist"]))
            expression: dict[str, Any] = {"key": draw(st.sampled_from(keys)),
                                          "operator": operator}  # fmt: skip
            if operator in ("In", "NotIn"):
                expression["values"] = draw(st.lists(st.sampled_from(SELECTOR_VALUES),
                                                     min_size=1, max_size=3))  # fmt: skip
            expressions.append(expression)
        selector["matchExpressions"] = expressions
    return selector


@st.composite
def rules(draw: st.DrawFn, *, default: bool = False, native: bool = False) -> dict[str, Any]:
    rule: dict[str, Any] = {}
    if not default:
        match: dict[str, Any] = {}
        kind = draw(st.sampled_from(["names", "selector", "both"]))
        if kind in ("names", "both"):
            match["names"] = draw(st.lists(st.sampled_from(GLOBS), min_size=1, max_size=3))
        if kind in ("selector", "both"):
            match["selector"] = draw(selectors())
        rule["match"] = match
    mode = draw(st.sampled_from(["cni", "init", "disabled"]))
    enforce = mode != "init" and draw(st.booleans())
    if not default or draw(st.booleans()):
        rule["mode"] = mode
    elif enforce:
        rule["mode"] = "cni"  # the default rule's mode defaults to cni
    if draw(st.booleans()):
        rule["injection"] = draw(st.sampled_from(["enabled", "opt-in"]))
    if enforce or draw(st.booleans()):
        rule["enforceCNI"] = enforce
    pod_modes = ["cni", "disabled"] if enforce else ["cni", "init", "disabled"]
    if draw(st.booleans()):
        rule["allowPodModes"] = draw(st.lists(st.sampled_from(pod_modes), unique=True))
    if draw(st.booleans()):
        rule["gateAction"] = draw(st.sampled_from(["deny", "warn", "audit"]))
    return rule


@st.composite
def policy_docs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid policy document (SPEC 3), built so that it has no semantic conflict; tests
    compile it (a SchemaError there is a failure). Examples show the document."""
    doc: dict[str, Any] = {}
    if draw(st.booleans()):
        doc["version"] = 1
    if draw(st.booleans()):
        doc["exemptNamespaces"] = draw(st.lists(st.sampled_from(
            ["kube-system", "istio-system", "team-*", "sandbox-?", "[ab]-ns"]), max_size=3))
    if draw(st.booleans()):
        doc["namespaces"] = draw(st.lists(rules(), max_size=4))
    if draw(st.booleans()):
        doc["default"] = draw(rules(default=True))
    pods: dict[str, Any] = {}
    if draw(st.booleans()):
        pods["injectLabel"] = draw(st.sampled_from([INJECT_LABEL, "mesh.example.com/inject"]))
    if draw(st.booleans()):
        pods["modeLabel"] = draw(st.sampled_from([MODE_LABEL, "mesh-mode"]))
    for key in ("neverInjectSelector", "alwaysInjectSelector"):
        if draw(st.booleans()):
            pods[key] = draw(st.lists(selectors(LABEL_KEYS_FOR_PODS), max_size=2))
    if pods:
        doc["pods"] = pods
    gate: dict[str, Any] = {}
    if draw(st.booleans()):
        gate["action"] = draw(st.sampled_from(["deny", "warn", "audit"]))
    if draw(st.booleans()):
        names = draw(st.lists(st.sampled_from(GATE_NAMES), max_size=3, unique=True))
        # the policy may spell them as a pod would: trimmed, any case, optional CAP_
        gate["capabilities"] = [draw(st.sampled_from([n, n.lower(), "CAP_" + n, f" {n} "]))
                                for n in names]  # fmt: skip
    if draw(st.booleans()):
        gate["exempt"] = {"serviceAccounts": draw(st.lists(st.sampled_from(
            ["mesh/trusted", "ns-1/default", "team-x/builder"]), max_size=2))}
    if draw(st.booleans()):
        gate["requireMesh"] = draw(st.booleans())
    if gate:
        doc["gate"] = gate
    cni: dict[str, Any] = {}
    if draw(st.booleans()):
        cni["network"] = draw(st.sampled_from(["istio-cni", "mesh-net", "kube-system/istio-cni",
                                               "istio-cni@eth1"]))  # fmt: skip
    if draw(st.booleans()):
        cni["validationInitContainer"] = draw(st.booleans())
    if draw(st.booleans()):
        cni["validationContainer"] = {"image": "registry.example/validate:1"}
    native = draw(st.booleans())
    if native or draw(st.booleans()):
        cni["pluginSupportsNativeSidecars"] = native or draw(st.booleans())
    if cni:
        doc["cni"] = cni
    sidecar: dict[str, Any] = {}
    if native or draw(st.booleans()):
        sidecar["native"] = native
    if draw(st.booleans()):
        sidecar["container"] = draw(st.sampled_from([
            {"image": "registry.example/proxy:2"},
            {"env": [{"name": "EXTRA", "value": "1"}]},
            {"resources": {"limits": {"cpu": "1"}}, "securityContext": {"runAsUser": 1500}},
        ]))  # fmt: skip
    if draw(st.booleans()):
        sidecar["volumes"] = [{"name": "extra", "emptyDir": {}}]
    if sidecar:
        doc["sidecar"] = sidecar
    if draw(st.booleans()):
        doc["init"] = {"container": {"image": "registry.example/init:2"}}
    return doc





# ---------------------------------------------------------------------------------------
# random pods (well-typed; the wrong types come from `corrupted` below)

ANNOTATION_VALUES: dict[str, st.SearchStrategy[str]] = {
    INJECT_LABEL: st.sampled_from(["true", "false", "False", "F", "0", "y", "maybe", ""]),
    INTERCEPTION: st.sampled_from(["REDIRECT", "TPROXY", "NONE", "tproxy", ""]),
    STATUS: st.sampled_from([
        '{"initContainers":["istio-validation"],"containers":["istio-proxy"],'
        '"volumes":["istio-envoy"],"imagePullSecrets":null,"revision":"default"}',
        '{"containers":["istio-proxy"]}', '{"containers":[]}', "{not json", "[]", "null"]),
    MULTUS: st.sampled_from(["", "istio-cni", "macvlan, istio-cni", "other/istio-cni",
                             "istio-cni@eth1", "a,b", '[{"name":"istio-cni"}]',
                             '[{"name":"macvlan","namespace":"x"}]', "[bad", "[]", ",",
                             '[{"name": 5}]', "mesh-net"]),  # fmt: skip
    TRAFFIC + "includeOutboundIPRanges": st.sampled_from(["*", "", "10.0.0.0/8", "10.0.0.1/33",
                                                          "10.0.0.0/8,fd00::/8", "x"]),
    TRAFFIC + "excludeOutboundIPRanges": st.sampled_from(["", "10.0.0.0/8", "10.0.0.0/8, 1"]),
    TRAFFIC + "includeInboundPorts": st.sampled_from(["*", "", "80,443", "0", "http"]),
    TRAFFIC + "excludeInboundPorts": st.sampled_from(["", "15020", "1-2", "65536"]),
    TRAFFIC + "includeOutboundPorts": st.sampled_from(["*", "", "80", "-1"]),
    TRAFFIC + "excludeOutboundPorts": st.sampled_from(["", "53", "a,b"]),
    TRAFFIC + "excludeInterfaces": st.sampled_from(["", "eth1", "eth1,net1", "a/b", " "]),
    TRAFFIC + "kubevirtInterfaces": st.sampled_from(["net1", ""]),
    "kubernetes.io/config.mirror": st.just("x"),
    "kubectl.kubernetes.io/default-container": st.sampled_from(["app", "istio-proxy"]),
    "meshgate.io/injected": st.sampled_from(["cni@000000000000", "x"]),
    "a/b~c": st.text(max_size=5),
}
POD_LABELS: dict[str, st.SearchStrategy[str]] = {
    INJECT_LABEL: st.sampled_from(["true", "false", "yes", "no", "ON", "maybe", ""]),
    MODE_LABEL: st.sampled_from(["cni", "init", "disabled", "legacy"]),
    "mesh.example.com/inject": st.sampled_from(["true", "false"]),
    "mesh-mode": st.sampled_from(["cni", "disabled"]),
    "app": st.sampled_from(["web", "api"]),
    "version": st.sampled_from(["v1", "v2"]),
    "legacy": st.sampled_from(["true", "false"]),
    "tier": st.sampled_from(["prod", "dev", "enabled"]),
    "security.istio.io/tlsMode": st.just("istio"),
}


def _some_of(table: Mapping[str, st.SearchStrategy[str]], max_size: int) -> Any:
    return st.lists(st.sampled_from(sorted(table)), max_size=max_size, unique=True).flatmap(
        lambda keys: st.fixed_dictionaries({k: table[k] for k in keys}))


@st.composite
def containers(draw: st.DrawFn, init: bool = False) -> dict[str, Any]:
    c: dict[str, Any] = {"name": draw(st.one_of(st.sampled_from(CONTAINER_NAMES),
                                                st.text(min_size=1, max_size=8)))}  # fmt: skip
    if draw(st.booleans()):
        c["image"] = draw(st.sampled_from(["registry.example/app:1", "auto",
                                           "docker.io/istio/proxyv2:1.22.0"]))  # fmt: skip
    context: dict[str, Any] = {}
    if draw(st.integers(0, 2)) == 0:
        caps: dict[str, Any] = {}
        if draw(st.booleans()):
            caps["add"] = draw(st.lists(spellings(), max_size=3))
        if draw(st.booleans()):
            caps["drop"] = draw(st.lists(spellings(), max_size=2))
        context["capabilities"] = caps
    if draw(st.integers(0, 4)) == 0:
        context["privileged"] = draw(st.booleans())
    if draw(st.integers(0, 4)) == 0:
        context["runAsUser"] = draw(st.sampled_from([0, 1000, 1337]))
    if context or draw(st.integers(0, 9)) == 0:
        c["securityContext"] = context
    if draw(st.integers(0, 3)) == 0:
        c["ports"] = draw(st.lists(st.fixed_dictionaries(
            {"containerPort": st.integers(1, 65535)},
            optional={"name": st.sampled_from(["http", "grpc"]),
                      "protocol": st.sampled_from(["TCP", "UDP"])}), max_size=2))  # fmt: skip
    if draw(st.integers(0, 4)) == 0:
        c["env"] = [{"name": "A", "value": "1"}]
    if init and draw(st.integers(0, 3)) == 0:
        c["restartPolicy"] = "Always"
    # JSON null where a field may be absent: valid (SPEC 5), and it must not crash anything
    for key in draw(st.lists(st.sampled_from(["securityContext", "ports", "env", "image",
                                              "volumeMounts", "lifecycle"]), max_size=1)):
        c[key] = None
    if isinstance(c.get("securityContext"), dict) and draw(st.integers(0, 9)) == 0:
        c["securityContext"]["capabilities"] = draw(st.sampled_from([None, {"add": None}]))
    return c


@st.composite
def pods(draw: st.DrawFn) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if draw(st.booleans()):
        meta["name"] = draw(st.sampled_from(["web", "web-1", "istio-ingressgateway-x"]))
    else:
        meta["generateName"] = "web-"
    if draw(st.booleans()):
        meta["labels"] = draw(_some_of(POD_LABELS, 4))
    if draw(st.booleans()):
        meta["annotations"] = draw(_some_of(ANNOTATION_VALUES, 4))
    spec: dict[str, Any] = {"containers": draw(st.lists(containers(), min_size=0, max_size=3))}
    if draw(st.booleans()):
        spec["initContainers"] = draw(st.lists(containers(init=True), max_size=2))
    if draw(st.integers(0, 4)) == 0:
        spec["ephemeralContainers"] = draw(st.lists(containers(), max_size=1))
    if draw(st.integers(0, 4)) == 0:
        spec["hostNetwork"] = draw(st.booleans())
    if draw(st.integers(0, 3)) == 0:
        spec["serviceAccountName"] = draw(st.sampled_from(["trusted", "default", "builder", ""]))
    if draw(st.integers(0, 5)) == 0:
        spec["serviceAccount"] = draw(st.sampled_from(["trusted", "builder"]))
    if draw(st.booleans()):
        spec["volumes"] = draw(st.lists(st.fixed_dictionaries(
            {"name": st.sampled_from(["data", "istio-envoy", "istio-data"]),
             "emptyDir": st.just({})}), max_size=2))  # fmt: skip
    obj: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod", "spec": spec}
    if meta or draw(st.booleans()):
        obj["metadata"] = meta
    return obj


# --- the corpus, mutated ---------------------------------------------------------------

WORKLOAD_PATHS = {
    "Deployment": ("spec", "template"), "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"), "ReplicaSet": ("spec", "template"),
    "ReplicationController": ("spec", "template"), "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}  # fmt: skip
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.cache
def corpus_pods() -> list[dict[str, Any]]:
    """Every Pod, and the Pod of every workload template, in tests/corpus."""
    found: list[dict[str, Any]] = []
    paths = sorted(p for p in CORPUS.rglob("*")
                   if p.suffix in (".yaml", ".yml", ".j2", ".injected"))  # fmt: skip
    for path in paths:
        try:
            docs = list(yaml.load_all(path.read_text(encoding="utf-8"), Loader=LOADER))
        except yaml.YAMLError:
            continue
        stack = list(docs)
        while stack:
            doc = stack.pop(0)
            if not isinstance(doc, dict):
                continue
            if doc.get("kind") == "List" and isinstance(doc.get("items"), list):
                stack.extend(doc["items"])
            elif doc.get("kind") == "Pod" and isinstance(doc.get("spec"), dict):
                found.append(doc)
            elif doc.get("kind") in WORKLOAD_PATHS:
                node: Any = doc
                for key in WORKLOAD_PATHS[doc["kind"]]:
                    node = node.get(key) if isinstance(node, dict) else None
                if isinstance(node, dict) and isinstance(node.get("spec"), dict):
                    found.append({"apiVersion": "v1", "kind": "Pod",
                                  "metadata": node.get("metadata") or {},
                                  "spec": node["spec"]})  # fmt: skip
    # the same object in JSON types, as the API server sends it (YAML dates and the like)
    return [json.loads(json.dumps(p, default=str)) for p in found]


def test_the_corpus_is_read() -> None:
    assert len(corpus_pods()) >= 200


JSON_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
                        st.floats(allow_nan=False, allow_infinity=False),
                        st.text(max_size=12))  # fmt: skip
JSON_KEYS = st.one_of(st.sampled_from([
    "uid", "kind", "group", "version", "operation", "namespace", "name", "subResource",
    "object", "oldObject", "metadata", "labels", "annotations", "spec", "containers",
    "initContainers", "ephemeralContainers", "securityContext", "capabilities", "add", "drop",
    "privileged", "hostNetwork", "serviceAccountName", "serviceAccount", "volumes", "template",
    "jobTemplate", "ports", "env", "image", "restartPolicy", "dryRun", "request", "apiVersion",
    "generateName", "runAsUser", "runAsGroup", "volumeMounts", "lifecycle", "args"]),
    st.text(max_size=8))  # fmt: skip
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(JSON_KEYS, inner, max_size=4)),
    max_leaves=12,
)  # fmt: skip


def _slots(node: Any, out: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Every (container, key or index) in a JSON tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            out.append((node, key))
            _slots(value, out)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out.append((node, i))
            _slots(value, out)
    return out


@st.composite
def corrupted(draw: st.DrawFn, base: Any, max_edits: int = 4) -> Any:
    """`base` with 1..max_edits random edits anywhere: a value replaced by random JSON (a
    wrong type, often), a key or item removed, or a key added."""
    obj = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, max_edits))):
        slots = _slots(obj, [])
        if not slots:
            break
        parent, key = draw(st.sampled_from(slots))
        edit = draw(st.sampled_from(["replace", "replace", "remove", "add"]))
        if edit == "replace":
            parent[key] = draw(JSON_VALUES)
        elif edit == "remove":
            del parent[key]
        elif isinstance(parent, dict):
            parent[draw(JSON_KEYS)] = draw(JSON_VALUES)
        else:
            parent.insert(draw(st.integers(0, len(parent))), draw(JSON_VALUES))
    return obj


@st.composite
def corpus_variants(draw: st.DrawFn) -> dict[str, Any]:
    """A corpus pod, with random capabilities or privileged added to random containers, and
    sometimes with random fields dropped, replaced or retyped."""
    obj = copy.deepcopy(draw(st.sampled_from(corpus_pods())))
    spec = obj["spec"]
    lists = [f for f in ("containers", "initContainers", "ephemeralContainers")
             if isinstance(spec.get(f), list) and spec[f]]  # fmt: skip
    for _ in range(draw(st.integers(0, 2)) if lists else 0):
        items = spec[draw(st.sampled_from(lists))]
        target = items[draw(st.integers(0, len(items) - 1))]
        if not isinstance(target, dict):
            continue
        context = target.setdefault("securityContext", {})
        if draw(st.integers(0, 3)) == 0:
            context["privileged"] = draw(st.booleans())
        else:
            caps = context.setdefault("capabilities", {})
            caps["add"] = [*(caps.get("add") or []), *draw(st.lists(spellings(), min_size=1,
                                                                    max_size=2))]  # fmt: skip
    if draw(st.booleans()):
        meta = obj.setdefault("metadata", {})
        extra = draw(_some_of(ANNOTATION_VALUES, 2))
        if extra:
            meta["annotations"] = {**(meta.get("annotations") or {}), **extra}
    if draw(st.integers(0, 2)) == 0:
        return draw(corrupted(obj, max_edits=3))  # type: ignore[no-any-return]
    return obj


# ---------------------------------------------------------------------------------------
# reviews

UID = "fuzz-0000-uid"
KINDS = [("", "Pod", None), ("", "Pod", "ephemeralcontainers"),
         ("", "EphemeralContainers", "ephemeralcontainers"),
         *[(("batch" if k in ("Job", "CronJob") else "" if k == "ReplicationController"
             else "apps"), k, None) for k in WORKLOAD_PATHS],
         ("extensions", "Deployment", None), ("", "ConfigMap", None)]  # fmt: skip


def request_for(obj: Any, *, group: str = "", kind: str = "Pod", sub: str | None = None,
                operation: str = "CREATE", namespace: str = "mesh", old: Any = None,
                dry_run: bool = False) -> dict[str, Any]:  # fmt: skip
    req: dict[str, Any] = {
        "uid": UID, "kind": {"group": group, "version": "v1", "kind": kind},
        "resource": {"group": group, "version": "v1", "resource": kind.lower() + "s"},
        "operation": operation, "namespace": namespace, "object": obj, "oldObject": old,
        "dryRun": dry_run, "userInfo": {"username": "fuzz"},
    }  # fmt: skip
    if sub:
        req["subResource"] = sub
    return req


def review_of(req: Any) -> dict[str, Any]:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req}


def wrap(kind: tuple[str, str, str | None], p: dict[str, Any], operation: str,
         namespace: str, old_pod: dict[str, Any] | None) -> dict[str, Any]:  # fmt: skip
    """`p` as the object of a request of that kind (a workload gets it as its template)."""
    group, name, sub = kind

    def shaped(q: dict[str, Any] | None) -> Any:
        if q is None:
            return None
        if name == "EphemeralContainers":
            return {"kind": name, "metadata": q.get("metadata"),
                    "ephemeralContainers": (q.get("spec") or {}).get("ephemeralContainers")}
        if name in WORKLOAD_PATHS:
            template = {"metadata": q.get("metadata") or {}, "spec": q.get("spec")}
            obj: dict[str, Any] = {"kind": name, "metadata": {"name": "w"}}
            node = obj
            path = WORKLOAD_PATHS[name]
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = template
            return obj
        return q

    return request_for(shaped(p), group=group, kind=name, sub=sub, operation=operation,
                       namespace=namespace, old=shaped(old_pod))  # fmt: skip


# ---------------------------------------------------------------------------------------
# the invariants


def readable_uid(body: bytes) -> str | None:
    try:
        review = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    request = review.get("request") if isinstance(review, dict) else None
    uid = request.get("uid") if isinstance(request, dict) else None
    return uid if isinstance(uid, str) and uid else None


def check_response(response: dict[str, Any], uid: str, endpoint: str, policy: Policy) -> None:
    assert response["uid"] == uid
    assert isinstance(response["allowed"], bool)
    notes = response["auditAnnotations"]
    assert {"decision", "reason", "policy"} <= set(notes) and notes["policy"] == policy.version
    assert all(isinstance(v, str) for v in notes.values())
    assert ("patch" in response) is ("patchType" in response)
    if "patch" in response:
        assert endpoint == "mutate" and response["allowed"] is True
        assert response["patchType"] == "JSONPatch"
    if not response["allowed"]:
        status = response["status"]
        assert isinstance(status["message"], str) and status["message"].strip()
        assert 400 <= status["code"] < 500
        assert status["status"] == "Failure"
    for warning in response.get("warnings") or []:
        assert isinstance(warning, str) and warning


def answer(body: bytes, endpoint: str, ctx: Context) -> dict[str, Any] | None:
    """The engine's answer to a body: the response, or None for a BadRequest (checked)."""
    try:
        request = parse_review(body)
    except BadRequest as err:
        assert 400 <= err.status < 500 and err.message
        assert err.uid == readable_uid(body)
        return None
    outcome = admit(request, endpoint, ctx)
    response: dict[str, Any] = outcome.review["response"]
    check_response(response, request["uid"], endpoint, ctx.policy)
    assert outcome.allowed is response["allowed"]
    # the whole review survives the wire
    assert orjson.loads(orjson.dumps(outcome.review)) == outcome.review
    return response


def mutated(obj: Any, response: dict[str, Any]) -> Any:
    """Apply the patch to the request's object (it must apply cleanly)."""
    result = jsonpatch.apply_patch(copy.deepcopy(obj), decode_patch(response))
    assert json.loads(json.dumps(result)) == result
    return result


def check_both_endpoints(req: dict[str, Any], ctx: Context) -> dict[str, Any] | None:
    """Both endpoints on one request; for an injected pod also the idempotency, the gate
    and the mesh invariants. Returns the /mutate response."""
    body = orjson.dumps(review_of(req))
    results = {endpoint: answer(body, endpoint, ctx) for endpoint in ("mutate", "validate")}
    response = results["mutate"]
    if response is None or "patch" not in response:
        return response
    obj = req["object"]
    injected = mutated(obj, response)
    again = answer(orjson.dumps(review_of({**req, "object": injected})), "mutate", ctx)
    assert again is not None
    assert again["allowed"] is True and "patch" not in again, again  # idempotent
    if req["kind"]["kind"] == "Pod" and not req.get("subResource"):
        check_pod(injected)  # injection leaves a valid pod valid
        namespace = Namespace(req["namespace"], ctx.namespaces(req["namespace"]))
        before = decide(obj, namespace, ctx.policy, ctx.own_namespace)
        after = decide(injected, namespace, ctx.policy, ctx.own_namespace)
        assert verdict(after) == verdict(before)
        # (a pod without containers is invalid: the API server refuses it anyway)
        if before.action == "inject" and before.mode == "cni" and (obj.get("spec") or {}).get(
            "containers"
        ):
            assert mesh_violations(injected, ctx.policy, req["namespace"]) == []
    return response


def verdict(decision: Any) -> tuple[Any, ...]:
    gate = decision.gate
    return (gate.enforced, gate.action, sorted((v.name, v.what) for v in gate.violations))


def model_violates(p: Any, policy: Policy) -> bool:
    """SPEC 4 on a generated pod, from how its capability spellings were made."""
    gated = set(policy.gated.names)
    spec = p.get("spec") or {}
    if (p.get("metadata") or {}).get("annotations", {}).get(INTERCEPTION) in ("NONE", "TPROXY"):
        return True
    for field in ("containers", "initContainers", "ephemeralContainers"):
        for c in spec.get(field) or []:
            context = c.get("securityContext") or {}
            if context.get("privileged") is True and gated:
                return True
            for spelling in (context.get("capabilities") or {}).get("add") or []:
                assert isinstance(spelling, Spelled)
                if spelling.counts(gated):
                    return True
    return False


def enforcing_rule(policy: Policy, namespace: str, labels: Mapping[str, str] | None,
                   account: str) -> Any:  # fmt: skip
    """The rule whose gate applies, when the namespace's labels are known; None if none."""
    if labels is None or namespace == OWN_NAMESPACE or policy.is_exempt(namespace):
        return None
    if f"{namespace}/{account}" in policy.exempt_service_accounts:
        return None
    rule = policy.rule_for(namespace, labels)
    return rule if rule.enforce_cni else None


# ---------------------------------------------------------------------------------------
# the engine: parse_review and admit

DEFAULT_CTX = Context(default_policy(), Lookup({"mesh": {"istio-injection": "enabled"}}),
                      OWN_NAMESPACE)  # fmt: skip


@settings(max_examples=budget(500))
@given(st.one_of(
    st.binary(max_size=300),
    JSON_VALUES.map(orjson.dumps),
    st.builds(lambda v: orjson.dumps(review_of(v)), JSON_VALUES),
    st.builds(lambda b: b"\xef\xbb\xbf" + b, st.just(orjson.dumps(review_of({"uid": "x"})))),
    st.sampled_from([b"", b"null", b"[]", b"{}", b'{"request": {"uid": "u"}}', b"1e400",
                     b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview",'
                     b'"request":{"uid":"u","kind":{"kind":"Pod"},"operation":"CREATE",'
                     b'"namespace":"mesh","object":{"spec":{"containers":[1e400]}}}}']),
))  # fmt: skip
def test_any_bytes(body: bytes) -> None:
    EXAMPLES["any_bytes"] += 1
    for endpoint in ("mutate", "validate"):
        answer(body, endpoint, DEFAULT_CTX)


@st.composite
def base_requests(draw: st.DrawFn) -> dict[str, Any]:
    """A well-formed request of any kind the webhook sees (or ignores)."""
    kind = draw(st.sampled_from(KINDS))
    operation = draw(st.sampled_from(["CREATE", "CREATE", "UPDATE", "DELETE", "CONNECT"]))
    if kind[2] == "ephemeralcontainers":
        operation = "UPDATE"
    p = draw(pods())
    old = draw(st.one_of(st.none(), pods())) if operation == "UPDATE" else None
    return wrap(kind, p, operation, draw(st.sampled_from(NAMESPACE_NAMES)), old)


def _regression(obj: Any, namespace: str = "mesh", **kw: Any) -> dict[str, Any]:
    return review_of(request_for(obj, namespace=namespace, **kw))


_APP = {"name": "app", "image": "registry.example/a:1"}
_MESH = {"mesh": {"istio-injection": "enabled"}, "legacy": {MODE_LABEL: "init"}}


@settings(max_examples=budget(500))
# Regressions (each was a 500): request.kind.group not a string; container ports not a list;
# init mode with TPROXY and a declared istio-proxy whose securityContext is null.
@example(review=_regression({"spec": {"containers": [_APP]}}, kind="Deployment",
                            group=["apps"]), doc={}, labels=_MESH)
@example(review=_regression({"spec": {"containers": [{**_APP, "ports": 5}]},
                             "metadata": {"labels": {INJECT_LABEL: "true"}}}),
         doc={}, labels=_MESH)
@example(review=_regression({"metadata": {"annotations": {INTERCEPTION: "TPROXY"}},
                             "spec": {"containers": [_APP, {"name": "istio-proxy",
                                                            "securityContext": None}]}},
                            namespace="legacy"), doc={}, labels=_MESH)
@given(st.builds(review_of, base_requests()).flatmap(corrupted), policy_docs(),
       st.dictionaries(st.sampled_from(NAMESPACE_NAMES), NAMESPACE_LABELS, max_size=4))
def test_reviews_with_wrong_types_anywhere(review: Any, doc: dict[str, Any],
                                           labels: dict[str, dict[str, str]]) -> None:  # fmt: skip
    EXAMPLES["wrong_types_anywhere"] += 1
    policy = compile_policy(doc)
    ctx = Context(policy, Lookup(labels), OWN_NAMESPACE)
    body = orjson.dumps(review)
    for endpoint in ("mutate", "validate"):
        response = answer(body, endpoint, ctx)
        if response is not None and "patch" in response:
            request = review["request"]
            injected = mutated(request["object"], response)
            again = answer(orjson.dumps(review_of({**request, "object": injected})), endpoint,
                           ctx)  # fmt: skip
            assert again is not None and again["allowed"] and "patch" not in again


@settings(max_examples=budget(600))
@given(pods(), policy_docs(), st.sampled_from(NAMESPACE_NAMES), NAMESPACE_LABELS, st.booleans())
def test_random_pods_under_random_policies(
    p: dict[str, Any], doc: dict[str, Any], namespace: str, labels: dict[str, str], dry_run: bool
) -> None:
    EXAMPLES["random_pods"] += 1
    policy = compile_policy(doc)
    lookup = Lookup({namespace: labels})
    ctx = Context(policy, lookup, OWN_NAMESPACE)
    req = request_for(p, namespace=namespace, dry_run=dry_run)
    check_both_endpoints(req, ctx)
    # the gate against the model of SPEC 4 (pods here are well-typed)
    validate = answer(orjson.dumps(review_of(req)), "validate", ctx)
    assert validate is not None
    account = (p["spec"].get("serviceAccountName") or p["spec"].get("serviceAccount")
               or "default")  # fmt: skip
    rule = enforcing_rule(policy, namespace, lookup(namespace), account)
    violates = model_violates(p, policy)
    if rule is not None:
        action = rule.gate_action or policy.gate_action
        if violates and action == "deny":
            assert validate["allowed"] is False, validate["auditAnnotations"]
        elif violates and action == "warn" and validate["allowed"]:
            assert validate.get("warnings"), validate
        elif violates and validate["allowed"]:
            assert validate["auditAnnotations"].get("violations"), validate
    if not violates and not (p.get("metadata") or {}).get("annotations") and not any(
        c["name"].startswith("istio-") for f in ("containers", "initContainers")
        for c in p["spec"].get(f) or []
    ) and not policy.require_mesh:
        assert validate["allowed"] is True, validate  # nothing to refuse
    if lookup(namespace) is None and not violates:
        assert validate["allowed"] is True or policy.require_mesh, validate


@settings(max_examples=budget(250))
@given(corpus_variants(), policy_docs(), st.sampled_from(NAMESPACE_NAMES), NAMESPACE_LABELS)
def test_mutated_corpus_pods(p: Any, doc: dict[str, Any], namespace: str,
                             labels: dict[str, str]) -> None:  # fmt: skip
    EXAMPLES["corpus_pods"] += 1
    policy = compile_policy(doc)
    ctx = Context(policy, Lookup({namespace: labels}), OWN_NAMESPACE)
    check_both_endpoints(request_for(p, namespace=namespace), ctx)


MESH_POLICIES = [
    default_policy(),
    compile_policy({"sidecar": {"native": True}, "cni": {"pluginSupportsNativeSidecars": True}}),
    compile_policy({"cni": {"validationInitContainer": False}, "gate": {"action": "warn"}}),
]
NULLABLE = st.one_of(st.none(), JSON_VALUES)


@st.composite
def declared(draw: st.DrawFn) -> dict[str, Any]:
    """A container a pod declares under one of the names meshgate injects (Istio's
    `image: auto` convention), with odd but mostly valid fields: meshgate merges the
    template under them."""
    c: dict[str, Any] = {"name": draw(st.sampled_from(["istio-proxy", "istio-init",
                                                       "istio-validation"]))}  # fmt: skip
    context = draw(st.one_of(st.none(), st.fixed_dictionaries({}, optional={
        "runAsUser": st.one_of(st.none(), st.integers(0, 2000), st.text(max_size=3)),
        "runAsGroup": NULLABLE, "privileged": st.booleans(), "capabilities": st.one_of(
            st.none(), st.fixed_dictionaries({}, optional={
                "add": st.one_of(st.none(), st.lists(spellings(), max_size=2)),
                "drop": NULLABLE}))})))  # fmt: skip
    fields = draw(st.fixed_dictionaries({}, optional={
        "image": st.sampled_from(["auto", "registry.example/own:1", None]),
        "ports": NULLABLE, "env": NULLABLE, "args": NULLABLE, "lifecycle": NULLABLE,
        "volumeMounts": NULLABLE, "resources": NULLABLE, "restartPolicy": NULLABLE}))
    c.update(fields)
    if context is not None or draw(st.booleans()):
        c["securityContext"] = context
    return c


@settings(max_examples=budget(250))
# Regression: the pod's own istio-proxy said restartPolicy: null, which replaced the native
# sidecar's Always (the CNI plugin then counted one container and skipped the pod).
@example(declared_containers=[{"name": "istio-proxy", "image": "auto", "restartPolicy": None}],
         in_init=False, annotations={}, policy=MESH_POLICIES[1], namespace="mesh")
@given(st.lists(declared(), min_size=1, max_size=2), st.booleans(),
       _some_of({INTERCEPTION: st.sampled_from(["TPROXY", "REDIRECT", "NONE"]),
                 MULTUS: st.sampled_from(["", "istio-cni", '[{"name":"x"}]'])}, 2),
       st.sampled_from(MESH_POLICIES), st.sampled_from(["mesh", "legacy", "optin"]))
def test_declared_mesh_containers(declared_containers: list[dict[str, Any]], in_init: bool,
                                  annotations: dict[str, str], policy: Any,
                                  namespace: str) -> None:  # fmt: skip
    EXAMPLES["declared_mesh_containers"] += 1
    spec: dict[str, Any] = {"containers": [{"name": "app", "image": "registry.example/a:1"}]}
    for c in declared_containers:
        target = "initContainers" if in_init or c["name"] != "istio-proxy" else "containers"
        spec.setdefault(target, []).append(c)
    p = {"apiVersion": "v1", "kind": "Pod", "spec": spec,
         "metadata": {"name": "web", "annotations": annotations,
                      "labels": {INJECT_LABEL: "true"}}}  # fmt: skip
    lookup = Lookup({"mesh": {"istio-injection": "enabled"}, "legacy": {MODE_LABEL: "init"}})
    check_both_endpoints(request_for(p, namespace=namespace), Context(policy, lookup,
                                                                      OWN_NAMESPACE))


@settings(max_examples=budget(250))
@given(pods(), st.sampled_from(KINDS[1:-1]), policy_docs(), st.sampled_from(NAMESPACE_NAMES),
       NAMESPACE_LABELS, st.booleans(), st.data())
def test_workloads_and_ephemeral_updates(p: dict[str, Any], kind: Any, doc: dict[str, Any],
                                         namespace: str, labels: dict[str, str], update: bool,
                                         data: st.DataObject) -> None:  # fmt: skip
    EXAMPLES["workloads_ephemeral"] += 1
    policy = compile_policy(doc)
    ctx = Context(policy, Lookup({namespace: labels}), OWN_NAMESPACE)
    operation = "UPDATE" if update or kind[2] else "CREATE"
    old = data.draw(st.one_of(st.none(), st.just(copy.deepcopy(p)), pods())) if operation == (
        "UPDATE") else None  # fmt: skip
    req = wrap(kind, p, operation, namespace, old)
    mutate = answer(orjson.dumps(review_of(req)), "mutate", ctx)
    assert mutate is not None and mutate["allowed"] and "patch" not in mutate
    validate = answer(orjson.dumps(review_of(req)), "validate", ctx)
    assert validate is not None
    def template(q: Any) -> Any:
        return None if q is None else {"metadata": q.get("metadata") or {}, "spec": q["spec"]}

    unchanged = operation == "UPDATE" and template(old) == template(p)
    if unchanged and kind[2] is None:
        assert validate["allowed"] is True  # an unchanged template is never judged again
    account = (p["spec"].get("serviceAccountName") or p["spec"].get("serviceAccount")
               or "default")  # fmt: skip
    rule = enforcing_rule(policy, namespace, labels, account)
    if rule is None or (rule.gate_action or policy.gate_action) != "deny":
        return
    if kind[2] is None:  # a workload: its whole template is judged
        if model_violates(p, policy) and not unchanged:
            assert validate["allowed"] is False, validate
    else:  # the ephemeral update: only new ephemeral containers count
        old_names = {c["name"] for c in ((old or {}).get("spec") or {}).get(
            "ephemeralContainers") or []}  # fmt: skip
        new = [c for c in p["spec"].get("ephemeralContainers") or []
               if c["name"] not in old_names]  # fmt: skip
        if model_violates({"spec": {"ephemeralContainers": new}}, policy):
            assert validate["allowed"] is False, validate


@settings(max_examples=budget(120))
@given(policy_docs())
def test_random_valid_policies_compile_and_inject_a_plain_pod(doc: dict[str, Any]) -> None:
    EXAMPLES["policies"] += 1
    policy = compile_policy(doc)
    assert len(policy.version) == 12
    for namespace, labels in (("mesh", {"istio-injection": "enabled"}), ("ns-1", {}),
                              ("team-x", {MODE_LABEL: "init"})):  # fmt: skip
        p = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "labels": {
            INJECT_LABEL: "true"}}, "spec": {"containers": [{"name": "app", "image": "x"}]}}
        ctx = Context(policy, Lookup({namespace: labels}), OWN_NAMESPACE)
        check_both_endpoints(request_for(p, namespace=namespace), ctx)


# ---------------------------------------------------------------------------------------
# the app over ASGI (httpx.ASGITransport): the HTTP shell around the same engine

RUNTIME = Runtime()
RUNTIME.install(Context(default_policy(), Lookup({"mesh": {"istio-injection": "enabled"}}),
                        OWN_NAMESPACE), "fuzz")  # fmt: skip
MAX_BODY = 16 * 1024
APP = create_app(RUNTIME, max_body=MAX_BODY)


async def _post(path: str, body: bytes, content_type: str | None) -> httpx.Response:
    headers = {} if content_type is None else {"content-type": content_type}
    transport = httpx.ASGITransport(app=APP)
    async with httpx.AsyncClient(transport=transport, base_url="http://meshgate") as client:
        return await client.post(path, content=body, headers=headers)


def over_http(path: str, body: bytes, content_type: str | None,
              ctx: Context) -> httpx.Response:  # fmt: skip
    response = asyncio.run(_post(path, body, content_type))
    assert response.status_code < 500, response.text
    assert response.headers["content-type"].startswith("application/json")
    payload = response.json()
    media = (content_type or "").split(";")[0].strip().lower()
    if response.status_code == 200:
        assert media == "application/json" and len(body) <= MAX_BODY
        engine = answer(body, path.strip("/"), ctx)
        assert engine is not None and payload["response"] == engine
    else:
        assert response.status_code in (400, 413, 415), response.text
        assert isinstance(payload["error"], str) and payload["error"]
        if response.status_code == 415:
            assert media != "application/json"
        elif response.status_code == 413:
            assert len(body) > MAX_BODY
        else:  # the review could not be read: the uid is echoed when it is readable
            assert payload.get("uid") == readable_uid(body)
            with pytest.raises(BadRequest):
                parse_review(body)
    return response


CONTENT_TYPES = st.one_of(
    st.sampled_from(["application/json", "application/json; charset=utf-8", "Application/JSON",
                     "text/plain", "application/json-patch+json", ""]),
    st.none(), st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20),
)  # fmt: skip


@settings(max_examples=budget(100))
@given(st.sampled_from(["/mutate", "/validate"]), CONTENT_TYPES, st.one_of(
    st.binary(max_size=200),
    st.builds(review_of, base_requests()).flatmap(corrupted).map(orjson.dumps),
    st.builds(lambda r: orjson.dumps(review_of(r)), base_requests()),
    st.integers(MAX_BODY - 10, MAX_BODY + 10).map(
        lambda n: orjson.dumps(review_of({"uid": "big", "pad": "x" * n}))[:n].ljust(n, b" ")),
))  # fmt: skip
def test_app_over_asgi(path: str, content_type: str | None, body: bytes) -> None:
    EXAMPLES["asgi_bodies"] += 1
    RUNTIME.set_sources(namespaces=Lookup({"mesh": {"istio-injection": "enabled"}}))
    RUNTIME.set_policy(default_policy(), "fuzz")
    ctx = RUNTIME.context
    assert ctx is not None
    over_http(path, body, content_type, ctx)


@settings(max_examples=budget(100))
@given(st.one_of(pods(), corpus_variants()), policy_docs(), st.sampled_from(NAMESPACE_NAMES),
       NAMESPACE_LABELS, st.sampled_from(["/mutate", "/validate"]))
def test_random_pods_and_policies_over_asgi(p: Any, doc: dict[str, Any], namespace: str,
                                            labels: dict[str, str], path: str) -> None:  # fmt: skip
    EXAMPLES["asgi_pods"] += 1
    policy = compile_policy(doc)
    RUNTIME.set_sources(namespaces=Lookup({namespace: labels}))
    RUNTIME.set_policy(policy, "fuzz")
    ctx = RUNTIME.context
    assert ctx is not None
    body = orjson.dumps(review_of(request_for(p, namespace=namespace)))
    response = over_http(path, body, "application/json", ctx)
    if response.status_code == 200 and "patch" in response.json()["response"]:
        mutated(p, response.json()["response"])
