"""The control plane: a small facade over the task book, the fleet, dispatch and the read views.

All of it runs on the server's one event loop. The Rust core decides (which task goes where, which
worker or task is overdue); the rooms behind this facade carry the decisions out:
- `book`: every task and where it is, changed only by `TaskBook.move`;
- `lifecycle`: what an event (an update, a loss, a timeout, a cancel) does to a task;
- `fleet`: agent connections, heartbeats, loss, drain and quarantine;
- `dispatch`: the pump that places, commits and sends, and the core's deadlines;
- `notify`: watchers and waiters; `views`: what the services show.
This module admits tasks, answers queries, and starts and stops the rest.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
from collections.abc import Sequence

from controlplane.auth import printable
from controlplane.book import ASSIGNED, CANCELLED, PENDING, RUNNING, Cause, Hold, TaskBook
from controlplane.config import ServerConfig
from controlplane.core import Core
from controlplane.dispatch import Dispatcher
from controlplane.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from controlplane.fleet import Fleet, WorkerConn
from controlplane.history import SUBMITTED, History
from controlplane.lifecycle import Lifecycle
from controlplane.logs import log_event
from controlplane.notify import Notifier, Watcher, wall_ms
from controlplane.rates import SubmitRates
from controlplane.record import TaskRecord, new_task_id
from controlplane.store import Store, StoreError
from controlplane.validation import validate_spec
from controlplane.views import Views
from gpucp import tracing
from gpucp.limits import MAX_TASK_CONTENT_BYTES
from gpucp.v1 import common_pb2, scheduler_pb2, workers_pb2

log = logging.getLogger("gpucp.controlplane")

MAX_BATCH = 10_000
MAX_PAGE = 1000
# A page token is the handle of a page's last task: decimal digits that fit SQLite's integers.
_PAGE_TOKEN = re.compile(r"[0-9]{1,19}")
SWEEP_BATCH = 500  # finished tasks deleted per commit: each batch holds the loop a few ms


def parse_page_token(token: str) -> int:
    """The handle a page token continues after (0 for the first page); InvalidArgument if it is not one."""
    if not token:
        return 0
    if not _PAGE_TOKEN.fullmatch(token) or int(token) >= 2**63:
        raise InvalidArgument(
            f"page_token {token[:40]!r} is not one this server issued: pass the next_page_token of the "
            "previous ListTasks response unchanged, or none for the first page"
        )
    return int(token)


class ControlPlane:
    def __init__(self, config: ServerConfig, store: Store) -> None:
        self.config = config
        self._max_pending = dict(config.tenant_max_pending)
        self._max_pending_bytes = dict(config.tenant_max_pending_bytes)
        self._rates = SubmitRates(dict(config.tenant_submit_rates))
        self.store = store
        self.book = TaskBook()
        self.notifier = Notifier(config.max_watchers)
        self.book.observe(self.notifier.announce)
        self.history = History(self.book, store)
        self.book.journal(log_event)
        self.core = Core(config, lambda handle: self.fleet.name(handle))
        self.dispatcher = Dispatcher(config, store, self.book, self.core)
        self.fleet = Fleet(config, self.core, self.dispatcher.wake, self.dispatcher.arm_deadline)
        self.lifecycle = Lifecycle(config, store, self.book, self.core, self.fleet, self.dispatcher.wake)
        self.fleet.tasks = self.dispatcher.tasks = self.lifecycle
        self.lifecycle.prefetch = self.dispatcher.prefetch
        if self.dispatcher.prefetch is not None:
            self.dispatcher.prefetch.fleet = self.fleet
        self.dispatcher.fleet = self.fleet
        self.views = Views(self.book, self.core, self.fleet, self.lifecycle, self.dispatcher)
        self._next_handle = 1
        self._sweep_task: asyncio.Task[None] | None = None

    @property
    def workers(self) -> dict[str, WorkerConn]:
        return self.fleet.workers

    @property
    def tasks(self) -> dict[str, TaskRecord]:
        return self.book.tasks

    @property
    def accepting(self) -> bool:
        """False once shutdown began: no new tasks or agents, and lost workers keep their tasks."""
        return self.fleet.accepting

    @accepting.setter
    def accepting(self, value: bool) -> None:
        self.fleet.accepting = value

    # -- life cycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Reload every unfinished task from the store and start dispatching."""
        self._next_handle = self.store.max_handle() + 1
        self.book.counts.update(self.store.count_by_state())
        pending, reloaded = [], []
        for rec in self.store.load_unfinished():
            entry = self.book.add(rec, Hold.QUEUED if rec.state == PENDING else Hold.ORPHANED, counted=False)
            if entry is not None:
                reloaded.append(entry)
                if entry.hold is Hold.QUEUED:
                    pending.append(entry)
        self.history.resume(reloaded)
        self.lifecycle.queue(pending)
        if self.book.orphans:
            log.info(
                "%d tasks were running before the restart; waiting %.1f s for their agents",
                len(self.book.orphans),
                self.config.heartbeat_timeout_s,
            )
            asyncio.get_running_loop().call_later(
                self.config.heartbeat_timeout_s,
                lambda: self.lifecycle.requeue_orphans(list(self.book.orphans.values())),
            )
        self.dispatcher.start()
        if self.config.keep_finished_s > 0:
            self._sweep_task = asyncio.create_task(self._sweep(), name="gpucp-sweep")

    async def stop(self) -> None:
        self.accepting = False
        await self.dispatcher.stop()
        if self._sweep_task is not None:
            self._sweep_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweep_task
        self.lifecycle.close()
        self.fleet.close()
        self.notifier.close()
        await self.store.flush()

    async def _sweep(self) -> None:
        """Now and then, delete the tasks that finished more than keep_finished_s ago."""
        keep_ms = int(self.config.keep_finished_s * 1000)
        every_s = min(60.0, max(1.0, self.config.keep_finished_s / 10))
        while True:
            await asyncio.sleep(every_s)
            try:
                deleted = await self._delete_finished_before(wall_ms() - keep_ms)
            except Exception:
                log.exception("deleting old finished tasks failed; tried again in %.0f s", every_s)
                continue
            if deleted:
                log.info("deleted %d tasks that finished more than %.0f s ago", deleted, keep_ms / 1000)

    async def _delete_finished_before(self, cutoff_ms: int) -> int:
        """Delete the tasks that finished before cutoff_ms, a batch per commit; how many."""
        deleted = 0
        while True:
            expired = await self.store.expired(cutoff_ms, SWEEP_BATCH)
            if not expired:
                return deleted
            await self.store.delete([handle for handle, *_ in expired])
            for _, task_id, tenant, key, state in expired:
                self.book.forget(task_id, tenant, key, state)
            deleted += len(expired)

    # -- submission -----------------------------------------------------------------------------

    async def submit(
        self, specs: Sequence[common_pb2.TaskSpec], *, session_keys: Sequence[str] = (), resend: bool = False
    ) -> list[tuple[str, bool]]:
        """Store new tasks (all or none); returns (task_id, duplicate) per spec.

        session_keys: the idempotency key of each spec that has none (controlplane.session), set
        after validation, so that the limit a sender meets is its own spec's size, and only where
        it fits beside the spec (not for a spec within a few dozen bytes of the limit). On a
        first send (not `resend`) no earlier task can hold one, so the store is not asked: that
        spares a query per spec.
        """
        if not self.accepting:
            raise Unavailable("the control plane is shutting down; submit to another replica")
        if not specs:
            raise InvalidArgument("specs is empty: send at least one TaskSpec")
        if len(specs) > MAX_BATCH:
            raise InvalidArgument(f"{len(specs)} specs in one batch; the limit is {MAX_BATCH}")
        sizes = []
        for i, spec in enumerate(specs):
            # Fields this version does not know are not stored, returned or sent to agents: they
            # would be bytes no limit counts.
            spec.DiscardUnknownFields()
            try:
                sizes.append(validate_spec(spec, max_payload_bytes=self.config.max_payload_bytes))
            except InvalidArgument as exc:
                raise InvalidArgument(f"specs[{i}]: {exc}" if len(specs) > 1 else str(exc)) from None
        queued = self.book.counts[PENDING]
        if queued + len(specs) > self.config.max_queue:
            raise ResourceExhausted(
                f"the queue is full ({queued} tasks pending, limit {self.config.max_queue}): "
                "retry later, or raise --max-queue"
            )
        asked = list(specs)  # specs whose keys may belong to tasks no longer in memory
        if session_keys:
            if not resend:
                asked = [spec for spec in specs if spec.idempotency_key]
            for i, (spec, key) in enumerate(zip(specs, session_keys, strict=True)):
                # The key's field: a tag byte, a length byte (keys are under 128 bytes) and the key.
                added = 2 + len(key)
                if not spec.idempotency_key and sizes[i] + added <= MAX_TASK_CONTENT_BYTES:
                    spec.idempotency_key = key
                    sizes[i] += added
        queued_bytes, new_bytes = self.book.pending_bytes, sum(sizes)
        if queued_bytes + new_bytes > self.config.max_queue_bytes:
            raise ResourceExhausted(
                f"the queue is full: its pending tasks hold {queued_bytes} bytes of specs, these add {new_bytes} and "
                f"the limit is {self.config.max_queue_bytes} (--max-queue-bytes): retry later, or raise it"
            )
        self._check_tenant_quotas(specs, sizes)
        known = await self._find_idempotent(asked)
        out: list[tuple[str, bool]] = []
        new: list[TaskRecord] = []
        now = wall_ms()
        trace = tracing.current() or None  # the submitting call's span (controlplane.tracing), once per batch
        for spec, spec_bytes in zip(specs, sizes, strict=True):
            tenant = spec.tenant or "default"
            key = spec.idempotency_key
            existing = key and (self.book.idempotent(tenant, key) or known.get((tenant, key)))
            if existing:
                out.append((existing, True))
                continue
            rec = TaskRecord(
                handle=self._next_handle, id=new_task_id(), tenant=tenant, spec=spec, created_at_ms=now,
                spec_bytes=spec_bytes, trace=trace,
            )
            self._next_handle += 1
            if key:
                self.book.claim_key(tenant, key, rec.id)
            new.append(rec)
            out.append((rec.id, False))
        if not new:
            return out
        try:
            await self.store.insert(new)
        except StoreError as exc:
            for rec in new:
                if rec.spec.idempotency_key:
                    self.book.release_key(rec.tenant, rec.spec.idempotency_key, rec.id)
            raise Unavailable(f"the task could not be stored, nothing was accepted: {exc}") from None
        entries = []
        for rec in new:
            rec.drop_payload()
            entry = self.book.add(rec, Hold.QUEUED)
            assert entry is not None  # a new task is unfinished
            self.book.note(entry, Cause.SUBMITTED, SUBMITTED, at_ms=entry.rec.created_at_ms)
            entries.append(entry)
        self.lifecycle.queue(entries)
        return out

    def _check_tenant_quotas(self, specs: Sequence[common_pb2.TaskSpec], sizes: Sequence[int]) -> None:
        """ResourceExhausted when the specs would take a tenant past its max_pending, its
        max_pending_bytes or its submit_rate (RateLimited, with the delay): that tenant waits, the
        others keep submitting. A batch refused for a quota takes none of its tenants' rates."""
        if not (self._max_pending or self._max_pending_bytes or self._rates.limited):
            return  # no [tenant.NAME] limits: nothing to count on the submit path
        counts = collections.Counter(spec.tenant or "default" for spec in specs)
        added: collections.Counter[str] = collections.Counter()
        for spec, size in zip(specs, sizes, strict=True):
            added[spec.tenant or "default"] += size
        for tenant, size in added.items():
            budget = self._max_pending_bytes.get(tenant)
            held = self.book.pending_bytes_by_tenant[tenant]
            if budget is not None and held + size > budget:
                raise ResourceExhausted(
                    f"tenant {printable(tenant, 64)}'s pending tasks hold {held} bytes of specs, these add {size} and "
                    f"its budget is {budget} (max_pending_bytes in the --auth file): wait for some to start"
                )
        for tenant, count in counts.items():
            limit = self._max_pending.get(tenant)
            pending = self.book.pending_by_tenant[tenant]
            if limit is not None and pending + count > limit:
                raise ResourceExhausted(
                    f"tenant {printable(tenant, 64)} has {pending} tasks pending, its limit is {limit} "
                    f"(max_pending in the --auth file): wait for some to start, or ask an admin to raise it"
                )
        self._rates.take(counts)

    async def _find_idempotent(self, specs: Sequence[common_pb2.TaskSpec]) -> dict[tuple[str, str], str]:
        """Earlier tasks with the specs' idempotency keys that are no longer held in memory."""
        found: dict[tuple[str, str], str] = {}
        for spec in specs:
            key = (spec.tenant or "default", spec.idempotency_key)
            if spec.idempotency_key and self.book.idempotent(*key) is None and key not in found:
                task_id = await self.store.find_idempotent(*key)
                if task_id is not None:
                    found[key] = task_id
        return found

    # -- agents ---------------------------------------------------------------------------------

    def register(self, reg: workers_pb2.Register, peer: str = "", principal: str = "") -> WorkerConn:
        return self.fleet.register(reg, peer, principal)

    def heartbeat(self, conn: WorkerConn, hb: workers_pb2.Heartbeat) -> None:
        self.fleet.heartbeat(conn, hb)

    def update(self, conn: WorkerConn, upd: workers_pb2.TaskUpdate) -> None:
        self.lifecycle.update(conn, upd)

    def disconnected(self, conn: WorkerConn, reason: str) -> None:
        self.fleet.disconnected(conn, reason)

    def drain(self, worker_id: str) -> None:
        self.fleet.drain(worker_id)

    def undrain(self, worker_id: str) -> None:
        self.fleet.undrain(worker_id)

    # -- queries and commands -------------------------------------------------------------------

    async def get(self, task_id: str) -> TaskRecord:
        if not task_id:
            raise InvalidArgument("task_id is empty")
        rec = self.book.tasks.get(task_id) or await self.store.get(task_id)
        if rec is None:
            raise self.not_found(task_id)
        return rec

    def not_found(self, task_id: str) -> NotFound:
        """The error for a task that is not here, or not the caller's to see: the same words, so
        that another tenant's task ids cannot be probed."""
        kept = self.config.keep_finished_s
        return NotFound(
            f"no task has id {printable(task_id, 64)}"
            + (f": if it was submitted here, it finished more than {kept:g} s ago and was deleted" if kept else "")
        )

    async def describe(self, recs: Sequence[TaskRecord], *, full: bool = True) -> list[common_pb2.Task]:
        """The Tasks as services show them; with `full`, the payloads left to the store are read
        back, in one read (Unavailable if the store cannot be read)."""
        tasks = [self.views.describe(rec, full=full) for rec in recs]
        stored = [rec.handle for rec in recs if full and rec.stored_payload]
        if stored:
            try:
                payloads = await self.store.payloads(stored)
            except self.store.errors as exc:
                raise Unavailable(f"the task's payload could not be read from the store: {exc}; retry") from None
            for rec, task in zip(recs, tasks, strict=True):
                if full and rec.stored_payload:
                    task.spec.payload = payloads.get(rec.handle, b"")
        return tasks

    async def run(self, spec: common_pb2.TaskSpec, timeout_ms: int) -> TaskRecord:
        """Submit one task and wait for it (RunTask)."""
        [(task_id, _)] = await self.submit([spec])
        return await self.wait(task_id, timeout_ms)

    async def wait(self, task_id: str, timeout_ms: int) -> TaskRecord:
        rec = await self.get(task_id)
        if rec.terminal and rec.id not in self.book.settling:
            return rec
        await self.notifier.wait(task_id, timeout_ms)
        return self.book.tasks.get(task_id, rec)

    async def cancel(self, task_id: str) -> common_pb2.TaskState:
        rec = await self.get(task_id)
        entry = self.book.entry(task_id)
        if entry is None:
            name = common_pb2.TaskState.Name(rec.state).removeprefix("TASK_STATE_").lower()
            raise FailedPrecondition(f"task {task_id} is already {name}; only unfinished tasks can be cancelled")
        self.lifecycle.cancel(entry)
        await self.store.flush()
        return CANCELLED

    async def events(self, task_id: str) -> tuple[list[scheduler_pb2.TaskEvent], int]:
        """A task's history (NotFound as `get`) and how many events were dropped from its middle."""
        return await self.history.events(await self.get(task_id))

    async def list(
        self, state: int, tenants: Sequence[str], kind: str, limit: int, page_token: str
    ) -> tuple[list[TaskRecord], str]:
        """A page of tasks in submission order: up to `limit` (100 by default, 1,000 at most) and as
        many as fit in one response; the token continues after it ("" once there are no more).
        `tenants` empty: every tenant's."""
        if state not in common_pb2.TaskState.values():
            raise InvalidArgument(f"state {state} is not a TaskState")
        after = parse_page_token(page_token)
        limit = min(limit or 100, MAX_PAGE)
        await self.store.flush()  # the page reflects every transition made so far
        # A start (ASSIGNED -> RUNNING) is not written to the store: ask it for both, and let the
        # records in memory, which know, tell them apart.
        placed = state in (ASSIGNED, RUNNING)
        states = (ASSIGNED, RUNNING) if placed else (state,) if state else ()
        rows, more = await self.store.page(states, tenants, kind, after, limit)
        recs = [self.book.tasks.get(r.id, r) for r in rows]
        if placed:
            recs = [r for r in recs if r.state == state]
        return recs, str(rows[-1].handle) if rows and more else ""

    def watch(
        self, task_ids: Sequence[str], tenant: str, allowed: frozenset[str] | None = None, owner: str = ""
    ) -> Watcher:
        """Start recording events for a watcher (of `allowed` tenants' tasks only, None: all) for
        the principal `owner`, whose open watches are capped; call unwatch() when done with it."""
        return self.notifier.watch(task_ids, tenant, allowed, owner)

    def unwatch(self, watcher: Watcher) -> None:
        self.notifier.unwatch(watcher)
