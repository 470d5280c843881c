//! The tasks the core has placed: recording a placement or a re-attached task, the agent's start,
//! and the end of a task, which frees its slot and GPUs.

use super::Scheduler;
use crate::deadlines::Deadline;
use crate::error::{invalid, unknown, CoreResult};
use crate::filters::Gpus;
use crate::learning::KindId;
use crate::placed::Placed;
use crate::{ShapeId, TaskId, WorkerId};

/// What `commit` records about a task besides where it goes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Facts {
    pub(super) shape: ShapeId,
    pub(super) kind: KindId,
    pub(super) timeout_ms: u64,
    pub(super) affinity: u64,
    pub(super) hard_affinity: bool,
}

impl Scheduler {
    /// Track `task` on `worker`: hold the task and its GPUs, arm the timeout, re-rank the worker.
    pub(super) fn commit(
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
        let share = self.shapes.get(shape)?.share;
        self.workers.occupy(worker, task, &gpus, share, started)?;
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
                share,
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
        let share = self.shapes.get(shape)?.share;
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
        if !share.is_whole() && gpus.len() != 1 {
            return Err(invalid(format!(
                "task {task} has a share of one GPU, but {} GPUs were named",
                gpus.len()
            )));
        }
        for (i, &g) in gpus.iter().enumerate() {
            match w.gpus.get(g as usize) {
                None => {
                    return Err(invalid(format!(
                        "worker {worker} has no GPU {g} ({} GPUs)",
                        w.gpus.len()
                    )))
                }
                Some(gpu)
                    if (i > 0 && gpus[i - 1] == g)
                        || if share.is_whole() {
                            gpu.running || gpu.holders > w.prefetch_depth || gpu.milli > 0
                        } else {
                            !share.fits(gpu)
                        } =>
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
        let kind = (self.workers.learning).kind_id(&self.shapes.get(shape)?.learned_as);
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
        // Shares run side by side on their GPU; a GPU with shares is never given whole.
        let whole = placed.share.is_whole();
        if let Some(&g) = placed
            .gpus
            .iter()
            .find(|&&g| whole && w.gpus[g as usize].running)
        {
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
                w.gpus[g as usize].running = whole;
            }
        })?;
        self.placement.changed(worker, &self.workers);
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
            .kind_id(&self.shapes.get(placed.shape)?.learned_as);
        let first = self.workers.learning.fleet_ms(kind).is_none();
        self.workers
            .learn(placed.worker, kind, placed.start, succeeded, runtime_ms)?;
        if first && self.workers.learning.fleet_ms(kind).is_some() {
            // The kind's first run: kept reservations were timed without it.
            self.placement.forget_plans();
        }
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
        self.queue.discharge(task);
        self.workers.vacate(
            placed.worker,
            task,
            &placed.gpus,
            placed.share,
            placed.started,
        )?;
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
}
