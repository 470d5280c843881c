//! The `Scheduler` engine: ties the queue, the worker table, placement and deadlines together
//! and keeps them consistent. Decisions only: the caller owns the clock and all I/O.

use crate::backfill::{Forecast, Hold};
use crate::deadlines::{Deadline, Deadlines};
use crate::decisions::{Decision, Decisions, Snapshot};
use crate::error::{invalid, unknown, CoreResult};
use crate::explain;
use crate::filters::{choose_gpus, Gpus};
use crate::id_hash::{IdHashMap, IdHashSet};
use crate::learning::{KindId, Start};
use crate::placed::Placed;
use crate::placement::PlacementIndex;
use crate::policy::{Context, Policy, Weights};
use crate::queue::{Fairness, PendingQueue, PendingTask, PriorityMode, Round, TenantId};
use crate::shape_index::{Choice, Need, Pick};
use crate::shapes::{Shape, ShapeSpec, ShapeTable};
use crate::workers::{GpuSpec, Worker, WorkerOptions, WorkerTable};
use crate::{ShapeId, TaskId, WorkerId, PRIORITY_CLASSES};

/// Construction parameters (the Python constructor's keyword arguments).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SchedulerConfig {
    pub heartbeat_timeout_ms: u64,
    pub w_availability: f64,
    pub w_success: f64,
    pub w_speed: f64,
    pub w_affinity: f64,
    pub w_fit: f64,
    pub w_cost: f64,
    /// The policy for every kind without its own (`set_kind_policy`).
    pub policy: Policy,
    /// Priority classes in strict order within a tenant, or sharing by `priority_weights`.
    pub priority_mode: PriorityMode,
    /// Shares of LOW, NORMAL, HIGH, URGENT (priority_mode shares).
    pub priority_weights: [f64; PRIORITY_CLASSES],
    /// A task waiting this long moves up one class (0 = never).
    pub aging_ms: u64,
    /// Tasks a worker may hold beyond its slots (the agent queues them).
    pub prefetch_depth: u32,
    /// Successes over which a new or recovered worker's slots ramp from 1 to full (0 = none).
    pub warmup_successes: u32,
    /// Affinity keys each worker remembers (its last tasks').
    pub affinity_memory: usize,
    /// Placement decisions kept for `explain_placement` (0 = none).
    pub explain_memory: usize,
    /// Delay scheduling (policies affinity and composite): the longest a task whose affinity
    /// key is warm only on busy workers declines cold ones, from the first time it was passed
    /// over. Capped further by the learned cost of a cold start for its kind, since waiting
    /// longer than the model load would take gains nothing. 0 = never wait.
    pub locality_wait_ms: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        let w = Weights::default();
        let f = Fairness::default();
        SchedulerConfig {
            heartbeat_timeout_ms: 10_000,
            w_availability: w.availability,
            w_success: w.success,
            w_speed: w.speed,
            w_affinity: w.affinity,
            w_fit: w.fit,
            w_cost: w.cost,
            policy: Policy::Composite,
            priority_mode: f.mode,
            priority_weights: f.class_weights,
            aging_ms: f.aging_ms,
            prefetch_depth: 0,
            warmup_successes: 0,
            affinity_memory: 4,
            explain_memory: 4096,
            locality_wait_ms: 3_000,
        }
    }
}

/// The optional facts of a queued task (keyword arguments in Python).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskOptions {
    /// Not placed on this worker while another worker could ever run the task's shape (so a
    /// retried task does not go back to the worker that just failed it).
    pub avoid_worker: Option<WorkerId>,
    pub tenant: TenantId,
    /// Interned affinity key (e.g. a model id); 0 = none.
    pub affinity: u64,
    /// Only workers where the key is warm, while any such worker exists.
    pub hard_affinity: bool,
    /// When it was queued; None = the latest clock the core has seen.
    pub enqueued_ms: Option<u64>,
}

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

impl WorkerStats {
    /// Name -> value, booleans as 0/1 (what `worker_info` returns to Python).
    pub fn to_map(&self) -> std::collections::HashMap<String, f64> {
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        [
            ("slots", f64::from(self.slots)),
            ("free_slots", f64::from(self.free_slots)),
            ("success_rate", self.success_rate),
            ("speed", self.speed),
            ("succeeded", self.succeeded as f64),
            ("failed", self.failed as f64),
            ("draining", flag(self.draining)),
            ("quarantined", flag(self.quarantined)),
            ("unhealthy_gpus", f64::from(self.unhealthy_gpus)),
            ("held", f64::from(self.held)),
            ("started", f64::from(self.started)),
            (
                "prefetched",
                f64::from(self.held.saturating_sub(self.started)),
            ),
            ("effective_slots", f64::from(self.effective_slots)),
            ("cost_per_hour", self.cost_per_hour),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
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
        })
    }

    fn observe_clock(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
    }

    // -- shapes

    /// Intern a requirement shape (the same normalised inputs give the same id).
    pub fn shape(&mut self, spec: ShapeSpec) -> CoreResult<ShapeId> {
        let id = self.shapes.intern(spec)?;
        let kind = &self.shapes.get(id)?.kind;
        self.workers.learning.kind_id(kind);
        Ok(id)
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
        self.queue.push(task, pending)
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
        for task in &worker.tasks {
            self.placed.remove(task);
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

    /// Predicted runtime of a task of `shape` on `worker`: the (kind, GPU model) EWMA, else the
    /// kind's fleet EWMA scaled by the worker's speed; None before any run of the kind.
    pub fn predict_runtime_ms(
        &mut self,
        shape: ShapeId,
        worker: WorkerId,
    ) -> CoreResult<Option<f64>> {
        let kind = self.workers.learning.kind_id(&self.shapes.get(shape)?.kind);
        let w = self.workers.get(worker)?;
        Ok(w.runtime_ms(kind, &self.workers.learning, Start::Warm))
    }

    // -- placement

    /// Place up to `max_tasks` pending tasks, best first.
    ///
    /// Each step takes the queue's next task (fair share order, see `queue`) and gives it to
    /// the best worker for its shape under the shape's policy. A shape with no worker free is
    /// dead for the rest of the round: capacity only shrinks within a round, so none of its
    /// tasks could be placed either; a task that cannot go anywhere for a reason of its own
    /// (avoid_worker, hard affinity) is set aside for the round.
    ///
    /// Delay scheduling (policies affinity and composite): a task whose affinity key is warm
    /// only on workers that cannot take it now declines the cold free ones for up to its
    /// locality wait (see [`SchedulerConfig::locality_wait_ms`]), counted from the first round
    /// that passed it over; the free workers meanwhile go to the tasks behind it in fair order,
    /// which includes the tasks warm on them. Its (tenant, class, shape) queue waits with it, so
    /// FIFO inside a flow holds; other flows go on. After the wait it takes any worker, so no
    /// task starves. `next_locality_ms` says when the earliest wait ends.
    ///
    /// Reservations (see `backfill`): the first task in fair order of a shape that needs several
    /// GPUs at once and finds no worker reserves, for the rest of the round, the worker whose
    /// GPUs are predicted to free soonest; a task placed after it uses those GPUs only if it is
    /// predicted to finish before they are all free. A multi-GPU task placed but not started
    /// holds its GPUs the same way against the tasks placed after it.
    ///
    /// Cost per placement: O(log n) in the queue, the shape's best-worker lookup and the
    /// winner's re-ranking (see `placement`); a waiting task costs O(log n) to hold plus a
    /// look at its key's warm capacity; a worker with holds costs O(T_w) more to check, and a round hold
    /// O(M_s T_w) to plan, once per shape per round (see `backfill`).
    pub fn place(&mut self, now_ms: u64, max_tasks: usize) -> Vec<Placement> {
        self.observe_clock(now_ms);
        self.queue.promote(now_ms);
        self.locality_until = None;
        let mut holds = Vec::new();
        let mut placements = Vec::new();
        let mut round = Round::default();
        while placements.len() < max_tasks && self.workers.free_capacity() > 0 {
            let Some((task, pending)) = self.queue.next(&mut round) else {
                break;
            };
            let sid = pending.shape;
            let shape = self
                .shapes
                .get(sid)
                .expect("queued tasks have interned shapes");
            self.placement.index(sid, shape, &mut self.workers);
            let need = Need {
                avoid: pending.avoid,
                affinity: pending.affinity,
                hard_affinity: pending.hard_affinity,
            };
            let weights = self.placement.weights();
            let index = self.placement.built_mut(sid).expect("just built");
            let kind = index.kind;
            let forecast = Forecast {
                placed: &self.placed,
                workers: &self.workers,
                now_ms,
            };
            let admit = |id: WorkerId, qualifying: &[u32], gpus: Gpus| {
                forecast.admit(id, &holds, (kind, pending.affinity), qualifying, gpus)
            };
            match index.best_for(shape, &self.workers, &weights, need, &admit) {
                Pick::Worker(choice) => {
                    let wait = choice
                        .warm_busy
                        .then(|| self.locality_deadline(task, &pending, kind, now_ms))
                        .flatten();
                    if let Some(until) = wait {
                        self.queue.hold(&mut round, task, now_ms);
                        self.locality_until =
                            Some(self.locality_until.map_or(until, |u| u.min(until)));
                        continue;
                    }
                    if self.decisions.enabled() {
                        let decision = self.decision(sid, &pending, &choice);
                        self.decisions.record(task, decision);
                    }
                    self.queue.take(task, choice.warm);
                    let worker = choice.worker;
                    let facts = Facts {
                        shape: sid,
                        kind,
                        timeout_ms: pending.timeout_ms,
                        affinity: pending.affinity,
                        hard_affinity: pending.hard_affinity,
                    };
                    self.commit(task, worker, choice.gpus.clone(), facts, now_ms, false)
                        .expect("the chosen worker is live");
                    placements.push(Placement {
                        task,
                        worker,
                        gpus: choice.gpus,
                    });
                }
                Pick::NoneForShape => {
                    if shape.gpus > 1 {
                        let index = self.placement.built(sid).expect("just built");
                        holds.extend(forecast.plan(sid, index, &holds));
                    }
                    PendingQueue::shape_dead(&mut round, sid);
                }
                Pick::NoneForTask => self.queue.set_aside(&mut round, task),
            }
        }
        self.queue.end_round(round);
        self.holds = holds;
        placements
    }

    /// How long a task of `kind` may wait for a warm worker: the configured bound, or the
    /// learned cost of a cold start if that is less.
    fn locality_wait_ms(&self, kind: KindId) -> u64 {
        let configured = self.config.locality_wait_ms;
        match self.workers.learning.load_ms(kind) {
            Some(load) => configured.min(load as u64),
            None => configured,
        }
    }

    /// Is waiting for a warm worker likely to start the task sooner than a cold start would
    /// finish loading its model? An earliest-finish-time comparison: the pending tasks with the
    /// key, one warm runtime each, spread over the slots where the key is warm, against the
    /// learned load cost (the configured wait while it is unknown). So a model in demand beyond
    /// its warm workers spreads to new ones, and a model with warm capacity to spare stays put.
    /// Before the kind's runtime is known nothing is worth waiting for: the work goes on.
    fn warm_is_sooner(&self, key: u64, kind: KindId) -> bool {
        let learning = &self.workers.learning;
        let Some(runtime) = learning.fleet_ms(kind) else {
            return false;
        };
        let load = learning
            .load_ms(kind)
            .unwrap_or(self.config.locality_wait_ms as f64);
        let slots = self.placement.warm.slots(key).max(1) as f64;
        let expected_wait = runtime * self.queue.with_affinity(key) as f64 / slots;
        expected_wait < load
    }

    /// Until when a pending task may still wait for a warm worker, or None if it may not (no
    /// affinity key, hard affinity, no wait configured, its queue is relaxed, or the warm
    /// workers are too busy to be worth waiting for). A queue whose wait ran out is relaxed
    /// here.
    fn locality_deadline(
        &mut self,
        task: TaskId,
        pending: &PendingTask,
        kind: KindId,
        now_ms: u64,
    ) -> Option<u64> {
        if pending.affinity == 0 || pending.hard_affinity {
            return None;
        }
        let wait = self.locality_wait_ms(kind);
        let locality = self.queue.locality(task);
        if wait == 0 || locality.relaxed || !self.warm_is_sooner(pending.affinity, kind) {
            return None;
        }
        let until = locality
            .waiting_since
            .unwrap_or(now_ms)
            .saturating_add(wait);
        if now_ms >= until {
            self.queue.relax(task);
            return None;
        }
        Some(until)
    }

    /// When the earliest task the last `place` left waiting for a warm worker stops waiting, or
    /// None. Placement is event-driven: if nothing else happens by then, call `place` at this
    /// time so a free worker does not stay idle while that task waits.
    pub fn next_locality_ms(&self) -> Option<u64> {
        self.locality_until
    }

    /// The score inputs explain_placement will weigh, taken before the placement changes the
    /// winner's load.
    fn decision(&self, sid: ShapeId, pending: &PendingTask, choice: &Choice) -> Decision {
        let index = self
            .placement
            .built(sid)
            .expect("placed shapes are indexed");
        let ctx: Context<'_> = self.placement.context(index, &self.workers.learning);
        let snapshot = |id: WorkerId, warm: bool| {
            let w = self.workers.get(id).expect("candidates are live");
            let fit = index.member(id).map_or(0.0, |m| m.fit);
            Snapshot {
                worker: id,
                inputs: ctx.inputs(w, fit),
                warm,
            }
        };
        let runner_warm = |id: WorkerId| {
            self.workers
                .get(id)
                .is_ok_and(|w| w.is_warm(pending.affinity))
        };
        Decision {
            policy: index.policy,
            shape: sid,
            affinity: pending.affinity,
            hard_affinity: pending.hard_affinity,
            winner: snapshot(choice.worker, choice.warm),
            runner_up: choice.runner_up.map(|id| snapshot(id, runner_warm(id))),
        }
    }

    /// Track `task` on `worker`: hold the task and its GPUs, arm the timeout, re-rank the worker.
    fn commit(
        &mut self,
        task: TaskId,
        worker: WorkerId,
        gpus: Gpus,
        facts: Facts,
        now_ms: u64,
        started: bool,
    ) -> CoreResult<()> {
        let Facts {
            shape,
            kind,
            timeout_ms,
            affinity,
            hard_affinity,
        } = facts;
        self.workers.occupy(worker, task, &gpus, started)?;
        self.tick += 1;
        let w = self.workers.get_mut(worker)?;
        w.last_tick = self.tick;
        if !started && gpus.len() > 1 {
            w.queued_gangs += 1;
        }
        let start = w.start_for(affinity);
        self.placement.touch(w, affinity);
        let generation = self.deadlines.next_generation();
        if timeout_ms > 0 {
            self.deadlines.push(
                now_ms.saturating_add(timeout_ms),
                Deadline::Task,
                task,
                generation,
            );
        }
        self.placed.insert(
            task,
            Placed {
                worker,
                gpus,
                shape,
                kind,
                generation,
                timeout_ms,
                started,
                started_ms: now_ms,
                affinity,
                hard_affinity,
                start,
                placed_ms: now_ms,
            },
        );
        // After the insert, so the entry just pushed counts as current.
        self.compact_deadlines();
        self.placement.lowered(worker, &mut self.workers, shape);
        Ok(())
    }

    /// Record a task already running on a worker (re-attached after a reconnect or restart).
    /// It counts as started.
    pub fn attach(
        &mut self,
        task: TaskId,
        worker: WorkerId,
        gpu_indices: &[u32],
        shape: ShapeId,
        timeout_ms: u64,
        now_ms: u64,
    ) -> CoreResult<()> {
        self.observe_clock(now_ms);
        self.shapes.get(shape)?;
        let w = self.workers.get(worker)?;
        if self.placed.contains_key(&task) {
            return Err(invalid(format!("task {task} is already placed")));
        }
        if w.started >= w.slots || w.held() >= w.slots + w.prefetch_depth {
            return Err(invalid(format!(
                "worker {worker} has no free slot for task {task}"
            )));
        }
        let mut gpus = Gpus::from_slice(gpu_indices);
        gpus.sort_unstable();
        for (i, &g) in gpus.iter().enumerate() {
            match w.gpus.get(g as usize) {
                None => {
                    return Err(invalid(format!(
                        "worker {worker} has no GPU {g} ({} GPUs)",
                        w.gpus.len()
                    )))
                }
                Some(gpu)
                    if gpu.running
                        || gpu.holders > w.prefetch_depth
                        || (i > 0 && gpus[i - 1] == g) =>
                {
                    return Err(invalid(format!(
                        "GPU {g} of worker {worker} is already taken"
                    )))
                }
                Some(_) => {}
            }
        }
        let (affinity, hard_affinity) = self
            .queue
            .get(task)
            .map_or((0, false), |p| (p.affinity, p.hard_affinity));
        self.queue.remove(task);
        let kind = self.workers.learning.kind_id(&self.shapes.get(shape)?.kind);
        let facts = Facts {
            shape,
            kind,
            timeout_ms,
            affinity,
            hard_affinity,
        };
        self.commit(task, worker, gpus, facts, now_ms, true)
    }

    /// The agent started a placed task (its RUNNING update). A worker never has more started
    /// tasks than slots, and two started tasks never share a GPU: such a start is refused.
    /// Starting twice is a no-op. With `now_ms`, the task's timeout counts from now_ms.
    pub fn mark_started(&mut self, task: TaskId, now_ms: Option<u64>) -> CoreResult<()> {
        let placed = self
            .placed
            .get(&task)
            .ok_or_else(|| unknown(format!("task {task} is not placed")))?;
        if placed.started {
            return Ok(());
        }
        let worker = placed.worker;
        let w = self.workers.get(worker)?;
        if w.started >= w.slots {
            return Err(invalid(format!(
                "worker {worker} already runs {} started tasks, its slot count",
                w.started
            )));
        }
        if let Some(&g) = placed.gpus.iter().find(|&&g| w.gpus[g as usize].running) {
            return Err(invalid(format!(
                "GPU {g} of worker {worker} still runs another task; start task {task} when it \
                 frees"
            )));
        }
        let gpus = placed.gpus.clone();
        self.workers.update(worker, |w| {
            w.started += 1;
            if gpus.len() > 1 {
                w.queued_gangs -= 1;
            }
            for g in gpus {
                w.gpus[g as usize].running = true;
            }
        })?;
        let placed = self.placed.get_mut(&task).expect("checked above");
        placed.started = true;
        placed.started_ms = now_ms.unwrap_or(self.now_ms);
        if let (Some(now_ms), true) = (now_ms, placed.timeout_ms > 0) {
            // The time limit is for running: time spent queued on the agent does not count.
            placed.generation = self.deadlines.next_generation();
            self.deadlines.push(
                now_ms.saturating_add(placed.timeout_ms),
                Deadline::Task,
                task,
                placed.generation,
            );
            self.compact_deadlines();
        }
        Ok(())
    }

    /// Whether the agent started a placed task; None if the task is not placed.
    pub fn is_started(&self, task: TaskId) -> Option<bool> {
        self.placed.get(&task).map(|p| p.started)
    }

    /// A placed task ended: free its slot and GPUs, learn from it; returns its worker.
    pub fn finish(
        &mut self,
        task: TaskId,
        succeeded: bool,
        runtime_ms: u64,
    ) -> CoreResult<WorkerId> {
        let placed = self.untrack(task)?;
        let kind = self
            .workers
            .learning
            .kind_id(&self.shapes.get(placed.shape)?.kind);
        self.workers
            .learn(placed.worker, kind, placed.start, succeeded, runtime_ms)?;
        self.placement.refresh(placed.worker, &mut self.workers);
        Ok(placed.worker)
    }

    /// A placed task left its worker without an outcome (cancelled, lost, stolen); returns the
    /// worker.
    pub fn release(&mut self, task: TaskId) -> CoreResult<WorkerId> {
        let placed = self.untrack(task)?;
        self.placement.refresh(placed.worker, &mut self.workers);
        Ok(placed.worker)
    }

    fn untrack(&mut self, task: TaskId) -> CoreResult<Placed> {
        let placed = self
            .placed
            .remove(&task)
            .ok_or_else(|| unknown(format!("task {task} is not placed")))?;
        self.workers
            .vacate(placed.worker, task, &placed.gpus, placed.started)?;
        if !placed.started && placed.gpus.len() > 1 {
            self.workers.get_mut(placed.worker)?.queued_gangs -= 1;
        }
        Ok(placed)
    }

    /// The worker a placed task runs on and its GPUs; None if the task is not placed.
    pub fn placement_of(&self, task: TaskId) -> Option<(WorkerId, &[u32])> {
        self.placed
            .get(&task)
            .map(|p| (p.worker, p.gpus.as_slice()))
    }

    /// Placed tasks tracked.
    pub fn placed(&self) -> usize {
        self.placed.len()
    }

    /// Work stealing, core side: (task, from_worker, to_worker) moves that would let idle
    /// workers run prefetched work now. For each worker holding more tasks than slots (most
    /// backlogged first), its not-started tasks, most recently placed first, each matched with
    /// a different worker that accepts work, has a free slot and nothing queued, passes the
    /// task's static filters and has its GPUs free. A thief where the task's affinity key is
    /// warm is preferred; a task whose key is warm on its victim goes to a cold thief only once
    /// it has waited there for its locality wait (never with hard affinity), so stealing does not
    /// trade a model already loaded for a load. Never a started task, never a task or a thief
    /// twice. The core moves nothing: the caller revokes the task from the agent, then calls
    /// `release` and queues or attaches it again. O(W) per call.
    pub fn steal_candidates(&self, max: usize) -> Vec<(TaskId, WorkerId, WorkerId)> {
        let mut out = Vec::new();
        if max == 0 {
            return out;
        }
        let mut victims: Vec<(u32, WorkerId)> = self
            .workers
            .iter()
            .filter_map(|(id, w)| {
                let backlog = w.held().saturating_sub(w.slots);
                (backlog > 0).then_some((backlog, id))
            })
            .collect();
        if victims.is_empty() {
            return out;
        }
        victims.sort_by_key(|&(b, id)| (std::cmp::Reverse(b), id));
        let mut thieves: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, w)| {
                w.accepting() && w.held() < w.effective_slots() && w.held() == w.started
            })
            .map(|(id, _)| id)
            .collect();
        for (backlog, victim) in victims {
            let Ok(v) = self.workers.get(victim) else {
                continue;
            };
            let mut left = backlog;
            for &task in v.tasks.iter().rev() {
                if left == 0 || out.len() >= max || thieves.is_empty() {
                    break;
                }
                let Some(p) = self.placed.get(&task) else {
                    continue;
                };
                if p.started {
                    continue;
                }
                let (Some(index), Ok(shape)) =
                    (self.placement.built(p.shape), self.shapes.get(p.shape))
                else {
                    continue;
                };
                let can_take = |t: WorkerId| {
                    t != victim
                        && index.member(t).is_some_and(|m| {
                            shape.gpus == 0
                                || self
                                    .workers
                                    .get(t)
                                    .is_ok_and(|w| choose_gpus(w, &m.gpus, shape.gpus).is_some())
                        })
                };
                let warm_on =
                    |t: WorkerId| self.workers.get(t).is_ok_and(|w| w.is_warm(p.affinity));
                let warm_here = p.affinity != 0 && p.start == Start::Warm;
                let waited = self.now_ms.saturating_sub(p.placed_ms);
                let may_go_cold =
                    !warm_here || (!p.hard_affinity && waited >= self.locality_wait_ms(index.kind));
                let thief = thieves
                    .iter()
                    .position(|&t| warm_on(t) && can_take(t))
                    .or_else(|| {
                        may_go_cold
                            .then(|| thieves.iter().position(|&t| can_take(t)))
                            .flatten()
                    });
                if let Some(i) = thief {
                    out.push((task, victim, thieves.swap_remove(i)));
                    left -= 1;
                }
            }
            if out.len() >= max || thieves.is_empty() {
                break;
            }
        }
        out
    }

    /// Why a placed task went where it went, in words: the policy, the winner's score terms and
    /// the runner-up. Kept for the last `explain_memory` placements.
    pub fn explain_placement(&self, task: TaskId) -> CoreResult<String> {
        let shapes = &self.shapes;
        let weights = self.placement.weights();
        let describe =
            |d: &Decision| d.describe(shapes.get(d.shape).map_or("", |s| &s.kind), &weights);
        self.decisions.get(task).map(describe).ok_or_else(|| {
            unknown(format!(
                "no placement decision is recorded for task {task} (not placed by place(), or \
                 older than the last {} placements)",
                self.config.explain_memory
            ))
        })
    }

    /// Whether any connected worker passes the shape's static filters (kind, backend, labels,
    /// qualifying GPUs): false means no worker here could ever run it, however long it waits.
    pub fn can_run(&mut self, shape: ShapeId) -> CoreResult<bool> {
        let s: &Shape = self.shapes.get(shape)?;
        self.placement.index(shape, s, &mut self.workers);
        Ok(!self.placement.built(shape).expect("just built").is_empty())
    }

    /// Why a pending task of this shape and priority is not running, in words.
    pub fn explain(&mut self, shape: ShapeId, priority: u8) -> CoreResult<String> {
        PendingQueue::check_priority(priority)?;
        let s: &Shape = self.shapes.get(shape)?;
        self.placement.index(shape, s, &mut self.workers);
        let weights = self.placement.weights();
        let index = self.placement.built_mut(shape).expect("just built");
        if index.is_empty() {
            return Ok(explain::no_fit(s, &self.workers));
        }
        if index.best(s, &self.workers, &weights).is_some() {
            return Ok("waiting for placement".to_owned());
        }
        let mut unavailable = explain::Unavailable::default();
        let mut slots = 0u64;
        for member in index.members() {
            let w = self.workers.get(member.id)?;
            if w.draining {
                unavailable.draining += 1;
            } else if w.quarantined {
                unavailable.quarantined += 1;
            } else if member
                .gpus
                .iter()
                .filter(|&&g| w.gpus[g as usize].healthy)
                .count()
                < s.gpus as usize
            {
                unavailable.unhealthy += 1;
            } else {
                slots += u64::from(w.effective_slots());
            }
        }
        let ahead = self.queue.queued_above(priority);
        let mut reason = explain::busy(index.len(), unavailable, ahead);
        if let (Some(ms), true) = (self.workers.learning.fleet_ms(index.kind), slots > 0) {
            reason.push_str(&explain::eta(&s.kind, ms, ahead, slots));
        }
        if let Some(hold) = self.holds.iter().find(|h| h.shape == shape) {
            let wait = hold.usable_ms - self.now_ms as f64;
            reason.push_str(&explain::reserved(hold.worker, &hold.gpus, wait));
        }
        Ok(reason)
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

/// What `commit` records about a task besides where it goes.
#[derive(Debug, Clone, Copy)]
struct Facts {
    shape: ShapeId,
    kind: KindId,
    timeout_ms: u64,
    affinity: u64,
    hard_affinity: bool,
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
