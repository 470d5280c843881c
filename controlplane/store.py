"""Durable task storage with group commit: one interface (`Store`), two databases.

`open_store` picks by the --db value: a `postgresql://` URL opens `controlplane.pgstore`
(PostgreSQL, psycopg 3), anything else is a SQLite file (`controlplane.sqlitestore`, WAL), the
embedded default. This module holds what both share: the statements, group commit, pages, events.
Both keep the same semantics: a write's future resolves once it is committed; the writes of one
loop turn are committed together, so a burst of submissions costs one commit, not one per task.
Both read and write the same tables through the same statements (written with `?` markers), and
both keep their schema's version in a schema_version table, applying their `MIGRATIONS` in order.

SQLite: with synchronous=NORMAL a commit only appends to the write-ahead log (no fsync): it takes
tens of microseconds and runs right on the loop, which spares two thread hops per commit on every
task's path. With synchronous=FULL each commit waits for an fsync, so a writer thread makes them
while the loop goes on (PostgreSQL's commits always go through that thread). Checkpoints (which
do fsync) run on a background thread either way. Reads use their own connection (WAL lets them
run beside the writer) and are made off the event loop. Finished tasks are deleted once they are
older than the control plane keeps them (`expired`, `delete`).

Each task's event history lives beside it in task_events, written in the same group commits as
the task (`add_event`, `trim_event`) and deleted with it by a trigger, in the same statement.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, TypeVar

from controlplane.record import TaskRecord, record_from_row
from gpucp import hops
from gpucp.limits import MAX_TASK_CONTENT_BYTES
from gpucp.states import TERMINAL_STATES
from gpucp.v1 import common_pb2

log = logging.getLogger("gpucp.store")

T = TypeVar("T")

COLUMNS = (
    "handle, id, tenant, idempotency_key, spec, state, attempt, worker_id, gpu_indices, result, "
    "error, errors, lost_count, created_at_ms, started_at_ms, finished_at_ms"
)
# A list page reads at most this many bytes of specs and results, so a page with every payload
# and result (view FULL) fits in one message, and a page without them is read in bounded time.
PAGE_CONTENT_BYTES = MAX_TASK_CONTENT_BYTES

# The states before those (PENDING, ASSIGNED, RUNNING): what start-up reloads; and as SQL.
_UNFINISHED_STATES = [s for s in common_pb2.TaskState.values() if s not in TERMINAL_STATES]
_UNFINISHED = ",".join(map(str, _UNFINISHED_STATES))
# Rows one read of `load_unfinished` takes.
_LOAD_PAGE = 10_000


class StoreError(OSError):
    """The database refused a write; nothing in the failed batch was stored. An OSError: one that
    ends `gpucp serve` (its last flush, on a database that is gone) is told as a sentence."""


_INSERT = (
    "INSERT INTO tasks (handle, id, tenant, idempotency_key, spec, created_at_ms, state, attempt,"
    " worker_id, gpu_indices, result, error, errors, lost_count, started_at_ms, finished_at_ms, kind)"
    f" VALUES ({', '.join('?' * 17)})"
)
_UPDATE = (
    "UPDATE tasks SET state = ?, attempt = ?, worker_id = ?, gpu_indices = ?, result = ?, error = ?,"
    " errors = ?, lost_count = ?, started_at_ms = ?, finished_at_ms = ? WHERE handle = ?"
)

_DELETE = "DELETE FROM tasks WHERE handle = ?"
_EVENT_COLUMNS = "seq, at_ms, state, attempt, worker_id, cause, reason, error, progress"
_INSERT_EVENT = f"INSERT INTO task_events (handle, {_EVENT_COLUMNS}) VALUES ({', '.join('?' * 10)})"
_TRIM_EVENT = "DELETE FROM task_events WHERE handle = ? AND seq = ?"
# Handles one statement of `_payloads` asks for (SQLite allows 32,766 parameters).
_PAYLOADS_READ = 500
# Payloads that one call of `payloads` is asked for add up to this many bytes at most (or are one
# task's): thousands of large payloads to dispatch or show are not all held in memory at once.
READ_BYTES = 64 * 1024 * 1024
# Rows one read of `_expired` looks at.
_EXPIRED_PAGE = 1000


def next_read(queued: collections.deque[T], stored_bytes: Callable[[T], int]) -> list[T]:
    """Take the first of `queued` (not empty) whose payloads left to the store add up to READ_BYTES
    at most (at least one): what one call of `Store.payloads` is asked for."""
    run = [queued.popleft()]
    size = stored_bytes(run[0])
    while queued and size + stored_bytes(queued[0]) <= READ_BYTES:
        size += stored_bytes(queued[0])
        run.append(queued.popleft())
    return run


# (statement, its rows, the future resolved at the commit that contains them)
_Write = tuple[str, list[tuple[object, ...]], "asyncio.Future[None]"]


class Store(ABC):
    """The task store: group commit, the statements and the reads that both databases share.

    A subclass opens its connections, then calls `__init__` here (which starts the threads); it
    makes transactions (`_transact`) and reads (`_query`), and says which of its driver's
    exceptions mean the database refused something (`errors`).
    """

    errors: ClassVar[tuple[type[Exception], ...]]

    def __init__(self, *, inline: bool, background: Sequence[Callable[[], None]] = ()) -> None:
        # Writes made during one turn of the event loop, committed together at its end.
        self._turn: list[_Write] = []
        # Events of this turn, written after its other writes in the same commit.
        self._events: list[tuple[object, ...]] = []
        self._trims: list[tuple[object, ...]] = []
        self._pending: list[_Write] = []
        self._cond = threading.Condition()
        self._closed = False
        self._stopping = threading.Event()
        self.commits = 0
        self._inline = inline
        self._threads = [threading.Thread(target=run, name="gpucp-store-bg", daemon=True) for run in background]
        if not inline:
            self._threads.append(threading.Thread(target=self._writer, name="gpucp-store", daemon=True))
        for thread in self._threads:
            thread.start()

    @property
    @abstractmethod
    def where(self) -> str:
        """Where the data is, fit for a log line (no password)."""

    @abstractmethod
    def _transact(self, batch: list[_Write]) -> None:
        """Run every statement of `batch` in one transaction and commit it; on an error of
        `errors` nothing of it is stored."""

    @abstractmethod
    def _query(self, sql: str, args: Sequence[object]) -> list[tuple[Any, ...]]:
        """Rows of one read, from a connection of its own (called off the event loop). Any: a
        value's type is its column's in SCHEMA, which the type checker cannot read."""

    def leading(self) -> bool:
        """Whether this control plane may place tasks now: always on SQLite (its lock file is held
        for the process's life); on PostgreSQL while it holds an unexpired lease."""
        return True

    def _reason(self, exc: Exception) -> str:
        """What the database said, in a sentence."""
        return str(exc)

    @abstractmethod
    def _close_connections(self) -> None:
        """Close the connections once nothing is left to commit."""

    # -- writes -----------------------------------------------------------------------------
    #
    # Writes are called from the event loop. Those of one loop turn are collected and committed
    # together at the end of the turn, in the order they were made, on the loop (SQLite, NORMAL) or
    # by the writer thread (FULL, PostgreSQL), which then resolves their futures with one call into
    # the loop.

    def _add(self, write: _Write) -> None:
        if self._closed:
            raise StoreError("the store is closed")
        if not self._turn and not self._events:
            asyncio.get_running_loop().call_soon(self._end_turn)
        self._turn.append(write)

    def add_event(self, handle: int, event: Sequence[object]) -> None:
        """Store a task's event with the writes of this loop turn (nobody waits for it)."""
        if self._closed:
            return  # shutting down: the history of the last moments is not worth an error
        if not self._turn and not self._events:
            asyncio.get_running_loop().call_soon(self._end_turn)
        self._events.append((handle, *event))

    def trim_event(self, handle: int, seq: int) -> None:
        """Delete a task's event `seq`, with the event that replaces it (always after an add_event)."""
        self._trims.append((handle, seq))

    def _end_turn(self) -> None:
        hops.mark("s.commit")
        turn, self._turn = self._turn, []
        if self._events:
            fut = asyncio.get_running_loop().create_future()
            fut.add_done_callback(_log_lost_events)
            turn.append((_INSERT_EVENT, self._events, fut))
            if self._trims:
                turn.append((_TRIM_EVENT, self._trims, fut))
            self._events, self._trims = [], []
        if self._inline:
            _settle(self._commit(turn))
            return
        with self._cond:
            self._pending.extend(turn)
            self._cond.notify()

    async def insert(self, records: Iterable[TaskRecord]) -> None:
        """Store new tasks; returns once they are committed. A refused insert fails alone."""
        fut = asyncio.get_running_loop().create_future()
        self._add((_INSERT, [r.row() for r in records], fut))
        await fut

    def save(self, records: Iterable[TaskRecord]) -> asyncio.Future[None]:
        """Write the current state of tasks; the returned future resolves at commit (a caller
        that need not wait for it may drop it).

        Saves of one loop turn share their future: updates of existing rows fail together or not
        at all (the database is unwritable), so one answer serves them all.
        """
        rows = [r.state_row() for r in records]
        if self._turn and self._turn[-1][0] is _UPDATE:
            self._turn[-1][1].extend(rows)
            return self._turn[-1][2]
        fut = asyncio.get_running_loop().create_future()
        self._add((_UPDATE, rows, fut))
        return fut

    def delete(self, handles: Iterable[int]) -> asyncio.Future[None]:
        """Delete tasks; the returned future resolves at commit."""
        fut = asyncio.get_running_loop().create_future()
        self._add((_DELETE, [(h,) for h in handles], fut))
        return fut

    def _writer(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                batch, self._pending = self._pending, []
                closing = self._closed
            if batch:
                settled = self._commit(batch)
                loop = settled[0][0].get_loop() if settled else None
                if loop is not None and not loop.is_closed():
                    loop.call_soon_threadsafe(_settle, settled)
            if closing and not batch:
                return

    def _commit(self, batch: list[_Write]) -> list[tuple[asyncio.Future[None], str | None]]:
        """Commit `batch` in one transaction; returns each future with why it failed (None: stored)."""
        error: str | None = None
        try:
            self._transact(batch)
            self.commits += 1
        except self.errors as exc:
            error = self._reason(exc)
        if error is not None and len(batch) > 1:
            # One bad write must not fail the others that shared its commit: retry one by one.
            return [item for write in batch for item in self._commit([write])]
        return [(fut, error) for _, _, fut in batch]

    async def flush(self) -> None:
        """Wait until everything written so far is committed."""
        fut = asyncio.get_running_loop().create_future()
        self._add(("", [], fut))  # no rows: a marker that commits with the rest
        await fut

    def close(self) -> None:
        """Commit what is queued, then stop the threads and close the connections."""
        if self._turn or self._events:
            self._end_turn()
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._stopping.set()
        for thread in self._threads:
            thread.join()
        self._close_connections()

    # -- reads --------------------------------------------------------------------------------

    async def query(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        return await asyncio.to_thread(self._query, sql, args)

    async def get(self, task_id: str) -> TaskRecord | None:
        rows = await self.query(f"SELECT {COLUMNS} FROM tasks WHERE id = ?", (task_id,))
        return record_from_row(rows[0]) if rows else None

    async def payloads(self, handles: Sequence[int]) -> dict[int, bytes]:
        """The payloads of the specs of tasks `handles`, by handle (a task not stored is left
        out): what `TaskRecord.drop_payload` left here. Read and parsed off the event loop.
        """
        return await asyncio.to_thread(self._payloads, list(handles))

    def _payloads(self, handles: list[int]) -> dict[int, bytes]:
        found: dict[int, bytes] = {}
        spec = common_pb2.TaskSpec()
        for start in range(0, len(handles), _PAYLOADS_READ):
            chunk = handles[start:start + _PAYLOADS_READ]
            rows = self._query(f"SELECT handle, spec FROM tasks WHERE handle IN ({', '.join('?' * len(chunk))})", chunk)
            for handle, blob in rows:
                spec.ParseFromString(blob)
                found[int(handle)] = spec.payload
        return found

    async def find_idempotent(self, tenant: str, key: str) -> str | None:
        rows = await self.query(
            "SELECT id FROM tasks WHERE tenant = ? AND idempotency_key = ?", (tenant, key)
        )
        return str(rows[0][0]) if rows else None

    async def page(
        self, states: Sequence[int], tenants: Sequence[str], kind: str, after_handle: int, limit: int
    ) -> tuple[list[TaskRecord], bool]:
        """Tasks in `states` and `tenants` (all if empty) after `after_handle` in submission order, up to `limit` and
        PAGE_CONTENT_BYTES of specs and results (always at least one); and whether more may follow.

        Read and parsed off the event loop: a page of large payloads takes a while to read.
        """
        where = ["handle > ?"]
        args: list[object] = [after_handle]
        if states:
            where.append(f"state IN ({', '.join('?' * len(states))})")
            args.extend(states)
        if tenants:
            where.append(f"tenant IN ({', '.join('?' * len(tenants))})")
            args.extend(tenants)
        if kind:
            where.append("kind = ?")
            args.append(kind)
        return await asyncio.to_thread(self._page, " AND ".join(where), args, limit)

    def _page(self, where: str, args: list[object], limit: int) -> tuple[list[TaskRecord], bool]:
        sizes = self._query(
            f"SELECT handle, length(spec) + length(result) FROM tasks WHERE {where} ORDER BY handle LIMIT ?",
            (*args, limit),
        )
        taken, total = 0, 0
        for _, size in sizes:
            total += int(size)
            if taken and total > PAGE_CONTENT_BYTES:
                break
            taken += 1
        if not taken:
            return [], False
        last = sizes[taken - 1][0]
        rows = self._query(
            f"SELECT {COLUMNS} FROM tasks WHERE {where} AND handle <= ? ORDER BY handle", (*args, last)
        )
        return [record_from_row(r) for r in rows], taken < len(sizes) or len(sizes) == limit

    async def expired(self, cutoff_ms: int, limit: int) -> list[tuple[int, str, str, str, common_pb2.TaskState]]:
        """Up to `limit` finished tasks that ended before `cutoff_ms`, as (handle, id, tenant,
        idempotency_key, state).

        Each terminal state's tasks are read in submission order through the state index, up to
        the first one submitted at or after the cutoff: none after it can have ended before. So a
        sweep reads what it deletes and the few older tasks that ended late, not the history.
        """
        return await asyncio.to_thread(self._expired, cutoff_ms, limit)

    def _expired(self, cutoff_ms: int, limit: int) -> list[tuple[int, str, str, str, common_pb2.TaskState]]:
        found: list[tuple[int, str, str, str, common_pb2.TaskState]] = []
        for state in sorted(TERMINAL_STATES):
            after = 0
            while len(found) < limit:
                rows = self._query(
                    "SELECT handle, id, tenant, idempotency_key, created_at_ms, finished_at_ms FROM tasks"
                    " WHERE state = ? AND handle > ? ORDER BY handle LIMIT ?",
                    (state, after, _EXPIRED_PAGE),
                )
                young = False
                for handle, task_id, tenant, key, created_at_ms, finished_at_ms in rows:
                    if created_at_ms >= cutoff_ms:
                        young = True
                        break
                    if finished_at_ms < cutoff_ms:
                        found.append((handle, task_id, tenant, key, state))
                        if len(found) == limit:
                            break
                if young or len(rows) < _EXPIRED_PAGE:
                    break
                after = rows[-1][0]
        return found

    async def events(self, handle: int) -> list[tuple[Any, ...]]:
        """A task's stored events, oldest first, as (seq, at_ms, state, attempt, worker_id, cause, reason,
        error, progress)."""
        return await self.query(f"SELECT {_EVENT_COLUMNS} FROM task_events WHERE handle = ? ORDER BY seq", (handle,))

    def event_seqs(self) -> dict[int, tuple[int, int]]:
        """The seqs of the first and the latest stored event of every unfinished task that has one
        (used once at start-up)."""
        rows = self._query(
            "SELECT handle, (SELECT MIN(seq) FROM task_events e WHERE e.handle = t.handle),"
            " (SELECT MAX(seq) FROM task_events e WHERE e.handle = t.handle) FROM tasks t"
            f" WHERE state IN ({_UNFINISHED})",
            (),
        )
        return {int(h): (int(first), int(last)) for h, first, last in rows if first is not None}

    def load_unfinished(self) -> list[TaskRecord]:
        """Every task not yet terminal, oldest first (used once at start-up), their large payloads
        left here (`TaskRecord.drop_payload`).

        Read a page at a time, each page's payloads dropped before the next is read, so a restart
        does not hold every pending payload at once. Each state's tasks are paged through the
        state index: one query for all of them would sort them all again for every page.
        """
        recs: list[TaskRecord] = []
        for state in _UNFINISHED_STATES:
            after = 0
            while True:
                rows = self._query(
                    f"SELECT {COLUMNS} FROM tasks WHERE state = ? AND handle > ? ORDER BY handle LIMIT ?",
                    (state, after, _LOAD_PAGE),
                )
                for row in rows:
                    rec = record_from_row(row)
                    rec.drop_payload()
                    recs.append(rec)
                if len(rows) < _LOAD_PAGE:
                    break
                after = rows[-1][0]
        recs.sort(key=lambda rec: rec.handle)
        return recs

    def count_by_state(self) -> dict[int, int]:
        rows = self._query("SELECT state, COUNT(*) FROM tasks GROUP BY state", ())
        return {int(s): int(n) for s, n in rows}

    def max_handle(self) -> int:
        rows = self._query("SELECT COALESCE(MAX(handle), 0) FROM tasks", ())
        return int(rows[0][0])


def open_store(db: str, *, synchronous: str = "NORMAL", standby: bool = False) -> Store:
    """The store --db names: a PostgreSQL URL (postgresql://, postgres://) or a SQLite file path.
    On PostgreSQL, `standby` opens it without leading (`PostgresStore.lead` takes it later);
    otherwise it leads at once or is refused, as a SQLite file held by another process is."""
    if is_postgres_url(db):
        try:  # psycopg is needed only by those who use it
            from controlplane.pgstore import PostgresStore
        except ImportError as exc:
            raise ValueError(f"--db postgresql:// needs psycopg ({exc}): pip install 'gpucp[postgres]'") from None
        return PostgresStore(db, standby=standby)
    from controlplane.sqlitestore import SqliteStore  # it builds on this module

    return SqliteStore(db, synchronous=synchronous)


def is_postgres_url(db: str) -> bool:
    return db.startswith(("postgresql://", "postgres://"))


def check_schema_version(found: int, known: int, where: str) -> None:
    """Refuse a database whose schema a newer gpucp made: this one would misread it."""
    if found > known:
        raise RuntimeError(
            f"{where} has schema version {found}, newer than this gpucp knows ({known}): "
            "run a gpucp at least as new as the one that last opened it"
        )


def _log_lost_events(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("task events could not be stored (their tasks are): %s", fut.exception())


def _settle(items: list[tuple[asyncio.Future[None], str | None]]) -> None:
    for fut, error in items:
        if fut.done():
            continue
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(StoreError(f"the database refused the write: {error}"))
