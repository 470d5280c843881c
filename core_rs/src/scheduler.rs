//! The `Scheduler` engine: ties the queue, the worker table, placement and deadlines together
//! and keeps them consistent. Decisions only: the caller owns the clock and all I/O.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::deadlines::{Deadline, Deadlines};
use crate::error::{invalid, unknown, CoreResult};
use crate::explain;
use crate::id_hash::{IdHashMap, IdHashSet};
use crate::placement::{PlacementIndex, Weights};
use crate::queue::{PendingQueue, PendingTask};
use crate::shapes::{Shape, ShapeSpec, ShapeTable};
use crate::workers::{GpuSpec, Worker, WorkerTable};
use crate::{ShapeId, TaskId, WorkerId, PRIORITY_CLASSES};

/// Construction parameters (the Python constructor's keyword arguments).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SchedulerConfig {
    pub heartbeat_timeout_ms: u64,
    pub w_availability: f64,
    pub w_success: f64,
    pub w_speed: f64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            heartbeat_timeout_ms: 10_000,
            w_availability: 0.5,
            w_success: 0.3,
            w_speed: 0.2,
        }
    }
}

/// One decision of `place`: run `task` on `worker` using these GPU indices (sorted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub task: TaskId,
    pub worker: WorkerId,
    pub gpus: Vec<u32>,
}

/// What `worker_stats` reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorkerStats {
    pub slots: u32,
    pub free_slots: u32,
    pub success_rate: f64,
    pub speed: f64,
    pub succeeded: u64,
    pub failed: u64,
}

/// A task the core has placed (or that was attached) and still tracks.
#[derive(Debug, Clone)]
struct Placed {
    worker: WorkerId,
    gpus: Vec<u32>,
    shape: ShapeId,
    /// Generation of the task's timeout entry in the deadline heap.
    generation: u64,
}

/// One entry per shape in a placement round's heap: the shape's best pending task, ordered as
/// the queue orders tasks (priority desc, seq asc, task asc) so the round is globally ordered.
type HeadKey = (u8, Reverse<u64>, Reverse<TaskId>, Reverse<ShapeId>);

#[derive(Debug)]
pub struct Scheduler {
    heartbeat_timeout_ms: u64,
    shapes: ShapeTable,
    queue: PendingQueue,
    workers: WorkerTable,
    placement: PlacementIndex,
    placed: IdHashMap<TaskId, Placed>,
    deadlines: Deadlines,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig) -> CoreResult<Scheduler> {
        let weights = Weights::new(config.w_availability, config.w_success, config.w_speed)?;
        Ok(Scheduler {
            heartbeat_timeout_ms: config.heartbeat_timeout_ms,
            shapes: ShapeTable::default(),
            queue: PendingQueue::default(),
            workers: WorkerTable::default(),
            placement: PlacementIndex::new(weights),
            placed: IdHashMap::default(),
            deadlines: Deadlines::default(),
        })
    }

    // -- shapes

    /// Intern a requirement shape (the same normalised inputs give the same id).
    pub fn shape(&mut self, spec: ShapeSpec) -> CoreResult<ShapeId> {
        self.shapes.intern(spec)
    }

    // -- the queue

    /// Queue a task. Order: higher priority first, then lower seq. timeout_ms 0 = none.
    pub fn push(
        &mut self,
        task: TaskId,
        shape: ShapeId,
        priority: u8,
        seq: u64,
        timeout_ms: u64,
    ) -> CoreResult<()> {
        self.check_push(task, shape)?;
        self.queue.push(
            task,
            PendingTask {
                shape,
                priority,
                seq,
                timeout_ms,
            },
        )
    }

    /// push() for many tasks; all or nothing: a bad entry leaves the queue untouched.
    pub fn push_many(&mut self, tasks: &[(TaskId, ShapeId, u8, u64, u64)]) -> CoreResult<()> {
        let mut seen = IdHashSet::default();
        for &(task, shape, priority, _, _) in tasks {
            self.check_push(task, shape)?;
            PendingQueue::check_priority(priority)?;
            if self.queue.contains(task) || !seen.insert(task) {
                return Err(invalid(format!("task {task} is already pending")));
            }
        }
        for &(task, shape, priority, seq, timeout_ms) in tasks {
            self.queue.push(
                task,
                PendingTask {
                    shape,
                    priority,
                    seq,
                    timeout_ms,
                },
            )?;
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
        let worker = Worker::new(slots, gpus, backend, labels, kinds)?;
        let id = self.workers.add(worker);
        let worker = self.workers.get_mut(id)?;
        self.placement.worker_added(id, worker, &self.shapes);
        self.arm_heartbeat(id, now_ms)?;
        Ok(id)
    }

    /// Forget a worker; returns the tasks that were placed on it (no longer tracked).
    pub fn remove_worker(&mut self, id: WorkerId) -> CoreResult<Vec<TaskId>> {
        let worker = self.workers.remove(id)?;
        self.placement.worker_removed(id, &worker);
        for task in &worker.tasks {
            self.placed.remove(task);
        }
        Ok(worker.tasks)
    }

    /// Push the worker's liveness deadline to now_ms + heartbeat_timeout_ms.
    pub fn heartbeat(&mut self, id: WorkerId, now_ms: u64) -> CoreResult<()> {
        self.arm_heartbeat(id, now_ms)
    }

    fn arm_heartbeat(&mut self, id: WorkerId, now_ms: u64) -> CoreResult<()> {
        let generation = self.deadlines.next_generation();
        self.workers.get_mut(id)?.heartbeat_gen = generation;
        let at = now_ms.saturating_add(self.heartbeat_timeout_ms);
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
        self.placement.refresh(id, self.workers.get_mut(id)?);
        Ok(())
    }

    pub fn worker_stats(&self, id: WorkerId) -> CoreResult<WorkerStats> {
        let w = self.workers.get(id)?;
        Ok(WorkerStats {
            slots: w.slots,
            free_slots: w.free_slots,
            success_rate: w.success_rate,
            speed: w.speed,
            succeeded: w.succeeded,
            failed: w.failed,
        })
    }

    /// Live workers.
    pub fn workers(&self) -> usize {
        self.workers.live()
    }

    /// (total, free) slots over live, non-draining workers.
    pub fn slots(&self) -> (u64, u64) {
        self.workers.slots()
    }

    // -- placement

    /// Place up to `max_tasks` pending tasks, best first.
    ///
    /// Each step takes the globally best pending task across shapes (a heap of shape heads) and
    /// gives it to the best eligible worker. A shape with no eligible worker is dropped for the
    /// rest of the round: capacity only shrinks within a round, so none of its tasks could be
    /// placed either. Cost per placement: O(log S) for the heads heap, O(log n) in the queue,
    /// the shape's best-worker lookup and the winner's re-ranking (see `placement`).
    pub fn place(&mut self, now_ms: u64, max_tasks: usize) -> Vec<Placement> {
        let mut placements = Vec::new();
        let mut heads: BinaryHeap<HeadKey> = self
            .queue
            .active_shapes()
            .filter_map(|s| self.queue.head(s).map(|k| head_key(s, k)))
            .collect();
        while placements.len() < max_tasks && self.workers.slots().1 > 0 {
            let Some((_, _, Reverse(task), Reverse(sid))) = heads.pop() else {
                break;
            };
            let shape = self
                .shapes
                .get(sid)
                .expect("queued tasks have interned shapes");
            let Some((worker, gpus)) = self
                .placement
                .index(sid, shape, &mut self.workers)
                .best(shape, &self.workers)
            else {
                continue;
            };
            let pending = self.queue.remove(task).expect("a shape head is pending");
            self.commit(task, worker, gpus.clone(), sid, pending.timeout_ms, now_ms)
                .expect("the chosen worker is live");
            placements.push(Placement { task, worker, gpus });
            if let Some(k) = self.queue.head(sid) {
                heads.push(head_key(sid, k));
            }
        }
        placements
    }

    /// Track `task` on `worker`: take the slot and GPUs, arm the timeout, re-rank the worker.
    fn commit(
        &mut self,
        task: TaskId,
        worker: WorkerId,
        gpus: Vec<u32>,
        shape: ShapeId,
        timeout_ms: u64,
        now_ms: u64,
    ) -> CoreResult<()> {
        self.workers.occupy(worker, task, &gpus)?;
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
                generation,
            },
        );
        // After the insert, so the entry just pushed counts as current.
        self.compact_deadlines();
        self.placement
            .refresh(worker, self.workers.get_mut(worker)?);
        Ok(())
    }

    /// Record a task already running on a worker (re-attached after a reconnect or restart).
    pub fn attach(
        &mut self,
        task: TaskId,
        worker: WorkerId,
        gpu_indices: &[u32],
        shape: ShapeId,
        timeout_ms: u64,
        now_ms: u64,
    ) -> CoreResult<()> {
        self.shapes.get(shape)?;
        let w = self.workers.get(worker)?;
        if self.placed.contains_key(&task) {
            return Err(invalid(format!("task {task} is already placed")));
        }
        if w.free_slots == 0 {
            return Err(invalid(format!(
                "worker {worker} has no free slot for task {task}"
            )));
        }
        let mut gpus = gpu_indices.to_vec();
        gpus.sort_unstable();
        for (i, &g) in gpus.iter().enumerate() {
            match w.gpus.get(g as usize) {
                None => {
                    return Err(invalid(format!(
                        "worker {worker} has no GPU {g} ({} GPUs)",
                        w.gpus.len()
                    )))
                }
                Some(gpu) if gpu.busy || (i > 0 && gpus[i - 1] == g) => {
                    return Err(invalid(format!(
                        "GPU {g} of worker {worker} is already taken"
                    )))
                }
                Some(_) => {}
            }
        }
        self.queue.remove(task);
        self.commit(task, worker, gpus, shape, timeout_ms, now_ms)
    }

    /// A placed task ended: free its slot and GPUs, learn from it; returns its worker.
    pub fn finish(
        &mut self,
        task: TaskId,
        succeeded: bool,
        runtime_ms: u64,
    ) -> CoreResult<WorkerId> {
        let placed = self.untrack(task)?;
        let kind = &self.shapes.get(placed.shape)?.kind;
        self.workers
            .learn(placed.worker, kind, succeeded, runtime_ms)?;
        self.placement
            .refresh(placed.worker, self.workers.get_mut(placed.worker)?);
        Ok(placed.worker)
    }

    /// A placed task left its worker without an outcome (cancelled, lost); returns the worker.
    pub fn release(&mut self, task: TaskId) -> CoreResult<WorkerId> {
        let placed = self.untrack(task)?;
        self.placement
            .refresh(placed.worker, self.workers.get_mut(placed.worker)?);
        Ok(placed.worker)
    }

    fn untrack(&mut self, task: TaskId) -> CoreResult<Placed> {
        let placed = self
            .placed
            .remove(&task)
            .ok_or_else(|| unknown(format!("task {task} is not placed")))?;
        self.workers.vacate(placed.worker, task, &placed.gpus)?;
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

    /// Why a pending task of this shape and priority is not running, in words.
    pub fn explain(&mut self, shape: ShapeId, priority: u8) -> CoreResult<String> {
        PendingQueue::check_priority(priority)?;
        let s: &Shape = self.shapes.get(shape)?;
        let index = self.placement.index(shape, s, &mut self.workers);
        if index.members.is_empty() {
            return Ok(explain::no_fit(s, &self.workers));
        }
        if index.best(s, &self.workers).is_some() {
            return Ok("waiting for placement".to_owned());
        }
        let draining = index
            .members
            .keys()
            .filter(|&&w| self.workers.get(w).is_ok_and(|w| w.draining))
            .count();
        Ok(explain::busy(
            index.members.len(),
            draining,
            self.queue.queued_above(priority),
        ))
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

fn head_key(shape: ShapeId, (Reverse(priority), seq, task): crate::queue::QueueKey) -> HeadKey {
    (priority, Reverse(seq), Reverse(task), Reverse(shape))
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
