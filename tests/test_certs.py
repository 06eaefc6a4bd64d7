"""Tests for webhook.certs: certificate contents, files on disk, and a real TLS handshake."""

from __future__ import annotations

import base64
import ipaddress
import os
import ssl
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from helpers import TLSEchoServer, client_context, tls_talk

from webhook import certs
from webhook.certs import (
    ca_bundle_b64,
    ensure_dev_certs,
    generate_ca,
    generate_serving_cert,
    service_dns_names,
    write_cert_dir,
)

# ---------------------------------------------------------------------------------------
# helpers


def _ext(
    cert: x509.Certificate, cls: type[x509.ExtensionType]
) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_class(cls)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    return generate_ca()


@pytest.fixture(scope="module")
def dev_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cert_dir = tmp_path_factory.mktemp("certs") / "dev"
    assert ensure_dev_certs(cert_dir) is True
    return cert_dir


@pytest.fixture()
def tls_server(dev_dir: Path) -> Iterator[TLSEchoServer]:
    with TLSEchoServer(dev_dir / "tls.crt", dev_dir / "tls.key", max_connections=20,
                       idle_timeout=30.0) as server:  # fmt: skip
        yield server


# ---------------------------------------------------------------------------------------
# the CA


def test_ca_is_p256_self_signed_ca(ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]) -> None:
    cert, key = ca
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "meshgate-ca"
    cert.verify_directly_issued_by(cert)
    assert cert.public_key() == key.public_key()


def test_ca_extensions(ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]) -> None:
    cert, key = ca
    bc = _ext(cert, x509.BasicConstraints)
    assert bc.critical
    assert isinstance(bc.value, x509.BasicConstraints)
    assert bc.value.ca is True
    assert bc.value.path_length == 0

    ku = _ext(cert, x509.KeyUsage)
    assert ku.critical
    assert isinstance(ku.value, x509.KeyUsage)
    assert ku.value.key_cert_sign and ku.value.crl_sign
    assert not ku.value.digital_signature

    ski = _ext(cert, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(key.public_key())


def test_ca_validity_and_arguments() -> None:
    cert, _ = generate_ca(common_name="other-ca", days=10)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 10 * 86400 <= lifetime.total_seconds() <= 10 * 86400 + 3600
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "other-ca"
    with pytest.raises(ValueError):
        generate_ca(days=0)


# ---------------------------------------------------------------------------------------
# the serving certificate


def test_serving_cert_contents(ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]) -> None:
    ca_cert, ca_key = ca
    names = service_dns_names("meshgate", "meshgate-system")
    cert, key = generate_serving_cert(ca_cert, ca_key, names, ["10.0.0.1", "fd00::1"])

    assert isinstance(key.curve, ec.SECP256R1)
    assert cert.public_key() == key.public_key()
    cert.verify_directly_issued_by(ca_cert)
    assert cert.issuer == ca_cert.subject
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "meshgate.meshgate-system.svc"

    san = _ext(cert, x509.SubjectAlternativeName).value
    assert isinstance(san, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.DNSName) == [
        "meshgate.meshgate-system.svc",
        "meshgate",
        "meshgate.meshgate-system",
        "meshgate.meshgate-system.svc.cluster.local",
    ]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.1"),
        ipaddress.ip_address("fd00::1"),
    ]

    bc = _ext(cert, x509.BasicConstraints)
    assert bc.critical
    assert isinstance(bc.value, x509.BasicConstraints)
    assert bc.value.ca is False

    ku = _ext(cert, x509.KeyUsage)
    assert ku.critical
    assert isinstance(ku.value, x509.KeyUsage)
    assert ku.value.digital_signature
    assert not ku.value.key_encipherment
    assert not ku.value.key_cert_sign

    eku = _ext(cert, x509.ExtendedKeyUsage).value
    assert isinstance(eku, x509.ExtendedKeyUsage)
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]

    aki = _ext(cert, x509.AuthorityKeyIdentifier).value
    assert isinstance(aki, x509.AuthorityKeyIdentifier)
    ca_ski = _ext(ca_cert, x509.SubjectKeyIdentifier).value
    assert isinstance(ca_ski, x509.SubjectKeyIdentifier)
    assert aki.key_identifier == ca_ski.digest


def test_serving_cert_never_outlives_ca() -> None:
    ca_cert, ca_key = generate_ca(days=2)
    cert, _ = generate_serving_cert(ca_cert, ca_key, ["localhost"], [], days=365)
    assert cert.not_valid_after_utc <= ca_cert.not_valid_after_utc


def test_serving_cert_rejects_bad_input(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
) -> None:
    ca_cert, ca_key = ca
    with pytest.raises(ValueError, match="not an IP address"):
        generate_serving_cert(ca_cert, ca_key, ["localhost"], ["localhost"])
    with pytest.raises(ValueError):
        generate_serving_cert(ca_cert, ca_key, [], [])
    cert, _ = generate_serving_cert(ca_cert, ca_key, [], ["127.0.0.1"])
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "127.0.0.1"


def test_ca_bundle_b64(ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]) -> None:
    ca_cert, _ = ca
    bundle = ca_bundle_b64(ca_cert)
    pem = base64.b64decode(bundle, validate=True)
    assert pem == ca_cert.public_bytes(serialization.Encoding.PEM)
    assert pem.startswith(b"-----BEGIN CERTIFICATE-----")
    assert x509.load_pem_x509_certificate(pem) == ca_cert


# ---------------------------------------------------------------------------------------
# files on disk


def test_write_cert_dir_creates_files_with_modes(
    tmp_path: Path, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]
) -> None:
    ca_cert, ca_key = ca
    cert, key = generate_serving_cert(ca_cert, ca_key, ["localhost"], ["127.0.0.1"])
    out = tmp_path / "a" / "b"
    write_cert_dir(out, ca_cert, cert, key)

    assert sorted(p.name for p in out.iterdir()) == ["ca.crt", "tls.crt", "tls.key"]
    assert _mode(out / "tls.key") == 0o600
    assert _mode(out / "tls.crt") & 0o077 == 0o044
    assert x509.load_pem_x509_certificate((out / "ca.crt").read_bytes()) == ca_cert
    assert x509.load_pem_x509_certificate((out / "tls.crt").read_bytes()) == cert
    loaded = serialization.load_pem_private_key((out / "tls.key").read_bytes(), password=None)
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    assert loaded.private_numbers() == key.private_numbers()


def test_key_is_never_world_readable(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
) -> None:
    """Even with umask 0 and an existing key file, the key is 0600 at every step."""
    ca_cert, ca_key = ca
    cert, key = generate_serving_cert(ca_cert, ca_key, ["localhost"], [])
    (tmp_path / "tls.key").write_bytes(b"old")
    (tmp_path / "tls.key").chmod(0o644)

    seen: dict[str, int] = {}
    real_replace = os.replace

    def spy_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        seen[Path(dst).name] = _mode(Path(src))
        real_replace(src, dst)

    monkeypatch.setattr(certs.os, "replace", spy_replace)
    old_umask = os.umask(0)
    try:
        write_cert_dir(tmp_path, ca_cert, cert, key)
    finally:
        os.umask(old_umask)

    assert seen["tls.key"] == 0o600
    assert _mode(tmp_path / "tls.key") == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_ensure_dev_certs_generates_once(dev_dir: Path) -> None:
    assert sorted(p.name for p in dev_dir.iterdir()) == ["ca.crt", "tls.crt", "tls.key"]
    assert _mode(dev_dir / "tls.key") == 0o600
    cert = x509.load_pem_x509_certificate((dev_dir / "tls.crt").read_bytes())
    san = _ext(cert, x509.SubjectAlternativeName).value
    assert isinstance(san, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    ca_cert = x509.load_pem_x509_certificate((dev_dir / "ca.crt").read_bytes())
    cert.verify_directly_issued_by(ca_cert)

    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in dev_dir.iterdir()}
    assert ensure_dev_certs(dev_dir) is False
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in dev_dir.iterdir()}
    assert after == before


def test_ensure_dev_certs_keeps_existing_files(tmp_path: Path) -> None:
    (tmp_path / "tls.crt").write_text("operator-provided cert\n")
    (tmp_path / "tls.key").write_text("operator-provided key\n")
    assert ensure_dev_certs(tmp_path) is False
    assert (tmp_path / "tls.crt").read_text() == "operator-provided cert\n"
    assert (tmp_path / "tls.key").read_text() == "operator-provided key\n"
    assert not (tmp_path / "ca.crt").exists()


def test_ensure_dev_certs_completes_partial_dir(tmp_path: Path) -> None:
    (tmp_path / "tls.crt").write_text("orphan cert without key\n")
    assert ensure_dev_certs(tmp_path) is True
    assert x509.load_pem_x509_certificate((tmp_path / "tls.crt").read_bytes())
    assert (tmp_path / "ca.crt").exists()
    assert _mode(tmp_path / "tls.key") == 0o600


# ---------------------------------------------------------------------------------------
# a real TLS handshake against the generated files


@pytest.mark.parametrize("server_hostname", ["localhost", "127.0.0.1"])
def test_tls_handshake_verifies(
    tls_server: TLSEchoServer, dev_dir: Path, server_hostname: str
) -> None:
    context = client_context(dev_dir / "ca.crt")
    assert context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED
    reply, peer = tls_talk(tls_server.port, context, server_hostname)
    assert reply == b"ok"
    assert ("DNS", "localhost") in peer["subjectAltName"]  # type: ignore[operator]
    assert ("IP Address", "127.0.0.1") in peer["subjectAltName"]  # type: ignore[operator]


def test_tls_handshake_strict_verification(tls_server: TLSEchoServer, dev_dir: Path) -> None:
    """The chain also satisfies OpenSSL's strict RFC 5280 checks (as Go's verifier needs)."""
    context = client_context(dev_dir / "ca.crt")
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    reply, _ = tls_talk(tls_server.port, context, "localhost")
    assert reply == b"ok"


def test_tls_handshake_rejects_other_ca(tls_server: TLSEchoServer, tmp_path: Path) -> None:
    other_ca, _ = generate_ca(common_name="someone-else")
    other = tmp_path / "other-ca.crt"
    other.write_bytes(other_ca.public_bytes(serialization.Encoding.PEM))
    context = client_context(other)
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_talk(tls_server.port, context, "localhost")


def test_tls_handshake_rejects_wrong_hostname(tls_server: TLSEchoServer, dev_dir: Path) -> None:
    context = client_context(dev_dir / "ca.crt")
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_talk(tls_server.port, context, "meshgate.example.com")
