"""A small, faithful fake of the Kubernetes API server's wire protocol, for tests.

meshgate talks to the cluster only through the official ``kubernetes`` client. Mocking that
client would only test our beliefs about it; this fake speaks what the client speaks (HTTPS,
a bearer token, JSON lists with resourceVersion and continue tokens, chunked watch streams of
one JSON event per line, ``Status`` bodies for errors), so ApiClient, urllib3,
``kubernetes.watch.Watch`` and the kubeconfig loader run unchanged against it.

It serves what meshgate uses, as a real API server does: LIST, GET and WATCH of namespaces,
configmaps, secrets, network-attachment-definitions and the two kinds of webhook
configurations; POST of Events; create (POST) and replace (PUT, optimistic concurrency by
resourceVersion) of Secrets; PATCH of webhook configurations (JSON patch, JSON merge patch,
strategic merge patch). Tests change the cluster as a controller would (``upsert``,
``delete``, ``compact``), inject faults and read ``requests`` (and ``bodies``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import http.server
import json
import secrets
import socket
import socketserver
import ssl
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import jsonpatch
import yaml

from webhook import certs

Object = dict[str, Any]
NAD_GROUP = "k8s.cni.cncf.io"
ADMISSION_GROUP = "admissionregistration.k8s.io"
JSON_PATCH, MERGE_PATCH = "application/json-patch+json", "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
# Lists merged by a key under a strategic merge patch (patchMergeKey in the Go types), by
# path from the object's root; every other list is atomic (replaced whole).
MERGE_KEYS = {("webhooks",): "name"}
_FIRST_RV = 100  # a fresh server is already past some history: a watch from "5" is 410 Gone


@dataclass(frozen=True)
class Resource:
    plural: str
    kind: str
    group: str = ""
    namespaced: bool = True
    writes: frozenset[str] = frozenset()  # besides get/list/watch: create, update, patch

    @property
    def api_version(self) -> str:
        return f"{self.group}/v1" if self.group else "v1"

    @property
    def qualified_kind(self) -> str:
        return f"{self.kind}.{self.group}" if self.group else self.kind

    def error(self, code: int, reason: str, name: str, what: str) -> StatusError:
        """A real server's error about one object, e.g. 404 `namespaces "x" not found`."""
        qualified = f"{self.plural}.{self.group}" if self.group else self.plural
        details = {"name": name, **({"group": self.group} if self.group else {})}
        details["kind"] = self.plural
        return StatusError(code, reason, f'{qualified} "{name}" {what}', details)

    def conflict(self, name: str) -> StatusError:
        """409 Conflict: a write carried a resourceVersion that is no longer the current one."""
        qualified = f"{self.plural}.{self.group}" if self.group else self.plural
        message = (f'Operation cannot be fulfilled on {qualified} "{name}": the object has been '
                   "modified; please apply your changes to the latest version and try again")
        details = {"name": name, **({"group": self.group} if self.group else {})}
        return StatusError(409, "Conflict", message, {**details, "kind": self.plural})

    def invalid(self, name: str, causes: list[tuple[str, str, str]]) -> StatusError:
        """422 Invalid, from (field, cause reason, message) triples, worded as a real server
        words field errors: `Secret "x" is invalid: type: Invalid value: ...`."""
        errors = [f"{where}: {message}" for where, _, message in causes]
        listed = errors[0] if len(errors) == 1 else f"[{', '.join(errors)}]"
        details: Object = {"name": name, **({"group": self.group} if self.group else {})}
        details["kind"] = self.kind
        details["causes"] = [{"reason": reason, "message": message, "field": where}
                             for where, reason, message in causes]  # fmt: skip
        return StatusError(422, "Invalid", f'{self.qualified_kind} "{name}" is invalid: {listed}',
                           details)  # fmt: skip


_WEBHOOKS = frozenset({"patch"})
RESOURCES = {
    r.plural: r
    for r in (
        Resource("namespaces", "Namespace", namespaced=False),
        Resource("configmaps", "ConfigMap"),
        Resource("secrets", "Secret", writes=frozenset({"create", "update"})),
        Resource("network-attachment-definitions", "NetworkAttachmentDefinition", NAD_GROUP),
        Resource("mutatingwebhookconfigurations", "MutatingWebhookConfiguration",
                 ADMISSION_GROUP, namespaced=False, writes=_WEBHOOKS),
        Resource("validatingwebhookconfigurations", "ValidatingWebhookConfiguration",
                 ADMISSION_GROUP, namespaced=False, writes=_WEBHOOKS),
    )
}  # fmt: skip
WRITE_METHODS = {"POST": "create", "PUT": "update", "PATCH": "patch"}
EVENT_APIS = {g: Resource("events", "Event", g) for g in ("", "events.k8s.io")}


class StatusError(Exception):
    """Answer the request with this HTTP status and a Status body (fields in a real server's
    order; a real 401 has no details, other errors have them, maybe empty)."""

    def __init__(self, code: int, reason: str, message: str, details: Object | None = None,
                 headers: dict[str, str] | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.code, self.headers = code, headers or {}
        self.body: Object = {"kind": "Status", "apiVersion": "v1", "metadata": {}}
        self.body.update(status="Failure", message=message, reason=reason, details=details)
        if details is None:
            del self.body["details"]
        self.body["code"] = code


def _unknown_resource() -> StatusError:
    return StatusError(404, "NotFound", "the server could not find the requested resource", {})


def _bad_request(message: str) -> StatusError:
    return StatusError(400, "BadRequest", message, {})


def _json_body(body: bytes, what: str) -> Any:
    try:
        return json.loads(body)
    except ValueError as err:
        raise _bad_request(f"{what}: {err}") from None


def _true(value: str | None) -> bool:
    return (value or "").lower() in ("1", "t", "true")


def _key(obj: Object) -> tuple[str, str]:
    return (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])


def _parse_selector(text: str, allowed_fields: set[str] | None) -> list[tuple[str, str, str]]:
    """``k=v``, ``k==v``, ``k!=v``; for labels also ``k`` and ``!k`` (no set-based syntax)."""
    terms = []
    for term in filter(None, (t.strip() for t in text.split(","))):
        op = next((op for op in ("!=", "==", "=") if op in term), None)
        if op is not None:
            key, value = (s.strip() for s in term.split(op, 1))
            terms.append((key, "!=" if op == "!=" else "=", value))
        elif allowed_fields is None:
            terms.append((term.lstrip("!").strip(), "!" if term.startswith("!") else "has", ""))
        else:
            raise _bad_request(f"invalid selector: '{text}'; can't understand '{term}'")
        if allowed_fields is not None and terms[-1][0] not in allowed_fields:
            raise _bad_request(f"field label not supported: {terms[-1][0]}")
    return terms


@dataclass
class _Query:
    """The objects a LIST or WATCH asks for: the path's namespace and the selectors."""

    namespace: str
    fields: list[tuple[str, str, str]]
    labels: list[tuple[str, str, str]]

    @classmethod
    def parse(cls, res: Resource, namespace: str, params: dict[str, str]) -> _Query:
        allowed = {"metadata.name", "metadata.namespace"} if res.namespaced else {"metadata.name"}
        fields = _parse_selector(params.get("fieldSelector", ""), allowed)
        return cls(namespace, fields, _parse_selector(params.get("labelSelector", ""), None))

    def matches(self, obj: Object) -> bool:
        namespace, name = _key(obj)
        if self.namespace and namespace != self.namespace:
            return False
        values = {"metadata.name": name, "metadata.namespace": namespace}
        if any((values[k] == want) != (op == "=") for k, op, want in self.fields):
            return False
        labels = obj["metadata"].get("labels") or {}
        checks = {"has": lambda k, _: k in labels, "!": lambda k, _: k not in labels,
                  "=": lambda k, v: labels.get(k) == v,
                  "!=": lambda k, v: labels.get(k) != v}  # fmt: skip
        return all(checks[op](k, want) for k, op, want in self.labels)


@dataclass
class _Change:
    """One entry of the event history (the fake's etcd); prev is the state before."""

    rv: int
    resource: str
    type: str
    obj: Object
    prev: Object | None = None

    def seen_by(self, query: _Query) -> tuple[str, Object] | None:
        """The event a watcher with this query gets, as the watch cache decides it: an object
        that starts matching is ADDED; one that stops is DELETED, with its previous content."""
        now = query.matches(self.obj)
        if self.prev is None:
            return (self.type, self.obj) if now else None
        before = query.matches(self.prev)
        if now:
            return ("MODIFIED" if before else "ADDED", self.obj)
        if not before:
            return None
        gone = copy.deepcopy(self.prev)
        gone["metadata"]["resourceVersion"] = str(self.rv)
        return ("DELETED", gone)


class _HTTPServer(http.server.ThreadingHTTPServer):
    """One daemon thread per connection, TLS set up in that thread. socketserver joins only
    non-daemon threads on close, so this one keeps its own list for stop() to join."""

    allow_reuse_address = True  # stop() then start() binds the same port again

    def __init__(self, fake: FakeAPIServer, port: int) -> None:
        self.fake = fake
        self.threads: list[threading.Thread] = []
        super().__init__(("127.0.0.1", port), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(target=self.process_request_thread,
                                  args=(request, client_address), daemon=True)  # fmt: skip
        self.threads = [t for t in self.threads if t.is_alive()] + [thread]
        thread.start()

    def server_bind(self) -> None:  # HTTPServer's does a (possibly slow) reverse DNS lookup
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", self.server_address[1]

    def finish_request(self, request: Any, client_address: Any) -> None:
        fake = self.fake
        if fake._refusing:  # an API server that is down: close without a word
            request.close()
            return
        # As a real API server does: no Nagle delay on small writes (watch events, bookmarks).
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = fake._context.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
        with fake._cond:
            if fake._stopping.is_set():
                conn.close()
                return
            fake._conns.add(conn)
        try:
            conn.settimeout(5)
            conn.do_handshake()
            conn.settimeout(None)
            _Handler(conn, client_address, self)
        except OSError:  # ssl.SSLError included: a client that went away
            pass
        finally:
            with fake._cond:
                fake._conns.discard(conn)
            conn.close()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and chunked bodies for watches
    server_version = "fake-kube-apiserver"
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        fake = self.server.fake
        url = urlsplit(self.path)
        path, params = url.path, dict(parse_qsl(url.query, keep_blank_values=True))
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with fake._cond:
            fake.requests.append((self.command, path, params))
            if self.command in WRITE_METHODS:
                with contextlib.suppress(ValueError):
                    content_type = self.headers.get("Content-Type") or ""
                    fake.bodies.append((self.command, path, content_type, json.loads(body)))
        if fake._stopping.is_set():  # read as the server goes down: never answered
            self.close_connection = True
            return
        try:
            seconds = fake._take("stall", self.command, path)
            if seconds is not None and fake._stopping.wait(seconds):
                self.close_connection = True  # stopped while stalling: no answer at all
                return
            if self.headers.get("Authorization") != f"Bearer {fake.token}":
                raise StatusError(401, "Unauthorized", "Unauthorized")
            failure = fake._take("fail", self.command, path)
            if failure is not None:
                raise failure
            self._route(path, params, body)
        except StatusError as err:
            self._send_json(err.code, err.body, err.headers)
        finally:
            self.close_connection = self.close_connection or fake._stopping.is_set()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _route(self, path: str, params: dict[str, str], body: bytes) -> None:
        """/api/v1/... or /apis/GROUP/v1/..., then [namespaces/NS/]RESOURCE[/NAME]."""
        fake = self.server.fake
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["api", "v1"]:
            group, rest = "", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis" and parts[2] == "v1":
            group, rest = parts[1], parts[3:]
        else:
            raise _unknown_resource()
        namespace = ""
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        name = rest[1] if len(rest) == 2 else ""
        events = EVENT_APIS.get(group) if rest[:1] == ["events"] else None
        res = events or RESOURCES.get(rest[0] if rest else "")
        if len(rest) not in (1, 2) or res is None or res.group != group:
            raise _unknown_resource()
        if (namespace and not res.namespaced) or (group == NAD_GROUP and not fake.crd_installed):
            raise _unknown_resource()
        verb = WRITE_METHODS.get(self.command, "get" if self.command == "GET" else "")
        if events:
            allowed = verb == "create" and namespace and not name
        else:  # create on a collection (in its namespace), update and patch on one object
            allowed = verb == "get" or (verb in res.writes and (verb == "create") != bool(name)
                                        and (bool(namespace) or not res.namespaced))  # fmt: skip
        if not allowed:
            message = "the server does not allow this method on the requested resource"
            raise StatusError(405, "MethodNotAllowed", message, {})
        if events:
            self._send_json(201, fake._create_event(res, namespace, body))
        elif verb == "create":
            self._send_json(201, fake._create(res, namespace, body))
        elif verb == "update":
            self._send_json(200, fake._replace(res, namespace, name, body))
        elif verb == "patch":
            content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            self._send_json(200, fake._patch(res, namespace, name, content_type, body))
        elif name:
            obj = fake.get(res.plural, namespace, name)
            if obj is None:
                raise res.error(404, "NotFound", name, "not found")
            self._send_json(200, obj)
        elif _true(params.get("watch")):
            self._watch(res, _Query.parse(res, namespace, params), params, path)
        else:
            self._send_json(200, fake._list(res, _Query.parse(res, namespace, params), params))

    def _send_json(self, code: int, body: Object, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        for name, value in {"Content-Type": "application/json", **(headers or {}),
                            "Content-Length": str(len(data))}.items():  # fmt: skip
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _watch(self, res: Resource, query: _Query, params: dict[str, str], path: str) -> None:
        """Replay the history after resourceVersion (synthetic ADDED events for "" and "0"),
        then stream changes, with bookmarks, until timeoutSeconds or the server stops."""
        fake = self.server.fake
        start = params.get("resourceVersion", "")
        if start not in ("", "0") and not start.isdigit():
            raise _bad_request(f"resourceVersion: Invalid value: {start!r}: must be an integer")
        now = time.monotonic()
        timeout = params.get("timeoutSeconds")
        deadline = now + float(timeout) if timeout else None
        bookmarks = _true(params.get("allowWatchBookmarks"))
        bookmark = now + fake.bookmark_interval if bookmarks else None
        drop = fake._take("drop", "GET", path)
        queue: list[_Change] = []  # filled by _record() while this watch is registered
        initial, gone, last_rv = [], None, 0
        with fake._cond:
            if start in ("", "0"):
                objects = sorted(fake._objects[res.plural].values(), key=_key)
                initial, last_rv = [("ADDED", o) for o in objects if query.matches(o)], fake._rv
            elif int(start) < fake._compacted:
                message = f"too old resource version: {start} ({fake._compacted})"
                gone = StatusError(410, "Expired", message).body
            else:
                changes = [c for c in fake._history if c.resource == res.plural]
                queue[:], last_rv = [c for c in changes if c.rv > int(start)], int(start)
            if gone is None:
                fake._watchers[id(queue)] = (res.plural, queue)
        self.send_response(200)  # even for 410: that comes as an ERROR event
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        sent = 0

        def emit(kind: str, obj: Object) -> None:
            nonlocal sent
            if drop is not None and sent >= drop:
                raise ConnectionAbortedError("drop_next_watch")
            line = json.dumps({"type": kind, "object": obj}).encode() + b"\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            sent += 1

        try:
            for kind, obj in [("ERROR", gone)] if gone else initial:
                emit(kind, obj)
            while gone is None and not fake._stopping.is_set():
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                if bookmark is not None and now >= bookmark:
                    meta = {"resourceVersion": str(last_rv)}
                    emit("BOOKMARK", {"kind": res.kind, "apiVersion": res.api_version,
                                      "metadata": meta})  # fmt: skip
                    bookmark = now + fake.bookmark_interval
                with fake._cond:
                    if not queue and not fake._stopping.is_set():
                        wake = min((t for t in (deadline, bookmark) if t), default=None)
                        fake._cond.wait(None if wake is None else max(0.0, wake - now))
                    changes = queue[:]
                    queue.clear()
                    last_rv = fake._rv  # every change up to this version is in `changes`
                for seen in filter(None, (change.seen_by(query) for change in changes)):
                    emit(*seen)
            if drop is not None:
                raise ConnectionAbortedError("drop_next_watch")
            self.wfile.write(b"0\r\n\r\n")  # the clean end of a chunked body
        except ConnectionAbortedError:  # cut: no terminating chunk, no TLS close_notify
            self.close_connection = True
            with contextlib.suppress(OSError):
                socket.socket.shutdown(self.connection, socket.SHUT_RDWR)
        finally:
            with fake._cond:
                fake._watchers.pop(id(queue), None)


class FakeAPIServer:
    """The fake API server; use as ``with FakeAPIServer(tmp_path) as api: ...``.

    Its CA and serving certificate go to ``directory/fakeapi`` (ca.crt, tls.crt, tls.key).
    """

    def __init__(self, directory: Path, *, token: str = "fake-token",
                 bookmark_interval: float = 1.0, crd_installed: bool = True) -> None:  # fmt: skip
        self.cert_dir = Path(directory) / "fakeapi"
        ca_cert, ca_key = certs.generate_ca(common_name="fake-kube-apiserver-ca")
        cert, key = certs.generate_serving_cert(
            ca_cert, ca_key, dns_names=["localhost"], ip_addresses=["127.0.0.1"]
        )
        certs.write_cert_dir(self.cert_dir, ca_cert, cert, key)
        self.ca_file = self.cert_dir / certs.CA_CERT_FILE
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(
            self.cert_dir / certs.TLS_CERT_FILE, self.cert_dir / certs.TLS_KEY_FILE
        )
        self.token = token
        self.bookmark_interval = bookmark_interval
        self.crd_installed = crd_installed
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # (method, path, query)
        # JSON bodies of POST, PUT and PATCH requests: (method, path, content type, body)
        self.bodies: list[tuple[str, str, str, Any]] = []
        self.events: list[Object] = []  # created Events, newest last
        self.port = 0
        self._cond = threading.Condition()  # guards all state below; notified on changes
        self._stopping = threading.Event()
        self._rv = self._compacted = _FIRST_RV
        self._objects: dict[str, dict[tuple[str, str], Object]] = {r: {} for r in RESOURCES}
        self._history: list[_Change] = []
        self._snapshots: dict[tuple[str, int], list[Object]] = {}
        self._watchers: dict[int, tuple[str, list[_Change]]] = {}  # (resource, queue)
        self._faults: dict[str, list[tuple[str, str, Any]]] = {"fail": [], "drop": [], "stall": []}
        self._refusing = False
        self._conns: set[ssl.SSLSocket] = set()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def resource_version(self) -> str:
        return str(self._rv)

    def start(self) -> FakeAPIServer:
        """Listen (after a stop(): on the same port) and serve from a background thread."""
        if self._httpd is not None:
            raise RuntimeError("already running")
        self._stopping.clear()
        self._httpd = _HTTPServer(self, self.port)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name=f"fakeapi-{self.port}"
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and end every connection, joining every thread: watch streams end
        cleanly, stalled requests go unanswered, idle keep-alive connections are closed."""
        if self._httpd is None or self._thread is None:
            return
        with self._cond:
            self._stopping.set()
            self._cond.notify_all()
        self._httpd.shutdown()
        self._thread.join()
        # First SHUT_RD: a blocked read (an idle keep-alive connection) returns at once, while
        # writes still work, so a busy handler finishes its answer, then closes (stopping is
        # set). Then SHUT_RDWR for any handler still writing to a client that does not read.
        for how, wait in ((socket.SHUT_RD, 2.0), (socket.SHUT_RDWR, 5.0)):
            with self._cond:
                for conn in self._conns:
                    with contextlib.suppress(OSError):
                        socket.socket.shutdown(conn, how)  # the socket's, not SSLSocket's
            deadline = time.monotonic() + wait
            for thread in self._httpd.threads:
                thread.join(max(0.0, deadline - time.monotonic()))
        self._httpd.server_close()
        self._httpd = self._thread = None

    def __enter__(self) -> FakeAPIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def write_kubeconfig(self, path: Path) -> Path:
        """A kubeconfig for this server (its CA file, a bearer token user)."""
        cluster = {"server": self.url, "certificate-authority": str(self.ca_file)}
        context = {"cluster": "fake", "user": "fake"}
        config = {"apiVersion": "v1", "kind": "Config", "current-context": "fake",
                  "clusters": [{"name": "fake", "cluster": cluster}],
                  "users": [{"name": "fake", "user": {"token": self.token}}],
                  "contexts": [{"name": "fake", "context": context}]}  # fmt: skip
        Path(path).write_text(yaml.safe_dump(config, sort_keys=False))
        return Path(path)

    # -- the cluster, changed as a controller would ----------------------------------------

    def upsert(self, resource: str, obj: Object) -> Object:
        """Create (ADDED) or replace (MODIFIED) an object; returns what is stored."""
        res = RESOURCES[resource]
        obj = {**copy.deepcopy(obj), "kind": res.kind, "apiVersion": res.api_version}
        meta = obj.setdefault("metadata", {})
        if res.namespaced != bool(meta.get("namespace")):
            raise ValueError(f"metadata.namespace is {'required' if res.namespaced else 'wrong'}")
        if resource == "secrets":  # defaulted by the API server
            obj["type"] = obj.get("type") or "Opaque"
        if resource == "namespaces":  # the API server sets this label on every namespace
            labels = meta.get("labels") or {}
            meta["labels"] = {**labels, "kubernetes.io/metadata.name": meta["name"]}
        with self._cond:
            return self._write(resource, obj)

    def delete(self, resource: str, namespace: str, name: str) -> Object:
        """Delete an object (KeyError if absent); DELETED carries its last state, new RV."""
        with self._cond:
            obj = copy.deepcopy(self._objects[resource].pop((namespace, name)))
            self._rv += 1
            obj["metadata"]["resourceVersion"] = str(self._rv)
            self._record(_Change(self._rv, resource, "DELETED", obj))
            return copy.deepcopy(obj)

    def get(self, resource: str, namespace: str, name: str) -> Object | None:
        with self._cond:
            return copy.deepcopy(self._objects[resource].get((namespace, name)))

    def compact(self) -> str:
        """Forget the history up to now, as etcd compaction does; returns that RV."""
        with self._cond:
            self._compacted = self._rv
            self._history.clear()
            self._snapshots.clear()
            return str(self._rv)

    # -- faults: each consumed by the next `times` matching requests -------------------------

    def fail_next(self, method: str, path_prefix: str, status: int = 500,
                  reason: str = "InternalError", times: int = 1, message: str | None = None,
                  retry_after: int | None = None) -> None:  # fmt: skip
        """Answer with this Status (method "*": any). With retry_after, a Retry-After header
        and details.retryAfterSeconds, as real 429s have."""
        details: Object = {} if retry_after is None else {"retryAfterSeconds": retry_after}
        headers = None if retry_after is None else {"Retry-After": str(retry_after)}
        err = StatusError(status, reason, message or f"fake failure: {reason}", details, headers)
        self._add("fail", method, path_prefix, times, err)

    def drop_next_watch(self, path_prefix: str, after_events: int = 0, times: int = 1) -> None:
        """Cut a watch after that many event lines (bookmarks count): the TCP connection is
        shut down with no terminating chunk (at the latest when the watch would have ended)."""
        self._add("drop", "GET", path_prefix, times, after_events)

    def stall_next(self, method: str, path_prefix: str, seconds: float, times: int = 1) -> None:
        """Wait that long before answering (cut short, unanswered, by stop())."""
        self._add("stall", method, path_prefix, times, seconds)

    def refuse_connections(self, refuse: bool = True) -> None:
        """Close new connections before the TLS handshake (an API server that is down);
        connections already open are served as before."""
        self._refusing = refuse

    # -- internals ------------------------------------------------------------------------

    def _add(self, kind: str, method: str, prefix: str, times: int, what: Any) -> None:
        with self._cond:
            self._faults[kind].extend([(method.upper(), prefix, what)] * times)

    def _take(self, kind: str, method: str, path: str) -> Any:
        """The first fault of this kind for the request, consumed; None if there is none."""
        with self._cond:
            for fault in self._faults[kind]:
                if fault[0] in (method, "*") and path.startswith(fault[1]):
                    self._faults[kind].remove(fault)
                    return fault[2]
        return None

    def _stamp(self, meta: Object, old: Object | None) -> None:
        self._rv += 1
        meta["resourceVersion"] = str(self._rv)
        if old is not None:
            meta["uid"], meta["creationTimestamp"] = old["uid"], old["creationTimestamp"]
        else:
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))

    def _record(self, change: _Change) -> None:
        self._history.append(change)
        for resource, queue in self._watchers.values():
            if resource == change.resource:
                queue.append(change)
        self._cond.notify_all()

    def _list(self, res: Resource, query: _Query, params: dict[str, str]) -> Object:
        """One page; the next pages come from the first one's snapshot, so a paginated list
        is consistent (as from etcd), until compaction expires the continue token."""
        limit, token, start = int(params.get("limit") or 0), params.get("continue"), None
        with self._cond:
            if token:
                try:
                    decoded = json.loads(base64.urlsafe_b64decode(token))
                    rv, start = int(decoded["rv"]), tuple(decoded["start"])
                except (ValueError, KeyError, TypeError, binascii.Error) as err:
                    raise _bad_request(f"continue key is not valid: {err}") from None
                snapshot = self._snapshots.get((res.plural, rv))
                if snapshot is None:
                    message = ("The provided continue parameter is too old to display a "
                               "consistent list result. You can start a new list without the "
                               "continue parameter.")  # fmt: skip
                    raise StatusError(410, "Expired", message, {})
            else:
                rv, snapshot = self._rv, sorted(self._objects[res.plural].values(), key=_key)
            found = [o for o in snapshot if (not start or _key(o) > start) and query.matches(o)]
            page, rest = (found[:limit], found[limit:]) if limit > 0 else (found, [])
            meta: Object = {"resourceVersion": str(rv)}
            if rest:
                self._snapshots[(res.plural, rv)] = snapshot
                cont = {"v": "meta.k8s.io/v1", "rv": rv, "start": list(_key(page[-1]))}
                meta["continue"] = base64.urlsafe_b64encode(json.dumps(cont).encode()).decode()
                if not query.fields and not query.labels:
                    meta["remainingItemCount"] = len(rest)
        # Real servers omit kind and apiVersion on the items of a list.
        items = [{k: v for k, v in o.items() if k not in ("kind", "apiVersion")} for o in page]
        return {"kind": f"{res.kind}List", "apiVersion": res.api_version, "metadata": meta,
                "items": items}  # fmt: skip

    def _create_event(self, res: Resource, namespace: str, body: bytes) -> Object:
        try:
            obj = json.loads(body)
            meta = obj.setdefault("metadata", {})
        except (ValueError, AttributeError) as err:
            raise _bad_request(f"the body of the request is not a valid object: {err}") from None
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        if not meta.get("name") or meta.get("namespace", namespace) != namespace:
            raise _bad_request("metadata.name is required; metadata.namespace, if set, must be "
                               "the namespace of the request")  # fmt: skip
        meta["namespace"] = namespace
        obj.update(kind=res.kind, apiVersion=res.api_version)
        with self._cond:  # both APIs store the same Events: a name is taken in both
            if any(_key(e) == _key(obj) for e in self.events):
                raise res.error(409, "AlreadyExists", meta["name"], "already exists")
            self._stamp(meta, None)
            self.events.append(obj)
            return copy.deepcopy(obj)

    def _write(self, resource: str, obj: Object) -> Object:
        """Store (create or replace) an object and record the change; under the lock."""
        old = self._objects[resource].get(_key(obj))
        self._stamp(obj["metadata"], old["metadata"] if old else None)
        self._objects[resource][_key(obj)] = obj
        self._record(_Change(self._rv, resource, "MODIFIED" if old else "ADDED", obj, old))
        return copy.deepcopy(obj)

    def _incoming(self, res: Resource, namespace: str, body: bytes) -> Object:
        """A request's object, checked and defaulted as the API server decodes it."""
        obj = _json_body(body, "the body of the request is not valid JSON")
        if not isinstance(obj, dict) or not isinstance(obj.setdefault("metadata", {}), dict):
            raise _bad_request("the body of the request is not a valid object")
        for field, want in (("kind", res.kind), ("apiVersion", res.api_version)):
            if obj.get(field, want) != want:
                raise _bad_request(f"{field} {obj[field]!r} does not match {want!r}")
        obj.update(kind=res.kind, apiVersion=res.api_version)
        meta = obj["metadata"]
        if res.namespaced:
            if meta.get("namespace", namespace) != namespace:
                raise _bad_request("the namespace of the provided object does not match the "
                                   "namespace sent on the request")  # fmt: skip
            meta["namespace"] = namespace
        if res.plural == "secrets":
            _decode_secret(obj)
        return obj

    def _create(self, res: Resource, namespace: str, body: bytes) -> Object:
        obj = self._incoming(res, namespace, body)
        meta = obj["metadata"]
        name = meta.get("name") or ""
        if not name:
            required = "Required value: name or generateName is required"
            raise res.invalid("", [("metadata.name", "FieldValueRequired", required)])
        for system in ("uid", "resourceVersion", "creationTimestamp"):
            meta.pop(system, None)  # set by the server, whatever the client sent
        _validate(res, name, obj, None)
        with self._cond:
            if self._objects[res.plural].get(_key(obj)) is not None:
                raise res.error(409, "AlreadyExists", name, "already exists")
            return self._write(res.plural, obj)

    def _replace(self, res: Resource, namespace: str, name: str, body: bytes) -> Object:
        """PUT: an update, conditional when the object carries a resourceVersion."""
        obj = self._incoming(res, namespace, body)
        meta = obj["metadata"]
        if meta.get("name") != name:
            raise _bad_request(f"the name of the object ({meta.get('name')}) does not match the "
                               f"name on the URL ({name})")  # fmt: skip
        with self._cond:
            old = self._objects[res.plural].get(_key(obj))
            if old is None:  # secrets are not created by an update
                raise res.error(404, "NotFound", name, "not found")
            wanted = meta.get("resourceVersion")
            if wanted and wanted != old["metadata"]["resourceVersion"]:
                raise res.conflict(name)
            _validate(res, name, obj, old)
            return self._write(res.plural, obj)

    def _patch(self, res: Resource, namespace: str, name: str, content_type: str,
               body: bytes) -> Object:  # fmt: skip
        """PATCH, as the API server applies it: to the current object, then the result is
        checked like an update (a resourceVersion in it is a precondition)."""
        if content_type not in (JSON_PATCH, MERGE_PATCH, STRATEGIC_PATCH):
            message = ("the body of the request was in an unknown format - accepted media types "
                       f"include: {JSON_PATCH}, {MERGE_PATCH}, {STRATEGIC_PATCH} (the fake "
                       "implements no apply patch)")  # fmt: skip
            raise StatusError(415, "UnsupportedMediaType", message, {})
        patch = _json_body(body, "error decoding patch")
        with self._cond:
            old = self._objects[res.plural].get((namespace, name))
            if old is None:
                raise res.error(404, "NotFound", name, "not found")
            if content_type == JSON_PATCH:
                if not isinstance(patch, list):
                    raise _bad_request("json: cannot unmarshal object into Go value of type "
                                       "jsonpatch.Patch")  # fmt: skip
                try:
                    obj = jsonpatch.apply_patch(copy.deepcopy(old), patch)
                except jsonpatch.InvalidJsonPatch as err:
                    raise _bad_request(str(err)) from None
                except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as err:
                    # the API server's words for a patch that does not apply (e.g. a failed test)
                    message = "the server rejected our request due to an error in our request"
                    raise StatusError(422, "Invalid", message,
                                      {"causes": [{"message": str(err)}]}) from None  # fmt: skip
            elif not isinstance(patch, dict):
                raise _bad_request("Invalid JSON Patch")
            elif content_type == MERGE_PATCH:
                obj = _merge_patch(copy.deepcopy(old), patch)
            else:
                obj = _strategic_merge(copy.deepcopy(old), patch, ())
            if not isinstance(obj, dict) or not isinstance(obj.get("metadata"), dict):
                raise _bad_request("the patched object is not a valid object")
            meta, old_meta = obj["metadata"], old["metadata"]
            if meta.get("name") != name:
                raise _bad_request(f"the name of the object ({meta.get('name')}) does not "
                                   f"match the name on the URL ({name})")  # fmt: skip
            wanted = meta.get("resourceVersion")
            if wanted and wanted != old_meta["resourceVersion"]:
                raise res.conflict(name)
            obj.update(kind=res.kind, apiVersion=res.api_version)
            _validate(res, name, obj, old)
            return self._write(res.plural, obj)


def _decode_secret(obj: Object) -> None:
    """data values are base64 ([]byte in Go); stringData is merged into data, write-only;
    type defaults to Opaque."""
    data = obj.get("data") or {}
    for key, value in data.items():
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, TypeError, ValueError) as err:
            raise _bad_request(f'Secret in version "v1" cannot be handled as a Secret: '
                               f"data[{key}]: illegal base64 data: {err}") from None  # fmt: skip
    for key, value in (obj.pop("stringData", None) or {}).items():
        data[key] = base64.b64encode(str(value).encode()).decode()
    if data:
        obj["data"] = data
    obj["type"] = obj.get("type") or "Opaque"


def _validate(res: Resource, name: str, obj: Object, old: Object | None) -> None:
    """The validation a real server does on what meshgate writes (422 Invalid)."""
    causes: list[tuple[str, str, str]] = []
    if res.plural == "secrets":
        if old is not None and obj["type"] != (old.get("type") or "Opaque"):
            causes.append(("type", "FieldValueInvalid",
                           f'Invalid value: "{obj["type"]}": field is immutable'))  # fmt: skip
        if obj["type"] == "kubernetes.io/tls":
            for key in ("tls.crt", "tls.key"):
                if key not in (obj.get("data") or {}):
                    causes.append((f"data[{key}]", "FieldValueRequired", "Required value"))
    elif res.group == ADMISSION_GROUP:
        seen: set[str] = set()
        for index, webhook in enumerate(obj.get("webhooks") or []):
            where = f"webhooks[{index}]"
            hook_name = webhook.get("name") if isinstance(webhook, dict) else None
            if not hook_name:
                causes.append((f"{where}.name", "FieldValueRequired", "Required value"))
            elif hook_name in seen:
                causes.append((f"{where}.name", "FieldValueDuplicate",
                               f'Duplicate value: "{hook_name}"'))  # fmt: skip
            seen.add(str(hook_name))
            config = webhook.get("clientConfig") if isinstance(webhook, dict) else None
            if not isinstance(config, dict) or not (config.get("url") or config.get("service")):
                causes.append((f"{where}.clientConfig", "FieldValueRequired",
                               "Required value: exactly one of url or service is required"))
            elif "caBundle" in config:
                try:
                    base64.b64decode(config["caBundle"], validate=True)
                except (binascii.Error, TypeError, ValueError) as err:
                    causes.append((f"{where}.clientConfig.caBundle", "FieldValueInvalid",
                                   f"Invalid value: illegal base64 data: {err}"))  # fmt: skip
    if causes:
        raise res.invalid(name, causes)


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = target if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def _strategic_merge(target: Any, patch: Any, path: tuple[str, ...]) -> Any:
    """Kubernetes' strategic merge patch for the lists meshgate patches: a merge patch in
    which the lists in MERGE_KEYS merge item by item on their key (items with a new key are
    appended); other lists are replaced. Patch directives ($patch, $setElementOrder, ...)
    are not implemented: they are refused, not ignored."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = target if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            raise _bad_request(f"strategic merge directive {key} is not implemented by the fake")
        merge_key = MERGE_KEYS.get((*path, key))
        if value is None:
            result.pop(key, None)
        elif merge_key is not None and isinstance(value, list):
            items = [i for i in result.get(key) or [] if isinstance(i, dict)]
            for item in value:
                if not isinstance(item, dict) or merge_key not in item:
                    raise _bad_request(f"map: {item} does not contain declared merge key: "
                                       f"{merge_key}")  # fmt: skip
                found = next((i for i in items if i.get(merge_key) == item[merge_key]), None)
                if found is None:
                    items.append(_strategic_merge({}, item, (*path, key)))
                else:
                    _strategic_merge(found, item, (*path, key))
            result[key] = items
        else:
            result[key] = _strategic_merge(result.get(key), value, (*path, key))
    return result
