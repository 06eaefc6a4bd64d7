"""`make soak`: a real `meshgate serve` under a fixed request rate for minutes, while its
policy ConfigMap flips and its serving certificate rotates; every answer is checked.

1. Starts the fake Kubernetes API server (tests/fakeapi.py) with three namespaces (`shop`:
   cni mode, CNI enforced; `legacy`: init mode; `batch`: skipped), the two
   NetworkAttachmentDefinitions the policies name, and the policy ConfigMap at policy A.
2. Starts `meshgate serve --kubeconfig <fake> --namespace meshgate-system --cert-dir <dir>`,
   the directory laid out as the kubelet lays out a Secret volume (`tls.crt -> ..data/...`).
3. Sends a fixed rate of requests (default 200/s, a weighted mix of /mutate and /validate
   bodies: injecting, init mode, skipped, NET_ADMIN on both endpoints) over keep-alive TLS
   connections that verify the server against the CAs the client trusts; each connection
   lives a few seconds, so new handshakes happen all the time.
4. Meanwhile the ConfigMap cycles B → invalid → A → invalid every few seconds (the invalid
   texts rotate through five kinds of error), and the certificate files rotate every ~20 s
   by an atomic `..data` swap, alternately a new certificate from the same CA and one from
   a new CA. For a new CA the client trusts old and new CA from just before the swap, then
   only the new one (from 5 s after): a server that kept the old certificate fails the
   next handshakes. After each swap a probe makes fresh handshakes every 50 ms until one
   presents the new certificate (the reload time).
5. Checks every answer: HTTP 200, a v1 AdmissionReview, the uid echoed; its policy version
   (auditAnnotations.policy) one of the two valid versions, never the invalid one; the
   whole answer equal to what `webhook.admission.admit` answers in-process for that body
   under that policy; and that policy in force at some moment between 2 s before the
   request was sent (SPEC 3: a change applies within 2 seconds) and its answer.
6. Samples the server's VmRSS and /readyz every 5 s; at the end reads /metrics, stops the
   server with SIGTERM and reads its log. Writes soak/results.md; exits 1 if any check
   failed.

    python -m soak.run [--seconds 180] [--rate 200] [--keep-work] ...

SOAK_SECONDS and SOAK_RATE set the defaults of --seconds and --rate.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import copy
import hashlib
import http.client
import json
import os
import queue
import random
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import jsonpatch
import orjson
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from bench import bodies
from bench.run import PACKAGES, free_port, process_cpu_seconds, status_kb
from bench.run import machine as bench_machine
from webhook import certs
from webhook.admission import Context, admit, parse_review
from webhook.match import SchemaError
from webhook.namespaces import StaticNamespaces
from webhook.policy import Policy
from webhook.sources import parse_policy_text

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HOST = "127.0.0.1"
OWN_NAMESPACE = "meshgate-system"
API_VERSION = "admission.k8s.io/v1"

# Two valid policies whose answers differ for most bodies (the gate's action, the Multus
# network), neither equal to the embedded default, and invalid ones of five kinds.
VALID_POLICIES: dict[str, str] = {
    "A": "gate: {action: deny}\ncni: {network: istio-cni-a}\n",
    "B": "gate: {action: warn}\ncni: {network: istio-cni-b}\n",
}
INVALID_POLICIES: tuple[str, ...] = (
    "gate: {action: block}\n",  # not an allowed value
    "namespaces:\n- match: {selector: {matchExpressions: [{key: tier, operator: Maybe}]}}\n"
    "  mode: cni\n",  # a bad selector
    "namespaces:\n- match: {names: [legacy]}\n  mode: init\n  enforceCNI: true\n",  # conflict
    "sidecar: {native: true}\n",  # native sidecars in cni mode without plugin support
    "gate: [unclosed\n",  # not YAML
)
INVALID = "invalid"
FLIP_CYCLE: tuple[str, ...] = ("B", INVALID, "A", INVALID)
# The NetworkAttachmentDefinitions in the fake cluster (the policies' networks, in `shop`).
NETWORKS: frozenset[tuple[str, str]] = frozenset(
    {(bodies.CNI_NAMESPACE, "istio-cni-a"), (bodies.CNI_NAMESPACE, "istio-cni-b")}
)

PROPAGATION_S = 2.0  # SPEC 3: a valid ConfigMap change is in force within 2 seconds
TRUST_OVERLAP_S = 5.0  # a new CA: the client trusts old and new CA this long after the swap
QUIET_END_S = 3.0  # no flip or rotation in the last seconds: each change has answers after it
CERT_SWITCH_S = 3.0  # new handshakes present the new certificate at most this long after
SAMPLE_EVERY_S = 5.0
RSS_GROWTH_MAX = 0.05  # VmRSS at the end within 5 % of VmRSS at half time
CONNECTION_LIFETIME_S = (2.0, 10.0)  # each client connection is closed after this long
REQUEST_TIMEOUT_S = 10.0

UID_MARK = "soak-uid-placeholder"
_MARK = orjson.dumps(UID_MARK)

OK, FAILED, INCONSISTENT, STALE = "ok", "failed", "inconsistent", "stale"


# ---------------------------------------------------------------------------------------
# Pure parts: bodies, expected answers, judging, timelines, figures (tests/test_soak.py)


@dataclass(frozen=True)
class Kind:
    """One kind of request of the mix: an AdmissionReview with a placeholder uid."""

    name: str
    endpoint: str  # "mutate" or "validate"
    description: str
    weight: int
    template: bytes

    def body(self, uid: str) -> bytes:
        return self.template.replace(_MARK, orjson.dumps(uid))


def policies() -> dict[str, Policy]:
    """The valid policies by label ("A", "B")."""
    return {label: parse_policy_text(text) for label, text in VALID_POLICIES.items()}


def invalid_errors() -> list[list[str]]:
    """The errors of each invalid policy (each must be rejected, or the soak is wrong)."""
    found = []
    for text in INVALID_POLICIES:
        try:
            parse_policy_text(text)
        except SchemaError as err:
            found.append(err.errors)
        else:
            raise AssertionError(f"meant to be invalid, but accepted: {text!r}")
    return found


def context(policy: Policy) -> Context:
    """What the server judges against: the fake cluster's namespaces and networks."""
    return Context(policy, StaticNamespaces(bodies.NAMESPACE_LABELS), OWN_NAMESPACE,
                   networks=lambda namespace, name: (namespace, name) in NETWORKS)  # fmt: skip


def _template(obj: dict[str, Any], namespace: str) -> bytes:
    template = orjson.dumps(bodies.review(obj, UID_MARK, namespace))
    if template.count(_MARK) != 1:
        raise ValueError("the uid placeholder must occur exactly once in a body")
    return template


def mutated(obj: dict[str, Any], namespace: str, policy: Policy) -> dict[str, Any]:
    """`obj` after `policy`'s /mutate patch, applied with jsonpatch."""
    request = parse_review(_template(obj, namespace))
    outcome = admit(request, "mutate", context(policy))
    if not outcome.patch:
        raise ValueError(f"expected an injecting patch, got {outcome.decision}")
    result: dict[str, Any] = jsonpatch.apply_patch(copy.deepcopy(obj), list(outcome.patch))
    return result


def build_kinds(policy_a: Policy) -> list[Kind]:
    shop, legacy, batch = bodies.CNI_NAMESPACE, bodies.INIT_NAMESPACE, bodies.SKIP_NAMESPACE
    injected = mutated(bodies.pod(shop), shop, policy_a)
    return [
        Kind("inject-cni", "mutate", "/mutate, pod in the cni-enforced namespace", 5,
             _template(bodies.pod(shop), shop)),
        Kind("inject-init", "mutate", "/mutate, the same pod in the init-mode namespace", 1,
             _template(bodies.pod(legacy), legacy)),
        Kind("skip", "mutate", "/mutate, the same pod in a namespace the policy skips", 2,
             _template(bodies.pod(batch), batch)),
        Kind("net-admin", "mutate", "/mutate, NET_ADMIN pod, cni-enforced namespace", 1,
             _template(bodies.net_admin_pod(shop), shop)),
        Kind("validate", "validate", "/validate, the pod after policy A's /mutate patch", 3,
             _template(injected, shop)),
        Kind("validate-net-admin", "validate", "/validate, NET_ADMIN pod, cni-enforced "
             "namespace", 1, _template(bodies.net_admin_pod(shop), shop)),
    ]  # fmt: skip


def _without_uid(review: Mapping[str, Any]) -> dict[str, Any]:
    response = review.get("response")
    if not isinstance(response, dict):
        return dict(review)
    return {**review, "response": {k: v for k, v in response.items() if k != "uid"}}


def expected_answers(
    kinds: Sequence[Kind], valid: Mapping[str, Policy]
) -> dict[str, dict[str, dict[str, Any]]]:
    """policy version → kind name → the AdmissionReview answered in-process (without uid)."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for policy in valid.values():
        ctx = context(policy)
        table[policy.version] = {
            kind.name: _without_uid(
                admit(parse_review(kind.body("expected")), kind.endpoint, ctx).review
            )
            for kind in kinds
        }
    return table


@dataclass(frozen=True)
class Verdict:
    outcome: str  # OK, FAILED, INCONSISTENT or STALE
    version: str = ""
    detail: str = ""


def _difference(got: Mapping[str, Any], want: Mapping[str, Any]) -> str:
    keys = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
    return "differs in " + ", ".join(f"response.{k}" for k in keys) if keys else "differs"


def judge(
    status: int,
    raw: bytes,
    uid: str,
    kind: str,
    expected: Mapping[str, Mapping[str, Mapping[str, Any]]],
    in_force: frozenset[str],
) -> Verdict:
    """One answer: FAILED (not a well-formed answer to this request), INCONSISTENT (not what
    any valid policy answers), STALE (a valid policy's answer, but of one that was not in
    force from PROPAGATION_S before the request to its answer) or OK."""
    if status != 200:
        return Verdict(FAILED, detail=f"HTTP {status}: {raw[:200]!r}")
    try:
        review = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return Verdict(FAILED, detail=f"not JSON: {raw[:200]!r}")
    response = review.get("response") if isinstance(review, dict) else None
    if (not isinstance(response, dict) or review.get("kind") != "AdmissionReview"
            or review.get("apiVersion") != API_VERSION):  # fmt: skip
        return Verdict(FAILED, detail=f"not a {API_VERSION} AdmissionReview: {raw[:200]!r}")
    if response.get("uid") != uid:
        return Verdict(FAILED, detail=f"uid {response.get('uid')!r} instead of {uid!r}")
    audit = response.get("auditAnnotations")
    version = audit.get("policy") if isinstance(audit, dict) else None
    if not isinstance(version, str) or version not in expected:
        return Verdict(INCONSISTENT, detail=f"policy {version!r} is not a valid version")
    want = expected[version][kind]
    got = _without_uid(review)
    if got != want:
        return Verdict(INCONSISTENT, version,
                       f"{kind}: not policy {version}'s answer: "
                       f"{_difference(got['response'], want['response'])}")  # fmt: skip
    if version not in in_force:
        return Verdict(STALE, version,
                       f"{kind}: policy {version} not in force (in force: "
                       f"{', '.join(sorted(in_force))})")  # fmt: skip
    return Verdict(OK, version)


class Timeline:
    """What was in force when: a value set at moments (monotonic seconds), thread-safe."""

    def __init__(self, value: str, at: float = 0.0) -> None:
        self._times = [at]
        self._values = [value]
        self._lock = threading.Lock()

    def set(self, at: float, value: str) -> None:
        with self._lock:
            if at < self._times[-1]:
                raise ValueError("a timeline only moves forward")
            self._times.append(at)
            self._values.append(value)

    def current(self) -> str:
        with self._lock:
            return self._values[-1]

    def window(self, start: float, end: float) -> frozenset[str]:
        """Every value in force at some moment from `start` to `end`."""
        with self._lock:
            first = max(0, bisect.bisect_right(self._times, start) - 1)
            last = bisect.bisect_right(self._times, end)
            return frozenset(self._values[first : max(last, first + 1)])

    def changes(self) -> list[tuple[float, str]]:
        """(moment, new value) of each change of value after the first."""
        with self._lock:
            pairs = list(zip(self._times, self._values, strict=True))
        return [(t, v) for (t, v), (_, before) in zip(pairs[1:], pairs, strict=False)
                if v != before]  # fmt: skip


def flip_plan(flips: int) -> list[str]:
    """The label applied at each flip: FLIP_CYCLE over and over."""
    return [FLIP_CYCLE[i % len(FLIP_CYCLE)] for i in range(flips)]


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank percentile (q from 0 to 100) of `values`; 0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), -(-len(ordered) * q // 100)))
    return ordered[int(rank) - 1]


def slope_per_minute(points: Sequence[tuple[float, float]]) -> float:
    """The least-squares slope of (seconds, value) points, per minute; 0 below 2 points."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    return 60 * sum((t - mean_t) * (v - mean_v) for t, v in points) / var


@dataclass(frozen=True)
class Memory:
    samples: int
    first_kb: int
    max_kb: int
    last_kb: int
    half_kb: int  # the sample at half time
    slope_kb_min: float  # over the whole run
    late_slope_kb_min: float  # over the second half

    @property
    def late_growth(self) -> float:
        """Relative growth from half time to the end (0.03 = 3 %)."""
        return (self.last_kb - self.half_kb) / self.half_kb if self.half_kb else 0.0

    @property
    def bounded(self) -> bool:
        return self.late_growth <= RSS_GROWTH_MAX


def memory_summary(samples: Sequence[tuple[float, int]]) -> Memory:
    """From (seconds since the start, VmRSS kB) samples, in time order."""
    if not samples:
        raise ValueError("no memory samples")
    half_t = samples[-1][0] / 2
    half = min(samples, key=lambda s: abs(s[0] - half_t))
    late = [s for s in samples if s[0] >= half[0]]
    return Memory(
        samples=len(samples),
        first_kb=samples[0][1],
        max_kb=max(kb for _, kb in samples),
        last_kb=samples[-1][1],
        half_kb=half[1],
        slope_kb_min=slope_per_minute(samples),
        late_slope_kb_min=slope_per_minute(late),
    )


def growth_by_part(samples: Sequence[tuple[float, int]], parts: int = 3) -> list[int]:
    """How much VmRSS (kB) grew in each of `parts` equal spans of time (from the sample
    nearest each boundary): a warm-up shows shrinking steps, a leak steady ones."""
    if not samples:
        return []
    end = samples[-1][0]

    def at(moment: float) -> int:
        return min(samples, key=lambda s: abs(s[0] - moment))[1]

    marks = [at(end * i / parts) for i in range(parts + 1)]
    return [later - earlier for earlier, later in zip(marks, marks[1:], strict=False)]


def first_after(moment: float, events: Sequence[tuple[float, float, str]], value: str) -> float:
    """Seconds from `moment` to the end of the first event (start, end, value) that started
    at or after `moment` with `value`; -1 if there is none."""
    ends = [end for start, end, v in events if start >= moment and v == value]
    return min(ends) - moment if ends else -1.0


# ---------------------------------------------------------------------------------------
# Certificates: the material, a Secret volume, what the client trusts


@dataclass(frozen=True)
class Serving:
    """A serving certificate and key, and the CA that signed it (PEM)."""

    label: str  # e.g. "ca1/cert3"
    ca: bytes
    cert: bytes
    key: bytes

    @property
    def fingerprint(self) -> str:
        return x509.load_pem_x509_certificate(self.cert).fingerprint(hashes.SHA256()).hex()

    @property
    def files(self) -> dict[str, bytes]:
        return {certs.CA_CERT_FILE: self.ca, certs.TLS_CERT_FILE: self.cert,
                certs.TLS_KEY_FILE: self.key}  # fmt: skip


def new_ca_at(rotation: int) -> bool:
    """Rotations alternate: 1 keeps the CA (a new certificate), 2 brings a new CA, ..."""
    return rotation % 2 == 0


def make_material(rotations: int) -> list[Serving]:
    """The initial certificate and one per rotation (made before the load starts, so that
    key generation does not compete with the client)."""
    material: list[Serving] = []
    ca_cert = ca_key = None
    ca_index = -1
    for step in range(rotations + 1):
        if ca_cert is None or (step > 0 and new_ca_at(step)):
            ca_index += 1
            ca_cert, ca_key = certs.generate_ca(common_name=f"meshgate-soak-ca-{ca_index}")
        assert ca_key is not None
        cert, key = certs.generate_serving_cert(ca_cert, ca_key, ["localhost"], [HOST])
        material.append(Serving(
            label=f"ca{ca_index}/cert{step}",
            ca=ca_cert.public_bytes(serialization.Encoding.PEM),
            cert=cert.public_bytes(serialization.Encoding.PEM),
            key=key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()),
        ))  # fmt: skip
    return material


class SecretVolume:
    """A directory updated as the kubelet's AtomicWriter updates a Secret volume: the files
    in a new timestamped directory, a `..data_tmp` link renamed over `..data` (the atomic
    swap), `tls.crt -> ..data/tls.crt` and so on, then the old directory removed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.generation = 0

    def publish(self, files: Mapping[str, bytes]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.generation += 1
        stamp = datetime.now(UTC).strftime("..%Y_%m_%d_%H_%M_%S.") + f"{self.generation:09d}"
        new = self.root / stamp
        new.mkdir()
        for name, data in files.items():
            (new / name).write_bytes(data)
            (new / name).chmod(0o600 if name == certs.TLS_KEY_FILE else 0o644)
        data_link = self.root / "..data"
        old = os.readlink(data_link) if data_link.is_symlink() else None
        tmp_link = self.root / "..data_tmp"
        os.symlink(stamp, tmp_link)
        os.rename(tmp_link, data_link)
        for name in files:
            link = self.root / name
            if not link.is_symlink():
                os.symlink(f"..data/{name}", link)
        if old is not None:
            shutil.rmtree(self.root / old)


class Trust:
    """The CAs the client trusts (the caBundle of the webhook configurations), and a client
    context for them, rebuilt when they change."""

    def __init__(self, cas: Sequence[bytes]) -> None:
        self._lock = threading.Lock()
        self._cas: tuple[bytes, ...] = ()
        self._context: ssl.SSLContext | None = None
        self.set(cas)

    def set(self, cas: Sequence[bytes]) -> None:
        unique = tuple(dict.fromkeys(cas))
        context = ssl.create_default_context(cadata="".join(ca.decode() for ca in unique))
        with self._lock:
            self._cas, self._context = unique, context

    @property
    def cas(self) -> tuple[bytes, ...]:
        with self._lock:
            return self._cas

    def context(self) -> ssl.SSLContext:
        with self._lock:
            assert self._context is not None
            return self._context


# ---------------------------------------------------------------------------------------
# The run


@dataclass
class Stats:
    """Everything the client saw; `lock` guards it all."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    outcomes: Counter[str] = field(default_factory=Counter)
    answers: Counter[tuple[str, str]] = field(default_factory=Counter)  # (kind, version)
    problems: dict[str, list[str]] = field(default_factory=dict)  # outcome → first details
    service_s: list[float] = field(default_factory=list)  # send → answer
    lag_s: list[float] = field(default_factory=list)  # scheduled → send
    by_version: list[tuple[float, float, str]] = field(default_factory=list)  # (sent, got, v)
    # (start, end, fingerprint) of every handshake that completed
    handshakes: list[tuple[float, float, str]] = field(default_factory=list)
    stale_handshakes: list[str] = field(default_factory=list)
    dispatched: int = 0
    dispatch_s: float = 0.0

    def add(self, verdict: Verdict, kind: str, scheduled: float, sent: float,
            got: float) -> None:  # fmt: skip
        with self.lock:
            self.outcomes[verdict.outcome] += 1
            if verdict.outcome != FAILED:
                self.answers[(kind, verdict.version)] += 1
                self.service_s.append(got - sent)
                self.lag_s.append(sent - scheduled)
                self.by_version.append((sent, got, verdict.version))
            if verdict.outcome != OK:
                details = self.problems.setdefault(verdict.outcome, [])
                if len(details) < 20:
                    details.append(verdict.detail)


class Load:
    """A fixed rate of requests: a dispatcher puts each request on a queue at its moment
    (start + i / rate); `connections` workers, each with its own keep-alive connection,
    send them. Latency is measured from the send, lag from the scheduled moment (so a slow
    server shows up as lag, not as fewer requests)."""

    def __init__(self, port: int, trust: Trust, kinds: Sequence[Kind],
                 expected: Mapping[str, Mapping[str, Mapping[str, Any]]], policy: Timeline,
                 served: Timeline, stats: Stats, *, rate: float, seconds: float,
                 connections: int, seed: int) -> None:  # fmt: skip
        self.port, self.trust, self.kinds, self.expected = port, trust, kinds, expected
        self.policy, self.served, self.stats = policy, served, stats
        self.rate, self.seconds, self.connections = rate, seconds, connections
        self.rng = random.Random(seed)
        self.work: queue.Queue[tuple[int, float] | None] = queue.Queue()

    def run(self) -> None:
        total = int(self.rate * self.seconds)
        mix = self.rng.choices(range(len(self.kinds)), [k.weight for k in self.kinds], k=total)
        seeds = [self.rng.random() for _ in range(self.connections)]
        workers = [threading.Thread(target=self._worker, args=(mix, seeds[n]),
                                    name=f"soak-client-{n}", daemon=True)
                   for n in range(self.connections)]  # fmt: skip
        for worker in workers:
            worker.start()
        start = time.monotonic()
        for i in range(total):
            moment = start + i / self.rate
            delay = moment - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.work.put((i, moment))
        self.stats.dispatched, self.stats.dispatch_s = total, time.monotonic() - start
        for _ in workers:
            self.work.put(None)
        for worker in workers:
            worker.join(REQUEST_TIMEOUT_S * 3)

    def _connect(self, rng: random.Random) -> tuple[http.client.HTTPSConnection, float]:
        started = time.monotonic()
        conn = http.client.HTTPSConnection(HOST, self.port, context=self.trust.context(),
                                           timeout=REQUEST_TIMEOUT_S)  # fmt: skip
        conn.connect()
        done = time.monotonic()
        assert conn.sock is not None
        der = conn.sock.getpeercert(binary_form=True) or b""
        fingerprint = hashlib.sha256(der).hexdigest()
        in_force = self.served.window(started - CERT_SWITCH_S, done)
        with self.stats.lock:
            self.stats.handshakes.append((started, done, fingerprint))
            if fingerprint not in in_force:
                self.stats.stale_handshakes.append(f"{fingerprint[:16]} at {started:.1f}")
        return conn, done + rng.uniform(*CONNECTION_LIFETIME_S)

    def _worker(self, mix: Sequence[int], seed: float) -> None:
        rng = random.Random(seed)
        conn: http.client.HTTPSConnection | None = None
        retire = 0.0
        while (item := self.work.get()) is not None:
            i, scheduled = item
            kind = self.kinds[mix[i]]
            uid = f"soak-{i:08d}"
            sent = time.monotonic()
            try:
                if conn is not None and sent >= retire:
                    conn.close()
                    conn = None
                if conn is None:
                    conn, retire = self._connect(rng)
                    sent = time.monotonic()
                conn.request("POST", f"/{kind.endpoint}", body=kind.body(uid),
                             headers={"Content-Type": "application/json"})  # fmt: skip
                response = conn.getresponse()
                raw = response.read()
                got = time.monotonic()
                if response.will_close:
                    conn.close()
                    conn = None
            except Exception as err:  # every failure counts, whatever it is
                if conn is not None:
                    conn.close()
                    conn = None
                detail = f"{uid} {kind.name}: {type(err).__name__}: {err}"
                self.stats.add(Verdict(FAILED, detail=detail), kind.name, scheduled, sent,
                               time.monotonic())  # fmt: skip
                continue
            in_force = self.policy.window(sent - PROPAGATION_S, got)
            verdict = judge(response.status, raw, uid, kind.name, self.expected, in_force)
            self.stats.add(verdict, kind.name, scheduled, sent, got)
        if conn is not None:
            conn.close()


@dataclass(frozen=True)
class Flip:
    at: float  # seconds since the load started
    label: str  # "A", "B" or INVALID
    version: str  # the version in force afterwards
    error: str = ""  # for an invalid one: its first error


@dataclass(frozen=True)
class Rotation:
    at: float
    label: str
    new_ca: bool
    fingerprint: str
    reload_s: float  # swap → first probe handshake presenting it (-1: never seen)


def probe(
    port: int, trust: Trust, fingerprint: str, stop: threading.Event, timeout: float = 10.0
) -> float:
    """Fresh handshakes (no request) every 50 ms until one presents `fingerprint`: how
    long that took, or -1 after `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout and not stop.is_set():
        try:
            with (
                socket.create_connection((HOST, port), timeout=5) as raw,
                trust.context().wrap_socket(raw, server_hostname=HOST) as tls,
            ):
                der = tls.getpeercert(binary_form=True) or b""
        except OSError:  # ssl.SSLError included: e.g. the new CA not trusted yet
            der = b""
        if hashlib.sha256(der).hexdigest() == fingerprint:
            return time.monotonic() - started
        stop.wait(0.05)
    return -1.0


def call(port: int, trust: Trust, method: str, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection(HOST, port, context=trust.context(), timeout=10)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def parse_metrics(text: str) -> dict[str, float]:
    """name{k=v,...} → value, from the Prometheus text format."""
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


def metric_sum(values: Mapping[str, float], name: str, **labels: str) -> float:
    total = 0.0
    for key, value in values.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        found = dict(item.split("=", 1) for item in rest.rstrip("}").split(",") if item)
        if all(found.get(k) == v for k, v in labels.items()):
            total += value
    return total


@dataclass
class Report:
    seconds: float
    rate: float
    connections: int
    flip_every: float
    rotate_every: float
    versions: dict[str, str]  # label → version
    kinds: list[Kind]
    stats: Stats
    flips: list[Flip]
    rotations: list[Rotation]
    policy_latency_s: list[float]  # per change of version: flip → first answer with it
    cert_latency_s: list[float]  # per rotation: swap → first load handshake with the new cert
    memory: Memory
    rss_samples: list[tuple[float, int]]
    ready_samples: int
    not_ready: list[str]
    policy_error_samples: int
    metrics: dict[str, float]
    server_cpu_s: float
    log_levels: dict[str, int]
    log_messages: dict[str, int]
    tracebacks: int
    exit_code: int | None
    stop_s: float
    machine: dict[str, str]
    command: str
    elapsed_s: float
    checks: list[tuple[str, str, bool]] = field(default_factory=list)  # (what, measured, ok)

    @property
    def passed(self) -> bool:
        return all(ok for _, _, ok in self.checks)


def _env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k != "KUBECONFIG" and not k.startswith("KUBERNETES_")}  # fmt: skip
    home = work / "home"
    home.mkdir(exist_ok=True)
    env["HOME"] = str(home)
    return env


def meshgate_command() -> list[str]:
    script = Path(sys.executable).with_name("meshgate")
    return [str(script)] if script.exists() else [sys.executable, "-m", "webhook"]


class Meshgate:
    """`meshgate serve` as a process, its output in a file."""

    def __init__(self, args: list[str], work: Path) -> None:
        self.port = free_port()
        self.log_path = work / "meshgate.log"
        self._log: IO[bytes] = self.log_path.open("wb")
        self.command = [*meshgate_command(), "serve", "--host", HOST, "--port", str(self.port),
                        *args]  # fmt: skip
        self.process = subprocess.Popen(self.command, cwd=work, stdout=self._log,
                                        stderr=subprocess.STDOUT, env=_env(work))  # fmt: skip

    def log_tail(self, lines: int = 20) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, trust: Trust, version: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"meshgate exited ({self.process.returncode}):\n"
                                   f"{self.log_tail()}")  # fmt: skip
            with contextlib.suppress(OSError, http.client.HTTPException):
                status, raw = call(self.port, trust, "GET", "/readyz")
                if status == 200 and orjson.loads(raw).get("policy") == version:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"meshgate not ready with policy {version} after {timeout:g} s:\n"
                           f"{self.log_tail()}")  # fmt: skip

    def rss_kb(self) -> int:
        return status_kb(Path(f"/proc/{self.process.pid}/status").read_text(), "VmRSS")

    def cpu_s(self) -> float:
        stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        return process_cpu_seconds(stat, os.sysconf("SC_CLK_TCK"))

    def terminate(self, timeout: float = 30.0) -> tuple[int | None, float]:
        """SIGTERM (a drain, then a graceful stop): the exit code and how long it took."""
        started = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                return None, time.monotonic() - started
        self._log.close()
        return self.process.returncode, time.monotonic() - started

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()


def _every(stop: threading.Event, seconds: float, action: Callable[[int], None]) -> None:
    """action(1), action(2), ... every `seconds` until `stop` is set."""
    start, n = time.monotonic(), 0
    while True:
        n += 1
        if stop.wait(max(0.0, start + n * seconds - time.monotonic())):
            return
        action(n)


def fake_api_class() -> Any:
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from fakeapi import FakeAPIServer  # type: ignore[import-not-found]  # tests/, on the path above

    return FakeAPIServer


def policy_configmap(text: str) -> dict[str, Any]:
    return {"metadata": {"namespace": OWN_NAMESPACE, "name": "meshgate-policy"},
            "data": {"policy.yaml": text}}  # fmt: skip


def read_log(path: Path) -> tuple[dict[str, int], dict[str, int], int]:
    """Lines by level, warning-or-worse lines by message, and tracebacks, from the log."""
    levels: Counter[str] = Counter()
    messages: Counter[str] = Counter()
    tracebacks = 0
    for line in path.read_text(errors="replace").splitlines():
        tracebacks += line.count("Traceback (most recent call last)")
        try:
            entry = json.loads(line)
        except ValueError:
            levels["(not JSON)"] += 1
            continue
        level = str(entry.get("level", "?"))
        levels[level] += 1
        if level not in ("debug", "info"):
            messages[f"{level}: {entry.get('msg')}"] += 1
        elif entry.get("msg") != "admission":
            messages[f"info: {entry.get('msg')}"] += 1
    return dict(levels), dict(messages), tracebacks


def run(args: argparse.Namespace) -> Report:
    began = time.monotonic()
    valid = policies()
    versions = {label: p.version for label, p in valid.items()}
    errors = invalid_errors()
    kinds = build_kinds(valid["A"])
    expected = expected_answers(kinds, valid)
    rotations_planned = int(args.seconds // args.rotate_every)
    material = make_material(rotations_planned)
    fake_api = fake_api_class()
    stats = Stats()
    flips: list[Flip] = []
    rotations: list[Rotation] = []
    rss: list[tuple[float, int]] = []
    not_ready: list[str] = []
    ready_samples = policy_error_samples = 0
    with contextlib.ExitStack() as stack:
        work = Path(tempfile.mkdtemp(prefix="meshgate-soak-"))
        if args.keep_work:
            print(f"scratch directory (kept): {work}", flush=True)
        else:
            stack.callback(shutil.rmtree, work, ignore_errors=True)
        volume = SecretVolume(work / "tls")
        volume.publish(material[0].files)
        trust = Trust([material[0].ca])

        api = stack.enter_context(fake_api(work / "api"))
        for name, labels in bodies.NAMESPACE_LABELS.items():
            api.upsert("namespaces", {"metadata": {"name": name, "labels": dict(labels)}})
        api.upsert("namespaces", {"metadata": {"name": OWN_NAMESPACE}})
        for namespace, name in sorted(NETWORKS):
            api.upsert("network-attachment-definitions", {
                "metadata": {"namespace": namespace, "name": name},
                "spec": {"config": json.dumps({"cniVersion": "0.3.1", "name": name,
                                               "type": "istio-cni"})},
            })  # fmt: skip
        api.upsert("configmaps", policy_configmap(VALID_POLICIES["A"]))
        kubeconfig = api.write_kubeconfig(work / "kubeconfig")

        server = Meshgate(["--kubeconfig", str(kubeconfig), "--namespace", OWN_NAMESPACE,
                           "--cert-dir", str(volume.root)], work)  # fmt: skip
        stack.callback(server.kill)
        server.wait_ready(trust, versions["A"])
        print(f"meshgate ready on port {server.port} with policy A ({versions['A']})", flush=True)
        # Every kind once, before the clock starts: the soak checks what it claims to.
        for kind in kinds:
            uid = f"precheck-{kind.name}"
            conn = http.client.HTTPSConnection(HOST, server.port, context=trust.context(),
                                               timeout=10)  # fmt: skip
            try:
                conn.request("POST", f"/{kind.endpoint}", body=kind.body(uid),
                             headers={"Content-Type": "application/json"})  # fmt: skip
                response = conn.getresponse()
                verdict = judge(response.status, response.read(), uid, kind.name, expected,
                                frozenset({versions["A"]}))  # fmt: skip
            finally:
                conn.close()
            if verdict.outcome != OK:
                raise RuntimeError(f"precheck {kind.name}: {verdict.outcome}: {verdict.detail}")
        print(f"precheck: each of the {len(kinds)} kinds answered as policy A says", flush=True)

        cpu_before = server.cpu_s()
        start = time.monotonic()
        policy_timeline = Timeline(versions["A"], start)
        cert_timeline = Timeline(material[0].fingerprint, start)
        plan = flip_plan(int(args.seconds // args.flip_every) + 1)

        def flip(n: int) -> None:
            label = plan[(n - 1) % len(plan)]
            now = time.monotonic()
            if now - start > args.seconds - QUIET_END_S:
                return
            if label == INVALID:
                k = sum(1 for f in flips if f.label == INVALID) % len(INVALID_POLICIES)
                text, error = INVALID_POLICIES[k], errors[k][0].splitlines()[0]
                version = policy_timeline.current()
            else:
                text, error, version = VALID_POLICIES[label], "", versions[label]
                policy_timeline.set(now, version)  # before the write: the earliest moment
            api.upsert("configmaps", policy_configmap(text))
            flips.append(Flip(now - start, label, version, error))

        def rotate(n: int) -> None:
            if n >= len(material):
                return
            serving = material[n]
            new_ca = new_ca_at(n)
            if time.monotonic() - start > args.seconds - QUIET_END_S:
                return
            if new_ca:  # the caBundle gets the new CA before the files change
                trust.set([*trust.cas, serving.ca])
            now = time.monotonic()
            cert_timeline.set(now, serving.fingerprint)
            volume.publish(serving.files)
            reload_s = probe(server.port, trust, serving.fingerprint, stop)
            rotations.append(Rotation(now - start, serving.label, new_ca, serving.fingerprint,
                                      reload_s))  # fmt: skip
            print(f"{now - start:6.1f} s: certificate rotated to {serving.label} "
                  f"({'new CA' if new_ca else 'same CA'}), served after {reload_s:.2f} s",
                  flush=True)  # fmt: skip
            if new_ca and not stop.wait(max(0.0, now + TRUST_OVERLAP_S - time.monotonic())):
                trust.set([serving.ca])  # then the old CA goes

        def sample(_n: int) -> None:
            nonlocal ready_samples, policy_error_samples
            with contextlib.suppress(OSError):
                rss.append((time.monotonic() - start, server.rss_kb()))
            try:
                status, raw = call(server.port, trust, "GET", "/readyz")
                body = orjson.loads(raw)
            except (OSError, http.client.HTTPException, orjson.JSONDecodeError) as err:
                not_ready.append(f"{time.monotonic() - start:.1f} s: {type(err).__name__}")
                return
            ready_samples += 1
            if status != 200:
                not_ready.append(f"{time.monotonic() - start:.1f} s: HTTP {status} {body}")
            elif "policyError" in body:
                policy_error_samples += 1

        stop = threading.Event()
        sample(0)
        background = [
            threading.Thread(target=_every, args=(stop, args.flip_every, flip), name="flips"),
            threading.Thread(target=_every, args=(stop, args.rotate_every, rotate),
                             name="rotations"),
            threading.Thread(target=_every, args=(stop, SAMPLE_EVERY_S, sample), name="samples"),
        ]  # fmt: skip
        for thread in background:
            thread.start()
        print(f"soak: {args.rate:g} req/s for {args.seconds:g} s over {args.connections} "
              f"connections; policy flips every {args.flip_every:g} s, certificate rotations "
              f"every {args.rotate_every:g} s", flush=True)  # fmt: skip
        load = Load(server.port, trust, kinds, expected, policy_timeline, cert_timeline, stats,
                    rate=args.rate, seconds=args.seconds, connections=args.connections,
                    seed=args.seed)  # fmt: skip
        try:
            load.run()
        finally:
            stop.set()
            for thread in background:
                thread.join(30)
        sample(0)
        server_cpu = server.cpu_s() - cpu_before
        load_s = time.monotonic() - start
        if server.process.poll() is not None:
            raise RuntimeError(f"meshgate exited during the soak:\n{server.log_tail()}")
        metrics = parse_metrics(call(server.port, trust, "GET", "/metrics")[1].decode())
        exit_code, stop_s = server.terminate()
        levels, messages, tracebacks = read_log(server.log_path)

    answers = sorted(stats.by_version, key=lambda a: a[1])
    policy_latency = [first_after(t - start, [(s - start, g - start, v) for s, g, v in answers],
                                  v) for t, v in policy_timeline.changes()]  # fmt: skip
    shakes = [(s - start, e - start, fp) for s, e, fp in stats.handshakes]
    cert_latency = [first_after(t - start, shakes, fp) for t, fp in cert_timeline.changes()]
    report = Report(
        seconds=load_s, rate=args.rate, connections=args.connections,
        flip_every=args.flip_every, rotate_every=args.rotate_every, versions=versions,
        kinds=kinds, stats=stats, flips=flips, rotations=rotations,
        policy_latency_s=policy_latency, cert_latency_s=cert_latency,
        memory=memory_summary(rss), rss_samples=rss, ready_samples=ready_samples,
        not_ready=not_ready, policy_error_samples=policy_error_samples, metrics=metrics,
        server_cpu_s=server_cpu, log_levels=levels, log_messages=messages,
        tracebacks=tracebacks, exit_code=exit_code, stop_s=stop_s, machine=machine(),
        command=_command(), elapsed_s=time.monotonic() - began,
    )  # fmt: skip
    report.checks = evaluate(report)
    return report


def evaluate(report: Report) -> list[tuple[str, str, bool]]:
    """(what, measured, held) for each thing the soak demands."""
    s = report.stats
    sent = s.dispatched
    failed, inconsistent, stale = (s.outcomes[o] for o in (FAILED, INCONSISTENT, STALE))
    valid_flips = sum(1 for f in report.flips if f.label != INVALID)
    invalid_flips = len(report.flips) - valid_flips
    m = report.metrics
    counted = metric_sum(m, "meshgate_admission_requests_total")
    reloads_ok = metric_sum(m, "meshgate_policy_reloads_total", result="success")
    reloads_bad = metric_sum(m, "meshgate_policy_reloads_total", result="invalid")
    cert_ok = metric_sum(m, "meshgate_certificate_reloads_total", result="success")
    cert_bad = metric_sum(m, "meshgate_certificate_reloads_total", result="error")
    internal = metric_sum(m, "meshgate_internal_errors_total")
    mem = report.memory
    late_latency = [x for x in report.policy_latency_s if x < 0 or x > PROPAGATION_S]
    slow_certs = [r for r in report.rotations if r.reload_s < 0 or r.reload_s > CERT_SWITCH_S]
    reloads = [r.reload_s for r in report.rotations]
    return [
        ("every request answered: HTTP 200, a v1 AdmissionReview, uid echoed",
         f"{sent - failed:,} of {sent:,} ({failed} failed)", failed == 0 and sent > 0),
        ("every answer is what a valid policy version answers for that body",
         f"{inconsistent} not", inconsistent == 0),
        (f"every answer from a policy in force within {PROPAGATION_S:g} s of the request",
         f"{stale} not", stale == 0),
        (f"each valid policy change seen in answers within {PROPAGATION_S:g} s",
         f"{len(report.policy_latency_s) - len(late_latency)} of "
         f"{len(report.policy_latency_s)} (max {max(report.policy_latency_s, default=0):.2f} s)",
         not late_latency),
        ("every invalid ConfigMap rejected (meshgate_policy_reloads_total{result=invalid})",
         f"{reloads_bad:g} of {invalid_flips} invalid flips; success {reloads_ok:g} "
         f"(1 + {valid_flips} valid flips)", reloads_bad == invalid_flips
         and reloads_ok == 1 + valid_flips),
        ("ready (/readyz 200) throughout",
         f"{report.ready_samples - len(report.not_ready)} of {report.ready_samples} samples",
         not report.not_ready),
        (f"each rotated certificate served to new handshakes within {CERT_SWITCH_S:g} s; "
         "no handshake of the load presented one out of date",
         f"{len(report.rotations) - len(slow_certs)} of {len(report.rotations)} (max "
         f"{max(reloads, default=0):.2f} s); {len(s.stale_handshakes)} out of date",
         not slow_certs and not s.stale_handshakes),
        ("certificate reloads counted (meshgate_certificate_reloads_total)",
         f"success {cert_ok:g} (1 + {len(report.rotations)} rotations), error {cert_bad:g}",
         cert_ok == 1 + len(report.rotations) and cert_bad == 0),
        ("the server counted every request; no internal error, no traceback",
         f"{counted:,.0f} counted of {sent + len(report.kinds):,} sent (with the precheck); "
         f"internal errors {internal:g}; tracebacks {report.tracebacks}",
         counted == sent + len(report.kinds) and internal == 0 and report.tracebacks == 0),
        (f"memory bounded: VmRSS at the end within {RSS_GROWTH_MAX:.0%} of VmRSS at half time",
         f"{mem.half_kb / 1024:.1f} → {mem.last_kb / 1024:.1f} MiB ({mem.late_growth:+.1%})",
         mem.bounded),
        ("SIGTERM after the soak: drain, then exit 0",
         f"exit {report.exit_code} after {report.stop_s:.1f} s", report.exit_code == 0),
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------
# The report


def machine() -> dict[str, str]:
    return bench_machine((*PACKAGES, "kubernetes"), wrk=False)


def _command() -> str:
    python = Path(sys.executable)
    if python.is_relative_to(ROOT):
        python = python.relative_to(ROOT)
    command = shlex.join([str(python), "-m", "soak.run", *sys.argv[1:]])
    seconds = os.environ.get("SOAK_SECONDS")
    prefix = f"SOAK_SECONDS={seconds} " if seconds else ""
    return f"{prefix}make soak (runs {command})" if "MAKELEVEL" in os.environ else command


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def render(report: Report) -> str:
    s = report.stats
    out: list[str] = []
    add = out.append
    label_of = {v: k for k, v in report.versions.items()}
    verdict = "PASS" if report.passed else "FAIL"
    add("# meshgate soak results\n")
    add(f"Generated by `make soak` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"in {report.elapsed_s / 60:.1f} min: **{verdict}**. A real `meshgate serve` against "
        "the fake Kubernetes API server (tests/fakeapi.py) under a fixed request rate, while "
        "its policy ConfigMap flips and its serving certificate rotates; every answer is "
        "checked against the answer computed in-process for the policy it names. See "
        "docs/reliability.md.\n")  # fmt: skip
    add("## Checks\n")
    add("| check | measured | verdict |")
    add("|---|---|---|")
    for what, measured, ok in report.checks:
        add(f"| {what} | {measured} | {'PASS' if ok else '**FAIL**'} |")
    add("")
    add("## Load\n")
    done = s.outcomes[OK] + s.outcomes[STALE] + s.outcomes[INCONSISTENT]
    add(
        f"- Duration {report.seconds:.1f} s; target rate {report.rate:g} req/s over "
        f"{report.connections} keep-alive TLS connections (each closed after 2–10 s, so "
        f"{len(s.handshakes):,} handshakes in all)."
    )
    add(
        f"- Requests sent {s.dispatched:,} ({s.dispatched / s.dispatch_s:,.1f} req/s "
        f"dispatched); answered {done:,}; ok {s.outcomes[OK]:,}; failed {s.outcomes[FAILED]}; "
        f"inconsistent {s.outcomes[INCONSISTENT]}; stale {s.outcomes[STALE]}."
    )
    add(
        f"- Latency (send → answer, ms): p50 {_ms(percentile(s.service_s, 50))}, "
        f"p99 {_ms(percentile(s.service_s, 99))}, max {_ms(max(s.service_s, default=0))}. "
        f"Lag behind the schedule (ms): p50 {_ms(percentile(s.lag_s, 50))}, "
        f"p99 {_ms(percentile(s.lag_s, 99))}, max {_ms(max(s.lag_s, default=0))}."
    )
    add(f"- Server CPU during the soak: {report.server_cpu_s:.1f} s "
        f"({report.server_cpu_s / report.seconds:.2f} cores on average).\n")  # fmt: skip
    for outcome, details in sorted(s.problems.items()):
        add(f"First {outcome} answers:\n")
        add("```")
        add("\n".join(details))
        add("```\n")
    if s.stale_handshakes:
        add(
            "Handshakes that presented an out-of-date certificate: "
            + ", ".join(s.stale_handshakes[:20])
            + "\n"
        )
    add("## Answers per policy version\n")
    versions = sorted(report.versions.values(), key=lambda v: label_of[v])
    add(
        "| kind | endpoint | weight | "
        + " | ".join(f"policy {label_of[v]} ({v})" for v in versions)
        + " | what it is |"
    )
    add("|---|---|--:|" + "--:|" * len(versions) + "---|")
    for kind in report.kinds:
        counts = " | ".join(f"{s.answers[(kind.name, v)]:,}" for v in versions)
        add(f"| `{kind.name}` | /{kind.endpoint} | {kind.weight} | {counts} | {kind.description} |")
    totals = " | ".join(f"{sum(n for (_, v2), n in s.answers.items() if v2 == v):,}"
                        for v in versions)  # fmt: skip
    add(f"| all | | | {totals} | |")
    add("")
    add("Policies (ConfigMap `meshgate-policy`, key `policy.yaml`):\n")
    for label, text in VALID_POLICIES.items():
        add(f"- {label} ({report.versions[label]}): `{text.strip().replace(chr(10), '; ')}`")
    add(
        "- invalid (rejected; the last good policy stays): "
        + "; ".join(f"`{t.strip().replace(chr(10), ' ')}`" for t in INVALID_POLICIES)
        + "\n"
    )
    add("## Policy flips\n")
    valid_flips = [f for f in report.flips if f.label != INVALID]
    add(f"{len(report.flips)} flips every {report.flip_every:g} s (cycle "
        f"{' → '.join(FLIP_CYCLE)}): {len(valid_flips)} to a valid version, "
        f"{len(report.flips) - len(valid_flips)} to an invalid one. Flip → first answer "
        f"under the new version: median {_ms(percentile(report.policy_latency_s, 50))} ms, "
        f"max {_ms(max(report.policy_latency_s, default=0))} ms over "
        f"{len(report.policy_latency_s)} changes. /readyz showed the rejected change "
        f"(`policyError`) in {report.policy_error_samples} of {report.ready_samples} "
        "samples.\n")  # fmt: skip
    add("## Certificate rotations\n")
    add(f"{len(report.rotations)} rotations every {report.rotate_every:g} s (atomic `..data` "
        "swap): " + ", ".join(f"{r.at:.0f} s → {r.label} ({'new CA' if r.new_ca else 'same CA'})"
                              for r in report.rotations) + ".")  # fmt: skip
    reloads = [r.reload_s for r in report.rotations]
    add(f"Swap → first fresh handshake presenting the new certificate (a probe every 50 ms; "
        f"the server looks at its files every second): median {_ms(percentile(reloads, 50))} "
        f"ms, max {_ms(max(reloads, default=0))} ms. Swap → first handshake of the load "
        f"presenting it (depends on when a client connection is renewed): median "
        f"{_ms(percentile(report.cert_latency_s, 50))} ms, max "
        f"{_ms(max(report.cert_latency_s, default=0))} ms. Handshakes of the load that began "
        f"{CERT_SWITCH_S:g} s or more after a swap and presented an older certificate: "
        f"{len(s.stale_handshakes)}. For a new CA the client trusted old and new CA from just "
        f"before the swap, then only the new one from {TRUST_OVERLAP_S:g} s after (a server "
        "still presenting the old certificate would then fail every new handshake).\n")  # fmt: skip
    mem = report.memory
    add("## Memory (VmRSS of the meshgate process)\n")
    add(
        f"- {mem.samples} samples every {SAMPLE_EVERY_S:g} s: first {mem.first_kb / 1024:.1f} "
        f"MiB, max {mem.max_kb / 1024:.1f} MiB, at half time {mem.half_kb / 1024:.1f} MiB, "
        f"last {mem.last_kb / 1024:.1f} MiB."
    )
    add(
        f"- Slope (least squares): {mem.slope_kb_min:+.1f} KiB/min over the run, "
        f"{mem.late_slope_kb_min:+.1f} KiB/min over the second half. Growth in each third "
        "of the run: "
        + ", ".join(f"{kb / 1024:+.2f} MiB" for kb in growth_by_part(report.rss_samples))
        + "."
    )
    add(
        "- Samples (s: MiB): "
        + ", ".join(f"{t:.0f}: {kb / 1024:.1f}" for t, kb in report.rss_samples)
        + "\n"
    )
    add("## Server counters and log\n")
    for name in (
        "meshgate_admission_requests_total",
        "meshgate_policy_reloads_total",
        "meshgate_certificate_reloads_total",
        "meshgate_internal_errors_total",
    ):
        rows = {k: v for k, v in report.metrics.items() if k.split("{")[0] == name}
        add(f"- `{name}`: " + (", ".join(f"{k.partition('{')[2].rstrip('}') or 'total'} "
                                         f"{v:,.0f}" for k, v in sorted(rows.items()))
                               or "0"))  # fmt: skip
    add(
        "- Log lines by level: "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(report.log_levels.items()))
    )
    add(
        "- Log lines other than the per-request line: "
        + "; ".join(f"{k} × {v}" for k, v in sorted(report.log_messages.items()))
    )
    add(
        f"- Tracebacks: {report.tracebacks}; SIGTERM → exit {report.exit_code} after "
        f"{report.stop_s:.1f} s (drain 5 s, then a graceful stop).\n"
    )
    add("## Machine and command\n")
    for key, value in report.machine.items():
        add(f"- {key}: {value}")
    add(f"- Command: `{report.command}`")
    add("")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=float(os.environ.get("SOAK_SECONDS") or 180),
        help="how long the load runs (default $SOAK_SECONDS or 180)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=float(os.environ.get("SOAK_RATE") or 200),
        help="requests per second (default $SOAK_RATE or 200)",
    )
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument(
        "--flip-every", type=float, default=3.0, help="seconds between policy ConfigMap changes"
    )
    parser.add_argument(
        "--rotate-every", type=float, default=20.0, help="seconds between certificate rotations"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--results", type=Path, default=HERE / "results.md")
    parser.add_argument(
        "--keep-work",
        action="store_true",
        help="keep the scratch directory (certificates, the server's log)",
    )
    args = parser.parse_args(argv)  # fmt: skip
    if args.rotate_every <= TRUST_OVERLAP_S or args.flip_every <= 0 or args.rate <= 0:
        parser.error(f"--rotate-every must exceed {TRUST_OVERLAP_S:g} s; rates positive")
    report = run(args)
    args.results.write_text(render(report))
    print(f"\nwrote {args.results} ({report.elapsed_s / 60:.1f} min)\n")
    for what, measured, ok in report.checks:
        print(f"{'PASS' if ok else 'FAIL'}  {what}: {measured}")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
