"""The `gpucp` command: serve, agent, submit, list, get, events, watch, cancel, status, top, costs, drain, undrain.

This module parses the arguments; gpucp.commands carries the commands out.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from gpucp import __version__
from gpucp.auth import TOKEN_ENV
from gpucp.client import SERVER_ENV, GpucpError
from gpucp.commands import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    STATES,
    run_cancel,
    run_costs,
    run_drain,
    run_events,
    run_get,
    run_list,
    run_status,
    run_submit,
    run_top,
    run_undrain,
    run_watch,
)
from gpucp.tls import TLS_CA_ENV


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "agent":
        # Imported here: agents and the control plane are optional for a pure client.
        from agents.cli import main as agent_main

        return agent_main(argv[1:])
    if argv and argv[0] == "serve":
        from controlplane.cli import main as serve_main

        return serve_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        code = int(args.run(args))
        sys.stdout.flush()  # a reader that left (`| head`) shows up here, still inside the try
        return code
    except (GpucpError, OSError, ValueError) as exc:
        if isinstance(exc, BrokenPipeError):
            return quiet_broken_pipe()
        print(f"gpucp: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("gpucp: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def quiet_broken_pipe() -> int:
    """The reader of stdout left (`gpucp list | head`): stop without a word, as `cat` does."""
    # Python flushes stdout again at exit and would report the broken pipe then: point it at /dev/null.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EXIT_BROKEN_PIPE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpucp", description="A control plane for GPU work.")
    parser.add_argument("--version", action="version", version=f"gpucp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Every command that talks to a control plane takes --server the same way.
    server = argparse.ArgumentParser(add_help=False)
    server.add_argument("--server", metavar="HOST[:PORT][,...]",
                        help=f"control plane (default: ${SERVER_ENV}, else 127.0.0.1:50051; port 50051 if left out); "
                        "several, or dns:///NAME:PORT, for replicas: calls go to the one that serves")
    server.add_argument("--token-file", metavar="FILE",
                        help=f"the bearer token to present (default: ${TOKEN_ENV}; none if unset)")
    server.add_argument("--tls-ca", metavar="FILE",
                        help=f"verify the control plane's TLS certificate with this CA (default: ${TLS_CA_ENV}; "
                        "plaintext if unset)")
    server.add_argument("--tls-cert", metavar="FILE", help="client certificate to present (mTLS), with --tls-key")
    server.add_argument("--tls-key", metavar="FILE", help="the client certificate's private key")

    # Every listing takes -o json the same way.
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("-o", "--output", choices=("text", "json"), default="text",
                        help="text for people (default), json for programs")

    sub.add_parser("serve", help="run the control plane (see gpucp serve --help)", add_help=False)
    sub.add_parser("agent", help="run an agent (see gpucp agent --help)", add_help=False)

    submit = sub.add_parser("submit", help="submit tasks", parents=[server])
    submit.add_argument("kind", help="handler to run: noop, sleep, exec or a registered one")
    submit.add_argument("payload", nargs="?", default="",
                        help="payload text (e.g. JSON), @FILE for a file's bytes, - for standard input")
    submit.add_argument("--priority", default="normal", help="low, normal, high or urgent")
    submit.add_argument("--tenant", default="")
    submit.add_argument("--gpus", type=int, default=0, metavar="N")
    submit.add_argument("--min-gpu-memory-mb", type=int, default=0, metavar="MB")
    submit.add_argument("--gpu-model", action="append", default=[], help="any of (repeatable)")
    submit.add_argument("--gpu-milli", type=int, default=0, metavar="N",
                        help="a share of one GPU in thousandths, 1 to 999 (with --gpus 0 or 1)")
    submit.add_argument("--gpu-memory-mb", type=int, default=0, metavar="MB",
                        help="GPU memory the share keeps on its GPU (with --gpu-milli)")
    submit.add_argument("--expected-runtime", type=float, default=0, metavar="SECONDS",
                        help="your estimate of one run, for reservations, backfill and the ETA")
    submit.add_argument("--runtime-class", default="", metavar="C",
                        help="runtimes are learned per kind and class: tasks of one kind that run for seconds and "
                        "ones that run for days are predicted apart")
    submit.add_argument("--backend", default="")
    submit.add_argument("--label", action="append", default=[], help="worker label required (repeatable)")
    submit.add_argument("--timeout", type=float, default=0, metavar="SECONDS",
                        help="execution limit per attempt (default 0: the control plane's)")
    submit.add_argument("--max-retries", type=int, metavar="N")
    submit.add_argument("--idempotency-key", default="")
    submit.add_argument("--count", type=int, default=1, metavar="N", help="submit this many copies")
    submit.add_argument("--wait", action="store_true",
                        help="wait for the results, with progress; rides out a control plane restart")
    submit.set_defaults(run=run_submit)

    listing = sub.add_parser("list", help="list tasks, by state, tenant or kind", parents=[server, output])
    listing.add_argument("--state", help=f"only tasks in this state: {', '.join(STATES)}")
    listing.add_argument("--tenant", default="", help="only this tenant's tasks")
    listing.add_argument("--kind", default="", help="only tasks of this kind")
    listing.add_argument("--limit", type=int, default=50, metavar="N", help="tasks per page (default %(default)s)")
    listing.add_argument("--page", default="", metavar="TOKEN", help="the page a previous list pointed to")
    listing.add_argument("--all", action="store_true", help="every page, not only the first")
    listing.add_argument("--full", action="store_true", help="fetch results too and show their start")
    listing.set_defaults(run=run_list)

    get = sub.add_parser("get", help="show one task", parents=[server, output])
    get.add_argument("task_id")
    get.set_defaults(run=run_get)

    events = sub.add_parser("events", help="what happened to a task, oldest first", parents=[server, output])
    events.add_argument("task_id")
    events.set_defaults(run=run_events)

    watch = sub.add_parser("watch", help="follow task events live (every task, a tenant's, or the ones named)",
                           parents=[server, output])
    watch.add_argument("task_ids", nargs="*", metavar="TASK_ID",
                       help="only these; the watch ends once they have all finished")
    watch.add_argument("--tenant", default="", help="only this tenant's tasks")
    watch.set_defaults(run=run_watch)

    cancel = sub.add_parser("cancel", help="cancel tasks", parents=[server])
    cancel.add_argument("task_ids", nargs="+", metavar="TASK_ID")
    cancel.set_defaults(run=run_cancel)

    status = sub.add_parser("status", help="cluster statistics and workers", parents=[server, output])
    status.set_defaults(run=run_status)

    costs = sub.add_parser("costs", help="what the autoscaled pods cost, per pod, pool and tenant", parents=[server])
    costs.add_argument("--events", type=int, default=10, metavar="N",
                       help="also show the last N scaling decisions (default %(default)s, 0: none)")
    costs.set_defaults(run=run_costs)

    drain = sub.add_parser("drain", help="stop placing tasks on a worker; its running tasks finish", parents=[server])
    drain.add_argument("worker_id")
    drain.set_defaults(run=run_drain)

    top = sub.add_parser("top", help="the fleet and the queue, live (keys: s sort, t tenant, q quit)",
                         parents=[server])
    top.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                     help="seconds between redraws (default %(default)s)")
    top.set_defaults(run=run_top)

    undrain = sub.add_parser("undrain", help="let a drained worker take tasks again", parents=[server])
    undrain.add_argument("worker_id")
    undrain.set_defaults(run=run_undrain)
    return parser


if __name__ == "__main__":
    sys.exit(main())
