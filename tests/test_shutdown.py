"""Shutdown without a failed admission (SPEC 6), on a real `meshgate serve` process.

On SIGTERM meshgate turns /readyz not-ready at once, keeps accepting and answering for the
drain period (--drain-seconds), then stops accepting, finishes what is in flight and exits 0.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from helpers import admission_review, client_context, read_response, threads_running

DRAIN = 2.0


def review(uid: str) -> bytes:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
           "spec": {"containers": [{"name": "app", "image": "example.com/app:1"}]}}
    return orjson.dumps(admission_review(pod, uid=uid, namespace="default"))


def valid_answer(status: int, body: bytes, uid: str) -> bool:
    if status != 200:
        return False
    answer = orjson.loads(body).get("response") or {}
    return answer.get("uid") == uid and answer.get("allowed") is True


class Meshgate:
    """`meshgate serve --dev` on an ephemeral port; its JSON log lines as they come."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        env = dict(os.environ)
        env["KUBECONFIG"] = str(tmp_path / "no-kubeconfig")  # --dev never needs one anyway
        self.cert_dir = tmp_path / "certs"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "webhook", "serve", "--dev", "--port", "0", "--cert-dir",
             str(self.cert_dir), *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=tmp_path,
        )  # fmt: skip
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.port = self._wait_for_port()
        self.trust = client_context(self.cert_dir / "ca.crt")

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            text = line.decode(errors="replace").rstrip("\n")
            self.raw.append(text)
            with contextlib.suppress(ValueError):
                self.lines.append(json.loads(text))

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for entry in list(self.lines):
                message = str(entry.get("msg", ""))
                if message.startswith("Uvicorn running on https://127.0.0.1:"):
                    return int(message.split("127.0.0.1:")[1].split()[0])
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.kill()
        raise AssertionError("meshgate did not start:\n" + "\n".join(self.raw))

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=f"https://127.0.0.1:{self.port}", verify=self.trust,
                            timeout=10, **kw)  # fmt: skip

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self._reader.join(5)


@contextlib.contextmanager
def meshgate(tmp_path: Path, *args: str) -> Iterator[Meshgate]:
    served = Meshgate(tmp_path, *args)
    try:
        yield served
    finally:
        served.kill()


@dataclass
class Traffic:
    """Client threads posting /mutate until the server is gone; every attempt recorded as
    (sent, finished, ok, what)."""

    served: Meshgate
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    attempts: list[tuple[float, float, bool, str]] = field(default_factory=list)
    ready: list[tuple[float, int, Any]] = field(default_factory=list)

    def _note(self, sent: float, ok: bool, what: str) -> None:
        with self.lock:
            self.attempts.append((sent, time.monotonic(), ok, what))

    def keep_alive(self, worker: int) -> None:
        n = 0
        while not self.stop.is_set():
            with self.served.client() as client:
                while not self.stop.is_set():
                    n += 1
                    uid = f"kept-{worker}-{n}"
                    sent = time.monotonic()
                    try:
                        r = client.post("/mutate", content=review(uid),
                                        headers={"content-type": "application/json"})
                    except httpx.TransportError as err:
                        self._note(sent, False, f"{type(err).__name__}: {err}")
                        break  # a new client (and connection) for the next one
                    self._note(sent, valid_answer(r.status_code, r.content, uid),
                               f"{uid} {r.status_code} {r.headers.get('connection')}")
                    time.sleep(0.01)

    def fresh(self, worker: int) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            uid = f"fresh-{worker}-{n}"
            sent = time.monotonic()
            try:
                with self.served.client() as client:
                    r = client.post("/mutate", content=review(uid),
                                    headers={"content-type": "application/json"})
            except httpx.TransportError as err:
                self._note(sent, False, f"{type(err).__name__}: {err}")
                time.sleep(0.02)
                continue
            self._note(sent, valid_answer(r.status_code, r.content, uid), f"{uid} {r.status_code}")
            time.sleep(0.01)

    def readiness(self) -> None:
        while not self.stop.is_set():
            sent = time.monotonic()
            try:
                with self.served.client() as client:
                    r = client.get("/readyz")
                    entry: tuple[float, int, Any] = (sent, r.status_code, r.json())
            except httpx.TransportError:
                entry = (sent, -1, None)
            with self.lock:
                self.ready.append(entry)
            time.sleep(0.02)

    @contextlib.contextmanager
    def running(self) -> Iterator[Traffic]:
        threads = [threading.Thread(target=self.keep_alive, args=(i,), daemon=True)
                   for i in range(2)]  # fmt: skip
        threads += [threading.Thread(target=self.fresh, args=(i,), daemon=True) for i in range(2)]
        threads.append(threading.Thread(target=self.readiness, daemon=True))
        with threads_running(threads, self.stop, join_timeout=20):
            yield self


def slow_request(served: Meshgate, uid: str, chunks: int, pause: float,
                 result: dict[str, Any]) -> None:  # fmt: skip
    """POST /mutate with the body sent in `chunks` pieces, `pause` seconds apart."""
    body = review(uid)
    try:
        raw = socket.create_connection(("127.0.0.1", served.port), timeout=30)
        with served.trust.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"POST /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                        % len(body))  # fmt: skip
            result["headers_sent"] = time.monotonic()
            size = -(-len(body) // chunks)
            for i in range(0, len(body), size):
                tls.sendall(body[i : i + size])
                time.sleep(pause)
            result["body_sent"] = time.monotonic()
            result["status"], payload = read_response(tls)
        result["ok"] = valid_answer(result["status"], payload, uid)
    except Exception as err:  # reported by the test
        result["error"] = f"{type(err).__name__}: {err}"


def connectable(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return False
    return True


def test_sigterm_drains_then_exits_without_a_failed_request(tmp_path: Path) -> None:
    with meshgate(tmp_path, "--drain-seconds", str(DRAIN)) as served:
        with served.client() as c:
            assert c.get("/readyz").status_code == 200
        traffic = Traffic(served)
        slow: dict[str, Any] = {}
        slow_thread = threading.Thread(
            target=slow_request, args=(served, "slow-1", 12, 0.25, slow), daemon=True
        )  # about 3 s of body: it starts before SIGTERM and ends after the drain
        refused_at: float | None = None
        with traffic.running():
            time.sleep(0.5)
            slow_thread.start()
            time.sleep(0.3)
            terminated = time.monotonic()
            os.kill(served.process.pid, signal.SIGTERM)
            while time.monotonic() < terminated + DRAIN + 5:
                if not connectable(served.port):
                    refused_at = time.monotonic()
                    break
                time.sleep(0.02)
            code = served.process.wait(timeout=DRAIN + 10)
            exited = time.monotonic()
        slow_thread.join(15)

    attempts = sorted(traffic.attempts)
    during = [a for a in attempts if terminated <= a[0] < terminated + DRAIN - 0.2]
    before = [a for a in attempts if a[0] < terminated]
    failed_early = [a for a in attempts if a[0] < terminated + DRAIN - 0.2 and not a[2]]
    not_ready = [r for r in traffic.ready if r[0] >= terminated and r[1] == 503]
    print(f"\nrequests: {len(before)} before SIGTERM, {len(during)} during the drain, "
          f"{len(failed_early)} failed; not ready after "
          f"{(not_ready[0][0] - terminated) if not_ready else None} s; refused after "
          f"{(refused_at - terminated) if refused_at else None} s; exit {code} after "
          f"{exited - terminated:.2f} s; slow request {slow}")

    # /readyz says not ready at once, with the reason.
    assert not_ready, traffic.ready[-5:]
    first_503 = not_ready[0]
    assert first_503[0] - terminated < 0.3
    assert first_503[2] == {"ready": False, "detail": "draining"}
    assert all(r[1] in (503, -1) for r in traffic.ready if r[0] >= first_503[0])

    # Admission requests keep being answered, correctly, until the drain is over.
    assert len(before) >= 10 and len(during) >= 20, "too little traffic to prove anything"
    assert not failed_early, failed_early[:5]
    # During the drain, answers ask keep-alive clients to reconnect (to another replica).
    closing = [a for a in during if a[3].startswith("kept-") and a[0] > terminated + 0.1]
    assert closing and all(a[3].endswith(" close") for a in closing), closing[:3]

    # Then the listener closes: not before the drain period, not long after.
    assert refused_at is not None, "new connections were still accepted"
    assert DRAIN - 0.05 <= refused_at - terminated <= DRAIN + 1.0
    assert not any(a[2] for a in attempts if a[0] > refused_at + 0.5)

    # The slow request, in flight across the end of the drain, was finished.
    assert "error" not in slow, slow
    assert slow["headers_sent"] < terminated and slow["body_sent"] > refused_at
    assert slow["ok"] is True, slow

    assert code == 0, "\n".join(served.raw[-20:])
    assert exited - terminated < DRAIN + 3
    messages = [str(e.get("msg")) for e in served.lines]
    assert any(m.startswith("draining") for m in messages), messages
    assert any(m.startswith("drain over") for m in messages), messages

    # Every request answered has its log line, the last ones before the exit too.
    logged = {e["uid"] for e in served.lines if e.get("msg") == "admission"}
    answered = {a[3].split()[0] for a in attempts if a[2]} | {"slow-1"}
    assert answered <= logged, sorted(answered - logged)[:5]


@pytest.mark.parametrize("args", [pytest.param(["--drain-seconds", "0"], id="no-drain")])
def test_without_a_drain_sigterm_stops_at_once_and_exits_0(tmp_path: Path,
                                                             args: list[str]) -> None:  # fmt: skip
    with meshgate(tmp_path, *args) as served:
        with served.client() as c:
            assert c.get("/readyz").status_code == 200
        terminated = time.monotonic()
        served.process.send_signal(signal.SIGTERM)
        code = served.process.wait(timeout=10)
        assert code == 0, "\n".join(served.raw[-20:])
        assert time.monotonic() - terminated < 2.0
        assert not connectable(served.port)


def test_drain_seconds_must_be_a_sane_number(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "webhook", "serve", "--dev", "--drain-seconds", "-1"],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--drain-seconds" in result.stderr
