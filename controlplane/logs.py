"""The control plane's logs: text for people, JSON lines for log pipelines (`--log-format`).

Every task event is one INFO line of the logger `gpucp.tasks`, with the task, tenant, kind,
worker and attempt as fields (in text, after the sentence; in JSON, as keys), so a log search
for one task or one worker finds its whole story.

A burst makes three or four task events a task, so a task line skips logging's record machinery
(a LogRecord, the logger and handler calls, the formatter): `log_event` writes the line itself,
in the format `setup` chose and as that formatter would write it, to the same handler. It still
asks the `gpucp.tasks` logger whether INFO is on, so raising that logger's level (or
`--log-level WARNING`) silences task lines as it silences any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import threading
import time
from json.encoder import encode_basestring  # json.dumps's quoting of a str (C)

from controlplane.book import Event
from controlplane.metrics import STATE_NAMES
from controlplane.record import TaskRecord

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Fields a log call may carry in `extra`, written as JSON keys.
FIELDS = ("task", "tenant", "kind", "worker", "attempt", "state", "cause")

task_log = logging.getLogger("gpucp.tasks")
# Task lines logged on the event loop are written together this long after the first of them
# (a burst's loop turns are short: one write a turn was still thousands a second).
WRITE_AFTER_S = 0.05


class Formatter(logging.Formatter):
    """logging's Formatter, with a record's time to the second made once a second, not once a line
    (the calendar conversion and strftime were a third of formatting a task line). Each formatter
    here asks for the time in one format only."""

    _second = (-1, "")  # the latest second asked for, and its time to the second

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = self.second(record.created, datefmt)
        return stamp if datefmt else f"{stamp},{int(record.msecs):03d}"  # as logging's default

    def second(self, created: float, datefmt: str | None = None) -> str:
        """The time `created` to the second, in `datefmt` (default: logging's)."""
        second = int(created)
        cached = self._second  # one tuple, replaced whole: a line from another thread may ask meanwhile
        if cached[0] == second:
            return cached[1]
        stamp = time.strftime(datefmt or self.default_time_format, self.converter(created))
        self._second = (second, stamp)
        return stamp

    def task_line(self, rec: TaskRecord, event: Event) -> str:
        """A task event's line, as `format` writes the INFO record `log_event` would log."""
        now = time.time()
        return f"{self.second(now)},{int(now % 1 * 1000):03d} INFO gpucp.tasks: {message(rec, event, True)}\n"


class JsonFormatter(Formatter):
    """One JSON object a line: time, level, logger, message, and the task fields a call gave."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": self._time(record.created, record.msecs),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)

    def _time(self, created: float, msecs: float) -> str:
        return f"{self.second(created, '%Y-%m-%dT%H:%M:%S')}.{int(msecs):03d}Z"

    def task_line(self, rec: TaskRecord, event: Event) -> str:
        # What `format` makes of the record `log_event` would log, with its fields, key for key.
        q = encode_basestring
        now = time.time()
        return (
            f'{{"time": "{self._time(now, now % 1 * 1000)}", "level": "INFO", "logger": "gpucp.tasks", '
            f'"message": {q(message(rec, event, False))}, "task": "{rec.id}", "tenant": {q(rec.tenant)}, '
            f'"kind": {q(rec.spec.kind)}, "worker": {q(event.worker_id)}, "attempt": {event.attempt}, '
            f'"state": "{STATE_NAMES[event.state]}", "cause": "{event.cause}"}}\n'
        )


class BatchHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Lines to stderr, written together: a record's at the end of the event loop turn that logged
    it, task lines WRITE_AFTER_S after the first of them.

    A burst logs thousands of task lines a second; stderr writes each line as it comes (one system
    call a line, the largest part of a line's cost), this handler keeps them and writes them in one
    call (a SIGKILL loses at most the last WRITE_AFTER_S of task lines). Other records are few and
    are read right after what they tell of (a refusal, a drain), so they and the lines kept before
    them go out when their turn ends. A line logged where no event loop runs (another thread,
    before start, at exit) is written at once, after the lines kept before it.
    """

    def __init__(self, formatter: Formatter) -> None:
        stream = sys.stderr
        with contextlib.suppress(AttributeError, OSError, ValueError):  # a stderr with no file under it
            stream = open(  # noqa: SIM115 (it lives as long as the process's stderr)
                sys.stderr.fileno(), "w", buffering=1 << 16, encoding=sys.stderr.encoding,
                errors="backslashreplace", closefd=False,
            )
        super().__init__(stream)
        self.setFormatter(formatter)
        self._formatter = formatter
        # Lines not yet written, in order. Appending to a list needs no lock (the GIL makes it one
        # step), so a task line takes none: see `flush` for the other end.
        self._lines: list[str] = []
        # The loops a write is due on (not `None` once due: a loop that closed with one due has
        # gone): at the end of this turn, and WRITE_AFTER_S after a task line (on _later_thread).
        self._soon: asyncio.AbstractEventLoop | None = None
        self._later: asyncio.AbstractEventLoop | None = None
        self._later_thread = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._lines.append(self.format(record) + self.terminator)
        except RecursionError:  # as logging's own handlers do
            raise
        except Exception:
            self.handleError(record)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        if self._soon is not loop:
            self._soon = loop
            loop.call_soon(self._write_soon)

    def task_line(self, rec: TaskRecord, event: Event) -> None:
        """A task event's line, made without a record, in turn with the records' lines."""
        self._lines.append(self._formatter.task_line(rec, event))
        due = self._later
        if due is not None and self._later_thread == threading.get_ident() and not due.is_closed():
            return  # a write is due on this thread's loop: the line goes with it
        # asyncio.get_running_loop makes a system call (getpid, in case of a fork): once per write
        # due, not once a line.
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._later, self._later_thread = loop, threading.get_ident()
        loop.call_later(WRITE_AFTER_S, self._write_later)

    def _write_soon(self) -> None:
        self._soon = None
        self.flush()

    def _write_later(self) -> None:
        self._later = None
        self.flush()

    def flush(self) -> None:
        """Write the lines kept so far (also called by logging at exit)."""
        with self.lock:  # type: ignore[union-attr]  # made by Handler.__init__
            lines = self._lines
            count = len(lines)  # a line another thread adds meanwhile stays for the next write
            if count:
                self.stream.write("".join(lines[:count]))
                del lines[:count]
            self.stream.flush()


# The handler `setup` installed; None before (task lines then go through logging).
_handler: BatchHandler | None = None


def setup(level: str, fmt: str) -> None:
    """Send every log record to stderr at `level` in the format `fmt` (text or json)."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"--log-format {fmt!r}: give text or json")
    # What a record would gather and no format here shows: the caller's file and line (a walk up
    # the stack), the thread and the process (the logging HOWTO's "Optimization").
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    global _handler
    if fmt == "json":
        formatter: Formatter = JsonFormatter()
        formatter.converter = time.gmtime  # the "Z" in its timestamps
    else:
        formatter = Formatter(TEXT_FORMAT)
    _handler = BatchHandler(formatter)
    logging.basicConfig(level=level.upper(), handlers=[_handler])


def escaped(text: str) -> str:
    """`text` with what would break or forge a line of text (a newline, a terminal escape) written as
    a Python escape."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def message(rec: TaskRecord, event: Event, escape: bool) -> str:
    """A task event's sentence; `escape` for text. Only the reason needs it: it may quote an error a
    task raised, while tenants, kinds and worker ids are checked names without spaces."""
    reason = escaped(event.reason) if escape else event.reason
    return (
        f"task {rec.id} {event.cause}: {reason} (tenant {rec.tenant}, kind {rec.spec.kind}, "
        f"worker {event.worker_id or '-'}, attempt {event.attempt})"
    )


def log_event(rec: TaskRecord, event: Event) -> None:
    """A task event as an INFO line (a journal observer of the task book)."""
    if not task_log.isEnabledFor(logging.INFO):
        return  # the cheap way out at --log-level WARNING
    if _handler is None:
        task_log.info(message(rec, event, True))
    else:
        _handler.task_line(rec, event)
