"""Table-driven tests for webhook.decision: every precedence step of SPEC section 2, the
refusals, and the gate of SPEC section 4 (via decide().gate and gate_for)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from webhook import traffic
from webhook.decision import Decision, Namespace, decide, gate_for, mesh_violations
from webhook.policy import Policy, compile_policy, default_policy

OWN = "meshgate-system"
INJECT = "sidecar.istio.io/inject"
MODE_LABEL = "meshgate.io/mode"
STATUS = "sidecar.istio.io/status"
NETWORKS = "k8s.v1.cni.cncf.io/networks"
MIRROR = "kubernetes.io/config.mirror"
INTERCEPTION = "sidecar.istio.io/interceptionMode"

CNI_STATUS = json.dumps(
    {
        "initContainers": ["istio-validation"],
        "containers": ["istio-proxy"],
        "volumes": ["istio-envoy"],
        "imagePullSecrets": None,
        "revision": "default",
    }
)
INIT_STATUS = CNI_STATUS.replace("istio-validation", "istio-init")

# ---------------------------------------------------------------------------------------
# builders


def container(
    name: str = "app",
    *,
    add: list[str] | None = None,
    drop: list[str] | None = None,
    privileged: bool | None = None,
    image: str = "registry.example/app:1",
    **extra: Any,
) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "image": image}
    context: dict[str, Any] = {}
    if add is not None or drop is not None:
        caps: dict[str, Any] = {}
        if add is not None:
            caps["add"] = add
        if drop is not None:
            caps["drop"] = drop
        context["capabilities"] = caps
    if privileged is not None:
        context["privileged"] = privileged
    if context:
        c["securityContext"] = context
    c.update(extra)
    return c


def pod(
    *,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    containers: list[dict[str, Any]] | None = None,
    init: list[dict[str, Any]] | None = None,
    ephemeral: list[dict[str, Any]] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "web"}
    if labels is not None:
        meta["labels"] = labels
    if annotations is not None:
        meta["annotations"] = annotations
    body: dict[str, Any] = {"containers": containers if containers is not None else [container()]}
    if init is not None:
        body["initContainers"] = init
    if ephemeral is not None:
        body["ephemeralContainers"] = ephemeral
    body.update(spec)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": body}


def injected_pod(mode: str = "cni", **kw: Any) -> dict[str, Any]:
    """A pod as meshgate left it (the network annotation is up to the caller)."""
    annotations = {STATUS: CNI_STATUS if mode == "cni" else INIT_STATUS}
    annotations.update(kw.pop("annotations", None) or {})
    kw.setdefault("containers", [container(), container("istio-proxy")])
    kw.setdefault("init", [container("istio-validation" if mode == "cni" else "istio-init")])
    return pod(annotations=annotations, **kw)


def policy(**raw: Any) -> Policy:
    return compile_policy(raw)


def run(p: dict[str, Any], ns: Namespace, pol: Policy | None = None, own: str = OWN) -> Decision:
    return decide(p, ns, pol or DEFAULT, own)


def joined(items: tuple[str, ...] | list[str]) -> str:
    return "\n".join(items)


DEFAULT = default_policy()
# Namespaces under the default policy (SPEC section 3).
ON = Namespace("shop", {"istio-injection": "enabled"})  # namespaces[2]: cni, enabled, enforced
OPT = Namespace("plain", {})  # default: cni, opt-in, not enforced
LEGACY = Namespace("legacy", {"meshgate.io/mode": "init"})  # namespaces[1]: init, enabled
OFF = Namespace("quiet", {"istio-injection": "disabled"})  # namespaces[0]: disabled


# ---------------------------------------------------------------------------------------
# exempt namespaces

EXEMPT_POLICY = policy(
    exemptNamespaces=["kube-system", "team-*-sandbox"],
    namespaces=[{"match": {"selector": {}}, "mode": "cni", "enforceCNI": True}],
)


@pytest.mark.parametrize(
    ("name", "own", "exempt"),
    [
        pytest.param("kube-system", OWN, True, id="listed"),
        pytest.param("team-a-sandbox", OWN, True, id="glob"),
        pytest.param("team-a-sandbox-2", OWN, False, id="glob-is-whole-name"),
        pytest.param("Team-a-sandbox", OWN, False, id="glob-is-case-sensitive"),
        pytest.param("kube-systemx", OWN, False, id="no-prefix-match"),
        pytest.param(OWN, OWN, True, id="own-namespace-default"),
        pytest.param("mesh-ops", "mesh-ops", True, id="own-namespace-custom"),
        pytest.param(OWN, "mesh-ops", False, id="meshgate-system-not-special-when-not-own"),
        pytest.param("apps", OWN, False, id="not-exempt"),
    ],
)
def test_exempt_namespaces(name: str, own: str, exempt: bool) -> None:
    bad = pod(labels={INJECT: "true"}, containers=[container(add=["NET_ADMIN"])])
    ns = Namespace(name, {})
    d = decide(bad, ns, EXEMPT_POLICY, own)
    gate = gate_for(bad, ns, EXEMPT_POLICY, own)
    if exempt:
        assert d.exempt and d.label == "exempt"
        assert d.action == "skip"
        assert d.refusals == ()
        assert not d.gate.enforced and not d.gate.violated
        assert not gate.enforced and not gate.violated
        assert name in joined(d.reasons)
    else:
        assert not d.exempt
        assert d.action == "inject"
        assert d.gate.violated and gate.violated


def test_exempt_even_when_namespace_labels_are_unknown() -> None:
    bad = pod(containers=[container(add=["NET_ADMIN"])])
    d = decide(bad, Namespace("kube-system", None), DEFAULT, OWN)
    assert d.exempt and not d.gate.enforced
    assert not gate_for(bad, Namespace(OWN, None), DEFAULT, OWN).enforced


# ---------------------------------------------------------------------------------------
# rule selection

RULES = policy(
    namespaces=[
        {"match": {"names": ["legacy-*", "db[0-9]", "cache-?"]}, "mode": "init"},
        {"match": {"selector": {"matchLabels": {"mesh": "off"}}}, "mode": "disabled"},
        {"match": {"names": ["prod-*"], "selector": {"matchLabels": {"tier": "web"}}},
         "mode": "cni", "enforceCNI": True},
        {"match": {"selector": {"matchExpressions": [
            {"key": "env", "operator": "In", "values": ["staging", "qa"]}]}},
         "mode": "cni", "injection": "opt-in"},
        {"match": {"selector": {"matchExpressions": [
            {"key": "team", "operator": "Exists"},
            {"key": "legacy", "operator": "DoesNotExist"},
            {"key": "tier", "operator": "NotIn", "values": ["batch"]}]}},
         "mode": "cni"},
        {"match": {"names": ["prod-*"]}, "mode": "init"},
    ],
    default={"mode": "disabled"},
)  # fmt: skip


@pytest.mark.parametrize(
    ("name", "labels", "where", "mode"),
    [
        pytest.param("legacy-app", {}, "namespaces[0]", "init", id="names-glob-star"),
        pytest.param("db7", {}, "namespaces[0]", "init", id="names-glob-class"),
        pytest.param("cache-a", {}, "namespaces[0]", "init", id="names-glob-question"),
        pytest.param("cache-ab", {}, "default", "disabled", id="names-glob-whole-name"),
        pytest.param("Legacy-app", {}, "default", "disabled", id="names-glob-case-sensitive"),
        pytest.param("legacy-app", {"mesh": "off"}, "namespaces[0]", "init",
                     id="first-match-wins"),
        pytest.param("x", {"mesh": "off"}, "namespaces[1]", "disabled", id="matchLabels"),
        pytest.param("x", {"mesh": "on"}, "default", "disabled", id="matchLabels-other-value"),
        pytest.param("prod-a", {"tier": "web"}, "namespaces[2]", "cni",
                     id="names-and-selector-both-hold"),
        pytest.param("prod-a", {"tier": "db"}, "namespaces[5]", "init",
                     id="names-hold-selector-not"),
        pytest.param("shop", {"tier": "web"}, "default", "disabled",
                     id="selector-holds-names-not"),
        pytest.param("x", {"env": "qa"}, "namespaces[3]", "cni", id="expression-In"),
        pytest.param("x", {"env": "prod"}, "default", "disabled", id="expression-In-no"),
        pytest.param("x", {"team": "a"}, "namespaces[4]", "cni",
                     id="expression-Exists-NotIn-missing-key"),
        pytest.param("x", {"team": "a", "tier": "batch"}, "default", "disabled",
                     id="expression-NotIn-no"),
        pytest.param("x", {"team": "a", "legacy": ""}, "default", "disabled",
                     id="expression-DoesNotExist-no"),
        pytest.param("x", {}, "default", "disabled", id="default-fallback"),
    ],
)  # fmt: skip
def test_rule_selection(name: str, labels: dict[str, str], where: str, mode: str) -> None:
    d = run(pod(), Namespace(name, labels), RULES)
    assert d.rule == where
    assert d.mode == mode
    assert where in d.reasons[0]


def test_selector_empty_matches_all() -> None:
    pol = policy(
        namespaces=[
            {"match": {"names": ["a-*"]}, "mode": "init"},
            {"match": {"selector": {}}, "mode": "cni", "injection": "enabled"},
        ]
    )
    for ns in (Namespace("zzz", {}), Namespace("b", {"any": "thing"})):
        d = run(pod(), ns, pol)
        assert (d.rule, d.mode, d.action) == ("namespaces[1]", "cni", "inject")
    assert run(pod(), Namespace("a-1", {}), pol).rule == "namespaces[0]"


def test_no_rules_means_default() -> None:
    pol = policy(namespaces=[], default={"mode": "init", "injection": "enabled"})
    d = run(pod(), Namespace("x", {"istio-injection": "enabled"}), pol)
    assert (d.rule, d.mode, d.action, d.label) == ("default", "init", "inject", "inject:init")


# ---------------------------------------------------------------------------------------
# the pod's mode label

MODES = policy(
    namespaces=[
        {"match": {"names": ["flex"]}, "mode": "cni", "allowPodModes": ["init", "disabled"]},
        {"match": {"names": ["strict"]}, "mode": "cni"},
    ],
    pods={"modeLabel": "example.com/mesh-mode"},
)


@pytest.mark.parametrize(
    ("ns", "label", "mode", "action", "ignored"),
    [
        pytest.param("flex", "init", "init", "inject", False, id="allowed-init"),
        pytest.param("flex", "disabled", "disabled", "skip", False, id="allowed-disabled"),
        pytest.param("flex", "cni", "cni", "inject", False, id="same-as-rule-mode-no-warning"),
        pytest.param("flex", "INIT", "cni", "inject", True, id="case-sensitive"),
        pytest.param("strict", "init", "cni", "inject", True, id="no-pod-modes-allowed"),
        pytest.param("strict", "sideways", "cni", "inject", True, id="unknown-mode"),
    ],
)
def test_mode_label(ns: str, label: str, mode: str, action: str, ignored: bool) -> None:
    d = run(pod(labels={"example.com/mesh-mode": label}), Namespace(ns, {}), MODES)
    assert d.mode == mode
    assert d.action == action
    if ignored:
        assert any("ignored" in w and "example.com/mesh-mode" in w for w in d.warnings)
        assert any("ignored" in r for r in d.reasons)
    else:
        assert not any("ignored" in w for w in d.warnings)
        assert any(f"mode {label}" in r or "matches the rule's mode" in r for r in d.reasons)


def test_default_mode_label_key_is_not_read_when_renamed() -> None:
    d = run(pod(labels={MODE_LABEL: "init"}), Namespace("flex", {}), MODES)
    assert d.mode == "cni" and d.warnings == ()


# ---------------------------------------------------------------------------------------
# injection precedence (SPEC section 2, steps 1 to 6)

NEVER_ALWAYS = policy(
    pods={
        "neverInjectSelector": [{"matchLabels": {"batch": "true"}}],
        "alwaysInjectSelector": [
            {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "api"]}]}
        ],
    }
)


def expect(
    action: str,
    mode: str | None = None,
    *,
    reason: str | None = None,
    warning: str | None = None,
    no_warnings: bool = False,
    network: str | None = None,
) -> dict[str, Any]:
    return {"action": action, "mode": mode, "reason": reason, "warning": warning,
            "no_warnings": no_warnings, "network": network}  # fmt: skip


INJECTION = [
    # 1. mirror pods
    pytest.param(pod(annotations={MIRROR: "abc"}, labels={INJECT: "true"}), ON, DEFAULT,
                 expect("skip", reason="mirror"), id="1-mirror-pod"),
    pytest.param(injected_pod(annotations={MIRROR: "abc"}), ON, DEFAULT,
                 expect("skip", reason="mirror"), id="1-mirror-pod-beats-annotate"),
    # 2. hostNetwork
    pytest.param(pod(hostNetwork=True), ON, DEFAULT,
                 expect("skip", reason="hostNetwork"), id="2-hostNetwork"),
    pytest.param(pod(hostNetwork=True, labels={INJECT: "true"}), OPT, DEFAULT,
                 expect("skip", reason="hostNetwork"), id="2-hostNetwork-beats-label-true"),
    pytest.param(pod(hostNetwork=False), ON, DEFAULT,
                 expect("inject", "cni"), id="2-hostNetwork-false"),
    # 3. the inject label
    *[pytest.param(pod(labels={INJECT: v}), ON, DEFAULT,
                   expect("skip", reason="opts out", no_warnings=True), id=f"3-label-{v}")
      for v in ("false", "no", "n", "off", "False", "NO", "N", "Off", "oFF")],
    *[pytest.param(pod(labels={INJECT: v}), ON, DEFAULT,
                   expect("skip", reason="invalid", warning="invalid"), id=f"3-label-invalid-{v!r}")
      for v in ("maybe", "", "0", "1", "disabled", "t")],
    pytest.param(pod(labels={INJECT: "false"}), OFF, DEFAULT,
                 expect("skip", reason="opts out"), id="3-label-before-4-disabled"),
    pytest.param(injected_pod(labels={INJECT: "false"}), ON, DEFAULT,
                 expect("skip", reason="opts out"), id="3-label-before-5-annotate"),
    pytest.param(pod(annotations={INJECT: "false"}), ON, DEFAULT,
                 expect("skip", reason="opts out", warning="deprecated"),
                 id="3-deprecated-annotation-false"),
    pytest.param(pod(annotations={INJECT: "true"}), OPT, DEFAULT,
                 expect("inject", "cni", warning="deprecated"), id="3-deprecated-annotation-true"),
    pytest.param(pod(annotations={INJECT: "whatever"}), ON, DEFAULT,
                 expect("skip", reason="invalid", warning="invalid"),
                 id="3-deprecated-annotation-invalid"),
    pytest.param(pod(labels={INJECT: "false"}, annotations={INJECT: "true"}), ON, DEFAULT,
                 expect("skip", reason="label"), id="3-label-false-wins-over-annotation-true"),
    pytest.param(pod(labels={INJECT: "true"}, annotations={INJECT: "no"}), OPT, DEFAULT,
                 expect("inject", "cni"), id="3-label-true-wins-over-annotation-no"),
    pytest.param(pod(labels={INJECT: "false"}), ON, policy(pods={"injectLabel": "example.com/i"}),
                 expect("inject", "cni"), id="3-renamed-inject-label-ignores-istio-label"),
    pytest.param(pod(labels={"example.com/i": "off"}), ON,
                 policy(pods={"injectLabel": "example.com/i"}),
                 expect("skip", reason="opts out"), id="3-renamed-inject-label"),
    # 4. mode disabled
    pytest.param(pod(labels={INJECT: "true"}), OFF, DEFAULT,
                 expect("skip", "disabled", reason="disabled"), id="4-disabled-beats-label-true"),
    pytest.param(pod(labels={"app": "web"}), OFF, NEVER_ALWAYS,
                 expect("skip", "disabled", reason="disabled"), id="4-disabled-beats-always"),
    pytest.param(injected_pod(), OFF, DEFAULT,
                 expect("skip", "disabled", reason="disabled"), id="4-disabled-beats-annotate"),
    # 5. already injected
    pytest.param(injected_pod(), ON, DEFAULT,
                 expect("annotate", "cni", network="istio-cni", reason="already injected"),
                 id="5-injected-cni-network-missing"),
    pytest.param(injected_pod(annotations={NETWORKS: "macvlan"}), ON, DEFAULT,
                 expect("annotate", "cni", network="macvlan, istio-cni"),
                 id="5-injected-cni-other-network"),
    pytest.param(injected_pod(annotations={NETWORKS: "istio-cni"}), ON, DEFAULT,
                 expect("skip", "cni", reason="already injected"),
                 id="5-injected-cni-network-present"),
    pytest.param(injected_pod(annotations={NETWORKS: "shop/istio-cni@eth9"}), ON, DEFAULT,
                 expect("skip", "cni"), id="5-injected-cni-network-present-ns-iface"),
    pytest.param(injected_pod(), OPT, DEFAULT,
                 expect("annotate", "cni", network="istio-cni"),
                 id="5-injected-before-6-opt-in"),
    pytest.param(injected_pod(labels={INJECT: "true"}), ON, DEFAULT,
                 expect("annotate", "cni", network="istio-cni"),
                 id="5-injected-before-6-label-true"),
    pytest.param(injected_pod("init"), LEGACY, DEFAULT,
                 expect("skip", "init", reason="already injected"), id="5-injected-init"),
    pytest.param(injected_pod("init", annotations={NETWORKS: "macvlan"}), LEGACY, DEFAULT,
                 expect("skip", "init"), id="5-injected-init-never-touches-network"),
    # 6. label true, selectors, the rule's injection
    *[pytest.param(pod(labels={INJECT: v}), OPT, DEFAULT,
                   expect("inject", "cni", reason="opts in", no_warnings=True),
                   id=f"6-label-{v}")
      for v in ("true", "yes", "y", "on", "TRUE", "Yes", "Y", "oN")],
    pytest.param(pod(labels={"batch": "true"}), ON, NEVER_ALWAYS,
                 expect("skip", reason="neverInjectSelector"), id="6-never-selector"),
    pytest.param(pod(labels={"batch": "true", INJECT: "true"}), ON, NEVER_ALWAYS,
                 expect("inject", "cni"), id="6-label-true-beats-never-selector"),
    pytest.param(pod(labels={"app": "api"}), OPT, NEVER_ALWAYS,
                 expect("inject", "cni", reason="alwaysInjectSelector"), id="6-always-selector"),
    pytest.param(pod(labels={"app": "web", "batch": "true"}), OPT, NEVER_ALWAYS,
                 expect("skip", reason="neverInjectSelector"), id="6-never-beats-always"),
    pytest.param(pod(labels={"app": "db"}), OPT, NEVER_ALWAYS,
                 expect("skip", reason="opt-in"), id="6-selectors-do-not-match"),
    pytest.param(pod(), ON, DEFAULT, expect("inject", "cni"), id="6-injection-enabled"),
    pytest.param(pod(), LEGACY, DEFAULT, expect("inject", "init"), id="6-injection-enabled-init"),
    pytest.param(pod(), OPT, DEFAULT, expect("skip", "cni", reason="opt-in"),
                 id="6-injection-opt-in"),
]  # fmt: skip


@pytest.mark.parametrize(("p", "ns", "pol", "want"), INJECTION)
def test_injection_precedence(
    p: dict[str, Any], ns: Namespace, pol: Policy, want: dict[str, Any]
) -> None:
    d = run(p, ns, pol)
    assert d.action == want["action"], d.reasons
    if want["mode"]:
        assert d.mode == want["mode"]
    if want["reason"]:
        assert want["reason"] in d.reasons[-1], d.reasons
    if want["warning"]:
        assert any(want["warning"] in w for w in d.warnings), d.warnings
    if want["no_warnings"]:
        assert d.warnings == ()
    if d.action == "annotate" or want["network"]:
        assert d.network_value == want["network"]
    if d.action == "skip":
        assert d.label == "skip"
    else:
        assert d.label == f"{d.action}:{d.mode}"
    assert d.refusals == ()


def test_label_beats_annotation_without_deprecation_warning() -> None:
    d = run(pod(labels={INJECT: "true"}, annotations={INJECT: "yes"}), OPT)
    assert d.action == "inject"
    assert not any("deprecated" in w for w in d.warnings)


def test_skip_reasons_are_not_warnings() -> None:
    for p, ns in ((pod(), OPT), (pod(hostNetwork=True), ON), (pod(labels={INJECT: "no"}), ON),
                  (pod(), OFF)):  # fmt: skip
        d = run(p, ns)
        assert d.action == "skip"
        assert d.warnings == ()


def test_injected_gateway_is_left_alone() -> None:
    gw = pod(annotations={STATUS: CNI_STATUS}, containers=[container("istio-proxy")])
    d = run(gw, ON)
    assert d.action == "skip" and d.network_value is None


def test_gateway_is_injected_without_network() -> None:
    d = run(pod(containers=[container("istio-proxy", image="auto")]), ON)
    assert d.action == "inject" and d.gateway
    assert d.network_value is None


def test_decide_does_not_change_the_pod() -> None:
    p = injected_pod(labels={INJECT: "true"}, annotations={NETWORKS: "a"})
    before = json.dumps(p, sort_keys=True)
    run(p, ON)
    assert json.dumps(p, sort_keys=True) == before


# ---------------------------------------------------------------------------------------
# refusals: deny whatever the gate's action says


REFUSALS = [
    pytest.param(pod(init=[container("istio-init")]), ON, ("istio-init",),
                 id="declared-istio-init-cni"),
    pytest.param(pod(init=[container("istio-init")]), LEGACY, (),
                 id="declared-istio-init-init-mode-merged"),
    pytest.param(pod(init=[container("istio-init")]), OPT, (),
                 id="declared-istio-init-not-injecting"),
    pytest.param(pod(annotations={INTERCEPTION: "TPROXY"}), ON,
                 (INTERCEPTION, "TPROXY"), id="tproxy-cni"),
    pytest.param(pod(labels={INJECT: "true"}, annotations={INTERCEPTION: "TPROXY"}), OPT,
                 (INTERCEPTION, "TPROXY"), id="tproxy-cni-opted-in"),
    pytest.param(pod(annotations={INTERCEPTION: "TPROXY"}), LEGACY, (), id="tproxy-init-mode"),
    pytest.param(pod(annotations={INTERCEPTION: "TPROXY"}), OPT, (), id="tproxy-not-injecting"),
    pytest.param(injected_pod(annotations={INTERCEPTION: "TPROXY", NETWORKS: "istio-cni"}), ON,
                 (INTERCEPTION,), id="tproxy-already-injected-cni"),
    *[pytest.param(pod(labels={INJECT: "true"}, annotations={INJECT: v}), OPT, (INJECT, v),
                   id=f"inject-annotation-go-false-{v}")
      for v in ("false", "0", "f", "F", "FALSE", "False")],
    pytest.param(pod(labels={INJECT: "true"}, annotations={INJECT: "no"}), OPT, (),
                 id="inject-annotation-no-is-not-go-false"),
    pytest.param(pod(labels={INJECT: "true"}, annotations={INJECT: "fAlse"}), OPT, (),
                 id="inject-annotation-mixed-case-is-not-go-false"),
    pytest.param(pod(labels={INJECT: "true"}, annotations={INJECT: "false"}), LEGACY, (),
                 id="inject-annotation-false-init-mode"),
    pytest.param(injected_pod(annotations={INJECT: "false", NETWORKS: "istio-cni"}), ON,
                 (INJECT,), id="inject-annotation-false-already-injected"),
    pytest.param(pod(annotations={NETWORKS: "not a network!"}), ON, (NETWORKS,),
                 id="invalid-multus-value"),
    pytest.param(pod(annotations={NETWORKS: "[{\"name\": \"a\"}"}), ON, (NETWORKS,),
                 id="invalid-multus-json"),
    pytest.param(injected_pod(annotations={NETWORKS: "{}"}), ON, (NETWORKS,),
                 id="invalid-multus-value-already-injected"),
    pytest.param(pod(annotations={NETWORKS: "not a network!"}), LEGACY, (),
                 id="multus-not-read-in-init-mode"),
    pytest.param(pod(annotations={NETWORKS: "not a network!"}), OPT, (),
                 id="multus-not-read-when-not-injecting"),
]  # fmt: skip


@pytest.mark.parametrize(("p", "ns", "words"), REFUSALS)
def test_refusals(p: dict[str, Any], ns: Namespace, words: tuple[str, ...]) -> None:
    d = run(p, ns)
    if words:
        assert d.refusals, d
        text = joined(d.refusals)
        for word in words:
            assert word in text, text
    else:
        assert d.refusals == (), d.refusals


def test_refusals_do_not_depend_on_gate_action() -> None:
    for action in ("deny", "warn", "audit"):
        pol = policy(gate={"action": action})
        d = decide(pod(annotations={traffic.EXCLUDE_INBOUND_PORTS: "0"}), ON, pol, OWN)
        assert d.refusals


def test_every_invalid_traffic_annotation_is_named() -> None:
    bad = {
        traffic.INCLUDE_IP_RANGES: "10.0.0.0",
        traffic.EXCLUDE_IP_RANGES: "*",
        traffic.INCLUDE_INBOUND_PORTS: "http",
        traffic.EXCLUDE_INBOUND_PORTS: "0",
        traffic.INCLUDE_OUTBOUND_PORTS: "65536",
        traffic.EXCLUDE_OUTBOUND_PORTS: "*",
        INTERCEPTION: "redirect",
    }
    for ns in (ON, LEGACY):
        d = run(pod(annotations=bad), ns)
        for key in bad:
            assert sum(key in r for r in d.refusals) >= 1, (key, d.refusals)


TRAFFIC = [
    # (annotation, value, valid)
    *[(traffic.INCLUDE_IP_RANGES, v, ok) for v, ok in [
        ("10.0.0.0/8", True), ("10.0.0.1/8", True), ("10.0.0.0/8,192.168.0.0/16", True),
        ("fd00::/8", True), ("2001:db8::1/128", True), ("0.0.0.0/0", True), ("*", True),
        ("", True), ("10.0.0.0", False), ("10.0.0.0/33", False), ("fd00::/129", False),
        ("10.0.0.0/8, 192.168.0.0/16", False), ("10.0.0.0/8,", False), ("not-a-cidr/8", False),
        ("10.0.0.0/-1", False), ("*,10.0.0.0/8", False), (" * ", False)]],
    *[(traffic.EXCLUDE_IP_RANGES, v, ok) for v, ok in [
        ("10.96.0.2/24,10.96.0.3/24", True), ("::1/128", True), ("", True), ("*", False),
        ("10.0.0.0/8 ", False), ("300.0.0.0/8", False)]],
    *[(key, v, ok) for key in (traffic.INCLUDE_INBOUND_PORTS, traffic.INCLUDE_OUTBOUND_PORTS)
      for v, ok in [
        ("80", True), ("80,443", True), ("80, 443", True), (" 80 , 443 ", True), ("*", True),
        ("", True), ("1", True), ("65535", True), ("0", False), ("65536", False),
        ("-1", False), ("http", False), ("80,,443", False), ("80;443", False),
        ("*,80", False), ("1.5", False)]],
    *[(key, v, ok) for key in (traffic.EXCLUDE_INBOUND_PORTS, traffic.EXCLUDE_OUTBOUND_PORTS)
      for v, ok in [
        ("15020", True), ("4,5,6,15020", True), (" 22 ", True), ("", True), ("*", False),
        ("0", False), ("65536", False), ("99999", False), ("22,", False)]],
    *[(traffic.EXCLUDE_INTERFACES, v, ok) for v, ok in [
        ("eth1", True), ("eth1,net1", True), ("", True), ("eth0/1", False),
        ("averyveryverylongname0", False)]],
    *[(INTERCEPTION, v, ok) for v, ok in [
        ("REDIRECT", True), ("NONE", True), ("redirect", False), ("", False),
        ("IPTABLES", False)]],
]  # fmt: skip


@pytest.mark.parametrize("ns", [pytest.param(ON, id="cni"), pytest.param(LEGACY, id="init")])
@pytest.mark.parametrize(
    ("key", "value", "valid"),
    [pytest.param(k, v, ok, id=f"{k.rpartition('/')[2]}={v!r}-{'ok' if ok else 'bad'}")
     for k, v, ok in TRAFFIC],
)  # fmt: skip
def test_traffic_annotations(key: str, value: str, valid: bool, ns: Namespace) -> None:
    d = run(pod(annotations={key: value}), ns)
    assert d.action == "inject"
    if valid:
        assert d.refusals == (), d.refusals
    else:
        assert len(d.refusals) == 1, d.refusals
        assert key in d.refusals[0]
    assert (traffic.annotation_errors({key: value}) == []) is valid


def test_traffic_annotations_checked_on_already_injected_cni_pods() -> None:
    p = injected_pod(annotations={NETWORKS: "istio-cni", traffic.EXCLUDE_INBOUND_PORTS: "0"})
    d = run(p, ON)
    assert d.action == "skip"
    assert any(traffic.EXCLUDE_INBOUND_PORTS in r for r in d.refusals)


def test_traffic_annotations_not_checked_when_not_injecting() -> None:
    assert run(pod(annotations={traffic.EXCLUDE_INBOUND_PORTS: "0"}), OPT).refusals == ()


# ---------------------------------------------------------------------------------------
# the gate: spellings a container runtime would grant


def both_verdicts(p: dict[str, Any], ns: Namespace, pol: Policy) -> list[Any]:
    verdicts = [decide(p, ns, pol, OWN).gate, gate_for(p, ns, pol, OWN)]
    a, b = verdicts
    assert (a.enforced, a.action, a.violations, a.rule) == (b.enforced, b.action, b.violations,
                                                              b.rule)  # fmt: skip
    return verdicts


SPELLINGS = [
    # (gated capabilities, spelling in capabilities.add, what the runtime grants or None)
    (["NET_ADMIN"], "NET_ADMIN", "NET_ADMIN"),
    (["NET_ADMIN"], "net_admin", "NET_ADMIN"),
    (["NET_ADMIN"], "CAP_NET_ADMIN", "NET_ADMIN"),
    (["NET_ADMIN"], "cap_net_admin", "NET_ADMIN"),
    (["NET_ADMIN"], "Cap_Net_Admin", "NET_ADMIN"),
    (["NET_ADMIN"], " NET_ADMIN ", "NET_ADMIN"),
    (["NET_ADMIN"], "\tcap_net_admin\n", "NET_ADMIN"),
    (["NET_ADMIN"], "net_adm\u0131n", "NET_ADMIN"),  # dotless ı, upper-cased by containerd
    (["NET_ADMIN"], "CAP_NET_ADM\u0131N", "NET_ADMIN"),
    (["NET_ADMIN"], "ALL", "ALL"),
    (["NET_ADMIN"], "all", "ALL"),
    (["NET_ADMIN"], "All", "ALL"),
    (["NET_ADMIN"], " aLL ", "ALL"),
    (["NET_ADMIN"], "NET_RAW", None),
    (["NET_ADMIN"], "SYS_ADMIN", None),
    (["NET_ADMIN"], "NET_ADMINS", None),
    (["NET_ADMIN"], "NET-ADMIN", None),
    (["NET_ADMIN"], "NET_BIND_SERVICE", None),
    (["NET_ADMIN", "NET_RAW"], "net_raw", "NET_RAW"),
    (["NET_ADMIN", "NET_RAW"], "CAP_NET_RAW", "NET_RAW"),
    (["SYS_ADMIN"], "\u017fys_admin", "SYS_ADMIN"),  # long s, folded to s by CRI-O
    (["SYS_ADMIN"], "CAP_\u017fYS_ADMIN", "SYS_ADMIN"),
    (["SYS_ADMIN"], "sys_admin", "SYS_ADMIN"),
    (["SYS_ADMIN"], "NET_ADMIN", None),
    (["IPC_LOCK"], "IPC_LOC\u212a", "IPC_LOCK"),  # Kelvin sign: equal only under case folding
    (["cap_net_admin"], "NET_ADMIN", "NET_ADMIN"),  # the policy may spell it with a prefix
]


@pytest.mark.parametrize(
    ("caps", "spelling", "granted"),
    [pytest.param(c, s, g, id=f"{'+'.join(c)}:{s.strip()!a}") for c, s, g in SPELLINGS],
)
def test_gate_spellings(caps: list[str], spelling: str, granted: str | None) -> None:
    pol = policy(gate={"capabilities": caps})
    p = pod(containers=[container(add=[spelling])])
    for verdict in both_verdicts(p, ON, pol):
        assert verdict.enforced
        if granted is None:
            assert not verdict.violated, verdict
        else:
            assert verdict.violated
            (v,) = verdict.violations
            assert (v.kind, v.name) == ("container", "app")
            assert granted in v.what


@pytest.mark.parametrize(
    ("field", "kind"),
    [
        pytest.param("containers", "container", id="containers"),
        pytest.param("initContainers", "initContainer", id="initContainers"),
        pytest.param("ephemeralContainers", "ephemeralContainer", id="ephemeralContainers"),
    ],
)
@pytest.mark.parametrize(
    ("make", "word"),
    [
        pytest.param(lambda: container("x", add=["NET_ADMIN"]), "NET_ADMIN", id="adds"),
        pytest.param(lambda: container("x", add=["ALL"]), "ALL", id="all"),
        pytest.param(lambda: container("x", privileged=True), "privileged", id="privileged"),
    ],
)
def test_gate_container_lists(field: str, kind: str, make: Any, word: str) -> None:
    lists: dict[str, Any] = {"containers": [container()]}
    lists[field] = [*lists.get(field, []), make()]
    p = pod(containers=lists["containers"], init=lists.get("initContainers"),
            ephemeral=lists.get("ephemeralContainers"))  # fmt: skip
    for verdict in both_verdicts(p, ON, DEFAULT):
        assert verdict.violated
        (v,) = verdict.violations
        assert (v.kind, v.name) == (kind, "x")
        assert word in v.what


@pytest.mark.parametrize(
    "c",
    [
        pytest.param(container(drop=["NET_ADMIN"]), id="drop-NET_ADMIN"),
        pytest.param(container(drop=["ALL"]), id="drop-ALL"),
        pytest.param(container(add=["NET_BIND_SERVICE"], drop=["ALL", "NET_ADMIN"]),
                     id="add-ungated-drop-gated"),
        pytest.param(container(add=["NET_RAW"]), id="NET_RAW-not-gated-by-default"),
        pytest.param(container(add=[]), id="empty-add"),
        pytest.param(container(privileged=False), id="privileged-false"),
        pytest.param(container(securityContext={}), id="empty-securityContext"),
        pytest.param(container(securityContext={"capabilities": None}), id="null-capabilities"),
    ],
)  # fmt: skip
def test_gate_passes(c: dict[str, Any]) -> None:
    for verdict in both_verdicts(pod(containers=[c], init=[c]), ON, DEFAULT):
        assert verdict.enforced and not verdict.violated, verdict
        assert "pass" in verdict.summary()


def test_gate_reports_every_violation_at_once() -> None:
    p = pod(
        containers=[container(), container("priv", privileged=True)],
        init=[container("setup", add=["NET_ADMIN", "NET_RAW", "cap_net_admin"])],
        ephemeral=[container("debug", add=["all"])],
    )
    pol = policy(gate={"capabilities": ["NET_ADMIN", "NET_RAW"]})
    for verdict in both_verdicts(p, ON, pol):
        got = [(v.kind, v.name) for v in verdict.violations]
        assert ("container", "priv") in got
        assert got.count(("initContainer", "setup")) == 3
        assert ("ephemeralContainer", "debug") in got
        assert "app" not in [v.name for v in verdict.violations]


def test_gate_with_no_capabilities_denies_nothing() -> None:
    pol = policy(gate={"capabilities": []})
    p = pod(containers=[container(add=["NET_ADMIN", "ALL"], privileged=True)])
    for verdict in both_verdicts(p, ON, pol):
        assert not verdict.violated, verdict


def test_gate_not_enforced_where_rule_does_not_enforce() -> None:
    p = pod(containers=[container(add=["NET_ADMIN"], privileged=True)])
    for ns in (OPT, LEGACY, OFF):
        for verdict in both_verdicts(p, ns, DEFAULT):
            assert not verdict.enforced and not verdict.violated
            assert "not enforced" in verdict.summary()


def test_gate_judged_whatever_injection_says() -> None:
    bad = container("app", add=["NET_ADMIN"])
    for p in (
        pod(containers=[bad], labels={INJECT: "false"}),
        pod(containers=[bad], labels={INJECT: "bogus"}),
        pod(containers=[bad], hostNetwork=True),
        pod(containers=[bad], annotations={MIRROR: "x"}),
        pod(
            containers=[bad, container("istio-proxy")],
            annotations={STATUS: CNI_STATUS, NETWORKS: "istio-cni"},
        ),
    ):
        d = run(p, ON)
        assert d.action == "skip"
        assert d.gate.violated, p


# ---------------------------------------------------------------------------------------
# gate exemptions: only service accounts (and exempt namespaces)

SA_POLICY = policy(gate={"exempt": {"serviceAccounts": ["shop/builder", "other/runner"]}})
SA_DEFAULT = policy(gate={"exempt": {"serviceAccounts": ["shop/default"]}})


@pytest.mark.parametrize(
    ("pol", "spec", "exempt"),
    [
        pytest.param(SA_POLICY, {"serviceAccountName": "builder"}, True, id="serviceAccountName"),
        pytest.param(SA_POLICY, {"serviceAccount": "builder"}, True,
                     id="deprecated-serviceAccount"),
        pytest.param(SA_POLICY, {"serviceAccountName": "runner"}, False,
                     id="account-listed-for-another-namespace"),
        pytest.param(SA_POLICY, {"serviceAccountName": "Builder"}, False, id="case-sensitive"),
        pytest.param(SA_POLICY, {}, False, id="none-is-default-not-listed"),
        pytest.param(SA_DEFAULT, {}, True, id="none-is-default-listed"),
        pytest.param(SA_DEFAULT, {"serviceAccountName": "default"}, True, id="explicit-default"),
        pytest.param(SA_DEFAULT, {"serviceAccountName": "builder"}, False, id="other-account"),
    ],
)  # fmt: skip
def test_gate_service_account_exemption(pol: Policy, spec: dict[str, Any], exempt: bool) -> None:
    p = pod(containers=[container(add=["NET_ADMIN"])], **spec)
    for verdict in both_verdicts(p, ON, pol):
        assert verdict.violated is not exempt, verdict
        if exempt:
            assert "exempt" in verdict.note


NEVER_EXEMPT = [
    pytest.param({"labels": {INJECT: "false", "app": "istio-proxy",
                             "security.istio.io/tlsMode": "istio"}}, id="labels"),
    pytest.param({"annotations": {INJECT: "false", "meshgate.io/exempt": "true", MIRROR: "x",
                                  STATUS: CNI_STATUS}}, id="annotations"),
    pytest.param({"name": "istio-proxy"}, id="container-named-istio-proxy"),
    pytest.param({"name": "istio-init"}, id="container-named-istio-init"),
    pytest.param({"image": "docker.io/istio/proxyv2:1.28.0"}, id="istio-image"),
    pytest.param({"serviceAccountName": "builder"}, id="account-exempt-elsewhere"),
]  # fmt: skip


@pytest.mark.parametrize("what", NEVER_EXEMPT)
def test_gate_never_exempts_by_labels_annotations_names_images(what: dict[str, Any]) -> None:
    c = container(what.get("name", "app"), image=what.get("image", "x"), add=["NET_ADMIN"])
    p = pod(labels=what.get("labels"), annotations=what.get("annotations"), containers=[c])
    if "serviceAccountName" in what:
        p["spec"]["serviceAccountName"] = what["serviceAccountName"]
    pol = policy(gate={"exempt": {"serviceAccounts": ["other/builder"]}})
    for verdict in both_verdicts(p, ON, pol):
        assert verdict.violated


# ---------------------------------------------------------------------------------------
# the gate's action

ACTIONS = policy(
    gate={"action": "warn"},
    namespaces=[
        {"match": {"names": ["a"]}, "mode": "cni", "enforceCNI": True},
        {"match": {"names": ["b"]}, "mode": "cni", "enforceCNI": True, "gateAction": "audit"},
        {"match": {"names": ["c"]}, "mode": "cni", "enforceCNI": True, "gateAction": "deny"},
    ],
)


@pytest.mark.parametrize(
    ("name", "action"),
    [
        pytest.param("a", "warn", id="gate-action-warn"),
        pytest.param("b", "audit", id="rule-audit-overrides"),
        pytest.param("c", "deny", id="rule-deny-overrides"),
    ],
)
def test_gate_action(name: str, action: str) -> None:
    p = pod(containers=[container(add=["NET_ADMIN"])])
    for verdict in both_verdicts(p, Namespace(name, {}), ACTIONS):
        assert verdict.violated
        assert verdict.action == action
        assert verdict.summary().startswith(action)


@pytest.mark.parametrize(
    ("mode", "violated"),
    [
        pytest.param("NONE", True, id="NONE"),
        pytest.param("TPROXY", True, id="TPROXY"),
        pytest.param("REDIRECT", False, id="REDIRECT"),
    ],
)
def test_interception_mode_is_a_gate_violation_where_enforced(mode: str, violated: bool) -> None:
    p = pod(annotations={INTERCEPTION: mode})
    for verdict in both_verdicts(p, Namespace("b", {}), ACTIONS):
        assert verdict.violated is violated
        if violated:
            assert verdict.action == "audit"  # judged with the rule's action
            assert any(INTERCEPTION in v.describe() and mode in v.describe()
                       for v in verdict.violations)  # fmt: skip
    for verdict in both_verdicts(p, OPT, DEFAULT):
        assert not verdict.violated


def test_ephemeral_update_judges_only_new_containers() -> None:
    p = pod(
        containers=[container(add=["NET_ADMIN"])],
        ephemeral=[container("old", add=["NET_ADMIN"]), container("new", add=["cap_net_admin"])],
        annotations={INTERCEPTION: "NONE"},
    )
    verdict = gate_for(p, ON, DEFAULT, OWN, only_ephemeral=frozenset({"new"}))
    assert [(v.kind, v.name) for v in verdict.violations] == [("ephemeralContainer", "new")]


# ---------------------------------------------------------------------------------------
# namespace labels unknown

UNKNOWN = policy(
    gate={"action": "audit"},
    namespaces=[
        {"match": {"names": ["prod-*"]}, "mode": "cni", "enforceCNI": True, "gateAction": "deny"},
        {"match": {"selector": {"matchLabels": {"team": "x"}}}, "mode": "cni",
         "enforceCNI": True, "gateAction": "warn"},
        {"match": {"names": ["dev-*"], "selector": {"matchLabels": {"tier": "a"}}},
         "mode": "cni", "enforceCNI": True},
        {"match": {"names": ["lab-*"]}, "mode": "cni", "enforceCNI": False},
    ],
)  # fmt: skip
NOT_ENFORCING_BY_NAME = policy(
    namespaces=[
        {"match": {"names": ["prod-*"]}, "mode": "cni", "enforceCNI": True},
        {"match": {"selector": {"matchLabels": {"a": "b"}}}, "mode": "init"},
    ]
)


@pytest.mark.parametrize(
    ("pol", "name", "enforced", "action", "rule"),
    [
        pytest.param(UNKNOWN, "prod-1", True, "deny", "namespaces[0]",
                     id="names-match-most-severe"),
        pytest.param(UNKNOWN, "dev-1", True, "warn", "namespaces[1]",
                     id="selector-rule-more-severe-than-names-rule"),
        pytest.param(UNKNOWN, "other", True, "warn", "namespaces[1]",
                     id="non-matching-names-not-considered"),
        pytest.param(UNKNOWN, "lab-1", True, "warn", "namespaces[1]",
                     id="non-enforcing-names-rule-ignored"),
        pytest.param(NOT_ENFORCING_BY_NAME, "prod-1", True, "deny", "namespaces[0]",
                     id="only-candidate"),
        pytest.param(NOT_ENFORCING_BY_NAME, "other", False, None, None,
                     id="no-enforcing-rule-can-match"),
        pytest.param(policy(namespaces=[], default={"enforceCNI": True, "gateAction": "warn"}),
                     "x", True, "warn", "default", id="enforcing-default"),
        pytest.param(policy(default={"enforceCNI": True, "gateAction": "warn"}), "x", True,
                     "deny", "namespaces[2]", id="stricter-selector-rule-beats-default"),
    ],
)  # fmt: skip
def test_unknown_namespace(
    pol: Policy, name: str, enforced: bool, action: str | None, rule: str | None
) -> None:
    ns = Namespace(name, None)
    bad = pod(labels={INJECT: "true"}, containers=[container(add=["NET_ADMIN"])])
    d = run(bad, ns, pol)
    assert d.action == "skip"  # no injection when labels are unknown
    assert d.network_value is None
    assert "could not be read" in joined(d.reasons)
    for verdict in (d.gate, gate_for(bad, ns, pol, OWN)):
        assert verdict.enforced is enforced
        assert verdict.namespace_unknown
        if enforced:
            assert verdict.violated
            assert verdict.action == action
            assert verdict.rule == rule
    good = run(pod(), ns, pol)
    assert good.action == "skip"
    assert not good.gate.violated


def test_unknown_namespace_default_policy() -> None:
    d = run(pod(containers=[container(add=["NET_ADMIN"])]), Namespace("new-ns", None))
    assert d.gate.violated and d.gate.action == "deny" and d.gate.namespace_unknown
    assert d.gate.rule == "namespaces[2]"


# ---------------------------------------------------------------------------------------
# gate.requireMesh


def meshed(**kw: Any) -> dict[str, Any]:
    annotations = {NETWORKS: "istio-cni"}
    annotations.update(kw.pop("annotations", None) or {})
    return injected_pod(annotations=annotations, **kw)


REQUIRE = policy(gate={"requireMesh": True})


@pytest.mark.parametrize(
    ("p", "words"),
    [
        pytest.param(meshed(), (), id="enrolled"),
        pytest.param(meshed(annotations={NETWORKS: "shop/istio-cni@eth2, macvlan"}), (),
                     id="enrolled-other-network-forms"),
        pytest.param(meshed(annotations={NETWORKS: '[{"name": "istio-cni"}]'}), (),
                     id="enrolled-json-network"),
        pytest.param(pod(containers=[container(), container("sidecar")],
                         annotations={NETWORKS: "istio-cni"}), (STATUS,), id="no-status"),
        pytest.param(meshed(init=[]), ("istio-validation",), id="status-lists-missing-container"),
        pytest.param(meshed(containers=[container(), container("other")]), ("istio-proxy",),
                     id="status-lists-missing-proxy"),
        pytest.param(meshed(annotations={NETWORKS: ""}), (NETWORKS,), id="empty-multus"),
        pytest.param(injected_pod(), (NETWORKS,), id="no-multus"),
        pytest.param(meshed(annotations={NETWORKS: "other/istio-cni"}), (NETWORKS,),
                     id="multus-other-namespace"),
        pytest.param(meshed(annotations={NETWORKS: "bad value!"}), (NETWORKS,),
                     id="multus-invalid"),
        pytest.param(meshed(containers=[container()],
                            init=[container("istio-validation"),
                                  container("istio-proxy", restartPolicy="Always")]),
                     ("two",), id="single-regular-container-native-sidecar"),
        pytest.param(pod(containers=[container("istio-proxy")],
                         annotations={STATUS: json.dumps({"containers": ["istio-proxy"]})}),
                     (), id="gateway-exempt-from-container-and-network-checks"),
        pytest.param(meshed(annotations={INJECT: "false"}), (INJECT,),
                     id="inject-annotation-false"),
        pytest.param(meshed(annotations={INJECT: "0"}), (INJECT,), id="inject-annotation-0"),
        pytest.param(meshed(annotations={INJECT: "no"}), (), id="inject-annotation-no"),
    ],
)  # fmt: skip
def test_mesh_violations(p: dict[str, Any], words: tuple[str, ...]) -> None:
    found = mesh_violations(p, REQUIRE, ON.name)
    if not words:
        assert found == [], found
        return
    assert found
    text = joined([v.describe() for v in found])
    for word in words:
        assert word in text, text
    assert all(v.kind == "pod" and v.fix for v in found)


def test_mesh_violations_gateway_still_needs_status() -> None:
    gw = pod(containers=[container("istio-proxy")])
    assert mesh_violations(gw, REQUIRE, "shop")


def test_mesh_violations_network_in_namespace() -> None:
    pol = policy(gate={"requireMesh": True}, cni={"network": "mesh/istio-cni"})
    assert mesh_violations(meshed(annotations={NETWORKS: "mesh/istio-cni"}), pol, "shop") == []
    assert mesh_violations(meshed(annotations={NETWORKS: "istio-cni"}), pol, "mesh") == []
    assert mesh_violations(meshed(annotations={NETWORKS: "istio-cni"}), pol, "shop")
