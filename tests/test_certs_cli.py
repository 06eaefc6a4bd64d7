"""`meshgate certs generate|check|secret` (issue 4, SPEC 1 and 6): the files it writes, a real
TLS handshake as the API server makes it, every way `check` must fail, and the Secret."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import ssl
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from helpers import TLSEchoServer, client_context, run_meshgate, tls_talk

from webhook.certs import ensure_dev_certs, generate_ca, generate_serving_cert, write_cert_dir
from webhook.cli import main

SVC, NS = "meshgate", "meshgate-system"
SERVICE_NAMES = [SVC, f"{SVC}.{NS}", f"{SVC}.{NS}.svc", f"{SVC}.{NS}.svc.cluster.local"]
FILES = ["ca.crt", "tls.crt", "tls.key"]
DAY = 86400.0


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse rejects a flag value
        code = exc.code if isinstance(exc.code, int) else 2
    out, err = capsys.readouterr()
    return code, out, err


def generate(capsys: pytest.CaptureFixture[str], out: Path, *extra: str) -> str:
    code, stdout, err = run(
        capsys, "certs", "generate", "--service", SVC, "--namespace", NS, "--out", str(out),
        *extra,
    )  # fmt: skip
    assert code == 0, err
    return stdout


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def ext(cert: x509.Certificate, cls: type[x509.ExtensionType]) -> x509.Extension:  # type: ignore[type-arg]
    return cert.extensions.get_extension_for_class(cls)


def lifetime_days(cert: x509.Certificate) -> float:
    return (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds() / DAY


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One generated directory, shared read-only by the tests that only look at it."""
    out = tmp_path_factory.mktemp("good") / "certs"
    assert main(["certs", "generate", "--service", SVC, "--namespace", NS, "--out", str(out),
                 "--ip", "10.96.0.10", "--dns", "meshgate.example.com"]) == 0  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------
# generate


def test_generate_stdout_is_exactly_the_ca_bundle(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = run(capsys, "certs", "generate", "--service", SVC, "--namespace", NS,
                         "--out", str(tmp_path / "c"))  # fmt: skip
    assert code == 0
    ca_pem = (tmp_path / "c" / "ca.crt").read_bytes()
    assert out == base64.b64encode(ca_pem).decode() + "\n"
    assert base64.b64decode(out.strip(), validate=True) == ca_pem
    # What happened is said on stderr, naming the files.
    assert "tls.key" in err and "caBundle" in err


def test_generate_stdout_in_a_real_process(tmp_path: Path) -> None:
    """As `CA_BUNDLE=$(meshgate certs generate ...)` sees it: no log line on stdout."""
    proc = run_meshgate("certs", "generate", "--out", str(tmp_path / "c"))
    assert proc.returncode == 0, proc.stderr
    bundle = base64.b64encode((tmp_path / "c" / "ca.crt").read_bytes()).decode()
    assert proc.stdout == bundle + "\n"
    assert proc.stderr.strip()


def test_generate_files_modes_and_certificates(good_dir: Path) -> None:
    assert sorted(p.name for p in good_dir.iterdir()) == FILES
    assert stat.S_IMODE((good_dir / "tls.key").stat().st_mode) == 0o600
    for name in ("ca.crt", "tls.crt"):
        assert stat.S_IMODE((good_dir / name).stat().st_mode) & 0o022 == 0

    ca = load_cert(good_dir / "ca.crt")
    leaf = load_cert(good_dir / "tls.crt")
    key = serialization.load_pem_private_key((good_dir / "tls.key").read_bytes(), None)
    assert leaf.public_key() == key.public_key()
    leaf.verify_directly_issued_by(ca)

    # SANs: the four Service names plus every --dns and --ip, nothing else.
    san = ext(leaf, x509.SubjectAlternativeName).value
    assert sorted(san.get_values_for_type(x509.DNSName)) == sorted(
        [*SERVICE_NAMES, "meshgate.example.com"]
    )
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.96.0.10")]
    cn = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == f"{SVC}.{NS}.svc"

    # Key usage: the CA signs certificates; the serving cert is a non-CA serverAuth cert.
    assert ext(ca, x509.BasicConstraints).value.ca is True
    assert ext(ca, x509.KeyUsage).value.key_cert_sign
    assert ext(leaf, x509.BasicConstraints).value.ca is False
    ku = ext(leaf, x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    assert ExtendedKeyUsageOID.SERVER_AUTH in ext(leaf, x509.ExtendedKeyUsage).value

    # Validity: the CA for ten years, the serving certificate for one, both valid now.
    assert 3649 <= lifetime_days(ca) <= 3651
    assert 364 <= lifetime_days(leaf) <= 366
    for cert in (ca, leaf):
        assert cert.not_valid_before_utc <= now() < cert.not_valid_after_utc


def test_generate_days_and_cluster_domain(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    generate(capsys, tmp_path, "--days", "90", "--ca-days", "400", "--cluster-domain", "corp.lan")
    ca, leaf = load_cert(tmp_path / "ca.crt"), load_cert(tmp_path / "tls.crt")
    assert 399 <= lifetime_days(ca) <= 401
    assert 89 <= lifetime_days(leaf) <= 91
    names = ext(leaf, x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert f"{SVC}.{NS}.svc.corp.lan" in names
    assert f"{SVC}.{NS}.svc.cluster.local" not in names


def test_generate_refuses_to_overwrite_without_force(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    generate(capsys, tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in FILES}
    code, out, err = run(capsys, "certs", "generate", "--out", str(tmp_path))
    assert code != 0
    assert out == ""
    assert "--force" in err and "tls.key" in err
    assert {name: (tmp_path / name).read_bytes() for name in FILES} == before

    new_bundle = generate(capsys, tmp_path, "--force")
    assert (tmp_path / "ca.crt").read_bytes() != before["ca.crt"]
    assert base64.b64decode(new_bundle) == (tmp_path / "ca.crt").read_bytes()
    assert stat.S_IMODE((tmp_path / "tls.key").stat().st_mode) == 0o600


def test_generate_refuses_even_one_existing_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "tls.key").write_text("someone's key\n")
    code, out, _ = run(capsys, "certs", "generate", "--out", str(tmp_path))
    assert code != 0 and out == ""
    assert (tmp_path / "tls.key").read_text() == "someone's key\n"
    assert not (tmp_path / "ca.crt").exists()


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["--service", "Meshgate"], id="service-uppercase"),
        pytest.param(["--service", "9gate"], id="service-starts-with-digit"),
        pytest.param(["--namespace", "meshgate_system"], id="namespace-underscore"),
        pytest.param(["--ip", "10.0.0.300"], id="ip-invalid"),
        pytest.param(["--ip", "localhost"], id="ip-is-a-name"),
        pytest.param(["--dns", "bad name.example"], id="dns-space"),
        pytest.param(["--dns", "-leading.example"], id="dns-leading-dash"),
        pytest.param(["--days", "0"], id="days-zero"),
        pytest.param(["--days", "ten"], id="days-not-a-number"),
        pytest.param(["--days", "400", "--ca-days", "365"], id="serving-outlives-ca"),
    ],
)
def test_generate_rejects_bad_input(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str]
) -> None:
    code, out, err = run(capsys, "certs", "generate", "--out", str(tmp_path / "c"), *argv)
    assert code == 2
    assert out == ""
    assert err.strip()
    assert not (tmp_path / "c").exists() or list((tmp_path / "c").iterdir()) == []


# ---------------------------------------------------------------------------------------
# a real TLS handshake, as the API server makes it


@pytest.fixture()
def tls_port(good_dir: Path) -> Iterator[int]:
    with TLSEchoServer(good_dir / "tls.crt", good_dir / "tls.key", idle_timeout=60.0) as server:
        yield server.port


def talk(port: int, cafile: Path, server_hostname: str, strict: bool = False) -> bytes:
    context = client_context(cafile)
    if strict:
        context.verify_flags |= ssl.VERIFY_X509_STRICT
    return tls_talk(port, context, server_hostname)[0]


@pytest.mark.parametrize(
    "hostname",
    [pytest.param(name, id=name) for name in [*SERVICE_NAMES, "meshgate.example.com"]]
    + [pytest.param("10.96.0.10", id="ip-san")],
)
def test_handshake_with_ca_bundle(tls_port: int, good_dir: Path, hostname: str) -> None:
    """A client that trusts only ca.crt accepts the serving cert under every Service name."""
    assert talk(tls_port, good_dir / "ca.crt", hostname, strict=True) == b"ok"


def test_handshake_names_the_api_server_uses(tls_port: int, good_dir: Path) -> None:
    assert talk(tls_port, good_dir / "ca.crt", f"{SVC}.{NS}.svc") == b"ok"


@pytest.mark.parametrize(
    "hostname",
    [
        pytest.param(f"{SVC}.other-ns.svc", id="other-namespace"),
        pytest.param(f"other.{NS}.svc", id="other-service"),
        pytest.param("127.0.0.1", id="ip-not-in-san"),
    ],
)
def test_handshake_rejects_names_not_in_san(tls_port: int, good_dir: Path, hostname: str) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        talk(tls_port, good_dir / "ca.crt", hostname)


def test_handshake_rejects_another_ca(
    tls_port: int, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    generate(capsys, tmp_path)  # same Service, another CA
    with pytest.raises(ssl.SSLCertVerificationError):
        talk(tls_port, tmp_path / "ca.crt", f"{SVC}.{NS}.svc")


# ---------------------------------------------------------------------------------------
# check


def test_check_passes_on_generated_dir(capsys: pytest.CaptureFixture[str], good_dir: Path) -> None:
    code, out, _ = run(capsys, "certs", "check", str(good_dir), "--service", SVC, "--namespace", NS)
    assert code == 0, out
    lines = dict(line.split(":", 1) for line in out.splitlines())
    assert lines["chain"].strip().startswith("ok")
    assert lines["key"].strip().startswith("ok")
    assert lines["result"].strip() == "OK"
    for name in SERVICE_NAMES:
        assert f"DNS:{name}" in lines["SANs"]
    assert "IP:10.96.0.10" in lines["SANs"]
    assert "expires in 3649 days" in lines["ca.crt"] or "expires in 3650 days" in lines["ca.crt"]
    assert "expires in 364 days" in lines["tls.crt"] or "expires in 365 days" in lines["tls.crt"]


def test_check_passes_on_dev_certs(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The --dev certificates (localhost, 127.0.0.1) are consistent too."""
    assert ensure_dev_certs(tmp_path)
    code, out, _ = run(capsys, "certs", "check", str(tmp_path))
    assert code == 0, out
    assert "DNS:localhost" in out and "IP:127.0.0.1" in out


# Builders of broken (and borderline) certificate directories. Each writes ca.crt, tls.crt
# and tls.key into the directory it is given.
Build = Callable[[Path], None]


def make_dir(
    out: Path,
    *,
    names: tuple[str, ...] = tuple(SERVICE_NAMES),
    ca_window: tuple[float, float] | None = None,
    leaf_window: tuple[float, float] | None = None,
    ca_cn: str = "meshgate-ca",
) -> tuple[x509.Certificate, object, x509.Certificate, object]:
    """A CA and serving cert; windows are (start, end) in days relative to now."""

    def window(days: tuple[float, float] | None) -> dict[str, datetime.datetime]:
        if days is None:
            return {}
        t = now()
        return {
            "not_before": t + datetime.timedelta(days=days[0]),
            "not_after": t + datetime.timedelta(days=days[1]),
        }

    ca, ca_key = generate_ca(common_name=ca_cn, **window(ca_window))
    leaf, key = generate_serving_cert(ca, ca_key, list(names), [], **window(leaf_window))
    write_cert_dir(out, ca, leaf, key)
    return ca, ca_key, leaf, key


def write_pem(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def other_ca_same_name(out: Path) -> None:
    """ca.crt is another CA with the same name (a regenerated CA): the signature fails."""
    make_dir(out)
    other, _ = generate_ca(common_name="meshgate-ca")
    write_pem(out / "ca.crt", other)


def other_ca_other_name(out: Path) -> None:
    make_dir(out)
    other, _ = generate_ca(common_name="someone-else")
    write_pem(out / "ca.crt", other)


def custom_leaf(out: Path, *, ca: bool = False, eku: tuple[object, ...] | None = None) -> None:
    """A serving cert built by hand, signed by the real CA, with the Service SANs but a
    defect the API server's verifier refuses."""
    ca_cert, ca_key, _, _ = make_dir(out)
    key = ec.generate_private_key(ec.SECP256R1())
    t = now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{SVC}.{NS}.svc")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(t - datetime.timedelta(minutes=5))
        .not_valid_after(t + datetime.timedelta(days=100))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in SERVICE_NAMES]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    leaf = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    write_pem(out / "tls.crt", leaf)
    (out / "tls.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def leaf_is_a_ca(out: Path) -> None:
    custom_leaf(out, ca=True, eku=(ExtendedKeyUsageOID.SERVER_AUTH,))


def leaf_client_auth_only(out: Path) -> None:
    custom_leaf(out, eku=(ExtendedKeyUsageOID.CLIENT_AUTH,))


def leaf_is_the_ca(out: Path) -> None:
    """tls.crt/tls.key are the CA's own, which has no SAN."""
    ca, ca_key, _, _ = make_dir(out)
    write_pem(out / "tls.crt", ca)
    (out / "tls.key").write_bytes(
        ca_key.private_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def wrong_key(out: Path) -> None:
    make_dir(out)
    make_dir(out / "other")
    (out / "tls.key").write_bytes((out / "other" / "tls.key").read_bytes())


def expired_leaf(out: Path) -> None:
    make_dir(out, ca_window=(-800, 3000), leaf_window=(-400, -2))


def expired_ca(out: Path) -> None:
    make_dir(out, ca_window=(-800, -1), leaf_window=(-400, 100))


def leaf_not_yet_valid(out: Path) -> None:
    make_dir(out, leaf_window=(2, 300))


def leaf_near_expiry(out: Path) -> None:
    make_dir(out, leaf_window=(-355, 10))


def ca_near_expiry(out: Path) -> None:
    make_dir(out, ca_window=(-3640, 10), leaf_window=(-1, 9))


def no_cluster_local(out: Path) -> None:
    make_dir(out, names=(f"{SVC}.{NS}.svc", SVC, f"{SVC}.{NS}"))


def other_service(out: Path) -> None:
    make_dir(out, names=("other", f"other.{NS}", f"other.{NS}.svc"))


def missing_key(out: Path) -> None:
    make_dir(out)
    (out / "tls.key").unlink()


def garbage_cert(out: Path) -> None:
    make_dir(out)
    (out / "tls.crt").write_text("not a certificate\n")


@pytest.mark.parametrize(
    ("build", "extra", "expected"),
    [
        pytest.param(other_ca_same_name, [], "does not verify against ca.crt", id="ca-mismatch"),
        pytest.param(other_ca_other_name, [], "issued by CN=meshgate-ca", id="ca-other-name"),
        pytest.param(leaf_is_a_ca, [], "does not verify against ca.crt", id="leaf-is-a-ca"),
        pytest.param(
            leaf_client_auth_only, [], "does not verify against ca.crt", id="eku-client-auth-only"
        ),
        pytest.param(leaf_is_the_ca, [], "no subjectAltName", id="leaf-is-the-ca-no-san"),
        pytest.param(wrong_key, [], "tls.key does not match tls.crt", id="wrong-key"),
        pytest.param(expired_leaf, [], "tls.crt has expired", id="expired-cert"),
        pytest.param(expired_ca, [], "ca.crt has expired", id="expired-ca"),
        pytest.param(leaf_not_yet_valid, [], "tls.crt is not valid yet", id="not-yet-valid"),
        pytest.param(leaf_near_expiry, [], "under the 30-day threshold", id="near-expiry"),
        pytest.param(
            leaf_near_expiry, ["--min-days", "11"], "under the 11-day threshold",
            id="near-expiry-custom-threshold",
        ),
        pytest.param(ca_near_expiry, [], "ca.crt expires in", id="ca-near-expiry"),
        pytest.param(
            no_cluster_local, ["--service", SVC, "--namespace", NS],
            f"lack {SVC}.{NS}.svc.cluster.local", id="missing-san",
        ),
        pytest.param(
            other_service, ["--service", SVC, "--namespace", NS],
            f"lack {SVC}.{NS}.svc, {SVC}, {SVC}.{NS}, {SVC}.{NS}.svc.cluster.local",
            id="other-service-sans",
        ),
        pytest.param(missing_key, [], "tls.key: missing", id="missing-key"),
        pytest.param(garbage_cert, [], "tls.crt: not a PEM certificate", id="garbage-cert"),
    ],
)  # fmt: skip
def test_check_fails(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    build: Build,
    extra: list[str],
    expected: str,
) -> None:
    build(tmp_path)
    code, out, _ = run(capsys, "certs", "check", str(tmp_path), *extra)
    assert code == 1, out
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert any(expected in line for line in errors), out
    assert out.splitlines()[-1].startswith("result: FAILED")


@pytest.mark.parametrize(
    ("build", "extra"),
    [
        pytest.param(leaf_near_expiry, ["--min-days", "9"], id="near-expiry-above-threshold"),
        pytest.param(leaf_near_expiry, ["--min-days", "0"], id="threshold-zero"),
        pytest.param(no_cluster_local, [], id="sans-not-required-without-service"),
    ],
)
def test_check_borderline_passes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, build: Build, extra: list[str]
) -> None:
    build(tmp_path)
    code, out, _ = run(capsys, "certs", "check", str(tmp_path), *extra)
    assert code == 0, out


def test_check_expired_is_not_reported_as_a_broken_chain(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """An expired but otherwise correct pair says "expired", not "does not verify"."""
    expired_leaf(tmp_path)
    code, out, _ = run(capsys, "certs", "check", str(tmp_path))
    assert code == 1
    assert "does not verify" not in out
    assert "expired 2 days ago" in out


def test_check_reports_every_problem_at_once(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    expired_leaf(tmp_path)
    make_dir(tmp_path / "other")
    (tmp_path / "tls.key").write_bytes((tmp_path / "other" / "tls.key").read_bytes())
    code, out, _ = run(capsys, "certs", "check", str(tmp_path))
    assert code == 1
    assert "tls.key does not match" in out and "tls.crt has expired" in out
    assert "FAILED (2 problems)" in out


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["--service", SVC], id="service-without-namespace"),
        pytest.param(["--namespace", NS], id="namespace-without-service"),
        pytest.param(["--min-days", "-1"], id="negative-threshold"),
    ],
)
def test_check_usage_errors(
    capsys: pytest.CaptureFixture[str], good_dir: Path, argv: list[str]
) -> None:
    code, _, err = run(capsys, "certs", "check", str(good_dir), *argv)
    assert code == 2
    assert err.strip()


def test_check_missing_directory(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, "certs", "check", str(tmp_path / "nope"))
    assert code == 1
    assert "no such directory" in out


# ---------------------------------------------------------------------------------------
# secret


def test_secret_manifest(capsys: pytest.CaptureFixture[str], good_dir: Path) -> None:
    code, out, _ = run(capsys, "certs", "secret", str(good_dir))
    assert code == 0
    docs = list(yaml.safe_load_all(out))
    assert len(docs) == 1
    secret = docs[0]
    assert secret["apiVersion"] == "v1" and secret["kind"] == "Secret"
    assert secret["type"] == "kubernetes.io/tls"
    assert secret["metadata"]["name"] == "meshgate-tls"
    assert secret["metadata"]["namespace"] == "meshgate-system"
    assert sorted(secret["data"]) == FILES
    for name in FILES:
        assert (
            base64.b64decode(secret["data"][name], validate=True) == (good_dir / name).read_bytes()
        )
    kubernetes_validate.validate(secret, "1.37.0", strict=True)


def test_secret_name_and_namespace(capsys: pytest.CaptureFixture[str], good_dir: Path) -> None:
    code, out, _ = run(capsys, "certs", "secret", str(good_dir), "--name", "wh-tls",
                       "--namespace", "platform")  # fmt: skip
    assert code == 0
    secret = yaml.safe_load(out)
    assert secret["metadata"]["name"] == "wh-tls"
    assert secret["metadata"]["namespace"] == "platform"


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        pytest.param(wrong_key, "tls.key does not match", id="wrong-key"),
        pytest.param(missing_key, "tls.key: missing", id="missing-key"),
        pytest.param(garbage_cert, "not a PEM certificate", id="garbage-cert"),
    ],
)
def test_secret_refuses_unusable_files(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, build: Build, expected: str
) -> None:
    build(tmp_path)
    code, out, err = run(capsys, "certs", "secret", str(tmp_path))
    assert code == 1
    assert out == ""
    assert expected in err


def test_secret_warns_about_expired_but_renders(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    expired_leaf(tmp_path)
    code, out, err = run(capsys, "certs", "secret", str(tmp_path))
    assert code == 0
    assert "warning" in err and "expired" in err
    assert yaml.safe_load(out)["kind"] == "Secret"


def test_generated_key_never_world_readable_under_umask_zero(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    old = os.umask(0)
    try:
        generate(capsys, tmp_path / "c")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "c" / "tls.key").stat().st_mode) == 0o600


def _ca_builder(subject: str, issuer: str, key: ec.EllipticCurvePrivateKey,
                signer_pub: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:  # fmt: skip
    t = now()
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(t - datetime.timedelta(minutes=5))
        .not_valid_after(t + datetime.timedelta(days=1000))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_pub), False)
    )


def test_check_follows_intermediates_in_tls_crt(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """As cert-manager or a corporate CA writes it: tls.crt = serving cert + intermediate."""
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _ca_builder("root", "root", root_key, root_key.public_key()).sign(
        root_key, hashes.SHA256()
    )
    mid_key = ec.generate_private_key(ec.SECP256R1())
    mid = _ca_builder("intermediate", "root", mid_key, root_key.public_key()).sign(
        root_key, hashes.SHA256()
    )
    leaf, key = generate_serving_cert(mid, mid_key, list(SERVICE_NAMES), [])
    write_cert_dir(tmp_path, root, leaf, key)
    with (tmp_path / "tls.crt").open("ab") as handle:
        handle.write(mid.public_bytes(serialization.Encoding.PEM))
    code, out, _ = run(capsys, "certs", "check", str(tmp_path), "--service", SVC, "--namespace", NS)
    assert code == 0, out
    assert "1 intermediate" in out

    # Without the intermediate the chain is broken.
    write_pem(tmp_path / "tls.crt", leaf)
    code, out, _ = run(capsys, "certs", "check", str(tmp_path))
    assert code == 1
    assert "does not verify against ca.crt" in out
