"""List, then watch, forever: the one loop every cluster cache runs, in its own thread.

Done the way careful controllers do it: list (paginated) and hand the whole state over, then
watch from the list's resourceVersion with bookmarks and a server-side timeout (which also
turns off the client's own hidden retries, so the loop is ours). On 410 Gone the
resourceVersion is too old: list again from scratch, never re-watch from it. On any other
error, back off with a capped, jittered delay and start over with a list.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from kubernetes import watch
from kubernetes.client import ApiException

log = logging.getLogger("meshgate.watch")

Object = dict[str, Any]


def backoff_delay(failures: int, jitter: float, *, base: float = 0.5, cap: float = 30.0) -> float:
    """Seconds to wait after `failures` consecutive failures (1, 2, …): doubling from `base`,
    capped at `cap`, then scaled by a factor in [0.5, 1.0) from `jitter` in [0, 1) so that
    replicas do not retry in lockstep."""
    if failures <= 0:
        return 0.0
    exponential = base * 2.0 ** min(failures - 1, 32)
    return min(cap, exponential) * (0.5 + jitter / 2)


class Gone(Exception):
    """The watch's resourceVersion is too old (HTTP 410): relist."""


@dataclass
class Handlers:
    """What a cache does with the stream: a full state after each list, then each event."""

    replace: Callable[[list[Object]], None]
    apply: Callable[[str, Object], None]  # (ADDED | MODIFIED | DELETED, object)
    # Called with the ApiException of a failed list; True means "stop watching for good"
    # (e.g. 404 for a CRD that is not installed).
    give_up: Callable[[ApiException], bool] = lambda _err: False
    # Called once when the watch ends for good (stop, or give_up): release helpers.
    closed: Callable[[], None] = lambda: None


class ListWatch:
    """Keeps `handlers` fed from one API collection until `stop()`."""

    def __init__(
        self,
        name: str,
        list_func: Callable[..., Any],
        handlers: Handlers,
        *,
        kwargs: dict[str, Any] | None = None,
        timeout_seconds: int = 300,
        page_size: int = 500,
        request_timeout: float = 10.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.name = name
        self._func = list_func
        self._handlers = handlers
        self._kwargs = kwargs or {}
        self._timeout = timeout_seconds
        self._page_size = page_size
        self._request_timeout = request_timeout
        self._rng = rng
        self._stop = threading.Event()
        self._watch: watch.Watch | None = None
        self._thread = threading.Thread(target=self._run, name=f"watch-{name}", daemon=True)
        self.failures = 0
        self.lists = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        current = self._watch
        if current is not None:
            current.stop()  # shuts the socket down, so a blocked read returns at once
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            self._handlers.closed()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                version = self._list()
                self.failures = 0
                while not self._stop.is_set():
                    version = self._watch_from(version)
            except Gone:
                log.info("watch expired (410 Gone): listing again", extra={"watch": self.name})
            except ApiException as err:
                if self._handlers.give_up(err):
                    return
                self._back_off(err)
            except Exception as err:  # network errors, dropped streams, bad JSON
                self._back_off(err)

    def _back_off(self, err: BaseException) -> None:
        if self._stop.is_set():
            return  # stop() closed the stream under us: not a failure
        self.failures += 1
        delay = backoff_delay(self.failures, self._rng())
        log.warning(
            "watch failed; retrying",
            extra={"watch": self.name, "error": _describe(err), "retryInSeconds": round(delay, 2)},
        )
        self._stop.wait(delay)

    def _list(self) -> str:
        items: list[Object] = []
        token = None
        while True:
            extra: dict[str, Any] = {"_continue": token} if token else {}
            response = self._func(
                **self._kwargs, limit=self._page_size, _preload_content=False,
                _request_timeout=self._request_timeout, **extra,
            )  # fmt: skip
            body = orjson.loads(response.data)
            items.extend(body.get("items") or [])
            metadata = body.get("metadata") or {}
            token = metadata.get("continue")
            if not token:
                break
        self.lists += 1
        self._handlers.replace(items)
        return str(metadata.get("resourceVersion", ""))

    def _watch_from(self, version: str) -> str:
        stream = watch.Watch(return_type="object")
        self._watch = stream
        try:
            for event in stream.stream(
                self._func, **self._kwargs, resource_version=version,
                allow_watch_bookmarks=True, timeout_seconds=self._timeout,
                _request_timeout=(self._request_timeout, self._timeout + 30),
            ):  # fmt: skip
                obj = event["raw_object"]
                version = (obj.get("metadata") or {}).get("resourceVersion") or version
                if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                    self._handlers.apply(event["type"], obj)
        except ApiException as err:
            if err.status == 410:
                raise Gone from None
            raise
        finally:
            self._watch = None
        return version


def stop_all(watchers: list[ListWatch], timeout: float = 5.0) -> None:
    """Stop every watcher at once (their waits overlap), then wait for each in turn."""
    for watcher in watchers:
        watcher.stop(timeout=0)
    for watcher in watchers:
        watcher.stop(timeout)


def _describe(err: BaseException) -> str:
    if isinstance(err, ApiException):
        return f"HTTP {err.status}: {err.reason}"
    return f"{type(err).__name__}: {err}"
