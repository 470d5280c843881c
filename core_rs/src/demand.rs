//! The recent mix of demand per shape, and what a placement costs it: the fragmentation policy's
//! rank (after FGD, "Beware of Fragmentation", ATC '23).
//!
//! A worker's free GPUs serve a shape of k GPUs in whole multiples of k: 7 free GPUs serve one
//! task of 4, 3 more go unused by it. Placing a task lowers what the worker can still serve; the
//! capacity lost is weighed over the shapes that can run there (the worker's built indexes), each
//! by its share of recent demand over the GPUs that can serve it, so a shape that only a few
//! workers can run (a scarce GPU model) weighs more on those workers, and tasks that could run
//! anywhere keep off them. The least capacity lost wins; ties go to the worker left with fewer
//! free GPUs (best fit on what is left, not on the worker's size).
//!
//! Demand not seen yet counts too. A shape that accepts only a scarce GPU model may first
//! arrive long after tasks that run anywhere took that model's few GPUs, and then waits for
//! their whole runtimes. So when the mix has tasks that name GPU models, every GPU model stands
//! for a shape that could ask for it alone, with a part of that share of demand
//! (`UNSEEN_PART`) over the model's GPUs: a GPU of a model the fleet has a handful of weighs far
//! more than one of its common model, whatever the mix so far. On a fleet of one model it weighs
//! the same everywhere, and in a mix where no task names a model it weighs nothing: neither
//! changes a rank.
//!
//! Cost model. `record` is O(1) per push, and O(S) at the end of each window of pushes, where the
//! mix is decayed; ranks follow (O(S W log W)) only when a shape's share moved by more than
//! `DRIFT` of itself or its supply by more than a tenth (workers joined or left, or its index was
//! built), so a steady mix on a steady fleet does not re-rank it. A rank is O(S_w) for the S_w shapes the
//! worker serves.

use crate::filters::WHOLE_MILLI;
use crate::learning::ModelId;
use crate::workers::Worker;
use crate::ShapeId;

/// Pushes per window: the mix halves its weight each window, so it follows the last few
/// thousand pushes.
const WINDOW: u64 = 1024;
/// A shape's share must move by this part of itself, and by `MIN_DRIFT` at least, before ranks
/// follow the mix: far beyond the sampling noise of a steady mix (a share of 0.25 over the
/// 2,048 pushes the window weighs wobbles by about 0.01), since following it costs a re-rank of
/// every worker in every fragmentation index.
const DRIFT: f64 = 0.25;
const MIN_DRIFT: f64 = 0.02;
/// The share of demand a shape that asks for one GPU model alone is assumed to have before any
/// is seen, as a part of the share of recent demand that names GPU models: with a third of the
/// tasks naming models, 1/48 per model, so a model with 1% of the fleet's GPUs weighs about 2
/// per GPU (a task that could run anywhere would rather split an idle 8-GPU worker), and one
/// with a third of them 1/16.
const UNSEEN_PART: f64 = 1.0 / 16.0;
/// Pushes' worth of belief, before the mix says otherwise, that half of demand names GPU
/// models: the first tasks of a trace may run for days, so the scarce GPUs must be kept before
/// the mix is known, and a long mix without model names brings the weight near nothing.
const PRIOR_PUSHES: f64 = 8.0;

#[derive(Debug, Clone, Copy, Default)]
struct ShapeDemand {
    /// GPUs a task of the shape uses.
    gpus: u32,
    /// Thousandths of one GPU it uses when it asks for a share; 0 = whole GPUs.
    milli: u32,
    /// It accepts only some GPU models.
    picky: bool,
    /// Tasks pushed, halved each window.
    recent: f64,
    /// Its share of the mix and its supply when the weights were last taken.
    share: f64,
    supply: u64,
    /// Share over supply, scaled by the fleet's GPUs: the capacity it loses per GPU, in units
    /// where a shape every GPU serves weighs its share.
    weight: f64,
}

/// The fleet's GPUs of one model.
#[derive(Debug, Clone, Copy, Default)]
struct ModelSupply {
    gpus: u64,
    /// Its GPUs when the weights were last taken, and the weight of one of them then: the
    /// unseen shape's capacity lost per GPU taken (see `UNSEEN_PART`).
    taken: u64,
    weight: f64,
}

/// The recent demand per shape and the weights ranks are computed with.
#[derive(Debug, Default)]
pub struct Demand {
    shapes: Vec<ShapeDemand>,
    models: Vec<ModelSupply>,
    /// The share of demand naming GPU models when the weights were last taken, with the prior
    /// (see `PRIOR_PUSHES`).
    picky: f64,
    pushes: u64,
}

impl Demand {
    /// A worker with `gpus` GPUs of `model` joined (`joined`) or left the fleet. Ranks follow
    /// at the next window of pushes (see `record`).
    pub fn fleet_changed(&mut self, model: ModelId, gpus: usize, joined: bool) {
        let i = usize::try_from(model).expect("model ids are vector indices");
        if self.models.len() <= i {
            self.models.resize(i + 1, ModelSupply::default());
        }
        let m = &mut self.models[i];
        m.gpus = if joined {
            m.gpus + gpus as u64
        } else {
            m.gpus.saturating_sub(gpus as u64)
        };
    }

    /// The unseen shape's capacity lost per GPU of `model` taken (see `UNSEEN_PART`).
    fn scarcity(&self, model: ModelId) -> f64 {
        usize::try_from(model)
            .ok()
            .and_then(|i| self.models.get(i))
            .map_or(0.0, |m| m.weight)
    }

    /// A task of `shape` (`gpus` GPUs, or `milli` thousandths of one; `picky`: of some GPU
    /// models only) was queued. `supply(s)` is
    /// the GPUs of the workers that can run shape `s`. True when the weights changed, so ranks
    /// must be computed again.
    pub fn record(
        &mut self,
        shape: ShapeId,
        gpus: u32,
        milli: u32,
        picky: bool,
        supply: impl Fn(ShapeId) -> u64,
    ) -> bool {
        let i = usize::try_from(shape).expect("shape ids are vector indices");
        if self.shapes.len() <= i {
            self.shapes.resize(i + 1, ShapeDemand::default());
        }
        self.shapes[i].gpus = gpus;
        self.shapes[i].milli = milli;
        self.shapes[i].picky = picky;
        self.shapes[i].recent += 1.0;
        self.pushes += 1;
        // Early on, at every power of two, so a young scheduler learns its mix quickly.
        if !(self.pushes.is_power_of_two() || self.pushes.is_multiple_of(WINDOW)) {
            return false;
        }
        let total: f64 = self.shapes.iter().map(|s| s.recent).sum();
        let supplies: Vec<u64> = (0..self.shapes.len() as ShapeId).map(supply).collect();
        let drifted =
            |s: &ShapeDemand| (s.recent / total - s.share).abs() > (DRIFT * s.share).max(MIN_DRIFT);
        let moved = |s: &ShapeDemand, now: u64| now.abs_diff(s.supply) * 10 > s.supply;
        let picky: f64 = self
            .shapes
            .iter()
            .filter(|s| s.picky)
            .map(|s| s.recent)
            .sum();
        let picky = (picky + PRIOR_PUSHES / 2.0) / (total + PRIOR_PUSHES);
        let retake = self
            .shapes
            .iter()
            .zip(&supplies)
            .any(|(s, &n)| drifted(s) || moved(s, n))
            || (picky - self.picky).abs() > (DRIFT * self.picky).max(MIN_DRIFT)
            || self
                .models
                .iter()
                .any(|m| m.gpus.abs_diff(m.taken) * 10 > m.taken);
        if retake {
            self.picky = picky;
            let gpus: u64 = self.models.iter().map(|m| m.gpus).sum();
            let unseen = UNSEEN_PART * picky;
            for m in &mut self.models {
                m.taken = m.gpus;
                m.weight = if m.gpus == 0 {
                    0.0
                } else {
                    unseen * gpus as f64 / m.gpus as f64
                };
            }
            let fleet = supplies.iter().copied().max().unwrap_or(0) as f64;
            for (s, &supply) in self.shapes.iter_mut().zip(&supplies) {
                s.share = s.recent / total;
                s.supply = supply;
                s.weight = if supply == 0 || s.gpus == 0 {
                    0.0
                } else {
                    s.share * fleet / supply as f64
                };
            }
        }
        if self.pushes.is_multiple_of(WINDOW) {
            for s in &mut self.shapes {
                s.recent /= 2.0;
            }
        }
        retake
    }

    /// The demand-weighted GPUs a worker with `free` free GPUs can no longer serve once it gives
    /// `take` of them whole to a task, over the shapes it serves (`served`): a shape of whole
    /// GPUs loses what whole multiples of its size no longer fit, a share loses what it could
    /// use of each GPU taken.
    pub fn lost(&self, free: u32, take: u32, served: impl Iterator<Item = ShapeId>) -> f64 {
        let after = free.saturating_sub(take);
        self.weighed(served, |s| {
            if s.milli == 0 {
                f64::from(usable(free, s.gpus) - usable(after, s.gpus))
            } else {
                f64::from(take) * share_usable(WHOLE_MILLI, s.milli)
            }
        })
    }

    /// lost() for a share of `milli` thousandths placed on a GPU that shares already use `used`
    /// thousandths of (0: a free GPU, one of `free`): a shape of whole GPUs loses only if the
    /// share splits a free GPU; a share loses what it could use of the GPU's rest and can no
    /// more (after FGD, where a GPU's rest too small for the shares in demand is fragmentation).
    pub fn share_lost(
        &self,
        free: u32,
        used: u32,
        milli: u32,
        served: impl Iterator<Item = ShapeId>,
    ) -> f64 {
        let left = WHOLE_MILLI.saturating_sub(used);
        let after = left.saturating_sub(milli);
        self.weighed(served, |s| {
            if s.milli > 0 {
                share_usable(left, s.milli) - share_usable(after, s.milli)
            } else if used == 0 {
                f64::from(usable(free, s.gpus) - usable(free.saturating_sub(1), s.gpus))
            } else {
                0.0
            }
        })
    }

    /// The sum over the served shapes with weight of what `lost` says each loses, by weight.
    fn weighed(
        &self,
        served: impl Iterator<Item = ShapeId>,
        lost: impl Fn(&ShapeDemand) -> f64,
    ) -> f64 {
        served
            .filter_map(|s| self.shapes.get(usize::try_from(s).ok()?))
            .filter(|s| s.weight > 0.0)
            .map(|s| lost(s) * s.weight)
            .sum()
    }

    /// The fragmentation rank's score of a worker with `free` free GPUs for a task of `gpus`
    /// GPUs, in (0, 1], higher =
    /// better: the capacity lost first, then the share of its GPUs left free (for a task without
    /// GPUs: the less GPU capacity it would idle beside, by `static_fit`, and the freer the
    /// worker, the better).
    pub fn score(&self, worker: &Worker, free: u32, gpus: u32, static_fit: f64) -> f64 {
        let tiebreak = if gpus == 0 || worker.gpus.is_empty() {
            0.5 * (1.0 - static_fit) + 0.5 * (1.0 - worker.availability())
        } else {
            let left = free.saturating_sub(gpus);
            f64::from(left) / worker.gpus.len() as f64
        };
        let lost = if gpus == 0 {
            0.0
        } else {
            let served = worker.shapes.iter().map(|&(s, _)| s);
            self.lost(free, gpus, served) + f64::from(gpus) * self.scarcity(worker.model)
        };
        1.0 / (1.0 + lost + 1e-3 * tiebreak)
    }
}

impl Demand {
    /// The fragmentation rank's score of a worker for a share of `milli` thousandths going on a
    /// GPU that shares use `used` thousandths of (0: one of its `free` GPUs), in (0, 1], higher =
    /// better: the capacity lost first (see `share_lost`), then the less of the GPU it leaves
    /// unused, the better (shares pack; splitting a free GPU comes last).
    pub fn share_score(&self, worker: &Worker, free: u32, used: u32, milli: u32) -> f64 {
        let served = worker.shapes.iter().map(|&(s, _)| s);
        let mut lost = self.share_lost(free, used, milli, served);
        if used == 0 {
            // It splits a GPU the unseen shape of the worker's model could have had whole.
            lost += self.scarcity(worker.model);
        }
        let left = WHOLE_MILLI.saturating_sub(used + milli);
        let tiebreak = f64::from(left) / f64::from(WHOLE_MILLI) + if used == 0 { 1.0 } else { 0.0 };
        1.0 / (1.0 + lost + 1e-3 * tiebreak)
    }
}

/// GPUs' worth a share of `milli` thousandths can use out of `left` thousandths of one GPU.
fn share_usable(left: u32, milli: u32) -> f64 {
    f64::from(left / milli * milli) / f64::from(WHOLE_MILLI)
}

/// GPUs a shape of `k` GPUs can use out of `free`: whole multiples of k.
fn usable(free: u32, k: u32) -> u32 {
    free / k * k
}

/// Healthy GPUs no placed task holds, whole or in part.
pub fn free_gpus(worker: &Worker) -> u32 {
    worker
        .gpus
        .iter()
        .filter(|g| g.healthy && g.holders == 0 && g.milli == 0)
        .count() as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn mix(shapes: &[(ShapeId, u32, u64)], supply: &[u64]) -> Demand {
        let mut d = Demand::default();
        for &(shape, gpus, n) in shapes {
            for _ in 0..n {
                d.record(shape, gpus, 0, false, |s| supply[s as usize]);
            }
        }
        d
    }

    #[test]
    fn a_task_that_splits_a_whole_node_loses_the_big_shapes_capacity() {
        // Half the demand 1-GPU, half 8-GPU, both served by the same 64 GPUs.
        let d = mix(&[(0, 1, 64), (1, 8, 64)], &[64, 64]);
        let on_empty = d.lost(8, 1, [0, 1].into_iter());
        let on_nearly_full = d.lost(1, 1, [0, 1].into_iter());
        assert!(
            on_nearly_full < on_empty,
            "one GPU on an empty 8-GPU node costs the 8-GPU tasks a node: {on_nearly_full} vs {on_empty}"
        );
    }

    #[test]
    fn gpus_only_a_scarce_shape_can_use_weigh_more() {
        // Shape 0 runs anywhere (100 GPUs); shape 1 only on 10 of them; equal demand.
        let d = mix(&[(0, 1, 50), (1, 1, 50)], &[100, 10]);
        let scarce = d.lost(2, 1, [0, 1].into_iter());
        let common = d.lost(2, 1, [0].into_iter());
        assert!(scarce > common, "{scarce} <= {common}");
    }

    #[test]
    fn a_steady_mix_keeps_its_weights_through_its_noise() {
        let mut d = Demand::default();
        let mut rng: u64 = 7;
        let mut late = 0;
        for i in 0..50 * WINDOW {
            rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            // The first windows learn the mix; after that it only wobbles.
            if d.record((rng >> 33) % 4, 1, 0, false, |_| 8) && i >= 4 * WINDOW {
                late += 1;
            }
        }
        assert_eq!(
            late, 0,
            "re-ranked {late} times for a mix that never changed"
        );
    }

    #[test]
    fn a_new_mix_is_followed() {
        let mut d = Demand::default();
        let mut retakes = |shape| {
            (0..4 * WINDOW)
                .filter(|_| d.record(shape, 1, 0, false, |_| 8))
                .count()
        };
        retakes(0);
        assert!(
            retakes(1) > 0,
            "demand moved to another shape and ranks never followed"
        );
    }

    #[test]
    fn a_share_leaves_a_rest_the_shares_in_demand_can_use() {
        // Shares of 300 and 500 and 1-GPU tasks in demand over the same 8 GPUs.
        let mut d = Demand::default();
        for _ in 0..64 {
            d.record(0, 1, 300, false, |_| 8);
            d.record(1, 1, 500, false, |_| 8);
            d.record(2, 1, 0, false, |_| 8);
        }
        let served = || [0, 1, 2].into_iter();
        // A 500 on a GPU with 800 free leaves 300, which a 300 can use; with 600 free, 100.
        let usable_rest = d.share_lost(4, 200, 500, served());
        let useless_rest = d.share_lost(4, 400, 500, served());
        assert!(
            usable_rest < useless_rest,
            "{usable_rest} >= {useless_rest}"
        );
        let splits = d.share_lost(4, 0, 500, served());
        assert!(
            splits > useless_rest,
            "splitting a free GPU costs a 1-GPU task its GPU: {splits}"
        );
    }

    #[test]
    fn a_gpu_of_a_model_the_fleet_has_few_of_weighs_more_before_any_task_asks_for_it() {
        let mut d = Demand::default();
        d.fleet_changed(0, 64, true);
        d.fleet_changed(1, 2, true);
        // Half the tasks ask for model 0 alone; none has asked for model 1.
        d.record(0, 1, 0, false, |_| 66);
        d.record(1, 1, 0, true, |s| [66, 64][s as usize]);
        assert!(d.scarcity(1) > 10.0 * d.scarcity(0), "{:?}", d.models);
    }

    #[test]
    fn a_mix_where_no_task_names_a_model_weighs_a_scarce_one_less_and_less() {
        let mut d = Demand::default();
        d.fleet_changed(0, 64, true);
        d.fleet_changed(1, 2, true);
        d.record(0, 1, 0, false, |_| 66);
        let first = d.scarcity(1);
        assert!(first > 0.0, "kept before the mix is known");
        for _ in 0..4 * WINDOW {
            d.record(0, 1, 0, false, |_| 66);
        }
        assert!(d.scarcity(1) < first / 10.0, "{first} -> {}", d.scarcity(1));
    }

    #[test]
    fn scarcity_follows_the_fleet_at_the_next_window() {
        let mut d = Demand::default();
        d.fleet_changed(0, 8, true);
        d.fleet_changed(1, 8, true);
        d.record(0, 1, 0, true, |_| 16);
        let before = d.scarcity(1);
        // Most of model 1 leaves: its last GPUs grow scarcer once the weights are taken again.
        d.fleet_changed(1, 6, false);
        d.record(0, 1, 0, true, |_| 10);
        assert!(
            d.scarcity(1) > 2.0 * before,
            "{before} -> {}",
            d.scarcity(1)
        );
    }

    proptest! {
        /// Losing capacity is never negative and never more than the weighted GPUs taken and
        /// stranded: each shape loses at most the GPUs it could use before.
        #[test]
        fn capacity_lost_is_bounded_by_what_the_worker_could_serve(
            free in 0u32..9, take in 1u32..9, sizes in prop::collection::vec(1u32..9, 1..5),
        ) {
            let shapes: Vec<_> = sizes.iter().enumerate().map(|(i, &k)| (i as ShapeId, k, 10)).collect();
            let d = mix(&shapes, &vec![64; sizes.len()]);
            let served = 0..sizes.len() as ShapeId;
            let lost = d.lost(free, take, served.clone());
            let bound: f64 = d.shapes.iter().map(|s| f64::from(usable(free, s.gpus)) * s.weight).sum();
            prop_assert!(lost >= 0.0 && lost <= bound + 1e-9, "{lost} outside [0, {bound}]");
        }
    }
}
