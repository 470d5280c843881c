"""The SQLite task store, the embedded default (see controlplane.store for what every store shares).

A write-ahead log, one file per control plane (held by an flock on `<path>.lock`), the file and
its log readable by this user only; migrations run in one transaction when the file is opened.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import IO, Any

from controlplane.store import Store, _Write, check_schema_version, log
from gpucp.v1 import common_pb2

# Seconds between checkpoints of the write-ahead log.
CHECKPOINT_EVERY_S = 1.0


# The tables as version 1 made them. Each statement runs on its own (one transaction holds them
# all); IF NOT EXISTS because version 1 also adopts databases made before versions were kept.
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS tasks (
    handle INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    spec BLOB NOT NULL,
    state INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    worker_id TEXT NOT NULL,
    gpu_indices TEXT NOT NULL,
    result BLOB NOT NULL,
    error TEXT NOT NULL,
    errors TEXT NOT NULL,
    lost_count INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    started_at_ms INTEGER NOT NULL,
    finished_at_ms INTEGER NOT NULL,
    kind TEXT NOT NULL DEFAULT ''
)""",
    "CREATE UNIQUE INDEX IF NOT EXISTS tasks_idempotency ON tasks (tenant, idempotency_key)"
    " WHERE idempotency_key != ''",
    "CREATE INDEX IF NOT EXISTS tasks_state ON tasks (state, handle)",
    "CREATE INDEX IF NOT EXISTS tasks_tenant ON tasks (tenant, handle)",
    """CREATE TABLE IF NOT EXISTS task_events (
    handle INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    state INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    worker_id TEXT NOT NULL,
    cause TEXT NOT NULL,
    reason TEXT NOT NULL,
    error TEXT NOT NULL,
    progress REAL NOT NULL,
    PRIMARY KEY (handle, seq)
) WITHOUT ROWID""",
    """CREATE TRIGGER IF NOT EXISTS task_events_follow_their_task AFTER DELETE ON tasks
BEGIN
    DELETE FROM task_events WHERE handle = OLD.handle;
END""",
)


class SqliteStore(Store):
    """SQLite task store. `path` is a file path; ":memory:" is refused (nothing would be durable)."""

    errors = (sqlite3.Error,)

    def __init__(self, path: str, *, synchronous: str = "NORMAL") -> None:
        if path in ("", ":memory:"):
            raise ValueError("the store needs a file path: an in-memory database keeps nothing")
        if synchronous.upper() not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be NORMAL or FULL, not {synchronous!r}")
        self.path = path
        self._lock_file = _claim(path)
        # SQLite gives the -wal and -shm files the database file's mode: payloads and results are
        # for the control plane's user only.
        try:
            os.close(_private(path))
            self._write = self._connect(synchronous)
        except BaseException:
            self._lock_file.close()
            raise
        try:
            _migrate(self._write, path)
        except BaseException:
            self._write.close()
            self._lock_file.close()
            raise
        # Checkpoints are the background thread's: run inside a commit they would stall it.
        self._write.execute("PRAGMA wal_autocheckpoint=0")
        self._read = self._connect(synchronous)
        self._read_lock = threading.Lock()
        super().__init__(inline=synchronous.upper() == "NORMAL", background=[self._checkpointer])

    @property
    def where(self) -> str:
        return self.path

    def _connect(self, synchronous: str) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a crash of this process (the failure we are built for);
        # FULL also survives power loss at the price of an fsync per group commit.
        conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
        conn.execute("PRAGMA busy_timeout=5000")
        return conn

    def _checkpointer(self) -> None:
        """Copy the log into the database now and then, so it stays small and reads stay fast."""
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            while not self._stopping.wait(CHECKPOINT_EVERY_S):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as exc:
                    log.warning("checkpoint of %s failed (retried later): %s", self.path, exc)
        finally:
            conn.close()

    def _transact(self, batch: list[_Write]) -> None:
        try:
            self._write.execute("BEGIN IMMEDIATE")
            for sql, rows, _ in batch:
                if rows:
                    self._write.executemany(sql, rows)
            self._write.execute("COMMIT")
        except sqlite3.Error:
            if self._write.in_transaction:
                self._write.execute("ROLLBACK")
            raise

    def _query(self, sql: str, args: Sequence[object]) -> list[tuple[Any, ...]]:
        with self._read_lock:
            return self._read.execute(sql, args).fetchall()

    def _close_connections(self) -> None:
        self._write.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._write.close()
        self._read.close()
        self._lock_file.close()


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    """Bring the schema to the newest version, all steps in one transaction (a crash leaves the old one)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        # A file with tasks but no versions was made before versions were kept: it is migrated.
        existing = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'tasks'").fetchone() is not None
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        found = int(row[0]) if row else 0
        check_schema_version(found, len(MIGRATIONS), path)
        for version, step in enumerate(MIGRATIONS[found:], found + 1):
            if existing:  # a new database is made, not migrated: nothing to tell
                log.info("migrating %s to schema version %d", path, version)
            step(conn)
        if row is None:
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (len(MIGRATIONS),))
        else:
            conn.execute("UPDATE schema_version SET version = ?", (len(MIGRATIONS),))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _version_1(conn: sqlite3.Connection) -> None:
    """The tables, indexes and trigger; databases made before versions were kept get what they lack."""
    for statement in SCHEMA:
        conn.execute(statement)
    _add_kind_column(conn)


def _add_kind_column(conn: sqlite3.Connection) -> None:
    """Databases made before tasks could be listed by kind get the column, filled from the specs."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(tasks)")}
    if "kind" in columns:
        return
    log.info("adding the kind column to the tasks of %s (once)", conn)
    conn.execute("ALTER TABLE tasks ADD COLUMN kind TEXT NOT NULL DEFAULT ''")
    spec = common_pb2.TaskSpec()
    for handle, blob in conn.execute("SELECT handle, spec FROM tasks").fetchall():
        spec.ParseFromString(blob)
        conn.execute("UPDATE tasks SET kind = ? WHERE handle = ?", (spec.kind, handle))


# Schema migrations of the SQLite store, in order: step N brings version N-1 to N. Add a step at
# the end to change the schema (and one to controlplane.pgstore.MIGRATIONS); never edit one.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_version_1,)


def _private(path: str) -> int:
    """Open (creating) `path` readable and writable by this user only; an existing file is narrowed."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def _claim(path: str) -> IO[str]:
    """Hold `<path>.lock` while the store is open.

    Two control planes on one SQLite file would both place the same tasks (each keeps its queue
    in memory), so the second is refused. The lock is an flock: the kernel drops it when the
    holder exits, even by SIGKILL, so a restart never finds a stale one.
    """
    f = os.fdopen(_private(f"{path}.lock"), "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "a process"
        f.close()
        raise OSError(
            f"{path} is in use by another control plane ({holder}): stop it, or give this one its own --db"
        ) from None
    f.truncate(0)
    f.write(f"pid {os.getpid()}")
    f.flush()
    return f
