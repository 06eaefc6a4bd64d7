"""The policy: schema, defaults, semantic checks, and the compiled, immutable Policy object.

A policy states only what it changes: maps merge key by key over DEFAULT_DOCUMENT and a
list that is given replaces the default list whole. Everything a request needs (globs,
selectors, capability spellings, templates) is compiled here once, so that a request only
reads a frozen snapshot; a new policy is a new object swapped in by reference.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from . import multus, templates
from .gate import ACTIONS, SEVERITY, CapabilitySet, container_violations
from .match import GlobSet, SchemaError, Selector, glob_error, is_label_key, parse_selector
from .objects import InvalidObject, check_container

MODES = ("cni", "init", "disabled")
INJECTION = ("enabled", "opt-in")

DEFAULT_YAML = """\
version: 1
exemptNamespaces: [kube-system, kube-public, kube-node-lease, local-path-storage, istio-system]
namespaces:
  - match: {selector: {matchLabels: {istio-injection: disabled}}}
    mode: disabled
  - match: {selector: {matchLabels: {meshgate.io/mode: init}}}
    mode: init
    injection: enabled
  - match: {selector: {matchLabels: {istio-injection: enabled}}}
    mode: cni
    injection: enabled
    enforceCNI: true
default: {mode: cni, injection: opt-in, enforceCNI: false}
pods:
  injectLabel: sidecar.istio.io/inject
  modeLabel: meshgate.io/mode
  neverInjectSelector: []
  alwaysInjectSelector: []
gate:
  action: deny
  capabilities: [NET_ADMIN]
  exempt: {serviceAccounts: []}
  requireMesh: false
cni: {network: istio-cni, validationInitContainer: true, pluginSupportsNativeSidecars: false}
sidecar: {native: false}
"""
DEFAULT_DOCUMENT: dict[str, Any] = yaml.safe_load(DEFAULT_YAML)

_RULE_KEYS = ("mode", "injection", "enforceCNI", "allowPodModes", "gateAction")
_SA = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_CAP = re.compile(r"^[A-Z][A-Z0-9_]*$")


@dataclass(frozen=True)
class Rule:
    """One entry of `namespaces` (or the `default`), compiled."""

    where: str  # "namespaces[2]" or "default": how reasons name the rule
    names: GlobSet | None
    selector: Selector | None
    mode: str
    injection: str
    enforce_cni: bool
    allow_pod_modes: frozenset[str]
    gate_action: str

    def matches(self, name: str, labels: Mapping[str, str]) -> bool:
        if self.names is not None and not self.names.matches(name):
            return False
        return self.selector is None or self.selector.matches(labels)

    def may_match_by_name(self, name: str) -> bool:
        """Whether the rule could match a namespace of this name whatever its labels."""
        return self.names is None or self.names.matches(name)


@dataclass(frozen=True)
class Policy:
    version: str  # first 12 hex digits of the SHA-256 of the canonical JSON document
    document: dict[str, Any] = field(repr=False, compare=False)
    exempt_namespaces: GlobSet
    rules: tuple[Rule, ...]
    default: Rule
    inject_label: str
    mode_label: str
    never_inject: tuple[Selector, ...]
    always_inject: tuple[Selector, ...]
    gate_action: str
    gated: CapabilitySet
    exempt_service_accounts: frozenset[str]
    require_mesh: bool
    cni_network: str
    validation_init_container: bool
    plugin_supports_native_sidecars: bool
    sidecar_native: bool
    # The effective templates, read-only (templates.freeze): every request shares them and
    # copies only what it changes. They derive from `document`, which `version` identifies.
    proxy_template: Mapping[str, Any] = field(repr=False, compare=False)
    init_template: Mapping[str, Any] = field(repr=False, compare=False)
    validation_template: Mapping[str, Any] = field(repr=False, compare=False)
    volumes_template: Sequence[Mapping[str, Any]] = field(repr=False, compare=False)
    proxy_uid: int
    warnings: tuple[str, ...] = ()

    def rule_for(self, name: str, labels: Mapping[str, str]) -> Rule:
        for rule in self.rules:
            if rule.matches(name, labels):
                return rule
        return self.default

    def is_exempt(self, name: str) -> bool:
        return self.exempt_namespaces.matches(name)


def _merge_document(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _merge_document(base.get(key), value) if key in base else value
        return merged
    return override


class _Checker:
    """Collects path-named errors while reading a raw document."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def keys(self, raw: Mapping[str, Any], path: str, allowed: tuple[str, ...]) -> None:
        for key in raw:
            if key not in allowed:
                self.errors.append(
                    f"{path}.{key}: unknown key (expected one of {', '.join(allowed)})"
                    if path
                    else f"{key}: unknown key (expected one of {', '.join(allowed)})"
                )

    def typed(self, raw: Mapping[str, Any], key: str, path: str, kind: type, default: Any) -> Any:
        value = raw.get(key, default)
        if kind is bool and not isinstance(value, bool) or not isinstance(value, kind):
            self.errors.append(f"{path}: must be {_TYPE_NAMES[kind]}")
            return default
        return value

    def choice(self, value: Any, path: str, choices: tuple[str, ...]) -> str:
        if value not in choices:
            self.errors.append(f"{path}: must be {_one_of(choices)} (got {value!r})")
            return choices[0]
        return str(value)

    def strings(self, value: Any, path: str, check: Callable[[str], str | None]) -> list[str]:
        if not isinstance(value, list):
            self.errors.append(f"{path}: must be a list")
            return []
        out = []
        for i, item in enumerate(value):
            problem = "must be a string" if not isinstance(item, str) else check(item)
            if problem:
                self.errors.append(f"{path}[{i}]: {problem}")
            else:
                out.append(item)
        return out

    def mapping(self, raw: Mapping[str, Any], key: str, path: str) -> dict[str, Any]:
        value = raw.get(key)
        if not isinstance(value, dict):
            self.errors.append(f"{path}: must be a map")
            return {}
        return value


_TYPE_NAMES = {bool: "true or false", str: "a string", int: "an integer", list: "a list"}


def _one_of(choices: tuple[str, ...]) -> str:
    return ", ".join(choices[:-1]) + " or " + choices[-1]


def _no_check(_: str) -> str | None:
    return None


def _sa_check(item: str) -> str | None:
    return None if _SA.match(item) else f"{item!r} must be namespace/name"


def _cap_check(item: str) -> str | None:
    name = item.strip().upper().removeprefix("CAP_")
    if not _CAP.match(name) or name == "ALL":
        return f"{item!r} is not a capability name"
    return None


def _compile_rule(c: _Checker, raw: Any, where: str, default: Mapping[str, Any] | None) -> Rule:
    if not isinstance(raw, dict):
        c.errors.append(f"{where}: must be a map")
        raw = {}
    names: GlobSet | None = None
    selector: Selector | None = None
    if default is None:  # `default` has no match; every other rule needs one
        c.keys(raw, where, ("match", *_RULE_KEYS))
        match = raw.get("match")
        if not isinstance(match, dict):
            c.errors.append(f"{where}.match: required, a map with names and/or selector")
        else:
            c.keys(match, f"{where}.match", ("names", "selector"))
            if "names" not in match and "selector" not in match:
                c.errors.append(
                    f"{where}.match: needs names or selector (selector: {{}} matches all)"
                )
            if "names" in match:
                globs = c.strings(match["names"], f"{where}.match.names", glob_error)
                names = GlobSet.compile(globs)
            if "selector" in match:
                selector = parse_selector(match["selector"], f"{where}.match.selector", c.errors)
        if "mode" not in raw:
            c.errors.append(f"{where}.mode: required, one of {', '.join(MODES)}")
        defaults: Mapping[str, Any] = {
            "injection": "enabled",
            "enforceCNI": False,
            "allowPodModes": [],
            "gateAction": None,
        }
    else:
        c.keys(raw, where, _RULE_KEYS)
        defaults = default
    mode = c.choice(raw.get("mode", defaults.get("mode", "cni")), f"{where}.mode", MODES)
    injection = c.choice(
        raw.get("injection", defaults["injection"]), f"{where}.injection", INJECTION
    )
    enforce = c.typed(raw, "enforceCNI", f"{where}.enforceCNI", bool, defaults["enforceCNI"])
    pod_modes = c.strings(
        raw.get("allowPodModes", defaults.get("allowPodModes", [])),
        f"{where}.allowPodModes",
        lambda m: None if m in MODES else f"must be {_one_of(MODES)}",
    )
    action = raw.get("gateAction", defaults.get("gateAction"))
    if action is not None:
        action = c.choice(action, f"{where}.gateAction", ACTIONS)
    if enforce and mode == "init":
        c.errors.append(
            f"{where}: enforceCNI: true with mode: init would inject istio-init, which needs "
            "NET_ADMIN, into pods the gate then rejects"
        )
    if enforce and "init" in pod_modes:
        c.errors.append(
            f"{where}.allowPodModes: 'init' where enforceCNI is true lets pods choose an "
            "istio-init that the gate rejects"
        )
    return Rule(
        where, names, selector, mode, injection, enforce, frozenset(pod_modes), action or ""
    )


def _template(
    c: _Checker, section: Mapping[str, Any], key: str, path: str, base: dict[str, Any], name: str
) -> dict[str, Any]:
    raw = section.get(key)
    if raw is None:
        return base
    if not isinstance(raw, dict):
        c.errors.append(f"{path}: must be a Container (a map)")
        return base
    if raw.get("name", name) != name:
        c.errors.append(f"{path}.name: must be {name!r} (or omitted)")
    if name != templates.PROXY and "args" in raw:
        c.errors.append(f"{path}.args: computed from the traffic annotations; remove it")
    try:
        check_container({"name": name, **raw}, path)
    except InvalidObject as err:
        c.errors.append(str(err).replace(" must", ": must", 1))
        return base
    return templates.merge(base, raw)


def compile_policy(raw: Any) -> Policy:
    """Validate a parsed policy document and compile it; SchemaError lists every problem."""
    c = _Checker()
    doc = _merged_document(c, raw)
    fields: dict[str, Any] = {}
    fields.update(_compile_namespaces(c, doc))
    fields.update(_compile_pods(c, doc["pods"]))
    fields.update(_compile_gate(c, doc["gate"]))
    fields.update(_compile_injection(c, doc, fields["gated"]))
    _check_native(c, fields)
    if c.errors:
        raise SchemaError(c.errors)
    warnings = []
    if not fields["gated"].names:
        warnings.append("gate.capabilities is empty: the gate denies nothing")
    if "*" in fields["exempt_namespaces"].patterns:
        warnings.append("exemptNamespaces contains '*': every namespace is exempt")
    return Policy(
        version=document_version(_normalised(doc)),
        document=doc,
        warnings=tuple(warnings),
        **fields,
    )


def _merged_document(c: _Checker, raw: Any) -> dict[str, Any]:
    """The policy merged over the defaults; unusable sections are reported and left out, so
    the rest is still checked and every error is reported at once."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SchemaError(["(top level): must be a map"])
    top_keys = tuple(DEFAULT_DOCUMENT) + ("init",)
    c.keys(raw, "", top_keys)
    unusable = {key for key in raw if key not in top_keys}
    for section in ("pods", "gate", "cni", "sidecar", "default", "init"):
        if section in raw and not isinstance(raw[section], dict):
            c.errors.append(f"{section}: must be a map")
            unusable.add(section)
    usable = {key: value for key, value in raw.items() if key not in unusable}
    doc: dict[str, Any] = _merge_document(DEFAULT_DOCUMENT, usable)
    version = doc.get("version")
    if version != 1 or isinstance(version, bool):
        c.errors.append(f"version: must be 1 (got {version!r})")
    return doc


def _compile_namespaces(c: _Checker, doc: dict[str, Any]) -> dict[str, Any]:
    exempt = GlobSet.compile(c.strings(doc["exemptNamespaces"], "exemptNamespaces", glob_error))
    default_defaults = {"mode": "cni", "injection": "opt-in", "enforceCNI": False,
                        "allowPodModes": [], "gateAction": None}  # fmt: skip
    default = _compile_rule(c, doc["default"], "default", default_defaults)
    rules: list[Rule] = []
    if not isinstance(doc["namespaces"], list):
        c.errors.append("namespaces: must be a list")
    else:
        for i, item in enumerate(doc["namespaces"]):
            rules.append(_compile_rule(c, item, f"namespaces[{i}]", None))
    return {"exempt_namespaces": exempt, "rules": tuple(rules), "default": default}


def _compile_pods(c: _Checker, pods: dict[str, Any]) -> dict[str, Any]:
    c.keys(pods, "pods", tuple(DEFAULT_DOCUMENT["pods"]))
    inject_label = c.typed(pods, "injectLabel", "pods.injectLabel", str, "sidecar.istio.io/inject")
    mode_label = c.typed(pods, "modeLabel", "pods.modeLabel", str, "meshgate.io/mode")
    for key, value in (("injectLabel", inject_label), ("modeLabel", mode_label)):
        if not is_label_key(value):
            c.errors.append(f"pods.{key}: {value!r} is not a valid label key")
    selectors: dict[str, list[Selector]] = {}
    for key in ("neverInjectSelector", "alwaysInjectSelector"):
        selectors[key] = []
        items = pods.get(key)
        if not isinstance(items, list):
            c.errors.append(f"pods.{key}: must be a list of label selectors")
            continue
        for i, item in enumerate(items):
            sel = parse_selector(item, f"pods.{key}[{i}]", c.errors)
            if sel is not None:
                selectors[key].append(sel)
    return {
        "inject_label": inject_label,
        "mode_label": mode_label,
        "never_inject": tuple(selectors["neverInjectSelector"]),
        "always_inject": tuple(selectors["alwaysInjectSelector"]),
    }


def _compile_gate(c: _Checker, gate: dict[str, Any]) -> dict[str, Any]:
    c.keys(gate, "gate", tuple(DEFAULT_DOCUMENT["gate"]))
    capabilities = c.strings(gate.get("capabilities"), "gate.capabilities", _cap_check)
    exempt_raw = c.mapping(gate, "exempt", "gate.exempt")
    c.keys(exempt_raw, "gate.exempt", ("serviceAccounts",))
    service_accounts = c.strings(
        exempt_raw.get("serviceAccounts", []), "gate.exempt.serviceAccounts", _sa_check
    )
    return {
        "gate_action": c.choice(gate.get("action"), "gate.action", ACTIONS),
        "gated": CapabilitySet.of(capabilities),
        "exempt_service_accounts": frozenset(service_accounts),
        "require_mesh": c.typed(gate, "requireMesh", "gate.requireMesh", bool, False),
    }


def _compile_injection(c: _Checker, doc: dict[str, Any], gated: CapabilitySet) -> dict[str, Any]:
    """The cni, sidecar and init sections: settings and the effective templates."""
    cni = doc["cni"]
    c.keys(cni, "cni", (*DEFAULT_DOCUMENT["cni"], "validationContainer"))
    network = c.typed(cni, "network", "cni.network", str, "istio-cni")
    try:
        multus.parse_ref(network)
    except multus.NetworkValueError as err:
        c.errors.append(f"cni.network: {err}")
    sidecar = doc["sidecar"]
    c.keys(sidecar, "sidecar", ("native", "container", "volumes"))
    init = doc.get("init", {})
    c.keys(init, "init", ("container",))

    proxy = _template(c, sidecar, "container", "sidecar.container", templates.DEFAULT_PROXY,
                      templates.PROXY)  # fmt: skip
    init_container = _template(c, init, "container", "init.container", templates.DEFAULT_INIT,
                               templates.INIT)  # fmt: skip
    validation = _template(c, cni, "validationContainer", "cni.validationContainer",
                           templates.DEFAULT_VALIDATION, templates.VALIDATION)  # fmt: skip
    volumes = templates.DEFAULT_VOLUMES
    if "volumes" in sidecar:
        raw_volumes = sidecar["volumes"]
        if not isinstance(raw_volumes, list) or not all(
            isinstance(v, dict) and isinstance(v.get("name"), str) for v in raw_volumes
        ):
            c.errors.append("sidecar.volumes: must be a list of Volumes, each with a name")
        else:
            volumes = templates.merge_by_name(volumes, raw_volumes)

    # Semantic conflicts: the webhook must never inject what its own gate rejects.
    for path, container in (("sidecar.container", proxy),
                            ("cni.validationContainer", validation)):  # fmt: skip
        for violation in container_violations(container, "container", gated):
            c.errors.append(
                f"{path}: the template {violation.what}, which the gate rejects where CNI is "
                "enforced"
            )
    uid = (proxy.get("securityContext") or {}).get("runAsUser", 1337)
    if not isinstance(uid, int) or isinstance(uid, bool):
        c.errors.append("sidecar.container.securityContext.runAsUser: must be an integer")
        uid = 1337
    return {
        "cni_network": network,
        "validation_init_container": c.typed(
            cni, "validationInitContainer", "cni.validationInitContainer", bool, True
        ),
        "plugin_supports_native_sidecars": c.typed(
            cni, "pluginSupportsNativeSidecars", "cni.pluginSupportsNativeSidecars", bool, False
        ),
        "sidecar_native": c.typed(sidecar, "native", "sidecar.native", bool, False),
        "proxy_template": templates.freeze(proxy),
        "init_template": templates.freeze(init_container),
        "validation_template": templates.freeze(validation),
        "volumes_template": templates.freeze(volumes),
        "proxy_uid": uid,
    }


def _check_native(c: _Checker, fields: Mapping[str, Any]) -> None:
    if not fields["sidecar_native"] or fields["plugin_supports_native_sidecars"]:
        return
    for rule in (*fields["rules"], fields["default"]):
        if rule.mode == "cni" or "cni" in rule.allow_pod_modes:
            c.errors.append(
                f"sidecar.native: true with cni mode ({rule.where}) leaves one-container "
                "pods unredirected by CNI plugins that count only regular containers; set "
                "cni.pluginSupportsNativeSidecars: true if yours supports native sidecars"
            )
            return


def _normalised(doc: dict[str, Any]) -> dict[str, Any]:
    """The document with every per-rule default written out, so that two policies that mean
    the same get the same version whether or not they spell the defaults."""
    rule_defaults = {"injection": "enabled", "enforceCNI": False, "allowPodModes": []}
    rules = [{**rule_defaults, **rule} for rule in doc["namespaces"]]
    return {**doc, "namespaces": rules}


def document_version(doc: Mapping[str, Any]) -> str:
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def default_policy() -> Policy:
    return compile_policy(copy.deepcopy(DEFAULT_DOCUMENT))


def rule_severity(rule: Rule, policy: Policy) -> int:
    return SEVERITY[effective_action(rule, policy)]


def effective_action(rule: Rule, policy: Policy) -> str:
    return rule.gate_action or policy.gate_action
