"""Namespace-name globs and Kubernetes label selectors, compiled once at policy load.

The policy is read on every admission request, so everything that can be parsed ahead of
time is parsed here, when the policy is loaded, and the hot path only runs compiled regexes
and set look-ups.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")

# A qualified name as Kubernetes defines it for label keys: optional DNS-subdomain prefix
# and a name of at most 63 characters.
_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_PREFIX = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_LABEL_KEY = re.compile(rf"^({_PREFIX}/)?{_NAME}$")
_LABEL_VALUE = re.compile(rf"^({_NAME})?$")


class SchemaError(Exception):
    """A list of human-readable errors, each prefixed with the path of the offending key."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


def is_label_key(key: str) -> bool:
    prefix, _, _ = key.rpartition("/")
    return bool(_LABEL_KEY.match(key)) and len(prefix) <= 253


def is_label_value(value: str) -> bool:
    return bool(_LABEL_VALUE.match(value))


def glob_error(pattern: str) -> str | None:
    """Why `pattern` is not a glob fnmatch can mean, or None when it is fine."""
    if not pattern:
        return "must not be empty"
    i = 0
    while i < len(pattern):
        if pattern[i] == "[":
            j = i + 1
            if j < len(pattern) and pattern[j] == "!":
                j += 1
            if j < len(pattern) and pattern[j] == "]":
                j += 1
            close = pattern.find("]", j)
            if close < 0:
                return f"unclosed '[' in glob {pattern!r}"
            i = close
        i += 1
    return None


@dataclass(frozen=True)
class GlobSet:
    """Case-sensitive, whole-name fnmatch globs folded into one regex."""

    patterns: tuple[str, ...]
    regex: re.Pattern[str] | None

    @classmethod
    def compile(cls, patterns: list[str]) -> GlobSet:
        if not patterns:
            return cls((), None)
        joined = "|".join(f"(?:{fnmatch.translate(p)})" for p in patterns)
        return cls(tuple(patterns), re.compile(joined))

    def matches(self, name: str) -> bool:
        return self.regex is not None and self.regex.match(name) is not None


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str
    values: frozenset[str]

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return labels.get(self.key) in self.values
        if self.operator == "NotIn":
            # As in Kubernetes: a missing key satisfies NotIn.
            return labels.get(self.key) not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels


@dataclass(frozen=True)
class Selector:
    """A metav1.LabelSelector. The empty selector matches everything."""

    match_labels: tuple[tuple[str, str], ...]
    requirements: tuple[Requirement, ...]
    source: Mapping[str, Any]

    def matches(self, labels: Mapping[str, str]) -> bool:
        for key, value in self.match_labels:
            if labels.get(key) != value:
                return False
        return all(req.matches(labels) for req in self.requirements)


def parse_selector(raw: Any, path: str, errors: list[str]) -> Selector | None:
    """Validate and compile one LabelSelector; append path-named errors and return None if bad."""
    if not isinstance(raw, dict):
        errors.append(f"{path}: must be a label selector (a map)")
        return None
    before = len(errors)
    for key in raw:
        if key not in ("matchLabels", "matchExpressions"):
            errors.append(f"{path}.{key}: unknown key (expected matchLabels, matchExpressions)")
    match_labels: list[tuple[str, str]] = []
    labels = raw.get("matchLabels")
    if labels is not None:
        if not isinstance(labels, dict):
            errors.append(f"{path}.matchLabels: must be a map of label keys to values")
        else:
            for key, value in labels.items():
                kpath = f"{path}.matchLabels.{key}"
                if not isinstance(key, str) or not is_label_key(key):
                    errors.append(f"{kpath}: {key!r} is not a valid label key")
                elif not isinstance(value, str) or not is_label_value(value):
                    errors.append(f"{kpath}: {value!r} is not a valid label value (quote it)")
                else:
                    match_labels.append((key, value))
    requirements: list[Requirement] = []
    exprs = raw.get("matchExpressions")
    if exprs is not None:
        if not isinstance(exprs, list):
            errors.append(f"{path}.matchExpressions: must be a list")
        else:
            for i, expr in enumerate(exprs):
                req = _parse_requirement(expr, f"{path}.matchExpressions[{i}]", errors)
                if req is not None:
                    requirements.append(req)
    if len(errors) > before:
        return None
    return Selector(tuple(match_labels), tuple(requirements), raw)


def _parse_requirement(raw: Any, path: str, errors: list[str]) -> Requirement | None:
    if not isinstance(raw, dict):
        errors.append(f"{path}: must be a map with key, operator and values")
        return None
    before = len(errors)
    for key in raw:
        if key not in ("key", "operator", "values"):
            errors.append(f"{path}.{key}: unknown key (expected key, operator, values)")
    key = raw.get("key")
    if not isinstance(key, str) or not is_label_key(key):
        errors.append(f"{path}.key: {key!r} is not a valid label key")
    operator = raw.get("operator")
    if operator not in OPERATORS:
        errors.append(f"{path}.operator: must be In, NotIn, Exists or DoesNotExist")
    values = raw.get("values")
    if values is None:
        values = []
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        errors.append(f"{path}.values: must be a list of strings")
        values = []
    elif operator in ("In", "NotIn") and not values:
        errors.append(f"{path}.values: must not be empty for operator {operator}")
    elif operator in ("Exists", "DoesNotExist") and values:
        errors.append(f"{path}.values: must be empty for operator {operator}")
    for j, value in enumerate(values):
        if not is_label_value(value):
            errors.append(f"{path}.values[{j}]: {value!r} is not a valid label value")
    if len(errors) > before:
        return None
    assert isinstance(key, str) and isinstance(operator, str)
    return Requirement(key, operator, frozenset(values))
