"""Merging the mesh's network into the Multus ``k8s.v1.cni.cncf.io/networks`` annotation.

Multus accepts two forms: a comma list of ``[namespace/]name[@interface]`` and a JSON list of
objects with ``name`` and optional ``namespace``/``interface``. The existing value is kept
as the author wrote it and only appended to, so nothing the author meant is lost. A value
that is neither form is refused: Multus would fail the pod, or skip the mesh network and let
its traffic bypass the mesh.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass

ANNOTATION = "k8s.v1.cni.cncf.io/networks"

_PART = r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?"
_ENTRY = re.compile(rf"^(?:(?P<ns>{_PART})/)?(?P<name>{_PART})(?:@(?P<iface>[^\s@/,]+))?$")


class NetworkValueError(ValueError):
    """The annotation is neither a valid comma list nor a valid JSON list."""


@dataclass(frozen=True)
class NetworkRef:
    namespace: str | None
    name: str

    def resolved(self, pod_namespace: str) -> tuple[str, str]:
        return (self.namespace or pod_namespace, self.name)


def parse_ref(text: str) -> NetworkRef:
    """Parse one comma-list entry (also used for the policy's ``cni.network``)."""
    match = _ENTRY.match(text)
    if not match:
        raise NetworkValueError(f"{text!r} is not [namespace/]name[@interface]")
    return NetworkRef(match.group("ns"), match.group("name"))


def _is_json(value: str) -> bool:
    return value.lstrip().startswith("[")


def parse(value: str) -> list[NetworkRef]:
    """Every network the annotation names, or NetworkValueError saying what is wrong."""
    if not value.strip():
        return []
    if _is_json(value):
        try:
            items = json.loads(value)
        except ValueError as err:
            raise NetworkValueError(f"not a valid JSON list: {err}") from None
        if not isinstance(items, list):
            raise NetworkValueError("not a valid JSON list")
        refs = []
        for i, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise NetworkValueError(f'entry {i} of the JSON list has no string "name"')
            namespace = item.get("namespace")
            if namespace is not None and not isinstance(namespace, str):
                raise NetworkValueError(f"entry {i} of the JSON list has a non-string namespace")
            refs.append(NetworkRef(namespace or None, item["name"]))
        return refs
    return [parse_ref(entry.strip()) for entry in value.split(",")]


# Values up to this length are remembered: a Deployment's pods carry the same few values.
_REMEMBERED = 512


def merged(value: str | None, network: str, pod_namespace: str) -> str | None:
    """The new annotation value with `network` added, or None when it is there already.

    Two entries are the same network when their namespaces and names are equal, a missing
    namespace meaning the pod's own.
    """
    if value is None or len(value) <= _REMEMBERED:
        return _merged_remembered(value, network, pod_namespace)
    return _merged(value, network, pod_namespace)


def _merged(value: str | None, network: str, pod_namespace: str) -> str | None:
    wanted = parse_ref(network)
    refs = parse(value or "")
    key = wanted.resolved(pod_namespace)
    if any(ref.resolved(pod_namespace) == key for ref in refs):
        return None
    if value is None or not value.strip():
        return network
    if not _is_json(value):
        return f"{value}, {network}"
    entry: dict[str, str] = {"name": wanted.name}
    if wanted.namespace:
        entry["namespace"] = wanted.namespace
    body = value.rstrip()[:-1].rstrip()  # drop the closing bracket, keep the author's text
    separator = "" if not refs else ", "
    return f"{body}{separator}{json.dumps(entry)}]"


# A pure function of strings; an invalid value raises every time (exceptions are not cached).
_merged_remembered = functools.lru_cache(maxsize=256)(_merged)


def contains(value: str | None, network: str, pod_namespace: str) -> bool:
    """Whether the annotation names `network` (False when it cannot be parsed)."""
    try:
        return merged(value, network, pod_namespace) is None and bool(value)
    except NetworkValueError:
        return False
