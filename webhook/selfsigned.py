"""Self-managed serving certificate: ``meshgate serve --self-signed-secret NAME``.

Like Istio's and Kyverno's webhooks, meshgate can look after its own TLS instead of relying
on cert-manager or on files made by hand. One Secret (type ``kubernetes.io/tls``) is the
single source of truth, and every replica converges on it:

- no Secret: each replica generates a CA and a serving certificate and CREATEs the Secret;
  the API server lets exactly one create succeed (409 AlreadyExists for the others), and the
  others read and use the winner's;
- a Secret without the keys (e.g. created empty by the manifests, so that RBAC can name it):
  filled by an UPDATE carrying the resourceVersion that was read; 409 Conflict means another
  replica filled it first, so it is read again;
- a complete Secret: used as it is.

Each replica then puts the CA (base64 of ``ca.crt``) into ``clientConfig.caBundle`` of every
webhook of the Mutating- and ValidatingWebhookConfiguration (a JSON patch that tests each
webhook's name before it sets the field, sent only when a value differs), and writes the
Secret's files into ``--cert-dir``, so all replicas serve the same certificate.

A background thread does all of this again every minute: a webhook configuration re-created
by ``kubectl apply`` gets its caBundle back, a deleted Secret is re-created from what this
replica serves (the same CA, so nothing changes for the API server), and a serving
certificate in the last third of its validity is renewed from the same CA, whose key the
Secret keeps as ``ca.key`` for that purpose: the caBundle stays the same across renewals.
Only when the CA itself has to change (no usable ``ca.key``, or the CA expires within a
serving certificate's lifetime) is a new CA made, and then the old one stays in ``ca.crt``,
after the new, so the API server trusts the certificates of both while replicas catch up.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from kubernetes import client

from . import certs
from .certs import CA_CERT_FILE, TLS_CERT_FILE, TLS_KEY_FILE

log = logging.getLogger("meshgate.selfsigned")

Object = dict[str, Any]

SECRET_TYPE = "kubernetes.io/tls"
CA_KEY = "ca.key"  # in the Secret only: never written to --cert-dir
SERVED_FILES = (CA_CERT_FILE, TLS_CERT_FILE, TLS_KEY_FILE)
CA_DAYS = 3650
SERVING_DAYS = 365
RENEW_FRACTION = 1 / 3  # renew once less than this part of the validity remains
RECHECK_SECONDS = 60.0
REQUEST_TIMEOUT = 10.0
ATTEMPTS = 5  # rounds of read-then-write before giving up on a Secret that keeps changing
JSON_PATCH = "application/json-patch+json"
DATA_LINK = "..data"  # the kubelet's layout for Secret volumes: files are links through here

Clock = Callable[[], datetime.datetime]


class SelfSignedError(Exception):
    """The Secret could not be read or written; the message says which and why."""


@dataclass(frozen=True)
class Material:
    """The PEM contents of one serving certificate, as the Secret holds them."""

    ca_crt: bytes
    tls_crt: bytes
    tls_key: bytes
    ca_key: bytes = b""  # the CA's key, when meshgate made the CA: renewals reuse the CA

    @property
    def ca_bundle(self) -> str:
        """The ``caBundle`` of a webhook configuration: base64 of ``ca.crt``."""
        return base64.b64encode(self.ca_crt).decode("ascii")

    def files(self) -> dict[str, bytes]:
        return {CA_CERT_FILE: self.ca_crt, TLS_CERT_FILE: self.tls_crt, TLS_KEY_FILE: self.tls_key}

    def secret_data(self) -> dict[str, str]:
        data = {**self.files(), **({CA_KEY: self.ca_key} if self.ca_key else {})}
        return {k: base64.b64encode(v).decode("ascii") for k, v in data.items()}

    @classmethod
    def from_secret(cls, secret: Object) -> Material:
        """The Secret's keys (missing or undecodable ones are empty)."""
        data = secret.get("data") or {}

        def value(key: str) -> bytes:
            try:
                return base64.b64decode(data.get(key) or "", validate=True)
            except (ValueError, TypeError):
                return b""

        return cls(value(CA_CERT_FILE), value(TLS_CERT_FILE), value(TLS_KEY_FILE), value(CA_KEY))

    def complete(self) -> bool:
        return all((self.ca_crt, self.tls_crt, self.tls_key))

    def empty(self) -> bool:
        return not any((self.ca_crt, self.tls_crt, self.tls_key))


@dataclass(frozen=True)
class Synced:
    """The outcome of one round of `SelfSigned.sync`: the caBundle of what is served now,
    and what was done to get there."""

    ca_bundle: str
    not_after: datetime.datetime
    # What happened to the Secret: existing (used as it was), created, recreated (after a
    # deletion, from what this replica serves), filled (it was empty or incomplete),
    # renewed (due for renewal), replaced (it could not be served: expired, broken).
    secret: str
    configurations: Mapping[str, str] = field(default_factory=dict)  # kind → outcome
    files_changed: bool = False


# ---------------------------------------------------------------------------------------
# judging and making certificates (no API calls)


@dataclass(frozen=True)
class Assessment:
    problem: str | None  # why the Secret cannot be served as it is (None: it can)
    renew: bool  # usable, but in the last third of its validity
    not_after: datetime.datetime | None
    warnings: tuple[str, ...] = ()


def _public(key: Any) -> bytes:
    """A public key as DER SubjectPublicKeyInfo, to compare keys of any type."""
    return bytes(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _fingerprint(cert_pem: bytes) -> str:
    try:
        der = x509.load_pem_x509_certificates(cert_pem)[0].public_bytes(
            serialization.Encoding.DER
        )
    except ValueError:
        return "unreadable"
    return hashlib.sha256(der).hexdigest()[:16]


def assess(material: Material, dns_name: str, now: datetime.datetime) -> Assessment:
    """Whether a complete Secret's certificate can be served, and whether it is due for
    renewal. ``dns_name`` is the name the API server calls (``SVC.NS.svc``)."""
    try:
        cas = x509.load_pem_x509_certificates(material.ca_crt)
    except ValueError:
        return Assessment("ca.crt holds no PEM certificate", False, None)
    try:
        leaf = x509.load_pem_x509_certificates(material.tls_crt)[0]
    except ValueError:
        return Assessment("tls.crt holds no PEM certificate", False, None)
    try:
        key = serialization.load_pem_private_key(material.tls_key, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return Assessment("tls.key holds no unencrypted PEM private key", False, None)
    not_after = leaf.not_valid_after_utc
    if _public(key.public_key()) != _public(leaf.public_key()):
        return Assessment("tls.key is not the key of tls.crt", False, not_after)
    if not any(_issued_by(leaf, ca) for ca in cas):
        return Assessment("tls.crt is not signed by a CA in ca.crt", False, not_after)
    if now >= not_after:
        return Assessment(f"tls.crt expired at {not_after:%Y-%m-%dT%H:%M:%SZ}", False, not_after)
    warnings = []
    try:
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = names.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        dns_names = []
    if dns_name not in dns_names:
        # Not replaced automatically: replicas started with different --service values would
        # take turns replacing each other's certificate.
        warnings.append(f"tls.crt does not name {dns_name} (it names {', '.join(dns_names)}): "
                        "delete the Secret to have a new one made")  # fmt: skip
    lifetime = not_after - leaf.not_valid_before_utc
    renew = not_after - now < lifetime * RENEW_FRACTION
    return Assessment(None, renew, not_after, tuple(warnings))


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _reusable_ca(
    material: Material, now: datetime.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    """The Secret's CA and its key, if they can sign a full-length serving certificate."""
    try:
        ca = x509.load_pem_x509_certificates(material.ca_crt)[0]
        key = serialization.load_pem_private_key(material.ca_key, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or _public(key.public_key()) != _public(
        ca.public_key()
    ):
        return None
    if ca.not_valid_after_utc - now < datetime.timedelta(days=SERVING_DAYS):
        return None
    return ca, key


def _previous_ca(material: Material, now: datetime.datetime) -> bytes:
    """The old first CA, as PEM, if it is still valid (kept trusted during a CA change)."""
    try:
        ca = x509.load_pem_x509_certificates(material.ca_crt)[0]
    except ValueError:
        return b""
    return _cert_pem(ca) if ca.not_valid_after_utc > now else b""


def generate(dns_names: list[str], previous: Material | None = None,
             now: datetime.datetime | None = None) -> Material:  # fmt: skip
    """A serving certificate for ``dns_names``: from ``previous``'s CA when its key is there
    and the CA outlives the new certificate, else from a new CA (and then ``ca.crt`` keeps
    the previous CA after the new one while that is still valid)."""
    now = now or datetime.datetime.now(datetime.UTC)
    reusable = _reusable_ca(previous, now) if previous is not None else None
    if reusable is not None:
        ca, ca_key = reusable
        cert, key = certs.generate_serving_cert(ca, ca_key, dns_names, [], days=SERVING_DAYS)
        return Material(previous.ca_crt if previous else b"", _cert_pem(cert), _key_pem(key),
                        _key_pem(ca_key))  # fmt: skip
    ca, ca_key = certs.generate_ca(common_name="meshgate-self-signed-ca", days=CA_DAYS)
    cert, key = certs.generate_serving_cert(ca, ca_key, dns_names, [], days=SERVING_DAYS)
    old = _previous_ca(previous, now) if previous is not None else b""
    return Material(_cert_pem(ca) + old, _cert_pem(cert), _key_pem(key), _key_pem(ca_key))


# ---------------------------------------------------------------------------------------
# the files in --cert-dir


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def publish(cert_dir: Path, files: Mapping[str, bytes]) -> bool:
    """Make ``cert_dir`` hold ``files`` (``tls.key`` mode 0600), all changing at once.

    The layout is the kubelet's for Secret volumes: the files live in a fresh hidden
    directory, ``..data`` links to it, and each name links through ``..data``; one rename
    of ``..data`` swaps them all, so a reader never sees a new certificate with an old key.
    Returns False when the files already hold these contents (nothing is touched).
    """
    cert_dir = Path(cert_dir)
    cert_dir.mkdir(parents=True, exist_ok=True)
    if all(_read(cert_dir / name) == data for name, data in files.items()):
        return False
    version = Path(tempfile.mkdtemp(prefix="..", dir=cert_dir))  # mode 0700
    for name, data in files.items():
        mode = 0o600 if name == TLS_KEY_FILE else 0o644
        fd = os.open(version / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    _link(cert_dir / DATA_LINK, version.name)
    for name in files:
        target = f"{DATA_LINK}/{name}"
        path = cert_dir / name
        if not (path.is_symlink() and os.readlink(path) == target):
            _link(path, target)  # replaces a plain file left by an earlier layout, too
    for entry in cert_dir.iterdir():
        if entry.name.startswith("..") and not entry.is_symlink() and entry != version:
            shutil.rmtree(entry, ignore_errors=True)
    return True


def _link(path: Path, target: str) -> None:
    """Point ``path`` at ``target`` atomically (a new link renamed over the old name)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    os.symlink(target, temporary)
    os.replace(temporary, path)


# ---------------------------------------------------------------------------------------
# the cluster


def _status(err: Exception) -> int | None:
    status = getattr(err, "status", None)
    return status if isinstance(status, int) else None


def _describe(err: Exception) -> str:
    """``403 Forbidden: secrets "x" is forbidden: …`` from an ApiException, else the error."""
    status = _status(err)
    if status is None:
        return f"{type(err).__name__}: {err}"[:300]
    message = ""
    with contextlib.suppress(ValueError, TypeError):
        message = str(orjson.loads(getattr(err, "body", None) or b"null").get("message", ""))
    return f"{status} {getattr(err, 'reason', '')}: {message}".strip(": ")[:300]


class SelfSigned:
    """One replica's keeper of the Secret, the files in ``cert_dir`` and the caBundles."""

    def __init__(
        self,
        api: Any,
        *,
        namespace: str,
        secret: str,
        service: str = "meshgate",
        webhook_configuration: str = "meshgate",
        cert_dir: Path,
        request_timeout: float = REQUEST_TIMEOUT,
        clock: Clock | None = None,
    ) -> None:
        self._core: Any = client.CoreV1Api(api)
        self._admission: Any = client.AdmissionregistrationV1Api(api)
        self.namespace = namespace
        self.secret = secret
        self.service = service
        self.webhook_configuration = webhook_configuration
        self.cert_dir = Path(cert_dir)
        self._timeout = request_timeout
        self._clock: Clock = clock or (lambda: datetime.datetime.now(datetime.UTC))
        self._current: Material | None = None  # what this replica serves
        self._reported: dict[str, str] = {}  # kind → last outcome logged
        self._warned: set[str] = set()  # warnings about the Secret, logged once
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.rounds = 0
        self.failures = 0

    @property
    def dns_names(self) -> list[str]:
        return certs.service_dns_names(self.service, self.namespace)

    @property
    def where(self) -> str:
        return f"Secret {self.namespace}/{self.secret}"

    # -- one round -------------------------------------------------------------------------

    def sync(self) -> Synced:
        """Settle the Secret, patch the caBundles, write the files. Raises SelfSignedError
        when the Secret cannot be read or written; webhook configurations that are missing
        or cannot be patched are logged and reported in ``configurations``."""
        with self._lock:
            material, origin, not_after = self._settle()
            configurations = self.patch_ca_bundles(material.ca_bundle)
            try:
                changed = publish(self.cert_dir, material.files())
            except OSError as err:
                raise SelfSignedError(f"cannot write the certificate files into "
                                      f"{self.cert_dir}: {err}") from None  # fmt: skip
            if changed:
                log.info("serving certificate files written",
                         extra={"dir": str(self.cert_dir), "secret": self.where,
                                "ca": _fingerprint(material.ca_crt),
                                "notAfter": not_after.isoformat()})  # fmt: skip
            self._current = material
            self.rounds += 1
            return Synced(material.ca_bundle, not_after, origin, configurations, changed)

    def _settle(self) -> tuple[Material, str, datetime.datetime]:
        """Read the Secret; create, fill or renew it if needed; the material everyone uses."""
        for _ in range(ATTEMPTS):
            secret = self._call("GET", self._read_secret)
            if secret is None:
                material = self._usable_current() or generate(self.dns_names)
                origin = "recreated" if material is self._current else "created"
                created = self._call("create", self._create_secret, material)
                if created is None:  # 409 AlreadyExists: another replica won; read theirs
                    log.info("another replica created the Secret first: using it",
                             extra={"secret": self.where})  # fmt: skip
                    continue
                log.info(f"{origin} the Secret", extra={
                    "secret": self.where, "ca": _fingerprint(material.ca_crt)})  # fmt: skip
                return material, origin, self._not_after(material)
            found = Material.from_secret(secret)
            judged = assess(found, self.dns_names[0], self._clock()) if found.complete() else None
            if judged is not None and judged.problem is None and not judged.renew:
                for warning in set(judged.warnings) - self._warned:  # once, not every round
                    log.warning(warning, extra={"secret": self.where})
                self._warned = set(judged.warnings)
                assert judged.not_after is not None
                return found, "existing", judged.not_after
            if judged is None:
                reason = "empty" if found.empty() else "incomplete"
                material, origin = self._usable_current() or generate(self.dns_names), "filled"
            else:
                reason = judged.problem or "due for renewal"
                origin = "renewed" if judged.problem is None else "replaced"
                material = generate(self.dns_names, found, self._clock())
            replaced = self._call("update", self._replace_secret, secret, material)
            if replaced is None:  # 409 Conflict: changed since read; read again
                log.info("the Secret changed while it was being written: reading it again",
                         extra={"secret": self.where})  # fmt: skip
                continue
            log.info(f"{origin} the Secret", extra={
                "secret": self.where, "why": reason, "ca": _fingerprint(material.ca_crt),
                "sameCA": material.ca_crt == found.ca_crt})  # fmt: skip
            return material, origin, self._not_after(material)
        raise SelfSignedError(f"{self.where} kept changing during {ATTEMPTS} attempts")

    def _usable_current(self) -> Material | None:
        """What this replica serves, if it is still good: a deleted Secret is re-created
        with it, so the API server's caBundle stays right for every replica."""
        if self._current is None:
            return None
        judged = assess(self._current, self.dns_names[0], self._clock())
        return self._current if judged.problem is None and not judged.renew else None

    def _not_after(self, material: Material) -> datetime.datetime:
        return x509.load_pem_x509_certificates(material.tls_crt)[0].not_valid_after_utc

    def _call(self, what: str, call: Callable[..., Object], *args: Any) -> Object | None:
        """Run a Secret call; 404 on GET and 409 on writes come back as None."""
        try:
            return call(*args)
        except Exception as err:
            status = _status(err)
            if (status == 404 and what == "GET") or (status == 409 and what != "GET"):
                return None
            raise SelfSignedError(f"{self.where}: {what} failed: {_describe(err)}") from None

    def _read_secret(self) -> Object:
        response = self._core.read_namespaced_secret(
            self.secret, self.namespace, _preload_content=False, _request_timeout=self._timeout
        )
        secret: Object = orjson.loads(response.data)
        return secret

    def _create_secret(self, material: Material) -> Object:
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": self.secret,
                "namespace": self.namespace,
                "labels": {"app.kubernetes.io/name": "meshgate",
                           "app.kubernetes.io/managed-by": "meshgate"},
            },
            "type": SECRET_TYPE,
            "data": material.secret_data(),
        }  # fmt: skip
        response = self._core.create_namespaced_secret(
            self.namespace, body, _preload_content=False, _request_timeout=self._timeout
        )
        created: Object = orjson.loads(response.data)
        return created

    def _replace_secret(self, secret: Object, material: Material) -> Object:
        """An update of the Secret as read: its resourceVersion makes it conditional, and
        its type (immutable) and any other keys stay."""
        body = dict(secret)
        body.pop("stringData", None)
        body["type"] = secret.get("type") or SECRET_TYPE
        body["data"] = {**(secret.get("data") or {}), **material.secret_data()}
        if not material.ca_key:
            body["data"].pop(CA_KEY, None)
        response = self._core.replace_namespaced_secret(
            self.secret, self.namespace, body, _preload_content=False,
            _request_timeout=self._timeout,
        )  # fmt: skip
        replaced: Object = orjson.loads(response.data)
        return replaced

    # -- the webhook configurations --------------------------------------------------------

    def patch_ca_bundles(self, ca_bundle: str) -> dict[str, str]:
        """Set ``caBundle`` in every webhook of both configurations; kind → outcome
        (patched, unchanged, missing, or failed: why). Never raises."""
        adm = self._admission
        outcomes = {}
        for kind, read, patch in (
            ("MutatingWebhookConfiguration", adm.read_mutating_webhook_configuration,
             adm.patch_mutating_webhook_configuration),
            ("ValidatingWebhookConfiguration", adm.read_validating_webhook_configuration,
             adm.patch_validating_webhook_configuration),
        ):  # fmt: skip
            outcome = self._patch_one(read, patch, ca_bundle)
            outcomes[kind] = outcome
            self._report(kind, outcome)
        return outcomes

    def _patch_one(self, read: Callable[..., Any], patch: Callable[..., Any],
                   ca_bundle: str) -> str:  # fmt: skip
        name, timeout = self.webhook_configuration, self._timeout
        for _ in range(3):  # a 422 means the webhooks changed between read and patch
            try:
                response = read(name, _preload_content=False, _request_timeout=timeout)
                ops = ca_bundle_patch(orjson.loads(response.data), ca_bundle)
                if not ops:
                    return "unchanged"
                patch(name, ops, _content_type=JSON_PATCH, _preload_content=False,
                      _request_timeout=timeout)  # fmt: skip
                return "patched"
            except Exception as err:
                status = _status(err)
                if status == 404:
                    return "missing"
                if status not in (409, 422):
                    return f"failed: {_describe(err)}"
        return "failed: the webhooks kept changing"

    def _report(self, kind: str, outcome: str) -> None:
        """Log a configuration's outcome when it changes, so a missing configuration is one
        warning, not one a minute."""
        previous = self._reported.get(kind)
        self._reported[kind] = outcome
        extra = {"configuration": f"{kind}/{self.webhook_configuration}", "outcome": outcome}
        if outcome == "patched":
            log.info("caBundle patched", extra=extra)
        elif outcome == "missing" and previous != outcome:
            log.warning("webhook configuration not found: its caBundle is set once it exists",
                        extra=extra)  # fmt: skip
        elif outcome.startswith("failed") and previous != outcome:
            log.error("could not patch the caBundle; retrying every round", extra=extra)

    # -- the re-check thread ---------------------------------------------------------------

    def start(self, interval: float = RECHECK_SECONDS) -> None:
        """Run ``sync`` every ``interval`` seconds in a thread until ``stop()``."""
        if self._thread is not None:
            raise RuntimeError("already started")
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, args=(interval,), name="selfsigned-recheck", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """End the thread (a round in progress finishes its current call first)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.sync()
            except Exception as err:  # the next round tries again; serving goes on
                self.failures += 1
                log.warning("self-signed certificate re-check failed",
                            extra={"secret": self.where, "error": str(err)[:300]})  # fmt: skip


def ca_bundle_patch(configuration: Object, ca_bundle: str) -> list[Object]:
    """JSON patch operations that set ``clientConfig.caBundle`` of every webhook whose value
    differs; each is preceded by a ``test`` of that webhook's name, so a list reordered
    since it was read fails the whole patch instead of patching the wrong webhook."""
    ops: list[Object] = []
    for index, webhook in enumerate(configuration.get("webhooks") or []):
        client_config = webhook.get("clientConfig")
        if isinstance(client_config, dict) and client_config.get("caBundle") == ca_bundle:
            continue
        ops.append({"op": "test", "path": f"/webhooks/{index}/name", "value": webhook.get("name")})
        if isinstance(client_config, dict):
            ops.append({"op": "add", "path": f"/webhooks/{index}/clientConfig/caBundle",
                        "value": ca_bundle})  # fmt: skip
        else:
            ops.append({"op": "add", "path": f"/webhooks/{index}/clientConfig",
                        "value": {"caBundle": ca_bundle}})  # fmt: skip
    return ops


def ensure_serving_certificate(
    api: Any,
    namespace: str,
    secret_name: str,
    service: str,
    webhook_configuration: str,
    cert_dir: Path,
    **options: Any,
) -> Synced:
    """One round of `SelfSigned.sync`: the Secret settled, caBundles patched, files written."""
    keeper = SelfSigned(api, namespace=namespace, secret=secret_name, service=service,
                        webhook_configuration=webhook_configuration, cert_dir=cert_dir,
                        **options)  # fmt: skip
    return keeper.sync()
