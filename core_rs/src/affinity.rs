//! Warmth: which workers ran an affinity key (e.g. a model) recently, so its weights are likely
//! still in GPU memory.
//!
//! Each worker remembers the keys of its last `memory` tasks. Finding a warm worker for a task
//! is the placement index's job: each shape's index keeps, per key, its warm members ready for
//! the shape in the shape's own order (see `placement`), so the lookup never walks workers of
//! other shapes. This module keeps each worker's keys, says which key became warm or went cold
//! on a placement, and sums per key the slots of the workers where it is warm: the capacity that
//! can run the key's tasks without a load.

use crate::id_hash::IdHashMap;
use crate::workers::Worker;

/// What one placement changed in a worker's warm keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Touch {
    /// A key that just became warm there.
    pub warmed: Option<u64>,
    /// The key it forgot to make room.
    pub cooled: Option<u64>,
}

#[derive(Debug)]
pub struct WarmIndex {
    memory: usize,
    /// Per key: the total slots of the live workers where it is warm.
    slots: IdHashMap<u64, u64>,
}

impl WarmIndex {
    pub fn new(memory: usize) -> WarmIndex {
        WarmIndex {
            memory,
            slots: IdHashMap::default(),
        }
    }

    /// Slots of the workers where `key` is warm.
    pub fn slots(&self, key: u64) -> u64 {
        self.slots.get(&key).copied().unwrap_or(0)
    }

    /// A task with `key` was placed on the worker: `key` becomes its most recent. O(memory).
    pub fn touch(&mut self, worker: &mut Worker, key: u64) -> Touch {
        if key == 0 || self.memory == 0 {
            return Touch::default();
        }
        if let Some(pos) = worker.warm.iter().position(|&k| k == key) {
            worker.warm.remove(pos);
            worker.warm.push(key);
            return Touch::default();
        }
        worker.warm.push(key);
        *self.slots.entry(key).or_default() += u64::from(worker.slots);
        let cooled = (worker.warm.len() > self.memory).then(|| {
            let evicted = worker.warm.remove(0);
            self.forget(worker, evicted);
            evicted
        });
        Touch {
            warmed: Some(key),
            cooled,
        }
    }

    fn forget(&mut self, worker: &Worker, key: u64) {
        if let Some(slots) = self.slots.get_mut(&key) {
            *slots -= u64::from(worker.slots);
            if *slots == 0 {
                self.slots.remove(&key);
            }
        }
    }

    /// A worker left.
    pub fn worker_removed(&mut self, worker: &Worker) {
        for &key in &worker.warm {
            self.forget(worker, key);
        }
    }
}
