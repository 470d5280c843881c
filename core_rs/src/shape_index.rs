//! The per-shape index: the workers that statically fit one shape, the ones among them ready
//! for a task now in policy order, and per affinity key the warm ones, so the best worker for a
//! task is found without a scan of the fleet.
//!
//! Cost model. Each shape gets a [`ShapeIndex`], built lazily on first use in O(W log W) and
//! then kept up to date incrementally (see `placement`). The index keeps the statically eligible
//! workers that can take a task of the shape now (accepting work, capacity left, enough
//! qualifying GPUs free) in a `Ranked` heap ordered by the shape's policy rank (see `policy`),
//! so the best worker for a task is the heap's first entry and the runner-up the next, O(log k)
//! for the k-th entry looked at (k is 2 unless workers are passed over for the task itself: the
//! one it avoids, one a reservation keeps), instead of a scan of the fleet. Per affinity key the
//! index keeps its warm members in the same order, so the best warm worker for a task is found
//! the same way, never walking past workers of other shapes. A placement lowers ranks (under
//! fragmentation, see `shifted`, where it may raise them): the worker is moved in its own shape's
//! ready heap and marked stale in the others (see `Member::stale`); a stale entry is moved when a
//! lookup meets it. A fall reaches a warm heap
//! only when a lookup meets the entry (see `WarmMembers`).

use std::cmp::Reverse;

use crate::affinity::Touch;
use crate::backfill::Plan;
use crate::demand::Demand;
use crate::filters::{choose_gpus, has_gpus, Gpus, Share};
use crate::id_hash::{IdHashMap, IdHashSet};
use crate::learning::KindId;
use crate::policy::{score_of, Context, Policy, Ranks, Weights};
use crate::ranked::{Ranked, ReadyKey};
use crate::shapes::Shape;
use crate::workers::{Worker, WorkerTable};
use crate::WorkerId;

/// The last word on a worker placement found for a task: given the worker, its qualifying GPUs and
/// the GPUs chosen, the GPUs to use (the same or others) or None to pass the worker over. This is
/// where reservations are kept (see `backfill`).
pub type Admit<'a> = &'a dyn Fn(WorkerId, &[u32], Gpus) -> Option<Gpus>;

/// Admits every placement as found.
pub fn admit_all(_: WorkerId, _: &[u32], gpus: Gpus) -> Option<Gpus> {
    Some(gpus)
}

/// What one task asks of placement beyond its shape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Need {
    pub avoid: Option<WorkerId>,
    pub affinity: u64,
    pub hard_affinity: bool,
}

/// A worker chosen for a task.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub worker: WorkerId,
    pub gpus: Gpus,
    /// The task's affinity key is warm there.
    pub warm: bool,
    /// The next best worker that could have taken it, if one was seen.
    pub runner_up: Option<WorkerId>,
    /// Soft affinity only: the chosen worker is cold, but the key is warm on a member that
    /// accepts work and is merely busy (the case for delay scheduling).
    pub warm_busy: bool,
}

/// The outcome of looking for a worker for one task.
#[derive(Debug, Clone, PartialEq)]
pub enum Pick {
    Worker(Choice),
    /// No worker can take any task of this shape now.
    NoneForShape,
    /// Some worker could take the shape, but not this task (it avoids that worker, or waits
    /// for a warm one under hard affinity).
    NoneForTask,
}

/// What a walk of a shape's ready heap found.
#[derive(Debug, Default)]
struct Ready {
    /// The best member `take` gets, as (rank, worker, GPUs).
    first: Option<(u64, WorkerId, Gpus)>,
    /// The next member after it.
    runner_up: Option<WorkerId>,
    /// The avoided member was passed over.
    skipped: bool,
}

/// A stale entry (see `Member::stale`) a walk met: the member slot to rank again first.
struct Stale(u32);

/// One statically eligible worker of a shape.
#[derive(Debug)]
pub struct Member {
    pub id: WorkerId,
    /// Qualifying GPUs, smallest memory first.
    pub gpus: Box<[u32]>,
    /// Static best-fit measure, see `policy::fit`.
    pub fit: f64,
    /// Its warm keys and its slot in each one's [`WarmMembers`] heap.
    warm: Vec<(u64, u32)>,
    /// Its ready entry may rank it above its truth, or list it while it is not ready: a task
    /// of another shape went to it since it was last ranked here (see
    /// `PlacementIndex::lowered`). A lookup that meets the entry ranks it again first.
    stale: bool,
}

/// The members of one shape where one affinity key is warm.
#[derive(Debug, Default)]
struct WarmMembers {
    /// Every such member.
    all: IdHashSet<WorkerId>,
    /// Those in the shape's ready heap, each with its key there or a better one. A placement
    /// lowers a worker's rank in every heap that lists it; this heap learns of it only when a
    /// lookup meets the entry (`ShapeIndex::best_warm`), as a lazy decrease-key, so a placement
    /// re-ranks the worker in one heap per shape instead of 1 + M. An entry is never worse than
    /// its truth, so an entry that reads true at the top is the best.
    ready: Ranked<ReadyKey>,
    /// The member slot of each slot of `ready`.
    owner: Vec<u32>,
}

/// The workers that statically fit one shape, and the ones among them ready for a task now.
#[derive(Debug)]
pub struct ShapeIndex {
    pub kind: KindId,
    /// GPUs a task of the shape uses.
    pub gpus: u32,
    /// Whole GPUs, or the share of one a task of the shape uses.
    pub share: Share,
    pub policy: Policy,
    /// Statically eligible live workers (draining and full ones too), by slot: a member's slot
    /// is its place here and in `ready`, and the worker keeps it (`Worker::shapes`), so the
    /// paths a placement takes find members without hashing.
    members: Vec<Option<Member>>,
    /// Each member's slot.
    slots: IdHashMap<WorkerId, u32>,
    /// Members that accept work and have capacity and the shape's GPUs free, best rank first.
    ready: Ranked<ReadyKey>,
    /// Per affinity key, the members where it is warm.
    warm: IdHashMap<u64, WarmMembers>,
    /// Qualifying GPUs over the members: how much of the fleet can serve the shape.
    supply: u64,
    /// The round hold last planned for a multi-GPU shape and the members changed since.
    pub(crate) plan: Option<Plan>,
}

impl ShapeIndex {
    pub(crate) fn new(kind: KindId, gpus: u32, share: Share, policy: Policy) -> ShapeIndex {
        ShapeIndex {
            kind,
            gpus,
            share,
            policy,
            members: Vec::new(),
            slots: IdHashMap::default(),
            ready: Ranked::default(),
            warm: IdHashMap::default(),
            supply: 0,
            plan: None,
        }
    }

    /// Qualifying GPUs over the members.
    pub fn supply(&self) -> u64 {
        self.supply
    }

    pub fn member(&self, id: WorkerId) -> Option<&Member> {
        let slot = *self.slots.get(&id)?;
        self.members[slot as usize].as_ref()
    }

    /// Every member, in slot order.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().flatten()
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The best worker for any task of the shape (no avoid, no affinity).
    pub fn best(
        &mut self,
        shape: &Shape,
        workers: &WorkerTable,
        weights: &Weights,
    ) -> Option<(WorkerId, Gpus)> {
        let ready = self.first_ready(shape, workers, weights, None, &admit_all);
        match self.pick(shape, workers, weights, Need::default(), false, None, ready) {
            Pick::Worker(c) => Some((c.worker, c.gpus)),
            Pick::NoneForShape | Pick::NoneForTask => None,
        }
    }

    /// The GPUs a member would use for a task of `shape`, if it has them free now.
    fn fits_now(&self, shape: &Shape, workers: &WorkerTable, id: WorkerId) -> Option<Gpus> {
        if shape.gpus == 0 {
            return Some(Gpus::new());
        }
        let worker = workers.get(id).ok()?;
        choose_gpus(
            worker,
            &self.member(id)?.gpus,
            shape.gpus,
            shape.share,
            None,
        )
    }

    /// The demand a share's GPU is chosen by: the fragmentation policy's (see `choose_share`).
    fn packing<'a>(&self, workers: &'a WorkerTable) -> Option<&'a Demand> {
        (self.policy == Policy::Fragmentation).then_some(&workers.learning.demand)
    }

    /// The GPUs the member would use (chosen with `packing`), then `admit`'s word on them.
    fn take(
        member: &Member,
        shape: &Shape,
        workers: &WorkerTable,
        packing: Option<&Demand>,
        admit: Admit<'_>,
    ) -> Option<Gpus> {
        let gpus = if shape.gpus == 0 {
            Gpus::new()
        } else {
            let worker = workers.get(member.id).ok()?;
            choose_gpus(worker, &member.gpus, shape.gpus, shape.share, packing)?
        };
        admit(member.id, &member.gpus, gpus)
    }

    /// The best worker for one task. An avoided worker is skipped unless it is the only member
    /// (the only worker in the fleet that could ever run the shape). Hard affinity waits for a
    /// warm member while one exists; soft affinity (policies affinity and composite) prefers
    /// one, and says when it had to choose a cold worker while a busy one is warm
    /// (`Choice::warm_busy`; whether to wait for it is the scheduler's call). A worker `admit`
    /// refuses is passed over. Mutable because the lookup settles the stale entries it meets
    /// (see `Member::stale` and `WarmMembers`).
    pub fn best_for(
        &mut self,
        shape: &Shape,
        workers: &WorkerTable,
        weights: &Weights,
        need: Need,
        admit: Admit<'_>,
    ) -> Pick {
        let avoid = self.avoided(need);
        let soft = match self.policy {
            // A model load costs more than the GPUs a warm worker's placement may strand.
            Policy::Affinity | Policy::Fragmentation => true,
            Policy::Composite => weights.affinity > 0.0,
            _ => false,
        };
        let looks_warm = need.affinity != 0 && (need.hard_affinity || soft);
        let warm_best = looks_warm
            .then(|| self.best_warm(need.affinity, shape, workers, weights, avoid, admit))
            .flatten();
        let ready = if need.hard_affinity && warm_best.is_some() {
            Ready::default()
        } else {
            self.first_ready(shape, workers, weights, avoid, admit)
        };
        self.pick(shape, workers, weights, need, soft, warm_best, ready)
    }

    /// The member the task avoids, unless it is the only member.
    fn avoided(&self, need: Need) -> Option<WorkerId> {
        need.avoid
            .filter(|a| self.len() > 1 && self.slots.contains_key(a))
    }

    /// The best ready member where `key` is warm that `take` gets, as (rank, worker, GPUs).
    /// Entries met on the way whose rank fell since they were set are moved to their rank first,
    /// so the walk sees the members in their true order; members passed over (avoided, or
    /// refused by `admit`) are put back after. O((s + p + 1) log n) for s entries settled and p
    /// passed over.
    fn best_warm(
        &mut self,
        key: u64,
        shape: &Shape,
        workers: &WorkerTable,
        weights: &Weights,
        avoid: Option<WorkerId>,
        admit: Admit<'_>,
    ) -> Option<(u64, WorkerId, Gpus)> {
        let packing = self.packing(workers);
        let mut passed = Vec::new();
        let found = loop {
            let Some(members) = self.warm.get_mut(&key) else {
                break None;
            };
            let Some((entry, slot)) = members.ready.first() else {
                break None;
            };
            let id = entry.1;
            let owner = members.owner[slot as usize];
            if listed(&self.members, owner).stale {
                // Its ready entry, the truth this heap is checked against, is not true itself.
                self.settle(owner, workers, weights);
                continue;
            }
            let truth = self.ready.get(owner);
            if truth != Some(entry) {
                members.ready.set(slot, truth);
                continue;
            }
            if Some(id) != avoid {
                if let Some(gpus) =
                    Self::take(listed(&self.members, owner), shape, workers, packing, admit)
                {
                    break Some((entry.0 .0, id, gpus));
                }
            }
            members.ready.set(slot, None);
            passed.push((slot, entry));
        };
        if !passed.is_empty() {
            let members = self
                .warm
                .get_mut(&key)
                .expect("a key with members passed over is listed");
            for (slot, entry) in passed {
                members.ready.set(slot, Some(entry));
            }
        }
        found
    }

    /// best_for() once the best warm member and the best ready one are known.
    #[allow(clippy::too_many_arguments)]
    fn pick(
        &self,
        shape: &Shape,
        workers: &WorkerTable,
        weights: &Weights,
        need: Need,
        soft: bool,
        warm_best: Option<(u64, WorkerId, Gpus)>,
        ready: Ready,
    ) -> Pick {
        let avoid = self.avoided(need);
        let warm = (need.affinity != 0 && (need.hard_affinity || soft))
            .then(|| self.warm.get(&need.affinity))
            .flatten();
        if need.hard_affinity {
            if let Some((_, id, gpus)) = warm_best {
                return Pick::Worker(Choice {
                    worker: id,
                    gpus,
                    warm: true,
                    runner_up: None,
                    warm_busy: false,
                });
            }
            if warm.is_some_and(|w| w.all.iter().any(|&id| Some(id) != avoid)) {
                return Pick::NoneForTask;
            }
        }
        // A warm worker that is only busy will take it soon; a draining or quarantined one
        // will not. Looked at only on the cold path.
        let none_warm_ready = warm_best.is_none();
        let warm_busy = || {
            soft && none_warm_ready
                && warm.is_some_and(|w| {
                    w.all.iter().any(|&id| {
                        Some(id) != avoid && workers.get(id).is_ok_and(Worker::accepting)
                    })
                })
        };
        let Ready {
            first,
            runner_up,
            skipped,
        } = ready;
        let is_warm = |id: WorkerId| workers.get(id).is_ok_and(|w| w.is_warm(need.affinity));
        let choice = |(_, id, gpus): (u64, WorkerId, Gpus), runner_up| {
            let warm = is_warm(id);
            Pick::Worker(Choice {
                worker: id,
                warm,
                gpus,
                runner_up,
                warm_busy: !warm && warm_busy(),
            })
        };
        match (first, warm_best) {
            (Some(f), Some(w)) if f.1 != w.1 => {
                let warm_wins = match self.policy {
                    Policy::Composite => {
                        let bonus = |id| if is_warm(id) { weights.affinity } else { 0.0 };
                        score_of(w.0) + weights.affinity >= score_of(f.0) + bonus(f.1)
                    }
                    _ => true,
                };
                if warm_wins {
                    let other = f.1;
                    choice(w, Some(other))
                } else {
                    let other = w.1;
                    choice(f, Some(other))
                }
            }
            (Some(f), _) => choice(f, runner_up),
            (None, Some(w)) => choice(w, None),
            (None, None) => match avoid {
                Some(a) if skipped && self.fits_now(shape, workers, a).is_some() => {
                    Pick::NoneForTask
                }
                _ => Pick::NoneForShape,
            },
        }
    }

    /// The best ready member `take` gets and the next one after it (see [`Ready`]). Stale
    /// entries met on the way are ranked again first (see `Member::stale`), so the walk sees
    /// the members in their true order; each is met once, since it can only sink.
    fn first_ready(
        &mut self,
        shape: &Shape,
        workers: &WorkerTable,
        weights: &Weights,
        avoid: Option<WorkerId>,
        admit: Admit<'_>,
    ) -> Ready {
        loop {
            match self.walk_ready(shape, workers, avoid, admit) {
                Ok(ready) => return ready,
                Err(Stale(slot)) => self.settle(slot, workers, weights),
            }
        }
    }

    /// first_ready() unless a stale entry is in the way.
    fn walk_ready(
        &self,
        shape: &Shape,
        workers: &WorkerTable,
        avoid: Option<WorkerId>,
        admit: Admit<'_>,
    ) -> Result<Ready, Stale> {
        let packing = self.packing(workers);
        let check = |slot: u32| {
            if listed(&self.members, slot).stale {
                Err(Stale(slot))
            } else {
                Ok(())
            }
        };
        // The usual case, without a walk: the best entry takes it and the runner-up is the best
        // of its children. A best entry `take` refused (its GPUs held) is not asked again.
        let mut refused = None;
        if let Some(((Reverse(rank), id), slot)) = self.ready.first() {
            check(slot)?;
            let second = self.ready.second();
            if let Some((_, next)) = second {
                check(next)?;
            }
            let second = second.map(|((_, next), _)| next);
            if Some(id) != avoid && second.is_none_or(|next| Some(next) != avoid) {
                if let Some(gpus) =
                    Self::take(listed(&self.members, slot), shape, workers, packing, admit)
                {
                    return Ok(Ready {
                        first: Some((rank, id, gpus)),
                        runner_up: second,
                        skipped: false,
                    });
                }
                refused = Some(slot);
            }
        }
        let mut ready = Ready::default();
        for ((Reverse(rank), id), slot) in self.ready.iter() {
            check(slot)?;
            if Some(id) == avoid {
                ready.skipped = true;
                continue;
            }
            if ready.first.is_some() {
                // Every ready member has the shape's GPUs free: the next one could take it.
                ready.runner_up = Some(id);
                break;
            } else if refused == Some(slot) {
                continue;
            } else if let Some(gpus) =
                Self::take(listed(&self.members, slot), shape, workers, packing, admit)
            {
                ready.first = Some((rank, id, gpus));
            }
        }
        Ok(ready)
    }

    /// Rank every member again under `policy` (O(W log W)).
    pub(crate) fn set_policy(&mut self, policy: Policy, workers: &WorkerTable, weights: &Weights) {
        self.policy = policy;
        let ctx = Context {
            weights,
            learning: &workers.learning,
            kind: self.kind,
            gpus: self.gpus,
            share: self.share,
        };
        for slot in 0..self.members.len() as u32 {
            let id = self.members[slot as usize].as_ref().map(|m| m.id);
            if let Some(w) = id.and_then(|id| workers.get(id).ok()) {
                self.rekey(slot, w, &ctx, &mut Ranks::default());
            }
        }
    }

    /// Rank the stale member in `slot` again.
    fn settle(&mut self, slot: u32, workers: &WorkerTable, weights: &Weights) {
        let id = listed(&self.members, slot).id;
        let worker = workers.get(id).expect("members are live workers");
        let ctx = Context {
            weights,
            learning: &workers.learning,
            kind: self.kind,
            gpus: self.gpus,
            share: self.share,
        };
        self.rekey(slot, worker, &ctx, &mut Ranks::default());
    }

    /// A task of another shape went to the member in `slot` and its rank here fell (less
    /// capacity, fewer GPUs free, later in round-robin order), so its entry is left where it is,
    /// above its truth, until a lookup meets it.
    pub(crate) fn lowered(&mut self, slot: u32) {
        listed_mut(&mut self.members, slot).stale = true;
    }

    /// Rank the member in `slot` again, in the ready heap and in its warm keys' heaps.
    /// `ranks`: the worker's ranks so far in this pass over its indexes (see `Ranks`).
    pub(crate) fn rekey(
        &mut self,
        slot: u32,
        worker: &Worker,
        ctx: &Context<'_>,
        ranks: &mut Ranks,
    ) {
        let key = self.key_of(slot, worker, ctx, ranks);
        self.set_key(slot, key);
    }

    /// A task of another shape went to the member in `slot`, and under the fragmentation policy
    /// that may raise its rank here (it strands fewer GPUs now): ranked again at once if it
    /// rose, else left above its truth as `lowered` leaves it. O(S_w) for the rank, O(log W)
    /// only for a rise.
    pub(crate) fn shifted(
        &mut self,
        slot: u32,
        worker: &Worker,
        ctx: &Context<'_>,
        ranks: &mut Ranks,
    ) {
        if self.ready.get(slot).is_none() {
            // It was not ready here (an absent entry is never above its truth), and taking a
            // task does not make it ready: nothing to rank, as for the 8-GPU index of a busy box.
            return;
        }
        if self.gpus == 0 && self.share.is_whole() {
            // A task of no GPU strands none: its rank weighs the worker's load alone (see
            // `Demand::score`), which a task taken only raises, so the rank cannot rise. Every
            // worker serves such shapes; most placements go to other ones.
            self.lowered(slot);
            return;
        }
        let key = self.key_of(slot, worker, ctx, ranks);
        if rose(self.ready.get(slot), key) {
            self.set_key(slot, key);
        } else {
            self.lowered(slot);
        }
    }

    /// The member's ready entry as it stands: None unless it can take a task of the shape now.
    fn key_of(
        &self,
        slot: u32,
        worker: &Worker,
        ctx: &Context<'_>,
        ranks: &mut Ranks,
    ) -> Option<ReadyKey> {
        let member = listed(&self.members, slot);
        (worker.is_ready() && has_gpus(worker, &member.gpus, self.gpus, self.share)).then(|| {
            let inputs = (member.fit, &*member.gpus);
            let rank = ctx.rank_shared(self.policy, worker, inputs, ranks);
            (Reverse(rank), member.id)
        })
    }

    fn set_key(&mut self, slot: u32, key: Option<ReadyKey>) {
        let member = listed_mut(&mut self.members, slot);
        member.stale = false;
        let member = &*member;
        let old = self.ready.get(slot);
        self.ready.set(slot, key);
        // The warm heaps may rank a member above its truth (see `WarmMembers`): only a rise
        // must reach them now; a fall waits for a lookup to meet the entry.
        if !rose(old, key) {
            return;
        }
        for (k, warm_slot) in &member.warm {
            let warm = self
                .warm
                .get_mut(k)
                .expect("a member's warm keys are listed");
            warm.ready.set(*warm_slot, key);
        }
    }

    /// `key` became warm on the member in `slot`: list it under the key with its current ready
    /// entry.
    fn warmed(&mut self, slot: u32, key: u64) {
        let member = listed_mut(&mut self.members, slot);
        let warm = self.warm.entry(key).or_default();
        let warm_slot = warm.ready.slot();
        let at = warm_slot as usize;
        if warm.owner.len() <= at {
            warm.owner.resize(at + 1, 0);
        }
        warm.owner[at] = slot;
        warm.ready.set(warm_slot, self.ready.get(slot));
        warm.all.insert(member.id);
        member.warm.push((key, warm_slot));
    }

    /// `key` went cold on a member (or the member leaves).
    fn cooled(warm: &mut IdHashMap<u64, WarmMembers>, id: WorkerId, key: u64, warm_slot: u32) {
        let members = warm.get_mut(&key).expect("a member's warm keys are listed");
        members.ready.release(warm_slot);
        members.all.remove(&id);
        if members.all.is_empty() {
            warm.remove(&key);
        }
    }

    pub(crate) fn touched(&mut self, slot: u32, touch: Touch) {
        if let Some(key) = touch.cooled {
            let member = listed_mut(&mut self.members, slot);
            if let Some(pos) = member.warm.iter().position(|&(k, _)| k == key) {
                let (_, warm_slot) = member.warm.swap_remove(pos);
                Self::cooled(&mut self.warm, member.id, key, warm_slot);
            }
        }
        if let Some(key) = touch.warmed {
            self.warmed(slot, key);
        }
    }

    /// List a member with its warm keys (a new member, or a new index); its slot.
    pub(crate) fn admit_member(
        &mut self,
        id: WorkerId,
        worker: &Worker,
        gpus: Box<[u32]>,
        fit: f64,
    ) -> u32 {
        let slot = self.ready.slot();
        let at = slot as usize;
        self.supply += gpus.len() as u64;
        if self.members.len() <= at {
            self.members.resize_with(at + 1, || None);
        }
        self.members[at] = Some(Member {
            id,
            gpus,
            fit,
            warm: Vec::new(),
            stale: false,
        });
        self.slots.insert(id, slot);
        for &key in &worker.warm {
            self.warmed(slot, key);
        }
        slot
    }

    /// A member's tasks, starts, health or state changed: a kept hold plan must look at it.
    pub(crate) fn member_changed(&mut self, id: WorkerId) {
        let bound = self.slots.len() / 4 + 16;
        if let Some(plan) = &mut self.plan {
            plan.changed(id, bound);
        }
    }

    /// A member took a task: see [`Plan::busier`].
    pub(crate) fn member_busier(&mut self, id: WorkerId) {
        let bound = self.slots.len() / 4 + 16;
        if let Some(plan) = &mut self.plan {
            plan.busier(id, bound);
        }
    }

    pub(crate) fn drop_member(&mut self, slot: u32) {
        let member = self.members[slot as usize]
            .take()
            .expect("a listed slot has a member");
        if let Some(plan) = &mut self.plan {
            plan.left(member.id);
        }
        self.supply -= member.gpus.len() as u64;
        self.slots.remove(&member.id);
        self.ready.release(slot);
        for (key, warm_slot) in member.warm {
            Self::cooled(&mut self.warm, member.id, key, warm_slot);
        }
    }
}

/// A ready entry moved from `old` to `new` ranks better (or is listed anew).
fn rose(old: Option<ReadyKey>, new: Option<ReadyKey>) -> bool {
    match (old, new) {
        (None, Some(_)) => true,
        (Some(old), Some(new)) => new < old,
        (_, None) => false,
    }
}

/// The member in a slot its worker or a heap entry lists.
fn listed(members: &[Option<Member>], slot: u32) -> &Member {
    members[slot as usize]
        .as_ref()
        .expect("a listed slot has a member")
}

fn listed_mut(members: &mut [Option<Member>], slot: u32) -> &mut Member {
    members[slot as usize]
        .as_mut()
        .expect("a listed slot has a member")
}
