"""The `gpucp agent` command: build an Agent from flags and run it until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys

from agents.handlers import BUILTIN_HANDLERS, Handler, load_handler
from agents.inventory import parse_gpus
from agents.runtime import Agent, default_worker_id

__all__ = ["build_agent", "main", "parser"]

_LABEL = re.compile(r"^[A-Za-z0-9_.\-/]+(=[^\s]*)?$")


def parser() -> argparse.ArgumentParser:
    """Return the argument parser of `gpucp agent`."""
    p = argparse.ArgumentParser(
        prog="gpucp agent",
        description="Run a worker agent: connect to the control plane, register, and run the tasks it assigns. "
        "SIGTERM or Ctrl-C drains: running tasks finish, then the agent exits.",
    )
    p.add_argument("--server", default="127.0.0.1:50051", metavar="HOST:PORT", help="control plane address")
    p.add_argument("--worker-id", default=None, help="worker name (default: <hostname>-<pid>)")
    p.add_argument("--slots", type=int, default=None, help="tasks run at once (default: number of GPUs, or 1)")
    p.add_argument("--gpus", default="", metavar="SPEC", help='simulated GPUs, e.g. "2xA100-80GB,1xT4-16GB"')
    p.add_argument("--backend", default=None, help='"cuda", "rocm" or "cpu" (default: cuda with GPUs, else cpu)')
    p.add_argument(
        "--label", action="append", default=[], metavar="KEY=VALUE", help="worker label, KEY=VALUE or a bare word (repeatable)"
    )
    p.add_argument("--kinds", default=None, metavar="A,B", help="handler kinds to announce (default: every handler)")
    p.add_argument(
        "--handler",
        action="append",
        default=[],
        metavar="KIND=MODULE:FUNCTION",
        help="add a handler: fn(payload: bytes, ctx) -> bytes | str | None (repeatable)",
    )
    p.add_argument("--cost-per-hour", type=float, default=0.0, help="price of this worker per hour, for placement")
    p.add_argument("--provider", default="local", help='where the worker runs: "local", "nvidia", "runpod", ...')
    p.add_argument("--drain-timeout", type=float, default=60.0, metavar="SECONDS", help="how long a drain waits for tasks")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log verbosity")
    return p


def build_agent(args: argparse.Namespace) -> Agent:
    """Return the Agent the parsed flags describe; raise ValueError with a sentence on a bad flag."""
    worker_id = args.worker_id or default_worker_id()
    gpus = parse_gpus(args.gpus, worker_id)
    slots = args.slots if args.slots is not None else max(1, len(gpus))
    if slots < 1:
        raise ValueError(f"--slots must be at least 1, got {slots}.")
    for label in args.label:
        if not _LABEL.match(label):
            raise ValueError(f"--label {label!r} must be KEY=VALUE or a bare word without spaces.")
    handlers: dict[str, Handler] = dict(BUILTIN_HANDLERS)
    for item in args.handler:
        kind, sep, reference = item.partition("=")
        if not sep or not kind.strip() or not reference.strip():
            raise ValueError(f"--handler {item!r} must look like KIND=MODULE:FUNCTION, e.g. embed=mypkg.tasks:embed.")
        handlers[kind.strip()] = load_handler(reference.strip())
    kinds = None
    if args.kinds is not None:
        kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
        unknown = [k for k in kinds if k not in handlers]
        if unknown:
            raise ValueError(f"--kinds names {unknown} but there are handlers only for {sorted(handlers)}.")
    if args.drain_timeout < 0:
        raise ValueError("--drain-timeout must be 0 or more seconds.")
    return Agent(
        server=args.server,
        worker_id=worker_id,
        provider=args.provider,
        slots=slots,
        gpus=gpus,
        backend=args.backend or ("cuda" if gpus else "cpu"),
        labels=list(args.label),
        kinds=kinds,
        cost_per_hour=args.cost_per_hour,
        handlers=handlers,
        drain_timeout_s=args.drain_timeout,
    )


def main(argv: list[str] | None = None) -> int:
    """Run `gpucp agent`; return the exit code (0 after a drain, 2 for bad flags)."""
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        agent = build_agent(args)
    except ValueError as exc:
        print(f"gpucp agent: error: {exc}", file=sys.stderr)
        return 2
    logging.getLogger("gpucp.agent").info(
        "agent %s: %d slot(s), %d GPU(s), kinds %s, server %s",
        agent.worker_id,
        agent.slots,
        len(agent.gpus),
        ",".join(agent.kinds or []),
        agent.server,
    )
    asyncio.run(agent.run())
    return 0
