"""The admission engine: an AdmissionReview request in, an AdmissionReview response out.

No HTTP here: the server, `meshgate explain` and the tests all call `admit`. Two channels
of failure, as Kubernetes expects: a broken webhook call (not JSON, not a v1 AdmissionReview,
no uid) raises BadRequest, which the HTTP shell turns into a 4xx; a pod or workload that is
refused is an ordinary response with ``allowed: false``. Responses are built only by the
constructors below, so every one carries the uid and the audit annotations.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from . import multus
from .decision import Decision, GateVerdict, Namespace, decide, gate_for, mesh_violations
from .gate import Violation, deny_message
from .inject import patch_for
from .objects import WORKLOAD_TEMPLATES, InvalidObject, check_pod, workload_template
from .patch import Op
from .policy import Policy

API_VERSION = "admission.k8s.io/v1"
AUDIT_LIMIT = 1000  # characters of an audit annotation value

NamespaceLookup = Callable[[str], Mapping[str, str] | None]
# (namespace, name) → whether that NetworkAttachmentDefinition exists.
NetworkLookup = Callable[[str, str], bool]


class BadRequest(Exception):
    """The call itself is malformed: answered with an HTTP error, never with allowed."""

    def __init__(self, status: int, message: str, uid: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.uid = uid


@dataclass(frozen=True)
class Context:
    """One consistent snapshot a request is judged against."""

    policy: Policy
    namespaces: NamespaceLookup
    own_namespace: str
    networks: NetworkLookup | None = None


@dataclass(frozen=True)
class Outcome:
    """The response plus what logs and metrics say about it."""

    review: dict[str, Any]
    allowed: bool
    decision: str
    reason: str
    mode: str = ""
    namespace: str = ""
    name: str = ""
    operation: str = ""
    violations: tuple[str, ...] = ()
    gate_action: str = ""
    warnings: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    gate: str = ""

    @property
    def patch(self) -> tuple[Op, ...]:
        """The JSON Patch exactly as the response carries it, decoded into objects the
        caller owns (the operations built for the response share the policy's templates)."""
        encoded = self.review["response"].get("patch")
        return tuple(orjson.loads(base64.b64decode(encoded))) if encoded else ()


def parse_review(body: bytes) -> dict[str, Any]:
    """The `request` of a v1 AdmissionReview, or BadRequest saying what is wrong."""
    try:
        review = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise BadRequest(400, f"request body is not JSON: {err}") from None
    if not isinstance(review, dict):
        raise BadRequest(400, "request body is not an AdmissionReview (not a JSON object)")
    request = review.get("request")
    uid = request.get("uid") if isinstance(request, dict) else None
    uid = uid if isinstance(uid, str) and uid else None
    if review.get("kind") != "AdmissionReview":
        raise BadRequest(400, f"kind must be AdmissionReview, got {review.get('kind')!r}", uid)
    if review.get("apiVersion") != API_VERSION:
        raise BadRequest(
            400, f"apiVersion must be {API_VERSION}, got {review.get('apiVersion')!r}", uid
        )
    if not isinstance(request, dict):
        raise BadRequest(400, "AdmissionReview has no request object")
    if uid is None:
        raise BadRequest(400, "request.uid is missing or not a non-empty string")
    kind = request.get("kind")
    if not isinstance(kind, dict) or not isinstance(kind.get("kind"), str):
        raise BadRequest(400, "request.kind must be an object with a string kind", uid)
    if kind.get("group") is not None and not isinstance(kind["group"], str):
        raise BadRequest(400, "request.kind.group must be a string", uid)
    if not isinstance(request.get("operation"), str):
        raise BadRequest(400, "request.operation must be a string", uid)
    for key in ("namespace", "subResource", "name"):
        if request.get(key) is not None and not isinstance(request[key], str):
            raise BadRequest(400, f"request.{key} must be a string", uid)
    return request


def _review(response: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response}


def _audit(decision: str, reason: str, policy: str, extra: Mapping[str, str]) -> dict[str, str]:
    notes = {"decision": decision, "reason": reason, "policy": policy, **extra}
    return {k: v if len(v) <= AUDIT_LIMIT else v[: AUDIT_LIMIT - 1] + "…" for k, v in notes.items()}


def allowed(
    uid: str,
    decision: str,
    reason: str,
    policy: str,
    *,
    patch: list[Op] | None = None,
    warnings: tuple[str, ...] = (),
    audit: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    response: dict[str, Any] = {
        "uid": uid,
        "allowed": True,
        "auditAnnotations": _audit(decision, reason, policy, audit or {}),
    }
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = binascii.b2a_base64(orjson.dumps(patch), newline=False).decode()
    if warnings:
        response["warnings"] = list(warnings)
    return _review(response)


def denied(
    uid: str, code: int, message: str, decision: str, policy: str,
    audit: Mapping[str, str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    reason = "Forbidden" if code == 403 else "BadRequest"
    return _review({
        "uid": uid,
        "allowed": False,
        "status": {"status": "Failure", "code": code, "reason": reason, "message": message},
        "auditAnnotations": _audit(decision, message, policy, audit or {}),
    })  # fmt: skip


class _Request(NamedTuple):
    uid: str
    operation: str
    group: str
    kind: str
    sub_resource: str
    namespace: str
    name: str
    obj: Any
    old: Any


def _read(request: Mapping[str, Any]) -> _Request:
    kind = request["kind"]
    obj = request.get("object")
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    namespace = request.get("namespace") or meta.get("namespace") or ""
    name = request.get("name") or meta.get("name") or meta.get("generateName") or ""
    return _Request(
        uid=request["uid"],
        operation=request["operation"],
        group=kind.get("group") or "",
        kind=kind["kind"],
        sub_resource=request.get("subResource") or "",
        namespace=namespace if isinstance(namespace, str) else "",
        name=name if isinstance(name, str) else "",
        obj=obj,
        old=request.get("oldObject"),
    )


def admit(request: Mapping[str, Any], endpoint: str, ctx: Context) -> Outcome:
    """Answer one parsed request (see parse_review) on `endpoint` ('mutate' or 'validate')."""
    req = _read(request)
    policy = ctx.policy.version
    pod_kind = req.group == "" and req.kind == "Pod"
    handler: Callable[[_Request, Context], Outcome] | None = None
    if endpoint == "mutate":
        if pod_kind and req.operation == "CREATE" and not req.sub_resource:
            handler = _mutate_pod
    elif pod_kind and req.operation == "CREATE" and not req.sub_resource:
        handler = _validate_pod
    elif req.operation == "UPDATE" and (
        (pod_kind and req.sub_resource == "ephemeralcontainers")
        or (req.group == "" and req.kind == "EphemeralContainers")
    ):
        handler = _validate_ephemeral
    elif (
        (req.group, req.kind) in WORKLOAD_TEMPLATES
        and req.operation in ("CREATE", "UPDATE")
        and not req.sub_resource
    ):
        handler = _validate_workload
    if handler is None:
        what = f"{req.operation} {req.kind}" + (f"/{req.sub_resource}" if req.sub_resource else "")
        reason = f"{what} is not handled on /{endpoint}"
        return Outcome(allowed(req.uid, "ignored", reason, policy), True, "ignored", reason,
                       operation=req.operation, namespace=req.namespace, name=req.name)  # fmt: skip
    if not req.namespace:
        message = "request.namespace is missing: pods and workloads are namespaced"
        return _refuse(req, ctx, 400, message, "invalid")
    try:
        return handler(req, ctx)
    except InvalidObject as err:
        return _refuse(req, ctx, 400, f"invalid {req.kind}: {err}", "invalid")


def _refuse(req: _Request, ctx: Context, code: int, message: str, label: str,
            **kw: Any) -> Outcome:  # fmt: skip
    review = denied(req.uid, code, message, label, ctx.policy.version)
    return Outcome(review, False, label, message, namespace=req.namespace, name=req.name,
                   operation=req.operation, **kw)  # fmt: skip


def _namespace(req: _Request, ctx: Context) -> Namespace:
    return Namespace(req.namespace, ctx.namespaces(req.namespace))


def _refusal_message(
    req: _Request, refusals: tuple[str, ...], gate: GateVerdict, violations: list[Violation]
) -> str:
    """The refusals, and the gate's denial if there is one too: every reason at once, so
    that one fix-and-retry is enough."""
    what = f'{req.kind} "{req.name}"' if req.name else f"this {req.kind}"
    message = f'meshgate refused {what} in namespace "{req.namespace}": ' + "; ".join(refusals)
    if violations and gate.enforced and gate.action == "deny":
        message += " " + deny_message(
            req.namespace, violations, unknown_namespace=gate.namespace_unknown
        )
    return message


def _mutate_pod(req: _Request, ctx: Context) -> Outcome:
    check_pod(req.obj)
    d = decide(req.obj, _namespace(req, ctx), ctx.policy, ctx.own_namespace)
    violations = tuple(v.describe() for v in d.gate.violations) if d.gate.enforced else ()
    explained: dict[str, Any] = dict(mode=d.mode, reasons=d.reasons, gate=d.gate.summary(),
                                     violations=violations)  # fmt: skip
    if d.refusals:
        message = _refusal_message(req, d.refusals, d.gate, list(d.gate.violations))
        return _refuse(req, ctx, 403, message, "refused", **explained)
    if d.gate.violated and d.gate.action == "deny":
        message = deny_message(req.namespace, list(d.gate.violations),
                               unknown_namespace=d.gate.namespace_unknown)  # fmt: skip
        return _refuse(req, ctx, 403, message, "denied", gate_action="deny", **explained)
    ops = patch_for(req.obj, d, ctx.policy)
    reason = d.reasons[-1]
    warnings = d.warnings + _missing_network(req, d, ctx)
    review = allowed(req.uid, d.label, reason, ctx.policy.version, patch=ops, warnings=warnings)
    return Outcome(review, True, d.label, reason, namespace=req.namespace, name=req.name,
                   operation=req.operation, warnings=warnings,
                   gate_action=d.gate.action if d.gate.violated else "",
                   **explained)  # fmt: skip


def _missing_network(req: _Request, d: Decision, ctx: Context) -> tuple[str, ...]:
    """Without the NetworkAttachmentDefinition that the Multus entry names, Multus fails
    the pod's sandbox: say so to the author now rather than in an event later."""
    if ctx.networks is None or d.mode != "cni" or d.gateway or d.action == "skip":
        return ()
    namespace, name = multus.parse_ref(ctx.policy.cni_network).resolved(req.namespace)
    if ctx.networks(namespace, name):
        return ()
    return (
        f"no NetworkAttachmentDefinition {namespace}/{name}: Multus will fail the pod's "
        "sandbox until it exists",
    )


def _gate_outcome(
    req: _Request, ctx: Context, violations: list[Violation], action: str, unknown: bool,
    reason: str, mode: str = "",
) -> Outcome:  # fmt: skip
    described = tuple(v.describe() for v in violations)
    if not violations:
        review = allowed(req.uid, "allowed", reason, ctx.policy.version)
        return Outcome(review, True, "allowed", reason, mode, req.namespace, req.name,
                       req.operation)  # fmt: skip
    if action == "deny":
        message = deny_message(req.namespace, violations, unknown_namespace=unknown)
        return _refuse(req, ctx, 403, message, "denied", violations=described,
                       gate_action=action, mode=mode)  # fmt: skip
    summary = f"gate {action}: " + "; ".join(described)
    audit = {"violations": "; ".join(described)}
    warnings = tuple(v.short() for v in violations) if action == "warn" else ()
    review = allowed(req.uid, action, summary, ctx.policy.version, warnings=warnings, audit=audit)
    return Outcome(review, True, action, summary, mode, req.namespace, req.name, req.operation,
                   violations=described, gate_action=action, warnings=warnings)  # fmt: skip


def _verdict(gate: GateVerdict, violations: list[Violation]) -> str:
    if not gate.enforced or not violations:
        return gate.summary()
    return f"{gate.action}: " + "; ".join(v.describe() for v in violations)


def _validate_pod(req: _Request, ctx: Context) -> Outcome:
    check_pod(req.obj)
    d = decide(req.obj, _namespace(req, ctx), ctx.policy, ctx.own_namespace)
    violations = list(d.gate.violations) if d.gate.enforced else []
    if d.gate.enforced and ctx.policy.require_mesh:
        violations += mesh_violations(req.obj, ctx.policy, req.namespace)
    if d.refusals:  # the violations are still counted
        message = _refusal_message(req, d.refusals, d.gate, violations)
        return _refuse(req, ctx, 403, message, "refused", mode=d.mode,
                       violations=tuple(v.describe() for v in violations),
                       gate_action=d.gate.action if violations else "")  # fmt: skip
    return _gate_outcome(req, ctx, violations, d.gate.action, d.gate.namespace_unknown,
                         f"gate {_verdict(d.gate, violations)}", d.mode)  # fmt: skip


def _validate_ephemeral(req: _Request, ctx: Context) -> Outcome:
    pod = req.obj
    if req.kind == "EphemeralContainers":  # the pre-1.22 subresource kind
        if not isinstance(pod, dict):
            raise InvalidObject("object must be an object")
        pod = {
            "metadata": pod.get("metadata"),
            "spec": {"ephemeralContainers": pod.get("ephemeralContainers")},
        }
    check_pod(pod)
    old = req.old if isinstance(req.old, dict) else {}
    old_spec = old.get("spec") if req.kind == "Pod" else old
    old_list = old_spec.get("ephemeralContainers") if isinstance(old_spec, dict) else None
    # The old object is not validated: anything malformed there counts as no container, so
    # every new ephemeral container is judged (never a crash, never a bypass).
    old_names = {
        c["name"] for c in old_list if isinstance(c, dict) and isinstance(c.get("name"), str)
    } if isinstance(old_list, list) else set()  # fmt: skip
    new_names = frozenset(
        c["name"] for c in (pod.get("spec") or {}).get("ephemeralContainers") or ()
        if c["name"] not in old_names
    )  # fmt: skip
    gate = gate_for(pod, _namespace(req, ctx), ctx.policy, ctx.own_namespace,
                    only_ephemeral=new_names)  # fmt: skip
    violations = list(gate.violations) if gate.enforced else []
    reason = f"new ephemeral containers {sorted(new_names)}: gate {_verdict(gate, violations)}"
    return _gate_outcome(req, ctx, violations, gate.action, gate.namespace_unknown, reason)


def _validate_workload(req: _Request, ctx: Context) -> Outcome:
    path = WORKLOAD_TEMPLATES[(req.group, req.kind)]
    template = workload_template(req.obj, path)
    if req.operation == "UPDATE":
        old_template: Any = req.old
        for key in path:
            old_template = old_template.get(key) if isinstance(old_template, dict) else None
        if old_template == template:
            reason = "pod template unchanged: its pods are gated when they are created"
            review = allowed(req.uid, "allowed", reason, ctx.policy.version)
            return Outcome(review, True, "allowed", reason, namespace=req.namespace,
                           name=req.name, operation=req.operation)  # fmt: skip
    pod = {"metadata": template.get("metadata"), "spec": template.get("spec")}
    gate = gate_for(pod, _namespace(req, ctx), ctx.policy, ctx.own_namespace)
    violations = list(gate.violations) if gate.enforced else []
    reason = f"{req.kind} pod template: gate {_verdict(gate, violations)}"
    return _gate_outcome(req, ctx, violations, gate.action, gate.namespace_unknown, reason)
