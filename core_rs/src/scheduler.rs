//! The `Scheduler` engine: ties the queue, the worker table, placement and deadlines together
//! and keeps them consistent. Decisions only: the caller owns the clock and all I/O.
//!
//! This module holds the engine's state, the queue and worker calls and the deadlines; its
//! submodules each own one part of the engine's work: `config` (what it is built with), `round`
//! (a placement round), `tracking` (placed tasks from placement to their end), `stealing`
//! (prefetched work for idle workers) and `explanations` (why a task is where it is).

mod config;
mod explanations;
mod round;
mod stealing;
mod tracking;

pub use config::{SchedulerConfig, TaskOptions};

use crate::backfill::Hold;
use crate::deadlines::{Deadline, Deadlines};
use crate::decisions::Decisions;
use crate::error::{invalid, CoreResult};
use crate::filters::Gpus;
use crate::id_hash::{IdHashMap, IdHashSet};
use crate::learning::Start;
use crate::placed::Placed;
use crate::placement::PlacementIndex;
use crate::policy::{Policy, Weights};
use crate::queue::{Fairness, PendingQueue, PendingTask, Round, TenantId};
use crate::shapes::{ShapeSpec, ShapeTable};
use crate::workers::{GpuSpec, Worker, WorkerOptions, WorkerTable};
use crate::{ShapeId, TaskId, WorkerId, PRIORITY_CLASSES};

/// One decision of `place`: run `task` on `worker` using these GPU indices (sorted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub task: TaskId,
    pub worker: WorkerId,
    pub gpus: Gpus,
}

/// What `worker_stats` reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorkerStats {
    pub slots: u32,
    /// Slots with no task placed.
    pub free_slots: u32,
    pub success_rate: f64,
    pub speed: f64,
    pub succeeded: u64,
    pub failed: u64,
    pub draining: bool,
    pub quarantined: bool,
    /// GPUs marked unhealthy with `set_gpu_healthy`.
    pub unhealthy_gpus: u32,
    /// Tasks placed here, started or not.
    pub held: u32,
    /// Of those, the ones `mark_started` (or `attach`) reported running.
    pub started: u32,
    /// Slots it may use now (fewer than `slots` while warming).
    pub effective_slots: u32,
    pub cost_per_hour: f64,
}

#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    shapes: ShapeTable,
    queue: PendingQueue,
    workers: WorkerTable,
    placement: PlacementIndex,
    placed: IdHashMap<TaskId, Placed>,
    deadlines: Deadlines,
    /// The latest clock value any call carried (enqueue time for aging when none is given).
    now_ms: u64,
    /// Placements made, for round-robin order.
    tick: u64,
    decisions: Decisions,
    /// When the earliest task the last `place` left waiting for a warm worker stops waiting.
    locality_until: Option<u64>,
    /// The reservations the last `place` made (see `backfill`), kept for `explain`.
    holds: Vec<Hold>,
    /// A placement round's set-aside state, kept empty between rounds for its capacity.
    round: Round,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig) -> CoreResult<Scheduler> {
        let weights = Weights {
            availability: config.w_availability,
            success: config.w_success,
            speed: config.w_speed,
            affinity: config.w_affinity,
            fit: config.w_fit,
            cost: config.w_cost,
        };
        let fairness = Fairness {
            mode: config.priority_mode,
            class_weights: config.priority_weights,
            aging_ms: config.aging_ms,
        };
        Ok(Scheduler {
            config,
            shapes: ShapeTable::default(),
            queue: PendingQueue::new(fairness)?,
            workers: WorkerTable::default(),
            placement: PlacementIndex::new(weights, config.policy, config.affinity_memory)?,
            placed: IdHashMap::default(),
            deadlines: Deadlines::default(),
            now_ms: 0,
            tick: 0,
            decisions: Decisions::new(config.explain_memory),
            locality_until: None,
            holds: Vec::new(),
            round: Round::default(),
        })
    }

    fn observe_clock(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
    }

    // -- shapes

    /// Intern a requirement shape (the same normalised inputs give the same id).
    pub fn shape(&mut self, spec: ShapeSpec) -> CoreResult<ShapeId> {
        let id = self.shapes.intern(spec)?;
        let kind = &self.shapes.get(id)?.learned_as;
        self.workers.learning.kind_id(kind);
        Ok(id)
    }

    /// A submitter expects tasks of `shape` to take `ms` (0 = no estimate): runtime predictions
    /// of its kind and runtime class (backfill, reservations, the pending ETA) use it until a
    /// run is learned.
    pub fn expect_runtime(&mut self, shape: ShapeId, ms: u64) -> CoreResult<()> {
        let learning = &mut self.workers.learning;
        let kind = learning.kind_id(&self.shapes.get(shape)?.learned_as);
        if learning.expect(kind, ms) {
            // Kept reservations were timed without it.
            self.placement.forget_plans();
        }
        Ok(())
    }

    // -- the queue

    /// Queue a task (tenant 0, no affinity). timeout_ms 0 = none. See `queue` for the order.
    pub fn push(
        &mut self,
        task: TaskId,
        shape: ShapeId,
        priority: u8,
        seq: u64,
        timeout_ms: u64,
    ) -> CoreResult<()> {
        self.push_with(
            task,
            shape,
            priority,
            seq,
            timeout_ms,
            TaskOptions::default(),
        )
    }

    /// push() with the optional facts of [`TaskOptions`].
    pub fn push_with(
        &mut self,
        task: TaskId,
        shape: ShapeId,
        priority: u8,
        seq: u64,
        timeout_ms: u64,
        options: TaskOptions,
    ) -> CoreResult<()> {
        self.check_push(task, shape)?;
        let pending = self.pending_task(shape, priority, seq, timeout_ms, options)?;
        self.queue.push(task, pending)?;
        self.demanded(shape);
        Ok(())
    }

    /// Fold a queued task of `shape` into the demand mix the fragmentation policy weighs.
    fn demanded(&mut self, shape: ShapeId) {
        let spec = self.shapes.get(shape).expect("pushed shapes are interned");
        self.placement.demanded(shape, spec, &mut self.workers);
    }

    fn pending_task(
        &self,
        shape: ShapeId,
        priority: u8,
        seq: u64,
        timeout_ms: u64,
        options: TaskOptions,
    ) -> CoreResult<PendingTask> {
        Ok(PendingTask {
            shape,
            priority,
            seq,
            timeout_ms,
            avoid: options.avoid_worker,
            tenant: options.tenant,
            affinity: options.affinity,
            hard_affinity: options.hard_affinity && options.affinity != 0,
            enqueued_ms: options.enqueued_ms.unwrap_or(self.now_ms),
            work: self.shapes.get(shape)?.gpus.max(1),
            gpus: self.shapes.get(shape)?.gpus,
        })
    }

    /// push() for many tasks; all or nothing: a bad entry leaves the queue untouched.
    pub fn push_many(&mut self, tasks: &[(TaskId, ShapeId, u8, u64, u64)]) -> CoreResult<()> {
        let with: Vec<_> = tasks
            .iter()
            .map(|&(t, s, p, q, o)| (t, s, p, q, o, TaskOptions::default()))
            .collect();
        self.push_many_with(&with)
    }

    /// push_many() with per-task [`TaskOptions`].
    pub fn push_many_with(
        &mut self,
        tasks: &[(TaskId, ShapeId, u8, u64, u64, TaskOptions)],
    ) -> CoreResult<()> {
        let mut seen = IdHashSet::default();
        for &(task, shape, priority, _, _, _) in tasks {
            self.check_push(task, shape)?;
            PendingQueue::check_priority(priority)?;
            if self.queue.contains(task) || !seen.insert(task) {
                return Err(invalid(format!("task {task} is already pending")));
            }
        }
        for &(task, shape, priority, seq, timeout_ms, options) in tasks {
            let pending = self.pending_task(shape, priority, seq, timeout_ms, options)?;
            self.queue.push(task, pending)?;
            self.demanded(shape);
        }
        Ok(())
    }

    fn check_push(&self, task: TaskId, shape: ShapeId) -> CoreResult<()> {
        self.shapes.get(shape)?;
        if self.placed.contains_key(&task) {
            return Err(invalid(format!("task {task} is already placed")));
        }
        Ok(())
    }

    /// Drop a pending task; false if it was not pending.
    pub fn remove(&mut self, task: TaskId) -> bool {
        self.queue.remove(task).is_some()
    }

    pub fn pending(&self) -> usize {
        self.queue.len()
    }

    /// Queue depth for LOW, NORMAL, HIGH, URGENT.
    pub fn pending_by_priority(&self) -> [u64; PRIORITY_CLASSES] {
        self.queue.by_priority()
    }

    pub fn is_pending(&self, task: TaskId) -> bool {
        self.queue.contains(task)
    }

    /// The class a pending task is in now: its priority, raised by aging.
    pub fn effective_priority(&self, task: TaskId) -> Option<u8> {
        self.queue.class_of(task)
    }

    /// A tenant's share relative to other tenants (default 1).
    pub fn set_tenant_weight(&mut self, tenant: TenantId, weight: f64) -> CoreResult<()> {
        self.queue.set_tenant_weight(tenant, weight)
    }

    /// Cap the GPUs a tenant's placed tasks hold together (None = no cap); see
    /// `PendingQueue::set_tenant_max_gpus`.
    pub fn set_tenant_max_gpus(&mut self, tenant: TenantId, max_gpus: Option<u32>) {
        self.queue.set_tenant_max_gpus(tenant, max_gpus);
    }

    /// (GPUs a tenant's placed tasks hold, its cap).
    pub fn tenant_gpus(&self, tenant: TenantId) -> (u32, Option<u32>) {
        self.queue.tenant_gpus(tenant)
    }

    /// Count a placed task's GPUs against `tenant`'s cap: for a task `attach`ed rather than
    /// placed, whose tenant the core did not know. Once per task; unknown tasks are refused.
    pub fn charge_tenant(&mut self, task: TaskId, tenant: TenantId) -> CoreResult<()> {
        let placed = self
            .placed
            .get(&task)
            .ok_or_else(|| crate::error::unknown(format!("task {task} is not placed")))?;
        self.queue.charge(task, tenant, placed.gpus.len() as u32);
        Ok(())
    }

    // -- workers

    /// Register a worker; `gpus` are given by index. Returns its new handle.
    pub fn add_worker(
        &mut self,
        slots: u32,
        gpus: Vec<GpuSpec>,
        backend: &str,
        labels: Vec<String>,
        kinds: Vec<String>,
        now_ms: u64,
    ) -> CoreResult<WorkerId> {
        self.add_worker_with(slots, gpus, backend, labels, kinds, now_ms, 0.0)
    }

    /// add_worker() with its price per hour (for the cost policy).
    #[allow(clippy::too_many_arguments)]
    pub fn add_worker_with(
        &mut self,
        slots: u32,
        gpus: Vec<GpuSpec>,
        backend: &str,
        labels: Vec<String>,
        kinds: Vec<String>,
        now_ms: u64,
        cost_per_hour: f64,
    ) -> CoreResult<WorkerId> {
        self.observe_clock(now_ms);
        let mut worker = Worker::new(slots, gpus, backend, labels, kinds)?;
        let options = WorkerOptions {
            cost_per_hour,
            prefetch_depth: self.config.prefetch_depth,
            warmup_successes: self.config.warmup_successes,
        };
        worker.configure(options, &mut self.workers.learning)?;
        let id = self.workers.add(worker);
        self.placement
            .worker_added(id, &mut self.workers, &self.shapes);
        self.arm_heartbeat(id, now_ms)?;
        Ok(id)
    }

    /// Forget a worker; returns the tasks that were placed on it (no longer tracked).
    pub fn remove_worker(&mut self, id: WorkerId) -> CoreResult<Vec<TaskId>> {
        let worker = self.workers.remove(id)?;
        self.placement.worker_removed(&worker);
        for &task in &worker.tasks {
            self.placed.remove(&task);
            self.queue.discharge(task);
        }
        Ok(worker.tasks)
    }

    /// Push the worker's liveness deadline to now_ms + heartbeat_timeout_ms.
    pub fn heartbeat(&mut self, id: WorkerId, now_ms: u64) -> CoreResult<()> {
        self.observe_clock(now_ms);
        self.arm_heartbeat(id, now_ms)
    }

    fn arm_heartbeat(&mut self, id: WorkerId, now_ms: u64) -> CoreResult<()> {
        let generation = self.deadlines.next_generation();
        self.workers.get_mut(id)?.heartbeat_gen = generation;
        let at = now_ms.saturating_add(self.config.heartbeat_timeout_ms);
        self.deadlines.push(at, Deadline::Worker, id, generation);
        self.compact_deadlines();
        Ok(())
    }

    /// Deadline entries go stale on every heartbeat and finish; keep the heap proportional to
    /// what is tracked.
    fn compact_deadlines(&mut self) {
        let tracked = self.workers.live() + self.placed.len();
        let (workers, placed) = (&self.workers, &self.placed);
        self.deadlines
            .compact_if_stale(tracked, is_current(workers, placed));
    }

    /// A draining worker keeps its tasks but receives no new ones.
    pub fn set_draining(&mut self, id: WorkerId, draining: bool) -> CoreResult<()> {
        self.workers.set_draining(id, draining)?;
        self.placement.refresh(id, &mut self.workers);
        Ok(())
    }

    /// Set one worker's prefetch depth (the config's prefetch_depth is every new worker's):
    /// the control plane tunes it to the runtimes of the work queued.
    pub fn set_prefetch_depth(&mut self, id: WorkerId, depth: u32) -> CoreResult<()> {
        self.workers.set_prefetch_depth(id, depth)?;
        self.placement.refresh(id, &mut self.workers);
        Ok(())
    }

    /// Like draining, but a separate flag: a quarantined worker keeps its tasks and receives no
    /// new ones until both flags are clear. Leaving quarantine restarts warming.
    pub fn set_quarantined(&mut self, id: WorkerId, quarantined: bool) -> CoreResult<()> {
        self.workers.set_quarantined(id, quarantined)?;
        self.placement.refresh(id, &mut self.workers);
        Ok(())
    }

    /// Mark one GPU of a worker healthy or not; an unhealthy GPU is never given to a task.
    pub fn set_gpu_healthy(&mut self, id: WorkerId, gpu: u32, healthy: bool) -> CoreResult<()> {
        let worker = self.workers.get_mut(id)?;
        let n = worker.gpus.len();
        let g = worker
            .gpus
            .get_mut(gpu as usize)
            .ok_or_else(|| invalid(format!("worker {id} has no GPU {gpu} ({n} GPUs)")))?;
        g.healthy = healthy;
        // Whether the worker has a shape's GPUs free depends on which are healthy.
        self.placement.refresh(id, &mut self.workers);
        Ok(())
    }

    /// Place tasks of `kind` by `policy` from now on (overrides the constructor's policy).
    pub fn set_kind_policy(&mut self, kind: &str, policy: Policy) {
        self.placement
            .set_kind_policy(kind, policy, &self.shapes, &self.workers);
    }

    pub fn worker_stats(&self, id: WorkerId) -> CoreResult<WorkerStats> {
        let w = self.workers.get(id)?;
        Ok(WorkerStats {
            slots: w.slots,
            free_slots: w.free_slots(),
            success_rate: w.success_rate,
            speed: w.speed,
            succeeded: w.succeeded,
            failed: w.failed,
            draining: w.draining,
            quarantined: w.quarantined,
            unhealthy_gpus: w.gpus.iter().filter(|g| !g.healthy).count() as u32,
            held: w.held(),
            started: w.started,
            effective_slots: w.effective_slots(),
            cost_per_hour: w.cost_per_hour,
        })
    }

    /// Live workers.
    pub fn workers(&self) -> usize {
        self.workers.live()
    }

    /// (total, free) slots over live workers that accept work (not draining, not quarantined).
    pub fn slots(&self) -> (u64, u64) {
        self.workers.slots()
    }

    /// GPUs given to placed tasks over live workers: (held whole, split among shares,
    /// thousandths the shares hold). O(W G): for metrics, not for every placement.
    pub fn gpu_allocation(&self) -> (u64, u64, u64) {
        let gpus = self.workers.iter().flat_map(|(_, w)| w.gpus.iter());
        gpus.fold((0, 0, 0), |(whole, split, milli), g| {
            (
                whole + u64::from(g.holders > 0),
                split + u64::from(g.milli > 0),
                milli + u64::from(g.milli),
            )
        })
    }

    /// Predicted runtime of a task of `shape` on `worker`: the (kind, GPU model) EWMA, else the
    /// kind's fleet EWMA scaled by the worker's speed; None before any run of the kind.
    pub fn predict_runtime_ms(
        &mut self,
        shape: ShapeId,
        worker: WorkerId,
    ) -> CoreResult<Option<f64>> {
        let kind = self
            .workers
            .learning
            .kind_id(&self.shapes.get(shape)?.learned_as);
        let w = self.workers.get(worker)?;
        Ok(w.runtime_ms(kind, &self.workers.learning, Start::Warm))
    }

    // -- deadlines

    /// The earliest heartbeat or task deadline not yet reported, or None.
    pub fn next_deadline_ms(&mut self) -> Option<u64> {
        let (workers, placed) = (&self.workers, &self.placed);
        self.deadlines.next(is_current(workers, placed))
    }

    /// (workers whose heartbeats stopped, placed tasks past their timeout) as of now_ms; each
    /// reported once. Nothing is removed.
    pub fn expired(&mut self, now_ms: u64) -> (Vec<WorkerId>, Vec<TaskId>) {
        self.observe_clock(now_ms);
        let (workers, placed) = (&self.workers, &self.placed);
        let mut lost = Vec::new();
        let mut timed_out = Vec::new();
        for (what, id) in self
            .deadlines
            .take_expired(now_ms, is_current(workers, placed))
        {
            match what {
                Deadline::Worker => lost.push(id),
                Deadline::Task => timed_out.push(id),
            }
        }
        (lost, timed_out)
    }
}

/// Is a deadline heap entry still the current one for its worker or task?
fn is_current<'a>(
    workers: &'a WorkerTable,
    placed: &'a IdHashMap<TaskId, Placed>,
) -> impl Fn(Deadline, u64, u64) -> bool + 'a {
    move |what, id, generation| match what {
        Deadline::Worker => workers.get(id).is_ok_and(|w| w.heartbeat_gen == generation),
        Deadline::Task => placed.get(&id).is_some_and(|p| p.generation == generation),
    }
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
