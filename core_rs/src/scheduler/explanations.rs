//! Why tasks are where they are: a placed task's decision, a pending task's reason to wait.

use super::Scheduler;
use crate::decisions::Decision;
use crate::error::{unknown, CoreResult};
use crate::explain;
use crate::queue::PendingQueue;
use crate::shapes::Shape;
use crate::{ShapeId, TaskId};

impl Scheduler {
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
}
