//! A placement round: the queue's tasks in fair order, each given to the best worker for its
//! shape, with delay scheduling for warm workers and reservations for multi-GPU tasks.

use super::tracking::Facts;
use super::{Placement, Scheduler};
use crate::backfill::{Forecast, Refusals};
use crate::decisions::{weighs_inputs, Decision, Snapshot};
use crate::filters::Gpus;
use crate::learning::KindId;
use crate::policy::Context;
use crate::queue::{PendingQueue, PendingTask};
use crate::shape_index::{Choice, Need, Pick};
use crate::{ShapeId, TaskId, WorkerId};

impl Scheduler {
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
    /// locality wait (see [`super::SchedulerConfig::locality_wait_ms`]), counted from the
    /// first round that passed it over; the free workers meanwhile go to the tasks behind it in
    /// fair order, which includes the tasks warm on them. Its (tenant, class, shape) queue waits
    /// with it, so FIFO inside a flow holds; other flows go on. After the wait it takes any
    /// worker, so no task starves. `next_locality_ms` says when the earliest wait ends.
    ///
    /// Reservations (see `backfill`): the first task in fair order of a shape that needs several
    /// GPUs at once and finds no worker reserves, for the rest of the round, the worker whose
    /// GPUs are predicted to free soonest; a task placed after it uses those GPUs only if it is
    /// predicted to finish before they are all free. A multi-GPU task placed but not started
    /// holds its GPUs the same way against the tasks placed after it.
    ///
    /// Cost per placement: O(log n) in the queue, the shape's best-worker lookup and the
    /// winner's re-ranking (see `placement`); a waiting task costs O(log n) to hold plus a
    /// look at its key's warm capacity; a worker with holds costs O(T_w) more to check, and a
    /// round hold O(M_s T_w) to plan, once per shape per round (see `backfill`).
    pub fn place(&mut self, now_ms: u64, max_tasks: usize) -> Vec<Placement> {
        self.observe_clock(now_ms);
        self.queue.promote(now_ms);
        self.locality_until = None;
        // The last round's holds are replaced and its set-aside state is empty: both buffers
        // are reused, so a round allocates nothing for them.
        let mut holds = std::mem::take(&mut self.holds);
        holds.clear();
        // No round places more than it may, than are queued, or than the fleet can take: sized
        // once, the list is never copied as it grows (a batch of 20,000 was, fifteen times).
        let bound = usize::try_from(self.workers.free_capacity()).unwrap_or(usize::MAX);
        let mut placements = Vec::with_capacity(max_tasks.min(self.queue.len()).min(bound));
        let refused = Refusals::default();
        while placements.len() < max_tasks && self.workers.free_capacity() > 0 {
            let Some((task, pending)) = self.queue.next(&mut self.round) else {
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
                refused: &refused,
            };
            let share = shape.share;
            let admit = |id: WorkerId, qualifying: &[u32], gpus: Gpus| {
                forecast.admit(
                    id,
                    &holds,
                    (sid, kind, pending.affinity),
                    share,
                    qualifying,
                    gpus,
                )
            };
            match index.best_for(shape, &self.workers, &weights, need, &admit) {
                Pick::Worker(choice) => {
                    let wait = choice
                        .warm_busy
                        .then(|| self.locality_deadline(task, &pending, kind, now_ms))
                        .flatten();
                    if let Some(until) = wait {
                        self.queue.hold(&mut self.round, task, now_ms);
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
                        let index = self.placement.built_mut(sid).expect("just built");
                        holds.extend(forecast.plan_kept(sid, index, &holds));
                    }
                    PendingQueue::shape_dead(&mut self.round, sid);
                }
                Pick::NoneForTask => self.queue.set_aside(&mut self.round, task),
            }
        }
        self.queue.end_round(&mut self.round);
        self.holds = holds;
        placements
    }

    /// How long a task of `kind` may wait for a warm worker: the configured bound, or the
    /// learned cost of a cold start if that is less.
    pub(super) fn locality_wait_ms(&self, kind: KindId) -> u64 {
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
        let weighed = weighs_inputs(index.policy);
        let snapshot = |id: WorkerId, warm: bool| {
            let inputs = weighed.then(|| {
                let w = self.workers.get(id).expect("candidates are live");
                let fit = index.member(id).map_or(0.0, |m| m.fit);
                ctx.inputs(w, fit)
            });
            Snapshot {
                worker: id,
                inputs,
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
}
