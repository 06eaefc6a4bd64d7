"""Prometheus metrics, in a registry of the app's own (no import-time globals).

The four families the admission hot path updates on every request (requests, decisions,
gate violations, duration) are plain numbers, not prometheus_client metrics: each of those
takes a lock per update, and the updates all happen on the event loop's one thread anyway.
A collector registered in the same registry renders them exactly as prometheus_client's
own Counter and Histogram would (names, HELP, labels, cumulative buckets, `_created`).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterable, Sequence

import prometheus_client.metrics
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

Labels = tuple[str, ...]


def _use_created() -> bool:
    # prometheus_client's own switch (PROMETHEUS_DISABLE_CREATED_SERIES,
    # disable_created_metrics()), so these families follow the registry's other ones.
    return bool(getattr(prometheus_client.metrics, "_use_created", True))


class PlainCounter:
    """A labelled counter kept as a dict: label values (in `labelnames` order) -> count.

    Not thread-safe for updates: update it from one thread (the event loop's). Rendering
    from another thread reads a consistent copy of the dict.
    """

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.values: dict[Labels, float] = {}
        self.created: dict[Labels, float] = {}  # unix time of each series' first count

    def inc(self, labels: Labels, amount: float = 1) -> None:
        values = self.values
        value = values.get(labels)
        if value is None:
            self.created[labels] = time.time()  # before the value: a rendered series has both
            value = 0
        values[labels] = value + amount

    def family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Metric:
        family = self.family()
        created = self.created if _use_created() else {}
        for labels, value in list(self.values.items()):
            family.add_metric(labels, value, created=created.get(labels))
        return family


class PlainHistogram:
    """A labelled histogram kept as lists: label values -> [count per bucket (the last one
    +Inf, not cumulative), sum]. Same threading rule as PlainCounter."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 buckets: Sequence[float]) -> None:  # fmt: skip
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.bounds = tuple(buckets)
        self._le = [floatToGoString(bound) for bound in self.bounds] + ["+Inf"]
        self.series: dict[Labels, list[float]] = {}
        self.created: dict[Labels, float] = {}

    def observe(self, labels: Labels, value: float) -> None:
        series = self.series.get(labels)
        if series is None:
            self.created[labels] = time.time()
            series = self.series[labels] = [0] * (len(self.bounds) + 2)
        # `le` buckets: the first bound >= value (past the last bound: +Inf).
        series[bisect_left(self.bounds, value)] += 1
        series[-1] += value

    def family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Metric:
        family = self.family()
        use_created = _use_created()
        for labels, series in list(self.series.items()):
            counts = series[:]  # one copy: buckets and sum from the same moment
            cumulative, buckets = 0.0, []
            for le, count in zip(self._le, counts[:-1], strict=True):
                cumulative += count
                buckets.append((le, cumulative))
            family.add_metric(labels, buckets, counts[-1])
            if use_created and labels in self.created:
                family.samples.append(Sample(f"{self.name}_created",
                                             dict(zip(self.labelnames, labels, strict=True)),
                                             self.created[labels]))  # fmt: skip
        return family


class PlainCollector(Collector):
    """Renders plain counters and histograms from a prometheus_client registry."""

    def __init__(self, *metrics: PlainCounter | PlainHistogram) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return [metric.collect() for metric in self.metrics]

    def describe(self) -> Iterable[Metric]:
        # The families with their names and no samples: enough for the registry to refuse
        # a duplicate name, without reading the numbers.
        return [metric.family() for metric in self.metrics]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # The hot path's families (see the module docstring), first in the output as before.
        self.requests = PlainCounter(
            "meshgate_admission_requests", "Admission requests answered.",
            ["endpoint", "operation", "outcome"],
        )  # fmt: skip
        self.decisions = PlainCounter(
            "meshgate_decisions", "Injection decisions on /mutate.", ["mode", "decision"]
        )
        self.violations = PlainCounter(
            "meshgate_gate_violations", "Gate violations reported by /validate.", ["action"]
        )
        self.duration = PlainHistogram(
            "meshgate_admission_duration_seconds", "Time to answer an admission request.",
            ["endpoint"], BUCKETS,
        )  # fmt: skip
        r.register(PlainCollector(self.requests, self.decisions, self.violations, self.duration))
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
