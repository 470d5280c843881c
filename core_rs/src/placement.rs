//! Matching tasks to workers: one lazily built `ShapeIndex` per shape, the policies, and the
//! fleet's changes carried into the indexes.
//!
//! Cost model. The filters (see `filters`) split into a static part (kind, backend, labels,
//! which GPUs qualify by memory/model/compute capability) that only changes when workers join or
//! leave, and a dynamic part (capacity, which qualifying healthy GPUs are free). Each shape gets
//! a `ShapeIndex`, built lazily on first use in O(W log W) and then kept up to date
//! incrementally: a joining worker is checked against every built index (O(S) static checks), a
//! leaving one is dropped from the indexes that list it. The best worker for a task is a lookup
//! in its shape's index (see `shape_index`). The price is paid when a worker's rank or free GPUs
//! change (a finish, a drain): O(S_w log W) to move it in the ready heaps of the S_w indexes that
//! list it, and, when its rank rises, O(S_w M log W) more in the heaps of its M warm keys. A
//! placement lowers ranks under every policy but fragmentation: it moves the worker in its own
//! shape's ready heap, O(log W), and marks it stale in the other S_w - 1, O(1) each; a stale
//! entry is moved when a lookup meets it, O(log W) then, and a worker that finishes first is
//! never moved for it (see `Member::stale`). Under fragmentation a placement may raise the
//! worker's rank for other shapes (it may strand fewer of their GPUs now), so each of those
//! indexes ranks it again, O(S_w) each, and moves it at once where it rose (see
//! `ShapeIndex::shifted`). The demand mix those ranks weigh re-ranks the fragmentation indexes
//! when it moves, O(S W log W), rarely (see `demand`).
//!
//! Ranks that depend on what the fleet learned (a GPU model's runtime for a kind) are refreshed
//! when the worker itself is ranked again (its own placements and finishes, a lookup meeting its
//! stale entry), so they may lag the fleet's learning by one task per worker.

use std::collections::HashMap;

use crate::affinity::{Touch, WarmIndex};
use crate::error::CoreResult;
use crate::filters::static_fit;
use crate::id_hash::IdHashMap;
use crate::learning::Learning;
use crate::policy::{fit, Context, Policy, Ranks, Weights};
use crate::shape_index::ShapeIndex;
use crate::shapes::{Shape, ShapeTable};
use crate::workers::{Worker, WorkerTable};
use crate::{ShapeId, WorkerId};

/// What the static filter says of a worker profile for a shape: its qualifying GPUs and fit, or
/// None if it can never run the shape.
type Verdict = Option<(Box<[u32]>, f64)>;

/// The weights, the policies and one lazily built `ShapeIndex` per shape.
#[derive(Debug)]
pub struct PlacementIndex {
    weights: Weights,
    policy: Policy,
    kind_policies: HashMap<String, Policy>,
    shapes: Vec<Option<ShapeIndex>>,
    pub warm: WarmIndex,
}

impl PlacementIndex {
    pub fn new(weights: Weights, policy: Policy, affinity_memory: usize) -> CoreResult<Self> {
        weights.check()?;
        Ok(PlacementIndex {
            weights,
            policy,
            kind_policies: HashMap::new(),
            shapes: Vec::new(),
            warm: WarmIndex::new(affinity_memory),
        })
    }

    pub fn weights(&self) -> Weights {
        self.weights
    }

    /// The policy tasks of `kind` are placed by.
    pub fn policy_for(&self, kind: &str) -> Policy {
        self.kind_policies.get(kind).copied().unwrap_or(self.policy)
    }

    /// Place tasks of `kind` by `policy` from now on; re-ranks that kind's built indexes
    /// (O(W log W) each).
    pub fn set_kind_policy(
        &mut self,
        kind: &str,
        policy: Policy,
        shapes: &ShapeTable,
        workers: &WorkerTable,
    ) {
        self.kind_policies.insert(kind.to_owned(), policy);
        for (sid, index) in self.shapes.iter_mut().enumerate() {
            let Some(index) = index else { continue };
            let shape = shapes.get(sid as ShapeId).expect("indexed shapes exist");
            if shape.kind != kind || index.policy == policy {
                continue;
            }
            index.set_policy(policy, workers, &self.weights);
        }
    }

    /// The index of a shape, if built.
    pub fn built(&self, id: ShapeId) -> Option<&ShapeIndex> {
        self.shapes.get(slot(id)).and_then(Option::as_ref)
    }

    /// The index of a shape, if built, to look up a task in (see `ShapeIndex::best_for`).
    pub fn built_mut(&mut self, id: ShapeId) -> Option<&mut ShapeIndex> {
        self.shapes.get_mut(slot(id)).and_then(Option::as_mut)
    }

    /// The index of a shape, building it (O(W log W)) on first use.
    pub fn index(&mut self, id: ShapeId, shape: &Shape, workers: &mut WorkerTable) -> &ShapeIndex {
        let i = slot(id);
        if self.shapes.len() <= i {
            self.shapes.resize_with(i + 1, || None);
        }
        if self.shapes[i].is_none() {
            let kind = workers.learning.kind_id(&shape.learned_as);
            let mut index =
                ShapeIndex::new(kind, shape.gpus, shape.share, self.policy_for(&shape.kind));
            let mut listed = Vec::new();
            // Workers of one profile pass or fail alike (see `workers::Profile`): each profile
            // is checked once.
            let mut verdicts: IdHashMap<u32, Verdict> = IdHashMap::default();
            for (wid, worker) in workers.iter() {
                let verdict = verdicts.entry(worker.profile).or_insert_with(|| {
                    static_fit(shape, worker).map(|gpus| {
                        let fit = fit(shape, worker, &gpus);
                        (gpus, fit)
                    })
                });
                if let Some((gpus, fit)) = verdict {
                    let member = index.admit_member(wid, worker, gpus.clone(), *fit);
                    listed.push((wid, member));
                }
            }
            let ctx = Context {
                weights: &self.weights,
                learning: &workers.learning,
                kind,
                gpus: shape.gpus,
                share: shape.share,
            };
            for &(wid, member) in &listed {
                let w = workers.get(wid).expect("listed workers are live");
                index.rekey(member, w, &ctx, &mut Ranks::default());
            }
            for (wid, member) in listed {
                workers
                    .get_mut(wid)
                    .expect("listed workers are live")
                    .shapes
                    .push((id, member));
            }
            self.shapes[i] = Some(index);
        }
        self.shapes[i].as_ref().expect("just built")
    }

    /// A worker joined: list it in every built index it fits, then rank it.
    pub fn worker_added(&mut self, id: WorkerId, workers: &mut WorkerTable, shapes: &ShapeTable) {
        let worker = workers.get_mut(id).expect("a new worker is live");
        for (sid, index) in self.shapes.iter_mut().enumerate() {
            let Some(index) = index else { continue };
            let shape = shapes
                .get(sid as ShapeId)
                .expect("indexes exist only for interned shapes");
            if let Some(gpus) = static_fit(shape, worker) {
                let fit = fit(shape, worker, &gpus);
                let member = index.admit_member(id, worker, gpus, fit);
                worker.shapes.push((sid as ShapeId, member));
            }
        }
        self.refresh(id, workers);
    }

    /// A worker left: drop it from the indexes that list it.
    pub fn worker_removed(&mut self, worker: &Worker) {
        for &(sid, member) in &worker.shapes {
            self.shapes[slot(sid)]
                .as_mut()
                .expect("listed in a built index")
                .drop_member(member);
        }
        self.warm.worker_removed(worker);
    }

    /// A task with affinity `key` was placed on the worker: it is warm there now (see
    /// `WarmIndex::touch`). Call `refresh` after, which ranks the worker anew under the key.
    pub fn touch(&mut self, worker: &mut Worker, key: u64) {
        let touch = self.warm.touch(worker, key);
        if touch == Touch::default() {
            return;
        }
        for &(sid, member) in &worker.shapes {
            self.shapes[slot(sid)]
                .as_mut()
                .expect("listed in a built index")
                .touched(member, touch);
        }
    }

    /// The worker's rank, readiness or free GPUs may have changed: move it in its indexes' ready
    /// and warm heaps.
    pub fn refresh(&mut self, id: WorkerId, workers: &mut WorkerTable) {
        self.rekey_where(id, workers, |_| true, false);
    }

    /// What runtimes are predicted from changed: kept hold plans are planned again.
    pub fn forget_plans(&mut self) {
        for index in self.shapes.iter_mut().flatten() {
            index.plan = None;
        }
    }

    /// A change of the worker that moves no rank (a task it holds started): kept hold plans
    /// look at it again.
    pub fn changed(&mut self, id: WorkerId, workers: &WorkerTable) {
        let Ok(worker) = workers.get(id) else { return };
        for &(sid, _) in &worker.shapes {
            if let Some(index) = self.shapes[slot(sid)].as_mut() {
                index.member_changed(id);
            }
        }
    }

    /// A task of shape `placed` went to the worker, which lowered its rank everywhere except,
    /// maybe, in fragmentation indexes. It is moved in that shape's ready heap at once, where the
    /// next lookup meets it at the top; the other indexes that list it mark it stale and move it
    /// when a lookup meets it (see `Member::stale`), often never before a finish raises it again,
    /// or, under fragmentation, move it at once where its rank rose (`ShapeIndex::shifted`). So a
    /// placement re-ranks the worker in one heap instead of one per shape it fits.
    pub fn lowered(&mut self, id: WorkerId, workers: &mut WorkerTable, placed: ShapeId) {
        self.rekey_where(id, workers, |sid| sid == placed, true);
    }

    /// Rank the worker again in the indexes of the shapes `now` accepts; in the others, mark it
    /// stale (or, under fragmentation, rank it again where it rose). `busier`: it only took a
    /// task, which kept hold plans need not look at unless it is the one they count on.
    fn rekey_where(
        &mut self,
        id: WorkerId,
        workers: &mut WorkerTable,
        now: impl Fn(ShapeId) -> bool,
        busier: bool,
    ) {
        let (worker, learning) = match workers.get_with_learning(id) {
            Ok(x) => x,
            Err(_) => return,
        };
        let mut ranks = Ranks::default();
        for &(sid, member) in &worker.shapes {
            let index = self.shapes[slot(sid)]
                .as_mut()
                .expect("listed in a built index");
            if busier {
                index.member_busier(id);
            } else {
                index.member_changed(id);
            }
            let ctx = Context {
                weights: &self.weights,
                learning,
                kind: index.kind,
                gpus: index.gpus,
                share: index.share,
            };
            if now(sid) {
                index.rekey(member, worker, &ctx, &mut ranks);
            } else if index.policy == Policy::Fragmentation {
                // A fragmentation rank may rise when the worker's free GPUs fall (it may strand
                // fewer GPUs now), and a stale entry must never sit below its truth.
                index.shifted(member, worker, &ctx, &mut ranks);
            } else {
                index.lowered(member);
            }
        }
    }

    /// A task of shape `id` was queued: fold it into the demand mix, and rank the fragmentation
    /// indexes again when the mix moved (O(S W log W) then; see `demand`).
    pub fn demanded(&mut self, id: ShapeId, shape: &Shape, workers: &mut WorkerTable) {
        let supply = |sid: ShapeId| self.built(sid).map_or(0, ShapeIndex::supply);
        let picky = !shape.gpu_models.is_empty();
        if !workers
            .learning
            .demand
            .record(id, shape.gpus, shape.share.milli, picky, supply)
        {
            return;
        }
        for index in self.shapes.iter_mut().flatten() {
            if index.policy == Policy::Fragmentation {
                index.set_policy(Policy::Fragmentation, workers, &self.weights);
            }
        }
    }

    /// Score terms of a worker for a shape (composite weights), for explanations.
    pub fn context<'a>(&'a self, index: &ShapeIndex, learning: &'a Learning) -> Context<'a> {
        Context {
            weights: &self.weights,
            learning,
            kind: index.kind,
            gpus: index.gpus,
            share: index.share,
        }
    }
}

fn slot(id: ShapeId) -> usize {
    usize::try_from(id).expect("shape ids are vector indices")
}
