"""webhook.patch: JSON Patch operations built by construction (RFC 6901 / RFC 6902).

Every case applies the operations with `jsonpatch` to a document holding the old value and
compares the result with the intended new value.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webhook.patch import escape, list_edits, map_entries


def _apply(doc: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = jsonpatch.apply_patch(copy.deepcopy(doc), ops)
    return result


# ---------------------------------------------------------------------------------------
# escape


@pytest.mark.parametrize(
    ("key", "escaped"),
    [
        pytest.param("plain", "plain", id="plain"),
        pytest.param("sidecar.istio.io/status", "sidecar.istio.io~1status", id="slash"),
        pytest.param("a~b", "a~0b", id="tilde"),
        pytest.param("~1", "~01", id="tilde-one-is-not-a-slash"),
        pytest.param("/~", "~1~0", id="slash-then-tilde"),
        pytest.param("~/", "~0~1", id="tilde-then-slash"),
        pytest.param("a//b", "a~1~1b", id="two-slashes"),
        pytest.param("", "", id="empty"),
    ],
)
def test_escape(key: str, escaped: str) -> None:
    assert escape(key) == escaped


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("k8s.v1.cni.cncf.io/networks", id="multus"),
        pytest.param("odd~key/with~1both", id="tilde-one-literal"),
        pytest.param("~0~1//~~", id="all-special"),
    ],
)
def test_escaped_key_round_trips_through_jsonpatch(key: str) -> None:
    doc = {"metadata": {"annotations": {}}}
    ops = [{"op": "add", "path": f"/metadata/annotations/{escape(key)}", "value": "v"}]
    assert _apply(doc, ops) == {"metadata": {"annotations": {key: "v"}}}


# ---------------------------------------------------------------------------------------
# map_entries

ENTRIES = {
    "sidecar.istio.io/status": "{}",
    "meshgate.io/injected": "cni@0123456789ab",
    "weird~key": "x",
}


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        pytest.param({}, ENTRIES, id="absent"),
        pytest.param({"annotations": None}, ENTRIES, id="null"),
        pytest.param({"annotations": {}}, ENTRIES, id="empty-map"),
        pytest.param(
            {"annotations": {"keep": "me", "other/key": "y"}},
            {"keep": "me", "other/key": "y", **ENTRIES},
            id="other-keys-kept",
        ),
        pytest.param(
            {"annotations": {"meshgate.io/injected": "init@old", "keep": "me"}},
            {"keep": "me", **ENTRIES},
            id="existing-key-replaced",
        ),
    ],
)
def test_map_entries_applies(metadata: dict[str, Any], expected: dict[str, str]) -> None:
    doc = {"metadata": {"name": "p", **metadata}}
    existing = metadata.get("annotations")
    ops = map_entries("/metadata/annotations", existing, ENTRIES)
    result = _apply(doc, ops)
    assert result["metadata"]["annotations"] == expected
    assert result["metadata"]["name"] == "p"


def test_map_entries_creates_the_map_in_one_operation_when_absent() -> None:
    ops = map_entries("/metadata/annotations", None, ENTRIES)
    assert ops == [{"op": "add", "path": "/metadata/annotations", "value": ENTRIES}]


def test_map_entries_adds_per_key_with_escaped_keys_when_present() -> None:
    ops = map_entries("/metadata/annotations", {"keep": "me"}, ENTRIES)
    assert ops == [
        {"op": "add", "path": "/metadata/annotations/sidecar.istio.io~1status", "value": "{}"},
        {"op": "add", "path": "/metadata/annotations/meshgate.io~1injected",
         "value": "cni@0123456789ab"},
        {"op": "add", "path": "/metadata/annotations/weird~0key", "value": "x"},
    ]  # fmt: skip


@pytest.mark.parametrize("existing", [None, {}, {"a": "b"}], ids=["absent", "empty", "full"])
def test_map_entries_without_entries_is_empty(existing: dict[str, str] | None) -> None:
    assert map_entries("/metadata/annotations", existing, {}) == []


def test_map_entries_does_not_alias_the_callers_mapping() -> None:
    entries = {"a": "1"}
    ops = map_entries("/metadata/labels", None, entries)
    entries["b"] = "2"
    assert ops[0]["value"] == {"a": "1"}


# ---------------------------------------------------------------------------------------
# list_edits (identity-based)


def _items(*names: str) -> list[dict[str, str]]:
    return [{"name": n} for n in names]


def _check_list_edit(old: list[Any] | None, new: list[Any]) -> list[dict[str, Any]]:
    doc: dict[str, Any] = {"spec": {"other": [1]}}
    if old is not None:
        doc["spec"]["containers"] = old
    ops = list_edits("/spec/containers", old, new)
    result = _apply(doc, ops)
    if old is None and not new:
        assert "containers" not in result["spec"]
    else:
        assert result["spec"]["containers"] == new
    assert result["spec"]["other"] == [1]
    return ops


A, B, C, D = _items("a", "b", "c", "d")
X, Y, Z = _items("x", "y", "z")


@pytest.mark.parametrize(
    ("old", "new"),
    [
        pytest.param([A, B], [X, A, B], id="insert-front"),
        pytest.param([A, B], [A, X, B], id="insert-middle"),
        pytest.param([A, B], [A, B, X], id="insert-end"),
        pytest.param([A, B], [X, A, Y, B, Z], id="insert-everywhere"),
        pytest.param([A, B], [X, Y, A, B], id="two-at-front"),
        pytest.param([], [X, Y], id="into-empty"),
        pytest.param([A, B, C], [B, C], id="remove-front"),
        pytest.param([A, B, C], [A, C], id="remove-middle"),
        pytest.param([A, B, C], [A, B], id="remove-end"),
        pytest.param([A, B, C], [], id="remove-all"),
        pytest.param([A, B, C, D], [B, D], id="remove-alternate"),
        pytest.param([A, B, C], [A, X, C], id="replace-middle"),
        pytest.param([A], [X], id="replace-only"),
        pytest.param([A, B, C], [X, B, Y, Z], id="replace-and-insert"),
        pytest.param([A, B, C], [A, B, C], id="unchanged"),
        pytest.param([], [], id="empty-unchanged"),
    ],
)
def test_list_edits_applies(old: list[Any], new: list[Any]) -> None:
    _check_list_edit(list(old), list(new))


def test_list_edits_absent_list_is_one_add() -> None:
    ops = _check_list_edit(None, [X, Y])
    assert ops == [{"op": "add", "path": "/spec/containers", "value": [X, Y]}]


def test_list_edits_absent_list_and_nothing_to_add_is_empty() -> None:
    assert list_edits("/spec/containers", None, []) == []


def test_list_edits_unchanged_list_is_empty() -> None:
    assert list_edits("/spec/containers", [A, B], [A, B]) == []


def test_list_edits_is_by_identity_not_by_value() -> None:
    """An equal-valued but distinct object is a replacement: remove and add."""
    old = [{"name": "a"}]
    new = [{"name": "a", "image": "changed"}]
    ops = _check_list_edit(old, new)
    assert [op["op"] for op in ops] == ["remove", "add"]


def test_list_edits_pure_insertions_use_only_add() -> None:
    ops = _check_list_edit([A, B], [X, A, B, Y])
    assert {op["op"] for op in ops} == {"add"}
    assert len(ops) == 2


def test_list_edits_pure_removals_use_only_remove() -> None:
    ops = _check_list_edit([A, B, C, D], [B, C])
    assert {op["op"] for op in ops} == {"remove"}
    assert len(ops) == 2


def test_list_edits_never_copies_kept_items() -> None:
    """Kept items are never written back into the patch (it stays small on large pods)."""
    big = {"name": "big", "env": [{"name": f"V{i}", "value": "x" * 50} for i in range(500)]}
    ops = _check_list_edit([big], [big, X])
    assert ops == [{"op": "add", "path": "/spec/containers/1", "value": X}]


# ---------------------------------------------------------------------------------------
# list_edits, property-style: random old lists, random edits (kept subsequence + inserts)


@st.composite
def _edit(draw: st.DrawFn) -> tuple[list[Any], list[Any]]:
    size = draw(st.integers(min_value=0, max_value=8))
    # Equal values on purpose: identity, not equality, decides what is kept.
    old = [{"name": draw(st.sampled_from("abc"))} for _ in range(size)]
    keep = draw(st.lists(st.booleans(), min_size=size, max_size=size))
    kept = [item for item, k in zip(old, keep, strict=True) if k]
    new: list[Any] = []
    for item in [*kept, None]:
        for _ in range(draw(st.integers(min_value=0, max_value=2))):
            new.append({"name": draw(st.sampled_from("abcxyz")), "new": True})
        if item is not None:
            new.append(item)
    return old, new


@settings(max_examples=200, deadline=None)
@given(_edit(), st.booleans())
def test_list_edits_property(edit: tuple[list[Any], list[Any]], absent: bool) -> None:
    old, new = edit
    if absent:
        old = []
        new = [item for item in new if item.get("new")]
    doc: dict[str, Any] = {"spec": {"containers": copy.deepcopy(old)}}
    if absent:
        del doc["spec"]["containers"]
    ops = list_edits("/spec/containers", None if absent else old, new)
    result = jsonpatch.apply_patch(doc, ops)
    if absent and not new:
        assert ops == []
        assert "containers" not in result["spec"]
    else:
        assert result["spec"]["containers"] == new
    # The edit is minimal: one add per inserted item, one remove per dropped item.
    kept_ids = {id(item) for item in new}
    dropped = sum(1 for item in old if id(item) not in kept_ids)
    inserted = sum(1 for item in new if item.get("new"))
    if not absent:
        assert [op["op"] for op in ops].count("remove") == dropped
        assert [op["op"] for op in ops].count("add") == inserted
