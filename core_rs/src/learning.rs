//! What the core learns from finished tasks: runtime per (task kind, GPU model), and from it how
//! fast each worker is at each kind.
//!
//! Runs are learned in two classes: warm (the task's affinity key was warm on its worker, or it
//! has none) and cold (its model had to be loaded first). Keeping them apart stops model loads
//! from passing for slowness, and their difference is the learned cost of a cold start, which
//! bounds how long a task waits for a warm worker (see `Scheduler::place`).
//!
//! Kinds and GPU models are interned to small integers once (when a shape or a worker is
//! registered) so the hot path never hashes a string.

use std::collections::HashMap;

use crate::demand::Demand;
use crate::id_hash::IdHashMap;

/// Weight of a new sample in every EWMA the core keeps.
pub const EWMA_ALPHA: f64 = 0.2;
/// Speed samples are clamped so one odd runtime cannot dominate a worker's score.
pub const SPEED_SAMPLE_RANGE: (f64, f64) = (0.1, 10.0);

/// Interned task kind.
pub type KindId = u32;
/// Interned GPU model (the lowercased name of a worker's first GPU; "cpu" for none).
pub type ModelId = u32;

/// Whether a run had to load its model first: index into the per-class EWMAs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Warm = 0,
    Cold = 1,
}

#[derive(Debug, Default)]
pub struct Learning {
    kinds: HashMap<String, KindId>,
    models: HashMap<String, ModelId>,
    /// Fleet-wide runtime EWMA per kind, warm and cold runs apart: a worker's speed is how it
    /// does against the fleet in the same class.
    fleet_ms: Vec<[Option<f64>; 2]>,
    /// Runtime EWMA per (kind, GPU model, start class): the prediction for a worker with that
    /// model.
    by_model: IdHashMap<(KindId, ModelId, u8), f64>,
    /// Per kind, the runtime its submitters expect (the latest `expected_runtime_ms` given):
    /// what predictions use until a run of the kind is learned.
    expected_ms: Vec<Option<f64>>,
    /// The recent mix of demand per shape (what the fragmentation policy weighs).
    pub demand: Demand,
}

impl Learning {
    pub fn kind_id(&mut self, kind: &str) -> KindId {
        if let Some(&id) = self.kinds.get(kind) {
            return id;
        }
        let id = self.kinds.len() as KindId;
        self.kinds.insert(kind.to_owned(), id);
        self.fleet_ms.push([None; 2]);
        self.expected_ms.push(None);
        id
    }

    pub fn model_id(&mut self, model: &str) -> ModelId {
        if let Some(&id) = self.models.get(model) {
            return id;
        }
        let id = self.models.len() as ModelId;
        self.models.insert(model.to_owned(), id);
        id
    }

    /// Record a successful run of `kind` on a `model` worker; returns the worker's speed sample
    /// against the fleet's runs of the same start class (None for the first such run, which only
    /// seeds the fleet EWMA).
    pub fn observe(
        &mut self,
        kind: KindId,
        model: ModelId,
        start: Start,
        runtime_ms: u64,
    ) -> Option<f64> {
        let runtime = runtime_ms.max(1) as f64;
        let per_model = self
            .by_model
            .entry((kind, model, start as u8))
            .or_insert(runtime);
        *per_model += EWMA_ALPHA * (runtime - *per_model);
        let fleet = &mut self.fleet_ms[kind as usize][start as usize];
        match fleet {
            Some(ewma) => {
                let sample = (*ewma / runtime).clamp(SPEED_SAMPLE_RANGE.0, SPEED_SAMPLE_RANGE.1);
                *ewma += EWMA_ALPHA * (runtime - *ewma);
                Some(sample)
            }
            None => {
                *fleet = Some(runtime);
                None
            }
        }
    }

    /// A submitter expects tasks of `kind` to take `ms` (0 = no estimate). True when that
    /// changed what is expected.
    pub fn expect(&mut self, kind: KindId, ms: u64) -> bool {
        let Some(slot) = self.expected_ms.get_mut(kind as usize) else {
            return false;
        };
        let new = (ms > 0).then_some(ms as f64);
        if new.is_none() || *slot == new {
            return false;
        }
        *slot = new;
        true
    }

    /// What a task of `kind` is expected to take: the fleet's learned warm runtime, else what
    /// its submitters said; None when nothing is known.
    pub fn estimate_ms(&self, kind: KindId) -> Option<f64> {
        self.fleet_ms(kind)
            .or_else(|| self.expected_ms.get(kind as usize).copied().flatten())
    }

    /// The kind's warm runtime over the fleet (what a task takes once its model is loaded).
    pub fn fleet_ms(&self, kind: KindId) -> Option<f64> {
        self.fleet_class_ms(kind, Start::Warm)
    }

    fn fleet_class_ms(&self, kind: KindId, start: Start) -> Option<f64> {
        self.fleet_ms
            .get(kind as usize)
            .and_then(|c| c[start as usize])
    }

    /// The warm runtime of `kind` on a `model` worker.
    pub fn model_ms(&self, kind: KindId, model: ModelId) -> Option<f64> {
        self.by_model
            .get(&(kind, model, Start::Warm as u8))
            .copied()
    }

    /// What a cold start adds to a task of `kind` over the fleet (its model load), once both
    /// warm and cold runs of the kind were seen.
    pub fn load_ms(&self, kind: KindId) -> Option<f64> {
        let cold = self.fleet_class_ms(kind, Start::Cold)?;
        let warm = self.fleet_class_ms(kind, Start::Warm)?;
        Some((cold - warm).max(0.0))
    }

    /// Predicted runtime of a `kind` task on a worker with `model` that runs the kind at `speed`
    /// against the fleet: the (kind, model) warm EWMA, else the fleet's warm runtime over the
    /// speed, plus the learned model load for a cold start; before any run of the kind, what its
    /// submitters expect (see `expect`). None when nothing is known.
    pub fn runtime_ms(
        &self,
        kind: KindId,
        model: ModelId,
        speed: f64,
        start: Start,
    ) -> Option<f64> {
        let warm = self
            .model_ms(kind, model)
            .or_else(|| self.fleet_ms(kind).map(|ms| ms / speed.max(1e-3)))
            .or_else(|| self.expected_ms.get(kind as usize).copied().flatten())?;
        Some(match start {
            Start::Warm => warm,
            Start::Cold => warm + self.load_ms(kind).unwrap_or(0.0),
        })
    }

    /// The prior speed of a worker with `model` at `kind` before it has run that kind itself:
    /// how its GPU model does against the fleet, if known.
    pub fn model_speed(&self, kind: KindId, model: ModelId) -> Option<f64> {
        let fleet = self.fleet_ms(kind)?;
        let ms = self.model_ms(kind, model)?;
        Some((fleet / ms).clamp(SPEED_SAMPLE_RANGE.0, SPEED_SAMPLE_RANGE.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_model_runtimes_and_fleet_speed_samples() {
        let mut l = Learning::default();
        let k = l.kind_id("infer");
        assert_eq!(l.kind_id("infer"), k, "interned once");
        let (h100, t4) = (l.model_id("h100"), l.model_id("t4"));
        assert_eq!(
            l.observe(k, h100, Start::Warm, 100),
            None,
            "the first run seeds the fleet EWMA"
        );
        assert_eq!(l.observe(k, t4, Start::Warm, 400), Some(0.25));
        assert_eq!(l.model_ms(k, h100), Some(100.0));
        assert_eq!(l.model_ms(k, t4), Some(400.0));
        assert!(l.model_speed(k, h100).unwrap() > l.model_speed(k, t4).unwrap());
        let a10 = l.model_id("a10");
        assert_eq!(l.model_ms(k, a10), None);
    }

    #[test]
    fn cold_runs_teach_the_load_cost_not_slowness() {
        let mut l = Learning::default();
        let k = l.kind_id("chat");
        let t4 = l.model_id("t4");
        assert_eq!(l.load_ms(k), None, "nothing seen yet");
        l.observe(k, t4, Start::Warm, 1_000);
        assert_eq!(
            l.observe(k, t4, Start::Cold, 9_000),
            None,
            "seeds the cold EWMA"
        );
        assert_eq!(l.load_ms(k), Some(8_000.0));
        assert_eq!(
            l.observe(k, t4, Start::Cold, 9_000),
            Some(1.0),
            "a cold run is compared with cold runs"
        );
        assert_eq!(
            l.model_ms(k, t4),
            Some(1_000.0),
            "loads stay out of runtimes"
        );
    }
}
