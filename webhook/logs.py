"""JSON log lines: one object per line, so log pipelines need no parsing rules.

Records logged through `logging` are formatted by `JSONFormatter`. The admission hot path
writes its per-request line itself through `lines` (a `LineWriter`): the same JSON object
the formatter would make, at a fraction of the cost of a record, a handler and a write per
line.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

import orjson

# Record attributes that are not ours to print; uvicorn adds a terminal-coloured copy too.
_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message"}

# (unix second, that second as text): formatting the date and time is most of a
# timestamp's cost, so it is done once a second. One tuple, replaced whole, so a thread
# never pairs one second with another's text.
_second_text = (-1, "")
_MILLIS = [f".{ms:03d}Z" for ms in range(1000)]  # a table: cheaper than formatting a number


def timestamp(now: float) -> str:
    """Unix time `now` as every log line shows it: UTC, to the millisecond."""
    global _second_text
    second = int(now)
    cached, text = _second_text
    if second != cached:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second_text = (second, text)
    # Milliseconds computed as logging.LogRecord computes `msecs`.
    return text + _MILLIS[int((now - second) * 1000)]


def _entry(created: float, level: str, logger: str, msg: str) -> dict[str, Any]:
    """The keys every line starts with, in their order."""
    return {"time": timestamp(created), "level": level, "logger": logger, "msg": msg}


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = _entry(record.created, record.levelname.lower(), record.name,
                       record.getMessage())  # fmt: skip
        for key, value in record.__dict__.items():
            if key not in _RESERVED:
                entry[key] = value
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class LineWriter:
    """Whole JSON lines, formatted by the caller, written in batches.

    A line written while an event loop runs in this thread is buffered; the first line of
    a batch schedules one write of the whole batch for the loop's next turn, so a burst of
    requests costs one write and one flush rather than one each. Without a running loop a
    line is written at once. `flush()` writes whatever is buffered: the server calls it
    when it stops and it runs at exit, so a clean stop loses no line.

    Lines go to `handler`'s stream under the handler's lock, so they never split a line
    logged through that handler (logs.configure points it at its stderr handler); with no
    handler, to sys.stderr.
    """

    def __init__(self) -> None:
        self.handler: logging.StreamHandler[Any] | None = None
        # Appended to by any thread; only flush() removes lines, from the front and under
        # the lock, so a line appended meanwhile is never lost or written twice.
        self._lines: list[bytes] = []
        self._lock = threading.Lock()
        # The loop a flush is scheduled on. A loop can stop before its next turn (and never
        # run that flush): a line written while it is stopped schedules a flush of its own.
        self._flush_on: asyncio.AbstractEventLoop | None = None

    def write(self, line: bytes) -> None:
        """Write one line (JSON, without its newline)."""
        self._lines.append(line)
        flush_on = self._flush_on
        if flush_on is not None and flush_on.is_running():
            return  # that loop's next turn writes this line too
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._flush_on = loop
        loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write the buffered lines now (any thread)."""
        self._flush_on = None  # first: a line appended from here on schedules its own write
        lines = self._lines
        if not lines:
            return
        with self._lock:  # one batch at a time, in order
            count = len(lines)
            text = b"\n".join(lines[:count]).decode() + "\n"
            del lines[:count]
            handler = self.handler
            try:
                if handler is None:
                    sys.stderr.write(text)
                    sys.stderr.flush()
                else:
                    handler.acquire()  # as its emit() does: a line never splits another
                    try:
                        handler.stream.write(text)
                        handler.stream.flush()
                    finally:
                        handler.release()
            except (OSError, ValueError):
                # A log that cannot be written (stderr closed or gone) must not fail the
                # request that logs it; the lines are dropped, as logging drops records.
                pass


lines = LineWriter()


def info(logger: str, msg: str, fields: Mapping[str, Any]) -> None:
    """Write, through `lines`, the line JSONFormatter makes of
    ``logging.getLogger(logger).info(msg, extra=fields)``, without the record, the handler
    and the write of its own that logging would spend on it (the caller checks the level)."""
    entry = _entry(time.time(), "info", logger, msg)
    entry.update(fields)
    lines.write(orjson.dumps(entry, default=str))
# Registered after logging's own exit handler, so it runs before that one closes handlers.
atexit.register(lines.flush)


def configure(level: str = "info") -> None:
    # Each record would otherwise look up thread and process names it never prints.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    lines.flush()  # what was buffered goes where it was meant to go
    lines.handler = handler
    # uvicorn's own loggers propagate to ours; its access log stays off (we log each request).
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
