//! Work stealing, core side: moves of prefetched tasks to idle workers.

use super::Scheduler;
use crate::filters::choose_gpus;
use crate::learning::Start;
use crate::{TaskId, WorkerId};

impl Scheduler {
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
                                || self.workers.get(t).is_ok_and(|w| {
                                    choose_gpus(w, &m.gpus, shape.gpus, shape.share, None).is_some()
                                })
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
}
