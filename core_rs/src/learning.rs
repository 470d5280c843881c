//! What the core learns from finished tasks: runtime per (task kind, GPU model), and from it how
//! fast each worker is at each kind.
//!
//! Kinds and GPU models are interned to small integers once (when a shape or a worker is
//! registered) so the hot path never hashes a string.

use std::collections::HashMap;

use crate::id_hash::IdHashMap;

/// Weight of a new sample in every EWMA the core keeps.
pub const EWMA_ALPHA: f64 = 0.2;
/// Speed samples are clamped so one odd runtime cannot dominate a worker's score.
pub const SPEED_SAMPLE_RANGE: (f64, f64) = (0.1, 10.0);

/// Interned task kind.
pub type KindId = u32;
/// Interned GPU model (the lowercased name of a worker's first GPU; "cpu" for none).
pub type ModelId = u32;

#[derive(Debug, Default)]
pub struct Learning {
    kinds: HashMap<String, KindId>,
    models: HashMap<String, ModelId>,
    /// Fleet-wide runtime EWMA per kind: a worker's speed is how it does against this.
    fleet_ms: Vec<Option<f64>>,
    /// Runtime EWMA per (kind, GPU model): the prediction for a worker with that model.
    by_model: IdHashMap<(KindId, ModelId), f64>,
}

impl Learning {
    pub fn kind_id(&mut self, kind: &str) -> KindId {
        if let Some(&id) = self.kinds.get(kind) {
            return id;
        }
        let id = self.kinds.len() as KindId;
        self.kinds.insert(kind.to_owned(), id);
        self.fleet_ms.push(None);
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
    /// against the fleet (None for the kind's first run, which only seeds the fleet EWMA).
    pub fn observe(&mut self, kind: KindId, model: ModelId, runtime_ms: u64) -> Option<f64> {
        let runtime = runtime_ms.max(1) as f64;
        let per_model = self.by_model.entry((kind, model)).or_insert(runtime);
        *per_model += EWMA_ALPHA * (runtime - *per_model);
        let fleet = &mut self.fleet_ms[kind as usize];
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

    pub fn fleet_ms(&self, kind: KindId) -> Option<f64> {
        self.fleet_ms.get(kind as usize).copied().flatten()
    }

    pub fn model_ms(&self, kind: KindId, model: ModelId) -> Option<f64> {
        self.by_model.get(&(kind, model)).copied()
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
            l.observe(k, h100, 100),
            None,
            "the first run seeds the fleet EWMA"
        );
        assert_eq!(l.observe(k, t4, 400), Some(0.25));
        assert_eq!(l.model_ms(k, h100), Some(100.0));
        assert_eq!(l.model_ms(k, t4), Some(400.0));
        assert!(l.model_speed(k, h100).unwrap() > l.model_speed(k, t4).unwrap());
        let a10 = l.model_id("a10");
        assert_eq!(l.model_ms(k, a10), None);
    }
}
