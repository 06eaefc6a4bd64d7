"""Helpers shared by the test modules: waiting, ports, `meshgate serve` as a process, the
real server in a thread, test certificates, TLS clients and servers, AdmissionReviews.

A plain module (not a conftest): pytest puts tests/ on sys.path, so a test imports what it
needs with `from helpers import ...`, as it does `from fakeapi import FakeAPIServer`.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import io
import json
import logging
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
import jsonpatch

from webhook import certs, logs
from webhook.logs import JSONFormatter
from webhook.runtime import Runtime
from webhook.server import make_server

SCRIPT = Path(sys.executable).parent / "meshgate"
ADMISSION_API = "admission.k8s.io/v1"

# ---------------------------------------------------------------------------------------
# waiting


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 5.0,
             interval: float = 0.01) -> Any:  # fmt: skip
    """Call `condition` every `interval` s until it returns something true, and return that;
    fail the test naming `what` once `timeout` s have passed without it."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(interval)


@contextlib.contextmanager
def threads_running(threads: list[threading.Thread], stop: threading.Event,
                    join_timeout: float = 20.0) -> Iterator[list[threading.Thread]]:  # fmt: skip
    """Start `threads`; on leaving the block set `stop` and join each of them (up to
    `join_timeout` s each)."""
    for thread in threads:
        thread.start()
    try:
        yield threads
    finally:
        stop.set()
        for thread in threads:
            thread.join(join_timeout)


# ---------------------------------------------------------------------------------------
# `meshgate` as a process


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def meshgate_command() -> list[str]:
    """The installed console script, or `python -m webhook` when there is none."""
    return [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "webhook"]


def run_meshgate(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
                 timeout: float = 60.0) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """`meshgate *args` run to its end (at most `timeout` s), its output captured as text."""
    return subprocess.run([*meshgate_command(), *args], capture_output=True, text=True,
                          timeout=timeout, check=False, env=env, cwd=cwd)  # fmt: skip


def isolated_env(tmp_path: Path) -> dict[str, str]:
    """This environment without any cluster configuration from this machine: no
    $KUBECONFIG, an empty HOME (under `tmp_path`), no in-cluster service variables."""
    env = {k: v for k, v in os.environ.items()
           if k != "KUBECONFIG" and not k.startswith("KUBERNETES_")}  # fmt: skip
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env["HOME"] = str(home)
    return env


def stop_process(process: subprocess.Popen[Any], timeout: float,
                 kill_timeout: float) -> tuple[Any, Any]:  # fmt: skip
    """SIGTERM `process` if it still runs and give it `timeout` s to exit, then SIGKILL it;
    what is left of its (stdout, stderr), as communicate() returns them."""
    if process.poll() is None:
        process.terminate()
        try:
            return process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.communicate(timeout=kill_timeout)


class ServeProcess:
    """`meshgate serve` on 127.0.0.1, a free port, with `args` added and without a drain
    (--drain-seconds 0: the drain is test_shutdown's); its output, stdout and stderr, goes
    to `tmp_path`/meshgate.log."""

    def __init__(self, args: list[str], env: dict[str, str], tmp_path: Path,
                 cert_dir: Path) -> None:  # fmt: skip
        self.port = free_port()
        self.log = tmp_path / "meshgate.log"
        self._log_file = self.log.open("w")
        self.process = subprocess.Popen(
            [*meshgate_command(), "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--cert-dir", str(cert_dir), "--drain-seconds", "0", *args],
            stdout=self._log_file, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
        )  # fmt: skip

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def wait(self, condition: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
        """wait_for `condition` (an httpx transport error counts as not yet), failing at once
        with the log when the process exits."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, f"meshgate exited early:\n{self.output()}"
            with contextlib.suppress(httpx.TransportError):
                value = condition()
                if value:
                    return value
            assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{self.output()}"
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0, kill_timeout: float = 10.0) -> int | None:
        """stop_process, then close the log; the exit code (negative: the signal that ended
        it)."""
        stop_process(self.process, timeout, kill_timeout)
        self._log_file.close()
        return self.process.returncode

    def output(self) -> str:
        if not self._log_file.closed:
            self._log_file.flush()
        return self.log.read_text()


class Served(ServeProcess):
    """A ServeProcess and an HTTPS client trusting the CA in its `cert_dir` (which must
    hold one when the process starts)."""

    def __init__(self, args: list[str], env: dict[str, str], tmp_path: Path,
                 cert_dir: Path) -> None:  # fmt: skip
        super().__init__(args, env, tmp_path, cert_dir)
        trust = client_context(cert_dir / certs.CA_CERT_FILE)
        self.client = httpx.Client(base_url=self.url, verify=trust, timeout=5)

    def readyz(self) -> dict[str, Any] | None:
        """/readyz's body when it answers 200, else None."""
        response = self.client.get("/readyz")
        body: dict[str, Any] = response.json()
        return body if response.status_code == 200 else None

    def stop(self, timeout: float = 10.0, kill_timeout: float = 10.0) -> int | None:
        self.client.close()
        return super().stop(timeout, kill_timeout)


# ---------------------------------------------------------------------------------------
# the real server in a thread


class ServerThread:
    """webhook.server.make_server (uvicorn over TLS) for `app` on 127.0.0.1, an ephemeral
    port, in a daemon thread named `name`: started and listening once constructed, stopped
    by stop() or at the end of a `with` block."""

    def __init__(self, app: Any, cert_dir: Path, *, name: str,
                 runtime: Runtime | None = None) -> None:  # fmt: skip
        self.cert_dir = cert_dir
        self.server = make_server(app, "127.0.0.1", 0, cert_dir, runtime=runtime)
        self.thread = threading.Thread(target=self.server.run, name=name, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, (
                "the server did not start"
            )
            time.sleep(0.02)
        self.port: int = self.server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        assert not self.thread.is_alive(), "the server did not stop"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:  # fmt: skip
        self.stop()


# ---------------------------------------------------------------------------------------
# certificates and TLS


def make_cert_dir(directory: Path, common_name: str) -> Path:
    """`directory` with a new CA named `common_name` (ca.crt) and a serving certificate it
    signed for localhost and 127.0.0.1 (tls.crt, tls.key), as webhook.certs writes them."""
    ca_cert, ca_key = certs.generate_ca(common_name=common_name)
    cert, key = certs.generate_serving_cert(ca_cert, ca_key, ["localhost"], ["127.0.0.1"])
    certs.write_cert_dir(directory, ca_cert, cert, key)
    return directory


def client_context(ca_file: Path, *, minimum: ssl.TLSVersion | None = None,
                   maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:  # fmt: skip
    """A default client context (hostname checked) trusting only the CA in `ca_file`,
    optionally limited to TLS versions from `minimum` to `maximum`."""
    context = ssl.create_default_context(cafile=str(ca_file))
    if minimum is not None:
        context.minimum_version = minimum
    if maximum is not None:
        context.maximum_version = maximum
    return context


def read_response(tls: ssl.SSLSocket) -> tuple[int, bytes]:
    """Everything the server sends until it closes, as (HTTP status, body)."""
    data = b""
    while chunk := tls.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


class TLSEchoServer:
    """A one-thread TLS server on 127.0.0.1 (ephemeral port) serving `cert_file` and
    `key_file`: it reads what a client sends after the handshake, answers b"ok" and closes.

    It stops when told to (at the end of a `with` block), after `max_connections`
    connections when given, or when no client has come for `idle_timeout` s. Handshakes the
    client refused are noted in `handshake_errors`.
    """

    def __init__(self, cert_file: Path, key_file: Path, *, max_connections: int | None = None,
                 idle_timeout: float = 30.0) -> None:  # fmt: skip
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(certfile=str(cert_file), keyfile=str(key_file))
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.stop_event = threading.Event()
        self.handshake_errors: list[str] = []
        self.thread = threading.Thread(target=self._serve, name="tls-test-server", daemon=True)

    def _serve(self) -> None:
        served = 0
        idle = 0.0
        with self.sock:
            while not self.stop_event.is_set() and (
                self.max_connections is None or served < self.max_connections
            ):
                try:
                    conn, _ = self.sock.accept()
                except TimeoutError:
                    idle += 0.2
                    if idle >= self.idle_timeout:
                        return
                    continue
                idle = 0.0
                served += 1
                conn.settimeout(5.0)
                try:
                    with self.context.wrap_socket(conn, server_side=True) as tls:
                        tls.recv(16)
                        tls.sendall(b"ok")
                except (ssl.SSLError, OSError) as exc:  # the client refused the certificate
                    self.handshake_errors.append(type(exc).__name__)
                finally:
                    conn.close()

    def __enter__(self) -> TLSEchoServer:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_event.set()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()


def tls_talk(port: int, context: ssl.SSLContext,
             server_hostname: str) -> tuple[bytes, dict[str, object]]:  # fmt: skip
    """Handshake with 127.0.0.1:`port` as `server_hostname`, send b"hi"; the answer (up to
    16 bytes) and the server's certificate as getpeercert() gives it."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5.0) as raw,
        context.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        tls.sendall(b"hi")
        reply = tls.recv(16)
        peer = tls.getpeercert()
        assert peer is not None
        return reply, dict(peer)


# ---------------------------------------------------------------------------------------
# admission requests


def container(name: str = "app", *add: str, privileged: Any = None, image: str | None = None,
              context: Any = None, **extra: Any) -> dict[str, Any]:  # fmt: skip
    """A container `name` adding capabilities `add`, privileged when asked; `context`
    replaces the whole securityContext (any value, well-formed or not)."""
    c: dict[str, Any] = {"name": name, "image": image or f"registry.example/{name}:1", **extra}
    if context is not None:
        c["securityContext"] = context
        return c
    sc: dict[str, Any] = {}
    if add:
        sc["capabilities"] = {"add": list(add)}
    if privileged is not None:
        sc["privileged"] = privileged
    if sc:
        c["securityContext"] = sc
    return c


def workload(group: str, version: str, kind: str, path: tuple[str, ...],
             template: Any, name: str = "web") -> dict[str, Any]:  # fmt: skip
    """A workload object of `kind` whose pod template (at `path`) is `template`."""
    api_version = f"{group}/{version}" if group else version
    obj: dict[str, Any] = {"apiVersion": api_version, "kind": kind,
                           "metadata": {"name": name}}  # fmt: skip
    node = obj
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = template
    if kind == "CronJob":
        obj["spec"]["schedule"] = "*/5 * * * *"
    else:
        obj["spec"]["selector"] = {"matchLabels": {"app": "web"}}
    return obj


def admission_request(
    obj: Any,
    *,
    uid: str,
    namespace: str,
    kind: str = "Pod",
    group: str = "",
    operation: str = "CREATE",
    name: str | None = None,
    sub_resource: str | None = None,
    old: Any = None,
    dry_run: bool | None = None,
) -> dict[str, Any]:
    """The `request` of an AdmissionReview (v1) of `obj`, a `kind` (resource: its plural in
    lower case) of `group` version v1. Its name is `name`, else the object's
    metadata.name, else ""; subResource, oldObject and dryRun are there only when given."""
    if name is None:
        metadata = obj.get("metadata") if isinstance(obj, dict) else None
        name = (metadata or {}).get("name") or ""
    request: dict[str, Any] = {
        "uid": uid,
        "kind": {"group": group, "version": "v1", "kind": kind},
        "resource": {"group": group, "version": "v1", "resource": kind.lower() + "s"},
        "operation": operation,
        "namespace": namespace,
        "name": name,
        "object": obj,
    }
    if sub_resource:
        request["subResource"] = sub_resource
    if old is not None:
        request["oldObject"] = old
    if dry_run is not None:
        request["dryRun"] = dry_run
    return request


def admission_review(obj: Any, **request: Any) -> dict[str, Any]:
    """An AdmissionReview (v1) whose request is admission_request(obj, **request)."""
    return {"apiVersion": ADMISSION_API, "kind": "AdmissionReview",
            "request": admission_request(obj, **request)}  # fmt: skip


def decode_patch(response: dict[str, Any]) -> list[dict[str, Any]]:
    """The JSON Patch an admission response carries, checked as the API server reads it:
    patchType JSONPatch, strict base64, a non-empty list of operations on absolute paths,
    none but the verbs meshgate writes."""
    assert response["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(response["patch"], validate=True))
    assert isinstance(ops, list) and ops
    for op in ops:
        assert op["op"] in ("add", "remove", "replace")
        assert isinstance(op["path"], str) and op["path"].startswith("/")
    return ops


def patched(obj: Any, response: dict[str, Any]) -> Any:
    """A copy of `obj` with the response's patch applied, as the API server would store it
    (the copy unchanged when the response carries no patch)."""
    if "patch" not in response:
        return copy.deepcopy(obj)
    return jsonpatch.apply_patch(copy.deepcopy(obj), decode_patch(response))


@contextlib.contextmanager
def json_log() -> Iterator[io.StringIO]:
    """Every log line of the process: records formatted by meshgate's JSON formatter, and
    the admission lines webhook.logs.lines writes."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    level = root.level
    logs.lines.flush()  # earlier lines are not this block's
    writing_to = logs.lines.handler
    logs.lines.handler = handler
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        logs.lines.flush()  # the lines of the last requests, still waiting for their write
        logs.lines.handler = writing_to
        root.removeHandler(handler)
        root.setLevel(level)
