//! Matching tasks to workers: the hard filters, the score, GPU choice and the per-shape index.
//!
//! Cost model. The filters split into a static part (kind, backend, labels, which GPUs qualify
//! by memory/model/compute capability) that only changes when workers join or leave, and a
//! dynamic part (free slots, which qualifying GPUs are free). Each shape gets a [`ShapeIndex`],
//! built lazily on first use in O(W) and then kept up to date incrementally: a joining worker
//! is checked against every built index (O(S) static checks), a leaving one is dropped from the
//! indexes that list it. The index keeps the statically eligible workers that can take a task
//! now (alive, not draining, a free slot) in a `BTreeSet` ordered by score, so finding the best
//! worker for a shape is O(log W) plus the workers skipped because their qualifying GPUs are
//! taken (none for CPU shapes), instead of a scan of the fleet. The price is paid when a
//! worker's score changes (a placement, a finish, a drain): O(S_w log W) to move it in the
//! S_w indexes that list it.

use std::cmp::Reverse;
use std::collections::BTreeSet;

use crate::error::{invalid, CoreResult};
use crate::id_hash::IdHashMap;
use crate::shapes::{Shape, ShapeTable};
use crate::workers::{Gpu, Worker, WorkerTable};
use crate::{ShapeId, WorkerId};

/// Position in a ready set: best score first (score bits order like the non-negative scores
/// themselves), ties to the lowest worker handle so placement is deterministic.
pub type ReadyKey = (Reverse<u64>, WorkerId);

/// Weights of the score's terms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weights {
    pub availability: f64,
    pub success: f64,
    pub speed: f64,
}

/// Speeds above this earn no more score: a worker twice as fast as the fleet is fast enough.
const SPEED_CAP: f64 = 2.0;

impl Weights {
    pub fn new(availability: f64, success: f64, speed: f64) -> CoreResult<Weights> {
        for (name, w) in [
            ("w_availability", availability),
            ("w_success", success),
            ("w_speed", speed),
        ] {
            if !w.is_finite() || w < 0.0 {
                return Err(invalid(format!(
                    "{name} must be a finite number >= 0, got {w}"
                )));
            }
        }
        Ok(Weights {
            availability,
            success,
            speed,
        })
    }

    /// Higher is better; always finite and >= 0.
    pub fn score(&self, w: &Worker) -> f64 {
        let availability = f64::from(w.free_slots) / f64::from(w.slots);
        let speed = w.speed.min(SPEED_CAP) / SPEED_CAP;
        // +0.0 folds a -0.0 into 0.0 so the bit pattern orders correctly.
        self.availability * availability + self.success * w.success_rate + self.speed * speed + 0.0
    }

    fn ready_key(&self, id: WorkerId, w: &Worker) -> Option<ReadyKey> {
        w.is_ready().then(|| (Reverse(self.score(w).to_bits()), id))
    }
}

/// Does this GPU meet the shape's per-GPU requirements?
pub fn gpu_qualifies(shape: &Shape, gpu: &Gpu) -> bool {
    let min_cc = shape.min_compute_capability();
    gpu.memory_total_mb >= shape.min_gpu_memory_mb
        && (min_cc <= 0.0 || gpu.compute_capability >= min_cc)
        && (shape.gpu_models.is_empty()
            || shape
                .gpu_models
                .iter()
                .any(|m| gpu.name_lower.contains(m.as_str())))
}

/// The static filter. Some(qualifying GPU indices, smallest memory first) if the worker could
/// ever run the shape; None if it never can.
pub fn static_fit(shape: &Shape, w: &Worker) -> Option<Box<[u32]>> {
    if !w.accepts_kind(&shape.kind)
        || !(shape.backend.is_empty() || shape.backend == w.backend)
        || !w.has_labels(&shape.labels)
    {
        return None;
    }
    if shape.gpus == 0 {
        return Some(Box::default());
    }
    let mut qualifying: Vec<u32> = (0..w.gpus.len() as u32)
        .filter(|&i| gpu_qualifies(shape, &w.gpus[i as usize]))
        .collect();
    if qualifying.len() < shape.gpus as usize {
        return None;
    }
    // Smallest first keeps the big GPUs free for the tasks that need them.
    qualifying.sort_by_key(|&i| (w.gpus[i as usize].memory_total_mb, i));
    Some(qualifying.into_boxed_slice())
}

/// Pick `n` free GPUs from `qualifying` (ordered smallest memory first); sorted indices, or
/// None if fewer than `n` are free.
pub fn choose_gpus(w: &Worker, qualifying: &[u32], n: u32) -> Option<Vec<u32>> {
    let mut chosen: Vec<u32> = qualifying
        .iter()
        .copied()
        .filter(|&i| !w.gpus[i as usize].busy)
        .take(n as usize)
        .collect();
    if chosen.len() < n as usize {
        return None;
    }
    chosen.sort_unstable();
    Some(chosen)
}

/// The workers that statically fit one shape, and the ones among them ready for a task now.
#[derive(Debug, Default)]
pub struct ShapeIndex {
    /// Statically eligible live workers (draining and full ones too) -> qualifying GPUs.
    pub members: IdHashMap<WorkerId, Box<[u32]>>,
    /// Members that are not draining and have a free slot, best score first.
    ready: BTreeSet<ReadyKey>,
}

impl ShapeIndex {
    /// The best worker that can take a task of `shape` right now, with the GPUs it would use.
    pub fn best(&self, shape: &Shape, workers: &WorkerTable) -> Option<(WorkerId, Vec<u32>)> {
        if shape.gpus == 0 {
            return self.ready.first().map(|&(_, id)| (id, Vec::new()));
        }
        self.ready.iter().find_map(|&(_, id)| {
            let worker = workers.get(id).ok()?;
            choose_gpus(worker, &self.members[&id], shape.gpus).map(|g| (id, g))
        })
    }
}

/// The score weights and one lazily built [`ShapeIndex`] per shape.
#[derive(Debug)]
pub struct PlacementIndex {
    weights: Weights,
    shapes: Vec<Option<ShapeIndex>>,
}

impl PlacementIndex {
    pub fn new(weights: Weights) -> PlacementIndex {
        PlacementIndex {
            weights,
            shapes: Vec::new(),
        }
    }

    pub fn weights(&self) -> Weights {
        self.weights
    }

    /// The index of a shape, building it (O(W)) on first use.
    pub fn index(&mut self, id: ShapeId, shape: &Shape, workers: &mut WorkerTable) -> &ShapeIndex {
        let i = slot(id);
        if self.shapes.len() <= i {
            self.shapes.resize_with(i + 1, || None);
        }
        self.shapes[i].get_or_insert_with(|| {
            let mut index = ShapeIndex::default();
            for (wid, worker) in workers.iter_mut() {
                if let Some(gpus) = static_fit(shape, worker) {
                    index.members.insert(wid, gpus);
                    worker.shapes.push(id);
                    if let Some(key) = worker.ready_key {
                        index.ready.insert(key);
                    }
                }
            }
            index
        })
    }

    /// A worker joined: list it in every built index it fits, then rank it.
    pub fn worker_added(&mut self, id: WorkerId, worker: &mut Worker, shapes: &ShapeTable) {
        for (sid, index) in self.shapes.iter_mut().enumerate() {
            let Some(index) = index else { continue };
            let shape = shapes
                .get(sid as ShapeId)
                .expect("indexes exist only for interned shapes");
            if let Some(gpus) = static_fit(shape, worker) {
                index.members.insert(id, gpus);
                worker.shapes.push(sid as ShapeId);
            }
        }
        self.refresh(id, worker);
    }

    /// A worker left: drop it from the indexes that list it.
    pub fn worker_removed(&mut self, id: WorkerId, worker: &Worker) {
        for &sid in &worker.shapes {
            let index = self.shapes[slot(sid)]
                .as_mut()
                .expect("listed in a built index");
            index.members.remove(&id);
            if let Some(key) = worker.ready_key {
                index.ready.remove(&key);
            }
        }
    }

    /// The worker's score or readiness may have changed: move it in its indexes' ready sets.
    pub fn refresh(&mut self, id: WorkerId, worker: &mut Worker) {
        let key = self.weights.ready_key(id, worker);
        if key == worker.ready_key {
            return;
        }
        for &sid in &worker.shapes {
            let index = self.shapes[slot(sid)]
                .as_mut()
                .expect("listed in a built index");
            if let Some(old) = worker.ready_key {
                index.ready.remove(&old);
            }
            if let Some(new) = key {
                index.ready.insert(new);
            }
        }
        worker.ready_key = key;
    }
}

fn slot(id: ShapeId) -> usize {
    usize::try_from(id).expect("shape ids are vector indices")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shapes::ShapeSpec;
    use crate::workers::GpuSpec;

    fn gpu(mb: u64, cc: f64, name: &str) -> GpuSpec {
        GpuSpec {
            memory_total_mb: mb,
            compute_capability: cc,
            name: name.into(),
        }
    }

    fn shape(spec: ShapeSpec) -> Shape {
        let mut table = ShapeTable::default();
        let id = table.intern(spec).unwrap();
        table.get(id).unwrap().clone()
    }

    #[test]
    fn smallest_sufficient_gpus_are_chosen() {
        let w = Worker::new(
            4,
            vec![
                gpu(81920, 9.0, "H100"),
                gpu(24576, 8.6, "A10"),
                gpu(40960, 8.0, "A100"),
                gpu(49152, 8.9, "L40S"),
            ],
            "cuda",
            vec![],
            vec![],
        )
        .unwrap();
        let s = shape(ShapeSpec {
            gpus: 1,
            min_gpu_memory_mb: 40000,
            ..ShapeSpec::default()
        });
        let q = static_fit(&s, &w).unwrap();
        assert_eq!(&*q, &[2, 3, 0], "qualifying GPUs, smallest memory first");
        assert_eq!(choose_gpus(&w, &q, 1), Some(vec![2]));
        assert_eq!(choose_gpus(&w, &q, 2), Some(vec![2, 3]));
        let two = shape(ShapeSpec {
            gpus: 2,
            gpu_models: vec!["h100".into(), "A10".into()],
            ..ShapeSpec::default()
        });
        // "a10" is a substring of "a100" too.
        assert_eq!(&*static_fit(&two, &w).unwrap(), &[1, 2, 0]);
        let cc = shape(ShapeSpec {
            gpus: 2,
            min_compute_capability: 8.9,
            ..ShapeSpec::default()
        });
        assert_eq!(&*static_fit(&cc, &w).unwrap(), &[3, 0]);
        let too_many = shape(ShapeSpec {
            gpus: 3,
            min_compute_capability: 8.9,
            ..ShapeSpec::default()
        });
        assert!(static_fit(&too_many, &w).is_none());
    }

    #[test]
    fn busy_gpus_are_skipped() {
        let mut w = Worker::new(
            2,
            vec![gpu(16, 8.0, "a"), gpu(32, 8.0, "b")],
            "",
            vec![],
            vec![],
        )
        .unwrap();
        w.gpus[0].busy = true;
        assert_eq!(choose_gpus(&w, &[0, 1], 1), Some(vec![1]));
        assert_eq!(choose_gpus(&w, &[0, 1], 2), None);
    }

    #[test]
    fn static_filter_checks_kind_backend_labels() {
        let w = Worker::new(
            1,
            vec![],
            "CUDA",
            vec!["zone=eu".into(), "ssd".into()],
            vec!["infer".into()],
        )
        .unwrap();
        let ok = shape(ShapeSpec {
            kind: "infer".into(),
            backend: "cuda".into(),
            labels: vec!["ssd".into()],
            ..ShapeSpec::default()
        });
        assert!(static_fit(&ok, &w).is_some());
        let kind = shape(ShapeSpec {
            kind: "train".into(),
            ..ShapeSpec::default()
        });
        assert!(static_fit(&kind, &w).is_none());
        let backend = shape(ShapeSpec {
            kind: "infer".into(),
            backend: "rocm".into(),
            ..ShapeSpec::default()
        });
        assert!(static_fit(&backend, &w).is_none());
        let labels = shape(ShapeSpec {
            kind: "infer".into(),
            labels: vec!["zone=us".into()],
            ..ShapeSpec::default()
        });
        assert!(static_fit(&labels, &w).is_none());
        let any = Worker::new(1, vec![], "", vec![], vec![]).unwrap();
        assert!(
            static_fit(&kind, &any).is_some(),
            "a worker with no kinds runs every kind"
        );
    }

    #[test]
    fn weights_must_be_finite_and_non_negative() {
        assert!(Weights::new(0.5, 0.3, 0.2).is_ok());
        assert!(Weights::new(-0.1, 0.3, 0.2).is_err());
        assert!(Weights::new(0.5, f64::NAN, 0.2).is_err());
        assert!(Weights::new(0.5, 0.3, f64::INFINITY).is_err());
    }
}
