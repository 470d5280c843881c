//! Reservations with backfill (EASY backfilling) for tasks that need several GPUs at once.
//!
//! Greedy placement starves a task that needs n GPUs together: whenever one GPU of a worker that
//! could run it frees, a task that needs one GPU takes it, so its n GPUs are never free at the
//! same time. Two kinds of hold keep GPUs for such a task:
//! - a queued gang: the task placed on a worker but not started (prefetched behind the tasks that
//!   use its GPUs) holds those GPUs against every task placed after it;
//! - a round hold: when the first task of such a shape in fair order finds no worker with n GPUs
//!   it could take, [`Forecast::plan`] reserves the member whose n qualifying GPUs are predicted
//!   to be free together soonest, for the rest of the placement round. The next round plans
//!   again in its own fair order, so a reservation never goes ahead of a task that is ahead of it,
//!   and fair shares, aging and FIFO per flow keep deciding who goes first.
//!
//! A task placed later may still use held GPUs when it is predicted to finish before the hold
//! becomes usable (backfill), or when it needs all the GPUs of a queued gang, so it cannot start
//! before the gang (the next gang in line). Otherwise it gets other GPUs of the worker, or another
//! worker. A task that would only start after the hold is usable is refused too: it would be
//! ahead of the next multi-GPU task on those GPUs.
//!
//! Predictions come from learning (`Learning::runtime_ms`, a cold start counting its model load).
//! A running task that has run past its prediction is expected to run as much longer again as it
//! has overrun it (one of unknown runtime: as long again as it has run), so the gap a hold leaves
//! for backfill grows with the overrun: a bad prediction keeps GPUs idle for at most about as long
//! as it was wrong by, which bounds how long a hold can idle a worker. A task whose runtime is
//! unknown is never backfilled onto held GPUs.
//!
//! Cost: a counter check and a scan of the round's holds (at most one per multi-GPU shape) for a
//! worker without holds, which is every worker on the common path. For a worker with holds, O(T_w)
//! per candidate check, T_w = tasks on it (at most slots + prefetch depth). Planning a round hold
//! is O(M_s T_w) over the shape's members, at most once per shape per round.

use crate::filters::{choose_gpus_where, Gpus, Share};
use crate::id_hash::IdHashMap;
use crate::learning::KindId;
use crate::placed::Placed;
use crate::shape_index::{Member, ShapeIndex};
use crate::workers::{Worker, WorkerTable};
use crate::{ShapeId, TaskId, WorkerId};

/// GPUs of one worker kept for a multi-GPU task of `shape` during a placement round.
#[derive(Debug, Clone, PartialEq)]
pub struct Hold {
    pub shape: ShapeId,
    pub worker: WorkerId,
    /// Sorted.
    pub gpus: Vec<u32>,
    /// When they are predicted to be free together, on the caller's clock.
    pub usable_ms: f64,
    /// Every task on them has a prediction; else `usable_ms` counts the others only.
    pub estimated: bool,
}

/// A hold as seen from one worker: its GPUs and when they are usable, relative to now.
struct Held<'a> {
    gpus: &'a [u32],
    usable: f64,
    /// The held task's own predicted runtime if it is a queued gang on the worker (it sits in
    /// the per-GPU totals), None for a round hold.
    gang: Option<f64>,
}

/// What the worker's placed tasks are predicted to keep busy, as of `now_ms`.
pub struct Forecast<'a> {
    pub placed: &'a IdHashMap<TaskId, Placed>,
    pub workers: &'a WorkerTable,
    pub now_ms: u64,
}

fn overlaps(a: &[u32], b: &[u32]) -> bool {
    a.iter().any(|g| b.contains(g))
}

impl<'a> Forecast<'a> {
    /// How much longer a placed task keeps its GPUs, in ms; None for a task nothing predicts
    /// (one started then counts as long again as it has run).
    fn remaining_ms(&self, p: &Placed, w: &Worker) -> Option<f64> {
        let predicted = w.runtime_ms(p.kind, &self.workers.learning, p.start);
        if !p.started {
            return predicted;
        }
        let elapsed = self.now_ms.saturating_sub(p.started_ms) as f64;
        // Past its prediction: as much longer again as it has overrun.
        predicted.map(|ms| (ms - elapsed).abs())
    }

    /// Per GPU of `w`, how long its placed tasks keep it busy (running ones, then the queued
    /// ones in turn) and whether each of them had a prediction (one without counts 0); and the
    /// queued gangs, each with when its GPUs are usable counting only the tasks placed before
    /// it, and its own runtime.
    fn timeline(&self, w: &Worker) -> (Vec<f64>, Vec<bool>, Vec<Held<'a>>) {
        let mut busy = vec![0.0; w.gpus.len()];
        let mut known = vec![true; w.gpus.len()];
        let mut gangs = Vec::new();
        for task in &w.tasks {
            let Some(p) = self.placed.get(task) else {
                continue;
            };
            let predicted = self.remaining_ms(p, w);
            if predicted.is_none() {
                for &g in &p.gpus {
                    known[g as usize] = false;
                }
            }
            let remaining = predicted.unwrap_or(0.0);
            if !p.started && p.gpus.len() > 1 {
                let usable = p.gpus.iter().map(|&g| busy[g as usize]).fold(0.0, f64::max);
                gangs.push(Held {
                    gpus: &p.gpus,
                    usable,
                    gang: Some(remaining),
                });
            }
            for &g in &p.gpus {
                let busy = &mut busy[g as usize];
                if p.share.is_whole() {
                    *busy += remaining;
                } else {
                    // Shares on a GPU run side by side, never queued (see `choose_share`).
                    *busy = busy.max(remaining);
                }
            }
        }
        (busy, known, gangs)
    }

    /// The GPUs a task of `kind` with `affinity` may use on worker `id`: `chosen` if no hold is
    /// in the way, else other qualifying GPUs that no hold keeps, else `chosen` if it backfills
    /// every hold it touches; None if it may not go to this worker now.
    pub fn admit(
        &self,
        id: WorkerId,
        holds: &[Hold],
        (kind, affinity): (KindId, u64),
        share: Share,
        qualifying: &[u32],
        chosen: Gpus,
    ) -> Option<Gpus> {
        let Ok(w) = self.workers.get(id) else {
            return Some(chosen);
        };
        let mut round = holds.iter().filter(|h| h.worker == id).peekable();
        if round.peek().is_none()
            && (w.queued_gangs == 0 || chosen.iter().all(|&g| w.gpus[g as usize].holders == 0))
        {
            // A queued gang holds its GPUs, so GPUs nobody holds are outside every hold.
            return Some(chosen);
        }
        let (busy, _, gangs) = self.timeline(w);
        let now = self.now_ms as f64;
        let held: Vec<Held<'_>> = round
            .map(|h| Held {
                gpus: &h.gpus,
                usable: h.usable_ms - now,
                gang: None,
            })
            .chain(gangs)
            .collect();
        if !held.iter().any(|h| overlaps(&chosen, h.gpus)) {
            return Some(chosen);
        }
        let free = |g: u32| !held.iter().any(|h| h.gpus.contains(&g));
        if let Some(other) =
            choose_gpus_where(w, qualifying, chosen.len() as u32, share, None, free)
        {
            return Some(other);
        }
        let start = w.start_for(affinity);
        let runtime = w.runtime_ms(kind, &self.workers.learning, start);
        let backfills = held.iter().filter(|h| overlaps(&chosen, h.gpus)).all(|h| {
            // Behind a queued gang on all of its GPUs, it cannot start before the gang does.
            if h.gang.is_some() && h.gpus.iter().all(|g| chosen.contains(g)) {
                return true;
            }
            // Its GPUs are done with what was placed before it, but for a queued gang, which
            // cannot start before all of its own GPUs are free.
            let begins = chosen
                .iter()
                .map(|&g| {
                    let gang = h.gang.filter(|_| h.gpus.contains(&g)).unwrap_or(0.0);
                    busy[g as usize] - gang
                })
                .fold(0.0, f64::max);
            runtime.is_some_and(|ms| begins + ms <= h.usable)
        });
        backfills.then_some(chosen)
    }

    /// When a member's `n` qualifying healthy GPUs are predicted free together (ms from now),
    /// those GPUs, and whether every task on them had a prediction; None if it does not accept
    /// work or has fewer healthy ones.
    fn member_hold(&self, member: &Member, n: usize) -> Option<(f64, Vec<u32>, bool)> {
        let w = self.workers.get(member.id).ok()?;
        if !w.accepting() {
            return None;
        }
        let mut gpus: Vec<u32> = member
            .gpus
            .iter()
            .copied()
            .filter(|&g| w.gpus[g as usize].healthy)
            .collect();
        if gpus.len() < n {
            return None;
        }
        let (busy, known, _) = self.timeline(w);
        // Stable: among GPUs free at the same time, the smallest stay first.
        gpus.sort_by(|&a, &b| busy[a as usize].total_cmp(&busy[b as usize]));
        gpus.truncate(n);
        let usable = gpus.iter().map(|&g| busy[g as usize]).fold(0.0, f64::max);
        let estimated = gpus.iter().all(|&g| known[g as usize]);
        gpus.sort_unstable();
        Some((usable, gpus, estimated))
    }

    /// A round hold for a multi-GPU shape no worker can take now: the accepting member whose
    /// qualifying healthy GPUs are predicted to have `shape_gpus` of them free together soonest
    /// (a member another shape already holds this round only if no other can), and those GPUs.
    pub fn plan(&self, shape: ShapeId, index: &ShapeIndex, taken: &[Hold]) -> Option<Hold> {
        let n = index.gpus as usize;
        let now = self.now_ms as f64;
        let mut best: Option<((bool, f64, WorkerId), Hold)> = None;
        for member in index.members() {
            let Some((usable, gpus, estimated)) = self.member_hold(member, n) else {
                continue;
            };
            let worker = member.id;
            let key = (taken.iter().any(|h| h.worker == worker), usable, worker);
            if best.as_ref().is_none_or(|(k, _)| key < *k) {
                let usable_ms = now + usable;
                let hold = Hold {
                    shape,
                    worker,
                    gpus,
                    usable_ms,
                    estimated,
                };
                best = Some((key, hold));
            }
        }
        best.map(|(_, hold)| hold)
    }

    /// plan(), kept in the index between rounds: while no other shape holds a worker this round,
    /// the kept hold is checked against the members that changed since (see [`Plan`]) instead of
    /// planning over every member, O(C T_w) for C changed members instead of O(M_s T_w). All are
    /// planned again when the held member got worse or left, many changed, or its predicted time
    /// (if a prediction gave one) passed without its GPUs freeing.
    pub fn plan_kept(
        &self,
        shape: ShapeId,
        index: &mut ShapeIndex,
        taken: &[Hold],
    ) -> Option<Hold> {
        let now = self.now_ms as f64;
        if taken.is_empty() {
            if let Some(plan) = index.plan.take() {
                // A time that nothing predicted cannot pass; members' changes still reach it.
                let due = |h: &Hold| h.estimated && h.usable_ms <= now;
                let fresh = !plan.stale && !plan.hold.as_ref().is_some_and(due);
                if let Some(hold) = fresh.then(|| self.follow(shape, index, plan)).flatten() {
                    index.plan = Some(Plan::kept(hold.clone()));
                    return hold;
                }
            }
        }
        let hold = self.plan(shape, index, taken);
        if taken.is_empty() {
            index.plan = Some(Plan::kept(hold.clone()));
        }
        hold
    }

    /// The kept hold brought up to date with the members that changed: Some(best) or None when
    /// every member must be planned again.
    fn follow(&self, shape: ShapeId, index: &ShapeIndex, plan: Plan) -> Option<Option<Hold>> {
        let now = self.now_ms as f64;
        let n = index.gpus as usize;
        let mut best = plan.hold;
        for id in plan.changed {
            let held = best.as_ref().is_some_and(|b| b.worker == id);
            let seen = index.member(id).and_then(|m| self.member_hold(m, n));
            let Some((usable, gpus, estimated)) = seen else {
                if held {
                    return None;
                }
                continue;
            };
            let usable_ms = now + usable;
            let better = match &best {
                None => true,
                Some(b) if held => {
                    if usable_ms > b.usable_ms {
                        return None;
                    }
                    true
                }
                Some(b) => (usable_ms, id) < (b.usable_ms, b.worker),
            };
            if better {
                best = Some(Hold {
                    shape,
                    worker: id,
                    gpus,
                    usable_ms,
                    estimated,
                });
            }
        }
        Some(best)
    }
}

/// A round hold kept for a shape between rounds, and the members that changed since (their
/// tasks, starts, health or state), so the next round looks at those alone (see
/// `Forecast::plan_kept`). A member's time is absolute once planned, so a kept hold may lag what
/// the prediction of a queued task would say now by the rounds it was kept; it is planned again
/// at the latest when that time passes.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    hold: Option<Hold>,
    changed: Vec<WorkerId>,
    /// Every member must be planned again.
    stale: bool,
}

impl Plan {
    fn kept(hold: Option<Hold>) -> Plan {
        Plan {
            hold,
            ..Plan::default()
        }
    }

    /// A member changed; past `bound` changes, planning all again is as cheap.
    pub(crate) fn changed(&mut self, id: WorkerId, bound: usize) {
        if self.stale {
            return;
        }
        if self.changed.len() >= bound {
            self.stale = true;
            self.changed = Vec::new();
            return;
        }
        self.changed.push(id);
    }

    /// A member left.
    pub(crate) fn left(&mut self, id: WorkerId) {
        if self.hold.as_ref().is_some_and(|h| h.worker == id) {
            self.stale = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{GpuSpec, Policy, Scheduler, SchedulerConfig, ShapeId, ShapeSpec, WorkerId};

    fn a100s(n: usize) -> Vec<GpuSpec> {
        let a100 = GpuSpec {
            memory_total_mb: 81_920,
            compute_capability: 8.0,
            name: "A100".into(),
        };
        vec![a100; n]
    }

    fn gpu_shape(s: &mut Scheduler, kind: &str, gpus: u32) -> ShapeId {
        s.shape(ShapeSpec {
            kind: kind.into(),
            gpus,
            ..ShapeSpec::default()
        })
        .unwrap()
    }

    /// Teach the core that tasks of `shape` take `ms` on `worker` (task ids from 1000 on).
    fn learn(s: &mut Scheduler, shape: ShapeId, worker: WorkerId, gpus: &[u32], ms: u64) {
        let task = 1000 + s.placed() as u64 + 100 * shape;
        s.attach(task, worker, gpus, shape, 0, 0).unwrap();
        s.finish(task, true, ms).unwrap();
    }

    /// One 2-GPU worker and a 1-GPU worker; "gang" (2 GPUs) takes 1 s, "long" 20 s, "short" 2 s.
    fn fleet(prefetch_depth: u32) -> (Scheduler, WorkerId, [ShapeId; 3]) {
        let config = SchedulerConfig {
            prefetch_depth,
            ..SchedulerConfig::default()
        };
        let mut s = Scheduler::new(config).unwrap();
        let big = s.add_worker(2, a100s(2), "", vec![], vec![], 0).unwrap();
        let gang = gpu_shape(&mut s, "gang", 2);
        let long = gpu_shape(&mut s, "long", 1);
        let short = gpu_shape(&mut s, "short", 1);
        learn(&mut s, gang, big, &[0, 1], 1_000);
        learn(&mut s, long, big, &[0], 20_000);
        learn(&mut s, short, big, &[0], 2_000);
        (s, big, [gang, long, short])
    }

    #[test]
    fn a_gang_is_not_crowded_out_by_a_stream_of_one_gpu_tasks() {
        let (mut s, big, [gang, long, _]) = fleet(0);
        // In FIFO order: a 2-GPU task (1 s), then three 1-GPU tasks (20 s), four times over.
        let runtime = |task: u64| {
            if task.is_multiple_of(4) {
                1_000
            } else {
                20_000
            }
        };
        for task in 0..16u64 {
            let shape = if task.is_multiple_of(4) { gang } else { long };
            s.push(task, shape, 1, task, 0).unwrap();
        }
        let mut span = [(0u64, 0u64); 16];
        let mut running: Vec<(u64, u64)> = Vec::new();
        let mut now = 0;
        let mut explained = false;
        while running.len() + s.pending() > 0 {
            for p in s.place(now, 16) {
                s.mark_started(p.task, Some(now)).unwrap();
                running.push((now + runtime(p.task), p.task));
                span[p.task as usize] = (now, now + runtime(p.task));
            }
            let why = s.explain(gang, 1).unwrap();
            explained |= why.reservation.is_some_and(|r| r.worker == big);
            running.sort_unstable();
            let (end, task) = running.remove(0);
            now = end;
            s.finish(task, true, runtime(task)).unwrap();
        }
        for g in (4..16).step_by(4) {
            let ahead_done = span[..g].iter().map(|&(_, end)| end).max().unwrap();
            assert!(
                span[g].0 <= ahead_done,
                "2-GPU task {g} started at {} ms, after the tasks ahead of it were done at \
                 {ahead_done} ms: tasks behind it took its GPUs ({span:?})",
                span[g].0
            );
        }
        assert!(
            explained,
            "explain names the reservation a waiting gang holds"
        );
    }

    #[test]
    fn a_short_task_backfills_and_a_long_one_does_not() {
        for prefetch_depth in [0, 1] {
            let (mut s, _, [gang, long, short]) = fleet(prefetch_depth);
            s.push(1, long, 1, 1, 0).unwrap();
            assert_eq!(s.place(0, 1)[0].gpus[..], [0]);
            s.mark_started(1, Some(0)).unwrap();
            // GPU 0 is busy until about 20 s; the gang waits for it (queued on the worker
            // with prefetch, reserved in the core without), then a long and a short task.
            s.push(2, gang, 1, 2, 0).unwrap();
            s.push(3, long, 1, 3, 0).unwrap();
            s.push(4, short, 1, 4, 0).unwrap();
            let placed: Vec<_> = s
                .place(1_000, 10)
                .into_iter()
                .map(|p| (p.task, p.gpus.to_vec()))
                .collect();
            let expected = if prefetch_depth == 0 {
                vec![(4, vec![1])]
            } else {
                vec![(2, vec![0, 1]), (4, vec![1])]
            };
            assert_eq!(
                placed, expected,
                "prefetch {prefetch_depth}: the 2 s task fits before the gang can start, the \
                 20 s one does not"
            );
            assert!(s.is_pending(3));
        }
    }

    #[test]
    fn an_overrunning_task_widens_the_gap_instead_of_idling_the_gpu() {
        let (mut s, _, [gang, long, _]) = fleet(0);
        s.push(1, long, 1, 1, 0).unwrap();
        s.place(0, 1);
        s.mark_started(1, Some(0)).unwrap();
        s.push(2, gang, 1, 2, 0).unwrap();
        s.push(3, long, 1, 3, 0).unwrap();
        assert_eq!(s.place(1_000, 10), vec![], "20 s left of 20 s: no room");
        // 30 s in, a 20 s prediction is 10 s short: expect 10 s more.
        assert_eq!(s.place(30_000, 10), vec![], "10 s left: no room for 20 s");
        // 50 s in, 30 s more are expected: a 20 s task fits in the gap.
        assert_eq!(s.place(50_000, 10)[0].task, 3);
    }

    #[test]
    fn cost_prefers_the_cheaper_share_of_a_box() {
        let config = SchedulerConfig {
            policy: Policy::Cost,
            ..SchedulerConfig::default()
        };
        let mut s = Scheduler::new(config).unwrap();
        // $1.60/h for each of 8 GPUs against $1.00/h for a 1-GPU box of the same GPU.
        let eight = s
            .add_worker_with(8, a100s(8), "", vec![], vec![], 0, 12.8)
            .unwrap();
        let one = s
            .add_worker_with(1, a100s(1), "", vec![], vec![], 0, 1.0)
            .unwrap();
        let task = gpu_shape(&mut s, "infer", 1);
        s.push(1, task, 1, 1, 0).unwrap();
        assert_eq!(
            s.place(0, 1)[0].worker,
            one,
            "$1.00 against $1.60 per GPU-hour"
        );
        s.finish(1, true, 100).unwrap();
        // At $0.80 per GPU the 8-GPU box is the cheaper place for one GPU, though it costs more.
        let cheap = s
            .add_worker_with(8, a100s(8), "", vec![], vec![], 0, 6.4)
            .unwrap();
        s.push(2, task, 1, 2, 0).unwrap();
        assert_eq!(s.place(0, 1)[0].worker, cheap);
        let why = s.explain_placement(2).unwrap();
        assert_eq!(
            why.terms[..2],
            [("cost_per_hour", 6.4), ("share", 0.125)],
            "the 8-GPU box's price, one GPU's share of it: {why:?}"
        );
        let _ = eight;
    }
}
