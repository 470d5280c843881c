//! The warm index: which workers ran an affinity key (e.g. a model) recently, so its weights are
//! likely still in GPU memory.
//!
//! Each worker remembers the keys of its last `memory` tasks. Per key the index keeps every warm
//! worker, and the warm workers that can take a task now ordered by availability (a [`Ranked`]
//! heap), so finding a warm worker for a task looks at a few entries instead of the fleet. A
//! worker's entries move when its availability changes: O(memory x log W) per change. It also sums
//! the slots of the workers where each key is warm, the capacity that can run the key's tasks
//! without a load.

use std::cmp::Reverse;

use crate::id_hash::IdHashMap;
use crate::policy::score_bits;
use crate::ranked::Ranked;
use crate::workers::Worker;
use crate::WorkerId;

/// Where one affinity key is warm.
#[derive(Debug, Default)]
struct Warmth {
    /// Every live worker where the key is warm, with its slot in `ready`.
    workers: IdHashMap<WorkerId, u32>,
    /// Those that can take a task now, most available first.
    ready: Ranked,
    /// Total slots of `workers`.
    slots: u64,
}

#[derive(Debug)]
pub struct WarmIndex {
    memory: usize,
    keys: IdHashMap<u64, Warmth>,
}

impl WarmIndex {
    pub fn new(memory: usize) -> WarmIndex {
        WarmIndex {
            memory,
            keys: IdHashMap::default(),
        }
    }

    /// Warm workers that can take a task now, most available first.
    pub fn ready(&self, key: u64) -> impl Iterator<Item = WorkerId> + '_ {
        self.keys
            .get(&key)
            .into_iter()
            .flat_map(|w| w.ready.iter().map(|(_, id)| id))
    }

    /// Every live worker where `key` is warm.
    pub fn all(&self, key: u64) -> impl Iterator<Item = WorkerId> + '_ {
        self.keys
            .get(&key)
            .into_iter()
            .flat_map(|w| w.workers.keys().copied())
    }

    /// Slots of the workers where `key` is warm.
    pub fn slots(&self, key: u64) -> u64 {
        self.keys.get(&key).map_or(0, |w| w.slots)
    }

    /// A task with `key` was placed on the worker: `key` becomes its most recent.
    pub fn touch(&mut self, id: WorkerId, worker: &mut Worker, key: u64) {
        if key == 0 || self.memory == 0 {
            return;
        }
        if let Some(pos) = worker.warm.iter().position(|&k| k == key) {
            worker.warm.remove(pos);
            worker.warm.push(key);
            return;
        }
        worker.warm.push(key);
        let warmth = self.keys.entry(key).or_default();
        let slot = warmth.ready.slot();
        warmth.ready.set(slot, worker.base_key);
        warmth.workers.insert(id, slot);
        warmth.slots += u64::from(worker.slots);
        if worker.warm.len() > self.memory {
            let evicted = worker.warm.remove(0);
            self.forget(id, worker, evicted);
        }
    }

    fn forget(&mut self, id: WorkerId, worker: &Worker, key: u64) {
        let Some(warmth) = self.keys.get_mut(&key) else {
            return;
        };
        if let Some(slot) = warmth.workers.remove(&id) {
            warmth.ready.release(slot);
            warmth.slots -= u64::from(worker.slots);
        }
        if warmth.workers.is_empty() {
            self.keys.remove(&key);
        }
    }

    /// The worker's availability or readiness may have changed.
    pub fn refresh(&mut self, id: WorkerId, worker: &mut Worker) {
        let base = worker
            .is_ready()
            .then(|| (Reverse(score_bits(worker.availability())), id));
        if base == worker.base_key {
            return;
        }
        for key in &worker.warm {
            let warmth = self
                .keys
                .get_mut(key)
                .expect("a worker's warm keys are indexed");
            let slot = warmth.workers[&id];
            warmth.ready.set(slot, base);
        }
        worker.base_key = base;
    }

    /// A worker left.
    pub fn worker_removed(&mut self, id: WorkerId, worker: &Worker) {
        for &key in &worker.warm {
            self.forget(id, worker, key);
        }
    }
}
