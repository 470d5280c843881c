"""The `gpucp serve` command: check its flags, build a ServerConfig and run the control plane."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence

from controlplane.config import PRIORITY_MODES, SchedulerConfig, ServerConfig
from controlplane.logs import LOG_FORMATS
from controlplane.logs import setup as setup_logs
from controlplane.server import run
from controlplane.settings import CONFIG_ENV, ENV_PREFIX, layer
from gpucp.auth import AGENT_TOKEN_ENV

__all__ = ["main", "parser"]

POLICIES = ("fragmentation", "composite", "round_robin", "least_loaded", "performance", "affinity", "cost")
# The composite score's terms, each weighted by SchedulerConfig's w_<term>.
SCORE_TERMS = ("availability", "success", "speed", "affinity", "fit", "cost")
# Where the scheduling flags' defaults come from.
CORE = SchedulerConfig()


def main(argv: Sequence[str] | None = None) -> int:
    """Run `gpucp serve`; return the exit code (1 for a bad setting or a control plane that cannot start)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = parser()
    try:
        settings = layer(p, argv, os.environ)
    except ValueError as exc:
        print(f"gpucp: {exc}", file=sys.stderr)
        return 1
    args = p.parse_args(argv)
    try:
        return run_serve(args)
    except (OSError, ValueError) as exc:
        print(f"gpucp: {settings.explain(str(exc))}", file=sys.stderr)
        return 1


def parser() -> argparse.ArgumentParser:
    """Return the argument parser of `gpucp serve`."""
    p = argparse.ArgumentParser(
        prog="gpucp serve", description="Run the control plane.",
        epilog=f"Every flag is also a key of the --config file (max-queue = 1000) and a variable "
        f"{ENV_PREFIX}<FLAG> ({ENV_PREFIX}MAX_QUEUE=1000; repeatable flags: values separated by commas). "
        "A flag beats a variable, a variable beats the file.",
    )
    p.add_argument("--config", metavar="FILE", default="",
                   help=f"read settings from this TOML file (default ${CONFIG_ENV}; none if unset)")
    p.add_argument("--listen", default="127.0.0.1:50051", help="HOST:PORT (default %(default)s)")
    p.add_argument("--advertise", default="", metavar="HOST:PORT",
                   help="where clients reach this replica, as standbys on the same PostgreSQL database name "
                        "their leader (default: the --listen address)")
    p.add_argument("--http", default="127.0.0.1:50052", metavar="HOST:PORT",
                   help="serve /metrics, /healthz, /readyz and the JSON API /api/v1 here "
                        "(default %(default)s; '' turns it off)")
    p.add_argument("--db", default="gpucp.db",
                   help="SQLite file, or a postgresql://user:password@host:port/dbname URL (default %(default)s)")
    p.add_argument("--heartbeat-timeout", type=float, default=CORE.heartbeat_timeout_ms / 1000, metavar="SECONDS",
                   help="a worker silent this long is lost (default %(default)s)")
    p.add_argument("--max-queue", type=int, default=100_000, metavar="N",
                   help="pending tasks before submissions are refused (default %(default)s)")
    p.add_argument("--max-payload", type=int, default=4 * 1024 * 1024, metavar="BYTES")
    p.add_argument("--max-queue-bytes", type=int, default=1024**3, metavar="BYTES",
                   help="bytes of specs all pending tasks may hold together (default %(default)s)")
    p.add_argument("--default-timeout", type=float, default=3600.0, metavar="SECONDS",
                   help="execution limit of tasks that set none (default %(default)s)")
    p.add_argument("--default-retries", type=int, default=3, metavar="N")
    p.add_argument("--retry-base", type=float, default=0.5, metavar="SECONDS",
                   help="first retry backoff, doubled per failure with jitter (default %(default)s)")
    p.add_argument("--retry-cap", type=float, default=30.0, metavar="SECONDS",
                   help="longest retry backoff (default %(default)s)")
    p.add_argument("--reconnect-grace", type=float, metavar="SECONDS",
                   help="how long a disconnected worker keeps its tasks (default: one heartbeat interval)")
    p.add_argument("--queue-timeout", type=float, default=3600.0, metavar="SECONDS",
                   help="a task no connected worker can run fails after this long (default %(default)s)")
    p.add_argument("--quarantine-after", type=int, default=3, metavar="N",
                   help="quarantine a worker after N failures other workers fixed (default %(default)s)")
    p.add_argument("--quarantine-cooling", type=float, default=60.0, metavar="SECONDS",
                   help="first quarantine length, doubled on relapse (default %(default)s)")
    p.add_argument("--policy", default=CORE.policy, choices=POLICIES,
                   help="how a task's worker is chosen among those that can run it (default %(default)s)")
    p.add_argument("--kind-policy", action="append", default=[], metavar="KIND=POLICY",
                   help="another policy for one task kind (repeatable)")
    p.add_argument("--tenant-weight", action="append", default=[], metavar="TENANT=WEIGHT",
                   help="a tenant's fair share of the fleet, default 1 (repeatable)")
    p.add_argument("--weight", action="append", default=[], metavar="TERM=WEIGHT",
                   help="weight of one term of the composite score (repeatable): "
                   + ", ".join(f"{t} (default {getattr(CORE, f'w_{t}'):g})" for t in SCORE_TERMS))
    p.add_argument("--priority-mode", default=CORE.priority_mode, metavar="strict|shares",
                   help="strict: a higher priority class always goes before a lower one of the same tenant; "
                        "shares: the classes share by --priority-weights (default %(default)s)")
    p.add_argument("--priority-weights", default=",".join(f"{w:g}" for w in CORE.priority_weights),
                   metavar="LOW,NORMAL,HIGH,URGENT",
                   help="shares of the priority classes within a tenant with --priority-mode shares "
                        "(default %(default)s)")
    p.add_argument("--aging", type=float, default=CORE.aging_ms / 1000, metavar="SECONDS",
                   help="a pending task moves up one priority class per this long waiting "
                        "(default %(default)g; 0: never)")
    p.add_argument("--warmup", type=int, default=CORE.warmup_successes, metavar="N",
                   help="a new or recovered worker ramps from 1 slot to all of them over N successes "
                   "(default %(default)s; 0: all at once)")
    p.add_argument("--prefetch-depth", type=int, metavar="N",
                   help="tasks every worker may queue beyond its slots; idle workers steal those "
                        "not yet started (default: tuned per worker to the runtimes of the queued work; "
                        "0: off)")
    p.add_argument("--locality-wait", type=float, default=CORE.locality_wait_ms / 1000, metavar="SECONDS",
                   help="longest a task waits for a busy worker with its model warm instead of "
                        "loading it on a free one; never longer than the learned load time "
                        "(default %(default)s; 0: never wait)")
    p.add_argument("--keep-finished", type=float, default=7 * 24 * 3600, metavar="SECONDS",
                   help="delete finished tasks and their results this long after they end "
                        "(default %(default)s: a week; 0: keep them forever)")
    p.add_argument("--sync", choices=("normal", "full"), default="normal",
                   help="SQLite's: full also survives power loss, one fsync per group commit "
                        "(PostgreSQL commits as its server's synchronous_commit says, durably by default)")
    p.add_argument("--autoscale", metavar="CONFIG", default="",
                   help="scale RunPod pools from the queue as this TOML/JSON file says "
                        "(needs RUNPOD_API_KEY in the environment)")
    p.add_argument("--auth", metavar="FILE", default="",
                   help="principals (TOML: name, token_sha256, role, tenants, workers); without it every "
                   "caller is an admin and only loopback --listen addresses are allowed")
    p.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback --listen without --auth (anyone who reaches the port is an admin)")
    p.add_argument("--tls-cert", metavar="FILE", default="", help="serve TLS with this certificate (PEM) and --tls-key")
    p.add_argument("--tls-key", metavar="FILE", default="", help="the certificate's private key (PEM)")
    p.add_argument("--tls-client-ca", metavar="FILE", default="",
                   help="mTLS: clients must present a certificate this CA signed (principals' cert_cn)")
    p.add_argument("--max-watchers", type=int, default=64, metavar="N",
                   help="open WatchTasks streams one principal may hold; 0 = no cap (default %(default)s)")
    p.add_argument("--register-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="an agent stream that has not registered by then is closed (default %(default)s)")
    p.add_argument("--ready-file", help="write the bound port here once serving, or once a standby on PostgreSQL "
                                        "(and the HTTP port to FILE.http)")
    p.add_argument("--log-level", default="INFO",
                   help="DEBUG, INFO (every task event a line, logger gpucp.tasks), WARNING... (default %(default)s)")
    p.add_argument("--log-format", default="text", choices=LOG_FORMATS,
                   help="text for people, json for one object a line (default %(default)s)")
    return p


def run_serve(args: argparse.Namespace) -> int:
    """Check the flags, build the ServerConfig and serve until SIGTERM."""
    setup_logs(args.log_level, args.log_format)
    if not args.keep_finished >= 0:
        raise ValueError(f"--keep-finished {args.keep_finished:g}: give seconds >= 0 (0 keeps finished tasks forever)")
    if args.priority_mode not in PRIORITY_MODES:
        raise ValueError(
            f"--priority-mode {args.priority_mode!r}: give strict (a higher class always goes first) "
            "or shares (classes share by --priority-weights)"
        )
    if not (math.isfinite(args.heartbeat_timeout) and args.heartbeat_timeout > 0):
        raise ValueError(f"--heartbeat-timeout {args.heartbeat_timeout:g}: give seconds > 0")
    if not (math.isfinite(args.locality_wait) and args.locality_wait >= 0):
        raise ValueError(f"--locality-wait {args.locality_wait:g}: give seconds >= 0 (0: never wait)")
    if not (math.isfinite(args.aging) and args.aging >= 0):
        raise ValueError(f"--aging {args.aging:g}: give seconds >= 0 (0: tasks never move up a class)")
    if args.max_queue_bytes < 1:
        raise ValueError(f"--max-queue-bytes {args.max_queue_bytes}: give a number of bytes >= 1")
    if args.max_watchers < 0:
        raise ValueError(f"--max-watchers {args.max_watchers}: give a number of watches >= 0 (0: no cap)")
    if not (math.isfinite(args.register_timeout) and args.register_timeout > 0):
        raise ValueError(f"--register-timeout {args.register_timeout:g}: give seconds > 0")
    if not 0 <= args.warmup < 2**32:
        raise ValueError(
            f"--warmup {args.warmup}: give a number of successes from 0 (all slots at once) to {2**32 - 1}"
        )
    weights = score_weights(args.weight)
    scheduler = SchedulerConfig(
        heartbeat_timeout_ms=int(args.heartbeat_timeout * 1000),
        policy=args.policy,
        w_availability=weights.get("availability", CORE.w_availability),
        w_success=weights.get("success", CORE.w_success),
        w_speed=weights.get("speed", CORE.w_speed),
        w_affinity=weights.get("affinity", CORE.w_affinity),
        w_fit=weights.get("fit", CORE.w_fit),
        w_cost=weights.get("cost", CORE.w_cost),
        priority_mode=args.priority_mode,
        priority_weights=priority_weights(args.priority_weights),
        aging_ms=int(args.aging * 1000),
        prefetch_depth=args.prefetch_depth or 0,
        warmup_successes=args.warmup,
        locality_wait_ms=int(args.locality_wait * 1000),
    )
    config = ServerConfig(
        adaptive_prefetch=args.prefetch_depth is None,
        listen=args.listen,
        advertise=args.advertise,
        http=args.http,
        db=args.db,
        db_synchronous=args.sync.upper(),
        max_queue=args.max_queue,
        max_queue_bytes=args.max_queue_bytes,
        max_payload_bytes=args.max_payload,
        default_timeout_ms=int(args.default_timeout * 1000),
        default_max_retries=args.default_retries,
        retry_base_s=args.retry_base,
        retry_cap_s=args.retry_cap,
        reconnect_grace_s=args.reconnect_grace,
        queue_timeout_s=args.queue_timeout,
        kind_policies=tuple(kind_policy(p) for p in args.kind_policy),
        tenant_weights=tuple((k, float(v)) for k, v in (split_pair(w, "--tenant-weight") for w in args.tenant_weight)),
        scheduler=scheduler,
        quarantine_after=args.quarantine_after,
        quarantine_cooling_s=args.quarantine_cooling,
        autoscale=args.autoscale,
        keep_finished_s=args.keep_finished,
        agent_token=os.environ.get(AGENT_TOKEN_ENV, ""),
        auth=args.auth,
        insecure=args.insecure,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        max_watchers=args.max_watchers,
        register_timeout_s=args.register_timeout,
    )
    run(config, ready_file=args.ready_file)
    return 0


def split_pair(text: str, flag: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise ValueError(f"{flag} takes NAME=VALUE, got {text!r}")
    return key, value


def score_weights(texts: Sequence[str]) -> dict[str, float]:
    """--weight TERM=WEIGHT flags as {term: weight}, each term one of SCORE_TERMS."""
    weights = {}
    for text in texts:
        term, value = split_pair(text, "--weight")
        if term not in SCORE_TERMS:
            raise ValueError(f"--weight {text!r}: the term must be one of {', '.join(SCORE_TERMS)}")
        weights[term] = number(value, f"--weight {text!r}", low=0.0, what="a weight >= 0")
    return weights


def priority_weights(text: str) -> tuple[float, float, float, float]:
    """--priority-weights LOW,NORMAL,HIGH,URGENT: four shares > 0."""
    flag = f"--priority-weights {text!r}"
    parts = text.split(",")
    if len(parts) != 4:
        raise ValueError(f"{flag}: give four shares, LOW,NORMAL,HIGH,URGENT (e.g. 1,2,3,4)")
    low, normal, high, urgent = (number(p, flag, low=0.0, what="shares > 0", strict=True) for p in parts)
    return low, normal, high, urgent


def number(text: str, flag: str, *, low: float, what: str, strict: bool = False) -> float:
    """A finite number above `low` (or equal to it unless strict), else a ValueError naming the flag."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < low or (strict and value == low):
        raise ValueError(f"{flag}: give {what}")
    return value


def kind_policy(text: str) -> tuple[str, str]:
    kind, policy = split_pair(text, "--kind-policy")
    if policy not in POLICIES:
        raise ValueError(f"--kind-policy {text!r}: the policy must be one of {', '.join(POLICIES)}")
    return kind, policy
