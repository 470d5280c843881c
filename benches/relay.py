"""The floor under gpucp's closed loop: a bare gRPC relay in the same layout, doing nothing else.

A gpucp task crosses four gRPC hops: the client's call into the control plane, one message down
an agent's bidirectional stream, the agent's reply up it, and the answer to the client. This
relay makes exactly those hops with the same libraries (a `grpc.aio` server on the control
plane's event loop, agents on asyncio's, a synchronous client) and nothing between them: no
validation, no store, no queue, no placement, bytes instead of protobuf messages. It does so in
both of gpucp's client layouts: `Call`, a unary call per task (RunTask), and `Session`, one
bidirectional stream that carries every call and its answer, fed from a queue and read by a
thread of its own as gpucp.Client's session is. No implementation of a layout in Python gRPC can
answer faster on the same machine, so `bench_peers.py` runs both beside gpucp and its peers to
show how much of gpucp's latency is the layout itself.

With `--db PATH` the relay is durable as a central scheduler must be, and no more: per task one
SQLite commit of the task (id, payload) before it goes anywhere, one of its assignment before it
goes down an agent stream, and one of its result before the caller hears it. One table with no
secondary index, one connection with the pragmas of gpucp's SQLite store (WAL, synchronous=NORMAL),
each commit made on the event loop thread, as gpucp's store makes them by default. The floor of a
durable relay, not gpucp's store.

`Echo` is the layout of Ray's closed loop instead: Ray's driver pushes a task straight to a
worker it leased once (max_calls=0 keeps it) and the worker answers it, two hops with no
scheduler and no store between them; here the relay answers the call itself.

    python benches/relay.py serve --port-file F          # the relay
    python benches/relay.py serve --port-file F --db D   # the relay, committing each task's steps to D
    python benches/relay.py agent --server H:P           # one agent stream, echoing what it receives
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import queue
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future
from pathlib import Path

import grpc

SERVICE = "relay.Relay"


class Ledger:
    """A task's three durable steps, one SQLite commit each (autocommit: each statement is its own
    transaction), made on the calling thread, the relay's event loop, before the task goes on."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        # Survives a crash of this process, as gpucp's store does by default; no fsync per commit.
        self.db.execute("PRAGMA synchronous=NORMAL")
        # gpucp's store checkpoints from a thread of its own, off the path; a bench run's few thousand
        # tasks fit in the log, so the floor leaves checkpoints out.
        self.db.execute("PRAGMA wal_autocheckpoint=0")
        self.db.execute(
            "CREATE TABLE tasks (id INTEGER PRIMARY KEY, payload BLOB NOT NULL, worker INTEGER, result BLOB)"
        )

    def accepted(self, task: int, payload: bytes) -> None:
        self.db.execute("INSERT INTO tasks (id, payload) VALUES (?, ?)", (task, payload))

    def assigned(self, task: int, worker: int) -> None:
        self.db.execute("UPDATE tasks SET worker = ? WHERE id = ?", (worker, task))

    def finished(self, task: int, result: bytes) -> None:
        self.db.execute("UPDATE tasks SET result = ? WHERE id = ?", (result, task))


async def serve(port_file: Path, ledger: Ledger | None = None) -> None:
    """Relay each Call down one of the connected agent streams (in turn) and answer with the reply;
    with a ledger, commit the task, its assignment and its result on the way."""
    outboxes: list[asyncio.Queue[bytes]] = []
    waiting: dict[int, asyncio.Future[bytes]] = {}
    ids = itertools.count()
    turn = itertools.count()

    def relay(request: bytes) -> asyncio.Future[bytes]:
        n = next(ids)
        reply = asyncio.get_running_loop().create_future()
        waiting[n] = reply
        worker = next(turn) % len(outboxes)
        if ledger:
            ledger.accepted(n, request)
            ledger.assigned(n, worker)
        outboxes[worker].put_nowait(n.to_bytes(8, "little") + request)
        return reply

    async def call(request: bytes, _: grpc.aio.ServicerContext) -> bytes:
        return await relay(request)

    async def echo(request: bytes, _: grpc.aio.ServicerContext) -> bytes:
        return request

    async def session(requests: AsyncIterator[bytes], _: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        """Each request relayed as it is read; each reply written (with the request's own tag) as it comes."""
        replies: asyncio.Queue[bytes] = asyncio.Queue()

        def answer(tag: bytes, reply: asyncio.Future[bytes]) -> None:
            replies.put_nowait(tag + reply.result())

        async def read() -> None:
            async for request in requests:
                relay(request[8:]).add_done_callback(functools.partial(answer, request[:8]))

        reader = asyncio.create_task(read())
        try:
            while True:
                yield await replies.get()
        finally:
            reader.cancel()

    async def agent(replies: AsyncIterator[bytes], _: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        outbox: asyncio.Queue[bytes] = asyncio.Queue()
        outboxes.append(outbox)

        async def read() -> None:
            async for message in replies:
                n = int.from_bytes(message[:8], "little")
                if ledger:
                    ledger.finished(n, message[8:])
                waiting.pop(n).set_result(message[8:])

        reader = asyncio.create_task(read())
        try:
            while True:
                yield await outbox.get()
        finally:
            reader.cancel()
            outboxes.remove(outbox)

    handlers = grpc.method_handlers_generic_handler(SERVICE, {
        "Call": grpc.unary_unary_rpc_method_handler(call),
        "Echo": grpc.unary_unary_rpc_method_handler(echo),
        "Session": grpc.stream_stream_rpc_method_handler(session),
        "Agent": grpc.stream_stream_rpc_method_handler(agent),
    })
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handlers,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    port_file.write_text(str(port))
    await server.wait_for_termination()


async def agent(address: str) -> None:
    """Hold one stream and send back every message it brings, from a task of its own as gpucp's agent does."""
    async with grpc.aio.insecure_channel(address) as channel:
        stream = channel.stream_stream(f"/{SERVICE}/Agent")()
        replies: asyncio.Queue[bytes] = asyncio.Queue()

        async def write() -> None:
            while True:
                await stream.write(await replies.get())

        writer = asyncio.create_task(write())
        tasks = set()
        while (message := await stream.read()) is not grpc.aio.EOF:
            task = asyncio.create_task(replies.put(message))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        writer.cancel()


def closed_loop(address: str, n: int, warmup: int, method: str = "Call") -> list[float]:
    """Seconds per call of n sequential Calls (or Echos), after `warmup` untimed ones."""
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(f"/{SERVICE}/{method}")
        latencies = []
        for i in range(warmup + n):
            start = time.perf_counter()
            call(b"noop", timeout=10)
            if i >= warmup:
                latencies.append(time.perf_counter() - start)
    return latencies


def session_loop(address: str, n: int, warmup: int) -> list[float]:
    """closed_loop() over one Session stream: each call queued for the stream's request thread,
    its answer handed over by a reader thread through a future, as gpucp.Client's session does."""
    outbox: queue.Queue[bytes | None] = queue.Queue()
    waiting: dict[bytes, Future[bytes]] = {}

    def requests() -> Iterator[bytes]:
        while (request := outbox.get()) is not None:
            yield request

    def read(replies: Iterator[bytes]) -> None:
        try:
            for reply in replies:
                waiting.pop(reply[:8]).set_result(reply[8:])
        except grpc.RpcError:
            return  # cancelled at the end

    with grpc.insecure_channel(address) as channel:
        replies = channel.stream_stream(f"/{SERVICE}/Session")(requests())
        reader = threading.Thread(target=read, args=(replies,), daemon=True)
        reader.start()
        latencies = []
        for i in range(warmup + n):
            start = time.perf_counter()
            tag = i.to_bytes(8, "little")
            reply: Future[bytes] = Future()
            waiting[tag] = reply
            outbox.put(tag + b"noop")
            reply.result(timeout=10)
            if i >= warmup:
                latencies.append(time.perf_counter() - start)
        outbox.put(None)
        replies.cancel()  # type: ignore[attr-defined]
        reader.join()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("role", choices=("serve", "agent"))
    parser.add_argument("--port-file", type=Path)
    parser.add_argument("--server")
    parser.add_argument("--db", type=Path, help="serve: commit each task's steps to this new SQLite file")
    args = parser.parse_args()
    if args.role == "serve":
        from controlplane.server import loop_factory

        ledger = Ledger(args.db) if args.db else None
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(serve(args.port_file, ledger))
    else:
        asyncio.run(agent(args.server))


if __name__ == "__main__":
    main()
