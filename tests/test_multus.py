"""Tests for webhook.multus: merging the mesh network into k8s.v1.cni.cncf.io/networks."""

from __future__ import annotations

import json

import pytest

from webhook.multus import NetworkValueError, contains, merged, parse

POD_NS = "shop"


def resolved(value: str, pod_ns: str = POD_NS) -> list[tuple[str, str]]:
    return [ref.resolved(pod_ns) for ref in parse(value)]


# ---------------------------------------------------------------------------------------
# merging: (current value, network in the policy, expected new value)

MERGE = [
    # empty or absent: set to the network as written
    pytest.param(None, "istio-cni", "istio-cni", id="absent"),
    pytest.param("", "istio-cni", "istio-cni", id="empty"),
    pytest.param("   ", "istio-cni", "istio-cni", id="blank"),
    pytest.param(None, "mesh/istio-cni", "mesh/istio-cni", id="absent-ns-name"),
    pytest.param("", "istio-cni@net9", "istio-cni@net9", id="empty-network-with-interface"),
    # comma list: append ", network"
    pytest.param("macvlan", "istio-cni", "macvlan, istio-cni", id="comma-one"),
    pytest.param("a, b@eth1", "istio-cni", "a, b@eth1, istio-cni", id="comma-two-interface"),
    pytest.param("a ,b", "istio-cni", "a ,b, istio-cni", id="comma-author-spacing-kept"),
    pytest.param("other/istio-cni", "istio-cni", "other/istio-cni, istio-cni",
                 id="comma-other-namespace-does-not-match"),
    pytest.param("istio-cni", "mesh/istio-cni", "istio-cni, mesh/istio-cni",
                 id="comma-ns-network-not-in-pod-namespace"),
    pytest.param("sriov/net1@eth2", "mesh/istio-cni", "sriov/net1@eth2, mesh/istio-cni",
                 id="comma-ns-network-appended-as-written"),
    # JSON list: append {"name": ...} (+ namespace), earlier text kept byte for byte
    pytest.param("[]", "istio-cni", '[{"name": "istio-cni"}]', id="json-empty"),
    pytest.param('[{"name":"a"}]', "istio-cni", '[{"name":"a"}, {"name": "istio-cni"}]',
                 id="json-one"),
    pytest.param('[{"name": "a", "interface": "net1", "ips": ["10.1.1.1/24"]}]', "istio-cni",
                 '[{"name": "a", "interface": "net1", "ips": ["10.1.1.1/24"]}, '
                 '{"name": "istio-cni"}]', id="json-extra-fields"),
    pytest.param('[\n  {"name": "a",\n   "namespace": "x"}\n]\n', "istio-cni",
                 '[\n  {"name": "a",\n   "namespace": "x"}, {"name": "istio-cni"}]',
                 id="json-multiline"),
    pytest.param('[{"name": "a"}]', "mesh/istio-cni",
                 '[{"name": "a"}, {"name": "istio-cni", "namespace": "mesh"}]',
                 id="json-ns-network"),
    pytest.param('[{"name": "istio-cni", "namespace": "other"}]', "istio-cni",
                 '[{"name": "istio-cni", "namespace": "other"}, {"name": "istio-cni"}]',
                 id="json-other-namespace-does-not-match"),
]  # fmt: skip


@pytest.mark.parametrize(("value", "network", "want"), MERGE)
def test_merged(value: str | None, network: str, want: str) -> None:
    got = merged(value, network, POD_NS)
    assert got == want
    # the result now names the network, and merging again changes nothing
    assert merged(got, network, POD_NS) is None
    assert contains(got, network, POD_NS)


def json_values() -> list[tuple[str, str]]:
    return [
        (p.values[0], p.values[1])
        for p in MERGE
        if p.values[0] is not None and p.values[0].lstrip().startswith("[")
    ]


@pytest.mark.parametrize(("value", "network"), json_values())
def test_merged_json_is_a_json_list_with_the_same_earlier_entries(value: str, network: str) -> None:
    got = merged(value, network, POD_NS)
    assert got is not None
    before = json.loads(value)
    after = json.loads(got)
    assert isinstance(after, list)
    assert after[:-1] == before
    ns, _, name = network.rpartition("/")
    assert after[-1] == ({"name": name, "namespace": ns} if ns else {"name": name})
    # the author's text of earlier entries is kept as written
    last = value.rstrip().rindex("]")
    assert got.startswith(value[:last].rstrip())


@pytest.mark.parametrize(
    ("value", "network"),
    [(p.values[0], p.values[1]) for p in MERGE
     if p.values[0] and p.values[0].strip() and not p.values[0].lstrip().startswith("[")],
)  # fmt: skip
def test_merged_comma_list_still_parses(value: str, network: str) -> None:
    got = merged(value, network, POD_NS)
    assert got is not None
    assert got.startswith(value)
    assert resolved(got) == [*resolved(value), *resolved(network)]


# ---------------------------------------------------------------------------------------
# already present: unchanged (None)

PRESENT = [
    pytest.param("istio-cni", "istio-cni", id="name"),
    pytest.param(f"{POD_NS}/istio-cni", "istio-cni", id="podns-name"),
    pytest.param("istio-cni@eth1", "istio-cni", id="name-interface"),
    pytest.param(f"{POD_NS}/istio-cni@net1", "istio-cni", id="podns-name-interface"),
    pytest.param("macvlan, istio-cni, sriov", "istio-cni", id="in-the-middle"),
    pytest.param(" istio-cni ", "istio-cni", id="spaces-around"),
    pytest.param('[{"name":"istio-cni"}]', "istio-cni", id="json-name"),
    pytest.param(f'[{{"name":"istio-cni","namespace":"{POD_NS}"}}]', "istio-cni",
                 id="json-podns"),
    pytest.param('[{"name": "a"}, {"name": "istio-cni", "interface": "net2"}]', "istio-cni",
                 id="json-second-with-interface"),
    pytest.param('[{"name": "istio-cni", "namespace": ""}]', "istio-cni",
                 id="json-empty-namespace-is-pod-namespace"),
    pytest.param("mesh/istio-cni", "mesh/istio-cni", id="ns-network-ns-entry"),
    pytest.param('[{"name": "istio-cni", "namespace": "mesh"}]', "mesh/istio-cni",
                 id="ns-network-json-entry"),
]  # fmt: skip


@pytest.mark.parametrize(("value", "network"), PRESENT)
def test_already_present_is_unchanged(value: str, network: str) -> None:
    assert merged(value, network, POD_NS) is None
    assert contains(value, network, POD_NS)


@pytest.mark.parametrize(
    ("value", "network", "pod_ns", "present"),
    [
        pytest.param("istio-cni", "mesh/istio-cni", "mesh", True,
                     id="plain-entry-in-the-network-namespace"),
        pytest.param("istio-cni", "mesh/istio-cni", "shop", False,
                     id="plain-entry-in-another-namespace"),
        pytest.param("mesh/istio-cni", "istio-cni", "mesh", True,
                     id="ns-entry-plain-network-same-namespace"),
        pytest.param("mesh/istio-cni", "istio-cni", "shop", False,
                     id="ns-entry-plain-network-other-namespace"),
        pytest.param("other/istio-cni", "istio-cni", "shop", False, id="other-namespace"),
        pytest.param("istio-cni-2", "istio-cni", "shop", False, id="prefix-name"),
        pytest.param('[{"name": "istio-cni"}]', "mesh/istio-cni", "shop", False,
                     id="json-plain-entry-other-namespace"),
    ],
)  # fmt: skip
def test_namespaces_of_entries(value: str, network: str, pod_ns: str, present: bool) -> None:
    assert (merged(value, network, pod_ns) is None) is present
    assert contains(value, network, pod_ns) is present


# ---------------------------------------------------------------------------------------
# invalid values: neither a valid comma list nor a valid JSON list

INVALID = [
    pytest.param("garbage!", id="garbage"),
    pytest.param("istio cni", id="space-inside-name"),
    pytest.param("a, my net", id="space-inside-second-name"),
    pytest.param("a,", id="comma-trailing"),
    pytest.param("a,,b", id="comma-empty-entry"),
    pytest.param("@eth1", id="interface-without-name"),
    pytest.param("istio-cni@", id="empty-interface"),
    pytest.param("a/b/c", id="three-parts"),
    pytest.param("[{", id="json-unclosed"),
    pytest.param('[{"name": "a"}', id="json-missing-bracket"),
    pytest.param('[{"name":"istio-cni"},]', id="json-trailing-comma"),
    pytest.param('{"name": "istio-cni"}', id="json-object-not-list"),
    pytest.param('[{"namespace": "x"}]', id="json-entry-without-name"),
    pytest.param('["istio-cni"]', id="json-entry-string"),
    pytest.param('[{"name": 5}]', id="json-name-not-string"),
    pytest.param('[{"name": "a", "namespace": 5}]', id="json-namespace-not-string"),
]


@pytest.mark.parametrize("value", INVALID)
def test_invalid_values_raise(value: str) -> None:
    with pytest.raises(NetworkValueError):
        merged(value, "istio-cni", POD_NS)
    with pytest.raises(NetworkValueError):
        parse(value)
    assert contains(value, "istio-cni", POD_NS) is False


def test_contains_absent_or_empty_is_false() -> None:
    assert contains(None, "istio-cni", POD_NS) is False
    assert contains("", "istio-cni", POD_NS) is False


def test_parse_forms() -> None:
    assert resolved("a, other/b@eth1") == [(POD_NS, "a"), ("other", "b")]
    assert resolved('[{"name": "a"}, {"name": "b", "namespace": "x", "interface": "n"}]') == [
        (POD_NS, "a"),
        ("x", "b"),
    ]
    assert parse("") == []
    assert parse("[]") == []
