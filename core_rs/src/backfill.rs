//! Reservations with backfill (EASY backfilling) for tasks that need several GPUs at once.
//!
//! Greedy placement starves a task that needs n GPUs together: whenever one GPU of a worker that
//! could run it frees, a task that needs one GPU takes it, so its n GPUs are never free at the
//! same time. Two kinds of hold keep GPUs for such a task:
//! - a queued gang: the task placed on a worker but not started (prefetched behind the tasks that
//!   use its GPUs) holds those GPUs against every task placed after it;
//! - a round hold: when the first task of such a shape in fair order finds no worker with n GPUs
//!   it could take, [`Forecast::plan_kept`] reserves the member whose n qualifying GPUs are
//!   predicted to be free together soonest, for the rest of the placement round. The next round
//!   plans again in its own fair order, so a reservation never goes ahead of a task that is ahead
//!   of it, and fair shares, aging and FIFO per flow keep deciding who goes first.
//!
//! A round hold is made only when it starts the gang sooner than it would start without one:
//! without a hold the gang still starts where a finish gives back its GPUs at once (an 8-GPU task
//! ending frees a whole 8-GPU worker, which goes to the first task in fair order that fits it), so
//! a hold that is not predicted usable before the soonest such finish only idles GPUs. When
//! runtimes are unknown, the gang holds (see [`Outlook::worth_holding`]).
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

use std::cell::{OnceCell, RefCell};

use smallvec::SmallVec;

use crate::filters::{choose_gpus_where, Gpus, Share};
use crate::id_hash::IdHashMap;
use crate::learning::KindId;
use crate::placed::Placed;
use crate::shape_index::{Member, ShapeIndex};
use crate::workers::{Worker, WorkerTable};
use crate::{ShapeId, TaskId, WorkerId};

/// Per-GPU values of one worker, inline up to the 8 GPUs of a large box, so planning and
/// checking a hold allocate nothing on the placement path.
type PerGpu<T> = SmallVec<[T; 8]>;

/// GPUs of one worker kept for a multi-GPU task of `shape` during a placement round.
#[derive(Debug, Clone, PartialEq)]
pub struct Hold {
    pub shape: ShapeId,
    pub worker: WorkerId,
    /// Sorted. Inline, as a kept hold is copied into every round.
    pub gpus: PerGpu<u32>,
    /// When they are predicted to be free together, on the caller's clock.
    pub usable_ms: f64,
    /// Every task on them has a prediction; else `usable_ms` counts the others only.
    pub estimated: bool,
}

/// A hold as seen from one worker: its GPUs and when they are usable, relative to now.
#[derive(Clone, Copy)]
struct Held<'a> {
    gpus: &'a [u32],
    usable: f64,
    /// The held task's own predicted runtime if it is a queued gang on the worker (it sits in
    /// the per-GPU totals), None for a round hold.
    gang: Option<f64>,
}

/// What `Forecast::admit` refused in one placement round: (worker, shape, affinity key, the
/// worker's tick then). A refusal stands until a task goes to that worker (which moves its
/// tick): within a round holds are only added and predictions do not move. So the tasks of a
/// shape whose best worker is held do not each check the hold again.
pub type Refusals = RefCell<SmallVec<[(WorkerId, ShapeId, u64, u64); 4]>>;

/// What the worker's placed tasks are predicted to keep busy, as of `now_ms`.
pub struct Forecast<'a> {
    pub placed: &'a IdHashMap<TaskId, Placed>,
    pub workers: &'a WorkerTable,
    pub now_ms: u64,
    /// This round's refusals.
    pub refused: &'a Refusals,
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
    fn timeline(&self, w: &Worker) -> (PerGpu<f64>, PerGpu<bool>, SmallVec<[Held<'a>; 2]>) {
        let mut busy: PerGpu<f64> = smallvec::smallvec![0.0; w.gpus.len()];
        let mut known: PerGpu<bool> = smallvec::smallvec![true; w.gpus.len()];
        let mut gangs = SmallVec::new();
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

    /// The GPUs a task of `shape` (of `kind`) with `affinity` may use on worker `id`: `chosen`
    /// if no hold is in the way, else other qualifying GPUs that no hold keeps, else `chosen`
    /// if it backfills every hold it touches; None if it may not go to this worker now.
    pub fn admit(
        &self,
        id: WorkerId,
        holds: &[Hold],
        (shape, kind, affinity): (ShapeId, KindId, u64),
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
        let seen = (id, shape, affinity, w.last_tick);
        if self.refused.borrow().contains(&seen) {
            return None;
        }
        // The per-GPU totals are needed for the queued gangs and for a backfill check alone: a
        // worker with only a round hold is refused or given other GPUs without them.
        let timeline = OnceCell::new();
        let timeline = || timeline.get_or_init(|| self.timeline(w));
        let now = self.now_ms as f64;
        let gangs = (w.queued_gangs > 0).then(|| timeline().2.iter().copied());
        let held: SmallVec<[Held<'_>; 4]> = round
            .map(|h| Held {
                gpus: &h.gpus,
                usable: h.usable_ms - now,
                gang: None,
            })
            .chain(gangs.into_iter().flatten())
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
            // cannot start before all of its own GPUs are free. It begins at 0 or later, so a
            // runtime longer than the gap refuses it without the totals.
            let begins = || {
                let busy = &timeline().0;
                chosen
                    .iter()
                    .map(|&g| {
                        let gang = h.gang.filter(|_| h.gpus.contains(&g)).unwrap_or(0.0);
                        busy[g as usize] - gang
                    })
                    .fold(0.0, f64::max)
            };
            runtime.is_some_and(|ms| ms <= h.usable && begins() + ms <= h.usable)
        });
        if !backfills {
            self.refused.borrow_mut().push(seen);
        }
        backfills.then_some(chosen)
    }

    /// How a member stands for a gang of `n` GPUs (see [`Seen`]); None if it does not accept
    /// work or has fewer than `n` qualifying healthy GPUs.
    fn member_hold(&self, member: &Member, n: usize) -> Option<Seen> {
        let w = self.workers.get(member.id).ok()?;
        if !w.accepting() {
            return None;
        }
        let mut gpus: PerGpu<u32> = member
            .gpus
            .iter()
            .copied()
            .filter(|&g| w.gpus[g as usize].healthy)
            .collect();
        if gpus.len() < n {
            return None;
        }
        let (busy, known, _) = self.timeline(w);
        let natural = self.released_at_once(w, &gpus, &busy, n);
        if gpus.len() > n {
            // Stable: among GPUs free at the same time, the smallest stay first.
            gpus.sort_by(|&a, &b| busy[a as usize].total_cmp(&busy[b as usize]));
            gpus.truncate(n);
        }
        let usable = gpus.iter().map(|&g| busy[g as usize]).fold(0.0, f64::max);
        let estimated = gpus.iter().all(|&g| known[g as usize]);
        gpus.sort_unstable();
        Some(Seen {
            usable,
            gpus,
            estimated,
            natural,
        })
    }

    /// When a running task on `w` with a prediction is expected to end and give back at once at
    /// least `n` of the `qualifying` GPUs, with nothing queued behind it on them (ms from now,
    /// soonest such task): then a gang first in line starts there without any hold, as the
    /// GPUs a finish frees together go to the first task in fair order that fits them.
    fn released_at_once(
        &self,
        w: &Worker,
        qualifying: &[u32],
        busy: &[f64],
        n: usize,
    ) -> Option<f64> {
        let mut soonest: Option<f64> = None;
        for task in &w.tasks {
            let Some(p) = self.placed.get(task) else {
                continue;
            };
            if !p.started || !p.share.is_whole() || p.gpus.len() < n {
                continue;
            }
            let Some(ends) = self.remaining_ms(p, w) else {
                continue;
            };
            let freed = p.gpus.iter().filter(|&&g| qualifying.contains(&g));
            let (mut count, mut clear) = (0, true);
            for &g in freed {
                count += 1;
                clear &= busy[g as usize] <= ends;
            }
            if count >= n && clear && soonest.is_none_or(|s| ends < s) {
                soonest = Some(ends);
            }
        }
        soonest
    }

    /// What planning finds for `shape` over every member (a member another shape already holds
    /// this round is a candidate only if no other can be): see [`Outlook`]. O(M_s T_w).
    pub(crate) fn outlook(&self, shape: ShapeId, index: &ShapeIndex, taken: &[Hold]) -> Outlook {
        let n = index.gpus as usize;
        let now = self.now_ms as f64;
        let mut best: Option<((bool, bool, f64, WorkerId), Hold)> = None;
        let mut natural: Option<(f64, WorkerId)> = None;
        for member in index.members() {
            let Some(seen) = self.member_hold(member, n) else {
                continue;
            };
            let worker = member.id;
            let is_taken = taken.iter().any(|h| h.worker == worker);
            if let Some(at) = seen.natural.filter(|_| !is_taken) {
                if natural.is_none_or(|k| (now + at, worker) < k) {
                    natural = Some((now + at, worker));
                }
            }
            let key = (is_taken, !seen.estimated, seen.usable, worker);
            if best.as_ref().is_none_or(|(k, _)| key < *k) {
                best = Some((key, seen.hold(shape, worker, now)));
            }
        }
        Outlook {
            hold: best.map(|(_, hold)| hold),
            natural,
        }
    }

    /// A round hold for a multi-GPU shape no worker can take now, if one starts it sooner than
    /// it would start without (see [`Outlook::worth_holding`]): the accepting member whose
    /// qualifying healthy GPUs are predicted to have `shape_gpus` of them free together soonest
    /// (one whose time every task on those GPUs predicts before one with tasks nothing
    /// predicts), and those GPUs.
    ///
    /// The outlook is kept in the index between rounds: while no other shape holds a worker this
    /// round, it is checked against the members that changed since (see [`Plan`]) instead of
    /// planning over every member, O(C T_w) for C changed members instead of O(M_s T_w). All
    /// are planned again when the held member or the one expected to free the gang's GPUs at once
    /// got worse or left, many changed, or a predicted time passed without its GPUs freeing.
    pub fn plan_kept(
        &self,
        shape: ShapeId,
        index: &mut ShapeIndex,
        taken: &[Hold],
    ) -> Option<Hold> {
        let now = self.now_ms as f64;
        if taken.is_empty() {
            if let Some(mut plan) = index.plan.take() {
                // A time that nothing predicted cannot pass; members' changes still reach it.
                let due = |h: &Hold| h.estimated && h.usable_ms <= now;
                let fresh = !plan.stale
                    && !plan.outlook.hold.as_ref().is_some_and(due)
                    && !plan.outlook.natural.is_some_and(|(at, _)| at <= now);
                let kept = std::mem::take(&mut plan.outlook);
                let followed = fresh.then(|| self.follow(shape, index, kept, &plan.changed));
                if let Some(outlook) = followed.flatten() {
                    let hold = outlook.worth_holding();
                    // The list of changes keeps its capacity for the next rounds.
                    plan.changed.clear();
                    plan.outlook = outlook;
                    index.plan = Some(plan);
                    return hold;
                }
            }
        }
        let outlook = self.outlook(shape, index, taken);
        let hold = outlook.worth_holding();
        if taken.is_empty() {
            index.plan = Some(Plan::kept(outlook));
        }
        hold
    }

    /// The kept outlook brought up to date with the members that changed: Some(outlook) or None
    /// when every member must be planned again.
    fn follow(
        &self,
        shape: ShapeId,
        index: &ShapeIndex,
        outlook: Outlook,
        changed: &[WorkerId],
    ) -> Option<Outlook> {
        let now = self.now_ms as f64;
        let n = index.gpus as usize;
        let Outlook {
            hold: mut best,
            mut natural,
        } = outlook;
        for &id in changed {
            let held = best.as_ref().is_some_and(|b| b.worker == id);
            let freeing = natural.is_some_and(|(_, w)| w == id);
            let seen = index.member(id).and_then(|m| self.member_hold(m, n));
            let Some(seen) = seen else {
                if held || freeing {
                    return None;
                }
                continue;
            };
            match seen.natural.map(|at| (now + at, id)) {
                Some(at) if freeing && at > natural.expect("freeing") => return None,
                Some(at) if natural.is_none_or(|k| freeing || at < k) => natural = Some(at),
                None if freeing => return None,
                _ => {}
            }
            let key = (!seen.estimated, now + seen.usable);
            let better = match &best {
                None => true,
                Some(b) if held => {
                    if key > (!b.estimated, b.usable_ms) {
                        return None;
                    }
                    true
                }
                Some(b) => (key, id) < ((!b.estimated, b.usable_ms), b.worker),
            };
            if better {
                best = Some(seen.hold(shape, id, now));
            }
        }
        Some(Outlook {
            hold: best,
            natural,
        })
    }
}

/// How one member stands for a blocked gang, in ms from now.
struct Seen {
    /// When its `n` qualifying GPUs are predicted free together, and those GPUs.
    usable: f64,
    gpus: PerGpu<u32>,
    /// Every task on those GPUs had a prediction.
    estimated: bool,
    /// When a running task is predicted to give back `n` of them at once (see
    /// `Forecast::released_at_once`).
    natural: Option<f64>,
}

impl Seen {
    fn hold(self, shape: ShapeId, worker: WorkerId, now: f64) -> Hold {
        Hold {
            shape,
            worker,
            gpus: self.gpus,
            usable_ms: now + self.usable,
            estimated: self.estimated,
        }
    }
}

/// What planning found for a blocked gang: the hold that would start it soonest, and the
/// soonest predicted time a member gives back the gang's GPUs at once with no hold (absolute,
/// with that member).
#[derive(Debug, Clone, Default)]
pub struct Outlook {
    hold: Option<Hold>,
    natural: Option<(f64, WorkerId)>,
}

impl Outlook {
    /// The hold, if it starts the gang sooner than it would start without one. Without a hold
    /// the tasks behind the gang take its GPUs one by one as they free, so it starts only where
    /// a finish gives back its GPUs at once: a hold pays only when it is predicted usable before
    /// that. A hold whose time some task on its GPUs does not predict is made only when no
    /// such finish is predicted either: the safe default when runtimes are unknown is to hold,
    /// as a gang without one may never start, while a hold idles GPUs at most until the tasks
    /// already on them end.
    pub(crate) fn worth_holding(&self) -> Option<Hold> {
        self.hold
            .as_ref()
            .filter(|h| match self.natural {
                None => true,
                Some((at, _)) => h.estimated && h.usable_ms < at,
            })
            .cloned()
    }
}

/// A round hold's outlook kept for a shape between rounds, and the members that changed since (their
/// tasks, starts, health or state), so the next round looks at those alone (see
/// `Forecast::plan_kept`). A member's time is absolute once planned, so a kept hold may lag what
/// the prediction of a queued task would say now by the rounds it was kept; it is planned again
/// at the latest when that time passes.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    outlook: Outlook,
    changed: Vec<WorkerId>,
    /// Every member must be planned again.
    stale: bool,
}

impl Plan {
    fn kept(outlook: Outlook) -> Plan {
        Plan {
            outlook,
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

    /// A member took a task. Its GPUs only got busier and the task has not started, so its
    /// time for a hold and its release at once can only come later: unless it is the member the
    /// outlook counts on for either, the outlook stands. (The placement bench measured the
    /// re-planning of such members as most of what a blocked gang adds to a placement.)
    pub(crate) fn busier(&mut self, id: WorkerId, bound: usize) {
        let held = self.outlook.hold.as_ref().is_some_and(|h| h.worker == id);
        if held || self.outlook.natural.is_some_and(|(_, w)| w == id) {
            self.changed(id, bound);
        }
    }

    /// A member left.
    pub(crate) fn left(&mut self, id: WorkerId) {
        let held = self.outlook.hold.as_ref().is_some_and(|h| h.worker == id);
        if held || self.outlook.natural.is_some_and(|(_, w)| w == id) {
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

    /// Two 8-GPU workers, both busy from 0 ms: on one, 7 GPUs are free and one runs a task of
    /// `beside` (1 GPU); on the other an 8-GPU task of `whole` runs. Then a gang of 8 and three
    /// 1-GPU tasks of 60 s arrive. Returns what the round at 1 s placed, where the gang's
    /// reservation is, and the two workers (the one with free GPUs first).
    fn gang_beside(
        beside_ms: Option<u64>,
        whole_ms: Option<u64>,
    ) -> (Vec<u64>, Option<WorkerId>, [WorkerId; 2], Scheduler) {
        let mut s = Scheduler::new(SchedulerConfig::default()).unwrap();
        let first = s.add_worker(8, a100s(8), "", vec![], vec![], 0).unwrap();
        let beside = gpu_shape(&mut s, "beside", 1);
        let whole = gpu_shape(&mut s, "whole", 8);
        let gang = gpu_shape(&mut s, "gang", 8);
        let long = gpu_shape(&mut s, "long", 1);
        let all: Vec<u32> = (0..8).collect();
        if let Some(ms) = beside_ms {
            learn(&mut s, beside, first, &[0], ms);
        }
        if let Some(ms) = whole_ms {
            learn(&mut s, whole, first, &all, ms);
        }
        learn(&mut s, gang, first, &all, 1_000);
        learn(&mut s, long, first, &[0], 60_000);
        s.add_worker(8, a100s(8), "", vec![], vec![], 0).unwrap();
        s.push(1, beside, 1, 1, 0).unwrap();
        s.push(2, whole, 1, 2, 0).unwrap();
        let placed = s.place(0, 10);
        assert_eq!(placed.len(), 2);
        let workers = [placed[0].worker, placed[1].worker];
        for task in [1, 2] {
            s.mark_started(task, Some(0)).unwrap();
        }
        s.push(3, gang, 1, 3, 0).unwrap();
        for task in 4..7 {
            s.push(task, long, 1, task, 0).unwrap();
        }
        let tasks = s.place(1_000, 10).iter().map(|p| p.task).collect();
        let reserved = s.explain(gang, 1).unwrap().reservation.map(|r| r.worker);
        (tasks, reserved, workers, s)
    }

    #[test]
    fn no_hold_when_a_finish_frees_the_gang_s_gpus_at_once_sooner() {
        // Nothing predicts the task beside the free GPUs; the 8-GPU task ends in 10 s.
        let (placed, reserved, [_, whole], mut s) = gang_beside(None, Some(10_000));
        assert_eq!(
            (placed, reserved),
            (vec![4, 5, 6], None),
            "the free GPUs run the 60 s tasks: a hold there would idle them for a time nobody \
             knows, while the gang starts in 9 s where the 8-GPU task ends"
        );
        s.finish(2, true, 10_000).unwrap();
        let next = s.place(10_000, 10);
        assert_eq!(
            (next[0].task, next[0].worker),
            (3, whole),
            "the gang takes the freed worker"
        );
    }

    #[test]
    fn a_hold_is_made_when_it_starts_the_gang_sooner_or_nothing_is_known() {
        // The task beside the free GPUs ends in 5 s, before the 8-GPU task (10 s): hold there.
        let (placed, reserved, [free, _], _) = gang_beside(Some(5_000), Some(10_000));
        assert_eq!(
            (placed, reserved),
            (vec![], Some(free)),
            "60 s tasks would delay the gang"
        );
        // Ending in 30 s, after the 8-GPU task: the gang starts sooner without a hold.
        let (placed, reserved, _, _) = gang_beside(Some(30_000), Some(10_000));
        assert_eq!((placed, reserved), (vec![4, 5, 6], None));
        // Nothing predicts either task: the gang holds, or it might never start.
        let (placed, reserved, [free, _], _) = gang_beside(None, None);
        assert_eq!(
            (placed, reserved),
            (vec![], Some(free)),
            "the safe default is to hold"
        );
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
