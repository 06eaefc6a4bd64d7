"""Prometheus metrics, in a registry of the app's own (no import-time globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "meshgate_admission_requests", "Admission requests answered.",
            ["endpoint", "operation", "outcome"], registry=r,
        )  # fmt: skip
        self.decisions = Counter(
            "meshgate_decisions",
            "Injection decisions on /mutate.",
            ["mode", "decision"],
            registry=r,
        )
        self.violations = Counter(
            "meshgate_gate_violations", "Gate violations reported by /validate.", ["action"],
            registry=r,
        )  # fmt: skip
        self.duration = Histogram(
            "meshgate_admission_duration_seconds", "Time to answer an admission request.",
            ["endpoint"], buckets=BUCKETS, registry=r,
        )  # fmt: skip
        self.policy_reloads = Counter(
            "meshgate_policy_reloads", "Policy loads, by result.", ["result"], registry=r
        )
        self.policy_info = Gauge(
            "meshgate_policy_info", "The effective policy version (value 1).", ["version"],
            registry=r,
        )  # fmt: skip
        self.certificate_expiry = Gauge(
            "meshgate_certificate_expiry_seconds",
            "Unix time at which the serving certificate expires.", registry=r,
        )  # fmt: skip
        self.certificate_reloads = Counter(
            "meshgate_certificate_reloads",
            "Serving certificate loads from --cert-dir, by result (error: the previous one "
            "stays in use).", ["result"], registry=r,
        )  # fmt: skip
        self.errors = Counter(
            "meshgate_internal_errors", "Unexpected errors answered with 500.", registry=r
        )

    def set_policy(self, version: str) -> None:
        self.policy_info.clear()
        self.policy_info.labels(version=version).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
