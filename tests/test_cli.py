"""The `meshgate` command: explain (SPEC 7) and serve --dev (SPEC 1), in-process and as the
installed console script."""

from __future__ import annotations

import base64
import contextlib
import copy
import functools
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import jsonpatch
import pytest
import yaml
from helpers import (
    SCRIPT,
    admission_review,
    client_context,
    free_port,
    meshgate_command,
    run_meshgate,
    stop_process,
    wait_for,
)

from webhook.cli import main
from webhook.policy import default_policy

ROOT = Path(__file__).resolve().parent.parent
BOOKINFO = ROOT / "tests" / "corpus" / "apps" / "istio-samples" / "bookinfo.yaml"
BOOKINFO_DEPLOYMENTS = [
    "details-v1", "ratings-v1", "reviews-v1", "reviews-v2", "reviews-v3", "productpage-v1",
]  # fmt: skip
ENABLED = "istio-injection=enabled"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def blocks(text: str) -> dict[str, str]:
    """The text output split into one block per object, keyed by its title line."""
    found: dict[str, str] = {}
    for block in text.split("\n\n"):
        lines = block.strip("\n").splitlines()
        if lines:
            found[lines[0]] = "\n".join(lines[1:])
    return found


def bookinfo_templates() -> dict[str, dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(BOOKINFO.read_text()) if d]
    return {d["metadata"]["name"]: d["spec"]["template"] for d in docs
            if d["kind"] == "Deployment"}  # fmt: skip


def as_pod(template: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": copy.deepcopy(template["metadata"]),
            "spec": copy.deepcopy(template["spec"])}  # fmt: skip


def write_namespaces(path: Path, labels: dict[str, dict[str, str]]) -> Path:
    docs = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": value}}
        for name, value in labels.items()
    ]
    path.write_text(yaml.safe_dump_all(docs))
    return path


# ---------------------------------------------------------------------------------------
# explain, text


def test_explain_text_shows_decision_reasons_gate_and_patch(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(capsys, "explain", str(BOOKINFO), "--namespace-labels", ENABLED)
    assert code == 0, err
    found = blocks(out)
    for name in BOOKINFO_DEPLOYMENTS:
        titles = [t for t in found if t.startswith(f"Deployment default/{name}")]
        assert len(titles) == 1, (name, list(found))
        block = found[titles[0]]
        assert "decision: inject:cni" in block
        reasons = [line for line in block.splitlines() if line.strip().startswith("- ")]
        assert reasons, block
        assert any('"default"' in r and "namespaces[2]" in r for r in reasons), reasons
        assert "gate:" in block
        ops = [json.loads(line) for line in block.splitlines()
               if line.strip().startswith('{"op"')]  # fmt: skip
        assert ops and all(op["op"] in ("add", "remove", "replace") for op in ops)
        assert any(op["path"].startswith("/spec/containers") for op in ops)
        validate = [line for line in block.splitlines() if "/validate" in line]
        assert validate and "allowed" in validate[0]
    # Services and ServiceAccounts are listed, not judged.
    assert any(t.startswith("Service default/details") for t in found)
    assert default_policy().version in out


def test_explain_text_shows_a_denial(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    docs = [d for d in yaml.safe_load_all(BOOKINFO.read_text()) if d]
    deployment = next(d for d in docs if d.get("metadata", {}).get("name") == "ratings-v1")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"] = {"capabilities": {"add": ["NET_ADMIN"]}}
    path = tmp_path / "ratings.yaml"
    path.write_text(yaml.safe_dump(deployment))
    code, out, err = run(capsys, "explain", str(path), "--namespace-labels", ENABLED)
    assert code == 0, err
    block = blocks(out)["Deployment default/ratings-v1 (pod template)"]
    assert "DENIED" in block
    assert "NET_ADMIN" in block
    assert '"ratings"' in block
    validate = [line for line in block.splitlines() if "/validate" in line]
    assert validate and "DENIED" in validate[0] and "NET_ADMIN" in validate[0]


# ---------------------------------------------------------------------------------------
# explain, json


def explain_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    code, out, err = run(capsys, "explain", str(BOOKINFO), "-o", "json", *args)
    assert code == 0, err
    parsed: dict[str, Any] = json.loads(out)
    return parsed


def deployment_results(output: dict[str, Any]) -> dict[str, dict[str, Any]]:
    results = {}
    for result in output["results"]:
        title = result["object"]
        if title.startswith("Deployment "):
            name = title.split("/", 1)[1].split(" ", 1)[0]
            results[name] = result
    assert sorted(results) == sorted(BOOKINFO_DEPLOYMENTS)
    return results


def test_explain_json_patches_apply_to_each_template(capsys: pytest.CaptureFixture[str]) -> None:
    output = explain_json(capsys, "--namespace-labels", ENABLED)
    assert output["policy"] == default_policy().version
    templates = bookinfo_templates()
    for name, result in deployment_results(output).items():
        mutate = result["mutate"]
        assert mutate["allowed"] is True
        assert mutate["decision"] == "inject:cni"
        assert mutate["reasons"]
        assert mutate["gate"]
        pod = as_pod(templates[name])
        injected = jsonpatch.apply_patch(copy.deepcopy(pod), mutate["patch"])
        names = [c["name"] for c in injected["spec"]["containers"]]
        assert names == [c["name"] for c in pod["spec"]["containers"]] + ["istio-proxy"]
        annotations = injected["metadata"]["annotations"]
        assert annotations["k8s.v1.cni.cncf.io/networks"] == "istio-cni"
        assert json.loads(annotations["sidecar.istio.io/status"])["containers"] == ["istio-proxy"]
        assert annotations["meshgate.io/injected"] == f"cni@{output['policy']}"
        assert pod["metadata"]["labels"].items() <= injected["metadata"]["labels"].items()
        assert result["validate"]["allowed"] is True


def test_explain_with_a_namespaces_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    enabled = write_namespaces(tmp_path / "ns.yaml", {"default": {"istio-injection": "enabled"},
                                                     "other": {}})  # fmt: skip
    for result in deployment_results(explain_json(capsys, "--namespaces-file",
                                                  str(enabled))).values():  # fmt: skip
        assert result["mutate"]["decision"] == "inject:cni"
    # The same file without labels for "default": the default rule is opt-in.
    plain = write_namespaces(tmp_path / "plain.yaml", {"default": {}})
    for result in deployment_results(explain_json(capsys, "--namespaces-file",
                                                  str(plain))).values():  # fmt: skip
        assert result["mutate"]["decision"] == "skip"
        assert result["mutate"]["patch"] == []


def test_explain_with_a_namespace_list_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "list.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": "default", "labels": {"istio-injection": "enabled"}}}]}))  # fmt: skip
    for result in deployment_results(explain_json(capsys, "--namespaces-file",
                                                  str(path))).values():  # fmt: skip
        assert result["mutate"]["decision"] == "inject:cni"


def test_explain_disabled_namespace_skips(capsys: pytest.CaptureFixture[str]) -> None:
    output = explain_json(capsys, "--namespace-labels", "istio-injection=disabled")
    for result in deployment_results(output).values():
        assert result["mutate"]["allowed"] is True
        assert result["mutate"]["decision"] == "skip"
        assert result["mutate"]["patch"] == []
        assert any("disabled" in r for r in result["mutate"]["reasons"])
    code, out, _ = run(capsys, "explain", str(BOOKINFO), "--namespace-labels",
                       "istio-injection=disabled")  # fmt: skip
    assert code == 0
    for name in BOOKINFO_DEPLOYMENTS:
        block = blocks(out)[f"Deployment default/{name} (pod template)"]
        assert "decision: skip" in block
        assert "patch: none" in block


def test_explain_reads_standard_input(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO(BOOKINFO.read_text()))
    code, out, err = run(capsys, "explain", "-", "-o", "json", "--namespace-labels", ENABLED)
    assert code == 0, err
    assert len(deployment_results(json.loads(out))) == len(BOOKINFO_DEPLOYMENTS)


# ---------------------------------------------------------------------------------------
# explain, bad input: exit 2 and a clear message


def test_explain_malformed_yaml_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: [unclosed\n")
    code, out, err = run(capsys, "explain", str(path))
    assert code == 2
    assert str(path) in err
    assert "YAML" in err
    assert "Traceback" not in err
    assert out == ""


def test_explain_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nope.yaml"
    code, _, err = run(capsys, "explain", str(path))
    assert code == 2
    assert str(path) in err
    assert "no such file" in err.lower()


@pytest.mark.parametrize(
    ("content", "words"),
    [
        pytest.param("kind: [", "YAML", id="malformed"),
        pytest.param("kind: ConfigMap\nmetadata: {name: x}\n", "Namespace", id="not-namespaces"),
    ],
)
def test_explain_bad_namespaces_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, words: str
) -> None:
    path = tmp_path / "ns.yaml"
    path.write_text(content)
    code, _, err = run(capsys, "explain", str(BOOKINFO), "--namespaces-file", str(path))
    assert code == 2
    assert words in err


def test_explain_missing_namespaces_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "absent.yaml"
    code, _, err = run(capsys, "explain", str(BOOKINFO), "--namespaces-file", str(path))
    assert code == 2
    assert str(path) in err


def test_explain_bad_namespace_labels_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "explain", str(BOOKINFO), "--namespace-labels", "novalue")
    assert code == 2
    assert "novalue" in err


# ---------------------------------------------------------------------------------------
# the console script and python -m webhook


def test_console_script_explain_json() -> None:
    result = run_meshgate("explain", str(BOOKINFO), "-o", "json", "--namespace-labels", ENABLED)
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    results = deployment_results(output)
    assert {r["mutate"]["decision"] for r in results.values()} == {"inject:cni"}


def test_console_script_is_installed() -> None:
    if not SCRIPT.exists():
        pytest.skip("no console script next to this interpreter (package not installed)")
    result = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True,
                            timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0
    assert "serve" in result.stdout and "explain" in result.stdout


def test_python_dash_m_webhook_help() -> None:
    result = subprocess.run([sys.executable, "-m", "webhook", "--help"], capture_output=True,
                            text=True, timeout=60, check=False, cwd=ROOT)  # fmt: skip
    assert result.returncode == 0, result.stderr
    for word in ("meshgate", "serve", "explain", "policy"):
        assert word in result.stdout


@functools.cache
def _serve_help() -> str:
    result = run_meshgate("serve", "--help")
    assert result.returncode == 0
    return result.stdout


@pytest.mark.parametrize(
    "flag",
    [
        "--policy", "--namespaces-file", "--namespace", "--cert-dir", "--host", "--port",
        "--dev",
    ],
)  # fmt: skip
def test_serve_has_the_spec_flags(flag: str) -> None:
    assert re.search(rf"(^|\s){re.escape(flag)}(\s|$)", _serve_help()), flag


# ---------------------------------------------------------------------------------------
# serve


def _isolated_env(tmp_path: Path) -> dict[str, str]:
    """This environment with $KUBECONFIG naming a kubeconfig without any cluster."""
    env = dict(os.environ)
    # --dev never contacts a cluster, whatever KUBECONFIG says.
    bogus = tmp_path / "kubeconfig"
    bogus.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\n"
                     "current-context: nowhere\nusers: []\n")  # fmt: skip
    env["KUBECONFIG"] = str(bogus)
    return env


def _serve_dev(tmp_path: Path, port: int, cert_dir: Path,
               *args: str) -> subprocess.Popen[str]:  # fmt: skip
    """`meshgate serve --dev` without a drain, its stdout and stderr piped."""
    return subprocess.Popen(
        [*meshgate_command(), "serve", "--dev", "--port", str(port), "--cert-dir",
         str(cert_dir), *args, "--drain-seconds", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_isolated_env(tmp_path),
        cwd=tmp_path,
    )  # fmt: skip


def _wait_until_listening(process: subprocess.Popen[str], port: int) -> None:
    """Until `process` accepts connections on 127.0.0.1:`port`; fails if it exits first."""

    def listening() -> bool:
        assert process.poll() is None, "meshgate serve --dev exited early"
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        return False

    wait_for(listening, "meshgate serve --dev to listen", timeout=30, interval=0.1)


def test_serve_dev_generates_certs_and_injects(tmp_path: Path) -> None:
    cert_dir = tmp_path / "certs"
    namespaces = write_namespaces(tmp_path / "ns.yaml", {"shop": {"istio-injection": "enabled"}})
    port = free_port()
    process = _serve_dev(tmp_path, port, cert_dir, "--namespaces-file", str(namespaces))
    stderr = ""
    try:
        _wait_until_listening(process, port)
        for name in ("ca.crt", "tls.crt", "tls.key"):
            assert (cert_dir / name).is_file(), name
        trust = client_context(cert_dir / "ca.crt")
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "cart"},
            "spec": {"containers": [{"name": "cart", "image": "example.com/cart:1"}]},
        }
        body = admission_review(pod, uid="dev-uid-1", namespace="shop")
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=trust,
                          timeout=10) as client:  # fmt: skip
            assert client.get("/healthz").status_code == 200
            ready = client.get("/readyz")
            assert ready.status_code == 200
            assert default_policy().version in ready.text
            response = client.post("/mutate", json=body)
            assert response.status_code == 200
            answer = response.json()["response"]
            assert answer["uid"] == "dev-uid-1"
            assert answer["allowed"] is True
            assert answer["patchType"] == "JSONPatch"
            ops = json.loads(base64.b64decode(answer["patch"]))
            injected = jsonpatch.apply_patch(copy.deepcopy(pod), ops)
            assert [c["name"] for c in injected["spec"]["containers"]] == ["cart", "istio-proxy"]
            # A namespace not in the file has no labels: the default rule is opt-in.
            body["request"]["namespace"] = "elsewhere"
            assert "patch" not in client.post("/mutate", json=body).json()["response"]
    finally:
        _, stderr = stop_process(process, timeout=30, kill_timeout=30)
    # Listening on 127.0.0.1 only with --dev, and one JSON log line per request (SPEC 6).
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    logged = [entry for entry in lines if entry.get("uid") == "dev-uid-1"]
    assert logged, stderr
    for key in ("namespace", "pod", "operation", "decision", "reason"):
        assert key in logged[0], (key, logged[0])
    assert logged[0]["namespace"] == "shop"
    # The start-up heap is frozen out of the collector's sight (see cmd_serve).
    serving = [entry for entry in lines if entry.get("msg") == "serving"]
    assert serving and serving[0]["gcFrozenObjects"] > 10_000, serving


def test_serve_dev_listens_on_loopback_only(tmp_path: Path) -> None:
    """--dev defaults to 127.0.0.1: the throwaway CA must never serve the network."""
    port = free_port()
    process = _serve_dev(tmp_path, port, tmp_path / "certs")
    try:
        _wait_until_listening(process, port)
        listening = Path("/proc/net/tcp")
        if not listening.exists():
            pytest.skip("no /proc/net/tcp to inspect")
        local = [line.split()[1] for line in listening.read_text().splitlines()[1:]
                 if line.split()[3] == "0A"]  # fmt: skip
        ours = [addr for addr in local if int(addr.split(":")[1], 16) == port]
        assert ours == ["0100007F:" + f"{port:04X}"], ours
    finally:
        stop_process(process, timeout=30, kill_timeout=30)


def test_serve_without_certs_and_without_dev_exits_2(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_meshgate("serve", "--cert-dir", str(empty), "--port", str(free_port()),
                          env=_isolated_env(tmp_path))  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "tls.crt" in result.stderr or "tls.key" in result.stderr
    assert "--dev" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(empty.iterdir()) == []  # nothing generated without --dev


def test_serve_without_cert_dir_and_without_dev_exits_2(tmp_path: Path) -> None:
    if Path("/etc/meshgate/tls/tls.crt").exists():
        pytest.skip("this machine has cluster certificates in the default directory")
    result = run_meshgate("serve", "--port", str(free_port()), env=_isolated_env(tmp_path),
                          cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "does not exist" in result.stderr
    assert "Traceback" not in result.stderr
