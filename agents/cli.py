"""The `gpucp agent` command: build an Agent from flags and run it until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import re
import sys
from typing import TYPE_CHECKING

from agents.handlers import BUILTIN_HANDLERS, Handler, load_handler, make_exec_handler, run_as_user
from agents.inventory import parse_gpus
from agents.runtime import Agent, Refused, default_worker_id
from gpucp import tracing
from gpucp.auth import AGENT_TOKEN_ENV, TOKEN_ENV, read_token
from gpucp.channels import SERVER_ENV, server_address
from gpucp.tls import TLS_CA_ENV, channel_credentials

if TYPE_CHECKING:
    from agents.nvidia import NvidiaGpus

__all__ = ["build_agent", "main", "open_nvidia", "parser"]

log = logging.getLogger("gpucp.agent")

# Matched with fullmatch: `$` would also match before a final newline.
_LABEL = re.compile(r"[A-Za-z0-9_.\-/]+(=[^\s]*)?")


def parser() -> argparse.ArgumentParser:
    """Return the argument parser of `gpucp agent`."""
    p = argparse.ArgumentParser(
        prog="gpucp agent",
        description="Run a worker agent: connect to the control plane, register, and run the tasks it assigns. "
        "SIGTERM or Ctrl-C drains: running tasks finish, then the agent exits.",
    )
    p.add_argument(
        "--server",
        default=None,
        metavar="HOST:PORT[,HOST:PORT...]",
        help=f"control plane address (default: ${SERVER_ENV}, else 127.0.0.1:50051; port 50051 if left out); "
        "several, or dns:///NAME:PORT, for replicas: the agent follows the one that serves",
    )
    p.add_argument(
        "--worker-id", default=None, help="worker name, unique in the fleet (default: <hostname>-<6 random hex digits>)"
    )
    p.add_argument("--slots", type=int, default=None, help="tasks run at once (default: number of GPUs, or 1)")
    p.add_argument("--gpus", default="", metavar="SPEC", help='simulated GPUs, e.g. "2xA100-80GB,1xT4-16GB"')
    p.add_argument(
        "--nvidia",
        action="store_true",
        help="use this machine's NVIDIA GPUs through NVML (libnvidia-ml.so.1) instead of simulated ones",
    )
    p.add_argument(
        "--cpu-fallback",
        action="store_true",
        help="with --nvidia: when no NVIDIA driver or GPU is usable, register as a CPU-only worker instead of exiting",
    )
    p.add_argument(
        "--throttle-heartbeats",
        type=int,
        default=3,
        metavar="N",
        help="with --nvidia: a GPU slowed down by its hardware (thermal, power brake) for N heartbeats in a row "
        "is reported unhealthy (default 3)",
    )
    p.add_argument(
        "--runpod",
        action="store_true",
        help="this agent runs in a RunPod pod: register as provider runpod with worker id and label pod=$RUNPOD_POD_ID "
        "and the pod's price (automatic when RUNPOD_POD_ID is set)",
    )
    p.add_argument("--backend", default=None, help='"cuda", "rocm" or "cpu" (default: cuda with GPUs, else cpu)')
    p.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="worker label, KEY=VALUE or a bare word (repeatable)",
    )
    p.add_argument(
        "--allow-exec",
        nargs="?",
        const="",
        default=None,
        metavar="PROGRAM,...",
        help="offer the exec kind: tasks run commands on this machine (off by default); with a list, only "
        "those programs, as argv[0] names them (a program such as sh or python3 runs anything it is told)",
    )
    p.add_argument(
        "--run-as",
        default=None,
        metavar="USER",
        help="run exec tasks as this unprivileged user (the agent must run as root)",
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
    p.add_argument(
        "--provider",
        default=None,
        help='where the worker runs: "local", "nvidia", "runpod", ... (default: "nvidia" with --nvidia, else "local")',
    )
    p.add_argument(
        "--drain-timeout", type=float, default=60.0, metavar="SECONDS", help="how long a drain waits for tasks"
    )
    p.add_argument(
        "--token-file",
        metavar="FILE",
        help=f"the bearer token to present on Connect (default: ${TOKEN_ENV}, else ${AGENT_TOKEN_ENV})",
    )
    p.add_argument(
        "--tls-ca",
        metavar="FILE",
        help=f"verify the control plane's TLS certificate with this CA (default: ${TLS_CA_ENV}; plaintext if unset)",
    )
    p.add_argument("--tls-cert", metavar="FILE", help="client certificate to present (mTLS), with --tls-key")
    p.add_argument("--tls-key", metavar="FILE", help="the client certificate's private key")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log verbosity")
    return p


def open_nvidia(args: argparse.Namespace) -> NvidiaGpus | None:
    """Initialise NVML for --nvidia; None when it is unusable and --cpu-fallback allows a CPU-only worker.

    Raises NvidiaUnavailable (a sentence naming what is missing) otherwise, ValueError on bad flags.
    """
    if args.gpus:
        raise ValueError("--gpus describes simulated GPUs and cannot be combined with --nvidia.")
    if args.throttle_heartbeats < 1:
        raise ValueError(f"--throttle-heartbeats must be at least 1, got {args.throttle_heartbeats}.")
    try:
        from agents.nvidia import NvidiaGpus, NvidiaUnavailable
    except ImportError as exc:
        if args.cpu_fallback:
            log.warning("nvidia-ml-py is not installed (%s); --cpu-fallback: registering as a CPU-only worker", exc)
            return None
        raise ValueError(f"--nvidia needs nvidia-ml-py: pip install nvidia-ml-py ({exc}).") from exc
    try:
        nvidia = NvidiaGpus.open(args.throttle_heartbeats)
    except NvidiaUnavailable as exc:
        if not args.cpu_fallback:
            raise
        log.warning("%s; --cpu-fallback: registering as a CPU-only worker", exc)
        return None
    return nvidia


def build_agent(args: argparse.Namespace, nvidia: NvidiaGpus | None = None) -> Agent:
    """Return the Agent the parsed flags describe; raise ValueError with a sentence on a bad flag.

    With --nvidia, `nvidia` is the initialised NVML inventory (None: --cpu-fallback, CPU only).
    """
    worker_id = args.worker_id or default_worker_id()
    if args.cpu_fallback and not args.nvidia:
        raise ValueError("--cpu-fallback only applies with --nvidia.")
    labels = list(args.label)
    gpus = [] if args.nvidia else parse_gpus(args.gpus, worker_id)
    provider = args.provider or "local"
    extra: dict[str, object] = {}
    if nvidia is not None:
        gpus = nvidia.discover()
        if not gpus:
            if not args.cpu_fallback:
                raise ValueError(
                    "NVIDIA driver loaded but NVML reports no usable GPU; check nvidia-smi, "
                    "or run with --cpu-fallback to serve CPU tasks."
                )
            log.warning("NVML reports no usable GPU; --cpu-fallback: registering as a CPU-only worker")
        else:
            provider = args.provider or "nvidia"
            given = {label.partition("=")[0] for label in labels}
            labels += [label for label in nvidia.labels() if label.partition("=")[0] not in given]
            extra = {"gpu_stats": nvidia.stats, "task_env": nvidia.task_env}
    slots = args.slots if args.slots is not None else max(1, len(gpus))
    if slots < 1:
        raise ValueError(f"--slots must be at least 1, got {slots}.")
    for label in labels:
        if not _LABEL.fullmatch(label):
            raise ValueError(f"--label {label!r} must be KEY=VALUE or a bare word without spaces.")
    handlers: dict[str, Handler] = dict(BUILTIN_HANDLERS)
    if args.run_as is not None and args.allow_exec is None:
        raise ValueError("--run-as applies to exec tasks: give --allow-exec too.")
    if args.allow_exec is not None:
        programs = [name.strip() for name in args.allow_exec.split(",") if name.strip()]
        run_as = run_as_user(args.run_as) if args.run_as is not None else None
        handlers["exec"] = make_exec_handler(programs, run_as)
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
    if not (math.isfinite(args.cost_per_hour) and args.cost_per_hour >= 0):
        raise ValueError(f"--cost-per-hour must be a price of 0 or more, got {args.cost_per_hour}.")
    if args.drain_timeout < 0:
        raise ValueError("--drain-timeout must be 0 or more seconds.")
    return Agent(
        server=server_address(args.server),
        worker_id=worker_id,
        provider=provider,
        slots=slots,
        gpus=gpus,
        backend=args.backend or ("cuda" if gpus else "cpu"),
        labels=labels,
        kinds=kinds,
        cost_per_hour=args.cost_per_hour,
        token=read_token(args.token_file, agent=True),
        tls=channel_credentials(args.tls_ca, args.tls_cert, args.tls_key),
        handlers=handlers,
        drain_timeout_s=args.drain_timeout,
        **extra,  # type: ignore[arg-type]
    )


def main(argv: list[str] | None = None) -> int:
    """Run `gpucp agent`; return the exit code (0 after a drain; 2 for bad flags, a missing NVIDIA driver,
    a token the control plane refuses or a worker id another agent holds)."""
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    tracing.configure("gpucp-agent")
    nvidia = None
    try:
        try:
            if args.runpod or (os.environ.get("RUNPOD_POD_ID") and args.provider is None):
                from agents.runpod import apply_pod_identity

                apply_pod_identity(args)
            nvidia = open_nvidia(args) if args.nvidia else None
            agent = build_agent(args, nvidia)
        except (ValueError, RuntimeError) as exc:  # RuntimeError: NvidiaUnavailable, or NVML failing midway
            print(f"gpucp agent: error: {exc}", file=sys.stderr)
            return 2
        log.info(
            "agent %s: %d slot(s), %d GPU(s), backend %s, provider %s, labels %s, kinds %s, server %s",
            agent.worker_id,
            agent.slots,
            len(agent.gpus),
            agent.backend,
            agent.provider,
            ",".join(agent.labels),
            ",".join(agent.kinds or []),
            agent.server,
        )
        try:
            asyncio.run(agent.run())
        except Refused as exc:
            print(f"gpucp agent: error: {exc}", file=sys.stderr)
            return 2
        return 0
    finally:
        if nvidia is not None:
            nvidia.close()
