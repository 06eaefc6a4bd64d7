"""Observability (SPEC 6): the Prometheus metrics, by their exact names and labels, move as
requests are answered; one JSON log line per request says what was decided and how long it
took, and no log line ever carries an environment variable's value or a secret.

The server is the real one (make_server: uvicorn over TLS on 127.0.0.1, in a thread), and
its logs are captured with meshgate's own JSON formatter, line by line.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import io
import json
import logging
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from cryptography import x509
from helpers import ServerThread, admission_review, client_context, json_log, make_cert_dir
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from webhook import certs, logs
from webhook.admission import Context, Outcome
from webhook.app import create_app
from webhook.cluster import PolicyWatch
from webhook.fastpath import _Recorder
from webhook.metrics import BUCKETS, Metrics
from webhook.namespaces import StaticNamespaces
from webhook.policy import default_policy
from webhook.runtime import Runtime

NAMESPACES = StaticNamespaces({"mesh": {"istio-injection": "enabled"}, "plain": {}})

# SPEC 6: metric family → (type, label names). Counters are exposed as <family>_total.
SPEC_METRICS: dict[str, tuple[str, set[str]]] = {
    "meshgate_admission_requests": ("counter", {"endpoint", "operation", "outcome"}),
    "meshgate_decisions": ("counter", {"mode", "decision"}),
    "meshgate_gate_violations": ("counter", {"action"}),
    "meshgate_admission_duration_seconds": ("histogram", {"endpoint"}),
    "meshgate_policy_reloads": ("counter", {"result"}),
    "meshgate_policy_info": ("gauge", {"version"}),
    "meshgate_certificate_expiry_seconds": ("gauge", set()),
}


# ---------------------------------------------------------------------------------------
# server, client, scrapes


@pytest.fixture(scope="module")
def cert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cert_dir(tmp_path_factory.mktemp("tls"), "meshgate-observability-ca")


def ready_runtime(lookup: Callable[[str], Any] = NAMESPACES) -> Runtime:
    runtime = Runtime()
    runtime.install(Context(default_policy(), lookup, "meshgate-system"), "test")
    return runtime


@contextlib.contextmanager
def serving(runtime: Runtime, cert_dir: Path) -> Iterator[httpx.Client]:
    with ServerThread(create_app(runtime), cert_dir, name="meshgate-observability",
                      runtime=runtime) as served:  # fmt: skip
        trust = client_context(cert_dir / certs.CA_CERT_FILE)
        with httpx.Client(base_url=served.url, timeout=10, verify=trust) as client:
            yield client


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: httpx.Client) -> tuple[Samples, dict[str, Any]]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    samples: Samples = {
        (s.name, frozenset(s.labels.items())): s.value for f in families.values() for s in f.samples
    }
    return samples, families


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum over the series of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def post(client: httpx.Client, path: str, body: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return client.post(path, content=content, headers={"content-type": "application/json"})


def review(obj: Any, *, uid: str, namespace: str = "mesh", **request: Any) -> dict[str, Any]:
    return admission_review(obj, uid=uid, namespace=namespace, **request)


def pod(*caps: str, name: str = "web", containers: int = 1) -> dict[str, Any]:
    listed = []
    for i in range(containers):
        container: dict[str, Any] = {"name": f"app{i}", "image": "example.com/app:1"}
        if caps:
            container["securityContext"] = {"capabilities": {"add": list(caps)}}
        listed.append(container)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": listed}}  # fmt: skip


# ---------------------------------------------------------------------------------------
# metrics


def test_every_spec_metric_has_its_exact_type_and_labels(cert_dir: Path) -> None:
    runtime = ready_runtime()
    with serving(runtime, cert_dir) as client:
        assert post(client, "/mutate", review(pod(), uid="m1")).status_code == 200
        assert post(client, "/validate", review(pod("NET_ADMIN"), uid="v1")).status_code == 200
        watch = PolicyWatch(None, "meshgate-system", runtime, events=NoEvents())
        watch.handlers().replace([configmap({"gate": {"action": "warn"}})])
        _, families = scrape(client)
    for name, (kind, labels) in SPEC_METRICS.items():
        assert name in families, name
        family = families[name]
        assert family.type == kind, (name, family.type)
        series = [s for s in family.samples if not s.name.endswith("_created")]
        assert series, f"{name} has no series"
        for sample in series:
            extra = {"le"} if sample.name.endswith("_bucket") else set()
            assert set(sample.labels) == labels | extra, (sample.name, sample.labels)
        expected = {
            "counter": {f"{name}_total"},
            "gauge": {name},
            "histogram": {f"{name}_bucket", f"{name}_count", f"{name}_sum"},
        }[kind]
        assert {s.name for s in series} == expected, name


def test_request_metrics_follow_the_answers(cert_dir: Path) -> None:
    with serving(ready_runtime(), cert_dir) as client:
        before, _ = scrape(client)
        answers: dict[str, dict[str, Any]] = {}
        cases = [
            ("inject", "/mutate", review(pod(), uid="inject")),
            ("skip", "/mutate", review(pod(), uid="skip", namespace="plain")),
            ("deny", "/validate", review(pod("NET_ADMIN"), uid="deny")),
            ("deny-two", "/validate", review(pod("NET_ADMIN", containers=2), uid="deny-two")),
            ("clean", "/validate", review(pod(), uid="clean")),
        ]
        for key, path, body in cases:
            response = post(client, path, body)
            assert response.status_code == 200
            answers[key] = response.json()["response"]
        assert post(client, "/mutate", b"{not json").status_code == 400
        after, families = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # Each answer is counted under the decision it announced to the API server.
    for key, path, _ in cases:
        endpoint = path.strip("/")
        decision = answers[key]["auditAnnotations"]["decision"]
        assert delta("meshgate_admission_requests_total", endpoint=endpoint,
                     operation="CREATE", outcome=decision) >= 1, key  # fmt: skip
    assert answers["inject"]["patchType"] == "JSONPatch"
    inject = answers["inject"]["auditAnnotations"]["decision"]
    skip = answers["skip"]["auditAnnotations"]["decision"]
    assert inject != skip
    assert delta("meshgate_admission_requests_total", endpoint="mutate") == 3
    assert delta("meshgate_admission_requests_total", endpoint="validate") == 3
    assert delta("meshgate_admission_requests_total", endpoint="mutate",
                 outcome="bad-request") == 1  # fmt: skip
    # /mutate decisions by mode: both pods are in CNI-mode namespaces.
    assert delta("meshgate_decisions_total", mode="cni", decision=inject) == 1
    assert delta("meshgate_decisions_total", mode="cni", decision=skip) == 1
    assert delta("meshgate_decisions_total") == 2
    # One violation per offending container, by the gate's action.
    assert answers["deny"]["allowed"] is False and answers["deny-two"]["allowed"] is False
    assert delta("meshgate_gate_violations_total", action="deny") == 3
    # The histogram: one observation per judged request, cumulative buckets.
    assert delta("meshgate_admission_duration_seconds_count", endpoint="mutate") == 2
    assert delta("meshgate_admission_duration_seconds_count", endpoint="validate") == 3
    assert delta("meshgate_admission_duration_seconds_sum", endpoint="validate") > 0
    for endpoint in ("mutate", "validate"):
        buckets = sorted(
            (float(s.labels["le"]), s.value)
            for s in families["meshgate_admission_duration_seconds"].samples
            if s.name.endswith("_bucket") and s.labels["endpoint"] == endpoint
        )
        counts = [c for _, c in buckets]
        assert counts == sorted(counts)
        assert buckets[-1][0] == float("inf")
        assert counts[-1] == value(after, "meshgate_admission_duration_seconds_count",
                                   endpoint=endpoint)  # fmt: skip


def test_the_hot_path_families_render_as_prometheus_client_renders_them() -> None:
    """The families the admission path updates are plain numbers (metrics.PlainCounter,
    PlainHistogram); a scrape shows them as prometheus_client's Counter and Histogram do:
    the same text, first in the output, only the `_created` times differ."""
    metrics = Metrics()
    reference = CollectorRegistry()
    requests = Counter("meshgate_admission_requests", "Admission requests answered.",
                       ["endpoint", "operation", "outcome"], registry=reference)
    decisions = Counter("meshgate_decisions", "Injection decisions on /mutate.",
                        ["mode", "decision"], registry=reference)
    violations = Counter("meshgate_gate_violations", "Gate violations reported by /validate.",
                         ["action"], registry=reference)
    duration = Histogram("meshgate_admission_duration_seconds",
                         "Time to answer an admission request.", ["endpoint"],
                         buckets=BUCKETS, registry=reference)  # fmt: skip
    # On a bucket's bound, between two, past the last; a series seen again; a count of 2.
    for labels, seconds in [(("mutate", "CREATE", "inject:cni"), 0.001),
                            (("validate", "CREATE", "allowed"), 0.0007),
                            (("mutate", "CREATE", "inject:cni"), 3.5),
                            (("mutate", "", "bad-request"), None)]:  # fmt: skip
        requests.labels(*labels).inc()
        metrics.requests.inc(labels)
        if seconds is not None:
            duration.labels(labels[0]).observe(seconds)
            metrics.duration.observe(labels[:1], seconds)
    decisions.labels("cni", "inject:cni").inc()
    metrics.decisions.inc(("cni", "inject:cni"))
    violations.labels("deny").inc(2)
    metrics.violations.inc(("deny",), 2)

    def masked(text: str) -> str:
        return re.sub(r"^(\S*_created(\{.*\})?) \S+$", r"\1 T", text, flags=re.MULTILINE)

    expected = masked(generate_latest(reference).decode())
    assert "_created{" in expected and 'le="+Inf"} 2.0' in expected
    assert masked(metrics.render().decode()).startswith(expected)


class NoEvents:
    """The policy watch's Event writer, without a cluster."""

    def __init__(self) -> None:
        self.recorded: list[tuple[str, str]] = []

    def record(self, configmap: Any, kind: str, reason: str, message: str) -> None:
        self.recorded.append((kind, reason))

    def close(self, timeout: float = 5.0) -> None:
        pass


def configmap(policy: Any, version: str = "1") -> dict[str, Any]:
    text = policy if isinstance(policy, str) else yaml.safe_dump(policy)
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "meshgate-policy", "namespace": "meshgate-system",
                         "resourceVersion": version, "uid": "cm-uid"},
            "data": {"policy.yaml": text}}  # fmt: skip


def test_policy_reloads_and_the_policy_version(cert_dir: Path) -> None:
    runtime = ready_runtime()
    old = default_policy().version
    watch = PolicyWatch(None, "meshgate-system", runtime, events=NoEvents())
    handlers = watch.handlers()
    with serving(runtime, cert_dir) as client:
        start, _ = scrape(client)
        assert value(start, "meshgate_policy_info", version=old) == 1

        handlers.replace([configmap({"gate": {"action": "warn"}})])
        loaded, _ = scrape(client)
        new = client.get("/readyz").json()["policy"]
        assert new != old
        assert value(loaded, "meshgate_policy_reloads_total", result="success") == 1
        assert value(loaded, "meshgate_policy_info", version=new) == 1
        assert value(loaded, "meshgate_policy_info", version=old) == 0
        assert value(loaded, "meshgate_policy_info") == 1  # one version at a time

        handlers.apply("MODIFIED", configmap({"gate": {"action": "shout"}}, version="2"))
        rejected, _ = scrape(client)
        assert value(rejected, "meshgate_policy_reloads_total", result="invalid") == 1
        assert value(rejected, "meshgate_policy_reloads_total", result="success") == 1
        assert value(rejected, "meshgate_policy_info", version=new) == 1  # the last good one
        assert client.get("/readyz").json()["policy"] == new


def test_certificate_expiry_is_the_serving_certificates_not_after(cert_dir: Path) -> None:
    cert = x509.load_pem_x509_certificate((cert_dir / certs.TLS_CERT_FILE).read_bytes())
    with serving(ready_runtime(), cert_dir) as client:
        samples, _ = scrape(client)
    expiry = value(samples, "meshgate_certificate_expiry_seconds")
    assert expiry == cert.not_valid_after_utc.timestamp()
    assert expiry > time.time() + 300 * 86400  # generate_serving_cert: a year


# ---------------------------------------------------------------------------------------
# logs

SECRET_ENV = "hunter2-s3cr3t"
SECRET_TOKEN = "s.T0kEn-9f8e7d6c5b4a3"
SECRETS = (SECRET_ENV, SECRET_TOKEN, "c2VjcmV0LWZyb20tYS1zZWNyZXQ")


def secret_pod(*caps: str, name: str = "payments") -> dict[str, Any]:
    """A pod that carries secrets in the places where pods carry them."""
    container: dict[str, Any] = {
        "name": "app", "image": "example.com/payments:1",
        "env": [
            {"name": "DB_PASSWORD", "value": SECRET_ENV},
            {"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": "api", "key": "key"}}},
        ],
        "args": ["--token", SECRET_TOKEN],
    }  # fmt: skip
    if caps:
        container["securityContext"] = {"capabilities": {"add": list(caps)}}
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "annotations": {
            "vault.example.com/token": SECRET_TOKEN,
            "kubectl.kubernetes.io/last-applied-configuration": json.dumps(
                {"data": {"password": SECRETS[2]}}),
        }},
        "spec": {"containers": [container],
                 "initContainers": [{"name": "migrate", "image": "example.com/migrate:1",
                                     "env": [{"name": "DB_PASSWORD", "value": SECRET_ENV}]}]},
    }  # fmt: skip


def deployment(template_pod: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "payments"},
            "spec": {"selector": {"matchLabels": {"app": "payments"}},
                     "template": {"metadata": template_pod["metadata"],
                                  "spec": template_pod["spec"]}}}  # fmt: skip


def parse_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    lines = stream.getvalue().splitlines()
    assert lines
    parsed = []
    for line in lines:
        entry = json.loads(line)  # every line is one JSON object
        assert isinstance(entry, dict)
        parsed.append(entry)
    return parsed


def invalid(obj: dict[str, Any]) -> dict[str, Any]:
    broken = copy.deepcopy(obj)
    broken["spec"]["containers"][0]["securityContext"] = {"capabilities": {"add": "NET_ADMIN"}}
    return broken


LOG_CASES = [
    pytest.param("/mutate", review(secret_pod(), uid="allowed-m"), True, id="mutate-allowed"),
    pytest.param("/validate", review(secret_pod(), uid="allowed-v"), True, id="validate-allowed"),
    pytest.param("/mutate", review(secret_pod("NET_ADMIN"), uid="denied-m"), False,
                 id="mutate-denied"),
    pytest.param("/validate", review(secret_pod("NET_ADMIN"), uid="denied-v"), False,
                 id="validate-denied"),
    pytest.param("/mutate", review(invalid(secret_pod()), uid="invalid-m"), False,
                 id="mutate-invalid"),
    pytest.param("/validate", review(invalid(secret_pod()), uid="invalid-v"), False,
                 id="validate-invalid"),
    pytest.param("/validate", review(deployment(secret_pod("NET_ADMIN")), uid="workload",
                                     kind="Deployment", group="apps"), False,
                 id="workload-denied"),
    pytest.param("/validate", review(
        {**secret_pod(), "spec": {**secret_pod()["spec"], "ephemeralContainers": [
            {"name": "debug", "image": "busybox", "env": [{"name": "T", "value": SECRET_ENV}],
             "securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}}]}},
        uid="ephemeral", operation="UPDATE", sub_resource="ephemeralcontainers",
        old=secret_pod()), False, id="ephemeral-denied"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "allowed"), LOG_CASES)
def test_one_json_line_per_request_and_never_a_secret(
    cert_dir: Path, path: str, body: dict[str, Any], allowed: bool
) -> None:
    uid = body["request"]["uid"]
    with serving(ready_runtime(), cert_dir) as client, json_log() as stream:
        response = post(client, path, body)
        assert response.status_code == 200
        answer = response.json()["response"]
        assert answer["allowed"] is allowed
    text = stream.getvalue()
    for secret in SECRETS:
        assert secret not in text, secret
    lines = [e for e in parse_lines(stream) if e.get("uid") == uid]
    assert len(lines) == 1, lines
    line = lines[0]
    assert line["msg"] == "admission"
    assert line["endpoint"] == path.strip("/")
    assert line["namespace"] == "mesh"
    assert line["pod"] == "payments"
    assert line["operation"] == body["request"]["operation"]
    assert line["decision"] == answer["auditAnnotations"]["decision"]
    assert line["allowed"] is allowed
    assert isinstance(line["reason"], str) and line["reason"]
    assert isinstance(line["durationMs"], float | int) and 0 <= line["durationMs"] < 5000
    if not allowed:  # a refusal's reason is what the API server showed the author
        assert line["reason"] == answer["status"]["message"]


def test_a_bad_request_is_logged_once_without_the_object(cert_dir: Path) -> None:
    body = review(secret_pod(), uid="bad-kind")
    body["kind"] = "NotAReview"
    with serving(ready_runtime(), cert_dir) as client, json_log() as stream:
        response = post(client, "/mutate", body)
        assert response.status_code == 400
    text = stream.getvalue()
    for secret in SECRETS:
        assert secret not in text, secret
    lines = [e for e in parse_lines(stream) if e.get("uid") == "bad-kind"]
    assert len(lines) == 1, lines
    assert lines[0]["status"] == 400
    assert "AdmissionReview" in lines[0]["error"]
    assert lines[0]["durationMs"] >= 0


def test_an_internal_error_is_logged_without_the_request_body(cert_dir: Path) -> None:
    def broken_lookup(name: str) -> Any:
        raise RuntimeError("namespace cache exploded")

    body = review(secret_pod(), uid="boom")
    with serving(ready_runtime(broken_lookup), cert_dir) as client, json_log() as stream:
        response = post(client, "/mutate", body)
        assert response.status_code == 500
    text = stream.getvalue()
    for secret in SECRETS:
        assert secret not in text, secret
    errors = [e for e in parse_lines(stream) if e["level"] == "error"]
    assert len(errors) == 1, errors
    assert errors[0]["uid"] == "boom"
    assert "namespace cache exploded" in errors[0]["error"]  # the traceback is there
    assert "payments" not in errors[0]["error"]  # ... but not the object


def judged(uid: str = "u-1") -> Outcome:
    """The outcome of a refused /validate request, as admit() returns it."""
    return Outcome(review={"response": {"uid": uid}}, allowed=False, decision="deny",
                   reason='container "app" adds NET_ADMIN', namespace="mesh", name="web",
                   operation="CREATE", violations=("adds NET_ADMIN", "privileged"),
                   gate_action="deny")  # fmt: skip


def test_the_admission_line_is_the_line_the_json_formatter_would_make() -> None:
    """The per-request line is written without a log record; it is the very object that
    JSONFormatter makes of log.info("admission", extra=...) with the same fields."""
    outcome = judged()
    with json_log() as stream:
        _Recorder(Runtime())("validate", outcome, time.perf_counter())  # no loop: at once
        logging.getLogger("meshgate.admission").info("admission", extra={
            "uid": "u-1", "endpoint": "validate", "namespace": "mesh", "pod": "web",
            "operation": "CREATE", "decision": "deny", "allowed": False,
            "reason": outcome.reason, "violations": list(outcome.violations),
            "durationMs": 0.001})  # fmt: skip
    ours, theirs = parse_lines(stream)
    assert list(ours) == list(theirs)  # the same keys, in the same order
    assert {k: v for k, v in ours.items() if k not in ("time", "durationMs")} == {
        k: v for k, v in theirs.items() if k not in ("time", "durationMs")}  # fmt: skip
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", ours["time"])
    ours_at, theirs_at = (datetime.fromisoformat(entry["time"]) for entry in (ours, theirs))
    assert timedelta(0) <= theirs_at - ours_at < timedelta(seconds=1)  # made just now
    assert isinstance(ours["durationMs"], float) and 0 <= ours["durationMs"] < 1000


def test_admission_lines_are_written_together_once_per_turn_of_the_event_loop() -> None:
    record = _Recorder(Runtime())

    async def burst() -> tuple[str, str]:
        for uid in ("u-1", "u-2", "u-3"):
            record("validate", judged(uid), time.perf_counter())
        during = stream.getvalue()
        await asyncio.sleep(0)  # the loop's next turn
        return during, stream.getvalue()

    with json_log() as stream:
        during, after = asyncio.run(burst())
    assert during == ""
    assert [json.loads(line)["uid"] for line in after.splitlines()] == ["u-1", "u-2", "u-3"]


def test_no_admission_line_is_made_when_info_is_off() -> None:
    with json_log() as stream:
        logging.getLogger().setLevel(logging.WARNING)  # meshgate serve --log-level warning
        _Recorder(Runtime())("validate", judged(), time.perf_counter())
    assert stream.getvalue() == ""


def test_a_line_left_by_a_loop_that_stopped_early_is_written_with_the_next() -> None:
    with json_log() as stream:
        loop = asyncio.new_event_loop()

        def write_and_stop() -> None:
            logs.lines.write(b'{"msg":"first"}')
            loop.stop()  # before the turn that would have written it

        loop.call_soon(write_and_stop)
        loop.run_forever()
        loop.close()
        assert stream.getvalue() == ""

        async def later() -> str:
            logs.lines.write(b'{"msg":"second"}')
            await asyncio.sleep(0)
            return stream.getvalue()

        assert asyncio.run(later()) == '{"msg":"first"}\n{"msg":"second"}\n'


def test_a_line_still_buffered_at_exit_is_written(tmp_path: Path) -> None:
    code = (
        "import asyncio\n"
        "from webhook import logs\n"
        "logs.configure('info')\n"
        "loop = asyncio.new_event_loop()\n"
        "def write_and_stop():\n"
        "    logs.lines.write(b'{\"msg\":\"last\"}')\n"
        "    loop.stop()\n"
        "loop.call_soon(write_and_stop)\n"
        "loop.run_forever()\n"
        "loop.close()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr == '{"msg":"last"}\n'
