"""The NET_ADMIN gate: which containers of a pod would be granted a gated capability.

Capability names are compared the way container runtimes compare them, so that no spelling
the runtime would honour slips through: surrounding white space trimmed, an optional
``CAP_`` prefix in any case, then both upper-cased (containerd: ``net_admın`` with a dotless
ı becomes ``NET_ADMIN``) and Unicode case-folded (CRI-O: ``ſ`` equals ``s``). ``ALL`` in
any case and ``privileged: true`` grant every capability. ``capabilities.drop`` never counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

CONTAINER_KINDS = (
    ("containers", "container"),
    ("initContainers", "initContainer"),
    ("ephemeralContainers", "ephemeralContainer"),
)
ACTIONS = ("deny", "warn", "audit")
SEVERITY = {"audit": 0, "warn": 1, "deny": 2}
WARNING_LIMIT = 120
CAPABILITY_FIX = (
    "drop the capability from securityContext.capabilities.add and do not set privileged: true; "
    "the mesh's CNI plugin sets up traffic redirection without them"
)


def _forms(spelling: str) -> tuple[str, str]:
    """The upper-cased and the case-folded form of a capability, without any CAP_ prefix."""
    text = spelling.strip()
    upper = text.upper()
    if upper.startswith("CAP_"):
        upper = upper[4:]
    folded = text.casefold()
    if folded.startswith("cap_"):
        folded = folded[4:]
    return upper, folded


def canonical(spelling: str) -> str:
    """The canonical name of a capability as written in a policy (e.g. ``cap_net_admin``)."""
    return _forms(spelling)[0]


@dataclass(frozen=True)
class CapabilitySet:
    """The gated capabilities, pre-normalised for the two comparisons runtimes make."""

    names: tuple[str, ...]
    upper: frozenset[str]
    folded: frozenset[str]

    @classmethod
    def of(cls, names: Iterable[str]) -> CapabilitySet:
        canon = tuple(dict.fromkeys(canonical(n) for n in names))
        return cls(canon, frozenset(canon), frozenset(n.casefold() for n in canon))

    def granted_by(self, spelling: str) -> str | None:
        """The gated capability that adding `spelling` grants ('ALL' for ALL), or None."""
        upper, folded = _forms(spelling)
        if upper == "ALL" or folded == "all":
            return "ALL" if self.names else None
        if upper in self.upper:
            return upper
        if folded in self.folded:
            for name in self.names:
                if name.casefold() == folded:
                    return name
        return None


@dataclass(frozen=True)
class Violation:
    """One reason a pod fails the gate, in words a pod author can act on."""

    kind: str  # container | initContainer | ephemeralContainer | pod
    name: str  # the container name, or the annotation for pod-level violations
    what: str  # e.g. 'adds NET_ADMIN', 'adds NET_ADMIN (as "cap_net_admin")', 'is privileged'
    fix: str = CAPABILITY_FIX

    def describe(self) -> str:
        if self.kind == "pod":
            return f"pod {self.what}"
        return f'{self.kind} "{self.name}" {self.what}'

    def short(self, limit: int = WARNING_LIMIT) -> str:
        """One warning line of at most `limit` characters; long names shortened with '…'."""
        text = self.describe()
        if len(text) <= limit:
            return text
        overflow = len(text) - limit + 1
        if len(self.name) > overflow + 1:
            name = self.name[: len(self.name) - overflow] + "…"
            text = Violation(self.kind, name, self.what, self.fix).describe()
            if len(text) <= limit:
                return text
        return text[: limit - 1] + "…"


def container_violations(
    container: Mapping[str, Any], kind: str, gated: CapabilitySet
) -> list[Violation]:
    """Violations of one container; the container's shape has been validated already."""
    name = container.get("name", "")
    context = container.get("securityContext") or {}
    found: list[Violation] = []
    # privileged grants every capability, so it counts when at least one is gated (an empty
    # gate.capabilities denies nothing).
    if context.get("privileged") is True and gated.names:
        found.append(
            Violation(kind, name, "is privileged (privileged: true grants every capability)")
        )
    caps = context.get("capabilities") or {}
    for spelling in caps.get("add") or ():
        granted = gated.granted_by(spelling)
        if granted is None:
            continue
        what = f"adds {granted}"
        if spelling != granted:
            what += f" (as {spelling!r})"
        found.append(Violation(kind, name, what))
    return found


def spec_violations(
    spec: Mapping[str, Any],
    gated: CapabilitySet,
    only_ephemeral: frozenset[str] | None = None,
) -> list[Violation]:
    """Capability violations in every container list of a pod spec.

    With `only_ephemeral`, only the ephemeral containers of those names are judged: that is
    the ``pods/ephemeralcontainers`` update, where the other containers were judged when the
    pod was created.
    """
    found: list[Violation] = []
    for field, kind in CONTAINER_KINDS:
        if only_ephemeral is not None and field != "ephemeralContainers":
            continue
        for container in spec.get(field) or ():
            if only_ephemeral is not None and container.get("name") not in only_ephemeral:
                continue
            found.extend(container_violations(container, kind, gated))
    return found


def deny_message(namespace: str, violations: list[Violation], *, unknown_namespace: bool) -> str:
    """The one message of a denial: the namespace, every violation, and how to fix it."""
    lines = "; ".join(v.describe() for v in violations)
    head = f'namespace "{namespace}" enforces the mesh\'s CNI mode'

    if unknown_namespace:
        head += (
            f' (the labels of namespace "{namespace}" could not be read, so the strictest '
            "rule it may match was applied; the request may be retried)"
        )
    fixes = "; ".join(dict.fromkeys(v.fix for v in violations))
    return f"{head}: {lines}. To fix: {fixes}."


def more_severe(a: str, b: str) -> str:
    return a if SEVERITY[a] >= SEVERITY[b] else b
