"""The soak harness's pure parts (soak/run.py) and the audit wrapper (soak/audit.py): the
policies it flips between, the bodies and the answers it expects (checked here against the
SPEC, not against the harness), the judging of answers, timelines, figures, the Secret
volume it rotates and the report. The soak itself (`make soak`) is not run here.
"""

from __future__ import annotations

import base64
import copy
import os
import sys
from pathlib import Path
from typing import Any

import jsonpatch
import orjson
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from soak import audit  # noqa: E402
from soak import run as soak  # noqa: E402
from webhook.match import SchemaError  # noqa: E402
from webhook.policy import default_policy  # noqa: E402
from webhook.server import ServingCertificate  # noqa: E402
from webhook.sources import parse_policy_text  # noqa: E402


@pytest.fixture(scope="module")
def valid() -> dict[str, Any]:
    return soak.policies()


@pytest.fixture(scope="module")
def kinds(valid: dict[str, Any]) -> dict[str, soak.Kind]:
    return {k.name: k for k in soak.build_kinds(valid["A"])}


@pytest.fixture(scope="module")
def expected(valid: dict[str, Any], kinds: dict[str, soak.Kind]) -> dict[str, Any]:
    return soak.expected_answers(list(kinds.values()), valid)


# --- the policies ------------------------------------------------------------------------


def test_the_two_valid_policies_are_distinct_and_not_the_embedded_default(valid):
    versions = {label: p.version for label, p in valid.items()}
    assert set(versions) == {"A", "B"}
    assert len(set(versions.values())) == 2
    assert default_policy().version not in versions.values()
    assert valid["A"].cni_network == "istio-cni-a" and valid["B"].cni_network == "istio-cni-b"


@pytest.mark.parametrize(
    "text",
    [pytest.param(t, id=f"invalid-{i}") for i, t in enumerate(soak.INVALID_POLICIES)],
)
def test_every_invalid_policy_is_rejected_with_a_reason(text):
    with pytest.raises(SchemaError) as caught:
        parse_policy_text(text)
    assert caught.value.errors and all(caught.value.errors)


def test_the_flip_plan_cycles_valid_versions_with_an_invalid_one_after_each():
    plan = soak.flip_plan(9)
    assert plan == ["B", "invalid", "A", "invalid", "B", "invalid", "A", "invalid", "B"]
    assert len(soak.invalid_errors()) == len(soak.INVALID_POLICIES)


# --- the bodies and the answers expected of them -------------------------------------------


def _response(answer: dict[str, Any]) -> dict[str, Any]:
    assert answer["apiVersion"] == "admission.k8s.io/v1"
    assert answer["kind"] == "AdmissionReview"
    response: dict[str, Any] = answer["response"]
    assert "uid" not in response  # stripped: each request carries its own
    return response


def _patched(kind: soak.Kind, response: dict[str, Any]) -> dict[str, Any]:
    """The kind's object with the answer's patch applied (SPEC 5: it must apply cleanly)."""
    obj = orjson.loads(kind.body("x"))["request"]["object"]
    assert response["patchType"] == "JSONPatch"
    ops = orjson.loads(base64.b64decode(response["patch"]))
    patched: dict[str, Any] = jsonpatch.apply_patch(copy.deepcopy(obj), ops)
    return patched


def test_each_kind_carries_its_uid_once(kinds):
    for kind in kinds.values():
        review = orjson.loads(kind.body("uid-123"))
        assert review["request"]["uid"] == "uid-123"
        assert soak.UID_MARK.encode() not in kind.body("uid-123")


@pytest.mark.parametrize("label", ["A", "B"])
def test_injecting_pods_get_the_policys_network_and_sidecar(kinds, expected, valid, label):
    version = valid[label].version
    response = _response(expected[version]["inject-cni"])
    assert response["allowed"] is True
    assert response["auditAnnotations"]["policy"] == version
    pod = _patched(kinds["inject-cni"], response)
    annotations = pod["metadata"]["annotations"]
    assert annotations["k8s.v1.cni.cncf.io/networks"] == valid[label].cni_network
    assert annotations["meshgate.io/injected"] == f"cni@{version}"
    assert "istio-proxy" in [c["name"] for c in pod["spec"]["containers"]]
    assert "warnings" not in response  # the NetworkAttachmentDefinition exists


@pytest.mark.parametrize("label", ["A", "B"])
def test_init_mode_pods_get_istio_init_first(kinds, expected, valid, label):
    response = _response(expected[valid[label].version]["inject-init"])
    pod = _patched(kinds["inject-init"], response)
    first = pod["spec"]["initContainers"][0]
    assert first["name"] == "istio-init"
    assert set(first["securityContext"]["capabilities"]["add"]) >= {"NET_ADMIN", "NET_RAW"}


@pytest.mark.parametrize("label", ["A", "B"])
def test_skipped_and_injected_pods_are_allowed_without_a_patch(expected, valid, label):
    for name in ("skip", "validate"):
        response = _response(expected[valid[label].version][name])
        assert response["allowed"] is True
        assert "patch" not in response


@pytest.mark.parametrize(
    ("label", "kind", "allowed"),
    [
        pytest.param("A", "net-admin", False, id="deny-policy-mutate-denies"),
        pytest.param("A", "validate-net-admin", False, id="deny-policy-validate-denies"),
        pytest.param("B", "net-admin", True, id="warn-policy-mutate-allows"),
        pytest.param("B", "validate-net-admin", True, id="warn-policy-validate-warns"),
    ],
)
def test_net_admin_pods_follow_the_gate_action(kinds, expected, valid, label, kind, allowed):
    response = _response(expected[valid[label].version][kind])
    assert response["allowed"] is allowed
    if not allowed:  # SPEC 4: 403, naming the namespace, the container and the capability
        message = response["status"]["message"]
        assert response["status"]["code"] == 403
        assert "shop" in message and "checkout" in message and "NET_ADMIN" in message
    elif kind == "validate-net-admin":  # warn: one warning per violation, at most 120 chars
        [warning] = response["warnings"]
        assert "NET_ADMIN" in warning and len(warning) <= 120
    else:  # gate warnings come from /validate only; /mutate injects as usual
        assert "warnings" not in response
        pod = _patched(kinds[kind], response)
        assert "istio-proxy" in [c["name"] for c in pod["spec"]["containers"]]


def test_the_policies_answer_differently_so_a_wrong_one_is_caught(expected, valid):
    a, b = (expected[valid[label].version] for label in ("A", "B"))
    for name in ("inject-cni", "inject-init", "net-admin", "validate-net-admin", "skip"):
        assert a[name] != b[name], name


# --- judging one answer ----------------------------------------------------------------------


def _wire(expected_review: dict[str, Any], uid: str, **changes: Any) -> bytes:
    review = copy.deepcopy(expected_review)
    review["response"] = {"uid": uid, **review["response"], **changes}
    return orjson.dumps(review)


def test_judge_sorts_answers(expected, valid):
    a, b = valid["A"].version, valid["B"].version
    both = frozenset({a, b})
    right = expected[a]["inject-cni"]
    audited = right["response"]["auditAnnotations"]  # policy A's name on policy B's answer

    def verdict(status: int, raw: bytes, in_force: frozenset[str] = both) -> soak.Verdict:
        return soak.judge(status, raw, "u-1", "inject-cni", expected, in_force)

    assert verdict(200, _wire(right, "u-1")) == soak.Verdict(soak.OK, a)
    cases = {
        "server-error": (verdict(500, b'{"error": "x"}'), soak.FAILED),
        "not-json": (verdict(200, b"<html>"), soak.FAILED),
        "uid-not-echoed": (verdict(200, _wire(right, "u-2")), soak.FAILED),
        "not-a-review": (verdict(200, orjson.dumps({"response": {"uid": "u-1"}})), soak.FAILED),
        "unknown-version": (
            verdict(200, _wire(right, "u-1", auditAnnotations={"policy": "bacd5648f367"})),
            soak.INCONSISTENT,
        ),
        "allowed-flipped": (verdict(200, _wire(right, "u-1", allowed=False)), soak.INCONSISTENT),
        "other-policys-answer-under-this-name": (
            verdict(200, _wire(expected[b]["inject-cni"], "u-1", auditAnnotations=audited)),
            soak.INCONSISTENT,
        ),
        "not-in-force": (verdict(200, _wire(right, "u-1"), frozenset({b})), soak.STALE),
    }
    for case, (got, outcome) in cases.items():
        assert got.outcome == outcome, (case, got)
        assert got.detail, case


# --- timelines and figures -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "values"),
    [
        pytest.param(0.0, 5.0, {"a"}, id="before-any-change"),
        pytest.param(-5.0, -1.0, {"a"}, id="before-the-start"),
        pytest.param(9.0, 10.0, {"a", "b"}, id="across-a-change"),
        pytest.param(10.0, 10.0, {"b"}, id="at-the-change"),
        pytest.param(11.0, 25.0, {"b", "c"}, id="from-one-change-to-the-next"),
        pytest.param(5.0, 99.0, {"a", "b", "c"}, id="everything"),
        pytest.param(30.0, 40.0, {"c"}, id="after-the-last"),
    ],
)
def test_timeline_window(start, end, values):
    timeline = soak.Timeline("a", 0.0)
    timeline.set(10.0, "b")
    timeline.set(20.0, "c")
    assert timeline.window(start, end) == frozenset(values)


def test_timeline_changes_skip_repeats_and_only_move_forward():
    timeline = soak.Timeline("a", 0.0)
    for at, value in ((1.0, "b"), (2.0, "b"), (3.0, "a")):
        timeline.set(at, value)
    assert timeline.changes() == [(1.0, "b"), (3.0, "a")]
    assert timeline.current() == "a"
    with pytest.raises(ValueError):
        timeline.set(2.5, "c")


def test_percentile_and_slope():
    assert soak.percentile([], 50) == 0.0
    values = [float(v) for v in range(1, 101)]
    assert soak.percentile(values, 50) == 50.0
    assert soak.percentile(values, 99) == 99.0
    assert soak.percentile(values, 100) == 100.0
    assert soak.slope_per_minute([(0.0, 100.0), (30.0, 110.0), (60.0, 120.0)]) == 20.0
    assert soak.slope_per_minute([(0.0, 100.0)]) == 0.0


@pytest.mark.parametrize(
    ("samples", "growth", "bounded"),
    [
        pytest.param([(0, 1000), (50, 1100), (100, 1100)], 0.0, True, id="flat-after-warm-up"),
        pytest.param([(0, 1000), (50, 1000), (100, 1040)], 0.04, True, id="four-percent"),
        pytest.param([(0, 1000), (50, 1000), (100, 1100)], 0.10, False, id="ten-percent"),
    ],
)
def test_memory_is_judged_on_the_second_half(samples, growth, bounded):
    memory = soak.memory_summary(samples)
    assert memory.first_kb == 1000 and memory.half_kb == samples[1][1]
    assert memory.max_kb == max(kb for _, kb in samples)
    assert memory.late_growth == pytest.approx(growth)
    assert memory.bounded is bounded


def test_growth_by_part():
    samples = [(0, 100), (10, 130), (20, 150), (30, 160)]
    assert soak.growth_by_part(samples) == [30, 20, 10]
    assert soak.growth_by_part([]) == []


def test_first_after():
    events = [(0.0, 0.5, "a"), (2.0, 2.25, "b"), (3.0, 3.1, "b")]
    assert soak.first_after(1.0, events, "b") == 1.25
    assert soak.first_after(2.5, events, "a") == -1.0


# --- certificates ------------------------------------------------------------------------------


def test_material_alternates_same_ca_and_new_ca():
    material = soak.make_material(3)
    assert [m.label for m in material] == ["ca0/cert0", "ca0/cert1", "ca1/cert2", "ca1/cert3"]
    assert material[0].ca == material[1].ca != material[2].ca == material[3].ca
    assert len({m.fingerprint for m in material}) == 4


def test_secret_volume_has_the_kubelet_layout_and_the_server_follows_it(tmp_path):
    first, second = soak.make_material(1)
    volume = soak.SecretVolume(tmp_path / "tls")
    volume.publish(first.files)
    served = ServingCertificate(volume.root)
    assert served.current.fingerprint == first.fingerprint
    volume.publish(second.files)
    root = volume.root
    for name in ("ca.crt", "tls.crt", "tls.key"):
        assert os.readlink(root / name) == f"..data/{name}"
    dirs = [p.name for p in root.iterdir() if p.name.startswith("..2")]
    assert dirs == [os.readlink(root / "..data")]  # the old generation is gone
    assert (root / "tls.key").stat().st_mode & 0o777 == 0o600
    assert served.check() is True
    assert served.current.fingerprint == second.fingerprint


def test_trust_holds_each_ca_once():
    first, _, third = soak.make_material(2)
    trust = soak.Trust([first.ca, first.ca])
    assert trust.cas == (first.ca,)
    trust.set([first.ca, third.ca])
    assert trust.cas == (first.ca, third.ca)
    assert len(trust.context().get_ca_certs()) == 2


# --- metrics and the report ----------------------------------------------------------------------


METRICS = """\
# TYPE meshgate_policy_reloads_total counter
meshgate_policy_reloads_total{result="success"} 3.0
meshgate_policy_reloads_total{result="invalid"} 2.0
# TYPE meshgate_admission_requests_total counter
meshgate_admission_requests_total{endpoint="mutate",operation="CREATE",outcome="skip"} 4.0
meshgate_admission_requests_total{endpoint="validate",operation="CREATE",outcome="allowed"} 6.0
# TYPE meshgate_certificate_reloads_total counter
meshgate_certificate_reloads_total{result="success"} 2.0
# TYPE meshgate_internal_errors_total counter
meshgate_internal_errors_total 0.0
"""


def test_metrics_are_read_and_summed():
    values = soak.parse_metrics(METRICS)
    assert soak.metric_sum(values, "meshgate_admission_requests_total") == 10
    assert soak.metric_sum(values, "meshgate_admission_requests_total", endpoint="mutate") == 4
    assert soak.metric_sum(values, "meshgate_policy_reloads_total", result="invalid") == 2
    assert soak.metric_sum(values, "meshgate_internal_errors_total") == 0


def _report(kinds: dict[str, soak.Kind], valid: dict[str, Any], failed: int = 0,
            reload_s: float = 1.05) -> soak.Report:  # fmt: skip
    a, b = valid["A"].version, valid["B"].version
    stats = soak.Stats()
    stats.dispatched, stats.dispatch_s = 4, 2.0
    for i, version in enumerate([a, a, b, b][failed:]):
        stats.add(soak.Verdict(soak.OK, version), "skip", i, i + 0.001, i + 0.003)
    for _ in range(failed):
        stats.add(soak.Verdict(soak.FAILED, detail="u: ConnectionResetError"), "skip", 0, 0, 0)
    stats.handshakes.append((0.0, 0.01, "f0"))
    flips = [soak.Flip(1.0, "B", b), soak.Flip(2.0, "invalid", b, "gate.action: bad"),
             soak.Flip(3.0, "A", a), soak.Flip(4.0, "invalid", a, "not YAML")]  # fmt: skip
    report = soak.Report(
        seconds=2.0, rate=2.0, connections=1, flip_every=1.0, rotate_every=20.0,
        versions={"A": a, "B": b}, kinds=list(kinds.values()), stats=stats, flips=flips,
        rotations=[soak.Rotation(1.0, "ca0/cert1", False, "f1", reload_s)],
        policy_latency_s=[0.004, 0.005], cert_latency_s=[1.1],
        memory=soak.memory_summary([(0, 1000), (1, 1000), (2, 1010)]),
        rss_samples=[(0, 1000), (1, 1000), (2, 1010)], ready_samples=3, not_ready=[],
        policy_error_samples=1,
        metrics=soak.parse_metrics(METRICS.replace(" 6.0", f" {float(6 - failed)}")),
        server_cpu_s=0.5, log_levels={"info": 10, "error": 2},
        log_messages={"error: invalid policy rejected": 2}, tracebacks=0, exit_code=0,
        stop_s=5.2, machine={"CPU": "test"}, command="make soak", elapsed_s=10.0,
    )  # fmt: skip
    report.checks = soak.evaluate(report)
    return report


def test_a_clean_run_passes_every_check_and_the_report_has_the_figures(kinds, valid):
    report = _report(kinds, valid)
    assert report.passed, [c for c in report.checks if not c[2]]
    text = soak.render(report)
    assert "**PASS**" in text
    assert "Requests sent 4 " in text and "failed 0" in text
    assert f"policy A ({valid['A'].version})" in text
    assert "first 1.0 MiB" in text
    assert "Command: `make soak`" in text


def test_a_failed_request_fails_the_run_and_is_shown(kinds, valid):
    report = _report(kinds, valid, failed=1)
    failing = [what for what, _, ok in report.checks if not ok]
    assert any(what.startswith("every request answered") for what in failing)
    text = soak.render(report)
    assert "**FAIL**" in text and "ConnectionResetError" in text


@pytest.mark.parametrize(
    "reload_s",
    [pytest.param(3.5, id="served-too-late"), pytest.param(-1.0, id="never-served")],
)
def test_a_rotation_not_served_in_time_fails_the_run(kinds, valid, reload_s):
    report = _report(kinds, valid, reload_s=reload_s)
    failing = [what for what, _, ok in report.checks if not ok]
    assert len(failing) == 1 and failing[0].startswith("each rotated certificate"), failing


# --- the audit wrapper -------------------------------------------------------------------------


def test_audit_reads_pins():
    text = "# comment\nfastapi==0.1  # why\n\nuvicorn[standard]>=1\norjson==3.0\n"
    assert audit.pinned(text) == ["fastapi==0.1", "orjson==3.0"]


@pytest.mark.parametrize(
    ("dependencies", "code"),
    [
        pytest.param([{"name": "a", "version": "1", "vulns": []},
                      {"name": "b", "version": "2", "vulns": []}], 0, id="clean"),
        pytest.param([{"name": "a", "version": "1", "vulns": [
            {"id": "PYSEC-1", "aliases": ["CVE-1"], "fix_versions": ["1.1"]}]},
            {"name": "b", "version": "2", "vulns": []}], 1, id="finding"),
        pytest.param([{"name": "a", "skip_reason": "Dependency not found on PyPI: a (1)"},
                      {"name": "b", "version": "2", "vulns": []}], 2, id="not-audited"),
        pytest.param([{"name": "b", "version": "2", "vulns": []}], 2, id="missing-from-report"),
    ],
)  # fmt: skip
def test_audit_verdict(dependencies, code):
    got, lines = audit.verdict(audit.read_report({"dependencies": dependencies}), pins=2)
    assert got == code
    if code == 1:
        assert any("VULNERABLE a==1: PYSEC-1 / CVE-1 (fixed in: 1.1)" in line for line in lines)
    if code == 2:
        assert "no verdict" in lines[-1]
