"""Self-managed serving certificate (`meshgate serve --self-signed-secret`, issue 4 item 4,
SPEC 6 "Certificates"): webhook.selfsigned through the real ``kubernetes`` client against
tests/fakeapi.FakeAPIServer.

What must hold: the Secret is created when absent, filled when empty, used as it is when
complete; replicas starting at once end with one Secret and identical files; every webhook
of both configurations gets the CA as caBundle, also once a configuration appears late or is
re-created; and the certificate served verifies against that caBundle for the name the API
server calls, `meshgate.meshgate-system.svc`.
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
import os
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from fakeapi import FakeAPIServer
from helpers import (
    ServeProcess,
    ServerThread,
    client_context,
    free_port,
    isolated_env,
    run_meshgate,
    wait_for,
)

from webhook import certs, kube, selfsigned
from webhook.app import create_app
from webhook.policy import default_policy
from webhook.runtime import Runtime

OWN = "meshgate-system"
SECRET = "meshgate-tls"
NAME = "meshgate"  # the Service, and both webhook configurations
HOST = "meshgate.meshgate-system.svc"  # what the API server calls
SANS = {"meshgate", "meshgate.meshgate-system", HOST, "meshgate.meshgate-system.svc.cluster.local"}
SECRET_PATH = f"/api/v1/namespaces/{OWN}/secrets/{SECRET}"
ADMISSION = "/apis/admissionregistration.k8s.io/v1"
MUTATING, VALIDATING = "mutatingwebhookconfigurations", "validatingwebhookconfigurations"
KINDS = {MUTATING: "MutatingWebhookConfiguration", VALIDATING: "ValidatingWebhookConfiguration"}
HOOKS = {MUTATING: ["inject.meshgate.io"],
         VALIDATING: ["pods.meshgate.io", "workloads.meshgate.io"]}  # fmt: skip


# ---------------------------------------------------------------------------------------
# the fake cluster, API clients, waiting


@pytest.fixture
def api(tmp_path: Path) -> Iterator[FakeAPIServer]:
    with FakeAPIServer(tmp_path / "api") as server:
        yield server


@pytest.fixture
def kubeconfig(api: FakeAPIServer, tmp_path: Path) -> Path:
    return api.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def clients(kubeconfig: Path) -> Iterator[Callable[[], Any]]:
    """A factory of ApiClients (one per replica), all closed at the end."""
    made: list[Any] = []

    def make() -> Any:
        made.append(kube.api_client(str(kubeconfig)))
        return made[-1]

    yield make
    for api_client in made:
        api_client.close()


def keeper(api_client: Any, cert_dir: Path, **options: Any) -> selfsigned.SelfSigned:
    return selfsigned.SelfSigned(api_client, namespace=OWN, secret=SECRET, service=NAME,
                                 webhook_configuration=NAME, cert_dir=cert_dir,
                                 **options)  # fmt: skip


def ensure(api_client: Any, cert_dir: Path) -> selfsigned.Synced:
    return selfsigned.ensure_serving_certificate(api_client, OWN, SECRET, NAME, NAME, cert_dir)


def webhook_configuration(resource: str) -> dict[str, Any]:
    path = "/mutate" if resource == MUTATING else "/validate"
    service = {"namespace": OWN, "name": NAME, "path": path, "port": 443}
    return {"metadata": {"name": NAME},
            "webhooks": [{"name": hook, "clientConfig": {"service": service},
                          "sideEffects": "None", "admissionReviewVersions": ["v1"]}
                         for hook in HOOKS[resource]]}  # fmt: skip


def install_configurations(api: FakeAPIServer, *resources: str) -> None:
    for resource in resources or (MUTATING, VALIDATING):
        api.upsert(resource, webhook_configuration(resource))


def ca_bundles(api: FakeAPIServer) -> list[str | None]:
    """Every webhook's caBundle, over both configurations (None: not set)."""
    bundles: list[str | None] = []
    for resource in (MUTATING, VALIDATING):
        obj = api.get(resource, "", NAME)
        for webhook in (obj or {}).get("webhooks", []):
            bundles.append(webhook["clientConfig"].get("caBundle"))
    return bundles


def secret_files(api: FakeAPIServer) -> dict[str, bytes]:
    data = api.get("secrets", OWN, SECRET)["data"]
    return {k: base64.b64decode(v) for k, v in data.items()}


def served_files(cert_dir: Path) -> dict[str, bytes]:
    return {name: (cert_dir / name).read_bytes()
            for name in (certs.CA_CERT_FILE, certs.TLS_CERT_FILE, certs.TLS_KEY_FILE)}  # fmt: skip


def writes(api: FakeAPIServer) -> list[tuple[str, str]]:
    return [(m, p) for m, p, _ in api.requests if m in ("POST", "PUT", "PATCH")]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: Any) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())  # fmt: skip


def made_elsewhere(days: int = 365) -> dict[str, bytes]:
    """A complete certificate for the Service, as `meshgate certs` would make it."""
    ca, ca_key = certs.generate_ca(common_name="made-elsewhere-ca")
    cert, key = certs.generate_serving_cert(ca, ca_key, certs.service_dns_names(NAME, OWN), [],
                                            days=days)  # fmt: skip
    return {"ca.crt": pem(ca), "tls.crt": pem(cert), "tls.key": key_pem(key)}


def tls_secret(files: dict[str, bytes]) -> dict[str, Any]:
    return {"metadata": {"name": SECRET, "namespace": OWN}, "type": "kubernetes.io/tls",
            "data": {k: b64(v) for k, v in files.items()}}  # fmt: skip


def check_certificate(files: dict[str, bytes]) -> x509.Certificate:
    """tls.crt is a serving certificate for the Service's names, signed by the first CA of
    ca.crt, for the key in tls.key; the certificate, parsed."""
    ca = x509.load_pem_x509_certificates(files["ca.crt"])[0]
    leaf = x509.load_pem_x509_certificate(files["tls.crt"])
    leaf.verify_directly_issued_by(ca)
    key = serialization.load_pem_private_key(files["tls.key"], password=None)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert key.public_key().public_bytes(serialization.Encoding.DER, spki) == (
        leaf.public_key().public_bytes(serialization.Encoding.DER, spki)
    )
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == SANS
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    return leaf


# ---------------------------------------------------------------------------------------
# one replica


def test_no_secret_creates_it_writes_files_and_patches_every_webhook(
    api: FakeAPIServer, clients: Callable[[], Any], tmp_path: Path
) -> None:
    install_configurations(api)
    cert_dir = tmp_path / "tls"
    result = ensure(clients(), cert_dir)

    stored = api.get("secrets", OWN, SECRET)
    assert stored["type"] == "kubernetes.io/tls"
    files = secret_files(api)
    assert {"ca.crt", "tls.crt", "tls.key"} <= set(files)
    leaf = check_certificate(files)
    assert served_files(cert_dir) == {k: files[k] for k in ("ca.crt", "tls.crt", "tls.key")}
    assert (cert_dir / "tls.key").stat().st_mode & 0o777 == 0o600
    assert not (cert_dir / selfsigned.CA_KEY).exists()  # the CA's key stays in the Secret
    assert result.ca_bundle == b64(files["ca.crt"])
    assert ca_bundles(api) == [result.ca_bundle] * 3
    assert result.secret == "created" and result.files_changed
    assert result.configurations == {kind: "patched" for kind in KINDS.values()}
    assert result.not_after == leaf.not_valid_after_utc
    assert writes(api) == [("POST", f"/api/v1/namespaces/{OWN}/secrets"),
                           ("PATCH", f"{ADMISSION}/{MUTATING}/{NAME}"),
                           ("PATCH", f"{ADMISSION}/{VALIDATING}/{NAME}")]  # fmt: skip
    patches = [body for method, _, content_type, body in api.bodies
               if method == "PATCH" and content_type == "application/json-patch+json"]  # fmt: skip
    assert len(patches) == 2  # JSON patches, each guarding the webhook it sets by its name
    assert all(op["op"] == "test" for patch in patches for op in patch[::2])

    # Again, as a restarted replica: nothing to write.
    before = len(api.requests)
    again = ensure(clients(), cert_dir)
    assert (again.secret, again.files_changed, again.ca_bundle) == ("existing", False,
                                                                    result.ca_bundle)  # fmt: skip
    assert again.configurations == {kind: "unchanged" for kind in KINDS.values()}
    assert [m for m, _, _ in api.requests[before:]] == ["GET"] * 3


def test_existing_secret_is_used_as_it_is(
    api: FakeAPIServer, clients: Callable[[], Any], tmp_path: Path
) -> None:
    install_configurations(api)
    files = made_elsewhere()
    stored = api.upsert("secrets", tls_secret(files))
    result = ensure(clients(), tmp_path / "tls")
    assert result.secret == "existing"
    assert api.get("secrets", OWN, SECRET) == stored  # not rewritten: no new certificate
    assert not [w for w in writes(api) if "/secrets" in w[1]]
    assert served_files(tmp_path / "tls") == files
    assert ca_bundles(api) == [b64(files["ca.crt"])] * 3


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({"tls.crt": b"", "tls.key": b""}, id="empty-values"),
        pytest.param({"tls.crt": b"x", "tls.key": b"y"}, id="incomplete-no-ca"),
    ],
)
def test_empty_or_incomplete_secret_is_filled_by_a_conditional_update(
    api: FakeAPIServer, clients: Callable[[], Any], tmp_path: Path, data: dict[str, bytes]
) -> None:
    stored = api.upsert("secrets", {**tls_secret(data), "metadata": {
        "name": SECRET, "namespace": OWN, "labels": {"kept": "yes"}}})  # fmt: skip
    result = ensure(clients(), tmp_path / "tls")
    assert result.secret == "filled"
    assert result.configurations == {kind: "missing" for kind in KINDS.values()}
    filled = api.get("secrets", OWN, SECRET)
    assert filled["metadata"]["uid"] == stored["metadata"]["uid"]
    assert filled["metadata"]["labels"] == {"kept": "yes"}
    check_certificate(secret_files(api))
    assert served_files(tmp_path / "tls") == {
        k: v for k, v in secret_files(api).items() if k != selfsigned.CA_KEY}
    [put] = [body for method, _, _, body in api.bodies if method == "PUT"]
    assert put["metadata"]["resourceVersion"] == stored["metadata"]["resourceVersion"]


def test_a_409_on_create_reads_the_winner(
    api: FakeAPIServer, clients: Callable[[], Any], tmp_path: Path
) -> None:
    install_configurations(api)
    winner = made_elsewhere()
    api.upsert("secrets", tls_secret(winner))
    api.fail_next("GET", SECRET_PATH, status=404, reason="NotFound")  # read before it existed
    result = ensure(clients(), tmp_path / "tls")
    assert [(m, p) for m, p, _ in api.requests if "/secrets" in p] == [
        ("GET", SECRET_PATH), ("POST", f"/api/v1/namespaces/{OWN}/secrets"),
        ("GET", SECRET_PATH)]  # fmt: skip
    assert result.secret == "existing"
    assert secret_files(api) == winner  # the loser's certificate went nowhere
    assert served_files(tmp_path / "tls") == winner
    assert ca_bundles(api) == [b64(winner["ca.crt"])] * 3


def test_a_409_on_fill_reads_the_winner(
    api: FakeAPIServer, clients: Callable[[], Any], tmp_path: Path
) -> None:
    install_configurations(api)
    api.upsert("secrets", tls_secret({"tls.crt": b"", "tls.key": b""}))
    winner = made_elsewhere()
    api.stall_next("PUT", SECRET_PATH, seconds=1.0)

    def another_replica_fills_it_meanwhile() -> None:
        wait_for(lambda: ("PUT", SECRET_PATH) in [(m, p) for m, p, _ in api.requests],
                 "the PUT")  # fmt: skip
        api.upsert("secrets", tls_secret(winner))

    other = threading.Thread(target=another_replica_fills_it_meanwhile)
    other.start()
    result = ensure(clients(), tmp_path / "tls")
    other.join()
    assert [m for m, p, _ in api.requests if p == SECRET_PATH] == ["GET", "PUT", "GET"]
    assert result.secret == "existing"
    assert secret_files(api) == winner
    assert served_files(tmp_path / "tls") == winner
    assert ca_bundles(api) == [b64(winner["ca.crt"])] * 3


# ---------------------------------------------------------------------------------------
# replicas starting at once


@pytest.mark.parametrize(
    ("replicas", "all_read_none"),
    [
        pytest.param(2, True, id="2-replicas-all-create"),
        pytest.param(4, True, id="4-replicas-all-create"),
        pytest.param(4, False, id="4-replicas-as-it-happens"),
    ],
)
def test_replicas_starting_at_once_share_one_secret(
    api: FakeAPIServer, clients: Callable[[], Any], tmp_path: Path, replicas: int,
    all_read_none: bool,
) -> None:  # fmt: skip
    install_configurations(api)
    if all_read_none:
        # Every replica reads "no Secret" first, so every one of them generates a
        # certificate and tries to create the Secret: the API server lets one succeed.
        api.fail_next("GET", SECRET_PATH, status=404, reason="NotFound", times=replicas)
    api_clients = [clients() for _ in range(replicas)]
    start = threading.Barrier(replicas)
    results: list[Any] = [None] * replicas

    def replica(index: int) -> None:
        start.wait()
        try:
            results[index] = ensure(api_clients[index], tmp_path / f"replica{index}")
        except Exception as err:  # reported below
            results[index] = err

    threads = [threading.Thread(target=replica, args=(i,)) for i in range(replicas)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert all(isinstance(r, selfsigned.Synced) for r in results), results
    create = ("POST", f"/api/v1/namespaces/{OWN}/secrets")
    creates = [(m, p) for m, p, _ in api.requests if (m, p) == create]
    assert len(creates) == replicas if all_read_none else 1 <= len(creates) <= replicas
    assert sorted(r.secret for r in results) == ["created"] + ["existing"] * (replicas - 1)
    assert not [m for m, p, _ in api.requests if m == "PUT"]  # nobody overwrote the winner
    files = secret_files(api)
    check_certificate(files)
    for index in range(replicas):
        assert served_files(tmp_path / f"replica{index}") == {
            k: files[k] for k in ("ca.crt", "tls.crt", "tls.key")}  # fmt: skip
    assert {r.ca_bundle for r in results} == {b64(files["ca.crt"])}
    assert ca_bundles(api) == [b64(files["ca.crt"])] * 3


# ---------------------------------------------------------------------------------------
# the re-check: configurations appearing late or re-created, a deleted Secret, renewal


def test_missing_configuration_is_a_warning_then_patched_when_it_appears(
    api: FakeAPIServer, clients: Callable[[], Any], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.INFO, logger="meshgate.selfsigned")
    keep = keeper(clients(), tmp_path / "tls")
    result = keep.sync()  # no configuration yet: not fatal
    assert result.configurations == {kind: "missing" for kind in KINDS.values()}
    assert (tmp_path / "tls" / "tls.crt").is_file()
    keep.start(interval=0.05)
    try:
        wait_for(lambda: keep.rounds >= 3, "a few re-check rounds")
        install_configurations(api, VALIDATING)
        wait_for(lambda: ca_bundles(api) == [result.ca_bundle] * 2, "the validating caBundle")
        install_configurations(api, MUTATING)
        wait_for(lambda: ca_bundles(api) == [result.ca_bundle] * 3, "the mutating caBundle")
        # Re-created by `kubectl apply` (without a caBundle): patched again.
        patch = ("PATCH", f"{ADMISSION}/{VALIDATING}/{NAME}")
        patches = writes(api).count(patch)
        install_configurations(api, VALIDATING)
        wait_for(lambda: writes(api).count(patch) > patches, "the caBundle patched again")
        wait_for(lambda: ca_bundles(api) == [result.ca_bundle] * 3, "the caBundle again")
    finally:
        keep.stop()
    assert not keep.alive
    assert keep.failures == 0
    missing = [r for r in caplog.records
               if r.levelno == logging.WARNING and "not found" in r.getMessage()]  # fmt: skip
    # one warning per configuration, not one per round
    assert sorted(r.configuration for r in missing) == [  # type: ignore[attr-defined]
        f"{kind}/{NAME}" for kind in sorted(KINDS.values())]
    assert not [t for t in threading.enumerate() if t.name == "selfsigned-recheck"]


def test_deleted_secret_is_recreated_with_the_certificate_being_served(
    api: FakeAPIServer, clients: Callable[[], Any], tmp_path: Path
) -> None:
    install_configurations(api)
    keep = keeper(clients(), tmp_path / "tls")
    first = keep.sync()
    served = served_files(tmp_path / "tls")
    api.delete("secrets", OWN, SECRET)
    again = keep.sync()
    assert again.secret == "recreated" and not again.files_changed
    assert {k: v for k, v in secret_files(api).items() if k != selfsigned.CA_KEY} == served
    assert again.ca_bundle == first.ca_bundle
    assert again.configurations == {kind: "unchanged" for kind in KINDS.values()}


def test_renewal_reuses_the_ca_so_the_ca_bundle_stays(
    api: FakeAPIServer, clients: Callable[[], Any], tmp_path: Path
) -> None:
    install_configurations(api)
    first = ensure(clients(), tmp_path / "a")
    old = secret_files(api)
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=300)  # < 1/3 left
    renewed = keeper(clients(), tmp_path / "b", clock=lambda: later).sync()
    assert renewed.secret == "renewed"
    new = secret_files(api)
    assert new["ca.crt"] == old["ca.crt"] and new[selfsigned.CA_KEY] == old[selfsigned.CA_KEY]
    assert new["tls.crt"] != old["tls.crt"] and new["tls.key"] != old["tls.key"]
    check_certificate(new)
    assert renewed.ca_bundle == first.ca_bundle
    assert renewed.configurations == {kind: "unchanged" for kind in KINDS.values()}
    assert served_files(tmp_path / "b")["tls.crt"] == new["tls.crt"]
    # The replica still serving the old certificate picks the new one up on its re-check.
    assert ensure(clients(), tmp_path / "a").files_changed
    assert served_files(tmp_path / "a") == served_files(tmp_path / "b")


def test_expired_secret_without_ca_key_gets_a_new_ca_and_keeps_the_old_one_trusted(
    api: FakeAPIServer, clients: Callable[[], Any], tmp_path: Path
) -> None:
    install_configurations(api)
    old = made_elsewhere(days=1)
    api.upsert("secrets", tls_secret(old))
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=2)  # expired then
    result = keeper(clients(), tmp_path / "tls", clock=lambda: later).sync()
    assert result.secret == "replaced"
    new = secret_files(api)
    cas = x509.load_pem_x509_certificates(new["ca.crt"])
    assert len(cas) == 2 and pem(cas[1]) == old["ca.crt"]  # new CA first, the old one kept
    check_certificate(new)
    assert ca_bundles(api) == [b64(new["ca.crt"])] * 3


def test_certificate_for_another_service_is_used_with_one_warning(
    api: FakeAPIServer, clients: Callable[[], Any], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    # Not replaced: replicas run with different --service values (say, during a rollout
    # that renames the Service) would otherwise replace each other's certificate forever.
    caplog.set_level(logging.INFO, logger="meshgate.selfsigned")
    ca, ca_key = certs.generate_ca()
    cert, key = certs.generate_serving_cert(ca, ca_key, ["old-name.meshgate-system.svc"], [])
    files = {"ca.crt": pem(ca), "tls.crt": pem(cert), "tls.key": key_pem(key)}
    api.upsert("secrets", tls_secret(files))
    keep = keeper(clients(), tmp_path / "tls")
    assert keep.sync().secret == "existing" and keep.sync().secret == "existing"
    assert secret_files(api) == files
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                 and "does not name" in r.getMessage()]  # fmt: skip
    assert HOST in warning and "delete the Secret" in warning


def test_publish_swaps_the_files_at_once(tmp_path: Path) -> None:
    first = {"ca.crt": b"ca-1", "tls.crt": b"crt-1", "tls.key": b"key-1"}
    second = {"ca.crt": b"ca-2", "tls.crt": b"crt-2", "tls.key": b"key-2"}
    cert_dir = tmp_path / "tls"
    cert_dir.mkdir()
    (cert_dir / "tls.crt").write_bytes(b"a plain file from before")
    assert selfsigned.publish(cert_dir, first) is True
    assert served_files(cert_dir) == first
    for name in first:  # each name links through ..data, swapped by one rename
        assert os.readlink(cert_dir / name) == f"..data/{name}"
    assert (cert_dir / "tls.key").stat().st_mode & 0o777 == 0o600
    assert selfsigned.publish(cert_dir, first) is False  # same contents: untouched
    version = os.readlink(cert_dir / "..data")
    assert selfsigned.publish(cert_dir, second) is True
    assert served_files(cert_dir) == second
    assert os.readlink(cert_dir / "..data") != version
    hidden = sorted(p.name for p in cert_dir.iterdir() if p.name.startswith("."))
    assert hidden == sorted(["..data", os.readlink(cert_dir / "..data")])  # old one removed


# ---------------------------------------------------------------------------------------
# what is served


def handshake(port: int, ca_bundle: str) -> tuple[x509.Certificate, bytes]:
    """A TLS handshake verifying the server against `ca_bundle` for the Service's name, as
    the API server does; the server's certificate and its answer to GET /healthz."""
    context = ssl.create_default_context(cadata=base64.b64decode(ca_bundle).decode())
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=HOST) as tls:  # fmt: skip
        der = tls.getpeercert(binary_form=True)
        tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: " + HOST.encode() +
                    b"\r\nConnection: close\r\n\r\n")  # fmt: skip
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    assert der is not None
    return x509.load_der_x509_certificate(der), answer


def test_the_served_certificate_verifies_against_the_ca_bundle(
    api: FakeAPIServer, clients: Callable[[], Any], tmp_path: Path
) -> None:
    install_configurations(api)
    cert_dir = tmp_path / "tls"
    result = ensure(clients(), cert_dir)
    [bundle] = set(ca_bundles(api))
    assert bundle == result.ca_bundle
    runtime = Runtime(own_namespace=OWN)
    runtime.set_policy(default_policy(), "test")
    with ServerThread(create_app(runtime), cert_dir, name="meshgate-selfsigned-test") as served:
        port = served.port
        cert, answer = handshake(port, bundle)
        assert cert.public_bytes(serialization.Encoding.PEM) == (cert_dir / "tls.crt").read_bytes()
        assert answer.startswith(b"HTTP/1.1 200")
        other = made_elsewhere()  # a CA the server's certificate does not come from
        with pytest.raises(ssl.SSLCertVerificationError):
            handshake(port, b64(other["ca.crt"]))
        # A renewal (here: as if 300 days had passed) swaps the files; the server follows
        # them, and the new certificate verifies against the same caBundle.
        later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=300)
        renewed = keeper(clients(), cert_dir, clock=lambda: later).sync()
        assert renewed.secret == "renewed" and renewed.ca_bundle == bundle
        new_pem = (cert_dir / "tls.crt").read_bytes()
        assert new_pem != cert.public_bytes(serialization.Encoding.PEM)
        wait_for(lambda: handshake(port, bundle)[0].public_bytes(serialization.Encoding.PEM)
                 == new_pem, "the renewed certificate to be served", timeout=10)  # fmt: skip


# ---------------------------------------------------------------------------------------
# `meshgate serve --self-signed-secret` as a process


def test_serve_with_self_signed_secret(api: FakeAPIServer, kubeconfig: Path,
                                       tmp_path: Path) -> None:  # fmt: skip
    install_configurations(api)
    served = ServeProcess(["--self-signed-secret", SECRET, "--kubeconfig", str(kubeconfig),
                           "--namespace", OWN], isolated_env(tmp_path), tmp_path,
                          tmp_path / "served-tls")  # fmt: skip
    try:
        secret = served.wait(lambda: api.get("secrets", OWN, SECRET), "the Secret", timeout=30)
        ca_file = tmp_path / "ca-from-secret.crt"
        ca_file.write_bytes(base64.b64decode(secret["data"]["ca.crt"]))
        with httpx.Client(base_url=served.url, verify=client_context(ca_file),
                          timeout=5) as client:  # fmt: skip
            served.wait(lambda: client.get("/readyz", extensions={"sni_hostname": HOST})
                        .status_code == 200,
                        "/readyz 200 over TLS verified with the Secret's ca.crt", 30)  # fmt: skip
        assert ca_bundles(api) == [secret["data"]["ca.crt"]] * 3
    finally:
        code = served.stop(timeout=15, kill_timeout=5)
    output = served.output()
    assert code == 0, output
    assert "Traceback" not in output
    logged = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert any(e.get("msg") == "created the Secret" for e in logged), output
    assert secret["data"]["tls.key"] not in output  # never log a Secret


def test_serve_self_signed_secret_refuses_dev(tmp_path: Path) -> None:
    result = run_meshgate("serve", "--dev", "--self-signed-secret", SECRET,
                          "--cert-dir", str(tmp_path / "tls"), "--port", str(free_port()),
                          env=isolated_env(tmp_path))  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "--self-signed-secret" in result.stderr and "--dev" in result.stderr


def test_serve_self_signed_secret_forbidden_exits_2(api: FakeAPIServer, kubeconfig: Path,
                                                    tmp_path: Path) -> None:  # fmt: skip
    api.fail_next("GET", SECRET_PATH, status=403, reason="Forbidden",
                  message=f'secrets "{SECRET}" is forbidden: no RBAC')  # fmt: skip
    result = run_meshgate("serve", "--self-signed-secret", SECRET, "--kubeconfig",
                          str(kubeconfig), "--namespace", OWN, "--cert-dir", str(tmp_path / "tls"),
                          "--host", "127.0.0.1", "--port", str(free_port()),
                          env=isolated_env(tmp_path))  # fmt: skip
    assert result.returncode == 2, result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("meshgate: --self-signed-secret:")
    assert "403" in message and "forbidden" in message
    assert "Traceback" not in result.stderr
