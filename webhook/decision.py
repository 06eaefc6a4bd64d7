"""Why a pod is or is not enrolled in the mesh, and what the gate says of it: one pure function.

`decide` reads the pod, the namespace's labels and the policy, and returns a Decision: what
to inject, what to refuse, the gate verdict, and every reason in words. Nothing here talks to
HTTP, a cluster or a clock, so the server, `meshgate explain` and the tests all call it alike.

Injection precedence (SPEC section 2), top to bottom, the first step that decides wins:
  1. mirror/static pod → no mutation
  2. hostNetwork → no injection
  3. inject label (or the deprecated annotation) false / invalid → no mutation
  4. mode disabled → no injection
  5. already injected → containers untouched; cni mode adds only a missing network entry
  6. inject label true → inject; neverInjectSelector → no; alwaysInjectSelector → inject;
     otherwise the rule's `injection`
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import multus, templates, traffic
from .gate import SEVERITY, Violation, spec_violations
from .policy import Policy, Rule, effective_action

STATUS = "sidecar.istio.io/status"
MIRROR = "kubernetes.io/config.mirror"
INJECTED = "meshgate.io/injected"

TRUE_WORDS = frozenset({"true", "yes", "y", "on"})
FALSE_WORDS = frozenset({"false", "no", "n", "off"})
# Go's strconv.ParseBool: how the Istio CNI plugin reads the inject annotation.
GO_FALSE = frozenset({"0", "f", "F", "false", "FALSE", "False"})
# The plugin reads this annotation whatever pods.injectLabel says.
PLUGIN_INJECT_ANNOTATION = "sidecar.istio.io/inject"

MESH_FIX = "let meshgate inject the pod (remove the opt-out) and keep the mesh network"
INTERCEPTION_FIX = f"remove the {traffic.INTERCEPTION_MODE} annotation or set it to REDIRECT"


@dataclass(frozen=True)
class Namespace:
    """A namespace as the decision sees it; `labels` is None when they could not be read."""

    name: str
    labels: Mapping[str, str] | None


@dataclass(frozen=True)
class GateVerdict:
    enforced: bool
    action: str  # deny | warn | audit (meaningful only when enforced)
    violations: tuple[Violation, ...] = ()
    rule: str = ""
    note: str = ""  # why the gate is off, or how it was chosen
    namespace_unknown: bool = False

    @property
    def violated(self) -> bool:
        return self.enforced and bool(self.violations)

    def summary(self) -> str:
        if not self.enforced:
            return f"not enforced ({self.note})" if self.note else "not enforced"
        if not self.violations:
            return f"pass (CNI enforced by {self.rule}, action {self.action})"
        listed = "; ".join(v.describe() for v in self.violations)
        return f"{self.action}: {listed}"


@dataclass(frozen=True)
class Decision:
    namespace: str
    rule: str  # the policy rule that applied, e.g. "namespaces[2]", "default", "exempt"
    mode: str  # cni | init | disabled
    action: str  # inject | annotate | skip
    reasons: tuple[str, ...]
    gate: GateVerdict
    warnings: tuple[str, ...] = ()  # for the pod's author, from /mutate
    refusals: tuple[str, ...] = ()  # deny whatever the gate's action says
    network_value: str | None = None  # new Multus annotation value, when it must change
    gateway: bool = False
    exempt: bool = False

    @property
    def label(self) -> str:
        """A short machine-readable outcome for logs, metrics and auditAnnotations."""
        if self.exempt:
            return "exempt"
        if self.action == "skip":
            return "skip"
        return f"{self.action}:{self.mode}"


def _spec(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    return pod.get("spec") or {}


def _meta(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    return pod.get("metadata") or {}


def service_account(spec: Mapping[str, Any]) -> str:
    return spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"


def is_gateway(spec: Mapping[str, Any]) -> bool:
    """A pod whose only regular container is its own istio-proxy (Istio's gateway shape)."""
    containers = spec.get("containers") or []
    return len(containers) == 1 and containers[0].get("name") == templates.PROXY


def _strictest_enforcing_rule(policy: Policy, name: str) -> Rule | None:
    best: Rule | None = None
    candidates = [r for r in (*policy.rules, policy.default)
                  if r.enforce_cni and r.may_match_by_name(name)]  # fmt: skip
    for rule in candidates:
        if (
            best is None
            or SEVERITY[effective_action(rule, policy)] > SEVERITY[effective_action(best, policy)]
        ):
            best = rule
    return best


def judge_gate(
    pod: Mapping[str, Any],
    namespace: str,
    rule: Rule | None,
    policy: Policy,
    *,
    only_ephemeral: frozenset[str] | None = None,
    namespace_unknown: bool = False,
) -> GateVerdict:
    """The gate's verdict on a pod (or a pod template) under `rule`."""
    if rule is None or not rule.enforce_cni:
        where = rule.where if rule else "no rule"
        return GateVerdict(False, policy.gate_action, note=f"{where} does not enforce CNI",
                           namespace_unknown=namespace_unknown)  # fmt: skip
    action = effective_action(rule, policy)
    spec = _spec(pod)
    account = f"{namespace}/{service_account(spec)}"
    if account in policy.exempt_service_accounts:
        return GateVerdict(False, action, rule=rule.where,
                           note=f"service account {account} is exempt (gate.exempt)")  # fmt: skip
    found = spec_violations(spec, policy.gated, only_ephemeral)
    if only_ephemeral is None:
        mode = (_meta(pod).get("annotations") or {}).get(traffic.INTERCEPTION_MODE)
        if mode in ("NONE", "TPROXY"):
            what = f"sets {traffic.INTERCEPTION_MODE}: {mode}, " + (
                "which turns traffic capture off" if mode == "NONE" else "which needs NET_ADMIN"
            )
            found.append(Violation("pod", traffic.INTERCEPTION_MODE, what, INTERCEPTION_FIX))
    return GateVerdict(True, action, tuple(found), rule.where, namespace_unknown=namespace_unknown)


def gate_for(
    pod: Mapping[str, Any],
    namespace: Namespace,
    policy: Policy,
    own_namespace: str,
    *,
    only_ephemeral: frozenset[str] | None = None,
) -> GateVerdict:
    """The gate alone, for requests that inject nothing (workload templates, ephemeral
    containers): the same namespace resolution as `decide`."""
    name = namespace.name
    if name == own_namespace or policy.is_exempt(name):
        return GateVerdict(False, policy.gate_action, note=f'namespace "{name}" is exempt')
    if namespace.labels is None:
        rule = _strictest_enforcing_rule(policy, name)
        return judge_gate(pod, name, rule, policy, only_ephemeral=only_ephemeral,
                          namespace_unknown=True)  # fmt: skip
    rule = policy.rule_for(name, namespace.labels)
    return judge_gate(pod, name, rule, policy, only_ephemeral=only_ephemeral)


def _parse_inject(value: str) -> bool | None:
    lowered = value.strip().lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    return None


def _plugin_refusals(pod: Mapping[str, Any], policy: Policy, *, injecting: bool) -> list[str]:
    """What would make the Istio CNI plugin silently leave the pod unredirected."""
    annotations = _meta(pod).get("annotations") or {}
    spec = _spec(pod)
    refusals = traffic.annotation_errors(annotations)
    if annotations.get(traffic.INTERCEPTION_MODE) == "TPROXY":
        refusals.append(
            f"annotation {traffic.INTERCEPTION_MODE}: TPROXY is not supported in cni mode "
            "(it needs NET_ADMIN in the proxy); use REDIRECT"
        )
    if annotations.get(PLUGIN_INJECT_ANNOTATION) in GO_FALSE:
        refusals.append(
            f"annotation {PLUGIN_INJECT_ANNOTATION}: "
            f"{annotations[PLUGIN_INJECT_ANNOTATION]!r} makes the CNI plugin skip "
            "the pod, so its traffic would bypass the mesh; remove the annotation or set the "
            "label instead"
        )
    if injecting and any(c.get("name") == templates.INIT for c in spec.get("initContainers") or ()):
        refusals.append(
            f'initContainer "{templates.INIT}" is declared, and the CNI plugin skips pods that '
            "have one; remove it (cni mode needs no istio-init)"
        )
    return refusals


def decide(
    pod: Mapping[str, Any], namespace: Namespace, policy: Policy, own_namespace: str
) -> Decision:
    """The whole decision for one pod (already shape-checked) in one namespace."""
    name = namespace.name
    if name == own_namespace or policy.is_exempt(name):
        why = "the webhook's own namespace" if name == own_namespace else "exemptNamespaces"
        note = f'namespace "{name}" is exempt ({why})'
        return Decision(name, "exempt", "disabled", "skip", (note + ": no mutation, no gate",),
                        GateVerdict(False, policy.gate_action, note=note), exempt=True)  # fmt: skip

    if namespace.labels is None:
        rule = _strictest_enforcing_rule(policy, name)
        gate = judge_gate(pod, name, rule, policy, namespace_unknown=True)
        reason = (
            f'the labels of namespace "{name}" could not be read: not injecting; the gate is '
            + (f"judged as {rule.where} (the strictest rule that may match)" if rule else "off")
        )
        return Decision(
            name, rule.where if rule else "unknown", "disabled", "skip", (reason,), gate
        )

    meta = _meta(pod)
    spec = _spec(pod)
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    reasons: list[str] = []
    warnings: list[str] = []

    rule = policy.rule_for(name, namespace.labels)
    mode = rule.mode
    enforced = ", CNI enforced" if rule.enforce_cni else ""
    reasons.append(
        f'namespace "{name}" matches {rule.where}: mode {mode}, injection {rule.injection}'
        + enforced
    )
    pod_mode = labels.get(policy.mode_label)
    if pod_mode is not None:
        if pod_mode in rule.allow_pod_modes:
            mode = pod_mode
            reasons.append(f"pod label {policy.mode_label}={pod_mode} selects mode {pod_mode}")
        elif pod_mode == mode:  # agrees with the rule: nothing to warn about
            reasons.append(f"pod label {policy.mode_label}={pod_mode} matches the rule's mode")
        else:
            allowed = ", ".join(sorted(rule.allow_pod_modes)) or "none"
            text = (
                f"label {policy.mode_label}={pod_mode} ignored: {rule.where} allows pod modes: "
                + allowed
            )
            reasons.append(text)
            warnings.append(text)
    gate = judge_gate(pod, name, rule, policy)

    def result(action: str, why: str, **kw: Any) -> Decision:
        reasons.append(why)
        return Decision(name, rule.where, mode, action, tuple(reasons), gate,
                        warnings=tuple(warnings), **kw)  # fmt: skip

    # 1, 2
    if MIRROR in annotations:
        return result("skip", "mirror (static) pod: no mutation")
    if spec.get("hostNetwork") is True:
        return result("skip", "hostNetwork: true: no injection (host traffic is never redirected)")

    injected = STATUS in annotations
    refusals = _plugin_refusals(pod, policy, injecting=False) if injected and mode == "cni" else []

    # 3
    wanted: bool | None = None
    source = f"label {policy.inject_label}"
    value = labels.get(policy.inject_label)
    if value is None and policy.inject_label in annotations:
        value = annotations[policy.inject_label]
        source = f"annotation {policy.inject_label} (deprecated; use the label)"
        warnings.append(f"annotation {policy.inject_label} is deprecated: use the label instead")
    if value is not None:
        wanted = _parse_inject(value)
        if wanted is False:
            return result("skip", f"{source}={value!r} opts out: no mutation",
                          refusals=tuple(refusals))  # fmt: skip
        if wanted is None:
            text = f"{source}={value!r} is invalid (use true or false): no mutation"
            warnings.append(text)
            return result("skip", text, refusals=tuple(refusals))

    # 4
    if mode == "disabled":
        return result("skip", "mode disabled: no injection")

    gateway = is_gateway(spec)
    # 5
    if injected:
        if mode != "cni" or gateway:
            return result("skip", "already injected (sidecar.istio.io/status): nothing to add",
                          refusals=tuple(refusals), gateway=gateway)  # fmt: skip
        network, problem = _network(annotations, policy, name)
        if problem:
            refusals.append(problem)
        if network is None:
            return result("skip", "already injected, mesh network present: nothing to add",
                          refusals=tuple(refusals))  # fmt: skip
        return result("annotate", "already injected: adding only the missing mesh network "
                      f"{policy.cni_network!r}", refusals=tuple(refusals),
                      network_value=network)  # fmt: skip

    # 6
    if wanted is True:
        why = f"{source}={value!r} opts in"
    elif any(sel.matches(labels) for sel in policy.never_inject):
        return result("skip", "pod matches pods.neverInjectSelector: no injection")
    elif any(sel.matches(labels) for sel in policy.always_inject):
        why = "pod matches pods.alwaysInjectSelector"
    elif rule.injection == "enabled":
        why = f"{rule.where} injects by default"
    else:
        return result("skip", f"{rule.where} is opt-in and the pod does not opt in "
                      f"(label {policy.inject_label}=true)")  # fmt: skip

    if mode == "cni":
        refusals = _plugin_refusals(pod, policy, injecting=True)
    else:
        refusals = traffic.annotation_errors(annotations)
    if not gateway:
        refusals += _name_clashes(spec, policy, mode)
    network = None
    if mode == "cni" and not gateway:
        network, problem = _network(annotations, policy, name)
        if problem:
            refusals.append(problem)
    what = (
        "gateway: merging the proxy template into its istio-proxy"
        if gateway
        else f"injecting ({mode} mode)"
    )
    return result("inject", f"{why}: {what}", refusals=tuple(refusals), network_value=network,
                  gateway=gateway)  # fmt: skip


def _name_clashes(spec: Mapping[str, Any], policy: Policy, mode: str) -> list[str]:
    """A regular container named like the init container about to be added: Kubernetes
    wants names unique across containers and initContainers, so the injected pod would be
    rejected by the API server with a puzzling "Duplicate value"; say why instead."""
    if mode == "init":
        added = templates.INIT
    elif policy.validation_init_container:
        added = templates.VALIDATION
    else:
        return []
    if not any(c.get("name") == added for c in spec.get("containers") or ()):
        return []
    return [
        f'container "{added}" is a regular container, and {mode} mode adds an init '
        "container of that name (container names must be unique); rename it"
    ]


def _network(
    annotations: Mapping[str, str], policy: Policy, namespace: str
) -> tuple[str | None, str | None]:
    """(new Multus value or None when present, refusal message or None)."""
    try:
        return multus.merged(
            annotations.get(multus.ANNOTATION), policy.cni_network, namespace
        ), None
    except multus.NetworkValueError as err:
        return None, (
            f"annotation {multus.ANNOTATION}: {err}; it must be a comma list or a JSON list of "
            "networks, or the mesh network cannot be added and the pod's traffic would bypass "
            "the mesh"
        )


def mesh_violations(pod: Mapping[str, Any], policy: Policy, namespace: str) -> list[Violation]:
    """gate.requireMesh: why the stored pod would not be redirected by the CNI plugin."""
    annotations = _meta(pod).get("annotations") or {}
    spec = _spec(pod)

    def violation(what: str) -> Violation:
        return Violation("pod", "", what, MESH_FIX)

    status = annotations.get(STATUS)
    if status is None:
        return [violation(f"is not enrolled in the mesh (no {STATUS} annotation)")]
    found = []
    present = {c.get("name") for f in ("containers", "initContainers") for c in spec.get(f) or ()}
    try:
        parsed = json.loads(status)
        listed = [*(parsed.get("containers") or []), *(parsed.get("initContainers") or [])]
        missing = [n for n in listed if n not in present]
        if missing:
            found.append(
                violation(f"lacks containers its {STATUS} lists: {', '.join(map(str, missing))}")
            )
    except (ValueError, AttributeError, TypeError):
        found.append(violation(f"has a {STATUS} annotation that is not Istio's JSON"))
    gateway = is_gateway(spec)
    if not gateway:
        if not multus.contains(annotations.get(multus.ANNOTATION), policy.cni_network, namespace):
            found.append(violation(f"has no {multus.ANNOTATION} entry for {policy.cni_network!r}"))
        regular = len(spec.get("containers") or [])
        if policy.plugin_supports_native_sidecars:
            regular += sum(
                1 for c in spec.get("initContainers") or () if c.get("restartPolicy") == "Always"
            )
        if regular < 2:
            found.append(violation("has fewer than two containers, so the CNI plugin skips it"))
    if annotations.get(PLUGIN_INJECT_ANNOTATION) in GO_FALSE:
        value = annotations[PLUGIN_INJECT_ANNOTATION]
        found.append(violation(f"has annotation {PLUGIN_INJECT_ANNOTATION}={value!r}, "
                               "so the CNI plugin skips it"))  # fmt: skip
    return found
