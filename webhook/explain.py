"""`meshgate explain`: what the webhook would answer for each Pod and workload in a file.

It builds the same AdmissionReview requests the API server would send and passes them to
`admission.admit`, the function the server calls, so what it prints is what the cluster gets.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from .admission import Context, Outcome, admit
from .objects import WORKLOAD_TEMPLATES


def objects_in(docs: list[Any]) -> Iterator[dict[str, Any]]:
    for doc in docs:
        if (
            isinstance(doc, dict)
            and doc.get("kind") == "List"
            and isinstance(doc.get("items"), list)
        ):
            yield from objects_in(doc["items"])
        elif isinstance(doc, dict):
            yield doc


def _request(obj: dict[str, Any], kind: str, group: str, namespace: str, n: int,
             operation: str = "CREATE") -> dict[str, Any]:  # fmt: skip
    version = str(obj.get("apiVersion", "v1")).rpartition("/")[2]
    return {
        "uid": f"explain-{n}",
        "kind": {"group": group, "version": version, "kind": kind},
        "resource": {"group": group, "version": version, "resource": kind.lower() + "s"},
        "operation": operation,
        "namespace": namespace,
        "name": (obj.get("metadata") or {}).get("name") or "",
        "object": obj,
        "dryRun": True,
    }


def _entry(outcome: Outcome) -> dict[str, Any]:
    response = outcome.review["response"]
    return {
        "allowed": response["allowed"],
        "decision": outcome.decision,
        "reasons": list(outcome.reasons) or [outcome.reason],
        "gate": outcome.gate or outcome.reason,
        "warnings": list(outcome.warnings),
        "message": (response.get("status") or {}).get("message", ""),
        "patch": list(outcome.patch),
    }


def explain(docs: list[Any], ctx: Context) -> list[dict[str, Any]]:
    """One result per Pod and workload template, in file order; other kinds listed as skipped."""
    results: list[dict[str, Any]] = []
    for n, obj in enumerate(objects_in(docs)):
        kind = obj.get("kind")
        meta: dict[str, Any] = obj["metadata"] if isinstance(obj.get("metadata"), dict) else {}
        namespace = meta.get("namespace") or "default"
        title = f"{kind} {namespace}/{meta.get('name') or meta.get('generateName') or '?'}"
        group = str(obj.get("apiVersion", "")).rpartition("/")[0]
        if kind == "Pod":
            outcome = admit(_request(obj, "Pod", "", namespace, n), "mutate", ctx)
            results.append({"object": title, "mutate": _entry(outcome)})
            continue
        path = WORKLOAD_TEMPLATES.get((group, str(kind)))
        if path is None:
            results.append({"object": title, "skipped": "not a Pod or a workload"})
            continue
        template: Any = obj
        for key in path:
            template = template.get(key) if isinstance(template, dict) else None
        result: dict[str, Any] = {"object": title + " (pod template)"}
        if isinstance(template, dict):
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": template.get("metadata") or {},
                   "spec": template.get("spec")}  # fmt: skip
            outcome = admit(_request(pod, "Pod", "", namespace, n), "mutate", ctx)
            result["mutate"] = _entry(outcome)
        validate = admit(_request(obj, str(kind), group, namespace, n), "validate", ctx)
        result["validate"] = _entry(validate)
        results.append(result)
    return results


def render_text(results: list[dict[str, Any]]) -> str:
    lines: list[str] = []
    for result in results:
        lines.append(result["object"])
        if "skipped" in result:
            lines.append(f"  skipped: {result['skipped']}")
            lines.append("")
            continue
        mutate = result.get("mutate")
        if mutate:
            verdict = "allowed" if mutate["allowed"] else "DENIED"
            lines.append(f"  decision: {mutate['decision']} ({verdict})")
            lines.append("  reasons:")
            lines += [f"    - {r}" for r in mutate["reasons"]]
            lines.append(f"  gate: {mutate['gate']}")
            lines += [f"  warning: {w}" for w in mutate["warnings"]]
            if mutate["message"]:
                lines.append(f"  message: {mutate['message']}")
            if mutate["patch"]:
                lines.append(f"  patch ({len(mutate['patch'])} operations):")
                lines += ["    " + json.dumps(op) for op in mutate["patch"]]
            else:
                lines.append("  patch: none")
        validate = result.get("validate")
        if validate:
            verdict = "allowed" if validate["allowed"] else "DENIED"
            detail = validate["message"] or validate["reasons"][0]
            lines.append(f"  /validate: {verdict}: {detail}")
            lines += [f"  /validate warning: {w}" for w in validate["warnings"]]
        lines.append("")
    return "\n".join(lines)
