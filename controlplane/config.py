"""Settings of one control-plane process, with the defaults `gpucp serve` uses.

Each default is written here once: `gpucp serve`'s flags and the Rust core take theirs from
these classes (the core reads a `SchedulerConfig` field by field, see `_core.pyi`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# How priority classes share a tenant's turns (the core's PriorityMode).
PRIORITY_MODES = ("strict", "shares")


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """How the Rust core queues and places tasks: `Scheduler(config)`. Times in ms, as the core
    counts them; the core refuses out-of-range values with InvalidArgument."""

    # A worker silent this long is lost.
    heartbeat_timeout_ms: int = 10_000
    # Placement policy for every kind without its own (fragmentation, round_robin, least_loaded,
    # performance, affinity, cost, composite).
    policy: str = "fragmentation"
    # Weights of the composite policy's score terms (each >= 0).
    w_availability: float = 0.5
    w_success: float = 0.3
    w_speed: float = 0.2
    w_affinity: float = 0.3
    w_fit: float = 0.2
    w_cost: float = 0.1
    # Priority classes within a tenant: "strict" (a higher class always goes first) or "shares"
    # (classes LOW, NORMAL, HIGH, URGENT share by priority_weights); and how long a pending task
    # waits before it moves up one class (0 = never), which bounds the wait of lower classes.
    priority_mode: str = "strict"
    priority_weights: tuple[float, float, float, float] = (1.0, 2.0, 3.0, 4.0)
    aging_ms: int = 60_000
    # Tasks each worker may hold beyond its slots (queued on the agent to hide dispatch latency);
    # idle workers steal those not yet started. 0 = off.
    prefetch_depth: int = 0
    # Successes over which a new worker, or one back from quarantine, ramps from 1 slot to all
    # of them (a failure while warming halves its progress); 0 = all slots at once.
    warmup_successes: int = 0
    # Delay scheduling: how long a task may wait for a busy worker that has its affinity_key
    # (model) warm rather than load it cold on a free one (affinity, fragmentation and composite policies;
    # the core also caps it at the learned load time). 0 = never wait.
    locality_wait_ms: int = 3_000
    # Affinity keys each worker remembers (its last tasks'), and placements explained on request.
    affinity_memory: int = 4
    explain_memory: int = 4096


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: str = "127.0.0.1:50051"
    # HOST:PORT other replicas' refusals name as the leader's; "" is the listen address.
    advertise: str = ""
    # HTTP listener for metrics, health and the JSON API; "" turns it off.
    http: str = "127.0.0.1:50052"
    db: str = "gpucp.db"
    # "NORMAL" survives a crash of the process; "FULL" also survives power loss.
    db_synchronous: str = "NORMAL"
    max_queue: int = 100_000
    # Bytes of the specs (payloads included) of all pending tasks together: large payloads are held
    # in the store (record.KEEP_PAYLOAD_BYTES), the rest in memory.
    max_queue_bytes: int = 1024**3
    max_payload_bytes: int = 4 * 1024 * 1024
    default_timeout_ms: int = 3_600_000
    default_max_retries: int = 3
    retry_base_s: float = 0.5
    retry_cap_s: float = 30.0
    # A task that keeps losing its worker may be what kills it: fail it after this many losses.
    max_worker_losses: int = 5
    # Per-kind placement policies and tenants' fair-share weights (default 1 each).
    kind_policies: tuple[tuple[str, str], ...] = ()
    tenant_weights: tuple[tuple[str, float], ...] = ()
    # Pending tasks a tenant may have before its submissions (only its) are refused; from the
    # --auth file's [tenant.NAME] max_pending.
    tenant_max_pending: tuple[tuple[str, int], ...] = ()
    # GPUs a tenant's placed tasks may hold together; past it its tasks stay pending while other
    # tenants' are placed. From the --auth file's [tenant.NAME] max_running_gpus.
    tenant_max_running_gpus: tuple[tuple[str, int], ...] = ()
    # Bytes of specs a tenant's pending tasks may hold ([tenant.NAME] max_pending_bytes).
    tenant_max_pending_bytes: tuple[tuple[str, int], ...] = ()
    # Tasks per second a tenant may submit (token bucket, burst 2 s of it); past it
    # RESOURCE_EXHAUSTED says how long to wait. From [tenant.NAME] submit_rate.
    tenant_submit_rates: tuple[tuple[str, float], ...] = ()
    # Open WatchTasks streams one principal may hold (each event is offered to every watch);
    # 0 = no cap.
    max_watchers: int = 64
    # A Workers.Connect stream must send its Register within this long, and at most
    # max_unregistered streams may be waiting to (the rest are refused), so streams that never
    # register hold nothing for long.
    register_timeout_s: float = 30.0
    max_unregistered: int = 1024
    # The core's queue and placement, heartbeat timeout included.
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    # Finished tasks (their results too) are deleted this long after they end; 0 keeps them
    # forever. Idempotency keys are remembered as long as their task.
    keep_finished_s: float = 7 * 24 * 3600.0
    # Agents must present this token on Connect (GPUCP_AGENT_TOKEN); "" takes any agent.
    agent_token: str = ""
    # The principals file (controlplane.auth); "" = none: every caller is an anonymous admin, so
    # the server listens on loopback only unless `insecure` says otherwise.
    auth: str = ""
    insecure: bool = False
    # TLS: the server's certificate and key (PEM files); with a client CA, clients must present a
    # certificate it signed (mTLS). "" = plaintext.
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    # An autoscaler config file (TOML or JSON): RunPod pools scaled from the queue; "" = none.
    autoscale: str = ""
    # Each worker's prefetch depth tuned to the runtimes of the queued work (controlplane.prefetch);
    # False: every worker's is scheduler.prefetch_depth (`gpucp serve --prefetch-depth N`).
    adaptive_prefetch: bool = True

    # A worker whose stream closed keeps its tasks this long, waiting for it to reconnect;
    # None means one heartbeat interval, so its tasks run elsewhere within two intervals.
    reconnect_grace_s: float | None = None
    # A pending task that no connected worker could ever run fails after this long.
    queue_timeout_s: float = 3600.0
    # Reputation: this many failures, within the window, of tasks that then succeeded elsewhere
    # quarantine a worker for the cooling period (doubling on each relapse, up to the cap).
    quarantine_after: int = 3
    blame_window_s: float = 600.0
    quarantine_cooling_s: float = 60.0
    quarantine_max_cooling_s: float = 3600.0

    # The two scheduler settings the server acts on itself, read from the one place they live.
    @property
    def heartbeat_timeout_s(self) -> float:
        return self.scheduler.heartbeat_timeout_ms / 1000

    @property
    def prefetch_depth(self) -> int:
        return self.scheduler.prefetch_depth

    @property
    def prefetching(self) -> bool:
        """Whether workers may hold prefetched tasks (and idle ones steal them)."""
        return self.adaptive_prefetch or self.prefetch_depth > 0

    @property
    def heartbeat_interval_ms(self) -> int:
        # Two heartbeats per timeout: heartbeats ride a reliable stream, so they stop only
        # when the agent or its network does, and a silent agent is found within two intervals.
        return max(50, int(self.heartbeat_timeout_s * 1000 / 2))

    @property
    def grace_s(self) -> float:
        if self.reconnect_grace_s is None:
            return self.heartbeat_interval_ms / 1000
        return self.reconnect_grace_s
