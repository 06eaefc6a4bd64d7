"""Reading policy files: a bare policy document, or the meshgate-policy ConfigMap itself."""

from __future__ import annotations

from pathlib import Path

import yaml

from .match import SchemaError
from .policy import Policy, compile_policy

POLICY_KEY = "policy.yaml"
CONFIGMAP_NAME = "meshgate-policy"
DEFAULT_NAMESPACE = "meshgate-system"  # the webhook's own, unless told otherwise


def policy_text(text: str) -> str:
    """The policy YAML in `text`, unwrapping a ConfigMap manifest if that is what it is."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        return text  # compile reports the YAML error with its position
    if isinstance(doc, dict) and doc.get("kind") == "ConfigMap":
        data = doc.get("data")
        if not isinstance(data, dict) or not isinstance(data.get(POLICY_KEY), str):
            raise SchemaError([f"ConfigMap: data.{POLICY_KEY} must hold the policy as a string"])
        return data[POLICY_KEY]
    return text


def parse_policy_text(text: str) -> Policy:
    inner = policy_text(text)
    try:
        raw = yaml.safe_load(inner)
    except yaml.YAMLError as err:
        raise SchemaError([f"(yaml): not valid YAML: {err}"]) from None
    return compile_policy(raw)


def read_policy_file(path: str) -> Policy:
    """Load a policy file ('-' is standard input); SchemaError lists every problem."""
    try:
        text = Path("/dev/stdin").read_text() if path == "-" else Path(path).read_text()
    except OSError as err:
        raise SchemaError([f"{path}: cannot read: {err.strerror}"]) from None
    return parse_policy_text(text)
