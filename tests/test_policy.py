"""Tests for webhook.policy: the embedded default, defaults merging, the version, strict
validation with path-named errors, warnings, ConfigMap unwrapping and `meshgate policy check`."""

from __future__ import annotations

import copy
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from webhook import cli
from webhook.match import SchemaError
from webhook.policy import (
    DEFAULT_DOCUMENT,
    compile_policy,
    default_policy,
    effective_action,
)
from webhook.sources import parse_policy_text, read_policy_file

# The block of SPEC section 3, as written there: it is both the contract of the keys and the
# embedded default policy.
SPEC_BLOCK = """\
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

HEX12 = re.compile(r"^[0-9a-f]{12}$")

# ---------------------------------------------------------------------------------------
# helpers


def errors_of(raw: Any) -> list[str]:
    """The errors compile_policy reports for `raw` (fails the test if it compiles)."""
    with pytest.raises(SchemaError) as info:
        compile_policy(raw)
    assert info.value.errors, "SchemaError without errors"
    return info.value.errors


def rule(match: dict[str, Any] | None = None, **keys: Any) -> dict[str, Any]:
    """One `namespaces` entry; `match` defaults to a names glob."""
    entry: dict[str, Any] = {"match": match if match is not None else {"names": ["team-*"]}}
    entry.update(keys)
    return entry


def with_rules(*rules: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"namespaces": list(rules), **top}


def has_error(errors: list[str], path: str, *words: str) -> bool:
    """Whether one error starts with `path:` and contains every word."""
    return any(e.startswith(f"{path}:") and all(w in e for w in words) for e in errors)


# ---------------------------------------------------------------------------------------
# the embedded default policy


def test_embedded_default_document_is_the_spec_block() -> None:
    assert yaml.safe_load(SPEC_BLOCK) == DEFAULT_DOCUMENT


def test_embedded_default_compiles_to_the_spec_semantics() -> None:
    p = default_policy()
    assert p.exempt_namespaces.patterns == (
        "kube-system", "kube-public", "kube-node-lease", "local-path-storage", "istio-system",
    )  # fmt: skip
    for name in ("kube-system", "istio-system", "local-path-storage"):
        assert p.is_exempt(name)
    assert not p.is_exempt("default")
    assert not p.is_exempt("kube-systemx")  # globs match whole names

    assert len(p.rules) == 3
    disabled, init, cni = p.rules
    assert [r.where for r in p.rules] == ["namespaces[0]", "namespaces[1]", "namespaces[2]"]

    assert disabled.mode == "disabled"
    assert disabled.matches("x", {"istio-injection": "disabled"})
    assert not disabled.matches("x", {"istio-injection": "enabled"})
    assert not disabled.enforce_cni

    assert init.mode == "init"
    assert init.injection == "enabled"
    assert not init.enforce_cni
    assert init.matches("x", {"meshgate.io/mode": "init"})
    assert not init.matches("x", {})

    assert cni.mode == "cni"
    assert cni.injection == "enabled"
    assert cni.enforce_cni
    assert cni.allow_pod_modes == frozenset()
    assert effective_action(cni, p) == "deny"
    assert cni.matches("x", {"istio-injection": "enabled"})

    assert p.default.where == "default"
    assert p.default.mode == "cni"
    assert p.default.injection == "opt-in"
    assert not p.default.enforce_cni
    assert p.rule_for("plain", {}) is p.default
    assert p.rule_for("x", {"istio-injection": "enabled"}) is cni

    assert p.inject_label == "sidecar.istio.io/inject"
    assert p.mode_label == "meshgate.io/mode"
    assert p.never_inject == ()
    assert p.always_inject == ()

    assert p.gate_action == "deny"
    assert p.gated.names == ("NET_ADMIN",)
    assert p.exempt_service_accounts == frozenset()
    assert p.require_mesh is False

    assert p.cni_network == "istio-cni"
    assert p.validation_init_container is True
    assert p.plugin_supports_native_sidecars is False
    assert p.sidecar_native is False
    assert p.warnings == ()


def test_empty_policy_is_the_default_policy() -> None:
    assert compile_policy({}).version == default_policy().version
    assert compile_policy(None).version == default_policy().version
    assert compile_policy(yaml.safe_load(SPEC_BLOCK)).version == default_policy().version


# ---------------------------------------------------------------------------------------
# defaults merge: a policy states only what it changes


def test_gate_action_alone_keeps_the_other_gate_defaults() -> None:
    p = compile_policy({"gate": {"action": "warn"}})
    assert p.gate_action == "warn"
    assert p.gated.names == ("NET_ADMIN",)
    assert p.require_mesh is False
    assert p.exempt_service_accounts == frozenset()
    # nothing else moved
    assert len(p.rules) == 3
    assert p.cni_network == "istio-cni"
    assert effective_action(p.rules[2], p) == "warn"


def test_a_given_list_replaces_the_default_list_whole() -> None:
    p = compile_policy({"gate": {"capabilities": ["NET_RAW"]}})
    assert p.gated.names == ("NET_RAW",)
    assert p.gated.granted_by("NET_ADMIN") is None

    p = compile_policy({"exemptNamespaces": ["ops"]})
    assert p.exempt_namespaces.patterns == ("ops",)
    assert not p.is_exempt("kube-system")

    p = compile_policy(with_rules(rule(mode="cni")))
    assert len(p.rules) == 1


def test_default_mode_alone_keeps_injection_opt_in() -> None:
    p = compile_policy({"default": {"mode": "init"}})
    assert p.default.mode == "init"
    assert p.default.injection == "opt-in"
    assert p.default.enforce_cni is False


def test_nested_map_merges_key_by_key() -> None:
    p = compile_policy({"cni": {"network": "mesh/istio-cni"}, "pods": {"modeLabel": "x.io/m"}})
    assert p.cni_network == "mesh/istio-cni"
    assert p.validation_init_container is True
    assert p.mode_label == "x.io/m"
    assert p.inject_label == "sidecar.istio.io/inject"


def test_rule_keys_get_per_rule_defaults() -> None:
    p = compile_policy(with_rules(rule(mode="cni"), gate={"action": "audit"}))
    (r,) = p.rules
    assert r.injection == "enabled"
    assert r.enforce_cni is False
    assert r.allow_pod_modes == frozenset()
    assert effective_action(r, p) == "audit"  # gateAction defaults to gate.action


def test_rule_gate_action_overrides_gate_action() -> None:
    p = compile_policy(with_rules(rule(mode="cni", enforceCNI=True, gateAction="warn")))
    assert effective_action(p.rules[0], p) == "warn"
    assert p.gate_action == "deny"


def test_compile_does_not_change_its_input() -> None:
    raw = {"gate": {"action": "warn"}, "namespaces": [rule(mode="cni")]}
    before = copy.deepcopy(raw)
    compile_policy(raw)
    assert raw == before


def _mutable_parts(value: Any, path: str = "") -> list[str]:
    """Where a compiled template could be changed in place (it must be nowhere)."""
    found = []
    if isinstance(value, dict):
        if type(value) is dict:
            found.append(path or "/")
        for key, item in value.items():
            found += _mutable_parts(item, f"{path}/{key}")
    elif isinstance(value, list):
        if type(value) is list:
            found.append(path or "/")
        for i, item in enumerate(value):
            found += _mutable_parts(item, f"{path}/{i}")
    return found


def test_compiled_templates_are_read_only_at_every_level() -> None:
    """Every request shares the policy's templates; a change in place would reach every
    later pod, so each level refuses it, and copies are ordinary objects again."""
    policy = compile_policy({"sidecar": {"volumes": [{"name": "extra", "emptyDir": {}}]}})
    templates_ = {
        "proxy": policy.proxy_template,
        "init": policy.init_template,
        "validation": policy.validation_template,
        "volumes": policy.volumes_template,
    }
    for name, template in templates_.items():
        assert _mutable_parts(template) == [], name
    proxy: Any = policy.proxy_template
    changes = [
        lambda: proxy.__setitem__("image", "evil"),
        lambda: proxy.setdefault("lifecycle", {}),
        lambda: proxy.update(image="evil"),
        lambda: proxy.pop("image"),
        lambda: proxy["env"].append({"name": "X", "value": "1"}),
        lambda: proxy["env"][0].__setitem__("value", "evil"),
        lambda: proxy["securityContext"]["capabilities"]["drop"].clear(),
        lambda: policy.volumes_template[0].__delitem__("name"),  # type: ignore[attr-defined]
    ]
    for change in changes:
        with pytest.raises(TypeError, match="shared by every request"):
            change()
    copied = copy.deepcopy(proxy)
    assert copied == proxy and _mutable_parts(copied) != []
    copied["env"][0]["value"] = "changed"  # an ordinary copy: the template is untouched
    assert proxy["env"][0]["value"] != "changed"


# ---------------------------------------------------------------------------------------
# the policy version


def test_version_is_12_hex_and_stable() -> None:
    raw = {"gate": {"action": "warn"}, "namespaces": [rule(mode="cni")]}
    first = compile_policy(raw).version
    assert HEX12.match(first)
    assert compile_policy(copy.deepcopy(raw)).version == first
    assert HEX12.match(default_policy().version)
    assert default_policy().version == default_policy().version


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"gate": {"action": "warn"}}, id="gate-action"),
        pytest.param({"gate": {"capabilities": ["NET_ADMIN", "NET_RAW"]}}, id="capabilities"),
        pytest.param({"exemptNamespaces": ["kube-system"]}, id="exempt-list"),
        pytest.param({"cni": {"network": "other"}}, id="network"),
        pytest.param({"namespaces": []}, id="no-rules"),
        pytest.param({"sidecar": {"container": {"image": "example/proxy:1"}}}, id="template"),
    ],
)
def test_version_changes_when_content_changes(change: dict[str, Any]) -> None:
    assert compile_policy(change).version != default_policy().version


def test_version_is_independent_of_key_order() -> None:
    a = yaml.safe_load(
        """
        gate: {action: warn, capabilities: [NET_ADMIN, NET_RAW]}
        namespaces:
          - match: {names: [a-*], selector: {matchLabels: {x: y}}}
            mode: cni
            enforceCNI: true
        cni: {network: istio-cni, validationInitContainer: false}
        """
    )
    b = yaml.safe_load(
        """
        cni: {validationInitContainer: false, network: istio-cni}
        namespaces:
          - enforceCNI: true
            mode: cni
            match: {selector: {matchLabels: {x: y}}, names: [a-*]}
        gate: {capabilities: [NET_ADMIN, NET_RAW], action: warn}
        """
    )
    assert list(a) != list(b)
    assert compile_policy(a).version == compile_policy(b).version


def test_list_order_is_content() -> None:
    a = compile_policy({"gate": {"capabilities": ["NET_ADMIN", "NET_RAW"]}})
    b = compile_policy({"gate": {"capabilities": ["NET_RAW", "NET_ADMIN"]}})
    assert HEX12.match(a.version) and HEX12.match(b.version)
    assert a.version != b.version


# ---------------------------------------------------------------------------------------
# strict validation: one case per kind of error, each naming its path

INVALID = [
    pytest.param({"bogus": 1}, "bogus", ("unknown key",), id="unknown-top-level-key"),
    pytest.param({"gate": {"acton": "warn"}}, "gate.acton", ("unknown key",),
                 id="unknown-gate-key"),
    pytest.param({"gate": {"exempt": {"accounts": []}}}, "gate.exempt.accounts",
                 ("unknown key",), id="unknown-gate-exempt-key"),
    pytest.param({"cni": {"netwrk": "x"}}, "cni.netwrk", ("unknown key",), id="unknown-cni-key"),
    pytest.param({"pods": {"injectlabel": "x"}}, "pods.injectlabel", ("unknown key",),
                 id="unknown-pods-key"),
    pytest.param({"sidecar": {"nativ": True}}, "sidecar.nativ", ("unknown key",),
                 id="unknown-sidecar-key"),
    pytest.param({"default": {"injecton": "enabled"}}, "default.injecton", ("unknown key",),
                 id="unknown-default-key"),
    pytest.param({"default": {"match": {"names": ["x"]}}}, "default.match", ("unknown key",),
                 id="default-has-no-match"),
    pytest.param(with_rules(rule(mode="cni", enforce=True)), "namespaces[0].enforce",
                 ("unknown key",), id="unknown-rule-key"),
    pytest.param(with_rules(rule({"name": ["x"]}, mode="cni")), "namespaces[0].match.name",
                 ("unknown key",), id="unknown-match-key"),
    pytest.param(with_rules(rule({"selector": {"matchLabel": {"a": "b"}}}, mode="cni")),
                 "namespaces[0].match.selector.matchLabel", ("unknown key",),
                 id="unknown-selector-key"),
    pytest.param(with_rules(rule({"selector": {"matchExpressions": [
                     {"key": "a", "operator": "Exists", "value": []}]}}, mode="cni")),
                 "namespaces[0].match.selector.matchExpressions[0].value", ("unknown key",),
                 id="unknown-expression-key"),
    # wrong types
    pytest.param({"gate": "deny"}, "gate", ("must be a map",), id="section-not-a-map"),
    pytest.param({"exemptNamespaces": "kube-system"}, "exemptNamespaces", ("must be a list",),
                 id="exempt-not-a-list"),
    pytest.param({"exemptNamespaces": ["ok", 7]}, "exemptNamespaces[1]",
                 ("must be a string",), id="exempt-item-not-a-string"),
    pytest.param({"namespaces": {"a": 1}}, "namespaces", ("must be a list",),
                 id="namespaces-not-a-list"),
    pytest.param({"namespaces": ["cni"]}, "namespaces[0]", ("must be a map",),
                 id="rule-not-a-map"),
    pytest.param(with_rules(rule(mode="cni", enforceCNI="yes")), "namespaces[0].enforceCNI",
                 ("true or false",), id="enforceCNI-string"),
    pytest.param({"gate": {"requireMesh": 1}}, "gate.requireMesh", ("true or false",),
                 id="requireMesh-int"),
    pytest.param({"sidecar": {"native": "true"}}, "sidecar.native", ("true or false",),
                 id="native-string"),
    pytest.param({"cni": {"validationInitContainer": "no"}}, "cni.validationInitContainer",
                 ("true or false",), id="validation-string"),
    pytest.param({"pods": {"injectLabel": 3}}, "pods.injectLabel", ("must be a string",),
                 id="injectLabel-int"),
    pytest.param({"cni": {"network": ["istio-cni"]}}, "cni.network", ("must be a string",),
                 id="network-list"),
    pytest.param({"gate": {"capabilities": "NET_ADMIN"}}, "gate.capabilities",
                 ("must be a list",), id="capabilities-string"),
    pytest.param({"gate": {"exempt": []}}, "gate.exempt", ("must be a map",),
                 id="exempt-not-a-map"),
    pytest.param({"pods": {"neverInjectSelector": {"matchLabels": {"a": "b"}}}},
                 "pods.neverInjectSelector", ("list",), id="never-selector-not-a-list"),
    pytest.param({"pods": {"alwaysInjectSelector": ["app=x"]}}, "pods.alwaysInjectSelector[0]",
                 ("label selector",), id="always-selector-item-not-a-map"),
    pytest.param(with_rules(rule({"names": "team-*"}, mode="cni")), "namespaces[0].match.names",
                 ("must be a list",), id="names-not-a-list"),
    pytest.param(with_rules(rule({"selector": {"matchLabels": {"a": 1}}}, mode="cni")),
                 "namespaces[0].match.selector.matchLabels.a", ("not a valid label value",),
                 id="label-value-int"),
    # enums
    pytest.param(with_rules(rule(mode="sidecar")), "namespaces[0].mode",
                 ("cni", "init", "disabled", "'sidecar'"), id="bad-mode"),
    pytest.param({"default": {"mode": "CNI"}}, "default.mode", ("cni",), id="bad-default-mode"),
    pytest.param(with_rules(rule(mode="cni", injection="always")), "namespaces[0].injection",
                 ("enabled", "opt-in"), id="bad-injection"),
    pytest.param({"default": {"injection": "optin"}}, "default.injection", ("opt-in",),
                 id="bad-default-injection"),
    pytest.param(with_rules(rule(mode="cni", gateAction="block")), "namespaces[0].gateAction",
                 ("deny", "warn", "audit"), id="bad-gateAction"),
    pytest.param({"gate": {"action": "reject"}}, "gate.action", ("deny", "warn", "audit"),
                 id="bad-gate-action"),
    pytest.param(with_rules(rule(mode="cni", allowPodModes=["sidecar"])),
                 "namespaces[0].allowPodModes[0]", ("cni",), id="bad-allowPodModes"),
    # selectors
    pytest.param(with_rules(rule({"selector": {"matchExpressions": [
                     {"key": "a", "operator": "In"}]}}, mode="cni")),
                 "namespaces[0].match.selector.matchExpressions[0].values", ("not be empty",),
                 id="In-without-values"),
    pytest.param(with_rules(rule({"selector": {"matchExpressions": [
                     {"key": "a", "operator": "NotIn", "values": []}]}}, mode="cni")),
                 "namespaces[0].match.selector.matchExpressions[0].values", ("not be empty",),
                 id="NotIn-empty-values"),
    pytest.param(with_rules(rule({"selector": {"matchExpressions": [
                     {"key": "a", "operator": "Exists", "values": ["x"]}]}}, mode="cni")),
                 "namespaces[0].match.selector.matchExpressions[0].values", ("must be empty",),
                 id="Exists-with-values"),
    pytest.param(with_rules(rule({"selector": {"matchExpressions": [
                     {"key": "a", "operator": "DoesNotExist", "values": ["x"]}]}}, mode="cni")),
                 "namespaces[0].match.selector.matchExpressions[0].values", ("must be empty",),
                 id="DoesNotExist-with-values"),
    pytest.param(with_rules(rule({"selector": {"matchExpressions": [
                     {"key": "-bad-", "operator": "Exists"}]}}, mode="cni")),
                 "namespaces[0].match.selector.matchExpressions[0].key", ("'-bad-'",),
                 id="bad-expression-key"),
    pytest.param(with_rules(rule({"selector": {"matchLabels": {"bad key": "x"}}}, mode="cni")),
                 "namespaces[0].match.selector.matchLabels.bad key", ("not a valid label key",),
                 id="bad-matchLabels-key"),
    pytest.param(with_rules(rule({"selector": {"matchLabels": {"a": "not ok"}}}, mode="cni")),
                 "namespaces[0].match.selector.matchLabels.a", ("not a valid label value",),
                 id="bad-matchLabels-value"),
    pytest.param({"pods": {"modeLabel": "Not A Key"}}, "pods.modeLabel",
                 ("not a valid label key",), id="bad-modeLabel"),
    pytest.param({"pods": {"neverInjectSelector": [{"matchExpressions": [
                     {"key": "a", "operator": "Equals", "values": ["x"]}]}]}},
                 "pods.neverInjectSelector[0].matchExpressions[0].operator",
                 ("must be In, NotIn, Exists or DoesNotExist",), id="pod-selector-operator"),
    # globs
    pytest.param(with_rules(rule({"names": ["team-[ab"]}, mode="cni")),
                 "namespaces[0].match.names[0]", ("unclosed",), id="glob-unclosed-bracket"),
    pytest.param({"exemptNamespaces": ["kube-[system"]}, "exemptNamespaces[0]", ("unclosed",),
                 id="exempt-glob-unclosed-bracket"),
    pytest.param(with_rules(rule({"names": [""]}, mode="cni")), "namespaces[0].match.names[0]",
                 ("empty",), id="glob-empty"),
    # required keys
    pytest.param(with_rules({"mode": "cni"}), "namespaces[0].match", ("required",),
                 id="rule-without-match"),
    pytest.param(with_rules(rule({}, mode="cni")), "namespaces[0].match",
                 ("names or selector",), id="match-without-names-or-selector"),
    pytest.param(with_rules(rule()), "namespaces[0].mode", ("required",),
                 id="rule-without-mode"),
    # semantic conflicts
    pytest.param(with_rules(rule(mode="init", enforceCNI=True)), "namespaces[0]",
                 ("enforceCNI", "init"), id="enforceCNI-with-init"),
    pytest.param({"default": {"mode": "init", "enforceCNI": True}}, "default",
                 ("enforceCNI", "init"), id="default-enforceCNI-with-init"),
    pytest.param(with_rules(rule(mode="cni", enforceCNI=True, allowPodModes=["cni", "init"])),
                 "namespaces[0].allowPodModes", ("init",), id="enforceCNI-allows-init-pods"),
    pytest.param({"sidecar": {"container": {"securityContext": {
                     "capabilities": {"add": ["NET_ADMIN"]}}}}},
                 "sidecar.container", ("NET_ADMIN",), id="sidecar-template-adds-NET_ADMIN"),
    pytest.param({"sidecar": {"container": {"securityContext": {
                     "capabilities": {"add": ["cap_net_admin"]}}}}},
                 "sidecar.container", ("NET_ADMIN",), id="sidecar-template-adds-cap_net_admin"),
    pytest.param({"sidecar": {"container": {"securityContext": {
                     "capabilities": {"add": ["all"]}}}}},
                 "sidecar.container", ("ALL",), id="sidecar-template-adds-ALL"),
    pytest.param({"sidecar": {"container": {"securityContext": {"privileged": True}}}},
                 "sidecar.container", ("privileged",), id="sidecar-template-privileged"),
    pytest.param({"gate": {"capabilities": ["NET_ADMIN", "NET_RAW"]},
                  "cni": {"validationContainer": {"securityContext": {
                      "capabilities": {"add": ["NET_RAW"]}}}}},
                 "cni.validationContainer", ("NET_RAW",), id="validation-template-adds-gated"),
    pytest.param({"cni": {"validationContainer": {"securityContext": {"privileged": True}}}},
                 "cni.validationContainer", ("privileged",),
                 id="validation-template-privileged"),
    pytest.param({"sidecar": {"native": True}}, "sidecar.native",
                 ("cni.pluginSupportsNativeSidecars",), id="native-with-cni-rule"),
    pytest.param({"sidecar": {"native": True}, "namespaces": [],
                  "default": {"mode": "init", "allowPodModes": ["cni"]}},
                 "sidecar.native", ("cni",), id="native-with-cni-allowed-pod-mode"),
    # formats
    pytest.param({"gate": {"exempt": {"serviceAccounts": ["builder"]}}},
                 "gate.exempt.serviceAccounts[0]", ("namespace/name",), id="sa-without-namespace"),
    pytest.param({"gate": {"exempt": {"serviceAccounts": ["ci/Builder"]}}},
                 "gate.exempt.serviceAccounts[0]", ("namespace/name",), id="sa-uppercase"),
    pytest.param({"gate": {"exempt": {"serviceAccounts": ["a/b/c"]}}},
                 "gate.exempt.serviceAccounts[0]", ("namespace/name",), id="sa-three-parts"),
    pytest.param({"gate": {"capabilities": ["NET ADMIN"]}}, "gate.capabilities[0]",
                 ("capability",), id="capability-with-space"),
    pytest.param({"cni": {"network": "bad name"}}, "cni.network", ("bad name",),
                 id="network-not-a-name"),
    pytest.param({"version": 2}, "version", ("must be 1",), id="version-2"),
    pytest.param({"version": "1"}, "version", ("must be 1",), id="version-string"),
    pytest.param({"version": True}, "version", ("must be 1",), id="version-true"),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "path", "words"), INVALID)
def test_invalid_policy_names_the_path(raw: dict[str, Any], path: str, words: tuple) -> None:
    errors = errors_of(raw)
    assert has_error(errors, path, *words), errors


def test_operator_error_message_is_exact() -> None:
    raw = with_rules(
        rule({"names": ["a"]}, mode="cni"),
        rule({"selector": {}}, mode="cni"),
        rule({"selector": {"matchExpressions": [{"key": "tier", "operator": "Equals",
                                                 "values": ["x"]}]}}, mode="cni"),
    )  # fmt: skip
    assert errors_of(raw) == [
        "namespaces[2].match.selector.matchExpressions[0].operator: "
        "must be In, NotIn, Exists or DoesNotExist"
    ]


def test_all_errors_are_reported_at_once() -> None:
    raw = {
        "bogus": True,
        "gate": {"action": "block", "exempt": {"serviceAccounts": ["nope"]}},
        "exemptNamespaces": ["kube-["],
        "namespaces": [
            {"mode": "cni"},
            rule(mode="sidecar"),
            rule({"selector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}),
        ],
        "sidecar": {"container": {"securityContext": {"privileged": True}}},
        "version": 3,
    }
    errors = errors_of(raw)
    for path in (
        "bogus",
        "gate.action",
        "gate.exempt.serviceAccounts[0]",
        "exemptNamespaces[0]",
        "namespaces[0].match",
        "namespaces[1].mode",
        "namespaces[2].match.selector.matchExpressions[0].values",
        "namespaces[2].mode",
        "sidecar.container",
        "version",
    ):
        assert has_error(errors, path), (path, errors)


def test_unknown_keys_do_not_hide_other_errors() -> None:
    errors = errors_of({"gate": {"action": "block", "extra": 1}, "cni": {"network": 5}})
    assert has_error(errors, "gate.extra", "unknown key")
    assert has_error(errors, "gate.action")
    assert has_error(errors, "cni.network")


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(with_rules(rule({"selector": {}}, mode="cni")), id="selector-match-all"),
        pytest.param(with_rules(rule({"names": ["a", "b-*", "c?", "[de]x", "[!f]y"]},
                                     mode="init")), id="globs"),
        pytest.param(with_rules(rule({"names": ["prod-*"],
                                      "selector": {"matchLabels": {"tier": "web"}}},
                                     mode="cni", enforceCNI=True, allowPodModes=["disabled"],
                                     gateAction="warn")), id="names-and-selector"),
        pytest.param(with_rules(rule({"selector": {"matchExpressions": [
                         {"key": "example.com/tier", "operator": "NotIn", "values": ["a", ""]},
                         {"key": "b", "operator": "DoesNotExist"}]}}, mode="disabled")),
                     id="expressions"),
        pytest.param({"sidecar": {"native": True}, "cni": {"pluginSupportsNativeSidecars": True}},
                     id="native-with-plugin-support"),
        pytest.param({"sidecar": {"native": True}, "namespaces": [rule(mode="init")],
                      "default": {"mode": "disabled"}}, id="native-without-cni"),
        pytest.param({"gate": {"exempt": {"serviceAccounts": ["ci/builder", "a-b/c.d"]}}},
                     id="service-accounts"),
        pytest.param({"gate": {"capabilities": ["NET_ADMIN", "cap_net_raw", "SYS_ADMIN"]}},
                     id="capability-spellings"),
        pytest.param({"cni": {"network": "mesh/istio-cni"}}, id="network-ns-name"),
        pytest.param({"sidecar": {"container": {"image": "example/proxy:1", "securityContext": {
                         "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["NET_ADMIN"]}}}}},
                     id="template-adds-ungated-drops-gated"),
        pytest.param({"gate": {"capabilities": ["NET_ADMIN"]},
                      "cni": {"validationContainer": {"securityContext": {
                          "capabilities": {"add": ["NET_RAW"]}}}}},
                     id="validation-template-adds-ungated"),
        pytest.param({"gate": {"capabilities": []},
                      "sidecar": {"container": {"securityContext": {"privileged": True}}}},
                     id="privileged-template-when-nothing-is-gated"),
    ],
)  # fmt: skip
def test_valid_policies_compile(raw: dict[str, Any]) -> None:
    compile_policy(raw)


def test_yaml_syntax_error_is_reported() -> None:
    with pytest.raises(SchemaError) as info:
        parse_policy_text("gate: {action: warn\nnamespaces: [\n")
    assert any("yaml" in e.lower() for e in info.value.errors), info.value.errors


def test_top_level_must_be_a_map() -> None:
    with pytest.raises(SchemaError):
        parse_policy_text("- just\n- a list\n")


# ---------------------------------------------------------------------------------------
# warnings: the gate is off, but the policy is valid


def test_warning_when_gate_capabilities_is_empty() -> None:
    p = compile_policy({"gate": {"capabilities": []}})
    assert any("gate.capabilities" in w for w in p.warnings), p.warnings
    # nothing is gated: neither ALL nor privileged adds a capability to an empty list
    assert p.gated.granted_by("NET_ADMIN") is None
    assert p.gated.granted_by("ALL") is None


def test_warning_when_exempt_glob_is_star() -> None:
    p = compile_policy({"exemptNamespaces": ["kube-system", "*"]})
    assert any("exemptNamespaces" in w for w in p.warnings), p.warnings
    assert p.is_exempt("anything")


def test_no_warning_for_a_narrow_exempt_glob() -> None:
    assert compile_policy({"exemptNamespaces": ["kube-*"]}).warnings == ()


# ---------------------------------------------------------------------------------------
# sources: the ConfigMap manifest is accepted as well as the bare policy

CONFIGMAP = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: meshgate-policy
  namespace: meshgate-system
data:
  policy.yaml: |
    version: 1
    gate:
      action: warn
    namespaces:
      - match: {names: [team-*]}
        mode: cni
        enforceCNI: true
"""


def test_configmap_manifest_is_unwrapped() -> None:
    p = parse_policy_text(CONFIGMAP)
    bare = yaml.safe_load(CONFIGMAP)["data"]["policy.yaml"]
    assert p.version == parse_policy_text(bare).version
    assert p.gate_action == "warn"
    assert [r.where for r in p.rules] == ["namespaces[0]"]
    assert p.rules[0].matches("team-a", {})


def test_configmap_without_policy_key_is_an_error() -> None:
    text = CONFIGMAP.replace("policy.yaml:", "other.yaml:")
    with pytest.raises(SchemaError) as info:
        parse_policy_text(text)
    assert any("policy.yaml" in e for e in info.value.errors)


def test_configmap_with_invalid_policy_reports_its_errors() -> None:
    text = CONFIGMAP.replace("action: warn", "action: maybe")
    with pytest.raises(SchemaError) as info:
        parse_policy_text(text)
    assert has_error(info.value.errors, "gate.action")


def test_read_policy_file(tmp_path: Path) -> None:
    path = tmp_path / "cm.yaml"
    path.write_text(CONFIGMAP)
    assert read_policy_file(str(path)).gate_action == "warn"
    with pytest.raises(SchemaError):
        read_policy_file(str(tmp_path / "missing.yaml"))


# ---------------------------------------------------------------------------------------
# meshgate policy check

VALID_DOC = """\
version: 1
gate: {action: warn, capabilities: [NET_ADMIN, NET_RAW]}
namespaces:
  - match: {names: [team-*], selector: {matchLabels: {tier: prod}}}
    mode: cni
    enforceCNI: true
"""

INVALID_DOC_FOR_CLI = """\
version: 1
gate:
  action: block
  exempt: {serviceAccounts: [builder]}
namespaces:
  - match: {names: [ok]}
    mode: cni
  - match: {names: ["team-["]}
    mode: cni
  - match: {selector: {matchExpressions: [{key: tier, operator: Equals, values: [x]}]}}
    mode: sideways
"""
INVALID_DOC_FOR_CLI_OBJ = yaml.safe_load(INVALID_DOC_FOR_CLI)


def test_every_error_names_a_path() -> None:
    errors = errors_of(INVALID_DOC_FOR_CLI_OBJ)
    for error in errors:
        path, colon, _ = error.partition(":")
        assert colon and path.strip(), error


def run_check(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent(text))
    code = cli.main(["policy", "check", str(path)])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_policy_check_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_check(tmp_path, VALID_DOC, capsys)
    assert code == 0
    version = compile_policy(yaml.safe_load(VALID_DOC)).version
    assert version in out
    assert "error" not in out.lower()


def test_policy_check_valid_configmap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_check(tmp_path, CONFIGMAP, capsys)
    assert code == 0
    assert parse_policy_text(CONFIGMAP).version in out


def test_policy_check_invalid_prints_every_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run_check(tmp_path, INVALID_DOC_FOR_CLI, capsys)
    assert code == 1
    expected = errors_of(INVALID_DOC_FOR_CLI_OBJ)
    assert len(expected) >= 5
    for error in expected:
        assert error in out
    for path in (
        "gate.action",
        "gate.exempt.serviceAccounts[0]",
        "namespaces[1].match.names[0]",
        "namespaces[2].match.selector.matchExpressions[0].operator",
        "namespaces[2].mode",
    ):
        assert f"{path}:" in out, (path, out)
    assert (
        "namespaces[2].match.selector.matchExpressions[0].operator: "
        "must be In, NotIn, Exists or DoesNotExist" in out
    )


def test_policy_check_yaml_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_check(tmp_path, "gate: [unclosed\n", capsys)
    assert code == 1
    assert "yaml" in out.lower()


@pytest.mark.parametrize(
    ("text", "word"),
    [
        pytest.param("gate: {capabilities: []}\n", "gate.capabilities", id="empty-capabilities"),
        pytest.param("exemptNamespaces: ['*']\n", "exemptNamespaces", id="exempt-star"),
    ],
)
def test_policy_check_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, word: str
) -> None:
    code, out = run_check(tmp_path, text, capsys)
    assert code == 0
    warning_lines = [line for line in out.splitlines() if "warning" in line.lower()]
    assert any(word in line for line in warning_lines), out


def test_policy_check_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["policy", "check", str(tmp_path / "nope.yaml")])
    out = capsys.readouterr()
    assert code == 1
    assert "nope.yaml" in out.out + out.err


def test_version_is_the_same_whether_per_rule_defaults_are_spelled_or_not() -> None:
    terse = {"namespaces": [{"match": {"names": ["a-*"]}, "mode": "cni"}]}
    spelled = {
        "namespaces": [
            {
                "match": {"names": ["a-*"]},
                "mode": "cni",
                "injection": "enabled",
                "enforceCNI": False,
                "allowPodModes": [],
            }
        ]
    }
    assert compile_policy(terse).version == compile_policy(spelled).version
    assert (
        compile_policy(terse).version
        != compile_policy(
            {"namespaces": [{"match": {"names": ["a-*"]}, "mode": "cni", "injection": "opt-in"}]}
        ).version
    )
