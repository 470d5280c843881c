//! Requirement shapes: a task's kind plus its hard requirements, interned once and shared by
//! every task that asks for the same thing, so filtering work is done per shape, not per task.

use std::collections::HashMap;

use crate::error::{invalid, unknown, CoreResult};
use crate::filters::{Share, WHOLE_MILLI};
use crate::gpu_names::words;
use crate::ShapeId;

/// What a task needs from a worker, as the caller gives it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShapeSpec {
    pub kind: String,
    pub gpus: u32,
    pub min_gpu_memory_mb: u64,
    /// Any of these models: each matches a GPU whose name has its words, whole and in order
    /// (case-insensitive, see `gpu_names`); empty = any model.
    pub gpu_models: Vec<String>,
    /// "" = any backend.
    pub backend: String,
    /// All of these labels.
    pub labels: Vec<String>,
    /// 0 = no minimum.
    pub min_compute_capability: f64,
    /// A share of one GPU, 1 to 999 thousandths; 0 = whole GPUs. `gpus` is then 0 or 1.
    pub gpu_milli: u32,
    /// Memory a share keeps on its GPU, in MiB (only with `gpu_milli`).
    pub gpu_memory_mb: u64,
    /// The submitter's runtime class: runtimes are learned per (kind, class, GPU model), so
    /// short and long tasks of one kind are predicted apart. "" = the kind's own.
    pub runtime_class: String,
}

/// A normalised, interned shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Shape {
    pub kind: String,
    pub gpus: u32,
    pub min_gpu_memory_mb: u64,
    /// As `gpu_names::words`, sorted, deduplicated.
    pub gpu_models: Vec<String>,
    /// Lowercased.
    pub backend: String,
    /// Sorted, deduplicated.
    pub labels: Vec<String>,
    /// Stored as bits so the shape can be hashed; always finite and >= 0.
    min_cc_bits: u64,
    /// Whole GPUs unless it asks for a share of one (`gpus` is then 1).
    pub share: Share,
    /// What runtimes are learned under: the kind, and its runtime class when it has one.
    pub learned_as: String,
}

impl Shape {
    fn normalise(spec: ShapeSpec) -> CoreResult<Shape> {
        let cc = spec.min_compute_capability;
        if !cc.is_finite() || cc < 0.0 {
            return Err(invalid(format!(
                "min_compute_capability must be a finite number >= 0, got {cc}"
            )));
        }
        let share = Share {
            milli: spec.gpu_milli,
            memory_mb: spec.gpu_memory_mb,
        };
        if share.milli >= WHOLE_MILLI {
            return Err(invalid(format!(
                "gpu_milli is a share of one GPU, 1 to 999 (0 = whole GPUs), got {}",
                share.milli
            )));
        }
        if share.is_whole() && share.memory_mb > 0 {
            return Err(invalid(
                "gpu_memory_mb reserves memory for a share of a GPU: set gpu_milli too, or use \
                 min_gpu_memory_mb for whole GPUs",
            ));
        }
        if !share.is_whole() && spec.gpus > 1 {
            return Err(invalid(format!(
                "gpu_milli asks for a share of one GPU, so gpus must be 0 or 1, got {}",
                spec.gpus
            )));
        }
        let gpus = if share.is_whole() { spec.gpus } else { 1 };
        let mut gpu_models: Vec<String> = spec.gpu_models.iter().map(|m| words(m)).collect();
        gpu_models.sort();
        gpu_models.dedup();
        let mut labels = spec.labels;
        labels.sort();
        labels.dedup();
        let learned_as = if spec.runtime_class.is_empty() {
            spec.kind.clone()
        } else {
            // A unit separator cannot occur in a kind a person types.
            format!("{}\u{1f}{}", spec.kind, spec.runtime_class)
        };
        Ok(Shape {
            learned_as,
            kind: spec.kind,
            gpus,
            min_gpu_memory_mb: spec.min_gpu_memory_mb,
            gpu_models,
            backend: spec.backend.to_lowercase(),
            labels,
            // +0.0 folds -0.0 into 0.0 so both intern to the same shape.
            min_cc_bits: (cc + 0.0).to_bits(),
            share,
        })
    }

    pub fn min_compute_capability(&self) -> f64 {
        f64::from_bits(self.min_cc_bits)
    }
}

/// The interning table: shape ids are indices, never reused.
#[derive(Debug, Default)]
pub struct ShapeTable {
    shapes: Vec<Shape>,
    ids: HashMap<Shape, ShapeId>,
}

impl ShapeTable {
    /// Intern a shape: the same (normalised) inputs give the same id.
    pub fn intern(&mut self, spec: ShapeSpec) -> CoreResult<ShapeId> {
        let shape = Shape::normalise(spec)?;
        if let Some(&id) = self.ids.get(&shape) {
            return Ok(id);
        }
        let id = self.shapes.len() as ShapeId;
        self.shapes.push(shape.clone());
        self.ids.insert(shape, id);
        Ok(id)
    }

    pub fn get(&self, id: ShapeId) -> CoreResult<&Shape> {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.shapes.get(i))
            .ok_or_else(|| unknown(format!("unknown shape {id}")))
    }

    pub fn len(&self) -> usize {
        self.shapes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shapes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_requirements_intern_to_the_same_id() {
        let mut table = ShapeTable::default();
        let a = table
            .intern(ShapeSpec {
                kind: "infer".into(),
                gpus: 1,
                gpu_models: vec!["H100".into(), "a100 80GB".into(), "h100".into()],
                backend: "CUDA".into(),
                labels: vec!["zone=eu".into(), "tier=a".into(), "zone=eu".into()],
                ..ShapeSpec::default()
            })
            .unwrap();
        let b = table
            .intern(ShapeSpec {
                kind: "infer".into(),
                gpus: 1,
                gpu_models: vec!["A100-80gb".into(), "h100".into()],
                backend: "cuda".into(),
                labels: vec!["tier=a".into(), "zone=eu".into()],
                ..ShapeSpec::default()
            })
            .unwrap();
        assert_eq!(a, b, "normalised equal shapes must share an id");
        let c = table
            .intern(ShapeSpec {
                kind: "other".into(),
                ..ShapeSpec::default()
            })
            .unwrap();
        assert_ne!(a, c);
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn bad_compute_capability_is_refused() {
        let mut table = ShapeTable::default();
        for cc in [f64::NAN, -1.0, f64::INFINITY] {
            let spec = ShapeSpec {
                min_compute_capability: cc,
                ..ShapeSpec::default()
            };
            assert!(table.intern(spec).is_err(), "cc {cc} should be refused");
        }
        assert!(table.get(0).is_err());
    }

    #[test]
    fn a_share_is_of_one_gpu_and_below_a_whole_one() {
        let mut table = ShapeTable::default();
        let spec = |gpus, gpu_milli, gpu_memory_mb| ShapeSpec {
            gpus,
            gpu_milli,
            gpu_memory_mb,
            ..ShapeSpec::default()
        };
        let half = table.intern(spec(0, 500, 8000)).unwrap();
        assert_eq!(table.intern(spec(1, 500, 8000)).unwrap(), half);
        assert_eq!(table.get(half).unwrap().gpus, 1, "a share uses one GPU");
        for (gpus, milli, mb) in [(2, 500, 0), (1, 1000, 0), (1, 0, 8000)] {
            let err = table.intern(spec(gpus, milli, mb)).unwrap_err().to_string();
            assert!(err.contains("gpu_m"), "{err}");
        }
    }
}
