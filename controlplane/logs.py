"""The control plane's logs: text for people, JSON lines for log pipelines (`--log-format`).

Every task event is one INFO line of the logger `gpucp.tasks`, with the task, tenant, kind,
worker and attempt as fields (in text, after the sentence; in JSON, as keys), so a log search
for one task or one worker finds its whole story.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time

from controlplane.book import Event
from controlplane.metrics import STATE_NAMES
from controlplane.record import TaskRecord

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Fields a log call may carry in `extra`, written as JSON keys.
FIELDS = ("task", "tenant", "kind", "worker", "attempt", "state", "cause")

task_log = logging.getLogger("gpucp.tasks")
_fields = False  # whether a task line carries its fields apart (set by `setup`: the JSON format shows them)


class Formatter(logging.Formatter):
    """logging's Formatter, with a record's time to the second made once a second, not once a line
    (the calendar conversion and strftime were a third of formatting a task line). Each formatter
    here asks for the time in one format only."""

    _second = -1
    _stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:  # formatted under the handler's lock: one caller at a time
            self._stamp = time.strftime(datefmt or self.default_time_format, self.converter(record.created))
            self._second = second
        return self._stamp if datefmt else f"{self._stamp},{int(record.msecs):03d}"  # as logging's default


class JsonFormatter(Formatter):
    """One JSON object a line: time, level, logger, message, and the task fields a call gave."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
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


class TurnHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Lines to stderr, written at the end of the event loop turn that logged them.

    A busy turn logs hundreds of task lines; stderr writes each line as it comes (one system call
    a line, the largest part of a line's cost), this handler buffers them and writes them together
    once the turn's callbacks are done, as the store commits the turn's writes. A line logged where
    no event loop runs (another thread, before start, at exit) is written at once.
    """

    def __init__(self) -> None:
        stream = sys.stderr
        with contextlib.suppress(AttributeError, OSError, ValueError):  # a stderr with no file under it
            stream = open(  # noqa: SIM115 (it lives as long as the process's stderr)
                sys.stderr.fileno(), "w", buffering=1 << 16, encoding=sys.stderr.encoding,
                errors="backslashreplace", closefd=False,
            )
        super().__init__(stream)
        self._due: asyncio.AbstractEventLoop | None = None  # the loop a write is due on, if any

    def flush(self) -> None:
        """Called by `emit` after every line: write now only off the event loop, else at the turn's end."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            super().flush()
            return
        if self._due is not loop:  # not `None`: a loop that closed with a write due has gone
            self._due = loop
            loop.call_soon(self._write)

    def _write(self) -> None:
        self._due = None
        super().flush()


def setup(level: str, fmt: str) -> None:
    """Send every log record to stderr at `level` in the format `fmt` (text or json)."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"--log-format {fmt!r}: give text or json")
    # What a record would gather and no format here shows: the caller's file and line (a walk up
    # the stack), the thread and the process. Four task events a task are logged at INFO, and
    # these cost about as much as the line itself (the logging HOWTO's "Optimization").
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    global _fields
    _fields = fmt == "json"
    handler = TurnHandler()
    if fmt == "json":
        formatter: logging.Formatter = JsonFormatter()
        formatter.converter = time.gmtime  # the "Z" in its timestamps
    else:
        formatter = Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    logging.basicConfig(level=level.upper(), handlers=[handler])


def log_event(rec: TaskRecord, event: Event) -> None:
    """A task event as an INFO line (a journal observer of the task book)."""
    if not task_log.isEnabledFor(logging.INFO):
        return  # the cheap way out at --log-level WARNING: a burst makes four events a task
    worker = event.worker_id or "-"
    task_log.info(
        "task %s %s: %s (tenant %s, kind %s, worker %s, attempt %d)",
        rec.id, event.cause, event.reason, rec.tenant, rec.spec.kind, worker, event.attempt,
        extra={
            "task": rec.id, "tenant": rec.tenant, "kind": rec.spec.kind, "worker": event.worker_id,
            "attempt": event.attempt, "state": STATE_NAMES[event.state], "cause": event.cause,
        } if _fields else None,  # the text format has them in its sentence
    )
