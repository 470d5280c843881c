//! Why tasks are where they are: a placed task's decision, a pending task's reason to wait.

use super::Scheduler;
use crate::decisions::{Decision, Explanation};
use crate::error::{unknown, CoreResult};
use crate::explain::{self, PendingReason};
use crate::queue::PendingQueue;
use crate::shapes::Shape;
use crate::{ShapeId, TaskId};

impl Scheduler {
    /// Why a placed task went where it went: the policy, the winner's score terms and the
    /// runner-up. Kept for the last `explain_memory` placements.
    pub fn explain_placement(&self, task: TaskId) -> CoreResult<Explanation> {
        let shapes = &self.shapes;
        let weights = self.placement.weights();
        let explain =
            |d: &Decision| d.explain(shapes.get(d.shape).map_or("", |s| &s.kind), &weights);
        self.decisions.get(task).map(explain).ok_or_else(|| {
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

    /// Why a pending task of this shape and priority is not running.
    pub fn explain(&mut self, shape: ShapeId, priority: u8) -> CoreResult<PendingReason> {
        PendingQueue::check_priority(priority)?;
        let s: &Shape = self.shapes.get(shape)?;
        self.placement.index(shape, s, &mut self.workers);
        let weights = self.placement.weights();
        let index = self.placement.built_mut(shape).expect("just built");
        if index.is_empty() {
            return Ok(PendingReason::new(explain::no_fit(s, &self.workers)));
        }
        if index.best(s, &self.workers, &weights).is_some() {
            return Ok(PendingReason::new("waiting for placement"));
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
        let mut reason = PendingReason::new(explain::busy(index.len(), unavailable, ahead));
        if slots > 0 {
            match self.workers.learning.estimate_ms(index.kind) {
                Some(ms) => reason.eta = Some(explain::eta(ms, ahead, slots)),
                None => reason.no_estimate = true,
            }
        }
        reason.reservation =
            self.holds
                .iter()
                .find(|h| h.shape == shape)
                .map(|hold| explain::Reservation {
                    worker: hold.worker,
                    gpus: hold.gpus.to_vec(),
                    free_in_ms: hold
                        .estimated
                        .then(|| (hold.usable_ms - self.now_ms as f64).max(0.0)),
                });
        Ok(reason)
    }
}
