"""JSON Patch operations built by construction, never by diffing a whole pod.

Injection changes a few known places (some annotations, three lists), so the operations are
written for exactly those places: keys escaped per RFC 6901, parents created before anything
is added into them, and list edits expressed against the list the API server sent. Diffing
the whole pod would cost time that grows badly with pod size and could drop fields.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Op = dict[str, Any]


def escape(key: str) -> str:
    """An RFC 6901 reference token: '~' → '~0', '/' → '~1'."""
    return key.replace("~", "~0").replace("/", "~1")


def map_entries(
    path: str, existing: Mapping[str, Any] | None, entries: Mapping[str, Any]
) -> list[Op]:
    """Set `entries` in the map at `path`, creating the map when it is absent or null."""
    if not entries:
        return []
    if existing is None:
        return [{"op": "add", "path": path, "value": dict(entries)}]
    # 'add' on an existing member replaces it (RFC 6902 4.1), so one verb serves both.
    return [{"op": "add", "path": f"{path}/{escape(k)}", "value": v} for k, v in entries.items()]


def list_edits(path: str, old: Sequence[Any] | None, new: Sequence[Any]) -> list[Op]:
    """Turn `old` into `new`, where `new` keeps some items of `old` (the same objects, in
    the same order) and adds or drops others. Items are compared by identity, so this is
    linear and never looks inside the items the pod already had.
    """
    if old is None:
        return [{"op": "add", "path": path, "value": list(new)}] if new else []
    kept = {id(item) for item in new}
    ops: list[Op] = []
    position = 0  # index in the list as the operations so far have left it
    j = 0
    for item in new:
        while j < len(old) and id(old[j]) not in kept:
            ops.append({"op": "remove", "path": f"{path}/{position}"})
            j += 1
        if j < len(old) and old[j] is item:
            j += 1
        else:
            ops.append({"op": "add", "path": f"{path}/{position}", "value": item})
        position += 1
    for _ in range(j, len(old)):
        ops.append({"op": "remove", "path": f"{path}/{position}"})
    return ops
