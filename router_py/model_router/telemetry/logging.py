"""Structured JSON logs, one object per line, as the spec shows them, with
personal data and secrets masked in every line at every level.

Every line of a process goes to stderr through its one `LineWriter`. Lines
from `logging` (warnings, errors, Granian's own lines) are written at once,
in the thread that logged them. The line of each routed request
(`RequestObserver`) skips the logging machinery: it is built directly in the
same schema and buffered, and a writer thread writes the buffer every
WRITE_BEAT_S, as soon as BATCH_BYTES are waiting, before any line from
`logging`, and when the process stops (see docs/operations.md, "Logs").
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import select
import stat
import threading
import time
from typing import Any

import msgspec

from .pii import mask

SERVICE = "model-router"

# Attributes every LogRecord has; anything else was passed in ``extra``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

# Buffered request lines are written at least this often: the most a worker
# killed outright loses.
WRITE_BEAT_S = 0.05
# ...and as soon as this much is waiting.
BATCH_BYTES = 64 * 1024
# Past this much waiting (stderr not taking lines: a blocked pipe), request
# lines are dropped and counted, not kept: memory stays bounded.
MAX_BUFFERED_BYTES = 1024 * 1024


class Timestamps:
    """`2026-11-29T18:26:38.672Z` for a `time.time()`: what
    `datetime.isoformat(timespec="milliseconds")` gives, with the date and
    time of day made once a second rather than once a line."""

    def __init__(self) -> None:
        self._second = (-1, "")  # one tuple: threads share a formatter

    def __call__(self, created: float) -> str:
        # As datetime.fromtimestamp: the fraction rounded to the microsecond
        # (isoformat then truncates it to the millisecond).
        fraction, whole = math.modf(created)
        second, micros = int(whole), round(fraction * 1_000_000)
        if micros >= 1_000_000:
            second, micros = second + 1, micros - 1_000_000
        cached, prefix = self._second
        if cached != second:
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, prefix)
        return f"{prefix}.{micros // 1000:03d}Z"


def json_line(
    timestamp: str, level: str, logger: str, message: str, fields: dict[str, Any]
) -> bytes:
    """One line of the log (without its newline): the schema of every line,
    every string in it masked."""
    entry: dict[str, Any] = {
        "timestamp": timestamp,
        "level": level,
        "service": SERVICE,
        "logger": logger,
        "message": mask(message),
    }
    for key, value in fields.items():
        # The usual types first, without the calls and isinstance chain of _masked.
        kind = type(value)
        entry[key] = mask(value) if kind is str else value if kind in _PLAIN else _masked(value)
    return msgspec.json.encode(entry, enc_hook=str)


_PLAIN = frozenset((int, float, bool, type(None)))


def _masked(value: Any) -> Any:
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(v) for v in value]
    if isinstance(value, int | float | bool) or value is None:
        return value
    return mask(str(value))


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._timestamps = Timestamps()

    def format(self, record: logging.LogRecord) -> str:
        fields = {
            key: value
            for key, value in vars(record).items()
            if key not in _STANDARD and not key.startswith("_")
        }
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        level, message = record.levelname.lower(), record.getMessage()
        stamp = self._timestamps(record.created)
        return json_line(stamp, level, record.name, message, fields).decode()


class LineWriter:
    """The lines of one process to one file descriptor, in the order given.

    `add` buffers a line for the writer thread (started with the first);
    `write` writes the buffered lines and its own at once, in the caller's
    thread. Each write holds whole lines, at most PIPE_BUF bytes unless the
    descriptor is a regular file: on a pipe (a container's stderr) that is
    what keeps the lines of several workers from interleaving.
    """

    def __init__(self, fd: int):
        self._fd = fd
        try:
            regular = stat.S_ISREG(os.fstat(fd).st_mode)
        except OSError:  # no stderr at all: the writes will fail quietly
            regular = False
        self._chunk = BATCH_BYTES if regular else select.PIPE_BUF
        self._timestamps = Timestamps()
        self._start()
        # A forked worker starts afresh: its parent's buffer and thread are the parent's.
        os.register_at_fork(after_in_child=self._start)

    def _start(self) -> None:
        # Re-entrant, as logging's own: a signal handler that logs while its
        # thread writes must not deadlock.
        self._lock = threading.RLock()  # the buffer
        self._writing = threading.RLock()  # one write at a time, in order
        self._wake = threading.Event()
        self._lines: list[bytes] = []
        self._size = 0
        self._dropped = 0
        self._thread: threading.Thread | None = None

    def add(self, line: bytes) -> None:
        """Queue a line (with its newline) for the writer thread."""
        with self._lock:
            if self._size >= MAX_BUFFERED_BYTES:
                self._dropped += 1
                return
            self._lines.append(line)
            self._size += len(line)
            full = self._size >= BATCH_BYTES > self._size - len(line)  # just now
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
            self._thread.start()
        if full:
            self._wake.set()

    def extend(self, lines: list[bytes]) -> None:
        """Queue lines (each with its newline), as `add` does one."""
        for line in lines:
            self.add(line)

    def write(self, line: bytes = b"") -> None:
        """Write what is buffered, then `line` (with its newline), now."""
        with self._writing:
            with self._lock:
                lines, dropped = self._lines, self._dropped
                self._lines, self._size, self._dropped = [], 0, 0
            if dropped:
                lines.append(self._dropped_line(dropped))
            if line:
                lines.append(line)
            self._write(lines)

    def _run(self) -> None:
        while True:
            self._wake.wait(WRITE_BEAT_S)
            self._wake.clear()
            self.write()

    def _dropped_line(self, dropped: int) -> bytes:
        message = f"{dropped} request log lines dropped: stderr did not take them in time"
        stamp = self._timestamps(time.time())
        return json_line(stamp, "warning", __name__, message, {}) + b"\n"

    def _write(self, lines: list[bytes]) -> None:
        start, size = 0, 0
        for i, line in enumerate(lines):
            if size and size + len(line) > self._chunk:
                self._write_all(b"".join(lines[start:i]))
                start, size = i, 0
            size += len(line)
        if size:
            self._write_all(b"".join(lines[start:]))

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError:
            pass  # stderr is gone: there is nowhere left to say so


STDERR = LineWriter(2)
# A clean exit of a process that is not a forked worker (those stop through
# the service, which flushes) writes what is left.
atexit.register(STDERR.write)


class JsonLineHandler(logging.Handler):
    """`logging`'s records as JSON lines on stderr, written at once (after
    the request lines still buffered)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            STDERR.write(self.format(record).encode() + b"\n")
        except Exception:
            self.handleError(record)


def granian_log_config(level: str) -> dict[str, Any]:
    """Granian's own loggers (`_granian`, its Rust side too, and the access
    log) through our formatter on stderr: one JSON stream, one schema."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"json": {"()": f"{__name__}.JsonLineHandler"}},
        "loggers": {
            name: {"handlers": ["json"], "level": level.upper(), "propagate": False}
            for name in ("_granian", "granian.access")
        },
    }


def configure_logging(level: str) -> None:
    root = logging.getLogger()
    root.handlers[:] = [JsonLineHandler()]
    root.setLevel(level.upper())
