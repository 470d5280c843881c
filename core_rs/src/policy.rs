//! Placement policies: how the workers that can take a task are ranked.
//!
//! Every policy turns a (worker, shape) pair into one `u64` rank, higher = better, so each
//! shape's ready workers can sit in one ordered set (see `placement`). Ranks depend on the
//! worker's load and what the core learned about it (the fragmentation policy's also on the
//! recent mix of demand, see `demand`), on the shape's kind and on a static best-fit measure of
//! the shape against the worker; they never depend on the individual task. The one
//! task-dependent term, affinity (is the task's model warm on the worker?), is applied on top:
//! each shape's index also keeps its warm members per key, in the same rank order.

use std::fmt;
use std::str::FromStr;

use smallvec::SmallVec;

use crate::demand::free_gpus;
use crate::error::{invalid, CoreError, CoreResult};
use crate::filters::{choose_share, Share, WHOLE_MILLI};
use crate::learning::{KindId, Learning};
use crate::shapes::Shape;
use crate::workers::Worker;

/// Speeds above this earn no more score: a worker twice as fast as the fleet is fast enough.
pub const SPEED_CAP: f64 = 2.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    /// The ready worker that got work least recently.
    RoundRobin,
    /// The ready worker with the largest share of its capacity free.
    LeastLoaded,
    /// The fastest ready worker for the task's kind (learned), then the least loaded.
    Performance,
    /// A worker where the task's affinity key is warm, else the least loaded.
    Affinity,
    /// The cheapest expected $ per task (the task's share of cost_per_hour x predicted runtime),
    /// then least loaded.
    Cost,
    /// A weighted sum of availability, success, speed, fit, cost and affinity.
    Composite,
    /// The worker where the task costs the recent mix of demand the least GPU capacity, then
    /// the one it leaves with the fewest GPUs free (see `demand`); a ready worker where the
    /// task's affinity key is warm first, as `Affinity`.
    Fragmentation,
}

impl Policy {
    pub const ALL: [Policy; 7] = [
        Policy::RoundRobin,
        Policy::LeastLoaded,
        Policy::Performance,
        Policy::Affinity,
        Policy::Cost,
        Policy::Composite,
        Policy::Fragmentation,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round_robin",
            Policy::LeastLoaded => "least_loaded",
            Policy::Performance => "performance",
            Policy::Affinity => "affinity",
            Policy::Cost => "cost",
            Policy::Composite => "composite",
            Policy::Fragmentation => "fragmentation",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Policy {
    type Err = CoreError;

    fn from_str(s: &str) -> CoreResult<Policy> {
        Policy::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Policy::ALL.iter().map(|p| p.name()).collect();
                invalid(format!(
                    "unknown policy '{s}'; use one of {}",
                    names.join(", ")
                ))
            })
    }
}

/// Weights of the composite score's terms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weights {
    pub availability: f64,
    pub success: f64,
    pub speed: f64,
    pub affinity: f64,
    pub fit: f64,
    pub cost: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            availability: 0.5,
            success: 0.3,
            speed: 0.2,
            affinity: 0.3,
            fit: 0.2,
            cost: 0.1,
        }
    }
}

impl Weights {
    pub fn check(&self) -> CoreResult<()> {
        for (name, w) in [
            ("w_availability", self.availability),
            ("w_success", self.success),
            ("w_speed", self.speed),
            ("w_affinity", self.affinity),
            ("w_fit", self.fit),
            ("w_cost", self.cost),
        ] {
            if !w.is_finite() || w < 0.0 {
                return Err(invalid(format!(
                    "{name} must be a finite number >= 0, got {w}"
                )));
            }
        }
        Ok(())
    }
}

/// The composite score's terms for one worker and shape, each weighted.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Terms {
    pub availability: f64,
    pub success: f64,
    pub speed: f64,
    pub fit: f64,
    pub cost: f64,
    /// The warm bonus; 0 unless the task's affinity key is warm on the worker.
    pub affinity: f64,
}

impl Terms {
    pub fn total(&self) -> f64 {
        self.availability + self.success + self.speed + self.fit + self.cost + self.affinity
    }
}

/// How well a shape fits a worker, in [0, 1]: 1 = the worker has nothing the task does not
/// need. Static, computed once per (shape, worker). It looks at the spare GPU count and, for GPU
/// tasks, the spare memory of the GPUs it would get (log scale: 64x more than needed = no fit),
/// so a small task prefers a small worker and big-memory workers stay free for big tasks.
pub fn fit(shape: &Shape, worker: &Worker, qualifying: &[u32]) -> f64 {
    let gpus = worker.gpus.len() as f64;
    if shape.gpus == 0 {
        return 1.0 / (1.0 + gpus);
    }
    let spare_count = (gpus - f64::from(shape.gpus)) / gpus;
    let need = shape.min_gpu_memory_mb.max(4096) as f64;
    let smallest = qualifying
        .first()
        .map_or(need, |&g| worker.gpus[g as usize].memory_total_mb as f64);
    let spare_memory = ((smallest / need).log2() / 6.0).clamp(0.0, 1.0);
    1.0 - 0.5 * spare_count - 0.5 * spare_memory
}

/// The share of a worker a task of `gpus` GPUs pays for: its GPUs over the worker's, or one slot
/// of a worker for a task without GPUs (and of a worker without GPUs).
pub fn share(worker: &Worker, gpus: u32) -> f64 {
    if gpus == 0 || worker.gpus.is_empty() {
        1.0 / f64::from(worker.slots)
    } else {
        (f64::from(gpus) / worker.gpus.len() as f64).min(1.0)
    }
}

/// Expected cost of a task relative to the fleet, in $/h per unit speed: the task's share of the
/// worker's cost_per_hour divided by the worker's speed at the kind (so its $ share x predicted
/// runtime, up to the kind's fleet runtime, which is the same for every worker).
fn relative_cost(cost_per_hour: f64, share: f64, speed: f64) -> f64 {
    cost_per_hour * share / speed.max(1e-3)
}

/// What ranking needs beyond the worker itself.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub weights: &'a Weights,
    pub learning: &'a Learning,
    pub kind: KindId,
    /// GPUs a task of the shape uses (for its share of a worker's price).
    pub gpus: u32,
    /// Whole GPUs, or the share of one a task of the shape uses.
    pub share: Share,
}

/// What the score of a worker for a shape is computed from, as it stands at one moment (an
/// explanation keeps these and weighs them only when asked).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Inputs {
    pub availability: f64,
    pub success_rate: f64,
    /// Its speed at the shape's kind against the fleet.
    pub speed: f64,
    pub cost_per_hour: f64,
    /// The share of the worker's price the task pays (see `share`).
    pub share: f64,
    pub fit: f64,
}

impl Inputs {
    /// Expected cost relative to the fleet, as `relative_cost`.
    pub fn relative_cost(&self) -> f64 {
        relative_cost(self.cost_per_hour, self.share, self.speed)
    }

    /// The weighted terms (affinity 0: the warm bonus depends on the task).
    pub fn terms(&self, ws: &Weights) -> Terms {
        Terms {
            availability: ws.availability * self.availability,
            success: ws.success * self.success_rate,
            speed: ws.speed * self.speed.min(SPEED_CAP) / SPEED_CAP,
            fit: ws.fit * self.fit,
            cost: ws.cost / (1.0 + self.relative_cost()),
            affinity: 0.0,
        }
    }
}

impl Context<'_> {
    pub fn inputs(&self, w: &Worker, fit: f64) -> Inputs {
        Inputs {
            availability: w.availability(),
            success_rate: w.success_rate,
            speed: w.speed_for(self.kind, self.learning),
            cost_per_hour: w.cost_per_hour,
            share: self.price_share(w),
            fit,
        }
    }

    pub fn terms(&self, w: &Worker, fit: f64) -> Terms {
        self.inputs(w, fit).terms(self.weights)
    }

    /// The share of a worker's price a task of the shape pays: `share`, times its share of the
    /// GPU when it asks for one.
    fn price_share(&self, w: &Worker) -> f64 {
        let whole = share(w, self.gpus);
        if self.share.is_whole() {
            whole
        } else {
            whole * f64::from(self.share.milli) / f64::from(WHOLE_MILLI)
        }
    }

    /// rank(), shared through `ranks` with the other shapes the same worker, as it stands, is
    /// ranked for: a fragmentation rank for whole GPUs on a worker with GPUs depends on the
    /// worker and the shape's GPU count alone (not on its kind, fit or qualifying GPUs), so the
    /// shapes of one count share it. A placement ranks its worker again in each index that
    /// lists it, and most of a fleet's shapes ask for one GPU: one rank serves them all.
    pub fn rank_shared(
        &self,
        policy: Policy,
        w: &Worker,
        (fit, qualifying): (f64, &[u32]),
        ranks: &mut Ranks,
    ) -> u64 {
        let shared = policy == Policy::Fragmentation
            && self.share.is_whole()
            && self.gpus > 0
            && !w.gpus.is_empty();
        let known = shared
            .then(|| ranks.0.iter().find(|&&(gpus, _)| gpus == self.gpus))
            .flatten();
        if let Some(&(_, rank)) = known {
            return rank;
        }
        let rank = self.rank(policy, w, fit, qualifying);
        if shared {
            ranks.0.push((self.gpus, rank));
        }
        rank
    }

    /// The policy's rank of a worker for the shape, higher = better, given the worker's GPUs
    /// that qualify for it. Composite and fragmentation: the score's bits (scores are finite and
    /// >= 0, so their bits order like the numbers).
    // Inlined into its one caller, on the path of every placement, as it was before ranks
    // were shared: a call costs about a third of what sharing saves.
    #[inline(always)]
    fn rank(&self, policy: Policy, w: &Worker, fit: f64, qualifying: &[u32]) -> u64 {
        let with_load = |primary: f64| score_bits(primary + 1e-6 * w.availability());
        match policy {
            Policy::RoundRobin => u64::MAX - w.last_tick,
            Policy::LeastLoaded | Policy::Affinity => score_bits(w.availability()),
            Policy::Performance => {
                with_load(w.speed_for(self.kind, self.learning).min(SPEED_CAP * 5.0))
            }
            Policy::Cost => {
                let speed = w.speed_for(self.kind, self.learning);
                let cost = relative_cost(w.cost_per_hour, self.price_share(w), speed);
                with_load(1.0 / (1.0 + cost))
            }
            Policy::Composite => score_bits(self.terms(w, fit).total()),
            // A worker where the task starts at once (a slot and its GPUs free) ranks above every
            // one where it would wait behind a running task (prefetch): by the top bit, which no
            // score sets.
            Policy::Fragmentation => {
                let free = free_gpus(w);
                let slot_free = w.accepting() && w.held() < w.effective_slots();
                if !self.share.is_whole() {
                    // A share starts at once wherever it fits a GPU; what it costs is judged on
                    // the GPU it would get there.
                    return match choose_share(
                        w,
                        qualifying,
                        self.share,
                        Some(&self.learning.demand),
                        |_| true,
                    ) {
                        Some(g) if slot_free => {
                            let used = w.gpus[g as usize].milli;
                            let demand = &self.learning.demand;
                            let score = demand.share_score(w, free, used, self.share.milli);
                            (1 << 63) | score_bits(score)
                        }
                        _ => score_bits(w.availability()),
                    };
                }
                if slot_free && free >= self.gpus {
                    (1 << 63) | score_bits(self.learning.demand.score(w, free, self.gpus, fit))
                } else {
                    score_bits(w.availability())
                }
            }
        }
    }
}

/// Fragmentation ranks of one worker by GPU count (see `Context::rank_shared`), valid while the
/// worker, the demand mix and the weights stay as they were: kept for one pass over its indexes.
#[derive(Debug, Default)]
pub struct Ranks(SmallVec<[(u32, u64); 4]>);

/// +0.0 folds a -0.0 into 0.0 so the bit pattern orders correctly.
pub fn score_bits(score: f64) -> u64 {
    (score.max(0.0) + 0.0).to_bits()
}

pub fn score_of(bits: u64) -> f64 {
    f64::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_names_round_trip_and_unknown_ones_are_refused() {
        for p in Policy::ALL {
            assert_eq!(p.name().parse::<Policy>().unwrap(), p);
        }
        let err = "fastest".parse::<Policy>().unwrap_err().to_string();
        assert!(err.contains("round_robin"), "{err}");
    }

    #[test]
    fn weights_must_be_finite_and_non_negative() {
        assert!(Weights::default().check().is_ok());
        for bad in [-0.1, f64::NAN, f64::INFINITY] {
            let w = Weights {
                fit: bad,
                ..Weights::default()
            };
            assert!(w.check().is_err(), "{bad} accepted");
        }
    }
}
