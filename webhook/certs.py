"""TLS material for the webhook: a CA, a serving certificate, and their files on disk.

The Kubernetes API server calls admission webhooks over HTTPS only, and it verifies the
serving certificate against the ``caBundle`` of the webhook configuration, by SAN (the
certificate's common name is ignored). meshgate therefore needs a CA and a serving
certificate whose SANs name the Service (``meshgate certs``), and ``meshgate serve --dev``
needs a throwaway pair for ``localhost``/``127.0.0.1``/``::1`` so that a developer can run it
without a cluster.

Everything here uses the ``cryptography`` package (no ``openssl`` binary), ECDSA P-256 keys
and SHA-256 signatures, and produces certificates that strict verifiers accept (OpenSSL's
``X509_V_FLAG_X509_STRICT``, Go's ``crypto/x509`` as used by the API server): a critical
BasicConstraints, critical KeyUsage, Subject and Authority Key Identifiers, serverAuth EKU.

The files are the key names of a ``kubernetes.io/tls`` Secret plus ``ca.crt``: ``ca.crt``,
``tls.crt`` and ``tls.key``. Each file is replaced atomically (written to a temporary file in
the same directory, then renamed), so a reader never sees a half-written file, and the
private key is created with mode 0600 from the start, so it is never readable by others,
not even briefly.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import ipaddress
import os
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CA_CERT_FILE",
    "TLS_CERT_FILE",
    "TLS_KEY_FILE",
    "DEV_DNS_NAMES",
    "DEV_IP_ADDRESSES",
    "generate_ca",
    "generate_serving_cert",
    "write_cert_dir",
    "ensure_dev_certs",
    "ca_bundle_b64",
    "service_dns_names",
]

CA_CERT_FILE = "ca.crt"
TLS_CERT_FILE = "tls.crt"
TLS_KEY_FILE = "tls.key"

DEV_DNS_NAMES: tuple[str, ...] = ("localhost",)
DEV_IP_ADDRESSES: tuple[str, ...] = ("127.0.0.1", "::1")

# Certificates start this long before "now", so that a peer whose clock is slightly behind
# does not reject a freshly generated certificate as not yet valid.
_CLOCK_SKEW = datetime.timedelta(minutes=5)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def generate_ca(
    common_name: str = "meshgate-ca", days: int = 3650
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Create a self-signed CA certificate and its ECDSA P-256 key.

    The CA may sign end-entity certificates only (path length 0).
    """
    if days <= 0:
        raise ValueError(f"days must be positive, got {days}")
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
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
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _parse_ips(ip_addresses: list[str]) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    parsed: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for text in ip_addresses:
        try:
            parsed.append(ipaddress.ip_address(text))
        except ValueError as exc:
            raise ValueError(f"not an IP address: {text!r}") from exc
    return parsed


def generate_serving_cert(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    dns_names: list[str],
    ip_addresses: list[str],
    days: int = 365,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Create a TLS server certificate signed by ``ca_cert``/``ca_key``, and its key.

    The SANs are ``dns_names`` and ``ip_addresses``; the subject CN is the first DNS name
    (or the first IP address when there is no DNS name). The certificate never outlives
    the CA.
    """
    if days <= 0:
        raise ValueError(f"days must be positive, got {days}")
    ips = _parse_ips(ip_addresses)
    if not dns_names and not ips:
        raise ValueError("a serving certificate needs at least one DNS name or IP address")
    common_name = dns_names[0] if dns_names else str(ips[0])

    key = _new_key()
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    sans.extend(x509.IPAddress(ip) for ip in ips)
    now = _now()
    not_after = min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                # RSA key transport does not exist for EC keys.
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` with ``data`` atomically, the new file having ``mode``.

    ``mkstemp`` creates the temporary file with mode 0600 (owner only, whatever the umask),
    and its final mode is set before any byte is written, so a private key is never
    readable by others, not even briefly.
    """
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def write_cert_dir(
    out_dir: Path,
    ca_cert: x509.Certificate,
    server_cert: x509.Certificate,
    server_key: ec.EllipticCurvePrivateKey,
) -> None:
    """Write ``ca.crt``, ``tls.crt`` (mode 0644) and ``tls.key`` (mode 0600) as PEM.

    ``out_dir`` is created if absent. The key is written before the certificate.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(out_dir / CA_CERT_FILE, _cert_pem(ca_cert), 0o644)
    _atomic_write(out_dir / TLS_KEY_FILE, _key_pem(server_key), 0o600)
    _atomic_write(out_dir / TLS_CERT_FILE, _cert_pem(server_cert), 0o644)


def ensure_dev_certs(cert_dir: Path) -> bool:
    """Make sure ``cert_dir`` holds a serving certificate for local development.

    If ``tls.crt`` and ``tls.key`` both exist, nothing is touched and ``False`` is returned.
    Otherwise a throwaway CA and a serving certificate for ``localhost``, ``127.0.0.1`` and
    ``::1`` are generated and written (``ca.crt``, ``tls.crt``, ``tls.key``), and ``True``
    is returned. Never use these in a cluster.
    """
    cert_dir = Path(cert_dir)
    if (cert_dir / TLS_CERT_FILE).exists() and (cert_dir / TLS_KEY_FILE).exists():
        return False
    ca_cert, ca_key = generate_ca(common_name="meshgate-dev-ca")
    server_cert, server_key = generate_serving_cert(
        ca_cert, ca_key, list(DEV_DNS_NAMES), list(DEV_IP_ADDRESSES)
    )
    write_cert_dir(cert_dir, ca_cert, server_cert, server_key)
    return True


def ca_bundle_b64(ca_cert: x509.Certificate) -> str:
    """The CA certificate as base64-encoded PEM: the ``caBundle`` of a webhook config."""
    return base64.b64encode(_cert_pem(ca_cert)).decode("ascii")


def service_dns_names(
    service: str, namespace: str, cluster_domain: str = "cluster.local"
) -> list[str]:
    """The DNS names under which a Service is reached, for a serving certificate's SANs.

    The API server calls a webhook at ``<service>.<namespace>.svc``, so that name comes
    first (it becomes the subject CN); the other forms follow for clients that use them.
    """
    return [
        f"{service}.{namespace}.svc",
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc.{cluster_domain}",
    ]
