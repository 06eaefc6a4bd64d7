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

``meshgate certs`` (webhook/certs_cli.py) is the operator's front end to this module:
``generate_service_certs`` + ``write_cert_dir`` for ``certs generate``, ``check_cert_dir``
for ``certs check`` and ``tls_secret`` for ``certs secret``.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import ipaddress
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

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
    "CA_DAYS",
    "SERVING_DAYS",
    "CERT_FILES",
    "ServiceCerts",
    "generate_service_certs",
    "existing_cert_files",
    "validate_dns_name",
    "validate_service_name",
    "validate_namespace_name",
    "CertInfo",
    "CertReport",
    "check_cert_dir",
    "CertDirError",
    "read_cert_dir",
    "key_matches",
    "san_list",
    "tls_secret",
]

CA_CERT_FILE = "ca.crt"
TLS_CERT_FILE = "tls.crt"
TLS_KEY_FILE = "tls.key"
CERT_FILES: tuple[str, ...] = (CA_CERT_FILE, TLS_CERT_FILE, TLS_KEY_FILE)

# Default lifetimes (days): a CA for ten years, the serving certificate for one, so the
# serving certificate is rotated yearly (a Secret update, picked up without a restart) while
# the caBundle in the webhook configurations stays the same.
CA_DAYS = 3650
SERVING_DAYS = 365

DEV_DNS_NAMES: tuple[str, ...] = ("localhost",)
DEV_IP_ADDRESSES: tuple[str, ...] = ("127.0.0.1", "::1")

# Certificates start this long before "now", so that a peer whose clock is slightly behind
# does not reject a freshly generated certificate as not yet valid.
_CLOCK_SKEW = datetime.timedelta(minutes=5)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _validity(
    days: int,
    not_before: datetime.datetime | None,
    not_after: datetime.datetime | None,
) -> tuple[datetime.datetime, datetime.datetime]:
    """The validity window: ``days`` from now, unless given explicitly (tests use that to
    make expired or nearly expired certificates)."""
    if days <= 0:
        raise ValueError(f"days must be positive, got {days}")
    now = _now()
    start = not_before if not_before is not None else now - _CLOCK_SKEW
    end = not_after if not_after is not None else now + datetime.timedelta(days=days)
    if end <= start:
        raise ValueError(f"not_after ({end}) must be later than not_before ({start})")
    return start, end


def generate_ca(
    common_name: str = "meshgate-ca",
    days: int = CA_DAYS,
    *,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Create a self-signed CA certificate and its ECDSA P-256 key.

    The CA may sign end-entity certificates only (path length 0). It is valid from a few
    minutes ago for ``days``, or from ``not_before`` to ``not_after`` when given.
    """
    start, end = _validity(days, not_before, not_after)
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
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
    days: int = SERVING_DAYS,
    *,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Create a TLS server certificate signed by ``ca_cert``/``ca_key``, and its key.

    The SANs are ``dns_names`` and ``ip_addresses``; the subject CN is the first DNS name
    (or the first IP address when there is no DNS name). Validity as for ``generate_ca``,
    except that a certificate made from ``days`` never outlives the CA (an explicit
    ``not_after`` is taken as given).
    """
    start, end = _validity(days, not_before, not_after)
    if not_after is None:
        end = min(end, ca_cert.not_valid_after_utc)
    ips = _parse_ips(ip_addresses)
    if not dns_names and not ips:
        raise ValueError("a serving certificate needs at least one DNS name or IP address")
    common_name = dns_names[0] if dns_names else str(ips[0])

    key = _new_key()
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    sans.extend(x509.IPAddress(ip) for ip in ips)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
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


# ---------------------------------------------------------------------------------------
# names


# A Service name is a DNS-1035 label, a namespace name a DNS-1123 label (Kubernetes' rules).
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?\Z")
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
_HOST_LABEL = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?\Z")


def validate_service_name(name: str) -> None:
    """Raise ValueError unless ``name`` can name a Service (a DNS-1035 label)."""
    if len(name) > 63 or not _DNS1035_LABEL.match(name):
        raise ValueError(
            f"{name!r} is not a valid Service name (lower-case letters, digits and '-', "
            "starting with a letter, at most 63 characters)"
        )


def validate_namespace_name(name: str) -> None:
    """Raise ValueError unless ``name`` can name a namespace (a DNS-1123 label)."""
    if len(name) > 63 or not _DNS1123_LABEL.match(name):
        raise ValueError(
            f"{name!r} is not a valid namespace name (lower-case letters, digits and '-', "
            "at most 63 characters)"
        )


def validate_dns_name(name: str) -> None:
    """Raise ValueError unless ``name`` is a DNS name a certificate can carry as a SAN:
    ASCII labels of letters, digits and '-' (IDNA names in their ``xn--`` form), at most
    253 characters, no trailing dot; a leading ``*.`` wildcard label is allowed."""
    labels = name.split(".")
    rest = labels[1:] if labels[0] == "*" and len(labels) > 1 else labels
    if len(name) > 253 or not all(len(lb) <= 63 and _HOST_LABEL.match(lb) for lb in rest):
        raise ValueError(f"{name!r} is not a valid DNS name")


def _name_covered(name: str, san_names: Sequence[str]) -> bool:
    """Whether a TLS client verifying ``name`` accepts one of ``san_names`` (exact, case-
    insensitive, or a ``*.`` wildcard standing for exactly one label)."""
    name = name.lower()
    for san in san_names:
        san = san.lower()
        if san == name:
            return True
        if san.startswith("*.") and "." in name and name.split(".", 1)[1] == san[2:]:
            return True
    return False


# ---------------------------------------------------------------------------------------
# generating a CA and a serving certificate for a Service


@dataclass(frozen=True)
class ServiceCerts:
    """A fresh CA and the serving certificate (with its key) that it signed."""

    ca_cert: x509.Certificate
    server_cert: x509.Certificate
    server_key: ec.EllipticCurvePrivateKey

    @property
    def ca_pem(self) -> bytes:
        return _cert_pem(self.ca_cert)

    @property
    def cert_pem(self) -> bytes:
        return _cert_pem(self.server_cert)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self.server_key)

    @property
    def ca_bundle(self) -> str:
        """The ``caBundle`` of the webhook configurations (base64 of ``ca.crt``)."""
        return ca_bundle_b64(self.ca_cert)

    def files(self) -> dict[str, bytes]:
        """The file contents by name: ``ca.crt``, ``tls.crt``, ``tls.key``."""
        return {CA_CERT_FILE: self.ca_pem, TLS_CERT_FILE: self.cert_pem, TLS_KEY_FILE: self.key_pem}

    def write(self, out_dir: Path) -> None:
        write_cert_dir(out_dir, self.ca_cert, self.server_cert, self.server_key)


def generate_service_certs(
    service: str,
    namespace: str,
    *,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    days: int = SERVING_DAYS,
    ca_days: int = CA_DAYS,
    cluster_domain: str = "cluster.local",
    ca_common_name: str = "meshgate-ca",
) -> ServiceCerts:
    """A CA and a serving certificate for Service ``service`` in ``namespace``.

    The SANs are the Service's DNS names (``service_dns_names``; ``<svc>.<ns>.svc`` first,
    the name the API server calls) followed by ``dns_names`` and ``ip_addresses``, without
    duplicates. Raises ValueError for an invalid name, address or lifetime, and when the
    serving certificate would outlive its CA.
    """
    validate_service_name(service)
    validate_namespace_name(namespace)
    validate_dns_name(cluster_domain)
    for name in dns_names:
        validate_dns_name(name)
    if days <= 0 or ca_days <= 0:
        raise ValueError("certificate lifetimes must be positive numbers of days")
    if days > ca_days:
        raise ValueError(
            f"the serving certificate ({days} days) cannot outlive its CA ({ca_days} days)"
        )
    names = list(dict.fromkeys([*service_dns_names(service, namespace, cluster_domain),
                                *dns_names]))  # fmt: skip
    ips = list(dict.fromkeys(str(ip) for ip in _parse_ips(list(ip_addresses))))
    ca_cert, ca_key = generate_ca(common_name=ca_common_name, days=ca_days)
    cert, key = generate_serving_cert(ca_cert, ca_key, names, ips, days=days)
    return ServiceCerts(ca_cert, cert, key)


def existing_cert_files(cert_dir: Path) -> list[str]:
    """Which of ``ca.crt``, ``tls.crt``, ``tls.key`` already exist in ``cert_dir``."""
    cert_dir = Path(cert_dir)
    return [name for name in CERT_FILES if os.path.lexists(cert_dir / name)]


# ---------------------------------------------------------------------------------------
# reading a certificate directory


class CertDirError(Exception):
    """A certificate directory cannot be used: files missing, unreadable or not PEM."""


def read_cert_dir(cert_dir: Path) -> dict[str, bytes]:
    """The contents of ``ca.crt``, ``tls.crt`` and ``tls.key``; CertDirError (naming every
    missing or unreadable file) when one cannot be read."""
    cert_dir = Path(cert_dir)
    if not cert_dir.is_dir():
        raise CertDirError(f"{cert_dir}: no such directory")
    files: dict[str, bytes] = {}
    errors: list[str] = []
    for name in CERT_FILES:
        try:
            files[name] = (cert_dir / name).read_bytes()
        except FileNotFoundError:
            errors.append(f"{cert_dir / name}: missing")
        except OSError as err:
            errors.append(f"{cert_dir / name}: {err.strerror}")
    if errors:
        raise CertDirError("; ".join(errors))
    return files


def _load_certs(name: str, data: bytes) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CertDirError(f"{name}: not a PEM certificate") from None


def _load_key(name: str, data: bytes) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CertDirError(f"{name}: the key is encrypted; the webhook needs it in clear") from None
    except (ValueError, UnsupportedAlgorithm):
        raise CertDirError(f"{name}: not a PEM private key") from None


def _spki(public_key: Any) -> bytes:
    der: bytes = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def key_matches(cert: x509.Certificate, key: PrivateKeyTypes) -> bool:
    """Whether ``key`` is the private key of ``cert`` (same public key)."""
    return _spki(cert.public_key()) == _spki(key.public_key())


# ---------------------------------------------------------------------------------------
# checking a certificate directory


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _day(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


@dataclass(frozen=True)
class CertInfo:
    """What ``check`` reports about one certificate."""

    file: str
    subject: str
    issuer: str
    not_before: datetime.datetime
    not_after: datetime.datetime
    now: datetime.datetime

    @classmethod
    def of(cls, file: str, cert: x509.Certificate, now: datetime.datetime) -> CertInfo:
        return cls(
            file=file,
            subject=cert.subject.rfc4514_string() or "(empty subject)",
            issuer=cert.issuer.rfc4514_string() or "(empty issuer)",
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            now=now,
        )

    @property
    def seconds_left(self) -> float:
        """Seconds until expiry (negative once expired)."""
        return (self.not_after - self.now).total_seconds()

    @property
    def days_left(self) -> float:
        return self.seconds_left / 86400

    @property
    def expiry(self) -> str:
        if self.not_before > self.now:
            return f"not valid before {_day(self.not_before)}"
        days = self.days_left
        if days < 0:
            return f"expired {_count(int(-days), 'day')} ago ({_day(self.not_after)})"
        if days < 1:
            return f"expires in {_count(int(days * 24), 'hour')} ({_day(self.not_after)})"
        return f"expires in {_count(int(days), 'day')} ({_day(self.not_after)})"

    def problems(self, min_days: float) -> list[str]:
        if self.not_before > self.now:
            return [f"{self.file} is not valid yet: not before {_day(self.not_before)}"]
        if self.seconds_left <= 0:
            return [f"{self.file} has expired: {self.expiry}"]
        if self.days_left < min_days:
            return [f"{self.file} {self.expiry}, under the {min_days:g}-day threshold: renew it"]
        return []


@dataclass
class CertReport:
    """The result of ``check_cert_dir``: facts for the report, and the problems found.

    ``ok`` is true when there is no problem. ``lines`` are (label, text) pairs in report
    order; ``problems`` are complete sentences.
    """

    directory: Path
    min_days: float
    lines: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    ca: list[CertInfo] = field(default_factory=list)
    leaf: CertInfo | None = None
    sans: list[str] = field(default_factory=list)
    chain_ok: bool = False
    key_ok: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    def render(self) -> str:
        width = max((len(label) for label, _ in self.lines), default=0) + 2
        out = [f"{label + ':':<{width}}{text}" for label, text in self.lines]
        out.extend(f"error: {problem}" for problem in self.problems)
        verdict = "OK" if self.ok else f"FAILED ({_count(len(self.problems), 'problem')})"
        out.append(f"result: {verdict}")
        return "\n".join(out) + "\n"


def _san_names(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) of the certificate's subjectAltName extension."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return san.get_values_for_type(x509.DNSName), [
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    ]


def san_list(cert: x509.Certificate) -> list[str]:
    """The certificate's SANs as ``DNS:name`` and ``IP:address`` strings."""
    dns, ips = _san_names(cert)
    return [f"DNS:{name}" for name in dns] + [f"IP:{ip}" for ip in ips]


def _verify_chain(
    leaf: x509.Certificate,
    intermediates: list[x509.Certificate],
    roots: list[x509.Certificate],
    dns: list[str],
    ips: list[str],
    now: datetime.datetime,
) -> tuple[str | None, list[x509.Certificate]]:
    """Verify ``leaf`` as a TLS server certificate against ``roots`` with cryptography's
    X.509 path validation (signatures, issuer names, CA and key-usage constraints, serverAuth
    EKU), for the first name of its SANs. The validation time is ``now`` moved into the
    validity window of the certificates involved when they have one in common, so that an
    expired certificate is reported as such, not as a broken chain.

    Returns (None, the verified chain) or (the reason it does not verify, []).
    """
    subject: x509.DNSName | x509.IPAddress
    plain = [name for name in dns if not name.startswith("*.")]
    if plain:
        subject = x509.DNSName(plain[0])
    elif dns:
        subject = x509.DNSName("x" + dns[0][1:])
    elif ips:
        subject = x509.IPAddress(ipaddress.ip_address(ips[0]))
    else:
        return (
            "tls.crt has no subjectAltName, so no TLS client can accept it (the API server "
            "ignores the common name)",
            [],
        )
    top_issuer = (intermediates[-1] if intermediates else leaf).issuer
    window = [leaf, *intermediates, *(ca for ca in roots if ca.subject == top_issuer)]
    start = max(c.not_valid_before_utc for c in window)
    end = min(c.not_valid_after_utc for c in window)
    when = now
    if start < end:
        when = min(max(now, start), end - datetime.timedelta(seconds=1))
    verifier = PolicyBuilder().store(Store(roots)).time(when).build_server_verifier(subject)
    try:
        chain = verifier.verify(leaf, intermediates)
    except VerificationError as err:
        reason = str(err).removeprefix("validation failed: ")
        reason = re.sub(r" \(encountered processing <Certificate\(.*\)>\)$", "", reason)
        issuers = {ca.subject for ca in roots}
        if top_issuer not in issuers:
            named = ", ".join(sorted(s.rfc4514_string() for s in issuers)) or "nothing"
            reason += f" (tls.crt is issued by {top_issuer.rfc4514_string()}; ca.crt holds {named})"
        return reason, []
    return None, list(chain)


def check_cert_dir(
    cert_dir: Path,
    *,
    min_days: float = 30,
    required_names: Sequence[str] = (),
    now: datetime.datetime | None = None,
) -> CertReport:
    """Check a certificate directory as the API server and meshgate will use it.

    Problems: a file missing or not PEM; ``tls.crt`` not verifying against ``ca.crt`` as a
    TLS server certificate for its first SAN; ``tls.key`` not the key of ``tls.crt``; the
    serving certificate (and any intermediate in ``tls.crt``) or the CA that issued it
    expired, not yet valid, or expiring in under ``min_days`` days; a name of
    ``required_names`` not covered by the SANs.
    """
    cert_dir = Path(cert_dir)
    now = now or _now()
    report = CertReport(directory=cert_dir, min_days=min_days)
    report.lines.append(("directory", str(cert_dir)))
    try:
        files = read_cert_dir(cert_dir)
        roots = _load_certs(CA_CERT_FILE, files[CA_CERT_FILE])
        served = _load_certs(TLS_CERT_FILE, files[TLS_CERT_FILE])
        key = _load_key(TLS_KEY_FILE, files[TLS_KEY_FILE])
    except CertDirError as err:
        report.problems.append(str(err))
        return report
    leaf, intermediates = served[0], served[1:]

    report.ca = [CertInfo.of(CA_CERT_FILE, ca, now) for ca in roots]
    for info in report.ca:
        report.lines.append((CA_CERT_FILE, f"{info.subject}; {info.expiry}"))
    report.leaf = CertInfo.of(TLS_CERT_FILE, leaf, now)
    report.lines.append(
        (TLS_CERT_FILE, f"{report.leaf.subject}, issued by {report.leaf.issuer}; "
                        f"{report.leaf.expiry}")
    )  # fmt: skip
    if intermediates:
        report.lines.append(
            (TLS_CERT_FILE, f"+ {_count(len(intermediates), 'intermediate certificate')}")
        )
    dns, ips = _san_names(leaf)
    report.sans = san_list(leaf)
    report.lines.append(("SANs", ", ".join(report.sans) or "(none)"))

    reason, chain = _verify_chain(leaf, intermediates, roots, dns, ips, now)
    report.chain_ok = reason is None
    if reason is None:
        report.lines.append(("chain", f"ok: {TLS_CERT_FILE} verifies against {CA_CERT_FILE}"))
    else:
        report.lines.append(("chain", "FAILED"))
        report.problems.append(f"{TLS_CERT_FILE} does not verify against {CA_CERT_FILE}: {reason}")

    report.key_ok = key_matches(leaf, key)
    if report.key_ok:
        report.lines.append(("key", f"ok: {TLS_KEY_FILE} matches {TLS_CERT_FILE}"))
    else:
        report.lines.append(("key", "FAILED"))
        report.problems.append(
            f"{TLS_KEY_FILE} does not match {TLS_CERT_FILE} (it is the key of another "
            "certificate): replace both together"
        )

    # Expiry: the serving certificate, its intermediates, and the CA that issued the chain
    # (or, when the chain does not verify, every CA in ca.crt that could have).
    top_issuer = (intermediates[-1] if intermediates else leaf).issuer
    issuing = [chain[-1]] if chain else [ca for ca in roots if ca.subject == top_issuer]
    infos = [report.leaf]
    infos += [CertInfo.of(f"{TLS_CERT_FILE} (intermediate {i + 1})", cert, now)
              for i, cert in enumerate(intermediates)]  # fmt: skip
    infos += [info for ca, info in zip(roots, report.ca, strict=True) if ca in issuing]
    for info in infos:
        report.problems.extend(info.problems(min_days))

    if required_names:
        missing = [name for name in required_names if not _name_covered(name, dns)]
        if missing:
            report.lines.append(("service", "FAILED"))
            report.problems.append(f"the SANs of {TLS_CERT_FILE} lack {', '.join(missing)}")
        else:
            report.lines.append(("service", f"ok: SANs cover {', '.join(required_names)}"))
    return report


# ---------------------------------------------------------------------------------------
# the Secret


def tls_secret(
    name: str,
    namespace: str,
    files: dict[str, bytes],
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A ``kubernetes.io/tls`` Secret holding ``ca.crt``, ``tls.crt`` and ``tls.key``."""
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels:
        metadata["labels"] = dict(labels)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "kubernetes.io/tls",
        "data": {key: base64.b64encode(files[key]).decode("ascii") for key in CERT_FILES},
    }
