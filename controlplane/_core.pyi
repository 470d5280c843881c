"""Placement core of gpucp (Rust, PyO3): the queue, the worker table, placement and deadlines.

Every identifier crossing this boundary is an integer handle chosen by the caller (tasks) or by
the core (workers). The core makes decisions only; it never does I/O.

Priorities are 0..3 = LOW, NORMAL, HIGH, URGENT. Times are milliseconds on the caller's clock.
"""

from collections.abc import Iterator
from typing import final

from controlplane.config import SchedulerConfig

__version__: str

class CoreError(Exception):
    """Base class of every error the core raises."""

class UnknownHandle(CoreError):
    """A task or worker handle the core does not know."""

class InvalidArgument(CoreError):
    """An argument outside its range (e.g. a priority above 3, a weight below 0)."""

@final
class Placements:
    """The placements of one Scheduler.place() call, in the order they were made: a read-only
    sequence of (task, worker, gpu_indices). It holds the core's own list; each placement becomes
    a tuple when read, so a batch costs Python one object until it is read."""

    def __len__(self) -> int: ...
    def __getitem__(self, index: int, /) -> tuple[int, int, tuple[int, ...]]: ...
    def __iter__(self) -> Iterator[tuple[int, int, tuple[int, ...]]]: ...

@final
class WorkerStats:
    """What the core knows about one worker (Scheduler.worker_stats); read-only."""

    @property
    def slots(self) -> int:
        """Slots it registered with."""
    @property
    def free_slots(self) -> int:
        """Slots with no task placed."""
    @property
    def success_rate(self) -> float:
        """Learned share of its tasks that succeed (an EWMA; 1.0 for a new worker)."""
    @property
    def speed(self) -> float:
        """Learned speed against the fleet over all kinds (1.0 = the fleet's average)."""
    @property
    def succeeded(self) -> int: ...
    @property
    def failed(self) -> int: ...
    @property
    def draining(self) -> bool: ...
    @property
    def quarantined(self) -> bool: ...
    @property
    def unhealthy_gpus(self) -> int:
        """GPUs marked unhealthy with set_gpu_healthy."""
    @property
    def held(self) -> int:
        """Tasks placed here, started or not."""
    @property
    def started(self) -> int:
        """Of those, the ones mark_started (or attach) reported running."""
    @property
    def prefetched(self) -> int:
        """Held but not started: queued on the agent, may be stolen."""
    @property
    def effective_slots(self) -> int:
        """Slots it may use now (fewer than slots while warming up)."""
    @property
    def cost_per_hour(self) -> float: ...

@final
class PlacementExplanation:
    """Why a placed task went where it went (Scheduler.explain_placement); read-only.

    Workers appear as handles: the caller words the sentence with their names.
    """

    @property
    def policy(self) -> str:
        """The policy that placed it (a constructor policy name)."""
    @property
    def kind(self) -> str:
        """The task's kind (performance compares speeds at it)."""
    @property
    def worker(self) -> int:
        """The winner."""
    @property
    def terms(self) -> list[tuple[str, float]]:
        """The winner's inputs to its ranking, by name, in the order the policy weighs them.

        composite: the weighted terms availability, success, speed, fit, cost, affinity (they sum
        to score); least_loaded: availability (share of its capacity free); performance: speed
        (against the fleet at the kind); cost: cost_per_hour, share (of the worker the task
        takes), speed; affinity: availability when no worker had the key warm, else none;
        round_robin and fragmentation: none.
        """
    @property
    def score(self) -> float | None:
        """What the policy ranked by: composite, the sum of the terms; least_loaded,
        availability; performance, speed; cost, $/h per unit of speed (lowest wins). None for
        round_robin, affinity and fragmentation, which do not rank by one number."""
    @property
    def warm(self) -> bool:
        """The task's affinity key was warm on the winner."""
    @property
    def affinity(self) -> int:
        """The task's affinity key handle (0 = none)."""
    @property
    def hard_affinity(self) -> bool: ...
    @property
    def runner_up(self) -> int | None:
        """The next best worker; None if no other worker could take the task."""
    @property
    def runner_up_score(self) -> float | None:
        """The runner-up's score (None with it, or where score is None)."""

@final
class PendingReason:
    """Why a pending task is not running (Scheduler.explain); read-only.

    A reserved worker appears as a handle: the caller words it with the worker's name.
    """

    @property
    def reason(self) -> str:
        """A sentence that names no worker: "waiting for placement" when a worker could take it
        now; else the requirement no connected worker meets, or why the workers that could run it
        cannot take it now (busy, draining, quarantined, too few healthy GPUs)."""
    @property
    def runtime_ms(self) -> float | None:
        """Once runtimes of its kind are learned or expected (and a worker that can run it takes work): what a
        task of its kind takes here."""
    @property
    def start_in_ms(self) -> float | None:
        """With runtime_ms: when it should start, the tasks ahead of it spread over the slots
        that could run it."""
    @property
    def no_estimate(self) -> bool:
        """It waits for busy workers, and nothing says how long its kind runs: no run of its kind
        and runtime class was learned, and no submitter gave expected_runtime_ms."""
    @property
    def reserved_worker(self) -> int | None:
        """The worker the last place() reserved for its shape (backfill); shorter tasks fill the
        gap until then."""
    @property
    def reserved_gpus(self) -> list[int]:
        """The GPUs reserved there (empty without a reservation)."""
    @property
    def reserved_free_in_ms(self) -> float | None:
        """When the reserved GPUs should be free; None without a reservation, or while a task on them
        has no estimate yet."""

@final
class Scheduler:
    def __new__(cls, config: SchedulerConfig | None = None) -> Scheduler:
        """A scheduler built from `config` (None: SchedulerConfig(), a sensible server).

        InvalidArgument names the first field out of range (a negative time, an unknown policy
        or priority_mode, priority_weights not four numbers > 0, a weight below 0).

        Queue order (see push): tenants share by weight (set_tenant_weight); within a tenant,
        priority_mode "strict" places a higher class before any lower class that a
        worker could take it instead of ("skip ahead"), and "shares" lets the classes share by
        priority_weights (LOW, NORMAL, HIGH, URGENT; with [1, 2, 3, 4] URGENT gets 4
        placements for every LOW one while both wait); FIFO by seq inside one tenant, class and
        shape. A task waiting aging_ms moves up one class per aging_ms (0 = never), which bounds
        a LOW task's wait in both modes. InvalidArgument for another priority_mode.

        policy (default for every kind; set_kind_policy overrides per kind): "fragmentation"
        (the default: a worker where the task's affinity key is warm, else the one where the task
        strands the fewest GPUs that the recent mix of queued shapes could use, each shape weighed
        by its share of the mix over the GPUs that can run it, so GPUs only a few shapes can use
        are kept for them; ties to the worker left with the fewest GPUs free), "round_robin" (the
        worker that got work least recently), "least_loaded" (largest share of capacity free: of
        its task places and of its GPUs, so a 4-GPU task loads a worker four times as much as a
        1-GPU task), "performance" (fastest learned speed at the task's kind), "affinity" (a
        worker where the task's affinity key is warm, else least loaded), "cost" (cheapest
        expected $ per task: cost_per_hour x predicted runtime), "composite" (weighted sum of
        availability w_*, success rate, speed at the kind, best fit, cheapness and a
        warm-affinity bonus). Best fit (w_fit) steers small tasks to workers with the least spare
        GPUs and GPU memory so big-memory workers stay free for big tasks.

        prefetch_depth: a worker may hold up to slots + prefetch_depth placed tasks; those
        beyond its slots are prefetched (queued by the agent) and may be stolen (see
        steal_candidates). warmup_successes: a new worker, or one leaving quarantine, gets 1
        slot, one more per success until full after this many successes (a failure while warming
        halves the progress); 0 = full slots at once. affinity_memory: affinity keys each worker
        remembers (its last tasks'). explain_memory: placements explain_placement remembers.

        locality_wait_ms (delay scheduling, policies affinity, fragmentation and composite): a task whose
        affinity key is warm only on busy workers declines cold free workers for up to this long
        (or the learned cost of a cold start of its kind, if less), counted from the first
        place() that passed it over; the free workers take the tasks behind it meanwhile, and
        its (tenant, class, shape) queue waits with it, so FIFO holds there. 0 = never wait.
        See next_locality_ms.
        """

    # -- shapes: a task's requirements plus its kind, interned once and reused by many tasks
    def shape(
        self,
        kind: str,
        gpus: int,
        min_gpu_memory_mb: int,
        gpu_models: list[str],
        backend: str,
        labels: list[str],
        min_compute_capability: float,
        *,
        gpu_milli: int = 0,
        gpu_memory_mb: int = 0,
        runtime_class: str = "",
    ) -> int:
        """Intern a requirement shape and return its id (the same inputs give the same id).

        gpu_milli: a share of one GPU, 1 to 999 thousandths (0 = whole GPUs; gpus is then 0 or
        1): shares on one GPU sum to at most 1000 and their gpu_memory_mb reservations fit its
        memory. ValueError for a share of 1000 or more, of several GPUs, or a memory reservation
        without a share. runtime_class: runtimes are learned per (kind, runtime class, GPU model).

        gpu_models: any of these; each matches a GPU whose name has its words, whole, in order,
        case-insensitively (words split on anything but letters and digits): "A100" matches
        "NVIDIA A100-SXM4-80GB" and "A100 80GB" matches "NVIDIA A100 80GB"; "A10" matches
        neither. An entry without letters or digits matches no GPU.
        """

    def expect_runtime(self, shape: int, ms: int) -> None:
        """Tasks of this shape are expected to take `ms` (0 = no estimate): runtime predictions of
        its kind and runtime class (backfill, reservations, the pending ETA) use the latest such
        estimate until a run is learned."""

    # -- the queue
    def push(
        self,
        task: int,
        shape: int,
        priority: int,
        seq: int,
        timeout_ms: int,
        *,
        avoid_worker: int | None = None,
        tenant: int = 0,
        affinity: int = 0,
        hard_affinity: bool = False,
        now_ms: int | None = None,
    ) -> None:
        """Queue a task. timeout_ms 0 = none.

        Order: weighted fair share between tenants, then priority classes (strict order or
        shares, see the constructor), FIFO by seq within one tenant, class and shape; aging lifts
        long waits.

        avoid_worker: the task is not placed on that worker while any other worker in
        the fleet passes the task's static filters (it waits for one of them); if the avoided
        worker is the only one that could ever run it, it may be used. For retries.
        tenant: interned tenant handle (0 = default). affinity: interned affinity key, e.g. a
        model (0 = none); soft by default (a bonus in composite, the rule in the affinity
        policy); hard_affinity=True: only workers where the key is warm while any such worker
        exists (else any). now_ms: enqueue time for aging (None = the latest clock the core saw).
        """
    def push_many(
        self,
        tasks: list[int],
        shapes: list[int],
        priorities: list[int],
        seqs: list[int],
        timeouts_ms: list[int],
        *,
        avoid_workers: list[int | None] | None = None,
        tenants: list[int] | None = None,
        affinities: list[int] | None = None,
        hard_affinities: list[bool] | None = None,
        now_ms: int | None = None,
    ) -> None:
        """push() for many tasks in one call; all or nothing. Optional lists match `tasks`
        (an avoid_workers entry may be None: that task avoids no worker)."""
    def remove(self, task: int) -> bool:
        """Drop a pending task from the queue; False if it was not pending."""
    def pending(self) -> int: ...
    def pending_by_priority(self) -> list[int]:
        """Queue depth for LOW, NORMAL, HIGH, URGENT."""

    # -- workers
    def add_worker(
        self,
        slots: int,
        gpus: list[tuple[int, float, str]],
        backend: str,
        labels: list[str],
        kinds: list[str],
        now_ms: int,
        *,
        cost_per_hour: float = 0.0,
    ) -> int:
        """Register a worker; gpus are (memory_total_mb, compute_capability, name) by index.

        Its first GPU's name is its GPU model for runtime prediction ("cpu" without GPUs).
        """
    def remove_worker(self, worker: int) -> list[int]:
        """Forget a worker; returns the tasks that were placed on it (no longer tracked)."""
    def heartbeat(self, worker: int, now_ms: int) -> None:
        """Push the worker's liveness deadline to now_ms + heartbeat_timeout_ms."""
    def set_draining(self, worker: int, draining: bool) -> None:
        """A draining worker keeps its tasks but receives no new ones."""
    def set_prefetch_depth(self, worker: int, depth: int) -> None:
        """Let one worker hold `depth` tasks beyond its slots (prefetched by its agent; the
        config's prefetch_depth is every new worker's). Tasks it holds beyond a lowered depth
        stay; it takes no more until under it. UnknownHandle for a worker not here."""
    def set_quarantined(self, worker: int, quarantined: bool) -> None:
        """Like draining (no new work, running tasks stay) but a separate flag.

        An operator's drain and the reputation quarantine never undo each other: the worker takes
        work again only when both are clear. A quarantined worker's slots leave slots().
        """
    def set_gpu_healthy(self, worker: int, gpu_index: int, healthy: bool) -> None:
        """Mark one GPU healthy or not. An unhealthy GPU is never given to a task (tasks already
        on it keep running); a worker whose GPUs are all unhealthy still runs CPU tasks."""
    def worker_stats(self, worker: int) -> WorkerStats:
        """Everything the core knows about a worker. UnknownHandle for a worker it does not know."""
    def set_tenant_weight(self, tenant: int, weight: float) -> None:
        """A tenant's share relative to other tenants (default 1; must be > 0)."""
    def set_tenant_max_gpus(self, tenant: int, max_gpus: int | None) -> None:
        """Cap the GPUs a tenant's placed tasks hold together (None = no cap). At its cap the
        tenant sits placement rounds out, its tasks queued, while other tenants are placed."""
    def tenant_gpus(self, tenant: int) -> tuple[int, int | None]:
        """(GPUs the tenant's placed tasks hold, its cap or None)."""
    def charge_tenant(self, task: int, tenant: int) -> None:
        """Count an attached task's GPUs against its tenant's cap (place() counts the tasks it
        places); once per task. UnknownHandle for a task that is not placed."""
    def set_kind_policy(self, kind: str, policy: str) -> None:
        """Place tasks of `kind` by `policy` (a constructor policy name) from now on."""
    def predict_runtime_ms(self, shape: int, worker: int) -> float | None:
        """Predicted runtime of a task of `shape` on `worker`: the EWMA for (kind, the worker's
        GPU model), else the kind's fleet EWMA over the worker's speed; None before any run."""
    def workers(self) -> int: ...
    def slots(self) -> tuple[int, int]:
        """(total, free) over live workers that take work (not draining, not quarantined)."""
    def gpu_allocation(self) -> tuple[int, int, int]:
        """GPUs given to placed tasks over live workers: (held whole, split among shares,
        thousandths the shares hold). Walks every GPU: for metrics, not per placement."""

    # -- placement
    def place(self, now_ms: int, max_tasks: int) -> Placements:
        """Place up to max_tasks queued tasks: (task, worker, gpu_indices) each, as Placements.
        Releases the GIL."""
    def attach(self, task: int, worker: int, gpu_indices: list[int], shape: int, timeout_ms: int, now_ms: int) -> None:
        """Record a task already running on a worker (re-attached after a reconnect or restart)."""
    def finish(self, task: int, succeeded: bool, runtime_ms: int) -> int:
        """A placed task ended: free its slot and GPUs, learn from it; returns its worker."""
    def release(self, task: int) -> int:
        """A placed task left its worker without an outcome (cancelled, lost, stolen); returns
        the worker."""
    def mark_started(self, task: int, now_ms: int | None = None) -> None:
        """The agent started a placed task (its RUNNING update); a repeat is a no-op.

        With now_ms the task's timeout counts from then: time queued on the agent does not.
        A worker never has more started tasks than slots: InvalidArgument if it would.
        Placed tasks not yet started are prefetched and may be stolen.
        """
    def steal_candidates(self, max: int) -> list[tuple[int, int, int]]:
        """(task, from_worker, to_worker) moves that let idle workers run prefetched work.

        For each worker holding more tasks than slots (most backlogged first), its not-started
        tasks, most recently placed first, each matched with a different worker that takes work,
        has a free slot and nothing queued, passes the task's filters and has its GPUs free.
        Never a started task; no task or to_worker twice. The core moves nothing: revoke the
        task from the agent (two-phase), then release(task) and push/attach it again.
        """
    def can_run(self, shape: int) -> bool:
        """Whether any connected worker passes the shape's static filters (kind, backend, labels,
        GPUs); False means no worker here could ever run it, however long it waits."""
    def explain(self, shape: int, priority: int) -> PendingReason:
        """Why a pending task of this shape and priority is not running (with an ETA once runtimes
        of its kind are known, and the worker reserved for it if any)."""
    def explain_placement(self, task: int) -> PlacementExplanation:
        """Why a placed task went where it went: the policy, the winner's score terms and the
        runner-up. UnknownHandle for tasks not placed by place() or older than the last
        explain_memory placements."""

    # -- deadlines
    def next_deadline_ms(self) -> int | None:
        """The earliest heartbeat or task deadline, or None when nothing is tracked."""
    def next_locality_ms(self) -> int | None:
        """When the earliest task the last place() left waiting for a warm worker stops waiting.

        None if place() left no task waiting. Placement is event-driven: if no other event
        triggers place() by then, call it at this time, or a free worker may stay idle while
        that task waits (see locality_wait_ms).
        """
    def expired(self, now_ms: int) -> tuple[list[int], list[int]]:
        """(workers whose heartbeats stopped, placed tasks past their timeout) as of now_ms.

        Each is reported once. Expired workers are not removed: call remove_worker().
        """
