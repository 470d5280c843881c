"""The task store on PostgreSQL (psycopg 3): what the SQLite store keeps, in a server's database.

The tables, statements and group commit are the SQLite store's (`controlplane.store`; its `?`
markers become psycopg's `%s`): the writes of one loop turn are one transaction, committed by the
writer thread, and a write's future resolves once PostgreSQL has committed it, durably with the
server's default synchronous_commit=on, so accepted still means committed. executemany runs in
pipeline mode: a batch of a thousand rows costs a few round trips, not a thousand.

Several control planes may open one database; one leads (`lead`), the others wait as standbys.
The leader's write connection holds a session advisory lock, which PostgreSQL drops when the
connection ends (the process exits or is killed), so a standby takes over at once. Leadership is
also a lease (`lease_until` in the leader row, renewed every second by `renew` on a connection of
its own): a leader that is frozen or cut from the database keeps its lock but not its lease, and
a standby that finds the lease expired ends the lock holder's session and takes over. Each
takeover bumps the epoch in the leader row, and every commit checks, in its own transaction,
that the epoch is still its own (`gpucp_fence`): a control plane another one has replaced writes
nothing. The lease only decides when to take over; the epoch alone keeps a deposed leader out.

A write connection that breaks (the server restarted, the session was ended) is opened again, and
the lock taken again, at the next commit. If another control plane held the database meanwhile,
the epoch is no longer ours: this control plane's memory is stale, so it writes nothing more and
stops itself (SIGTERM, the orderly shutdown) for its supervisor to start it afresh.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import conninfo, pq

from controlplane.store import Store, _Write, check_schema_version, log

# The advisory lock of a gpucp database (any number below 2**32 shows in pg_locks as objid alone).
LOCK_KEY = 0x67707563  # "gpuc"

# Schema migrations, in order: the statements of step N bring version N-1 to N. Add a step at the
# end to change the schema (and one to controlplane.sqlitestore.MIGRATIONS); never edit one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE tasks (
    handle BIGINT PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    spec BYTEA NOT NULL,
    state INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    worker_id TEXT NOT NULL,
    gpu_indices TEXT NOT NULL,
    result BYTEA NOT NULL,
    error TEXT NOT NULL,
    errors TEXT NOT NULL,
    lost_count INTEGER NOT NULL,
    created_at_ms BIGINT NOT NULL,
    started_at_ms BIGINT NOT NULL,
    finished_at_ms BIGINT NOT NULL,
    kind TEXT NOT NULL DEFAULT ''
)""",
        "CREATE UNIQUE INDEX tasks_idempotency ON tasks (tenant, idempotency_key) WHERE idempotency_key <> ''",
        "CREATE INDEX tasks_state ON tasks (state, handle)",
        "CREATE INDEX tasks_tenant ON tasks (tenant, handle)",
        """CREATE TABLE task_events (
    handle BIGINT NOT NULL,
    seq INTEGER NOT NULL,
    at_ms BIGINT NOT NULL,
    state INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    worker_id TEXT NOT NULL,
    cause TEXT NOT NULL,
    reason TEXT NOT NULL,
    error TEXT NOT NULL,
    progress DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (handle, seq)
)""",
        # A trigger, as in SQLite, not a foreign key: an event insert then checks nothing.
        """CREATE FUNCTION task_events_follow_their_task() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM task_events WHERE handle = OLD.handle;
    RETURN NULL;
END $$""",
        """CREATE TRIGGER task_events_follow_their_task AFTER DELETE ON tasks
    FOR EACH ROW EXECUTE FUNCTION task_events_follow_their_task()""",
    ),
    (
        # One row: the epoch of the control plane that holds the database. FOR SHARE in the fence
        # makes a takeover (which updates the row) wait for a commit in flight, and every later
        # commit of the old holder see the new epoch.
        "CREATE TABLE leader (id INTEGER PRIMARY KEY CHECK (id = 1), epoch BIGINT NOT NULL, holder TEXT NOT NULL)",
        "INSERT INTO leader VALUES (1, 0, '')",
        """CREATE FUNCTION gpucp_fence(mine BIGINT) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    current BIGINT;
    who TEXT;
BEGIN
    SELECT epoch, holder INTO current, who FROM leader WHERE id = 1 FOR SHARE;
    IF current <> mine THEN
        RAISE EXCEPTION 'this control plane was replaced (epoch % is %''s, not its %)', current, who, mine
            USING ERRCODE = 'GP001';
    END IF;
END $$""",
    ),
)
MIGRATIONS += (
    (
        # The lease of the leader and where clients reach it (a standby names it when it refuses).
        "ALTER TABLE leader ADD COLUMN lease_until TIMESTAMPTZ NOT NULL DEFAULT '-infinity'",
        "ALTER TABLE leader ADD COLUMN address TEXT NOT NULL DEFAULT ''",
    ),
)
# The SQLSTATE gpucp_fence raises.
DEPOSED = "GP001"


# Seconds a lease lasts; the leader renews it every RENEW_EVERY_S. A standby takes over a lease
# past due, so a leader stalled longer than LEASE_S - RENEW_EVERY_S (GC, I/O, a loaded machine) is
# replaced: the margin is two renewals.
LEASE_S = 3.0
RENEW_EVERY_S = 1.0
# A lapsed lease's holder whose session did not end within this long after `pg_terminate_backend`.
_TERMINATE_WAIT_S = 2.0
# The renewal's connection gives up within this long, so a cut network cannot hold it past the lease.
_LEASE_TIMEOUTS: dict[str, Any] = {
    "connect_timeout": 2, "tcp_user_timeout": 2000, "options": "-c statement_timeout=2000"
}
# Any number that is not LOCK_KEY: serializes the migrations of replicas started together.
_MIGRATION_LOCK = LOCK_KEY + 1


class Taken(OSError):
    """Another control plane holds the database."""


class PostgresStore(Store):
    """PostgreSQL task store at `url` (postgresql://user:password@host:port/dbname?options)."""

    errors = (psycopg.Error,)
    lease_s = LEASE_S

    def __init__(self, url: str, *, standby: bool = False) -> None:
        self.url = url
        self._where = describe(url)
        self._holder = f"gpucp serve pid {os.getpid()} on {socket.gethostname()}"
        self._write = self._connect()
        try:
            _migrate(self._write, self._where)
            self._read = self._connect()
        except BaseException:
            self._write.close()
            raise
        self._read_lock = threading.Lock()
        # The epoch of this control plane's leadership: 0 until `lead` takes the database.
        self.epoch = 0
        self._lease: psycopg.Connection[tuple[Any, ...]] | None = None
        # time.monotonic() past which this control plane may not count on its lease: set from the
        # moment a renewal was sent, so it ends before the database's lease_until does.
        self._lease_ends = 0.0
        # Whether the last commit found the database out of reach: no placing until a renewal gets through.
        self._cut = False
        # Why this control plane may write nothing more ("" while it may).
        self._deposed = ""
        # The statements in psycopg's markers, made once each.
        self._statements: dict[str, str] = {}
        super().__init__(inline=False)
        if not standby:
            who = self.lead("")
            if who:
                self.close()
                raise Taken(f"{self._where} is in use by another control plane ({who}): stop it, or give this one "
                            "its own database")

    def lead(self, address: str) -> str:
        """Take the database if it is free, or its leader's lease has expired (ending the
        holder's session); "" once this control plane leads, else who leads, for a refusal."""
        conn = self._write
        row = conn.execute("SELECT address, holder, lease_until < now() FROM leader WHERE id = 1").fetchone()
        assert row is not None  # the migration made the row
        got = self._try_lock()
        if not got and not row[2]:
            return f"{row[0]} ({row[1]})"
        started = time.monotonic()
        if not got:
            # Its session first: a holder frozen in a commit keeps the leader row locked until it ends.
            log.warning("the lease of %s (%s) expired: ending its session and taking over", row[0], row[1])
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s"
                " AND pid <> pg_backend_pid() AND database ="
                " (SELECT oid FROM pg_database WHERE datname = current_database())",
                (LOCK_KEY,),
            )
            while not (got := self._try_lock()) and time.monotonic() - started < _TERMINATE_WAIT_S:
                time.sleep(0.05)
            if not got:
                return f"{row[0]} ({row[1]}), whose session did not end"
        # The holder's commits in flight have ended with its session or will see the new epoch.
        taken = conn.execute(
            "UPDATE leader SET epoch = epoch + 1, holder = %s, address = %s,"
            " lease_until = now() + make_interval(secs => %s) RETURNING epoch",
            (self._holder, address, LEASE_S),
        ).fetchone()
        assert taken is not None
        self.epoch = taken[0]
        self._lease_ends = started + LEASE_S
        return ""

    def _try_lock(self) -> bool:
        row = self._write.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
        return bool(row and row[0])

    def renew(self) -> None:
        """Extend the lease; deposes this control plane if another one took over. Raises
        psycopg.Error if the database cannot be reached (the lease then runs out)."""
        sent = time.monotonic()
        if self._lease is None or self._lease.closed:
            self._lease = psycopg.connect(self.url, autocommit=True, application_name=self._holder, **_LEASE_TIMEOUTS)
        row = self._lease.execute(
            "UPDATE leader SET lease_until = now() + make_interval(secs => %s) WHERE epoch = %s RETURNING epoch",
            (LEASE_S, self.epoch),
        ).fetchone()
        if row is not None:
            self._lease_ends = sent + LEASE_S
            self._cut = False
            return
        found = self._lease.execute("SELECT epoch, holder FROM leader WHERE id = 1").fetchone()
        assert found is not None
        self._lease_ends = 0.0
        self._depose(f"this control plane was replaced (epoch {found[0]} is {found[1]}'s, not its {self.epoch})")

    def start_renewing(self) -> None:
        """Renew the lease every RENEW_EVERY_S from now until the store closes."""
        thread = threading.Thread(target=self._renew_every, name="gpucp-lease", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _renew_every(self) -> None:
        failing = False
        while not self._stopping.wait(RENEW_EVERY_S) and not self._deposed:
            try:
                self.renew()
            except psycopg.Error as exc:
                if not failing:  # once per outage: the lease's lapse is logged by who watches it
                    log.error("cannot renew the lease on %s: %s", self._where, self._reason(exc))
                failing = True
                continue
            if failing:
                log.warning("renewing the lease on %s works again", self._where)
                failing = False

    def leading(self) -> bool:
        return not self._deposed and not self._cut and time.monotonic() < self._lease_ends

    def lease_overdue_s(self) -> float:
        """Seconds since this control plane's lease ran out (0 while it holds one)."""
        return max(0.0, time.monotonic() - self._lease_ends)

    def depose(self, why: str) -> None:
        """Write nothing more and stop (see `_depose`), unless that is already under way."""
        if not self._deposed:
            self._depose(why)

    @property
    def where(self) -> str:
        return self._where

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        try:
            return psycopg.connect(self.url, autocommit=True, application_name=self._holder)
        except psycopg.OperationalError as exc:
            raise OSError(f"cannot connect to {self._where}: {exc}".strip()) from None

    def _claim(self) -> psycopg.Connection[tuple[Any, ...]]:
        """A new write connection holding the database's advisory lock again, after the last one
        broke; Taken if another control plane took it meanwhile."""
        conn = self._connect()
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
        if row is not None and row[0]:
            return conn
        holder = conn.execute(
            "SELECT a.application_name, a.client_addr FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.objid = %s AND l.database ="
            " (SELECT oid FROM pg_database WHERE datname = current_database())",
            (LOCK_KEY,),
        ).fetchone()
        conn.close()
        who = f"{holder[0] or 'a client'} from {holder[1] or 'a local socket'}" if holder else "another client"
        raise Taken(
            f"{self._where} is in use by another control plane ({who}): stop it, or give this one its own database"
        )

    def _sql(self, sql: str) -> str:
        found = self._statements.get(sql)
        if found is None:
            found = self._statements[sql] = sql.replace("?", "%s")  # our statements hold no other '?' or '%'
        return found

    def _transact(self, batch: list[_Write]) -> None:
        for attempt in (1, 2):
            self._connected()
            sent = False
            try:
                with self._write.transaction(), self._write.cursor() as cur:
                    cur.execute("SELECT gpucp_fence(%s)", (self.epoch,))
                    for sql, rows, _ in batch:
                        if rows:
                            cur.executemany(self._sql(sql), rows)
                    sent = True
                return
            except psycopg.Error as exc:
                if exc.sqlstate == DEPOSED:
                    self._depose(self._reason(exc))
                self._drop_if_stuck()
                # A session lost before COMMIT was sent committed nothing: the batch is made again
                # on a new one. Lost during COMMIT, it may or may not have: refused, as any error.
                if sent or attempt == 2 or not self._write.closed:
                    self._cut = self._write.closed
                    raise
                log.warning("lost the session to %s before a commit (%s): reconnecting", self._where, exc)

    def _drop_if_stuck(self) -> None:
        """Close the write session when a failed transaction left it unusable: cut by the server
        in the middle of a pipeline, libpq can keep it open but busy, its rollback failing, so that
        every later commit would fail on it too. Closed, the next commit makes a new one (with the
        lock), as for a session the server closed."""
        conn = self._write
        if not conn.closed and (
            conn.pgconn.pipeline_status != pq.PipelineStatus.OFF
            or conn.info.transaction_status != pq.TransactionStatus.IDLE
        ):
            log.warning("the session to %s is unusable after a failed commit: closing it", self._where)
            conn.close()

    def _connected(self) -> None:
        """The write connection, made again (with the lock) if it broke; raises if it cannot be."""
        if self._deposed:
            raise psycopg.OperationalError(self._deposed)
        if not self.epoch:
            raise psycopg.OperationalError("this control plane is a standby: it writes nothing until it leads")
        if not self._write.closed:
            return
        try:
            self._write = self._claim()
        except Taken as exc:
            self._depose(str(exc))
            raise psycopg.OperationalError(str(exc)) from None
        except OSError as exc:  # the database cannot be reached now: the next commit tries again
            self._cut = True
            raise psycopg.OperationalError(str(exc)) from None
        log.warning("reconnected to %s", self._where)

    def _depose(self, why: str) -> None:
        """Another control plane holds the database: write nothing more, and stop this process (its
        tasks, queue and workers in memory are stale; a fresh start reads them back)."""
        self._deposed = why
        log.critical("%s: %s; stopping", self._where, why)
        os.kill(os.getpid(), signal.SIGTERM)

    def _reason(self, exc: Exception) -> str:
        # The primary message alone: the rest (CONTEXT, the statement) is for the server's log.
        diag = exc.diag.message_primary if isinstance(exc, psycopg.Error) else None
        return diag or str(exc)

    def _query(self, sql: str, args: Sequence[object]) -> list[tuple[Any, ...]]:
        with self._read_lock:
            if self._read.closed:
                self._read = self._connect()
            try:
                return self._read.execute(self._sql(sql), args).fetchall()
            except psycopg.OperationalError:
                if not self._read.closed:
                    raise
            # The session was ended (the server restarted): a read is safe to make again on a new one.
            self._read = self._connect()
            return self._read.execute(self._sql(sql), args).fetchall()

    def _close_connections(self) -> None:
        if self._lease is not None:
            self._lease.close()
        if not self._write.closed and not self._deposed:
            # The session's end would release the lock too, but only once its server process has
            # seen the socket close: a control plane started right after this one could miss it.
            with contextlib.suppress(psycopg.Error):
                self._write.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
        self._write.close()
        self._read.close()


def describe(url: str) -> str:
    """The database of `url` without its password, for logs and errors."""
    try:
        parts = conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise ValueError(f"--db {url.split('@')[-1]!r} is not a PostgreSQL URL psycopg can read: {exc}") from None
    host = parts.get("host") or "the local socket"
    port = f":{parts['port']}" if parts.get("port") else ""
    user = f"{parts['user']}@" if parts.get("user") else ""
    return f"postgresql://{user}{host}{port}/{parts.get('dbname') or ''}"


def _migrate(conn: psycopg.Connection[tuple[Any, ...]], where: str) -> None:
    """Bring the schema to the newest version, all steps in one transaction (PostgreSQL's DDL is
    transactional: a crash leaves the old version), one replica at a time."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        found = int(row[0]) if row else 0
        check_schema_version(found, len(MIGRATIONS), where)
        for version, statements in enumerate(MIGRATIONS[found:], found + 1):
            if row is not None:  # a new database is made, not migrated: nothing to tell
                log.info("migrating %s to schema version %d", where, version)
            for statement in statements:
                conn.execute(statement)
        if row is None:
            conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (len(MIGRATIONS),))
        else:
            conn.execute("UPDATE schema_version SET version = %s", (len(MIGRATIONS),))
