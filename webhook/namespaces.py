"""Namespace labels from a file (``--namespaces-file``): an immutable snapshot.

The decision needs a namespace's labels; the server reads them from a snapshot that is
replaced whole, never mutated, so a request reads one consistent view without locks.
A namespace the file does not list has no labels.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml


class NamespacesFileError(ValueError):
    pass


class StaticNamespaces:
    """Look up a namespace's labels; unlisted namespaces have none."""

    _EMPTY: Mapping[str, str] = MappingProxyType({})

    def __init__(self, labels: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self._labels = {name: MappingProxyType(dict(v)) for name, v in (labels or {}).items()}

    def __call__(self, name: str) -> Mapping[str, str]:
        return self._labels.get(name, self._EMPTY)

    def names(self) -> list[str]:
        return sorted(self._labels)

    # A file lists every namespace it knows: nothing to fetch, always ready.
    def cached(self, name: str) -> bool:
        return True

    def fetch(self, name: str) -> None:
        return None

    def ready(self) -> bool:
        return True


def _namespaces_in(doc: Any, where: str) -> list[Any]:
    if doc is None:
        return []
    if isinstance(doc, list):
        return doc
    if isinstance(doc, dict) and doc.get("kind") in ("List", "NamespaceList"):
        items = doc.get("items")
        if not isinstance(items, list):
            raise NamespacesFileError(f"{where}: items must be a list")
        return items
    return [doc]


def parse_namespaces(text: str, source: str = "namespaces file") -> StaticNamespaces:
    """Namespaces from a YAML stream or list of Namespace objects (or a v1 List of them)."""
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as err:
        raise NamespacesFileError(f"{source}: not valid YAML: {err}") from None
    labels: dict[str, dict[str, str]] = {}
    for d, doc in enumerate(docs):
        for i, item in enumerate(_namespaces_in(doc, f"{source} document {d}")):
            where = f"{source} document {d} item {i}"
            if not isinstance(item, dict) or item.get("kind") != "Namespace":
                raise NamespacesFileError(f"{where}: must be a Namespace object")
            meta = item.get("metadata")
            if not isinstance(meta, dict):
                raise NamespacesFileError(f"{where}: metadata must be a map")
            name = meta.get("name")
            if not isinstance(name, str) or not name:
                raise NamespacesFileError(f"{where}: metadata.name must be a string")
            item_labels = meta.get("labels") or {}
            if not isinstance(item_labels, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in item_labels.items()
            ):
                raise NamespacesFileError(f"{where}: metadata.labels must be a map of strings")
            labels[name] = item_labels
    return StaticNamespaces(labels)


def load_namespaces_file(path: Path) -> StaticNamespaces:
    try:
        text = path.read_text()
    except OSError as err:
        raise NamespacesFileError(f"{path}: {err.strerror}") from None
    return parse_namespaces(text, str(path))
