"""`meshgate serve` as a subprocess against the fake API server (tests/fakeapi.py): the
policy and the namespace labels come from the cluster (SPEC 1 flags, SPEC 3 "Where the
policy comes from"), and without any cluster configuration it either refuses to start
(exit 2) or serves offline from files.
"""

from __future__ import annotations

import base64
import copy
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import yaml
from fakeapi import FakeAPIServer
from helpers import (
    Served,
    admission_review,
    free_port,
    isolated_env,
    make_cert_dir,
    run_meshgate,
)

from webhook.sources import parse_policy_text

OWN = "meshgate-system"
POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "cart"},
    "spec": {"containers": [{"name": "cart", "image": "example.com/cart:1"}]},
}


@pytest.fixture
def cert_dir(tmp_path: Path) -> Path:
    return make_cert_dir(tmp_path / "tls", "meshgate-serve-test-ca")


def policy_configmap(text: str) -> dict[str, Any]:
    return {"metadata": {"namespace": OWN, "name": "meshgate-policy"},
            "data": {"policy.yaml": text}}  # fmt: skip


def review(namespace: str, uid: str) -> dict[str, Any]:
    return admission_review(POD, uid=uid, namespace=namespace)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[FakeAPIServer]:
    with FakeAPIServer(tmp_path / "api", bookmark_interval=0.5) as server:
        yield server


def test_serve_follows_the_cluster(api: FakeAPIServer, tmp_path: Path, cert_dir: Path) -> None:
    first, second = "gate: {action: warn}", "cni: {network: tenant-net}"
    first_version, second_version = (parse_policy_text(t).version for t in (first, second))
    shop = {"name": "shop", "labels": {"istio-injection": "enabled"}}
    api.upsert("namespaces", {"metadata": shop})
    api.upsert("configmaps", policy_configmap(first))
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    served = Served(["--kubeconfig", str(kubeconfig), "--namespace", OWN],
                    isolated_env(tmp_path), tmp_path, cert_dir)  # fmt: skip
    code: int | None = None
    try:
        status = served.wait(served.readyz, "/readyz 200")
        assert status["policy"] == first_version
        assert f"ConfigMap {OWN}/meshgate-policy" in status["policySource"]

        response = served.client.post("/mutate", json=review("shop", "serve-1"))
        assert response.status_code == 200
        answer = response.json()["response"]
        assert answer["uid"] == "serve-1" and answer["allowed"] is True
        assert answer["auditAnnotations"]["policy"] == first_version
        ops = json.loads(base64.b64decode(answer["patch"]))
        pod = jsonpatch.apply_patch(copy.deepcopy(POD), ops)
        assert [c["name"] for c in pod["spec"]["containers"]] == ["cart", "istio-proxy"]
        assert pod["metadata"]["annotations"]["meshgate.io/injected"] == f"cni@{first_version}"
        assert pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"] == "istio-cni"

        api.upsert("configmaps", policy_configmap(second))
        started = time.monotonic()
        served.wait(lambda: (served.readyz() or {}).get("policy") == second_version,
                    "the new policy", timeout=5)  # fmt: skip
        assert time.monotonic() - started < 2.0  # SPEC 3, seen from outside
        answer = served.client.post("/mutate", json=review("shop", "serve-2")).json()
        pod = jsonpatch.apply_patch(
            copy.deepcopy(POD), json.loads(base64.b64decode(answer["response"]["patch"]))
        )
        assert pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"] == "tenant-net"
        # Each accepted change is evented on the ConfigMap, with the old and new version.
        change = f"{first_version} → {second_version}"
        [event] = served.wait(
            lambda: [
                e for e in api.events if e["reason"] == "PolicyApplied" and change in e["message"]
            ],
            "the PolicyApplied Event",
            timeout=5,
        )
        assert event["metadata"]["namespace"] == OWN
        assert event["involvedObject"]["name"] == "meshgate-policy"
    finally:
        started = time.monotonic()
        code = served.stop()
        stopped_in = time.monotonic() - started
    assert code == 0, served.output()
    assert stopped_in < 5, f"took {stopped_in:.1f} s to exit"
    logged = [json.loads(line) for line in served.output().splitlines() if line.startswith("{")]
    assert any(e.get("msg") == "policy applied" and e.get("new") == second_version
               for e in logged)  # fmt: skip
    assert "Traceback" not in served.output()


@pytest.mark.parametrize(
    "kubeconfig",
    [
        pytest.param("missing", id="file-does-not-exist"),
        pytest.param("empty", id="file-without-a-context"),
    ],
)
def test_serve_without_cluster_config_or_files_exits_2(
    tmp_path: Path, cert_dir: Path, kubeconfig: str
) -> None:
    path = tmp_path / "kubeconfig"
    if kubeconfig == "empty":
        path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Config", "clusters": [],
                                        "contexts": [], "users": []}))  # fmt: skip
    result = run_meshgate("serve", "--kubeconfig", str(path), "--cert-dir", str(cert_dir),
                          "--host", "127.0.0.1", "--port", str(free_port()),
                          env=isolated_env(tmp_path))  # fmt: skip
    assert result.returncode == 2, result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("meshgate: no cluster configuration")
    assert str(path) in message
    assert "--policy" in message and "--namespaces-file" in message
    assert "Traceback" not in result.stderr


def test_serve_offline_from_files_without_cluster_config(tmp_path: Path, cert_dir: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("gate: {action: warn}\n")
    namespaces = tmp_path / "namespaces.yaml"
    namespaces.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": "shop", "labels": {"istio-injection": "enabled"}}}))  # fmt: skip
    env = isolated_env(tmp_path)
    env["KUBECONFIG"] = str(tmp_path / "missing-kubeconfig")
    served = Served(["--policy", str(policy), "--namespaces-file", str(namespaces)], env,
                    tmp_path, cert_dir)  # fmt: skip
    code: int | None = None
    try:
        status = served.wait(served.readyz, "/readyz 200")
        assert status["policy"] == parse_policy_text("gate: {action: warn}").version
        assert status["policySource"] == f"file {policy}"
        answer = served.client.post("/mutate", json=review("shop", "off-1")).json()
        ops = json.loads(base64.b64decode(answer["response"]["patch"]))
        pod = jsonpatch.apply_patch(copy.deepcopy(POD), ops)
        assert [c["name"] for c in pod["spec"]["containers"]] == ["cart", "istio-proxy"]
        # No cluster: no NetworkAttachmentDefinition check, so no warning about one.
        assert "warnings" not in answer["response"]
    finally:
        code = served.stop()
    assert code == 0, served.output()
    assert "no cluster configuration" in served.output()
