"""The TLS policy of the webhook's listener, proved with real handshakes (SPEC 6, issue 4):
TLS 1.2 or newer; for TLS 1.2 forward-secret AEAD suites only (ECDHE with AES-GCM or
ChaCha20-Poly1305); no compression; no renegotiation; a chain that verifies with the CA.

Every refusal is checked against a control: the same client offer, against a permissive
server with the same certificate, must succeed in this process's OpenSSL, so a refusal is
the webhook's policy and not a limit of the local library (if even the control fails, the
case is skipped, saying why). The listener is served with an ECDSA certificate (what
`meshgate certs` makes) and with an RSA one (what cert-manager issues by default).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from helpers import ServerThread, make_cert_dir

from webhook import certs
from webhook.admission import Context
from webhook.app import create_app
from webhook.namespaces import StaticNamespaces
from webhook.policy import default_policy
from webhook.runtime import Runtime
from webhook.server import ServingCertificate

# ---------------------------------------------------------------------------------------
# certificates


def _rsa_serving_cert(ca_cert: x509.Certificate, ca_key: object) -> tuple[bytes, bytes]:
    """An RSA-2048 serving certificate with the usages cert-manager gives one."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.datetime.now(datetime.UTC)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]), critical=False)  # fmt: skip
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False,
                          key_encipherment=True, data_encipherment=False, key_agreement=False,
                          key_cert_sign=False, crl_sign=False, encipher_only=False,
                          decipher_only=False),
            critical=True,
        )  # fmt: skip
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())  # fmt: skip
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _write(directory: Path, kind: str) -> Path:
    if kind == "ecdsa":
        return make_cert_dir(directory, f"meshgate-tls-test-{kind}")
    ca_cert, ca_key = certs.generate_ca(common_name=f"meshgate-tls-test-{kind}")
    directory.mkdir(parents=True)
    cert_pem, key_pem = _rsa_serving_cert(ca_cert, ca_key)
    (directory / certs.CA_CERT_FILE).write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (directory / certs.TLS_CERT_FILE).write_bytes(cert_pem)
    (directory / certs.TLS_KEY_FILE).write_bytes(key_pem)
    return directory


# ---------------------------------------------------------------------------------------
# the server


@dataclass
class Listener:
    kind: str
    cert_dir: Path
    port: int

    @property
    def ca(self) -> str:
        return str(self.cert_dir / certs.CA_CERT_FILE)


@contextlib.contextmanager
def _serving(cert_dir: Path, kind: str) -> Iterator[Listener]:
    runtime = Runtime()
    runtime.install(Context(default_policy(), StaticNamespaces({}), "meshgate-system"), "test")
    with ServerThread(create_app(runtime), cert_dir, name=f"meshgate-tls-{kind}",
                      runtime=runtime) as served:  # fmt: skip
        yield Listener(kind, cert_dir, served.port)


@pytest.fixture(scope="module", params=["ecdsa", "rsa"])
def listener(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Listener]:  # fmt: skip
    cert_dir = _write(tmp_path_factory.mktemp(f"tls-{request.param}") / "certs", request.param)
    with _serving(cert_dir, request.param) as served:
        yield served


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A CA that signed none of the servers' certificates."""
    return str(_write(tmp_path_factory.mktemp("other") / "certs", "ecdsa") / certs.CA_CERT_FILE)


# ---------------------------------------------------------------------------------------
# clients and handshakes


def client(ca: str | None, *, minimum: ssl.TLSVersion | None = None,
           maximum: ssl.TLSVersion | None = None, ciphers: str | None = None
           ) -> ssl.SSLContext:  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.load_verify_locations(ca)
        context.verify_flags |= ssl.VERIFY_X509_STRICT
    if ciphers is not None:
        context.set_ciphers(ciphers)  # SSLError when this OpenSSL has none of them
    if minimum is not None:
        context.minimum_version = minimum
    if maximum is not None:
        context.maximum_version = maximum
    return context


@dataclass
class Handshake:
    version: str | None
    cipher: str
    compression: str | None
    status: bytes  # the first line of the answer to GET /healthz


def handshake(port: int, context: ssl.SSLContext, server_hostname: str = "127.0.0.1"
              ) -> Handshake:  # fmt: skip
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        reply = tls.recv(4096)
        cipher = tls.cipher()
        assert cipher is not None
        return Handshake(tls.version(), cipher[0], tls.compression(), reply.split(b"\r\n")[0])


def permissive_server(cert_dir: Path) -> ssl.SSLContext:
    """What a server without a TLS policy would accept: everything this OpenSSL has."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.set_ciphers("ALL:eNULL:@SECLEVEL=0")
    context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    context.load_cert_chain(cert_dir / certs.TLS_CERT_FILE, cert_dir / certs.TLS_KEY_FILE)
    return context


def in_memory_handshake(server: ssl.SSLContext, context: ssl.SSLContext) -> str | None:
    """The negotiated cipher between these two contexts, or None if they cannot agree."""
    left, right = socket.socketpair()
    left.settimeout(5)
    right.settimeout(5)

    def serve() -> None:
        with contextlib.suppress(ssl.SSLError, OSError), server.wrap_socket(
            left, server_side=True
        ) as tls:
            tls.recv(1)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with context.wrap_socket(right, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"x")
            cipher = tls.cipher()
            return cipher[0] if cipher else None
    except (ssl.SSLError, OSError):
        return None
    finally:
        thread.join(5)
        left.close()
        right.close()


def offer_or_skip(listener: Listener, make: Callable[[], ssl.SSLContext], what: str
                  ) -> ssl.SSLContext:  # fmt: skip
    """The client context, once a permissive server has shown that it can be negotiated."""
    try:
        context = make()
    except (ssl.SSLError, ValueError):
        pytest.skip(f"this OpenSSL cannot offer {what} at all")
    if in_memory_handshake(permissive_server(listener.cert_dir), make()) is None:
        pytest.skip(f"{what}: not negotiable with an {listener.kind} certificate here, "
                    "even by a permissive server")
    return context


# ---------------------------------------------------------------------------------------
# the chain


@pytest.mark.parametrize("name", [pytest.param("127.0.0.1", id="ip-san"),
                                  pytest.param("localhost", id="dns-san")])  # fmt: skip
def test_the_chain_verifies_with_the_ca(listener: Listener, name: str) -> None:
    result = handshake(listener.port, client(listener.ca), server_hostname=name)
    assert result.status == b"HTTP/1.1 200 OK"


def test_a_client_trusting_another_ca_refuses_the_server(
    listener: Listener, other_ca: str
) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="CERTIFICATE_VERIFY_FAILED"):
        handshake(listener.port, client(other_ca))


def test_a_name_not_in_the_sans_is_refused(listener: Listener) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="(?i)hostname|match"):
        handshake(listener.port, client(listener.ca), server_hostname="meshgate.example.com")


def test_plain_http_is_not_served(listener: Listener) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{listener.port}", timeout=5) as c:
        try:
            response = c.get("/healthz")
        except httpx.TransportError:
            return
        assert response.status_code >= 400


# ---------------------------------------------------------------------------------------
# protocol versions


@pytest.mark.parametrize(
    ("version", "name"),
    [
        pytest.param(ssl.TLSVersion.TLSv1_2, "TLSv1.2", id="tls1.2"),
        pytest.param(ssl.TLSVersion.TLSv1_3, "TLSv1.3", id="tls1.3"),
    ],
)
def test_tls_1_2_and_1_3_are_accepted(
    listener: Listener, version: ssl.TLSVersion, name: str
) -> None:
    result = handshake(listener.port, client(listener.ca, minimum=version, maximum=version))
    assert result.version == name
    assert result.status == b"HTTP/1.1 200 OK"


def test_a_modern_client_gets_tls_1_3(listener: Listener) -> None:
    result = handshake(listener.port, client(listener.ca))
    assert result.version == "TLSv1.3"
    assert result.cipher in ("TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256",
                             "TLS_CHACHA20_POLY1305_SHA256")  # fmt: skip


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize(
    "version",
    [pytest.param(ssl.TLSVersion.TLSv1, id="tls1.0"),
     pytest.param(ssl.TLSVersion.TLSv1_1, id="tls1.1")],
)  # fmt: skip
def test_tls_1_0_and_1_1_are_refused(listener: Listener, version: ssl.TLSVersion) -> None:
    context = offer_or_skip(
        listener,
        lambda: client(listener.ca, minimum=version, maximum=version,
                       ciphers="ALL:@SECLEVEL=0"),  # fmt: skip
        version.name,
    )
    with pytest.raises(ssl.SSLError, match="(?i)protocol|version"):
        handshake(listener.port, context)


# ---------------------------------------------------------------------------------------
# TLS 1.2 cipher suites

ACCEPTED = [
    pytest.param("AES128-GCM-SHA256", id="ecdhe-aes128-gcm"),
    pytest.param("AES256-GCM-SHA384", id="ecdhe-aes256-gcm"),
    pytest.param("CHACHA20-POLY1305", id="ecdhe-chacha20-poly1305"),
]


@pytest.mark.parametrize("suffix", ACCEPTED)
def test_tls_1_2_forward_secret_aead_suites_are_accepted(listener: Listener, suffix: str) -> None:
    auth = "ECDSA" if listener.kind == "ecdsa" else "RSA"
    suite = f"ECDHE-{auth}-{suffix}"
    context = client(listener.ca, maximum=ssl.TLSVersion.TLSv1_2, ciphers=suite)
    result = handshake(listener.port, context)
    assert (result.version, result.cipher) == ("TLSv1.2", suite)
    assert result.status == b"HTTP/1.1 200 OK"


REFUSED = [
    pytest.param("ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-ECDSA-AES128-SHA256:"
                 "ECDHE-ECDSA-AES256-SHA384:ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA:"
                 "ECDHE-RSA-AES128-SHA256:ECDHE-RSA-AES256-SHA384",
                 "CBC suites (forward-secret, not AEAD)", id="cbc"),
    pytest.param("AES128-GCM-SHA256:AES256-GCM-SHA384:AES128-SHA:AES256-SHA:AES128-SHA256",
                 "RSA key exchange (no forward secrecy)", id="rsa-key-exchange"),
    pytest.param("DES-CBC3-SHA:ECDHE-RSA-DES-CBC3-SHA:ECDHE-ECDSA-DES-CBC3-SHA:@SECLEVEL=0",
                 "3DES", id="3des"),
    pytest.param("NULL-SHA256:NULL-SHA:ECDHE-ECDSA-NULL-SHA:ECDHE-RSA-NULL-SHA:@SECLEVEL=0",
                 "NULL encryption", id="null"),
    pytest.param("aNULL:@SECLEVEL=0", "anonymous (unauthenticated) key exchange",
                 id="anonymous"),
    pytest.param("EXP:EXPORT:@SECLEVEL=0", "EXPORT suites", id="export"),
    pytest.param("RC4:@SECLEVEL=0", "RC4", id="rc4"),
]  # fmt: skip


@pytest.mark.parametrize(("ciphers", "what"), REFUSED)
def test_tls_1_2_weak_suites_are_refused(listener: Listener, ciphers: str, what: str) -> None:
    context = offer_or_skip(
        listener, lambda: client(listener.ca, maximum=ssl.TLSVersion.TLSv1_2, ciphers=ciphers),
        what,
    )  # fmt: skip
    # The listener aborts the handshake (uvloop drops the connection without flushing
    # OpenSSL's alert, so the client may see an EOF instead of a handshake-failure alert).
    with pytest.raises(ssl.SSLError, match="(?i)handshake|cipher|alert|EOF"):
        handshake(listener.port, context)
    assert handshake(listener.port, client(listener.ca)).status == b"HTTP/1.1 200 OK"


def test_the_listener_enables_only_forward_secret_aead_suites(tmp_path: Path) -> None:
    """What the handshakes above sample, for the whole list the listener would pick from
    (this includes suites that the local OpenSSL cannot offer as a client)."""
    context = ServingCertificate(_write(tmp_path / "certs", "ecdsa")).listener
    tls12 = [c for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12, "no TLS 1.2 suite at all"
    for cipher in tls12:
        assert cipher["kea"] == "kx-ecdhe", cipher["name"]
        assert cipher["aead"] is True, cipher["name"]
        assert cipher["symmetric"] in ("aes-128-gcm", "aes-256-gcm", "chacha20-poly1305")
    assert all(c["protocol"] in ("TLSv1.2", "TLSv1.3") for c in context.get_ciphers())
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


# ---------------------------------------------------------------------------------------
# compression and renegotiation


def test_no_compression(listener: Listener) -> None:
    context = ServingCertificate(listener.cert_dir).listener
    assert context.options & ssl.OP_NO_COMPRESSION
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        result = handshake(listener.port, client(listener.ca, minimum=version, maximum=version))
        assert result.compression is None


OPENSSL = shutil.which("openssl")
# SSL_OP_ALLOW_CLIENT_RENEGOTIATION (OpenSSL 3 refuses client renegotiation by default; the
# control server turns it back on to show that the probe below can see it succeed).
ALLOW_CLIENT_RENEGOTIATION = 1 << 8


def renegotiate(port: int, ca: str) -> str:
    """openssl s_client over TLS 1.2: ask for a renegotiation ('R'), then send a request.
    Its output and errors."""
    assert OPENSSL is not None
    process = subprocess.Popen(
        [OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_2", "-CAfile", ca,
         "-servername", "localhost"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    assert process.stdin is not None
    try:
        process.stdin.write(b"R\n")
        process.stdin.flush()
        time.sleep(0.5)
        with contextlib.suppress(BrokenPipeError):
            process.stdin.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            process.stdin.flush()
        time.sleep(0.3)
        output, _ = process.communicate(timeout=10)  # closes stdin: s_client ends
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return output.decode(errors="replace")


def _control_server(cert_dir: Path) -> tuple[int, Callable[[], None]]:
    """A one-connection TLS 1.2 server that allows client renegotiation and answers 200."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.options &= ~ssl.OP_NO_RENEGOTIATION
    context.options |= ALLOW_CLIENT_RENEGOTIATION
    context.load_cert_chain(cert_dir / certs.TLS_CERT_FILE, cert_dir / certs.TLS_KEY_FILE)
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(10)

    def serve() -> None:
        with contextlib.suppress(OSError, ssl.SSLError):
            conn, _ = sock.accept()
            with context.wrap_socket(conn, server_side=True) as tls:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = tls.recv(4096)
                    if not chunk:
                        return
                    data += chunk
                tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    thread = threading.Thread(target=serve)
    thread.start()

    def stop() -> None:
        thread.join(10)
        sock.close()

    return sock.getsockname()[1], stop


@pytest.mark.skipif(OPENSSL is None, reason="no openssl command to renegotiate with")
def test_client_renegotiation_is_refused(listener: Listener) -> None:
    port, stop = _control_server(listener.cert_dir)
    try:
        control = renegotiate(port, listener.ca)
    finally:
        stop()
    if "RENEGOTIATING" not in control or "HTTP/1.1 200" not in control:
        pytest.skip("this openssl cannot renegotiate even with a permissive server")
    output = renegotiate(listener.port, listener.ca)
    assert "RENEGOTIATING" in output
    assert "no renegotiation" in output.lower()
    assert "HTTP/1.1 200" not in output
    assert ServingCertificate(listener.cert_dir).listener.options & ssl.OP_NO_RENEGOTIATION


def test_no_tls13_session_tickets_so_the_session_cache_does_not_grow() -> None:
    # Nothing resumes sessions with meshgate; each cached one is memory held per connection.
    from webhook.server import hardened_context

    context = hardened_context()
    assert context.num_tickets == 0
    assert context.options & ssl.OP_NO_TICKET
