"""What the server answers from, and whether it is ready: one object, updated by reference.

The policy and the namespace source are swapped by the watch threads (or set once from
files); a request reads `Runtime.context` once and is judged entirely against that
snapshot, so a policy change in the middle of a request cannot mix two policies.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from .admission import Context, NamespaceLookup, NetworkLookup
from .metrics import Metrics
from .namespaces import StaticNamespaces
from .policy import Policy
from .sources import DEFAULT_NAMESPACE


class NamespaceSource(Protocol):
    """Namespace labels for requests: a file's static list or the cluster cache."""

    def __call__(self, name: str) -> Mapping[str, str] | None: ...

    def cached(self, name: str) -> bool: ...

    def fetch(self, name: str) -> None: ...

    def ready(self) -> bool: ...


@dataclass
class Runtime:
    own_namespace: str = DEFAULT_NAMESPACE
    namespaces: NamespaceSource = field(default_factory=StaticNamespaces)
    networks: NetworkLookup | None = None
    metrics: Metrics = field(default_factory=Metrics)
    policy: Policy | None = None
    policy_source: str = ""
    policy_error: str = ""  # the last rejected policy, while the last good one stays in force
    # SIGTERM received: /readyz says not ready while requests are still answered (SPEC 6).
    draining: bool = False
    _context: Context | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def context(self) -> Context | None:
        """The snapshot to judge a request against, or None when not ready."""
        if self._context is None or not self.namespaces.ready():
            return None
        return self._context

    @property
    def not_ready_detail(self) -> str:
        if self.policy is None:
            return f"no valid policy: {self.policy_error}" if self.policy_error else "no policy yet"
        if not self.namespaces.ready():
            return "namespaces not listed yet"
        return ""

    def install(self, context: Context, source: str) -> None:
        """Serve from a fixed context (policy file, namespaces file, tests)."""
        with self._lock:
            self.own_namespace = context.own_namespace
            self.networks = context.networks
            if all(hasattr(context.namespaces, m) for m in ("cached", "fetch", "ready")):
                self.namespaces = context.namespaces  # type: ignore[assignment]
        self.set_policy(context.policy, source, lookup=context.namespaces)

    def set_policy(
        self, policy: Policy, source: str, lookup: NamespaceLookup | None = None
    ) -> None:
        with self._lock:
            self.policy = policy
            self.policy_source = source
            self.policy_error = ""
            self._context = Context(policy, lookup or self.namespaces, self.own_namespace,
                                    self.networks)  # fmt: skip
        self.metrics.set_policy(policy.version)

    def set_sources(
        self, namespaces: NamespaceSource | None = None, networks: NetworkLookup | None = None
    ) -> None:
        """Use these namespace labels and this NetworkAttachmentDefinition check from now on
        (the current policy's context is rebuilt around them)."""
        with self._lock:
            if namespaces is not None:
                self.namespaces = namespaces
            if networks is not None:
                self.networks = networks
            if self._context is not None:
                self._context = Context(self._context.policy, self.namespaces,
                                        self.own_namespace, self.networks)  # fmt: skip

    def reject_policy(self, errors: list[str], source: str) -> None:
        with self._lock:
            self.policy_error = f"{source}: " + "; ".join(errors)
