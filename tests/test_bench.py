"""The benchmark harness's pure parts: wrk output parsing, the request bodies, the floor app,
the arithmetic behind the targets and the report. The benchmark itself (`make bench`) is
not run here.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import gc
import re
import sys
from pathlib import Path
from typing import Any

import jsonpatch
import orjson
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import bodies, edge, floor, judging, run  # noqa: E402
from webhook.admission import admit, parse_review  # noqa: E402
from webhook.namespaces import parse_namespaces  # noqa: E402

WRK_OUTPUT = """\
Running 3s test @ https://127.0.0.1:9443/mutate
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     4.93ms    1.00ms  12.50ms   91.08%
    Req/Sec     3.25k   171.60     3.62k    77.42%
  10035 requests in 3.10s, 74.44MB read
Requests/sec:   3236.94
Transfer/sec:     24.01MB
wrk-result requests=10035 duration_us=3100148 p50_us=4719 p99_us=9574 mean_us=4925 \
connect=0 read=1 write=0 status=2 timeout=3
"""


@pytest.fixture(scope="module")
def all_bodies() -> dict[str, bodies.Body]:
    return {b.name: b for b in bodies.all_bodies()}


# --- wrk output --------------------------------------------------------------------------


def test_parse_wrk_reads_the_result_line():
    result = run.parse_wrk(WRK_OUTPUT)
    assert result.requests == 10035
    assert result.duration_s == pytest.approx(3.100148)
    assert result.rps == pytest.approx(10035 / 3.100148)
    assert (result.p50_ms, result.p99_ms, result.mean_ms) == pytest.approx((4.719, 9.574, 4.925))
    assert result.errors == 6


@pytest.mark.parametrize(
    "output",
    [
        pytest.param("Running 3s test\n10035 requests in 3.10s\n", id="no-result-line"),
        pytest.param("wrk-result requests=1 duration_us=2\n", id="missing-fields"),
        pytest.param("wrk-result requests=1 duration_us\n", id="field-without-value"),
    ],
)
def test_parse_wrk_rejects_output_without_a_complete_result(output):
    with pytest.raises(ValueError):
        run.parse_wrk(output)


def test_the_lua_script_prints_every_field_the_parser_reads():
    lua = (ROOT / "bench" / "post.lua").read_text()
    keys = re.findall(r"(\w+)=%d", lua)
    line = "wrk-result " + " ".join(f"{k}={n}" for n, k in enumerate(keys, start=1))
    result = run.parse_wrk(line)  # raises if the script lacks a field the parser needs
    assert result.requests == keys.index("requests") + 1
    assert 'wrk.headers["Content-Type"] = "application/json"' in lua
    assert 'wrk.method = "POST"' in lua


def test_a_run_without_time_has_no_rate():
    assert run.WrkResult(0, 0.0, 0.0, 0.0, 0.0, 0).rps == 0.0


# --- bodies ------------------------------------------------------------------------------


def test_the_injecting_pod_is_a_realistic_deployment_pod_of_3_to_4_kb(all_bodies):
    pod = all_bodies["inject-cni"].pod
    assert 3000 <= len(orjson.dumps(pod)) <= 4000
    meta, spec = pod["metadata"], pod["spec"]
    assert meta["ownerReferences"][0]["kind"] == "ReplicaSet"
    assert meta["ownerReferences"][0]["controller"] is True
    assert "pod-template-hash" in meta["labels"]
    sources = [v["projected"]["sources"] for v in spec["volumes"] if "projected" in v]
    assert any("serviceAccountToken" in s for s in sources[0])
    container = spec["containers"][0]
    for field in ("livenessProbe", "readinessProbe", "resources", "env"):
        assert container[field]


@pytest.mark.parametrize(
    ("name", "containers", "env_vars"),
    [
        pytest.param("env-150", 10, 150, id="150-vars"),
        pytest.param("env-1500", 30, 1_500, id="1500-vars"),
        pytest.param("env-15000", 60, 15_000, id="15000-vars"),
    ],
)
def test_the_large_pods_have_the_stated_containers_and_env_vars(
    all_bodies, name, containers, env_vars
):
    pod = all_bodies[name].pod
    assert len(pod["spec"]["containers"]) == containers
    assert sum(len(c["env"]) for c in pod["spec"]["containers"]) == env_vars
    names = [e["name"] for c in pod["spec"]["containers"] for e in c["env"]]
    assert len(set(names)) == env_vars


def test_every_body_is_a_v1_admission_review_with_its_own_uid(all_bodies):
    uids = set()
    for body in all_bodies.values():
        request = parse_review(body.encode())
        assert request["namespace"] == body.pod["metadata"]["namespace"]
        uids.add(request["uid"])
    assert len(uids) == len(all_bodies)


def test_the_namespaces_file_gives_the_intended_labels():
    namespaces = parse_namespaces(bodies.namespaces_yaml())
    assert namespaces(bodies.CNI_NAMESPACE)["istio-injection"] == "enabled"
    assert namespaces(bodies.INIT_NAMESPACE)["meshgate.io/mode"] == "init"
    assert namespaces(bodies.SKIP_NAMESPACE)["istio-injection"] == "disabled"


@pytest.mark.parametrize(
    ("name", "decision"),
    [
        pytest.param("inject-cni", "inject:cni", id="inject-cni"),
        pytest.param("inject-init", "inject:init", id="inject-init"),
        pytest.param("skip", "skip", id="skip"),
        pytest.param("deny", "denied", id="deny"),
        pytest.param("validate", "allowed", id="validate"),
        pytest.param("env-1500", "inject:cni", id="env-1500"),
    ],
)
def test_each_body_gets_the_answer_it_stands_for(all_bodies, name, decision):
    body = all_bodies[name]
    outcome = admit(parse_review(body.encode()), body.endpoint, bodies.context())
    assert outcome.decision == decision
    assert outcome.allowed is body.expect_allowed
    assert bool(outcome.patch) is body.expect_patch
    if outcome.patch:
        patched = jsonpatch.apply_patch(copy.deepcopy(body.pod), list(outcome.patch))
        assert "istio-proxy" in [c["name"] for c in patched["spec"]["containers"]]


def test_validate_carries_the_injected_pod(all_bodies):
    original = all_bodies["inject-cni"]
    outcome = admit(parse_review(original.encode()), "mutate", bodies.context())
    expected = jsonpatch.apply_patch(copy.deepcopy(original.pod), list(outcome.patch))
    assert all_bodies["validate"].pod == expected
    assert all_bodies["validate"].endpoint == "validate"


def test_write_puts_each_body_in_its_own_file(tmp_path, all_bodies):
    chosen = [all_bodies["skip"], all_bodies["deny"]]
    paths = bodies.write(chosen, tmp_path / "out")
    assert set(paths) == {"skip", "deny"}
    assert orjson.loads(paths["deny"].read_bytes()) == all_bodies["deny"].review


# --- the floor app -----------------------------------------------------------------------


def _call_floor(method: str, chunks: list[bytes]) -> tuple[int, Any]:
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": "/mutate", "headers": []}
    asyncio.run(floor.app(scope, receive, send))
    start, body = sent
    length = dict(start["headers"])[b"content-length"]
    assert int(length) == len(body["body"])
    return start["status"], orjson.loads(body["body"])


def test_the_floor_allows_with_the_uid_reading_the_whole_body(all_bodies):
    raw = all_bodies["inject-cni"].encode()
    status, answer = _call_floor("POST", [raw[:1000], raw[1000:3000], raw[3000:]])
    assert status == 200
    assert answer == {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": all_bodies["inject-cni"].review["request"]["uid"], "allowed": True},
    }


@pytest.mark.parametrize(
    "raw",
    [pytest.param(b"not json", id="not-json"), pytest.param(b"[1]", id="not-a-review")],
)
def test_the_floor_answers_400_to_junk(raw):
    assert _call_floor("POST", [raw])[0] == 400


# --- arithmetic and targets --------------------------------------------------------------


def _result(rps: float, p50: float, p99: float | None = None, errors: int = 0) -> run.WrkResult:
    return run.WrkResult(int(rps * 2), 2.0, p50, p99 if p99 is not None else p50 * 2, p50, errors)


def test_summarize_takes_medians_and_sums_errors():
    s = run.summarize([_result(100, 3.0), _result(300, 1.0, errors=1), _result(200, 2.0)])
    assert (s.rps, s.p50_ms, s.p99_ms, s.errors) == (200, 2.0, 4.0, 1)
    with pytest.raises(ValueError):
        run.summarize([])


def test_server_cpu_is_counted_per_request_and_summarized_by_median():
    runs = [dataclasses.replace(_result(1000, 1.0), server_cpu_s=cpu) for cpu in (0.1, 0.3, 0.2)]
    assert [r.cpu_us for r in runs] == pytest.approx([50.0, 150.0, 100.0])  # 2,000 requests
    assert run.summarize(runs).cpu_us == pytest.approx(100.0)
    assert run.WrkResult(0, 2.0, 1.0, 1.0, 1.0, 0, server_cpu_s=0.5).cpu_us == 0.0


def _with_cpu(rps: float, p50: float, cpu_us: float) -> run.Summary:
    """One round of `rps` over 2 s whose server spent `cpu_us` per request."""
    result = _result(rps, p50)
    return run.summarize([dataclasses.replace(result, server_cpu_s=cpu_us * 2 * rps / 1e6)])


def test_cpu_allowed_by_a_throughput_target():
    c = run.Comparison(_with_cpu(1000, 1.0, 60), run.summarize([_result(600, 1.5)]))
    assert c.cpu_allowed_us(0.6) == pytest.approx(100.0)


def test_the_edge_server_judges_once_per_endpoint_and_echoes_each_uid(all_bodies):
    calls = []

    def admit_counting(request, endpoint, context):
        calls.append(endpoint)
        return admit(request, endpoint, context)

    repeat = edge.judged_once(admit_counting)
    context = bodies.context()
    for name, endpoint in (("inject-cni", "mutate"), ("validate", "validate")):
        body = all_bodies[name]
        first = repeat(parse_review(body.encode()), endpoint, context)
        again = copy.deepcopy(body.review)
        again["request"]["uid"] = "another-uid"
        later = repeat(parse_review(orjson.dumps(again)), endpoint, context)
        assert later.review["response"]["uid"] == "another-uid"
        assert first.review["response"]["uid"] == body.review["request"]["uid"]
        rest = {k: v for k, v in later.review["response"].items() if k != "uid"}
        assert rest == {k: v for k, v in first.review["response"].items() if k != "uid"}
        assert later.decision == first.decision
    assert calls == ["mutate", "validate"]


def test_servers_and_wrk_get_different_cpus_when_there_are_two():
    assert run.cpu_plan({0, 1}) == (1, 0)
    assert run.cpu_plan({2, 5, 7}) == (7, 2)
    assert run.cpu_plan({3}) == (None, None)
    assert run.pinned(None) is None


def test_judging_time_times_admit_alone(all_bodies):
    spent = judging.judging_time(all_bodies["inject-cni"], repeats=1, calls=20)
    assert 0 < spent < 100_000
    assert not gc.isenabled() or gc.get_freeze_count() == 0  # the freeze is undone


def test_the_judging_command_prints_json_and_refuses_unknown_bodies(capsys):
    assert judging.main(["skip"]) == 0
    printed = orjson.loads(capsys.readouterr().out)
    assert list(printed) == ["skip"] and printed["skip"] > 0
    assert judging.main(["no-such-body"]) == 2
    assert "unknown bodies: no-such-body" in capsys.readouterr().err


def test_comparison_ratios_and_overhead():
    c = run.Comparison(run.summarize([_result(1000, 1.0)]), run.summarize([_result(600, 1.5)]))
    assert c.throughput_ratio == pytest.approx(0.6)
    assert c.p50_ratio == pytest.approx(1.5)
    assert c.overhead_ms == pytest.approx(0.5)


def test_drift_is_relative_change():
    assert run.drift(100, 105) == pytest.approx(0.05)
    assert run.drift(100, 90) == pytest.approx(-0.10)


def _results(
    mutate: tuple[float, float] = (600, 1.6),
    validate_rps: float = 700,
    overhead_1500: float = 1.0,
    overhead_15000: float = 12.0,
    p50_1500: float = 9.9,
) -> dict[tuple[str, int], run.Comparison]:
    """Comparisons against a floor of 1000 req/s and p50 1 ms (large pods: p50 as given)."""

    def cmp(rps: float, floor_p50: float, p50: float) -> run.Comparison:
        floor_rounds = [_result(1000, floor_p50)]
        return run.Comparison(run.summarize(floor_rounds), run.summarize([_result(rps, p50)]))

    out = {(c.body, c.concurrency): cmp(500, 1.0, 2.0) for c in run.cells()}
    out[("inject-cni", 16)] = cmp(mutate[0], 1.0, mutate[1])
    out[("validate", 16)] = cmp(validate_rps, 1.0, 1.0)
    out[("env-1500", 1)] = cmp(100, p50_1500 - overhead_1500, p50_1500)
    out[("env-15000", 1)] = cmp(10, 50.0, 50.0 + overhead_15000)
    return out


def _verdicts(results, rss=(100_000, 105_000)) -> list[bool]:
    return [t.passed for t in run.evaluate_targets(results, rss)]


def test_targets_pass_exactly_at_their_limits():
    assert _verdicts(_results()) == [True] * 7


@pytest.mark.parametrize(
    ("results", "rss", "failing"),
    [
        pytest.param(_results(mutate=(599, 1.0)), None, 0, id="mutate-throughput"),
        pytest.param(_results(mutate=(900, 1.61)), None, 1, id="mutate-p50"),
        pytest.param(_results(validate_rps=699), None, 2, id="validate-throughput"),
        pytest.param(_results(overhead_15000=12.1), None, 3, id="superlinear-growth"),
        pytest.param(_results(overhead_1500=-0.1), None, 3, id="no-overhead-at-1500"),
        pytest.param(_results(p50_1500=10.0), None, 4, id="1500-vars-too-slow"),
        pytest.param(_results(), (100_000, 105_100), 5, id="memory-grows"),
        pytest.param(_results(), (100_000, 94_000), 5, id="memory-shrinks-a-lot"),
    ],
)
def test_each_target_fails_just_past_its_limit(results, rss, failing):
    verdicts = _verdicts(results, rss or (100_000, 100_000))
    assert verdicts[failing] is False
    assert verdicts.count(False) == 1


def test_sizing_fails_on_errors():
    results = _results()
    c64 = results[("inject-cni", 64)]
    bad = run.summarize([_result(500, 2.0, errors=3)])
    results[("inject-cni", 64)] = run.Comparison(c64.floor, bad)
    assert _verdicts(results)[-1] is False


def test_cells_cover_every_figure_once():
    cells = run.cells()
    assert len(cells) == len(set(cells))
    keys = {(c.body, c.concurrency) for c in cells}
    assert {(b, 16) for b in run.MAIN_BODIES} <= keys
    assert {(b, 1) for b in run.SIZE_BODIES} <= keys
    assert {("inject-cni", c) for c in (1, 16, 64)} <= keys


def test_render_reports_every_table_and_verdict(all_bodies):
    results = _results(mutate=(200, 5.0))
    # CPU-bound at c=16: the floor at 60 µs a request, meshgate at 200, without judging 80.
    results[("inject-cni", 16)] = run.Comparison(_with_cpu(1000, 1.0, 60), _with_cpu(200, 5.0, 200))
    report = run.Report(
        results=results,
        bodies=all_bodies,
        rss_kb=[90_000, 91_000],
        served=[10_200, 100_400],
        peak_rss_kb=120_000,
        total_requests=150_000,
        machine={"CPU": "Test CPU", "Python": "CPython 3.11"},
        command="make bench",
        rounds=1,
        seconds=3,
        elapsed_s=300.0,
        judging_us={"inject-cni": 87.4, "validate": 33.2, "env-15000": 1480.2},
        edge={"inject-cni": _with_cpu(750, 1.2, 80),
              "validate": run.summarize([_result(800, 1.1)])},
    )
    text = run.render(report)
    assert text.count("**FAIL**") == 2 and text.count("**PASS**") == 5
    for heading in ("## Targets", "## Request kinds at c=16", "## Where the time goes",
                    "## Pod size at c=1", "## Sizing", "## Memory", "## Machine",
                    "## Every round"):  # fmt: skip
        assert heading in text
    where = text.split("## Where the time goes")[1].split("##")[0]
    # allowed 60 / 0.6 = 100; judging in the server 200 - 80; left for judging 100 - 80;
    # without judging: 750 of the floor's 1,000 req/s.
    assert "| `inject-cni` | 60 | 200 | 100 | 80 | 0.75 | 120 | 20 | 87 |" in where
    assert "| 33 |" in where
    assert "| `skip` |" in where and where.count("– |") >= 3  # no target, no judging figure
    assert "| `validate` c=16 | meshgate without judging | 800; 1.10 |" in text
    sizes = text.split("## Pod size")[1].split("##")[0]
    assert sizes.count("| 1,480 |") == 1 and sizes.count("– |") == 2  # env-150, env-1500
    assert "Test CPU" in text and "`make bench`" in text
    assert "VmRSS after 100,400 requests" in text


# --- /proc and Prometheus text -----------------------------------------------------------


def test_metrics_total_sums_every_label_set():
    text = """\
# HELP meshgate_admission_requests_total Admission requests answered.
# TYPE meshgate_admission_requests_total counter
meshgate_admission_requests_total{endpoint="mutate",operation="CREATE",outcome="inject:cni"} 19176.0
meshgate_admission_requests_total{endpoint="validate",operation="CREATE",outcome="allowed"} 24.0
meshgate_admission_requests_created{endpoint="mutate"} 1.7e9
"""
    assert run.metrics_total(text) == 19200


def test_status_kb_and_cpu_model():
    status = "Name:\tpython\nVmHWM:\t   96700 kB\nVmRSS:\t   88000 kB\n"
    assert run.status_kb(status, "VmRSS") == 88000
    assert run.status_kb(status, "VmHWM") == 96700
    with pytest.raises(ValueError):
        run.status_kb(status, "VmSwap")
    cpuinfo = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R)\n"
    assert run.cpu_model(cpuinfo) == "Intel(R) Xeon(R)"


def test_cpu_accounting_reads_proc_stat_and_process_stat():
    stat = "cpu  100 20 30 1000 5 6 7 8 0 0\ncpu0 50 10 15 500 2 3 3 4 0 0\n"
    busy, steal = run.cpu_seconds(stat, ticks=100)
    assert busy == pytest.approx((100 + 20 + 30) / 100)
    assert steal == pytest.approx(0.08)
    with pytest.raises(ValueError):
        run.cpu_seconds("intr 1 2 3\n", ticks=100)
    # A command name with spaces and a parenthesis must not shift the fields.
    proc = "4242 (python (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0"
    assert run.process_cpu_seconds(proc, ticks=100) == pytest.approx(3.0)


def test_the_chart_is_a_png(tmp_path, all_bodies):
    pytest.importorskip("matplotlib")
    results = _results()
    results[("env-15000", 1)] = run.Comparison(
        run.summarize([_result(10, 50.0)]), run.summarize([_result(10, 49.0)])
    )  # a negative difference (noise) must not break the log scale
    report = run.Report(results, all_bodies, [1, 1], [1, 1], 1, 1, {}, "make bench", 1, 3, 1.0)
    run.plot(report, tmp_path / "chart.png")
    assert (tmp_path / "chart.png").read_bytes().startswith(b"\x89PNG")


def test_growth_target_reads_a_negative_difference_as_noise_not_as_growth():
    targets = run.evaluate_targets(_results(overhead_15000=-1.0), (100, 100))
    growth = targets[3]
    assert growth.passed is True
    assert "noise" in growth.measured


@pytest.mark.parametrize(
    ("other_cores", "warned"),
    [pytest.param(0.05, False, id="quiet"), pytest.param(0.9, True, id="busy")],
)
def test_render_warns_when_other_processes_took_cpu(all_bodies, other_cores, warned):
    report = run.Report(
        _results(), all_bodies, [1, 1], [1, 1], 1, 1, {}, "make bench", 1, 3, 1.0,
        other_cores=other_cores,
    )  # fmt: skip
    assert ("**Warning: other processes used" in run.render(report)) is warned
