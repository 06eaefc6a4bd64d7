"""Hot reload of the serving certificate (SPEC 6: rotated cert files are picked up without a
restart and without a failed request).

The certificate directory is laid out exactly as the kubelet lays out a Secret volume:
`tls.crt -> ..data/tls.crt`, `..data -> ..2026_11_26_10_00_00.123`, and an update is a new
timestamped directory, an atomic rename of a `..data_tmp` link over `..data`, and the removal
of the old directory.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import logging
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from helpers import ServerThread, admission_review, read_response, threads_running
from prometheus_client.parser import text_string_to_metric_families

from webhook import certs
from webhook.admission import Context
from webhook.app import create_app
from webhook.metrics import Metrics
from webhook.namespaces import StaticNamespaces
from webhook.policy import default_policy
from webhook.runtime import Runtime
from webhook.server import CertificateError, ServingCertificate

NAMESPACES = StaticNamespaces({"mesh": {"istio-injection": "enabled"}})


# ---------------------------------------------------------------------------------------
# certificates and a Secret volume


@dataclass
class Pair:
    """A CA and a serving certificate it signed, as PEM."""

    ca: bytes
    cert: bytes
    key: bytes
    not_after: datetime.datetime

    @property
    def fingerprint(self) -> str:
        return x509.load_pem_x509_certificate(self.cert).fingerprint(hashes.SHA256()).hex()


def make_pair(name: str, days: int) -> Pair:
    ca_cert, ca_key = certs.generate_ca(common_name=f"{name}-ca")
    cert, key = certs.generate_serving_cert(ca_cert, ca_key, ["localhost"], ["127.0.0.1"],
                                            days=days)  # fmt: skip
    return Pair(
        ca=ca_cert.public_bytes(serialization.Encoding.PEM),
        cert=cert.public_bytes(serialization.Encoding.PEM),
        key=key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()),  # fmt: skip
        not_after=cert.not_valid_after_utc,
    )


@pytest.fixture(scope="module")
def pairs() -> dict[str, Pair]:
    # Different CAs and different lifetimes, so every check can tell them apart.
    return {"A": make_pair("a", 30), "B": make_pair("b", 90), "C": make_pair("c", 120)}


@dataclass
class SecretVolume:
    """A directory updated the way the kubelet's AtomicWriter updates a Secret volume."""

    root: Path
    generation: int = 0
    swapped_at: list[float] = field(default_factory=list)

    def publish(self, files: dict[str, bytes]) -> None:
        self.generation += 1
        step = self.generation - 1  # ..2026_11_26_10_00_00.123, ..2026_11_26_10_05_00.456, …
        stamp = f"..2026_11_26_10_{step * 5:02d}_00.{123 + step * 333}"
        new = self.root / stamp
        new.mkdir(parents=True)
        for name, data in files.items():
            (new / name).write_bytes(data)
            (new / name).chmod(0o600 if name == "tls.key" else 0o644)
        data_link = self.root / "..data"
        old = os.readlink(data_link) if data_link.is_symlink() else None
        tmp_link = self.root / "..data_tmp"
        os.symlink(stamp, tmp_link)
        os.rename(tmp_link, data_link)  # the atomic swap
        self.swapped_at.append(time.monotonic())
        for name in ("ca.crt", "tls.crt", "tls.key"):
            link = self.root / name
            if not link.is_symlink():
                os.symlink(f"..data/{name}", link)
        if old is not None:
            for child in (self.root / old).iterdir():
                child.unlink()
            (self.root / old).rmdir()

    def publish_pair(self, pair: Pair) -> None:
        self.publish({"ca.crt": pair.ca, "tls.crt": pair.cert, "tls.key": pair.key})


def test_the_volume_has_the_kubelet_layout(tmp_path: Path, pairs: dict[str, Pair]) -> None:
    volume = SecretVolume(tmp_path / "tls")
    volume.publish_pair(pairs["A"])
    volume.publish_pair(pairs["B"])
    root = volume.root
    assert os.readlink(root / "tls.crt") == "..data/tls.crt"
    assert os.readlink(root / "tls.key") == "..data/tls.key"
    assert os.readlink(root / "..data") == "..2026_11_26_10_05_00.456"
    assert sorted(p.name for p in root.iterdir()) == [
        "..2026_11_26_10_05_00.456", "..data", "ca.crt", "tls.crt", "tls.key",
    ]  # fmt: skip
    assert (root / "tls.crt").read_bytes() == pairs["B"].cert


# ---------------------------------------------------------------------------------------
# handshakes


def trusting(*pairs: Pair) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata="".join(p.ca.decode() for p in pairs))
    return context


def peer_fingerprint(tls: ssl.SSLSocket) -> str:
    der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def handshake_in_memory(listener: ssl.SSLContext, client: ssl.SSLContext) -> str:
    """The fingerprint of the certificate `listener` presents to a new handshake."""
    left, right = socket.socketpair()
    left.settimeout(5)
    right.settimeout(5)
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            with listener.wrap_socket(left, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError) as err:
            errors.append(err)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client.wrap_socket(right, server_hostname="127.0.0.1") as tls:
            fingerprint = peer_fingerprint(tls)
            tls.sendall(b"x")
    finally:
        thread.join(5)
        left.close()
    assert not errors, errors
    return fingerprint


def metric(metrics: Metrics, name: str, **labels: str) -> float:
    text = metrics.render().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


# ---------------------------------------------------------------------------------------
# ServingCertificate on its own


@pytest.mark.parametrize(
    "broken",
    [
        pytest.param("mismatched-key", id="key-of-another-certificate"),
        pytest.param("truncated-cert", id="half-written-certificate"),
        pytest.param("missing-key", id="key-missing"),
        pytest.param("garbage", id="not-pem"),
    ],
)
def test_a_broken_update_keeps_the_certificate_in_use_until_a_good_one_lands(
    tmp_path: Path, pairs: dict[str, Pair], broken: str, caplog: pytest.LogCaptureFixture
) -> None:
    a, b, c = pairs["A"], pairs["B"], pairs["C"]
    volume = SecretVolume(tmp_path / "tls")
    volume.publish_pair(a)
    metrics = Metrics()
    served = ServingCertificate(volume.root, metrics)
    client = trusting(a, b, c)
    assert handshake_in_memory(served.listener, client) == a.fingerprint
    assert metric(metrics, "meshgate_certificate_expiry_seconds") == a.not_after.timestamp()

    files = {"ca.crt": b.ca, "tls.crt": b.cert, "tls.key": b.key}
    if broken == "mismatched-key":
        files["tls.key"] = c.key
    elif broken == "truncated-cert":
        files["tls.crt"] = b.cert[: len(b.cert) // 2]
    elif broken == "missing-key":
        del files["tls.key"]
    else:
        files["tls.crt"] = b"not a certificate\n"
    caplog.set_level(logging.ERROR, logger="meshgate.server")
    volume.publish(files)
    for _ in range(3):  # tried on every check, logged and counted once
        assert served.check() is False
    assert handshake_in_memory(served.listener, client) == a.fingerprint
    assert metric(metrics, "meshgate_certificate_reloads_total", result="error") == 1
    assert metric(metrics, "meshgate_certificate_expiry_seconds") == a.not_after.timestamp()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert getattr(errors[0], "sha256", None) == a.fingerprint  # names the one kept
    assert "BEGIN" not in errors[0].getMessage() + str(getattr(errors[0], "error", ""))

    volume.publish_pair(c)
    assert served.check() is True
    assert handshake_in_memory(served.listener, client) == c.fingerprint
    assert metric(metrics, "meshgate_certificate_reloads_total", result="success") == 2
    assert metric(metrics, "meshgate_certificate_expiry_seconds") == c.not_after.timestamp()


def test_files_replaced_in_place_are_reloaded(
    tmp_path: Path, pairs: dict[str, Pair], caplog: pytest.LogCaptureFixture
) -> None:
    """`meshgate certs generate --out DIR`, the self-signed keeper, cert-manager's writer:
    files renamed over the old ones one by one in a plain directory, no symlinks. A check
    that falls between the key and the certificate is neither an error nor a reload."""
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "tls.crt").write_bytes(pairs["A"].cert)
    (plain / "tls.key").write_bytes(pairs["A"].key)
    metrics = Metrics()
    served = ServingCertificate(plain, metrics)
    client = trusting(pairs["A"], pairs["B"])
    assert served.check() is False  # nothing changed
    assert handshake_in_memory(served.listener, client) == pairs["A"].fingerprint
    caplog.set_level(logging.WARNING, logger="meshgate.server")

    def replace(name: str, data: bytes) -> None:
        (plain / f".{name}.tmp").write_bytes(data)
        os.replace(plain / f".{name}.tmp", plain / name)

    replace("tls.key", pairs["B"].key)  # the key first, as certs.write_cert_dir does
    assert served.check() is False
    assert handshake_in_memory(served.listener, client) == pairs["A"].fingerprint
    replace("tls.crt", pairs["B"].cert)
    assert served.check() is True
    assert handshake_in_memory(served.listener, client) == pairs["B"].fingerprint
    assert metric(metrics, "meshgate_certificate_reloads_total", result="error") == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_the_same_content_written_again_is_no_reload(
    tmp_path: Path, pairs: dict[str, Pair]
) -> None:
    volume = SecretVolume(tmp_path / "tls")
    volume.publish_pair(pairs["A"])
    metrics = Metrics()
    served = ServingCertificate(volume.root, metrics)
    first = served.current
    volume.publish_pair(pairs["A"])  # a resync that changed nothing
    assert served.check() is False
    assert served.current is first
    assert metric(metrics, "meshgate_certificate_reloads_total", result="success") == 1


def test_unusable_files_at_start_up_are_an_error(tmp_path: Path, pairs: dict[str, Pair]) -> None:
    volume = SecretVolume(tmp_path / "tls")
    volume.publish({"tls.crt": pairs["A"].cert, "tls.key": pairs["B"].key})
    with pytest.raises(CertificateError, match="tls.crt"):
        ServingCertificate(volume.root)
    # ... and `meshgate serve` says so on one line, exit code 2, without a traceback.
    result = subprocess.run(
        [sys.executable, "-m", "webhook", "serve", "--dev", "--cert-dir", str(volume.root),
         "--port", "0"],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
        env={**os.environ, "KUBECONFIG": str(tmp_path / "none")},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "serving certificate" in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------
# the real server, under load


def review(uid: str) -> bytes:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
           "spec": {"containers": [{"name": "app", "image": "example.com/app:1"}]}}
    return orjson.dumps(admission_review(pod, uid=uid, namespace="mesh"))


def check_answer(status: int, body: bytes, uid: str) -> None:
    assert status == 200, (status, body[:200])
    answer = orjson.loads(body)["response"]
    assert answer["uid"] == uid
    assert answer["allowed"] is True
    assert answer["patchType"] == "JSONPatch"  # injected: the whole path ran


@dataclass
class Load:
    """Client threads posting /mutate until told to stop, counting every outcome."""

    port: int
    trust: ssl.SSLContext
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: int = 0
    failures: list[str] = field(default_factory=list)
    # (monotonic time the handshake finished, fingerprint) of every new connection
    handshakes: list[tuple[float, float, str]] = field(default_factory=list)
    keepalive_answers: int = 0

    def _count(self, failure: str | None = None) -> None:
        with self.lock:
            self.sent += 1
            if failure is not None:
                self.failures.append(failure)

    def fresh_connections(self, worker: int) -> None:
        """A new TCP connection and TLS handshake for every request."""
        n = 0
        while not self.stop.is_set():
            n += 1
            uid = f"fresh-{worker}-{n}"
            body = review(uid)
            try:
                started = time.monotonic()
                with (
                    socket.create_connection(("127.0.0.1", self.port), timeout=10) as raw,
                    self.trust.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
                ):
                    fingerprint = peer_fingerprint(tls)
                    with self.lock:
                        self.handshakes.append((started, time.monotonic(), fingerprint))
                    tls.sendall(b"POST /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                b"Content-Type: application/json\r\nConnection: close\r\n"
                                b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
                    status, payload = read_response(tls)
                check_answer(status, payload, uid)
            except Exception as err:  # every failure is counted, whatever it is
                self._count(f"{uid}: {type(err).__name__}: {err}")
            else:
                self._count()

    def keep_alive(self, worker: int) -> None:
        """A pooled keep-alive connection, renewed every 40 requests."""
        n = 0
        while not self.stop.is_set():
            with httpx.Client(base_url=f"https://127.0.0.1:{self.port}", verify=self.trust,
                              timeout=10) as client:  # fmt: skip
                for _ in range(40):
                    if self.stop.is_set():
                        break
                    n += 1
                    uid = f"kept-{worker}-{n}"
                    try:
                        response = client.post("/mutate", content=review(uid),
                                               headers={"content-type": "application/json"})
                        check_answer(response.status_code, response.content, uid)
                    except Exception as err:
                        self._count(f"{uid}: {type(err).__name__}: {err}")
                    else:
                        self._count()
                        with self.lock:
                            self.keepalive_answers += 1

    @contextlib.contextmanager
    def running(self, fresh: int = 3, kept: int = 2) -> Iterator[Load]:
        threads = [threading.Thread(target=self.fresh_connections, args=(i,), daemon=True)
                   for i in range(fresh)]  # fmt: skip
        threads += [threading.Thread(target=self.keep_alive, args=(i,), daemon=True)
                    for i in range(kept)]  # fmt: skip
        try:
            with threads_running(threads, self.stop, join_timeout=20):
                yield self
        finally:
            assert not any(t.is_alive() for t in threads)


def scrape(port: int, trust: ssl.SSLContext) -> dict[str, float]:
    with httpx.Client(verify=trust, timeout=10) as client:
        text = client.get(f"https://127.0.0.1:{port}/metrics").text
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = sample.name + "".join(f",{k}={v}" for k, v in sorted(sample.labels.items()))
            values[key] = sample.value
    return values


def test_a_secret_update_under_load_fails_no_request(
    tmp_path: Path, pairs: dict[str, Pair]
) -> None:
    a, b = pairs["A"], pairs["B"]
    volume = SecretVolume(tmp_path / "tls")
    volume.publish_pair(a)
    runtime = Runtime()
    runtime.install(Context(default_policy(), NAMESPACES, "meshgate-system"), "test")
    trust = trusting(a, b)  # the API server's caBundle holds both CAs during a rotation
    with ServerThread(create_app(runtime), volume.root, name="meshgate-reload",
                      runtime=runtime) as served:  # fmt: skip
        before = scrape(served.port, trust)
        assert before["meshgate_certificate_expiry_seconds"] == a.not_after.timestamp()
        load = Load(served.port, trust)
        with load.running():
            time.sleep(1.0)
            volume.publish_pair(b)
            swapped = volume.swapped_at[-1]
            deadline = swapped + 6
            while time.monotonic() < deadline:
                with load.lock:
                    seen_b = [done for _, done, fp in load.handshakes
                              if fp == b.fingerprint]  # fmt: skip
                if seen_b:
                    break
                time.sleep(0.05)
            time.sleep(1.0)  # keep the load on after the switch
            with load.lock:
                sent_at_swap = sum(1 for s, _, _ in load.handshakes if s < swapped)
        handshakes = sorted(load.handshakes)
        new = [done for _, done, fp in handshakes if fp == b.fingerprint]
        assert new, "no new handshake presented the new certificate"
        latency = min(new) - swapped
        after_b = [(s, fp) for s, _, fp in handshakes if s > min(new) + 0.5]
        print(f"\nreload latency {latency:.3f} s; requests sent {load.sent}, failed "
              f"{len(load.failures)}; handshakes {len(handshakes)} ({sent_at_swap} before the "
              f"swap); keep-alive answers {load.keepalive_answers}")
        assert not load.failures, load.failures[:5]
        assert latency < 3.0, f"the new certificate took {latency:.2f} s"
        assert sent_at_swap >= 10 and len(after_b) >= 10, "too little load to prove anything"
        assert load.keepalive_answers >= 20
        assert {fp for _, fp in after_b} == {b.fingerprint}
        assert all(fp in (a.fingerprint, b.fingerprint) for _, _, fp in handshakes)
        after = scrape(served.port, trust)
        assert after["meshgate_certificate_expiry_seconds"] == b.not_after.timestamp()
        assert after["meshgate_certificate_reloads_total,result=success"] == 2
        assert after.get("meshgate_certificate_reloads_total,result=error", 0) == 0
        # The TLS policy holds on the reloaded certificate too.
        weak = trusting(a, b)
        weak.maximum_version = ssl.TLSVersion.TLSv1_2
        weak.set_ciphers("AES128-GCM-SHA256:AES256-GCM-SHA384:ECDHE-ECDSA-AES128-SHA")
        with (
            pytest.raises(ssl.SSLError),
            socket.create_connection(("127.0.0.1", served.port), timeout=5) as raw,
            weak.wrap_socket(raw, server_hostname="127.0.0.1"),
        ):
            pass
        # The old CA alone no longer verifies new connections: the switch is real.
        with (
            pytest.raises(ssl.SSLCertVerificationError),
            socket.create_connection(("127.0.0.1", served.port), timeout=5) as raw,
            trusting(a).wrap_socket(raw, server_hostname="127.0.0.1"),
        ):
            pass
