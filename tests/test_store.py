"""The store interface on both databases (SQLite and PostgreSQL, one test each): what it commits
survives reopening, idempotency keys are per tenant and a refused write fails alone, retention
deletes a task with its events, pages are bounded in bytes, schemas carry their version, and one
database serves one control plane."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

import cluster
from controlplane import pgstore, sqlitestore
from controlplane.book import Cause
from controlplane.record import TaskRecord, new_task_id
from controlplane.store import PAGE_CONTENT_BYTES, Store, StoreError, open_store
from gpucp import task_spec
from gpucp.v1 import common_pb2

pytestmark = pytest.mark.both_stores
S = common_pb2


@pytest.fixture
def db(tmp_path: Path, store_kind: str) -> str:
    """A new empty database: a SQLite file, or a PostgreSQL database dropped after the test."""
    if store_kind == "postgresql":
        assert cluster.POSTGRES_DATABASE is not None
        return cluster.POSTGRES_DATABASE(tmp_path)
    return str(tmp_path / "gpucp.db")


@pytest.fixture
def opened(db: str) -> Iterator[Callable[[], Store]]:
    """open_store(db), closed after the test when the test did not close it."""
    stores: list[Store] = []

    def open_() -> Store:
        stores.append(open_store(db))
        return stores[-1]

    yield open_
    for s in stores:
        if not s._closed:
            s.close()


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def task(handle: int, tenant: str = "t", *, key: str = "", kind: str = "noop", payload: bytes = b"x") -> TaskRecord:
    spec = task_spec(kind, payload)
    spec.idempotency_key = key
    return TaskRecord(handle=handle, id=new_task_id(), tenant=tenant, spec=spec, created_at_ms=1_000 + handle)


def event(seq: int, cause: Cause = Cause.ASSIGNED) -> tuple[object, ...]:
    return (seq, 2_000 + seq, S.TASK_STATE_ASSIGNED, 1, "w0", cause, str(cause), "", 0.0)


def test_what_was_committed_is_there_after_reopening(opened: Callable[[], Store]) -> None:
    first = opened()
    recs = [task(h) for h in range(1, 6)]

    async def life() -> None:
        await first.insert(recs)
        recs[0].state, recs[0].worker_id, recs[0].gpu_indices, recs[0].attempt = S.TASK_STATE_ASSIGNED, "w0", [0, 3], 1
        recs[1].state, recs[1].result, recs[1].finished_at_ms = S.TASK_STATE_SUCCEEDED, b"\x00ok", 5_000
        recs[2].state, recs[2].errors, recs[2].error = S.TASK_STATE_FAILED, ["boom", "bang"], "bang"
        await first.save(recs[:3])

    run(life())
    first.close()
    again = opened()
    assert again.max_handle() == 5
    assert again.count_by_state() == {S.TASK_STATE_PENDING: 2, S.TASK_STATE_ASSIGNED: 1,
                                      S.TASK_STATE_SUCCEEDED: 1, S.TASK_STATE_FAILED: 1}
    unfinished = again.load_unfinished()
    assert [(r.handle, r.state, r.worker_id, r.gpu_indices) for r in unfinished] == [
        (1, S.TASK_STATE_ASSIGNED, "w0", [0, 3]), (4, S.TASK_STATE_PENDING, "", []), (5, S.TASK_STATE_PENDING, "", []),
    ]
    done = run(again.get(recs[1].id))
    assert (done.result, done.finished_at_ms, done.spec.kind, done.spec.payload) == (b"\x00ok", 5_000, "noop", b"x")
    failed = run(again.get(recs[2].id))
    assert (failed.errors, failed.error) == (["boom", "bang"], "bang")
    assert run(again.get("nope")) is None


def test_an_idempotency_key_is_per_tenant_and_a_duplicate_fails_alone(opened: Callable[[], Store]) -> None:
    s = opened()

    async def submit() -> list[BaseException | None]:
        await s.insert([task(1, "a", key="k")])
        # One loop turn: the duplicate shares a commit with two good inserts, which must still land.
        outcomes = await asyncio.gather(
            s.insert([task(2, "b", key="k")]), s.insert([task(3, "a", key="k")]), s.insert([task(4, "a", key="j")]),
            return_exceptions=True,
        )
        return list(outcomes)

    outcomes = run(submit())
    assert outcomes[0] is None and outcomes[2] is None, outcomes
    assert isinstance(outcomes[1], StoreError) and "the database refused the write" in str(outcomes[1])
    assert s.max_handle() == 4 and sum(s.count_by_state().values()) == 3
    found = {(tenant, key): run(s.find_idempotent(tenant, key)) for tenant, key in [("a", "k"), ("b", "k"), ("c", "k")]}
    assert found[("a", "k")] is not None and found[("b", "k")] is not None and found[("c", "k")] is None
    assert found[("a", "k")] != found[("b", "k")]


def test_retention_deletes_old_finished_tasks_with_their_events(opened: Callable[[], Store]) -> None:
    s = opened()
    recs = [task(h) for h in range(1, 5)]

    async def life() -> list[tuple[int, ...]]:
        await s.insert(recs)
        for rec, finished in zip(recs[:3], (1_500, 2_500, 9_000), strict=True):
            rec.state, rec.finished_at_ms = S.TASK_STATE_SUCCEEDED, finished
        await s.save(recs[:3])
        for rec in recs:
            s.add_event(rec.handle, event(2))
        await s.flush()
        expired = await s.expired(3_000, 100)
        await s.delete([handle for handle, *_ in expired])
        return [tuple(e[:1]) for e in expired]

    expired = run(life())
    assert expired == [(1,), (2,)], "only tasks that finished before the cutoff expire"
    assert run(s.get(recs[0].id)) is None and run(s.get(recs[2].id)) is not None
    assert [len(run(s.events(h))) for h in range(1, 5)] == [0, 0, 1, 1], "events outlived their task"


def test_events_are_kept_in_order_and_trimmed(opened: Callable[[], Store]) -> None:
    s = opened()

    async def life() -> None:
        await s.insert([task(1), task(2)])
        for seq in range(2, 6):
            s.add_event(1, event(seq, Cause.PROGRESS))
        s.add_event(2, event(2))
        s.add_event(1, event(6, Cause.FINISHED))
        s.trim_event(1, 3)
        await s.flush()

    run(life())
    stored = run(s.events(1))
    assert [(row[0], row[5]) for row in stored] == [(2, "progress"), (4, "progress"), (5, "progress"), (6, "finished")]
    assert stored[0] == (2, 2_002, S.TASK_STATE_ASSIGNED, 1, "w0", "progress", "progress", "", 0.0)
    assert s.event_seqs() == {1: (2, 6), 2: (2, 2)}


def test_pages_are_bounded_in_bytes_and_filtered(opened: Callable[[], Store]) -> None:
    s = opened()
    big = b"p" * (PAGE_CONTENT_BYTES // 4)  # three fit in a page with their specs, not four
    recs = [task(h, "a" if h % 2 else "b", kind="big" if h <= 5 else "small", payload=big if h <= 5 else b"") for h in
            range(1, 9)]
    run(s.insert(recs))
    page, more = run(s.page([], [], "big", 0, 100))
    assert [r.handle for r in page] == [1, 2, 3] and more, "a page stops before its payloads pass the bound"
    page, more = run(s.page([], [], "big", 3, 100))
    assert [r.handle for r in page] == [4, 5] and not more
    page, more = run(s.page([S.TASK_STATE_PENDING], ["b"], "small", 0, 2))
    assert [r.handle for r in page] == [6, 8] and more, "a full page may have more after it"
    assert run(s.page([S.TASK_STATE_SUCCEEDED], [], "", 0, 10)) == ([], False)


def test_payloads_are_read_back_by_handle_in_one_call(opened: Callable[[], Store]) -> None:
    # What the dispatcher asks for when it sends tasks whose payloads were left to the store: more
    # handles than one statement asks for, a large payload, an empty one, and a handle not stored.
    s = opened()
    recs = [task(h, payload=b"p%d" % h) for h in range(1, 1201)]
    recs[7].spec.payload = bytes(range(256)) * 4096  # 1 MiB
    recs[8].spec.payload = b""

    async def life() -> dict[int, bytes]:
        await s.insert(recs)
        for rec in recs:
            rec.drop_payload()  # what the control plane holds after the insert
        return await s.payloads([r.handle for r in recs] + [99_999])

    found = run(life())
    assert found == {r.handle: r.spec.payload or b"" for r in recs} | {8: bytes(range(256)) * 4096}
    assert recs[7].stored_payload == 1 << 20 and recs[7].spec.payload == b"" and recs[7].spec.kind == "noop"
    assert recs[0].stored_payload == 0 and recs[0].spec.payload == b"p1"  # small ones stay in memory
    assert run(s.payloads([])) == {}
    loaded = s.load_unfinished()  # what a restart holds: the same, paged
    assert [r.handle for r in loaded] == [r.handle for r in recs]
    assert (loaded[7].stored_payload, loaded[7].spec.payload, loaded[0].spec.payload) == (1 << 20, b"", b"p1")


def test_the_schema_carries_its_version_and_a_newer_one_is_refused(db: str, opened: Callable[[], Store]) -> None:
    opened().close()
    known = len(pgstore.MIGRATIONS if cluster.on_postgres(db) else sqlitestore.MIGRATIONS)
    assert cluster.run_sql(db, "SELECT version FROM schema_version") == [(known,)]
    cluster.run_sql(db, f"UPDATE schema_version SET version = {known + 1}")
    newer = f"has schema version {known + 1}, newer than this gpucp knows \\({known}\\)"
    with pytest.raises(RuntimeError, match=newer):
        opened()


def test_one_database_serves_one_control_plane(db: str, opened: Callable[[], Store]) -> None:
    first = opened()
    with pytest.raises(OSError, match="is in use by another control plane"):
        open_store(db)
    first.close()
    opened().close()  # released with the first: the next one opens it


def test_a_sqlite_database_made_before_versions_were_kept_is_adopted(tmp_path: Path, store_kind: str) -> None:
    if store_kind != "sqlite":
        pytest.skip("SQLite databases predate schema versions; PostgreSQL ones never had none")
    path = tmp_path / "old.db"
    spec = task_spec("train", b"")
    with sqlite3.connect(path) as old:  # the tasks table before it had a kind column
        old.execute(sqlitestore.SCHEMA[0].replace(",\n    kind TEXT NOT NULL DEFAULT ''", ""))
        old.execute("INSERT INTO tasks VALUES (1, 'a', 't', '', ?, 1, 0, '', '[]', x'', '', '[]', 0, 1, 0, 0)",
                    (spec.SerializeToString(),))
    s = open_store(str(path))
    try:
        page, _ = run(s.page([], [], "train", 0, 10))
        assert [r.id for r in page] == ["a"], "the kind column was filled from the specs"
    finally:
        s.close()
    assert cluster.run_sql(path, "SELECT version FROM schema_version") == [(len(sqlitestore.MIGRATIONS),)]


def test_a_postgresql_password_stays_out_of_what_is_logged(db: str, store_kind: str) -> None:
    if store_kind != "postgresql":
        pytest.skip("only a PostgreSQL URL carries a password")
    assert pgstore.describe(db.replace("gpucp@", "gpucp:s3cret@")) == db
    with pytest.raises(OSError, match="cannot connect to postgresql://gpucp@127.0.0.1:1/x") as refused:
        open_store("postgresql://gpucp:s3cret@127.0.0.1:1/x")
    assert "s3cret" not in str(refused.value)
